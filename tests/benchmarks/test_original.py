"""The benchmark's reimplementation of the original CED computes what our CED computes."""

import numpy as np
import pytest
import torch

from benchmarks.original import loops
from benchmarks.original.model import AudioTransformer
from benchmarks.vs_original import original_weights
from ced_train import models
from ced_train.frontend import log_mel_frontend


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    ours = models.create("ced_tiny").eval()
    original = AudioTransformer("tiny", pooling="logit").eval()
    original.load_state_dict(original_weights(ours), strict=True)
    return ours, original


@pytest.mark.parametrize("frames", [1001, 2100])  # one chunk; two full chunks + a padded one
def test_same_weights_same_logits(pair, frames):
    ours, original = pair
    logmel = 20 * torch.randn(2, 64, frames, generator=torch.Generator().manual_seed(frames)) - 40
    with torch.no_grad():
        torch.testing.assert_close(original.forward_spectrogram(logmel), ours.forward_spectrogram(logmel),
                                   rtol=1e-4, atol=1e-4)


def test_frontend_matches_ours_on_one_clip(pair):
    _, original = pair
    wave = 0.1 * torch.randn(1, 16_000, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(original.front_end(wave), log_mel_frontend()(wave), rtol=0, atol=2e-3)


def test_frontend_floor_spans_the_batch_as_torchaudio():
    # the original's AmplitudeToDB floors a (B, F, T) batch at 120 dB below the batch's maximum
    quiet, loud = 1e-4 * torch.randn(16_000), 1e2 * torch.randn(16_000)
    alone = AudioTransformer("tiny").front_end(quiet[None])
    batched = AudioTransformer("tiny").front_end(torch.stack([quiet, loud]))
    assert batched[0].min() > alone.min()
    assert batched[0].min() == pytest.approx(batched.max().item() - 120.0)


def test_masks_cover_the_requested_bands():
    spec = torch.ones(2, 64, 1001)
    values, min_values = torch.tensor([[0.5], [0.25]]), torch.tensor([[0.0], [1.0 - 1e-6]])
    out = loops.spectransforms(spec, values, min_values)
    # start = floor(min_value * (size - width)), width = floor(value * mask_param), as the original
    # row 0: time [0, 96), mel [0, 12); row 1: time [952, 1000), mel [57, 63)
    expected = torch.ones(2, 64, 1001)
    expected[0, :, :96] = expected[0, :12] = 0
    expected[1, :, 952:1000] = expected[1, 57:63] = 0
    assert torch.equal(out, expected)


def test_save_logits_epoch_writes_topk(tmp_path, pair):
    _, original = pair
    model = AudioTransformer("tiny", pooling="mean").eval()
    model.load_state_dict(original.state_dict())
    waves = (0.1 * np.random.default_rng(0).standard_normal((3, 16_000))).astype(np.float32)
    loader = loops.batches(loops.sequential_items(waves, ["a", "b", "c"]), 2)
    assert loops.save_logits_epoch(model, loader, tmp_path / "l.h5", topk=5, batch_size=2) == 3
    import h5py

    with h5py.File(tmp_path / "l.h5") as f:
        assert f["topk_values"].shape == (3, 5) and f["topk_indexes"].dtype == np.int16
        values = f["topk_values"][:]
    assert ((0 < values) & (values < 1)).all() and (np.diff(values, axis=1) <= 0).all()
