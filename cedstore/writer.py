"""Writing a store: create(), resume() and the Writer they return."""

from __future__ import annotations

import contextlib
import hashlib
import operator
import os
from typing import Any

import numpy as np

from cedstore import _core, targets
from cedstore._version import __version__
from cedstore.errors import InvalidInputError, WriterClosedError
from cedstore.format import INDEX_WIDTHS, VALUE_KINDS, encode_metadata, index_width_for


def label_space(names: list[str]) -> dict:
    """The reserved `label_space` metadata entry for an ordered list of class names.

    Example:
        >>> cedstore.label_space(["Speech", "Music"])["num_classes"]
        2
    """
    digest = hashlib.sha256("\n".join(names).encode("utf-8")).hexdigest()
    return {"num_classes": len(names), "names_sha256": digest}


def _writer_metadata(metadata: dict | None, num_classes: int) -> bytes:
    if metadata is not None and not isinstance(metadata, dict):
        raise InvalidInputError(f"metadata must be a dict, found {type(metadata).__name__}")
    meta = dict(metadata or {})
    if "writer" in meta:
        raise InvalidInputError("metadata key 'writer' is reserved: cedstore sets it")
    space = meta.get("label_space")
    if isinstance(space, dict) and space.get("num_classes", num_classes) != num_classes:
        raise InvalidInputError(
            f"metadata label_space has {space['num_classes']} classes, the store {num_classes}"
        )
    meta["writer"] = f"cedstore {__version__}"
    return encode_metadata(meta)


def _as_float32_if_wide(a: Any) -> Any:
    """float64 and bfloat16 (a torch tensor, or ml_dtypes in numpy), what teachers emit, as
    float32: exact for bfloat16; float64 rounds to nearest first, then encodes as float32 does."""
    if str(getattr(a, "dtype", "")) == "torch.bfloat16":  # numpy cannot take it; no torch import here
        return a.float()
    a = np.asarray(a)
    if a.dtype == np.float64 or a.dtype.name == "bfloat16":
        with np.errstate(over="ignore"):  # beyond float32 becomes Inf, which the encoder refuses
            return a.astype(np.float32)
    return a


def _check_array(path: str, name: str, a: Any, kinds: str, shape: tuple) -> np.ndarray:
    if kinds == "f":
        a = _as_float32_if_wide(a)
    a = np.asarray(a)
    if kinds == "f":
        dtype_ok = a.dtype in (np.float32, np.float16)
    else:  # an empty list is an integer array too
        dtype_ok = a.dtype.kind in kinds or a.size == 0
    if not dtype_ok or a.shape != shape:
        kind = {"iu": "an integer", "f": "a float32 or float16"}[kinds]
        raise InvalidInputError(
            f"{path}: {name} must be {kind} array of shape {list(shape)}, found {a.dtype} {list(a.shape)}"
        )
    return a


