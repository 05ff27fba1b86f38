"""One owner per concept (issue 10): the command line in cli.py, the consistent input in augment.py."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "ced_train"
COMMAND_LINE = {"cli.py"}


def _modules() -> dict[str, ast.Module]:
    return {str(path.relative_to(PACKAGE)): ast.parse(path.read_text(encoding="utf-8"))
            for path in sorted(PACKAGE.rglob("*.py"))}


def _imports(tree: ast.Module) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = ("ced_train." if node.level else "") + (node.module or "")
            names |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    return names


def test_only_the_command_line_parses_arguments():
    for name, tree in _modules().items():
        if name in COMMAND_LINE or name == "__main__.py":
            continue
        assert "argparse" not in _imports(tree), name
        assert "main" not in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}, name


def test_training_takes_the_students_input_from_augment_not_from_the_teacher():
    imports = _imports(_modules()["train.py"])
    assert not any(name.startswith("ced_train.teacher") for name in imports)
    assert "ced_train.augment.augmented_logmel" in imports


def test_no_environment_variable_steers_library_code():
    for name, tree in _modules().items():
        if name == "distributed.py":  # torchrun's RANK, WORLD_SIZE, ...
            continue
        source = ast.unparse(tree)
        assert "os.environ" not in source and "getenv" not in source, name
