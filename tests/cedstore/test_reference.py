"""The reference implementation (cedstore.format, cedstore.reference) against FORMAT.md, byte by byte."""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np
import pytest
from cedstore_helpers import METADATA_JSON, assemble, make_teacher, write_with

from cedstore import _core
from cedstore import format as F
from cedstore.errors import FormatError, IntegrityError, InvalidInputError, UnwrittenRecordError
from cedstore.reference import ReferenceReader, ReferenceWriter

# (field, offset, struct code) exactly as the header table of FORMAT.md lists them.
HEADER_TABLE = [
    ("magic", 0, "8s"), ("version", 8, "H"), ("version_minor", 10, "H"), ("header_size", 12, "I"), ("k", 16, "I"),
    ("num_classes", 20, "I"), ("num_samples", 24, "Q"), ("num_epochs", 32, "I"),
    ("record_size", 36, "I"), ("value_kind", 40, "I"), ("index_width", 44, "I"),
    ("metadata_offset", 48, "Q"), ("metadata_length", 56, "Q"), ("keys_offset", 64, "Q"),
    ("keys_length", 72, "Q"), ("epoch_table_offset", 80, "Q"), ("epoch_table_length", 88, "Q"),
    ("records_offset", 96, "Q"), ("records_length", 104, "Q"), ("sections_crc", 112, "I"), ("reserved1", 116, "8s"),
    ("header_crc", 124, "I"),
]


def test_constants_agree_with_core():
    for name in ("MAGIC", "FORMAT_VERSION", "HEADER_SIZE", "RECORDS_ALIGN", "SECTION_ALIGN",
                 "MAX_CLASSES", "UNWRITTEN_INDEX"):
        assert getattr(_core, name) == getattr(F, name), name
    assert (F.MAGIC, F.FORMAT_VERSION, F.HEADER_SIZE, F.RECORDS_ALIGN) == (b"CEDSTORE", 1, 128, 4096)
    assert (F.SECTION_ALIGN, F.MAX_CLASSES, F.UNWRITTEN_INDEX, F.VALUE_KINDS) == (8, 32767, -1, {"probability": 0, "logit": 1})


def test_header_struct_matches_format_table():
    assert [f.name for f in F.dataclasses.fields(F.Header)] == [name for name, _, _ in HEADER_TABLE]
    codes = "<" + "".join(code for _, _, code in HEADER_TABLE)
    assert codes == F.HEADER_FORMAT
    for name, offset, code in HEADER_TABLE:
        assert struct.calcsize("<" + "".join(c for _, _, c in HEADER_TABLE[:[n for n, _, _ in HEADER_TABLE].index(name)])) == offset


@pytest.mark.parametrize("k", [1, 2, 20, 527])
def test_record_dtype(k):
    dt = F.record_dtype(k)
    assert dt.itemsize == 4 * k + 4
    assert [dt.fields[name][1] for name in ("values", "indices", "seed")] == [0, 2 * k, 4 * k]


@pytest.mark.parametrize(
    "metadata_length, keys_length, num_epochs, expected",
    [
        (2, 0, 1, (136, 136, 4096)),  # 130 -> 136; no keys; epoch table 8 bytes
        (8, 0, 1, (136, 136, 4096)),  # already aligned
        (40, 61, 3, (168, 232, 4096)),  # 168 + 61 = 229 -> 232
        (4000, 0, 2, (4128, 4128, 8192)),  # the epoch table pushes the records to the next page
    ],
)
def test_layout_offsets(metadata_length, keys_length, num_epochs, expected):
    h = F.layout(4, 10, 5, num_epochs, 0, metadata_length, keys_length)
    assert (h.keys_offset, h.epoch_table_offset, h.records_offset) == expected
    assert h.records_length == num_epochs * 5 * 20 and h.epoch_table_length == 8 * num_epochs


