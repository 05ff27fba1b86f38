"""Bad input, table by table: each case raises its documented error with a message that says
where (file, epoch, sample) and what was wrong. Files are checked with the core and the reference."""

from __future__ import annotations

import io
import os
import struct

import numpy as np
import pytest
from cedstore_helpers import METADATA_JSON, assemble, make_teacher, write_with

import cedstore
from cedstore import _core
from cedstore.errors import (
    FormatError,
    IntegrityError,
    InvalidInputError,
    UnsupportedVersionError,
    UnwrittenRecordError,
    WriterClosedError,
)
from cedstore.format import decode_metadata, encode_key_table, encode_metadata, read_header
from cedstore.reference import ReferenceReader

KEYS = ["a", "b", "c"]
KEY_TABLE = encode_key_table(KEYS, 3)


def _npy() -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.zeros(100))
    return buf.getvalue()


def _with_byte(data: bytes, position: int, value: int) -> bytes:
    return data[:position] + bytes([value]) + data[position + 1:]


def _nested_lists(levels: int) -> list:
    value = []
    for _ in range(levels - 1):
        value = [value]
    return value


def _key_table(ends=(0, 1, 2, 3), order=(0, 1, 2), blob=b"abc", num_keys=3) -> bytes:
    return struct.pack(f"<QQ{len(ends)}Q{len(order)}Q", num_keys, len(blob), *ends, *order) + blob


VALID = assemble(METADATA_JSON, KEY_TABLE)
TABLE_OFFSET = read_header(VALID, "f").epoch_table_offset

