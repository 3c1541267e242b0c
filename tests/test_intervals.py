"""Bootstrap intervals (diffvqa.metrics.intervals): coverage on data with a known mean, pairing, clustering, seeds."""

import numpy as np
import pytest

from diffvqa.metrics.intervals import clustered_interval, paired_interval, seeds_and_questions_interval


def test_paired_interval_covers_the_true_difference_at_about_its_level():
    """Differences drawn with a known mean: the 95 % interval holds it in about 95 % of 200 samples."""
    rng = np.random.default_rng(1)
    hits = 0
    for k in range(200):
        a = rng.normal(1.0, 1.0, 150)
        b = a - rng.normal(0.2, 0.5, 150)  # the true mean of a - b is 0.2
        interval = paired_interval(a, b, resamples=500, seed=k)
        hits += interval.low <= 0.2 <= interval.high
        assert interval.low <= interval.estimate <= interval.high
    assert 0.88 <= hits / 200 <= 0.99


def test_pairing_narrows_the_interval_when_questions_vary_more_than_the_passes():
    rng = np.random.default_rng(0)
    question = rng.normal(0, 2.0, 300)  # questions differ a lot; the two passes differ little
    a, b = question + 0.1 + rng.normal(0, 0.1, 300), question + rng.normal(0, 0.1, 300)
    paired = paired_interval(a, b)
    assert paired.excludes(0.0) and paired.high - paired.low < 0.1
    unpaired = paired_interval(a, np.full(300, b.mean()))  # the same mean difference, pairs broken
    assert not unpaired.excludes(0.0)


def test_an_interval_is_reproducible_and_rejects_bad_input():
    a, b = np.arange(10.0), np.arange(10.0)[::-1]
    assert paired_interval(a, b) == paired_interval(a, b)
    with pytest.raises(ValueError, match="equally long"):
        paired_interval(a, b[:5])
    with pytest.raises(ValueError, match="level"):
        paired_interval(a, b, level=1.5)
    with pytest.raises(ValueError, match="non-empty group"):
        clustered_interval([[], []])


def test_clustered_interval_resamples_whole_groups():
    """Groups of identical scores are one observation each: resampling the pairs alone would claim a far
    narrower interval than the number of independent groups allows."""
    groups = [[1.0] * 10, [0.0] * 10, [1.0] * 10, [0.0] * 10]
    clustered = clustered_interval(groups)
    assert clustered.estimate == 0.5 and clustered.n == 4
    flat = clustered_interval([[x] for g in groups for x in g])
    assert clustered.high - clustered.low > 2 * (flat.high - flat.low)


def test_seeds_and_questions_interval_carries_the_spread_between_seeds():
    """Three seeds that disagree (one below zero) cannot give an interval above zero however many questions
    there are; three that agree can."""
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 0.05, (3, 400))
    agree = np.array([[0.3], [0.25], [0.35]]) + noise
    disagree = np.array([[0.3], [-0.2], [0.35]]) + noise
    assert seeds_and_questions_interval(agree).low > 0
    interval = seeds_and_questions_interval(disagree)
    assert interval.low < 0 < interval.high and interval.n == 400
    assert interval.estimate == pytest.approx(disagree.mean())
