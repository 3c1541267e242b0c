"""Measuring the aligner and the saliency during evaluation, on caches with ground truth (the phantom).

:class:`MechanismTally` takes each evaluated batch with its two-pass result and accumulates what
:mod:`diffvqa.metrics.pointing` defines: the pointing game of the shared mask on the difference questions with a changed
region (beside chance, the fixed-point prior and the grid's ceiling, overall and per finding), keyword conditioning
(one extra Grad-CAM per named change, on the pass-1 feature maps, teacher-forced on the reference answer; scored on
the keyword's own map before any gate, and on the gated map beside it, with a 95 % interval over answers), the
registration error of Θ against the true transform, and how often the shared mask fell back to all ones.

The ground truth is read here only to score; the model's inputs never include it.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import torch
from torch import Tensor

from diffvqa.metrics.intervals import clustered_interval
from diffvqa.metrics.pointing import (
    area_shares,
    fixed_point_hits,
    grid_ceiling,
    keyword_conditioning,
    pointing_scores,
    separated_regions,
)
from diffvqa.model.align import corner_error, identity_theta
from diffvqa.model.encoder import feature_stride
from diffvqa.model.vqa import DiffVQA
from diffvqa.saliency.gradcam import cam_pool, gate_cams
from diffvqa.saliency.guided import TwoPassResult, cam_gate
from diffvqa.saliency.keyword_cams import keyword_cams
from diffvqa.saliency.mask import registered_difference, shared_mask


class MechanismTally:
    """Accumulates per-question saliency scores and per-pair registration errors over an evaluation.

    Args:
        model: the evaluated model (for the CAM grid and the keyword-conditioning CAMs).
        prior_point: the fixed-point prior (y, x) learned on the train split's regions; None skips it.
        keyword_conditioning: compute the per-keyword CAMs (one extra Grad-CAM per named change).
    """

    def __init__(self, model: DiffVQA, prior_point: tuple[int, int] | None = None, keyword_conditioning: bool = True):
        self.model = model
        self.pool = cam_pool(model.config)  # 1: the encoder's cells; k: the prefix's k x k pooled cells
        self.cells = model.image_size // feature_stride(model.config.model) // self.pool  # the CAM grid
        self.prior_point = prior_point
        # saliency.mask=none has no map to condition: every keyword's shared mask is all ones, so the score would be
        # 0.5 by construction. Leave it out rather than report a chance level that was never measured.
        self.score_conditioning = keyword_conditioning and model.config.saliency.mask != "none"
        self.rows: list[dict[str, Any]] = []  # one per scored question
        self.gap = model.image_size // self.cells  # one grid cell: the closest two regions a map can tell apart
        self.conditioning: dict[str, list[list[float]]] = {"ungated": [], "gated": []}  # per question: its pairs
        self.errors_after: list[float] = []
        self.errors_before: list[float] = []
        self.seen_pairs: set[tuple[int, int]] = set()
        self.masks = 0
        self.empty_masks = 0

    def add(self, batch: dict[str, Any], result: TwoPassResult) -> list[float | None]:
        """Score one batch; returns each question's pointing score (None where it is not scored)."""
        n = len(batch["question"])
        per_question: list[float | None] = [None] * n
        if result.empty_mask is not None:
            self.masks += n
            self.empty_masks += int(result.empty_mask.sum())
        truth = batch.get("truth")
        if truth is None:
            return per_question
        self._registration(batch, result, truth)
        if result.mask is None:
            return per_question
        regions = truth["change_mask"].to(result.mask.device)  # (B, 1, S, S): the question's region
        is_difference = torch.tensor([t == "difference" for t in batch["question_type"]], device=regions.device)
        scored = is_difference & (regions.flatten(1).amax(dim=1) > 0.5)
        if not scored.any():
            return per_question
        points = pointing_scores(result.mask, regions)
        difference = self._difference_map(batch, result).to(regions.device)
        difference_points = pointing_scores(difference, regions)
        chance = area_shares(regions)
        ceiling = grid_ceiling(regions, self.cells, self.pool)
        prior = fixed_point_hits(regions, self.prior_point) if self.prior_point is not None else None
        for i in torch.nonzero(scored).flatten().tolist():
            per_question[i] = float(points[i])
            self.rows.append(
                {
                    "finding": truth["keyword"][i] or "(none)",
                    "score": float(points[i]),
                    "chance": float(chance[i]),
                    "ceiling": float(ceiling[i]),
                    "prior": None if prior is None else float(prior[i]),
                    "difference_map": float(difference_points[i]),
                }
            )
        if self.score_conditioning and "changes" in truth:
            self._keyword_conditioning(batch, result, truth["changes"], scored)
        return per_question

    def _difference_map(self, batch: dict[str, Any], result: TwoPassResult) -> Tensor:
        """|aligned main - reference| on the overlap of their content: a non-learned map that points at change
        when the registration is good (a reference level, computed with the model's own Θ, no ground truth)."""
        ref = batch["ref"].to(result.aligned_main.device)
        if self.model.config.model.blind:  # the model saw zeros: so does its difference map (flat: chance)
            ref = torch.zeros_like(ref)
        return registered_difference(result.aligned_main, ref, result.content)

    def _registration(self, batch: dict[str, Any], result: TwoPassResult, truth: dict[str, Any]) -> None:
        theta = result.theta.detach().cpu().double()
        true = truth["theta"].double()
        size, corners = self.model.image_size, self.model.config.model.align_corners
        after = corner_error(theta, true, size, corners)
        before = corner_error(identity_theta(len(theta), dtype=torch.float64), true, size, corners)
        ids = batch["ids"]
        for i in range(len(theta)):
            pair = (int(ids["study_id"][i]), int(ids["ref_id"][i]))
            if pair not in self.seen_pairs:  # registration is a property of the pair, not of the question
                self.seen_pairs.add(pair)
                self.errors_after.append(float(after[i]))
                self.errors_before.append(float(before[i]))

    @torch.no_grad()
    def _keyword_conditioning(
        self, batch: dict[str, Any], result: TwoPassResult, changes: list[list[dict]], scored: Tensor
    ) -> None:
        """One CAM per named change of each scored question whose answer names >= 2 changes at least a grid cell
        apart; scored on the keyword's own map (no gate) and, where the method gates, on the gated map."""
        model = self.model
        rows, keywords, regions = [], [], []
        for i in torch.nonzero(scored).flatten().tolist():
            named = [c for c in changes[i] if c["name"] and c["name"] in batch["answer"][i]]
            masks = [torch.as_tensor(np.asarray(c["mask"])).float() for c in named]
            if len(named) < 2 or not separated_regions(masks, self.gap):
                continue
            rows += [i] * len(named)
            keywords += [c["name"] for c in named]
            regions.append(masks)
        if not rows:
            return
        device = result.features.device
        index = torch.tensor(rows, device=device)
        b = len(batch["question"])
        content = None
        if result.content is not None:
            content = torch.cat([result.content[:b][index], result.content[b:][index]])
        cfg = model.config.saliency
        answers = [batch["answer"][i] for i in rows]  # each names its keyword: the answer's own tokens are scored
        cam_main, cam_ref = keyword_cams(model, batch, result, rows, keywords, answers)
        maps = {"ungated": shared_mask(cam_main, cam_ref, cfg.mask)[:, 0].cpu()}  # (R, S, S)
        ref = batch["ref"].to(device)[index]
        gate = cam_gate(cfg.cam_method, result.aligned_main[index], ref, content)
        if gate is not None:
            gated = gate_cams(cam_main, cam_ref, gate, cfg.cam_normalize, cfg.cam_eps)
            maps["gated"] = shared_mask(*gated, cfg.mask)[:, 0].cpu()
        for name, stack in maps.items():
            start = 0
            for masks in regions:
                self.conditioning[name].append(
                    keyword_conditioning(list(stack[start : start + len(masks)]), masks, self.gap)
                )
                start += len(masks)

    def summary(self) -> dict[str, Any]:
        """The metrics.json entries (empty when nothing was scored)."""
        out: dict[str, Any] = {}
        if self.rows:
            out["pointing_game"] = _mean(r["score"] for r in self.rows)
            out["pointing_game_n"] = len(self.rows)
            out["pointing_game_reference"] = {
                "chance": _mean(r["chance"] for r in self.rows),
                "prior": None if self.prior_point is None else _mean(r["prior"] for r in self.rows),
                "prior_point": None if self.prior_point is None else list(self.prior_point),
                "ceiling": _mean(r["ceiling"] for r in self.rows),
                "difference_map": _mean(r["difference_map"] for r in self.rows),
                "grid": f"{self.cells}x{self.cells}",
                "tie_rule": "a map scores the fraction of its tied maximum pixels inside the region",
            }
            groups: dict[str, list[dict]] = defaultdict(list)
            for r in self.rows:
                groups[r["finding"]].append(r)
            out["pointing_game_per_finding"] = {
                name: {
                    "score": _mean(r["score"] for r in rows),
                    "n": len(rows),
                    "chance": _mean(r["chance"] for r in rows),
                    "prior": None if self.prior_point is None else _mean(r["prior"] for r in rows),
                    "ceiling": _mean(r["ceiling"] for r in rows),
                }
                for name, rows in sorted(groups.items(), key=lambda kv: -len(kv[1]))
            }
        if self.conditioning["ungated"]:
            out["keyword_conditioning"] = {
                **_conditioning_entry(self.conditioning["ungated"]),
                "map": "the keyword's own Grad-CAM (shared mask of the two CAMs), before any gate",
                "min_gap_px": self.gap,
                "chance": 0.5,
            }
            if self.conditioning["gated"]:
                out["keyword_conditioning"]["gated"] = _conditioning_entry(self.conditioning["gated"])
        if self.errors_after:
            before = float(np.mean(self.errors_before))
            out["registration_error_ratio"] = float(np.mean(self.errors_after)) / max(before, 1e-12)
            out["registration_error_px"] = {
                "after": float(np.mean(self.errors_after)),
                "before": before,
                "pairs": len(self.errors_after),
                "identity_ratio": 1.0,
            }
        if self.masks:
            out["empty_mask_fallbacks"] = {"masks": self.masks, "fell_back_to_all_ones": self.empty_masks}
        return out


def _conditioning_entry(per_question: list[list[float]]) -> dict[str, Any]:
    """Mean over every ordered pair, with a 95 % interval that resamples answers (their pairs are correlated)."""
    interval = clustered_interval(per_question)
    return {
        "score": interval.estimate,
        "ci95": [interval.low, interval.high],
        "pairs": sum(len(q) for q in per_question),
        "questions": sum(1 for q in per_question if q),
    }


def _mean(values) -> float:
    values = list(values)
    return float(np.mean(values)) if values else float("nan")
