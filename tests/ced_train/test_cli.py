"""The ced-train command: train / evaluate / tag end to end, one-line errors and exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from train_helpers import NUM_CLASSES, load, make_store, tiny_model, write_clips

from ced_train import models
from ced_train.cli import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    tsv = write_clips(folder, 8)
    store = make_store(folder / "t.ced", load(tsv), epochs=2)
    return folder, tsv, store


def _error(capsys, argv, status=1) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == status
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ced-train: error: "), captured.err
    assert "Traceback" not in captured.err
    return lines[0]


TINY = ["--model", "ced_custom", "--embed-dim", "32", "--depth", "1", "--num-heads", "2",
        "--batch-size", "4", "--warmup-steps", "1", "--optimizer", "adamw", "--quiet"]


def test_train_evaluate_tag(work, tmp_path, capsys):
    folder, tsv, store = work
    out = tmp_path / "run"
    assert main(["train", "--store", str(store), "--data", str(tsv), "--eval", str(tsv), "--epochs", "2",
                 "--out", str(out), *TINY]) == 0
    assert {"metrics.csv", "last.pt", "best.pt"} <= {p.name for p in out.iterdir()}
    assert models.from_checkpoint(out / "best.pt").config.num_classes == NUM_CLASSES
    capsys.readouterr()

    per_class = tmp_path / "ap.csv"
    assert main(["evaluate", "--model", str(out / "best.pt"), "--data", str(tsv),
                 "--per-class-csv", str(per_class)]) == 0
    assert capsys.readouterr().out.startswith("mAP 0.")
    assert per_class.read_text().splitlines()[0] == "index,name,ap"

    assert main(["tag", str(folder / "clip000.wav"), "--model", str(out / "best.pt"), "--top", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and "class_" in lines[0]

    # --resume after the run is complete: nothing left to do, same files
    assert main(["train", "--store", str(store), "--data", str(tsv), "--epochs", "2", "--out", str(out),
                 "--resume", *TINY]) == 0


def test_supervised_train(work, tmp_path):
    _, tsv, _ = work
    assert main(["train", "--supervised", "--data", str(tsv), "--epochs", "1", "--mixup-alpha", "0.5",
                 "--num-classes", str(NUM_CLASSES), "--out", str(tmp_path), *TINY]) == 0
    assert (tmp_path / "last.pt").exists()


def test_errors_are_one_line(work, tmp_path, capsys):
    folder, tsv, store = work
    line = _error(capsys, ["train", "--store", str(tmp_path / "nope.ced"), "--data", str(tsv),
                           "--out", str(tmp_path / "o"), *TINY])
    assert "nope.ced" in line
    line = _error(capsys, ["train", "--data", str(tsv), "--out", str(tmp_path / "o"), *TINY])
    assert "label-free training needs --store (or --supervised" in line
    line = _error(capsys, ["train", "--store", str(store), "--data", str(folder / "missing.tsv"),
                           "--out", str(tmp_path / "o"), *TINY])
    assert "TSV file not found" in line
    line = _error(capsys, ["train", "--store", str(store), "--data", str(tsv), "--out", str(tmp_path / "o"),
                           "--epochs", "0", *TINY])
    assert "epochs must be at least 1" in line
    (tmp_path / "junk.ced").write_bytes(b"not a store" * 20)
    line = _error(capsys, ["train", "--store", str(tmp_path / "junk.ced"), "--data", str(tsv),
                           "--out", str(tmp_path / "o"), *TINY])
    assert "junk.ced" in line
    clean = make_store(tmp_path / "clean.ced", load(tsv), epochs=1, recipe=None)
    line = _error(capsys, ["train", "--store", str(clean), "--data", str(tsv), "--out", str(tmp_path / "o"),
                           *TINY])
    assert "has no augmentation recipe" in line


def test_model_errors_are_one_line(work, tmp_path, capsys):
    folder, tsv, store = work
    line = _error(capsys, ["tag", str(folder / "clip000.wav")])
    assert "tag needs a model checkpoint: pass --model" in line and "nothing is downloaded" in line
    line = _error(capsys, ["evaluate", "--model", str(tmp_path / "none.pt"), "--data", str(tsv)])
    assert "none.pt" in line
    # a checkpoint that does not fit its config: a multi-line ValueError, printed on one line
    model = tiny_model()
    models.save_checkpoint(model, tmp_path / "m.pt")
    import torch

    checkpoint = torch.load(tmp_path / "m.pt", weights_only=True)
    checkpoint["config"]["depth"] = 2
    torch.save(checkpoint, tmp_path / "bad.pt")
    line = _error(capsys, ["tag", str(folder / "clip000.wav"), "--model", str(tmp_path / "bad.pt")])
    assert "missing keys" in line


def test_usage_error_exits_2(capsys):
    line = _error(capsys, ["train", "--student-aug", "sometimes"], status=2)
    assert "invalid choice" in line
    _error(capsys, ["frobnicate"], status=2)


def test_python_dash_m_entry_point(tmp_path):
    result = subprocess.run([sys.executable, "-m", "ced_train", "tag", "x.wav"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("ced-train: error: tag needs a model checkpoint")
    help_text = subprocess.run([sys.executable, "-m", "ced_train", "--help"], cwd=ROOT, capture_output=True,
                               text=True, timeout=120).stdout
    for command in ("extract", "check-store", "train", "evaluate", "tag", "demo"):
        assert command in help_text
