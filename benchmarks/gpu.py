"""One script for a CUDA machine: the CUDA-only checks, then training/extraction/decode throughput.

Parts, each under its own time limit so the whole run stays within ``--budget-s`` (default 450 s,
well inside 8 minutes on one modern GPU; a part that would overrun is cut and marked so):

- ``checks``: the CUDA-only tests (``pytest -k cuda tests/ced_train``), and inline: frontend on
  the GPU vs the CPU (max dB difference), augmentation bit for bit on both, bf16 autocast forward
  vs fp32, one fp16 step with a GradScaler.
- ``train``: clips/s of a training step (our ``student_inputs`` + forward + BCE + backward +
  ``create_optimizer("auto")``) of CED-Tiny/Mini/Base on 10 s clips, fp32 vs bf16 autocast,
  SDPA (flash under bf16) vs explicit attention, eager vs ``torch.compile``.
- ``extract``: records/s of ``ced_train.teacher.predict`` (augmented teacher forward, host to
  device included) per model and mode, and one end-to-end ``ced_train.extract.extract`` run.
- ``decode``: dense targets from a store decoded straight into pinned memory and copied to the
  GPU without blocking: records/s.

Without a CUDA device it prints why and exits 0. ``--smoke`` runs every code path at toy size on
the CPU in seconds (what CI tests): tiny models, short clips, ``torch.compile(backend="eager")``.

Usage (from the repository root, with a CUDA build of torch):
    python -m benchmarks.gpu [--budget-s 450] [--out benchmarks/results/gpu.json]
    python -m benchmarks.gpu --smoke --out /tmp/gpu_smoke.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import cedstore
from ced_train import models
from ced_train.amp import autocast
from ced_train.augment import Recipe
from ced_train.extract import extract
from ced_train.frontend import log_mel_frontend
from ced_train.optim import create_optimizer
from ced_train.rng import seed_for
from ced_train.teacher import Ensemble, predict
from ced_train.train import student_inputs

RESULTS = Path(__file__).resolve().parent / "results" / "gpu.json"
REPO = Path(__file__).resolve().parents[1]
# (model, training batch, extraction batch) at 10 s clips; realistic sizes for one 80+ GB GPU
FULL_MODELS = (("ced_tiny", 64, 256), ("ced_mini", 64, 256), ("ced_base", 32, 128))
SMOKE_MODEL = dict(embed_dim=32, depth=1, num_heads=2, num_classes=10)
# (amp, attention, compiled); the eager bf16 SDPA row is the one to compare everything with
MODES = (("none", "sdpa", False), ("bf16", "sdpa", False), ("bf16", "explicit", False), ("bf16", "sdpa", True))
# share of the budget for each part
PART_SHARES = {"checks": 0.15, "train": 0.5, "extract": 0.27, "decode": 0.08}


class PartTimeout(Exception):
    """Raised inside a measurement when its time limit runs out."""


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise :class:`PartTimeout` in this (main) thread after ``seconds`` (SIGALRM, Unix)."""

    def expire(signum, frame):
        raise PartTimeout(f"time limit of {seconds:.0f} s reached")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.001))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rate(step, items_per_call: int, device: torch.device, seconds: float, warmup: int, max_calls: int) -> dict:
    """Items/s of ``step()``: ``warmup`` untimed calls, then timed calls until ``seconds`` or ``max_calls``."""
    for _ in range(warmup):
        step()
    _sync(device)
    times, start = [], time.perf_counter()
    while len(times) < max_calls and (not times or time.perf_counter() - start < seconds):
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return {"per_s": items_per_call / statistics.median(times), "calls": len(times)}


