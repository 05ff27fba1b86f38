"""Chunks of long files: decoded around the chunk only, the same bits as the whole file."""

import tracemalloc

import numpy as np
import pytest
import soundfile as sf
import soxr
from hypothesis import given, settings
from hypothesis import strategies as st

from ced_train import audio
from ced_train.audio import (RESAMPLE_MARGIN, SEGMENT_SECONDS, load_audio, load_chunk, read_frames, resample,
                             resample_window, resampled_length)
from ced_train.errors import DataError

SR = 16000
CHUNK = 160_000
SEGMENT = SEGMENT_SECONDS * SR
RATES = [8000, 11025, 22050, 32000, 44100, 48000]
# One soxr call over a whole file differs from the segment-wise resampling by a float32 rounding
# step or two (soxr's block phase follows where its input starts; measured at most 3.6e-7 on
# +-0.5 noise at 8-48 kHz): the canonical resampling is still soxr's resampling.
ONE_CALL_TOLERANCE = 1e-6


def _noise(num_frames, channels=1, seed=0):
    x = np.random.default_rng(seed).uniform(-0.5, 0.5, (num_frames, channels)).astype(np.float32)
    return x[:, 0] if channels == 1 else x


def test_soxr_is_deterministic_for_the_same_input():
    x = _noise(44100 * 3)
    np.testing.assert_array_equal(soxr.resample(x, 44100, SR), soxr.resample(x.copy(), 44100, SR))


@pytest.mark.parametrize("rate", RATES)
def test_chunks_are_the_bits_of_the_whole_resampled_file(tmp_path, rate):
    num_frames = rate * 25 + 7  # not a whole number of periods, nor of segments
    path = tmp_path / f"x{rate}.wav"
    sf.write(str(path), _noise(num_frames, seed=rate), rate, subtype="FLOAT")
    whole = load_audio(path)
    n = resampled_length(num_frames, rate, SR)
    assert len(whole) == n
    np.testing.assert_array_equal(resample(read_frames(path), rate, SR), whole)
    # file start, an aligned and an unaligned middle, across a segment edge, and the file's end
    for start, end in [(0, CHUNK), (0, 1), (CHUNK, 2 * CHUNK), (12_345, 12_345 + CHUNK), (SEGMENT - 1, SEGMENT + 1),
                       (SEGMENT - 3, 2 * SEGMENT + 3), (n - CHUNK, n), (n - 5, n), (n - 1, n)]:
        got = load_chunk(path, rate, start, end, SR, num_frames=num_frames)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, whole[start:end])
    one_call = soxr.resample(read_frames(path), rate, SR)[:n]
    np.testing.assert_allclose(whole, one_call, rtol=0, atol=ONE_CALL_TOLERANCE)


_SIGNALS = {rate: _noise(rate * 27, seed=rate) for rate in RATES}


@settings(max_examples=40, deadline=None)
@given(rate=st.sampled_from(RATES), seconds=st.floats(0.01, 27.0), data=st.data())
def test_any_chunk_is_the_bits_of_the_whole_resampling(rate, seconds, data):
    x = _SIGNALS[rate][:max(1, int(seconds * rate))]
    whole = resample(x, rate, SR)
    start = data.draw(st.integers(0, len(whole) - 1), label="start")
    end = data.draw(st.integers(start + 1, len(whole)), label="end")
    got = load_chunk("memory", rate, start, end, SR, num_frames=len(x), read=lambda a, b: x[a:b])
    np.testing.assert_array_equal(got, whole[start:end])


def test_files_at_the_target_rate_are_read_as_stored(tmp_path):
    x = _noise(SR * 23 + 3)
    sf.write(str(tmp_path / "16k.wav"), x, SR, subtype="FLOAT")
    np.testing.assert_array_equal(load_audio(tmp_path / "16k.wav"), x)
    np.testing.assert_array_equal(load_chunk(tmp_path / "16k.wav", SR, 12_345, 212_345), x[12_345:212_345])
    assert resample(x, SR, SR) is x


def test_window_is_bounded_by_the_chunk_not_the_file():
    rate, num_frames = 44100, 44100 * 3600
    first, stop, offset = resample_window(rate, SR, 300 * CHUNK, 301 * CHUNK, num_frames)
    assert first % 441 == 0 and offset * 441 == first * 160  # on the output grid
    assert offset <= 300 * CHUNK - RESAMPLE_MARGIN and (stop * 160) // 441 >= 301 * CHUNK + RESAMPLE_MARGIN
    assert stop - first < (CHUNK + 2 * RESAMPLE_MARGIN + 2 * 160) * 441 // 160  # ~10.3 s, not an hour
    assert resample_window(rate, SR, 0, CHUNK, 1000)[:2] == (0, 1000)  # clipped to the file


def test_memory_of_a_chunk_does_not_grow_with_the_file(tmp_path):
    rate = 44100
    peaks = []
    for seconds in (30, 240):
        path = tmp_path / f"{seconds}.flac"
        sf.write(str(path), _noise(rate * seconds, channels=2), rate, subtype="PCM_16")
        tracemalloc.start()
        load_chunk(path, rate, CHUNK, 2 * CHUNK, SR, num_frames=rate * seconds)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    whole_file_bytes = 240 * rate * 2 * 4  # what decoding the long file whole would hold
    assert peaks[1] < whole_file_bytes / 8
    assert peaks[1] < 1.5 * peaks[0]


def test_a_segment_is_read_once_per_chunk_of_the_segment_length(tmp_path):
    rate, frames_read = 22050, []
    x = _noise(rate * 45)

    def read(first, stop):
        frames_read.append(stop - first)
        return x[first:stop]

    got = load_chunk("memory", rate, 2 * SEGMENT, 3 * SEGMENT, SR, num_frames=len(x), read=read)
    assert len(frames_read) == 1 and frames_read[0] < (SEGMENT + 2 * RESAMPLE_MARGIN + 2 * 320) * rate // SR
    np.testing.assert_array_equal(got, resample(x, rate, SR)[2 * SEGMENT:3 * SEGMENT])


@pytest.mark.parametrize("rate", [SR, 44100])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_audio_is_a_data_error_naming_the_file(tmp_path, rate, bad):
    x = _noise(rate)
    x[rate // 2] = bad
    path = tmp_path / "nan.wav"
    sf.write(str(path), x, rate, subtype="FLOAT")
    n = resampled_length(rate, rate, SR) if rate == SR else SR
    with pytest.raises(DataError, match=rf"^{path}: non-finite audio \(NaN or Inf\) at sample \d+ of \[0, {n}\)"):
        load_chunk(path, rate, 0, n, SR)
    with pytest.raises(DataError, match=rf"^{path}: non-finite audio"):
        audio.scan_file(path, rate, rate)
