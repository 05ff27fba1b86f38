"""Compact shards: each rank of a distributed job writes only the records it owns, and
merge_shards() interleaves them into the store one writer would have written (docs/SHARDS.md).

Rank ``r`` of ``W`` owns the global sample ids ``r, r + W, r + 2W, ...``; its shard is an
ordinary cedstore file whose sample ``j`` is global sample ``r + j·W``, whose keys are the
owned subset in that order, and whose metadata is the store's plus an entry
``"shard": {"rank": r, "world_size": W, "num_samples": N}``. A shard's disk cost is its own
records, so W ranks together need the disk of one store, not W.

Example:
    >>> rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    >>> w = shards.create_shard(f"teacher.rank{rank}.ced", rank, world, num_classes=527, k=20,
    ...                         num_samples=n, resume=True)  # a rerun carries on where it stopped
    >>> todo = w.sample_ids[~w.written(0)]          # global ids still to write
    >>> w.write(0, todo, probs=teacher(todo), seeds=seeds[todo])
    >>> w.close()
    >>> shards.merge_shards("teacher.ced", [f"teacher.rank{r}.ced" for r in range(world)])  # once, on one rank
"""

from __future__ import annotations

import operator
import os

import numpy as np

from cedstore._progress import Progress
from cedstore.errors import InvalidInputError, UnwrittenRecordError
from cedstore.format import MAGIC, decode_metadata, encode_metadata
from cedstore.merge import opened_inputs
from cedstore.store import Store
from cedstore.writer import Writer, create, create_replacing
from cedstore.writer import resume as _resume  # create_shard has a `resume` argument

SHARD_KEY = "shard"  # an ordinary metadata key (not reserved in FORMAT.md), documented in docs/SHARDS.md
_SHARD_FIELDS = ("rank", "world_size", "num_samples")
_CHUNK_ROUNDS = 1 << 14  # rounds of W samples per merge pass: memory is a few MiB per shard


def shard_num_samples(rank: int, world_size: int, num_samples: int) -> int:
    """How many of the `num_samples` global ids rank `rank` of `world_size` owns.

    Example:
        >>> [shard_num_samples(r, 3, 10) for r in range(3)]
        [4, 3, 3]
    """
    return (num_samples - rank + world_size - 1) // world_size


def _check_layout(where: str, rank, world_size, num_samples) -> tuple[int, int, int]:
    try:
        rank, world_size, num_samples = (operator.index(v) for v in (rank, world_size, num_samples))
    except TypeError:
        raise InvalidInputError(
            f"{where}: rank, world_size and num_samples must be integers, found "
            f"{rank!r}, {world_size!r}, {num_samples!r}"
        ) from None
    if not 1 <= world_size <= num_samples:
        raise InvalidInputError(
            f"{where}: world_size = {world_size} must be in [1, num_samples = {num_samples}]: "
            "every rank's shard holds at least one sample"
        )
    if not 0 <= rank < world_size:
        raise InvalidInputError(f"{where}: rank = {rank} must be in [0, world_size = {world_size})")
    return rank, world_size, num_samples


