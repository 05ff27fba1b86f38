"""Storage arithmetic: what keeping a teacher's outputs costs per method (the paper's Table 2)."""

from __future__ import annotations

import operator

from cedstore.errors import InvalidInputError
from cedstore.format import index_width_for, record_layout

# Bytes per sample and epoch for each way of keeping teacher outputs.
METHODS = {
    # fp16 values + int16 or int32 indices + int32 seed (FORMAT.md, "Records")
    "ced": lambda num_classes, k, index_width: record_layout(k, index_width)[0],
    "fp16": lambda num_classes, k, index_width: 2 * num_classes,
    "fp32": lambda num_classes, k, index_width: 4 * num_classes,
}


def storage_bytes(num_samples: int, num_classes: int, k: int, num_epochs: int = 1, method: str = "ced",
                  index_dtype=None) -> int:
    """Bytes of teacher outputs for `num_epochs` epochs of `num_samples` samples.

    "ced" counts the records only (E·N·(4k + 4) with int16 class indices, the layout of
    C <= 32767; E·N·(4·ceil(k/2) + 4k + 4) with int32); a file adds a small overhead
    (FORMAT.md, Notes). "fp16"/"fp32" are dense outputs of all classes, without seeds. Only
    stores that can exist are sized: every method refuses what no cedstore layout can hold.

    Args:
        index_dtype: the class indices of "ced": np.int16, np.int32, or None (int16 when C
            fits, as cedstore.create picks them).

    Raises:
        InvalidInputError: a count below 1, k > num_classes, more classes than the index
            layout holds (32767 for int16, 2**24 for int32), num_epochs >= 2**32, a store
            over 2**64 bytes, or an unknown method.

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
    index_width = index_width_for(num_classes, index_dtype)
    if num_epochs >= 2**32:
        raise InvalidInputError(f"num_epochs = {num_epochs} must be below 2**32 (a u32 in the header)")
    records = num_epochs * num_samples * METHODS["ced"](num_classes, k, index_width)
    if records >= 2**64:
        raise InvalidInputError(f"{records} bytes of records do not fit in a 64-bit file size")
    return num_epochs * num_samples * METHODS[method](num_classes, k, index_width)
