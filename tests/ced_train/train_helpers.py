"""Tiny data, models and stores for the training, CLI and demo tests (CPU, seconds)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from ced_train import models
from ced_train.augment import Recipe
from ced_train.data import AudioDataset
from ced_train.manifest import write_tsv
from ced_train.extract import Ensemble, extract
from ced_train.train import TrainConfig

NUM_CLASSES = 5
CLIP_SAMPLES = 8000  # 0.5 s -> 51 frames
RECIPE = Recipe(time_mask_max=12, freq_mask_max=16)


def write_clips(folder: Path, count: int, name: str = "train.tsv", seed: int = 0) -> Path:
    """``count`` labelled float wav clips of 0.5 s (tones in noise) and their TSV."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names, labels = [], []
    t = np.arange(CLIP_SAMPLES) / 16000
    for i in range(count):
        classes = sorted(set(rng.integers(0, NUM_CLASSES, 2).tolist()))
        wave = sum(0.2 * np.sin(2 * np.pi * (300 + 700 * c) * t) for c in classes)
        wave = (wave + 0.05 * rng.standard_normal(CLIP_SAMPLES)).astype(np.float32)
        sf.write(str(folder / f"clip{i:03d}.wav"), wave, 16000, subtype="FLOAT")
        names.append(f"clip{i:03d}.wav")
        labels.append(classes)
    return write_tsv(folder / name, names, labels)


def tiny_model(seed: int = 0, num_classes: int = NUM_CLASSES) -> models.CED:
    """A 1-block, 32-dim CED."""
    torch.manual_seed(seed)
    return models.create("ced_custom", num_classes=num_classes, embed_dim=32, depth=1, num_heads=2)


def make_store(path: Path, dataset, store_epochs: int = 2, recipe: Recipe | None = RECIPE, k: int = 3) -> Path:
    """Extract a tiny teacher's top-k on ``dataset`` into ``path``."""
    extract(Ensemble([tiny_model(seed=99).eval()]), dataset, path, store_epochs=store_epochs, k=k, recipe=recipe,
            batch_size=4, progress=False)
    return path


def load(tsv: Path, **kwargs) -> AudioDataset:
    return AudioDataset.from_tsv(tsv, num_classes=NUM_CLASSES, cache=True, **kwargs)


def config(**overrides) -> TrainConfig:
    """A fast config: AdamW (no bitsandbytes import), batch 4, 1 warm-up step, quiet."""
    values = dict(epochs=1, batch_size=4, lr=1e-3, warmup_steps=1, optimizer="adamw", eval_every=1,
                  verbose=False)
    return TrainConfig(**{**values, **overrides})
