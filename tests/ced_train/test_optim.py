"""Optimizer choice: ``auto`` per device, fused AdamW against a float64 AdamW written out."""

import doctest

import pytest
import torch

import ced_train.optim
from ced_train.optim import OPTIMIZERS, create_optimizer, resolve_optimizer


@pytest.mark.parametrize(
    "name, device, expected",
    [
        ("auto", "cpu", "adamw"),
        ("auto", "cuda", "adam8bit"),
        ("auto", "cuda:1", "adam8bit"),
        ("auto", torch.device("cpu"), "adamw"),
        ("auto", "meta", "adamw"),
        ("adam8bit", "cpu", "adam8bit"),
        ("adamw", "cuda", "adamw"),
    ],
)
def test_resolve_optimizer(name, device, expected):
    assert resolve_optimizer(name, device) == expected


def test_auto_is_a_choice_and_the_default():
    assert "auto" in OPTIMIZERS
    optimizer, name = create_optimizer(torch.nn.Linear(3, 2).parameters(), lr=1e-3)
    assert name == "adamw" and type(optimizer) is torch.optim.AdamW
    assert optimizer.param_groups[0]["fused"] is True


@pytest.mark.parametrize("bad", [resolve_optimizer, lambda name, device: create_optimizer(
    torch.nn.Linear(2, 2).to(device).parameters(), name, lr=1e-3)])
def test_unknown_name(bad):
    with pytest.raises(ValueError, match=r"unknown optimizer 'sgd'; expected one of adam8bit, adamw, auto"):
        bad("sgd", "cpu")


def test_no_trainable_parameters():
    layer = torch.nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="create_optimizer: no parameters that require a gradient"):
        create_optimizer(layer.parameters(), "auto", lr=1e-3)


def _adamw_reference(param, grads, lr, weight_decay, betas=(0.9, 0.999), eps=1e-8):
    """AdamW (Loshchilov & Hutter) in float64, written from the paper's update rule."""
    p = param.double().clone()
    m, v = torch.zeros_like(p), torch.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        g = g.double()
        p = p * (1 - lr * weight_decay)
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        m_hat, v_hat = m / (1 - betas[0] ** t), v / (1 - betas[1] ** t)
        p = p - lr * m_hat / (v_hat.sqrt() + eps)
    return p


@pytest.mark.parametrize("name", ["auto", "adamw"])
def test_fused_adamw_follows_the_update_rule(name):
    generator = torch.Generator().manual_seed(0)
    start = torch.randn(4096 + 3, generator=generator)
    grads = [torch.randn(start.shape, generator=generator) for _ in range(5)]
    param = torch.nn.Parameter(start.clone())
    optimizer, used = create_optimizer([param], name, lr=1e-2, weight_decay=0.05)
    assert used == "adamw" and optimizer.param_groups[0]["fused"]
    for g in grads:
        param.grad = g.clone()
        optimizer.step()
    expected = _adamw_reference(start, grads, lr=1e-2, weight_decay=0.05)
    torch.testing.assert_close(param.detach().double(), expected, rtol=0, atol=1e-6)
    assert (param.detach() - start).abs().min() > 0  # teeth: every element moved


def test_adamw_without_a_fused_kernel_falls_back(monkeypatch):
    calls = []
    real = torch.optim.AdamW

    def no_fused(params, **kwargs):
        calls.append(kwargs.get("fused"))
        if kwargs.get("fused"):
            raise RuntimeError("`fused=True` requires all the params to be floating point Tensors")
        return real(params, **kwargs)

    monkeypatch.setattr(torch.optim, "AdamW", no_fused)
    optimizer, name = create_optimizer(torch.nn.Linear(2, 2).parameters(), "adamw", lr=1e-3)
    assert name == "adamw" and calls == [True, None] and not optimizer.param_groups[0]["fused"]


def test_fused_state_resumes_into_a_fresh_optimizer():
    layer = torch.nn.Linear(8, 4)
    optimizer, _ = create_optimizer(layer.parameters(), "auto", lr=1e-3)
    layer(torch.randn(2, 8)).sum().backward()
    optimizer.step()
    resumed, _ = create_optimizer(layer.parameters(), "auto", lr=1e-3)
    resumed.load_state_dict(optimizer.state_dict())
    assert resumed.state_dict()["state"][0]["exp_avg"].equal(optimizer.state_dict()["state"][0]["exp_avg"])
    assert resumed.param_groups[0]["fused"]


def test_docstring_examples():
    assert doctest.testmod(ced_train.optim, optionflags=doctest.ELLIPSIS).failed == 0


def test_trainer_default_is_auto():
    from ced_train.train import TrainConfig

    assert TrainConfig().optimizer == "auto"
