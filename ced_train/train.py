"""Student training: label-free distillation from a cedstore, or supervised from TSV labels.

Per batch (label-free, the CED recipe)::

    waves  = dataset.load_batch(ids)                        # (B, S)
    y, s   = store.dense(epoch % E, store_ids)              # (B, C) teacher top-K, (B,) seeds
    x      = recipe.apply_wave(waves, s)                    # the teacher's exact augmentation ...
    x      = recipe.apply_spec(model.front_end(x), s)       # ... (B, F, T), see student_inputs()
    x, lam = mixup(x, alpha)                                # optional, student side only
    loss   = BCE-with-logits(model.forward_spectrogram(x), mixed y)

``student_aug`` picks the seeds ``s``: ``store`` (the stored ones: consistent teaching),
``fresh`` (new seeds from a seeded generator: student augmentation without a matching teacher)
or ``none`` (no augmentation). Sampling is a seeded permutation per epoch, a function of
(seed, epoch) only, so runs that differ only in targets or augmentation see the same batches.

The module reads top to bottom: :class:`TrainConfig`, :func:`student_inputs`, :func:`train`
(setup, one epoch, end of epoch), and the run folder (last.pt and best.pt through
``ced_train.models.save_checkpoint``, metrics.csv). The command line is ``ced_train.cli``.
"""

from __future__ import annotations

import csv
import dataclasses
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
from ced_train.amp import AMP_MODES, autocast
from ced_train.augment import Recipe, augment_waves, augmented_logmel
from ced_train.errors import CedTrainError, CheckpointError
from ced_train.frontend import log_mel_frontend
from ced_train.mixup import mixup, mixup_loss
from ced_train.models.checkpoint import load_checkpoint, save_checkpoint
from ced_train.optim import OPTIMIZERS, create_optimizer, get_lr
from ced_train.progress import Progress, format_duration
from ced_train.rng import fresh_seeds, mixup_generator
from ced_train.sampling import batches, epoch_order, prefetch
from ced_train.store_meta import (
    check_student_fits, check_written, dataset_sha256, join, store_identity, training_recipe,
)

__all__ = [
    "AMP_MODES", "STUDENT_AUG", "TrainConfig", "TrainResult", "student_inputs", "train",
]

STUDENT_AUG = ("store", "fresh", "none")
METRICS_FIELDS = ("epoch", "step", "loss", "lr", "mAP", "seconds")
# Fields that may change between a run and its resumption without changing the trajectory.
_RESUME_FREE = {"resume", "out", "device", "verbose", "eval_every", "eval_batch_size"}
# What last.pt holds besides the model (and its config): see _save_run.
_RUN_ENTRIES = ("optimizer", "scaler", "epoch", "step", "best_mAP", "history", "train_config", "rng")
# Steps between two checks for a non-finite loss: each check waits for the device once.
_FINITE_CHECK_EVERY = 50


