"""Moved to :mod:`diffvqa.report.drawing`; this module re-exports it."""

from diffvqa.report.drawing import (
    CONTOUR_COLOR,
    INFERNO_STOPS,
    apply_colormap,
    colorbar,
    heat_overlay,
    mask_contour_overlay,
    mask_outline,
    panel,
    resize_array,
    to_rgb,
    to_uint8,
)

__all__ = [
    "CONTOUR_COLOR",
    "INFERNO_STOPS",
    "apply_colormap",
    "colorbar",
    "heat_overlay",
    "mask_contour_overlay",
    "mask_outline",
    "panel",
    "resize_array",
    "to_rgb",
    "to_uint8",
]
