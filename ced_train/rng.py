"""The random generator we own: SplitMix64, bounded draws, ``seed_for`` and every derived stream.

Everything random in ced_train comes from here, as a pure function of integers, so that it is
the same on any machine, device, process or library version (docs/AUGMENTATION.md specifies
the generator and ``seed_for``):

- ``seed_for(base_seed, epoch, sample_index)``: the augmentation seed of a stored record;
- :func:`draw` / :func:`uniform_int`: a seed's stream of parameters (used by ``Recipe``);
- :func:`stream_seed`: one seed per (run seed, epoch, purpose) for the training streams:
  :func:`training_permutation` (batch order), :func:`fresh_seeds` (augmentation seeds the
  teacher never saw) and :func:`mixup_generator` (mixup's λ draws).

Example:
    >>> hex(splitmix64(0))
    '0xe220a8397b1dcdaf'
    >>> seed_for(0, 0, np.arange(3))
    array([-507137767,  807331199, 1617244718], dtype=int32)
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = [
    "GOLDEN_GAMMA", "STREAM_FRESH", "STREAM_MIXUP", "STREAM_ORDER", "draw", "fresh_seeds",
    "mixup_generator", "seed_for", "splitmix64", "stream_seed", "training_permutation",
    "uniform_int",
]

GOLDEN_GAMMA = np.uint64(0x9E3779B97F4A7C15)  # SplitMix64 state increment
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_MASK32 = np.uint64(0xFFFFFFFF)

# The training streams of one (seed, epoch): independent, one per purpose.
STREAM_ORDER, STREAM_MIXUP, STREAM_FRESH = range(3)


def splitmix64(state) -> np.ndarray:
    """Return the SplitMix64 output for each uint64 ``state`` (vectorized, wraps mod 2**64).

    This is one step of Vigna's SplitMix64: ``z = state + 0x9E3779B97F4A7C15`` followed by the
    two xor-shift-multiply rounds. Feeding ``s, s + γ, s + 2γ, …`` gives the standard stream of
    a SplitMix64 generator whose state was set to ``s``.

    Args:
        state: integers castable to uint64 (an array or a scalar).

    Returns:
        uint64 array (or scalar) of the same shape.

    Example:
        >>> hex(splitmix64(0))
        '0xe220a8397b1dcdaf'
    """
    z = np.asarray(state, dtype=np.uint64)
    with np.errstate(over="ignore"):  # uint64 arithmetic is meant to wrap
        z = z + GOLDEN_GAMMA
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
        return z ^ (z >> np.uint64(31))


def draw(seeds: np.ndarray, j: int) -> np.ndarray:
    """Draw ``j`` (0-based) of each uint64 seed's stream: ``splitmix64(seed + j * γ)``.

    Example:
        >>> hex(draw(np.uint64(0), 1))
        '0x6e789e6aa1b965f4'
    """
    with np.errstate(over="ignore"):
        return splitmix64(seeds + np.uint64(j) * GOLDEN_GAMMA)


def uniform_int(draws: np.ndarray, n) -> np.ndarray:
    """Map uint64 draws to integers in [0, n): ``((draw >> 32) * n) >> 32`` (exact for n <= 2**32).

    Example:
        >>> int(uniform_int(np.uint64(2**63), 10))
        5
    """
    return ((draws >> np.uint64(32)) * np.asarray(n, dtype=np.uint64)) >> np.uint64(32)


def _lowbias32(x: np.ndarray) -> np.ndarray:
    """A bijection on 32-bit integers (Wellons' lowbias32), in uint64 without wrapping."""
    x = x ^ (x >> np.uint64(16))
    x = (x * np.uint64(0x7FEB352D)) & _MASK32
    x = x ^ (x >> np.uint64(15))
    x = (x * np.uint64(0x846CA68B)) & _MASK32
    return x ^ (x >> np.uint64(16))


def _as_uint(values, bits: int, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype.kind not in "iu":
        raise ValueError(f"{name}: expected integers, got {arr.dtype} values")
    if arr.size and (arr.min() < 0 or (bits < 64 and arr.max() >= 2**bits)):
        raise ValueError(
            f"{name}: expected integers in [0, 2**{bits}), got range [{arr.min()}, {arr.max()}]"
        )
    return arr.astype(np.uint64)


def seed_for(base_seed, epoch, sample_index):
    """Return the augmentation seed of one sample in one extraction epoch, as int32.

    ``key = splitmix64(splitmix64(base_seed) ^ epoch) >> 32`` and
    ``seed = lowbias32(sample_index ^ key)``, read as signed int32. The result depends only on
    its three arguments (not on sharding or order), and within one (base_seed, epoch) distinct
    sample indices always get distinct seeds. Arguments broadcast like numpy arrays.

    Args:
        base_seed: run seed, integer(s) in [0, 2**64).
        epoch: extraction epoch, integer(s) in [0, 2**64).
        sample_index: sample index, integer(s) in [0, 2**32).

    Returns:
        ``np.int32`` for scalar arguments, else an int32 array of the broadcast shape.

    Raises:
        ValueError: for non-integer or out-of-range arguments.

    Example:
        >>> seed_for(0, 0, np.arange(3))
        array([-507137767,  807331199, 1617244718], dtype=int32)
    """
    base = _as_uint(base_seed, 64, "base_seed")
    epoch = _as_uint(epoch, 64, "epoch")
    index = _as_uint(sample_index, 32, "sample_index")
    key = splitmix64(splitmix64(base) ^ epoch) >> np.uint64(32)
    seeds = _lowbias32(index ^ key).astype(np.uint32).view(np.int32)
    return seeds[()] if seeds.ndim == 0 else seeds


# ---- the training streams ------------------------------------------------------------------


def stream_seed(seed: int, epoch: int, stream: int) -> int:
    """A 63-bit seed for one random stream of one training epoch.

    ``splitmix64(splitmix64(seed) ^ (3 * epoch + stream)) >> 1``, with ``stream`` one of
    ``STREAM_ORDER``, ``STREAM_MIXUP``, ``STREAM_FRESH``: independent streams per purpose, so
    that turning mixup on does not change the batch order.

    Example:
        >>> stream_seed(0, 0, STREAM_ORDER) != stream_seed(0, 0, STREAM_MIXUP)
        True
    """
    return int(splitmix64(splitmix64(np.uint64(seed)) ^ np.uint64(3 * epoch + stream))) >> 1


def training_permutation(num_items: int, seed: int, epoch: int) -> np.ndarray:
    """The seeded permutation of ``range(num_items)`` that orders training epoch ``epoch``.

    Example:
        >>> sorted(training_permutation(5, seed=0, epoch=0).tolist())
        [0, 1, 2, 3, 4]
    """
    generator = torch.Generator().manual_seed(stream_seed(seed, epoch, STREAM_ORDER))
    return torch.randperm(num_items, generator=generator).numpy()


def fresh_seeds(num_items: int, seed: int, epoch: int) -> np.ndarray:
    """int32 [num_items] augmentation seeds the teacher never saw, one per item and epoch
    (student augmentation ``"fresh"``).

    Example:
        >>> fresh_seeds(3, seed=0, epoch=0).dtype
        dtype('int32')
    """
    generator = torch.Generator().manual_seed(stream_seed(seed, epoch, STREAM_FRESH))
    draws = torch.randint(-(2**31), 2**31, (num_items,), dtype=torch.int64, generator=generator)
    return draws.numpy().astype(np.int32)


def mixup_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator of training epoch ``epoch``'s mixup draws (``ced_train.mixup.mixup``).

    Example:
        >>> x, lam = mixup(batch, 0.5, mixup_generator(seed=0, epoch=3))  # doctest: +SKIP
    """
    return torch.Generator().manual_seed(stream_seed(seed, epoch, STREAM_MIXUP))