def test_reference_file_byte_by_byte(tmp_path):
    teacher = make_teacher(num_epochs=2, num_samples=3, num_classes=5)
    keys = ["b.wav", "a.wav", "ü.wav"]
    path = write_with(ReferenceWriter, tmp_path / "r.ced", teacher, k=2, keys=keys,
                      batches=[(0, [2, 0, 1]), (1, [1]), (1, [0, 2])])
    data = path.read_bytes()
    header = struct.unpack_from(F.HEADER_FORMAT, data)
    fields = dict(zip([name for name, _, _ in HEADER_TABLE], header))
    blob = "b.wava.wavü.wav".encode()
    keys_length = 16 + 8 * 4 + 8 * 3 + len(blob)
    keys_offset = (128 + len(METADATA_JSON) + 7) // 8 * 8
    assert fields == {
        "magic": b"CEDSTORE", "version": 1, "version_minor": 2, "header_size": 128, "k": 2, "num_classes": 5,
        "num_samples": 3, "num_epochs": 2, "record_size": 12, "value_kind": 0, "index_width": 0,
        "metadata_offset": 128, "metadata_length": len(METADATA_JSON), "keys_offset": keys_offset,
        "keys_length": keys_length, "epoch_table_offset": (keys_offset + keys_length + 7) // 8 * 8,
        "epoch_table_length": 16, "records_offset": 4096, "records_length": 72,
        "sections_crc": zlib.crc32(data[128:(keys_offset + keys_length + 7) // 8 * 8]),
        "reserved1": bytes(8), "header_crc": zlib.crc32(data[:124]),
    }
    assert len(data) == 4096 + 72
    assert data[128:128 + len(METADATA_JSON)] == METADATA_JSON
    table = data[keys_offset:keys_offset + keys_length]
    assert struct.unpack_from("<QQ4Q3Q", table) == (3, len(blob), 0, 5, 10, len(blob), 1, 0, 2)
    assert table[-len(blob):] == blob
    records = data[4096:]
    for e in range(2):
        state, crc = struct.unpack_from("<II", data, fields["epoch_table_offset"] + 8 * e)
        assert (state, crc) == (1, zlib.crc32(records[36 * e:36 * (e + 1)]))
    values, indices = F.encode_topk_reference(teacher.probs[1, 2:3], 2)
    expected = values.tobytes() + indices.tobytes() + teacher.seeds[1, 2].tobytes()
    assert records[36 + 24:36 + 36] == expected
    gaps = data[128 + len(METADATA_JSON):keys_offset] + data[keys_offset + keys_length:fields["epoch_table_offset"]]
    assert gaps == bytes(len(gaps)) and data[fields["epoch_table_offset"] + 16:4096] == bytes(4096 - fields["epoch_table_offset"] - 16)


def test_unwritten_records_are_ff_and_epochs_stay_open(tmp_path):
    teacher = make_teacher(num_epochs=2, num_samples=4, num_classes=3)
    path = write_with(ReferenceWriter, tmp_path / "r.ced", teacher, k=3, batches=[(0, [0, 1, 2, 3]), (1, [2])])
    r = ReferenceReader(path)
    assert r.epoch_table()[1] == (0, 0) and r.epoch_table()[0][0] == 1
    assert r.written(1).tolist() == [False, False, True, False]
    assert r.records(1)[[0, 1, 3]].tobytes() == b"\xff" * 48
    with pytest.raises(UnwrittenRecordError, match=r"r\.ced: epoch 1, sample 3: record not written"):
        r.topk(1, [2, 3])
    r.verify(require_complete=False)
    with pytest.raises(UnwrittenRecordError, match=r"epoch 1, sample 0: record not written"):
        r.verify()


def test_resume_opens_every_epoch_then_seals(tmp_path):
    teacher = make_teacher(num_epochs=2, num_samples=4, num_classes=3)
    path = write_with(ReferenceWriter, tmp_path / "r.ced", teacher, k=2, batches=[(0, range(4)), (1, [0])])
    w = ReferenceWriter.resume(path)
    assert ReferenceReader(path).epoch_table() == [(0, 0), (0, 0)]
    assert w.written(1).tolist() == [True, False, False, False]
    w.write(1, np.arange(1, 4), probs=teacher.probs[1, 1:], seeds=teacher.seeds[1, 1:])
    w.close()
    assert path.read_bytes() == write_with(ReferenceWriter, tmp_path / "one.ced", teacher, k=2).read_bytes()


@pytest.mark.parametrize(
    "row, k, values, indices",
    [
        ([0.5, 0.5, 0.25, 0.5], 3, [0.5, 0.5, 0.5], [0, 1, 3]),  # ties: lower class first
        ([0.0, -0.0, 0.0], 2, [0.0, -0.0], [0, 1]),  # -0.0 ties with 0.0
        ([1e-8, 0.0, 6e-8], 2, [6e-8, 1e-8], [2, 0]),  # fp16 subnormal; 1e-8 sorts above 0.0, rounds to 0
        ([1.0, 1.0004883, 0.99975586], 3, [1.0, 1.0, 1.0], [1, 0, 2]),  # halfway cases round to even: 1.0
        ([65504.0, -65504.0], 2, [65504.0, -65504.0], [0, 1]),  # fp16 range limits
    ],
)
def test_encode_topk_reference(row, k, values, indices):
    v, i = F.encode_topk_reference(np.array([row], np.float32), k)
    assert v.dtype == np.float16 and i.dtype == np.int16
    np.testing.assert_array_equal(v[0], np.array(values, np.float32).astype(np.float16))
    assert np.signbit(v[0]).tolist() == np.signbit(np.array(values, np.float32)).tolist()
    assert i[0].tolist() == indices


@pytest.mark.parametrize(
    "dense, k, message",
    [
        ([[0.1, np.nan]], 1, r"row 0, class 1: teacher output nan is not finite"),
        ([[0.1, 0.2], [np.inf, 0.0]], 1, r"row 1, class 0: teacher output inf is not finite"),
        ([[70000.0, 1.0]], 1, r"row 0, class 0: teacher output 70000.0 overflows float16"),
        ([[1.0, 2.0]], 0, r"k 0 must be in \[1, num_classes=2\]"),
        ([[1.0, 2.0]], 3, r"k 3 must be in \[1, num_classes=2\]"),
    ],
)
def test_encode_topk_reference_refuses(dense, k, message):
    with pytest.raises(InvalidInputError, match=message):
        F.encode_topk_reference(np.array(dense, np.float32), k)


def test_metadata_encoding_is_deterministic():
    meta = {"writer": "cedstore 0.1.0", "user": {"b": 1, "a": "é"}, "activation": "softmax"}
    raw = F.encode_metadata(meta)
    assert raw == '{"activation":"softmax","user":{"a":"é","b":1},"writer":"cedstore 0.1.0"}'.encode()
    assert F.decode_metadata(raw, "f") == meta


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"\xff\xfe", r"f: metadata is not UTF-8 JSON: 'utf-8' codec"),
        (b"{]", r"f: metadata is not UTF-8 JSON: Expecting property name"),
        (b'{"writer":"x","v":NaN}', r"f: metadata: NaN is not valid JSON"),
        (b"[1, 2]", r"f: metadata must be a JSON object, found list"),
        (b'{"user":{}}', r"f: metadata key 'writer' is required and must be a string"),
        (b'{"writer":"x","user":[]}', r"f: metadata key 'user' must be a JSON object, found list"),
        (b'{"writer":"x","activation":1}', r"f: metadata key 'activation' must be a JSON string, found int"),
        (b'{"writer":"x","activation":"relu"}', r"f: metadata key .activation. must be .sigmoid. or .softmax."),
    ],
)
def test_decode_metadata_refuses(raw, message):
    with pytest.raises(FormatError, match=message):
        F.decode_metadata(raw, "f")


