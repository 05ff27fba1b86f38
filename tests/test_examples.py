"""The examples in examples/ run, and show what they claim (issue 8 item 7)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_vision_kd_replays_the_augmentation_and_the_student_learns(tmp_path):
    # As a user runs it: a script whose DataLoader starts worker processes.
    out = subprocess.run([sys.executable, "-W", "error", str(EXAMPLES / "vision_kd.py"), "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "replayed augmentation reproduces the stored top-10: True"
    kl = [float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith("epoch ")]
    assert len(kl) == 8 and kl[-1] < 0.8 * kl[0]
    assert "epoch 5 (stored epoch 1)" in out.stdout
    import cedstore
    store = cedstore.open(tmp_path / "vision.ced")
    store.verify()
    assert store.metadata["temperature"] == 2.0 and store.num_epochs == 4


def test_token_kd_finds_a_documents_records_and_the_loss_falls(tmp_path):
    example = _load("token_kd")
    result = example.main(["--out", str(tmp_path), "--epochs", "3"])
    assert result["losses"][-1] < result["losses"][0]
    import cedstore
    store = cedstore.open(tmp_path / "tokens.ced")
    ids = example.document_records(store, "doc3")
    assert [store.keys[i] for i in ids] == [f"doc3#{p}" for p in range(41)]
    np.testing.assert_array_equal(ids, result["doc3_ids"])
    assert store.num_classes == 50_257 and store.k == 20  # GPT-2: the wide layout, int32 class indices
    assert store.index_dtype == np.int32 and store.record_size == 124
