"""The `cedstore` command (python -m cedstore): output, exit codes, one-line errors."""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cedstore_helpers import assemble, make_teacher, write_with

import cedstore
from cedstore import _core
from cedstore.cli import EXIT_STATUS, _parser, main


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
    assert lines[0] == f"{partial}: cedstore format 1.2, probability values"
    assert lines[1] == "  samples 4, epochs 2, classes 5, k 2, record 12 bytes (int16 class indices), keys yes"
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
    result = run("dump", partial, "--epoch", "1", "--sample-ids", "0:3")
    assert result.returncode == 0
    pairs = " ".join(f"{c}:{v:.6g}" for c, v in zip(indices[0], values[0]))
    assert result.stdout.splitlines() == [f"0 w: seed {seeds[0]} {pairs}", "1 x: unwritten", result.stdout.splitlines()[2]]
    dumped = json.loads(run("dump", partial, "--epoch", "1", "--sample-ids", "2,1", "--json").stdout)
    assert dumped == {"epoch": 1, "tail_policy": "zero", "records": [
        {"sample": 2, "key": "y", "written": True, "seed": int(seeds[1]), "indices": indices[1].tolist(),
         "values": values[1].tolist(), "tail": 0.0},
        {"sample": 1, "key": "x", "written": False},
    ]}
    assert len(run("dump", partial).stdout.splitlines()) == 4  # default 0:10 clipped to N


def test_size(run):
    result = run("size", "--num-samples", 1904746, "--num-classes", 527, "--k", 20)
    assert result.returncode == 0
    assert result.stdout.splitlines() == [
        "1 epoch(s) x 1904746 samples, 527 classes, k=20; ced: int16 class indices, 84-byte records",
        "  ced        159,998,664 bytes       160.00 MB       152.59 MiB",
        "  fp16     2,007,602,284 bytes     2,007.60 MB     1,914.60 MiB",
        "  fp32     4,015,204,568 bytes     4,015.20 MB     3,829.20 MiB",
    ]
    sizes = json.loads(run("size", "--num-samples", 21155, "--num-classes", 527, "--k", 20, "--num-epochs", 2, "--json").stdout)
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
    assert result.stderr == f"cedstore: error: {tmp_path / 'out.ced'} exists; refusing to overwrite it (use --overwrite to replace it)\n"
    result = run("merge", tmp_path / "out.ced", a, b, "--overwrite")
    assert (result.returncode, result.stderr) == (0, "")


@pytest.mark.parametrize(
    "args, status, message",
    [
        ([], 2, r"the following arguments are required: command \(see 'cedstore --help'\)"),
        (["frob"], 2, r"argument command: invalid choice: 'frob'"),
        (["dump"], 2, r"the following arguments are required: file \(see 'cedstore dump --help'\)"),
        (["size", "--num-samples", "x", "--num-classes", "1", "--k", "1"], 2, r"argument --num-samples: invalid int value: 'x'"),
        (["size", "--samples", "1", "--classes", "1", "--k", "1"], 2, r"the following arguments are required: --num-samples, --num-classes"),
        (["dump", "{partial}", "--tail", "flat"], 2, r"argument --tail: invalid choice: 'flat' \(choose from '?zero'?, '?uniform'?, '?renormalize'?\)"),
        (["dump", "{partial}", "--tail", "uniform"], 1, r"{partial}: tail policy 'uniform' needs softmax probabilities"),
        (["dump", "{partial}", "--sample-ids", "a:b"], 2, r"--sample-ids 'a:b' is not a slice 'start:stop\[:step\]' or a list 'i,j,...'"),
        (["info", "{missing}"], 1, r"{missing}: No such file or directory"),
        (["info", "{text}"], 1, r"{text}: not a cedstore file: expected at least 128 bytes, found 6"),
        (["dump", "{partial}", "--epoch", "2"], 1, r"{partial}: epoch 2 out of range \[0, 2\)"),
        (["dump", "{partial}", "--sample-ids", "3,4"], 1, r"{partial}: sample 4 out of range \[0, 4\)"),
        (["size", "--num-samples", "1", "--num-classes", "5", "--k", "6"], 1, r"need num_samples, num_classes, k, num_epochs >= 1 and k <= num_classes"),
        (["info", "{deep}"], 1, r"{deep}: metadata: nested 100001 levels deep, at most 64 allowed"),
        (["info", "{infinite}", "--json"], 1, r"{infinite}: metadata: number 1e400 is outside the range of a double"),
    ],
)
def test_errors_are_one_line(tmp_path, partial, run, args, status, message):
    names = {"partial": partial, "missing": tmp_path / "missing.ced", "text": tmp_path / "t.txt",
             "deep": tmp_path / "deep.ced", "infinite": tmp_path / "inf.ced"}
    (tmp_path / "t.txt").write_text("hello\n")
    (tmp_path / "deep.ced").write_bytes(assemble(b'{"writer":"x","t":' + b"[" * 100000 + b"]" * 100000 + b"}"))
    (tmp_path / "inf.ced").write_bytes(assemble(b'{"writer":"x","t":1e400}'))
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
    result = run_process("dump", partial, "--sample-ids", "x")
    assert result.returncode == 2 and result.stderr.startswith("cedstore: error: --sample-ids 'x' is not a slice")


