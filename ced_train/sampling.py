"""Which records share a batch, and loading the next batch while this one is computed.

One rule everywhere a model sees audio without being trained on it (extraction, the store check,
evaluation, the consistent input): only chunks of the same length share a batch, so no chunk is
ever computed with another's zero padding (:func:`length_groups`). Training batches are a seeded
permutation per epoch (:func:`epoch_order`, from ``ced_train.rng``), cut into consecutive batches.

Example:
    >>> [g.tolist() for g in length_groups(np.array([5, 3, 5, 4]))]
    [[1], [3], [0, 2]]
    >>> [b.tolist() for b in batches(np.arange(5), 2)]
    [[0, 1], [2, 3], [4]]
"""

from __future__ import annotations

import concurrent.futures
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np

from ced_train.rng import training_permutation

__all__ = ["ExtractionPlan", "batches", "epoch_order", "equal_length_batches", "length_groups",
           "prefetch"]

T = TypeVar("T")
R = TypeVar("R")


def length_groups(lengths) -> list[np.ndarray]:
    """Positions of ``lengths`` grouped by value: shortest group first, positions ascending.

    Example:
        >>> [g.tolist() for g in length_groups([7, 7, 2])]
        [[2], [0, 1]]
    """
    lengths = np.asarray(lengths)
    if not len(lengths):
        return []
    order = np.argsort(lengths, kind="stable")
    return np.split(order, np.flatnonzero(np.diff(lengths[order])) + 1)


def batches(ids: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """``ids`` cut into consecutive batches of ``batch_size`` (the last one may be shorter).

    Example:
        >>> [b.tolist() for b in batches(np.arange(3), 2)]
        [[0, 1], [2]]
    """
    return [ids[lo : lo + batch_size] for lo in range(0, len(ids), batch_size)]


def equal_length_batches(lengths, batch_size: int) -> list[np.ndarray]:
    """Batches of positions of ``lengths``, each of one length: every length group cut into
    consecutive batches (shortest first).

    Example:
        >>> [b.tolist() for b in equal_length_batches([5, 3, 5, 5], 2)]
        [[1], [0, 2], [3]]
    """
    return [batch for group in length_groups(lengths) for batch in batches(group, batch_size)]


def epoch_order(num_items: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1) -> np.ndarray:
    """This process's positions of training epoch ``epoch``: a seeded permutation, rank's slice.

    The permutation depends only on (seed, epoch, num_items) (``ced_train.rng``); it is cut to
    a multiple of ``world_size`` so every rank takes the same number of steps, then dealt
    round-robin.

    Example:
        >>> sorted(epoch_order(5, seed=0, epoch=0).tolist())
        [0, 1, 2, 3, 4]
    """
    order = training_permutation(num_items, seed, epoch)
    usable = num_items - num_items % world_size
    return order[rank:usable:world_size]


class ExtractionPlan:
    """The global batches of an extraction: records grouped by chunk length (shortest first),
    epoch-major then by chunk id within a group, each group cut into batches of ``batch_size``.

    With equal-length chunks this is simply record ``g = e·N + i`` cut into batches. Batch
    ``b`` always holds the same records, whatever the number of processes or interruptions.

    Example:
        >>> plan = ExtractionPlan(np.array([5, 3, 5]), num_epochs=2, batch_size=2)
        >>> [ids.tolist() for ids in plan.records(0)]   # (epoch ids, chunk ids)
        [[0, 1], [1, 1]]
    """

    def __init__(self, lengths: np.ndarray, num_epochs: int, batch_size: int) -> None:
        self.groups = length_groups(lengths)
        self.num_epochs, self.batch_size = num_epochs, batch_size
        records = np.array([num_epochs * len(group) for group in self.groups])
        counts = -(-records // batch_size)  # batches per group
        self.first = np.concatenate([[0], np.cumsum(counts)])  # first batch of each group
        self.num_batches = int(self.first[-1])
        self.sizes = np.full(self.num_batches, batch_size)
        self.sizes[self.first[1:] - 1] = records - (counts - 1) * batch_size  # each group's last

    def records(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        """(epoch ids, chunk ids) of batch ``b``."""
        g = int(np.searchsorted(self.first, b, side="right")) - 1
        group = self.groups[g]
        start = (b - int(self.first[g])) * self.batch_size
        position = np.arange(start, start + int(self.sizes[b]))
        return position // len(group), group[position % len(group)]

    def done(self, written: np.ndarray) -> np.ndarray:
        """bool [num_batches]: batches whose records are all written (``written``: [E, N])."""
        out = []
        for group, first, last in zip(self.groups, self.first[:-1], self.first[1:]):
            flags = np.ones((last - first) * self.batch_size, dtype=bool)  # the tail counts as done
            flags[: self.num_epochs * len(group)] = written[:, group].reshape(-1)
            out.append(flags.reshape(-1, self.batch_size).all(axis=1))
        return np.concatenate(out)


def prefetch(fn: Callable[[T], R], items: Sequence[T] | Iterable[T]) -> Iterator[R]:
    """Yield ``fn(item)`` for each item in order, computing the next one in a background thread
    (audio decoding releases the GIL, so loading batch n+1 overlaps computing batch n).

    Example:
        >>> list(prefetch(lambda x: x * x, [1, 2, 3]))
        [1, 4, 9]
    """
    items = list(items)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(fn, items[0]) if items else None
        for i in range(len(items)):
            result = pending.result()
            pending = pool.submit(fn, items[i + 1]) if i + 1 < len(items) else None
            yield result
