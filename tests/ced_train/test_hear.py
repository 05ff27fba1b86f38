"""The HEAR 2021 API on a CED-Tiny checkpoint: the validator's rules, and what the embeddings are.

``hearvalidator`` (2021.0.2) imports tensorflow at module level and depends on it, so it is not
in the test extra; the conformance tests below check the same rules (shapes, dtypes, sizes,
timestamp spacing, on the validator's own inputs) and always run. When hearvalidator is
installed, ``test_hearvalidator_accepts_the_module`` also runs the real validator.
"""

import sys
import types

import pytest
import torch

from ced_train import hear, models


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = models.ced_tiny()
    with torch.no_grad():  # non-trivial batch-norm statistics, so init_bn is not an identity
        model.init_bn[1].running_mean.uniform_(-60, -20)
        model.init_bn[1].running_var.uniform_(50, 200)
    path = tmp_path_factory.mktemp("hear") / "tiny.pt"
    models.save_checkpoint(model, path)
    return path


@pytest.fixture(scope="module")
def model(checkpoint):
    return hear.load_model(str(checkpoint))


def _noise(num_sounds, seconds, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(num_sounds, int(seconds * hear.SAMPLE_RATE), generator=gen) * 2 - 1


def test_load_model_requires_a_checkpoint():
    with pytest.raises(ValueError, match="load_model needs a checkpoint path"):
        hear.load_model()


def test_model_attributes(model):
    assert model.sample_rate == 16000
    assert type(model.scene_embedding_size) is int and model.scene_embedding_size == 192
    assert type(model.timestamp_embedding_size) is int and model.timestamp_embedding_size == 192
    assert isinstance(model, torch.nn.Module) and not model.model.training


def test_scene_embeddings_follow_the_api(model):
    audio = _noise(8, 3.74)  # the validator's input
    emb = hear.get_scene_embeddings(audio, model)
    assert emb.dtype == torch.float32
    assert emb.shape == (8, model.scene_embedding_size)


def test_scene_embedding_is_the_penultimate_layer(model):
    audio = _noise(3, 3.74, seed=1)
    emb = hear.get_scene_embeddings(audio, model)
    ced = model.model
    with torch.no_grad():
        tokens = ced.forward_features(ced.front_end(audio))  # independent path: no chunking code
        torch.testing.assert_close(emb, tokens.mean(1), atol=1e-5, rtol=1e-5)
        # ... and the head on top of it gives the model's logits.
        torch.testing.assert_close(ced.outputlayer(emb), ced(audio), atol=1e-5, rtol=1e-5)


def test_scene_embedding_of_a_clip_longer_than_a_chunk_averages_its_chunks(model):
    audio = _noise(2, 12.0, seed=2)  # 1201 frames: a 1012-frame chunk and a padded one
    emb = hear.get_scene_embeddings(audio, model)
    assert emb.shape == (2, 192)
    ced = model.model
    with torch.no_grad():
        x = ced.init_bn(ced.front_end(audio).unsqueeze(1))
        first = ced._encode(x[..., :1012]).mean(1)
        second = ced._encode(torch.nn.functional.pad(x[..., 1012:], (0, 2 * 1012 - 1201))).mean(1)
    torch.testing.assert_close(emb, (first + second) / 2, atol=1e-5, rtol=1e-5)


def test_scene_embedding_of_a_very_short_clip_is_zero_padded(model):
    audio = _noise(2, 0.05, seed=3)  # 800 samples, less than one patch
    padded = torch.nn.functional.pad(audio, (0, 2400 - 800))
    torch.testing.assert_close(hear.get_scene_embeddings(audio, model),
                               hear.get_scene_embeddings(padded, model))


def test_timestamp_embeddings_follow_the_api(model):
    audio = _noise(16, 2.0)  # the validator's input
    emb, ts = hear.get_timestamp_embeddings(audio, model)
    assert emb.dtype == torch.float32 and ts.dtype == torch.float32
    assert emb.shape == (16, 32000 // 800 + 1, model.timestamp_embedding_size)
    assert ts.shape == emb.shape[:2]
    diff = torch.diff(ts)
    assert torch.all(diff == 50.0)  # regular, and at most 50 ms as HEAR asks
    assert ts[:, 0].eq(0).all()


def test_timestamp_embedding_is_the_window_centred_on_its_timestamp(model):
    audio = _noise(2, 1.3, seed=4)
    emb, ts = hear.get_timestamp_embeddings(audio, model)
    half = hear.TIMESTAMP_WINDOW // 2
    for t in (0, 7, emb.shape[1] - 1):
        centre = int(ts[0, t]) * 16  # ms -> samples
        start, stop = centre - half, centre - half + hear.TIMESTAMP_WINDOW
        window = torch.zeros(2, hear.TIMESTAMP_WINDOW)
        lo, hi = max(start, 0), min(stop, audio.shape[1])
        window[:, lo - start:hi - start] = audio[:, lo:hi]
        torch.testing.assert_close(emb[:, t], hear.get_scene_embeddings(window, model),
                                   atol=1e-5, rtol=1e-5)


def test_embeddings_do_not_depend_on_batch_neighbours(model):
    audio = _noise(3, 2.0, seed=5)
    audio[1] *= 1e-3  # a much quieter neighbour
    emb, _ = hear.get_timestamp_embeddings(audio, model)
    alone, _ = hear.get_timestamp_embeddings(audio[1:2], model)
    torch.testing.assert_close(emb[1:2], alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(hear.get_scene_embeddings(audio, model)[1:2],
                               hear.get_scene_embeddings(audio[1:2], model), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bad", [torch.zeros(16000), torch.zeros(1, 1, 16000), [[0.0] * 16000]])
def test_audio_must_be_a_2d_tensor(model, bad):
    with pytest.raises(ValueError, match=r"expected audio as a torch tensor \(n_sounds, n_samples\)"):
        hear.get_scene_embeddings(bad, model)
    with pytest.raises(ValueError, match=r"expected audio as a torch tensor \(n_sounds, n_samples\)"):
        hear.get_timestamp_embeddings(bad, model)


def test_hearvalidator_accepts_the_module(checkpoint, monkeypatch):
    pytest.importorskip("hearvalidator", reason="hearvalidator is not installed "
                        "(pip install --no-deps hearvalidator; it needs no tensorflow for torch)")
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        # hearvalidator touches tensorflow only for tf models (isinstance(model, tf.Module));
        # a stand-in lets its torch checks run where tensorflow is not installed.
        stub = types.SimpleNamespace(Module=type("Module", (), {}))
        monkeypatch.setitem(sys.modules, "tensorflow", stub)
        monkeypatch.delitem(sys.modules, "hearvalidator.validate", raising=False)
    from hearvalidator import validate

    try:
        validate.ValidateModel("ced_train.hear", str(checkpoint), device="cpu")()
    finally:
        sys.modules.pop("hearvalidator.validate", None)  # it may hold the stand-in
