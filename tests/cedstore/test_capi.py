"""The plain C API (csrc/cedstore.h), driven through cffi from the symbols of cedstore._core."""

from __future__ import annotations

import pathlib
import re

import numpy as np
import pytest

from cedstore import _core

cffi = pytest.importorskip("cffi")

HEADER = pathlib.Path(__file__).resolve().parents[2] / "csrc" / "cedstore.h"


@pytest.fixture(scope="module")
def capi():
    text = HEADER.read_text()
    cdef = text[text.index("/* cdef-begin"):text.index("/* cdef-end */")]
    cdef = re.sub(r"/\*.*?\*/", "", cdef, flags=re.S).replace("CEDSTORE_API ", "")
    ffi = cffi.FFI()
    ffi.cdef(cdef)
    return ffi, ffi.dlopen(_core.__file__)


def _open(capi, path):
    ffi, lib = capi
    handle, err = ffi.new("cedstore_reader**"), ffi.new("char[512]")
    status = lib.cedstore_open(str(path).encode(), handle, err, len(err))
    return status, handle[0], ffi.string(err).decode()


@pytest.fixture
def store(tmp_path):
    rng = np.random.default_rng(3)
    dense = rng.random((2, 40, 17), dtype=np.float32)
    w = _core.Writer.create(str(tmp_path / "c.ced"), 4, 17, 40, 2, 0, b"{}", None)
    w.write_dense(0, np.arange(40), dense[0], np.arange(40) * 3)
    w.write_dense(1, np.arange(39), dense[1][:39], np.arange(39))  # sample 39 of epoch 1 unwritten
    w.close()
    return tmp_path / "c.ced"


def test_capi_decodes_like_the_python_api(capi, store):
    ffi, lib = capi
    status, reader, err = _open(capi, store)
    assert status == lib.CEDSTORE_OK and err == ""
    try:
        k, c, n, e = (ffi.new("uint32_t*"), ffi.new("uint32_t*"), ffi.new("uint64_t*"), ffi.new("uint32_t*"))
        lib.cedstore_shape(reader, k, c, n, e)
        assert (k[0], c[0], n[0], e[0]) == (4, 17, 40, 2)
        ids = np.array([5, 0, 39, 5, 12], np.int64)
        out = np.empty((len(ids), 17), np.float32)
        seeds = np.empty(len(ids), np.int32)
        err = ffi.new("char[256]")
        status = lib.cedstore_decode_dense(reader, 0, ffi.from_buffer("int64_t[]", ids), len(ids), -0.5,
                                           ffi.from_buffer("float[]", out), ffi.from_buffer("int32_t[]", seeds),
                                           err, len(err))
        assert status == lib.CEDSTORE_OK
        expected, expected_seeds = _core.Reader(str(store)).decode_dense(0, ids, fill=-0.5)
        np.testing.assert_array_equal(out, expected)
        np.testing.assert_array_equal(seeds, expected_seeds)
    finally:
        lib.cedstore_close(reader)


def test_capi_reports_errors(capi, store, tmp_path):
    ffi, lib = capi
    status, reader, err = _open(capi, tmp_path / "missing.ced")
    assert status == lib.CEDSTORE_ERR_OS and reader == ffi.NULL and "No such file or directory" in err
    (tmp_path / "bad.ced").write_bytes(b"NOTASTORE" * 20)
    status, reader, err = _open(capi, tmp_path / "bad.ced")
    assert status == lib.CEDSTORE_ERR_FORMAT and reader == ffi.NULL
    assert err.endswith("bad.ced: not a cedstore file: expected magic b'CEDSTORE', found b'NOTASTOR'")

    status, reader, _ = _open(capi, store)
    assert status == lib.CEDSTORE_OK
    try:
        out, seeds = ffi.new("float[17]"), ffi.new("int32_t[1]")
        for epoch, sample, expected_status, message in [
            (1, 39, lib.CEDSTORE_ERR_UNWRITTEN, f"{store}: epoch 1, sample 39: record not written"),
            (0, 40, lib.CEDSTORE_ERR_INDEX, f"{store}: epoch 0: sample id 40 (row 0) out of range [0, 40)"),
            (2, 0, lib.CEDSTORE_ERR_INDEX, f"{store}: epoch 2 out of range [0, 2)"),
        ]:
            ids = ffi.new("int64_t[1]", [sample])
            err = ffi.new("char[512]")
            assert lib.cedstore_decode_dense(reader, epoch, ids, 1, 0.0, out, seeds, err, len(err)) == expected_status
            assert ffi.string(err).decode() == message
        short = ffi.new("char[8]")  # messages are truncated, always NUL-terminated
        ids = ffi.new("int64_t[1]", [40])
        assert lib.cedstore_decode_dense(reader, 0, ids, 1, 0.0, out, seeds, short, 8) == lib.CEDSTORE_ERR_INDEX
        assert ffi.string(short).decode() == str(store)[:7]
        assert lib.cedstore_decode_dense(reader, 0, ffi.NULL, 1, 0.0, out, seeds, ffi.NULL, 0) == lib.CEDSTORE_ERR_INVALID_INPUT
    finally:
        lib.cedstore_close(reader)
