"""Sparse batches against dense ones: decode rate, and decode + KL loss against densify-then-loss.

For C = 527 (AudioSet, beside decode.py's dense figure), C = 32,000 (an LLM vocabulary that
int16 indices still hold, stored both ways: int16, and int32 to price the wide layout alone)
and C = 128,256 (Llama-3: the wide layout of format 1.2, int32 indices, 124-byte records),
K = 20, random batches of 128 ids, one thread:

  dense decode      Store.dense: float32 [B, C] targets (tail zero; 512 KB a row at C = 128,256)
  topk decode       Store.topk: values float32 [B, K], indices int64 [B, K], seeds, as stored
  sparse decode     cedstore.targets.sparse, tail "uniform": values [B, K], indices, tail [B]
  sparse + loss     sparse decode, then cedstore.torch.sparse_kl_div forward and backward
  dense + loss      the obvious alternative: cedstore.targets.dense (tail "uniform", the same
                    targets densified), then F.kl_div(log_softmax) forward and backward

The student logits [B, C] are the same tensor for both losses (the model is not timed). Rates
are records per CPU-second of the calling thread; writes benchmarks/results/sparse.json.

Usage: python benchmarks/sparse.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

from decode import cpu_name, rate  # benchmarks/decode.py: one thread, CPU-time rates

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import cedstore  # noqa: E402
from cedstore import targets  # noqa: E402
from cedstore.torch import sparse_kl_div  # noqa: E402

K, BATCH = 20, 128
# (label, num_classes, records, index_dtype: None picks int16 when C fits, as cedstore.create does)
# As many records everywhere (8-12 MB of records): a smaller store would sit in the CPU's caches.
SHAPES = [("527", 527, 100_000, None), ("32000", 32_000, 100_000, None), ("32000 int32", 32_000, 100_000, np.int32),
          ("128256", 128_256, 100_000, None)]


def distinct_classes(rng: np.random.Generator, num_rows: int, num_classes: int) -> np.ndarray:
    """K distinct random classes per row, int64 [num_rows, K]."""
    if num_classes <= 1024:
        return np.argsort(rng.random((num_rows, num_classes)), axis=1)[:, :K]
    return np.stack([rng.choice(num_classes, K, replace=False) for _ in range(num_rows)])  # no [rows, C] array


def build_store(path: str, num_classes: int, num_records: int, rng: np.random.Generator,
                index_dtype=None) -> cedstore.Store:
    """Random softmax-like top-K records, written as top-k rows (no dense teacher outputs)."""
    with cedstore.create(path, num_classes=num_classes, k=K, num_samples=num_records,
                         metadata={"activation": "softmax"}, index_dtype=index_dtype) as w:
        for lo in range(0, num_records, 8192):
            ids = np.arange(lo, min(lo + 8192, num_records))
            values = np.sort(rng.dirichlet(np.ones(K + 5), len(ids))[:, :K].astype(np.float32), axis=1)[:, ::-1]
            indices = distinct_classes(rng, len(ids), num_classes)
            w.write(0, ids, values=np.ascontiguousarray(values), indices=indices, seeds=np.zeros(len(ids), np.int32))
    return cedstore.open(path)


def methods(store: cedstore.Store, logits: torch.Tensor) -> dict:
    def dense_decode(ids):
        store.dense(0, ids)

    def topk_decode(ids):
        store.topk(0, ids)

    def sparse_decode(ids):
        targets.sparse(store, 0, ids, tail="uniform")

    def sparse_loss(ids):
        values, indices, tail, _ = targets.sparse(store, 0, ids, tail="uniform")
        loss = sparse_kl_div(logits, torch.from_numpy(values), torch.from_numpy(indices), torch.from_numpy(tail))
        torch.autograd.grad(loss, logits)

    def dense_loss(ids):
        dense, _ = targets.dense(store, 0, ids, tail="uniform")
        loss = F.kl_div(F.log_softmax(logits, dim=1), torch.from_numpy(dense), reduction="batchmean")
        torch.autograd.grad(loss, logits)

    return {"dense decode": dense_decode, "topk decode": topk_decode, "sparse decode": sparse_decode,
            "sparse + loss": sparse_loss, "dense + loss": dense_loss}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.4, help="minimum seconds per measurement")
    parser.add_argument("--quick", action="store_true", help="a tenth of the records, shorter measurements")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "sparse.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds = 0.1
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    results = {"k": K, "batch_size": BATCH, "threads": 1,
               "timing": "records per CPU-second of the calling thread (time.thread_time)",
               "machine": f"{cpu_name()}, {os.cpu_count()} CPUs", "python": sys.version.split()[0], "rates": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for label, num_classes, num_records, index_dtype in SHAPES:
            num_records //= 10 if args.quick else 1
            store = build_store(os.path.join(tmp, f"c{label}.ced"), num_classes, num_records, rng, index_dtype)
            logits = torch.randn(BATCH, num_classes, requires_grad=True)
            batches = [rng.integers(0, num_records, BATCH) for _ in range(64)]
            row = {name: rate(fn, batches, args.seconds) for name, fn in methods(store, logits).items()}
            row["loss ratio (sparse / dense)"] = row["sparse + loss"] / row["dense + loss"]
            results["rates"][label] = row
            results.setdefault("layouts", {})[label] = {"index_dtype": str(store.index_dtype),
                                                        "record_size": store.record_size}
    rates = results["rates"]
    results["ratios"] = {  # the wide layout against the narrow one, in this run
        "int32 / int16 topk decode at C=32000": rates["32000 int32"]["topk decode"] / rates["32000"]["topk decode"],
        "int32 / int16 sparse decode at C=32000": rates["32000 int32"]["sparse decode"] / rates["32000"]["sparse decode"],
        "C=128256 topk decode / C=527 dense decode": rates["128256"]["topk decode"] / rates["527"]["dense decode"],
        "C=128256 sparse / dense decode": rates["128256"]["sparse decode"] / rates["128256"]["dense decode"],
    }
    print(f"records per CPU-second (K={K}, B={BATCH}, one thread; tail 'uniform' for sparse and the losses)")
    names = list(next(iter(rates.values())))
    print(f"{'C':>12}  " + "  ".join(f"{n:>16}" for n in names))
    for c, row in rates.items():
        print(f"{c:>12}  " + "  ".join(f"{row[n]:>16.2f}" if "ratio" in n else f"{row[n] / 1e6:>14.3f} M" for n in names))
    for name, ratio in results["ratios"].items():
        print(f"{name}: {ratio:.2f}x")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