class Setup:
    """Sizes and devices of a run: the real one on CUDA, or the toy ``--smoke`` one on the CPU."""

    def __init__(self, smoke: bool, budget_s: float) -> None:
        self.smoke = smoke
        self.device = torch.device("cpu" if smoke else "cuda")
        self.budget_s = budget_s
        self.clip_samples = 8_000 if smoke else 160_000
        self.models = (("ced_custom", 2, 4),) if smoke else FULL_MODELS
        self.modes = MODES
        self.compile_backend = "eager" if smoke else "inductor"
        self.measure_s = 0.05 if smoke else 3.0
        self.warmup = 1 if smoke else 3
        self.max_calls = 2 if smoke else 30

    def model(self, name: str, attention: str = "sdpa") -> models.CED:
        extra = SMOKE_MODEL if self.smoke else {}
        return models.create(name, attention=attention, **extra).to(self.device)

    def waves(self, batch: int, seed: int = 0) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return 0.1 * torch.randn(batch, self.clip_samples, generator=generator)


def _compiled(model: models.CED, backend: str) -> models.CED:
    """The model with ``forward_spectrogram`` compiled (an instance attribute; the frontend stays eager)."""
    model.forward_spectrogram = torch.compile(model.forward_spectrogram, backend=backend)
    return model


# ---- checks ------------------------------------------------------------------------------------


def run_checks(setup: Setup, limit_s: float) -> dict:
    device, out = setup.device, {}
    waves = setup.waves(4, seed=1)
    cpu_db = log_mel_frontend()(waves)
    dev_db = log_mel_frontend().to(device)(waves.to(device)).cpu()
    out["frontend_max_abs_db"] = float((dev_db - cpu_db).abs().max())
    out["frontend_ok"] = out["frontend_max_abs_db"] < 1e-3

    seeds = torch.arange(4, dtype=torch.int32) * 1000003
    recipe = Recipe()
    out["augment_wave_bit_identical"] = torch.equal(
        recipe.apply_wave(waves.to(device), seeds.to(device)).cpu(), recipe.apply_wave(waves, seeds))
    out["augment_spec_bit_identical"] = torch.equal(
        recipe.apply_spec(cpu_db.to(device), seeds).cpu(), recipe.apply_spec(cpu_db, seeds))

    name = setup.models[0][0]
    torch.manual_seed(0)
    model = setup.model(name).eval()
    with torch.no_grad():
        logmel = model.front_end(waves.to(device))
        fp32 = model.forward_spectrogram(logmel).sigmoid()
        with autocast(device, "bf16"):
            bf16 = model.forward_spectrogram(logmel).float().sigmoid()
    out["bf16_vs_fp32_max_abs_prob"] = float((bf16 - fp32).abs().max())
    out["bf16_ok"] = out["bf16_vs_fp32_max_abs_prob"] < 0.05
    if device.type == "cuda":  # fp16 autocast + GradScaler: one finite training step
        model.train()
        optimizer, _ = create_optimizer(model.parameters(), "adamw", lr=1e-4)
        scaler = torch.amp.GradScaler("cuda")
        with autocast(device, "fp16"):
            loss = F.binary_cross_entropy_with_logits(model.forward_spectrogram(logmel).float(),
                                                      torch.rand_like(fp32))
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        out["fp16_step_loss_finite"] = bool(torch.isfinite(loss))
    out["pytest"] = run_cuda_tests(limit_s) if not setup.smoke else "skipped (smoke)"
    return out


def run_cuda_tests(limit_s: float) -> dict:
    """The repository's CUDA-only tests (those that skip without a device), in a subprocess."""
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "cuda", "tests/ced_train"]
    try:
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=max(limit_s, 1))
    except subprocess.TimeoutExpired:
        return {"returncode": None, "summary": f"timed out after {limit_s:.0f} s"}
    lines = done.stdout.strip().splitlines()
    return {"returncode": done.returncode, "summary": lines[-1] if lines else done.stderr[-500:]}


# ---- training and extraction throughput -----------------------------------------------------------


