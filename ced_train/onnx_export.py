"""Export a CED model to ONNX: log-mel -> logits, or waveform -> probabilities, fp32 or int8.

Two graphs, both with dynamic batch and time axes:

- spectrogram (default): ``logmel`` float32 (B, n_mels, T) -> ``logits`` float32 (B, C);
- waveform (``waveform=True``): ``waveform`` float32 (B, S) at 16 kHz -> ``probabilities``
  float32 (B, C); the log-mel frontend is in the graph (``torch.stft`` exports to ONNX ``STFT``).

Inputs longer than one chunk (``target_length`` = 1012 frames) are chunked inside the graph
exactly as :meth:`CED.forward_spectrogram` does it: the spectrogram graph returns the mean of
the per-chunk logits, the waveform graph the mean of the per-chunk probabilities (as
:meth:`CED.predict`). The spectrogram graph needs at least ``patch_size`` (16) frames, the
waveform graph ``(patch_size - 1) * 160`` samples (``MIN_WAVEFORM_SAMPLES`` for 16).

The ONNX ``metadata_props`` (read them back with :func:`read_metadata`): ``model_type``
("CED"), ``graph``, ``input``, ``output`` and ``quantization`` ("none" or "int8") as text;
``chunk_frames``, ``class_names``, ``ced_config`` and ``frontend`` (the
:class:`FrontendConfig` of the model's frontend; the spectrogram graph expects log-mels made
with it) as JSON.

``quantize="int8"`` applies onnxruntime's dynamic quantization to the ``MatMul`` weights
(int8 weights, activations quantized on the fly), as the original CED export did.

Needs the ``onnx`` extra: ``pip install 'cedstore[onnx]'`` (onnx, onnxruntime, onnxscript).

Example:
    >>> export_onnx("audiotransformer_mini_mAP_4896.pt", "ced_mini.onnx")
    >>> export_onnx(model, "ced_mini.int8.onnx", waveform=True, quantize="int8")
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from ced_train.frontend import FrontendConfig
from ced_train.labels import default_names
from ced_train.models import CED, from_checkpoint

__all__ = ["QUANTIZATIONS", "MIN_WAVEFORM_SAMPLES", "export_onnx", "quantize_onnx", "read_metadata"]

QUANTIZATIONS = ("int8",)
_FRONTEND = FrontendConfig()
# For the default patch_size of 16: 15 hops give 16 frames (center=True), the fewest it takes.
MIN_WAVEFORM_SAMPLES = (16 - 1) * _FRONTEND.hop_length
_JSON_KEYS = ("chunk_frames", "class_names", "ced_config", "frontend")  # the others are plain text
_EXTRA = "install the onnx extra: pip install 'cedstore[onnx]' (onnx, onnxruntime, onnxscript)"


class _SpectrogramToLogits(nn.Module):
    def __init__(self, model: CED) -> None:
        super().__init__()
        self.model = model

    def forward(self, logmel: torch.Tensor) -> torch.Tensor:  # (B, F, T) -> (B, C)
        return self.model.forward_spectrogram(logmel)


class _WaveformToProbabilities(nn.Module):
    def __init__(self, model: CED) -> None:
        super().__init__()
        self.model = model

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:  # (B, S) -> (B, C)
        return self.model.predict(waveform)


def _import(name: str):
    try:
        return __import__(name, fromlist=["_"])
    except ImportError as e:
        raise ImportError(f"ONNX export needs the package {name.split('.')[0]!r} ({e}); {_EXTRA}") from e


def _load_model(model_or_checkpoint: CED | str | os.PathLike) -> CED:
    if isinstance(model_or_checkpoint, CED):
        # A CPU copy in eval mode: exporting must not move or switch the caller's model.
        return copy.deepcopy(model_or_checkpoint).cpu().eval()
    if isinstance(model_or_checkpoint, (str, os.PathLike)):
        return from_checkpoint(model_or_checkpoint).eval()
    raise TypeError(
        f"expected a ced_train.models.CED or a checkpoint path, got {type(model_or_checkpoint).__name__}"
    )


def _metadata(model: CED, waveform: bool, class_names: list[str], quantize: str | None) -> dict:
    config = model.config
    frontend = FrontendConfig(n_mels=config.n_mels)  # as CED builds its front_end
    if waveform:
        graph = "waveform_to_probabilities"
        inp = f"waveform (batch, samples) float32 at {frontend.sample_rate} Hz"
        out = "probabilities (batch, classes): mean of per-chunk sigmoids"
    else:
        graph = "spectrogram_to_logits"
        inp = f"logmel (batch, {config.n_mels}, frames) float32 dB, made with the settings in 'frontend'"
        out = "logits (batch, classes): mean of per-chunk logits"
    return {
        "model_type": "CED",
        "graph": graph,
        "input": inp,
        "output": out,
        "chunk_frames": config.target_length,
        "class_names": class_names,
        "ced_config": config.to_dict(),
        "frontend": frontend.to_dict(),
        "quantization": quantize or "none",
    }


def _export_fp32(model: CED, out_path: Path, waveform: bool) -> None:
    config = model.config
    batch = torch.export.Dim("batch")
    # Examples longer than a chunk, not a multiple of it: the traced graph holds the chunking.
    if waveform:
        module, name, output = _WaveformToProbabilities(model), "waveform", "probabilities"
        example = torch.randn(2, config.target_length * _FRONTEND.hop_length + 4321) * 0.1
        min_samples = (config.patch_size - 1) * _FRONTEND.hop_length
        dims = {0: batch, 1: torch.export.Dim("samples", min=min_samples)}
    else:
        module, name, output = _SpectrogramToLogits(model), "logmel", "logits"
        example = torch.randn(2, config.n_mels, config.target_length + 123)
        dims = {0: batch, 2: torch.export.Dim("frames", min=config.patch_size)}
    with warnings.catch_warnings():
        # torch's exporter warns about its own internals (pytree, deprecations); nothing to act on.
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module.eval(), (example,), dynamo=True, input_names=[name], output_names=[output],
            dynamic_shapes={name: dims}, verbose=False,
        )
        program.save(os.fspath(out_path))


def _write_metadata(path: Path, metadata: dict) -> None:
    onnx = _import("onnx")
    proto = onnx.load(os.fspath(path))
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value) if key in _JSON_KEYS else value
    onnx.save(proto, os.fspath(path))


def quantize_onnx(in_path: str | os.PathLike, out_path: str | os.PathLike) -> Path:
    """Dynamically quantize an fp32 ONNX graph's ``MatMul`` weights to int8.

    Args:
        in_path: an fp32 graph, e.g. from :func:`export_onnx`.
        out_path: the int8 graph to write; its metadata is the input's with
            ``quantization`` set to "int8".

    Returns:
        ``out_path`` as a Path.

    Raises:
        ImportError: onnx or onnxruntime is not installed.

    Example:
        >>> quantize_onnx("ced_mini.onnx", "ced_mini.int8.onnx")
    """
    quantization = _import("onnxruntime.quantization")
    out_path = Path(out_path)
    quantization.quantize_dynamic(
        model_input=os.fspath(in_path), model_output=os.fspath(out_path),
        op_types_to_quantize=["MatMul"], weight_type=quantization.QuantType.QInt8,
    )
    metadata = {**read_metadata(in_path), "quantization": "int8"}
    _write_metadata(out_path, metadata)
    return out_path


def export_onnx(
    model_or_checkpoint: CED | str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    waveform: bool = False,
    quantize: str | None = None,
    class_names: Sequence[str] | None = None,
) -> Path:
    """Export a CED model to an ONNX graph with dynamic batch and time axes.

    Args:
        model_or_checkpoint: a :class:`CED` (copied; the caller's model is left as it is) or
            a checkpoint path (published CED ``.pt`` or one of ours).
        out_path: the ``.onnx`` file to write (overwritten).
        waveform: export waveform -> probabilities (frontend included) instead of
            log-mel -> logits.
        quantize: None for fp32, or "int8" for dynamic int8 quantization of the MatMuls.
        class_names: one name per output, stored in the metadata; by default the AudioSet
            names for 527 outputs, else ``class_0``, ``class_1``, ...

    Returns:
        ``out_path`` as a Path.

    Raises:
        ValueError: unknown ``quantize``, or ``class_names`` of the wrong length.
        TypeError: ``model_or_checkpoint`` is neither a CED nor a path.
        ImportError: the ``onnx`` extra is not installed.

    Example:
        >>> export_onnx("audiotransformer_tiny_mAP_4814.pt", "ced_tiny.int8.onnx", quantize="int8")
        >>> import onnxruntime
        >>> session = onnxruntime.InferenceSession("ced_tiny.int8.onnx")
        >>> logits = session.run(None, {"logmel": logmel.numpy()})[0]
    """
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise ValueError(f"quantize must be None or one of {list(QUANTIZATIONS)}, got {quantize!r}")
    for name in ("onnx", "onnxscript") + (("onnxruntime",) if quantize else ()):
        _import(name)
    model = _load_model(model_or_checkpoint)
    num_classes = model.config.num_classes
    names = list(class_names) if class_names is not None else default_names(num_classes)
    if len(names) != num_classes:
        raise ValueError(f"class_names has {len(names)} names, the model {num_classes} outputs")
    out_path = Path(out_path)
    if quantize is None:
        _export_fp32(model, out_path, waveform)
        _write_metadata(out_path, _metadata(model, waveform, names, None))
        return out_path
    with tempfile.TemporaryDirectory(prefix="ced-onnx-") as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        _export_fp32(model, fp32, waveform)
        _write_metadata(fp32, _metadata(model, waveform, names, None))
        return quantize_onnx(fp32, out_path)


def read_metadata(path: str | os.PathLike) -> dict:
    """Return an exported graph's ``metadata_props`` as a dict.

    ``class_names``, ``ced_config``, ``frontend`` and ``chunk_frames`` are decoded from JSON;
    the other entries are text.

    Example:
        >>> read_metadata("ced_tiny.onnx")["frontend"]["hop_length"]
        160
    """
    onnx = _import("onnx")
    proto = onnx.load(os.fspath(path), load_external_data=False)
    return {entry.key: json.loads(entry.value) if entry.key in _JSON_KEYS else entry.value
            for entry in proto.metadata_props}
