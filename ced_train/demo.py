"""``ced-train demo``: the whole CED pipeline on bundled synthetic data, on a CPU, in minutes.

It reproduces the *regime* of the paper's Table 3, not its numbers:

1. A synthetic multi-label dataset (``ced_train.synth``: 14 classes, 1.92 s clips): a large
   labelled training set for the teachers, the students' clips as a small subset of it (as
   AS-20K is a subset of AS-2M), and an eval set.
2. Teachers trained supervised on the large set (fresh augmentation, one seed each).
3. Their ensemble extracted on the students' clips twice: into an augmented store (E stored
   epochs, top K = min(20, C)) and a clean store (no augmentation; E = 1).
4. Four label-free students, the rows of Table 3, trained *paired* (per pairing seed: the same
   initialization and batch order) so that only the targets and the augmentation differ, for
   every pairing seed:

   ==============  ===========  ====================================
   student         store        student augmentation
   ==============  ===========  ====================================
   none            clean        none
   student_only    clean        fresh seeds (not what the teacher saw)
   teacher_only    augmented    none
   consistent      augmented    the stored seeds (CED)
   ==============  ===========  ====================================

5. ``results.json`` (per-seed values, their mean, learning curves, store size against dense
   float32), ``results.png`` (bars with per-seed points, learning curves, train vs eval mAP)
   and a table; ``--sweep-epochs`` adds consistent students on the first E' stored epochs and
   ``results_sweep.png``.

Why each default is what it is. The settings were chosen for three properties (the teachers
know more than the students' data, the students converge, every comparison is paired and
repeated), not for the ordering of the students; the numbers below are measurements on a
2-core machine:

- 0.96 s clips (97 frames, 24 patches): every stage costs about half of what it did with the
  1.92 s clips of v0.1, which is what lets teachers on 4,000 clips and eight converged
  students fit in 10 minutes. Events last 0.1-2 s and are cut at the end of the clip.
- Teachers know more: three teachers (dim 96, depth 3) trained with labels on 4,000 clips,
  8 epochs at lr 2e-3 (0.60-0.66 mAP, ensemble 0.64-0.67); the students distil label-free on the
  first 300 of those clips, 13x less audio (AS-2M to AS-20K is 90x). When the teachers saw
  only the students' clips (v0.1), or the students had 1,000 clips, the unaugmented student
  won: a student with enough clips of its own is not data-starved, and augmentation mostly
  costs it.
- The students are data-starved: 300 clips, 120 epochs. Without augmentation a student's mAP
  on its own clips (against the labels it never saw) ends about 10 points above its eval mAP
  (the right panel of results.png), the overfitting that augmentation is there to prevent.
- The students converge: lr 2e-3, cosine decay to 10 %. At lr 1e-3 the augmented students
  were still rising after 120 epochs (student-only, seed 1: +1.8 mAP over the last 30); at
  2e-3 every curve (eval mAP on the first 500 eval clips every 10 epochs, the middle panel)
  rises by less than 1 mAP over its last 20 epochs. The final mAP is on all 2,000 eval clips.
- K = min(20, C): the paper's K = 20, capped at the class count (here all 14 classes). With
  K = C a record (4K + 4 = 60 bytes) is larger than the 56-byte float32 row it replaces; the
  format saves space when K is much smaller than C (84 against 2,108 bytes at 527 classes).
- E = 40 stored epochs, the paper's value for AS-20K; at 300 clips the store is 0.7 MB and
  E costs only extraction time.
- Two pairing seeds: the same student differs by up to 6 mAP points between seeds (lr 1e-3,
  student-only: 0.507 and 0.443), as much as some differences between rows; the table shows
  every seed, the mean and the range, and the paired differences per seed.
- The teachers train without mixup: at this scale mixup cost a teacher 12-15 mAP points
  (v0.1, seed 100: 0.52 with alpha 0.5 against 0.65 without), and weak teachers hide the
  effect under study. The recipe's time mask is scaled to the clip (the paper's 192 of 1001
  frames: 19 of 97).
- AdamW, not 8-bit Adam: bitsandbytes' CPU fallback is slow and its point is GPU memory.
- Processes: the three teachers train at once (the OS shares the 2 cores evenly, where a
  pool of 2 would leave one idle for the third teacher); each store is extracted by one
  process, since cedstore's writer lock refuses a second process writing the same file, and
  the clean-store students train beside the augmented extraction.

Example:
    $ ced-train demo --out demo/          # about 8 minutes on 2 idle cores (490 s measured)
    $ ced-train demo --quick --out tmp/   # toy sizes, for CI
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import multiprocessing
import os
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import cedstore
from ced_train import models, synth
from ced_train.augment import Recipe
from ced_train.data import AudioDataset
from ced_train.evaluate import evaluate
from ced_train.extract import Ensemble, extract
from ced_train.frontend import num_frames
from ced_train.train import TrainConfig, train

__all__ = ["STUDENTS", "DemoConfig", "demo", "format_table"]

# name -> (store, student_aug): the paper's Table 3.
STUDENTS = {
    "none": ("clean", "none"),
    "student_only": ("clean", "fresh"),
    "teacher_only": ("augmented", "none"),
    "consistent": ("augmented", "store"),
}
PAPER_TIME_MASK = (192, 1001)  # up to 192 of the 1001 frames of a 10 s clip
PAPER_K = 20
SWEEP_EPOCHS = (1, 5, 20)  # with E itself: the E values of ``--sweep-epochs``


@dataclasses.dataclass
class DemoConfig:
    """Sizes of the demo; the defaults are the full demo, :meth:`quick` the toy one.

    Attributes:
        num_teacher_clips: labelled training clips of the teachers.
        num_student_clips: the students' clips: the first ``num_student_clips`` of the
            teachers' (label-free for the students).
        num_eval: eval clips (the final mAP of every model).
        num_curve_eval: the first eval clips, scored every ``curve_every`` student epochs.
        seconds, num_classes, data_seed: the synthetic dataset.
        teachers: number of ensemble members.
        teacher_dim, teacher_depth, teacher_heads, teacher_epochs, teacher_lr: the teachers.
        store_epochs: augmentation epochs E of the augmented store.
        k: top-K kept per record; None: min(20, num_classes).
        student_dim, student_depth, student_heads, student_epochs, student_lr: the students.
        curve_every: student epochs between two points of the learning curves.
        student_seeds: pairing seeds; each trains the four students once (results averaged).
        batch_size, warmup_steps, optimizer: shared by teachers and students.
        sweep_store_epochs: also train consistent students on the first E' stored epochs for
            each E' listed, for every pairing seed (E' = E reuses the consistent student).
        jobs: trainings (and extraction shares) run side by side, one process each.
        threads: torch threads per job.
    """

    num_teacher_clips: int = 4000
    num_student_clips: int = 300
    num_eval: int = 2000
    num_curve_eval: int = 500
    seconds: float = 0.96
    num_classes: int = 14
    data_seed: int = 0
    teachers: int = 3
    teacher_dim: int = 96
    teacher_depth: int = 3
    teacher_heads: int = 3
    teacher_epochs: int = 8
    teacher_lr: float = 2e-3
    store_epochs: int = 40
    k: int | None = None
    student_dim: int = 64
    student_depth: int = 2
    student_heads: int = 2
    student_epochs: int = 120
    student_lr: float = 2e-3
    curve_every: int = 10
    student_seeds: tuple[int, ...] = (0, 1)
    batch_size: int = 32
    warmup_steps: int = 50
    optimizer: str = "adamw"
    sweep_store_epochs: tuple[int, ...] = ()
    jobs: int = 2
    threads: int = 1

    def __post_init__(self) -> None:
        self.student_seeds = tuple(self.student_seeds)
        self.sweep_store_epochs = tuple(self.sweep_store_epochs)
        if not 1 <= self.num_student_clips <= self.num_teacher_clips:
            raise ValueError(f"the students' clips are a subset of the teachers': need 1 <= num_student_clips "
                             f"<= num_teacher_clips = {self.num_teacher_clips}, got {self.num_student_clips}")
        if not 1 <= self.num_curve_eval <= self.num_eval:
            raise ValueError(f"need 1 <= num_curve_eval <= num_eval = {self.num_eval}, got {self.num_curve_eval}")
        if not 1 <= self.top_k() <= self.num_classes:
            raise ValueError(f"need 1 <= k <= num_classes = {self.num_classes}, got {self.k}")
        if not self.student_seeds:
            raise ValueError("need at least one pairing seed in student_seeds")
        bad = [e for e in self.sweep_store_epochs if not 1 <= e <= self.store_epochs]
        if bad:
            raise ValueError(f"sweep_store_epochs must lie in [1, store_epochs = {self.store_epochs}], got {bad}")

    @classmethod
    def quick(cls, **overrides: Any) -> DemoConfig:
        """Toy sizes: the same path in seconds (for CI and tests)."""
        values = dict(num_teacher_clips=64, num_student_clips=32, num_eval=48, num_curve_eval=24, seconds=0.64,
                      teachers=2, teacher_dim=32, teacher_depth=1, teacher_heads=2, teacher_epochs=2,
                      store_epochs=2, student_dim=32, student_depth=1, student_heads=2, student_epochs=2,
                      curve_every=1, batch_size=16, warmup_steps=2)
        return cls(**{**values, **overrides})

    def top_k(self) -> int:
        """K of the stores: ``k``, or the paper's 20 capped at the class count."""
        return min(PAPER_K, self.num_classes) if self.k is None else self.k

    def default_sweep(self) -> tuple[int, ...]:
        """The E' of ``--sweep-epochs`` without values: 1, 5, 20 and E, those up to E."""
        return tuple(sorted({e for e in (*SWEEP_EPOCHS, self.store_epochs) if e <= self.store_epochs}))

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