@dataclasses.dataclass
class TrainConfig:
    """Everything that defines a training run (the model and data are passed separately).

    The defaults follow the paper for AS-20K: 300 epochs of batch 32, peak LR 1e-3 after 5,000
    warm-up steps, cosine decay to 10 %, 8-bit Adam (on CUDA; fused AdamW on the CPU, where 8-bit
    Adam is slow), label-free with stored-seed augmentation.

    Attributes:
        epochs: passes over the training set.
        batch_size: examples per step on each process.
        lr: peak learning rate.
        warmup_steps: linear warm-up steps (per optimizer step, not epoch).
        min_lr_ratio: final LR as a fraction of ``lr``.
        weight_decay: weight decay of the optimizer.
        optimizer: ``auto`` (8-bit Adam on CUDA, fused AdamW on the CPU; the log line says which),
            ``adam8bit`` (bitsandbytes; falls back to AdamW with a warning) or ``adamw``.
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
    optimizer: str = "auto"
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
                raise CedTrainError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "eval_every", "seed"):
            if getattr(self, name) < 0:
                raise CedTrainError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.lr > 0 or not 0 <= self.min_lr_ratio <= 1:
            raise CedTrainError(f"need lr > 0 and 0 <= min_lr_ratio <= 1, got {self.lr}, {self.min_lr_ratio}")
        if self.mixup_alpha < 0:
            raise CedTrainError(f"mixup_alpha must be >= 0 (0: off), got {self.mixup_alpha}")
        for name, allowed in (("student_aug", STUDENT_AUG), ("amp", AMP_MODES), ("optimizer", OPTIMIZERS)):
            if getattr(self, name) not in allowed:
                raise CedTrainError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.supervised and self.student_aug == "store":
            raise CedTrainError("student_aug 'store' needs a store's seeds; supervised training uses 'fresh' or 'none'")
        if self.resume and not self.out:
            raise CedTrainError("resume needs out: the folder that holds last.pt")

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
        StoreMismatchError: the store does not fit the student or the dataset (class count,
            frontend, label space, keys without a record unless ``allow_missing``), a record
            the run reads is not written yet, or ``student_aug="store"`` with a store that has
            no recipe or one that cannot be replayed (``ced_train.store_meta``).
        CedTrainError: a bad config; resuming with other settings, another store or other
            data than the run's; a non-finite loss (naming the epoch, step and examples;
            nothing of that epoch is saved).
        CheckpointError: ``out/last.pt`` is not a training run's checkpoint of this model.
        FileNotFoundError: ``resume`` without ``out/last.pt``.
        FileExistsError: ``out`` already holds a run and ``resume`` is off.

    Example:
        >>> store = cedstore.open("teacher.ced")
        >>> student = models.create("ced_mini", num_classes=store.num_classes)
        >>> result = train(student, AudioDataset.from_tsv("train.tsv", cache=True),
        ...                TrainConfig(epochs=40), store, eval_dataset)
    """
    # ---- setup: processes, examples and targets, model, optimizer, schedule, run folder
    dist_info = distributed.setup(config.device)
    device, is_main = dist_info.device, dist_info.is_main
    log = _printer(config.verbose and is_main)
    train_ids, store_ids = _examples(model, dataset, config, store, class_names, log)
    recipe, wave_only = training_recipe(store, config.student_aug, recipe)
    lengths = getattr(dataset, "lengths", None)  # (N,) samples per chunk before batch padding

    model.to(device)
    head = _SpectrogramHead(model)
    if distributed.is_distributed():
        head = nn.parallel.DistributedDataParallel(head, device_ids=[device] if device.type == "cuda" else None)
    optimizer, optimizer_name = create_optimizer(
        model.parameters(), config.optimizer, lr=config.lr, weight_decay=config.weight_decay
    )
    scaler = torch.amp.GradScaler(device.type, enabled=config.amp == "fp16")
    steps_per_epoch = math.ceil(len(train_ids) // dist_info.world_size / config.batch_size)
    total_steps = config.epochs * steps_per_epoch

    def lr_at(step: int) -> float:
        return get_lr(step, peak_lr=config.lr, warmup_steps=config.warmup_steps, total_steps=total_steps,
                      min_ratio=config.min_lr_ratio)

    out = Path(config.out) if config.out else None
    trained_on = _trained_on(store, dataset) if out is not None else None
    run = _start_run(out, model, optimizer, scaler, config, trained_on, is_main, log)
    if store is not None:  # an unfinished extraction is refused now, not after an epoch
        check_written(store, store_ids, {e % store.num_epochs for e in range(run.epoch, config.epochs)})
    keys = getattr(dataset, "keys", None)
    log(f"train: {len(train_ids)} examples, {steps_per_epoch} steps/epoch x {config.epochs} epochs, "
        f"{'supervised' if config.supervised else 'label-free'}, student aug {config.student_aug}, "
        f"mixup {config.mixup_alpha}, {optimizer_name}, {dist_info.world_size} process(es) on {device}")

    for epoch in range(run.epoch, config.epochs):
        # ---- one epoch: a seeded order; targets from stored epoch (e mod E) or the labels
        t0 = time.time()
        head.train()
        positions = epoch_order(len(train_ids), config.seed, epoch, dist_info.rank, dist_info.world_size)
        mix_generator = mixup_generator(config.seed, epoch)
        epoch_seeds = fresh_seeds(len(dataset), config.seed, epoch) if config.student_aug == "fresh" else None
        loss_sum, lr = torch.zeros((), device=device), lr_at(run.step)
        window = []  # (step, ids, loss, finite rows) of the steps since the last finiteness check

        def load(batch: np.ndarray):  # runs one batch ahead, in a thread (decoding releases the GIL)
            ids = train_ids[batch]
            if config.supervised:
                targets, seeds = dataset.labels(ids), None
            else:  # stored epoch e mod E: the stored epochs are cycled
                targets, seeds = store.dense(epoch % store.num_epochs, store_ids[batch])
            if epoch_seeds is not None:
                seeds = epoch_seeds[ids]
            return ids, dataset.load_batch(ids), targets, seeds

        label = f"train epoch {epoch + 1}/{config.epochs}"
        with Progress(label, steps_per_epoch, "steps", enabled=config.verbose and is_main) as progress:
            for ids, waves, targets, seeds in prefetch(load, batches(positions, config.batch_size)):
                lr = lr_at(run.step)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                waves = torch.from_numpy(waves).to(device, non_blocking=True)
                targets = torch.from_numpy(targets).to(device, non_blocking=True)
                batch_lengths = None if lengths is None else lengths[ids]

                x = student_inputs(model, waves, seeds, recipe, batch_lengths, wave_only=wave_only)  # (B, F, T)
                finite_rows = torch.isfinite(x).flatten(1).all(1) & torch.isfinite(targets).all(1)  # (B,)
                with autocast(device, config.amp):
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
                window.append((run.step, ids, loss.detach(), finite_rows))
                run.step += 1
                if len(window) == _FINITE_CHECK_EVERY:
                    _check_finite(window, keys, epoch, config.epochs)
                progress.update(1)
        _check_finite(window, keys, epoch, config.epochs)  # before anything of this epoch is saved

        # ---- end of epoch: mean loss, evaluation, metrics row, checkpoint
        train_loss = _mean_over_ranks(loss_sum, steps_per_epoch)
        mAP = None
        last = epoch + 1 == config.epochs
        if eval_dataset is not None and is_main and (last or (config.eval_every and (epoch + 1) % config.eval_every == 0)):
            mAP = _evaluate(model, eval_dataset, config, device)
            run.final_mAP = mAP
            run.best_mAP = mAP if run.best_mAP is None else max(run.best_mAP, mAP)
        run.epoch = epoch + 1
        row = {"epoch": run.epoch, "step": run.step, "loss": train_loss, "lr": lr, "mAP": mAP,
               "seconds": round(time.time() - t0, 3)}
        run.history.append(row)
        eta = (config.epochs - run.epoch) * np.mean([r["seconds"] for r in run.history[-5:]])
        log(f"epoch {run.epoch}/{config.epochs} step {run.step} loss {train_loss:.5f} lr {lr:.3g}"
            + ("" if mAP is None else f" mAP {mAP:.4f}") + f" {row['seconds']:.1f}s, ETA {format_duration(eta)}")
        if out is not None and is_main:
            _save_run(out, model, optimizer, scaler, config, trained_on, run,
                      is_best=mAP is not None and mAP == run.best_mAP)
        distributed.barrier()
    return TrainResult(run.best_mAP, run.final_mAP, run.history, run.step, optimizer_name)


def _printer(enabled: bool):
    def log(message: str) -> None:
        if enabled:
            print(message, flush=True)

    return log


def _examples(model, dataset, config: TrainConfig, store, class_names, log) -> tuple[np.ndarray, np.ndarray | None]:
    """(dataset ids to train on, their store sample ids or None when supervised)."""
    if config.supervised:
        if dataset.labels([0]) is None:
            raise CedTrainError(f"{dataset.source}: supervised training needs a dataset with labels")
        return np.arange(len(dataset)), None
    if store is None:
        raise CedTrainError("label-free training needs a store (or supervised=True)")
    check_student_fits(store, model, class_names)
    joined = join(store, dataset.keys, allow_missing=config.allow_missing, log=log)
    return joined.dataset_ids, joined.store_ids


def _check_finite(window: list, keys, epoch: int, epochs: int) -> None:
    """Raise if a loss of ``window`` is not finite (on any process), naming the first such step
    and the examples whose input or targets were not finite; empties ``window`` otherwise."""
    if not window:
        return
    bad = ~torch.isfinite(torch.stack([loss for _, _, loss, _ in window]).float())
    found = bad.any().float()
    if distributed.is_distributed():  # every process stops at the same check
        torch.distributed.all_reduce(found, op=torch.distributed.ReduceOp.MAX)
    if not found:
        window.clear()
        return
    where = f"epoch {epoch + 1}/{epochs}"
    if not bad.any():
        raise CedTrainError(f"{where}: the training loss of another process is not finite (see its error); "
                            "training stopped before saving this epoch")
    step, ids, loss, finite_rows = window[int(bad.nonzero()[0])]
    ids, finite_rows = np.asarray(ids), finite_rows.cpu().numpy()
    name = (lambda i: keys[i]) if keys is not None else int
    where += f", step {step + 1}: the training loss is {float(loss)}"
    if not finite_rows.all():
        culprits = [name(i) for i in ids[~finite_rows]]
        raise CedTrainError(
            f"{where}: {len(culprits)} of the batch's {len(ids)} examples have a non-finite input or targets "
            f"({', '.join(map(str, culprits[:5]))}); training stopped before saving this epoch")
    raise CedTrainError(
        f"{where} although the batch's inputs and targets are finite ({', '.join(str(name(i)) for i in ids[:3])}"
        f"{', ...' if len(ids) > 3 else ''}): training diverged; lower the learning rate or use another amp "
        "mode. Training stopped before saving this epoch")


def _mean_over_ranks(loss_sum: torch.Tensor, steps: int) -> float:
    if distributed.is_distributed():
        torch.distributed.all_reduce(loss_sum)
        loss_sum = loss_sum / torch.distributed.get_world_size()
    return float(loss_sum) / max(steps, 1)


def _evaluate(model: nn.Module, dataset, config: TrainConfig, device: torch.device) -> float:
    from ced_train.evaluate import evaluate  # noqa: PLC0415  (keeps `import train` light)

    return float(evaluate(model, dataset, batch_size=config.eval_batch_size, device=device).mAP)


# ---- the run folder: last.pt, best.pt, metrics.csv ------------------------------------------


@dataclasses.dataclass
class _Run:
    """Where a run stands after ``epoch`` finished epochs (what last.pt records)."""

    epoch: int = 0
    step: int = 0
    best_mAP: float | None = None
    final_mAP: float | None = None
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)


