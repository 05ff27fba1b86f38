"""Type stub for the C++ extension `cedstore._core` (built from csrc/ by setup.py).

This is the contract between the C++ core and the Python API in cedstore/. Every error the
core raises is an instance of a class from `cedstore.errors` (the bindings translate C++
exceptions), except out-of-range epochs and sample ids, which raise the builtin IndexError.
Every loop over records runs with the GIL released; the arrays such a loop reads (sample ids,
seeds, dense rows, values, indices) are first copied, with the GIL held, into memory the call
owns, so another thread changing them cannot make the core read or write out of bounds.
A path with a NUL byte raises InvalidInputError (a ValueError), as Python's own open() does.
"""

import numpy as np

MAGIC: bytes  # b"CEDSTORE"
FORMAT_VERSION: int  # 1, the major version
FORMAT_MINOR_VERSION: int  # 2, the minor version this core writes (it reads every 1.x)
MAX_METADATA_LENGTH: int  # 16 MiB
HEADER_SIZE: int  # 128
RECORDS_ALIGN: int  # 4096
SECTION_ALIGN: int  # 8
MAX_CLASSES: int  # 32767, with int16 class indices (index_width 0)
MAX_CLASSES_WIDE: int  # 2**24, with int32 class indices (index_width 4)
UNWRITTEN_INDEX: int  # -1

def crc32(data: bytes | memoryview, value: int = 0) -> int:
    """CRC-32 (zlib's), continuing from `value`; equals zlib.crc32(data, value)."""

def encode_topk(dense: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of each row of float32 or float16 [B, C] per FORMAT.md. `dense` is read in place
    without the GIL: changing it meanwhile gives an undefined selection, never a crash.

    Returns (values float16 [B, k], indices [B, k]: int16 when C <= 32767, else int32, as a store
    of C classes holds them by default). Raises InvalidInputError on NaN/Inf (naming the row and
    class), on overflow to Inf in fp16, on k outside [1, C], C > 2**24, or a wrong ndim/dtype.
    """

class Reader:
    """Read-only memory map of a store; validated completely at open (header, sections, the
    metadata and key table CRC, key table ends/order here; metadata JSON by Python). Opening
    never blocks: a FIFO or other non-regular file raises FormatError. Safe to use after fork
    (the mapping is shared read-only; no threads are started).

    Every batch call first compares the file size with the header (fstat) and raises
    FormatError "file is truncated" if another process cut the file; a cut between that check
    and the read still raises SIGBUS, as with any memory map (FORMAT.md)."""

    def __init__(self, path: str) -> None: ...
    path: str
    format_version: str  # of the file: "1.0", "1.1" or "1.2"
    k: int
    num_classes: int
    num_samples: int
    num_epochs: int
    record_size: int
    index_width: int  # 0: int16 class indices; 4: int32 (format 1.2's wide layout)
    value_kind: int  # 0 probability, 1 logit
    records_offset: int
    file_size: int
    has_keys: bool
    def metadata_bytes(self) -> bytes: ...
    def epoch_table(self) -> list[tuple[int, int]]:
        """[(state, crc)] per epoch, read now (the file may be written by another process)."""
    def buffer(self) -> memoryview:
        """Read-only memoryview of the whole file; keeps the mapping alive while referenced.
        Raw bytes: no torn-record protection against a concurrent rewrite."""
    def private_records(self, epoch: int) -> memoryview:
        """Writable memoryview of one epoch's records in a private copy-on-write map of the
        file: writes change this process's copy of the touched pages, never the file."""
    def check_size(self) -> None:
        """FormatError if the file is shorter now than when it was opened."""
    def key(self, sample_id: int) -> str: ...
    def keys(self) -> list[str]: ...
    def lookup(self, keys: list[str]) -> np.ndarray:
        """int64 [len(keys)]: sample id of each key, -1 where absent (binary search)."""
    def decode_dense(
        self, epoch: int, sample_ids: np.ndarray, fill: float = 0.0, out: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(targets float32 [B, C], seeds int32 [B]). `out`, when given, must be a C-contiguous
        writable float32 [B, C] array that shares no memory with sample_ids (InvalidInputError)
        and is filled and returned (no allocation of targets). Records are read whole or not at
        all while a writer rewrites them (FORMAT.md, "Rewriting a record").
        sample_ids: any integer array [B] (converted to int64). Raises IndexError for an epoch or
        id out of range, UnwrittenRecordError for a record never written, IntegrityError for a
        class index outside [0, C) — each naming file, epoch and sample."""
    def decode_topk(self, epoch: int, sample_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(values float32 [B, k], indices int64 [B, k], seeds int32 [B]); same errors."""
    def written(self, epoch: int) -> np.ndarray:
        """bool [N]: which records of the epoch are written."""
    def verify(self, require_complete: bool = True, epoch: int = -1) -> None:
        """Full integrity check per FORMAT.md Notes (every epoch, or only `epoch`); raises
        IntegrityError (or UnwrittenRecordError when require_complete and a record is missing)
        on the first problem."""
    def close(self) -> None: ...

class Writer:
    """Read-write memory map of a store being written. Holds the file's writer lock from
    create/resume to close: a second writer on the same file, in this process or another,
    raises CedStoreError. Writes from several threads are serialized around the record stores;
    close() waits for the batch in flight, and later writes raise WriterClosedError."""

    @staticmethod
    def create(
        path: str,
        k: int,
        num_classes: int,
        num_samples: int,
        num_epochs: int,
        value_kind: int,
        metadata_json: bytes,
        keys: list[str] | None,
        overwrite: bool = False,
        index_width: int = 0,
    ) -> "Writer":
        """Create a new file (records filled with 0xFF, all epochs open); index_width 0 stores
        int16 class indices (C <= 32767), 4 int32 (C <= 2**24). Raises
        InvalidInputError for bad shapes/keys (empty, duplicate — naming both samples, not
        UTF-8), FileExistsError unless overwrite, CedStoreError when overwriting a file another
        writer holds."""
    @staticmethod
    def resume(path: str) -> "Writer":
        """Open an existing store for writing; marks every epoch open before returning (an
        open epoch keeps its rewrite sequence, rounded up to even). CedStoreError if another
        writer holds the file; FormatError for a FIFO or anything not a regular file."""
    path: str
    k: int
    num_classes: int
    num_samples: int
    num_epochs: int
    index_width: int
    def write_dense(self, epoch: int, sample_ids: np.ndarray, dense: np.ndarray, seeds: np.ndarray) -> None:
        """Encode float32/float16 [B, C] rows and store them with their seeds (int32, or int64
        within int32 range, [B]). Duplicate ids within one call are refused."""
    def write_topk(
        self, epoch: int, sample_ids: np.ndarray, values: np.ndarray, indices: np.ndarray, seeds: np.ndarray
    ) -> None:
        """Store given top-k rows: values float32/float16 [B, k] finite and non-increasing (after
        fp16 rounding), indices any integer dtype [B, k] in [0, C) and distinct per row."""
    def written(self, epoch: int) -> np.ndarray: ...
    def close(self, seal: bool = True) -> None:
        """Wait for a write in flight, flush; when seal, compute the CRC of every fully written
        epoch and mark it sealed; release the writer lock. Idempotent. Any write after close
        raises WriterClosedError."""
