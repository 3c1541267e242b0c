"""One small JPEG strip per evaluated question: the seven pictures the viewer's detail view shows.

Panels, left to right, each ``panel`` x ``panel`` pixels: main, reference, main aligned to the reference,
|aligned − reference| (×2, clipped), Grad-CAM on the aligned main, Grad-CAM on the reference, the shared mask M
on the reference with the true change outlined in green (phantom only). When the cache has boxes
(:mod:`diffvqa.metrics.boxes`) they are drawn in cyan: the regions Chest ImaGenome marks changed over the mask, and
each image's MS-CXR boxes over its Grad-CAM. A single-pass evaluation has no CAMs or mask: those panels are flat
gray. One file per question keeps the viewer lazy (a page loads only the strips it
shows) and the budget small: at 96-pixel panels a strip is a few kB, so 16,389 questions fit well under 300 MB.

:class:`StripWriter` is called by ``evaluate`` once per batch with the batch and the two-pass result; it works on
the whole batch at once (one resize, one colour lookup) and only the JPEG encoding is per question.
"""

from __future__ import annotations

import queue
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from diffvqa.report.drawing import CONTOUR_COLOR, apply_colormap, draw_outlines, mask_outline

IMAGES_DIR = "img"
PANELS = (
    ("main", "main (current)"),
    ("ref", "reference (prior)"),
    ("aligned", "main aligned to reference"),
    ("difference", "|aligned − reference| ×2"),
    ("cam_main", "Grad-CAM, aligned main (+ MS-CXR boxes, cyan)"),
    ("cam_ref", "Grad-CAM, reference (+ MS-CXR boxes, cyan)"),
    ("mask", "shared mask M + true change (green), changed regions' boxes (cyan)"),
)
OUTLINED = {"cam_main": 4, "cam_ref": 5, "mask": 6}  # the panels boxes are drawn on
DIFFERENCE_GAIN = 2.0  # differences between visits are faint; a fixed gain keeps strips comparable
HEAT_ALPHA = 0.45  # as diffvqa.report.drawing.heat_overlay
EMPTY_GRAY = 64  # a panel the evaluation has no picture for (single pass)


def strip_path(index: int) -> str:
    """Where question ``index`` (its line in predictions.jsonl) keeps its strip, relative to the viewer folder;
    1,000 files a folder."""
    return f"{IMAGES_DIR}/{index // 1000:03d}/{index:06d}.jpg"


def _resize(maps: torch.Tensor, size: int) -> np.ndarray:
    """(B, C, S, S) -> (B, C, size, size) float32 numpy: area averaging when shrinking (cheap and alias-free),
    bilinear when enlarging (the tiny config's 64-pixel images)."""
    maps = maps.detach().float().cpu()
    if maps.shape[-1] > size:
        maps = F.interpolate(maps, size=(size, size), mode="area")
    elif maps.shape[-1] < size:
        maps = F.interpolate(maps, size=(size, size), mode="bilinear", align_corners=False)
    return maps.numpy()


def _gray_rgb(gray: np.ndarray) -> np.ndarray:
    """(B, H, W) in [0, 1] -> (B, H, W, 3) float32 in [0, 255]."""
    return np.repeat(np.clip(gray, 0.0, 1.0)[..., None] * np.float32(255.0), 3, axis=-1)


