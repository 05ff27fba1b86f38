"""Side by side with the original CED code, in one run: training step, model alone, extraction.

The original is reimplemented faithfully in ``benchmarks/original/`` (see its docstring; the
original is GPL-3.0 and nothing is vendored). Everything runs in this process on the same clips
(10 s of synthetic noise, in memory on both sides), and the two sides alternate round by round,
so load from other processes hits both alike; each ratio is the median over rounds of the paired
ratio original time / our time (> 1: ours is faster).

- ``train``: CED-Mini student, B=8. Ours: ``ced_train.train.train`` as it runs by default
  (label-free from a store of top-20 records, stored-seed augmentation, optimizer ``auto``, the
  default precision), timed over whole epochs of ``--steps`` steps (the epoch time, without the
  set-up). Original: ``run.py``'s fp32 ``_step`` (frontend, masks, mixup 0.5, forward, BCE,
  ``torch.optim.AdamW``), dense targets already in memory. Also the share of our epoch spent in
  the store (``store.dense``).
- ``model``: the model alone at the same numerics: fp32, ``model(wave)`` + BCE + backward +
  plain ``torch.optim.AdamW`` (default implementation) on both sides, step by step alternated.
- ``extract``: CED-Tiny teacher with the same weights on both sides. Ours:
  ``ced_train.extract.extract`` (shift, frontend, masks, teacher, top-20 into a cedstore), and
  the share of its time spent writing the store. Original: ``save_logits.py``'s loop (its loader's
  per-item seeding and shift, frontend, masks, forward, ``topk``, resizable HDF5 datasets).
  Each side runs in its own process (rounds still alternate): ``extract`` makes glibc keep freed
  memory, a process-wide setting that would otherwise carry over to the original's loop.

Usage (from the repository root):
    python -m benchmarks.vs_original [--parts train model extract] [--rounds 3] [--threads 1]
Writes benchmarks/results/vs_original.json. Takes 3-6 minutes on one idle core.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import cedstore
from benchmarks.original import loops
from benchmarks.original.model import AudioTransformer
from ced_train import models
from ced_train.augment import Recipe
from ced_train.extract import extract
from ced_train.frontend import FrontendConfig
from ced_train.rng import seed_for
from ced_train.teacher import Ensemble
from ced_train.train import TrainConfig, train

CLIP_SAMPLES = 160_000  # 10 s at 16 kHz
K = 20
RESULTS = Path(__file__).resolve().parent / "results" / "vs_original.json"


class Clips:
    """``num_clips`` 10 s clips of noise in memory, with the dataset surface our code uses."""

    def __init__(self, num_clips: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.waves = (0.1 * rng.standard_normal((num_clips, CLIP_SAMPLES))).astype(np.float32)
        self.keys = [f"synth/{i:06d}.wav#0-{CLIP_SAMPLES}" for i in range(num_clips)]
        self.lengths = np.full(num_clips, CLIP_SAMPLES)

    def __len__(self) -> int:
        return len(self.keys)

    def load_batch(self, ids) -> np.ndarray:
        return self.waves[np.asarray(ids)]

    def manifest_sha256(self) -> str:
        return hashlib.sha256("".join(k + "\n" for k in self.keys).encode()).hexdigest()


class TimedStore:
    """A store whose ``dense`` calls are timed (``train`` calls it once per batch)."""

    def __init__(self, store: cedstore.Store) -> None:
        self._store, self.seconds = store, 0.0

    def dense(self, *args, **kwargs):
        t0 = time.perf_counter()
        out = self._store.dense(*args, **kwargs)
        self.seconds += time.perf_counter() - t0
        return out

    def __getattr__(self, name: str):
        return getattr(self._store, name)


def original_weights(ours: torch.nn.Module) -> dict:
    """Our CED state dict under the original's names (only the frontend buffers differ)."""
    state = ours.state_dict()
    renamed = {"front_end.0.spectrogram.window": "front_end.window", "front_end.0.mel_scale.fb": "front_end.fb"}
    return {renamed.get(k, k): v for k, v in state.items()}


def _median_ratio(original_s: list[float], ours_s: list[float]) -> float:
    return statistics.median(o / u for o, u in zip(original_s, ours_s))


# ---- training step -------------------------------------------------------------------------------


def _label_free_store(clips: Clips, folder: Path) -> Path:
    path = folder / "targets.ced"
    rng = np.random.default_rng(0)
    meta = {"augmentation": json.loads(Recipe().to_json()), "frontend": FrontendConfig().to_dict()}
    num = len(clips)
    with cedstore.create(path, num_classes=527, k=K, num_samples=num, num_epochs=1, keys=clips.keys,
                         metadata=meta) as writer:
        writer.write(0, np.arange(num), probs=rng.random((num, 527), dtype=np.float32),
                     seeds=seed_for(0, 0, np.arange(num)))
    return path