def test_key_table_roundtrip():
    keys = ["b", "a", "ünï", "ab"]
    table = F.encode_key_table(keys, 4)
    assert len(table) == F.key_table_length(4, len("baünïab".encode()))
    encoded, order = F.decode_key_table(table, 4, "f")
    assert [e.decode() for e in encoded] == keys and order == [1, 3, 0, 2]


def _key_table(num_keys, blob, ends, order):
    return struct.pack(f"<QQ{len(ends)}Q{len(order)}Q", num_keys, len(blob), *ends, *order) + blob


@pytest.mark.parametrize(
    "table, message",
    [
        (b"\0" * 15, r"expected at least 16 bytes, found 15"),
        (_key_table(2, b"ab", [0, 1, 2, 3], [0, 1, 2]), r"num_keys: expected num_samples \(3\), found 2"),
        (_key_table(3, b"abc", [0, 1, 2, 3], [0, 1, 2])[:-1], r"length: expected .* \(blob_length 3\) = keys_length \(74\)"),
        (_key_table(3, b"abc", [1, 1, 2, 3], [0, 1, 2]), r"ends\[0\]: expected 0, found 1"),
        (_key_table(3, b"abc", [0, 1, 2, 2], [0, 1, 2])[:-1] + b"c", r"ends\[3\]: expected blob_length \(3\), found 2"),
        (_key_table(3, b"abc", [0, 1, 1, 3], [0, 1, 2]), r"key of sample 1 is empty"),
        (_key_table(3, b"abc", [0, 2, 1, 3], [0, 1, 2]), r"ends must be non-decreasing, found ends\[1\] = 2 > ends\[2\] = 1"),
        (_key_table(3, b"a\xffc", [0, 1, 2, 3], [0, 1, 2]), r"key of sample 1 is not valid UTF-8"),
        (_key_table(3, b"abc", [0, 1, 2, 3], [0, 1, 3]), r"order\[2\] = 3 is not a sample id \(expected < 3\)"),
        (_key_table(3, b"abc", [0, 1, 2, 3], [0, 1, 1]), r"order lists sample 1 twice"),
        (_key_table(3, b"abc", [0, 1, 2, 3], [1, 0, 2]), r"order is not sorted by key: 'b' \(sample 1\) comes before 'a' \(sample 0\)"),
        (_key_table(3, b"aac", [0, 1, 2, 3], [0, 1, 2]), r"duplicate key 'a' \(samples 0 and 1\)"),
    ],
)
def test_decode_key_table_refuses(table, message):
    with pytest.raises(FormatError, match="^f: key table: " + message):
        F.decode_key_table(table, 3, "f")


