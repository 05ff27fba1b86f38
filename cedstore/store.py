"""Reading a store: open() and the Store it returns, and joining records with a dataset by key."""

from __future__ import annotations

import copy
import dataclasses
import operator
import os

import numpy as np

from cedstore import _core, targets
from cedstore._progress import Progress
from cedstore.errors import InvalidInputError
from cedstore.format import EPOCH_SEALED, INDEX_WIDTHS, VALUE_KINDS, decode_metadata, record_dtype

_VALUE_KIND_NAMES = {code: name for name, code in VALUE_KINDS.items()}
_NUM_EXAMPLES = 5


@dataclasses.dataclass(frozen=True)
class JoinReport:
    """How a dataset's keys line up with a store's records (from Store.join).

    Attributes:
        ids: int64 [len(keys)], the record of each dataset key, -1 where the store has none.
        missing_in_store: dataset keys the store has no record for.
        missing_in_dataset: store samples no dataset key names (normal for a subset).
        missing_in_store_examples / missing_in_dataset_examples: up to 5 such keys each.
    """

    path: str
    ids: np.ndarray
    missing_in_store: int
    missing_in_dataset: int
    missing_in_store_examples: list[str]
    missing_in_dataset_examples: list[str]

    def check(self) -> JoinReport:
        """Raise InvalidInputError unless every dataset key has a record; return self."""
        if self.missing_in_store:
            raise InvalidInputError(str(self))
        return self

    def __str__(self) -> str:
        return (
            f"{self.path}: {len(self.ids) - self.missing_in_store} of {len(self.ids)} dataset keys "
            f"have records; {self.missing_in_store} missing in the store "
            f"(e.g. {self.missing_in_store_examples}), {self.missing_in_dataset} store samples "
            f"not in the dataset (e.g. {self.missing_in_dataset_examples})"
        )


