"""Teacher extraction: the ensemble's top-K outputs on augmented inputs, once, into a cedstore.

For every augmentation epoch ``e`` and chunk ``i`` of the dataset::

    seed  = seed_for(base_seed, e, i)                      # int32, stored with the record
    x     = recipe.apply_spec(frontend(recipe.apply_wave(wave_i, seed)), seed)   # (F, T) dB
    probs = teacher(x)                                     # (C,), e.g. mean of member sigmoids
    store.write(e, [i], probs, [seed])                     # top-K values + indices + seed

The recipe is applied to each chunk at its own length (``dataset.lengths[i]``), never to the
zero padding of a batch, so a record's augmentation depends only on (recipe, seed, chunk) —
the same sizes the trainer must use (docs/AUGMENTATION.md);
:func:`ced_train.augment.augmented_logmel` is that transformation. With ``recipe=None`` the
teacher sees clean inputs; the seeds ``seed_for(...)`` are stored anyway, so a student can still be trained with augmentation
(the paper's "teacher no / student yes" baseline); the metadata then has no ``augmentation``.

**Batches are global** (``ced_train.sampling.ExtractionPlan``). Only chunks of the same length
share a batch, so the teacher never sees zero padding and a record depends only on its chunk,
seed and teacher (not on its batch neighbours). The records are grouped by chunk length
(shortest first), ordered epoch-major then by chunk id within a group, and each group is cut
into batches of ``batch_size``; with equal-length chunks this is simply ``g = e·N + i`` cut
into batches. Batch ``b`` always holds the same records, so its numerics do not depend on how
many processes run or where a run was interrupted. Under ``torchrun --nproc_per_node R`` rank
``r`` computes batches ``r, r+R, r+2R, ...``.

**One file, one writer** (the distributed protocol; cedstore allows one writer per file): rank 0
creates the store (at ``store_path.part``, renamed to ``store_path`` once complete, so a killed
run never leaves a half-created file) or checks that the existing one was made by the same
extraction, resumes it and tells every rank which batches are done. In each round every rank
computes its next batch and sends the teacher's outputs to rank 0, which writes them; at the
end rank 0 seals (checksums) the epochs. A record is written in one store call whose index
field is stored last, so a process killed at any moment leaves each record written or not; a
restarted run skips every batch whose records are all written and recomputes the others whole.
(A rank that fails leaves the others waiting; torchrun then stops them all, and the same
command resumes.)

The result is byte-identical to an uninterrupted single-process run on the same device with
the same number of torch threads per process (torchrun sets ``OMP_NUM_THREADS=1``) and the
same batch size; another device, thread count, batch size or ``amp`` changes the float rounding of the teacher, not the records' meaning.

Example:
    >>> teacher = Ensemble.from_checkpoints(["a.pt", "b.pt"])
    >>> ds = AudioDataset.from_tsv("train.tsv")
    >>> extract(teacher, ds, "teacher.ced", store_epochs=10, k=20)
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

import cedstore
from ced_train import distributed
from ced_train.amp import amp_dtype
from ced_train.augment import BLANK_WARN_SHARE, Recipe, blanked_share
from ced_train.errors import CedTrainError
from ced_train.frontend import FrontendConfig, log_mel_frontend
from ced_train.progress import Progress
from ced_train.rng import seed_for
from ced_train.sampling import ExtractionPlan, prefetch
from ced_train.store_meta import check_same_extraction, store_metadata
from ced_train.teacher import TEACHER_INPUTS, Ensemble, predict

__all__ = ["Ensemble", "ExtractStats", "extract"]

_log = logging.getLogger(__name__)

# glibc's mallopt parameters (malloc.h) and the largest M_MMAP_THRESHOLD it accepts on 64-bit
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX = -1, -3, 32 << 20


def _keep_freed_memory() -> bool:
    """Make glibc keep freed heap memory for reuse instead of handing it back to the OS.

    A teacher's activations (up to 24 MB each for CED-Tiny at B=32) are freed and made again in
    every batch. With glibc's default, self-tuning thresholds the top of the heap is trimmed and
    page-faulted in afresh: ~170,000 page faults and 0.5 s of system time per batch of 32 10 s
    clips (~15 % of it); with these settings none. Buffers up to 32 MB come from the heap, and
    freed heap memory stays with the process (its footprint keeps its peak; larger buffers are
    still returned). Process-wide; ``extract`` calls it on the CPU.

    Returns:
        True if glibc took both settings; False (and nothing changed) on other C libraries.

    Example:
        >>> _keep_freed_memory()  # doctest: +SKIP
        True
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt  # the C library this process already runs on
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)) & bool(mallopt(_M_TRIM_THRESHOLD, 1 << 30))



