"""Student-side mixup (ced_train.mixup): reproducible draws, the reversed-batch pairing, the loss."""

import doctest
import math

import numpy as np
import pytest
import torch

import ced_train.mixup
from ced_train.mixup import mixup, mixup_loss
from ced_train.rng import mixup_generator


def test_mixup_is_reproducible_from_the_generator():
    x = torch.randn(6, 64, 50)
    a = mixup(x, 0.5, torch.Generator().manual_seed(11))
    b = mixup(x, 0.5, torch.Generator().manual_seed(11))
    c = mixup(x, 0.5, torch.Generator().manual_seed(12))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])
    gen = torch.Generator().manual_seed(11)
    assert not torch.equal(mixup(x, 0.5, gen)[1], mixup(x, 0.5, gen)[1])  # generator advances


def test_mixup_mixes_with_the_reversed_batch():
    x = torch.randn(5, 3, 7)
    x_mixed, lam = mixup(x, 0.5, torch.Generator().manual_seed(0))
    assert lam.shape == (5,) and lam.dtype == torch.float32
    assert torch.all((lam >= 0) & (lam <= 1))
    for b in range(5):
        torch.testing.assert_close(x_mixed[b], lam[b] * x[4 - b] + (1 - lam[b]) * x[b])


def test_mixup_lambda_is_beta():
    lam = mixup(torch.zeros(20_000, 1), 0.5, torch.Generator().manual_seed(1))[1].double()
    # Beta(0.5, 0.5): mean 1/2, variance 1/8, P(lam < 0.1) = 2/pi * asin(sqrt(0.1))
    assert abs(lam.mean().item() - 0.5) < 0.01
    assert abs(lam.var().item() - 0.125) < 0.005
    assert abs((lam < 0.1).double().mean().item() - 2 / math.pi * math.asin(math.sqrt(0.1))) < 0.01


def test_mixup_loss_equals_formula_by_hand():
    rng = np.random.default_rng(4)
    logits = rng.normal(0, 3, (4, 527))
    y = rng.uniform(0, 1, (4, 527))
    lam = rng.uniform(0, 1, 4)

    def bce(z, t):  # per example, mean over classes
        return np.mean(np.maximum(z, 0) - z * t + np.log1p(np.exp(-np.abs(z))), axis=1)

    expected = np.mean(lam * bce(logits, y[::-1]) + (1 - lam) * bce(logits, y))
    got = mixup_loss(torch.tensor(logits, dtype=torch.float32), torch.tensor(y), torch.tensor(lam))
    assert got.dtype == torch.float32 and got.shape == ()
    assert abs(got.item() - expected) < 1e-5


@pytest.mark.parametrize("alpha", [0.0, -1.0, float("nan")])
def test_mixup_refuses_bad_alpha(alpha):
    with pytest.raises(ValueError, match=r"mixup: expected alpha > 0, got"):
        mixup(torch.zeros(2, 3), alpha, torch.Generator())


def test_training_mixup_draws_come_from_the_seed_and_epoch():
    x = torch.randn(6, 3, 5)
    assert torch.equal(mixup(x, 0.5, mixup_generator(0, 2))[1], mixup(x, 0.5, mixup_generator(0, 2))[1])
    assert not torch.equal(mixup(x, 0.5, mixup_generator(0, 2))[1], mixup(x, 0.5, mixup_generator(0, 3))[1])


def test_docstring_examples():
    assert doctest.testmod(ced_train.mixup).failed == 0
