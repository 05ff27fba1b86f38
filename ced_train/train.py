"""Student training: label-free distillation from a cedstore, or supervised from TSV labels.

Per batch (label-free, the CED recipe)::

    waves  = dataset.load_batch(ids)                        # (B, S)
    y, s   = store.dense(epoch % E, store_ids)              # (B, C) teacher top-K, (B,) seeds
    x      = recipe.apply_wave(waves, s)                    # the teacher's exact augmentation ...
    x      = recipe.apply_spec(model.front_end(x), s)       # ... (B, F, T), see student_inputs()
    x, lam = mixup(x, alpha)                                # optional, student side only
    loss   = BCE-with-logits(model.forward_spectrogram(x), mixed y)

``--student-aug`` picks the seeds ``s``: ``store`` (the stored ones: consistent teaching),
``fresh`` (new seeds from a seeded generator: student augmentation without a matching teacher)
or ``none`` (no augmentation). Sampling is a seeded permutation per epoch, a function of
(seed, epoch) only, so runs that differ only in targets or augmentation see the same batches.

The module reads top to bottom: :class:`TrainConfig`, :func:`student_inputs`, :func:`train`
(with its checkpoint helpers), :func:`add_train_arguments` / :func:`run_train` for the CLI.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import cedstore
from ced_train import distributed
from ced_train.augment import Recipe, augment_waves, augmented_logmel
from ced_train.frontend import FrontendConfig, log_mel_frontend
from ced_train.optim import OPTIMIZERS, create_optimizer, get_lr
from ced_train.mixup import mixup, mixup_loss
from ced_train.rng import fresh_seeds, mixup_generator, training_permutation

__all__ = [
    "AMP_MODES", "STUDENT_AUG", "TrainConfig", "TrainResult", "add_train_arguments",
    "epoch_order", "recipe_from_store", "run_train", "student_inputs", "train",
]

STUDENT_AUG = ("store", "fresh", "none")
AMP_MODES = ("none", "bf16", "fp16")
METRICS_FIELDS = ("epoch", "step", "loss", "lr", "mAP", "seconds")
# Fields that may change between a run and its --resume without changing the trajectory.
_RESUME_FREE = {"resume", "out", "device", "verbose", "eval_every", "eval_batch_size"}


@dataclasses.dataclass
class TrainConfig:
    """Everything that defines a training run (the model and data are passed separately).

    The defaults follow the paper for AS-20K: 300 epochs of batch 32, peak LR 1e-3 after 5,000
    warm-up steps, cosine decay to 10 %, 8-bit Adam, label-free with stored-seed augmentation.

    Attributes:
        epochs: passes over the training set.
        batch_size: examples per step on each process.
        lr: peak learning rate.
        warmup_steps: linear warm-up steps (per optimizer step, not epoch).
        min_lr_ratio: final LR as a fraction of ``lr``.
        weight_decay: weight decay of the optimizer.
        optimizer: ``adam8bit`` (bitsandbytes; falls back to AdamW with a warning) or ``adamw``.
        student_aug: ``store`` | ``fresh`` | ``none``, see the module docstring.
        mixup_alpha: Beta(α, α) mixup on the student's spectrograms; 0 turns it off.
        supervised: targets from the dataset's labels instead of a store (to train teachers).
        allow_missing: skip dataset keys the store has no record for instead of failing.
        amp: ``none`` | ``bf16`` | ``fp16`` autocast for the model (fp16 adds a GradScaler).
        device: ``cpu``, ``cuda`` or ``cuda:N`` (under torchrun ``cuda`` means the local rank's).
        seed: seeds the batch order, mixup and fresh augmentation seeds (not the model init).
        eval_every: evaluate every this many epochs (and always after the last); 0: last only.
        eval_batch_size: batch size of the evaluation.
        out: folder for metrics.csv, last.pt and best.pt; None writes nothing.
        resume: continue from ``out/last.pt``.
        verbose: print the coverage report and one line per epoch.

    Example:
        >>> config = TrainConfig(epochs=40, batch_size=32, warmup_steps=100, student_aug="store")
    """

    epochs: int = 300
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 5000
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    optimizer: str = "adam8bit"
    student_aug: str = "store"
    mixup_alpha: float = 0.0
    supervised: bool = False
    allow_missing: bool = False
    amp: str = "none"
    device: str = "cpu"
    seed: int = 0
    eval_every: int = 1
    eval_batch_size: int = 64
    out: str | None = None
    resume: bool = False
    verbose: bool = True

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "eval_every", "seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.lr > 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"need lr > 0 and 0 <= min_lr_ratio <= 1, got {self.lr}, {self.min_lr_ratio}")
        if self.mixup_alpha < 0:
            raise ValueError(f"mixup_alpha must be >= 0 (0: off), got {self.mixup_alpha}")
        for name, allowed in (("student_aug", STUDENT_AUG), ("amp", AMP_MODES), ("optimizer", OPTIMIZERS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.supervised and self.student_aug == "store":
            raise ValueError("student_aug 'store' needs a store's seeds; supervised training uses 'fresh' or 'none'")
        if self.resume and not self.out:
            raise ValueError("resume needs out: the folder that holds last.pt")

    def to_dict(self) -> dict[str, Any]:
        """The config as a plain dict (stored in checkpoints)."""
        return dataclasses.asdict(self)


@dataclasses.dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        best_mAP: best evaluation mAP (None without an eval set).
        final_mAP: mAP after the last epoch (None without an eval set).
        history: one dict per epoch with the keys of ``METRICS_FIELDS``.
        steps: optimizer steps taken in total.
        optimizer: the optimizer actually used (``adam8bit`` or ``adamw``).
    """

    best_mAP: float | None
    final_mAP: float | None
    history: list[dict[str, Any]]
    steps: int
    optimizer: str


# ---- the pieces of one step -----------------------------------------------------------------


@torch.no_grad()
def student_inputs(
    model: nn.Module, waves: torch.Tensor, seeds, recipe: Recipe | None, lengths=None, *, wave_only: bool = False
) -> torch.Tensor:
    """The student's log-mel input: shift, ``front_end``, masks, as the teacher's at extraction.

    With the seeds stored for a record this is, bit for bit, the input the teacher saw
    (the heart of CED): it is ``ced_train.teacher.augmented_logmel`` with the student's own
    frontend, so the recipe acts on each row at its own length, never on batch padding.

    Args:
        model: a student with a ``front_end`` (wave -> dB log-mel); without one the default
            ``ced_train.frontend.log_mel_frontend()`` is used.
        waves: (B, S) float32 zero-padded waveforms on the model's device.
        seeds: (B,) int32 seeds (ignored when ``recipe`` is None).
        recipe: the augmentation recipe, or None for none.
        lengths: (B,) samples of each row before padding; None: all S.
        wave_only: apply only the waveform shift (a store whose teacher took waveforms).

    Returns:
        (B, F, T) float32 dB log-mel spectrograms.

    Example:
        >>> x = student_inputs(model, waves, seeds, Recipe(), lengths=dataset.lengths[ids])
        >>> logits = model.forward_spectrogram(x)
    """
    front_end = getattr(model, "front_end", None) or _default_front_end(waves.device)
    if recipe is not None and wave_only:
        return front_end(augment_waves(recipe, waves, seeds, lengths))
    return augmented_logmel(waves, seeds, recipe, front_end, lengths)


_FRONT_ENDS: dict[torch.device, nn.Module] = {}


def _default_front_end(device: torch.device) -> nn.Module:
    if device not in _FRONT_ENDS:
        _FRONT_ENDS[device] = log_mel_frontend().to(device)
    return _FRONT_ENDS[device]


class _SpectrogramHead(nn.Module):
    """``forward(x) = model.forward_spectrogram(x)`` (or ``model(x)``), so DDP sees the call."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.fn = getattr(model, "forward_spectrogram", model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def epoch_order(num_items: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1) -> np.ndarray:
    """This process's positions of epoch ``epoch``: a seeded permutation, rank's disjoint slice.

    The permutation depends only on (seed, epoch, num_items); it is cut to a multiple of
    ``world_size`` so every rank takes the same number of steps, then dealt round-robin.

    Example:
        >>> epoch_order(5, seed=0, epoch=0).tolist()   # doctest: +SKIP
        [3, 0, 4, 1, 2]
    """
    order = training_permutation(num_items, seed, epoch)
    usable = num_items - num_items % world_size
    return order[rank:usable:world_size]


def recipe_from_store(store: "cedstore.Store") -> Recipe | None:
    """The augmentation recipe in a store's metadata, or None for a store made without one.

    Raises:
        ValueError: the metadata holds a recipe this code does not implement.
    """
    spec = store.metadata.get("augmentation")
    if not spec:
        return None
    return Recipe.from_json(spec if isinstance(spec, str) else json.dumps(spec))


def _check_store_fits(store: "cedstore.Store", model: nn.Module, class_names: list[str] | None) -> None:
    """Refuse a store whose class count, label names or log-mel settings differ from the student's."""
    config = getattr(model, "config", None)
    num_classes = getattr(config, "num_classes", None)
    if num_classes is not None and num_classes != store.num_classes:
        raise ValueError(
            f"{store.path}: the store has {store.num_classes} classes but the student has "
            f"{num_classes}; train a student with {store.num_classes} outputs"
        )
    frontend = store.metadata.get("frontend")
    n_mels = getattr(config, "n_mels", None)
    if isinstance(frontend, dict) and n_mels is not None and frontend != FrontendConfig(n_mels=n_mels).to_dict():
        raise ValueError(
            f"{store.path}: the teacher's inputs were computed with frontend {frontend}, the "
            f"student's frontend is {FrontendConfig(n_mels=n_mels).to_dict()}"
        )
    space = store.metadata.get("label_space")
    if class_names is not None and isinstance(space, dict) and "names_sha256" in space:
        mine = cedstore.label_space(class_names)["names_sha256"]
        if space["names_sha256"] != mine:
            raise ValueError(
                f"{store.path}: label space differs: the store's class names hash to "
                f"{space['names_sha256'][:12]}…, the given names to {mine[:12]}…"
            )


def _join(store: "cedstore.Store", dataset, config: TrainConfig, log) -> tuple[np.ndarray, np.ndarray]:
    """(dataset ids to train on, their store sample ids) from joining by key."""
    report = store.join(dataset.keys)
    log(f"join: {report}")
    if report.missing_in_store and not config.allow_missing:
        raise ValueError(
            f"{report.missing_in_store} of {len(report.ids)} dataset keys have no record in "
            f"{store.path} (e.g. {report.missing_in_store_examples}); pass --allow-missing to skip them"
        )
    if report.missing_in_store:
        log(f"join: skipping {report.missing_in_store} dataset keys without a record (--allow-missing)")
    train_ids = np.flatnonzero(report.ids >= 0)
    if not len(train_ids):
        raise ValueError(f"no dataset key has a record in {store.path}: is this the store of this dataset?")
    return train_ids, report.ids[train_ids]


# ---- the training loop ----------------------------------------------------------------------


def train(
    model: nn.Module,
    dataset,
    config: TrainConfig,
    store: "cedstore.Store | None" = None,
    eval_dataset=None,
    *,
    recipe: Recipe | None = None,
    class_names: list[str] | None = None,
) -> TrainResult:
    """Train ``model`` label-free on ``store`` (or supervised on ``dataset``'s labels).

    Args:
        model: any student ``nn.Module`` with ``front_end(wave) -> log-mel`` and
            ``forward_spectrogram(log-mel) -> logits`` (a CED model); a module without
            ``front_end`` gets the default log-mel frontend, one without
            ``forward_spectrogram`` is called as ``model(log-mel)``. It is trained in place.
        dataset: an ``AudioDataset`` (``keys``, ``load_batch``, ``labels``); use ``cache=True``
            for small data.
        config: the run; see :class:`TrainConfig`.
        store: the teacher's store (label-free); None with ``config.supervised``.
        eval_dataset: labelled dataset for the per-epoch mAP (``ced_train.evaluate``).
        recipe: augmentation recipe for ``student_aug="fresh"`` (default: the store's, else
            ``Recipe()``); with ``"store"`` it must equal the store's recipe.
        class_names: if given, checked against the store's ``label_space`` hash.

    Returns:
        :class:`TrainResult`; with ``config.out``, also metrics.csv, last.pt and best.pt there.

    Raises:
        ValueError: bad config, missing keys (without allow_missing), label-space mismatch,
            ``student_aug="store"`` with a store that has no recipe, --resume mismatches.
        FileNotFoundError: --resume without ``out/last.pt``.
        FileExistsError: ``out`` already holds a run and ``resume`` is off.

    Example:
        >>> store = cedstore.open("teacher.ced")
        >>> student = models.create("ced_mini", num_classes=store.num_classes)
        >>> result = train(student, AudioDataset.from_tsv("train.tsv", cache=True),
        ...                TrainConfig(epochs=40), store, eval_dataset)
    """
    dist_info = distributed.setup(config.device)
    device, is_main = dist_info.device, dist_info.is_main

    def log(message: str) -> None:
        if config.verbose and is_main:
            print(message, flush=True)

    # ---- targets and augmentation
    if config.supervised:
        if dataset.labels([0]) is None:
            raise ValueError(f"{dataset.source}: supervised training needs a dataset with labels")
        train_ids, store_ids = np.arange(len(dataset)), None
    else:
        if store is None:
            raise ValueError("label-free training needs a store (or supervised=True)")
        _check_store_fits(store, model, class_names)
        train_ids, store_ids = _join(store, dataset, config, log)
    if config.student_aug == "none":
        recipe = None
    elif config.student_aug == "store":
        stored = recipe_from_store(store)
        if stored is None:
            raise ValueError(
                f"{store.path} has no augmentation recipe (extracted without augmentation): "
                "--student-aug store needs one; use --student-aug fresh or none"
            )
        if recipe is not None:
            recipe.check_compatible(stored)
        recipe = stored
    else:
        recipe = recipe or (recipe_from_store(store) if store is not None else None) or Recipe()

    # A store whose teacher took waveforms saw only the shift (extract.py, teacher_input).
    wave_only = config.student_aug == "store" and store.metadata.get("teacher_input") == "waveform"
    lengths = getattr(dataset, "lengths", None)  # (N,) samples per chunk before batch padding

    # ---- model, optimizer, schedule
    model.to(device)
    head = _SpectrogramHead(model)
    if distributed.is_distributed():
        head = nn.parallel.DistributedDataParallel(head, device_ids=[device] if device.type == "cuda" else None)
    optimizer, optimizer_name = create_optimizer(
        model.parameters(), config.optimizer, lr=config.lr, weight_decay=config.weight_decay
    )
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=config.amp == "fp16")
    num_local = len(train_ids) // dist_info.world_size
    steps_per_epoch = math.ceil(num_local / config.batch_size)
    total_steps = config.epochs * steps_per_epoch
    lr_at = lambda step: get_lr(step, peak_lr=config.lr, warmup_steps=config.warmup_steps,  # noqa: E731
                                total_steps=total_steps, min_ratio=config.min_lr_ratio)

    # ---- state (fresh or resumed)
    out = Path(config.out) if config.out else None
    start_epoch, step, best_mAP, history = 0, 0, None, []
    if out is not None:
        if config.resume:
            start_epoch, step, best_mAP, history = _load_last(out, model, optimizer, scaler, config, log)
        elif (out / "last.pt").exists():
            raise FileExistsError(f"{out} already holds a training run (last.pt); pass --resume or choose another --out")
        elif is_main:
            out.mkdir(parents=True, exist_ok=True)
    log(f"train: {len(train_ids)} examples, {steps_per_epoch} steps/epoch x {config.epochs} epochs, "
        f"{'supervised' if config.supervised else 'label-free'}, student aug {config.student_aug}, "
        f"mixup {config.mixup_alpha}, {optimizer_name}, {dist_info.world_size} process(es) on {device}")

    final_mAP = history[-1]["mAP"] if history else None
    for epoch in range(start_epoch, config.epochs):
        t0 = time.time()
        head.train()
        positions = epoch_order(len(train_ids), config.seed, epoch, dist_info.rank, dist_info.world_size)
        mix_generator = mixup_generator(config.seed, epoch)
        epoch_seeds = fresh_seeds(len(dataset), config.seed, epoch) if config.student_aug == "fresh" else None
        loss_sum, lr = torch.zeros((), device=device), lr_at(step)

        def load(batch: np.ndarray):  # runs one batch ahead, in a thread (decoding releases the GIL)
            ids = train_ids[batch]
            if config.supervised:
                targets, seeds = dataset.labels(ids), None
            else:  # stored epoch e mod E: the stored epochs are cycled
                targets, seeds = store.dense(epoch % store.num_epochs, store_ids[batch])
            if epoch_seeds is not None:
                seeds = epoch_seeds[ids]
            return ids, dataset.load_batch(ids), targets, seeds

        batches = [positions[i : i + config.batch_size] for i in range(0, len(positions), config.batch_size)]
        for ids, waves, targets, seeds in _prefetch(load, batches):
            lr = lr_at(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            waves = torch.from_numpy(waves).to(device, non_blocking=True)
            targets = torch.from_numpy(targets).to(device, non_blocking=True)
            batch_lengths = None if lengths is None else lengths[ids]

            x = student_inputs(model, waves, seeds, recipe, batch_lengths, wave_only=wave_only)  # (B, F, T)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                if config.mixup_alpha > 0:
                    x, lam = mixup(x, config.mixup_alpha, mix_generator)
                    loss = mixup_loss(head(x), targets, lam)
                else:
                    loss = F.binary_cross_entropy_with_logits(head(x).float(), targets)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            loss_sum += loss.detach()
            step += 1

        train_loss = _mean_over_ranks(loss_sum, steps_per_epoch)
        last = epoch + 1 == config.epochs
        mAP = None
        if eval_dataset is not None and is_main and (last or (config.eval_every and (epoch + 1) % config.eval_every == 0)):
            mAP = _evaluate(model, eval_dataset, config, device)
            final_mAP = mAP
            best_mAP = mAP if best_mAP is None else max(best_mAP, mAP)
        row = {"epoch": epoch + 1, "step": step, "loss": train_loss, "lr": lr, "mAP": mAP,
               "seconds": round(time.time() - t0, 3)}
        history.append(row)
        log(f"epoch {epoch + 1}/{config.epochs} step {step} loss {train_loss:.5f} lr {lr:.3g}"
            + ("" if mAP is None else f" mAP {mAP:.4f}") + f" {row['seconds']:.1f}s")
        if out is not None and is_main:
            _save(out, model, optimizer, scaler, config, epoch + 1, step, best_mAP, history,
                  is_best=mAP is not None and mAP == best_mAP)
        distributed.barrier()
    return TrainResult(best_mAP, final_mAP, history, step, optimizer_name)


def _prefetch(fn, items: list):
    """Yield ``fn(item)`` for each item in order, computing the next one in a background thread."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(fn, items[0]) if items else None
        for i in range(len(items)):
            result = pending.result()
            pending = pool.submit(fn, items[i + 1]) if i + 1 < len(items) else None
            yield result


def _mean_over_ranks(loss_sum: torch.Tensor, steps: int) -> float:
    if distributed.is_distributed():
        torch.distributed.all_reduce(loss_sum)
        loss_sum = loss_sum / torch.distributed.get_world_size()
    return float(loss_sum) / max(steps, 1)


def _evaluate(model: nn.Module, dataset, config: TrainConfig, device: torch.device) -> float:
    from ced_train.evaluate import evaluate  # noqa: PLC0415  (keeps `import train` light)

    return float(evaluate(model, dataset, batch_size=config.eval_batch_size, device=device).mAP)


# ---- checkpoints ----------------------------------------------------------------------------


def _save(out: Path, model, optimizer, scaler, config, epoch, step, best_mAP, history, is_best) -> None:
    """Write out/last.pt (and out/best.pt when this epoch is the best) and out/metrics.csv."""
    checkpoint = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "epoch": epoch,
        "step": step,
        "best_mAP": best_mAP,
        "history": history,
        "train_config": config.to_dict(),
        "rng": {"torch": torch.get_rng_state()},
    }
    config_dict = getattr(getattr(model, "config", None), "to_dict", None)
    if config_dict is not None:
        checkpoint["config"] = config_dict()  # lets models.from_checkpoint rebuild the model
    _atomic_save(checkpoint, out / "last.pt")
    if is_best:
        _atomic_save(checkpoint, out / "best.pt")
    tmp = out / "metrics.csv.tmp"
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=METRICS_FIELDS)
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in history)
    os.replace(tmp, out / "metrics.csv")


def _atomic_save(obj: dict, path: Path) -> None:
    tmp = path.with_suffix(".pt.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _load_last(out: Path, model, optimizer, scaler, config: TrainConfig, log):
    path = out / "last.pt"
    if not path.exists():
        raise FileNotFoundError(f"--resume: no checkpoint {path}")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    saved = checkpoint["train_config"]
    changed = sorted(k for k, v in config.to_dict().items() if k not in _RESUME_FREE and saved.get(k) != v)
    if changed:
        diffs = ", ".join(f"{k}: {saved.get(k)!r} -> {getattr(config, k)!r}" for k in changed)
        raise ValueError(f"--resume: {path} was trained with different settings ({diffs})")
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scaler.load_state_dict(checkpoint["scaler"])
    torch.set_rng_state(checkpoint["rng"]["torch"])
    log(f"resume: {path} after epoch {checkpoint['epoch']} (step {checkpoint['step']})")
    return checkpoint["epoch"], checkpoint["step"], checkpoint["best_mAP"], list(checkpoint["history"])


# ---- command line ---------------------------------------------------------------------------

_CACHE_LIMIT_BYTES = 2 << 30  # --cache auto: keep decoded audio in memory below this estimate


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``ced-train train`` options to ``parser`` (defaults from :class:`TrainConfig`)."""
    from ced_train.models import VARIANTS  # noqa: PLC0415

    d = TrainConfig()
    g = parser.add_argument_group("data")
    g.add_argument("--store", help="teacher store (.ced) for label-free training")
    g.add_argument("--data", required=True, help="training TSV (filename[, labels])")
    g.add_argument("--eval", help="labelled evaluation TSV: mAP after every --eval-every epochs")
    g.add_argument("--supervised", action="store_true", help="train on the TSV labels, no store (teachers)")
    g.add_argument("--num-classes", type=int, help="label space size for --supervised (default: max label + 1)")
    g.add_argument("--classes", help="class names file (one per line), checked against the store's label space")
    g.add_argument("--chunk-seconds", type=float, default=10.0, help="chunk length; must match the extraction's")
    g.add_argument("--allow-missing", action="store_true", help="skip dataset keys missing in the store")
    g.add_argument("--cache", choices=("auto", "on", "off"), default="auto",
                   help="keep decoded audio in memory (auto: when the dataset is at most ~2 GiB)")
    g = parser.add_argument_group("model")
    g.add_argument("--model", default="ced_mini", choices=list(VARIANTS), help="student architecture")
    g.add_argument("--embed-dim", type=int, help="override the variant's embedding width")
    g.add_argument("--depth", type=int, help="override the number of blocks")
    g.add_argument("--num-heads", type=int, help="override the number of attention heads")
    g = parser.add_argument_group("optimization")
    g.add_argument("--epochs", type=int, default=d.epochs)
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="per process")
    g.add_argument("--lr", type=float, default=d.lr, help="peak learning rate")
    g.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    g.add_argument("--min-lr-ratio", type=float, default=d.min_lr_ratio, help="cosine floor / peak")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay)
    g.add_argument("--optimizer", choices=OPTIMIZERS, default=d.optimizer)
    g.add_argument("--student-aug", choices=STUDENT_AUG,
                   help="store: the stored seeds (consistent, default label-free); fresh: new seeds "
                        "(default --supervised); none")
    g.add_argument("--mixup-alpha", type=float, default=d.mixup_alpha, help="0: no mixup (paper: 0.5 on AS-20K)")
    g.add_argument("--amp", choices=AMP_MODES, default=d.amp)
    g = parser.add_argument_group("run")
    g.add_argument("--out", required=True, help="folder for metrics.csv, last.pt, best.pt")
    g.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    g.add_argument("--seed", type=int, default=d.seed, help="model init, batch order, mixup, fresh seeds")
    g.add_argument("--eval-every", type=int, default=d.eval_every, help="epochs between evaluations")
    g.add_argument("--threads", type=int, help="torch CPU threads")
    g.add_argument("--device", default=d.device, help="cpu, cuda or cuda:N (torchrun: cuda = local rank)")
    g.add_argument("--quiet", action="store_true", help="print nothing but errors")