class ShardWriter:
    """Writes one rank's compact shard, addressed by *global* sample ids; from create_shard() or
    resume_shard(), closed by `with` (sealing complete epochs) like a Writer.

    Attributes:
        rank, world_size: this shard's place in the job.
        num_samples: N of the whole store (not of this shard).
        sample_ids: int64 [n], the global ids this rank owns, in shard order.
    """

    def __init__(self, writer: Writer, rank: int, world_size: int, num_samples: int):
        self._writer = writer
        self.rank, self.world_size, self.num_samples = rank, world_size, num_samples
        self.sample_ids = np.arange(rank, num_samples, world_size, dtype=np.int64)

    path = property(lambda self: self._writer.path)
    num_classes = property(lambda self: self._writer.num_classes)
    k = property(lambda self: self._writer.k)
    num_epochs = property(lambda self: self._writer.num_epochs)
    index_dtype = property(lambda self: self._writer.index_dtype)

    def local_ids(self, sample_ids) -> np.ndarray:
        """int64: the shard sample of each global id; refuses ids out of range or owned by another rank.

        Raises:
            IndexError: an id outside [0, num_samples).
            InvalidInputError: an id another rank owns, naming it and its rank.
        """
        ids = np.asarray(sample_ids)
        if ids.size and ids.dtype.kind not in "iu":
            raise InvalidInputError(f"{self.path}: sample_ids must be integers, found {ids.dtype}")
        ids = ids.astype(np.int64)  # any shape: Writer.write refuses all but [B]
        out_of_range = ids[(ids < 0) | (ids >= self.num_samples)]
        if len(out_of_range):
            raise IndexError(f"{self.path}: sample id {out_of_range[0]} out of range [0, {self.num_samples})")
        foreign = ids[ids % self.world_size != self.rank]
        if len(foreign):
            g = int(foreign[0])
            raise InvalidInputError(
                f"{self.path}: rank {self.rank} of {self.world_size} owns the sample ids i with "
                f"i % {self.world_size} == {self.rank}; sample id {g} belongs to rank {g % self.world_size}"
            )
        return ids // self.world_size

    def write(self, epoch: int, sample_ids, probs=None, *, values=None, indices=None, seeds) -> None:
        """Writer.write with global sample ids, each owned by this rank.

        Raises:
            InvalidInputError: an id another rank owns; and the errors of Writer.write.
            IndexError: an id outside [0, num_samples), or the epoch out of range.

        Example:
            >>> w.write(epoch, batch_ids, probs=teacher_probs, seeds=seeds)
        """
        self._writer.write(epoch, self.local_ids(sample_ids), probs, values=values, indices=indices, seeds=seeds)

    def written(self, epoch: int) -> np.ndarray:
        """bool [len(sample_ids)]: which of this rank's records of `epoch` are written."""
        return self._writer.written(epoch)

    def close(self, seal: bool = True) -> None:
        """Writer.close: flush, seal complete epochs when `seal`, release the writer lock."""
        self._writer.close(seal)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(seal=exc_type is None)

    def __repr__(self) -> str:
        return (f"<cedstore.shards.ShardWriter {self.path!r} rank {self.rank} of {self.world_size}, "
                f"{len(self.sample_ids)} of N={self.num_samples} samples>")


def create_shard(path: str | os.PathLike, rank: int, world_size: int, *, num_samples: int,
                 keys: list[str] | None = None, metadata: dict | None = None, resume: bool = False,
                 **create_args) -> ShardWriter:
    """Create rank `rank`'s compact shard of a store of `num_samples` samples (or resume it).

    Args:
        path: the shard file, e.g. f"teacher.rank{rank}.ced".
        rank, world_size: this process's place in the job (e.g. RANK and WORLD_SIZE).
        num_samples: N of the whole store.
        keys: the whole store's N keys (every rank passes the same list), or None.
        metadata: the whole store's metadata (every rank passes the same); must not hold "shard".
        resume: when `path` exists, resume it if it is this rank's shard of the same store
            (shape, keys and metadata as given), and replace it if an interrupted create left it
            without a header; the one call a rerun job needs.
        **create_args: the other arguments of cedstore.create (num_classes, k, num_epochs,
            value_kind, overwrite).

    Raises:
        InvalidInputError: a bad rank or world size (world_size > num_samples included), keys
            that are not N, metadata holding "shard"; with `resume`, a file at `path` that is
            another shard or store; and the errors of cedstore.create and cedstore.resume.

    Example:
        >>> w = create_shard("t.rank0.ced", 0, 8, num_classes=527, k=20, num_samples=n, keys=keys)
        >>> w = create_shard(f"t.rank{rank}.ced", rank, world, num_classes=527, k=20, num_samples=n,
        ...                  resume=True)  # after a kill: carry on where this rank stopped
    """
    path = os.fspath(path)
    rank, world_size, num_samples = _check_layout(path, rank, world_size, num_samples)
    if metadata is not None and not isinstance(metadata, dict):
        raise InvalidInputError(f"{path}: metadata must be a dict, found {type(metadata).__name__}")
    if SHARD_KEY in (metadata or {}):
        raise InvalidInputError(f"{path}: metadata key {SHARD_KEY!r} is set by create_shard")
    if keys is not None:
        keys = list(keys)
        if len(keys) != num_samples:
            raise InvalidInputError(f"{path}: keys has {len(keys)} entries, expected num_samples = {num_samples}")
        keys = keys[rank::world_size]
    shard = {"rank": rank, "world_size": world_size, "num_samples": num_samples}
    metadata = {**(metadata or {}), SHARD_KEY: shard}
    if resume and os.path.exists(path):
        if not _interrupted_create(path):
            _check_same_job(path, keys, metadata, create_args)
            return ShardWriter(_resume(path), rank, world_size, num_samples)
        create_args = {**create_args, "overwrite": True}
    writer = create(path, num_samples=shard_num_samples(rank, world_size, num_samples), keys=keys,
                    metadata=metadata, **create_args)
    return ShardWriter(writer, rank, world_size, num_samples)


