"""Decoding audio exactly: one file, or one chunk of it, as float32 mono at the dataset's rate.

A file at the target rate is read from ``start`` to ``end``. A file at another rate has one
canonical resampling, defined segment by segment: output segment ``k`` is the samples
``[k·L, (k+1)·L)`` with ``L = SEGMENT_SECONDS`` seconds at the target rate (a multiple of the
output period, since that period divides the target rate), computed by :func:`resample_segment`
from the input frames around it only (:func:`resample_window`: a window that starts on a
resampling period, so its output falls on the file's output grid, and reaches
``RESAMPLE_MARGIN`` output samples beyond each end of the segment, so soxr's filter sees the
same neighbours), keeping the segment's own samples. :func:`load_audio` and :func:`resample`
compute every segment, :func:`load_chunk` only the segments a chunk overlaps; all call the
same segment function on the same input frames, and soxr is deterministic, so a chunk is
bit-for-bit the same samples of the whole file however it is fetched. (One soxr call over the
whole file would not do: soxr works in float32 blocks whose phase follows where its input
starts, so a window differs from it by a float32 rounding step or two.) Cost and memory are
bounded by the chunk plus at most two segments and their margins, not by the file. A dataset
chunk of ``SEGMENT_SECONDS`` starts on a segment and is exactly one. Lengths after resampling
are computed in exact integers (:func:`resampled_length`). ``RESAMPLER`` names this definition
(a store records it: other resampled bits give other teacher records).

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

__all__ = ["AUDIO_SUFFIXES", "MIN_CLIP_SECONDS", "RESAMPLER", "RESAMPLE_MARGIN", "SAMPLE_RATE", "SEGMENT_SECONDS",
           "audio_info", "check_length", "load_audio", "load_chunk", "read_frames", "resample", "resample_segment",
           "resample_window", "resampled_length", "sample_reader", "scan_file"]

SAMPLE_RATE = 16000
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
# The shortest clip a CED model takes: 16 spectrogram frames (one patch) at hop 160.
MIN_CLIP_SECONDS = 0.15
# Output samples decoded beyond each end of a segment: soxr's filter reaches < 0.05 s at every
# rate from 8 to 48 kHz; 0.128 s keeps the window's edges from reaching the segment's samples.
RESAMPLE_MARGIN = 2048
# Seconds of output per resampling segment: a default 10 s dataset chunk is exactly one segment.
SEGMENT_SECONDS = 10
# The resampling's identity, recorded in stores (see the module doc); change it with the bits.
RESAMPLER = f"soxr HQ in {SEGMENT_SECONDS} s segments, margin {RESAMPLE_MARGIN} (1)"
# scan_file works through a long file in blocks of this many output samples.
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


def _soxr(x: np.ndarray, rate: int, target: int) -> np.ndarray:
    """One soxr call: exactly :func:`resampled_length` samples."""
    y = soxr.resample(x, rate, target).astype(np.float32, copy=False)
    n = resampled_length(len(x), rate, target)
    # Guard against a soxr version that rounds differently: keys promise exactly n samples.
    return y[:n] if len(y) >= n else np.pad(y, (0, n - len(y)))


def resample_segment(read: Callable[[int, int], np.ndarray], rate: int, target: int, index: int,
                     num_frames: int) -> np.ndarray:
    """Segment ``index`` of the canonical resampling (see the module doc) of ``num_frames`` frames
    at ``rate``: output samples ``[index·L, min((index+1)·L, n))``, ``L = SEGMENT_SECONDS·target``.

    ``read(first, stop)`` returns input frames ``[first, stop)`` as float32 mono; only the
    segment's window is read. Fewer samples come back when ``read`` returns fewer frames.

    Example:
        >>> x = np.zeros(44100 * 25, np.float32)
        >>> len(resample_segment(lambda a, b: x[a:b], 44100, 16000, 2, len(x)))
        80000
    """
    size = SEGMENT_SECONDS * target
    start, end = index * size, min(resampled_length(num_frames, rate, target), (index + 1) * size)
    first, stop, offset = resample_window(rate, target, start, end, num_frames)
    return _soxr(read(first, stop), rate, target)[start - offset:end - offset]


def _gather(segment: Callable[[int], np.ndarray], start: int, end: int, size: int) -> np.ndarray:
    """Samples ``[start, end)`` of a signal given as its ``size``-sample segments ``segment(index)``."""
    parts = [segment(i)[max(0, start - i * size):end - i * size] for i in range(start // size, -(-end // size))]
    if len(parts) == 1:
        return parts[0]
    return np.concatenate(parts) if parts else np.empty(0, np.float32)  # no parts when start == end


def resample(x: np.ndarray, rate: int, target: int) -> np.ndarray:
    """``x`` at ``rate`` resampled to ``target``: the canonical resampling, segment by segment
    (see the module doc), exactly :func:`resampled_length` samples.

    Example:
        >>> len(resample(np.zeros(441, np.float32), 44100, 16000))
        160
    """
    if rate == target:
        return x
    return _gather(lambda index: resample_segment(lambda a, b: x[a:b], rate, target, index, len(x)),
                   0, resampled_length(len(x), rate, target), SEGMENT_SECONDS * target)


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
        raise DataError(f"{path}: {num_samples / sample_rate:.6g} s ({num_samples} samples at {sample_rate} Hz) "
                        f"is shorter than the {min_seconds:g} s minimum ({needed} samples; 16 spectrogram "
                        f"frames: the shortest clip a CED model takes)")


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
    length ``num_frames`` frames (read from its header when None); only the resampling segments
    the chunk overlaps are decoded, so the samples are those of :func:`load_audio` bit for bit
    (see the module doc). ``read(first, stop)`` reads frames as float32 mono
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
        x = _gather(lambda index: resample_segment(read, rate, sample_rate, index, num_frames),
                    start, end, SEGMENT_SECONDS * sample_rate)
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


def load_audio(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE,
               min_seconds: float = MIN_CLIP_SECONDS) -> np.ndarray:
    """Decode a whole audio file as float32 mono at ``sample_rate``.

    A long file is decoded and resampled segment by segment (:func:`load_chunk`), so memory
    beyond the output is bounded by a segment, not the file.

    Args:
        path: any file libsndfile reads (wav, flac, ogg, ...).
        sample_rate: output rate; the file is resampled with soxr when it differs.
        min_seconds: refuse a shorter file; default ``MIN_CLIP_SECONDS``, the shortest clip a CED
            model takes (16 frames); pass 0.0 to take any length.

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
    block = SEGMENT_SECONDS * sample_rate
    for start in range(0, n, block):
        end = min(n, start + block)
        out[start:end] = load_chunk(path, rate, start, end, sample_rate, num_frames=num_frames)
    return out


