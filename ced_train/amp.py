"""Automatic mixed precision, one vocabulary everywhere: ``amp`` is ``none``, ``bf16`` or ``fp16``.

Example:
    >>> with autocast(torch.device("cpu"), "bf16"):
    ...     y = model(x)  # doctest: +SKIP
"""

from __future__ import annotations

import torch

from ced_train.errors import CedTrainError

__all__ = ["AMP_MODES", "amp_dtype", "autocast"]

AMP_MODES = ("none", "bf16", "fp16")
_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def amp_dtype(amp: str) -> torch.dtype | None:
    """The autocast dtype of ``amp`` (None for ``"none"``).

    Raises:
        CedTrainError: ``amp`` is not one of ``AMP_MODES``.

    Example:
        >>> amp_dtype("bf16")
        torch.bfloat16
    """
    if amp not in _DTYPES:
        raise CedTrainError(f"amp must be one of {', '.join(AMP_MODES)}, got {amp!r}")
    return _DTYPES[amp]


def autocast(device: torch.device, amp: str) -> torch.autocast:
    """``torch.autocast`` on ``device`` with ``amp``'s dtype; disabled for ``"none"``."""
    dtype = amp_dtype(amp)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)
