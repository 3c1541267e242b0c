"""Saliency scored against boxes during evaluation: Chest ImaGenome's changed regions and MS-CXR's phrases.

Whenever the cache has boxes (``diffvqa prepare --boxes``, :mod:`diffvqa.data.cache_boxes`), :class:`BoxTally`
takes each evaluated batch with its two-pass result and scores, with the pointing game of
:mod:`diffvqa.metrics.pointing` (the fraction of a map's tied maximal pixels inside a region):

* ``chest_imagenome.mask`` -- the shared mask M of each difference question against the union of the reference
  image's boxes of the regions Chest ImaGenome marks worsened or improved for that pair (the asked lung's only, for
  a one-lung question);
* ``chest_imagenome.keyword_cam`` -- for each finding the pair's comparisons name, the Grad-CAM computed for that
  finding as the keyword (its own map: the two CAMs combined as M is, before any gate; teacher-forced on the
  reference answer when it names the finding, else on the finding's name), against the same regions;
* ``chest_imagenome.per_finding`` -- both again, against only the regions where that finding changed;
* ``ms_cxr.keyword_cam`` -- on single images: for each MS-CXR phrase of an evaluated image (the first question
  that shows it), the Grad-CAM of the phrase's finding on that image against the phrase's boxes (a main image's
  map is in the reference frame, so its boxes are carried there with the model's Θ).

Each score sits beside its reference levels on the same questions: chance (the region's area share), the
fixed-point prior (the pixel inside the most such regions of the train split) and the ceiling of the CAM grid --
and a 95 % interval, with a mark when it rests on fewer than :data:`MIN_SCORED` pairs (phrases for MS-CXR). On a
phantom cache, which has pixel truth as well, ``chest_imagenome.pixel_truth`` compares the box-based pointing game of
M with the pixel-truth one on the same questions (boxes are coarser than masks, so they can only score higher).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from diffvqa.data.cache_boxes import CacheBoxes, changed_region_counts, phrase_counts
from diffvqa.data.regions import question_side
from diffvqa.metrics.intervals import clustered_interval, paired_interval
from diffvqa.metrics.pointing import area_shares, fixed_point_hits, grid_ceiling, pointing_scores
from diffvqa.model.encoder import feature_stride
from diffvqa.model.vqa import DiffVQA
from diffvqa.saliency.gradcam import cam_pool
from diffvqa.saliency.guided import TwoPassResult
from diffvqa.saliency.keyword_cams import keyword_cams
from diffvqa.saliency.lexicon import keyword_spans
from diffvqa.saliency.mask import shared_mask

MIN_SCORED = 30  # fewer pairs (MS-CXR: phrases) than this and a score is marked "too few to read"
CAM_CHUNK = 64  # keyword CAMs computed per call


def box_priors(cache_dir) -> dict[str, tuple[int, int] | None]:
    """The fixed-point priors, learned on the train split: the pixel inside the most changed-region masks
    (Chest ImaGenome) and the most phrase masks (MS-CXR) -- the first such pixel in row order, as
    :func:`~diffvqa.metrics.pointing.best_fixed_point` picks it; None where the train split has none."""
    priors: dict[str, tuple[int, int] | None] = {"chest_imagenome": None, "ms_cxr": None}
    for key, count in (("chest_imagenome", changed_region_counts), ("ms_cxr", phrase_counts)):
        counts, n = count(cache_dir, "train")
        if n:
            y, x = divmod(int(np.argmax(counts)), counts.shape[1])
            priors[key] = (y, x)
    return priors


def warp_to_reference(region: Tensor, theta: Tensor) -> Tensor:
    """A main-image region (S, S) carried into the reference frame as the aligner carried the image:
    ``grid_sample(region, affine_grid(Θ))`` (align_corners=False), kept where it is >= 0.5 -> (S, S) float."""
    size = region.shape[-1]
    grid = F.affine_grid(theta[None].float(), [1, 1, size, size], align_corners=False)
    warped = F.grid_sample(region[None, None].float(), grid, align_corners=False)
    return (warped[0, 0] >= 0.5).float()


def _interval(scores: list[float], groups: list) -> list[float]:
    """95 % bootstrap interval of the mean, resampling the groups (questions) the scores come in."""
    by_group: dict = defaultdict(list)
    for score, group in zip(scores, groups, strict=True):
        by_group[group].append(score)
    interval = clustered_interval(list(by_group.values()))
    return [interval.low, interval.high]


class BoxTally:
    """Accumulates the box-based scores of an evaluation (module docstring).

    Args:
        model: the evaluated model (its CAM grid; the keyword CAMs).
        boxes: the cache's boxes.
        priors: :func:`box_priors` of the cache (None values skip the prior).
    """

    def __init__(self, model: DiffVQA, boxes: CacheBoxes, priors: dict[str, tuple[int, int] | None] | None = None):
        self.model, self.boxes = model, boxes
        self.priors = priors or {}
        self.pool = cam_pool(model.config)
        self.cells = model.image_size // feature_stride(model.config.model) // self.pool
        # per scored map: against all changed regions ("mask", "keyword_cam"), against its finding's ("..._finding")
        kinds = ("mask", "mask_finding", "keyword_cam", "keyword_cam_finding", "ms_cxr")
        self.rows: dict[str, list[dict]] = {kind: [] for kind in kinds}
        self.truth: list[tuple[float, float, float, float]] = []  # (box score, pixel score, box share, pixel share)
        self.seen_images: set[str] = set()
        mode = model.config.saliency.mask
        self.combine = "max" if mode == "none" else mode  # a keyword's own map: its two CAMs combined as M is

    # ------------------------------------------------------------------------------------------------------
    def _levels(self, maps: Tensor, regions: Tensor, prior: str) -> dict[str, Tensor]:
        """Score, chance, ceiling and prior hits of maps (N, S, S) against regions (N, S, S)."""
        point = self.priors.get(prior)
        return {
            "score": pointing_scores(maps, regions),
            "chance": area_shares(regions),
            "ceiling": grid_ceiling(regions, self.cells, self.pool),
            "prior": fixed_point_hits(regions, point) if point is not None else torch.full((len(maps),), float("nan")),
        }

    def _append(self, kind: str, levels: dict[str, Tensor], **keys: list) -> None:
        for j in range(len(levels["score"])):
            row = {name: float(values[j]) for name, values in levels.items()}
            row.update({k: v[j] for k, v in keys.items()})
            self.rows[kind].append(row)

    def add(self, batch: dict[str, Any], result: TwoPassResult) -> list[dict[str, Any] | None]:
        """Score one batch. Returns per question None, or dict(``box_pointing``: M's score against the changed
        regions, when scored; ``outlines``: {"mask" | "cam_ref" | "cam_main": [corner lists, reference-frame
        pixels]}, the boxes to draw over those pictures)."""
        n, ids = len(batch["question"]), batch["ids"]
        size = self.model.image_size
        out: list[dict[str, Any] | None] = [None] * n
        ci_jobs, ms_jobs = [], []  # keyword CAMs to compute: (row, finding, ...)
        masked, regions, pixel = [], [], []
        for i in range(n):
            study, ref, ref_dicom = int(ids["study_id"][i]), int(ids["ref_id"][i]), ids["ref_dicom_id"][i]
            outlines: dict[str, list] = {}
            if self.boxes.has_comparisons and batch["question_type"][i] == "difference":
                side = question_side(batch["question"][i], "difference")
                found = self.boxes.changed_boxes(study, ref, ref_dicom, side)
                if found:
                    region = torch.from_numpy(self.boxes.region_mask(found)).float()
                    outlines["mask"] = [_corners(b) for b in found]
                    masked.append(i)
                    regions.append(region)
                    findings = dict.fromkeys(
                        f for c in self.boxes.changed(study, ref, side) for f in c["findings"] if f
                    )
                    for finding in findings:
                        own = self.boxes.changed_boxes(study, ref, ref_dicom, side, finding)
                        ci_jobs.append((i, finding, region, torch.from_numpy(self.boxes.region_mask(own)).float()))
            for role in ("ref", "main"):
                dicom_id = ids[f"{role}_dicom_id"][i]
                if dicom_id in self.seen_images or dicom_id not in self.boxes.phrases:
                    continue
                self.seen_images.add(dicom_id)
                for phrase in self.boxes.phrases[dicom_id]:
                    ms_jobs.append((i, phrase["finding"], role, phrase, dicom_id))
            for phrase in self.boxes.phrases.get(ref_dicom, []):
                outlines.setdefault("cam_ref", []).extend(_corners(b) for b in phrase["boxes"])
            for phrase in self.boxes.phrases.get(ids["main_dicom_id"][i], []):
                theta = result.theta[i].detach().cpu().double()
                outlines.setdefault("cam_main", []).extend(_to_reference(_corners(b), theta, size)
                                                           for b in phrase["boxes"])  # fmt: skip
            if outlines:
                out[i] = {"outlines": outlines}
        if masked and result.mask is not None:
            maps = result.mask[masked, 0].detach().float().cpu()
            stack = torch.stack(regions)
            levels = self._levels(maps, stack, "chest_imagenome")
            pairs = [(int(ids["study_id"][i]), int(ids["ref_id"][i])) for i in masked]
            self._append("mask", levels, pair=pairs, question=[int(ids["question_index"][i]) for i in masked])
            for j, i in enumerate(masked):
                out[i]["box_pointing"] = float(levels["score"][j])
            truth = batch.get("truth")
            if truth is not None:
                pixel = truth["change_mask"][masked, 0].float().cpu()
                keep = pixel.flatten(1).amax(dim=1) > 0.5
                if keep.any():
                    pixel_scores = pointing_scores(maps[keep], pixel[keep])
                    self.truth += list(zip(levels["score"][keep].tolist(), pixel_scores.tolist(),
                                           levels["chance"][keep].tolist(), area_shares(pixel[keep]).tolist(),
                                           strict=True))  # fmt: skip
            per_finding = [(j, finding, own) for (i, finding, _, own) in ci_jobs for j in [masked.index(i)]]
            if per_finding:
                finding_levels = self._levels(
                    maps[[j for j, _, _ in per_finding]],
                    torch.stack([own for _, _, own in per_finding]),
                    "chest_imagenome",
                )
                self._append("mask_finding", finding_levels, finding=[f for _, f, _ in per_finding],
                             pair=[pairs[j] for j, _, _ in per_finding])  # fmt: skip
        if (ci_jobs or ms_jobs) and result.features is not None:
            self._keyword_cams(batch, result, ci_jobs, ms_jobs)
        return out

    @torch.no_grad()
    def _keyword_cams(self, batch: dict[str, Any], result: TwoPassResult, ci_jobs: list, ms_jobs: list) -> None:
        ids = batch["ids"]
        jobs = [("ci", *job) for job in ci_jobs] + [("ms", *job) for job in ms_jobs]
        for start in range(0, len(jobs), CAM_CHUNK):
            chunk = jobs[start : start + CAM_CHUNK]
            rows = [job[1] for job in chunk]
            keywords = [job[2] for job in chunk]
            answers = [batch["answer"][i] for i in rows]
            # the reference answer where it names the finding, else the finding itself (as a forced keyword is)
            texts = [a if keyword_spans(a, k) else k for a, k in zip(answers, keywords, strict=True)]
            maps = keyword_cams(self.model, batch, result, rows, keywords, texts)
            cam_main, cam_ref = (m[:, 0].float().cpu() for m in maps)
            ci = [j for j, job in enumerate(chunk) if job[0] == "ci"]
            if ci:
                maps = shared_mask(cam_main[ci, None], cam_ref[ci, None], self.combine)[:, 0]
                pairs = [(int(ids["study_id"][rows[j]]), int(ids["ref_id"][rows[j]])) for j in ci]
                questions = [int(ids["question_index"][rows[j]]) for j in ci]
                findings = [keywords[j] for j in ci]
                levels = self._levels(maps, torch.stack([chunk[j][3] for j in ci]), "chest_imagenome")
                self._append("keyword_cam", levels, pair=pairs, question=questions, finding=findings)
                own = self._levels(maps, torch.stack([chunk[j][4] for j in ci]), "chest_imagenome")
                self._append("keyword_cam_finding", own, pair=pairs, question=questions, finding=findings)
            maps, regions, kept = [], [], []
            for j, job in enumerate(chunk):
                if job[0] != "ms":
                    continue
                _, i, finding, role, phrase, dicom_id = job
                region = torch.from_numpy(self.boxes.region_mask(phrase["boxes"])).float()
                if role == "main":  # the main image's map is in the reference frame: so must its boxes be
                    region = warp_to_reference(region, result.theta[i].detach().cpu())
                if not region.any():
                    continue
                maps.append(cam_ref[j] if role == "ref" else cam_main[j])
                regions.append(region)
                kept.append((finding, (dicom_id, phrase["phrase"])))
            if maps:
                levels = self._levels(torch.stack(maps), torch.stack(regions), "ms_cxr")
                self._append("ms_cxr", levels, finding=[f for f, _ in kept], phrase=[p for _, p in kept],
                             image=[p[0] for _, p in kept])  # fmt: skip

    # ------------------------------------------------------------------------------------------------------
    def _entry(self, rows: list[dict], unit: str) -> dict[str, Any]:
        """Mean score with its interval and reference levels over ``rows``; ``unit``: what the minimum counts."""
        scores = [r["score"] for r in rows]
        groups = [r.get("question", r.get("phrase", r.get("pair"))) for r in rows]
        units = len({r[unit] for r in rows})
        priors = [r["prior"] for r in rows if not np.isnan(r["prior"])]
        return {
            "score": float(np.mean(scores)),
            "ci95": _interval(scores, groups),
            "n": len(rows),
            unit + "s": units,
            "chance": float(np.mean([r["chance"] for r in rows])),
            "prior": float(np.mean(priors)) if priors else None,
            "ceiling": float(np.mean([r["ceiling"] for r in rows])),
            "enough": units >= MIN_SCORED,
        }

    def summary(self) -> dict[str, Any]:
        """The metrics.json entry ``box_pointing`` (empty when nothing was scored)."""
        out: dict[str, Any] = {}
        ci: dict[str, Any] = {}
        for key in ("mask", "keyword_cam"):
            if self.rows[key]:
                ci[key] = self._entry(self.rows[key], "pair")
        by_finding = self.rows["mask_finding"] + self.rows["keyword_cam_finding"]
        findings = sorted({r["finding"] for r in by_finding}, key=lambda f: -sum(r["finding"] == f for r in by_finding))
        per_finding = {}
        for finding in findings:
            entry = {}
            for key in ("mask", "keyword_cam"):
                rows = self.rows[f"{key}_finding"]
                chosen = [r for r in rows if r["finding"] == finding]
                if chosen:
                    entry[key] = self._entry(chosen, "pair")
            per_finding[finding] = entry
        if per_finding:
            ci["per_finding"] = per_finding
        if self.truth:
            ci["pixel_truth"] = self._agreement()
        if ci:
            ci["prior_point"] = _point(self.priors.get("chest_imagenome"))
            out["chest_imagenome"] = ci
        if self.rows["ms_cxr"]:
            rows = self.rows["ms_cxr"]
            ms = {"keyword_cam": self._entry(rows, "phrase"), "images": len({r["image"] for r in rows})}
            ms["per_finding"] = {
                f: self._entry([r for r in rows if r["finding"] == f], "phrase")
                for f in sorted({r["finding"] for r in rows}, key=lambda f: -sum(r["finding"] == f for r in rows))
            }
            ms["prior_point"] = _point(self.priors.get("ms_cxr"))
            out["ms_cxr"] = ms
        if out:
            out.update(
                min_scored=MIN_SCORED,
                grid=f"{self.cells}x{self.cells}",
                tie_rule="a map scores the fraction of its tied maximum pixels inside the region",
                skipped={k: v["count"] for k, v in (self.boxes.summary.get("skipped") or {}).items()},
            )
        return out

    def _agreement(self) -> dict[str, Any]:
        """Box-based vs pixel-truth pointing game of M on the same questions (phantom caches)."""
        box, pixel, box_share, pixel_share = (list(column) for column in zip(*self.truth, strict=True))
        each = list(range(len(box)))  # one score per question: the intervals resample questions
        low, high = _interval(pixel, each)
        estimate = float(np.mean(box))
        # Each score as the share of the way from its own chance level to 1, per question: box regions are larger,
        # and so is their chance level; this compares how far above its own chance each one is.
        lift = {
            name: [(s - c) / max(1.0 - c, 1e-12) for s, c in zip(scores, shares, strict=True)]
            for name, scores, shares in (("box", box, box_share), ("pixel", pixel, pixel_share))
        }
        return {
            "questions": len(box),
            "box": {"score": estimate, "ci95": _interval(box, each), "chance": float(np.mean(box_share))},
            "pixel": {"score": float(np.mean(pixel)), "ci95": [low, high], "chance": float(np.mean(pixel_share))},
            "difference": paired_interval(box, pixel).to_dict(),
            "box_within_pixel_interval": bool(low <= estimate <= high),
            "above_chance": {
                "box": {"score": float(np.mean(lift["box"])), "ci95": _interval(lift["box"], each)},
                "pixel": {"score": float(np.mean(lift["pixel"])), "ci95": _interval(lift["pixel"], each)},
                "difference": paired_interval(lift["box"], lift["pixel"]).to_dict(),
            },
            "area_ratio": float(np.mean(box_share) / max(np.mean(pixel_share), 1e-12)),
            "enough": len(box) >= MIN_SCORED,
        }


def _point(point) -> list[int] | None:
    return None if point is None else [int(point[0]), int(point[1])]


def _corners(box) -> list[tuple[float, float]]:
    """A box (x1, y1, x2, y2) -> its 4 corners, clockwise from the top left."""
    x1, y1, x2, y2 = box
    return [(x1, y1), (x2, y1), (x2, y2), (x1, y2)]


def _to_reference(corners: list[tuple[float, float]], theta: Tensor, size: int) -> list[tuple[float, float]]:
    """Main-image pixels -> the reference frame (the aligned main image at p shows the main image at Θ p, in
    normalised coordinates, align_corners=False; so a main point q lies at Θ^-1 q)."""
    matrix = np.vstack([theta.numpy(), [0.0, 0.0, 1.0]])
    inverse = np.linalg.inv(matrix)
    out = []
    for x, y in corners:
        u, v = (2 * x + 1) / size - 1, (2 * y + 1) / size - 1
        pu, pv, _ = inverse @ [u, v, 1.0]
        out.append((((pu + 1) * size - 1) / 2, ((pv + 1) * size - 1) / 2))
    return out
