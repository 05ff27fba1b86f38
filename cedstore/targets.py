"""Tail policies: what a record means for the classes outside its top-K (FORMAT.md, tail_policy).

A record keeps a teacher's K largest outputs. Every policy turns the top-K of a batch into a
target that is ``tail[b]`` for every class outside row b's top-K and ``values[b, j]`` at
``indices[b, j]``:

- ``zero``: the tail is 0 (the paper's choice; the only policy for sigmoid outputs).
- ``uniform``: softmax probabilities; the mass the top-K leaves, ``1 - sum(values)``, spread
  evenly over the other ``C - K`` classes (TinyViT's rule). Rows sum to 1.
- ``renormalize``: softmax probabilities; the top-K rescaled to sum to 1, the tail 0.

Policies are applied on request: ``Store.dense`` and ``Store.topk`` return what is stored.
``dense``, ``sparse`` and ``cedstore.torch.TargetDataset`` without ``tail=`` apply the policy
the store's writer recorded (metadata ``tail_policy``, ``zero`` when absent; see
``recorded_tail``). Numpy only, vectorised over the batch.

Example:
    >>> from cedstore import targets
    >>> dense, seeds = targets.dense(store, epoch, ids, tail="uniform")  # rows sum to 1
    >>> values, indices, tail, seeds = targets.sparse(store, epoch, ids, tail="uniform")
"""

from __future__ import annotations

import numbers

import numpy as np

from cedstore.errors import InvalidInputError

TAIL_POLICIES = ("zero", "uniform", "renormalize")
_SOFTMAX_ONLY = ("uniform", "renormalize")


def check_tail(store, tail: str) -> str:
    """Refuse a tail policy that is unknown or makes no sense for `store`; return it.

    ``uniform`` and ``renormalize`` need softmax probabilities: the store's metadata must say
    ``"activation": "softmax"`` and its value_kind must be ``probability``.

    Raises:
        InvalidInputError: naming the store, the policy and what it needs.
    """
    return _check_fits(store.path, tail, store.metadata, store.value_kind, "use tail='zero'")


def check_tail_metadata(path: str, metadata: dict | None, value_kind: str) -> None:
    """At create: a ``tail_policy`` in the metadata must be one cedstore knows and that fits the
    store (the rules of check_tail), so that no store records a policy no reader can apply.

    Raises:
        InvalidInputError: naming the file, the policy and what it needs.
    """
    if metadata and "tail_policy" in metadata:
        _check_fits(path, metadata["tail_policy"], metadata, value_kind, "record 'tail_policy': 'zero'")


def _check_fits(path: str, tail: str, metadata: dict, value_kind: str, fix: str) -> str:
    if tail not in TAIL_POLICIES:
        raise InvalidInputError(f"{path}: unknown tail policy {tail!r}: expected one of {', '.join(TAIL_POLICIES)}")
    if tail in _SOFTMAX_ONLY:
        activation = metadata.get("activation")
        if activation != "softmax" or value_kind != "probability":
            found = f"activation {activation!r}" if activation else "no 'activation' in its metadata"
            raise InvalidInputError(
                f"{path}: tail policy {tail!r} needs softmax probabilities (metadata "
                f"activation 'softmax', value_kind 'probability'); the store has {found} and "
                f"value_kind {value_kind!r}: {fix}"
            )
    return tail


def recorded_tail(store) -> str:
    """The policy the store's writer recorded: metadata ``tail_policy``, ``zero`` when absent,
    checked against the store like a requested one.

    Raises:
        InvalidInputError: a recorded policy this cedstore does not know (FORMAT.md: never
            applied silently), or one that does not fit the store (see check_tail).

    Example:
        >>> targets.recorded_tail(cedstore.open("teacher.ced"))
        'zero'
    """
    tail = store.metadata.get("tail_policy", "zero")
    if tail not in TAIL_POLICIES:
        raise InvalidInputError(
            f"{store.path}: the store records tail_policy {tail!r}, which this cedstore does not know "
            f"(it knows {', '.join(TAIL_POLICIES)}): name one of them explicitly"
        )
    return check_tail(store, tail)


