"""Training-step throughput of CED-Tiny/Mini on CPU: attention, AMP and torch.compile; bf16 accuracy.

Parts (``--parts``, default all but ``amp-accuracy``):

- ``attention`` (results/model.json): SDPA vs explicit softmax(QK^T)V attention, as below.
- ``amp-speed`` (results/amp.json): the same step in fp32 and under bf16 autocast, alternated.
- ``compile`` (results/compile_cpu.json): eager vs ``torch.compile`` (inductor) of
  ``forward_spectrogram``, alternated after the compile; the compile time is reported.
- ``amp-accuracy`` (results/amp_accuracy.json): short supervised runs of a small CED on the
  synthetic dataset (``ced_train.synth``) through ``ced_train.train.train``, fp32 vs bf16 with
  the same seeds and initial weights: final and per-10-epoch mAP. Minutes per run.

One step = frontend + forward + BCE-with-logits + backward + AdamW, on a batch of 10 s clips.
The two attention variants share weights and alternate step by step, so load from other
processes hits both alike. Reported: clips/s from the median and from the best wall-clock
step, and the SDPA speed-up as the median over rounds of the paired ratio explicit / sdpa step
time (robust to one slow step). On a shared machine the process CPU time per step is reported
too: clips per CPU-second barely moves when other processes take cores away.

Usage (from the repository root; or ``python benchmarks/model.py`` once the package is installed):
    python -m benchmarks.model [--parts attention amp-speed compile amp-accuracy] [--steps 10]
        [--warmup 2] [--batch 8] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ced_train import models

CLIP_SAMPLES = 160_000  # 10 s at 16 kHz
ATTENTIONS = ("sdpa", "explicit")
RESULTS = Path(__file__).parent / "results"


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


def paired_steps(name: str, variants: dict, args) -> dict:
    """Alternate one training step of each variant (``label -> (model, optimizer, wrap)``)."""
    wave = torch.randn(args.batch, CLIP_SAMPLES, generator=torch.Generator().manual_seed(0))
    targets = torch.rand(args.batch, 527, generator=torch.Generator().manual_seed(1))
    wall = {label: [] for label in variants}
    first = {}
    for step in range(args.warmup + args.steps):
        for label, (model, optimizer, wrap) in variants.items():
            with wrap():
                wall_s, _ = train_step(model, optimizer, wave, targets)
            if step == 0:
                first[label] = wall_s
            elif step >= args.warmup:
                wall[label].append(wall_s)
    base = next(iter(variants))
    return {
        "model": name,
        "first_step_s": first,
        "clips_per_s_median": {label: args.batch / statistics.median(t) for label, t in wall.items()},
        "speedup_vs_" + base: {label: statistics.median(b / t for b, t in zip(wall[base], wall[label]))
                               for label in variants if label != base},
        "step_s": wall,
    }


def bench_amp_speed(name: str, args) -> dict:
    """fp32 vs bf16 autocast, same weights, fused AdamW on both."""
    torch.manual_seed(0)
    variants = {}
    for label in ("fp32", "bf16"):
        model = models.create(name).train()
        if variants:
            model.load_state_dict(next(iter(variants.values()))[0].state_dict())
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        wrap = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if label == "bf16" else _no_autocast
        variants[label] = (model, optimizer, wrap)
    return paired_steps(name, variants, args)


def bench_compile(name: str, args) -> dict:
    """Eager vs ``torch.compile`` (inductor) of ``forward_spectrogram``, fp32, fused AdamW."""
    torch.manual_seed(0)
    variants = {}
    for label in ("eager", "compiled"):
        model = models.create(name).train()
        if variants:
            model.load_state_dict(variants["eager"][0].state_dict())
            model.forward_spectrogram = torch.compile(model.forward_spectrogram)
        variants[label] = (model, torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True), _no_autocast)
    return paired_steps(name, variants, args)


def _no_autocast():
    return torch.autocast("cpu", enabled=False)


def bench_amp_accuracy(args, save) -> dict:
    """Supervised short runs on synthetic data, fp32 vs bf16, same seeds: eval mAP of each.

    ``save(report)`` is called after every run, so a long sweep that is stopped keeps its runs.
    """
    from ced_train.data import AudioDataset  # noqa: PLC0415  (only this part needs them)
    from ced_train.synth import make_dataset  # noqa: PLC0415
    from ced_train.train import TrainConfig, train  # noqa: PLC0415

    runs = []
    setup = (f"ced_custom dim 64 depth 2, 14 synthetic classes, {args.acc_train_clips} train / "
             f"{args.acc_eval_clips} eval clips of 0.96 s, {args.acc_epochs} epochs, batch 32, lr 2e-3, "
             "supervised, fresh augmentation, fused AdamW")

    def report() -> dict:
        done = {amp: [r["final_mAP"] for r in runs if r["amp"] == amp] for amp in ("none", "bf16")}
        return {"setup": setup, "runs": runs,
                "mean_final_mAP": {amp: statistics.mean(v) for amp, v in done.items() if v}}

    with tempfile.TemporaryDirectory() as tmp:
        train_tsv, eval_tsv, _ = make_dataset(tmp, args.acc_train_clips, args.acc_eval_clips, seconds=0.96,
                                              num_classes=14, seed=0)
        train_set = AudioDataset.from_tsv(train_tsv, num_classes=14, cache=True)
        eval_set = AudioDataset.from_tsv(eval_tsv, num_classes=14, cache=True)
        for seed in args.acc_seeds:
            for amp in ("none", "bf16"):
                torch.manual_seed(seed)
                model = models.create("ced_custom", num_classes=14, embed_dim=64, depth=2, num_heads=2)
                config = TrainConfig(epochs=args.acc_epochs, batch_size=32, lr=2e-3, warmup_steps=20,
                                     optimizer="auto", supervised=True, student_aug="fresh", amp=amp, seed=seed,
                                     eval_every=10, verbose=False)
                start = time.perf_counter()
                result = train(model, train_set, config, None, eval_set)
                runs.append({"seed": seed, "amp": amp, "final_mAP": result.final_mAP,
                             "curve": [[r["epoch"], r["mAP"]] for r in result.history if r["mAP"] is not None],
                             "optimizer": result.optimizer, "seconds": time.perf_counter() - start})
                print(f"amp-accuracy seed {seed} amp {amp}: mAP {result.final_mAP:.4f} "
                      f"({runs[-1]['seconds']:.0f} s)", flush=True)
                save(report())
    return report()


def _write(path: Path, report: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", default=["attention", "amp-speed", "compile"],
                        choices=["attention", "amp-speed", "compile", "amp-accuracy"])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--models", nargs="+", default=["ced_tiny", "ced_mini"])
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--acc-seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--acc-epochs", type=int, default=30)
    parser.add_argument("--acc-train-clips", type=int, default=600)
    parser.add_argument("--acc-eval-clips", type=int, default=400)
    parser.add_argument("--out", type=Path, default=RESULTS / "model.json", help="where the attention part goes")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    common = {"torch": torch.__version__, "machine": platform.machine(), "threads": threads,
              "cpu_capability": torch.backends.cpu.get_cpu_capability(), "batch": args.batch,
              "clip_samples": CLIP_SAMPLES, "warmup_steps": args.warmup, "timed_steps": args.steps}

    if "attention" in args.parts:
        attention_part(args, common)
    for part, fn, path, title in (
        ("amp-speed", bench_amp_speed, RESULTS / "amp.json", "fp32 vs bf16 autocast"),
        ("compile", bench_compile, RESULTS / "compile_cpu.json", "eager vs torch.compile (inductor)"),
    ):
        if part in args.parts:
            load = os.getloadavg()[0]
            results = [fn(name, args) for name in args.models]
            for r in results:
                print(f"{title}: {r['model']} clips/s " + ", ".join(
                    f"{k} {v:.2f}" for k, v in r["clips_per_s_median"].items()) + "; paired speed-up " + ", ".join(
                    f"{k} {v:.2f}x" for k, v in next(v for k, v in r.items() if k.startswith("speedup")).items()))
            _write(path, {"benchmark": f"CED training step on CPU, {title}", **common,
                          "load_average_1min": [load, os.getloadavg()[0]], "results": results})
    if "amp-accuracy" in args.parts:
        header = {"benchmark": "bf16 autocast vs fp32: mAP of short runs", **common}
        bench_amp_accuracy(args, lambda report: _write(RESULTS / "amp_accuracy.json", {**header, **report}))


def attention_part(args, common: dict) -> None:
    """SDPA vs explicit attention (results/model.json)."""
    results = [bench_model(name, args) for name in args.models]

    print(f"train step, batch {args.batch} x 10 s, {common['threads']} threads, torch {torch.__version__}")
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
    _write(args.out, {"benchmark": "CED training step (frontend + fwd + bwd + AdamW), CPU", **common,
                      "results": results})


if __name__ == "__main__":
    main()
