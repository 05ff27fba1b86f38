"""How close CED training and extraction come to this CPU's fp32 matmul peak, ours and the original.

Everything is measured in one run on one thread, in CPU time of this process (blind to time
spent waiting for a core on a shared machine); ours, the original and the two floors take turns
in every round (the order reversed every other round), and ratios are medians of per-round ratios:

- ``peak``: ``torch.mm`` of two 2048 x 2048 float32 matrices, best of ``--peak-repeats`` at the
  start of the run and again at its end (the better one counts: load only ever slows it).
- FLOPs, counted from the architecture (a multiply-add is 2 FLOPs). Per token and block the four
  linear layers cost ``24 D^2`` (qkv 6, proj 2, fc1 8, fc2 8), attention ``4 N D`` (QK^T and AV),
  the patch embedding ``2 * 256 * D``; the head ``2 D C`` per clip. A training step is 3x the
  forward (forward, input gradients, weight gradients), the patch embedding 2x (no input gradient).
- Floors: the linear layers' GEMMs run on their own, with the shapes and layouts autograd runs
  (``X W^T + b``; for training also ``dY W`` and ``dY^T X``), and ``F.scaled_dot_product_attention``
  (the fastest attention on this CPU) forward (and backward) on its own, all blocks. The patch
  embedding and head (under 1 % of the FLOPs) are left out of the floor.
- ``train``: CED-Mini, B=8 x 10 s, fp32 ``model(wave)`` + BCE + backward + ``torch.optim.AdamW``
  (default implementation), ours and the original (``benchmarks/original``, same weights).
- ``extract``: CED-Tiny forward, B=32 x 10 s, frontend included, under ``torch.inference_mode``.

The ceiling is the original's time over the floor: the largest speed-up any implementation at
these numerics (fp32, the same GEMMs and attention kernels) could reach on this CPU if everything
else (frontend, LayerNorm, GELU, residual adds, copies, optimizer) cost nothing.

The process keeps freed heap memory (``ced_train.extract._keep_freed_memory``, as extraction
does), for both sides, so page faults do not blur the compute.

Usage (from the repository root):
    python -m benchmarks.roofline [--rounds 4] [--parts train extract]
Writes benchmarks/results/roofline.json. Takes about 2 minutes on one idle core.
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
import torch.nn.functional as F

from benchmarks.original.model import AudioTransformer
from benchmarks.vs_original import original_weights
from ced_train import models
from ced_train.extract import _keep_freed_memory

CLIP_SAMPLES = 160_000  # 10 s at 16 kHz
RESULTS = Path(__file__).resolve().parent / "results" / "roofline.json"


def _cpu_seconds(fn) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def _best(fn, repeats: int) -> float:
    fn()  # warm-up
    return min(_cpu_seconds(fn) for _ in range(repeats))


def matmul_peak(repeats: int, size: int = 2048) -> float:
    """GFLOP/s of ``torch.mm`` on two float32 ``size`` x ``size`` matrices, best of ``repeats``."""
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=generator) for _ in range(2))
    return 2 * size**3 / _best(lambda: torch.mm(a, b), repeats) / 1e9


def shape_of(config: models.CEDConfig, batch: int) -> dict:
    """Token count and widths of one 10 s chunk batch."""
    frames = CLIP_SAMPLES // 160 + 1
    tokens = (config.n_mels // config.patch_size) * (frames // config.patch_size)
    return {"batch": batch, "tokens": tokens, "dim": config.embed_dim, "heads": config.num_heads,
            "hidden": int(config.embed_dim * config.mlp_ratio), "depth": config.depth,
            "classes": config.num_classes, "patch": config.patch_size}


def forward_flops(s: dict) -> dict:
    """FLOPs of one forward pass by part (see the module doc)."""
    rows = s["batch"] * s["tokens"]
    linear = 2 * rows * s["dim"] * (3 * s["dim"] + s["dim"] + 2 * s["hidden"]) * s["depth"]
    attention = 4 * s["batch"] * s["tokens"] ** 2 * s["dim"] * s["depth"]
    patch = 2 * rows * s["patch"] ** 2 * s["dim"]
    head = 2 * s["batch"] * s["dim"] * s["classes"]
    return {"linear": linear, "attention": attention, "patch_embed": patch, "head": head}


def _linear_layers(s: dict) -> list[tuple[int, int]]:
    """(in, out) of the block's linear layers: qkv, proj, fc1, fc2."""
    d, h = s["dim"], s["hidden"]
    return [(d, 3 * d), (d, d), (d, h), (h, d)]