# (case, file bytes, error, message after "<path>: ")
BAD_FILES = [
    ("empty", b"", FormatError, r"not a cedstore file: expected at least 128 bytes, found 0"),
    ("text", b"hello, world\n" * 20, FormatError, r"not a cedstore file: expected magic b'CEDSTORE', found b'hello, w'"),
    ("magic with a quote", b"CED'TORE" + VALID[8:], FormatError,
     r"not a cedstore file: expected magic b'CEDSTORE', found b\"CED'TORE\"$"),
    ("magic with both quotes", b"CED'\"ORE" + VALID[8:], FormatError,
     r"not a cedstore file: expected magic b'CEDSTORE', found b'CED\\'\"ORE'$"),
    ("npy", _npy(), FormatError, r"not a cedstore file: expected magic b'CEDSTORE', found b'\\x93NUMPY"),
    ("short header", VALID[:127], FormatError, r"not a cedstore file: expected at least 128 bytes, found 127"),
    ("newer version", assemble(METADATA_JSON, header={"version": 2}), UnsupportedVersionError,
     r"format version 2, this cedstore reads version 1 \(a newer cedstore may read it\)"),
    ("header byte", _with_byte(VALID, 30, 1), FormatError, r"header CRC mismatch: stored 0x[0-9a-f]{8}, computed 0x[0-9a-f]{8}"),
    ("k = 0", assemble(METADATA_JSON, header={"k": 0}), FormatError, r"header field k: expected 1 <= k <= num_classes \(4\), found 0"),
    ("k > C", assemble(METADATA_JSON, header={"k": 5}), FormatError, r"header field k: expected 1 <= k <= num_classes \(4\), found 5"),
    ("C > 32767", assemble(METADATA_JSON, header={"num_classes": 32768}), FormatError,
     r"header field num_classes: expected 1 <= num_classes <= 32767, found 32768"),
    ("huge N", assemble(METADATA_JSON, header={"num_samples": 2**62}), FormatError, r"header sizes overflow 64 bits \(the header is corrupted\)$"),
    ("records cut", VALID[:-1], FormatError, rf"file is truncated: expected {len(VALID)} bytes, found {len(VALID) - 1}"),
    ("trailing", VALID + b"\0", FormatError, r"unexpected data after the records"),
    ("gap", _with_byte(VALID, 4000, 1), FormatError, r"alignment gap between sections is not zero"),
    ("epoch state", _with_byte(VALID, TABLE_OFFSET, 2), FormatError, r"epoch 0: state: expected 0 \(open\) or 1 \(sealed\), found 2"),
    ("metadata byte", _with_byte(VALID, 130, ord("W")), FormatError,
     r"metadata and key table CRC mismatch: stored 0x[0-9a-f]{8}, computed 0x[0-9a-f]{8} \(the metadata or key table is corrupted\)"),
    ("metadata not UTF-8", assemble(b'{"writer":"\xff"}'), FormatError, r"metadata is not UTF-8 JSON: 'utf-8' codec can't decode"),
    ("metadata not JSON", assemble(b'{"writer":"x",}'), FormatError, r"metadata is not UTF-8 JSON: Expecting property name"),
    ("metadata NaN", assemble(b'{"writer":"x","t":NaN}'), FormatError, r"metadata: NaN is not valid JSON"),
    ("metadata Infinity", assemble(b'{"writer":"x","t":[-Infinity]}'), FormatError, r"metadata: -Infinity is not valid JSON"),
    ("metadata 1e400", assemble(b'{"writer":"x","t":1e400}'), FormatError, r"metadata: number 1e400 is outside the range of a double"),
    ("metadata -1e400", assemble(b'{"t":{"u":-1e400},"writer":"x"}'), FormatError, r"metadata: number -1e400 is outside the range of a double"),
    ("metadata integer 2**64", assemble(b'{"writer":"x","t":18446744073709551616}'), FormatError,
     r"metadata: integer 18446744073709551616 outside \[-2\*\*63, 2\*\*64\)"),
    ("metadata integer -2**63-1", assemble(b'{"writer":"x","t":-9223372036854775809}'), FormatError,
     r"metadata: integer -9223372036854775809 outside \[-2\*\*63, 2\*\*64\)"),
    ("metadata integer of 5000 digits", assemble(b'{"writer":"x","t":' + b"9" * 5000 + b"}"), FormatError,
     r"metadata: integer 999999999999999999999\.\.\. outside \[-2\*\*63, 2\*\*64\)"),
    ("metadata lone surrogate", assemble(b'{"writer":"x","user":{"\\ud800":1}}'), FormatError,
     r"metadata: string '\\ud800' is not valid Unicode \(a lone surrogate\)"),
    ("metadata duplicate writer", assemble(b'{"writer":"x","writer":"y"}'), FormatError, r"metadata: duplicate name 'writer' in one object"),
    ("metadata duplicate nested name", assemble(b'{"writer":"x","user":{"a":1,"a":1}}'), FormatError,
     r"metadata: duplicate name 'a' in one object"),
    ("metadata nested 100000 deep", assemble(b'{"writer":"x","t":' + b"[" * 100000 + b"]" * 100000 + b"}"), FormatError,
     r"metadata: nested 100001 levels deep, at most 64 allowed"),
    ("metadata nested 65 deep", assemble(b'{"writer":"x","t":' + b'{"a":' * 63 + b"[]" + b"}" * 63 + b"}"), FormatError,
     r"metadata: nested 65 levels deep, at most 64 allowed"),
    ("metadata unterminated deep", assemble(b'{"writer":"x","t":"' + b'\\"[' * 1000), FormatError,
     r"metadata is not UTF-8 JSON: Unterminated string"),
    ("metadata list", assemble(b'["writer"]'), FormatError, r"metadata must be a JSON object, found list"),
    ("metadata no writer", assemble(b"{}"), FormatError, r"metadata key 'writer' is required and must be a string"),
    ("metadata reserved type", assemble(b'{"writer":"x","label_space":[]}'), FormatError,
     r"metadata key 'label_space' must be a JSON object, found list"),
    ("keys count", assemble(METADATA_JSON, _key_table(num_keys=2)), FormatError, r"key table: num_keys: expected num_samples \(3\), found 2"),
    ("keys length", assemble(METADATA_JSON, KEY_TABLE + b"x"), FormatError, r"key table: length: expected .* = keys_length \(76\)"),
    ("keys empty", assemble(METADATA_JSON, _key_table(ends=(0, 1, 1, 3))), FormatError, r"key table: key of sample 1 is empty"),
    ("keys UTF-8", assemble(METADATA_JSON, _key_table(blob=b"a\xffc")), FormatError, r"key table: key of sample 1 is not valid UTF-8"),
    ("keys order", assemble(METADATA_JSON, _key_table(order=(1, 0, 2))), FormatError,
     r"key table: order is not sorted by key: 'b' \(sample 1\) comes before 'a' \(sample 0\)"),
    ("keys duplicate", assemble(METADATA_JSON, _key_table(blob=b"aac")), FormatError, r"key table: duplicate key 'a' \(samples 0 and 1\)"),
    ("keys order id", assemble(METADATA_JSON, _key_table(order=(0, 1, 7))), FormatError,
     r"key table: order\[2\] = 7 is not a sample id \(expected < 3\)"),
]


