"""The cedstore error family: every failure the library reports is one of these."""

__all__ = [
    "CedStoreError",
    "FormatError",
    "UnsupportedVersionError",
    "IntegrityError",
    "UnwrittenRecordError",
    "WriterClosedError",
    "InvalidInputError",
]


class CedStoreError(ValueError):
    """Base class of all cedstore errors (a ValueError)."""


class FormatError(CedStoreError):
    """The file is not a cedstore file, or its header, metadata or key table is malformed."""


class UnsupportedVersionError(FormatError):
    """The file has a format version this reader does not know (written by a newer cedstore)."""


class IntegrityError(CedStoreError):
    """Record content is invalid or an epoch's checksum does not match (found by verify/decode)."""


class UnwrittenRecordError(CedStoreError):
    """A record that was never written was asked for."""


class WriterClosedError(CedStoreError):
    """A write was attempted on a closed writer."""


class InvalidInputError(CedStoreError):
    """Arguments given to the writer or encoder are wrong: shape, dtype, NaN/Inf, bad indices."""
