"""ONNX export: the exported graphs, run in onnxruntime, against the PyTorch model."""

import numpy as np
import pytest
import torch

for _name in ("onnx", "onnxruntime", "onnxscript"):
    pytest.importorskip(_name, reason=f"{_name} is not installed (pip install -e '.[onnx]')")

import onnxruntime as ort  # noqa: E402

from ced_train import models  # noqa: E402
from ced_train.frontend import FrontendConfig  # noqa: E402
from ced_train.onnx_export import MIN_WAVEFORM_SAMPLES, export_onnx, read_metadata  # noqa: E402

NAMES = [f"tag {i}" for i in range(10)]


def _model():
    torch.manual_seed(0)
    model = models.create("ced_custom", num_classes=10, embed_dim=64, depth=2, num_heads=2)
    with torch.no_grad():  # batch-norm statistics of real log-mels, so init_bn matters
        model.init_bn[1].running_mean.uniform_(-60, -20)
        model.init_bn[1].running_var.uniform_(50, 200)
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The model (left in training mode), its eval twin, and its three exports."""
    tmp = tmp_path_factory.mktemp("onnx")
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    checkpoint = tmp / "model.pt"
    models.save_checkpoint(model, checkpoint)
    paths = {
        "fp32": export_onnx(model, tmp / "model.onnx", class_names=NAMES),
        "int8": export_onnx(model, tmp / "model.int8.onnx", quantize="int8", class_names=NAMES),
        "waveform": export_onnx(checkpoint, tmp / "waveform.onnx", waveform=True, class_names=NAMES),
    }
    return {"model": model, "before": before, "reference": models.from_checkpoint(checkpoint),
            "paths": paths, "sessions": {k: ort.InferenceSession(str(p)) for k, p in paths.items()}}


def _logmel(batch, frames, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 64, frames, generator=gen) * 80 - 100  # dB, like real log-mels


# 1013 and 2600 frames need a zero-padded last chunk (the exporter once cut one chunk off).
@pytest.mark.parametrize("frames", [16, 100, 1012, 1013, 2024, 2600])
@pytest.mark.parametrize("batch", [1, 3])
def test_spectrogram_graph_matches_pytorch(exported, frames, batch):
    logmel = _logmel(batch, frames, seed=frames + batch)
    with torch.no_grad():
        expected = exported["reference"].forward_spectrogram(logmel).numpy()
    (got,) = exported["sessions"]["fp32"].run(None, {"logmel": logmel.numpy()})
    assert got.shape == (batch, 10) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


# 161_920 samples are 1013 frames: one sample of audio past a chunk.
@pytest.mark.parametrize("samples", [MIN_WAVEFORM_SAMPLES, 16_000, 161_920, 330_000])
def test_waveform_graph_matches_predict(exported, samples):
    gen = torch.Generator().manual_seed(samples)
    wave = torch.randn(2, samples, generator=gen) * torch.tensor([[0.1], [0.001]])
    expected = exported["reference"].predict(wave).numpy()
    (got,) = exported["sessions"]["waveform"].run(None, {"waveform": wave.numpy()})
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_graphs_have_dynamic_batch_and_time_axes(exported):
    for name, symbolic, dims in (("fp32", [True, False, True], (3, 64, 4000)),
                                 ("waveform", [True, True], (3, 40_000))):
        session = exported["sessions"][name]
        (inp,), (out,) = session.get_inputs(), session.get_outputs()
        assert [isinstance(d, str) for d in inp.shape] == symbolic, inp.shape
        assert out.shape[1] == 10  # a fixed class axis (sherpa-onnx reads the count from it)
        (got,) = session.run(None, {inp.name: np.zeros(dims, np.float32)})
        assert got.shape == (3, 10)


def test_metadata_describes_the_graph(exported):
    model = exported["reference"]
    for name, graph, quantization in (("fp32", "spectrogram_to_logits", "none"),
                                      ("int8", "spectrogram_to_logits", "int8"),
                                      ("waveform", "waveform_to_probabilities", "none")):
        meta = read_metadata(exported["paths"][name])
        assert meta["model_type"] == "CED" and meta["graph"] == graph
        assert meta["quantization"] == quantization
        assert meta["class_names"] == NAMES
        assert meta["ced_config"] == model.config.to_dict()
        assert meta["frontend"] == FrontendConfig().to_dict()
        assert meta["chunk_frames"] == 1012


def test_export_leaves_the_callers_model_alone(exported):
    model = exported["model"]
    assert model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, exported["before"][key]), key


def test_int8_graph_runs_and_roughly_agrees(exported):
    logmel = _logmel(8, 1500, seed=7)
    (fp32,) = exported["sessions"]["fp32"].run(None, {"logmel": logmel.numpy()})
    (int8,) = exported["sessions"]["int8"].run(None, {"logmel": logmel.numpy()})
    assert int8.shape == fp32.shape and np.isfinite(int8).all()
    assert not np.array_equal(int8, fp32)  # it is quantized ...
    spread = fp32.max() - fp32.min()
    assert np.abs(int8 - fp32).max() < 0.05 * spread  # ... and close
    assert exported["paths"]["int8"].stat().st_size < exported["paths"]["fp32"].stat().st_size


@pytest.mark.parametrize("kwargs, error, message", [
    ({"quantize": "fp16"}, ValueError, r"quantize must be None or one of \['int8'\], got 'fp16'"),
    ({"class_names": ["a", "b"]}, ValueError, "class_names has 2 names, the model 10 outputs"),
])
def test_bad_arguments(tmp_path, kwargs, error, message):
    with pytest.raises(error, match=message):
        export_onnx(_model(), tmp_path / "x.onnx", **kwargs)
    assert not (tmp_path / "x.onnx").exists()


def test_rejects_what_is_not_a_model(tmp_path):
    with pytest.raises(TypeError, match="expected a ced_train.models.CED or a checkpoint path, got dict"):
        export_onnx({}, tmp_path / "x.onnx")