@pytest.mark.parametrize("reader", ["core", "reference"])
@pytest.mark.parametrize("data, error, message", [case[1:] for case in BAD_FILES], ids=[case[0] for case in BAD_FILES])
def test_bad_files_are_refused_at_open(tmp_path, reader, data, error, message):
    path = tmp_path / "bad.ced"
    path.write_bytes(data)
    with pytest.raises(error, match=f"^{path}: {message}"):
        cedstore.open(path) if reader == "core" else ReferenceReader(path)


def test_metadata_over_16_mib_is_refused(tmp_path):
    path = tmp_path / "big.ced"
    path.write_bytes(assemble(b'{"writer":"' + b"x" * (16 * 2**20 - 12) + b'"}'))
    for read in (cedstore.open, ReferenceReader):
        with pytest.raises(FormatError, match=f"^{path}: (header field metadata_length: expected 2 <= "
                           "metadata_length <= 16777216, found|metadata:) 16777217"):  # the header check comes first
            read(path)
    with pytest.raises(FormatError, match="^f: metadata: 16777217 bytes, at most 16777216 allowed$"):
        decode_metadata(b" " * (16 * 2**20 + 1), "f")


def test_metadata_at_the_limits_round_trips(tmp_path):
    """What the rules allow is written and read back unchanged, by the core and the reference."""
    deepest = {"a": 1}
    for _ in range(61):  # the top-level object is level 1, `user` level 2, `deepest` levels 3-64
        deepest = {"a": deepest}
    user = {"big": 2**64 - 1, "small": -(2**63), "huge": 1.7976931348623157e308, "tiny": 5e-324,
            "deepest": deepest, "text": ""}
    length = len(encode_metadata({"user": user, "writer": f"cedstore {cedstore.__version__}"}))
    user["text"] = "x" * (16 * 2**20 - length)  # exactly 16 MiB of metadata
    path = tmp_path / "x.ced"
    cedstore.create(path, num_classes=4, k=2, num_samples=3, metadata={"user": user}).close()
    assert read_header(path.read_bytes(), str(path)).metadata_length == 16 * 2**20
    assert cedstore.open(path).metadata["user"] == user
    assert ReferenceReader(path).metadata["user"] == user


def _open_error(path) -> tuple[type, str]:
    try:
        _core.Reader(str(path))
    except Exception as e:  # noqa: BLE001  (the caller checks the type)
        return type(e), str(e)
    return type(None), "opened"


def test_every_truncation_and_header_byte_is_refused_by_core(tmp_path):
    """Each prefix of a valid file, and each of the 255 other values of each header byte."""
    path = tmp_path / "x.ced"
    path.write_bytes(VALID)
    cedstore.open(path)
    prefixes = (f"{path}: not a cedstore file", f"{path}: file is truncated")
    for length in range(len(VALID) - 1, -1, -1):
        os.truncate(path, length)
        error, message = _open_error(path)
        assert error is FormatError and message.startswith(prefixes), (length, message)
    path.write_bytes(VALID)
    prefixes = (f"{path}: not a cedstore file", f"{path}: header CRC mismatch")
    with open(path, "r+b") as f:
        for position in range(128):
            for value in range(256):
                if value == VALID[position]:
                    continue
                f.seek(position)
                f.write(bytes([value]))
                f.flush()
                error, message = _open_error(path)
                if 8 <= position < 10:  # the major version; a minor version is any value
                    assert error is UnsupportedVersionError and message.startswith(f"{path}: format version "), message
                else:
                    assert error is FormatError and message.startswith(prefixes), (position, value, message)
            f.seek(position)
            f.write(VALID[position:position + 1])