def _seeds_as_int32(path: str, epoch: int, ids: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """int32 seeds as they are, uint32 seeds in [2^31, 2^32) by their 32 bits; anything else is refused."""
    bad = np.flatnonzero((seeds < -(2**31)) | (seeds >= 2**32))
    if len(bad):
        row = int(bad[0])
        raise InvalidInputError(
            f"{path}: epoch {epoch}, sample {ids[row]} (row {row}): seed {seeds[row]} outside "
            "[-2**31, 2**32): seeds must be int32 or uint32 values"
        )
    seeds = seeds.astype(np.int64)
    return np.where(seeds >= 2**31, seeds - 2**32, seeds).astype(np.int32)


class Writer:
    """Writes records of one store; returned by create() and resume(), closed by `with`.

    Leaving a `with` block normally seals every complete epoch; leaving it by an exception
    closes without sealing, so the file can be resumed.

    A Writer holds the file's writer lock until it is closed: one writer per file (FORMAT.md,
    "Writers"). Several threads may call write(); their record stores are serialized.
    """

    def __init__(self, core: _core.Writer):
        self._core = core
        self._closed = False

    path = property(lambda self: self._core.path)
    num_classes = property(lambda self: self._core.num_classes)
    k = property(lambda self: self._core.k)
    num_samples = property(lambda self: self._core.num_samples)
    num_epochs = property(lambda self: self._core.num_epochs)
    index_dtype = property(lambda self: INDEX_WIDTHS[self._core.index_width])

    def write(self, epoch: int, sample_ids, probs=None, *, values=None, indices=None, seeds) -> None:
        """Store one batch of records of `epoch`: dense teacher outputs, or top-k rows.

        Args:
            epoch: augmentation epoch, in [0, num_epochs).
            sample_ids: integer [B], distinct.
            probs: float32/float16 [B, num_classes] teacher outputs (probabilities or logits,
                as the store's value_kind says); encoded to top-k by the core. float64 and
                bfloat16 (numpy, or a CPU torch tensor) are cast to float32 first.
            values: instead of `probs`, float32/float16 [B, k], non-increasing per row.
            indices: with `values`, integer [B, k] class indices, distinct per row.
            seeds: integer [B] augmentation seeds, int32 or uint32 values: in [-2**31, 2**32);
                a uint32 value is stored by its 32 bits (read back as int32).

        Raises:
            InvalidInputError: wrong shapes/dtypes, NaN/Inf, bad or repeated indices or ids.
            IndexError: epoch or a sample id out of range.
            WriterClosedError: the writer was closed.

        Example:
            >>> w.write(0, np.arange(64), probs=torch.sigmoid(logits).numpy(), seeds=seeds)
        """
        if self._closed:
            raise WriterClosedError(f"{self.path}: cannot write epoch {epoch}: the writer is closed")
        epoch = self._check_epoch(epoch)
        ids = np.asarray(sample_ids)
        ids = _check_array(self.path, "sample_ids", ids, "iu", (ids.size,))
        batch = (len(ids),)
        seeds = _seeds_as_int32(self.path, epoch, ids, _check_array(self.path, "seeds", seeds, "iu", batch))
        if probs is not None and values is None and indices is None:
            probs = _check_array(self.path, "probs", probs, "f", batch + (self.num_classes,))
            self._core.write_dense(epoch, ids, probs, seeds)
        elif probs is None and values is not None and indices is not None:
            values = _check_array(self.path, "values", values, "f", batch + (self.k,))
            indices = _check_array(self.path, "indices", indices, "iu", batch + (self.k,))
            self._core.write_topk(epoch, ids, values, indices, seeds)
        else:
            raise InvalidInputError(f"{self.path}: give either probs= or both values= and indices=")

    def written(self, epoch: int) -> np.ndarray:
        """bool [num_samples]: which records of `epoch` are written (to finish a resumed run)."""
        return self._core.written(self._check_epoch(epoch))

    def _check_epoch(self, epoch: int) -> int:
        epoch = operator.index(epoch)  # any Python int, checked here before the core's int64 sees it
        if not 0 <= epoch < self.num_epochs:
            raise IndexError(f"{self.path}: epoch {epoch} out of range [0, {self.num_epochs})")
        return epoch

    def close(self, seal: bool = True) -> None:
        """Flush; when `seal`, checksum and seal every complete epoch; release the writer lock.
        Waits for a write in flight in another thread; later writes raise WriterClosedError.
        Idempotent."""
        self._closed = True
        self._core.close(seal)

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(seal=exc_type is None)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (f"<cedstore.Writer {self.path!r} N={self.num_samples} E={self.num_epochs} "
                f"C={self.num_classes} K={self.k} {state}>")


def create(
    path: str | os.PathLike,
    *,
    num_classes: int,
    k: int,
    num_samples: int,
    num_epochs: int = 1,
    keys: list[str] | None = None,
    metadata: dict | None = None,
    value_kind: str = "probability",
    overwrite: bool = False,
    index_dtype=None,
) -> Writer:
    """Create a store with every record unwritten and return its Writer.

    Args:
        path: the new file.
        num_classes: C: at most 32767 with int16 class indices, 2**24 with int32.
        k: values kept per record, 1 <= k <= C.
        num_samples: N, records per epoch.
        num_epochs: E, augmentation epochs.
        keys: one unique non-empty name per sample (e.g. the audio file), to join by name.
        metadata: JSON-serializable dict; reserved keys (FORMAT.md) must have their types,
            e.g. {"activation": "sigmoid", "label_space": cedstore.label_space(names)}.
        value_kind: "probability" or "logit".
        overwrite: replace an existing file instead of raising FileExistsError.
        index_dtype: how class indices are stored: np.int16 (4k + 4-byte records, C <= 32767:
            the paper's layout), np.int32 (the wide layout, 4*ceil(k/2) + 4k + 4 bytes, C <= 2**24;
            readers that predate format 1.2 refuse it), or None: int16 when C fits, else int32.

    Raises:
        InvalidInputError: bad shape, keys, metadata or value_kind.
        FileExistsError: `path` exists and not `overwrite`.
        CedStoreError: `overwrite` and another writer has `path` open for writing.

    Example:
        >>> with cedstore.create("t.ced", num_classes=527, k=20, num_samples=n, num_epochs=4) as w:
        ...     w.write(0, ids, probs=probs, seeds=seeds)
        >>> cedstore.create("lm.ced", num_classes=128256, k=20, num_samples=n).index_dtype  # Llama-3
        dtype('int32')
    """
    path = os.fspath(path)
    num_classes, k = operator.index(num_classes), operator.index(k)
    num_samples, num_epochs = operator.index(num_samples), operator.index(num_epochs)
    try:
        index_width = index_width_for(num_classes, index_dtype)
    except InvalidInputError as e:
        raise InvalidInputError(f"{path}: {e}") from None
    if not 1 <= k <= num_classes:
        raise InvalidInputError(f"{path}: k = {k} must be in [1, num_classes = {num_classes}]")
    if num_samples < 1 or num_epochs < 1:
        raise InvalidInputError(
            f"{path}: num_samples = {num_samples} and num_epochs = {num_epochs} must be at least 1"
        )
    if num_samples >= 2**63 or num_epochs >= 2**32:  # the core's int64 and the header's u32
        raise InvalidInputError(
            f"{path}: num_samples = {num_samples} must be below 2**63 and num_epochs = {num_epochs} below 2**32"
        )
    if value_kind not in VALUE_KINDS:
        raise InvalidInputError(f"{path}: value_kind must be one of {sorted(VALUE_KINDS)}, found {value_kind!r}")
    metadata_json = _writer_metadata(metadata, num_classes)
    targets.check_tail_metadata(path, metadata, value_kind)  # a recorded policy readers can apply
    keys = None if keys is None else list(keys)
    core = _core.Writer.create(path, k, num_classes, num_samples, num_epochs, VALUE_KINDS[value_kind],
                               metadata_json, keys, overwrite, index_width)
    return Writer(core)


def resume(path: str | os.PathLike) -> Writer:
    """Reopen a store for writing (e.g. after an interrupted run); every epoch becomes open.

    Raises:
        CedStoreError: another writer (in this process or another) has the file open.
        FormatError: not a valid store (or not a regular file).

    Example:
        >>> w = cedstore.resume("t.ced")
        >>> todo = np.flatnonzero(~w.written(0))
    """
    return Writer(_core.Writer.resume(os.fspath(path)))


@contextlib.contextmanager
def create_replacing(path: str | os.PathLike, **create_args: Any):
    """A :func:`create` writer on ``PATH.partial`` that becomes ``path``, sealed, only when the
    block ends without an error; on an error the partial file is removed (merge, imports).

    Example:
        >>> with create_replacing("merged.ced", num_classes=527, k=20, num_samples=n) as w:
        ...     w.write(0, ids, probs=probs, seeds=seeds)
    """
    path = os.fspath(path)
    partial = path + ".partial"
    writer = create(partial, overwrite=True, **create_args)
    try:
        yield writer
        writer.close(seal=True)
    except BaseException:
        writer.close(seal=False)
        os.remove(partial)
        raise
    os.replace(partial, path)