def _interrupted_create(path: str) -> bool:
    """The core writes the header last, so a create killed early leaves zero (or no) magic bytes."""
    with open(path, "rb") as f:
        return f.read(len(MAGIC)).strip(b"\0") == b""


def _check_same_job(path: str, keys: list[str] | None, metadata: dict, create_args: dict) -> None:
    """Refuse to resume a file that is not the shard these create_shard arguments describe."""
    as_stored = decode_metadata(encode_metadata({**metadata, "writer": ""}), path)  # tuples become lists, ...
    with Store(path) as store:
        expected = {SHARD_KEY: metadata[SHARD_KEY], "num_classes": create_args.get("num_classes"),
                    "k": create_args.get("k"), "num_epochs": create_args.get("num_epochs", 1),
                    "value_kind": create_args.get("value_kind", "probability"), "metadata": as_stored, "keys": keys}
        if create_args.get("index_dtype") is not None:  # None: whatever create picks for C, as C is checked
            expected["index_dtype"] = np.dtype(create_args["index_dtype"])
        found = {name: getattr(store, name) for name in expected if name != SHARD_KEY}
        entry = store.metadata.get(SHARD_KEY)
        found[SHARD_KEY] = {f: entry.get(f) for f in _SHARD_FIELDS} if isinstance(entry, dict) else entry
        found["metadata"]["writer"] = ""
    for name, value in expected.items():
        if found[name] != value:
            shown = (f"{found[name]!r}, expected {value!r}" if name not in ("metadata", "keys")
                     else "not the ones given")
            raise InvalidInputError(
                f"{path}: cannot resume it as this shard: its {name} is {shown}; remove the file "
                "or give the arguments of the job that wrote it"
            )


def _read_shard_entry(store: Store) -> tuple[int, int, int]:
    """(rank, world_size, num_samples) from a shard's metadata, checked against its shape."""
    entry = store.metadata.get(SHARD_KEY)
    if not isinstance(entry, dict) or sorted(entry) != sorted(_SHARD_FIELDS):
        raise InvalidInputError(
            f"{store.path}: not a compact shard: expected metadata {SHARD_KEY!r} "
            f"{{'rank', 'world_size', 'num_samples'}}, found {entry!r} (cedstore.merge merges full-size shards)"
        )
    rank, world_size, num_samples = _check_layout(store.path, *(entry[f] for f in _SHARD_FIELDS))
    expected = shard_num_samples(rank, world_size, num_samples)
    if store.num_samples != expected:
        raise InvalidInputError(
            f"{store.path}: rank {rank} of {world_size} of a store of {num_samples} samples owns "
            f"{expected} samples, the shard has {store.num_samples}"
        )
    return rank, world_size, num_samples


def resume_shard(path: str | os.PathLike) -> ShardWriter:
    """Reopen a shard for writing after an interrupted run (cedstore.resume for shards).

    Raises:
        InvalidInputError: the file is not a compact shard.
        CedStoreError: another writer has the file open; and the errors of cedstore.resume.

    Example:
        >>> w = resume_shard("t.rank0.ced")
        >>> todo = w.sample_ids[~w.written(0)]
    """
    with Store(path) as store:
        rank, world_size, num_samples = _read_shard_entry(store)
    return ShardWriter(_resume(path), rank, world_size, num_samples)


def _base_metadata(store: Store) -> dict:
    return {name: value for name, value in store.metadata.items() if name not in (SHARD_KEY, "writer")}


def _check_set(shards: list[Store]) -> tuple[int, int]:
    """Every rank once, one shape and one base metadata: (world_size, num_samples); shards
    come back sorted by rank."""
    entries = [_read_shard_entry(shard) for shard in shards]
    first, (_, world_size, num_samples) = shards[0], entries[0]
    for shard, (rank, w, n) in zip(shards, entries):
        for name, value, expected in [("world_size", w, world_size), ("num_samples", n, num_samples)] + [
                (name, getattr(shard, name), getattr(first, name))
                for name in ("num_epochs", "num_classes", "k", "value_kind", "index_dtype", "has_keys")]:
            if value != expected:
                raise InvalidInputError(
                    f"cannot merge shard {shard.path} with {first.path}: {name} is {value!r}, expected {expected!r}"
                )
        if _base_metadata(shard) != _base_metadata(first):
            raise InvalidInputError(f"cannot merge shard {shard.path} with {first.path}: metadata differs")
    by_rank: dict[int, Store] = {}
    for shard, (rank, _, _) in zip(shards, entries):
        if rank in by_rank:
            raise InvalidInputError(f"{by_rank[rank].path} and {shard.path} are both rank {rank} of {world_size}")
        by_rank[rank] = shard
    missing = sorted(set(range(world_size)) - set(by_rank))
    if missing:
        raise InvalidInputError(
            f"rank(s) {missing} of {world_size} missing: got shards of ranks {sorted(by_rank)}"
        )
    shards[:] = [by_rank[r] for r in range(world_size)]
    return world_size, num_samples


