"""``ced-train demo``: the whole CED pipeline on bundled synthetic data, on a CPU, in minutes.

1. A synthetic multi-label dataset (``ced_train.synth``: 14 classes, 1.92 s clips).
2. Three small teachers trained supervised (fresh augmentation, different seeds).
3. Their ensemble extracted twice: into an augmented store (E stored epochs) and a clean store
   (no augmentation; E = 1, as every epoch would be the same).
4. Four label-free students, the rows of the paper's Table 3, trained *paired* (same
   initialization, same batch order, same mixup draws) so that only the targets and the
   augmentation differ:

   ==============  ===========  ====================================
   student         store        student augmentation
   ==============  ===========  ====================================
   none            clean        none
   student_only    clean        fresh seeds (not what the teacher saw)
   teacher_only    augmented    none
   consistent      augmented    the stored seeds (CED)
   ==============  ===========  ====================================

5. A table, ``results.json`` and ``results.png`` in the output folder.

The time mask of the recipe is scaled to the clip length: the paper masks up to 192 of 1001
frames of a 10 s clip, the demo up to 37 of the 193 frames of a 1.92 s clip.

The teachers train without mixup: at this scale (dim 96, depth 3, 40 epochs of 1,000 clips)
mixup cost a teacher 12-15 mAP points (seed 100: 0.52 with alpha 0.5, 0.53 with 0.2, against
0.65 with the same augmentation and no mixup), and weak teachers hide the effect under study.

What it showed on a 2-core machine (598 s with AdamW; with 8-bit Adam, 656 s and the same
ordering): teachers 0.61-0.65 mAP, ensemble 0.665; students after 40 epochs: none 0.569,
consistent 0.505, teacher-only 0.487, student-only 0.465. Consistent beats the other two
augmented rows, as in the paper, but not the unaugmented student: in 40 epochs the augmented
students are still far from converged. Trained for 120 epochs (``--student-epochs 120``, 8-bit
Adam): consistent 0.634, student-only 0.625, none 0.622, teacher-only 0.613; consistent first
by about 1 mAP, with one pairing seed (not conclusive on its own).

Example:
    $ ced-train demo --out demo/          # about 10 minutes on 2 cores
    $ ced-train demo --quick --out tmp/   # toy sizes, for CI
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import multiprocessing
import os
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import cedstore
from ced_train import distributed, models, synth
from ced_train.augment import Recipe
from ced_train.data import AudioDataset
from ced_train.evaluate import evaluate
from ced_train.extract import Ensemble, extract
from ced_train.frontend import num_frames
from ced_train.train import TrainConfig, train

__all__ = ["STUDENTS", "DemoConfig", "add_demo_arguments", "run_demo", "demo"]

# name -> (store, student_aug): the paper's Table 3.
STUDENTS = {
    "none": ("clean", "none"),
    "student_only": ("clean", "fresh"),
    "teacher_only": ("augmented", "none"),
    "consistent": ("augmented", "store"),
}
PAPER_TIME_MASK = (192, 1001)  # up to 192 of the 1001 frames of a 10 s clip


@dataclasses.dataclass
class DemoConfig:
    """Sizes of the demo; the defaults are the full demo, :meth:`quick` the toy one.

    Attributes:
        num_train, num_eval, seconds, num_classes, data_seed: the synthetic dataset.
        teachers: number of ensemble members.
        teacher_dim, teacher_depth, teacher_heads, teacher_epochs, teacher_mixup: the teachers.
        store_epochs: augmentation epochs E of the augmented store.
        k: top-K kept per record.
        student_dim, student_depth, student_heads, student_epochs, student_mixup: the students.
        student_seeds: pairing seeds; each trains the four students once (results averaged).
        batch_size, lr, warmup_steps, optimizer: shared by teachers and students.
        sweep_store_epochs: also train a consistent student on the first E' stored epochs
            for each E' listed (an E sweep; empty: none).
        jobs: trainings (and extraction shares) run side by side, one process each.
        threads: torch threads per job.
    """

    num_train: int = 1000
    num_eval: int = 2000
    seconds: float = 1.92
    num_classes: int = 14
    data_seed: int = 0
    teachers: int = 3
    teacher_dim: int = 96
    teacher_depth: int = 3
    teacher_heads: int = 3
    teacher_epochs: int = 40
    teacher_mixup: float = 0.0  # see the module docstring
    store_epochs: int = 40
    k: int = 5
    student_dim: int = 64
    student_depth: int = 2
    student_heads: int = 2
    student_epochs: int = 40
    student_mixup: float = 0.0
    student_seeds: tuple[int, ...] = (0,)
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 50
    # On the CPU bitsandbytes' 8-bit Adam runs a slow pure-PyTorch fallback (+0.15-0.2 s a step,
    # most of the demo's time); its point is GPU memory, so the demo trains with AdamW.
    optimizer: str = "adamw"
    sweep_store_epochs: tuple[int, ...] = ()
    jobs: int = 2
    threads: int = 1

    @classmethod
    def quick(cls, **overrides: Any) -> DemoConfig:
        """Toy sizes: the same path in seconds (for CI and tests)."""
        values = dict(num_train=48, num_eval=48, seconds=0.64, teachers=2, teacher_dim=32,
                      teacher_depth=1, teacher_heads=2, teacher_epochs=2, store_epochs=2,
                      student_dim=32, student_depth=1, student_heads=2, student_epochs=2,
                      batch_size=16, warmup_steps=2)
        return cls(**{**values, **overrides})

    def recipe(self) -> Recipe:
        """The paper's recipe with the time mask scaled to the clip length."""
        frames = num_frames(round(self.seconds * 16000))
        mask = max(1, round(PAPER_TIME_MASK[0] * frames / PAPER_TIME_MASK[1]))
        return Recipe(time_mask_max=mask)