def bench_train(args, folder: Path) -> dict:
    """Our trainer's epochs vs the original's fp32 steps, CED-Mini, alternating round by round."""
    batch, steps = args.train_batch, args.steps
    clips = Clips(batch * steps)
    store_path = _label_free_store(clips, folder)
    torch.manual_seed(0)
    student = models.create("ced_mini")
    original = AudioTransformer("mini", pooling="logit")
    original.load_state_dict(original_weights(student))
    original_opt = torch.optim.AdamW(original.parameters(), lr=1e-3)
    criterion = torch.nn.BCEWithLogitsLoss(reduction="none")
    generator = torch.Generator().manual_seed(1)
    targets = torch.rand(len(clips), 527, generator=generator)
    waves = torch.from_numpy(clips.waves)
    np.random.seed(0)

    def original_epoch() -> float:
        start = time.perf_counter()
        for s in range(steps):
            rows = slice(s * batch, (s + 1) * batch)
            loops.train_step(original, original_opt, criterion, waves[rows], targets[rows],
                             torch.rand(batch, 1, generator=generator), torch.rand(batch, 1, generator=generator))
        return time.perf_counter() - start

    config = dict(epochs=1, batch_size=batch, warmup_steps=1, optimizer="auto", verbose=False)
    ours_s, original_s, store_share, used = [], [], [], None
    for round_ in range(args.rounds + 1):  # round 0 warms both up and is not counted
        store = TimedStore(cedstore.open(store_path))
        result = train(student, clips, TrainConfig(**config, seed=round_), store)
        epoch_s = result.history[0]["seconds"]
        orig = original_epoch()
        if round_:
            ours_s.append(epoch_s / steps)
            original_s.append(orig / steps)
            store_share.append(store.seconds / epoch_s)
        used = result.optimizer
    return {
        "model": "ced_mini", "batch_size": batch, "steps_per_round": steps, "rounds": args.rounds,
        "ours": {"optimizer": used, "amp": TrainConfig().amp, "s_per_step": ours_s,
                 "store_share": store_share,
                 "setup": "ced_train.train.train, label-free, student_aug=store, mixup 0"},
        "original": {"optimizer": "torch.optim.AdamW (default)", "amp": "none (fp32)", "s_per_step": original_s,
                     "setup": "run.py _step: frontend, time/freq masks, mixup 0.5, BCE"},
        "ratio": _median_ratio(original_s, ours_s),
        "store_share_max": max(store_share),
    }


# ---- model alone ----------------------------------------------------------------------------------


