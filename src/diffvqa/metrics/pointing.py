"""Scoring the method's mechanisms against the phantom's ground truth (``docs/metrics.md``).

Pure functions on tensors; nothing here trains or runs the model, and nothing that trains or runs the model reads
the ground truth (real data has none).

**Pointing game.** A map (the shared mask M, (S, S)) points at the pixels where it reaches its maximum. It scores
the *fraction* of those tied pixels that lie inside the question's region: one clear peak scores 0 or 1, a flat map
scores its region's area share — exactly chance — and a plateau scores what it covers (the old "any tied pixel
inside" rule gave a flat map 1.0). Every score comes with its reference levels, because alone it means nothing:

* **chance** — the region's area share of the frame (a uniformly random pixel);
* **prior** — the best *fixed* pixel, learned on the train split's regions (changes cluster at the heart and the
  lung bases), scored on the evaluated questions: what a map that ignores the images gets;
* **ceiling** — the share of questions whose region contains a feature-cell centre: a map upsampled from an
  h x w grid peaks at a cell centre (:func:`diffvqa.saliency.gradcam.upsample_cells`), so no map of that grid can
  point into a region that holds none (small or thin findings fall between centres);
* **difference map** (computed in :mod:`diffvqa.metrics.mechanisms`) — |aligned main − reference| on the content
  overlap, with the model's own Θ: what plain registration and subtraction point at, at full resolution.

**Keyword conditioning** — the method's own claim: the CAM follows the keyword. For an answer naming two changed
findings A and B in regions at least one grid cell apart (closer ones no map of that grid can tell apart), the map
computed for keyword A should be higher inside A's region than inside B's. Each ordered pair (A's map; A's region
vs B's) scores 1, 0.5 on a tie, 0 otherwise. A map that ignores the keyword is the same for A and B, so the pairs
(A, B) and (B, A) sum to exactly 1: it scores 0.5 however well it localises. It is measured on the keyword's own
Grad-CAM, before any keyword-independent gate (a gate sharper than the CAM's contrast would force 0.5).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor

from diffvqa.saliency.gradcam import cell_centres

TIE_TOLERANCE = 1e-6  # relative: pixels within this of the maximum are tied with it


def pointing_scores(maps: Tensor, regions: Tensor) -> Tensor:
    """Fraction of each map's maximal pixels that lie inside its region.

    Args: maps (B, 1, S, S) or (B, S, S); regions the same shape, {0, 1}. Returns (B,) float in [0, 1].
    """
    flat = maps.flatten(1).float()
    peak = flat.amax(dim=1, keepdim=True)
    at_max = flat >= peak - TIE_TOLERANCE * peak.abs().clamp(min=1e-12)
    inside = regions.flatten(1) > 0.5
    return (at_max & inside).sum(dim=1).float() / at_max.sum(dim=1).float()


def area_shares(regions: Tensor) -> Tensor:
    """Chance level per region: its share of the frame's pixels. (B, [1,] S, S) -> (B,)."""
    flat = regions.flatten(1) > 0.5
    return flat.float().mean(dim=1)


def best_fixed_point(regions: Tensor) -> tuple[int, int]:
    """The pixel (y, x) inside the most regions of (N, [1,] S, S) — the fixed-point prior, learned on train."""
    if regions.shape[0] == 0:
        raise ValueError("best_fixed_point: no regions to learn the prior from")
    counts = (regions.reshape(regions.shape[0], -1) > 0.5).sum(dim=0)
    size = regions.shape[-1]
    y, x = divmod(int(counts.argmax()), size)
    return y, x


def fixed_point_hits(regions: Tensor, point: tuple[int, int]) -> Tensor:
    """Does each region (B, [1,] S, S) contain the fixed point? -> (B,) float in {0, 1}."""
    y, x = point
    return (regions.reshape(regions.shape[0], regions.shape[-2], regions.shape[-1])[:, y, x] > 0.5).float()


def grid_ceiling(regions: Tensor, cells: int, pool: int = 1) -> Tensor:
    """Can any map of a ``cells`` x ``cells`` grid point into each region? -> (B,) float in {0, 1}.

    A map upsampled from the grid peaks at a cell's pixel (:func:`diffvqa.saliency.gradcam.cell_centres`, rounded;
    ``pool``: a grid of pooled feature cells), so a region is reachable when it contains one of those pixels.
    """
    size = regions.shape[-1]
    centres = cell_centres(cells, size, regions.device, pool).round().long()
    grid = regions.reshape(regions.shape[0], size, size)[:, centres][:, :, centres]  # (B, cells, cells)
    return (grid > 0.5).flatten(1).any(dim=1).float()


def separated_regions(regions: Sequence[Tensor], gap: int) -> list[tuple[int, int]]:
    """Ordered pairs (a, b), a != b, of non-empty regions (each (S, S)) at least ``gap`` pixels apart (the nearest
    two pixels, one of each, differ by >= ``gap`` in row or column): "different regions" for
    :func:`keyword_conditioning`. With ``gap`` one grid cell, a map of that grid can tell the two apart."""
    masks = [r > 0.5 for r in regions]
    grown = []
    for m in masks:  # each region dilated by gap - 1 pixels: touching it means closer than gap
        x = m.float()[None, None]
        grown.append(F.max_pool2d(x, 2 * gap - 1, stride=1, padding=gap - 1)[0, 0] > 0 if gap > 1 else m)
    pairs = []
    for a in range(len(masks)):
        for b in range(len(masks)):
            if a != b and masks[a].any() and masks[b].any() and not (grown[a] & masks[b]).any():
                pairs.append((a, b))
    return pairs


def keyword_conditioning(maps: Sequence[Tensor], regions: Sequence[Tensor], gap: int) -> list[float]:
    """Scores of one question: ``maps[k]`` (S, S) was computed for keyword k, whose region is ``regions[k]``.

    For every ordered pair (a, b) of regions at least ``gap`` pixels apart (:func:`separated_regions`): 1 if map
    a's maximum inside region a exceeds its maximum inside region b, 0.5 if they are equal, 0 otherwise. Returns
    one score per ordered pair (empty when no two regions are that far apart).
    """
    scores = []
    for a, b in separated_regions(regions, gap):
        own = maps[a][regions[a] > 0.5].max()
        other = maps[a][regions[b] > 0.5].max()
        scores.append(1.0 if own > other else 0.5 if own == other else 0.0)
    return scores