def test_read_header_every_truncation_and_byte_corruption():
    """Every prefix of a valid file and every single-byte change of its header is refused."""
    data = assemble(METADATA_JSON)
    assert F.read_header(data, "f").records_offset == 4096
    for length in range(len(data)):
        with pytest.raises(FormatError, match=r"^f: "):
            F.read_header(data[:length], "f")
    for pos in range(F.HEADER_SIZE):
        for value in range(256):
            if value == data[pos]:
                continue
            bad = data[:pos] + bytes([value]) + data[pos + 1:]
            error = F.UnsupportedVersionError if 8 <= pos < 10 else FormatError  # the major version
            with pytest.raises(error, match=r"^f: (not a cedstore file|format version|header CRC mismatch)"):
                F.read_header(bad, "f")


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"header_size": 64}, r"header field header_size: expected 128, found 64"),
        ({"num_classes": 32768}, r"header field num_classes: expected 1 <= num_classes <= 32767, found 32768"),
        ({"k": 5}, r"header field k: expected 1 <= k <= num_classes \(4\), found 5"),
        ({"num_epochs": 0}, r"header field num_epochs: expected >= 1, found 0"),
        ({"record_size": 13}, r"header field record_size: expected 4\*k \+ 4 = 12, found 13"),
        ({"value_kind": 2}, r"header field value_kind: expected 0 \(probability\) or 1 \(logit\), found 2"),
        ({"index_width": 1}, r"header field index_width: expected 0 \(int16 class indices\) or 4 \(int32 class indices\), found 1"),
        ({"version_minor": 1, "index_width": 4}, r"header field reserved0: expected 0, found 4"),
        ({"metadata_offset": 0}, r"header field metadata_offset: expected 128, found 0"),
        ({"reserved1": b"\x01" + bytes(7)}, r"header field reserved1: expected 8 zero bytes, found b'\\x01"),
        ({"version_minor": 0, "sections_crc": 1}, r"header field reserved1: expected 12 zero bytes, found b'\\x01"),
        ({"keys_offset": 256}, r"header field keys_offset: expected 200, found 256"),
        ({"records_offset": 8192}, r"header field records_offset: expected 4096, found 8192"),
        ({"records_length": 2**64 - 1}, r"header field records_length: expected 36, found 18446744073709551615"),
        ({"num_samples": 2**64 - 1}, r"header sizes overflow 64 bits \(the header is corrupted\)$"),
    ],
)
def test_read_header_field_rules(fields, message):
    meta = METADATA_JSON[:72]  # a fixed length keeps the expected offsets simple
    with pytest.raises(FormatError, match=message):
        F.read_header(assemble(meta, records=b"\xff" * 24, header=fields), "f")


