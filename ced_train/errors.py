"""The ced_train error family: one root, ``CedTrainError`` (a ``ValueError``), and its kinds.

Every message says what was expected, what was found and where (file, line, sample, epoch).
Library messages name Python arguments, never command-line flags: the command line
(``ced_train.cli``) prints them as one line, ``ced-train: error: <message>``.

Example:
    >>> try:
    ...     AudioDataset.from_tsv("missing.tsv")
    ... except DataError as e:  # also a CedTrainError and a ValueError
    ...     print(e)  # doctest: +SKIP
    missing.tsv: TSV file not found
"""

from __future__ import annotations

__all__ = ["CedTrainError", "CheckpointError", "DataError", "StoreMismatchError"]


class CedTrainError(ValueError):
    """Root of the ced_train errors: an input or setting that cannot be used as given."""


class DataError(CedTrainError):
    """An audio file or a dataset description (TSV, folder) is unusable; the message names it."""


class StoreMismatchError(CedTrainError):
    """A teacher store does not belong with the dataset, teacher, recipe, label space or student
    it is used with (or was made by another extraction than the one resuming it)."""


class CheckpointError(CedTrainError):
    """A checkpoint file is unreadable, not a CED checkpoint, or does not fit the model."""