class _FirstEpochs:
    """A store seen through its first ``num_epochs`` epochs (for the E sweep)."""

    def __init__(self, store: cedstore.Store, num_epochs: int) -> None:
        self._store, self.num_epochs = store, min(num_epochs, store.num_epochs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def _log(message: str) -> None:
    print(message, flush=True)


# ---- jobs: each trains or extracts in one process with one torch thread ---------------------
# Tiny models gain little from intra-op threads and lose a lot when the cores are shared, so the
# demo runs independent jobs side by side instead (teachers; the two extraction halves; students).
# Every job is deterministic whichever process runs it.

_DATASETS: dict[str, AudioDataset] = {}  # per process: decoded once, reused by later jobs


def _dataset(tsv: str, num_classes: int) -> AudioDataset:
    if tsv not in _DATASETS:
        _DATASETS[tsv] = AudioDataset.from_tsv(tsv, num_classes=num_classes, cache=True)
    return _DATASETS[tsv]


def _model(config: DemoConfig, role: str, seed: int) -> models.CED:
    torch.manual_seed(seed)  # the same seed gives the same initial weights: paired students
    dim, depth, heads = (getattr(config, f"{role}_{name}") for name in ("dim", "depth", "heads"))
    return models.create("ced_custom", num_classes=config.num_classes, embed_dim=dim, depth=depth,
                         num_heads=heads)


def _train_job(job: dict[str, Any]) -> dict[str, Any]:
    """Train one teacher (supervised) or student (from a store), evaluate it; save teachers."""
    torch.set_num_threads(job["threads"])
    start = time.perf_counter()
    config, role, seed = job["config"], job["role"], job["seed"]
    train_set = _dataset(job["train_tsv"], config.num_classes)
    eval_set = _dataset(job["eval_tsv"], config.num_classes)
    model = _model(config, role, seed)
    train_config = TrainConfig(
        epochs=getattr(config, f"{role}_epochs"), batch_size=config.batch_size, lr=config.lr,
        warmup_steps=config.warmup_steps, optimizer=config.optimizer,
        mixup_alpha=getattr(config, f"{role}_mixup"), seed=seed, supervised=role == "teacher",
        student_aug=job["student_aug"], eval_every=0, verbose=False,
    )
    store = None
    if job.get("store"):
        store = cedstore.open(job["store"])
        if job.get("store_epochs"):
            store = _FirstEpochs(store, job["store_epochs"])
    recipe = job["recipe"] if job["student_aug"] == "fresh" else None
    train(model, train_set, train_config, store, recipe=recipe, class_names=job["class_names"])
    if job.get("save"):
        models.save_checkpoint(model, job["save"])
    return {"mAP": evaluate(model, eval_set, batch_size=128).mAP, "seconds": time.perf_counter() - start}


def _extract_job(job: dict[str, Any]) -> dict[str, Any]:
    """One rank of an extraction: ``extract``'s torch.distributed protocol over gloo."""
    torch.set_num_threads(job["threads"])
    dist_env = {"RANK": str(job["rank"]), "WORLD_SIZE": str(job["world_size"]),
                "LOCAL_RANK": str(job["rank"]), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(job["port"])}
    os.environ.update(dist_env)
    try:
        distributed.setup("cpu")
        config = job["config"]
        stats = extract(Ensemble.from_checkpoints(job["teachers"]), _dataset(job["train_tsv"], config.num_classes),
                        job["out"], epochs=job["epochs"], k=config.k, base_seed=0, recipe=job["recipe"],
                        batch_size=job["batch_size"], class_names=job["class_names"], progress=False)
    finally:
        distributed.cleanup()
        for key in dist_env:  # later jobs of this process must not see a process group
            os.environ.pop(key, None)
    return {"records": stats.records, "seconds": stats.seconds}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Runner:
    """Runs jobs in ``jobs`` spawned processes (or in this one for ``jobs=1``), results in order."""

    def __init__(self, jobs: int) -> None:
        self.pool = None
        if jobs > 1:
            context = multiprocessing.get_context("spawn")  # fork after torch threads is unsafe
            self.pool = concurrent.futures.ProcessPoolExecutor(jobs, mp_context=context)

    def map(self, fn, jobs: list[dict[str, Any]], on_done=None) -> list[dict[str, Any]]:
        if self.pool is None:
            results = []
            for job in jobs:
                results.append(fn(job))
                if on_done:
                    on_done(job, results[-1])
            return results
        futures = [self.pool.submit(fn, job) for job in jobs]
        if on_done:
            for future in concurrent.futures.as_completed(futures):
                on_done(jobs[futures.index(future)], future.result())
        return [future.result() for future in futures]

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()


def demo(out: str | os.PathLike, config: DemoConfig | None = None) -> dict[str, Any]:
    """Run the demo into ``out`` and return the results (also written to ``out/results.json``).

    Args:
        out: output folder (created); holds data/, the teachers, the stores, results.json and
            results.png.
        config: sizes; the full demo by default.

    Returns:
        ``{"teachers": [{"name", "mAP"}], "ensemble_mAP", "students": {name: mAP},
        "store_bytes", "seconds", ...}``; with several pairing seeds the student mAPs are
        their means, the per-seed values are in ``students_per_seed``.

    Example:
        >>> results = demo("demo/", DemoConfig.quick())
        >>> results["students"]["consistent"]
    """
    config = config or DemoConfig()
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    recipe = config.recipe()
    torch.set_num_threads(config.threads)
    _log(f"demo: {config.num_train} training and {config.num_eval} eval clips of {config.seconds} s, "
         f"{config.num_classes} classes, {config.jobs} jobs at a time; recipe {recipe.to_json()}")
    train_tsv, eval_tsv, names = synth.make_dataset(out / "data", config.num_train, config.num_eval,
                                                    config.seconds, config.num_classes, config.data_seed)
    common = {"config": config, "train_tsv": str(train_tsv), "eval_tsv": str(eval_tsv), "recipe": recipe,
              "class_names": names, "threads": config.threads}
    timings = {"data": time.perf_counter() - start}
    runner = _Runner(config.jobs)
    try:
        # ---- teachers: supervised, fresh augmentation, one seed each
        t0 = time.perf_counter()
        teacher_paths = [str(out / f"teacher{i + 1}.pt") for i in range(config.teachers)]
        jobs = [{**common, "role": "teacher", "seed": 100 + i, "student_aug": "fresh", "save": path}
                for i, path in enumerate(teacher_paths)]
        done = runner.map(_train_job, jobs, lambda job, r: _log(
            f"teacher {Path(job['save']).stem}: mAP {r['mAP']:.4f} ({r['seconds']:.0f} s)"))
        teacher_results = [{"name": Path(p).stem, "mAP": r["mAP"]} for p, r in zip(teacher_paths, done)]
        ensemble = Ensemble.from_checkpoints(teacher_paths)
        frontend = ensemble.members[0].front_end
        eval_set = _dataset(str(eval_tsv), config.num_classes)
        ensemble_mAP = evaluate(lambda waves: ensemble(frontend(waves)), eval_set, batch_size=128).mAP
        _log(f"ensemble of {config.teachers}: mAP {ensemble_mAP:.4f}")
        timings["teachers"] = time.perf_counter() - t0

        # ---- extraction: augmented (E epochs, split over the jobs) and clean (1 epoch)
        t0 = time.perf_counter()
        stores, records_per_s = {}, {}
        for name, epochs, store_recipe in (("augmented", config.store_epochs, recipe), ("clean", 1, None)):
            path = out / f"teacher_{name}.ced"
            if path.exists():
                path.unlink()  # a fresh extraction each run (extract resumes a matching file)
            t1 = time.perf_counter()
            world, port = max(config.jobs, 1), _free_port()
            runner.map(_extract_job, [{**common, "teachers": teacher_paths, "out": str(path), "epochs": epochs,
                                       "recipe": store_recipe, "batch_size": 64, "rank": rank,
                                       "world_size": world, "port": port} for rank in range(world)])
            stores[name] = cedstore.open(path)
            records_per_s[name] = stores[name].num_epochs * stores[name].num_samples / (time.perf_counter() - t1)
            _log(f"store {path.name}: E={epochs}, {stores[name].file_size} bytes, "
                 f"{records_per_s[name]:.0f} records/s ({world} processes)")
        timings["extract"] = time.perf_counter() - t0

        # ---- students: paired (same init, batch order and mixup draws per seed)
        t0 = time.perf_counter()
        jobs = [{**common, "role": "student", "seed": seed, "name": name, "student_aug": student_aug,
                 "store": str(out / f"teacher_{store_name}.ced")}
                for seed in config.student_seeds for name, (store_name, student_aug) in STUDENTS.items()]
        jobs += [{**common, "role": "student", "seed": config.student_seeds[0], "name": f"E={epochs}",
                  "student_aug": "store", "store": str(out / "teacher_augmented.ced"), "store_epochs": epochs}
                 for epochs in config.sweep_store_epochs]
        done = runner.map(_train_job, jobs, lambda job, r: _log(
            f"student {job['name']} (seed {job['seed']}): mAP {r['mAP']:.4f} ({r['seconds']:.0f} s)"))
        timings["students"] = time.perf_counter() - t0
    finally:
        runner.close()
    per_seed: dict[str, list[float]] = {}
    for job, result in zip(jobs, done):
        per_seed.setdefault(job["name"], []).append(result["mAP"])
    students = {name: float(np.mean(per_seed[name])) for name in STUDENTS}

    results = {
        "teachers": teacher_results,
        "ensemble_mAP": ensemble_mAP,
        "students": students,
        "students_per_seed": {name: per_seed[name] for name in STUDENTS},
        "store_bytes": stores["augmented"].file_size,
        "clean_store_bytes": stores["clean"].file_size,
        "records_per_s": records_per_s["augmented"],
        "seconds": time.perf_counter() - start,
        "timings": timings,
        "config": dataclasses.asdict(config),
        "recipe": json.loads(recipe.to_json()),
    }
    if config.sweep_store_epochs:
        results["store_epochs_sweep"] = {str(e): per_seed[f"E={e}"][0] for e in config.sweep_store_epochs}
    for store in stores.values():
        store.close()
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    _plot(results, out / "results.png")
    _log(format_table(results))
    return results


def format_table(results: dict[str, Any]) -> str:
    """The results as a plain-text table."""
    rows = [(t["name"] + " (supervised)", t["mAP"]) for t in results["teachers"]]
    rows.append(("ensemble", results["ensemble_mAP"]))
    for name, value in results["students"].items():
        store_name, student_aug = STUDENTS[name]
        rows.append((f"student {name} ({store_name} store, aug {student_aug})", value))
    width = max(len(name) for name, _ in rows)
    lines = [f"{'model':<{width}}  mAP", f"{'-' * width}  ------"]
    lines += [f"{name:<{width}}  {value:.4f}" for name, value in rows]
    lines.append(f"augmented store: {results['store_bytes']} bytes, extraction "
                 f"{results['records_per_s']:.0f} records/s; total {results['seconds']:.0f} s")
    return "\n".join(lines)


def _plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    labels = [t["name"] for t in results["teachers"]] + ["ensemble"] + list(results["students"])
    values = [t["mAP"] for t in results["teachers"]] + [results["ensemble_mAP"]] + list(results["students"].values())
    colors = ["#9e9e9e"] * len(results["teachers"]) + ["#616161"] + ["#90caf9", "#64b5f6", "#1e88e5", "#0d47a1"]
    fig, ax = plt.subplots(figsize=(8, 4), dpi=100)
    bars = ax.bar(labels, values, color=colors[: len(values)])
    ax.bar_label(bars, fmt="%.3f", fontsize=8)
    low = min(values)
    ax.set_ylim(max(0.0, low - 0.1), min(1.0, max(values) + 0.05))
    ax.set_ylabel("mAP (eval)")
    ax.set_title("CED demo: teachers, ensemble and the four label-free students (Table 3)")
    ax.tick_params(axis="x", labelrotation=20)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ---- command line ----------------------------------------------------------------------------


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``ced-train demo`` options to ``parser``."""
    parser.add_argument("--out", default="demo", help="output folder (demo)")
    parser.add_argument("--quick", action="store_true", help="toy sizes: the same path in seconds")
    parser.add_argument("--student-seeds", default=None,
                        help="comma-separated pairing seeds; the students are trained once per seed (0)")
    parser.add_argument("--store-epochs", type=int, help="augmentation epochs E of the augmented store (40)")
    parser.add_argument("--student-epochs", type=int, help="training epochs of each student (40)")
    parser.add_argument("--sweep-store-epochs", default="",
                        help="comma-separated E' values: also train consistent students on E' stored epochs")
    parser.add_argument("--jobs", type=int, help="trainings run side by side, one process each (2)")
    parser.add_argument("--threads", type=int, help="torch threads per job (1)")


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"expected comma-separated integers, got {text!r}") from None


def run_demo(args: argparse.Namespace) -> int:
    """Run ``ced-train demo``; returns the exit status."""
    overrides: dict[str, Any] = {}
    if args.jobs:
        overrides["jobs"] = args.jobs
    if args.threads:
        overrides["threads"] = args.threads
    if args.student_seeds:
        overrides["student_seeds"] = _ints(args.student_seeds)
    if args.store_epochs:
        overrides["store_epochs"] = args.store_epochs
    if args.student_epochs:
        overrides["student_epochs"] = args.student_epochs
    if args.sweep_store_epochs:
        overrides["sweep_store_epochs"] = _ints(args.sweep_store_epochs)
    config = DemoConfig.quick(**overrides) if args.quick else DemoConfig(**overrides)
    demo(args.out, config)
    return 0
