"""Chunks of long files: decoded around the chunk only, equal to resampling the whole file."""

import tracemalloc

import numpy as np
import pytest
import soundfile as sf

from ced_train import audio
from ced_train.audio import RESAMPLE_MARGIN, load_audio, load_chunk, resample, resample_window, resampled_length
from ced_train.errors import DataError

SR = 16000
CHUNK = 160_000
# soxr resamples in float32 blocks whose phase follows the start of its input, so a window that
# does not start at the file's first frame differs from the whole-file result by about one
# few float32 rounding steps of the signal (measured: at most 3.6e-7 on +-0.5 noise at 8-48 kHz).
TOLERANCE = 1e-6


def _noise(num_frames, channels=1, seed=0):
    x = np.random.default_rng(seed).uniform(-0.5, 0.5, (num_frames, channels)).astype(np.float32)
    return x[:, 0] if channels == 1 else x


@pytest.mark.parametrize("rate", [8000, 11025, 22050, 32000, 44100, 48000])
def test_chunks_equal_slices_of_the_whole_resampled_file(tmp_path, rate):
    num_frames = rate * 25 + 7  # not a whole number of periods
    path = tmp_path / f"x{rate}.wav"
    sf.write(str(path), _noise(num_frames, seed=rate), rate, subtype="FLOAT")
    whole = resample(sf.read(str(path), dtype="float32")[0], rate, SR)
    n = resampled_length(num_frames, rate, SR)
    assert len(whole) == n
    # file start, an aligned and an unaligned middle, and the file's end
    for start, end in [(0, CHUNK), (CHUNK, 2 * CHUNK), (12_345, 12_345 + CHUNK), (n - CHUNK, n), (n - 5, n)]:
        got = load_chunk(path, rate, start, end, SR, num_frames=num_frames)
        assert got.dtype == np.float32 and len(got) == end - start
        first, _, _ = resample_window(rate, SR, start, end, num_frames)
        if first == 0:  # the window starts where the whole file does: the same soxr call
            np.testing.assert_array_equal(got, whole[start:end])
        else:
            np.testing.assert_allclose(got, whole[start:end], rtol=0, atol=TOLERANCE)


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


def test_load_audio_in_blocks_equals_its_chunks(tmp_path):
    rate = 22050
    path = tmp_path / "long.wav"
    sf.write(str(path), _noise(rate * 130), rate, subtype="FLOAT")
    wave = load_audio(path)
    assert len(wave) == resampled_length(rate * 130, rate, SR)
    np.testing.assert_array_equal(wave[60 * SR:120 * SR], load_chunk(path, rate, 60 * SR, 120 * SR, SR))
    whole = resample(sf.read(str(path), dtype="float32")[0], rate, SR)
    np.testing.assert_allclose(wave, whole, rtol=0, atol=TOLERANCE)


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
