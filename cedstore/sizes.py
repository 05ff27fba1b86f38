"""Storage arithmetic: what keeping a teacher's outputs costs per method (the paper's Table 2)."""

from __future__ import annotations

import operator

from cedstore.errors import InvalidInputError

# Bytes per sample and epoch for each way of keeping teacher outputs.
METHODS = {
    "ced": lambda num_classes, k: 4 * k + 4,  # fp16 values + int16 indices + int32 seed
    "fp16": lambda num_classes, k: 2 * num_classes,
    "fp32": lambda num_classes, k: 4 * num_classes,
}


def storage_bytes(num_samples: int, num_classes: int, k: int, num_epochs: int = 1, method: str = "ced") -> int:
    """Bytes of teacher outputs for `num_epochs` epochs of `num_samples` samples.

    "ced" counts the records only (E·N·(4k + 4)); a file adds a small overhead (FORMAT.md,
    Notes). "fp16"/"fp32" are dense outputs of all classes, without seeds.

    Raises:
        InvalidInputError: a count below 1, k > num_classes, or an unknown method.

    Example:
        >>> storage_bytes(21155, 527, 20)  # AS-20K, one epoch: 1.78 MB
        1777020
    """
    counts = [operator.index(n) for n in (num_samples, num_classes, k, num_epochs)]
    if min(counts) < 1 or k > num_classes:
        raise InvalidInputError(
            f"need num_samples, num_classes, k, num_epochs >= 1 and k <= num_classes, got "
            f"num_samples={num_samples}, num_classes={num_classes}, k={k}, num_epochs={num_epochs}"
        )
    if method not in METHODS:
        raise InvalidInputError(f"method must be one of {list(METHODS)}, found {method!r}")
    return num_epochs * num_samples * METHODS[method](num_classes, k)
