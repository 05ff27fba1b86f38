"""Check that a teacher store still matches its data, recipe and teacher, by recomputing a sample.

Records are matched to the dataset by key, their stored seeds are replayed with the recipe
read from the store's metadata (and its frontend settings), and the teacher is run again.
A correct store differs from the recomputation only by float16 rounding and float
noise from other batch shapes, devices or ``--amp``; a store whose audio, order, recipe or
teacher changed differs by far more.

Example:
    >>> report = check_store("teacher.ced", Ensemble.from_checkpoints(["a.pt"]), ds, samples=64)
    >>> report["mean_abs_diff"], report["index_mismatch_rate"]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch

import cedstore
from ced_train.augment import Recipe
from ced_train.frontend import FrontendConfig, log_mel_frontend
from ced_train.teacher import Ensemble, predict

__all__ = ["MAX_INDEX_MISMATCH", "MAX_MEAN_ABS_DIFF", "add_check_store_arguments", "check_store",
           "format_report", "main", "run_check_store"]

# A store passes when both hold. float16 rounding alone gives <= 2.5e-4 per value; AMP or
# another device adds ~1e-3; swaps of near-equal neighbours move indices, not values.
MAX_MEAN_ABS_DIFF = 1e-2
MAX_INDEX_MISMATCH = 0.5


def check_store(
    store_path: str | os.PathLike,
    teacher,
    dataset,
    *,
    samples: int = 64,
    seed: int = 0,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    amp: bool = False,
) -> dict:
    """Recompute the teacher on a random sample of written records and compare with the store.

    Args:
        store_path: the store.
        teacher: the teacher the store claims (same conventions as ``extract``).
        dataset: the audio (``keys``, ``load_batch``, optional ``lengths``); joined by key.
        samples: records to check (fewer if the store has fewer written ones).
        seed: picks the records (numpy ``default_rng``).
        batch_size: records per teacher call.
        device: where the teacher runs.
        amp: float16 autocast for the teacher on CUDA.

    Returns:
        ``{"store", "checked", "missing_keys", "mean_abs_diff", "max_abs_diff",
        "index_mismatch_rate", "ok"}``: the mean/max of |stored value − recomputed output of the
        stored class| over all checked top-K entries, the share of top-K positions whose class
        differs from the recomputed top-K, and whether both are within the module's limits.

    Raises:
        cedstore.CedStoreError: the file is not a valid store, or has no key table.
        ValueError: no dataset key has a written record in the store.

    Example:
        >>> check_store("t.ced", teacher, ds)["ok"]
        True
    """
    device = torch.device(device)
    with cedstore.open(store_path) as store:
        meta = store.metadata
        recipe = Recipe.from_json(json.dumps(meta["augmentation"])) if "augmentation" in meta else None
        frontend_config = FrontendConfig(**meta.get("frontend", {}))
        report = store.join(dataset.keys)
        dataset_ids = np.flatnonzero(report.ids >= 0)
        store_ids = report.ids[dataset_ids]
        picks = _pick(store, store_ids, samples, np.random.default_rng(seed))
        if not len(picks):
            raise ValueError(f"{store_path}: no written record matches a dataset key ({report})")

        if isinstance(teacher, torch.nn.Module):
            teacher = teacher.to(device).eval()
        frontend = log_mel_frontend(**frontend_config.to_dict()).to(device)
        lengths = np.asarray(getattr(dataset, "lengths", np.ones(len(dataset.keys), np.int64)))
        diffs, mismatches = [], []
        # As in extraction, a batch holds chunks of one length (no zero padding), and one epoch.
        groups = np.stack([picks[:, 0], lengths[dataset_ids[picks[:, 1]]]], axis=1)
        for epoch, length in np.unique(groups, axis=0):
            group = picks[(groups[:, 0] == epoch) & (groups[:, 1] == length), 1]
            for rows in np.array_split(group, -(-len(group) // batch_size)):
                values, indices, seeds = store.topk(int(epoch), store_ids[rows])
                probs = predict(
                    teacher, dataset.load_batch(dataset_ids[rows]), seeds, recipe=recipe,
                    frontend=frontend, lengths=lengths[dataset_ids[rows]],
                    teacher_input=meta.get("teacher_input", "spectrogram"), device=device, amp=amp,
                )
                recomputed = np.take_along_axis(probs, indices, axis=1).astype(np.float16).astype(np.float32)
                diffs.append(np.abs(values - recomputed).ravel())
                top = np.argsort(-probs, axis=1, kind="stable")[:, : store.k]  # FORMAT.md's order
                mismatches.append((top != indices).ravel())
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


def _pick(store, store_ids: np.ndarray, samples: int, rng: np.random.Generator) -> np.ndarray:
    """int64 [n, 2]: up to ``samples`` distinct written (epoch, position in store_ids), uniformly."""
    written = [store.written(epoch)[store_ids] for epoch in range(store.num_epochs)]
    counts = np.array([mask.sum() for mask in written])
    chosen = np.sort(rng.choice(counts.sum(), min(samples, counts.sum()), replace=False))
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


def add_check_store_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``ced-train check-store`` options to ``parser`` (see :func:`run_check_store`)."""
    parser.add_argument("--store", required=True, help="the teacher store to check")
    parser.add_argument("--teacher", action="append", required=True, metavar="CKPT",
                        help="the store's teacher checkpoint(s), as given to extract")
    parser.add_argument("--data", required=True, help="dataset TSV the store was extracted from")
    parser.add_argument("--samples", type=int, default=64, help="records to recompute (64)")
    parser.add_argument("--seed", type=int, default=0, help="picks the records (0)")
    parser.add_argument("--batch-size", type=int, default=32, help="records per teacher call (32)")
    parser.add_argument("--chunk-seconds", type=float,
                        help="chunk length (default: the store's chunk_seconds metadata, else 10)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--amp", action="store_true", help="float16 autocast for the teacher (CUDA)")
    parser.add_argument("--threads", type=int, help="torch threads")
    parser.add_argument("--skip-bad", action="store_true", help="skip unreadable audio files")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser


def run_check_store(args: argparse.Namespace) -> int:
    """Run ``ced-train check-store``; prints the report; exit status 0 if OK, 1 on mismatch."""
    from ced_train.data import AudioDataset

    if args.threads:
        torch.set_num_threads(args.threads)
    chunk_seconds = args.chunk_seconds
    if chunk_seconds is None:
        with cedstore.open(args.store) as store:
            chunk_seconds = store.metadata.get("chunk_seconds", 10.0)
    dataset = AudioDataset.from_tsv(args.data, chunk_seconds=chunk_seconds, skip_bad=args.skip_bad)
    result = check_store(args.store, Ensemble.from_checkpoints(args.teacher), dataset,
                         samples=args.samples, seed=args.seed, batch_size=args.batch_size,
                         device=args.device, amp=args.amp)
    print(json.dumps(result, indent=2) if args.json else format_report(result))
    return 0 if result["ok"] else 1


def main(argv: list[str] | None = None) -> int:
    """``python -m ced_train.check_store ...`` (the same as ``ced-train check-store ...``)."""
    parser = add_check_store_arguments(argparse.ArgumentParser(
        prog="ced-train check-store", description="Recompute a sample of a teacher store's records."))
    args = parser.parse_args(argv)
    try:
        return run_check_store(args)
    except (ValueError, OSError) as e:
        print(f"ced-train check-store: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
