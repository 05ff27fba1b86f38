"""The TSV manifest: a header row, a ``filename`` column and an optional ``labels`` column.

``labels`` holds ``;``-separated integer class indices (an empty cell: a clip with no
positives); an ``hdf5path`` column (the original CED's packs, docs/INTEROP.md section 3) names
the HDF5 pack that holds each row's audio; other columns are ignored and blank lines skipped. Filenames are relative to the
TSV's folder unless absolute, and may not repeat.

Example:
    >>> write_tsv("train.tsv", ["a.wav", "b.wav"], [[0, 3], []])  # doctest: +SKIP
    >>> [row.filename for row in read_tsv(Path("train.tsv"))]      # doctest: +SKIP
    ['a.wav', 'b.wav']
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Iterable, NamedTuple, Sequence

from ced_train.errors import CedTrainError, DataError

__all__ = ["ManifestRow", "read_tsv", "write_tsv"]


class ManifestRow(NamedTuple):
    """One data row: its line number, filename, labels (None without a column), the
    ``DataError`` that makes it unusable (None when it is fine), and its HDF5 pack (None
    without an ``hdf5path`` column)."""

    line: int
    filename: str
    labels: tuple[int, ...] | None
    error: DataError | None
    hdf5path: str | None = None


def read_tsv(tsv: Path, num_classes: int | None = None) -> list[ManifestRow]:
    """The data rows of a TSV manifest, each with its error if it is malformed.

    A malformed row carries its error, so that the caller reports or skips rows in file order.

    Args:
        tsv: the manifest (UTF-8, optionally with a BOM).
        num_classes: labels must be below it; None: any non-negative label.

    Returns:
        One :class:`ManifestRow` per non-blank data row, in file order.

    Raises:
        DataError: the file is missing or unreadable, or its header has no ``filename`` column.
    """
    try:
        with open(tsv, encoding="utf-8-sig", newline="") as fh:
            lines = list(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    except FileNotFoundError:
        raise DataError(f"{tsv}: TSV file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{tsv}: cannot read TSV: {e}") from None
    if not lines or not any(lines[0]):
        raise DataError(f"{tsv}: empty TSV, expected a header row with a 'filename' column")
    header = [c.strip() for c in lines[0]]
    if "filename" not in header:
        raise DataError(f"{tsv} line 1: no 'filename' column in the header {header}")
    name_col = header.index("filename")
    label_col = header.index("labels") if "labels" in header else None
    pack_col = header.index("hdf5path") if "hdf5path" in header else None

    rows, seen = [], {}
    for line, row in enumerate(lines[1:], start=2):
        if not row or row == [""]:
            continue
        where = f"{tsv} line {line}"
        name = row[name_col] if len(row) == len(header) else ""
        labels, error = None, None
        pack = row[pack_col] if pack_col is not None and len(row) == len(header) else None
        try:
            if len(row) != len(header):
                raise DataError(f"{where}: expected {len(header)} tab-separated columns, "
                                f"found {len(row)}")
            if not name:
                raise DataError(f"{where}: empty filename")
            norm = os.path.normpath(name)
            if norm in seen:
                raise DataError(f"{where}: duplicate filename {name!r} "
                                f"(first on line {seen[norm]})")
            if label_col is not None:
                labels = _parse_labels(row[label_col], num_classes, where)
            if pack_col is not None and not pack:
                raise DataError(f"{where}: empty hdf5path")
            seen[norm] = line
        except DataError as e:
            error = e
        rows.append(ManifestRow(line, name, labels, error, pack))
    return rows


def _parse_labels(cell: str, num_classes: int | None, where: str) -> tuple[int, ...]:
    out = []
    for part in cell.split(";") if cell.strip() else []:
        try:
            c = int(part.strip())
        except ValueError:
            raise DataError(f"{where}: bad label entry {part!r} in {cell!r}: expected "
                            f"';'-separated integer class indices") from None
        if c < 0 or (num_classes is not None and c >= num_classes):
            hi = "" if num_classes is None else f", < num_classes={num_classes}"
            raise DataError(f"{where}: label {c} in {cell!r} out of range (expected >= 0{hi})")
        out.append(c)
    return tuple(out)


def write_tsv(
    path: str | os.PathLike,
    filenames: Sequence[str],
    labels: Sequence[Iterable[int]] | None = None,
) -> Path:
    """Write a TSV manifest that :meth:`AudioDataset.from_tsv` reads.

    Args:
        path: output file; filenames are written as given (relative to its folder, or absolute).
        filenames: one per row.
        labels: per row, the positive class indices; None writes no ``labels`` column.

    Returns:
        ``path`` as a Path.

    Raises:
        ValueError: lengths differ, or a filename is empty or holds a tab or newline.

    Example:
        >>> write_tsv("train.tsv", ["a.wav", "b.wav"], [[0, 3], []])  # doctest: +SKIP
    """
    if labels is not None and len(labels) != len(filenames):
        raise CedTrainError(f"got {len(filenames)} filenames but {len(labels)} label rows")
    path = Path(path)
    with open(path, "w", encoding="utf-8", newline="") as fh:
        fh.write("filename" + ("\tlabels" if labels is not None else "") + "\n")
        for i, name in enumerate(filenames):
            if not name or any(c in name for c in "\t\r\n"):
                raise CedTrainError(f"filename {name!r} (row {i}) is empty or holds a tab or newline")
            if labels is None:
                fh.write(f"{name}\n")
            else:
                fh.write(f"{name}\t{';'.join(str(int(c)) for c in labels[i])}\n")
    return path
