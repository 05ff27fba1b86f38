"""Test helpers: teacher outputs, stores written by the core or the reference, file assembly."""

from __future__ import annotations

import dataclasses
import json

import numpy as np

import cedstore
from cedstore import _core
from cedstore.format import layout, sections_crc
from cedstore.reference import ReferenceWriter

WRITERS = {"core": _core.Writer, "reference": ReferenceWriter}
METADATA = {"activation": "sigmoid", "tail_policy": "zero", "user": {"run": "test"}}
METADATA_JSON = json.dumps(
    {**METADATA, "writer": f"cedstore {cedstore.__version__}"}, sort_keys=True, separators=(",", ":")
).encode()


@dataclasses.dataclass
class Teacher:
    """Dense teacher outputs [E, N, C] and seeds [E, N] for a small store."""

    probs: np.ndarray
    seeds: np.ndarray

    num_epochs = property(lambda self: self.probs.shape[0])
    num_samples = property(lambda self: self.probs.shape[1])
    num_classes = property(lambda self: self.probs.shape[2])


def make_teacher(num_epochs=2, num_samples=12, num_classes=9, seed=0) -> Teacher:
    rng = np.random.default_rng(seed)
    probs = rng.random((num_epochs, num_samples, num_classes), dtype=np.float32)
    probs[..., 0] = probs[..., 1]  # a tie in every row
    seeds = rng.integers(-(2**31), 2**31, (num_epochs, num_samples), dtype=np.int64).astype(np.int32)
    return Teacher(probs, seeds)


def write_with(writer_cls, path, teacher: Teacher, k: int, keys=None, metadata_json=METADATA_JSON,
               batches=None, seal=True, value_kind=0):
    """Write every record of `teacher` with a core or reference Writer class; batches is a list of
    (epoch, sample_ids) in write order (default: each epoch in one batch)."""
    w = writer_cls.create(str(path), k, teacher.num_classes, teacher.num_samples, teacher.num_epochs,
                          value_kind, metadata_json, keys, False)
    if isinstance(w, _core.Writer):
        w = cedstore.Writer(w)  # the public verbs, shared with the reference
    for epoch, ids in batches or [(e, np.arange(teacher.num_samples)) for e in range(teacher.num_epochs)]:
        ids = np.asarray(ids, np.int64)
        w.write(epoch, ids, probs=teacher.probs[epoch, ids], seeds=teacher.seeds[epoch, ids])
    w.close(seal)
    return path


def create_store(path, teacher: Teacher, k=3, keys=None, **kw) -> str:
    """A complete sealed store written through the public API."""
    with cedstore.create(path, num_classes=teacher.num_classes, k=k, num_samples=teacher.num_samples,
                         num_epochs=teacher.num_epochs, keys=keys, metadata=METADATA, **kw) as w:
        for epoch in range(teacher.num_epochs):
            w.write(epoch, np.arange(teacher.num_samples), probs=teacher.probs[epoch], seeds=teacher.seeds[epoch])
    return str(path)


def assemble(metadata: bytes, key_table: bytes = b"", *, k=2, num_classes=4, num_samples=3, num_epochs=1,
             records: bytes | None = None, epoch_table: bytes | None = None, header: dict | None = None) -> bytes:
    """A file laid out per FORMAT.md from raw sections (for crafting bad inputs); `header`
    overrides fields after the layout is computed; the header CRC, and the metadata and key
    table CRC unless `header` sets sections_crc, are always recomputed."""
    h = layout(k, num_classes, num_samples, num_epochs, 0, len(metadata), len(key_table))
    h = dataclasses.replace(h, **(header or {}))
    if epoch_table is None:
        epoch_table = bytes(8 * num_epochs)
    if records is None:
        records = b"\xff" * h.records_length
    out = bytearray(h.records_offset + len(records))  # zero gaps; each section at its header offset
    for offset, section in [(0, h.pack()), (128, metadata), (h.keys_offset, key_table),
                            (h.epoch_table_offset, epoch_table), (h.records_offset, records)]:
        out[offset:offset + len(section)] = section
    if "sections_crc" not in (header or {}):
        out[:128] = dataclasses.replace(h, sections_crc=sections_crc(out, h)).pack()
    return bytes(out)