def _check_complete(shard: Store, rank: int, world_size: int) -> None:
    for epoch in range(shard.num_epochs):
        unwritten = np.flatnonzero(~shard.written(epoch))
        if len(unwritten):
            j = int(unwritten[0])
            raise UnwrittenRecordError(
                f"{shard.path} (rank {rank} of {world_size}): epoch {epoch}, shard sample {j} "
                f"(sample id {rank + j * world_size}): record not written ({len(unwritten)} of "
                f"{shard.num_samples} unwritten); resume the shard and finish it"
            )


def _merged_keys(shards: list[Store], num_samples: int) -> list[str] | None:
    if not shards[0].has_keys:
        return None
    keys: list[str] = [""] * num_samples
    for rank, shard in enumerate(shards):
        keys[rank::len(shards)] = shard.keys
    return keys


def merge_shards(out_path: str | os.PathLike, shard_paths: list[str | os.PathLike], overwrite: bool = False,
                 progress: bool | None = None) -> None:
    """Interleave the compact shards of every rank into one sealed store: the bytes one writer
    of the same records would have written.

    The shards must be one job's: every rank of one world size once, one shape, one metadata
    (but `shard` and `writer`), and every record written. The output appears only when the
    merge succeeds; its metadata is the shards' without `shard`, with `writer` set to this
    cedstore. Records are streamed in chunks: memory stays a few MiB per shard, plus the keys.

    Args:
        out_path: the merged store.
        shard_paths: the shards of every rank, in any order.
        overwrite: replace `out_path` if it exists.
        progress: rate and ETA on stderr; None (default) shows them on a terminal after 2 s.

    Raises:
        InvalidInputError: no shards, a file that is not a compact shard, a rank missing or
            given twice, shards that differ in world size, shape or metadata.
        UnwrittenRecordError: a record not written, naming the shard, epoch and sample.
        IntegrityError: a shard fails verification (bad record, checksum).
        FileExistsError: `out_path` exists and not `overwrite`.

    Example:
        >>> cedstore.merge_shards("teacher.ced", [f"teacher.rank{r}.ced" for r in range(8)])
    """
    out_path = os.fspath(out_path)
    with opened_inputs(out_path, shard_paths, overwrite) as shards:
        _merge_into(out_path, shards, progress)


def _merge_into(out_path: str, shards: list[Store], progress: bool | None) -> None:
    world_size, num_samples = _check_set(shards)
    first = shards[0]
    num_epochs = first.num_epochs
    with Progress("merge-shards", 2 * num_epochs * num_samples, "records", progress) as bar:
        for rank, shard in enumerate(shards):
            _check_complete(shard, rank, world_size)
            shard.verify(require_complete=False)  # completeness just checked, with global ids
            bar.update(num_epochs * shard.num_samples)
        chunk = _CHUNK_ROUNDS * world_size
        with create_replacing(out_path, num_classes=first.num_classes, k=first.k, num_samples=num_samples,
                              num_epochs=num_epochs, keys=_merged_keys(shards, num_samples),
                              metadata=_base_metadata(first), value_kind=first.value_kind,
                              index_dtype=first.index_dtype) as writer:
            for epoch in range(num_epochs):
                views = [shard.records(epoch) for shard in shards]
                for start in range(0, num_samples, chunk):  # start is a multiple of W: rank r at r::W
                    stop = min(start + chunk, num_samples)
                    records = np.empty(stop - start, views[0].dtype)
                    for rank, view in enumerate(views):
                        part = records[rank::world_size]
                        part[:] = view[start // world_size:start // world_size + len(part)]
                    writer.write(epoch, np.arange(start, stop), values=records["values"],
                                 indices=records["indices"], seeds=records["seed"])
                    bar.update(stop - start)