def test_directory_and_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        cedstore.open(tmp_path / "missing.ced")
    with pytest.raises(IsADirectoryError):
        cedstore.open(tmp_path)


# (create() arguments, error, message)
BAD_CREATE = [
    ({"k": 0}, InvalidInputError, r"x\.ced: k = 0 must be in \[1, num_classes = 4\]"),
    ({"k": 5}, InvalidInputError, r"x\.ced: k = 5 must be in \[1, num_classes = 4\]"),
    ({"num_classes": 32768, "k": 2, "index_dtype": np.int16}, InvalidInputError,
     r"x\.ced: num_classes = 32768 must be in \[1, 32767\] with int16 class indices; 32768 classes need int32 class indices$"),
    ({"num_classes": 2**24 + 1, "k": 2}, InvalidInputError,
     r"x\.ced: num_classes = 16777217 must be in \[1, 16777216\] with int32 class indices \(the most any cedstore layout holds\)$"),
    ({"num_classes": 4, "k": 2, "index_dtype": np.int64}, InvalidInputError,
     r"x\.ced: index_dtype must be int16 or int32 \(or None: chosen by num_classes\), found int64$"),
    ({"num_classes": 0}, InvalidInputError, r"x\.ced: num_classes = 0 must be in \[1, 32767\]"),
    ({"num_samples": 0}, InvalidInputError, r"x\.ced: num_samples = 0 and num_epochs = 1 must be at least 1"),
    ({"num_epochs": 0}, InvalidInputError, r"x\.ced: num_samples = 3 and num_epochs = 0 must be at least 1"),
    ({"value_kind": "prob"}, InvalidInputError, r"x\.ced: value_kind must be one of \['logit', 'probability'\], found 'prob'"),
    ({"metadata": [1]}, InvalidInputError, r"metadata must be a dict, found list"),
    ({"metadata": {"writer": "me"}}, InvalidInputError, r"metadata key 'writer' is reserved: cedstore sets it"),
    ({"metadata": {"activation": 1}}, InvalidInputError, r"metadata key 'activation' must be a JSON string, found int"),
    ({"metadata": {"activation": "relu"}}, InvalidInputError, r"metadata key 'activation' must be 'sigmoid' or 'softmax'"),
    ({"metadata": {"user": "x"}}, InvalidInputError, r"metadata key 'user' must be a JSON object, found str"),
    ({"metadata": {"t": float("nan")}}, InvalidInputError, r"metadata: number nan is not a finite double"),
    pytest.param({"metadata": {"t": [float("-inf")]}}, InvalidInputError, r"metadata: number -inf is not a finite double",
                 id="metadata -inf"),
    pytest.param({"metadata": {"user": {"t": 2**64}}}, InvalidInputError,
                 r"metadata: integer 18446744073709551616 outside \[-2\*\*63, 2\*\*64\)", id="metadata integer 2**64"),
    pytest.param({"metadata": {"t": -(2**63) - 1}}, InvalidInputError,
                 r"metadata: integer -9223372036854775809 outside \[-2\*\*63, 2\*\*64\)", id="metadata integer -2**63-1"),
    pytest.param({"metadata": {"user": {"\udfff": 1}}}, InvalidInputError,
                 r"metadata: string '\\udfff' is not valid Unicode \(a lone surrogate\)", id="metadata lone surrogate"),
    pytest.param({"metadata": {"user": {1: "a", "1": "b"}}}, InvalidInputError,
                 r"metadata: object names must be strings, found int 1", id="metadata duplicate name 1 and '1'"),
    pytest.param({"metadata": {"t": _nested_lists(64)}},
                 InvalidInputError, r"metadata: nested deeper than 64 levels", id="metadata nested 65 deep"),
    pytest.param({"metadata": {"t": "x" * 16 * 2**20}}, InvalidInputError,
                 r"metadata: 16777250 bytes of JSON, at most 16777216 allowed", id="metadata over 16 MiB"),
    pytest.param({"num_samples": 2**64}, InvalidInputError,
                 r"x\.ced: num_samples = 18446744073709551616 must be below 2\*\*63 and num_epochs = 1 below 2\*\*32",
                 id="num_samples 2**64"),
    pytest.param({"num_epochs": 2**64}, InvalidInputError,
                 r"x\.ced: num_samples = 3 must be below 2\*\*63 and num_epochs = 18446744073709551616 below 2\*\*32",
                 id="num_epochs 2**64"),
    ({"metadata": {"t": object()}}, InvalidInputError, r"metadata is not serializable as strict UTF-8 JSON: Object of type object"),
    ({"metadata": {"label_space": {"num_classes": 5}}}, InvalidInputError, r"metadata label_space has 5 classes, the store 4"),
    ({"keys": ["a", "b", "a"]}, InvalidInputError, r"keys: duplicate key 'a' \(samples 0 and 2\)"),
    ({"keys": ["a", "", "c"]}, InvalidInputError, r"keys: the key of sample 1 is empty"),
    ({"keys": ["a", "\ud800", "c"]}, InvalidInputError, r"keys: the key of sample 1 is not valid UTF-8"),
    ({"keys": ["a", "b"]}, InvalidInputError, r"keys: expected one per sample \(3\), found 2"),
    ({"keys": ["a", "b", 3]}, InvalidInputError, r"keys: expected str, found <class 'int'> for sample 2"),
]


