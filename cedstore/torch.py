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

import numpy as np
import torch

from cedstore.format import record_dtype
from cedstore.store import Store


def epoch_tensors(store: Store, epoch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Zero-copy tensors over one epoch's records, in a private copy-on-write map of the file.

    The tensors are strided views of the file's pages: reading is free, and writing (an
    in-place op) copies the page it touches for this process alone, so the file never
    changes. They keep their mapping alive while referenced. As with any memory map, a file
    truncated by another process afterwards makes reading the lost pages raise SIGBUS.

    Returns:
        (values float16 [N, K], indices int16 [N, K], seeds int32 [N]); unwritten records
        have indices[:, 0] == -1.

    Raises:
        IndexError: epoch out of range.
        FormatError: the file was truncated since it was opened.

    Example:
        >>> values, indices, seeds = epoch_tensors(cedstore.open("t.ced"), 0)
    """
    epoch = store._check_epoch(epoch)
    records = np.frombuffer(store._core.private_records(epoch), record_dtype(store.k), store.num_samples)
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