def resolve_tail(store, tail: str | None) -> str:
    """``tail`` checked against the store (check_tail), or the recorded policy when ``tail`` is None."""
    return recorded_tail(store) if tail is None else check_tail(store, tail)


def temperature(store) -> float:
    """The softmax temperature the teacher's outputs were stored at: metadata ``temperature``, 1.0 if absent.

    Raises:
        InvalidInputError: the key is not a positive number.
    """
    value = store.metadata.get("temperature", 1.0)
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
        raise InvalidInputError(f"{store.path}: metadata 'temperature' must be a positive number, found {value!r}")
    return float(value)


def apply_tail(values: np.ndarray, num_classes: int, tail: str) -> tuple[np.ndarray, np.ndarray]:
    """Apply a policy to top-K values: (values float32 [B, K], tail float32 [B]).

    The tail is the value of each of the ``num_classes - K`` classes outside a row's top-K.
    ``uniform`` clips the left-over mass at 0 (fp16 rounding can push a top-K sum past 1).
    """
    values = np.asarray(values, np.float32)
    num_rows, k = values.shape
    fill = np.zeros(num_rows, np.float32)
    if tail == "uniform" and num_classes > k:
        fill = np.maximum(np.float32(1) - values.sum(axis=1, dtype=np.float32), 0) / np.float32(num_classes - k)
    elif tail == "renormalize":
        total = values.sum(axis=1, dtype=np.float32, keepdims=True)
        values = np.divide(values, total, out=np.zeros_like(values), where=total > 0)
    elif tail not in TAIL_POLICIES:
        raise InvalidInputError(f"unknown tail policy {tail!r}: expected one of {', '.join(TAIL_POLICIES)}")
    return values, fill.astype(np.float32)


def sparse(store, epoch: int, sample_ids, tail: str | None = None):
    """Top-K with a tail policy applied (None: the recorded one), without densifying.

    Returns:
        (values float32 [B, K], indices int64 [B, K], tail float32 [B], seeds int32 [B]): the
        target of row b is ``tail[b]`` outside ``indices[b]`` and ``values[b, j]`` at ``indices[b, j]``.

    Raises:
        InvalidInputError: see check_tail and recorded_tail; and the errors of Store.topk.
    """
    tail = resolve_tail(store, tail)
    values, indices, seeds = store.topk(epoch, sample_ids)
    values, fill = apply_tail(values, store.num_classes, tail)
    return values, indices, fill, seeds


def densify(values: np.ndarray, indices: np.ndarray, tail: np.ndarray, num_classes: int,
            out: np.ndarray | None = None) -> np.ndarray:
    """Dense float32 [B, C] targets from (values, indices, tail), as sparse() returns them."""
    shape = (len(values), num_classes)
    if out is None:
        out = np.empty(shape, np.float32)
    elif not (isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == shape and out.flags.writeable):
        raise InvalidInputError(f"out must be a writable float32 array of shape {list(shape)}, "
                                f"found {getattr(out, 'dtype', type(out).__name__)} {list(np.shape(out))}")
    out[:] = np.asarray(tail, np.float32)[:, None]
    np.put_along_axis(out, np.asarray(indices, np.int64), np.asarray(values, np.float32), axis=1)
    return out


def dense(store, epoch: int, sample_ids, tail: str | None = None, out: np.ndarray | None = None):
    """Dense targets with a tail policy applied (None: the recorded one): (targets float32
    [B, C], seeds int32 [B]).

    ``tail="zero"`` is ``store.dense(epoch, sample_ids)``.

    Raises:
        InvalidInputError: see check_tail and recorded_tail; and the errors of Store.dense.

    Example:
        >>> targets, seeds = cedstore.targets.dense(store, epoch % store.num_epochs, ids, tail="uniform")
    """
    tail = resolve_tail(store, tail)
    if tail == "zero":
        return store.dense(epoch, sample_ids, 0.0, out)
    values, indices, fill, seeds = sparse(store, epoch, sample_ids, tail)
    return densify(values, indices, fill, store.num_classes, out), seeds
