"""The ced-train command: the README's commands, one vocabulary, one-line errors and exit codes."""

from __future__ import annotations

import argparse
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from train_helpers import NUM_CLASSES, load, make_store, tiny_model, write_clips

from ced_train import models
from ced_train.cli import EXAMPLES, EXIT_STATUS, build_parser, main

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    tsv = write_clips(folder, 8)
    store = make_store(folder / "t.ced", load(tsv), store_epochs=2)
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


TINY = ["--arch", "ced_custom", "--embed-dim", "32", "--depth", "1", "--num-heads", "2",
        "--batch-size", "4", "--warmup-steps", "1", "--optimizer", "adamw", "--quiet"]


# ---- the README's commands, run at toy size ---------------------------------------------------


def readme_commands() -> list[str]:
    """The ced-train lines of the README's "Training with ced_train" code block."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Training with ced_train"):]
    block = section[section.index("```bash") : section.index("```", section.index("```bash") + 3)]
    return [line for line in block.splitlines() if line.startswith("ced-train ")]


# Appended to each README command (argparse keeps the last value): toy sizes for a 5-class teacher.
TOY = {
    "extract": ["--k", "3", "--store-epochs", "2", "--quiet"],
    "check-store": ["--num-records", "8", "--quiet"],
    "train": TINY + ["--epochs", "1"],
    "evaluate": ["--quiet"],
    "tag": [],
}


def test_readme_commands_run_on_toy_data(tmp_path, monkeypatch, capsys):
    commands = readme_commands()
    assert [shlex.split(line)[1] for line in commands] == ["extract", "check-store", "train", "evaluate", "tag"]
    assert commands == EXAMPLES.splitlines()[:5]  # the same examples as `ced-train --help`
    monkeypatch.chdir(tmp_path)
    write_clips(tmp_path, 8, name="train.tsv")
    write_clips(tmp_path, 8, name="eval.tsv", seed=1)
    (tmp_path / "clip.wav").write_bytes((tmp_path / "clip000.wav").read_bytes())
    for name, seed in (("A.pt", 1), ("B.pt", 2)):
        models.save_checkpoint(tiny_model(seed), tmp_path / name)
    for line in commands:
        argv = shlex.split(line)[1:]
        assert main(argv + TOY[argv[0]]) == 0, line
    out = capsys.readouterr().out
    assert "verdict" in out and re.search(r"^mAP 0\.\d{4} \(runs/mini/best\.pt", out, re.M)
    assert [re.fullmatch(r"\d\.\d{3}  class_\d  \(\d\)", line) is not None
            for line in out.strip().splitlines()[-5:]] == [True] * 5  # tag --top 5
    assert {"last.pt", "best.pt", "metrics.csv"} <= {p.name for p in (tmp_path / "runs" / "mini").iterdir()}


def test_readme_interoperability_command_is_the_help_example():
    text = README.read_text(encoding="utf-8")
    section = text[text.index("**Interoperability**"):]
    block = section[section.index("```bash") : section.index("```", section.index("```bash") + 3)]
    (line,) = [line for line in block.splitlines() if line.startswith("ced-train ")]
    assert line in EXAMPLES.splitlines()
    args = build_parser().parse_args(shlex.split(line)[1:])
    assert (args.checkpoint, args.out, args.quantize) == ("runs/mini/best.pt", "mini.onnx", "int8")
    assert not args.waveform


def test_readme_exit_status_table_is_the_commands():
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Training with ced_train"):]
    rows = {int(code): meaning.replace("`", "")
            for code, meaning in re.findall(r"^\| (\d+) \| (.*) \|$", section, re.M)}
    assert rows == EXIT_STATUS


# ---- one vocabulary: every flag has help, a default or "required", and an example -------------


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_flag_has_help_and_an_example():
    for name, command in _subcommands(build_parser()).items():
        for action in command._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help and "e.g. " in action.help, (name, action.dest)
            if action.option_strings and not action.required and action.nargs != 0 and action.default is None:
                assert "default: " in action.help, (name, action.dest)


def test_one_flag_name_per_concept():
    commands = _subcommands(build_parser())
    flags = {name: {o for a in c._actions for o in a.option_strings} for name, c in commands.items()}
    for gone in ("--model", "--classes", "--eval", "--samples", "--epochs-store", "--out-store"):
        assert not any(gone in f for f in flags.values()), gone
    assert "--store" in flags["extract"] and "--store" in flags["train"] and "--store" in flags["check-store"]
    assert "--store-epochs" in flags["extract"] and "--epochs" not in flags["extract"]
    assert "--checkpoint" in flags["evaluate"] and "--checkpoint" in flags["tag"] and "--arch" in flags["train"]
    for name in ("extract", "check-store", "train"):  # --amp is one choice everywhere
        amp = next(a for a in commands[name]._actions if "--amp" in a.option_strings)
        assert tuple(amp.choices) == ("none", "bf16", "fp16") and amp.default == "none"


def test_version(capsys):
    import cedstore

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"ced-train {cedstore.__version__}"


def test_help_lists_the_exit_status_table():
    help_text = build_parser().format_help()
    for code, meaning in EXIT_STATUS.items():
        assert f"  {code:<4} {meaning}" in help_text


# ---- the commands ---------------------------------------------------------------------------


def test_train_evaluate_tag(work, tmp_path, capsys):
    folder, tsv, store = work
    out = tmp_path / "run"
    assert main(["train", "--store", str(store), "--data", str(tsv), "--eval-data", str(tsv), "--epochs", "2",
                 "--out", str(out), *TINY]) == 0
    assert {"metrics.csv", "last.pt", "best.pt"} <= {p.name for p in out.iterdir()}
    assert models.from_checkpoint(out / "best.pt").config.num_classes == NUM_CLASSES
    capsys.readouterr()

    per_class = tmp_path / "ap.csv"
    assert main(["evaluate", "--checkpoint", str(out / "best.pt"), "--data", str(tsv),
                 "--per-class-csv", str(per_class)]) == 0
    assert capsys.readouterr().out.startswith("mAP 0.")
    assert per_class.read_text().splitlines()[0] == "index,name,ap"

    assert main(["tag", str(folder / "clip000.wav"), "--checkpoint", str(out / "best.pt"), "--top", "3"]) == 0
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


def test_train_prints_progress_with_an_eta(work, tmp_path, capsys):
    _, tsv, store = work
    argv = ["train", "--store", str(store), "--data", str(tsv), "--epochs", "2", "--out", str(tmp_path),
            *[a for a in TINY if a != "--quiet"]]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert re.search(r"^epoch 1/2 step 2 loss \d\.\d{5} lr \S+ \d+\.\ds, ETA \d+:\d\d$", out, re.M), out


# ---- errors: one line, the right status -------------------------------------------------------


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
    clean = make_store(tmp_path / "clean.ced", load(tsv), store_epochs=1, recipe=None)
    line = _error(capsys, ["train", "--store", str(clean), "--data", str(tsv), "--out", str(tmp_path / "o"),
                           *TINY])
    assert "has no augmentation recipe" in line


class _Foreign:
    """A pickled object that a safe checkpoint load must refuse."""


def test_checkpoint_errors_are_one_line(work, tmp_path, capsys):
    folder, tsv, store = work
    line = _error(capsys, ["evaluate", "--checkpoint", str(tmp_path / "none.pt"), "--data", str(tsv)])
    assert "none.pt" in line
    # a checkpoint that does not fit its config: a multi-line error, printed on one line
    models.save_checkpoint(tiny_model(), tmp_path / "m.pt")
    checkpoint = torch.load(tmp_path / "m.pt", weights_only=True)
    checkpoint["config"]["depth"] = 2
    torch.save(checkpoint, tmp_path / "bad.pt")
    line = _error(capsys, ["tag", str(folder / "clip000.wav"), "--checkpoint", str(tmp_path / "bad.pt")])
    assert "missing keys" in line
    # a foreign pickle and a damaged file: refused safely, without torch's advice to unpickle it
    torch.save({"model": _Foreign()}, tmp_path / "foreign.pt")
    line = _error(capsys, ["tag", str(folder / "clip000.wav"), "--checkpoint", str(tmp_path / "foreign.pt")])
    assert "holds Python objects (test_cli._Foreign) that a safe load refuses" in line
    assert "weights_only=False" not in line
    (tmp_path / "damaged.pt").write_bytes((tmp_path / "m.pt").read_bytes()[:300])
    line = _error(capsys, ["evaluate", "--checkpoint", str(tmp_path / "damaged.pt"), "--data", str(tsv)])
    assert line == f"ced-train: error: {tmp_path / 'damaged.pt'}: not a readable PyTorch checkpoint (damaged, " \
                   "truncated, or another kind of file: RuntimeError)"


def test_usage_errors_exit_2(capsys):
    line = _error(capsys, ["train", "--student-aug", "sometimes"], status=2)
    assert "invalid choice" in line
    _error(capsys, ["frobnicate"], status=2)
    line = _error(capsys, ["tag", "x.wav"], status=2)
    assert "the following arguments are required: --checkpoint" in line
    line = _error(capsys, ["extract", "--teacher", "a.pt", "--data", "t.tsv", "--store", "t.ced",
                           "--store-epochs", "1", "--amp", "fp32"], status=2)
    assert "argument --amp: invalid choice: 'fp32'" in line


def _run(args: list[str], code: str | None = None, stdout=subprocess.PIPE) -> subprocess.CompletedProcess:
    entry = ["-c", code] if code else ["-m", "ced_train"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, *entry, *args], cwd=ROOT, env=env, stdout=stdout,
                          stderr=subprocess.PIPE, text=True, timeout=120)


def test_python_dash_m_entry_point():
    done = _run(["tag", "x.wav", "--checkpoint", "missing.pt"])
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == ["ced-train: error: missing.pt: No such file or directory"]
    help_text = _run(["--help"]).stdout
    for command in ("extract", "check-store", "train", "evaluate", "tag", "demo"):
        assert command in help_text


# Runs ced-train as if a package of the train extra were not installed.
WITHOUT = "import sys\nsys.modules[{name!r}] = None\nfrom ced_train.cli import main\nsys.exit(main())\n"


@pytest.mark.parametrize("package", ["torch", "soundfile"])
def test_a_numpy_only_install_names_the_extra(package):
    done = _run(["tag", "x.wav", "--checkpoint", "m.pt"], code=WITHOUT.format(name=package))
    assert done.returncode == 4
    assert done.stderr.strip().splitlines() == [
        f"ced-train: error: ced-train needs the {package} package: pip install 'cedstore[train]'"]


# Ctrl-C while torch (and the rest) is being imported.
INTERRUPTED_IMPORT = (
    "import builtins, sys\n"
    "real_import = builtins.__import__\n"
    "def interrupting(name, *args, **kwargs):\n"
    "    if name == 'torch':\n"
    "        raise KeyboardInterrupt\n"
    "    return real_import(name, *args, **kwargs)\n"
    "builtins.__import__ = interrupting\n"
    "from ced_train.cli import main\n"
    "sys.exit(main())\n"
)


def test_ctrl_c_is_one_line_and_exit_130(work, tmp_path):
    done = _run(["--help"], code=INTERRUPTED_IMPORT)
    assert (done.returncode, done.stderr) == (130, "ced-train: error: interrupted\n")
    # and during a run: SIGINT to a training process
    _, tsv, store = work
    argv = ["train", "--store", str(store), "--data", str(tsv), "--epochs", "1000", "--out", str(tmp_path), *TINY]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "ced_train", *argv], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "last.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert (proc.returncode, err) == (130, "ced-train: error: interrupted\n")


def test_a_closed_stdout_is_exit_141_without_a_traceback(work, tmp_path):
    folder, _, _ = work
    models.save_checkpoint(tiny_model(), tmp_path / "m.pt")
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody reads: the first write raises BrokenPipeError
    try:
        done = _run(["tag", str(folder / "clip000.wav"), "--checkpoint", str(tmp_path / "m.pt"), "--top", "5"],
                    stdout=write_end)
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (141, "")


# ---- checkpoints on every path that loads one: one line naming the file -----------------------


@pytest.fixture(scope="module")
def bad_checkpoints(tmp_path_factory):
    """Files that are not CED checkpoints, by kind: each must be refused in one line naming it."""
    folder = tmp_path_factory.mktemp("bad-checkpoints")
    models.save_checkpoint(tiny_model(), folder / "good.pt")
    (folder / "damaged.pt").write_bytes((folder / "good.pt").read_bytes()[:300])
    torch.save({"model": _Foreign()}, folder / "foreign.pt")
    torch.save({"weights": {"a": torch.zeros(2)}}, folder / "unknown.pt")
    return folder


CHECKPOINT_ERRORS = {
    "damaged": "not a readable PyTorch checkpoint (damaged, truncated, or another kind of file: RuntimeError)",
    "foreign": "the checkpoint holds Python objects (test_cli._Foreign) that a safe load refuses",
    "unknown": "cannot infer the model size: the checkpoint has no patch_embed.proj.weight",
}


@pytest.mark.parametrize("kind", sorted(CHECKPOINT_ERRORS))
@pytest.mark.parametrize("command", ["extract", "check-store", "evaluate", "tag", "export-onnx", "train --resume"])
def test_a_bad_checkpoint_is_one_line_naming_it_on_every_path(work, tmp_path, capsys, bad_checkpoints, kind,
                                                               command):
    folder, tsv, store = work
    path = bad_checkpoints / f"{kind}.pt"
    argv = {
        "extract": ["extract", "--teacher", str(bad_checkpoints / "good.pt"), "--teacher", str(path), "--data",
                    str(tsv), "--store-epochs", "1", "--k", "3", "--store", str(tmp_path / "s.ced"), "--quiet"],
        "check-store": ["check-store", "--store", str(store), "--teacher", str(path), "--data", str(tsv),
                        "--quiet"],
        "evaluate": ["evaluate", "--checkpoint", str(path), "--data", str(tsv), "--quiet"],
        "tag": ["tag", str(folder / "clip000.wav"), "--checkpoint", str(path)],
        "export-onnx": ["export-onnx", "--checkpoint", str(path), "--out", str(tmp_path / "m.onnx")],
        "train --resume": ["train", "--store", str(store), "--data", str(tsv), "--epochs", "1", "--out",
                           str(tmp_path), "--resume", *TINY],
    }[command]
    if command == "train --resume":
        path = tmp_path / "last.pt"
        path.write_bytes((bad_checkpoints / f"{kind}.pt").read_bytes())
    line = _error(capsys, argv)
    message = CHECKPOINT_ERRORS[kind]
    if command == "train --resume" and kind == "unknown":  # a readable dict, but not a run's last.pt
        message = "not a training run's checkpoint: expected the dict that training writes (model, optimizer, " \
                  "epoch, ...), found ['weights']"
    assert line.startswith(f"ced-train: error: {path}: {message}"), line
    assert not (tmp_path / "s.ced").exists() and not (tmp_path / "m.onnx").exists()


def test_tag_top_must_be_at_least_one(work, tmp_path, capsys):
    folder, _, _ = work
    models.save_checkpoint(tiny_model(), tmp_path / "m.pt")
    line = _error(capsys, ["tag", str(folder / "clip000.wav"), "--checkpoint", str(tmp_path / "m.pt"), "--top", "0"])
    assert line == "ced-train: error: top must be at least 1 (the number of classes to return), got 0"
    assert main(["tag", str(folder / "clip000.wav"), "--checkpoint", str(tmp_path / "m.pt"), "--top", "99"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == NUM_CLASSES  # more than the classes: all


def test_train_on_a_nan_clip_fails_in_one_line_without_saving(tmp_path, capsys):
    import numpy as np
    import soundfile as sf

    tsv = write_clips(tmp_path / "data", 8)
    sf.write(str(tmp_path / "data" / "clip003.wav"), np.full(8000, np.nan, np.float32), 16000, subtype="FLOAT")
    line = _error(capsys, ["train", "--supervised", "--data", str(tsv), "--num-classes", str(NUM_CLASSES),
                           "--student-aug", "none", "--epochs", "2", "--out", str(tmp_path / "run"), *TINY])
    assert "clip003.wav" in line
    assert not (tmp_path / "run" / "last.pt").exists()


# Sends a real SIGINT to the command while it imports `name` (before or after main() starts).
SIGINT_DURING_IMPORT = (
    "import builtins, os, runpy, signal\n"
    "real_import = builtins.__import__\n"
    "def interrupting(name, *args, **kwargs):\n"
    "    if name == {name!r}:\n"
    "        builtins.__import__ = real_import\n"
    "        os.kill(os.getpid(), signal.SIGINT)\n"
    "    return real_import(name, *args, **kwargs)\n"
    "builtins.__import__ = interrupting\n"
    "runpy.run_module('ced_train', run_name='__main__', alter_sys=True)\n"
)


@pytest.mark.parametrize("name", ["ced_train.cli", "argparse", "torch"])
def test_sigint_while_the_command_starts_is_one_line_and_130(name):
    done = _run(["tag", "x.wav", "--checkpoint", "m.pt"], code=SIGINT_DURING_IMPORT.format(name=name))
    assert (done.returncode, done.stderr) == (130, "ced-train: error: interrupted\n")


# ---- export-onnx ------------------------------------------------------------------------------


def test_export_onnx_runs_in_onnxruntime(tmp_path, capsys):
    pytest.importorskip("onnxscript", reason="onnxscript is not installed (pip install -e '.[onnx]')")
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install -e '.[onnx]')")
    from ced_train.onnx_export import read_metadata

    model = tiny_model()
    models.save_checkpoint(model, tmp_path / "m.pt")
    (tmp_path / "names.txt").write_text("".join(f"sound {i}\n" for i in range(NUM_CLASSES)))
    reference = models.from_checkpoint(tmp_path / "m.pt")
    logmel = torch.rand(2, 64, 300, generator=torch.Generator().manual_seed(0)) * 80 - 100
    wave = torch.randn(2, 20_000, generator=torch.Generator().manual_seed(1)) * 0.1
    for extra, name, inputs, expected in (
        ([], "logmel", logmel, reference.forward_spectrogram(logmel)),
        (["--waveform"], "waveform", wave, reference.predict(wave)),
    ):
        out = tmp_path / f"{name}.onnx"
        assert main(["export-onnx", "--checkpoint", str(tmp_path / "m.pt"), "--out", str(out),
                     "--class-names", str(tmp_path / "names.txt"), *extra]) == 0
        (got,) = ort.InferenceSession(str(out)).run(None, {name: inputs.numpy()})
        torch.testing.assert_close(torch.from_numpy(got), expected.detach(), atol=1e-4, rtol=0)
        assert read_metadata(out)["class_names"] == [f"sound {i}" for i in range(NUM_CLASSES)]
        assert capsys.readouterr().err.startswith(f"{out}: ")
    int8 = tmp_path / "int8.onnx"
    assert main(["export-onnx", "--checkpoint", str(tmp_path / "m.pt"), "--out", str(int8), "--quantize", "int8"]) == 0
    assert read_metadata(int8)["quantization"] == "int8"
    (got,) = ort.InferenceSession(str(int8)).run(None, {"logmel": logmel.numpy()})
    assert got.shape == (2, NUM_CLASSES) and np_isfinite(got)


def np_isfinite(array) -> bool:
    import numpy as np

    return bool(np.isfinite(array).all())


def test_export_onnx_without_the_onnx_extra_is_exit_4(tmp_path):
    models.save_checkpoint(tiny_model(), tmp_path / "m.pt")
    code = "import sys\nsys.modules['onnxscript'] = None\nfrom ced_train.cli import main\nsys.exit(main())\n"
    done = _run(["export-onnx", "--checkpoint", str(tmp_path / "m.pt"), "--out", str(tmp_path / "m.onnx")], code=code)
    assert done.returncode == 4
    assert done.stderr.startswith("ced-train: error: ONNX export needs the package 'onnxscript'")
    assert "pip install 'cedstore[onnx]'" in done.stderr and len(done.stderr.splitlines()) == 1
