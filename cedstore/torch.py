"""PyTorch adapters: zero-copy tensors of an epoch, a Dataset that decodes whole batches, the
epoch sampler that tells DataLoader workers which epoch to read, and losses on sparse batches.

Import this module only where torch is wanted (``import cedstore.torch``); cedstore itself
needs numpy alone.

Example:
    >>> from cedstore.torch import EpochSampler, TargetDataset, collate
    >>> data = TargetDataset("teacher.ced")
    >>> sampler = EpochSampler(RandomSampler(data))
    >>> loader = DataLoader(data, batch_size=64, sampler=sampler, num_workers=2,
    ...                     persistent_workers=True, collate_fn=collate)
    >>> for epoch in range(100):
    ...     sampler.set_epoch(epoch)        # reads stored epoch `epoch % store.num_epochs`
    ...     for batch in loader: ...        # {"ids": [64], "targets": [64, C], "seeds": [64]}
"""

from __future__ import annotations

import collections.abc
import operator
import os
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from cedstore import targets as _targets
from cedstore.errors import InvalidInputError
from cedstore.format import record_dtype
from cedstore.store import Store


def epoch_tensors(store: Store, epoch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Zero-copy tensors over one epoch's records, in a private copy-on-write map of the file.

    The tensors are strided views of the file's pages: reading is free, and writing (an
    in-place op) copies the page it touches for this process alone, so the file never
    changes. They keep their mapping alive while referenced. As with any memory map, a file
    truncated by another process afterwards makes reading the lost pages raise SIGBUS.

    Returns:
        (values float16 [N, K], indices int16 or int32 [N, K] (store.index_dtype), seeds
        int32 [N]); unwritten records
        have indices[:, 0] == -1.

    Raises:
        IndexError: epoch out of range.
        FormatError: the file was truncated since it was opened.

    Example:
        >>> values, indices, seeds = epoch_tensors(cedstore.open("t.ced"), 0)
    """
    epoch = store._check_epoch(epoch)
    records = np.frombuffer(store._core.private_records(epoch), record_dtype(store.k, store.index_dtype),
                            store.num_samples)
    return tuple(torch.from_numpy(records[field]) for field in ("values", "indices", "seed"))


class EpochIndex(NamedTuple):
    """One index a DataLoader hands to TargetDataset: the training epoch travels with the id,
    so workers (persistent or not, fork or spawn) never depend on state set after they start."""

    epoch: int
    sample_id: int


class EpochSampler(torch.utils.data.Sampler):
    """Wraps a sampler (or a batch sampler) so that its indices carry the epoch set by set_epoch().

    Use it as ``sampler=`` (wrapping a sampler of ids) or ``batch_sampler=`` (wrapping one of
    lists of ids). TargetDataset reads stored epoch ``epoch % store.num_epochs``, as ced_train
    cycles E stored epochs. set_epoch() is passed on to the wrapped sampler (and to a
    BatchSampler's sampler) when it has one, e.g. DistributedSampler's reshuffle.

    Args:
        sampler: yields sample ids, or lists of sample ids.
        epoch: the training epoch until set_epoch() is called.

    Example:
        >>> sampler = EpochSampler(DistributedSampler(data))
        >>> loader = DataLoader(data, batch_size=64, sampler=sampler, collate_fn=collate)
        >>> sampler.set_epoch(3)   # stored epoch 3 % E, and DistributedSampler's shuffle of epoch 3
    """

    def __init__(self, sampler, epoch: int = 0):
        self.sampler = sampler
        self.set_epoch(epoch)

    def set_epoch(self, epoch: int) -> None:
        epoch = operator.index(epoch)
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, found {epoch}")
        self.epoch = epoch
        for inner in (self.sampler, getattr(self.sampler, "sampler", None)):
            if hasattr(inner, "set_epoch"):
                inner.set_epoch(epoch)

    def __iter__(self):
        epoch = self.epoch
        for item in self.sampler:
            if isinstance(item, (int, np.integer, torch.Tensor)) and np.ndim(item) == 0:
                yield EpochIndex(epoch, int(item))
            else:
                yield [EpochIndex(epoch, int(i)) for i in item]

    def __len__(self) -> int:
        return len(self.sampler)


class _Rows(collections.abc.Sequence):
    """What __getitems__ returns: a decoded batch that DataLoader's default collation can also
    stack row by row (one copy); ``collate`` takes the batch as it is."""

    def __init__(self, batch: dict[str, torch.Tensor]):
        self.batch = batch

    def __len__(self) -> int:
        return len(self.batch["ids"])

    def __getitem__(self, row):
        return {name: t[row] for name, t in self.batch.items()}


def collate(batch) -> dict[str, torch.Tensor]:
    """DataLoader collate_fn for TargetDataset: takes a batch from ``__getitems__`` as it is
    (no copy), passes a batch dict through, or stacks single items (from ``dataset[i]``)."""
    if isinstance(batch, _Rows):
        return batch.batch
    if isinstance(batch, dict):
        return batch
    return {name: torch.stack([item[name] for item in batch]) for name in batch[0]}


class TargetDataset(torch.utils.data.Dataset):
    """Distillation targets decoded a batch per core call, dense or sparse, with a tail policy.

    ``dataset[ids]`` (a list/array of ids, or a slice; negative ids count from the end) and
    ``__getitems__(ids)`` (which DataLoader calls when batching) decode one batch::

        dense:  {"ids": int64 [B], "targets": float32 [B, C], "seeds": int32 [B]}
        sparse: {"ids": int64 [B], "values": float32 [B, K], "indices": int64 [B, K],
                 "tail": float32 [B], "seeds": int32 [B]}

    A sparse row's target is ``tail`` outside ``indices`` and ``values`` at them
    (cedstore.targets); the losses below take it without densifying. ``dataset[i]`` returns
    one item. Give the DataLoader ``collate_fn=collate`` (no copy; default collation works too,
    at the cost of one copy of the batch).

    Epochs: plain ids read the stored epoch given as ``epoch``. Ids that carry the epoch
    (``EpochIndex``, as EpochSampler yields them) read stored epoch ``epoch % num_epochs``; use
    EpochSampler with ``set_epoch(e)`` in a DataLoader: a dataset attribute set in the main
    process does not reach workers that already run (persistent_workers=True), so ``epoch``
    cannot be changed after construction. Works with worker processes under fork (the mapping
    is shared) and spawn (the store reopens).

    Args:
        store: a Store or the path of one.
        epoch: the stored epoch that plain ids read.
        fill: dense mode, tail "zero": value of the classes outside each record's top-k.
        tail: tail policy, "zero", "uniform" or "renormalize" (cedstore.targets); None
            (default): the one the store records (metadata tail_policy, "zero" when absent).
        sparse: yield top-K batches instead of dense targets.

    Raises:
        IndexError: epoch out of range.
        InvalidInputError: a tail policy (requested or recorded) that is unknown or does not
            fit the store, or a `fill` other than 0 with another policy.
    """

    def __init__(self, store: Store | str | os.PathLike, epoch: int = 0, fill: float = 0.0,
                 tail: str | None = None, sparse: bool = False):
        self.store = store if isinstance(store, Store) else Store(store)
        self._epoch = self.store._check_epoch(epoch)
        self.tail = _targets.resolve_tail(self.store, tail)
        if fill != 0 and (self.tail != "zero" or sparse):
            raise InvalidInputError(f"{self.store.path}: fill = {fill} applies to dense targets with tail 'zero' only")
        self.fill, self.sparse = fill, sparse

    @property
    def epoch(self) -> int:
        """The stored epoch that plain ids read (fixed: use EpochSampler to change epochs)."""
        return self._epoch

    @epoch.setter
    def epoch(self, value) -> None:
        raise AttributeError(
            "TargetDataset.epoch cannot be changed after construction: DataLoader workers "
            "(persistent_workers=True) would keep reading the old epoch. Wrap the sampler in "
            "cedstore.torch.EpochSampler and call sampler.set_epoch(epoch) before each epoch"
        )

    def __len__(self) -> int:
        return self.store.num_samples

    def __getitems__(self, indices) -> _Rows:
        epochs, ids = self._resolve(indices)
        parts = [self._decode(int(e), ids[epochs == e]) for e in np.unique(epochs)]
        if len(parts) == 1:
            batch = parts[0]
        else:  # a batch that spans epochs: decode each epoch's rows, put them back in order
            order = np.argsort(np.concatenate([np.flatnonzero(epochs == e) for e in np.unique(epochs)]), kind="stable")
            batch = {name: torch.cat([p[name] for p in parts])[order] for name in parts[0]}
        return _Rows(batch)

    def __getitem__(self, index) -> dict[str, torch.Tensor]:
        if isinstance(index, EpochIndex) or (np.ndim(index) == 0 and not isinstance(index, slice)):
            return self.__getitems__([index])[0]
        if isinstance(index, slice):
            index = np.arange(len(self))[index]
        return self.__getitems__(index).batch

    def _resolve(self, indices) -> tuple[np.ndarray, np.ndarray]:
        """(stored epochs int64 [B], sample ids int64 [B]) of ids or EpochIndex pairs."""
        if len(indices) and isinstance(indices[0], EpochIndex):
            pairs = np.array(indices, dtype=np.int64).reshape(-1, 2)
            if (pairs[:, 0] < 0).any():
                raise IndexError(f"{self.store.path}: training epoch {pairs[:, 0].min()} is negative")
            epochs, ids = pairs[:, 0] % self.store.num_epochs, pairs[:, 1]
        else:
            ids = np.asarray(indices, dtype=np.int64).reshape(-1)
            epochs = np.full(len(ids), self._epoch, np.int64)
        n = len(self)
        too_low = np.flatnonzero(ids < -n)
        if len(too_low):
            row = int(too_low[0])
            raise IndexError(f"{self.store.path}: sample id {ids[row]} (row {row}) out of range [-{n}, {n})")
        return epochs, np.where(ids < 0, ids + n, ids)

    def _decode(self, epoch: int, ids: np.ndarray) -> dict[str, torch.Tensor]:
        if self.sparse:
            values, indices, tail, seeds = _targets.sparse(self.store, epoch, ids, self.tail)
            arrays = {"values": values, "indices": indices, "tail": tail}
        elif self.tail == "zero":
            targets, seeds = self.store.dense(epoch, ids, self.fill)
            arrays = {"targets": targets}
        else:
            targets, seeds = _targets.dense(self.store, epoch, ids, self.tail)
            arrays = {"targets": targets}
        return {name: torch.from_numpy(a) for name, a in {"ids": ids, **arrays, "seeds": seeds}.items()}


def _tail_column(tail, logits: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(tail, dtype=logits.dtype, device=logits.device).expand(logits.shape[0]).unsqueeze(1)


def _target_dot(scores: torch.Tensor, values: torch.Tensor, indices: torch.Tensor, tail: torch.Tensor) -> torch.Tensor:
    """Σ_c target[b, c]·scores[b, c] per row for the sparse target (values at indices, tail elsewhere)."""
    at_topk = scores.gather(1, indices)
    return tail[:, 0] * scores.sum(1) + ((values - tail) * at_topk).sum(1)


def sparse_bce_with_logits(logits: torch.Tensor, values: torch.Tensor, indices: torch.Tensor,
                           tail=0.0) -> torch.Tensor:
    """Mean binary cross-entropy of sigmoid(logits) against a sparse target, as
    ``F.binary_cross_entropy_with_logits(logits, dense_target)`` without building the target.

    Args:
        logits: float [B, C] student logits.
        values, indices, tail: a sparse batch's "values" [B, K], "indices" [B, K], "tail" [B]
            (or a number), from TargetDataset(sparse=True) or cedstore.targets.sparse.

    Example:
        >>> loss = sparse_bce_with_logits(model(x), batch["values"], batch["indices"], batch["tail"])
    """
    tail = _tail_column(tail, logits)
    values = values.to(logits.dtype)
    per_row = F.softplus(logits).sum(1) - _target_dot(logits, values, indices, tail)
    return per_row.sum() / logits.numel()


def sparse_cross_entropy(logits: torch.Tensor, values: torch.Tensor, indices: torch.Tensor,
                         tail=0.0) -> torch.Tensor:
    """Mean over rows of ``-Σ_c target·log_softmax(logits)``, as ``F.cross_entropy(logits,
    dense_target)`` with probability targets, without building the target.

    Divide ``logits`` by the store's temperature (cedstore.targets.temperature) first when the
    teacher's probabilities were stored at one. Arguments as sparse_bce_with_logits.
    """
    log_q = F.log_softmax(logits, dim=1)
    return -_target_dot(log_q, values.to(log_q.dtype), indices, _tail_column(tail, log_q)).mean()


def sparse_kl_div(logits: torch.Tensor, values: torch.Tensor, indices: torch.Tensor,
                  tail=0.0) -> torch.Tensor:
    """KL(target ‖ softmax(logits)) summed over classes, averaged over rows: as
    ``F.kl_div(F.log_softmax(logits, 1), dense_target, reduction="batchmean")`` without
    building the target. The tail classes contribute ``(C - K)·tail·log(tail)`` to the
    target's entropy. Arguments as sparse_bce_with_logits.

    Example:
        >>> loss = sparse_kl_div(student(x) / T, b["values"], b["indices"], b["tail"]) * T**2
    """
    log_q = F.log_softmax(logits, dim=1)
    values = values.to(log_q.dtype)
    tail = _tail_column(tail, log_q)
    num_tail = logits.shape[1] - values.shape[1]
    entropy = torch.xlogy(values, values).sum(1) + num_tail * torch.xlogy(tail[:, 0], tail[:, 0])
    return (entropy - _target_dot(log_q, values, indices, tail)).mean()
