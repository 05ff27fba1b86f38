"""Core-level tests of the C++ extension cedstore._core: kernels, layout, errors, GIL, fork."""

from __future__ import annotations

import importlib
import os
import re
import struct
import threading
import warnings
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from cedstore import _core
from cedstore.errors import (
    CedStoreError,
    FormatError,
    IntegrityError,
    InvalidInputError,
    UnsupportedVersionError,
    UnwrittenRecordError,
    WriterClosedError,
)

META = b'{"writer":"cedstore test"}'


# --- helpers ---------------------------------------------------------------------------------


def _align(x: int, a: int) -> int:
    return -(-x // a) * a


def make_dense(rng, num_rows: int, num_classes: int) -> np.ndarray:
    x = rng.random((num_rows, num_classes), dtype=np.float32)
    x[:, 1] = x[:, 0]  # a tie in every row
    return x


def reference_topk(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The definition in FORMAT.md: a stable argsort of -x, values rounded to float16."""
    idx = np.argsort(-x.astype(np.float32), axis=1, kind="stable")[:, :k]
    return np.take_along_axis(x, idx, axis=1).astype(np.float16), idx.astype(np.int16)


def scatter(values: np.ndarray, indices: np.ndarray, num_classes: int, fill: float = 0.0) -> np.ndarray:
    out = np.full((len(values), num_classes), fill, np.float32)
    np.put_along_axis(out, indices.astype(np.int64), values.astype(np.float32), axis=1)
    return out


def new_store(path, k=3, num_classes=9, num_samples=12, num_epochs=2, keys=None, **kw) -> _core.Writer:
    return _core.Writer.create(str(path), k, num_classes, num_samples, num_epochs, 0, META, keys, **kw)


@pytest.fixture
def full_store(tmp_path):
    """A sealed store (k=3, C=9, N=12, E=2, with keys) and the dense outputs written to it."""
    rng = np.random.default_rng(0)
    dense = np.stack([make_dense(rng, 12, 9) for _ in range(2)])
    seeds = rng.integers(-(2**31), 2**31, (2, 12))
    keys = [f"clip{i:02d}.wav" for i in range(12)][::-1]
    w = new_store(tmp_path / "full.ced", keys=keys)
    for e in range(2):
        w.write_dense(e, np.arange(12), dense[e], seeds[e])
    w.close()
    return str(tmp_path / "full.ced"), dense, seeds, keys


def patch(path, offset: int, data: bytes, fix_header_crc: bool = False, fix_sections_crc: bool = False) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)
        if fix_sections_crc:  # the metadata and key table CRC, for a change that must reach later checks
            f.seek(80)
            (epoch_table_offset,) = struct.unpack("<Q", f.read(8))
            f.seek(128)
            sections = f.read(epoch_table_offset - 128)
            f.seek(112)
            f.write(struct.pack("<I", zlib.crc32(sections)))
        if fix_header_crc or fix_sections_crc:
            f.seek(0)
            header = f.read(124)
            f.write(struct.pack("<I", zlib.crc32(header)))


def _read(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _write(path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def header_fields(path) -> dict:
    raw = _read(path)[:128]
    names = ("magic version version_minor header_size k num_classes num_samples num_epochs record_size value_kind "
             "index_width metadata_offset metadata_length keys_offset keys_length epoch_table_offset epoch_table_length "
             "records_offset records_length sections_crc reserved1 header_crc").split()
    return dict(zip(names, struct.unpack("<8sHHIIIQIIIIQQQQQQQQI8sI", raw)))


# --- constants, CRC, fp16 --------------------------------------------------------------------


def test_constants_agree_with_format_py():
    try:
        fmt = importlib.import_module("cedstore.format")
    except ImportError as e:  # written by the pure-Python side
        pytest.skip(f"cedstore/format.py not importable yet: {e}")
    for name in ("MAGIC", "FORMAT_VERSION", "FORMAT_MINOR_VERSION", "HEADER_SIZE", "RECORDS_ALIGN", "SECTION_ALIGN",
                 "MAX_CLASSES"):
        assert getattr(_core, name) == getattr(fmt, name), name
    assert _core.MAX_METADATA_LENGTH == fmt.MAX_METADATA_BYTES == 16 * 2**20
    assert _core.UNWRITTEN_INDEX == getattr(fmt, "UNWRITTEN_INDEX", -1) == -1


@given(st.binary(max_size=300), st.integers(0, 2**32 - 1))
def test_crc32_equals_zlib(data, start):
    assert _core.crc32(data, start) == zlib.crc32(data, start)
    assert _core.crc32(memoryview(data)) == zlib.crc32(data)


def test_float32_to_float16_matches_numpy_on_2_24_bit_patterns():
    # Every exponent and sign, mantissas strided by 256 (so the 13 rounded-off bits take every
    # value that matters: exact ties 0x1000 included), and their neighbours +-1.
    base = np.arange(0, 2**32, 256, dtype=np.uint64).astype(np.uint32)
    bits = np.concatenate([base, base[::16] + 1, base[::16] - 1])
    x = bits.view(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        expected = x.astype(np.float16)
    ok = np.isfinite(x) & np.isfinite(expected)
    values, indices = _core.encode_topk(x[ok].reshape(-1, 1), 1)
    assert (indices == 0).all()
    np.testing.assert_array_equal(values[:, 0].view(np.uint16), expected[ok].view(np.uint16))


def test_float16_to_float32_is_exact_for_every_finite_pattern(tmp_path):
    h = np.arange(2**16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    h = h[np.isfinite(h)]
    w = new_store(tmp_path / "f16.ced", k=1, num_classes=1, num_samples=len(h), num_epochs=1)
    w.write_topk(0, np.arange(len(h)), h.reshape(-1, 1), np.zeros((len(h), 1), np.int16), np.zeros(len(h), np.int32))
    w.close()
    values, indices, _ = _core.Reader(str(tmp_path / "f16.ced")).decode_topk(0, np.arange(len(h)))
    np.testing.assert_array_equal(values[:, 0].view(np.uint32), h.astype(np.float32).view(np.uint32))


# --- encode_topk -----------------------------------------------------------------------------

SPECIAL = [float(np.float32(v)) for v in [0.0, -0.0, 1.0, -1.0, 0.5, 2.0**-24, 2.0**-25, 3 * 2.0**-25, 2.0**-14, 2.0**-14 - 2.0**-24,
           1 + 2.0**-11, 1 + 3 * 2.0**-11, 1 + 2.0**-11 + 2.0**-20, 65504.0, -65504.0, 65519.99, 1e-8, 0.1]]
ELEMENTS = st.one_of(st.sampled_from(SPECIAL),
                     st.floats(-65504, 65504, width=32, allow_nan=False, allow_infinity=False))


@settings(max_examples=300, deadline=None)
@given(st.data(), hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=2, max_side=40), elements=ELEMENTS))
def test_encode_topk_equals_stable_numpy_reference(data, x):
    k = data.draw(st.integers(1, x.shape[1]))
    values, indices = _core.encode_topk(x, k)
    ref_values, ref_indices = reference_topk(x, k)
    assert values.dtype == np.float16 and indices.dtype == np.int16
    np.testing.assert_array_equal(indices, ref_indices)
    np.testing.assert_array_equal(values.view(np.uint16), ref_values.view(np.uint16))


@settings(max_examples=100, deadline=None)
@given(st.data(), hnp.arrays(np.float16, hnp.array_shapes(min_dims=2, max_dims=2, max_side=30),
                             elements=st.floats(width=16, allow_nan=False, allow_infinity=False)))
def test_encode_topk_float16_input(data, x):
    k = data.draw(st.integers(1, x.shape[1]))
    values, indices = _core.encode_topk(x, k)
    ref_values, ref_indices = reference_topk(x, k)
    np.testing.assert_array_equal(indices, ref_indices)
    np.testing.assert_array_equal(values.view(np.uint16), ref_values.view(np.uint16))


@pytest.mark.parametrize("k", [1, 20, 64, 65, 300, 527])
def test_encode_topk_large_rows_with_many_ties(k):
    rng = np.random.default_rng(k)
    x = rng.integers(0, 50, (64, 527)).astype(np.float32) / 7  # many ties
    x[::2] = np.sort(x[::2], axis=1)  # ascending rows: the worst case of an insertion buffer
    values, indices = _core.encode_topk(x, k)
    ref_values, ref_indices = reference_topk(x, k)
    np.testing.assert_array_equal(indices, ref_indices)
    np.testing.assert_array_equal(values.view(np.uint16), ref_values.view(np.uint16))


def test_encode_topk_rows_unlike_the_previous_row():
    # The selection guesses a threshold from the previous row of the batch; rows of other
    # scales, constant rows and sorted rows make the guess wrong in both directions.
    rng = np.random.default_rng(7)
    scales = [1, 1e-3, 1e3, 1, -1, 0, 1e-30, 5, 1, 1] * 6
    x = np.stack([rng.random(527, dtype=np.float32) * np.float32(s) for s in scales])
    x[10] = 0.25  # constant
    x[11] = np.linspace(0, 1, 527, dtype=np.float32)  # ascending
    x[12] = np.linspace(1, 0, 527, dtype=np.float32)  # descending
    x[13, ::2] = -0.0
    x[14] = np.where(rng.random(527) < 0.05, x[14], 0)  # sparse
    for k in (1, 5, 20, 64):
        values, indices = _core.encode_topk(x, k)
        ref_values, ref_indices = reference_topk(x, k)
        np.testing.assert_array_equal(indices, ref_indices)
        np.testing.assert_array_equal(values.view(np.uint16), ref_values.view(np.uint16))


def _row(*values):
    return np.array([values], np.float32)


ENCODE_ERRORS = [
    (np.array([[1, 2], [3, np.nan]], np.float32), 1, r"dense\[1, 1\] = nan \(row 1, class 1\) is NaN"),
    (_row(1, np.inf, 2), 1, r"dense\[0, 1\] = inf \(row 0, class 1\) is infinite"),
    (np.array([[1, -np.inf]], np.float16), 1, r"dense\[0, 1\] = -inf \(row 0, class 1\) is infinite"),
    (_row(1, 70000, 2), 2, r"dense\[0, 1\] = 70000 \(row 0, class 1\) is outside the float16 range"),
    (_row(1, 2, 3), 0, r"k: expected 1 <= k <= num_classes \(3\), found 0"),
    (_row(1, 2, 3), 4, r"k: expected 1 <= k <= num_classes \(3\), found 4"),
    (np.zeros((1, 2**24 + 1), np.float32), 1, r"dense: expected at most 16777216 classes, found 16777217"),  # lazy pages
    (np.zeros((2, 3), np.float64), 1, r"dense: expected a 2-d float32 or float16 array, found 2-d float64"),
    (np.zeros(3, np.float32), 1, r"dense: expected a 2-d float32 or float16 array, found 1-d float32"),
    (np.zeros((1, 2, 3), np.float32), 1, r"dense: expected a 2-d float32 or float16 array, found 3-d float32"),
]


@pytest.mark.parametrize("dense, k, message", ENCODE_ERRORS)
def test_encode_topk_refuses(dense, k, message):
    with pytest.raises(InvalidInputError, match=message):
        _core.encode_topk(dense, k)


def test_encode_topk_keeps_out_of_top_k_overflow_and_accepts_strided_input():
    x = np.array([[3, 1, -70000, 2]], np.float32)
    values, indices = _core.encode_topk(x, 2)  # -70000 is not stored, so it is no overflow
    assert indices.tolist() == [[0, 3]] and values.tolist() == [[3, 2]]
    wide = np.arange(40, dtype=np.float32).reshape(4, 10)
    np.testing.assert_array_equal(_core.encode_topk(wide[:, ::2], 2)[1], reference_topk(wide[:, ::2], 2)[1])


# --- writer and reader round trip ------------------------------------------------------------


def test_round_trip_dense_and_topk(tmp_path):
    rng = np.random.default_rng(1)
    n, c, k = 50, 31, 5
    dense = [make_dense(rng, n, c), make_dense(rng, n, c).astype(np.float16)]
    seeds = rng.integers(-(2**31), 2**31, (2, n))
    w = new_store(tmp_path / "rt.ced", k=k, num_classes=c, num_samples=n)
    perm = rng.permutation(n)  # any order, from any number of calls
    for part in np.array_split(perm, 4):
        w.write_dense(0, part, dense[0][part], seeds[0][part])
    values, indices = reference_topk(dense[1], k)
    w.write_topk(1, perm.astype(np.int32), values[perm], indices[perm].astype(np.uint16), seeds[1][perm].astype(np.int32))
    assert w.written(0).all() and w.written(1).all()
    w.close()

    r = _core.Reader(str(tmp_path / "rt.ced"))
    ids = rng.integers(0, n, 64)  # repeats are fine when reading
    for e in range(2):
        ref_v, ref_i = reference_topk(dense[e], k)
        targets, s = r.decode_dense(e, ids)
        np.testing.assert_array_equal(targets, scatter(ref_v[ids], ref_i[ids], c))
        np.testing.assert_array_equal(s, seeds[e][ids].astype(np.int32))
        filled, _ = r.decode_dense(e, ids, fill=-1.5)
        np.testing.assert_array_equal(filled, scatter(ref_v[ids], ref_i[ids], c, fill=-1.5))
        v, i, s2 = r.decode_topk(e, ids)
        assert v.dtype == np.float32 and i.dtype == np.int64 and s2.dtype == np.int32
        np.testing.assert_array_equal(v, ref_v[ids].astype(np.float32))
        np.testing.assert_array_equal(i, ref_i[ids])
        np.testing.assert_array_equal(s2, s)
    out = np.full((len(ids), c), 7.0, np.float32)
    got, _ = r.decode_dense(0, ids, out=out)
    assert got is out
    np.testing.assert_array_equal(out, r.decode_dense(0, ids)[0])
    empty, empty_seeds = r.decode_dense(0, np.zeros(0, np.int64))
    assert empty.shape == (0, c) and empty_seeds.shape == (0,)
    r.verify()


@pytest.mark.parametrize("k, num_classes", [(1, 1), (31, 40), (32, 40), (1100, 1200)])
def test_round_trip_record_sizes(tmp_path, k, num_classes):
    # Records of up to 128 bytes are decoded 32 at a time from a stack buffer, larger ones alone.
    rng = np.random.default_rng(k)
    dense = make_dense(rng, 40, num_classes) if num_classes > 1 else rng.random((40, 1), dtype=np.float32)
    w = new_store(tmp_path / "k.ced", k=k, num_classes=num_classes, num_samples=40, num_epochs=1)
    w.write_dense(0, np.arange(40), dense, np.arange(40))
    w.close()
    r = _core.Reader(str(tmp_path / "k.ced"))
    ids = rng.integers(0, 40, 70)
    ref_v, ref_i = reference_topk(dense, k)
    targets, seeds = r.decode_dense(0, ids)
    np.testing.assert_array_equal(targets, scatter(ref_v[ids], ref_i[ids], num_classes))
    np.testing.assert_array_equal(seeds, ids)
    np.testing.assert_array_equal(r.decode_topk(0, ids)[1], ref_i[ids])
    r.verify()


def test_rewriting_a_record_keeps_the_last_write(tmp_path):
    w = new_store(tmp_path / "re.ced", k=2, num_classes=4, num_samples=2, num_epochs=1)
    w.write_dense(0, [1], _row(1, 2, 3, 4), [5])
    w.write_dense(0, [1], _row(4, 3, 2, 1), [6])
    w.close()
    targets, seeds = _core.Reader(str(tmp_path / "re.ced")).decode_dense(0, [1])
    assert targets.tolist() == [[4, 3, 0, 0]] and seeds.tolist() == [6]


def test_file_layout_follows_the_spec(tmp_path):
    keys = ["b.wav", "a.wav", "ü.wav", "c.wav#0-10"]
    path = tmp_path / "layout.ced"
    new_store(path, k=3, num_classes=9, num_samples=4, num_epochs=3, keys=keys)  # not closed
    h = header_fields(path)
    raw = path.read_bytes()
    blob = b"".join(s.encode() for s in keys)
    assert h["magic"] == b"CEDSTORE" and (h["version"], h["version_minor"]) == (1, 2) and h["header_size"] == 128
    assert (h["k"], h["num_classes"], h["num_samples"], h["num_epochs"], h["record_size"]) == (3, 9, 4, 3, 16)
    assert h["header_crc"] == zlib.crc32(raw[:124]) and h["index_width"] == 0 and h["reserved1"] == bytes(8)
    assert h["sections_crc"] == zlib.crc32(raw[128:h["epoch_table_offset"]])
    assert (h["metadata_offset"], h["metadata_length"]) == (128, len(META))
    assert raw[128:128 + len(META)] == META
    assert h["keys_offset"] == _align(128 + len(META), 8)
    assert h["keys_length"] == 16 + 8 * 5 + 8 * 4 + len(blob)
    assert h["epoch_table_offset"] == _align(h["keys_offset"] + h["keys_length"], 8)
    assert h["epoch_table_length"] == 8 * 3
    assert h["records_offset"] == _align(h["epoch_table_offset"] + 24, 4096) and h["records_offset"] % 4096 == 0
    assert h["records_length"] == 3 * 4 * 16
    assert len(raw) == h["records_offset"] + h["records_length"]
    ko = h["keys_offset"]
    num_keys, blob_length = struct.unpack_from("<QQ", raw, ko)
    ends = struct.unpack_from("<5Q", raw, ko + 16)
    order = struct.unpack_from("<4Q", raw, ko + 56)
    assert (num_keys, blob_length) == (4, len(blob))
    assert ends == (0, 5, 10, 16, 26) and order == (1, 0, 3, 2)  # sorted by UTF-8 bytes
    assert raw[ko + 88:ko + 88 + len(blob)] == blob
    gaps = raw[128 + len(META):ko] + raw[ko + h["keys_length"]:h["epoch_table_offset"]] + \
        raw[h["epoch_table_offset"] + 24:h["records_offset"]]
    assert gaps == bytes(len(gaps))
    assert raw[h["epoch_table_offset"]:h["epoch_table_offset"] + 24] == bytes(24)  # all open, crc 0
    assert raw[h["records_offset"]:] == b"\xff" * h["records_length"]


def test_store_without_keys(tmp_path):
    new_store(tmp_path / "nokeys.ced").close()
    h = header_fields(tmp_path / "nokeys.ced")
    assert h["keys_length"] == 0 and h["keys_offset"] == h["epoch_table_offset"] == _align(128 + len(META), 8)
    r = _core.Reader(str(tmp_path / "nokeys.ced"))
    assert not r.has_keys
    for call in (lambda: r.keys(), lambda: r.key(0), lambda: r.lookup(["a"])):
        with pytest.raises(FormatError, match="the store has no key table"):
            call()


def test_reader_properties_keys_and_buffer(full_store):
    path, _, _, keys = full_store
    r = _core.Reader(path)
    assert (r.path, r.k, r.num_classes, r.num_samples, r.num_epochs, r.value_kind) == (path, 3, 9, 12, 2, 0)
    assert r.record_size == 16 and r.records_offset % 4096 == 0 and r.file_size == os.path.getsize(path)
    assert r.has_keys and r.keys() == keys and r.key(3) == keys[3]
    assert r.metadata_bytes() == META
    assert r.lookup([keys[5], "missing", keys[0], "\ud800"]).tolist() == [5, -1, 0, -1]
    with pytest.raises(IndexError, match=r"sample id 12 out of range \[0, 12\)"):
        r.key(12)
    buf = r.buffer()
    assert buf.readonly and len(buf) == r.file_size and bytes(buf[:8]) == b"CEDSTORE"
    r.close()
    assert bytes(buf[:8]) == b"CEDSTORE"  # the view keeps the mapping alive
    with pytest.raises(CedStoreError, match="the reader is closed"):
        r.decode_dense(0, [0])


def test_close_seals_complete_epochs_with_zlib_crc(tmp_path):
    rng = np.random.default_rng(2)
    path = tmp_path / "seal.ced"
    w = new_store(path, num_samples=6, num_epochs=3)
    w.write_dense(0, np.arange(6), make_dense(rng, 6, 9), np.arange(6))
    w.write_dense(2, np.arange(3), make_dense(rng, 3, 9), np.arange(3))  # incomplete
    w.close()
    w.close()  # idempotent
    r = _core.Reader(str(path))
    epoch_bytes = 6 * r.record_size
    raw = path.read_bytes()
    crc0 = zlib.crc32(raw[r.records_offset:r.records_offset + epoch_bytes])
    assert r.epoch_table() == [(1, crc0), (0, 0), (0, 0)]
    assert r.written(2).tolist() == [True] * 3 + [False] * 3
    r.verify(require_complete=False)
    with pytest.raises(UnwrittenRecordError, match=r"epoch 1, sample 0: record not written"):
        r.verify()

    w = _core.Writer.resume(str(path))  # every epoch open again while writing
    assert _core.Reader(str(path)).epoch_table() == [(0, 0)] * 3
    assert w.written(2).tolist() == [True] * 3 + [False] * 3
    w.write_dense(2, np.arange(3, 6), make_dense(rng, 3, 9), np.arange(3))
    w.close(seal=True)
    table = _core.Reader(str(path)).epoch_table()
    assert table[0] == (1, crc0) and table[1] == (0, 0) and table[2][0] == 1
    assert table[2][1] == zlib.crc32(path.read_bytes()[r.records_offset + 2 * epoch_bytes:])


def test_create_refuses_existing_file_unless_overwrite(tmp_path):
    path = tmp_path / "x.ced"
    new_store(path).close()
    with pytest.raises(FileExistsError):
        new_store(path)
    old = _core.Reader(str(path))
    new_store(path, k=2, overwrite=True).close()
    assert _core.Reader(str(path)).k == 2 and old.k == 3 and bytes(old.buffer()[:8]) == b"CEDSTORE"


CREATE_ERRORS = [
    (dict(k=0), r"k: expected 1 <= k <= num_classes \(9\), found 0"),
    (dict(k=10), r"k: expected 1 <= k <= num_classes \(9\), found 10"),
    (dict(num_classes=32768, k=1), r"num_classes: expected 1 <= num_classes <= 32767, found 32768"),
    (dict(num_samples=0), r"num_samples: expected >= 1, found 0"),
    (dict(num_epochs=0), r"num_epochs: expected >= 1, found 0"),
    (dict(num_samples=2**62, num_epochs=2**31), r"does not fit in a 64-bit file size"),
    (dict(num_samples=3, keys=["a", "b"]), r"keys: expected one per sample \(3\), found 2"),
    (dict(num_samples=3, keys=["a", "", "b"]), r"keys: the key of sample 1 is empty"),
    (dict(num_samples=3, keys=["a", "b", "a"]), r"keys: duplicate key 'a' \(samples 0 and 2\)"),
    (dict(num_samples=2, keys=["a", "\ud800"]), r"keys: the key of sample 1 is not valid UTF-8"),
    (dict(num_samples=2, keys=["a", 3]), r"keys: expected str, found <class 'int'> for sample 1"),
]


@pytest.mark.parametrize("kwargs, message", CREATE_ERRORS)
def test_create_refuses(tmp_path, kwargs, message):
    with pytest.raises(InvalidInputError, match=message):
        new_store(tmp_path / "bad.ced", **kwargs)
    assert not (tmp_path / "bad.ced").exists()


# --- bad writes and reads --------------------------------------------------------------------

N9 = np.linspace(1, 0, 9, dtype=np.float32)[None]  # one valid dense row, C = 9


def _n9_with(cls: int, value: float) -> np.ndarray:
    row = N9.copy()
    row[0, cls] = value
    return row


V3, I3 = np.array([[0.5, 0.25, 0.25]], np.float32), np.array([[4, 2, 7]])

WRITE_ERRORS = [
    ("dense", (0, [3], _n9_with(4, np.nan), [1]), InvalidInputError,
     r"epoch 0, sample 3 \(row 0\): dense\[0, 4\] = nan is NaN; values must be finite"),
    ("dense", (1, [0, 5], np.vstack([N9, _n9_with(8, -np.inf)]), [1, 2]), InvalidInputError,
     r"epoch 1, sample 5 \(row 1\): dense\[1, 8\] = -inf is infinite"),
    ("dense", (0, [2], _n9_with(0, 1e6), [1]), InvalidInputError,
     r"epoch 0, sample 2 \(row 0\): dense\[0, 0\] = 1e\+06 is outside the float16 range"),
    ("dense", (0, [0], N9[:, :8], [1]), InvalidInputError, r"dense: expected 9 columns \(num_classes\), found 8"),
    ("dense", (0, [0], N9.astype(np.float64), [1]), InvalidInputError,
     r"dense: expected a 2-d float32 or float16 array, found 2-d float64"),
    ("dense", (0, [0], N9[0], [1]), InvalidInputError, r"dense: expected a 2-d float32 or float16 array, found 1-d"),
    ("dense", (0, [0, 1], N9, [1, 2]), InvalidInputError, r"dense: expected 2 rows \(one per sample id\), found 1"),
    ("dense", (0, [0], N9, [1, 2]), InvalidInputError, r"seeds: expected 1 rows \(one per sample id\), found 2"),
    ("dense", (0, [0.5], N9, [1]), InvalidInputError, r"sample_ids: expected a 1-d integer array, found 1-d float64"),
    ("dense", (0, [12], N9, [1]), IndexError, r"epoch 0: sample id 12 \(row 0\) out of range \[0, 12\)"),
    ("dense", (0, [-1], N9, [1]), IndexError, r"epoch 0: sample id -1 \(row 0\) out of range \[0, 12\)"),
    ("dense", (2, [0], N9, [1]), IndexError, r"epoch 2 out of range \[0, 2\)"),
    ("dense", (-1, [0], N9, [1]), IndexError, r"epoch -1 out of range \[0, 2\)"),
    ("dense", (0, [4, 4], np.vstack([N9, N9]), [1, 2]), InvalidInputError,
     r"epoch 0: sample id 4 appears twice in one batch \(rows 0 and 1\)"),
    ("dense", (0, [4], N9, [2**31]), InvalidInputError, r"epoch 0, sample 4 \(row 0\): seed 2147483648 outside the int32 range"),
    ("topk", (0, [1], V3, [[4, 2, 4]], [0]), InvalidInputError,
     r"epoch 0, sample 1 \(row 0\): indices\[0, 2\] = 4 repeats indices\[0, 0\]"),
    ("topk", (0, [1], V3, [[4, 9, 1]], [0]), InvalidInputError, r"indices\[0, 1\] = 9 outside \[0, 9\)"),
    ("topk", (0, [1], V3, [[-1, 2, 1]], [0]), InvalidInputError, r"indices\[0, 0\] = -1 outside \[0, 9\)"),
    ("topk", (0, [1], V3[:, ::-1], I3, [0]), InvalidInputError,
     r"values must be non-increasing after float16 rounding, found values\[0, 1\] = 0.25 < values\[0, 2\] = 0.5"),
    ("topk", (0, [1], np.array([[1, 1 + 1e-4, 0]], np.float32), I3, [0]), None, None),  # equal after rounding
    ("topk", (0, [1], np.array([[np.nan, 0, 0]], np.float32), I3, [0]), InvalidInputError, r"values\[0, 0\] = nan is NaN"),
    ("topk", (0, [1], np.array([[7e4, 0, 0]], np.float32), I3, [0]), InvalidInputError,
     r"values\[0, 0\] = 70000 is outside the float16 range"),
    ("topk", (0, [1], V3, I3[:, :2], [0]), InvalidInputError, r"indices: expected the shape of values \(1, 3\), found \(1, 2\)"),
    ("topk", (0, [1], V3[:, :2], I3[:, :2], [0]), InvalidInputError, r"values: expected 3 columns \(k\), found 2"),
    ("topk", (0, [1], V3, I3.astype(np.float32), [0]), InvalidInputError, r"indices: expected a 2-d integer array"),
]


@pytest.mark.parametrize("kind, args, error, message", WRITE_ERRORS)
def test_write_refuses(tmp_path, kind, args, error, message):
    w = new_store(tmp_path / "w.ced")
    write = w.write_dense if kind == "dense" else w.write_topk
    if error is None:
        write(*args)
        return
    with pytest.raises(error, match=message):
        write(*args)
    assert not w.written(0).any() and not w.written(1).any()  # nothing of a refused batch is stored


def test_write_after_close(tmp_path):
    w = new_store(tmp_path / "closed.ced")
    w.close(seal=False)
    for call in (lambda: w.write_dense(0, [0], N9, [0]), lambda: w.write_topk(0, [0], V3, I3, [0]), lambda: w.written(0)):
        with pytest.raises(WriterClosedError, match=r"closed\.ced: the writer is closed"):
            call()
    assert w.k == 3 and w.num_samples == 12  # shape stays readable


def test_decode_refuses(full_store, tmp_path):
    path, *_ = full_store
    r = _core.Reader(path)
    with pytest.raises(IndexError, match=re.escape(f"{path}: epoch 0: sample id 99 (row 1) out of range [0, 12)")):
        r.decode_dense(0, [0, 99])
    with pytest.raises(IndexError, match=re.escape(f"{path}: epoch 2 out of range [0, 2)")):
        r.decode_topk(2, [0])
    with pytest.raises(InvalidInputError, match=r"out: expected a C-contiguous writable float32 array of shape \(2, 9\)"):
        r.decode_dense(0, [0, 1], out=np.zeros((2, 9), np.float64))
    with pytest.raises(InvalidInputError, match=r"out: expected .* shape \(2, 9\), found 2-d float32 of shape \(2, 8\)"):
        r.decode_dense(0, [0, 1], out=np.zeros((2, 8), np.float32))
    with pytest.raises(InvalidInputError, match=r"out: expected a C-contiguous"):
        r.decode_dense(0, [0, 1], out=np.zeros((9, 2), np.float32).T)
    partial = tmp_path / "partial.ced"
    new_store(partial).write_dense(1, [3], N9, [0])
    r = _core.Reader(str(partial))
    with pytest.raises(UnwrittenRecordError, match=re.escape(f"{partial}: epoch 1, sample 4: record not written")):
        r.decode_dense(1, [3, 4])
    with pytest.raises(UnwrittenRecordError, match=re.escape(f"{partial}: epoch 0, sample 3: record not written")):
        r.decode_topk(0, [3])


# --- files that are not valid stores ---------------------------------------------------------


def _bad_file(kind: str, path: str):
    h = header_fields(path)
    eto, rec = h["epoch_table_offset"], h["records_offset"]
    if kind == "short":
        _write(path, b"CEDSTORE")
    elif kind == "magic":
        patch(path, 0, b"\x89PNG\r\n\x1a\n")
    elif kind == "version":
        patch(path, 8, struct.pack("<I", 2), fix_header_crc=True)
    elif kind == "header_crc":
        patch(path, 16, struct.pack("<I", 4))
    elif kind == "record_size":
        patch(path, 36, struct.pack("<I", 20), fix_header_crc=True)
    elif kind == "reserved1":
        patch(path, 119, b"\x01", fix_header_crc=True)
    elif kind == "records_offset":
        patch(path, 96, struct.pack("<Q", rec + 4096), fix_header_crc=True)
    elif kind == "truncated":
        os.truncate(path, os.path.getsize(path) - 1)
    elif kind == "trailing":
        _write(path, _read(path) + b"\0")
    elif kind == "gap":
        patch(path, rec - 1, b"\x01")
    elif kind == "epoch_state":
        patch(path, eto + 8, struct.pack("<I", 2))
    elif kind == "key_order":
        ko = h["keys_offset"]
        first_two = struct.unpack_from("<QQ", _read(path), ko + 16 + 8 * 13)
        patch(path, ko + 16 + 8 * 13, struct.pack("<QQ", *first_two[::-1]), fix_sections_crc=True)
    elif kind == "key_utf8":
        blob = h["keys_offset"] + 16 + 8 * 13 + 8 * 12
        patch(path, blob, b"\xff", fix_sections_crc=True)


FILE_ERRORS = [
    ("short", FormatError, r"not a cedstore file: expected at least 128 bytes, found 8"),
    ("magic", FormatError, r"not a cedstore file: expected magic b'CEDSTORE', found b'\\x89PNG\\r\\n\\x1a\\n'"),
    ("version", UnsupportedVersionError, r"format version 2, this cedstore reads version 1"),
    ("header_crc", FormatError, r"header CRC mismatch: stored 0x[0-9a-f]{8}, computed 0x[0-9a-f]{8} \(the header is corrupted\)"),
    ("record_size", FormatError, r"header field record_size: expected 4\*k \+ 4 = 16, found 20"),
    ("reserved1", FormatError, r"header field reserved1: expected 8 zero bytes"),
    ("records_offset", FormatError, r"header field records_offset: expected 4096, found 8192"),
    ("truncated", FormatError, r"file is truncated: expected \d+ bytes, found \d+"),
    ("trailing", FormatError, r"unexpected data after the records"),
    ("gap", FormatError, r"alignment gap between sections is not zero"),
    ("epoch_state", FormatError, r"epoch 1: state: expected 0 \(open\) or 1 \(sealed\), found 2"),
    ("key_order", FormatError, r"key table: order is not sorted by key"),
    ("key_utf8", FormatError, r"key table: key of sample 0 is not valid UTF-8"),
]


@pytest.mark.parametrize("kind, error, message", FILE_ERRORS)
def test_open_refuses(full_store, kind, error, message):
    path, *_ = full_store
    _bad_file(kind, path)
    with pytest.raises(error, match=message) as info:
        _core.Reader(path)
    assert str(info.value).startswith(path + ": ")
    with pytest.raises(error, match=message):
        _core.Writer.resume(path)


def test_open_refuses_missing_file_and_directory(tmp_path):
    with pytest.raises(FileNotFoundError):
        _core.Reader(str(tmp_path / "missing.ced"))
    with pytest.raises(IsADirectoryError):
        _core.Reader(str(tmp_path))


def _record_offset(path, epoch, sample):
    h = header_fields(path)
    return h["records_offset"] + (epoch * h["num_samples"] + sample) * h["record_size"]


VERIFY_ERRORS = [  # (offset in the record, bytes) -> message; k = 3: values at 0, indices at 6, seed at 12
    (8, struct.pack("<h", 9), IntegrityError, r"epoch 1, sample 5: class index 9 at position 1 outside \[0, 9\)"),
    (8, None, IntegrityError, r"epoch 1, sample 5: class index \d appears twice"),
    (2, np.float16(np.inf).tobytes(), IntegrityError, r"epoch 1, sample 5: value at position 1 is not finite"),
    (4, np.float16(2.0).tobytes(), IntegrityError, r"epoch 1, sample 5: values are not non-increasing"),
    (12, b"\x01", IntegrityError, r"epoch 1: CRC mismatch: sealed with 0x[0-9a-f]{8}, records have 0x[0-9a-f]{8}"),
    (6, b"\xff\xff", IntegrityError, r"epoch 1, sample 5: record not written in a sealed epoch"),
]


@pytest.mark.parametrize("at, data, error, message", VERIFY_ERRORS)
def test_verify_finds_corruption(full_store, at, data, error, message):
    path, *_ = full_store
    rec = _record_offset(path, 1, 5)
    if data is None:  # repeat the first index in the second position
        data = _read(path)[rec + 6:rec + 8]
    patch(path, rec + at, data)
    r = _core.Reader(path)  # open only checks what memory safety needs
    with pytest.raises(error, match=message):
        r.verify()
    if at == 8 and message.startswith("epoch 1, sample 5: class index 9"):
        with pytest.raises(IntegrityError, match=re.escape(f"{path}: epoch 1, sample 5: class index 9 at position 1 outside [0, 9)")):
            r.decode_dense(1, [5])
        with pytest.raises(IntegrityError, match=r"epoch 1, sample 5: class index 9"):
            r.decode_topk(1, [5])


# --- GIL and fork ----------------------------------------------------------------------------


def test_decode_releases_the_gil(tmp_path):
    # The main thread watches `out` while a thread decodes into it. Rows are filled in order, so
    # reading "first row done" and then "last row not done" proves the main thread ran while the
    # C++ loop was running, which it cannot while the GIL is held. Retries absorb scheduling.
    num_classes = 32767
    w = new_store(tmp_path / "gil.ced", k=1, num_classes=num_classes, num_samples=1, num_epochs=1)
    w.write_topk(0, [0], np.ones((1, 1), np.float32), [[0]], [0])
    w.close()
    r = _core.Reader(str(tmp_path / "gil.ced"))
    ids = np.zeros(1024, np.int64)
    out = np.empty((len(ids), num_classes), np.float32)  # 128 MiB
    for _ in range(20):
        out.fill(-1.0)
        done = threading.Event()

        def decode():
            r.decode_dense(0, ids, out=out)
            done.set()

        t = threading.Thread(target=decode)
        t.start()
        seen_partial = False
        while not done.is_set():
            if out[0, 1] == 0.0 and out[-1, 1] == -1.0:
                seen_partial = True
                break
        t.join()
        assert out[-1, 0] == 1.0 and out[-1, 1] == 0.0
        if seen_partial:
            return
    pytest.fail("never saw the main thread run while decode_dense was running")


def test_reader_works_in_a_forked_child(full_store):
    path, dense, seeds, _ = full_store
    r = _core.Reader(path)
    ids = np.array([11, 0, 5, 5])
    expected, expected_seeds = r.decode_dense(1, ids)
    with warnings.catch_warnings():  # Python >= 3.12 warns about fork in threaded processes
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # child: no pytest machinery, report through the exit status only
        try:
            got, got_seeds = r.decode_dense(1, ids)
            ok = np.array_equal(got, expected) and np.array_equal(got_seeds, expected_seeds)
            ok = ok and np.array_equal(r.decode_topk(1, ids)[2], expected_seeds)
            os._exit(0 if ok else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    np.testing.assert_array_equal(r.decode_dense(1, ids)[0], expected)  # the parent still reads
