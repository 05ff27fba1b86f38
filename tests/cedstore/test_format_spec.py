"""FORMAT.md as a test oracle: its worked example byte for byte, and files of earlier versions
(committed fixtures) read to known values by the core and the reference reader alike."""

from __future__ import annotations

import dataclasses
import re
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

import cedstore
from cedstore import _core
from cedstore.errors import FormatError, UnwrittenRecordError
from cedstore.format import HEADER_FORMAT, Header, read_header
from cedstore.reference import ReferenceReader

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def spec_example_bytes(fence: str = "hex") -> bytes:
    """The bytes of the worked example's ```hex block in FORMAT.md (```hex wide: its wide-index
    variant): `offset: bytes` lines; a `*` line stands for zero bytes up to the next line's
    offset; the last line ends the file."""
    block = re.search(rf"```{fence}\n(.*?)```", (ROOT / "FORMAT.md").read_text(), re.DOTALL).group(1)
    placed: dict[int, bytes] = {}
    for line in block.splitlines():
        if line.strip() == "*":
            continue
        offset, hex_bytes = line.split(":")
        placed[int(offset, 16)] = bytes.fromhex(hex_bytes)
    end = max(offset + len(data) for offset, data in placed.items())
    out = bytearray(end)
    for offset, data in placed.items():
        out[offset:offset + len(data)] = data
    return bytes(out)


def test_worked_example_in_format_md_is_what_the_library_writes(tmp_path):
    path = str(tmp_path / "example.ced")
    w = _core.Writer.create(path, 2, 3, 2, 1, 0, b'{"writer":"spec example"}', ["b", "a"])
    w.write_dense(0, [0, 1], np.array([[0.25, 0.75, 0.5], [1.0, 0.0, 1.0]], np.float32), [1, -2])
    w.close()
    assert Path(path).read_bytes() == spec_example_bytes()
    assert cedstore.open(path).info()["format_version"] == "1.2"
    for reader in (cedstore.open(path), ReferenceReader(path)):  # the test vectors FORMAT.md lists
        targets, seeds = reader.dense(0, [0, 1])
        assert targets.tolist() == [[0.0, 0.75, 0.5], [1.0, 0.0, 1.0]] and seeds.tolist() == [1, -2]
        assert reader.topk(0, [0, 1])[1].tolist() == [[1, 2], [0, 2]]
        assert reader.lookup(["a", "b", "c"]).tolist() == [1, 0, -1]


def test_format_1_0_fixture_reads_to_known_values():
    """tests/cedstore/fixtures/v1_0.ced was written by cedstore 0.1.0 (format 1.0, before the
    metadata and key table CRC) and is never regenerated."""
    path = str(FIXTURES / "v1_0.ced")
    h = read_header(Path(path).read_bytes(), path)
    assert (h.version, h.version_minor, h.sections_crc) == (1, 0, 0)
    core, reference = cedstore.open(path), ReferenceReader(path)
    assert core.keys == reference.keys == ["b.wav", "a.wav", "c.wav#0-10"]
    assert core.metadata == reference.metadata == {
        "activation": "sigmoid", "tail_policy": "zero", "user": {"fixture": "v1.0"}, "writer": "cedstore 0.1.0"}
    assert core.info()["format_version"] == "1.0"
    assert [e["sealed"] for e in core.info()["epochs"]] == [True, False]
    assert core.info()["epochs"][0]["crc32"] == "20718dfd"
    for reader in (core, reference):
        values, indices, seeds = reader.topk(0, [0, 1, 2])
        assert values.tolist() == [[0.75, 0.5], [1.0, 0.5], [0.875, 0.375]]
        assert indices.tolist() == [[2, 0], [0, 2], [1, 2]]
        assert seeds.tolist() == [7, -8, 2**31 - 1]
        values, indices, seeds = reader.topk(1, [1])
        assert (values.tolist(), indices.tolist(), seeds.tolist()) == ([[1.0, 0.5]], [[3, 1]], [-(2**31)])
        assert reader.written(1).tolist() == [False, True, False]
        with pytest.raises(UnwrittenRecordError, match=r"v1_0\.ced: epoch 1, sample 0: record not written"):
            reader.topk(1, [0])
        reader.verify(require_complete=False)
    ids = [0, 1, 2]
    np.testing.assert_array_equal(core.dense(0, ids)[0], reference.dense(0, ids)[0])
    assert core.lookup(["a.wav", "c.wav#0-10"]).tolist() == [1, 2]