def gemm_floor(s: dict, backward: bool):
    """A function running the linear layers' GEMMs alone, all blocks: ``X W^T + b`` (and, with
    ``backward``, ``dY W`` and ``dY^T X``) on the shapes and layouts autograd uses."""
    rows, generator = s["batch"] * s["tokens"], torch.Generator().manual_seed(1)
    gemms = []
    for fan_in, fan_out in _linear_layers(s):
        x = torch.randn(rows, fan_in, generator=generator)
        weight = torch.randn(fan_out, fan_in, generator=generator)
        bias, grad = torch.randn(fan_out, generator=generator), torch.randn(rows, fan_out, generator=generator)
        gemms.append(lambda x=x, weight=weight, bias=bias: torch.addmm(bias, x, weight.t()))
        if backward:
            gemms.append(lambda grad=grad, weight=weight: torch.mm(grad, weight))  # input gradient
            gemms.append(lambda grad=grad, x=x: torch.mm(grad.t(), x))  # weight gradient

    def run():
        for _ in range(s["depth"]):
            for gemm in gemms:
                gemm()

    return run


def attention_floor(s: dict, backward: bool):
    """A function running F.scaled_dot_product_attention alone, all blocks, on the q, k, v views
    of a fused qkv (forward, and backward with ``backward``)."""
    b, n, h = s["batch"], s["tokens"], s["heads"]
    generator = torch.Generator().manual_seed(2)
    qkv = torch.randn(b, n, 3, h, s["dim"] // h, generator=generator, requires_grad=backward)
    grad = torch.randn(b, h, n, s["dim"] // h, generator=generator)

    def run():
        with torch.inference_mode(not backward):
            for _ in range(s["depth"]):
                q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
                out = F.scaled_dot_product_attention(q, k, v)
                if backward:
                    out.backward(grad)

    return run


def paired(runs: dict, rounds: int) -> dict:
    """CPU seconds of each ``fn()`` in ``runs`` over ``rounds`` rounds (after one warm-up), the
    order reversed every other round, so that each round's times saw the same load."""
    times = {name: [] for name in runs}
    for round_ in range(rounds + 1):
        for name in sorted(runs, reverse=bool(round_ % 2)):
            seconds = _cpu_seconds(runs[name])
            if round_:
                times[name].append(seconds)
    return times


def _summary(flops: dict, times: dict) -> dict:
    """Per side: median seconds and GFLOP/s; ratios paired round by round."""
    def ratio(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(times[a], times[b]))

    out = {"flops": flops["model"]}
    for name, seconds in times.items():
        median = statistics.median(seconds)
        work = flops[name if name in ("gemms", "attention") else "model"]
        out[name] = {"s": seconds, "median_s": median, "gflops_per_s": work / median / 1e9}
    floor = [g + a for g, a in zip(times["gemms"], times["attention"])]
    out["floor_median_s"] = statistics.median(floor)
    out["ours"]["floor_share"] = statistics.median(f / o for f, o in zip(floor, times["ours"]))
    out["original"]["floor_share"] = statistics.median(f / o for f, o in zip(floor, times["original"]))
    out["ours_vs_original"] = ratio("original", "ours")
    out["ceiling_vs_original"] = statistics.median(o / f for o, f in zip(times["original"], floor))
    return out


def bench_train(args) -> dict:
    torch.manual_seed(0)
    ours = models.create("ced_mini").train()
    original = AudioTransformer("mini", pooling="logit").train()
    original.load_state_dict(original_weights(ours))
    s = shape_of(ours.config, args.train_batch)
    wave = 0.1 * torch.randn(s["batch"], CLIP_SAMPLES, generator=torch.Generator().manual_seed(3))
    targets = torch.rand(s["batch"], s["classes"], generator=torch.Generator().manual_seed(4))

    def step(model, optimizer):
        loss = F.binary_cross_entropy_with_logits(model(wave), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    runs = {"gemms": gemm_floor(s, backward=True), "attention": attention_floor(s, backward=True)}
    for name, model in (("ours", ours), ("original", original)):
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        runs[name] = lambda model=model, optimizer=optimizer: step(model, optimizer)
    parts = forward_flops(s)
    flops = {"model": 3 * (parts["linear"] + parts["attention"] + parts["head"]) + 2 * parts["patch_embed"],
             "gemms": 3 * parts["linear"], "attention": 3 * parts["attention"]}
    return {"model": "ced_mini", "shape": s, "flops_by_part_forward": parts,
            **_summary(flops, paired(runs, args.rounds))}


def bench_extract(args) -> dict:
    torch.manual_seed(0)
    ours = models.create("ced_tiny").eval()
    original = AudioTransformer("tiny", pooling="mean").eval()
    original.load_state_dict(original_weights(ours))
    s = shape_of(ours.config, args.extract_batch)
    wave = 0.1 * torch.randn(s["batch"], CLIP_SAMPLES, generator=torch.Generator().manual_seed(5))

    def forward(model):
        with torch.inference_mode():
            model(wave)

    runs = {"ours": lambda: forward(ours), "original": lambda: forward(original),
            "gemms": gemm_floor(s, backward=False), "attention": attention_floor(s, backward=False)}
    parts = forward_flops(s)
    flops = {"model": sum(parts.values()), "gemms": parts["linear"], "attention": parts["attention"]}
    return {"model": "ced_tiny", "shape": s, "flops_by_part_forward": parts,
            **_summary(flops, paired(runs, args.rounds))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", default=["train", "extract"], choices=["train", "extract"])
    parser.add_argument("--rounds", type=int, default=4, help="paired rounds counted (after one warm-up)")
    parser.add_argument("--peak-repeats", type=int, default=5)
    parser.add_argument("--train-batch", type=int, default=8)
    parser.add_argument("--extract-batch", type=int, default=32)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    _keep_freed_memory()

    load = [os.getloadavg()[0]]
    peaks = [matmul_peak(args.peak_repeats)]
    results = {part: (bench_train if part == "train" else bench_extract)(args) for part in args.parts}
    peaks.append(matmul_peak(args.peak_repeats))
    load.append(os.getloadavg()[0])
    peak = max(peaks)
    report = {"benchmark": "roofline: FLOPs, fp32 matmul peak, ours and the original",
              "torch": torch.__version__, "machine": platform.machine(), "threads": 1,
              "timing": "process CPU time", "matmul_peak_gflops_per_s": peak,
              "matmul_peak_start_end": peaks, "load_average_1min": load}  # load before, after
    for part, measured in results.items():
        for name in ("ours", "original", "gemms", "attention"):
            measured[name]["fraction_of_peak"] = measured[name]["gflops_per_s"] / peak
        report[part] = measured

    print(f"roofline, 1 thread, torch {torch.__version__}, CPU time, load {' -> '.join(f'{x:.1f}' for x in load)}")
    print(f"fp32 matmul peak (torch.mm 2048^3): {peak:.1f} GFLOP/s "
          f"(start {peaks[0]:.1f}, end {peaks[1]:.1f})")
    for part in args.parts:
        r = report[part]
        label = "train step, CED-Mini B=8" if part == "train" else "extraction forward, CED-Tiny B=32"
        print(f"{label}: {r['flops'] / 1e9:.1f} GFLOP; linear GEMMs alone {r['gemms']['median_s']:.2f} s "
              f"({r['gemms']['gflops_per_s']:.1f} GFLOP/s), attention alone {r['attention']['median_s']:.2f} s "
              f"({r['attention']['gflops_per_s']:.1f} GFLOP/s)")
        for name in ("ours", "original"):
            side = r[name]
            print(f"  {name:>8}: {side['median_s']:.2f} s, {side['gflops_per_s']:.1f} GFLOP/s = "
                  f"{100 * side['fraction_of_peak']:.0f} % of peak; GEMMs + attention alone take "
                  f"{100 * side['floor_share']:.0f} % of its time")
        print(f"  ours vs original {r['ours_vs_original']:.2f}x; ceiling (original / floor) "
              f"{r['ceiling_vs_original']:.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
