"""Moved to :mod:`diffvqa.metrics.intervals`; this module re-exports it."""

from diffvqa.metrics.intervals import (
    RESAMPLES,
    Interval,
    clustered_interval,
    paired_interval,
    seeds_and_questions_interval,
)

__all__ = ["RESAMPLES", "Interval", "clustered_interval", "paired_interval", "seeds_and_questions_interval"]
