"""Student training (ced_train.train): consistent inputs, store epochs, join, schedule, resume."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from train_helpers import NUM_CLASSES, RECIPE, config, load, make_store, tiny_model, write_clips

import cedstore
from ced_train import models
from ced_train import optim as optim_module
from ced_train.rng import fresh_seeds, seed_for
from ced_train.evaluate import evaluate
from ced_train.extract import extract
from ced_train.optim import create_optimizer, get_lr
from ced_train.train import TrainConfig, student_inputs, train


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    folder = tmp_path_factory.mktemp("train")
    tsv = write_clips(folder, 10)
    dataset = load(tsv)
    return {
        "folder": folder,
        "tsv": tsv,
        "dataset": dataset,
        "store": make_store(folder / "aug.ced", dataset, store_epochs=2),
        "clean": make_store(folder / "clean.ced", dataset, store_epochs=1, recipe=None),
    }


class _Recorder:
    """A store that records every dense() call: (epoch, sample ids)."""

    def __init__(self, store):
        self._store, self.calls = store, []

    def dense(self, epoch, ids, **kwargs):
        self.calls.append((epoch, np.asarray(ids).copy()))
        return self._store.dense(epoch, ids, **kwargs)

    def __getattr__(self, name):
        return getattr(self._store, name)


# ---- the heart of CED: the student sees exactly the teacher's input ---------------------------


def test_student_input_in_training_equals_teacher_input_bit_exact(work, tmp_path):
    dataset = work["dataset"]
    seen_by_teacher = {}  # (epoch, sample) -> teacher input (F, T)

    class RecordingTeacher(torch.nn.Module):
        num_classes = NUM_CLASSES

        def forward(self, logmel):
            return torch.full((logmel.shape[0], NUM_CLASSES), 0.5)

    teacher = RecordingTeacher()
    calls = []
    teacher.register_forward_hook(lambda m, args, out: calls.append(args[0].clone()))
    path = tmp_path / "t.ced"
    extract(teacher, dataset, path, store_epochs=2, k=2, recipe=RECIPE, batch_size=4, progress=False)
    flat = torch.cat(calls)  # batches are global: rows are records e * N + i in order
    for g, x in enumerate(flat):
        seen_by_teacher[divmod(g, len(dataset))] = x

    student = tiny_model()
    seen_by_student = []
    forward = student.forward_spectrogram
    student.forward_spectrogram = lambda x: (seen_by_student.append(x.clone()), forward(x))[1]
    store = _Recorder(cedstore.open(path))
    train(student, dataset, config(epochs=2, batch_size=3), store)  # other batches than extraction

    assert len(seen_by_student) == len(store.calls) == 2 * math.ceil(len(dataset) / 3)
    compared = 0
    for (epoch, ids), x in zip(store.calls, seen_by_student):
        for row, sample in enumerate(ids):
            assert torch.equal(x[row], seen_by_teacher[(epoch, int(sample))])
            compared += 1
    assert compared == 2 * len(dataset)
    # and the augmentation was real: the same clip differs between the two stored epochs
    assert not torch.equal(seen_by_teacher[(0, 0)], seen_by_teacher[(1, 0)])


def test_student_inputs_matches_extraction_function(work):
    from ced_train.augment import augmented_logmel
    from ced_train.frontend import log_mel_frontend

    dataset = work["dataset"]
    waves = torch.from_numpy(dataset.load_batch(range(4)))
    seeds = seed_for(7, 3, np.arange(4))
    mine = student_inputs(tiny_model(), waves, seeds, RECIPE)
    theirs = augmented_logmel(waves, seeds, RECIPE, log_mel_frontend())
    assert torch.equal(mine, theirs)
    assert torch.equal(student_inputs(tiny_model(), waves, seeds, None), log_mel_frontend()(waves))


# ---- epochs, order and seeds ------------------------------------------------------------------


def test_training_epoch_e_reads_store_epoch_e_mod_E(work):
    store = _Recorder(cedstore.open(work["store"]))
    train(tiny_model(), work["dataset"], config(epochs=5, batch_size=5), store)
    assert [epoch for epoch, _ in store.calls] == [0, 0, 1, 1, 0, 0, 1, 1, 0, 0]
    # uniform sampling: each epoch covers every record once, in a seeded order
    for e in range(5):
        ids = np.concatenate([ids for _, ids in store.calls[2 * e : 2 * e + 2]])
        assert sorted(ids.tolist()) == list(range(10))


def test_fresh_seeds_differ_per_epoch_and_from_the_stored_ones():
    a, b = fresh_seeds(100, 0, 0), fresh_seeds(100, 0, 1)
    assert a.dtype == np.int32 and np.array_equal(a, fresh_seeds(100, 0, 0))
    assert (a != b).mean() > 0.9 and (a != seed_for(0, 0, np.arange(100))).mean() > 0.9


# ---- join and label space ---------------------------------------------------------------------


def test_missing_keys_are_refused_or_skipped_and_counted(work, tmp_path, capsys):
    bigger = load(write_clips(tmp_path, 12))  # clip010, clip011 have no record
    store = cedstore.open(work["store"])
    with pytest.raises(ValueError, match=r"2 of 12 dataset keys have no record in .*aug\.ced .*"
                                         r"'clip010\.wav#0-8000'.*allow missing keys to use the others"):
        train(tiny_model(), bigger, config(), store)
    recorder = _Recorder(store)
    train(tiny_model(), bigger, config(allow_missing=True, verbose=True), recorder)
    out = capsys.readouterr().out
    assert "10 of 12 dataset keys have records; 2 missing in the store" in out
    assert "skipping 2 dataset keys without a record (missing keys allowed)" in out
    assert sorted(np.concatenate([ids for _, ids in recorder.calls]).tolist()) == list(range(10))


def test_class_count_mismatch_is_refused(work):
    with pytest.raises(ValueError, match=r"the store has 5 classes but the student has 7; "
                                         r"train a student with 5 outputs"):
        train(tiny_model(num_classes=7), work["dataset"], config(), cedstore.open(work["store"]))


def test_label_names_mismatch_is_refused(work):
    with pytest.raises(ValueError, match="label space differs"):
        train(tiny_model(), work["dataset"], config(), cedstore.open(work["store"]),
              class_names=["a", "b", "c", "d", "e"])


def test_store_aug_needs_a_recipe_in_the_store(work):
    with pytest.raises(ValueError, match=r"has no augmentation recipe .*student augmentation 'store' needs one"):
        train(tiny_model(), work["dataset"], config(student_aug="store"), cedstore.open(work["clean"]))


def test_fresh_aug_on_a_clean_store_uses_other_seeds(work):
    store = _Recorder(cedstore.open(work["clean"]))
    student = tiny_model()
    seen = []
    forward = student.forward_spectrogram
    student.forward_spectrogram = lambda x: (seen.append(x.clone()), forward(x))[1]
    train(student, work["dataset"], config(student_aug="fresh", batch_size=10), store, recipe=RECIPE)
    (_, ids), x = store.calls[0], seen[0]
    waves = torch.from_numpy(work["dataset"].load_batch(ids))
    expected = student_inputs(student, waves, fresh_seeds(10, 0, 0)[ids], RECIPE)
    assert torch.equal(x, expected)
    assert not torch.equal(x, student_inputs(student, waves, None, None))


# ---- the run: checkpoints, metrics, evaluation, resume ----------------------------------------


def test_two_steps_label_free_then_evaluate(work, tmp_path):
    out = tmp_path / "run"
    result = train(tiny_model(), work["dataset"], config(epochs=2, batch_size=5, optimizer="adam8bit",
                                                         out=str(out)),
                   cedstore.open(work["store"]), eval_dataset=work["dataset"])
    assert result.steps == 4 and result.optimizer == "adam8bit"
    assert 0 <= result.best_mAP <= 1 and result.final_mAP == result.history[-1]["mAP"]
    with open(out / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["epoch"] for r in rows] == ["1", "2"] and list(rows[0]) == ["epoch", "step", "loss", "lr", "mAP", "seconds"]
    best = models.from_checkpoint(out / "best.pt")
    assert evaluate(best, work["dataset"]).mAP == pytest.approx(result.best_mAP)
    checkpoint = torch.load(out / "last.pt", weights_only=True)
    assert checkpoint["epoch"] == 2 and checkpoint["step"] == 4
    assert checkpoint["train_config"]["optimizer"] == "adam8bit"
    assert set(checkpoint) >= {"model", "optimizer", "scaler", "config", "rng", "history"}


def test_resume_continues_identically(work, tmp_path):
    store = cedstore.open(work["store"])
    run = dict(epochs=3, batch_size=4, mixup_alpha=0.5, student_aug="store")
    full_model = tiny_model()
    full = train(full_model, work["dataset"], config(**run, out=str(tmp_path / "full")), store)

    class Stop(Exception):
        pass

    dataset = load(work["tsv"])
    load_batch, calls = dataset.load_batch, []

    def stop_in_epoch_two(ids):  # 3 steps per epoch: die in the middle of the second epoch
        calls.append(1)
        if len(calls) == 5:
            raise Stop
        return load_batch(ids)

    dataset.load_batch = stop_in_epoch_two
    with pytest.raises(Stop):
        train(tiny_model(), dataset, config(**run, out=str(tmp_path / "cut")), store)
    dataset.load_batch = load_batch
    with pytest.raises(FileExistsError, match=r"already holds a training run \(last.pt\); resume it or choose another output folder"):
        train(tiny_model(), dataset, config(**run, out=str(tmp_path / "cut")), store)
    resumed_model = tiny_model(seed=5)  # the checkpoint's weights replace these
    resumed = train(resumed_model, dataset, config(**run, out=str(tmp_path / "cut"), resume=True), store)

    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]
    assert [h["lr"] for h in resumed.history] == [h["lr"] for h in full.history]
    assert resumed.steps == full.steps == 9
    for key, value in full_model.state_dict().items():
        assert torch.equal(value, resumed_model.state_dict()[key]), key


def test_resume_refuses_changed_settings_and_missing_checkpoint(work, tmp_path):
    store = cedstore.open(work["store"])
    train(tiny_model(), work["dataset"], config(out=str(tmp_path)), store)
    with pytest.raises(ValueError, match=r"trained with different settings \(lr: 0.001 -> 0.01\)"):
        train(tiny_model(), work["dataset"], config(out=str(tmp_path), resume=True, lr=1e-2), store)
    with pytest.raises(FileNotFoundError, match="cannot resume: no checkpoint"):
        train(tiny_model(), work["dataset"], config(out=str(tmp_path / "none"), resume=True), store)


def test_supervised_mode_learns_from_labels(work):
    model = tiny_model()
    before = evaluate(model, work["dataset"]).mAP
    result = train(model, work["dataset"], config(supervised=True, student_aug="fresh", epochs=15, lr=3e-3,
                                                  batch_size=5),
                   eval_dataset=work["dataset"], recipe=RECIPE)
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert result.final_mAP > before


def test_generic_student_module(work):
    """Any nn.Module works: no front_end -> default frontend, no forward_spectrogram -> __call__."""

    class Pool(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(64, NUM_CLASSES)

        def forward(self, logmel):  # (B, F, T) -> (B, C)
            return self.linear(logmel.mean(-1) / 50)

    result = train(Pool(), work["dataset"], config(epochs=2), cedstore.open(work["store"]))
    assert result.steps == 6 and math.isfinite(result.history[-1]["loss"])


# ---- schedule, optimizer, config --------------------------------------------------------------


def test_lr_schedule_warmup_peak_cosine_floor():
    lr = lambda step: get_lr(step, peak_lr=1e-3, warmup_steps=10, total_steps=111)  # noqa: E731
    assert lr(0) == pytest.approx(1e-4) and lr(4) == pytest.approx(5e-4)
    assert lr(9) == pytest.approx(1e-3)  # the peak ends the warm-up
    assert lr(10) == pytest.approx(1e-3)
    assert lr(60) == pytest.approx(1e-4 + 0.5 * 9e-4)  # half way down the cosine
    assert lr(110) == pytest.approx(1e-4) and lr(500) == pytest.approx(1e-4)  # 10 % floor, held
    values = [lr(s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert get_lr(0, peak_lr=1.0, warmup_steps=0, total_steps=1) == pytest.approx(0.1)


def test_adam8bit_falls_back_to_adamw_with_a_warning(monkeypatch):
    def broken(*args):
        raise ImportError("no bitsandbytes here")

    monkeypatch.setattr(optim_module, "_adam8bit", broken)
    with pytest.warns(UserWarning, match=r"8-bit Adam is unavailable \(ImportError: no bitsandbytes here\)"):
        optimizer, name = create_optimizer(torch.nn.Linear(2, 2).parameters(), "adam8bit", lr=1e-3)
    assert name == "adamw" and isinstance(optimizer, torch.optim.AdamW)


def test_adam8bit_runs_on_cpu():
    layer = torch.nn.Linear(128, 64)
    optimizer, name = create_optimizer(layer.parameters(), "adam8bit", lr=1e-2)
    assert name == "adam8bit" and type(optimizer).__name__ == "Adam8bit"
    x, y = torch.randn(32, 128), torch.randn(32, 64)
    losses = []
    for _ in range(20):
        loss = torch.nn.functional.mse_loss(layer(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
    assert optimizer.state[layer.weight]["state1"].dtype == torch.uint8  # 8-bit state indeed


@pytest.mark.parametrize(("overrides", "message"), [
    (dict(student_aug="teacher"), "student_aug must be one of store, fresh, none, got 'teacher'"),
    (dict(amp="fp8"), "amp must be one of none, bf16, fp16"),
    (dict(optimizer="sgd"), "optimizer must be one of adam8bit, adamw"),
    (dict(epochs=0), "epochs must be at least 1, got 0"),
    (dict(lr=0.0), "need lr > 0"),
    (dict(mixup_alpha=-1.0), "mixup_alpha must be >= 0"),
    (dict(supervised=True), "supervised training uses 'fresh' or 'none'"),
    (dict(resume=True), "resume needs out"),
])
def test_config_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**overrides)


def test_torchrun_two_processes(work, tmp_path):
    """DDP on CPU (gloo): each rank takes half of every epoch; only rank 0 prints and writes."""
    root = Path(__file__).resolve().parents[2]
    command = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node", "2",
               "-m", "ced_train", "train", "--store", str(work["store"]), "--data", str(work["tsv"]),
               "--eval-data", str(work["tsv"]), "--epochs", "2", "--out", str(tmp_path), "--arch", "ced_custom",
               "--embed-dim", "32", "--depth", "1", "--num-heads", "2", "--batch-size", "2",
               "--warmup-steps", "1", "--optimizer", "adamw"]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "10 examples, 3 steps/epoch x 2 epochs" in done.stdout and "2 process(es)" in done.stdout
    assert done.stdout.count("epoch 2/2 step 6") == 1  # rank 0 only
    checkpoint = torch.load(tmp_path / "last.pt", weights_only=True)
    assert checkpoint["step"] == 6 and math.isfinite(checkpoint["history"][-1]["loss"])


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_modes_run(work, amp):
    """Autocast (and the fp16 GradScaler) wired in; on CPU here, on CUDA in real runs."""
    result = train(tiny_model(), work["dataset"], config(amp=amp), cedstore.open(work["store"]))
    assert math.isfinite(result.history[-1]["loss"])


# ---- real-world failures: non-finite losses, resumes on other inputs, unfinished stores -------


class _NaNAt:
    """``dataset`` whose chunk ``bad`` loads as NaN (past any check at decoding)."""

    def __init__(self, dataset, bad):
        self._dataset, self.bad = dataset, bad

    def load_batch(self, ids):
        waves = self._dataset.load_batch(ids)
        waves[np.asarray(ids) == self.bad] = np.nan
        return waves

    def __len__(self):
        return len(self._dataset)

    def __getattr__(self, name):
        return getattr(self._dataset, name)


def test_a_non_finite_input_stops_training_before_a_checkpoint_naming_its_key(work, tmp_path):
    dataset = _NaNAt(work["dataset"], bad=3)
    with pytest.raises(ValueError, match=r"^epoch 1/2, step \d: the training loss is nan: 1 of the batch's 4 "
                                         r"examples have a non-finite input or targets \(clip003\.wav#0-8000\); "
                                         r"training stopped before saving this epoch$"):
        train(tiny_model(), dataset, config(epochs=2, out=str(tmp_path), student_aug="none"),
              cedstore.open(work["store"]))
    assert not (tmp_path / "last.pt").exists() and not (tmp_path / "metrics.csv").exists()


def test_a_diverging_model_stops_training_naming_the_step(work, tmp_path):
    class Exploding(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(64, NUM_CLASSES)
            with torch.no_grad():
                self.linear.weight.fill_(float("inf"))

        def forward(self, logmel):
            return self.linear(logmel.mean(-1))  # inf - inf: NaN logits

    with pytest.raises(ValueError, match=r"^epoch 1/1, step 1: the training loss is nan although the batch's "
                                         r"inputs and targets are finite \(clip\d{3}\.wav#0-8000, .*\): training "
                                         r"diverged; lower the learning rate"):
        train(Exploding(), work["dataset"], config(out=str(tmp_path)), cedstore.open(work["store"]))
    assert not (tmp_path / "last.pt").exists()


def test_resume_refuses_another_store_or_other_data_naming_them(work, tmp_path):
    out = str(tmp_path / "run")
    train(tiny_model(), work["dataset"], config(out=out), cedstore.open(work["store"]))
    other = make_store(tmp_path / "other.ced", work["dataset"], store_epochs=3)  # another extraction
    with pytest.raises(ValueError, match=r"cannot resume .*last\.pt: it was trained on other inputs \(store: "
                                         r"\S+aug\.ced \(SHA-256 [0-9a-f]{12}…\) -> \S+other\.ced \(SHA-256 "
                                         r"[0-9a-f]{12}…\)\); resume with the run's store and data"):
        train(tiny_model(), work["dataset"], config(out=out, resume=True), cedstore.open(other))
    relabelled = load(write_clips(tmp_path / "relabelled", 10, seed=1))  # the same keys, other labels
    with pytest.raises(ValueError, match=r"other inputs \(data: \S+train0/train\.tsv \(SHA-256 [0-9a-f]{12}…\) "
                                         r"-> \S+relabelled/train\.tsv \(SHA-256 [0-9a-f]{12}…\)\)"):
        train(tiny_model(), relabelled, config(out=out, resume=True), cedstore.open(work["store"]))
    moved = tmp_path / "moved.ced"  # the same store at another path is the same input
    moved.write_bytes(Path(work["store"]).read_bytes())
    assert train(tiny_model(), work["dataset"], config(out=out, resume=True), cedstore.open(moved)).steps == 3


@pytest.mark.parametrize(("content", "message"), [
    ("model-only", r"last\.pt: not a training run's checkpoint \(a model only\?\): it has no optimizer, scaler, "
                   r"epoch, step, best_mAP, history, train_config, rng; resume needs the last\.pt that training "
                   r"writes"),
    ("list", r"last\.pt: not a training run's checkpoint: expected the dict that training writes \(model, "
             r"optimizer, epoch, \.\.\.\), found list"),
    ("damaged", r"last\.pt: not a readable PyTorch checkpoint \(damaged, truncated, or another kind of file"),
    ("another-model", r"cannot resume \S+last\.pt: it trained another model \(embed_dim: 32 -> 64\)"),
])
def test_resume_refuses_a_foreign_last_pt_in_one_line(work, tmp_path, content, message):
    store = cedstore.open(work["store"])
    path = tmp_path / "last.pt"
    if content == "model-only":
        models.save_checkpoint(tiny_model(), path)
    elif content == "list":
        torch.save([1, 2], path)
    elif content == "damaged":
        train(tiny_model(), work["dataset"], config(out=str(tmp_path)), store)
        path.write_bytes(path.read_bytes()[:500])
    else:
        train(tiny_model(), work["dataset"], config(out=str(tmp_path)), store)
    student = models.create("ced_custom", num_classes=NUM_CLASSES, embed_dim=64, depth=1, num_heads=2) \
        if content == "another-model" else tiny_model()
    with pytest.raises(ValueError, match=message) as error:
        train(student, work["dataset"], config(out=str(tmp_path), resume=True, epochs=2), store)
    assert "\n" not in str(error.value)


def _partial_copy(store_path: Path, path: Path, written: dict[int, int]) -> Path:
    """A copy of the store at ``store_path`` with only the first ``written[e]`` records of epoch e."""
    full = cedstore.open(store_path)
    metadata = {key: value for key, value in full.metadata.items() if key != "writer"}
    with cedstore.create(path, num_classes=full.num_classes, k=full.k, num_samples=full.num_samples,
                         num_epochs=full.num_epochs, keys=full.keys, metadata=metadata) as writer:
        for epoch, count in written.items():
            values, indices, seeds = full.topk(epoch, np.arange(count))
            writer.write(epoch, np.arange(count), values=values, indices=indices, seeds=seeds)
    return path


def test_an_unfinished_store_is_refused_before_the_first_step(work, tmp_path):
    partial = _partial_copy(work["store"], tmp_path / "partial.ced", {0: 10, 1: 6})
    dataset = load(work["tsv"])
    load_batch, calls = dataset.load_batch, []
    dataset.load_batch = lambda ids: (calls.append(ids), load_batch(ids))[1]
    with pytest.raises(ValueError, match=r"partial\.ced: epoch 1 of the store \(0-based, of 2\) has 4 of the 10 "
                                         r"records this run reads unwritten \(e\.g\. \['clip006\.wav#0-8000', "
                                         r"'clip007\.wav#0-8000', 'clip008\.wav#0-8000'\]\): the extraction is "
                                         r"unfinished; run it again"):
        train(tiny_model(), dataset, config(epochs=2), cedstore.open(partial))
    assert calls == []  # refused before loading anything
    assert train(tiny_model(), dataset, config(epochs=1), cedstore.open(partial)).steps == 3  # epoch 0 is complete


def test_training_from_a_store_imported_from_the_original_ced(work, tmp_path):
    from original_logits import imported_store

    store = cedstore.open(imported_store(tmp_path, [f"clip{i:03d}.wav" for i in range(10)]))
    assert set(store.keys) == set(work["dataset"].keys)
    with pytest.raises(ValueError, match=r"its augmentation recipe is 'ced-original' .* use student "
                                         r"augmentation 'none' or 'fresh'"):
        train(tiny_model(), work["dataset"], config(student_aug="store"), store)
    for student_aug in ("fresh", "none"):
        result = train(tiny_model(), work["dataset"], config(student_aug=student_aug, epochs=2), store)
        assert result.steps == 6 and math.isfinite(result.history[-1]["loss"])
