"""Class names: the bundled AudioSet names, generic names, and the names' SHA-256."""

from __future__ import annotations

import csv
import functools
import hashlib
import os
from importlib import resources
from pathlib import Path
from typing import Sequence

from ced_train.errors import CedTrainError

__all__ = ["AUDIOSET_NUM_CLASSES", "audioset_names", "default_names", "read_names", "names_sha256"]

AUDIOSET_NUM_CLASSES = 527
_AUDIOSET_CSV = "audioset_class_labels_indices.csv"  # in ced_train/resources/, CC BY-SA 4.0 (Google)


@functools.lru_cache(maxsize=1)
def _audioset_names() -> tuple[str, ...]:
    text = resources.files("ced_train").joinpath("resources", _AUDIOSET_CSV).read_text(encoding="utf-8")
    rows = list(csv.DictReader(text.splitlines()))
    if [int(r["index"]) for r in rows] != list(range(AUDIOSET_NUM_CLASSES)):
        raise RuntimeError(f"bundled {_AUDIOSET_CSV} is damaged: expected indices 0..526")
    return tuple(r["display_name"] for r in rows)


def audioset_names() -> list[str]:
    """The 527 AudioSet display names in output order (from the bundled ontology CSV).

    Returns:
        ``names[i]`` is the name of AudioSet class ``i``, e.g. ``names[0] == "Speech"``.

    Example:
        >>> audioset_names()[0]
        'Speech'
    """
    return list(_audioset_names())


def default_names(num_classes: int) -> list[str]:
    """AudioSet names for 527 classes, otherwise ``class_0``, ``class_1``, ...

    Args:
        num_classes: the model's number of outputs.

    Returns:
        ``num_classes`` names.

    Example:
        >>> default_names(3)
        ['class_0', 'class_1', 'class_2']
    """
    if num_classes == AUDIOSET_NUM_CLASSES:
        return audioset_names()
    return [f"class_{i}" for i in range(num_classes)]


def read_names(path: str | os.PathLike) -> list[str]:
    """Read class names, one per line (e.g. the ``classes.txt`` that ``synth`` writes).

    Args:
        path: a UTF-8 text file; blank trailing lines are ignored.

    Returns:
        The names in file order.

    Raises:
        ValueError: the file is empty or a name is blank.

    Example:
        >>> names = read_names("synth/classes.txt")  # doctest: +SKIP
    """
    lines = Path(path).read_text(encoding="utf-8").rstrip("\n").split("\n")
    for i, name in enumerate(lines, start=1):
        if not name.strip():
            raise CedTrainError(f"{path} line {i}: blank class name")
    return lines


def names_sha256(names: Sequence[str]) -> str:
    """SHA-256 (hex) of the names joined by ``\\n``: a store's ``label_space.names_sha256``.

    Example:
        >>> len(names_sha256(["a", "b"]))
        64
    """
    return hashlib.sha256("\n".join(names).encode("utf-8")).hexdigest()
