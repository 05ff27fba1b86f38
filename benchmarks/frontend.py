"""Log-mel frontend throughput: one batched call vs a per-clip loop, on 10 s clips.

Usage (with the package installed, e.g. `make install`):
    python benchmarks/frontend.py [--batch-size 16] [--repeats 5] [--device cpu|cuda]
Prints a table and writes benchmarks/results/frontend.json. Runs in well under a minute.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from ced_train.frontend import log_mel_frontend

CLIP_SECONDS, SAMPLE_RATE = 10, 16_000
RESULTS = Path(__file__).resolve().parent / "results" / "frontend.json"


def _time(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def _median_times(fns, device: torch.device, repeats: int) -> list[float]:
    """Median wall time of each ``fn()`` in seconds, after a warm-up call.

    The functions are timed in turn within each repeat, so a change in machine load between
    repeats affects them alike.
    """
    for fn in fns:
        fn()
    times = [[_time(fn, device) for fn in fns] for _ in range(repeats)]
    return [statistics.median(column) for column in zip(*times)]


@torch.inference_mode()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    device = torch.device(args.device)
    frontend = log_mel_frontend().to(device)
    generator = torch.Generator().manual_seed(0)
    waves = 0.1 * torch.randn(args.batch_size, CLIP_SECONDS * SAMPLE_RATE, generator=generator)
    waves = waves.to(device)

    batched_s, loop_s = _median_times(
        [lambda: frontend(waves), lambda: [frontend(w) for w in waves]], device, args.repeats
    )

    batch = args.batch_size
    result = {
        "benchmark": "frontend",
        "clip_seconds": CLIP_SECONDS,
        "batch_size": batch,
        "repeats": args.repeats,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "cpu": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "load_average_1min": os.getloadavg()[0],  # CPU timings are only comparable when idle
        "batched_clips_per_s": batch / batched_s,
        "loop_clips_per_s": batch / loop_s,
        "speedup": loop_s / batched_s,
    }
    print(f"log-mel frontend, {CLIP_SECONDS} s clips, batch {batch}, {result['device']}, "
          f"{result['torch_threads']} torch threads, median of {args.repeats}")
    print(f"{'mode':<10}{'ms/batch':>10}{'clips/s':>10}")
    print(f"{'batched':<10}{1e3 * batched_s:>10.1f}{result['batched_clips_per_s']:>10.1f}")
    print(f"{'per-clip':<10}{1e3 * loop_s:>10.1f}{result['loop_clips_per_s']:>10.1f}")
    print(f"batched / per-clip throughput: {result['speedup']:.2f}x")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
