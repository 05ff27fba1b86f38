"""Average precision and mAP, equal to scikit-learn's ``average_precision_score``.

AP is the step-function area under the precision-recall curve evaluated at every *distinct*
score threshold: with the scores sorted in decreasing order, each positive contributes
``1/P`` times the precision at the end of its group of tied scores (``P`` = number of
positives). A class without positives has no AP (NaN); mAP is the mean over the classes that
have at least one positive.
"""

from __future__ import annotations

import numpy as np

__all__ = ["average_precision", "mean_average_precision"]


def _check(scores: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets)
    if scores.shape != targets.shape:
        raise ValueError(f"scores and targets differ in shape: {scores.shape} vs {targets.shape}")
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite; found NaN or Inf")
    if targets.dtype != bool and not np.isin(targets, (0, 1)).all():
        raise ValueError("targets must be binary (0/1 or bool)")
    return scores, targets.astype(np.float64)


def _ap_columns(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """AP of each column of ``[N, C]`` float64 arrays (NaN where a column has no positives)."""
    n = scores.shape[0]
    order = np.argsort(-scores, axis=0, kind="stable")
    s = np.take_along_axis(scores, order, axis=0)
    t = np.take_along_axis(targets, order, axis=0)
    tps = np.cumsum(t, axis=0)
    precision = tps / np.arange(1, n + 1, dtype=np.float64)[:, None]
    # Index of the last row of each run of equal scores: the threshold a tied row belongs to.
    is_end = np.ones_like(s, dtype=bool)
    is_end[:-1] = s[:-1] != s[1:]
    end = np.where(is_end, np.arange(n)[:, None], n)
    end = np.minimum.accumulate(end[::-1], axis=0)[::-1]
    precision_at_end = np.take_along_axis(precision, end, axis=0)
    num_pos = tps[-1] if n else np.zeros(scores.shape[1])
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = (t * precision_at_end).sum(axis=0) / num_pos
    return np.where(num_pos > 0, ap, np.nan)


def average_precision(scores, targets) -> float:
    """Average precision of one class, as ``sklearn.metrics.average_precision_score``.

    Args:
        scores: ``[N]`` finite scores, higher meaning more likely positive.
        targets: ``[N]`` binary labels (0/1 or bool).

    Returns:
        AP in ``[0, 1]``, or NaN when ``targets`` has no positive.

    Raises:
        ValueError: shapes differ, a score is not finite, or a target is not 0/1.

    Example:
        >>> average_precision([0.9, 0.8, 0.3], [1, 0, 1])
        0.8333333333333333
    """
    scores, targets = _check(scores, targets)
    if scores.ndim != 1:
        raise ValueError(f"expected 1-D scores, got shape {scores.shape}")
    return float(_ap_columns(scores[:, None], targets[:, None])[0])


def mean_average_precision(scores, targets) -> tuple[float, np.ndarray]:
    """Macro mAP over the classes with at least one positive, and the per-class APs.

    Args:
        scores: ``[N, C]`` finite scores (e.g. probabilities).
        targets: ``[N, C]`` binary multi-hot labels.

    Returns:
        ``(mAP, per_class_ap)``: ``per_class_ap`` is float64 ``[C]`` with NaN for classes
        without positives; ``mAP`` is their mean ignoring NaN (NaN if no class has a positive).

    Raises:
        ValueError: shapes differ or are not 2-D, a score is not finite, or a target is not 0/1.

    Example:
        >>> m, ap = mean_average_precision([[0.9, 0.1], [0.2, 0.7]], [[1, 0], [0, 0]])
        >>> m, ap.tolist()
        (1.0, [1.0, nan])
    """
    scores, targets = _check(scores, targets)
    if scores.ndim != 2:
        raise ValueError(f"expected [N, C] scores, got shape {scores.shape}")
    per_class = _ap_columns(scores, targets)
    valid = ~np.isnan(per_class)
    m = float(per_class[valid].mean()) if valid.any() else float("nan")
    return m, per_class
