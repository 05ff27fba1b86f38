"""The cedstore file format, version 1.2, as executable Python (FORMAT.md is normative).

Constants (with the table of readable versions), the header and its checks, the section
layout, the metadata and key table codecs, the record dtype and the top-k encoding, built on
``struct``, ``zlib`` and plain numpy. The reference reader and writer on top of these are in
``cedstore.reference``. Written to be read, not to be fast, and independent of the C++ core:
the tests check that the core and the reference write byte-identical files and decode them
identically.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import struct
import zlib
from typing import Any

import numpy as np

from cedstore.errors import FormatError, InvalidInputError, UnsupportedVersionError

MAGIC = b"CEDSTORE"
FORMAT_VERSION = 1  # the major version; a reader refuses a major version it does not know
FORMAT_MINOR_VERSION = 2  # what this writes; every minor version of a known major is read
SUPPORTED_VERSIONS = (1,)
HEADER_SIZE = 128
RECORDS_ALIGN = 4096
SECTION_ALIGN = 8
MAX_CLASSES = 32767  # int16 class indices (index_width 0): the paper's layout
MAX_CLASSES_WIDE = 2**24  # int32 class indices (index_width 4): every class index is exact in float32
UNWRITTEN_INDEX = -1
# Header field index_width: 0 (int16 class indices, the only layout of 1.0 and 1.1, where the
# field was reserved0) or 4 (int32 class indices, from 1.2 on).
INDEX_WIDTHS = {0: np.dtype("<i2"), 4: np.dtype("<i4")}
WIDE_INDEX_MINOR_VERSION = 2  # the first minor version that may hold index_width 4
VALUE_KINDS = {"probability": 0, "logit": 1}
EPOCH_OPEN, EPOCH_SEALED = 0, 1

# magic, version (major), version_minor, header_size, k, num_classes, num_samples, num_epochs,
# record_size, value_kind, index_width, metadata_offset/length, keys_offset/length,
# epoch_table_offset/length, records_offset/length, sections_crc, reserved1, header_crc
HEADER_FORMAT = "<8sHHIIIQIIIIQQQQQQQQI8sI"
EPOCH_ENTRY_FORMAT = "<II"  # state, crc
KEY_TABLE_PREFIX_FORMAT = "<QQ"  # num_keys, blob_length

# Reserved metadata keys and their JSON types (`object` means any JSON value).
RESERVED_METADATA = {
    "writer": str,
    "activation": str,
    "tail_policy": str,
    "label_space": dict,
    "teacher": object,
    "augmentation": dict,
    "frontend": dict,
    "dataset_sha256": str,
    "user": dict,
}
ACTIVATIONS = ("sigmoid", "softmax")

assert struct.calcsize(HEADER_FORMAT) == HEADER_SIZE


def max_classes(index_width: int) -> int:
    """The most classes a layout can index: 32767 (int16 indices) or 2**24 (int32)."""
    return MAX_CLASSES_WIDE if index_width == 4 else MAX_CLASSES


def index_width_for(num_classes: int, index_dtype=None) -> int:
    """The header's index_width for a new store: int16 indices when they fit (None picks them
    for C <= 32767), int32 when asked for or when C needs them.

    Raises:
        InvalidInputError: an index dtype other than int16 or int32, int16 for more than
            32767 classes, or more classes than any layout holds.

    Example:
        >>> index_width_for(527), index_width_for(50257), index_width_for(527, np.int32)
        (0, 4, 4)
    """
    if index_dtype is None:
        width = 0 if num_classes <= MAX_CLASSES else 4
    else:
        dtype = np.dtype(index_dtype)
        if dtype not in (np.int16, np.int32):
            raise InvalidInputError(f"index_dtype must be int16 or int32 (or None: chosen by num_classes), found {dtype}")
        width = 0 if dtype == np.int16 else 4
    if not 1 <= num_classes <= max_classes(width):
        hint = f"; {num_classes} classes need int32 class indices" if MAX_CLASSES < num_classes <= MAX_CLASSES_WIDE else ""
        hint = " (the most any cedstore layout holds)" if num_classes > MAX_CLASSES_WIDE else hint
        raise InvalidInputError(
            f"num_classes = {num_classes} must be in [1, {max_classes(width)}] with "
            f"{INDEX_WIDTHS[width]} class indices{hint}"
        )
    return width


def record_layout(k: int, index_width: int = 0) -> tuple[int, int]:
    """(record_size, offset of the indices) of a record (FORMAT.md, "Records"): values f16[k],
    then, for int32 indices, zero padding to a multiple of 4 bytes, indices, seed i32.

    Example:
        >>> record_layout(20), record_layout(20, 4), record_layout(3, 4)
        ((84, 40), (124, 40), (24, 8))
    """
    if index_width == 0:
        return 4 * k + 4, 2 * k
    indices_offset = 4 * ((k + 1) // 2)  # aligned: every 4-byte word of the record is atomic
    return indices_offset + 4 * k + 4, indices_offset


def record_dtype(k: int, index_dtype=np.int16) -> np.dtype:
    """The numpy dtype of one record: values f16[k], indices i16[k] or i32[k], seed i32 (4k + 4
    bytes with int16 indices, 4*ceil(k/2) + 4k + 4 with int32)."""
    width = 0 if np.dtype(index_dtype) == np.int16 else 4
    size, indices_offset = record_layout(k, width)
    return np.dtype({"names": ["values", "indices", "seed"],
                     "formats": [("<f2", (k,)), (INDEX_WIDTHS[width], (k,)), "<i4"],
                     "offsets": [0, indices_offset, indices_offset + INDEX_WIDTHS[width].itemsize * k],
                     "itemsize": size})


def _align(offset: int, alignment: int) -> int:
    return -(-offset // alignment) * alignment


def key_table_length(num_samples: int, blob_length: int) -> int:
    """Bytes of a key table: prefix, N + 1 ends, N order entries, then the key bytes."""
    return 16 + 8 * (num_samples + 1) + 8 * num_samples + blob_length


@dataclasses.dataclass(frozen=True)
class Header:
    """The 128-byte header, field by field (FORMAT.md, "Header")."""

    magic: bytes
    version: int
    version_minor: int
    header_size: int
    k: int
    num_classes: int
    num_samples: int
    num_epochs: int
    record_size: int
    value_kind: int
    index_width: int
    metadata_offset: int
    metadata_length: int
    keys_offset: int
    keys_length: int
    epoch_table_offset: int
    epoch_table_length: int
    records_offset: int
    records_length: int
    sections_crc: int
    reserved1: bytes
    header_crc: int

    def pack(self) -> bytes:
        """The 128 header bytes, with `header_crc` recomputed over bytes 0-123."""
        fields = dataclasses.astuple(self)[:-1]
        body = struct.pack(HEADER_FORMAT, *fields, 0)[:124]
        return body + struct.pack("<I", zlib.crc32(body))

    @property
    def file_size(self) -> int:
        return self.records_offset + self.records_length

    @property
    def index_dtype(self) -> np.dtype:
        return INDEX_WIDTHS.get(self.index_width, INDEX_WIDTHS[0])


def layout(
    k: int, num_classes: int, num_samples: int, num_epochs: int, value_kind: int,
    metadata_length: int, keys_length: int, index_width: int = 0,
) -> Header:
    """The header of a new file: every section at the smallest aligned offset after the last.

    Example:
        >>> layout(20, 527, 1000, 1, 0, 40, 0).records_offset
        4096
    """
    record_size = record_layout(k, index_width)[0]
    keys_offset = _align(HEADER_SIZE + metadata_length, SECTION_ALIGN)
    epoch_table_offset = _align(keys_offset + keys_length, SECTION_ALIGN)
    records_offset = _align(epoch_table_offset + 8 * num_epochs, RECORDS_ALIGN)
    return Header(
        MAGIC, FORMAT_VERSION, FORMAT_MINOR_VERSION, HEADER_SIZE, k, num_classes, num_samples, num_epochs,
        record_size, value_kind, index_width, HEADER_SIZE, metadata_length, keys_offset, keys_length,
        epoch_table_offset, 8 * num_epochs, records_offset,
        num_epochs * num_samples * record_size, 0, bytes(8), 0,
    )


def sections_crc(buf: bytes, h: Header) -> int:
    """CRC-32 of bytes [128, epoch_table_offset): the metadata, the key table and their gaps."""
    return zlib.crc32(buf[HEADER_SIZE:h.epoch_table_offset])


def read_header(buf: bytes, path: str) -> Header:
    """Parse and check the header of a whole file `buf`, in the order FORMAT.md prescribes.

    Raises:
        FormatError: not a cedstore file, corrupt header, or sections that do not fit the file.
        UnsupportedVersionError: a format version this reader does not know.
    """
    if len(buf) < HEADER_SIZE:
        raise FormatError(f"{path}: not a cedstore file: expected at least {HEADER_SIZE} bytes, found {len(buf)}")
    if buf[:8] != MAGIC:
        raise FormatError(f"{path}: not a cedstore file: expected magic {MAGIC!r}, found {bytes(buf[:8])!r}")
    (version,) = struct.unpack_from("<H", buf, 8)
    if version not in SUPPORTED_VERSIONS:  # any minor version of a known major version is read
        raise UnsupportedVersionError(
            f"{path}: format version {version}, this cedstore reads version "
            f"{', '.join(map(str, SUPPORTED_VERSIONS))} (a newer cedstore may read it)"
        )
    (stored_crc,) = struct.unpack_from("<I", buf, 124)
    crc = zlib.crc32(buf[:124])
    if crc != stored_crc:
        raise FormatError(
            f"{path}: header CRC mismatch: stored 0x{stored_crc:08x}, computed 0x{crc:08x} (the header is corrupted)"
        )
    h = Header(*struct.unpack_from(HEADER_FORMAT, buf, 0))
    # Reserved bytes: 112-123 in 1.0, 116-123 from 1.1 on (sections_crc took 112-115). A newer
    # minor version may use them for fields this reader does not know, so they are not checked.
    reserved = buf[112 if h.version_minor == 0 else 116:124]
    width_rule = _index_width_rule(h.version_minor)
    width = h.index_width if h.index_width in width_rule[1] else 0  # the layout the later rules assume
    record_size, _ = record_layout(h.k, width)
    expected = layout(h.k, h.num_classes, h.num_samples, h.num_epochs, h.value_kind,
                      h.metadata_length, h.keys_length, width)
    rules = [  # (field, valid, what is expected), checked in this order
        ("header_size", h.header_size == HEADER_SIZE, HEADER_SIZE),
        (width_rule[0], h.index_width in width_rule[1], width_rule[2]),
        ("num_classes", 1 <= h.num_classes <= max_classes(width), f"1 <= num_classes <= {max_classes(width)}"),
        ("k", 1 <= h.k <= h.num_classes, f"1 <= k <= num_classes ({h.num_classes})"),
        ("num_samples", h.num_samples >= 1, ">= 1"),
        ("num_epochs", h.num_epochs >= 1, ">= 1"),
        ("value_kind", h.value_kind in VALUE_KINDS.values(), "0 (probability) or 1 (logit)"),
        ("record_size", h.record_size == record_size,
         f"4*k + 4 = {record_size}" if width == 0 else f"4*ceil(k/2) + 4*k + 4 = {record_size}"),
        ("metadata_offset", h.metadata_offset == HEADER_SIZE, HEADER_SIZE),
        ("metadata_length", h.metadata_length >= 2, ">= 2"),
        ("reserved1", h.version_minor > FORMAT_MINOR_VERSION or not any(reserved), f"{len(reserved)} zero bytes"),
        ("sizes", expected.file_size < 2**64, None),  # every offset fits a u64: no intermediate overflows
        ("keys_offset", h.keys_offset == expected.keys_offset, expected.keys_offset),
        ("epoch_table_offset", h.epoch_table_offset == expected.epoch_table_offset, expected.epoch_table_offset),
        ("epoch_table_length", h.epoch_table_length == expected.epoch_table_length, expected.epoch_table_length),
        ("records_offset", h.records_offset == expected.records_offset, expected.records_offset),
        ("records_length", h.records_length == expected.records_length, expected.records_length),
    ]
    for name, valid, rule in rules:
        if not valid and name == "sizes":
            raise FormatError(f"{path}: header sizes overflow 64 bits (the header is corrupted)")
        if not valid:
            found = bytes(reserved) if name == "reserved1" else getattr(h, "index_width" if name == "reserved0" else name)
            raise FormatError(f"{path}: header field {name}: expected {rule}, found {found!r}")
    if len(buf) < h.file_size:
        raise FormatError(f"{path}: file is truncated: expected {h.file_size} bytes, found {len(buf)}")
    if len(buf) > h.file_size:
        raise FormatError(f"{path}: unexpected data after the records: expected {h.file_size} bytes, found {len(buf)}")
    return h


def _index_width_rule(version_minor: int) -> tuple[str, tuple[int, ...], str]:
    """(the field's name, its valid values, what is expected) of header bytes 44-47: reserved0
    before 1.2, index_width from 1.2 on."""
    if version_minor < WIDE_INDEX_MINOR_VERSION:
        return "reserved0", (0,), "0"
    return "index_width", tuple(INDEX_WIDTHS), "0 (int16 class indices) or 4 (int32 class indices)"


def check_sections(buf: bytes, h: Header, path: str) -> None:
    """The parts of the file outside the header that are checked at open: zero gaps, epoch
    table, and (from version 1.1) the CRC of the metadata and key table.

    Raises:
        FormatError: a non-zero gap byte, an epoch entry that is neither open nor sealed, or a
            metadata and key table CRC mismatch.
    """
    gaps = [(HEADER_SIZE + h.metadata_length, h.keys_offset),
            (h.keys_offset + h.keys_length, h.epoch_table_offset),
            (h.epoch_table_offset + h.epoch_table_length, h.records_offset)]
    if any(any(buf[start:end]) for start, end in gaps):
        raise FormatError(f"{path}: alignment gap between sections is not zero")
    for epoch in range(h.num_epochs):  # an open epoch's second word is its rewrite sequence: any value
        state, _ = struct.unpack_from(EPOCH_ENTRY_FORMAT, buf, h.epoch_table_offset + 8 * epoch)
        if state not in (EPOCH_OPEN, EPOCH_SEALED):
            raise FormatError(f"{path}: epoch {epoch}: state: expected 0 (open) or 1 (sealed), found {state}")
    if h.version_minor >= 1 and sections_crc(buf, h) != h.sections_crc:
        raise FormatError(
            f"{path}: metadata and key table CRC mismatch: stored 0x{h.sections_crc:08x}, computed "
            f"0x{sections_crc(buf, h):08x} (the metadata or key table is corrupted)"
        )


# --- metadata --------------------------------------------------------------------------------

MAX_METADATA_BYTES = 16 * 2**20
MAX_METADATA_DEPTH = 64  # the top-level object is depth 1
METADATA_INT_RANGE = (-(2**63), 2**64)  # what an int64 or a uint64 can hold
# A JSON string, or an unterminated one up to the end: never fails, so scanning stays linear.
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?', re.DOTALL)


class _MetadataRule(ValueError):
    """A JSON rule of FORMAT.md "Metadata" broken while parsing (raised from json hooks)."""


def _check_number(value: int | float) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise _MetadataRule(f"number {value!r} is not a finite double")
    if isinstance(value, int) and not METADATA_INT_RANGE[0] <= value < METADATA_INT_RANGE[1]:
        raise _MetadataRule(f"integer {value} outside [-2**63, 2**64)")


def _check_string(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate, e.g. from the JSON escape "\ud800"
        raise _MetadataRule(f"string {text[:40]!r} is not valid Unicode (a lone surrogate)") from None


def _check_value(value: Any, depth: int) -> None:
    """Raise _MetadataRule where the Python value `value` breaks a metadata rule."""
    if isinstance(value, (dict, list, tuple)) and depth > MAX_METADATA_DEPTH:
        raise _MetadataRule(f"nested deeper than {MAX_METADATA_DEPTH} levels")
    if isinstance(value, dict):
        for name, item in value.items():
            if not isinstance(name, str):
                raise _MetadataRule(f"object names must be strings, found {type(name).__name__} {name!r}")
            _check_string(name)
            _check_value(item, depth + 1)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _check_value(item, depth + 1)
    elif isinstance(value, str):
        _check_string(value)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        _check_number(value)


def _nesting_depth(text: str) -> int:
    """The deepest nesting of objects and arrays in JSON `text`, without recursion: brackets
    inside strings do not count, and strings are lexed as json.loads lexes them."""
    brackets = np.frombuffer(_JSON_STRING.sub("", text).encode("utf-8"), np.uint8)
    steps = np.isin(brackets, np.frombuffer(b"[{", np.uint8)).astype(np.int64)
    steps -= np.isin(brackets, np.frombuffer(b"]}", np.uint8))
    return int(np.cumsum(steps).max(initial=0))


def _unique_names(pairs: list[tuple[str, Any]]) -> dict:
    names = {}
    for name, value in pairs:
        if name in names:
            raise _MetadataRule(f"duplicate name {name!r} in one object")
        names[name] = value
    return names


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _MetadataRule(f"number {text} is outside the range of a double")
    return value


def _parse_int(text: str) -> int:
    if len(text) > 21:  # longer is out of range anyway; int() of a huge digit string is slow
        raise _MetadataRule(f"integer {text[:21]}... outside [-2**63, 2**64)")
    value = int(text)
    _check_number(value)
    return value


def _refuse_constant(name: str) -> None:
    raise _MetadataRule(f"{name} is not valid JSON")


def check_metadata(meta: Any, where: str, error: type[Exception]) -> None:
    """Check that `meta` is a dict with a string `writer` and typed reserved keys; messages
    start with `where` (a path and ": ", or "")."""
    if not isinstance(meta, dict):
        raise error(f"{where}metadata must be a JSON object, found {type(meta).__name__}")
    if not isinstance(meta.get("writer"), str):
        raise error(f"{where}metadata key 'writer' is required and must be a string")
    for key, kind in RESERVED_METADATA.items():
        if key in meta and not isinstance(meta[key], kind):
            raise error(
                f"{where}metadata key {key!r} must be a JSON "
                f"{'object' if kind is dict else 'string'}, found {type(meta[key]).__name__}"
            )
    if "activation" in meta and meta["activation"] not in ACTIVATIONS:
        raise error(f"{where}metadata key 'activation' must be 'sigmoid' or 'softmax', found {meta['activation']!r}")


def encode_metadata(meta: dict) -> bytes:
    """Deterministic UTF-8 JSON (sorted keys, compact) that decode_metadata reads back equal:
    the same rules apply (string names, valid Unicode, finite numbers, integers in
    [-2^63, 2^64), at most 64 levels deep and 16 MiB), so a writer never writes what a reader
    refuses.

    Raises:
        InvalidInputError: `meta` breaks a metadata rule or is not JSON-serializable.
    """
    check_metadata(meta, "", InvalidInputError)
    try:
        _check_value(meta, 1)
        text = json.dumps(meta, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        raw = text.encode("utf-8")
    except _MetadataRule as e:
        raise InvalidInputError(f"metadata: {e}") from None
    except (TypeError, ValueError) as e:  # unserializable value, lone surrogate
        raise InvalidInputError(f"metadata is not serializable as strict UTF-8 JSON: {e}") from None
    if len(raw) > MAX_METADATA_BYTES:
        raise InvalidInputError(f"metadata: {len(raw)} bytes of JSON, at most {MAX_METADATA_BYTES} allowed")
    return raw


def decode_metadata(raw: bytes, path: str) -> dict:
    """Parse metadata bytes (data only: nothing is executed) and check the reserved keys and
    the JSON rules of FORMAT.md "Metadata": no duplicate names, no lone surrogates, numbers
    that are finite doubles, integers in [-2^63, 2^64), at most 64 levels deep and 16 MiB.

    Raises:
        FormatError: not UTF-8, not strict JSON, a broken rule, not an object, or a reserved
            key of the wrong type.
    """
    if len(raw) > MAX_METADATA_BYTES:
        raise FormatError(f"{path}: metadata: {len(raw)} bytes, at most {MAX_METADATA_BYTES} allowed")
    try:
        text = bytes(raw).decode("utf-8")
        depth = _nesting_depth(text)  # before json.loads, which recurses once per level
        if depth > MAX_METADATA_DEPTH:
            raise _MetadataRule(f"nested {depth} levels deep, at most {MAX_METADATA_DEPTH} allowed")
        meta = json.loads(text, object_pairs_hook=_unique_names, parse_float=_parse_float,
                          parse_int=_parse_int, parse_constant=_refuse_constant)
        _check_value(meta, 1)  # strings: json.loads accepts escaped lone surrogates
    except _MetadataRule as e:
        raise FormatError(f"{path}: metadata: {e}") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise FormatError(f"{path}: metadata is not UTF-8 JSON: {e}") from None
    check_metadata(meta, f"{path}: ", FormatError)
    return meta


# --- key table -------------------------------------------------------------------------------


def encode_key_table(keys: list[str], num_samples: int) -> bytes:
    """Key table bytes for one non-empty, unique UTF-8 key per sample."""
    if len(keys) != num_samples:
        raise InvalidInputError(f"{len(keys)} keys given for {num_samples} samples")
    encoded = []
    for i, key in enumerate(keys):
        if not isinstance(key, str) or not key:
            raise InvalidInputError(f"key of sample {i} must be a non-empty string, found {key!r}")
        try:
            encoded.append(key.encode("utf-8"))
        except UnicodeEncodeError:
            raise InvalidInputError(f"key of sample {i} is not valid UTF-8: {key!r}") from None
    order = sorted(range(num_samples), key=lambda i: encoded[i])
    for a, b in zip(order, order[1:]):
        if encoded[a] == encoded[b]:
            raise InvalidInputError(f"samples {min(a, b)} and {max(a, b)} have the same key {keys[a]!r}")
    ends = np.concatenate([[0], np.cumsum([len(e) for e in encoded])]).astype("<u8")
    blob = b"".join(encoded)
    prefix = struct.pack(KEY_TABLE_PREFIX_FORMAT, num_samples, len(blob))
    return prefix + ends.tobytes() + np.asarray(order, "<u8").tobytes() + blob


def decode_key_table(table: bytes, num_samples: int, path: str) -> tuple[list[bytes], list[int]]:
    """(keys as bytes, order) of a key table, checked completely.

    Raises:
        FormatError: any rule of FORMAT.md "Key table" is broken.
    """
    def bad(message: str):
        raise FormatError(f"{path}: key table: {message}")

    if len(table) < 16:
        bad(f"expected at least 16 bytes, found {len(table)}")
    n, blob_length = struct.unpack_from(KEY_TABLE_PREFIX_FORMAT, table, 0)
    if n != num_samples:
        bad(f"num_keys: expected num_samples ({num_samples}), found {n}")
    if key_table_length(n, blob_length) != len(table):
        bad(f"length: expected 16 + 16*num_samples + 8 + blob_length (blob_length {blob_length}) "
            f"= keys_length ({len(table)})")
    ends = [int(x) for x in np.frombuffer(table, "<u8", n + 1, 16)]
    order = [int(x) for x in np.frombuffer(table, "<u8", n, 16 + 8 * (n + 1))]
    blob = table[16 + 8 * (n + 1) + 8 * n:]
    if ends[0] != 0:
        bad(f"ends[0]: expected 0, found {ends[0]}")
    if ends[n] != blob_length:
        bad(f"ends[{n}]: expected blob_length ({blob_length}), found {ends[n]}")
    keys = []
    for i in range(n):
        if ends[i + 1] == ends[i]:
            bad(f"key of sample {i} is empty")
        if ends[i + 1] < ends[i]:
            bad(f"ends must be non-decreasing, found ends[{i}] = {ends[i]} > ends[{i + 1}] = {ends[i + 1]}")
        if ends[i + 1] > blob_length:
            bad(f"ends[{i + 1}] = {ends[i + 1]} exceeds blob_length {blob_length}")
        keys.append(blob[ends[i]:ends[i + 1]])
        try:
            keys[i].decode("utf-8")
        except UnicodeDecodeError:
            bad(f"key of sample {i} is not valid UTF-8")
    seen = set()
    for j, sample in enumerate(order):
        if sample >= n:
            bad(f"order[{j}] = {sample} is not a sample id (expected < {n})")
        if sample in seen:
            bad(f"order lists sample {sample} twice")
        seen.add(sample)
        if j > 0 and keys[order[j - 1]] == keys[sample]:
            bad(f"duplicate key {keys[sample].decode()!r} (samples {order[j - 1]} and {sample})")
        if j > 0 and keys[order[j - 1]] > keys[sample]:
            bad(f"order is not sorted by key: {keys[order[j - 1]].decode()!r} (sample {order[j - 1]}) "
                f"comes before {keys[sample].decode()!r} (sample {sample})")
    return keys, order


# --- records ---------------------------------------------------------------------------------


def encode_topk_reference(dense: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of each row of float32/float16 [B, C]: (values float16 [B, k], indices [B, k]),
    int16 indices for C <= 32767, int32 up to 2**24 classes.

    Classes are ordered by a stable sort of ``-x`` (ties: lower class first), values rounded to
    float16 to nearest even. Raises InvalidInputError like the core's ``encode_topk``.
    """
    x = np.asarray(dense)
    if x.dtype not in (np.float32, np.float16) or x.ndim != 2:
        raise InvalidInputError(f"teacher outputs must be float32 or float16 [B, C], found {x.dtype} {x.shape}")
    num_classes = x.shape[1]
    if not 1 <= num_classes <= MAX_CLASSES_WIDE:
        raise InvalidInputError(f"num_classes {num_classes} must be in [1, {MAX_CLASSES_WIDE}]")
    if not 1 <= k <= num_classes:
        raise InvalidInputError(f"k {k} must be in [1, num_classes={num_classes}]")
    x = x.astype(np.float32)
    bad = np.argwhere(~np.isfinite(x))
    if len(bad):
        row, col = bad[0]
        raise InvalidInputError(f"row {row}, class {col}: teacher output {x[row, col]} is not finite")
    indices = np.argsort(-x, axis=1, kind="stable")[:, :k]
    with np.errstate(over="ignore"):  # overflow to Inf is reported below, with its row and class
        values = np.take_along_axis(x, indices, axis=1).astype(np.float16)
    bad = np.argwhere(~np.isfinite(values))
    if len(bad):
        row, j = bad[0]
        raise InvalidInputError(
            f"row {row}, class {indices[row, j]}: teacher output {x[row, indices[row, j]]} "
            "overflows float16"
        )
    return values, indices.astype(INDEX_WIDTHS[index_width_for(num_classes)])


def check_record(values: np.ndarray, indices: np.ndarray, num_classes: int) -> str | None:
    """What is wrong with one written record's content, or None (FORMAT.md "Records")."""
    seen = set()
    for j, (value, cls) in enumerate(zip(values.astype(np.float32).tolist(), indices.tolist())):
        if not 0 <= cls < num_classes:
            return f"class index {cls} at position {j} outside [0, {num_classes})"
        if cls in seen:
            return f"class index {cls} appears twice"
        seen.add(cls)
        if not np.isfinite(value):
            return f"value at position {j} is not finite"
        if j > 0 and value > previous:
            return f"values are not non-increasing: {previous} at position {j - 1}, then {value}"
        previous = value
    return None
