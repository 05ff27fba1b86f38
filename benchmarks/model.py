"""Training-step throughput of CED-Tiny/Mini on CPU: SDPA vs explicit softmax(QK^T)V attention.

One step = frontend + forward + BCE-with-logits + backward + AdamW, on a batch of 10 s clips.
The two attention variants share weights and alternate step by step, so load from other
processes hits both alike. Reported: clips/s from the median and from the best wall-clock
step, and the SDPA speed-up as the median over rounds of the paired ratio explicit / sdpa step
time (robust to one slow step). On a shared machine the process CPU time per step is reported
too: clips per CPU-second barely moves when other processes take cores away.

Usage (from the repository root; or ``python benchmarks/model.py`` once the package is installed):
    python -m benchmarks.model [--steps 10] [--warmup 2] [--batch 8] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ced_train import models

CLIP_SAMPLES = 160_000  # 10 s at 16 kHz
ATTENTIONS = ("sdpa", "explicit")


def train_step(model, optimizer, wave, targets) -> tuple[float, float]:
    """Run one step; return its (wall-clock, process CPU) seconds."""
    wall, cpu = time.perf_counter(), time.process_time()
    loss = F.binary_cross_entropy_with_logits(model(wave), targets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return time.perf_counter() - wall, time.process_time() - cpu


def bench_model(name: str, args) -> dict:
    """Time both attention variants of one model, alternating step by step."""
    torch.manual_seed(0)
    base = models.create(name)
    wave = torch.randn(args.batch, CLIP_SAMPLES)
    targets = torch.rand(args.batch, base.config.num_classes)
    runs = {}
    for attention in ATTENTIONS:
        model = models.create(name, attention=attention).train()
        model.load_state_dict(base.state_dict())
        runs[attention] = (model, torch.optim.AdamW(model.parameters(), lr=1e-4))
    wall = {attention: [] for attention in ATTENTIONS}
    cpu = {attention: [] for attention in ATTENTIONS}
    for step in range(args.warmup + args.steps):
        for attention, (model, optimizer) in runs.items():
            wall_s, cpu_s = train_step(model, optimizer, wave, targets)
            if step >= args.warmup:
                wall[attention].append(wall_s)
                cpu[attention].append(cpu_s)

    def speedup(t):
        return statistics.median(e / s for s, e in zip(t["sdpa"], t["explicit"]))

    return {
        "model": name,
        "sdpa_speedup": speedup(wall),
        "sdpa_speedup_cpu_time": speedup(cpu),
        "variants": {
            attention: {
                "clips_per_s_median": args.batch / statistics.median(wall[attention]),
                "clips_per_s_best": args.batch / min(wall[attention]),
                "clips_per_cpu_s_median": args.batch / statistics.median(cpu[attention]),
                "step_s": wall[attention],
                "step_cpu_s": cpu[attention],
            }
            for attention in ATTENTIONS
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--models", nargs="+", default=["ced_tiny", "ced_mini"])
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "model.json"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    results = [bench_model(name, args) for name in args.models]

    threads = torch.get_num_threads()
    print(f"train step, batch {args.batch} x 10 s, {threads} threads, torch {torch.__version__}")
    print(f"{'model':<9} {'attention':<9} {'clips/s median':>14} {'best':>6} {'clips/CPU-s':>11}")
    for r in results:
        for attention, v in r["variants"].items():
            median, best = v["clips_per_s_median"], v["clips_per_s_best"]
            per_cpu = v["clips_per_cpu_s_median"]
            print(f"{r['model']:<9} {attention:<9} {median:14.2f} {best:6.2f} {per_cpu:11.2f}")
    for r in results:
        print(
            f"{r['model']}: SDPA speed-up over explicit = {r['sdpa_speedup']:.3f}x wall-clock, "
            f"{r['sdpa_speedup_cpu_time']:.3f}x CPU time"
        )

    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "CED training step (frontend + fwd + bwd + AdamW), CPU",
        "torch": torch.__version__,
        "machine": platform.machine(),
        "threads": threads,
        "batch": args.batch,
        "clip_samples": CLIP_SAMPLES,
        "warmup_steps": args.warmup,
        "timed_steps": args.steps,
        "results": results,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
