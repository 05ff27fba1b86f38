"""cedstore: a teacher's top-K outputs and augmentation seeds per sample and epoch, for CED.

One fixed-size record per (epoch, sample) in a memory-mapped file (FORMAT.md), written and
read in batches by a C++ core.

Example:
    >>> import cedstore
    >>> with cedstore.create("teacher.ced", num_classes=527, k=20, num_samples=n) as w:
    ...     w.write(0, sample_ids, probs=teacher_probs, seeds=seeds)
    >>> targets, seeds = cedstore.open("teacher.ced").dense(0, sample_ids)
"""

from cedstore._version import __version__

try:
    from cedstore import _core  # noqa: F401  (no pure-Python fallback, on purpose)
except ImportError as e:
    raise ImportError(
        f"cedstore's C++ extension cedstore._core is not built or does not load ({e}). "
        "Build it with `pip install .` (or `pip install -e .` in a source checkout)."
    ) from e

from cedstore.errors import (
    CedStoreError,
    FormatError,
    IntegrityError,
    InvalidInputError,
    UnsupportedVersionError,
    UnwrittenRecordError,
    WriterClosedError,
)
from cedstore.format import FORMAT_VERSION
from cedstore.merge import merge
from cedstore import shards  # compact per-rank shards: create_shard, resume_shard, merge_shards
from cedstore.shards import create_shard, merge_shards, resume_shard
from cedstore import targets  # tail policies: cedstore.targets.dense(store, epoch, ids, tail="uniform")
from cedstore.sizes import storage_bytes
from cedstore.store import JoinReport, Store, open
from cedstore.writer import Writer, create, label_space, resume

__all__ = [
    "__version__",
    "FORMAT_VERSION",
    "create",
    "resume",
    "open",
    "merge",
    "shards",
    "create_shard",
    "resume_shard",
    "merge_shards",
    "storage_bytes",
    "targets",
    "label_space",
    "Store",
    "Writer",
    "JoinReport",
    "CedStoreError",
    "FormatError",
    "UnsupportedVersionError",
    "IntegrityError",
    "UnwrittenRecordError",
    "WriterClosedError",
    "InvalidInputError",
]