def _trained_on(store, dataset) -> dict:
    """What a run trains on (recorded in its checkpoints; a resume must find the same)."""
    source = getattr(dataset, "source", None)
    return {"store": None if store is None else store_identity(store),
            "data": {"path": None if source is None else os.path.abspath(source), "sha256": dataset_sha256(dataset)}}


def _describe_input(entry: dict | None) -> str:
    return "none" if entry is None else f"{entry.get('path')} (SHA-256 {str(entry.get('sha256'))[:12]}…)"


def _check_resumable(path: Path, checkpoint, model, config: TrainConfig, trained_on: dict) -> None:
    """Refuse a last.pt that is not this run's: another kind of file, model, settings or inputs."""
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        found = sorted(map(str, checkpoint))[:5] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointError(f"{path}: not a training run's checkpoint: expected the dict that training writes "
                              f"(model, optimizer, epoch, ...), found {found}")
    missing = [name for name in _RUN_ENTRIES if name not in checkpoint]
    if missing:
        raise CheckpointError(f"{path}: not a training run's checkpoint (a model only?): it has no "
                              f"{', '.join(missing)}; resume needs the last.pt that training writes")
    mine = getattr(getattr(model, "config", None), "to_dict", lambda: None)()
    theirs = checkpoint.get("config")
    if isinstance(mine, dict) and isinstance(theirs, dict) and mine != theirs:
        diffs = ", ".join(f"{k}: {theirs.get(k)!r} -> {mine.get(k)!r}" for k in sorted(set(mine) | set(theirs))
                          if theirs.get(k) != mine.get(k))
        raise CedTrainError(f"cannot resume {path}: it trained another model ({diffs})")
    saved = checkpoint["train_config"]
    changed = sorted(k for k, v in config.to_dict().items() if k not in _RESUME_FREE and saved.get(k) != v)
    if changed:
        diffs = ", ".join(f"{k}: {saved.get(k)!r} -> {getattr(config, k)!r}" for k in changed)
        raise CedTrainError(f"cannot resume {path}: it was trained with different settings ({diffs})")
    before = checkpoint.get("trained_on")  # absent in runs saved before it was recorded
    if before is not None:
        diffs = [f"{what}: {_describe_input(before.get(what))} -> {_describe_input(trained_on[what])}"
                 for what in ("store", "data")
                 if (before.get(what) or {}).get("sha256") != (trained_on[what] or {}).get("sha256")]
        if diffs:
            raise CedTrainError(f"cannot resume {path}: it was trained on other inputs ({'; '.join(diffs)}); "
                                "resume with the run's store and data, or start a new run in another folder")