def train_rate(setup: Setup, name: str, batch: int, amp: str, attention: str, compiled: bool, seconds: float) -> dict:
    device = setup.device
    torch.manual_seed(0)
    model = setup.model(name, attention).train()
    if compiled:
        model = _compiled(model, setup.compile_backend)
    optimizer, used = create_optimizer(model.parameters(), "auto", lr=1e-4)
    waves = setup.waves(batch).to(device)
    seeds = seed_for(0, 0, np.arange(batch))  # int32 numpy, as the store returns them
    targets = torch.rand(batch, model.config.num_classes, device=device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")

    def step():
        x = student_inputs(model, waves, seeds, Recipe())
        with autocast(device, amp):
            loss = F.binary_cross_entropy_with_logits(model.forward_spectrogram(x).float(), targets)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    t0 = time.perf_counter()
    step()  # the first call compiles
    _sync(device)
    first_s = time.perf_counter() - t0
    measured = rate(step, batch, device, seconds, setup.warmup, setup.max_calls)
    return {"clips_per_s": measured["per_s"], "steps": measured["calls"], "first_step_s": first_s, "optimizer": used}


def extract_rate(setup: Setup, name: str, batch: int, amp: str, attention: str, compiled: bool, seconds: float) -> dict:
    device = setup.device
    torch.manual_seed(0)
    model = setup.model(name, attention).eval()
    if compiled:
        model = _compiled(model, setup.compile_backend)
    teacher, frontend = Ensemble([model]), log_mel_frontend().to(device)
    waves = setup.waves(batch).numpy()
    if device.type == "cuda":
        waves = torch.from_numpy(waves).pin_memory().numpy()
    seeds = seed_for(0, 0, np.arange(batch))
    amp_here = amp if device.type == "cuda" else "none"  # predict's autocast is for CUDA

    def step():
        predict(teacher, waves, seeds, recipe=Recipe(), frontend=frontend, device=device, amp=amp_here)

    t0 = time.perf_counter()
    step()
    first_s = time.perf_counter() - t0
    measured = rate(step, batch, device, seconds, setup.warmup, setup.max_calls)
    return {"records_per_s": measured["per_s"], "batches": measured["calls"], "first_batch_s": first_s}


def sweep(setup: Setup, measure, limit_s: float) -> list[dict]:
    """``measure`` for every model and mode, each with an equal share of what is left of ``limit_s``."""
    rows, deadline = [], time.perf_counter() + limit_s
    jobs = [(name, train_b, extract_b, mode) for name, train_b, extract_b in setup.models for mode in setup.modes]
    for i, (name, train_b, extract_b, (amp, attention, compiled)) in enumerate(jobs):
        left = deadline - time.perf_counter()
        row = {"model": name, "amp": amp, "attention": attention, "compiled": compiled}
        if left <= 1:
            rows.append({**row, "skipped": "part time limit reached"})
            continue
        share = left / (len(jobs) - i)
        batch = train_b if measure is train_rate else extract_b
        try:
            with time_limit(share):
                row.update(batch_size=batch, **measure(setup, name, batch, amp, attention, compiled, share / 3))
        except PartTimeout as exc:
            row["skipped"] = str(exc)
        except Exception as exc:  # an unsupported mode on this device: recorded, the sweep goes on
            row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        finally:
            if compiled:
                torch.compiler.reset()
            if setup.device.type == "cuda":
                torch.cuda.empty_cache()
        rows.append(row)
    return rows


def extract_end_to_end(setup: Setup, folder: Path) -> dict:
    """``ced_train.extract.extract`` of the first model on in-memory clips: records/s, write share."""
    name, _, batch = setup.models[0]
    clips = _Clips(setup.waves(batch * 4, seed=3).numpy())
    torch.manual_seed(0)
    teacher = Ensemble([setup.model(name).eval()])
    stats = extract(teacher, clips, folder / "e2e.ced", store_epochs=1, k=min(20, teacher.num_classes),
                    batch_size=batch, device=setup.device)
    return {"model": name, "batch_size": batch, "records": stats.records, "records_per_s": stats.records_per_second,
            "write_share": stats.write_seconds / stats.seconds, "teacher_share": stats.teacher_seconds / stats.seconds}


class _Clips:
    def __init__(self, waves: np.ndarray) -> None:
        self.waves = waves
        self.keys = [f"clip/{i:06d}#0-{waves.shape[1]}" for i in range(len(waves))]
        self.lengths = np.full(len(waves), waves.shape[1])

    def load_batch(self, ids) -> np.ndarray:
        return self.waves[np.asarray(ids)]


# ---- dense targets into pinned memory ---------------------------------------------------------------


def decode_rate(setup: Setup, folder: Path, seconds: float) -> dict:
    num_samples, num_classes, k, batch = (512, 10, 5, 64) if setup.smoke else (65_536, 527, 20, 1024)
    path = folder / "targets.ced"
    rng = np.random.default_rng(0)
    with cedstore.create(path, num_classes=num_classes, k=k, num_samples=num_samples) as writer:
        for first in range(0, num_samples, 8192):
            ids = np.arange(first, min(first + 8192, num_samples))
            writer.write(0, ids, probs=rng.random((len(ids), num_classes), dtype=np.float32),
                         seeds=seed_for(0, 0, ids))
    store = cedstore.open(path)
    pinned = torch.empty(batch, num_classes, pin_memory=setup.device.type == "cuda")
    on_device = torch.empty(batch, num_classes, device=setup.device)
    order = rng.permutation(num_samples)
    position = [0]

    def step():
        start = position[0] % (num_samples - batch + 1)
        position[0] += batch
        on_device.copy_(pinned, non_blocking=True)  # the previous batch, while the next decodes
        store.dense(0, order[start : start + batch], out=pinned.numpy())

    measured = rate(step, batch, setup.device, seconds, setup.warmup, 10**6)
    return {"records_per_s": measured["per_s"], "batch_size": batch, "num_classes": num_classes, "k": k,
            "pinned": pinned.is_pinned()}


# ---- main --------------------------------------------------------------------------------------------


def run(setup: Setup) -> dict:
    start = time.perf_counter()
    report = {
        "benchmark": "CUDA checks and throughput" + (" (CPU smoke run, toy sizes)" if setup.smoke else ""),
        "device": torch.cuda.get_device_name() if setup.device.type == "cuda" else "cpu",
        "torch": torch.__version__, "cuda": torch.version.cuda, "machine": platform.machine(),
        "budget_s": setup.budget_s, "clip_samples": setup.clip_samples,
    }
    budget = {part: share * setup.budget_s for part, share in PART_SHARES.items()}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        try:
            with time_limit(budget["checks"]):
                report["checks"] = run_checks(setup, 0.8 * budget["checks"])
        except PartTimeout as exc:
            report["checks"] = {"skipped": str(exc)}
        report["train"] = sweep(setup, train_rate, budget["train"])
        report["extract"] = sweep(setup, extract_rate, 0.8 * budget["extract"])
        try:
            with time_limit(0.2 * budget["extract"]):
                report["extract_end_to_end"] = extract_end_to_end(setup, folder)
        except PartTimeout as exc:
            report["extract_end_to_end"] = {"skipped": str(exc)}
        report["decode"] = decode_rate(setup, folder, 0.5 * budget["decode"])
    report["elapsed_s"] = time.perf_counter() - start
    return report


def _print(report: dict) -> None:
    print(f"{report['benchmark']} on {report['device']}, torch {report['torch']}, {report['elapsed_s']:.0f} s")
    print("checks:", json.dumps(report["checks"]))
    for part, unit in (("train", "clips_per_s"), ("extract", "records_per_s")):
        for row in report[part]:
            what = f"{row['model']:<10} amp {row['amp']:<4} {row['attention']:<8} {'compiled' if row['compiled'] else 'eager':<8}"
            value = row.get(unit)
            print(f"{part:<8}{what} " + (f"{value:10.1f} {unit}" if value else row.get("skipped") or row.get("error")))
    print("extract end to end:", json.dumps(report["extract_end_to_end"]))
    print("decode into pinned memory:", json.dumps(report["decode"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="toy sizes on the CPU: exercise every code path")
    parser.add_argument("--budget-s", type=float, default=450.0,
                        help="wall-clock budget of the whole run (--smoke: 300; it takes seconds)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        print("benchmarks/gpu.py: no CUDA device (torch.cuda.is_available() is False); nothing to measure. "
              "Use --smoke for a CPU run of the code paths at toy size.")
        return 0
    report = run(Setup(args.smoke, 300.0 if args.smoke and args.budget_s == 450.0 else args.budget_s))
    _print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