def test_read_header_file_size():
    data = assemble(METADATA_JSON)
    with pytest.raises(FormatError, match=rf"^f: file is truncated: expected {len(data)} bytes, found {len(data) - 1}$"):
        F.read_header(data[:-1], "f")
    with pytest.raises(FormatError, match=rf"^f: unexpected data after the records: expected {len(data)} bytes, found {len(data) + 1}$"):
        F.read_header(data + b"\0", "f")


@pytest.mark.parametrize(
    "position, value, message",
    [
        (4000, 1, r"alignment gap between sections is not zero"),
        (128 + len(METADATA_JSON), 1, r"alignment gap between sections is not zero"),
        ("epoch", 2, r"epoch 0: state: expected 0 \(open\) or 1 \(sealed\), found 2"),
        (130, ord("W"), r"metadata and key table CRC mismatch: stored 0x[0-9a-f]{8}, computed 0x[0-9a-f]{8} "
                        r"\(the metadata or key table is corrupted\)"),
    ],
)
def test_reference_reader_checks_sections_at_open(tmp_path, position, value, message):
    data = bytearray(assemble(METADATA_JSON))
    table = F.read_header(bytes(data), "f").epoch_table_offset
    position = {"epoch": table, "epoch+4": table + 4}.get(position, position)
    data[position] = value
    (tmp_path / "x.ced").write_bytes(data)
    with pytest.raises(FormatError, match=r"x\.ced: " + message):
        ReferenceReader(tmp_path / "x.ced")


def test_reference_verify_finds_corrupt_records(tmp_path):
    teacher = make_teacher(num_epochs=1, num_samples=4, num_classes=6)
    path = write_with(ReferenceWriter, tmp_path / "r.ced", teacher, k=3, seal=False)
    data = bytearray(path.read_bytes())
    data[4096 + 16 * 2 + 6:4096 + 16 * 2 + 8] = struct.pack("<h", 6)  # sample 2, indices[0] = C
    path.write_bytes(data)
    with pytest.raises(IntegrityError, match=r"epoch 0, sample 2: class index 6 at position 0 outside \[0, 6\)$"):
        ReferenceReader(path).verify()
    with pytest.raises(IntegrityError, match=r"epoch 0, sample 2: class index 6 at position 0 outside \[0, 6\)"):
        ReferenceReader(path).dense(0, [2])
    data = bytearray(write_with(ReferenceWriter, tmp_path / "s.ced", teacher, k=3).read_bytes())
    data[4096 + 12] ^= 1  # the seed of sample 0: content stays valid, the CRC catches it
    (tmp_path / "s.ced").write_bytes(data)
    with pytest.raises(IntegrityError, match=r"s\.ced: epoch 0: CRC mismatch: sealed with 0x[0-9a-f]{8}, records have"):
        ReferenceReader(tmp_path / "s.ced").verify()
    data[4096 + 12] ^= 1
    data[4096 + 6:4096 + 8] = b"\xff\xff"  # sample 0 unwritten in a sealed epoch
    (tmp_path / "s.ced").write_bytes(data)
    with pytest.raises(IntegrityError, match=r"s\.ced: epoch 0, sample 0: record not written in a sealed epoch"):
        ReferenceReader(tmp_path / "s.ced").verify(require_complete=False)


def test_metadata_json_is_what_the_writer_builds():
    meta = json.loads(METADATA_JSON)
    assert F.encode_metadata(meta) == METADATA_JSON
