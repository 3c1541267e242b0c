"""What the readers of the two box datasets share (:mod:`diffvqa.data.chest_imagenome`, :mod:`diffvqa.data.ms_cxr`):
a tally of what they skipped, by reason, with the first example of each, and the check of one box against its image.

Both datasets are large and a little ragged (boxes reaching past the image, zero-area boxes, files cut short), so a
reader never stops at a bad entry: it counts it under a reason, keeps the first place it saw it (file, row or
member, value) for the report, and goes on. Nothing but the bad entry is lost.

Box convention: ``(x1, y1, x2, y2)`` in an image's original pixel coordinates (x right, y down, pixel centres at
integers, as everywhere in diffvqa: :mod:`diffvqa.data.images`), x1 <= x2 and y1 <= y2; the box covers
[x1, x2] x [y1, y2], and an image of W x H pixels holds boxes within [0, W] x [0, H] (both datasets let a box end on
the image's far edge; the half pixel this differs from the pixel-centre frame is nothing at 2,500 pixels).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

Box = tuple[float, float, float, float]  # (x1, y1, x2, y2), original pixels

# reason -> what it means and what the reader did (the report prints these beside the counts)
SKIP_HELP = {
    "invalid_json": "a scene graph that is not valid JSON: that file is skipped",
    "missing_field": "a scene graph, box or comparison without a field the reader needs: that entry is skipped",
    "unknown_region": "a region name that is none of Chest ImaGenome's 36: that box or comparison is skipped",
    "not_a_number": "a coordinate or image size that is not a positive number: that box is skipped",
    "box_clamped": "a box reaching outside its image: clamped to the image and kept",
    "box_zero_area": "a box with no area inside its image: dropped",
    "missing_column": "a CSV without a column the reader needs: that file is skipped, the others are read",
    "unknown_category": "an MS-CXR category that is none of its 8 findings: that row is skipped",
    "prior_not_reference": "a comparison whose prior image is not the Medical-Diff-VQA pair's reference image: "
    "not scored",
    "no_reference_box": "a changed region that the pair's reference image has no box for: not scored",
}


@dataclass
class Skips:
    """Counts of skipped entries by reason (:data:`SKIP_HELP`), with the first example of each."""

    counts: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)

    def add(self, reason: str, where: str, count: int = 1) -> None:
        """Count ``count`` entries skipped for ``reason``; ``where`` names the first (file, row or member, value)."""
        if reason not in SKIP_HELP:
            raise ValueError(f"unknown skip reason {reason!r}; expected one of {sorted(SKIP_HELP)}")
        self.counts[reason] += count
        self.examples.setdefault(reason, where)

    def update(self, other: Skips) -> None:
        for reason, count in other.counts.items():
            self.add(reason, other.examples[reason], count)

    def to_dict(self) -> dict:
        return {
            reason: {"count": self.counts[reason], "first": self.examples[reason], "meaning": SKIP_HELP[reason]}
            for reason in SKIP_HELP
            if self.counts[reason]
        }


def positive_number(value) -> float | None:
    """A finite number > 0, else None (a string holding one counts)."""
    number = number_or_none(value)
    return number if number is not None and number > 0 else None


def number_or_none(value) -> float | None:
    """A finite number, else None (a string holding one counts; a bool does not)."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def checked_box(box: Box, width: float, height: float, where: str, skips: Skips) -> Box | None:
    """``box`` clamped to its ``width`` x ``height`` image (counted as ``box_clamped``), or None when no area is
    left (counted as ``box_zero_area``). Reversed corners are put in order first."""
    x1, x2 = sorted((box[0], box[2]))
    y1, y2 = sorted((box[1], box[3]))
    # the datasets give boxes in [0, width] x [0, height] (a box may end on the image's last edge)
    cx1, cy1 = max(x1, 0.0), max(y1, 0.0)
    cx2, cy2 = min(x2, float(width)), min(y2, float(height))
    if cx2 <= cx1 or cy2 <= cy1:
        skips.add("box_zero_area", where)
        return None
    if (cx1, cy1, cx2, cy2) != (x1, y1, x2, y2):
        skips.add("box_clamped", where)
    return cx1, cy1, cx2, cy2
