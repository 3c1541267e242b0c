"""Area under the ROC curve per label, with a bootstrap interval over images (pure numpy).

AUROC = P(score of a random positive > score of a random negative), ties counting one half: the Mann-Whitney U
statistic divided by n_pos x n_neg, computed from average ranks. A label needs at least one positive and one
negative among the scored images; otherwise it has no AUROC (None). The interval resamples images with
replacement (percentile, fixed seed, resamples in which a class vanished are dropped).
"""

from __future__ import annotations

import numpy as np

from diffvqa.metrics.intervals import Interval, _percentiles

RESAMPLES = 1000


def _ranks(values: np.ndarray) -> np.ndarray:
    """Average ranks (1-based) of ``values``, ties sharing their mean rank."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    ranks = np.empty(len(values), dtype=float)
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    for start, end in zip(starts, ends, strict=True):
        ranks[order[start:end]] = (start + end + 1) / 2.0  # mean of ranks start+1 .. end
    return ranks


def auroc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """AUROC of ``scores`` (N,) for binary ``labels`` (N,) in {0, 1}; None without both classes."""
    scores, labels = np.asarray(scores, float), np.asarray(labels) > 0.5
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        return None
    ranks = _ranks(scores)
    u = ranks[labels].sum() - positives * (positives + 1) / 2.0
    return float(u / (positives * negatives))


def auroc_interval(
    scores: np.ndarray, labels: np.ndarray, *, level: float = 0.95, resamples: int = RESAMPLES, seed: int = 0
) -> Interval | None:
    """AUROC with a percentile bootstrap interval over images; None without both classes."""
    scores, labels = np.asarray(scores, float), np.asarray(labels, float)
    estimate = auroc(scores, labels)
    if estimate is None:
        return None
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        rows = rng.integers(0, len(scores), size=len(scores))
        value = auroc(scores[rows], labels[rows])
        if value is not None:
            values.append(value)
    low, high = _percentiles(np.asarray(values), level)
    return Interval(estimate, low, high, level, len(scores), len(values))
