"""Log-mel frontend throughput: one batched call vs a clip-by-clip loop, 10 s clips, B = 1..64.

For each batch size the two modes alternate within every repeat (so load from other processes
hits both alike); the ratio is the median over repeats of the paired ratio loop / batched time
(> 1: batching is faster). Minor page faults per call are reported too: they are what made large
CPU batches slow before the frontend processed them in sub-batches (``SUB_BATCH_SAMPLES``).

Usage (from the repository root, or with the package installed):
    python -m benchmarks.frontend [--batch-sizes 1 2 4 ... 64] [--repeats 7] [--threads 1]
Prints a table and writes benchmarks/results/frontend.json. Takes about a minute on one core.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import time
from pathlib import Path

import torch

from ced_train.frontend import SUB_BATCH_SAMPLES, log_mel_frontend

CLIP_SECONDS, SAMPLE_RATE = 10, 16_000
BATCH_SIZES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
RESULTS = Path(__file__).resolve().parent / "results" / "frontend.json"


def _timed(fn, device: torch.device) -> tuple[float, int]:
    """(wall seconds, minor page faults) of one call of ``fn``."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults


def compare(frontend, waves: torch.Tensor, repeats: int) -> dict:
    """Batched call vs clip-by-clip loop on ``waves`` [B, S], paired repeats."""
    device = waves.device
    modes = {
        "batched": lambda: frontend(waves),
        "loop": lambda: [frontend(wave) for wave in waves],
    }
    for fn in modes.values():  # warm-up: first-touch faults, FFT plans
        fn()
        fn()
    runs = {name: [] for name in modes}
    for _ in range(repeats):
        for name, fn in modes.items():
            runs[name].append(_timed(fn, device))
    batch = len(waves)
    result = {"batch_size": batch}
    for name, samples in runs.items():
        seconds = [s for s, _ in samples]
        result[f"{name}_clips_per_s"] = batch / statistics.median(seconds)
        result[f"{name}_page_faults"] = statistics.median(f for _, f in samples)
    result["ratio"] = statistics.median(
        loop_s / batched_s for (batched_s, _), (loop_s, _) in zip(runs["batched"], runs["loop"])
    )
    return result


@torch.inference_mode()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=list(BATCH_SIZES))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--clip-seconds", type=float, default=CLIP_SECONDS)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    frontend = log_mel_frontend().to(device)
    generator = torch.Generator().manual_seed(0)
    clip_samples = round(args.clip_seconds * SAMPLE_RATE)
    clips = 0.1 * torch.randn(max(args.batch_sizes), clip_samples, generator=generator)
    clips = clips.to(device)
    load_before = os.getloadavg()[0]
    rows = [compare(frontend, clips[:batch], args.repeats) for batch in args.batch_sizes]

    result = {
        "benchmark": "frontend: batched call vs clip-by-clip loop",
        "clip_seconds": args.clip_seconds,
        "repeats": args.repeats,
        "sub_batch_samples": SUB_BATCH_SAMPLES,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "cpu": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        # CPU timings are only comparable on an idle machine: the 1-minute load around the run
        "load_average_1min": [load_before, os.getloadavg()[0]],
        "rows": rows,
        "min_ratio": min(row["ratio"] for row in rows),
    }
    print(f"log-mel frontend, {args.clip_seconds:g} s clips, {result['device']}, "
          f"{result['torch_threads']} torch threads, paired median of {args.repeats}")
    print(f"{'batch':>5} {'batched clips/s':>15} {'loop clips/s':>12} {'ratio':>6} "
          f"{'faults batched':>14} {'faults loop':>11}")
    for row in rows:
        print(f"{row['batch_size']:>5} {row['batched_clips_per_s']:>15.1f} "
              f"{row['loop_clips_per_s']:>12.1f} {row['ratio']:>6.2f} "
              f"{row['batched_page_faults']:>14.0f} {row['loop_page_faults']:>11.0f}")
    print(f"smallest batched / loop ratio: {result['min_ratio']:.2f}x "
          f"(load {load_before:.1f} -> {os.getloadavg()[0]:.1f})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