class Store:
    """A store opened read-only (memory-mapped, validated at open); use cedstore.open().

    Picklable: a pickle holds the path and unpickling reopens the file (for DataLoader
    workers); records are never pickled.

    A writer in another process may fill or rewrite records while the store is open: dense()
    and topk() read each record whole or not at all (FORMAT.md, "Rewriting a record"). If
    another process truncates the file, each call raises FormatError; a truncation between
    that check and the read kills the process with SIGBUS, as with any memory map.
    """

    def __init__(self, path: str | os.PathLike):
        self._core = _core.Reader(os.fspath(path))
        try:
            self._metadata = decode_metadata(self._core.metadata_bytes(), self._core.path)
        except BaseException:
            self._core.close()
            raise
        self._keys: list[str] | None = None

    path = property(lambda self: self._core.path)
    num_classes = property(lambda self: self._core.num_classes)
    k = property(lambda self: self._core.k)
    num_samples = property(lambda self: self._core.num_samples)
    num_epochs = property(lambda self: self._core.num_epochs)
    record_size = property(lambda self: self._core.record_size)
    file_size = property(lambda self: self._core.file_size)
    has_keys = property(lambda self: self._core.has_keys)

    @property
    def index_dtype(self) -> np.dtype:
        """dtype of the stored class indices: int16 (C <= 32767, the paper's 84-byte record at
        k = 20), or int32 (the wide layout of format 1.2, up to 2**24 classes)."""
        return INDEX_WIDTHS[self._core.index_width]

    @property
    def value_kind(self) -> str:
        """"probability" or "logit"."""
        return _VALUE_KIND_NAMES[self._core.value_kind]

    @property
    def metadata(self) -> dict:
        """The metadata object (a copy), reserved and user keys alike."""
        return copy.deepcopy(self._metadata)

    @property
    def keys(self) -> list[str] | None:
        """The key of every sample, in sample order, or None when the store has no key table."""
        if self._keys is None and self.has_keys:
            self._keys = self._core.keys()
        return self._keys

    def dense(self, epoch: int, sample_ids, fill: float = 0.0, out: np.ndarray | None = None, *,
              tail: str = "zero"):
        """Decode records to dense targets: `fill` outside each record's top-k, or a tail policy.

        Args:
            epoch: augmentation epoch.
            sample_ids: integer [B].
            fill: value of the classes outside the top-k (0 for the tail policy "zero").
            out: optional C-contiguous writable float32 [B, C] to fill instead of allocating.
            tail: tail policy (FORMAT.md, tail_policy): "zero" (with `fill`), or for softmax
                probabilities "uniform" or "renormalize" (cedstore.targets).

        Returns:
            (targets float32 [B, C], seeds int32 [B]).

        Raises:
            IndexError: epoch or sample id out of range.
            UnwrittenRecordError: a record was never written.
            IntegrityError: a record holds a class index outside [0, C).
            InvalidInputError: `out` is not a C-contiguous writable float32 [B, C] array, or
                shares memory with `sample_ids`; an unknown tail policy, one the store does
                not fit (cedstore.targets.check_tail), or `fill` with a policy but "zero".
            FormatError: the file was truncated since it was opened.

        Example:
            >>> targets, seeds = store.dense(epoch % store.num_epochs, batch_ids)
            >>> targets, seeds = store.dense(epoch, batch_ids, tail="uniform")  # softmax: rows sum to 1
        """
        if tail != "zero":
            if fill != 0:
                raise InvalidInputError(f"{self.path}: fill = {fill} applies to tail 'zero' only, not {tail!r}")
            return targets.dense(self, epoch, sample_ids, tail, out)
        return self._core.decode_dense(self._check_epoch(epoch), np.asarray(sample_ids), fill, out)

    def topk(self, epoch: int, sample_ids):
        """Records as stored: (values float32 [B, k], indices int64 [B, k], seeds int32 [B]).

        Raises the same errors as dense().
        """
        return self._core.decode_topk(self._check_epoch(epoch), np.asarray(sample_ids))

    def records(self, epoch: int) -> np.ndarray:
        """Zero-copy read-only structured view [N] (values, indices, seed) of one epoch; indices
        are int16 or int32 (index_dtype).

        Unwritten records are included as stored (indices[0] == -1); see written().
        """
        epoch = self._check_epoch(epoch)
        self._core.check_size()
        n = self.num_samples
        offset = self._core.records_offset + epoch * n * self.record_size
        return np.frombuffer(self._core.buffer(), record_dtype(self.k, self.index_dtype), n, offset)

    def written(self, epoch: int) -> np.ndarray:
        """bool [N]: which records of `epoch` are written."""
        return self._core.written(self._check_epoch(epoch))

    def lookup(self, keys: list[str]) -> np.ndarray:
        """int64 [len(keys)]: the sample id of each key, -1 where the store has none."""
        self._require_keys()
        return self._core.lookup(list(keys))

    def join(self, keys: list[str]) -> JoinReport:
        """Match a dataset's keys to records and report coverage both ways; call .check()
        on the report to require a record for every key.

        Example:
            >>> report = store.join(dataset.keys).check()
            >>> targets, seeds = store.dense(epoch, report.ids[batch_positions])
        """
        keys = list(keys)
        ids = self.lookup(keys)
        missing = np.flatnonzero(ids < 0)
        covered = np.zeros(self.num_samples, bool)
        covered[ids[ids >= 0]] = True
        unused = np.flatnonzero(~covered)
        return JoinReport(
            self.path, ids, len(missing), len(unused),
            [keys[i] for i in missing[:_NUM_EXAMPLES]],
            [self._core.key(int(i)) for i in unused[:_NUM_EXAMPLES]],
        )

    def verify(self, require_complete: bool = True, progress: bool | None = None) -> None:
        """Check everything (header, metadata, keys, every record, sealed checksums).

        Args:
            require_complete: an unwritten record is an error.
            progress: rate and ETA on stderr, epoch by epoch; None (default) shows them on a
                terminal after 2 s.

        Raises:
            IntegrityError: the first problem found, naming epoch and sample.
            UnwrittenRecordError: a record is unwritten and `require_complete`.
        """
        with Progress("verify", self.num_epochs * self.num_samples, "records", progress) as bar:
            for epoch in range(self.num_epochs):
                self._core.verify(require_complete, epoch)
                bar.update(self.num_samples)

    def info(self) -> dict:
        """Shape, sizes, completion and sealing per epoch, and metadata, as a JSON-ready dict."""
        epochs = []
        for epoch, (state, crc) in enumerate(self._core.epoch_table()):
            sealed = state == EPOCH_SEALED
            epochs.append({"epoch": epoch, "written": int(self.written(epoch).sum()),
                           "sealed": sealed, "crc32": f"{crc:08x}" if sealed else None})
        records_bytes = self.num_epochs * self.num_samples * self.record_size
        return {
            "path": self.path,
            "format_version": self._core.format_version,
            "num_samples": self.num_samples,
            "num_epochs": self.num_epochs,
            "num_classes": self.num_classes,
            "k": self.k,
            "value_kind": self.value_kind,
            "index_dtype": str(self.index_dtype),
            "record_size": self.record_size,
            "has_keys": self.has_keys,
            "file_size": self.file_size,
            "records_bytes": records_bytes,
            "overhead_bytes": self.file_size - records_bytes,
            "complete": all(e["written"] == self.num_samples for e in epochs),
            "sealed": all(e["sealed"] for e in epochs),
            "epochs": epochs,
            "metadata": self.metadata,
        }

    def close(self) -> None:
        """Release the mapping (it lives on while views from records() are referenced)."""
        self._core.close()

    def _check_epoch(self, epoch: int) -> int:
        epoch = operator.index(epoch)
        if not 0 <= epoch < self.num_epochs:
            raise IndexError(f"{self.path}: epoch {epoch} out of range [0, {self.num_epochs})")
        return epoch

    def _require_keys(self) -> None:
        if not self.has_keys:
            raise InvalidInputError(
                f"{self.path}: the store has no key table; create it with keys= to look records up by name"
            )

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __reduce__(self):
        return (Store, (self.path,))

    def __repr__(self) -> str:
        return (f"<cedstore.Store {self.path!r} N={self.num_samples} E={self.num_epochs} "
                f"C={self.num_classes} K={self.k} {self.value_kind}>")


def open(path: str | os.PathLike) -> Store:  # noqa: A001  (cedstore.open, like io.open)
    """Open a store read-only; the header, sections, metadata and key table are checked now.

    Raises:
        FormatError: not a cedstore file (also a FIFO or device: never waited on), or a
            malformed header, metadata or key table, or their CRC does not match.
        UnsupportedVersionError: written by a newer major format version.
        InvalidInputError: the path contains a NUL byte.
        FileNotFoundError: no such file.

    Example:
        >>> store = cedstore.open("teacher.ced")
        >>> targets, seeds = store.dense(0, [0, 1, 2])
    """
    return Store(path)