# ---- store -----------------------------------------------------------------------------------


def _prepare_store(path: str, metadata: dict, shape: dict, keys: list[str], resamples: bool) -> np.ndarray:
    """Create the store (atomically, via ``path.part``) or check that it matches; returns the
    store id of each dataset chunk (see :func:`check_same_extraction` for a data set that lost
    files)."""
    if os.path.exists(path):
        return check_same_extraction(path, metadata, shape, keys, resamples)
    part = path + ".part"
    writer = cedstore.create(part, **shape, keys=keys, metadata=metadata, overwrite=True)
    writer.close(seal=False)
    os.replace(part, path)
    return np.arange(len(keys), dtype=np.int64)


def _broadcast_error(fn: Callable[[], None], is_main: bool) -> None:
    """Run ``fn`` on rank 0 and raise its error on every rank (so no rank waits forever)."""
    error, message = None, None
    if is_main:
        try:
            fn()
        except Exception as e:  # re-raised below, on every rank
            error, message = e, str(e)
    message = distributed.broadcast_object(message)
    if error is not None:
        raise error
    if message is not None:
        raise CedTrainError(f"rank 0 could not prepare the store: {message}")


def _warn_blanked(path: str, recipe: Recipe | None, teacher_input: str, base_seed: int, store_ids: np.ndarray,
                  lengths: np.ndarray | None, num_epochs: int, hop_length: int) -> float:
    """Log a warning when the recipe masks every frame of more than ``BLANK_WARN_SHARE`` of the
    records (short clips under the paper's fixed bound); returns that share."""
    if recipe is None or teacher_input != "spectrogram" or lengths is None:
        return 0.0
    frames = 1 + np.asarray(lengths, dtype=np.int64) // hop_length  # the frontend's T (center=True)
    share = float(np.mean([blanked_share(recipe, seed_for(base_seed, e, store_ids), frames)
                           for e in range(num_epochs)]))
    if share > BLANK_WARN_SHARE:
        _log.warning("%s: the recipe %s masks every frame of %.1f%% of the records (more than %g%%): their "
                     "teacher outputs do not depend on the audio (short clips); recipe version 2 scales the "
                     "time mask with the clip (extract --time-mask-percent, docs/AUGMENTATION.md)",
                     path, recipe.to_json(), 100 * share, 100 * BLANK_WARN_SHARE)
    return share


# ---- extraction ------------------------------------------------------------------------------


