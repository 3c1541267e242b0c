"""The ground-truth region a question asks about, in a phantom cache: what saliency is scored against.

A difference question about the whole image ("what has changed compared to the reference image?") asks about
every change of its pair: its region is the pair's change mask. A one-lung difference question ("what has
changed in the left lung area?") asks only about the changes in that lung: its region is the union of the pair's
change regions on that side (:meth:`.CacheTruth.regions`; the patient's side, so ``left`` lies on the image's
right), empty when that lung did not change. Other question types keep the pair's change mask, as before.

Caches of releases without per-finding change regions (written before ``ground_truth/changes.csv``) fall back
to the whole change mask for every question, and say so: ``per_finding`` is False.

Ground truth is for scoring only: nothing that trains or runs the model may read it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from diffvqa.config import QUESTION_TYPES
from diffvqa.data.cache_reader import ImageCache
from diffvqa.data.cache_truth import CacheTruth
from diffvqa.data.release import SPLITS, validate_choices

# The one-lung difference template of docs/data.md; the side is the patient's.
ONE_LUNG = re.compile(r"what has changed in the (left|right) lung area\?")


def question_side(question: str, question_type: str) -> str:
    """``"left"`` / ``"right"`` for a one-lung difference question, ``""`` for any other question."""
    if question_type != "difference":
        return ""
    match = ONE_LUNG.fullmatch(question.strip())
    return match[1] if match else ""


def _merge_by_name(regions: list[dict]) -> list[dict]:
    """One region per finding name, in first-seen order: a bilateral finding's left and right rows become one,
    with side ``"both"``."""
    merged: dict[str, dict] = {}
    for region in regions:
        name = region["name"]
        if name not in merged:
            merged[name] = dict(region, mask=region["mask"].copy())
        else:
            np.maximum(merged[name]["mask"], region["mask"], out=merged[name]["mask"])
            merged[name]["side"] = "both"
    return list(merged.values())


def question_region(change_mask: np.ndarray, regions: list[dict] | None, side: str) -> tuple[np.ndarray, list[dict]]:
    """The region a question asks about and the per-finding regions that make it up.

    Args:
        change_mask: (S, S) uint8 {0, 1}, the pair's change mask (reference frame).
        regions: the pair's per-finding regions (:meth:`.CacheTruth.regions`: dicts name, side, mask (S, S)
            uint8), or None when the cache has none.
        side: the question's side (:func:`question_side`): "left", "right" or "".

    Returns:
        (region (S, S) uint8 {0, 1}, changes): for a one-lung question the union of that side's regions and
        those regions; otherwise the change mask and every region, merged to one per finding name. Without
        per-finding regions: (change_mask, []).
    """
    if regions is None:
        return change_mask, []
    if not side:
        return change_mask, _merge_by_name(regions)
    rows = [r for r in regions if r["side"] == side]
    region = np.zeros_like(change_mask)
    for r in rows:
        np.maximum(region, r["mask"], out=region)
    return region, rows


def question_regions(
    cache_dir: str | Path, split: str | None, question_types: Sequence[str] | None = ("difference",)
) -> np.ndarray:
    """The regions of every question of a split that has ground truth and a non-empty region, read from the
    cache's ``truth/`` alone (no image is decoded): e.g. to learn the fixed-point prior on the train split.

    Args:
        cache_dir: a prepared phantom cache.
        split: "train" | "val" | "test", or None for all.
        question_types: the question types to include (None: all).

    Returns:
        (N, S, S) uint8 in {0, 1}, in the reference frame, in questions.csv order (the region of
        :func:`question_region`, as a sample's ``truth["change_mask"]``).

    Raises:
        ValueError: the cache has no ground truth, or a split / question type is unknown.
    """
    cache = ImageCache(cache_dir)
    if not cache.has_truth:
        raise ValueError(f"{cache_dir}: the cache has no ground truth (truth/): prepare a phantom release")
    split = validate_choices(split, SPLITS, "split")[0] if split is not None else None
    question_types = validate_choices(question_types, QUESTION_TYPES, "question type(s)")
    q = cache.questions()
    if split is not None:
        q = q[q.split == split]
    if question_types is not None:
        q = q[q.question_type.isin(question_types)]
    truth = CacheTruth(cache_dir)
    out, memo = [], {}
    rows = zip(q.study_id, q.ref_id, q.question, q.question_type, strict=True)
    for study_id, ref_id, question, question_type in rows:
        side = question_side(question, question_type)
        key = (int(study_id), int(ref_id), side)
        if key not in memo:  # the questions of a pair share its regions
            p = truth.pair_row.get(key[:2])
            if p is None or not truth.has_truth[p]:
                memo[key] = None
            else:
                region, _ = question_region(np.array(truth.change_masks[p]), truth.regions(*key[:2]), side)
                memo[key] = region if region.any() else None
        if memo[key] is not None:
            out.append(memo[key])
    return np.stack(out) if out else np.zeros((0, cache.size, cache.size), np.uint8)
