"""Bootstrap confidence intervals for the comparisons diffvqa reports (pure numpy; no torch, no Java).

One evaluation is a sample of questions and one training run a sample of seeds: a difference between two
numbers means something only beside an interval that says how much it would move with other questions and other
seeds. Three resampling schemes cover what the project compares:

* :func:`paired_interval` — two scores of the *same* questions (final vs preliminary answer of one run): resample
  questions, keep each question's pair together.
* :func:`clustered_interval` — scores that come in correlated groups (keyword conditioning: several ordered pairs
  per answer): resample the groups whole.
* :func:`seeds_and_questions_interval` — a per-seed, per-question difference between two variants (or two passes)
  trained with the same seeds and evaluated on the same questions: each resample draws seeds with replacement and,
  independently, questions with replacement (the same questions for every drawn seed), so the interval carries
  both the training randomness and the question sample. With 3 seeds the seed part is coarse; the per-seed means
  are reported beside it.

All are percentile intervals (2.5 % and 97.5 % of the resampled means at ``level`` 0.95) from a fixed seed, so a
rerun on the same numbers gives the same interval.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

RESAMPLES = 2000


@dataclass(frozen=True)
class Interval:
    estimate: float  # the statistic on the data as observed (a mean, or a mean difference)
    low: float
    high: float
    level: float  # 0.95: a 95 % interval
    n: int  # questions (or groups) resampled
    resamples: int

    def excludes(self, value: float = 0.0) -> bool:
        """Does the interval lie wholly above or below ``value``?"""
        return self.low > value or self.high < value

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def _percentiles(means: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def _check_level(level: float, resamples: int) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level={level}: expected a value in (0, 1)")
    if resamples < 1:
        raise ValueError(f"resamples={resamples}: expected >= 1")


def paired_interval(
    a: Sequence[float], b: Sequence[float], *, level: float = 0.95, resamples: int = RESAMPLES, seed: int = 0
) -> Interval:
    """Interval of mean(a − b) over questions, where a[i] and b[i] belong to question i."""
    _check_level(level, resamples)
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"paired_interval needs two equally long, non-empty lists (got {a.shape} and {b.shape})")
    diff = a - b
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(diff), size=(resamples, len(diff)))
    low, high = _percentiles(diff[draws].mean(axis=1), level)
    return Interval(float(diff.mean()), low, high, level, len(diff), resamples)


def clustered_interval(
    groups: Sequence[Sequence[float]], *, level: float = 0.95, resamples: int = RESAMPLES, seed: int = 0
) -> Interval:
    """Interval of the mean over every score of every group, resampling whole groups (empty groups dropped)."""
    _check_level(level, resamples)
    groups = [np.asarray(g, dtype=float) for g in groups if len(g)]
    if not groups:
        raise ValueError("clustered_interval needs at least one non-empty group")
    sums = np.array([g.sum() for g in groups])
    counts = np.array([len(g) for g in groups])
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(groups), size=(resamples, len(groups)))
    means = sums[draws].sum(axis=1) / counts[draws].sum(axis=1)
    low, high = _percentiles(means, level)
    return Interval(float(sums.sum() / counts.sum()), low, high, level, len(groups), resamples)


def seeds_and_questions_interval(
    differences: np.ndarray | Sequence[Sequence[float]],
    *,
    level: float = 0.95,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> Interval:
    """Interval of the mean of a (seeds, questions) array of paired differences, resampling seeds and questions.

    ``differences[s, q]`` compares two things evaluated on question q, both trained with seed s (e.g. variant A
    seed s minus variant B seed s, or run s's final minus its preliminary answer). ``n`` counts questions.
    """
    _check_level(level, resamples)
    d = np.asarray(differences, dtype=float)
    if d.ndim != 2 or d.shape[0] == 0 or d.shape[1] == 0:
        raise ValueError(f"seeds_and_questions_interval needs a non-empty (seeds, questions) array, got {d.shape}")
    seeds, questions = d.shape
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for r in range(resamples):
        rows = rng.integers(0, seeds, size=seeds)
        cols = rng.integers(0, questions, size=questions)
        means[r] = d[np.ix_(rows, cols)].mean()
    low, high = _percentiles(means, level)
    return Interval(float(d.mean()), low, high, level, questions, resamples)
