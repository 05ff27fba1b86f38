"""Audio datasets: a TSV or a folder of audio files, cut into fixed-length keyed chunks.

A dataset is a list of *chunks*. Chunk ``i`` has a stable key ``filename#start-end`` that names
the file (as written in the TSV, or the POSIX path relative to the folder) and the sample range
``[start, end)`` at the dataset's rate (16 kHz unless told otherwise), e.g. ``a/b.wav#0-160000``.
These keys are what a logit store's key table holds: they join store records to audio.

Chunking rule, for a file of ``n`` samples (after resampling) and a chunk of ``L`` samples:

- ``n <= L``: one chunk ``0-n`` of the file's own length (never padded, never dropped), so a
  dataset of 1.92 s clips works with the default 10 s chunk.
- ``n > L``: full chunks ``0-L``, ``L-2L``, ...; a trailing remainder of ``r`` samples is kept
  when ``r >= L/2`` (its key ends at the file's end, ``k·L-n``, and it is zero-padded to ``L``
  samples when loaded) and dropped when ``r < L/2``.

The index is built from ``soundfile.info`` only; audio is decoded when a chunk is loaded, by
``ced_train.audio`` (exact resampling); the TSV is read by ``ced_train.manifest``.

Sampler, dataset and collation are separate (lhotse style): ``AudioDataset`` is a map-style
dataset that ``torch.utils.data.DataLoader`` accepts as is, and :func:`collate` builds the batch.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from ced_train.audio import (AUDIO_SUFFIXES, MIN_CLIP_SECONDS, SAMPLE_RATE, audio_info, check_length, load_chunk,
                             resampled_length, scan_file)
from ced_train.errors import CedTrainError, DataError
from ced_train.manifest import read_tsv
from ced_train.packs import dataset_name, pack_info, read_pack_frames

__all__ = ["AudioDataset", "collate", "write_skipped"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _File:
    name: str  # as written in the TSV, or relative to the folder: the key prefix
    path: Path  # the audio file, or the HDF5 pack holding it
    rate: int
    num_frames: int  # at the file's own rate
    labels: tuple[int, ...] | None
    pack_dataset: str | None = None  # the dataset in the pack at ``path``; None: a plain file

    def read(self):
        """The frame reader of ``ced_train.audio.load_chunk`` (None: soundfile on ``path``)."""
        if self.pack_dataset is None:
            return None
        return lambda first, stop: read_pack_frames(self.path, self.pack_dataset, first, stop)

    @property
    def where(self) -> str:
        return str(self.path) if self.pack_dataset is None else f"{self.path}[{self.pack_dataset!r}]"


# --------------------------------------------------------------------------- dataset


class AudioDataset:
    """Fixed-length keyed chunks of audio files, with optional multi-hot labels.

    Build one with :meth:`from_tsv` or :meth:`from_folder`. Item ``i`` is chunk ``i``::

        ds[i] == {
            "id":     i,                        # int: the chunk id (the store's sample id)
            "key":    "a/b.wav#0-160000",       # str: stable join key, see the module doc
            "wave":   float32 np.ndarray [S],   # mono at ds.sample_rate, S == ds.lengths[i]
            "target": float32 np.ndarray [C],   # multi-hot; only when the dataset has labels
        }

    and :func:`collate` turns a list of items into the batch::

        {
            "ids":     int64 tensor [B],
            "keys":    list[str] (B),
            "wave":    float32 tensor [B, S],   # zero-padded to the longest item
            "lengths": int64 tensor [B],        # samples of each item before padding
            "target":  float32 tensor [B, C],   # only when the dataset has labels
        }

    ``DataLoader(ds, batch_size=32, shuffle=True, collate_fn=collate)`` works as is. With
    ``cache=True`` and worker processes, each worker fills its own cache (keep workers alive
    with ``persistent_workers=True``, or use ``num_workers=0``).

    Attributes:
        keys: one key per chunk, in chunk-id order.
        lengths: int64 ``[N]``, the number of samples each chunk loads as.
        num_classes: the label space size, or None when neither labels nor a size were given.
        sample_rate: the rate of every loaded wave.
        skipped: ``(file, reason)`` for every file or TSV row left out with ``skip_bad=True``.
    """

    def __init__(
        self,
        files: Sequence[_File],
        *,
        source: str,
        num_classes: int | None,
        chunk_seconds: float = 10.0,
        sample_rate: int = SAMPLE_RATE,
        cache: bool = False,
        skipped: Sequence[tuple[str, str]] = (),
    ):
        chunk = int(round(chunk_seconds * sample_rate))
        if chunk <= 0:
            raise CedTrainError(f"chunk_seconds must give at least one sample, got {chunk_seconds}")
        self.source = source
        self.sample_rate = sample_rate
        self.chunk_samples = chunk
        self.num_classes = num_classes
        self.skipped = list(skipped)
        self._files = list(files)
        self._has_labels = bool(self._files) and self._files[0].labels is not None
        self._cache: dict[int, np.ndarray] | None = {} if cache else None

        file_ids, starts, ends, lengths = [], [], [], []
        for f_id, f in enumerate(self._files):
            n = resampled_length(f.num_frames, f.rate, sample_rate)
            for start, end, length in _chunks(n, chunk):
                file_ids.append(f_id)
                starts.append(start)
                ends.append(end)
                lengths.append(length)
        self.keys = [f"{self._files[f].name}#{s}-{e}" for f, s, e in zip(file_ids, starts, ends)]
        if not file_ids:
            detail = f" ({self.summary()})" if skipped else ""
            raise DataError(f"{source}: no usable audio{detail}")
        self._file_ids = np.asarray(file_ids, dtype=np.int64)
        self._starts = np.asarray(starts, dtype=np.int64)
        self._ends = np.asarray(ends, dtype=np.int64)
        self.lengths = np.asarray(lengths, dtype=np.int64)

    # ---- constructors

    @classmethod
    def from_tsv(
        cls,
        path: str | os.PathLike,
        num_classes: int | None = None,
        chunk_seconds: float = 10.0,
        sample_rate: int = SAMPLE_RATE,
        skip_bad: bool = False,
        cache: bool = False,
        min_seconds: float = MIN_CLIP_SECONDS,
    ) -> "AudioDataset":
        """Read a TSV manifest: a header row, a ``filename`` column, an optional ``labels`` column.

        Filenames are relative to the TSV's folder unless absolute. ``labels`` holds
        ``;``-separated integer class indices (an empty cell: a clip with no positives). With an
        ``hdf5path`` column (the label TSV of the original CED's ``wavlist_to_hdf5.py``), each
        row's audio is read from that HDF5 pack (``ced_train.packs``; needs h5py), the dataset
        named by the filename's base name (or the full filename), at 16 kHz; the keys are the
        same as for the files themselves. Other columns are ignored. Blank lines are skipped.

        Args:
            path: the TSV file (UTF-8).
            num_classes: label space size; inferred as ``max label + 1`` when None (pass it for
                evaluation sets, which may lack the last classes).
            chunk_seconds: chunk length; see the module doc for the chunking rule.
            sample_rate: rate of the loaded waves and unit of the keys' sample ranges.
            skip_bad: log and skip bad rows and files instead of raising; see ``skipped``. Each
                file is then also decoded once, block by block, so that a file corrupt in the
                middle or holding NaN/Inf is skipped here, before the keys are fixed, and never
                stops a run half-way.
            cache: keep decoded chunks in memory (for small datasets read many times).
            min_seconds: refuse (or, with ``skip_bad``, skip) files shorter than this; default
                ``ced_train.audio.MIN_CLIP_SECONDS``, the shortest clip a CED model takes (16
                frames); pass 0.0 to take any length.

        Returns:
            The dataset, chunks in TSV row order then time order.

        Raises:
            DataError: the TSV is missing or has no ``filename`` column; or (unless
                ``skip_bad``) a row is malformed, a filename repeats, a label is not an integer
                in ``[0, num_classes)``, or a file is missing, unreadable or empty.

        Example:
            >>> ds = AudioDataset.from_tsv("train.tsv", num_classes=527)  # doctest: +SKIP
            >>> batch = ds.load_batch([0, 1]); y = ds.labels([0, 1])     # doctest: +SKIP
        """
        tsv = Path(path)
        rows = read_tsv(tsv, num_classes)
        if num_classes is None and any(r.labels is not None for r in rows):
            num_classes = max(1, 1 + max((max(r.labels) for r in rows if r.labels), default=-1))
        files, skipped = [], []
        for line, name, labels, error, pack in rows:
            if error is None:
                try:
                    file = _tsv_file(tsv, name, labels, pack, sample_rate, min_seconds, skip_bad)
                except DataError as e:
                    error = f"{tsv} line {line}: {e}"
            if error is not None:
                _bad(skip_bad, skipped, name or f"{tsv} line {line}", str(error))
                continue
            files.append(file)
        return cls(files, source=str(tsv), num_classes=num_classes, chunk_seconds=chunk_seconds,
                   sample_rate=sample_rate, cache=cache, skipped=skipped)

    @classmethod
    def from_folder(
        cls,
        path: str | os.PathLike,
        chunk_seconds: float = 10.0,
        sample_rate: int = SAMPLE_RATE,
        skip_bad: bool = False,
        cache: bool = False,
        min_seconds: float = MIN_CLIP_SECONDS,
    ) -> "AudioDataset":
        """Every ``.wav``/``.flac``/``.ogg`` file under a folder (recursive, sorted), unlabelled.

        Keys use the POSIX path relative to the folder, e.g. ``sub/x.wav#0-160000``; the suffix
        match ignores case.

        Args:
            path: the folder.
            chunk_seconds, sample_rate, skip_bad, cache, min_seconds: as in :meth:`from_tsv`.

        Returns:
            The dataset (``labels()`` returns None, ``num_classes`` is None).

        Raises:
            DataError: the folder is missing or holds no usable audio; or (unless ``skip_bad``)
                a file is unreadable or empty.

        Example:
            >>> ds = AudioDataset.from_folder("clips/", chunk_seconds=10.0)  # doctest: +SKIP
        """
        root = Path(path)
        if not root.is_dir():
            raise DataError(f"{root}: folder not found")
        found = sorted(
            (p.relative_to(root).as_posix(), p)
            for p in root.rglob("*")
            if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file()
        )
        files, skipped = [], []
        for name, file_path in found:
            try:
                rate, frames = _check_file(file_path, sample_rate, min_seconds, skip_bad)
            except DataError as e:
                _bad(skip_bad, skipped, name, str(e))
                continue
            files.append(_File(name, file_path, rate, frames, None))
        return cls(files, source=str(root), num_classes=None, chunk_seconds=chunk_seconds,
                   sample_rate=sample_rate, cache=cache, skipped=skipped)

    # ---- access

    @property
    def resamples(self) -> bool:
        """Whether any file is at another rate than ``sample_rate`` (its chunks go through
        :func:`ced_train.audio.resample`)."""
        return any(f.rate != self.sample_rate for f in self._files)

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> dict:
        i = self._check_id(i)
        item = {"id": i, "key": self.keys[i], "wave": self._load(i)}
        if self._has_labels:
            item["target"] = self.labels([i])[0]
        return item

    def load_batch(self, ids: Iterable[int]) -> np.ndarray:
        """Load chunks as one float32 array ``[B, S]``, zero-padded to the longest.

        Args:
            ids: chunk ids.

        Returns:
            float32 ``[B, S]`` with ``S = max(lengths[ids])``; shorter rows are padded with
            zeros at the end (only datasets mixing lengths have such rows).

        Raises:
            IndexError: an id is out of range.
            DataError: a file cannot be decoded or is shorter than its header said.

        Example:
            >>> waves = ds.load_batch(range(8))  # doctest: +SKIP
        """
        waves = [self._load(self._check_id(i)) for i in ids]
        return _pad_stack(waves)

    def labels(self, ids: Iterable[int]) -> np.ndarray | None:
        """Multi-hot targets of chunks (a chunk has its file's labels).

        Args:
            ids: chunk ids.

        Returns:
            float32 ``[B, num_classes]``, or None when the dataset has no labels.

        Raises:
            IndexError: an id is out of range.

        Example:
            >>> y = ds.labels([0, 1])  # doctest: +SKIP
        """
        if not self._has_labels:
            return None
        ids = [self._check_id(i) for i in ids]
        out = np.zeros((len(ids), self.num_classes), dtype=np.float32)
        for row, i in enumerate(ids):
            out[row, list(self._files[self._file_ids[i]].labels)] = 1.0
        return out

    def manifest_sha256(self) -> str:
        """SHA-256 (hex) identifying the chunk keys and labels, for a store's metadata.

        The digest covers, for every chunk in id order, the UTF-8 line
        ``key + "\\t" + ";".join(sorted label indices) + "\\n"`` (the tab and labels are left
        out when the dataset has no labels). Audio content is not hashed.

        Returns:
            64 lowercase hex digits.

        Example:
            >>> meta = {"dataset": {"manifest_sha256": ds.manifest_sha256()}}  # doctest: +SKIP
        """
        h = hashlib.sha256()
        for key, f_id in zip(self.keys, self._file_ids):
            labels = self._files[f_id].labels
            line = key if labels is None else key + "\t" + ";".join(map(str, sorted(set(labels))))
            h.update(line.encode("utf-8") + b"\n")
        return h.hexdigest()

    def summary(self) -> str:
        """One line: source, files, chunks and how many bad files were skipped."""
        s = f"{self.source}: {len(self._files)} files, {len(self.keys)} chunks"
        if self.skipped:
            s += f", skipped {len(self.skipped)} bad (first: {self.skipped[0][1]})"
        return s

    # ---- internals

    def _check_id(self, i) -> int:
        i = int(i)
        if not 0 <= i < len(self.keys):
            raise IndexError(f"chunk id {i} out of range for {self.source} with {len(self)} chunks")
        return i

    def _load(self, i: int) -> np.ndarray:
        if self._cache is not None and i in self._cache:
            return self._cache[i].copy()  # a copy: callers may modify waves in place
        f = self._files[self._file_ids[i]]
        x = load_chunk(f.where, f.rate, int(self._starts[i]), int(self._ends[i]), self.sample_rate,
                       key=self.keys[i], num_frames=f.num_frames, read=f.read())
        x = np.pad(x, (0, int(self.lengths[i]) - len(x)))
        if self._cache is not None:
            self._cache[i] = x.copy()
        return x


def _check_file(path: Path, sample_rate: int, min_seconds: float, decode: bool) -> tuple[int, int]:
    rate, frames = audio_info(path, sample_rate, min_seconds)
    if decode:
        scan_file(path, rate, frames, sample_rate)
    return rate, frames


def _tsv_file(tsv: Path, name: str, labels, pack: str | None, sample_rate: int, min_seconds: float,
              decode: bool) -> _File:
    """A TSV row's file: on disk, or (with an ``hdf5path``) a dataset in the original's pack."""
    if pack is None:
        path = Path(name) if os.path.isabs(name) else tsv.parent / name
        return _File(name, path, *_check_file(path, sample_rate, min_seconds, decode), labels)
    # the original writes the pack's path relative to where it ran: try the TSV's folder first
    path = Path(pack) if os.path.isabs(pack) or not (tsv.parent / pack).exists() else tsv.parent / pack
    file = _File(name, path, 0, 0, labels, dataset_name(path, name))
    rate, frames = pack_info(path, file.pack_dataset)
    file = _File(name, path, rate, frames, labels, file.pack_dataset)
    check_length(file.where, resampled_length(frames, rate, sample_rate), sample_rate, min_seconds)
    if decode:
        scan_file(file.where, rate, frames, sample_rate, read=file.read())
    return file


def _chunks(n: int, chunk: int) -> list[tuple[int, int, int]]:
    """``(start, end, loaded_length)`` of each chunk of an ``n``-sample file."""
    if n <= chunk:
        return [(0, n, n)] if n > 0 else []
    out = [(s, s + chunk, chunk) for s in range(0, n - chunk + 1, chunk)]
    rest = n - len(out) * chunk
    if rest > 0 and 2 * rest >= chunk:
        out.append((n - rest, n, chunk))
    return out


def _pad_stack(waves: Sequence[np.ndarray]) -> np.ndarray:
    out = np.zeros((len(waves), max((len(w) for w in waves), default=0)), dtype=np.float32)
    for row, w in enumerate(waves):
        out[row, : len(w)] = w
    return out


def write_skipped(path: str | os.PathLike, datasets: Iterable["AudioDataset"]) -> Path | None:
    """List every file the datasets skipped in one TSV (``source``, ``filename``, ``reason``).

    Returns:
        ``path``, or None (and nothing written) when nothing was skipped.

    Example:
        >>> write_skipped("runs/mini/skipped.tsv", [train_ds, eval_ds])  # doctest: +SKIP
    """
    rows = [(ds.source, name, reason) for ds in datasets for name, reason in ds.skipped]
    if not rows:
        return None
    path = Path(path)
    with open(path, "w", encoding="utf-8", newline="") as fh:
        fh.write("source\tfilename\treason\n")
        for row in rows:
            fh.write("\t".join(" ".join(str(v).split()) for v in row) + "\n")
    return path


def _bad(skip_bad: bool, skipped: list, name: str, reason: str) -> None:
    if not skip_bad:
        raise DataError(reason)
    _log.warning("skipping %s", reason)
    skipped.append((name, reason))


# --------------------------------------------------------------------------- collation


def collate(items: Sequence[dict]) -> dict:
    """Collate dataset items into a batch (``DataLoader(ds, collate_fn=collate)``).

    Args:
        items: dicts from ``AudioDataset.__getitem__``.

    Returns:
        ``{"ids": int64 [B], "keys": list[str] (B), "wave": float32 [B, S] (zero-padded to the
        longest), "lengths": int64 [B] (samples before padding), "target": float32 [B, C]
        (only when the items have targets)}``, all tensors on the CPU.

    Example:
        >>> from torch.utils.data import DataLoader
        >>> loader = DataLoader(ds, batch_size=32, collate_fn=collate)  # doctest: +SKIP
    """
    batch = {
        "ids": torch.tensor([it["id"] for it in items], dtype=torch.int64),
        "keys": [it["key"] for it in items],
        "wave": torch.from_numpy(_pad_stack([it["wave"] for it in items])),
        "lengths": torch.tensor([len(it["wave"]) for it in items], dtype=torch.int64),
    }
    if items and "target" in items[0]:
        batch["target"] = torch.from_numpy(np.stack([it["target"] for it in items]))
    return batch
