"""Moved to :mod:`diffvqa.metrics.pointing`; this module re-exports it."""

from diffvqa.metrics.pointing import (
    TIE_TOLERANCE,
    area_shares,
    best_fixed_point,
    fixed_point_hits,
    grid_ceiling,
    keyword_conditioning,
    pointing_scores,
    separated_regions,
)

__all__ = [
    "TIE_TOLERANCE",
    "area_shares",
    "best_fixed_point",
    "fixed_point_hits",
    "grid_ceiling",
    "keyword_conditioning",
    "pointing_scores",
    "separated_regions",
]
