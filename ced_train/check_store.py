"""Check that a teacher store still matches its data, recipe and teacher, by recomputing a sample.

Records are matched to the dataset by key, their stored seeds are replayed with the recipe
read from the store's metadata (and its frontend settings), and the teacher is run again.
A correct store differs from the recomputation only by float16 rounding and float
noise from other batch shapes, devices or ``amp``; a store whose audio, order, recipe or
teacher changed differs by far more.

Example:
    >>> report = check_store("teacher.ced", Ensemble.from_checkpoints(["a.pt"]), ds, num_records=64)
    >>> report["mean_abs_diff"], report["index_mismatch_rate"]
"""

from __future__ import annotations

import os

import numpy as np
import torch

import cedstore
from ced_train.amp import amp_dtype
from ced_train.errors import CedTrainError, StoreMismatchError
from ced_train.frontend import log_mel_frontend
from ced_train.progress import Progress
from ced_train.sampling import equal_length_batches
from ced_train.store_meta import join, stored_frontend, stored_recipe, stored_teacher_input
from ced_train.teacher import predict

__all__ = ["MAX_INDEX_MISMATCH", "MAX_MEAN_ABS_DIFF", "check_store", "format_report"]

# A store passes when both hold. float16 rounding alone gives <= 2.5e-4 per value; AMP or
# another device adds ~1e-3; swaps of near-equal neighbours move indices, not values.
MAX_MEAN_ABS_DIFF = 1e-2
MAX_INDEX_MISMATCH = 0.5


def check_store(
    store_path: str | os.PathLike,
    teacher,
    dataset,
    *,
    num_records: int = 64,
    seed: int = 0,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    amp: str = "none",
    progress: bool = False,
) -> dict:
    """Recompute the teacher on a random sample of written records and compare with the store.

    Args:
        store_path: the store.
        teacher: the teacher the store claims (same conventions as ``extract``).
        dataset: the audio (``keys``, ``load_batch``, optional ``lengths``); joined by key.
        num_records: records to check (fewer if the store has fewer written ones).
        seed: picks the records (numpy ``default_rng``).
        batch_size: records per teacher call.
        device: where the teacher runs.
        amp: ``"none"``, ``"bf16"`` or ``"fp16"`` autocast for the teacher.
        progress: print a progress line (records/s, ETA) to stderr every few seconds.

    Returns:
        ``{"store", "checked", "missing_keys", "mean_abs_diff", "max_abs_diff",
        "index_mismatch_rate", "ok"}``: the mean/max of |stored value − recomputed output of the
        stored class| over all checked top-K entries, the share of top-K positions whose class
        differs from the recomputed top-K, and whether both are within the module's limits.

    Raises:
        cedstore.CedStoreError: the file is not a valid store, or has no key table.
        StoreMismatchError: no dataset key has a written record in the store.

    Example:
        >>> check_store("t.ced", teacher, ds)["ok"]
        True
    """
    device = torch.device(device)
    if amp_dtype(amp) is not None and device.type != "cuda":
        raise CedTrainError(f"amp {amp!r} needs a CUDA device, got {device}")
    with cedstore.open(store_path) as store:
        recipe, teacher_input = stored_recipe(store), stored_teacher_input(store)
        frontend_config = stored_frontend(store)
        joined = join(store, dataset.keys, allow_missing=True)
        dataset_ids, store_ids, report = joined.dataset_ids, joined.store_ids, joined.report
        picks = _pick(store, store_ids, num_records, np.random.default_rng(seed))
        if not len(picks):
            raise StoreMismatchError(f"{store_path}: no written record matches a dataset key ({report})")

        if isinstance(teacher, torch.nn.Module):
            teacher = teacher.to(device).eval()
        frontend = log_mel_frontend(**frontend_config.to_dict()).to(device)
        lengths = np.asarray(getattr(dataset, "lengths", np.ones(len(dataset.keys), np.int64)))
        diffs, mismatches = [], []
        # As in extraction, a batch holds chunks of one length (no zero padding), and one epoch.
        label = f"check-store {os.path.basename(os.fspath(store_path))}"
        with Progress(label, len(picks), "records", enabled=progress) as progress_line:
            for epoch in np.unique(picks[:, 0]):
                positions = picks[picks[:, 0] == epoch, 1]
                for batch in equal_length_batches(lengths[dataset_ids[positions]], batch_size):
                    rows = positions[batch]
                    values, indices, seeds = store.topk(int(epoch), store_ids[rows])
                    probs = predict(
                        teacher, dataset.load_batch(dataset_ids[rows]), seeds, recipe=recipe,
                        frontend=frontend, lengths=lengths[dataset_ids[rows]],
                        teacher_input=teacher_input, device=device, amp=amp,
                    )
                    recomputed = np.take_along_axis(probs, indices, axis=1).astype(np.float16).astype(np.float32)
                    diffs.append(np.abs(values - recomputed).ravel())
                    top = np.argsort(-probs, axis=1, kind="stable")[:, : store.k]  # FORMAT.md's order
                    mismatches.append((top != indices).ravel())
                    progress_line.update(len(rows))
    diffs, mismatches = np.concatenate(diffs), np.concatenate(mismatches)
    result = {
        "store": os.fspath(store_path),
        "checked": len(picks),
        "missing_keys": report.missing_in_store,
        "mean_abs_diff": float(diffs.mean()),
        "max_abs_diff": float(diffs.max()),
        "index_mismatch_rate": float(mismatches.mean()),
    }
    result["ok"] = result["mean_abs_diff"] <= MAX_MEAN_ABS_DIFF and result["index_mismatch_rate"] <= MAX_INDEX_MISMATCH
    return result


def _pick(store, store_ids: np.ndarray, num_records: int, rng: np.random.Generator) -> np.ndarray:
    """int64 [n, 2]: up to ``num_records`` distinct written (epoch, position in store_ids), uniformly."""
    written = [store.written(epoch)[store_ids] for epoch in range(store.num_epochs)]
    counts = np.array([mask.sum() for mask in written])
    chosen = np.sort(rng.choice(counts.sum(), min(num_records, counts.sum()), replace=False))
    starts = np.concatenate([[0], np.cumsum(counts)])
    picks = [np.empty((0, 2), np.int64)]
    for epoch, mask in enumerate(written):  # one epoch's positions in memory at a time
        mine = chosen[(chosen >= starts[epoch]) & (chosen < starts[epoch + 1])] - starts[epoch]
        positions = np.flatnonzero(mask)[mine]
        picks.append(np.stack([np.full(len(positions), epoch), positions], axis=1))
    return np.concatenate(picks)


def format_report(result: dict) -> str:
    """The result of :func:`check_store` as a small plain-text table."""
    rows = [
        ("records checked", f"{result['checked']}"),
        ("dataset keys missing in the store", f"{result['missing_keys']}"),
        ("mean |stored - recomputed| (top-K)", f"{result['mean_abs_diff']:.6f}  (limit {MAX_MEAN_ABS_DIFF})"),
        ("max  |stored - recomputed| (top-K)", f"{result['max_abs_diff']:.6f}"),
        ("top-K index mismatches", f"{100 * result['index_mismatch_rate']:.2f} %  (limit {100 * MAX_INDEX_MISMATCH:.0f} %)"),
        ("verdict", "OK" if result["ok"] else "MISMATCH: the store does not match this data/teacher"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join([f"check-store {result['store']}"] + [f"  {name:<{width}}  {value}" for name, value in rows])
