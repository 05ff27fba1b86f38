"""Decoding audio exactly: one file, or one chunk of it, as float32 mono at the dataset's rate.

A file at the target rate is read from ``start`` to ``end``. A file at another rate is read
only around the chunk (:func:`resample_window`): the window starts on a resampling period (so
its output samples fall on the whole file's output grid) and reaches ``RESAMPLE_MARGIN`` output
samples beyond each end of the chunk (so soxr's filter sees the same neighbours). Cost and
memory are bounded by the chunk, not the file. The result equals resampling the whole file and
slicing to within about one float32 rounding step (soxr works in float32 in blocks whose
phase depends on where its input starts; tests/ced_train/test_audio_window.py measures
it), and is exactly equal when the window starts at the file's first frame. The samples of a
chunk never depend on how it was fetched. Lengths after resampling are computed in exact
integers (:func:`resampled_length`).

Every decoded chunk is checked to be finite: NaN or Inf audio is a :class:`DataError` naming
the file.

Example:
    >>> wave = load_audio("clip.flac")                 # doctest: +SKIP
    >>> rate, frames = audio_info(Path("clip.flac"))   # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable

import numpy as np
import soundfile as sf
import soxr

from ced_train.errors import DataError

__all__ = ["AUDIO_SUFFIXES", "MIN_CLIP_SECONDS", "RESAMPLE_MARGIN", "SAMPLE_RATE", "audio_info",
           "check_length", "load_audio", "load_chunk", "read_frames", "resample", "resample_window",
           "resampled_length", "scan_file"]

SAMPLE_RATE = 16000
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
# The shortest clip a CED model takes: 16 spectrogram frames (one patch) at hop 160.
MIN_CLIP_SECONDS = 0.15
# Output samples decoded beyond each end of a chunk: soxr's filter reaches < 0.05 s at every
# rate from 8 to 48 kHz; 0.128 s leaves the chunk's samples independent of the window's edges.
RESAMPLE_MARGIN = 2048
# load_audio and scan_file work through a long file in blocks of this many output samples.
_BLOCK = 60 * SAMPLE_RATE


def resampled_length(num_frames: int, rate: int, target: int) -> int:
    """soxr's output length, ``round(n·target/rate)`` with halves rounded up, in exact integers.

    Example:
        >>> resampled_length(441, 44100, 16000)
        160
    """
    return (2 * num_frames * target + rate) // (2 * rate)


def read_frames(path: Path, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Frames ``[start, stop)`` of ``path`` as float32 mono (mean of the channels).

    Raises:
        DataError: the file cannot be decoded.
    """
    try:
        x, _ = sf.read(str(path), start=start, stop=stop, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        raise DataError(f"{path}: cannot decode audio: {e}") from None
    return x.mean(axis=1, dtype=np.float32) if x.shape[1] > 1 else x[:, 0].copy()


def resample_window(rate: int, target: int, start: int, end: int, num_frames: int) -> tuple[int, int, int]:
    """The input frames ``[first, stop)`` to resample for output samples ``[start, end)``, and the
    output index of the window's first sample.

    ``first`` is a multiple of the period ``rate / gcd(rate, target)`` frames, so the window's
    output sample ``j`` is the whole file's output sample ``offset + j``.

    Example:
        >>> resample_window(44100, 16000, 160000, 320000, 44100 * 60)
        (435267, 887733, 157920)
    """
    g = math.gcd(rate, target)
    period_in, period_out = rate // g, target // g
    first_period = max(0, start - RESAMPLE_MARGIN) // period_out
    stop_period = -(-(end + RESAMPLE_MARGIN) // period_out)
    return first_period * period_in, min(num_frames, stop_period * period_in), first_period * period_out


def resample(x: np.ndarray, rate: int, target: int) -> np.ndarray:
    """``x`` at ``rate`` resampled to ``target`` with soxr: exactly :func:`resampled_length` samples."""
    if rate == target:
        return x
    y = soxr.resample(x, rate, target).astype(np.float32, copy=False)
    n = resampled_length(len(x), rate, target)
    # Guard against a soxr version that rounds differently: keys promise exactly n samples.
    return y[:n] if len(y) >= n else np.pad(y, (0, n - len(y)))


def audio_info(path: Path, sample_rate: int = SAMPLE_RATE, min_seconds: float = 0.0) -> tuple[int, int]:
    """``(rate, num_frames)`` of an audio file, without decoding it.

    Raises:
        DataError: the file is missing, unreadable, empty, or shorter than one sample at
            ``sample_rate`` or than ``min_seconds``.
    """
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        raise DataError(f"{path}: not a readable audio file: {e}") from None
    if info.frames <= 0:
        raise DataError(f"{path}: empty audio file (0 frames)")
    if resampled_length(info.frames, info.samplerate, sample_rate) == 0:
        raise DataError(f"{path}: {info.frames} frames at {info.samplerate} Hz is less than "
                        f"one sample at {sample_rate} Hz")
    check_length(path, resampled_length(info.frames, info.samplerate, sample_rate), sample_rate, min_seconds)
    return int(info.samplerate), int(info.frames)


def check_length(path, num_samples: int, sample_rate: int, min_seconds: float) -> None:
    """Raise a :class:`DataError` naming ``path`` when it is shorter than ``min_seconds``."""
    needed = math.ceil(min_seconds * sample_rate - 1e-9)
    if num_samples < needed:
        raise DataError(f"{path}: {num_samples / sample_rate:.3f} s ({num_samples} samples at {sample_rate} Hz) "
                        f"is shorter than the {min_seconds:g} s minimum (16 spectrogram frames: the "
                        f"shortest clip a CED model takes)")


def _check_finite(path, x: np.ndarray, start: int, end: int) -> np.ndarray:
    if not np.isfinite(x).all():
        bad = int(np.flatnonzero(~np.isfinite(x))[0]) + start
        raise DataError(f"{path}: non-finite audio (NaN or Inf) at sample {bad} of [{start}, {end}) "
                        f"at the dataset's rate; expected finite samples")
    return x


def load_chunk(path: Path, rate: int, start: int, end: int, sample_rate: int = SAMPLE_RATE,
               key: str | None = None, num_frames: int | None = None,
               read: Callable[[int, int], np.ndarray] | None = None) -> np.ndarray:
    """Samples ``[start, end)`` at ``sample_rate`` of a file whose own rate is ``rate`` and
    length ``num_frames`` frames (read from its header when None); only a window around the
    chunk is decoded (see the module doc). ``read(first, stop)`` reads frames as float32 mono
    (default: :func:`read_frames` of ``path``; ``ced_train.packs`` passes a pack reader).

    Raises:
        DataError: the file cannot be decoded, holds fewer samples than its header said, or
            holds NaN or Inf.
    """
    read = read or (lambda first, stop: read_frames(path, first, stop))
    if rate == sample_rate:
        x = read(start, end)
    else:
        num_frames = sf.info(str(path)).frames if num_frames is None else num_frames
        first, stop, offset = resample_window(rate, sample_rate, start, end, num_frames)
        x = resample(read(first, stop), rate, sample_rate)[start - offset:end - offset]
    if len(x) != end - start:
        raise DataError(
            f"{path}: chunk {key or f'{start}-{end}'}: expected {end - start} samples, decoded "
            f"{len(x)} (file shorter than its header says?)")
    return _check_finite(path, x, start, end)


def scan_file(path: Path, rate: int, num_frames: int, sample_rate: int = SAMPLE_RATE,
              read: Callable[[int, int], np.ndarray] | None = None) -> None:
    """Decode a whole file block by block (memory bounded by a block) to find what only decoding
    finds: a file corrupt in the middle, or non-finite audio. ``read(first, stop)`` reads
    frames (default: :func:`read_frames` of ``path``).

    Raises:
        DataError: naming the file and what is wrong.
    """
    read = read or (lambda first, stop: read_frames(path, first, stop))
    n = resampled_length(num_frames, rate, sample_rate)
    for start in range(0, n, _BLOCK):
        end = min(n, start + _BLOCK)
        if rate == sample_rate:
            x = read(start, end)
        else:  # no margin needed: only decodability and finiteness are checked
            first, stop = start * rate // sample_rate, min(num_frames, -(-end * rate // sample_rate))
            x = read(first, stop)
        if len(x) == 0 or (rate == sample_rate and len(x) != end - start):
            raise DataError(f"{path}: decoded {len(x)} samples at {start}, expected {end - start} "
                            f"(file shorter than its header says?)")
        _check_finite(path, x, start, end)


def load_audio(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE, min_seconds: float = 0.0) -> np.ndarray:
    """Decode a whole audio file as float32 mono at ``sample_rate``.

    A long file is decoded and resampled in blocks (:func:`load_chunk`), so memory beyond the
    output is bounded by a block, not the file.

    Args:
        path: any file libsndfile reads (wav, flac, ogg, ...).
        sample_rate: output rate; the file is resampled with soxr when it differs.
        min_seconds: refuse a shorter file.

    Returns:
        float32 array ``[S]``: the mean of the channels, resampled.

    Raises:
        DataError: the file is missing, unreadable, empty, too short, or holds NaN or Inf.

    Example:
        >>> wave = load_audio("clip.flac")  # doctest: +SKIP
    """
    path = Path(path)
    rate, num_frames = audio_info(path, sample_rate, min_seconds)
    n = resampled_length(num_frames, rate, sample_rate)
    out = np.empty(n, dtype=np.float32)
    for start in range(0, n, _BLOCK):
        end = min(n, start + _BLOCK)
        out[start:end] = load_chunk(path, rate, start, end, sample_rate, num_frames=num_frames)
    return out
