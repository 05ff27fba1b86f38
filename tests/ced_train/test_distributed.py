"""Distributed extraction under torchrun, and the ced_train.distributed helpers."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import cedstore
from ced_train import distributed, models
from ced_train.manifest import write_tsv

ROOT = Path(__file__).resolve().parents[2]
TORCHRUN = Path(sys.executable).with_name("torchrun")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("dist")
    rng = np.random.default_rng(0)
    names = []
    for i in range(7):  # 7 clips x 2 epochs = 14 records = 5 batches of 3: uneven over 2 ranks
        wave = (0.2 * rng.standard_normal(8000 + 1000 * i)).astype(np.float32)
        sf.write(str(folder / f"c{i}.wav"), wave, 16000, subtype="FLOAT")
        names.append(f"c{i}.wav")
    write_tsv(folder / "train.tsv", names)
    for name, seed in (("a.pt", 0), ("b.pt", 1)):
        torch.manual_seed(seed)
        model = models.create("ced_custom", num_classes=5, embed_dim=32, depth=1, num_heads=2)
        models.save_checkpoint(model, folder / name)
    return folder


def extract_command(workdir: Path, out: Path) -> list[str]:
    return ["-m", "ced_train", "extract", "--teacher", str(workdir / "a.pt"), "--teacher",
            str(workdir / "b.pt"), "--data", str(workdir / "train.tsv"), "--store-epochs", "2", "--k", "3",
            "--store", str(out), "--batch-size", "3", "--chunk-seconds", "1", "--threads", "1", "--quiet"]


def run(command: list[str]) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def torchrun(workdir: Path, out: Path) -> None:
    run([str(TORCHRUN), "--standalone", "--nproc_per_node", "2"] + extract_command(workdir, out))


@pytest.fixture(scope="module")
def single(workdir) -> Path:
    out = workdir / "single.ced"
    run([sys.executable] + extract_command(workdir, out))
    return out


def test_two_processes_write_the_same_bytes_as_one(workdir, single, tmp_path):
    out = tmp_path / "two.ced"
    torchrun(workdir, out)
    with cedstore.open(out) as store:
        store.verify()
        assert store.info()["sealed"]
    assert out.read_bytes() == single.read_bytes()
    assert not (tmp_path / "two.ced.part").exists()


def test_two_processes_finish_a_half_written_store(workdir, single, tmp_path):
    out = _half_written_copy(single, tmp_path / "half.ced")  # an interrupted run
    with cedstore.open(out) as store:
        assert [int(store.written(e).sum()) for e in range(2)] == [4, 6]
    torchrun(workdir, out)
    assert out.read_bytes() == single.read_bytes()


def test_setup_without_torchrun_is_one_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    info = distributed.setup("cpu")
    assert info == distributed.DistInfo(0, 1, 0, torch.device("cpu")) and info.is_main
    assert not distributed.is_distributed()
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}
    assert distributed.gather_object({"a": 1}) == [{"a": 1}]
    distributed.barrier()
    distributed.cleanup()


def test_setup_needs_a_rank_with_a_world_size(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(ValueError, match="WORLD_SIZE=2 is set but RANK is not; start with torchrun"):
        distributed.setup("cpu")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match="expected 0 <= RANK < WORLD_SIZE=2, got RANK=2"):
        distributed.setup("cpu")


def test_a_failing_rank_is_torchruns_root_cause_and_the_others_say_why_they_stop(workdir, tmp_path):
    """One rank reads a clip with a NaN sample: its error is torchrun's "Root Cause", and the other
    rank's lost connection is one line, not an internal error."""
    folder = tmp_path / "data"
    folder.mkdir()
    names = []
    for i in range(7):
        wave, _ = sf.read(str(workdir / f"c{i}.wav"), dtype="float32")
        if i == 6:
            wave[100] = np.nan
        sf.write(str(folder / f"c{i}.wav"), wave, 16000, subtype="FLOAT")
        names.append(f"c{i}.wav")
    write_tsv(folder / "train.tsv", names)
    command = [str(TORCHRUN), "--standalone", "--nproc_per_node", "2"] + extract_command(workdir, tmp_path / "s.ced")
    command[command.index("--data") + 1] = str(folder / "train.tsv")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    error = f"ced-train: error: {folder / 'c6.wav'}: non-finite audio (NaN or Inf) at sample 100"
    assert done.returncode != 0
    root_cause = output[output.index("Root Cause"):]
    assert f"traceback : {error}" in root_cause, output
    stopped = ("ced-train: error: stopped because another process of this torchrun job failed (its error is "
               "torchrun's root cause): RuntimeError: Connection closed by peer")
    errors = [line for line in output.splitlines() if line.startswith("ced-train: error: ")]
    assert errors[0].startswith(error) and set(errors[1:]) <= {stopped}, output  # (unless torchrun ends it first)
    assert "internal error" not in output and "pair.cc" not in output, output  # no gloo text of the lost peer


def _half_written_copy(single: Path, out: Path) -> Path:
    """``single`` with records 1, 4, 5 of epoch 0 and 6 of epoch 1 unwritten and unsealed."""
    data = bytearray(single.read_bytes())
    epoch_table, records = struct.unpack_from("<Q", data, 80)[0], struct.unpack_from("<Q", data, 96)[0]
    record_size, num_samples = 4 * 3 + 4, 7
    for epoch, sample in [(0, 1), (0, 4), (0, 5), (1, 6)]:
        start = records + (epoch * num_samples + sample) * record_size
        data[start : start + record_size] = b"\xff" * record_size
    data[epoch_table : epoch_table + 16] = bytes(16)
    out.write_bytes(bytes(data))
    return out


@pytest.mark.parametrize(("batch_size", "threads"), [("5", "1"), ("1", "2"), ("2", "2")])
def test_resuming_with_another_batch_size_or_thread_count_writes_the_same_bytes(workdir, single, tmp_path,
                                                                              batch_size, threads):
    """What README promises: a resumed extraction may use other --batch-size / --threads (each
    batch holds chunks of one length, so a record depends on its chunk, seed and teacher only)."""
    out = _half_written_copy(single, tmp_path / "half.ced")
    command = [sys.executable] + extract_command(workdir, out)
    command[command.index("--batch-size") + 1] = batch_size
    command[command.index("--threads") + 1] = threads
    run(command)
    assert out.read_bytes() == single.read_bytes()