class _Stage:
    """Progress lines of one stage: jobs done, time since the demo began, the stage's ETA."""

    def __init__(self, name: str, total: int, demo_start: float) -> None:
        self.name, self.total, self.demo_start = name, total, demo_start
        self.start, self.count = time.perf_counter(), 0

    def done(self, message: str) -> None:
        self.count += 1
        now = time.perf_counter()
        eta = (now - self.start) / self.count * (self.total - self.count)
        _log(f"[{now - self.demo_start:5.0f} s] {self.name} {self.count}/{self.total}: {message}"
             + (f"; stage ETA {eta:.0f} s" if self.count < self.total else f"; stage took {now - self.start:.0f} s"))


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children."""
    return sum(r.ru_utime + r.ru_stime for r in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)))


def _head_tsv(source: Path, target: Path, num_rows: int) -> Path:
    """Write the header and the first ``num_rows`` rows of a TSV manifest (a subset of its clips)."""
    lines = source.read_text(encoding="utf-8").splitlines(keepends=True)
    target.write_text("".join(lines[: num_rows + 1]), encoding="utf-8")
    return target


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
    """Train one teacher (supervised) or student (from a store), evaluate it; save teachers.

    A student also returns its learning curve (``[epoch, mAP]`` on the curve set) and its
    mAP on its own training clips (against their labels, which it never saw).
    """
    torch.set_num_threads(job["threads"])
    start = time.perf_counter()
    config, role, seed = job["config"], job["role"], job["seed"]
    student = role == "student"
    train_set = _dataset(job["train_tsv"], config.num_classes)
    model = _model(config, role, seed)
    train_config = TrainConfig(
        epochs=getattr(config, f"{role}_epochs"), batch_size=config.batch_size, lr=getattr(config, f"{role}_lr"),
        warmup_steps=config.warmup_steps, optimizer=config.optimizer, seed=seed, supervised=not student,
        student_aug=job["student_aug"], eval_every=config.curve_every if student else 0, verbose=False,
    )
    store = None
    if job.get("store"):
        store = cedstore.open(job["store"])
        if job.get("store_epochs"):
            store = _FirstEpochs(store, job["store_epochs"])
    recipe = job["recipe"] if job["student_aug"] == "fresh" else None
    curve_set = _dataset(job["curve_tsv"], config.num_classes) if student else None
    result = train(model, train_set, train_config, store, curve_set, recipe=recipe, class_names=job["class_names"])
    if job.get("save"):
        models.save_checkpoint(model, job["save"])
    done = {"mAP": evaluate(model, _dataset(job["eval_tsv"], config.num_classes), batch_size=128).mAP}
    if student:
        done["curve"] = [[row["epoch"], row["mAP"]] for row in result.history if row["mAP"] is not None]
        done["train_mAP"] = evaluate(model, train_set, batch_size=128).mAP
    return {**done, "seconds": time.perf_counter() - start}


def _extract_job(job: dict[str, Any]) -> dict[str, Any]:
    """Extract the ensemble into one store, in one process."""
    torch.set_num_threads(job["threads"])
    config = job["config"]
    stats = extract(Ensemble.from_checkpoints(job["teachers"]), _dataset(job["train_tsv"], config.num_classes),
                    job["out"], store_epochs=job["epochs"], k=config.top_k(), base_seed=0, recipe=job["recipe"],
                    batch_size=64, class_names=job["class_names"], progress=False)
    return {"records": stats.records, "seconds": stats.seconds}


class _Runner:
    """Runs jobs in ``jobs`` spawned processes, or at once in this one for ``jobs=1``."""

    def __init__(self, jobs: int) -> None:
        self.pool = None
        if jobs > 1:
            context = multiprocessing.get_context("spawn")  # fork after torch threads is unsafe
            self.pool = concurrent.futures.ProcessPoolExecutor(jobs, mp_context=context)

    def submit(self, fn, job: dict[str, Any]) -> concurrent.futures.Future:
        if self.pool is not None:
            return self.pool.submit(fn, job)
        future: concurrent.futures.Future = concurrent.futures.Future()
        future.set_result(fn(job))
        return future

    def map(self, fn, jobs: list[dict[str, Any]], on_done) -> list[dict[str, Any]]:
        """Results in the order of ``jobs``; ``on_done(job, result)`` as each one finishes."""
        futures = [self.submit(fn, job) for job in jobs]
        for future in concurrent.futures.as_completed(futures):
            on_done(jobs[futures.index(future)], future.result())
        return [future.result() for future in futures]

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()


def _compare_storage(store: cedstore.Store, scratch: Path) -> dict[str, Any]:
    """Write the store's records again, as a .ced file and as the dense float32 array it replaces.

    Both are written from memory (no teacher inference), without fsync, and deleted again.
    """
    ids = np.arange(store.num_samples)
    epochs = range(store.num_epochs)
    records = [store.topk(epoch, ids) for epoch in epochs]
    dense = np.stack([store.dense(epoch, ids)[0] for epoch in epochs])  # (E, N, C) float32
    ced_path, dense_path = scratch / "rewrite.ced", scratch / "dense_float32.npy"
    t0 = time.perf_counter()
    with cedstore.create(ced_path, num_classes=store.num_classes, k=store.k, num_samples=store.num_samples,
                         num_epochs=store.num_epochs, overwrite=True) as writer:
        for epoch, (values, indices, seeds) in zip(epochs, records):
            writer.write(epoch, ids, values=values, indices=indices, seeds=seeds)
    ced_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    np.save(dense_path, dense)
    dense_seconds = time.perf_counter() - t0
    result = {
        "records": store.num_epochs * store.num_samples, "num_classes": store.num_classes, "k": store.k,
        "ced_bytes": ced_path.stat().st_size, "ced_write_s": ced_seconds,
        "dense_float32_bytes": int(dense.nbytes), "dense_npy_bytes": dense_path.stat().st_size,
        "dense_write_s": dense_seconds,
        # The same E at the paper's scale: AS-20K, 527 classes, K = 20 (the dense array has no seeds).
        "as20k_ced_bytes": cedstore.storage_bytes(21155, 527, PAPER_K, store.num_epochs),
        "as20k_dense_float32_bytes": cedstore.storage_bytes(21155, 527, PAPER_K, store.num_epochs, method="fp32"),
    }
    ced_path.unlink()
    dense_path.unlink()
    return result


def demo(out: str | os.PathLike, config: DemoConfig | None = None) -> dict[str, Any]:
    """Run the demo into ``out`` and return the results (also written to ``out/results.json``).

    Args:
        out: output folder (created); holds data/, the teachers, the stores, results.json and
            results.png (and results_sweep.png with ``sweep_store_epochs``).
        config: sizes; the full demo by default.

    Returns:
        ``{"teachers": [{"name", "mAP"}], "ensemble_mAP", "students": {name: mean mAP over the
        pairing seeds}, "students_per_seed": {name: [mAP per seed]}, "curves": {name: [per seed
        [[epoch, mAP], ...]]}, "store_bytes", "storage", "seconds", "cpu_seconds", ...}``.

    Example:
        >>> results = demo("demo/", DemoConfig.quick())
        >>> results["students"]["consistent"]
    """
    config = config or DemoConfig()
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    recipe = config.recipe()
    torch.set_num_threads(config.threads)
    _log(f"demo: teachers on {config.num_teacher_clips} labelled clips, students on the first "
         f"{config.num_student_clips} of them (label-free), {config.num_eval} eval clips of {config.seconds} s, "
         f"{config.num_classes} classes, K={config.top_k()}, E={config.store_epochs}, pairing seeds "
         f"{list(config.student_seeds)}, {config.jobs} jobs at a time; recipe {recipe.to_json()}")
    data = out / "data"
    teacher_tsv, eval_tsv, names = synth.make_dataset(data, config.num_teacher_clips, config.num_eval,
                                                      config.seconds, config.num_classes, config.data_seed)
    student_tsv = _head_tsv(teacher_tsv, data / "student.tsv", config.num_student_clips)
    curve_tsv = _head_tsv(eval_tsv, data / "curve.tsv", config.num_curve_eval)
    common = {"config": config, "eval_tsv": str(eval_tsv), "curve_tsv": str(curve_tsv), "recipe": recipe,
              "class_names": names, "threads": config.threads}
    timings = {"data": time.perf_counter() - start}
    _log(f"[{timings['data']:5.0f} s] data written to {data}")

    # ---- teachers: supervised on the large set, fresh augmentation, one seed each. All at once, one
    # process each: the OS shares the cores evenly, where a pool of `jobs` would leave a core idle
    # while the last teacher trains alone.
    t0 = time.perf_counter()
    teacher_paths = [str(out / f"teacher{i + 1}.pt") for i in range(config.teachers)]
    jobs = [{**common, "train_tsv": str(teacher_tsv), "role": "teacher", "seed": 100 + i, "student_aug": "fresh",
             "save": path} for i, path in enumerate(teacher_paths)]
    stage = _Stage("teachers", len(jobs), start)
    runner = _Runner(config.teachers if config.jobs > 1 else 1)
    try:
        done = runner.map(_train_job, jobs, lambda job, r: stage.done(
            f"{Path(job['save']).stem} mAP {r['mAP']:.4f} ({r['seconds']:.0f} s)"))
    finally:
        runner.close()
    teacher_results = [{"name": Path(p).stem, "mAP": r["mAP"]} for p, r in zip(teacher_paths, done)]
    ensemble = Ensemble.from_checkpoints(teacher_paths)
    frontend = ensemble.members[0].front_end
    ensemble_mAP = evaluate(lambda waves: ensemble(frontend(waves)), _dataset(str(eval_tsv), config.num_classes),
                            batch_size=128).mAP
    _DATASETS.clear()  # the eval set stays cached in the student processes, not here
    timings["teachers"] = time.perf_counter() - t0
    _log(f"[{time.perf_counter() - start:5.0f} s] ensemble of {config.teachers}: mAP {ensemble_mAP:.4f}")

    # ---- extraction on the students' clips and the students. The clean store (1 epoch) first; then
    # the augmented one (E epochs) in one process while the clean-store students train beside it
    # (one writer per store: ranks of a distributed extraction would each open it for writing);
    # the augmented-store students (and the optional E sweep) once it is written. Students are
    # paired: the same init and batch order per seed.
    t0 = time.perf_counter()
    extraction = {**common, "train_tsv": str(student_tsv), "teachers": teacher_paths}
    paths = {name: out / f"teacher_{name}.ced" for name in ("augmented", "clean")}
    for path in paths.values():
        if path.exists():
            path.unlink()  # a fresh extraction each run (extract resumes a matching file)
    student = {**common, "train_tsv": str(student_tsv), "role": "student"}
    jobs = [{**student, "seed": seed, "name": name, "student_aug": student_aug, "store": str(paths[store_name])}
            for store_name in ("clean", "augmented") for seed in config.student_seeds
            for name, (s, student_aug) in STUDENTS.items() if s == store_name]
    jobs += [{**student, "seed": seed, "name": f"E={epochs}", "student_aug": "store",
              "store": str(paths["augmented"]), "store_epochs": epochs}
             for seed in config.student_seeds for epochs in config.sweep_store_epochs if epochs != config.store_epochs]
    num_clean = sum(job["store"] == str(paths["clean"]) for job in jobs)
    stage = _Stage("extraction", 2, start)
    stores, extract_seconds = {}, {}

    def extracted(name: str, result: dict[str, Any]) -> None:
        stores[name] = cedstore.open(paths[name])
        extract_seconds[name] = result["seconds"]
        stage.done(f"{paths[name].name}: E={stores[name].num_epochs}, K={stores[name].k}, "
                   f"{stores[name].file_size} bytes, {result['records'] / result['seconds']:.0f} records/s")

    runner = _Runner(config.jobs)
    try:
        extracted("clean", runner.submit(_extract_job, {**extraction, "out": str(paths["clean"]), "epochs": 1,
                                                         "recipe": None}).result())
        augmented = runner.submit(_extract_job, {**extraction, "out": str(paths["augmented"]),
                                                  "epochs": config.store_epochs, "recipe": recipe})
        futures = [runner.submit(_train_job, job) for job in jobs[:num_clean]]
        extracted("augmented", augmented.result())
        storage = _compare_storage(stores["augmented"], out)
        timings["extract"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        futures += [runner.submit(_train_job, job) for job in jobs[num_clean:]]
        stage = _Stage("students", len(jobs), start)
        for future in concurrent.futures.as_completed(futures):
            job, r = jobs[futures.index(future)], future.result()
            stage.done(f"{job['name']} (seed {job['seed']}) mAP {r['mAP']:.4f}, train mAP {r['train_mAP']:.4f} "
                       f"({r['seconds']:.0f} s)")
        done = [future.result() for future in futures]
        timings["students"] = time.perf_counter() - t0
    finally:
        runner.close()
    for store in stores.values():
        store.close()

    by_name: dict[str, list[dict[str, Any]]] = {}
    for job, result in zip(jobs, done):
        by_name.setdefault(job["name"], []).append(result)
    per_seed = {name: [r["mAP"] for r in by_name[name]] for name in STUDENTS}
    results = {
        "teachers": teacher_results,
        "ensemble_mAP": ensemble_mAP,
        "students": {name: float(np.mean(values)) for name, values in per_seed.items()},
        "student_seeds": list(config.student_seeds),
        "students_per_seed": per_seed,
        "students_train_mAP_per_seed": {name: [r["train_mAP"] for r in by_name[name]] for name in STUDENTS},
        "curves": {name: [r["curve"] for r in by_name[name]] for name in STUDENTS},
        "store_bytes": stores["augmented"].file_size,
        "clean_store_bytes": stores["clean"].file_size,
        "storage": storage,
        "records_per_s": stores["augmented"].num_epochs * stores["augmented"].num_samples / extract_seconds["augmented"],
        "seconds": time.perf_counter() - start,
        "cpu_seconds": _cpu_seconds() - cpu_start,
        "timings": timings,
        "config": dataclasses.asdict(config),
        "recipe": json.loads(recipe.to_json()),
    }
    if config.sweep_store_epochs:
        results["store_epochs_sweep"] = {
            str(e): per_seed["consistent"] if e == config.store_epochs else [r["mAP"] for r in by_name[f"E={e}"]]
            for e in config.sweep_store_epochs}
        _plot_sweep(results, out / "results_sweep.png")
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    _plot(results, out / "results.png")
    _log(format_table(results))
    return results


def format_table(results: dict[str, Any]) -> str:
    """The results as a plain-text table: per pairing seed, mean and range (max - min)."""
    seeds = results.get("student_seeds", [0])
    header = ["model"] + [f"seed {s}" for s in seeds] + ["mean", "range"]
    rows = [[f"{t['name']} (supervised)", "", *[""] * (len(seeds) - 1), f"{t['mAP']:.4f}", ""]
            for t in results["teachers"]]
    rows.append(["ensemble", "", *[""] * (len(seeds) - 1), f"{results['ensemble_mAP']:.4f}", ""])

    def seed_row(label: str, values: list[float], sign: str = "") -> list[str]:
        cells = [f"{v:{sign}.4f}" for v in values]
        return [label, *cells, f"{np.mean(values):{sign}.4f}", f"{max(values) - min(values):.4f}"]

    per_seed = results["students_per_seed"]
    for name, values in per_seed.items():
        store_name, student_aug = STUDENTS[name]
        rows.append(seed_row(f"student {name} ({store_name} store, aug {student_aug})", values))
    for name in ("teacher_only", "student_only", "none"):
        diff = [a - b for a, b in zip(per_seed["consistent"], per_seed[name])]
        rows.append(seed_row(f"consistent - {name} (paired)", diff, "+"))
    for e, values in results.get("store_epochs_sweep", {}).items():
        rows.append(seed_row(f"consistent, first E'={e} stored epochs", values))
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    storage = results["storage"]
    lines.append(f"augmented store: {results['store_bytes']} bytes for {storage['records']} records (K={storage['k']}); "
                 f"dense float32: {storage['dense_float32_bytes']} bytes; write {storage['ced_write_s'] * 1e3:.1f} ms "
                 f"against np.save {storage['dense_write_s'] * 1e3:.1f} ms; total {results['seconds']:.0f} s wall, "
                 f"{results['cpu_seconds']:.0f} s CPU")
    return "\n".join(lines)


_COLORS = {"none": "#8d6e63", "student_only": "#ffa726", "teacher_only": "#42a5f5", "consistent": "#0d47a1"}


def _plot(results: dict[str, Any], path: Path) -> None:
    """Bars with per-seed points, the students' learning curves, and train vs eval mAP."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, (bars_ax, curve_ax, gap_ax) = plt.subplots(1, 3, figsize=(16, 4.8), dpi=100,
                                                    gridspec_kw={"width_ratios": [1.4, 1.2, 1.0]})
    teachers = results["teachers"]
    labels = [t["name"] for t in teachers] + ["ensemble"] + list(results["students"])
    values = [t["mAP"] for t in teachers] + [results["ensemble_mAP"]] + list(results["students"].values())
    colors = ["#bdbdbd"] * len(teachers) + ["#616161"] + [_COLORS[name] for name in results["students"]]
    drawn = bars_ax.bar(labels, values, color=colors)
    bars_ax.bar_label(drawn, fmt="%.3f", fontsize=8, label_type="center", color="white")
    seeds = results["student_seeds"]
    for i, name in enumerate(results["students"], start=len(teachers) + 1):
        points = results["students_per_seed"][name]
        bars_ax.scatter([i + (j - (len(points) - 1) / 2) * 0.12 for j in range(len(points))], points,
                        color="black", s=14, zorder=3, label="per pairing seed" if i == len(teachers) + 1 else None)
    all_values = values + [v for per in results["students_per_seed"].values() for v in per]
    bars_ax.set_ylim(max(0.0, min(all_values) - 0.1), min(1.0, max(all_values) + 0.05))
    bars_ax.set_ylabel("mAP (eval set)")
    bars_ax.set_title("teachers, ensemble, students (mean of seeds)")
    bars_ax.tick_params(axis="x", labelrotation=25)
    bars_ax.legend(loc="lower right", fontsize=8)

    styles = ["-", "--", ":", "-."]
    for name, per_seed in results["curves"].items():
        for j, curve in enumerate(per_seed):
            epochs, mAPs = zip(*curve)
            curve_ax.plot(epochs, mAPs, styles[j % len(styles)], color=_COLORS[name],
                          label=f"{name} (seed {seeds[j]})")
    curve_ax.set_xlabel("student epoch")
    curve_ax.set_ylabel(f"mAP (first {results['config']['num_curve_eval']} eval clips)")
    curve_ax.set_title("learning curves")
    curve_ax.legend(fontsize=7, ncol=2)

    names = list(results["students"])
    x = np.arange(len(names))
    train_mAP = [np.mean(results["students_train_mAP_per_seed"][n]) for n in names]
    gap_ax.bar(x - 0.2, train_mAP, 0.4, color="#e0e0e0", edgecolor="black", label="own training clips")
    gap_ax.bar(x + 0.2, [results["students"][n] for n in names], 0.4, color=[_COLORS[n] for n in names],
               label="eval set")
    gap_ax.set_xticks(x, names, rotation=25)
    gap_ax.set_ylim(max(0.0, min(results["students"].values()) - 0.1), min(1.0, max(train_mAP) + 0.1))
    gap_ax.set_ylabel("mAP against the labels (mean of seeds)")
    gap_ax.set_title("overfitting: training clips vs eval")
    gap_ax.legend(fontsize=8, loc="upper right")
    fig.suptitle(f"CED demo: teachers on {results['config']['num_teacher_clips']} clips, label-free students on "
                 f"{results['config']['num_student_clips']} of them (Table 3's four rows)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _plot_sweep(results: dict[str, Any], path: Path) -> None:
    """Consistent students against the number of stored epochs they cycle through."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    sweep = results["store_epochs_sweep"]
    epochs = [int(e) for e in sweep]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(epochs, [np.mean(v) for v in sweep.values()], "o-", color=_COLORS["consistent"], label="consistent (mean)")
    for e, values in zip(epochs, sweep.values()):
        ax.scatter([e] * len(values), values, color="black", s=12, zorder=3)
    for name in ("none", "teacher_only"):
        ax.axhline(results["students"][name], color=_COLORS[name], linestyle="--", label=f"{name} (mean)")
    ax.set_xscale("log")
    ax.set_xticks(epochs, [str(e) for e in epochs])
    ax.set_xlabel("stored augmentation epochs E' the consistent student cycles through")
    ax.set_ylabel("mAP (eval set)")
    ax.set_title("CED demo: consistent student against E'")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
