"""Merging per-rank shards of one store into a single sealed file, through the public API."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import numpy as np

from cedstore._progress import Progress
from cedstore.errors import InvalidInputError, UnwrittenRecordError
from cedstore.store import Store
from cedstore.writer import create_replacing

_CHUNK = 1 << 16  # samples per pass: bounds memory to a few MiB per shard


@contextlib.contextmanager
def opened_inputs(out_path: str, paths: list[str | os.PathLike], overwrite: bool) -> Iterator[list[Store]]:
    """The stores at ``paths``, opened (and closed afterwards), once the output may be written."""
    if not paths:
        raise InvalidInputError(f"{out_path}: no shards to merge")
    if os.path.exists(out_path) and not overwrite:
        raise FileExistsError(f"{out_path} exists; refusing to overwrite it")
    stores = []
    try:
        for path in paths:
            stores.append(Store(path))
        yield stores
    finally:
        for store in stores:
            store.close()


def _check_same(shards: list[Store]) -> None:
    first = shards[0]
    for shard in shards:
        if "shard" in shard.metadata:  # cedstore.shards' entry: a compact shard holds only its rank's ids
            raise InvalidInputError(
                f"cannot merge {shard.path}: it is a compact shard (rank {shard.metadata['shard'].get('rank')!r}); "
                "merge compact shards with cedstore.merge_shards (cedstore merge-shards)"
            )
    for shard in shards[1:]:
        for name in ("num_samples", "num_epochs", "num_classes", "k", "value_kind", "index_dtype", "has_keys"):
            if getattr(shard, name) != getattr(first, name):
                raise InvalidInputError(
                    f"cannot merge {shard.path} into {first.path}: {name} is "
                    f"{getattr(shard, name)!r}, expected {getattr(first, name)!r}"
                )
        if shard.metadata != first.metadata:
            raise InvalidInputError(f"cannot merge {shard.path} into {first.path}: metadata differs")
        if shard.keys != first.keys:
            raise InvalidInputError(f"cannot merge {shard.path} into {first.path}: keys differ")


def _merge_chunk(shards: list[Store], epoch: int, start: int, stop: int) -> np.ndarray:
    """The merged records [start, stop) of `epoch`, as raw bytes [n, record_size]."""
    merged = np.empty((stop - start, shards[0].record_size), np.uint8)
    owner = np.full(stop - start, -1)
    for s, shard in enumerate(shards):
        records = shard.records(epoch)[start:stop]
        raw = records.view(np.uint8).reshape(stop - start, -1)
        written = records["indices"][:, 0] != -1  # int16 or int32 indices (FORMAT.md, "Written")
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


def merge(out_path: str | os.PathLike, shard_paths: list[str | os.PathLike], overwrite: bool = False,
          progress: bool | None = None) -> None:
    """Merge shards of one store (same shape, metadata and keys) into a sealed file.

    Every record must be written in at least one shard, and be byte-identical wherever it is
    written in several. The output appears only when the merge succeeds; its metadata is the
    shards' with `writer` set to this cedstore.

    Args:
        out_path: the merged file.
        shard_paths: the shards, e.g. one per rank.
        overwrite: replace `out_path` if it exists.
        progress: rate and ETA on stderr; None (default) shows them on a terminal after 2 s.

    Raises:
        InvalidInputError: no shards, shards that differ in shape/metadata/keys, or a record
            written differently in two shards (naming both files, the epoch and sample).
        UnwrittenRecordError: a record written in no shard.
        FileExistsError: `out_path` exists and not `overwrite`.

    Example:
        >>> cedstore.merge("teacher.ced", [f"teacher.rank{r}.ced" for r in range(8)])
    """
    out_path = os.fspath(out_path)
    with opened_inputs(out_path, shard_paths, overwrite) as shards:
        _check_same(shards)
        first = shards[0]
        num_records = first.num_epochs * first.num_samples
        with Progress("merge", (len(shards) + 1) * num_records, "records", progress) as bar:
            for shard in shards:
                shard.verify(require_complete=False)
                bar.update(num_records)
            metadata = {name: value for name, value in first.metadata.items() if name != "writer"}
            with create_replacing(out_path, num_classes=first.num_classes, k=first.k, num_samples=first.num_samples,
                                  num_epochs=first.num_epochs, keys=first.keys, metadata=metadata,
                                  value_kind=first.value_kind, index_dtype=first.index_dtype) as writer:
                for epoch in range(first.num_epochs):
                    for start in range(0, first.num_samples, _CHUNK):
                        stop = min(start + _CHUNK, first.num_samples)
                        records = _merge_chunk(shards, epoch, start, stop).reshape(-1).view(first.records(0).dtype)
                        writer.write(epoch, np.arange(start, stop), values=records["values"],
                                     indices=records["indices"], seeds=records["seed"])
                        bar.update(stop - start)
