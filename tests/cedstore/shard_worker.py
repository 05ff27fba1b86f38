"""One rank of a torchrun job writing its compact shard (tests/cedstore/test_shards.py).

Usage: python -m torch.distributed.run --standalone --nproc_per_node W shard_worker.py OUT_DIR N C K E

RANK and WORLD_SIZE come from torchrun (no process group is needed). The teacher outputs are
drawn from a fixed seed, so every run writes the same records. A rank resumes its shard
(create_shard(..., resume=True)) and writes the records still missing, one per write; with
CEDSTORE_TEST_KILL_RANK=r and CEDSTORE_TEST_KILL_AFTER=n, rank r SIGKILLs itself after writing
n records (torchrun then stops the other ranks).
"""

from __future__ import annotations

import os
import signal
import sys

import numpy as np

from cedstore import shards

METADATA = {"activation": "sigmoid", "user": {"job": "torchrun test"}}


def teacher(num_samples: int, num_classes: int, num_epochs: int) -> tuple[np.ndarray, np.ndarray]:
    """probs float32 [E, N, C] and seeds int32 [E, N], the same in every process."""
    rng = np.random.default_rng(1234)
    probs = rng.random((num_epochs, num_samples, num_classes), dtype=np.float32)
    seeds = rng.integers(-(2**31), 2**31, (num_epochs, num_samples)).astype(np.int32)
    return probs, seeds


def keys(num_samples: int) -> list[str]:
    return [f"clip{i:04d}.wav" for i in range(num_samples)]


def main() -> None:
    out_dir, num_samples, num_classes, k, num_epochs = sys.argv[1], *map(int, sys.argv[2:6])
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    kill = os.environ.get("CEDSTORE_TEST_KILL_RANK") == str(rank)
    kill_after = int(os.environ["CEDSTORE_TEST_KILL_AFTER"]) if kill else None
    probs, seeds = teacher(num_samples, num_classes, num_epochs)
    path = os.path.join(out_dir, f"teacher.rank{rank}.ced")
    existed = os.path.exists(path)
    writer = shards.create_shard(path, rank, world_size, num_classes=num_classes, k=k, num_samples=num_samples,
                                 num_epochs=num_epochs, keys=keys(num_samples), metadata=METADATA, resume=True)
    if existed:
        done = sum(int(writer.written(e).sum()) for e in range(num_epochs))
        print(f"rank {rank} of {world_size}: resumed with {done} records written", flush=True)
    written = 0
    with writer:
        for epoch in range(num_epochs):
            for i in writer.sample_ids[~writer.written(epoch)].tolist():
                if written == kill_after:
                    os.kill(os.getpid(), signal.SIGKILL)
                writer.write(epoch, [i], probs=probs[epoch, [i]], seeds=seeds[epoch, [i]])
                written += 1
    print(f"rank {rank} of {world_size}: wrote {written} records", flush=True)


if __name__ == "__main__":
    main()
