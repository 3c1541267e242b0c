"""One small JPEG strip per evaluated question: the seven pictures the viewer's detail view shows.

Panels, left to right, each ``panel`` x ``panel`` pixels: main, reference, main aligned to the reference,
|aligned − reference| (×2, clipped), Grad-CAM on the aligned main, Grad-CAM on the reference, the shared mask M
on the reference with the true change outlined in green (phantom only). A single-pass evaluation has no CAMs or
mask: those panels are flat gray. One file per question keeps the viewer lazy (a page loads only the strips it
shows) and the budget small: at 96-pixel panels a strip is a few kB, so 16,389 questions fit well under 300 MB.

:class:`StripWriter` is called by ``evaluate`` once per batch with the batch and the two-pass result; it works on
the whole batch at once (one resize, one colour lookup) and only the JPEG encoding is per question.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from diffvqa.visualize import CONTOUR_COLOR, apply_colormap, mask_outline

IMAGES_DIR = "img"
PANELS = (
    ("main", "main (current)"),
    ("ref", "reference (prior)"),
    ("aligned", "main aligned to reference"),
    ("difference", "|aligned − reference| ×2"),
    ("cam_main", "Grad-CAM, aligned main"),
    ("cam_ref", "Grad-CAM, reference"),
    ("mask", "shared mask M + true change (green)"),
)
DIFFERENCE_GAIN = 2.0  # differences between visits are faint; a fixed gain keeps strips comparable
HEAT_ALPHA = 0.45  # as visualize.heat_overlay
EMPTY_GRAY = 64  # a panel the evaluation has no picture for (single pass)


def strip_path(index: int) -> str:
    """Where question ``index`` (its line in predictions.jsonl) keeps its strip, relative to the viewer folder;
    1,000 files a folder."""
    return f"{IMAGES_DIR}/{index // 1000:03d}/{index:06d}.jpg"


def _resize(maps: torch.Tensor, size: int, mode: str) -> np.ndarray:
    """(B, 1, S, S) -> (B, size, size) float32 numpy."""
    maps = maps.detach().float().cpu()
    if maps.shape[-1] != size:
        kwargs = {"align_corners": False, "antialias": True} if mode == "bilinear" else {}
        maps = F.interpolate(maps, size=(size, size), mode=mode, **kwargs)
    return maps[:, 0].numpy()


def _gray_rgb(gray: np.ndarray) -> np.ndarray:
    """(B, H, W) in [0, 1] -> (B, H, W, 3) float."""
    return np.repeat(np.clip(gray, 0.0, 1.0)[..., None] * 255.0, 3, axis=-1)


def _heat(gray: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """Inferno heat over gray, as visualize.heat_overlay, for a batch: (B, H, W) x2 -> (B, H, W, 3) float."""
    return (1.0 - HEAT_ALPHA) * _gray_rgb(gray) + HEAT_ALPHA * apply_colormap(heat).astype(np.float64)


def render_strips(
    main: torch.Tensor,
    ref: torch.Tensor,
    aligned: torch.Tensor,
    cam_main: torch.Tensor | None,
    cam_ref: torch.Tensor | None,
    mask: torch.Tensor | None,
    change: torch.Tensor | None,
    panel: int = 96,
) -> np.ndarray:
    """The strips of a batch. Args: (B, 1, S, S) tensors in [0, 1] (``change`` bool-like; the maps None for a
    single pass). Returns (B, panel, 7·panel, 3) uint8."""
    b = main.shape[0]
    main_, ref_, aligned_ = (_resize(x, panel, "bilinear") for x in (main, ref, aligned))
    empty = np.full((b, panel, panel, 3), float(EMPTY_GRAY))
    columns = [_gray_rgb(main_), _gray_rgb(ref_), _gray_rgb(aligned_),
               _gray_rgb(np.abs(aligned_ - ref_) * DIFFERENCE_GAIN)]  # fmt: skip
    for heat, base in ((cam_main, aligned_), (cam_ref, ref_), (mask, ref_)):
        columns.append(empty if heat is None else _heat(base, _resize(heat, panel, "bilinear")))
    strips = np.clip(np.rint(np.concatenate(columns, axis=2)), 0, 255).astype(np.uint8)
    if change is not None:
        regions = _resize(change.float(), panel, "nearest") > 0.5
        thickness = max(1, panel // 64)
        for i in range(b):
            outline = mask_outline(regions[i], thickness)
            strips[i, :, 6 * panel : 7 * panel][outline] = CONTOUR_COLOR
    return strips


class StripWriter:
    """Writes the strips of every evaluated question under ``viewer_dir/img/`` as ``evaluate`` goes.

    Call it as ``writer(first_index, batch, result)`` with the collated batch (``main``, ``ref``, ``truth``) and
    the :class:`~diffvqa.saliency.guided.TwoPassResult`; ``seconds`` is the time spent here.
    """

    def __init__(self, viewer_dir: str | Path, panel: int = 96, quality: int = 80):
        if panel < 16 or not 1 <= quality <= 95:
            raise ValueError(f"StripWriter: panel={panel} must be >= 16 and quality={quality} in 1..95")
        self.viewer_dir = Path(viewer_dir)
        self.panel, self.quality = panel, quality
        self.seconds = 0.0
        self.count = 0
        shutil.rmtree(self.viewer_dir / IMAGES_DIR, ignore_errors=True)  # strips of an earlier evaluation here

    def __call__(self, first_index: int, batch: dict[str, Any], result: Any) -> None:
        tic = time.perf_counter()
        truth = batch.get("truth")
        strips = render_strips(batch["main"], batch["ref"], result.aligned_main, result.cam_main, result.cam_ref,
                               result.mask, None if truth is None else truth["change_mask"], self.panel)  # fmt: skip
        for i, strip in enumerate(strips):
            path = self.viewer_dir / strip_path(first_index + i)
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(strip, "RGB").save(path, quality=self.quality, optimize=False)
        self.count += len(strips)
        self.seconds += time.perf_counter() - tic