def _heat(gray: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """Inferno heat over gray, as report.drawing.heat_overlay, for a batch: (B, H, W) x2 -> (B, H, W, 3) float32."""
    colour = apply_colormap(heat).astype(np.float32)
    return np.float32(1.0 - HEAT_ALPHA) * _gray_rgb(gray) + np.float32(HEAT_ALPHA) * colour


def render_strips(
    main: torch.Tensor,
    ref: torch.Tensor,
    aligned: torch.Tensor,
    cam_main: torch.Tensor | None,
    cam_ref: torch.Tensor | None,
    mask: torch.Tensor | None,
    change: torch.Tensor | None,
    panel: int = 96,
    outlines: list[dict | None] | None = None,
) -> np.ndarray:
    """The strips of a batch. Args: (B, 1, S, S) tensors in [0, 1] (``change`` bool-like; the maps None for a
    single pass); ``outlines``: per question None or {"mask" | "cam_main" | "cam_ref": [corner lists in S x S
    pixels]} (:meth:`diffvqa.metrics.boxes.BoxTally.add`), drawn in cyan. Returns (B, panel, 7·panel, 3) uint8."""
    b = main.shape[0]
    main_, ref_, aligned_ = (_resize(x, panel)[:, 0] for x in (main, ref, aligned))
    heat = iter(_resize(m, panel)[:, 0] for m in (cam_main, cam_ref, mask) if m is not None)
    empty = np.full((b, panel, panel, 3), float(EMPTY_GRAY), dtype=np.float32)
    columns = [
        _gray_rgb(main_),
        _gray_rgb(ref_),
        _gray_rgb(aligned_),
        _gray_rgb(np.abs(aligned_ - ref_) * DIFFERENCE_GAIN),
    ]
    for given, base in ((cam_main, aligned_), (cam_ref, ref_), (mask, ref_)):
        columns.append(empty if given is None else _heat(base, next(heat)))
    strips = np.concatenate(columns, axis=2)
    np.rint(strips, out=strips)
    strips = strips.astype(np.uint8)  # values are already in [0, 255]
    if change is not None:
        regions = F.interpolate(change.detach().float().cpu(), size=(panel, panel), mode="nearest")[:, 0] > 0.5
        thickness = max(1, panel // 64)
        for i in range(b):
            outline = mask_outline(regions[i].numpy(), thickness)
            strips[i, :, 6 * panel : 7 * panel][outline] = CONTOUR_COLOR
    for i, drawn in enumerate(outlines or []):
        if not drawn:
            continue
        picture = Image.fromarray(strips[i], "RGB")
        for key, polygons in drawn.items():
            draw_outlines(picture, polygons, panel / main.shape[-1], (OUTLINED[key] * panel, 0), size=(panel, panel))
        strips[i] = np.asarray(picture)
    return strips


class StripWriter:
    """Writes the strips of every evaluated question under ``viewer_dir/img/`` as ``evaluate`` goes.

    Call it as ``writer(first_index, batch, result)`` with the collated batch (``main``, ``ref``, ``truth``) and
    the :class:`~diffvqa.saliency.guided.TwoPassResult`, then :meth:`close`. The call only copies the maps to the
    CPU; a worker thread renders and encodes them while the model answers the next batch (with a GPU the CPU is
    otherwise idle), at most two batches behind. ``seconds``: wall time the evaluation spent here (the calls and
    the wait in ``close``); ``worker_seconds``: the worker's own time.
    """

    def __init__(self, viewer_dir: str | Path, panel: int = 96, quality: int = 80):
        if panel < 16 or not 1 <= quality <= 95:
            raise ValueError(f"StripWriter: panel={panel} must be >= 16 and quality={quality} in 1..95")
        self.viewer_dir = Path(viewer_dir)
        self.panel, self.quality = panel, quality
        self.seconds = self.worker_seconds = 0.0
        self.count = 0
        self.error: BaseException | None = None
        shutil.rmtree(self.viewer_dir / IMAGES_DIR, ignore_errors=True)  # strips of an earlier evaluation here
        self._queue: queue.Queue = queue.Queue(maxsize=2)
        self._thread = threading.Thread(target=self._work, name="diffvqa-strips", daemon=True)
        self._thread.start()

    def __call__(self, first_index: int, batch: dict[str, Any], result: Any) -> None:
        tic = time.perf_counter()
        if self.error is not None:
            raise RuntimeError(f"writing the viewer's strips failed: {self.error}") from self.error
        truth = batch.get("truth")
        maps = (batch["main"], batch["ref"], result.aligned_main, result.cam_main, result.cam_ref, result.mask,
                None if truth is None else truth["change_mask"])  # fmt: skip
        maps = tuple(None if m is None else m.detach().to("cpu", torch.float32) for m in maps)
        self._queue.put((first_index, maps, batch.get("box_outlines")))
        self.seconds += time.perf_counter() - tic

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            if self.error is not None:
                continue  # drain, so that the evaluation never blocks on a full queue
            tic = time.perf_counter()
            try:
                first_index, maps, outlines = item
                for i, strip in enumerate(render_strips(*maps, panel=self.panel, outlines=outlines)):
                    path = self.viewer_dir / strip_path(first_index + i)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(strip, "RGB").save(path, quality=self.quality)
                    self.count += 1
            except Exception as exc:  # reported by the next call or by close()
                self.error = exc
            self.worker_seconds += time.perf_counter() - tic

    def close(self) -> None:
        """Wait for the worker to finish the strips; raise if it failed."""
        tic = time.perf_counter()
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        self.seconds += time.perf_counter() - tic
        if self.error is not None:
            raise RuntimeError(f"writing the viewer's strips failed: {self.error}") from self.error