def _dataset(path: str, num_classes: int | None, chunk_seconds: float, cache: str):
    from ced_train.data import AudioDataset  # noqa: PLC0415

    if cache == "auto" and os.path.isfile(path):  # (a missing TSV is from_tsv's error to report)
        with open(path, encoding="utf-8", errors="replace") as fh:
            rows = max(sum(1 for line in fh if line.strip()) - 1, 0)
        cache = "on" if rows * chunk_seconds * 16000 * 4 <= _CACHE_LIMIT_BYTES else "off"
    return AudioDataset.from_tsv(path, num_classes=num_classes, chunk_seconds=chunk_seconds, cache=cache == "on")


def run_train(args: argparse.Namespace) -> TrainResult:
    """``ced-train train``: build the config, data, store and student from ``args`` and train."""
    from ced_train import models  # noqa: PLC0415
    from ced_train.labels import read_names  # noqa: PLC0415

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.supervised and args.store:
        raise ValueError("--supervised trains on the TSV labels: drop --store")
    if not args.supervised and not args.store:
        raise ValueError("label-free training needs --store (or --supervised to train on the TSV labels)")
    config = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, warmup_steps=args.warmup_steps,
        min_lr_ratio=args.min_lr_ratio, weight_decay=args.weight_decay, optimizer=args.optimizer,
        student_aug=args.student_aug or ("fresh" if args.supervised else "store"),
        mixup_alpha=args.mixup_alpha, supervised=args.supervised, allow_missing=args.allow_missing,
        amp=args.amp, device=args.device, seed=args.seed, eval_every=args.eval_every, out=args.out,
        resume=args.resume, verbose=not args.quiet,
    )
    store = cedstore.open(args.store) if args.store else None
    dataset = _dataset(args.data, args.num_classes if args.supervised else None, args.chunk_seconds, args.cache)
    num_classes = store.num_classes if store is not None else dataset.num_classes
    if num_classes is None:
        raise ValueError(f"{args.data}: --supervised needs a 'labels' column")
    eval_dataset = _dataset(args.eval, num_classes, args.chunk_seconds, args.cache) if args.eval else None
    overrides = {k: v for k, v in (("embed_dim", args.embed_dim), ("depth", args.depth),
                                   ("num_heads", args.num_heads)) if v is not None}
    torch.manual_seed(args.seed)
    model = models.create(args.model, num_classes=num_classes, **overrides)
    class_names = read_names(args.classes) if args.classes else None
    return train(model, dataset, config, store, eval_dataset, class_names=class_names)
