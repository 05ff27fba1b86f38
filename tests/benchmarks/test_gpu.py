"""benchmarks/gpu.py: skips cleanly without CUDA; its CPU smoke run goes through every code path."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks.gpu", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present: the script would measure")
def test_without_cuda_it_says_why_and_exits_0(tmp_path):
    done = _run("--out", str(tmp_path / "gpu.json"))
    assert done.returncode == 0, done.stderr
    assert "no CUDA device (torch.cuda.is_available() is False); nothing to measure" in done.stdout
    assert not (tmp_path / "gpu.json").exists()


def test_smoke_run_exercises_every_part(tmp_path):
    out = tmp_path / "gpu.json"
    done = _run("--smoke", "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    checks = report["checks"]
    assert checks["frontend_ok"] and checks["augment_wave_bit_identical"] and checks["augment_spec_bit_identical"]
    assert checks["bf16_ok"]
    modes = {(r["amp"], r["attention"], r["compiled"]) for r in report["train"]}
    assert modes == {("none", "sdpa", False), ("bf16", "sdpa", False), ("bf16", "explicit", False),
                     ("bf16", "sdpa", True)}
    for row in report["train"] + report["extract"]:
        assert "error" not in row and "skipped" not in row, row
    assert all(r["clips_per_s"] > 0 for r in report["train"])
    assert all(r["records_per_s"] > 0 for r in report["extract"])
    assert report["extract_end_to_end"]["records"] == 16
    assert report["decode"]["records_per_s"] > 0
    assert report["elapsed_s"] < report["budget_s"]
