"""PyTorch adapters: zero-copy tensors of an epoch, and a Dataset that decodes whole batches.

Import this module only where torch is wanted (``import cedstore.torch``); cedstore itself
needs numpy alone.

Example:
    >>> from cedstore.torch import TargetDataset, collate
    >>> data = TargetDataset("teacher.ced", epoch=0)
    >>> loader = DataLoader(data, batch_size=64, shuffle=True, num_workers=2, collate_fn=collate)
    >>> batch = next(iter(loader))  # {"ids": [64], "targets": [64, C], "seeds": [64]}
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import torch

from cedstore.store import Store

# torch warns that tensors over read-only memory may not be written; epoch_tensors documents it.
_NOT_WRITABLE = "The given NumPy array is not writable"


def epoch_tensors(store: Store, epoch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Zero-copy tensors over one epoch's records in the store's read-only memory map.

    The tensors are strided views of the file's pages: reading is free, but they MUST NOT be
    written (in-place ops hit read-only pages and kill the process); ``.clone()`` first. They
    keep the mapping alive while referenced.

    Returns:
        (values float16 [N, K], indices int16 [N, K], seeds int32 [N]); unwritten records
        have indices[:, 0] == -1.

    Example:
        >>> values, indices, seeds = epoch_tensors(cedstore.open("t.ced"), 0)
    """
    records = store.records(epoch)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_NOT_WRITABLE, category=UserWarning)
        return tuple(torch.from_numpy(records[field]) for field in ("values", "indices", "seed"))


def _batch(ids: np.ndarray, targets: np.ndarray, seeds: np.ndarray) -> dict[str, torch.Tensor]:
    return {"ids": torch.from_numpy(ids), "targets": torch.from_numpy(targets), "seeds": torch.from_numpy(seeds)}


def collate(batch: dict | list[dict]) -> dict[str, torch.Tensor]:
    """DataLoader collate_fn for TargetDataset: passes a batch from ``__getitems__`` through,
    or stacks single items (from ``dataset[i]``) into one batch dict."""
    if isinstance(batch, dict):
        return batch
    return {name: torch.stack([item[name] for item in batch]) for name in ("ids", "targets", "seeds")}


class TargetDataset(torch.utils.data.Dataset):
    """Dense distillation targets of one augmentation epoch, decoded a batch per core call.

    ``dataset[ids]`` with a list/array of ids, and ``__getitems__(ids)`` (which DataLoader
    calls when batching), return one batch::

        {"ids": int64 [B], "targets": float32 [B, C], "seeds": int32 [B]}

    ``dataset[i]`` returns one item with shapes [], [C], []. Use ``collate_fn=collate`` with
    ``batch_size=...``, or pass a BatchSampler as ``sampler`` with ``batch_size=None``. Works
    with worker processes under fork (the mapping is shared) and spawn (the store reopens).

    Args:
        store: a Store or the path of one.
        epoch: the augmentation epoch to read.
        fill: value of the classes outside each record's top-k.
    """

    def __init__(self, store: Store | str | os.PathLike, epoch: int, fill: float = 0.0):
        self.store = store if isinstance(store, Store) else Store(store)
        self.epoch = self.store._check_epoch(epoch)
        self.fill = fill

    def __len__(self) -> int:
        return self.store.num_samples

    def __getitems__(self, ids) -> dict[str, torch.Tensor]:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        targets, seeds = self.store.dense(self.epoch, ids, self.fill)
        return _batch(ids, targets, seeds)

    def __getitem__(self, index) -> dict[str, torch.Tensor]:
        if np.ndim(index) == 0:
            return {name: t[0] for name, t in self.__getitems__([index]).items()}
        return self.__getitems__(index)
