"""Reference reader and writer: FORMAT.md with ``open``, ``struct`` and numpy, no C++.

Slow on purpose: every rule is a visible line. The tests use these to check that the C++ core
writes byte-identical files and decodes them identically; nothing in the public API uses them.
"""

from __future__ import annotations

import bisect
import dataclasses
import errno
import os
import stat
import struct
import zlib

import numpy as np

from cedstore.errors import (
    FormatError,
    IntegrityError,
    InvalidInputError,
    UnwrittenRecordError,
    WriterClosedError,
)
from cedstore.format import (
    EPOCH_ENTRY_FORMAT,
    EPOCH_OPEN,
    EPOCH_SEALED,
    HEADER_SIZE,
    INDEX_WIDTHS,
    Header,
    check_record,
    check_sections,
    decode_key_table,
    decode_metadata,
    encode_key_table,
    encode_topk_reference,
    layout,
    max_classes,
    read_header,
    record_dtype,
    record_layout,
    sections_crc,
)


def _open_regular_file(path: str):
    """The file at path opened for reading; never blocks (a FIFO is refused, not waited on)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
        raise FormatError(f"{path}: not a cedstore file: not a regular file")
    return os.fdopen(fd, "rb")


def _check_index(value: int, bound: int, what: str, path: str) -> int:
    if not 0 <= value < bound:
        raise IndexError(f"{path}: {what} {value} out of range [0, {bound})")
    return int(value)


class ReferenceReader:
    """A whole store read into memory and checked as the core checks it at open.

    Example:
        >>> r = ReferenceReader("teacher.ced")
        >>> targets, seeds = r.dense(0, [3, 1])
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        with _open_regular_file(self.path) as f:
            self.data = f.read()
        h = self.header = read_header(self.data, self.path)
        check_sections(self.data, h, self.path)
        self.k, self.num_classes, self.num_samples = h.k, h.num_classes, h.num_samples
        self.num_epochs, self.record_size, self.value_kind = h.num_epochs, h.record_size, h.value_kind
        self.index_dtype = h.index_dtype
        self._keys, self._order = [], []
        if h.keys_length:
            table = self.data[h.keys_offset:h.keys_offset + h.keys_length]
            self._keys, self._order = decode_key_table(table, h.num_samples, self.path)
        self.has_keys = bool(h.keys_length)
        self.metadata = decode_metadata(self.metadata_bytes(), self.path)  # last, as cedstore.open

    def metadata_bytes(self) -> bytes:
        return self.data[HEADER_SIZE:HEADER_SIZE + self.header.metadata_length]

    def epoch_table(self) -> list[tuple[int, int]]:
        start = self.header.epoch_table_offset
        return [struct.unpack_from(EPOCH_ENTRY_FORMAT, self.data, start + 8 * e) for e in range(self.num_epochs)]

    @property
    def keys(self) -> list[str] | None:
        """The key of every sample, or None: a property, as Store.keys."""
        return [key.decode("utf-8") for key in self._keys] if self.has_keys else None

    def lookup(self, keys: list[str]) -> np.ndarray:
        """int64 sample id per key, -1 where absent: a binary search over `order`."""
        ids = np.full(len(keys), -1, np.int64)
        sorted_keys = [self._keys[i] for i in self._order]
        for j, key in enumerate(keys):
            b = key.encode("utf-8")
            pos = bisect.bisect_left(sorted_keys, b)
            if pos < len(sorted_keys) and sorted_keys[pos] == b:
                ids[j] = self._order[pos]
        return ids

    def records(self, epoch: int) -> np.ndarray:
        """The epoch's N records as a read-only structured array."""
        epoch = _check_index(epoch, self.num_epochs, "epoch", self.path)
        n = self.num_samples
        offset = self.header.records_offset + epoch * n * self.record_size
        return np.frombuffer(self.data, record_dtype(self.k, self.index_dtype), n, offset)

    def written(self, epoch: int) -> np.ndarray:
        return self.records(epoch)["indices"][:, 0] != -1

    def topk(self, epoch: int, sample_ids) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(values float32 [B, k], indices int64 [B, k], seeds int32 [B])."""
        records = self.records(epoch)
        ids = [_check_index(i, self.num_samples, f"epoch {epoch}: sample", self.path)
               for i in np.asarray(sample_ids).reshape(-1).tolist()]
        rows = records[ids]
        for i, row in zip(ids, rows):
            if row["indices"][0] == -1:
                raise UnwrittenRecordError(f"{self.path}: epoch {epoch}, sample {i}: record not written")
            for position, cls in enumerate(row["indices"].tolist()):
                if not 0 <= cls < self.num_classes:
                    raise IntegrityError(
                        f"{self.path}: epoch {epoch}, sample {i}: class index {cls} at position {position} "
                        f"outside [0, {self.num_classes}) (the record is corrupted)"
                    )
        return rows["values"].astype(np.float32), rows["indices"].astype(np.int64), rows["seed"].astype(np.int32)

    def dense(self, epoch: int, sample_ids, fill: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """(targets float32 [B, C], seeds int32 [B]): `fill` outside the top-k."""
        values, indices, seeds = self.topk(epoch, sample_ids)
        targets = np.full((len(seeds), self.num_classes), fill, np.float32)
        for row in range(len(seeds)):
            targets[row, indices[row]] = values[row]
        return targets, seeds

    def verify(self, require_complete: bool = True) -> None:
        """Every record of every epoch, then the CRC of each sealed epoch (the rest was checked
        at open). Raises IntegrityError, or UnwrittenRecordError when `require_complete`."""
        for epoch, (state, crc) in enumerate(self.epoch_table()):
            where = f"{self.path}: epoch {epoch}"
            records = self.records(epoch)
            for i, row in enumerate(records):
                if row["indices"][0] == -1:
                    if state == EPOCH_SEALED:
                        raise IntegrityError(f"{where}, sample {i}: record not written in a sealed epoch")
                    if require_complete:
                        raise UnwrittenRecordError(f"{where}, sample {i}: record not written")
                    continue
                problem = check_record(row["values"], row["indices"], self.num_classes)
                padding = row.tobytes()[2 * self.k:record_layout(self.k, self.header.index_width)[1]]
                if not problem and any(padding):
                    problem = "padding after the values is not zero"
                if problem:
                    raise IntegrityError(f"{where}, sample {i}: {problem}")
            actual = zlib.crc32(records.tobytes())
            if state == EPOCH_SEALED and actual != crc:
                raise IntegrityError(
                    f"{where}: CRC mismatch: sealed with 0x{crc:08x}, records have 0x{actual:08x} "
                    "(the epoch is corrupted)"
                )


class ReferenceWriter:
    """Writes a store record by record with seek/write, as FORMAT.md describes; the verbs of
    cedstore.Writer (write, written, close), created and resumed with the core's arguments."""

    def __init__(self, path: str, file, header: Header):
        self.path, self._file, self.header = path, file, header
        self.k, self.num_classes, self.index_dtype = header.k, header.num_classes, header.index_dtype
        self.num_samples, self.num_epochs = header.num_samples, header.num_epochs

    @classmethod
    def create(cls, path, k: int, num_classes: int, num_samples: int, num_epochs: int,
               value_kind: int, metadata_json: bytes, keys: list[str] | None,
               overwrite: bool = False, index_width: int = 0) -> ReferenceWriter:
        path = os.fspath(path)
        if index_width not in INDEX_WIDTHS:
            raise InvalidInputError(f"index_width must be 0 (int16 indices) or 4 (int32), got {index_width}")
        if not 1 <= num_classes <= max_classes(index_width) or not 1 <= k <= num_classes:
            raise InvalidInputError(
                f"need 1 <= k <= num_classes <= {max_classes(index_width)}, got k={k}, num_classes={num_classes}"
            )
        if num_samples < 1 or num_epochs < 1:
            raise InvalidInputError(f"need num_samples >= 1 and num_epochs >= 1, got {num_samples}, {num_epochs}")
        key_table = encode_key_table(keys, num_samples) if keys is not None else b""
        h = layout(k, num_classes, num_samples, num_epochs, value_kind, len(metadata_json), len(key_table),
                   index_width)
        sections = bytearray(h.epoch_table_offset)  # bytes [0, epoch_table_offset); the header comes last
        sections[HEADER_SIZE:HEADER_SIZE + len(metadata_json)] = metadata_json
        sections[h.keys_offset:h.keys_offset + len(key_table)] = key_table
        h = dataclasses.replace(h, sections_crc=sections_crc(sections, h))
        file = open(path, "wb" if overwrite else "xb")
        file.write(h.pack() + sections[HEADER_SIZE:])
        file.write(bytes(h.records_offset - file.tell()))  # the all-open epoch table, gap
        chunk = b"\xff" * h.record_size * 4096
        for start in range(0, h.records_length, len(chunk)):
            file.write(chunk[:h.records_length - start])
        file.close()
        return cls(path, open(path, "r+b"), h)

    @classmethod
    def resume(cls, path) -> ReferenceWriter:
        path = os.fspath(path)
        h = ReferenceReader(path).header
        entries = ReferenceReader(path).epoch_table()
        file = open(path, "r+b")
        file.seek(h.epoch_table_offset)
        for state, word in entries:  # every epoch open before any record changes
            sequence = word + word % 2 if state == EPOCH_OPEN else 0  # an open epoch keeps its sequence, made even
            file.write(struct.pack(EPOCH_ENTRY_FORMAT, EPOCH_OPEN, sequence % 2**32))
        file.flush()
        return cls(path, file, h)

    def _check_batch(self, epoch: int, sample_ids, width: int, rows: np.ndarray, seeds) -> tuple:
        if self._file is None:
            raise WriterClosedError(f"{self.path}: writer is closed")
        epoch = _check_index(epoch, self.num_epochs, "epoch", self.path)
        ids = np.asarray(sample_ids).reshape(-1)
        seeds = np.asarray(seeds)
        if rows.ndim != 2 or rows.shape != (len(ids), width) or seeds.shape != ids.shape:
            raise InvalidInputError(f"{self.path}: shapes do not match for {len(ids)} samples")
        if seeds.dtype not in (np.int32, np.int64) or np.any(seeds != seeds.astype(np.int32)):
            raise InvalidInputError(f"{self.path}: seeds must be int32 (or int64 within int32 range)")
        for i in ids.tolist():
            _check_index(i, self.num_samples, f"epoch {epoch}: sample", self.path)
        if len(set(ids.tolist())) != len(ids):
            raise InvalidInputError(f"{self.path}: epoch {epoch}: a sample id is repeated in one write")
        return epoch, ids.tolist(), seeds.astype(np.int32)

    def write(self, epoch: int, sample_ids, probs=None, *, values=None, indices=None, seeds) -> None:
        """Store one batch: dense `probs` [B, C] encoded to top-k, or top-k `values` and
        `indices` [B, k] as they are (the arguments of cedstore.Writer.write)."""
        if probs is not None and values is None and indices is None:
            self._write_dense(epoch, sample_ids, probs, seeds)
        elif probs is None and values is not None and indices is not None:
            self._write_topk(epoch, sample_ids, values, indices, seeds)
        else:
            raise InvalidInputError(f"{self.path}: give either probs= or both values= and indices=")

    def _write_dense(self, epoch: int, sample_ids, dense, seeds) -> None:
        dense = np.asarray(dense)
        epoch, ids, seeds = self._check_batch(epoch, sample_ids, self.num_classes, dense, seeds)
        values, indices = encode_topk_reference(dense, self.k)
        self._store(epoch, ids, values, indices, seeds)

    def _write_topk(self, epoch: int, sample_ids, values, indices, seeds) -> None:
        values = np.asarray(values)
        indices = np.asarray(indices)
        epoch, ids, seeds = self._check_batch(epoch, sample_ids, self.k, values, seeds)
        floats = values.dtype in (np.float32, np.float16)
        if indices.shape != values.shape or not floats or indices.dtype.kind not in "iu":
            raise InvalidInputError(f"{self.path}: need float values and integer indices of one shape [B, k]")
        with np.errstate(over="ignore"):  # overflow to Inf is refused by check_record
            values = values.astype(np.float16)
        for i, v, c in zip(ids, values, indices):
            problem = check_record(v, c, self.num_classes)
            if problem:
                raise InvalidInputError(f"{self.path}: epoch {epoch}, sample {i}: {problem}")
        self._store(epoch, ids, values, indices.astype(self.index_dtype), seeds)

    def _store(self, epoch: int, ids: list[int], values, indices, seeds) -> None:
        h = self.header
        for i, v, c, s in zip(ids, values, indices, seeds):
            record = np.zeros((), record_dtype(self.k, self.index_dtype))  # zero padding
            record["values"], record["indices"], record["seed"] = v, c, s
            data = record.tobytes()
            start = h.records_offset + (epoch * self.num_samples + i) * h.record_size
            indices_offset = record_layout(self.k, h.index_width)[1]
            first_index = slice(indices_offset, indices_offset + self.index_dtype.itemsize)
            unwritten = b"\xff" * self.index_dtype.itemsize  # indices[0] == -1
            self._file.seek(start + first_index.start)
            rewrite = self._file.read(len(unwritten)) != unwritten
            if rewrite:  # the epoch's rewrite sequence is odd while the record changes
                sequence = self._sequence(epoch) + 1
                self._set_sequence(epoch, sequence)
            self._file.seek(start)  # everything but indices[0], then indices[0]: never half-written
            self._file.write(data[:first_index.start] + unwritten + data[first_index.stop:])
            self._file.seek(start + first_index.start)
            self._file.write(data[first_index])
            if rewrite:
                self._set_sequence(epoch, sequence + 1)

    def _sequence(self, epoch: int) -> int:
        self._file.seek(self.header.epoch_table_offset + 8 * epoch + 4)
        return struct.unpack("<I", self._file.read(4))[0]

    def _set_sequence(self, epoch: int, sequence: int) -> None:
        self._file.seek(self.header.epoch_table_offset + 8 * epoch)
        self._file.write(struct.pack(EPOCH_ENTRY_FORMAT, EPOCH_OPEN, sequence % 2**32))

    def written(self, epoch: int) -> np.ndarray:
        self._file.flush()
        return ReferenceReader(self.path).written(epoch)

    def close(self, seal: bool = True) -> None:
        """Flush; when `seal`, store the CRC of every fully written epoch and mark it sealed."""
        if self._file is None:
            return
        self._file.flush()
        if seal:
            reader = ReferenceReader(self.path)
            for epoch in range(self.num_epochs):
                records = reader.records(epoch)
                if np.all(records["indices"][:, 0] != -1):
                    crc = zlib.crc32(records.tobytes())
                    self._file.seek(self.header.epoch_table_offset + 8 * epoch)
                    self._file.write(struct.pack(EPOCH_ENTRY_FORMAT, EPOCH_SEALED, crc))
        self._file.close()
        self._file = None