def _start_run(out: Path | None, model, optimizer, scaler, config: TrainConfig, trained_on: dict | None,
               is_main: bool, log) -> _Run:
    """A fresh run (creating ``out``), or the one in ``out/last.pt`` when resuming."""
    if out is None:
        return _Run()
    path = out / "last.pt"
    if not config.resume:
        if path.exists():
            raise FileExistsError(f"{out} already holds a training run (last.pt); resume it or choose another "
                                  "output folder")
        if is_main:
            out.mkdir(parents=True, exist_ok=True)
        return _Run()
    if not path.exists():
        raise FileNotFoundError(f"cannot resume: no checkpoint {path}")
    checkpoint = load_checkpoint(path)
    _check_resumable(path, checkpoint, model, config, trained_on)
    try:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scaler.load_state_dict(checkpoint["scaler"])
        torch.set_rng_state(checkpoint["rng"]["torch"])
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: its state does not fit this run ({first})") from None
    log(f"resume: {path} after epoch {checkpoint['epoch']} (step {checkpoint['step']})")
    history = list(checkpoint["history"])
    return _Run(checkpoint["epoch"], checkpoint["step"], checkpoint["best_mAP"],
                history[-1]["mAP"] if history else None, history)


def _save_run(out: Path, model, optimizer, scaler, config: TrainConfig, trained_on: dict, run: _Run,
              is_best: bool) -> None:
    """Write out/last.pt (and out/best.pt when this epoch is the best) and out/metrics.csv."""
    state = dict(optimizer=optimizer.state_dict(), scaler=scaler.state_dict(), epoch=run.epoch, step=run.step,
                 best_mAP=run.best_mAP, history=run.history, train_config=config.to_dict(),
                 trained_on=trained_on, rng={"torch": torch.get_rng_state()})
    save_checkpoint(model, out / "last.pt", **state)
    if is_best:
        save_checkpoint(model, out / "best.pt", **state)
    tmp = out / "metrics.csv.tmp"
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=METRICS_FIELDS)
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in run.history)
    os.replace(tmp, out / "metrics.csv")