@pytest.mark.parametrize("kwargs, error, message", BAD_CREATE)
def test_bad_create(tmp_path, kwargs, error, message):
    args = {"num_classes": 4, "k": 2, "num_samples": 3, **kwargs}
    with pytest.raises(error, match=message):
        cedstore.create(tmp_path / "x.ced", **args)
    assert not (tmp_path / "x.ced").exists()


def test_create_refuses_existing_file(tmp_path):
    (tmp_path / "x.ced").write_bytes(b"precious")
    with pytest.raises(FileExistsError):
        cedstore.create(tmp_path / "x.ced", num_classes=4, k=2, num_samples=3)
    assert (tmp_path / "x.ced").read_bytes() == b"precious"


F32 = np.float32
# (write() arguments, error, message after "<path>: ")
BAD_WRITES = [
    ({"probs": np.ones((1, 4), np.int64)}, InvalidInputError, r"probs must be a float32 or float16 array of shape \[1, 4\], found int64 \[1, 4\]"),
    ({"probs": np.ones((1, 5), F32)}, InvalidInputError, r"probs must be a float32 or float16 array of shape \[1, 4\], found float32 \[1, 5\]"),
    ({"probs": np.ones(4, F32)}, InvalidInputError, r"probs must be .* of shape \[1, 4\], found float32 \[4\]"),
    ({"sample_ids": [0.0]}, InvalidInputError, r"sample_ids must be an integer array of shape \[1\], found float64 \[1\]"),
    ({"sample_ids": [[0]]}, InvalidInputError, r"sample_ids must be an integer array of shape \[1\], found int64 \[1, 1\]"),
    ({"seeds": np.zeros(2, np.int32)}, InvalidInputError, r"seeds must be an integer array of shape \[1\], found int32 \[2\]"),
    ({"seeds": np.zeros(1, F32)}, InvalidInputError, r"seeds must be an integer array of shape \[1\], found float32 \[1\]"),
    pytest.param({"seeds": [2**32]}, InvalidInputError,
                 r"epoch 0, sample 0 \(row 0\): seed 4294967296 outside \[-2\*\*31, 2\*\*32\): seeds must be int32 or uint32 values",
                 id="seed 2**32"),
    pytest.param({"seeds": [-(2**31) - 1]}, InvalidInputError,
                 r"epoch 0, sample 0 \(row 0\): seed -2147483649 outside \[-2\*\*31, 2\*\*32\)", id="seed -2**31-1"),
    pytest.param({"sample_ids": [2, 0], "probs": np.ones((2, 4), F32), "seeds": np.array([5, 2**64 - 1], np.uint64)},
                 InvalidInputError, r"epoch 0, sample 0 \(row 1\): seed 18446744073709551615 outside \[-2\*\*31, 2\*\*32\)",
                 id="uint64 seed 2**64-1 wraps"),
    pytest.param({"seeds": np.array([2**64 - 2**31], np.uint64)}, InvalidInputError,
                 r"epoch 0, sample 0 \(row 0\): seed 18446744071562067968 outside \[-2\*\*31, 2\*\*32\)",
                 id="uint64 seed 2**64-2**31 wraps"),
    pytest.param({"epoch": 2**64}, IndexError, r"epoch 18446744073709551616 out of range \[0, 2\)", id="epoch 2**64"),
    pytest.param({"epoch": -(2**63) - 1}, IndexError, r"epoch -9223372036854775809 out of range \[0, 2\)", id="epoch -2**63-1"),
    ({"probs": None, "values": np.ones((1, 2), F32)}, InvalidInputError, r"give either probs= or both values= and indices="),
    ({"values": np.ones((1, 2), F32), "indices": [[0, 1]]}, InvalidInputError, r"give either probs= or both values= and indices="),
    ({"probs": np.array([[0.1, np.nan, 0, 0]], F32)}, InvalidInputError,
     r"epoch 0, sample 0 \(row 0\): dense\[0, 1\] = nan is NaN; values must be finite"),
    ({"probs": np.array([[0.1, 0, -np.inf, 0]], F32)}, InvalidInputError,
     r"epoch 0, sample 0 \(row 0\): dense\[0, 2\] = -inf is infinite; values must be finite"),
    ({"probs": np.array([[7e4, 0, 0, 0]], F32)}, InvalidInputError,
     r"epoch 0, sample 0 \(row 0\): dense\[0, 0\] = 70000 is outside the float16 range"),
    ({"probs": None, "values": [[1, 0]], "indices": [[0, 1]]}, InvalidInputError,
     r"values must be a float32 or float16 array of shape \[1, 2\], found int64"),
    ({"probs": None, "values": np.array([[0.5, 0.7]], F32), "indices": [[0, 1]]}, InvalidInputError,
     r"epoch 0, sample 0 \(row 0\): values must be non-increasing after float16 rounding"),
    ({"probs": None, "values": np.array([[0.5, np.nan]], F32), "indices": [[0, 1]]}, InvalidInputError,
     r"epoch 0, sample 0 \(row 0\): values\[0, 1\] = nan is NaN"),
    ({"probs": None, "values": np.array([[0.7, 0.5]], F32), "indices": [[0, 4]]}, InvalidInputError,
     r"epoch 0, sample 0 \(row 0\): indices\[0, 1\] = 4 outside \[0, 4\)"),
    ({"probs": None, "values": np.array([[0.7, 0.5]], F32), "indices": [[-1, 2]]}, InvalidInputError,
     r"epoch 0, sample 0 \(row 0\): indices\[0, 0\] = -1 outside \[0, 4\)"),
    ({"probs": None, "values": np.array([[0.7, 0.5]], F32), "indices": [[2, 2]]}, InvalidInputError,
     r"epoch 0, sample 0 \(row 0\): indices\[0, 1\] = 2 repeats indices\[0, 0\]"),
    ({"probs": None, "values": np.array([[0.7, 0.5]], F32), "indices": [[2.0, 1.0]]}, InvalidInputError,
     r"indices must be an integer array of shape \[1, 2\], found float64"),
    ({"sample_ids": [3]}, IndexError, r"epoch 0: sample id 3 \(row 0\) out of range \[0, 3\)"),
    ({"sample_ids": [-1]}, IndexError, r"epoch 0: sample id -1 \(row 0\) out of range \[0, 3\)"),
    ({"epoch": 2}, IndexError, r"epoch 2 out of range \[0, 2\)"),
    ({"epoch": -1}, IndexError, r"epoch -1 out of range \[0, 2\)"),
    ({"sample_ids": [1, 1], "probs": np.ones((2, 4), F32), "seeds": [0, 0]}, InvalidInputError,
     r"epoch 0: sample id 1 appears twice in one batch \(rows 0 and 1\)"),
]


