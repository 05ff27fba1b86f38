"""Teacher extraction: the ensemble's top-K outputs on augmented inputs, once, into a cedstore.

For every augmentation epoch ``e`` and chunk ``i`` of the dataset::

    seed  = seed_for(base_seed, e, i)                      # int32, stored with the record
    x     = recipe.apply_spec(frontend(recipe.apply_wave(wave_i, seed)), seed)   # (F, T) dB
    probs = teacher(x)                                     # (C,), e.g. mean of member sigmoids
    store.write(e, [i], probs, [seed])                     # top-K values + indices + seed

The recipe is applied to each chunk at its own length (``dataset.lengths[i]``), never to the
zero padding of a batch, so a record's augmentation depends only on (recipe, seed, chunk) —
the same sizes the trainer must use (docs/AUGMENTATION.md);
:func:`ced_train.teacher.augmented_logmel` is that transformation. With ``recipe=None`` (``--no-augment``) the teacher sees clean inputs; the seeds
``seed_for(...)`` are stored anyway, so a student can still be trained with augmentation
(the paper's "teacher no / student yes" baseline); the metadata then has no ``augmentation``.

**Batches are global.** Only chunks of the same length share a batch, so the teacher never
sees zero padding and a record depends only on its chunk, seed and teacher (not on its batch
neighbours). The records are grouped by chunk length (shortest first), ordered epoch-major
then by chunk id within a group, and each group is cut into batches of ``batch_size``; with
equal-length chunks this is simply ``g = e·N + i`` cut into batches. Batch ``b`` always holds
the same records, so its numerics do not depend on how many processes run or where a run was
interrupted. Under ``torchrun --nproc_per_node R`` rank ``r`` computes batches
``r, r+R, r+2R, ...``.

**One file, disjoint records** (the distributed protocol): rank 0 creates the store (at
``out.part``, renamed to ``out`` once complete, so a killed run never leaves a half-created
file) or checks that the existing one was made by the same extraction; barrier; every rank
``cedstore.resume``s the file and writes only its own records; ``close(seal=False)``; barrier;
rank 0 resumes once more and seals (checksums) the epochs. A record is written in one store
call whose index field is stored last, so a process killed at any moment leaves each record
written or not; a restarted run skips every batch whose records are all written and recomputes
the others whole. (A rank that fails leaves the others waiting at a barrier; torchrun then
stops them all, and the same command resumes.)

The result is byte-identical to an uninterrupted single-process run on the same device with
the same number of torch threads per process (``--threads``; torchrun sets
``OMP_NUM_THREADS=1``) and the same batch size; another device, thread count, batch size or
``--amp`` changes the float rounding of the teacher, not the records' meaning.

Test hook: the environment variable ``CED_EXTRACT_TEST_SLEEP`` (seconds) makes the loop sleep
after every batch, so a test can kill a run while it is writing. Nothing else reads it.

Example:
    >>> teacher = Ensemble.from_checkpoints(["a.pt", "b.pt"])
    >>> ds = AudioDataset.from_tsv("train.tsv")
    >>> extract(teacher, ds, "teacher.ced", epochs=10, k=20)
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

import cedstore
from ced_train import distributed
from ced_train.augment import Recipe
from ced_train.rng import seed_for
from ced_train.frontend import FrontendConfig, log_mel_frontend
from ced_train.labels import default_names, read_names
from ced_train.teacher import TEACHER_INPUTS, Ensemble, predict

__all__ = [
    "Ensemble", "ExtractStats", "add_check_store_arguments", "add_extract_arguments", "extract",
    "main", "run_check_store", "run_extract", "store_metadata",
]

_TEST_SLEEP_ENV = "CED_EXTRACT_TEST_SLEEP"
_PROGRESS_SECONDS = 5.0


# ---- store -----------------------------------------------------------------------------------


def _dataset_sha256(dataset) -> str:
    if hasattr(dataset, "manifest_sha256"):
        return dataset.manifest_sha256()
    return hashlib.sha256("".join(k + "\n" for k in dataset.keys).encode("utf-8")).hexdigest()


def store_metadata(
    teacher,
    dataset,
    *,
    num_classes: int,
    base_seed: int,
    recipe: Recipe | None,
    frontend_config: FrontendConfig,
    teacher_input: str,
    class_names: Sequence[str] | None = None,
    extra: dict | None = None,
) -> dict:
    """The metadata an extraction writes (and a resumed one must find): recipe, frontend,
    teacher, label space, dataset hash, base seed; ``extra`` entries are added (or replace).

    Example:
        >>> store_metadata(teacher, ds, num_classes=527, base_seed=0, recipe=Recipe(),
        ...                frontend_config=FrontendConfig(), teacher_input="spectrogram")
    """
    names = list(class_names) if class_names is not None else default_names(num_classes)
    if len(names) != num_classes:
        raise ValueError(f"got {len(names)} class names for a teacher with {num_classes} classes")
    description = getattr(teacher, "description", None)
    if description is None:
        kind = teacher if hasattr(teacher, "__qualname__") else type(teacher)  # function or object
        description = {"callable": f"{kind.__module__}.{kind.__qualname__}"}
    meta = {
        "activation": "sigmoid",
        "tail_policy": "zero",
        "label_space": cedstore.label_space(names),
        "teacher": description,
        "teacher_input": teacher_input,
        "frontend": frontend_config.to_dict(),
        "dataset_sha256": _dataset_sha256(dataset),
        "base_seed": base_seed,
    }
    if recipe is not None:
        meta["augmentation"] = json.loads(recipe.to_json())
    meta.update(extra or {})
    return meta


def _check_existing(path: str, metadata: dict, shape: dict, keys: list[str]) -> None:
    """Raise ValueError unless the store at ``path`` was made by this same extraction."""
    with cedstore.open(path) as store:
        found = {name: getattr(store, name) for name in shape}
        stored = {key: value for key, value in store.metadata.items() if key != "writer"}
        stored_keys = store.keys
    problems = [f"{name} is {found[name]} in the store, {shape[name]} in this command"
                for name in shape if found[name] != shape[name]]
    expected = json.loads(json.dumps(metadata))  # the JSON round trip the store went through
    for name in sorted(set(stored) | set(expected)):
        if stored.get(name) != expected.get(name):
            problems.append(f"metadata {name!r} is {json.dumps(stored.get(name), sort_keys=True)} "
                            f"in the store, {json.dumps(expected.get(name), sort_keys=True)} in this command")
    if not problems and stored_keys != keys:
        problems.append("its keys differ from the dataset's chunk keys")
    if problems:
        raise ValueError(
            f"{path}: refusing to resume: the store was made by a different extraction ("
            + "; ".join(problems) + "). Use the original command, or another --out."
        )


def _prepare_store(path: str, metadata: dict, shape: dict, keys: list[str]) -> None:
    """Create the store (atomically, via ``path.part``) or check that it matches."""
    if os.path.exists(path):
        _check_existing(path, metadata, shape, keys)
        return
    part = path + ".part"
    writer = cedstore.create(part, **shape, keys=keys, metadata=metadata, overwrite=True)
    writer.close(seal=False)
    os.replace(part, path)


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
        raise ValueError(f"rank 0 could not prepare the store: {message}")


# ---- extraction ------------------------------------------------------------------------------


class _BatchPlan:
    """The global batches: records grouped by chunk length, epoch-major within a group."""

    def __init__(self, lengths: np.ndarray, num_epochs: int, batch_size: int) -> None:
        order = np.argsort(lengths, kind="stable")  # chunk ids by length, then id
        self.groups = np.split(order, np.flatnonzero(np.diff(lengths[order])) + 1)
        self.num_epochs, self.batch_size = num_epochs, batch_size
        records = np.array([num_epochs * len(group) for group in self.groups])
        counts = -(-records // batch_size)  # batches per group
        self.first = np.concatenate([[0], np.cumsum(counts)])  # first batch of each group
        self.num_batches = int(self.first[-1])
        self.sizes = np.full(self.num_batches, batch_size)
        self.sizes[self.first[1:] - 1] = records - (counts - 1) * batch_size  # each group's last

    def records(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        """(epoch ids, chunk ids) of batch ``b``."""
        g = int(np.searchsorted(self.first, b, side="right")) - 1
        group = self.groups[g]
        start = (b - int(self.first[g])) * self.batch_size
        position = np.arange(start, start + int(self.sizes[b]))
        return position // len(group), group[position % len(group)]

    def done(self, written: np.ndarray) -> np.ndarray:
        """bool [num_batches]: batches whose records are all written (``written``: [E, N])."""
        out = []
        for group, first, last in zip(self.groups, self.first[:-1], self.first[1:]):
            flags = np.ones((last - first) * self.batch_size, dtype=bool)  # the tail counts as done
            flags[: self.num_epochs * len(group)] = written[:, group].reshape(-1)
            out.append(flags.reshape(-1, self.batch_size).all(axis=1))
        return np.concatenate(out)


@dataclass
class ExtractStats:
    """What one process did: records written and where the time went (seconds)."""

    path: str
    records: int
    batches: int
    skipped_batches: int
    seconds: float
    load_seconds: float
    teacher_seconds: float
    write_seconds: float

    @property
    def records_per_second(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0


class _Progress:
    """A plain-text progress line on stderr every few seconds: records, records/s, ETA."""

    def __init__(self, total: int, enabled: bool, label: str) -> None:
        self.total, self.enabled, self.label = total, enabled, label
        self.done, self.start = 0, time.perf_counter()
        self.last = self.start

    def update(self, n: int, final: bool = False) -> None:
        self.done += n
        now = time.perf_counter()
        if not self.enabled or not (final or now - self.last >= _PROGRESS_SECONDS):
            return
        self.last = now
        rate = self.done / max(now - self.start, 1e-9)
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        eta_text = time.strftime("%H:%M:%S", time.gmtime(eta)) if eta < 360_000 else "?"
        print(f"{self.label}: {self.done}/{self.total} records "
              f"({100.0 * self.done / max(self.total, 1):.1f} %), {rate:.1f} records/s, ETA {eta_text}",
              file=sys.stderr, flush=True)


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
    out_path: str | os.PathLike,
    *,
    epochs: int,
    k: int = 20,
    base_seed: int = 0,
    recipe: Recipe | None = Recipe(),
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    amp: bool = False,
    teacher_input: str = "spectrogram",
    frontend_config: FrontendConfig | None = None,
    class_names: Sequence[str] | None = None,
    metadata: dict | None = None,
    progress: bool = True,
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
        out_path: the store to create or resume.
        epochs: augmentation epochs E.
        k: outputs kept per record.
        base_seed: the seeds are ``seed_for(base_seed, epoch, chunk)``.
        recipe: augmentation recipe; None gives the teacher clean inputs (the seeds are stored
            anyway and the metadata has no ``augmentation``).
        batch_size: records per global batch (part of the numerics: keep it to resume).
        device: "cpu" or "cuda" (under torchrun, cuda:LOCAL_RANK as set up by the caller).
        amp: float16 autocast for the teacher on CUDA (the frontend stays float32).
        teacher_input: "spectrogram" or "waveform".
        frontend_config: log-mel settings (the students'); ``FrontendConfig()`` by default.
        class_names: the teacher's class names, for ``label_space``; AudioSet's for 527
            classes, else ``class_0, ...``.
        metadata: entries added to (or replacing) the store metadata, e.g. ``{"teacher": ...}``
            to describe a callable teacher, or ``{"user": {...}}``.
        progress: print a progress line to stderr every few seconds (rank 0).

    Returns:
        This process's :class:`ExtractStats`.

    Raises:
        ValueError: bad arguments, a teacher output that is not probabilities, or an existing
            store made by a different extraction (the message lists the differences).
        cedstore.CedStoreError: the existing file is not a valid store.

    Example:
        >>> stats = extract(Ensemble.from_checkpoints(["a.pt"]), ds, "t.ced", epochs=4, k=20)
        >>> stats.records_per_second
    """
    if teacher_input not in TEACHER_INPUTS:
        raise ValueError(f"teacher_input must be one of {TEACHER_INPUTS}, got {teacher_input!r}")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be at least 1, got {epochs} and {batch_size}")
    device = torch.device(device)
    if amp and device.type != "cuda":
        raise ValueError(f"amp needs a CUDA device, got {device}")
    path = os.fspath(out_path)
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
    shape = dict(num_classes=num_classes, k=k, num_samples=num_samples, num_epochs=epochs)
    _broadcast_error(lambda: _prepare_store(path, meta, shape, keys), rank == 0)
    distributed.barrier()

    start = time.perf_counter()
    writer = cedstore.resume(path)
    plan = _BatchPlan(np.full(num_samples, 1) if lengths is None else lengths, epochs, batch_size)
    mine = np.arange(rank, plan.num_batches, world_size)
    todo = mine[~plan.done(np.stack([writer.written(e) for e in range(epochs)]))[mine]]
    label = f"extract {Path(path).name}" + (f" rank 0/{world_size}" if world_size > 1 else "")
    progress_line = _Progress(int(plan.sizes[todo].sum()), progress and rank == 0, label)
    test_sleep = float(os.environ.get(_TEST_SLEEP_ENV, "0"))
    stats = ExtractStats(path, 0, len(todo), len(mine) - len(todo), 0.0, 0.0, 0.0, 0.0)

    def load(b: int):
        epoch_ids, sample_ids = plan.records(b)
        t0 = time.perf_counter()
        waves = dataset.load_batch(sample_ids)
        return epoch_ids, sample_ids, waves, time.perf_counter() - t0

    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:  # load batch n+1 during batch n
            todo = todo.tolist()
            pending = pool.submit(load, todo[0]) if todo else None
            for n in range(len(todo)):
                epoch_ids, sample_ids, waves, load_seconds = pending.result()
                pending = pool.submit(load, todo[n + 1]) if n + 1 < len(todo) else None
                t0 = time.perf_counter()
                seeds = seed_for(base_seed, epoch_ids, sample_ids)
                batch_lengths = None if lengths is None else lengths[sample_ids]
                probs = predict(teacher, waves, seeds, lengths=batch_lengths, **predict_args)
                t1 = time.perf_counter()
                for epoch in np.unique(epoch_ids):  # a batch may straddle epochs
                    rows = epoch_ids == epoch
                    writer.write(int(epoch), sample_ids[rows], probs=probs[rows], seeds=seeds[rows])
                t2 = time.perf_counter()
                stats.records += len(sample_ids)
                stats.load_seconds += load_seconds
                stats.teacher_seconds += t1 - t0
                stats.write_seconds += t2 - t1
                progress_line.update(len(sample_ids))
                if test_sleep:
                    time.sleep(test_sleep)
    finally:
        writer.close(seal=world_size == 1)
    if world_size > 1:  # every rank's records are in the file: rank 0 checksums the epochs
        distributed.barrier()
        if rank == 0:
            cedstore.resume(path).close(seal=True)
        distributed.barrier()
    stats.seconds = time.perf_counter() - start
    if todo:
        progress_line.update(0, final=True)
    return stats