@dataclass
class ExtractStats:
    """What one process did: records written and where the time went (seconds);
    ``lost_chunks``: the store's chunks no longer in the data set (rank 0; their records stay
    unwritten, so their epochs are never sealed); ``blanked_share``: the share of the store's
    records whose time mask covers every frame (rank 0; warned about above ``BLANK_WARN_SHARE``)."""

    path: str
    records: int
    batches: int
    skipped_batches: int
    seconds: float
    load_seconds: float
    teacher_seconds: float
    write_seconds: float
    lost_chunks: int = 0
    blanked_share: float = 0.0

    @property
    def records_per_second(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0


def _num_classes(teacher, dataset, **predict_args) -> int:
    """The teacher's class count: its ``num_classes`` attribute, else one probe on chunk 0."""
    num_classes = getattr(teacher, "num_classes", None)
    if num_classes is None:
        seeds = np.asarray([seed_for(0, 0, 0)], dtype=np.int32)
        lengths = getattr(dataset, "lengths", None)
        probe_lengths = None if lengths is None else np.asarray(lengths)[:1]
        num_classes = predict(teacher, dataset.load_batch([0]), seeds, lengths=probe_lengths,
                              **predict_args).shape[1]
    return int(num_classes)


def extract(
    teacher: Callable[[torch.Tensor], torch.Tensor],
    dataset,
    store_path: str | os.PathLike,
    *,
    store_epochs: int,
    k: int = 20,
    base_seed: int = 0,
    recipe: Recipe | None = Recipe(),
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    amp: str = "none",
    teacher_input: str = "spectrogram",
    frontend_config: FrontendConfig | None = None,
    class_names: Sequence[str] | None = None,
    metadata: dict | None = None,
    progress: bool = False,
    keep_freed_memory: bool = True,
) -> ExtractStats:
    """Extract a teacher's top-K outputs on augmented inputs into a cedstore (see module doc).

    Resumes an existing store made by the same extraction; under an initialised
    torch.distributed group (torchrun + :func:`ced_train.distributed.setup`) every rank must
    call it with the same arguments and writes its share of the batches.

    Args:
        teacher: maps the augmented dB log-mel (B, F, T) — or, with
            ``teacher_input="waveform"``, the augmented waveform (B, S) — to probabilities
            (B, C); e.g. an :class:`Ensemble`. An ``nn.Module`` is moved to ``device`` and put
            in eval mode; its ``description`` / ``num_classes`` attributes are used if present.
        dataset: ``keys`` (N chunk keys), ``load_batch(ids)`` -> float32 (B, S) zero-padded,
            optional ``lengths`` (N,) and ``manifest_sha256()``; e.g. an ``AudioDataset``.
        store_path: the store to create or resume.
        store_epochs: augmentation epochs E to store (the store's ``num_epochs``).
        k: outputs kept per record.
        base_seed: the seeds are ``seed_for(base_seed, epoch, chunk)``.
        recipe: augmentation recipe; None gives the teacher clean inputs (the seeds are stored
            anyway and the metadata has no ``augmentation``).
        batch_size: records per global batch (part of the numerics: keep it to resume).
        device: "cpu" or "cuda" (under torchrun, cuda:LOCAL_RANK as set up by the caller).
        amp: ``"none"``, ``"bf16"`` or ``"fp16"`` autocast for the teacher on CUDA (the
            frontend stays float32).
        teacher_input: "spectrogram" or "waveform".
        frontend_config: log-mel settings (the students'); ``FrontendConfig()`` by default.
        class_names: the teacher's class names, for ``label_space``; AudioSet's for 527
            classes, else ``class_0, ...``.
        metadata: entries added to (or replacing) the store metadata, e.g. ``{"teacher": ...}``
            to describe a callable teacher, or ``{"user": {...}}``.
        progress: print a progress line to stderr every few seconds (rank 0).
        keep_freed_memory: on the CPU, let glibc keep freed heap memory for the rest of the
            process (:func:`_keep_freed_memory`: no page faults for the teacher's activations,
            ~15 % of a CED-Tiny batch's time; the process keeps its peak footprint). False
            leaves the C library's settings alone.

    Returns:
        This process's :class:`ExtractStats`.

    Raises:
        ValueError: bad arguments, or a teacher output that is not probabilities.
        StoreMismatchError: an existing store made by a different extraction (the message
            lists the differences).
        cedstore.CedStoreError: the existing file is not a valid store.

    Example:
        >>> stats = extract(Ensemble.from_checkpoints(["a.pt"]), ds, "t.ced", store_epochs=4, k=20)
        >>> stats.records_per_second
    """
    if teacher_input not in TEACHER_INPUTS:
        raise CedTrainError(f"teacher_input must be one of {TEACHER_INPUTS}, got {teacher_input!r}")
    if store_epochs < 1 or batch_size < 1:
        raise CedTrainError(f"store_epochs and batch_size must be at least 1, got {store_epochs} and {batch_size}")
    device = torch.device(device)
    if amp_dtype(amp) is not None and device.type != "cuda":
        raise CedTrainError(f"amp {amp!r} needs a CUDA device, got {device}")
    if device.type == "cpu" and keep_freed_memory and _keep_freed_memory():
        _log.info("extract: glibc keeps freed heap memory for this process (keep_freed_memory=False to not)")
    path = os.fspath(store_path)
    rank = torch.distributed.get_rank() if distributed.is_distributed() else 0
    world_size = torch.distributed.get_world_size() if distributed.is_distributed() else 1
    frontend_config = frontend_config or FrontendConfig()
    frontend = log_mel_frontend(**frontend_config.to_dict()).to(device)
    if isinstance(teacher, nn.Module):
        teacher = teacher.to(device).eval()
    predict_args = dict(recipe=recipe, frontend=frontend,
                        teacher_input=teacher_input, device=device, amp=amp)

    keys = list(dataset.keys)
    num_samples = len(keys)
    lengths = None if getattr(dataset, "lengths", None) is None else np.asarray(dataset.lengths)
    num_classes = _num_classes(teacher, dataset, **predict_args)
    meta = store_metadata(teacher, dataset, num_classes=num_classes, base_seed=base_seed,
                          recipe=recipe, frontend_config=frontend_config, teacher_input=teacher_input,
                          class_names=class_names, extra=metadata)
    shape = dict(num_classes=num_classes, k=k, num_samples=num_samples, num_epochs=store_epochs)
    prepared = []
    _broadcast_error(lambda: prepared.append(_prepare_store(path, meta, shape, keys, getattr(dataset, "resamples", False))), rank == 0)
    store_ids = distributed.broadcast_object(prepared[0] if rank == 0 else None)
    distributed.barrier()

    start = time.perf_counter()
    writer = cedstore.resume(path) if rank == 0 else None  # one writer per file: rank 0's
    plan = ExtractionPlan(np.full(num_samples, 1) if lengths is None else lengths, store_epochs, batch_size)
    done = distributed.broadcast_object(
        plan.done(np.stack([writer.written(e)[store_ids] for e in range(store_epochs)])) if rank == 0 else None)
    assigned = [np.arange(r, plan.num_batches, world_size) for r in range(world_size)]
    todo = [batches[~done[batches]] for batches in assigned]  # every rank's, in rounds
    num_rounds = max(len(batches) for batches in todo)
    label = f"extract {Path(path).name}"
    total = int(sum(plan.sizes[batches].sum() for batches in todo))
    progress_line = Progress(label, total, "records", enabled=progress and rank == 0)
    stats = ExtractStats(path, 0, len(todo[rank]), len(assigned[rank]) - len(todo[rank]), 0.0, 0.0, 0.0, 0.0,
                         lost_chunks=writer.num_samples - num_samples if writer is not None else 0)
    if rank == 0:
        stats.blanked_share = _warn_blanked(path, recipe, teacher_input, base_seed, store_ids, lengths,
                                            store_epochs, frontend_config.hop_length)

    def load(b: int | None):
        if b is None:  # this rank has no batch in this round
            return None
        epoch_ids, sample_ids = plan.records(b)
        t0 = time.perf_counter()
        waves = dataset.load_batch(sample_ids)
        return epoch_ids, sample_ids, waves, time.perf_counter() - t0

    mine = todo[rank].tolist() + [None] * (num_rounds - len(todo[rank]))
    try:
        for loaded in prefetch(load, mine):
            computed = None
            if loaded is not None:
                epoch_ids, sample_ids, waves, load_seconds = loaded
                t0 = time.perf_counter()
                seeds = seed_for(base_seed, epoch_ids, store_ids[sample_ids])
                batch_lengths = None if lengths is None else lengths[sample_ids]
                probs = predict(teacher, waves, seeds, lengths=batch_lengths, **predict_args)
                stats.records += len(sample_ids)
                stats.load_seconds += load_seconds
                stats.teacher_seconds += time.perf_counter() - t0
                computed = (epoch_ids, store_ids[sample_ids], probs, seeds)
            t1 = time.perf_counter()
            for item in distributed.gather_object(computed):  # rank 0: every rank's batch
                if item is None:
                    continue
                epoch_ids, sample_ids, probs, seeds = item
                for epoch in np.unique(epoch_ids):  # a batch may straddle epochs
                    rows = epoch_ids == epoch
                    writer.write(int(epoch), sample_ids[rows], probs=probs[rows], seeds=seeds[rows])
                progress_line.update(len(sample_ids))
            stats.write_seconds += time.perf_counter() - t1
    finally:
        if writer is not None:
            writer.close(seal=True)  # checksums every complete epoch
    distributed.barrier()
    stats.seconds = time.perf_counter() - start
    progress_line.finish()
    return stats
