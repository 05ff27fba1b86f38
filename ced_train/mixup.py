"""Student-side mixup and its loss. Not part of the stored recipe: the teacher never sees it.

Example:
    >>> generator = torch.Generator().manual_seed(0)
    >>> x_mixed, lam = mixup(torch.zeros(4, 64, 101), 0.5, generator)
    >>> mixup_loss(torch.zeros(4, 3), torch.ones(4, 3), lam)
    tensor(0.6931)
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["mixup", "mixup_loss"]


def mixup(x: torch.Tensor, alpha: float, generator: torch.Generator):
    """Mix each example with its partner in the reversed batch: ``λ·x.flip(0) + (1 − λ)·x``.

    λ ~ Beta(α, α) per example, drawn with numpy's PCG64 Beta sampler seeded by one draw from
    ``generator``, so the result is reproducible from the generator's state (training uses
    ``ced_train.rng.mixup_generator(seed, epoch)``). Pair with :func:`mixup_loss` and the same
    ``lam``.

    Args:
        x: [B, ...] floating-point batch on any device.
        alpha: Beta concentration, > 0 (0.5 in the CED paper for AS-20K).
        generator: a ``torch.Generator`` (any device); advanced by one draw.

    Returns:
        ``(x_mixed, lam)``: x_mixed like x; lam float32 [B] on x's device.

    Raises:
        ValueError: if alpha <= 0.

    Example:
        >>> x_mixed, lam = mixup(torch.randn(4, 64, 1001), 0.5, torch.Generator().manual_seed(0))
    """
    if not alpha > 0:
        raise ValueError(f"mixup: expected alpha > 0, got {alpha!r}")
    seed = int(torch.randint(0, 2**63 - 1, (), generator=generator, device=generator.device))
    lam = np.random.Generator(np.random.PCG64(seed)).beta(alpha, alpha, size=x.shape[0])
    lam = torch.from_numpy(lam).to(device=x.device, dtype=torch.float32)
    weight = lam.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
    return weight * x.flip(0) + (1.0 - weight) * x, lam


def mixup_loss(logits: torch.Tensor, y: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits for a batch mixed by :func:`mixup`.

    ``mean_b [λ_b · BCE(logits_b, y_partner(b)) + (1 − λ_b) · BCE(logits_b, y_b)]`` with the
    partner being the reversed batch and BCE the mean over classes; computed as one BCE
    against the mixed targets, which is the same because BCE is linear in its target.

    Args:
        logits: [B, C] pre-sigmoid outputs for the mixed inputs.
        y: [B, C] targets (teacher probabilities) of the unmixed examples.
        lam: [B] from :func:`mixup`.

    Returns:
        Scalar float32 loss.

    Example:
        >>> mixup_loss(torch.zeros(2, 3), torch.ones(2, 3), torch.tensor([0.5, 0.5]))
        tensor(0.6931)
    """
    lam = lam.to(device=logits.device, dtype=torch.float32)[:, None]
    y = y.float()
    target = lam * y.flip(0) + (1.0 - lam) * y
    return F.binary_cross_entropy_with_logits(logits.float(), target)