def test_format_1_0_fixture_can_be_resumed_and_stays_readable(tmp_path):
    path = str(tmp_path / "v1_0.ced")
    shutil.copy(FIXTURES / "v1_0.ced", path)
    with cedstore.resume(path) as w:
        w.write(1, [0, 2], probs=np.array([[0.5, 0.25, 0.125, 0.0625]] * 2, np.float32), seeds=[3, 4])
        w.write(0, [1], probs=np.array([[0.0, 1.0, 0.5, 0.25]], np.float32), seeds=[5])  # a rewrite
    h = read_header(Path(path).read_bytes(), path)
    assert (h.version, h.version_minor) == (1, 0)  # the header never changes
    for reader in (cedstore.open(path), ReferenceReader(path)):
        reader.verify()
        assert reader.topk(0, [1])[1].tolist() == [[1, 2]] and reader.topk(1, [2])[2].tolist() == [4]


def _with_minor_version(data: bytes, minor: int) -> bytes:
    """`data` with its header claiming `minor` (the header CRC recomputed)."""
    h = Header(*struct.unpack_from(HEADER_FORMAT, data, 0))
    return dataclasses.replace(h, version_minor=minor).pack() + data[128:]


def test_wide_worked_example_in_format_md_is_what_the_library_writes(tmp_path):
    path = str(tmp_path / "wide.ced")
    w = _core.Writer.create(path, 2, 3, 2, 1, 0, b'{"writer":"spec example"}', ["b", "a"], index_width=4)
    w.write_dense(0, [0, 1], np.array([[0.25, 0.75, 0.5], [1.0, 0.0, 1.0]], np.float32), [1, -2])
    w.close()
    assert Path(path).read_bytes() == spec_example_bytes("hex wide")
    h = read_header(Path(path).read_bytes(), path)
    assert (h.version_minor, h.index_width, h.record_size) == (2, 4, 16)
    for reader in (cedstore.open(path), ReferenceReader(path)):  # the narrow example's test vectors
        targets, seeds = reader.dense(0, [0, 1])
        assert targets.tolist() == [[0.0, 0.75, 0.5], [1.0, 0.0, 1.0]] and seeds.tolist() == [1, -2]
        assert reader.topk(0, [0, 1])[1].tolist() == [[1, 2], [0, 2]]
        reader.verify()


def test_a_1_1_file_reads_and_a_wide_file_is_refused_by_the_1_1_rule(tmp_path):
    """The narrow worked example written as 1.1 (its header CRC is the one FORMAT.md 1.1
    printed) reads exactly as the 1.2 file; the wide example claiming 1.1 is refused at byte 44,
    the 1.1 rule (bytes 44-47 are reserved0, zero in 1.0 and 1.1) that makes every pre-1.2
    reader refuse a wide file."""
    old = _with_minor_version(spec_example_bytes(), 1)
    assert struct.unpack_from("<I", old, 124)[0] == 0x11FF2EF9  # FORMAT.md 1.1's header_crc
    (tmp_path / "v1_1.ced").write_bytes(old)
    path = str(tmp_path / "v1_1.ced")
    for reader in (cedstore.open(path), ReferenceReader(path)):
        assert reader.dense(0, [0, 1])[0].tolist() == [[0.0, 0.75, 0.5], [1.0, 0.0, 1.0]]
        assert reader.topk(0, [0, 1])[1].tolist() == [[1, 2], [0, 2]]
    assert cedstore.open(path).info()["format_version"] == "1.1"
    (tmp_path / "wide_as_1_1.ced").write_bytes(_with_minor_version(spec_example_bytes("hex wide"), 1))
    path = str(tmp_path / "wide_as_1_1.ced")
    message = re.escape(f"{path}: header field reserved0: expected 0, found 4")
    for read in (cedstore.open, ReferenceReader):
        with pytest.raises(FormatError, match=message):
            read(path)