@pytest.mark.parametrize("kwargs, error, message", BAD_WRITES)
def test_bad_writes_change_nothing(tmp_path, kwargs, error, message):
    path = tmp_path / "x.ced"
    with cedstore.create(path, num_classes=4, k=2, num_samples=3, num_epochs=2) as w:
        w.write(1, [2], probs=np.ones((1, 4), F32), seeds=[7])
        args = {"epoch": 0, "sample_ids": [0], "probs": np.ones((1, 4), F32), "seeds": [5], **kwargs}
        with pytest.raises(error, match=f"^{path}: {message}"):
            w.write(args.pop("epoch"), args.pop("sample_ids"), **args)
    store = cedstore.open(path)
    assert not store.written(0).any() and store.written(1).tolist() == [False, False, True]


def test_uint32_seeds_keep_their_32_bits(tmp_path):
    """Seeds in [-2**31, 2**32) are accepted: int32 values as they are, uint32 values by their bits."""
    seeds = {np.uint64: [2**32 - 1, 2**31, 0], np.uint32: [2**32 - 1, 2**31, 7], np.int64: [2**32 - 1, -(2**31), 2**31 - 1]}
    path = tmp_path / "x.ced"
    with cedstore.create(path, num_classes=4, k=2, num_samples=3, num_epochs=3) as w:
        for epoch, (dtype, values) in enumerate(seeds.items()):
            w.write(epoch, [0, 1, 2], probs=np.ones((3, 4), F32), seeds=np.array(values, dtype))
    store = cedstore.open(path)
    for epoch, values in enumerate(seeds.values()):
        assert store.topk(epoch, [0, 1, 2])[2].tolist() == np.array(values, np.int64).astype(np.uint32).view(np.int32).tolist()


