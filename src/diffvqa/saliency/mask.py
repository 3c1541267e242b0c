"""The shared saliency mask (``docs/design.md``, step 8) and its application to [0, 1] intensities.

The main image was aligned onto the reference before encoding, so both CAMs live in the reference frame and
combine element-wise. Masking happens in intensity space, before the encoder normalises.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

MASK_VARIANTS = ("max", "mean", "min", "main", "ref", "none")


def shared_mask(cam_main: Tensor, cam_ref: Tensor, variant: str = "max") -> Tensor:
    """Combine the two CAMs (B, 1, S, S) in [0, 1] into one mask M (B, 1, S, S).

    ``max`` (default, the paper's): a region salient in either visit is kept; ``mean``/``min``: softer/stricter;
    ``main``/``ref``: one visit's map only; ``none``: all ones (no masking, for ablation).
    """
    if variant == "max":
        return torch.maximum(cam_main, cam_ref)
    if variant == "mean":
        return (cam_main + cam_ref) / 2
    if variant == "min":
        return torch.minimum(cam_main, cam_ref)
    if variant == "main":
        return cam_main
    if variant == "ref":
        return cam_ref
    if variant == "none":
        return torch.ones_like(cam_main)
    raise ValueError(f"saliency.mask={variant!r}: expected one of {', '.join(MASK_VARIANTS)}")


def registered_difference(
    aligned_main: Tensor, ref: Tensor, content: Tensor | None = None, smooth: int = 5, erode: int = 4
) -> Tensor:
    """Where the registered pair differs: |aligned main − ref|, box-smoothed, on the eroded content overlap.

    Args: aligned_main, ref (B, 1, S, S) in [0, 1]; content (2B, 1, S, S) of the aligned main then the reference
    (None: the whole frame). The overlap is eroded by ``erode`` pixels (the warped image's edge blends with the
    zeros outside it) and the difference smoothed over ``smooth`` x ``smooth`` pixels (single-pixel noise would
    otherwise hold the maximum). Returns (B, 1, S, S) in [0, 1] (max-normalised per image; zeros stay zeros).
    No ground truth is read: it uses the model's own Θ.
    """
    b = aligned_main.shape[0]
    overlap = torch.ones_like(ref) if content is None else (content[:b] * content[b:] > 0.5).to(ref.dtype)
    if erode:
        overlap = -F.max_pool2d(-overlap, 2 * erode + 1, stride=1, padding=erode)
    difference = (aligned_main - ref).abs() * overlap
    if smooth > 1:
        difference = F.avg_pool2d(difference, smooth, stride=1, padding=smooth // 2, count_include_pad=False) * overlap
    return difference / difference.amax(dim=(2, 3), keepdim=True).clamp(min=1e-12)


def guard_empty(mask: Tensor) -> tuple[Tensor, Tensor]:
    """Replace an all-zero mask by all ones (no masking) -> (mask, fallback (B,) bool: which rows were replaced).

    If ReLU(Σ α F) <= 0 everywhere on both images the shared mask is 0 and, without a floor, the masked pass
    would see two black images; keeping the whole image is the neutral choice. The rows are counted in
    ``metrics.json`` (``saliency.empty_mask_fallbacks``) so it cannot pass unnoticed.
    """
    empty = mask.flatten(1).amax(dim=1) <= 0
    if empty.any():
        mask = torch.where(empty[:, None, None, None], torch.ones_like(mask), mask)
    return mask, empty


def apply_mask(images: Tensor, mask: Tensor, floor: float = 0.0) -> Tensor:
    """(β + (1 - β) M) ⊙ I for images (B, 1, S, S) in [0, 1]; β = ``floor`` keeps some context everywhere."""
    if not 0.0 <= floor <= 1.0:
        raise ValueError(f"saliency.mask_floor={floor}: expected a value in [0, 1]")
    return (floor + (1.0 - floor) * mask) * images
