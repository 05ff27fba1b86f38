"""The `cedstore` command (python -m cedstore): output, exit codes, one-line errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from cedstore_helpers import make_teacher, write_with

import cedstore
from cedstore import _core
from cedstore.cli import main


def run_process(*args) -> subprocess.CompletedProcess:
    """`python -m cedstore ARGS` in a subprocess (slow: used where the process boundary matters)."""
    return subprocess.run([sys.executable, "-m", "cedstore", *map(str, args)], capture_output=True, text=True)


@pytest.fixture
def run(capsys):
    """cedstore.cli.main(ARGS) in this process, as (returncode, stdout, stderr)."""

    def run(*args) -> subprocess.CompletedProcess:
        try:
            status = main([str(a) for a in args])
        except SystemExit as e:
            status = e.code
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, status, out, err)

    return run


@pytest.fixture(scope="module")
def partial(tmp_path_factory):
    """Epoch 0 complete (sealed), epoch 1 with samples 0 and 2 only; keys."""
    teacher = make_teacher(num_epochs=2, num_samples=4, num_classes=5)
    path = tmp_path_factory.mktemp("cli") / "p.ced"
    return write_with(_core.Writer, path, teacher, 2, keys=["w", "x", "y", "z"], batches=[(0, range(4)), (1, [0, 2])])


def test_info(partial, run):
    result = run("info", partial)
    assert result.returncode == 0 and result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[0] == f"{partial}: cedstore format 1, probability values"
    assert lines[1] == "  samples 4, epochs 2, classes 5, k 2, record 12 bytes, keys yes"
    assert lines[2].startswith("  file 4192 bytes = records 96 + overhead 4096")
    assert lines[3].startswith("  epoch 0: 4/4 written, sealed crc32 ")
    assert lines[4] == "  epoch 1: 2/4 written, open"
    assert lines[5].startswith('  metadata {"activation": "sigmoid"')
    info = json.loads(run("info", partial, "--json").stdout)
    assert info == cedstore.open(partial).info()


def test_verify(tmp_path, partial, run):
    result = run("verify", partial)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == f"cedstore: error: {partial}: epoch 1, sample 1: record not written\n"
    complete = write_with(_core.Writer, tmp_path / "c.ced", make_teacher(1, 3, 4), 2)
    result = run("verify", complete)
    assert (result.returncode, result.stdout, result.stderr) == (0, f"{complete}: ok (1 epochs x 3 records)\n", "")


def test_dump(partial, run):
    store = cedstore.open(partial)
    values, indices, seeds = store.topk(1, [0, 2])
    result = run("dump", partial, "--epoch", "1", "--samples", "0:3")
    assert result.returncode == 0
    pairs = " ".join(f"{c}:{v:.6g}" for c, v in zip(indices[0], values[0]))
    assert result.stdout.splitlines() == [f"0 w: seed {seeds[0]} {pairs}", "1 x: unwritten", result.stdout.splitlines()[2]]
    dumped = json.loads(run("dump", partial, "--epoch", "1", "--samples", "2,1", "--json").stdout)
    assert dumped == {"epoch": 1, "records": [
        {"sample": 2, "key": "y", "written": True, "seed": int(seeds[1]), "indices": indices[1].tolist(),
         "values": values[1].tolist()},
        {"sample": 1, "key": "x", "written": False},
    ]}
    assert len(run("dump", partial).stdout.splitlines()) == 4  # default 0:10 clipped to N


def test_size(run):
    result = run("size", "--samples", 1904746, "--classes", 527, "--k", 20)
    assert result.returncode == 0
    assert result.stdout.splitlines() == [
        "1 epoch(s) x 1904746 samples, 527 classes, k=20",
        "  ced        159,998,664 bytes       160.00 MB       152.59 MiB",
        "  fp16     2,007,602,284 bytes     2,007.60 MB     1,914.60 MiB",
        "  fp32     4,015,204,568 bytes     4,015.20 MB     3,829.20 MiB",
    ]
    sizes = json.loads(run("size", "--samples", 21155, "--classes", 527, "--k", 20, "--epochs", 2, "--json").stdout)
    assert sizes["ced"] == {"bytes": 2 * 1777020, "MB": 3.55404, "MiB": 2 * 1777020 / 2**20}


def test_merge(tmp_path, run):
    teacher = make_teacher(1, 4, 5)
    a = write_with(_core.Writer, tmp_path / "a.ced", teacher, 2, batches=[(0, [0, 1])])
    b = write_with(_core.Writer, tmp_path / "b.ced", teacher, 2, batches=[(0, [2, 3])])
    result = run("merge", tmp_path / "out.ced", a, b)
    assert (result.returncode, result.stdout) == (0, f"{tmp_path / 'out.ced'}: merged 2 shards\n")
    assert (tmp_path / "out.ced").read_bytes() == write_with(_core.Writer, tmp_path / "one.ced", teacher, 2).read_bytes()
    result = run("merge", tmp_path / "out.ced", a, b)
    assert result.returncode == 1
    assert result.stderr == f"cedstore: error: {tmp_path / 'out.ced'} exists; pass overwrite=True to replace it\n"


@pytest.mark.parametrize(
    "args, status, message",
    [
        ([], 2, r"the following arguments are required: command \(see 'cedstore --help'\)"),
        (["frob"], 2, r"argument command: invalid choice: 'frob'"),
        (["dump"], 2, r"the following arguments are required: file \(see 'cedstore dump --help'\)"),
        (["size", "--samples", "x", "--classes", "1", "--k", "1"], 2, r"argument --samples: invalid int value: 'x'"),
        (["dump", "{partial}", "--samples", "a:b"], 2, r"--samples 'a:b' is not a slice 'start:stop\[:step\]' or a list 'i,j,...'"),
        (["info", "{missing}"], 1, r"{missing}: No such file or directory"),
        (["info", "{text}"], 1, r"{text}: not a cedstore file: expected at least 128 bytes, found 6"),
        (["dump", "{partial}", "--epoch", "2"], 1, r"{partial}: epoch 2 out of range \[0, 2\)"),
        (["dump", "{partial}", "--samples", "3,4"], 1, r"{partial}: sample 4 out of range \[0, 4\)"),
        (["size", "--samples", "1", "--classes", "5", "--k", "6"], 1, r"need num_samples, num_classes, k, epochs >= 1 and k <= num_classes"),
    ],
)
def test_errors_are_one_line(tmp_path, partial, run, args, status, message):
    names = {"partial": partial, "missing": tmp_path / "missing.ced", "text": tmp_path / "t.txt"}
    (tmp_path / "t.txt").write_text("hello\n")
    result = run(*[a.format(**names) for a in args])
    assert result.returncode == status and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert re.fullmatch("cedstore: error: " + message.format(**{k: re.escape(str(v)) for k, v in names.items()}) + ".*\n",
                        result.stderr), result.stderr


def test_python_m_cedstore_in_a_subprocess(partial):
    result = run_process("info", partial, "--json")
    assert result.returncode == 0 and json.loads(result.stdout)["num_samples"] == 4
    result = run_process("verify", partial)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == f"cedstore: error: {partial}: epoch 1, sample 1: record not written\n"
    result = run_process("dump", partial, "--samples", "x")
    assert result.returncode == 2 and result.stderr.startswith("cedstore: error: --samples 'x' is not a slice")