# ---- command line ----------------------------------------------------------------------------


def add_extract_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``ced-train extract`` options to ``parser`` (see :func:`run_extract`)."""
    parser.add_argument("--teacher", action="append", required=True, metavar="CKPT",
                        help="a CED checkpoint; repeat for an ensemble (mean of the probabilities)")
    parser.add_argument("--data", required=True, help="dataset TSV (filename [, labels] columns)")
    parser.add_argument("--epochs", type=int, required=True, help="augmentation epochs to store")
    parser.add_argument("--k", type=int, default=20, help="top-K outputs kept per record (20)")
    parser.add_argument("--out", required=True, help="the store to write; an existing one is resumed")
    parser.add_argument("--batch-size", type=int, default=32, help="records per batch (32)")
    parser.add_argument("--seed", type=int, default=0, help="base seed of the augmentation seeds (0)")
    parser.add_argument("--no-augment", action="store_true", help="teacher sees clean inputs (baselines)")
    parser.add_argument("--chunk-seconds", type=float, default=10.0, help="chunk length in seconds (10)")
    parser.add_argument("--class-names", help="class names, one per line (default: AudioSet's or class_i)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda:LOCAL_RANK under torchrun)")
    parser.add_argument("--amp", action="store_true", help="float16 autocast for the teacher (CUDA)")
    parser.add_argument("--threads", type=int, help="torch threads per process (byte-identical "
                        "results need the same value; torchrun's default is 1)")
    parser.add_argument("--skip-bad", action="store_true", help="skip unreadable audio files")
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    return parser


def run_extract(args: argparse.Namespace) -> int:
    """Run ``ced-train extract`` (also under torchrun); returns the exit status."""
    from ced_train.data import AudioDataset

    dist_info = distributed.setup(args.device)
    try:
        if args.threads:
            torch.set_num_threads(args.threads)
        dataset = AudioDataset.from_tsv(args.data, chunk_seconds=args.chunk_seconds, skip_bad=args.skip_bad)
        teacher = Ensemble.from_checkpoints(args.teacher)
        names = read_names(args.class_names) if args.class_names else None
        stats = extract(
            teacher, dataset, args.out, epochs=args.epochs, k=args.k, base_seed=args.seed,
            recipe=None if args.no_augment else Recipe(), batch_size=args.batch_size,
            device=dist_info.device, amp=args.amp, class_names=names,
            metadata={"chunk_seconds": args.chunk_seconds}, progress=not args.quiet,
        )
        if dist_info.is_main and not args.quiet:
            print(f"{args.out}: {dataset.summary()}; wrote {stats.records} records in "
                  f"{stats.seconds:.1f} s ({stats.records_per_second:.1f} records/s, store writes "
                  f"{stats.write_seconds:.2f} s), skipped {stats.skipped_batches} finished batches",
                  file=sys.stderr)
    finally:
        distributed.cleanup()
    return 0


def add_check_store_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``ced-train check-store`` options (from :mod:`ced_train.check_store`)."""
    from ced_train import check_store

    return check_store.add_check_store_arguments(parser)


def run_check_store(args: argparse.Namespace) -> int:
    """Run ``ced-train check-store`` (from :mod:`ced_train.check_store`)."""
    from ced_train import check_store

    return check_store.run_check_store(args)


def main(argv: list[str] | None = None) -> int:
    """``python -m ced_train.extract ...`` (the same as ``ced-train extract ...``)."""
    parser = add_extract_arguments(argparse.ArgumentParser(
        prog="ced-train extract", description="Store a teacher ensemble's top-K outputs on augmented audio."))
    args = parser.parse_args(argv)
    try:
        return run_extract(args)
    except (ValueError, OSError) as e:  # DataError, CedStoreError and mismatches are ValueErrors
        print(f"ced-train extract: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
