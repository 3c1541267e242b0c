"""Where an S x S frame holds the image: its content box, as a mask.

Images are resized with their aspect kept and padded to S x S (``diffvqa.data.images``); the padding (the
letterbox) carries no anatomy. Models that look for evidence — the Grad-CAM, the aligner's similarity — use these
masks to ignore it. The boxes come from each image's recorded geometry, never from its pixel values.
"""

from __future__ import annotations

import torch
from torch import Tensor


def box_masks(boxes: Tensor | None, size: int, batch: int | None = None, device=None) -> Tensor:
    """Content boxes (B, 4) long ``[y0, x0, y1, x1)`` (end-exclusive) -> masks (B, 1, S, S) float in {0, 1}.

    ``boxes=None`` means the whole frame is content (images without a recorded geometry): all ones, with
    ``batch`` rows.
    """
    if boxes is None:
        if batch is None:
            raise ValueError("box_masks: give boxes or a batch size")
        return torch.ones(batch, 1, size, size, device=device)
    boxes = boxes.to(device=device if device is not None else boxes.device)
    coords = torch.arange(size, device=boxes.device)
    rows = (coords[None, :] >= boxes[:, 0:1]) & (coords[None, :] < boxes[:, 2:3])  # (B, S)
    cols = (coords[None, :] >= boxes[:, 1:2]) & (coords[None, :] < boxes[:, 3:4])  # (B, S)
    return (rows[:, None, :, None] & cols[:, None, None, :]).float()