def test_version_and_help(run):
    result = run("--version")
    assert (result.returncode, result.stdout) == (0, f"cedstore {cedstore.__version__}\n")
    result = run("--help")
    assert result.returncode == 0
    table = result.stdout.partition("exit status:\n")[2].partition("\n\n")[0].splitlines()
    assert [int(line.split()[0]) for line in table] == list(EXIT_STATUS)
    commands = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert sorted(commands) == ["dump", "import-ced-h5", "info", "merge", "merge-shards", "size", "verify"]
    for name, command in commands.items():  # an example, and help text for every argument
        assert f"example: cedstore {name} " in run(name, "--help").stdout
        assert all(action.help for action in command._actions), name


def test_dump_into_a_closed_pipe_exits_quietly(tmp_path):
    """`cedstore dump ... | head -1`: the reader goes away; no traceback, the SIGPIPE status."""
    teacher = make_teacher(1, 5000, 3)
    path = write_with(_core.Writer, tmp_path / "big.ced", teacher, 2)
    dump = subprocess.Popen([sys.executable, "-m", "cedstore", "dump", str(path), "--sample-ids", "0:5000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert dump.stdout.readline().startswith(b"0: seed ")
    dump.stdout.close()  # what head does after its first line
    assert dump.wait(timeout=60) == 141
    assert dump.stderr.read() == b""
    dump.stderr.close()


def test_internal_errors_are_one_line(run, monkeypatch):
    def broken(*args, **kwargs):
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(cedstore, "open", broken)
    result = run("info", "x.ced")
    assert (result.returncode, result.stdout) == (3, "")
    assert result.stderr == "cedstore: error: internal error, please report it: RecursionError: maximum recursion depth exceeded\n"


def test_merge_shows_progress_only_when_asked(tmp_path, capsys):
    teacher = make_teacher(2, 6, 5)
    a = write_with(_core.Writer, tmp_path / "a.ced", teacher, 2, batches=[(0, range(6)), (1, [0, 1])])
    b = write_with(_core.Writer, tmp_path / "b.ced", teacher, 2, batches=[(1, range(2, 6))])
    cedstore.merge(tmp_path / "quiet.ced", [a, b])  # stderr is not a terminal here: nothing
    assert capsys.readouterr() == ("", "")
    cedstore.merge(tmp_path / "out.ced", [a, b], progress=True)
    out, err = capsys.readouterr()
    assert out == "" and re.fullmatch(r"merge: 36/36 records \(100%\), [\d,]+ records/s, ETA 0:00\n", err), err


def test_readme_command_lines_run(tmp_path, monkeypatch, run):
    """Every `cedstore ...` line of the README, on real files of the names it uses."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    lines = [line.partition("#")[0] for line in readme.splitlines() if line.startswith("cedstore ")]
    assert len(lines) >= 5
    monkeypatch.chdir(tmp_path)
    teacher = make_teacher(2, 6, 5)
    write_with(_core.Writer, tmp_path / "teacher.ced", teacher, 2)
    write_with(_core.Writer, tmp_path / "shard0.ced", teacher, 2, batches=[(0, range(6)), (1, [0])])
    write_with(_core.Writer, tmp_path / "shard1.ced", teacher, 2, batches=[(1, range(1, 6))])
    for line in lines:
        result = run(*shlex.split(line)[1:])
        assert (result.returncode, result.stderr) == (0, ""), line
        assert result.stdout, line


def test_verify_shows_progress_only_when_asked(tmp_path, capsys):
    path = write_with(_core.Writer, tmp_path / "c.ced", make_teacher(3, 4, 5), 2)
    store = cedstore.open(path)
    store.verify()  # stderr is not a terminal here: nothing
    assert capsys.readouterr() == ("", "")
    store.verify(progress=True)
    out, err = capsys.readouterr()
    assert out == "" and re.fullmatch(r"verify: 12/12 records \(100%\), [\d,]+ records/s, ETA 0:00\n", err), err
    partial = cedstore.open(write_with(_core.Writer, tmp_path / "p.ced", make_teacher(3, 4, 5), 2,
                                       batches=[(0, range(4)), (2, range(4))]))
    with pytest.raises(cedstore.UnwrittenRecordError, match=r"p\.ced: epoch 1, sample 0: record not written"):
        partial.verify(progress=True)
    assert capsys.readouterr().err == ""  # no final count after an error
    with pytest.raises(IndexError, match=r"p\.ced: epoch 3 out of range \[0, 3\)"):
        partial._core.verify(True, 3)


def softmax_store(path, metadata: dict) -> str:
    teacher = make_teacher(1, 3, 6)
    probs = np.exp(4 * teacher.probs[0]) / np.exp(4 * teacher.probs[0]).sum(1, keepdims=True)
    with cedstore.create(path, num_classes=6, k=2, num_samples=3, metadata=metadata) as w:
        w.write(0, np.arange(3), probs=probs.astype(np.float32), seeds=teacher.seeds[0])
    return str(path)


def test_dump_with_a_tail_policy(tmp_path, run):
    plain = softmax_store(tmp_path / "plain.ced", {"activation": "softmax"})
    store = cedstore.open(plain)
    for tail in ("uniform", "renormalize"):
        values, indices, fill, seeds = cedstore.targets.sparse(store, 0, [2, 0], tail=tail)
        dumped = json.loads(run("dump", plain, "--sample-ids", "2,0", "--tail", tail, "--json").stdout)
        assert dumped["tail_policy"] == tail
        assert [(r["values"], r["indices"], r["tail"], r["seed"]) for r in dumped["records"]] == [
            (values[b].tolist(), indices[b].tolist(), float(fill[b]), int(seeds[b])) for b in range(2)]
        result = run("dump", plain, "--sample-ids", "2", "--tail", tail)
        pairs = " ".join(f"{c}:{v:.6g}" for c, v in zip(indices[0], values[0]))
        assert result.stdout == f"2: seed {seeds[0]} {pairs} other classes {fill[0]:.6g} ({tail})\n"
    assert json.loads(run("dump", plain, "--json").stdout)["tail_policy"] == "zero"  # nothing recorded: zero
    recorded = softmax_store(tmp_path / "rec.ced", {"activation": "softmax", "tail_policy": "renormalize"})
    dumped = json.loads(run("dump", recorded, "--json").stdout)
    assert dumped["tail_policy"] == "renormalize"
    assert [sum(r["values"]) for r in dumped["records"]] == pytest.approx([1, 1, 1], rel=1e-6)
    assert json.loads(run("dump", recorded, "--json", "--tail", "zero").stdout) == json.loads(run("dump", plain, "--json").stdout)
    unknown = write_with(_core.Writer, tmp_path / "unknown.ced", make_teacher(1, 2, 4), 2,
                         metadata_json=b'{"tail_policy":"entropy","writer":"x"}')
    result = run("dump", unknown)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (f"cedstore: error: {unknown}: the store records tail_policy 'entropy', which this cedstore "
                             "does not know (it knows zero, uniform, renormalize): name one of them explicitly\n")
    assert run("dump", unknown, "--tail", "zero").returncode == 0


def test_merge_shards(tmp_path, run):
    teacher = make_teacher(2, 5, 4)
    paths = []
    for rank in range(2):
        paths.append(tmp_path / f"r{rank}.ced")
        with cedstore.create_shard(paths[-1], rank, 2, num_classes=4, k=2, num_samples=5, num_epochs=2) as w:
            for epoch in range(2):
                w.write(epoch, w.sample_ids, probs=teacher.probs[epoch, w.sample_ids], seeds=teacher.seeds[epoch, w.sample_ids])
    out = tmp_path / "out.ced"
    result = run("merge-shards", out, *paths[::-1])
    assert (result.returncode, result.stdout, result.stderr) == (0, f"{out}: merged 2 compact shards\n", "")
    single = write_with(_core.Writer, tmp_path / "one.ced", teacher, 2, metadata_json=b'{"writer":"cedstore 0.1.0"}')
    assert out.read_bytes() == single.read_bytes()
    result = run("merge-shards", out, *paths)
    assert result.returncode == 1
    assert result.stderr == f"cedstore: error: {out} exists; refusing to overwrite it (use --overwrite to replace it)\n"
    assert run("merge-shards", out, *paths, "--overwrite").returncode == 0
    result = run("merge-shards", tmp_path / "two.ced", paths[0])
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == "cedstore: error: rank(s) [1] of 2 missing: got shards of ranks [0]\n"
