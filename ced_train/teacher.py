"""Running a teacher on augmented audio: the CED ensemble and :func:`predict`.

Both the extraction (``ced_train.extract``) and the store check (``ced_train.check_store``)
feed a teacher through :func:`predict`, on the consistent input of ``ced_train.augment``
(:func:`~ced_train.augment.augmented_logmel`), the same function training feeds the student with.

Example:
    >>> teacher = Ensemble.from_checkpoints(["a.pt", "b.pt"])
    >>> x = augmented_logmel(waves, seeds, Recipe(), log_mel_frontend(), lengths)
    >>> probs = teacher(x)                                   # (B, C)
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ced_train.amp import autocast
from ced_train.augment import Recipe, augment_waves, augmented_logmel
from ced_train.errors import CedTrainError

__all__ = ["TEACHER_INPUTS", "Ensemble", "predict"]

TEACHER_INPUTS = ("spectrogram", "waveform")


def _sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Ensemble(nn.Module):
    """Mean of the members' probabilities, ``mean_m sigmoid(m.forward_spectrogram(logmel))``.

    Args:
        models: CED models (anything with ``forward_spectrogram`` and ``config.num_classes``),
            all with the same number of classes.
        description: JSON-ready description for the store metadata; by default each member's
            config (``from_checkpoints`` adds file names and SHA-256).

    Raises:
        ValueError: no models, or members with different numbers of classes.

    Example:
        >>> teacher = Ensemble.from_checkpoints(["a.pt", "b.pt"])
        >>> probs = teacher(log_mel_frontend()(waves))     # (B, C)
    """

    def __init__(self, models: Sequence[nn.Module], description: list | None = None) -> None:
        super().__init__()
        if not models:
            raise CedTrainError("Ensemble needs at least one model")
        classes = [m.config.num_classes for m in models]
        if len(set(classes)) != 1:
            raise CedTrainError(f"ensemble members must have the same number of classes, got {classes}")
        self.members = nn.ModuleList(models)
        self.num_classes = classes[0]
        self.description = description or [{"config": m.config.to_dict()} for m in models]

    @classmethod
    def from_checkpoints(cls, paths: Sequence[str | os.PathLike]) -> Ensemble:
        """Load CED checkpoints (``models.from_checkpoint``) and describe each by file name,
        SHA-256 and config."""
        from ced_train.models import from_checkpoint

        models = [from_checkpoint(p) for p in paths]
        description = [
            {"file": Path(p).name, "sha256": _sha256_file(p), "config": m.config.to_dict()}
            for p, m in zip(paths, models)
        ]
        return cls(models, description)

    def forward(self, logmel: torch.Tensor) -> torch.Tensor:
        """Map dB log-mel (B, F, T) to float32 probabilities (B, C)."""
        total = 0.0
        for member in self.members:
            total = total + member.forward_spectrogram(logmel).float().sigmoid()
        return total / len(self.members)


def predict(
    teacher: Callable[[torch.Tensor], torch.Tensor],
    waves: np.ndarray,
    seeds: np.ndarray,
    *,
    recipe: Recipe | None,
    frontend: nn.Module,
    lengths: np.ndarray | None = None,
    teacher_input: str = "spectrogram",
    device: torch.device = torch.device("cpu"),
    amp: str = "none",
) -> np.ndarray:
    """Run the teacher on one augmented batch (no gradients); float32 probabilities as numpy.

    Args:
        teacher: (B, F, T) dB log-mel — or (B, S) waves with ``teacher_input="waveform"`` —
            to (B, C) probabilities.
        waves: float32 (B, S) zero-padded batch.
        seeds: (B,) int32 augmentation seeds.
        recipe: the augmentation recipe, or None for clean inputs.
        frontend: the log-mel frontend (float32 always).
        lengths: (B,) samples per row before padding; None means S for every row.
        teacher_input: "spectrogram" (shift, frontend, masks) or "waveform" (shift only).
        device: where the batch is sent (teacher and frontend must be there already).
        amp: ``"none"``, ``"bf16"`` or ``"fp16"`` autocast around the teacher.

    Returns:
        float32 (B, C).

    Raises:
        ValueError: the teacher's output is not (B, C) values in [0, 1].

    Example:
        >>> probs = predict(teacher, ds.load_batch(ids), seeds, recipe=Recipe(),
        ...                 frontend=log_mel_frontend())
    """
    x = torch.from_numpy(np.ascontiguousarray(waves, dtype=np.float32)).to(device)
    with torch.inference_mode():
        if teacher_input == "waveform":
            x = x if recipe is None else augment_waves(recipe, x, seeds, lengths)
        else:
            x = augmented_logmel(x, seeds, recipe, frontend, lengths)
        with autocast(device, amp):
            probs = teacher(x)
        probs = probs.float().cpu().numpy()
    if probs.ndim != 2 or probs.shape[0] != len(waves):
        raise CedTrainError(f"the teacher must return (B, C) = ({len(waves)}, C) probabilities, got {probs.shape}")
    if not np.all((probs >= 0) & (probs <= 1)):  # also catches NaN
        bad = probs[~((probs >= 0) & (probs <= 1))][:3]
        raise CedTrainError(
            f"the teacher returned values outside [0, 1] (e.g. {bad.tolist()}): it must return "
            "probabilities, e.g. the sigmoid of logits"
        )
    return probs
