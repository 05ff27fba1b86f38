"""Decoding audio exactly: one file, or one chunk of it, as float32 mono at the dataset's rate.

A file at the target rate is read from ``start`` to ``end``; a file at another rate is decoded
whole, resampled with soxr and sliced, so the samples of a chunk never depend on how it was
fetched. Lengths after resampling are computed in exact integers (:func:`resampled_length`).

Example:
    >>> wave = load_audio("clip.flac")                 # doctest: +SKIP
    >>> rate, frames = audio_info(Path("clip.flac"))   # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from ced_train.errors import DataError

__all__ = ["AUDIO_SUFFIXES", "SAMPLE_RATE", "audio_info", "load_audio", "load_chunk", "read_frames",
           "resample", "resampled_length"]

SAMPLE_RATE = 16000
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")


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


def resample(x: np.ndarray, rate: int, target: int) -> np.ndarray:
    """``x`` at ``rate`` resampled to ``target`` with soxr: exactly :func:`resampled_length` samples."""
    if rate == target:
        return x
    y = soxr.resample(x, rate, target).astype(np.float32, copy=False)
    n = resampled_length(len(x), rate, target)
    # Guard against a soxr version that rounds differently: keys promise exactly n samples.
    return y[:n] if len(y) >= n else np.pad(y, (0, n - len(y)))


def audio_info(path: Path, sample_rate: int = SAMPLE_RATE) -> tuple[int, int]:
    """``(rate, num_frames)`` of an audio file, without decoding it.

    Raises:
        DataError: the file is missing, unreadable, empty, or shorter than one sample at
            ``sample_rate``.
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
    return int(info.samplerate), int(info.frames)


def load_chunk(path: Path, rate: int, start: int, end: int, sample_rate: int = SAMPLE_RATE,
               key: str | None = None) -> np.ndarray:
    """Samples ``[start, end)`` at ``sample_rate`` of a file whose own rate is ``rate``.

    Raises:
        DataError: the file cannot be decoded or holds fewer samples than its header said.
    """
    if rate == sample_rate:
        x = read_frames(path, start, end)
    else:
        x = resample(read_frames(path), rate, sample_rate)[start:end]
    if len(x) != end - start:
        raise DataError(
            f"{path}: chunk {key or f'{start}-{end}'}: expected {end - start} samples, decoded "
            f"{len(x)} (file shorter than its header says?)")
    return x


def load_audio(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode a whole audio file as float32 mono at ``sample_rate``.

    Args:
        path: any file libsndfile reads (wav, flac, ogg, ...).
        sample_rate: output rate; the file is resampled with soxr when it differs.

    Returns:
        float32 array ``[S]``: the mean of the channels, resampled.

    Raises:
        DataError: the file is missing, unreadable or empty.

    Example:
        >>> wave = load_audio("clip.flac")  # doctest: +SKIP
    """
    path = Path(path)
    rate, _ = audio_info(path, sample_rate)
    return resample(read_frames(path), rate, sample_rate)
