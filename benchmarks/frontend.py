"""Log-mel frontend throughput: one batched call vs a clip-by-clip loop, 10 s clips, B = 1..64.

For each batch size the two modes alternate within every round, in turn first and second (so
load from other processes and any order effect hit both alike); the ratio is the median over
rounds of the paired ratio loop / batched time (> 1: batching is faster). Minor page faults and
system CPU time per call are reported too: fresh STFT buffers page-faulted in on every call are
what made the frontend slow before it kept them in per-thread scratch. The clips are made first
(a 41 MB tensor for B = 64, more than glibc's 32 MB dynamic mmap threshold), which leaves malloc
in the state that faulted most. The 1-minute load average is printed for every batch size.

Each call still returns fresh memory (the output, and the FFT's buffer inside ``torch.fft``);
whether glibc faults those in afresh depends on the process's allocation history, and it differs
between the two modes. ``--keep-freed-memory`` makes glibc keep freed memory first, as
``ced_train.extract`` does, so that the comparison is of the code alone.

Usage (from the repository root, or with the package installed):
    python -m benchmarks.frontend [--batch-sizes 1 2 4 ... 64] [--repeats 7] [--threads 1]
Prints a table and writes benchmarks/results/frontend.json. Takes about two minutes on one core.
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

from ced_train.extract import _keep_freed_memory
from ced_train.frontend import SUB_BATCH_SAMPLES, log_mel_frontend

CLIP_SECONDS, SAMPLE_RATE = 10, 16_000
BATCH_SIZES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
RESULTS = Path(__file__).resolve().parent / "results" / "frontend.json"


def _timed(fn, device: torch.device) -> tuple[float, float, int, float]:
    """(wall seconds, process CPU seconds, minor page faults, system CPU seconds) of ``fn()``."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    before = resource.getrusage(resource.RUSAGE_SELF)
    start, cpu_start = time.perf_counter(), time.process_time()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    after = resource.getrusage(resource.RUSAGE_SELF)
    return seconds, cpu_seconds, after.ru_minflt - before.ru_minflt, after.ru_stime - before.ru_stime


def compare(frontend, waves: torch.Tensor, repeats: int) -> dict:
    """Batched call vs clip-by-clip loop on ``waves`` [B, S], paired rounds in alternating order."""
    device = waves.device
    modes = {
        "batched": lambda: frontend(waves),
        "loop": lambda: [frontend(wave) for wave in waves],
    }
    for fn in modes.values():  # warm-up: first-touch faults, FFT plans
        fn()
        fn()
    runs = {name: [] for name in modes}
    for round_ in range(repeats):
        for name in sorted(modes, reverse=bool(round_ % 2)):  # batched first, then loop first
            runs[name].append(_timed(modes[name], device))
    batch = len(waves)
    result = {"batch_size": batch, "load_average_1min": os.getloadavg()[0]}
    for name, samples in runs.items():
        result[f"{name}_clips_per_s"] = batch / statistics.median(s[0] for s in samples)
        result[f"{name}_page_faults"] = statistics.median(s[2] for s in samples)
        result[f"{name}_system_ms"] = 1e3 * statistics.median(s[3] for s in samples)
    for key, field in (("ratio", 0), ("cpu_ratio", 1)):  # wall clock; CPU time (blind to waiting)
        ratios = [loop[field] / batched[field] for batched, loop in zip(runs["batched"], runs["loop"])]
        result[key] = statistics.median(ratios)
        result[f"{key}_quartiles"] = statistics.quantiles(ratios, n=4)[::2] if len(ratios) > 1 else ratios * 2
    return result


@torch.inference_mode()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=list(BATCH_SIZES))
    parser.add_argument("--repeats", type=int, default=15, help="paired rounds per batch size")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--clip-seconds", type=float, default=CLIP_SECONDS)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="make glibc keep freed memory first (mallopt), as extraction does")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    kept = args.keep_freed_memory and _keep_freed_memory()

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
        "keep_freed_memory": kept,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "cpu": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        # CPU timings are only comparable on an idle machine: the 1-minute load around the run
        "load_average_1min": [load_before, os.getloadavg()[0]],
        "rows": rows,
        "min_ratio": min(row["ratio"] for row in rows),
        "min_cpu_ratio": min(row["cpu_ratio"] for row in rows),
    }
    print(f"log-mel frontend, {args.clip_seconds:g} s clips, {result['device']}, "
          f"{result['torch_threads']} torch threads, paired median of {args.repeats}, "
          f"glibc keeps freed memory: {kept}")
    print(f"{'batch':>5} {'batched clips/s':>15} {'loop clips/s':>12} {'ratio':>6} {'quartiles':>11} "
          f"{'cpu ratio':>9} {'quartiles':>11} {'faults b/l':>11} {'sys ms b/l':>11} {'load':>5}")
    for row in rows:
        low, high = row["ratio_quartiles"]
        cpu_low, cpu_high = row["cpu_ratio_quartiles"]
        print(f"{row['batch_size']:>5} {row['batched_clips_per_s']:>15.1f} "
              f"{row['loop_clips_per_s']:>12.1f} {row['ratio']:>6.3f} {low:>5.2f}-{high:<5.2f} "
              f"{row['cpu_ratio']:>9.3f} {cpu_low:>5.2f}-{cpu_high:<5.2f} "
              f"{row['batched_page_faults']:>5.0f}/{row['loop_page_faults']:<5.0f} "
              f"{row['batched_system_ms']:>5.1f}/{row['loop_system_ms']:<5.1f} "
              f"{row['load_average_1min']:>5.1f}")
    print(f"smallest batched / loop ratio: {result['min_ratio']:.3f}x wall clock, "
          f"{result['min_cpu_ratio']:.3f}x CPU time "
          f"(load {load_before:.1f} -> {os.getloadavg()[0]:.1f})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