def bench_model(args) -> dict:
    """fp32 forward + BCE + backward + plain AdamW, both models, alternating step by step."""
    batch = args.train_batch
    torch.manual_seed(0)
    ours = models.create("ced_mini").train()
    original = AudioTransformer("mini", pooling="logit").train()
    original.load_state_dict(original_weights(ours))
    wave = torch.randn(batch, CLIP_SAMPLES, generator=torch.Generator().manual_seed(2)) * 0.1
    targets = torch.rand(batch, 527, generator=torch.Generator().manual_seed(3))
    runs = {name: (model, torch.optim.AdamW(model.parameters(), lr=1e-4))
            for name, model in (("ours", ours), ("original", original))}
    times = {name: [] for name in runs}
    for step in range(1 + args.model_steps):
        for name, (model, optimizer) in runs.items():
            start = time.perf_counter()
            loss = F.binary_cross_entropy_with_logits(model(wave), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if step:
                times[name].append(time.perf_counter() - start)
    return {"model": "ced_mini", "batch_size": batch, "steps": args.model_steps,
            "numerics": "fp32, torch.optim.AdamW default implementation on both",
            "ours_s_per_step": times["ours"], "original_s_per_step": times["original"],
            "ratio": _median_ratio(times["original"], times["ours"])}


# ---- extraction -------------------------------------------------------------------------------------


def _extract_side(side: str, conn, args, folder: str) -> None:
    """One side of ``bench_extract`` in its own process: runs a round per message until None."""
    torch.set_num_threads(args.threads)
    batch = args.extract_batch
    clips = Clips(batch * args.extract_batches, seed=1)
    torch.manual_seed(0)
    tiny = models.create("ced_tiny").eval()  # the same weights in both processes
    original = AudioTransformer("tiny", pooling="mean").eval()
    original.load_state_dict(original_weights(tiny))
    while (round_ := conn.recv()) is not None:
        if side == "ours":
            stats = extract(Ensemble([tiny]), clips, Path(folder) / f"ours{round_}.ced", store_epochs=1, k=K,
                            batch_size=batch)
            conn.send((stats.records, stats.seconds, stats.write_seconds))
        else:
            start = time.perf_counter()
            loader = loops.batches(loops.sequential_items(clips.waves, clips.keys), batch)
            records = loops.save_logits_epoch(original, loader, Path(folder) / f"original{round_}.h5", topk=K,
                                              batch_size=batch)
            conn.send((records, time.perf_counter() - start, 0.0))


def bench_extract(args, folder: Path) -> dict:
    """``extract`` vs the save-logits loop, CED-Tiny teacher (same weights), alternating runs, each
    side in its own process."""
    context = multiprocessing.get_context("spawn")
    sides = {}
    for side in ("ours", "original"):
        parent, child = context.Pipe()
        process = context.Process(target=_extract_side, args=(side, child, args, str(folder)), daemon=True)
        process.start()
        sides[side] = (process, parent)
    per_record = {"ours": [], "original": []}
    write_share = []
    try:
        for round_ in range(args.rounds + 1):  # round 0 warms both up and is not counted
            for side in sorted(sides, reverse=bool(round_ % 2)):
                sides[side][1].send(round_)
                records, seconds, write_seconds = sides[side][1].recv()
                assert records == args.extract_batch * args.extract_batches
                if round_:
                    per_record[side].append(seconds / records)
                    if side == "ours":
                        write_share.append(write_seconds / seconds)
    finally:
        for process, conn in sides.values():
            conn.send(None)
            process.join(timeout=60)
    ours_s, original_s = per_record["ours"], per_record["original"]
    return {
        "teacher": "ced_tiny (random weights, 527 classes), same weights on both sides",
        "batch_size": args.extract_batch, "records_per_round": args.extract_batch * args.extract_batches,
        "rounds": args.rounds, "processes": "one per side",
        "ours_s_per_record": ours_s, "original_s_per_record": original_s,
        "ours_records_per_s": 1 / statistics.median(ours_s),
        "original_records_per_s": 1 / statistics.median(original_s),
        "store_write_share": write_share, "store_write_share_max": max(write_share),
        "ratio": _median_ratio(original_s, ours_s),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", default=["train", "model", "extract"],
                        choices=["train", "model", "extract"])
    parser.add_argument("--rounds", type=int, default=3, help="paired rounds counted (after one warm-up)")
    parser.add_argument("--steps", type=int, default=4, help="training steps per round")
    parser.add_argument("--model-steps", type=int, default=6, help="model-alone steps per side")
    parser.add_argument("--train-batch", type=int, default=8)
    parser.add_argument("--extract-batch", type=int, default=32)
    parser.add_argument("--extract-batches", type=int, default=2, help="batches per extraction round")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    load = [os.getloadavg()[0]]
    report = {"benchmark": "ours vs the original CED code (benchmarks/original), paired rounds",
              "torch": torch.__version__, "machine": platform.machine(), "threads": torch.get_num_threads(),
              "clip_seconds": CLIP_SAMPLES / 16_000}
    with tempfile.TemporaryDirectory() as tmp:
        for part in args.parts:
            folder = Path(tmp) / part
            folder.mkdir()
            start = time.perf_counter()
            if part == "train":
                report["train"] = bench_train(args, folder)
            elif part == "model":
                report["model"] = bench_model(args)
            else:
                report["extract"] = bench_extract(args, folder)
            report[part]["seconds"] = time.perf_counter() - start
            load.append(os.getloadavg()[0])
    report["load_average_1min"] = load  # before the run and after each part

    print(f"ours vs original, {report['threads']} thread(s), torch {torch.__version__}, "
          f"load {' -> '.join(f'{x:.1f}' for x in load)}")
    if "train" in report:
        r = report["train"]
        print(f"train step, CED-Mini B={r['batch_size']} x 10 s: ours ({r['ours']['optimizer']}, amp "
              f"{r['ours']['amp']}) {statistics.median(r['ours']['s_per_step']):.2f} s, original "
              f"{statistics.median(r['original']['s_per_step']):.2f} s -> {r['ratio']:.2f}x; "
              f"store {100 * r['store_share_max']:.4f} % of our step at most")
    if "model" in report:
        r = report["model"]
        print(f"model alone, fp32 + AdamW: ours {statistics.median(r['ours_s_per_step']):.2f} s, original "
              f"{statistics.median(r['original_s_per_step']):.2f} s -> {r['ratio']:.2f}x")
    if "extract" in report:
        r = report["extract"]
        print(f"extraction, CED-Tiny B={r['batch_size']}: ours {r['ours_records_per_s']:.1f} records/s, original "
              f"{r['original_records_per_s']:.1f} -> {r['ratio']:.2f}x; store writes "
              f"{100 * r['store_write_share_max']:.4f} % at most")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
