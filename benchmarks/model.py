"""Training-step throughput of CED-Tiny/Mini on CPU: SDPA vs explicit softmax(QK^T)V attention.

One step = frontend + forward + BCE-with-logits + backward + AdamW, on a batch of 10 s clips.
The two attention variants share weights and alternate step by step, so load from other
processes hits both alike. Reported: clips/s from the median and from the best step, and the
SDPA speed-up as the median over rounds of the paired ratio explicit_time / sdpa_time (robust
to a slow step in one round).

Usage (from the repository root; or ``python benchmarks/model.py`` once the package is installed):
    python -m benchmarks.model [--steps 10] [--warmup 2] [--batch 8] [--models ced_tiny ced_mini]
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


def train_step(model, optimizer, wave, targets) -> float:
    start = time.perf_counter()
    loss = F.binary_cross_entropy_with_logits(model(wave), targets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return time.perf_counter() - start


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
    times = {attention: [] for attention in ATTENTIONS}
    for step in range(args.warmup + args.steps):
        for attention, (model, optimizer) in runs.items():
            seconds = train_step(model, optimizer, wave, targets)
            if step >= args.warmup:
                times[attention].append(seconds)
    paired = [e / s for s, e in zip(times["sdpa"], times["explicit"])]
    return {
        "model": name,
        "sdpa_speedup": statistics.median(paired),
        "variants": {
            attention: {
                "clips_per_s_median": args.batch / statistics.median(t),
                "clips_per_s_best": args.batch / min(t),
                "step_s": t,
            }
            for attention, t in times.items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--models", nargs="+", default=["ced_tiny", "ced_mini"])
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "model.json"
    )
    args = parser.parse_args()

    results = [bench_model(name, args) for name in args.models]

    threads = torch.get_num_threads()
    print(f"train step, batch {args.batch} x 10 s, {threads} threads, torch {torch.__version__}")
    print(f"{'model':<10} {'attention':<9} {'clips/s median':>14} {'clips/s best':>12}")
    for result in results:
        for attention, v in result["variants"].items():
            median, best = v["clips_per_s_median"], v["clips_per_s_best"]
            print(f"{result['model']:<10} {attention:<9} {median:14.2f} {best:12.2f}")
    for result in results:
        print(f"{result['model']}: SDPA speed-up over explicit = {result['sdpa_speedup']:.3f}x")

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