def test_write_after_close(tmp_path):
    w = cedstore.create(tmp_path / "x.ced", num_classes=4, k=2, num_samples=3)
    w.close()
    w.close()  # idempotent
    with pytest.raises(WriterClosedError, match=r"x\.ced: cannot write epoch 0: the writer is closed"):
        w.write(0, [0], probs=np.ones((1, 4), F32), seeds=[0])
    with pytest.raises(WriterClosedError, match=r"x\.ced: the writer is closed"):
        w.written(0)


@pytest.fixture
def partial(tmp_path):
    """A store (no keys) with epoch 0 complete and epoch 1 holding only sample 2."""
    teacher = make_teacher(num_epochs=2, num_samples=3, num_classes=4)
    path = write_with(_core.Writer, tmp_path / "p.ced", teacher, 2, batches=[(0, [0, 1, 2]), (1, [2])])
    return cedstore.open(path)


BAD_READS = [
    (lambda s: s.dense(1, [2, 0]), UnwrittenRecordError, r"epoch 1, sample 0: record not written"),
    (lambda s: s.topk(1, [1]), UnwrittenRecordError, r"epoch 1, sample 1: record not written"),
    (lambda s: s.dense(0, [0, 3]), IndexError, r"epoch 0: sample id 3 \(row 1\) out of range \[0, 3\)"),
    (lambda s: s.topk(0, [-1]), IndexError, r"epoch 0: sample id -1 \(row 0\) out of range \[0, 3\)"),
    (lambda s: s.dense(2, [0]), IndexError, r"epoch 2 out of range \[0, 2\)"),
    (lambda s: s.records(2), IndexError, r"epoch 2 out of range \[0, 2\)"),
    (lambda s: s.written(-1), IndexError, r"epoch -1 out of range \[0, 2\)"),
    pytest.param(lambda s: s.dense(2**64, [0]), IndexError, r"epoch 18446744073709551616 out of range \[0, 2\)", id="dense epoch 2**64"),
    pytest.param(lambda s: s.topk(2**63, [0]), IndexError, r"epoch 9223372036854775808 out of range \[0, 2\)", id="topk epoch 2**63"),
    pytest.param(lambda s: s.written(-(2**64)), IndexError, r"epoch -18446744073709551616 out of range \[0, 2\)",
                 id="written epoch -2**64"),
    (lambda s: s.dense(0, [0.5]), InvalidInputError, r"sample_ids: expected a 1-d integer array, found 1-d float64"),
    (lambda s: s.dense(0, [0], out=np.zeros((1, 4))), InvalidInputError, r"out: expected a C-contiguous writable float32 array"),
    (lambda s: s.lookup(["a"]), InvalidInputError, r"the store has no key table; create it with keys="),
    (lambda s: s.join(["a"]), InvalidInputError, r"the store has no key table"),
    (lambda s: s.verify(), UnwrittenRecordError, r"epoch 1, sample 0: record not written"),
]


