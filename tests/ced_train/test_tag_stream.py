"""tag streams a long recording through a CED model a few chunks at a time: the same
probabilities as the model on the whole recording, with memory bounded by the chunks."""

import tracemalloc

import numpy as np
import pytest
import soundfile as sf
import torch

from ced_train import audio, models
from ced_train.audio import RESAMPLE_MARGIN, SEGMENT_SECONDS, load_audio
from ced_train.evaluate import _CHUNKS_PER_CALL, predict, tag

SR = 16000
HOP = 160
NUM_CLASSES = 6
# Streaming computes the same frames and chunks in other batches: float32 rounding only.
TOLERANCE = 1e-6


def _model(target_length):
    torch.manual_seed(0)
    return models.create("ced_custom", num_classes=NUM_CLASSES, embed_dim=32, depth=1, num_heads=2,
                         target_length=target_length).eval()


def _signal(num_samples, rate=SR, seed=0):
    """Tones in noise, then silence with a one-LSB click every half second (the last 40 %): the
    silence gets the dB floor set by the loudest frame of the whole recording, so a quiet piece
    floored by its own loudest frame would differ (the clicks keep it from being constant, which
    a ViT with LayerNorm would not tell apart)."""
    rng = np.random.default_rng(seed)
    t = np.arange(num_samples) / rate
    x = 0.3 * np.sin(2 * np.pi * (300 + 200 * np.sin(t / 3)) * t) + 0.05 * rng.standard_normal(num_samples)
    x[num_samples * 3 // 5:] = 0.0
    x[num_samples * 3 // 5::rate // 2] = 2.0 ** -15
    return x.astype(np.float32)


def _probabilities(model, wave_or_path):
    return np.array([p for _, _, p in sorted(tag(model, wave_or_path, top=NUM_CLASSES))])


def _whole(model, wave):
    return predict(model, np.pad(wave, (0, max(0, SR // 4 - len(wave))))[None])[0]


def test_a_few_minutes_file_tags_as_the_model_on_the_whole_recording(tmp_path):
    model = _model(1012)  # CED's own 10 s chunks: 18 chunks in two model calls
    path = tmp_path / "three_minutes.flac"
    sf.write(str(path), _signal(180 * 44100 + 17, 44100), 44100, subtype="PCM_16")
    whole = _whole(model, load_audio(path))
    np.testing.assert_allclose(_probabilities(model, path), whole, rtol=0, atol=TOLERANCE)
    assert not model.training


@pytest.mark.parametrize("num_samples", [
    2400,                                        # shorter than 0.25 s: zero-padded
    64 * HOP - 1,                                # shorter than a chunk (64 frames)
    63 * HOP,                                    # exactly one chunk of frames (63 * HOP samples + 1 frame)
    64 * HOP,                                    # one chunk and 1 frame
    3 * 64 * HOP,                                # exactly k chunks of samples
    3 * 64 * HOP + 1,                            # k chunks of samples + 1
    (3 * 64 - 1) * HOP,                          # exactly k chunks of frames
    (3 * 64 - 1) * HOP + HOP,                    # k chunks of frames + 1 frame
    (_CHUNKS_PER_CALL * 64 - 1) * HOP,           # exactly one model call
    (_CHUNKS_PER_CALL * 64 + 20) * HOP + 7,      # a second call of one short chunk
])
def test_chunk_boundaries_tag_as_the_whole_recording(num_samples):
    model = _model(64)
    wave = _signal(num_samples, seed=num_samples)
    np.testing.assert_allclose(_probabilities(model, wave), _whole(model, wave), rtol=0, atol=TOLERANCE)


def test_files_at_16k_and_44k_tag_as_their_decoded_whole(tmp_path):
    model = _model(64)
    for rate, seconds in [(SR, 47.3), (44100, 31.01)]:
        path = tmp_path / f"{rate}.wav"
        sf.write(str(path), _signal(int(seconds * rate), rate), rate, subtype="FLOAT")
        np.testing.assert_allclose(_probabilities(model, path), _whole(model, load_audio(path)), rtol=0,
                                   atol=TOLERANCE)


def test_memory_is_bounded_by_the_chunks_not_the_file(tmp_path, monkeypatch):
    rate, seconds, chunk = 44100, 600, 64
    path = tmp_path / "ten_minutes.flac"
    with sf.SoundFile(str(path), "w", rate, 1, "PCM_16", format="FLAC") as out:
        for minute in range(seconds // 60):
            out.write(_signal(60 * rate, rate, seed=minute))
    reads, mel_inputs, chunk_inputs = [], [], []
    read_frames = audio.read_frames

    def counting_read(p, start=0, stop=None):
        reads.append(stop - start)
        return read_frames(p, start, stop)

    monkeypatch.setattr(audio, "read_frames", counting_read)
    model = _model(chunk)
    model.front_end[0].register_forward_hook(lambda m, args, out: mel_inputs.append(args[0].shape[-1]))
    predict_chunk = model.predict_chunk
    monkeypatch.setattr(model, "predict_chunk", lambda x, **kw: chunk_inputs.append(x.shape) or predict_chunk(x, **kw))
    tracemalloc.start()
    try:
        tag(model, path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    segment_window = (SEGMENT_SECONDS * SR + 2 * RESAMPLE_MARGIN + 2 * 160) * rate // SR
    assert max(reads) <= segment_window  # one resampling segment and its margins per read
    assert sum(reads) <= 2 * seconds * rate * segment_window / (SEGMENT_SECONDS * rate)  # each segment once a pass
    assert max(mel_inputs) <= (_CHUNKS_PER_CALL * chunk + 4) * HOP  # a model call's chunks and the STFT's reach
    assert max(shape[0] for shape in chunk_inputs) == _CHUNKS_PER_CALL
    # numpy's side: three kept segments, a decoded window and its resampling (~6 MB, measured
    # on a first call); the recording at 16 kHz alone would take 38 MB, decoded at 44.1 kHz 106 MB
    whole_file_bytes = seconds * SR * 4
    assert peak < whole_file_bytes / 4, peak


def test_predict_chunk_refuses_what_predict_would_not_score_as_one_chunk():
    model = _model(64)
    with pytest.raises(ValueError, match=r"^expected a log-mel chunk of shape \(B, 64, T\) with 16 <= T <= 64, "
                                         r"got \(1, 64, 65\)$"):
        model.predict_chunk(torch.zeros(1, 64, 65))
    with pytest.raises(ValueError, match=r"with 16 <= T <= 64, got \(1, 64, 15\)$"):
        model.predict_chunk(torch.zeros(1, 64, 15))
    assert model.predict_chunk(torch.zeros(2, 64, 1), last_of_many=True).shape == (2, NUM_CLASSES)