def sample_reader(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE, min_seconds: float = MIN_CLIP_SECONDS
                  ) -> tuple[int, Callable[[int, int], np.ndarray]]:
    """A file's length at ``sample_rate`` and a ``read(start, end)`` of its samples, for walking
    through a long file forwards with memory bounded by a few segments: the samples are those of
    :func:`load_audio` bit for bit; each segment is decoded once while reads move forwards (the
    last three are kept).

    Raises:
        DataError: as :func:`load_audio` (a read raises it for undecodable or non-finite audio).

    Example:
        >>> num_samples, read = sample_reader("hour.flac")  # doctest: +SKIP
        >>> first_minute = read(0, 60 * 16000)              # doctest: +SKIP
    """
    path = Path(path)
    rate, num_frames = audio_info(path, sample_rate, min_seconds)
    n, size = resampled_length(num_frames, rate, sample_rate), SEGMENT_SECONDS * sample_rate
    kept: dict[int, np.ndarray] = {}

    def segment(index: int) -> np.ndarray:
        if index not in kept:
            if len(kept) == 3:
                del kept[min(kept)]
            kept[index] = load_chunk(path, rate, index * size, min(n, (index + 1) * size), sample_rate,
                                     num_frames=num_frames)
        return kept[index]

    return n, lambda start, end: _gather(segment, start, end, size)
