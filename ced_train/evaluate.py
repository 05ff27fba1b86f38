"""Evaluation (mAP over a labelled dataset) and tagging (top classes of one recording).

A *model* here is anything that maps a waveform batch to probabilities: an ``nn.Module`` with
``predict(wave [B, S]) -> probs [B, C]`` (the CED ViTs of ``ced_train.models``), or any
callable doing the same. Inputs are float32 tensors at 16 kHz.

:func:`tag` streams a recording through a CED model with memory bounded by a chunk, in two
passes over the file: the first finds the log-mel's maximum (the top-dB floor is relative to
the whole recording's maximum), the second computes each ``target_length``-frame chunk's
log-mel (from its samples plus the STFT's reach on each side, so the frames are the whole
recording's) and averages the chunks' probabilities, as ``CED.predict`` does on the whole.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .audio import MIN_CLIP_SECONDS, SAMPLE_RATE, load_audio, sample_reader
from .data import AudioDataset
from .errors import CedTrainError
from .frontend import num_frames
from .labels import default_names
from .metrics import mean_average_precision
from .progress import Progress
from .sampling import equal_length_batches

__all__ = ["EvalResult", "evaluate", "write_per_class_csv", "predict", "tag"]

# Shorter input is zero-padded for tagging: one 16-frame patch at a 10 ms hop needs ~0.16 s.
_MIN_TAG_SAMPLES = SAMPLE_RATE // 4
# Chunks per model call when tagging a long recording: batched for speed, few for memory.
_CHUNKS_PER_CALL = 16


@dataclass(frozen=True)
class EvalResult:
    """mAP over the classes with positives, per-class AP (NaN: no positive) and clip count."""

    mAP: float
    per_class_ap: np.ndarray
    num_clips: int


def _predict_fn(model) -> Callable:
    fn = getattr(model, "predict", model)
    if not callable(fn):
        raise TypeError("model must have a predict method or be callable, "
                        f"got {type(model).__name__}")
    return fn


def predict(model, waves, device: str | torch.device = "cpu") -> np.ndarray:
    """Run a model on a waveform batch and return probabilities as float64 numpy.

    Args:
        model: an ``nn.Module`` with ``predict``, or a callable; put in eval mode for the call
            (its previous mode is restored).
        waves: float32 ``[B, S]`` numpy array or tensor at 16 kHz.
        device: the model's device; inputs are moved there (the model is not moved).

    Returns:
        float64 ``[B, C]`` probabilities.

    Raises:
        ValueError: the output is not ``[B, C]`` or holds values outside ``[0, 1]``/NaN.

    Example:
        >>> probs = predict(model, np.zeros((2, 16000), np.float32))  # doctest: +SKIP
    """
    fn = _predict_fn(model)
    x = torch.as_tensor(waves, dtype=torch.float32).to(device)
    was_training = isinstance(model, torch.nn.Module) and model.training
    if isinstance(model, torch.nn.Module):
        model.eval()
    try:
        with torch.inference_mode():
            out = fn(x)
    finally:
        if was_training:
            model.train()
    if torch.is_tensor(out):
        out = out.detach().double().cpu().numpy()
    out = np.asarray(out, dtype=np.float64)
    if out.ndim != 2 or out.shape[0] != x.shape[0]:
        raise CedTrainError(f"model returned shape {out.shape}, expected [{x.shape[0]}, num_classes]")
    if not ((out >= 0) & (out <= 1)).all():
        raise CedTrainError("model returned values outside [0, 1] (or NaN): "
                         "predict must give probabilities")
    return out


def evaluate(
    model, dataset: AudioDataset, batch_size: int = 32, device: str | torch.device = "cpu",
    progress: bool = False,
) -> EvalResult:
    """Score every chunk of a labelled dataset and compute mAP (sklearn's AP, macro average).

    Chunks are batched by equal length, so no chunk is scored with padding (and each
    chunk of a long file counts as one clip with the file's labels).

    Args:
        model: an ``nn.Module`` with ``predict`` or a callable (see :func:`predict`).
        dataset: an :class:`AudioDataset` with labels.
        batch_size: chunks per forward pass.
        device: the model's device; inputs are moved there (the model is not moved).
        progress: print a progress line (chunks/s, ETA) to stderr every few seconds.

    Returns:
        :class:`EvalResult`.

    Raises:
        ValueError: the dataset has no labels, or the model's class count differs from it.

    Example:
        >>> ds = AudioDataset.from_tsv("eval.tsv", num_classes=527)  # doctest: +SKIP
        >>> print(f"mAP {evaluate(model, ds).mAP:.4f}")               # doctest: +SKIP
    """
    if dataset.labels([0]) is None:
        raise CedTrainError(f"{dataset.source}: cannot evaluate without labels (no 'labels' column)")
    if batch_size < 1:
        raise CedTrainError(f"batch_size must be positive, got {batch_size}")
    num_classes = dataset.num_classes
    scores = np.zeros((len(dataset), num_classes))
    with Progress(f"evaluate {Path(dataset.source).name}", len(dataset), "chunks", enabled=progress) as line:
        for ids in equal_length_batches(dataset.lengths, batch_size):
            probs = predict(model, dataset.load_batch(ids), device)
            if probs.shape[1] != num_classes:
                raise CedTrainError(f"model has {probs.shape[1]} outputs but {dataset.source} has "
                                 f"{num_classes} classes")
            scores[ids] = probs
            line.update(len(ids))
    m, per_class = mean_average_precision(scores, dataset.labels(range(len(dataset))))
    return EvalResult(m, per_class, len(dataset))


def write_per_class_csv(
    path: str | os.PathLike, per_class_ap: Sequence[float], names: Sequence[str] | None = None
) -> Path:
    """Write ``index,name,ap`` rows, one per class (``nan`` for classes without positives).

    Args:
        path: output CSV.
        per_class_ap: ``[C]`` APs, e.g. ``EvalResult.per_class_ap``.
        names: ``C`` class names; None uses :func:`ced_train.labels.default_names`.

    Returns:
        ``path`` as a Path.

    Raises:
        ValueError: ``names`` has a different length.

    Example:
        >>> write_per_class_csv("per_class.csv", result.per_class_ap)  # doctest: +SKIP
    """
    ap = np.asarray(per_class_ap, dtype=np.float64)
    names = default_names(len(ap)) if names is None else list(names)
    if len(names) != len(ap):
        raise CedTrainError(f"got {len(names)} names for {len(ap)} classes")
    path = Path(path)
    with open(path, "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["index", "name", "ap"])
        for i, (name, v) in enumerate(zip(names, ap)):
            w.writerow([i, name, "nan" if np.isnan(v) else f"{v:.6f}"])
    return path


def tag(
    model,
    wave_or_path,
    top: int = 5,
    names: Sequence[str] | None = None,
    device: str | torch.device = "cpu",
) -> list[tuple[int, str, float]]:
    """The ``top`` most probable classes of one recording of any length.

    Args:
        model: a CED model (``ced_train.models``), streamed a ``target_length`` chunk at a
            time with memory bounded by a chunk (see the module doc), or another ``nn.Module``
            with ``predict`` or a callable (see :func:`predict`), given the whole recording.
        wave_or_path: a path (decoded mono at 16 kHz as :func:`ced_train.audio.load_audio`
            decodes it, a segment at a time; a file under ``MIN_CLIP_SECONDS`` is refused, as
            datasets refuse it) or a 1-D float waveform at 16 kHz (numpy or tensor). Input
            shorter than 0.25 s is zero-padded to 0.25 s.
        top: how many classes to return, at least 1 (more than the number of classes returns
            them all).
        names: class names; None: AudioSet names for 527 outputs, else ``class_<i>``.
        device: the model's device; inputs are moved there (the model is not moved).

    Returns:
        ``[(index, name, probability), ...]`` sorted by decreasing probability.

    Raises:
        DataError: the file cannot be read, is shorter than 0.15 s, or holds NaN or Inf.
        ValueError: ``top`` is below 1, the waveform is empty or not 1-D, or ``names`` has the
            wrong length.

    Example:
        >>> for i, name, p in tag(model, "dog.wav"):  # doctest: +SKIP
        ...     print(f"{p:.3f} {name}")
    """
    if top < 1:
        raise CedTrainError(f"top must be at least 1 (the number of classes to return), got {top}")
    if isinstance(wave_or_path, (str, os.PathLike)):
        num_samples, read = sample_reader(wave_or_path, min_seconds=MIN_CLIP_SECONDS)
    else:
        wave = torch.as_tensor(wave_or_path, dtype=torch.float32).cpu().numpy()
        if wave.ndim != 1 or wave.size == 0:
            raise CedTrainError(f"expected a non-empty 1-D waveform, got shape {wave.shape}")
        num_samples, read = len(wave), lambda start, end: wave[start:end]
    if num_samples < _MIN_TAG_SAMPLES:
        wave = np.pad(read(0, num_samples), (0, _MIN_TAG_SAMPLES - num_samples))
        num_samples, read = len(wave), lambda start, end: wave[start:end]
    if hasattr(model, "predict_chunk") and hasattr(model, "front_end"):
        probs = _streamed_probabilities(model, num_samples, read, device)
    else:  # any other model takes the whole recording
        probs = predict(model, read(0, num_samples)[None], device)[0]
    names = default_names(len(probs)) if names is None else list(names)
    if len(names) != len(probs):
        raise CedTrainError(f"got {len(names)} names for a model with {len(probs)} outputs")
    best = np.argsort(-probs, kind="stable")[:top]
    return [(int(i), names[i], float(probs[i])) for i in best]


def _streamed_probabilities(model, num_samples: int, read: Callable[[int, int], np.ndarray],
                            device: str | torch.device) -> np.ndarray:
    """``model.predict`` of the whole recording (``read(start, end)`` of ``num_samples``), up to
    ``_CHUNKS_PER_CALL`` chunks at a time (see the module doc): float64 ``[C]``."""
    mel, to_db = model.front_end[0], model.front_end[1]
    hop = mel.spectrogram.hop_length
    reach = -(-(mel.spectrogram.n_fft // 2) // hop)  # frames on each side whose samples a frame needs
    total, chunk = num_frames(num_samples, hop), model.config.target_length
    step = chunk * _CHUNKS_PER_CALL
    pieces = [(first, min(total, first + step)) for first in range(0, total, step)]

    def mel_power(first: int, stop: int) -> torch.Tensor:  # frames [first, stop): (1, n_mels, T)
        start = max(0, first - reach) * hop
        wave = torch.from_numpy(read(start, min(num_samples, (stop + reach) * hop))).to(device)
        skip = first - start // hop
        return mel(wave[None])[..., skip:skip + stop - first]

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            max_db = max(to_db(mel_power(*piece)).amax() for piece in pieces)
            summed = torch.zeros((), dtype=torch.float64, device=device)
            for first, stop in pieces:
                logmel = to_db(mel_power(first, stop), max_db=max_db)[0]  # (n_mels, T)
                full = (stop - first) // chunk
                if full:
                    chunks = logmel[:, :full * chunk].unflatten(-1, (full, chunk)).transpose(0, 1)  # (full, n_mels, chunk)
                    summed = summed + model.predict_chunk(chunks).double().sum(0)
                if full * chunk < stop - first:
                    last = logmel[None, :, full * chunk:]
                    summed = summed + model.predict_chunk(last, last_of_many=total > chunk)[0].double()
    finally:
        model.train(was_training)
    return (summed / -(-total // chunk)).cpu().numpy()