@pytest.mark.parametrize("read, error, message", BAD_READS)
def test_bad_reads(partial, read, error, message):
    with pytest.raises(error, match=message):
        read(partial)


def test_read_after_close(partial):
    partial.close()
    with pytest.raises(cedstore.CedStoreError, match=r"p\.ced: the reader is closed"):
        partial.dense(0, [0])


# Corrupt one record of an unsealed epoch: (byte offset in record 1 (k=3, 16 bytes), bytes, message)
BAD_RECORDS = [
    (6, struct.pack("<h", 6), r"class index 6 at position 0 outside \[0, 6\)"),
    (8, struct.pack("<h", -2), r"class index -2 at position 1 outside \[0, 6\)"),
    (8, "same-as-first", r"class index \d appears twice"),
    (2, struct.pack("<e", np.nan), r"value at position 1 is not finite"),
    (4, struct.pack("<e", 60000.0), r"values are not non-increasing"),
]


@pytest.mark.parametrize("reader", ["core", "reference"])
@pytest.mark.parametrize("offset, data, message", BAD_RECORDS)
def test_verify_finds_invalid_records(tmp_path, reader, offset, data, message):
    teacher = make_teacher(num_epochs=1, num_samples=3, num_classes=6)
    path = write_with(_core.Writer, tmp_path / "r.ced", teacher, 3, seal=False)
    raw = bytearray(path.read_bytes())
    start = 4096 + 16
    raw[start + offset:start + offset + 2] = raw[start + 6:start + 8] if data == "same-as-first" else data
    path.write_bytes(raw)
    store = cedstore.open(path) if reader == "core" else ReferenceReader(path)
    with pytest.raises(IntegrityError, match=f"^{path}: epoch 0, sample 1: {message}"):
        store.verify()


@pytest.mark.parametrize("reader", ["core", "reference"])
def test_verify_finds_corrupt_sealed_epoch(tmp_path, reader):
    teacher = make_teacher(num_epochs=2, num_samples=3, num_classes=6)
    path = write_with(_core.Writer, tmp_path / "r.ced", teacher, 3)
    raw = bytearray(path.read_bytes())
    raw[4096 + 3 * 16 + 16 + 12] ^= 0x40  # epoch 1, sample 1, seed: the record stays valid
    path.write_bytes(raw)
    store = cedstore.open(path) if reader == "core" else ReferenceReader(path)
    with pytest.raises(IntegrityError, match=rf"^{path}: epoch 1: CRC mismatch: sealed with 0x[0-9a-f]{{8}}, records have 0x[0-9a-f]{{8}}"):
        store.verify()
    raw[4096 + 3 * 16 + 16 + 12] ^= 0x40
    raw[4096 + 16 + 6:4096 + 16 + 8] = b"\xff\xff"  # epoch 0, sample 1 unwritten, yet epoch 0 is sealed
    path.write_bytes(raw)
    store = cedstore.open(path) if reader == "core" else ReferenceReader(path)
    with pytest.raises(IntegrityError, match=rf"^{path}: epoch 0, sample 1: record not written in a sealed epoch"):
        store.verify(require_complete=False)


@pytest.mark.parametrize("reader", ["core", "reference"])
def test_decode_refuses_out_of_range_class_index(tmp_path, reader):
    teacher = make_teacher(num_epochs=1, num_samples=3, num_classes=6)
    path = write_with(_core.Writer, tmp_path / "r.ced", teacher, 3, seal=False)
    raw = bytearray(path.read_bytes())
    raw[4096 + 32 + 8:4096 + 32 + 10] = struct.pack("<h", 300)
    path.write_bytes(raw)
    store = cedstore.open(path) if reader == "core" else ReferenceReader(path)
    for decode in ("dense", "topk"):
        with pytest.raises(IntegrityError, match=rf"^{path}: epoch 0, sample 2: class index 300 at position 1 outside \[0, 6\) \(the record is corrupted\)"):
            getattr(store, decode)(0, [0, 2])
