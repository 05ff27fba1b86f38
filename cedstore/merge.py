"""Merging per-rank shards of one store into a single sealed file."""

from __future__ import annotations

import os

import numpy as np

from cedstore import _core
from cedstore.errors import InvalidInputError, UnwrittenRecordError
from cedstore.store import Store

_CHUNK = 1 << 16  # samples per pass: bounds memory to a few MiB per shard


def _check_same(shards: list[Store]) -> None:
    first = shards[0]
    for shard in shards[1:]:
        for name in ("num_samples", "num_epochs", "num_classes", "k", "value_kind", "has_keys"):
            if getattr(shard, name) != getattr(first, name):
                raise InvalidInputError(
                    f"cannot merge {shard.path} into {first.path}: {name} is "
                    f"{getattr(shard, name)!r}, expected {getattr(first, name)!r}"
                )
        if shard._core.metadata_bytes() != first._core.metadata_bytes():
            raise InvalidInputError(f"cannot merge {shard.path} into {first.path}: metadata differs")
        if shard.keys != first.keys:
            raise InvalidInputError(f"cannot merge {shard.path} into {first.path}: keys differ")


def _merge_chunk(shards: list[Store], epoch: int, start: int, stop: int) -> np.ndarray:
    """The merged records [start, stop) of `epoch`, as raw bytes [n, record_size]."""
    first_index = 2 * shards[0].k  # byte offset of indices[0]: 0xFFFF means unwritten
    merged = np.empty((stop - start, shards[0].record_size), np.uint8)
    owner = np.full(stop - start, -1)
    for s, shard in enumerate(shards):
        raw = shard.records(epoch)[start:stop].view(np.uint8).reshape(stop - start, -1)
        written = (raw[:, first_index] != 0xFF) | (raw[:, first_index + 1] != 0xFF)
        clash = written & (owner >= 0) & np.any(raw != merged, axis=1)
        if clash.any():
            i = int(np.flatnonzero(clash)[0])
            raise InvalidInputError(
                f"epoch {epoch}, sample {start + i}: shards {shards[owner[i]].path} and "
                f"{shard.path} hold different records"
            )
        new = written & (owner < 0)
        merged[new] = raw[new]
        owner[new] = s
    if np.any(owner < 0):
        i = int(np.flatnonzero(owner < 0)[0])
        raise UnwrittenRecordError(
            f"epoch {epoch}, sample {start + i}: record is written in none of the {len(shards)} shards"
        )
    return merged


def merge(out_path: str | os.PathLike, shard_paths: list[str | os.PathLike], overwrite: bool = False) -> None:
    """Merge shards of one store (same shape, metadata and keys) into a sealed file.

    Every record must be written in at least one shard, and be byte-identical wherever it is
    written in several. The output appears only when the merge succeeds.

    Raises:
        InvalidInputError: no shards, shards that differ in shape/metadata/keys, or a record
            written differently in two shards (naming both files, the epoch and sample).
        UnwrittenRecordError: a record written in no shard.
        FileExistsError: `out_path` exists and not `overwrite`.

    Example:
        >>> cedstore.merge("teacher.ced", [f"teacher.rank{r}.ced" for r in range(8)])
    """
    out_path = os.fspath(out_path)
    if not shard_paths:
        raise InvalidInputError(f"{out_path}: no shards to merge")
    if os.path.exists(out_path) and not overwrite:
        raise FileExistsError(f"{out_path} exists; pass overwrite=True to replace it")
    shards = [Store(path) for path in shard_paths]
    _check_same(shards)
    for shard in shards:
        shard.verify(require_complete=False)
    first = shards[0]
    partial = out_path + ".partial"
    writer = _core.Writer.create(
        partial, first.k, first.num_classes, first.num_samples, first.num_epochs,
        first._core.value_kind, first._core.metadata_bytes(), first.keys, True,
    )
    try:
        for epoch in range(first.num_epochs):
            for start in range(0, first.num_samples, _CHUNK):
                stop = min(start + _CHUNK, first.num_samples)
                records = _merge_chunk(shards, epoch, start, stop).reshape(-1).view(first.records(0).dtype)
                writer.write_topk(epoch, np.arange(start, stop), np.ascontiguousarray(records["values"]),
                                  np.ascontiguousarray(records["indices"]), np.ascontiguousarray(records["seed"]))
        writer.close(seal=True)
    except BaseException:
        writer.close(seal=False)
        os.remove(partial)
        raise
    os.replace(partial, out_path)
