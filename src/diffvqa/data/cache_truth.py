"""Ground truth in a prepared cache (phantom releases): the phantom's affines and masks in the cache frames.

:func:`write_truth` carries a release's ``ground_truth/`` (``diffvqa.data.ground_truth.GroundTruth``, contract in
``diffvqa.data.phantom``) into the S x S frames of ``diffvqa prepare``'s cache; :class:`CacheTruth` reads it
back for :class:`diffvqa.data.cache_reader.ImageCache`. Layout of ``truth/`` (``P`` = pairs, ``F`` = findings)::

    pairs.csv             one row per (study_id, ref_id) of questions.csv: main/ref dicom ids, has_truth, keyword
    theta.npy             (P, 2, 3) float64 theta_true (NaN where has_truth is 0)
    change_masks.u8.npy   (P, S, S) uint8 in {0, 1}, in the reference image's cache frame
    findings.csv          one row per finding of a cached image: dicom_id, name, location, level, type
    finding_masks.u8.npy  (F, S, S) uint8 in {0, 1}, in that image's cache frame
    changes.csv           one row per (pair, changed finding, side) of the release's changes.csv: pair (row of
                          pairs.csv), name, side ("left" | "right" | "", the patient's side)
    change_regions.u8.npy (R, S, S) uint8 in {0, 1}, row r = changes.csv row r, in the reference's cache frame

``changes.csv`` and ``change_regions.u8.npy`` exist only when the release has ``ground_truth/changes.csv``
(phantom releases written before it have none: :attr:`CacheTruth.has_regions` is then False).

theta_true (normalised coordinates of the S x S frames, ``align_corners=False``, pull direction): for a point u
of the reference frame, ``theta_true @ [u, 1]`` is where the same anatomy lies in the main frame, so
``grid_sample(main, affine_grid(theta_true, align_corners=False), align_corners=False) ~ ref``. With
N = original pixel -> normalised cache coordinates (``Geometry.normalised_matrix``) and M the phantom's
reference-pixel -> main-pixel map: ``theta_true = N_main @ M @ N_ref^-1``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from diffvqa.data.images import Geometry
from diffvqa.data.release import Release
from diffvqa.files.disk import preallocate

TRUTH = "truth"

MaskJob = tuple[str, Geometry]  # (mask PNG path, geometry of the image whose frame it is in)


def mask_to_cache_frame(job: MaskJob) -> np.ndarray:
    """A 0/255 PNG in an image's original frame -> (S, S) uint8 {0, 1} in its cache frame (runs in workers)."""
    from PIL import Image

    path, geometry = job
    with Image.open(path) as image:
        mask = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    if mask.shape != (geometry.orig_h, geometry.orig_w):
        raise ValueError(
            f"{path}: mask is {mask.shape[0]}x{mask.shape[1]} but its image is {geometry.orig_h}x{geometry.orig_w}"
        )
    return (geometry.to_cache_frame(mask) >= 0.5).astype(np.uint8)


def _write_masks(path: Path, jobs: list[MaskJob | None], masks: Iterator[np.ndarray], size: int) -> None:
    """A (len(jobs), S, S) uint8 array file: the next of ``masks`` for each job, zeros where a job is None."""
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(len(jobs), size, size))
    preallocate(path)  # a full device: ENOSPC here instead of a SIGBUS while writing the map
    for i, job in enumerate(jobs):
        if job is not None:
            array[i] = next(masks)
    array.flush()


def _region_rows(
    changes: pd.DataFrame | None,
    pairs: pd.DataFrame,
    has_truth: np.ndarray,
    geometries: Mapping[str, Geometry],
    directory: Path,
) -> tuple[pd.DataFrame | None, list[MaskJob]]:
    """The release's change regions of the cached pairs with truth: (pair, name, side) rows and their mask jobs
    (the reference's geometry); (None, []) when the release has no changes.csv."""
    if changes is None:
        return None, []
    row_of = {
        (int(s), int(r)): p for p, (s, r) in enumerate(zip(pairs.study_id, pairs.ref_id, strict=True)) if has_truth[p]
    }
    rows, jobs = [], []
    for study_id, ref_id, name, side, mask_file in changes.itertuples(index=False):
        p = row_of.get((int(study_id), int(ref_id)))
        if p is None:  # a pair without questions in this cache (its split or question types were left out)
            continue
        rows.append((p, name, side))
        jobs.append((str(directory / mask_file), geometries[pairs.ref_dicom_id.iloc[p]]))
    return pd.DataFrame(rows, columns=["pair", "name", "side"]), jobs


def write_truth(
    out: Path,
    release: Release,
    geometries: Mapping[str, Geometry],
    size: int,
    imap: Callable[[Callable, list], Iterable] = map,
    progress: bool = False,
) -> dict:
    """Carry the phantom's ground truth into the cache frames: ``out/truth/`` (layout in the module docstring).

    Args:
        out: the cache directory.
        release: the reader's release (``release.truth`` set), without the questions of unreadable images.
        geometries: dicom_id -> cache geometry of every decoded image.
        size: S.
        imap: an ordered map over the mask jobs (the caller's process pool; ``map`` decodes them here).
        progress: show a tqdm bar.

    Returns:
        Counts: pairs, pairs_with_truth, findings, questions_with_keyword.
    """
    from tqdm import tqdm

    truth = release.truth
    directory = out / TRUTH
    directory.mkdir(exist_ok=True)
    q = release.questions
    pairs = q[["study_id", "ref_id", "main_dicom_id", "ref_dicom_id"]].drop_duplicates(["study_id", "ref_id"])
    pairs = pairs.sort_values(["study_id", "ref_id"], kind="stable").reset_index(drop=True)
    gt_row = {
        (int(s), int(r)): i for i, (s, r) in enumerate(zip(truth.pairs.study_id, truth.pairs.ref_id, strict=True))
    }

    thetas = np.full((len(pairs), 2, 3), np.nan)
    has_truth = np.zeros(len(pairs), np.int8)
    keywords: list[str] = []
    mask_jobs: list[MaskJob | None] = []
    for p, pair in enumerate(pairs.itertuples(index=False)):
        g = gt_row.get((int(pair.study_id), int(pair.ref_id)))
        main_geo = geometries[pair.main_dicom_id]
        ref_geo = geometries[pair.ref_dicom_id]
        if g is None:
            keywords.append("")
            mask_jobs.append(None)
            continue
        has_truth[p] = 1
        m = np.vstack([truth.matrix(g), [0.0, 0.0, 1.0]])
        thetas[p] = (main_geo.normalised_matrix() @ m @ np.linalg.inv(ref_geo.normalised_matrix()))[:2]
        keywords.append(truth.pairs.keyword.iloc[g])
        mask_file = truth.pairs.change_mask_file.iloc[g]
        mask_jobs.append((str(truth.directory / mask_file), ref_geo) if mask_file else None)

    findings = truth.findings[truth.findings.dicom_id.isin(geometries)].reset_index(drop=True)
    finding_jobs = [
        (str(truth.directory / f), geometries[d]) if f else None
        for f, d in zip(findings.mask_file, findings.dicom_id, strict=True)
    ]
    regions, region_jobs = _region_rows(truth.changes, pairs, has_truth, geometries, truth.directory)
    jobs = [j for j in mask_jobs + finding_jobs + region_jobs if j is not None]
    masks = iter(tqdm(imap(mask_to_cache_frame, jobs), total=len(jobs), desc="truth masks", disable=not progress))
    _write_masks(directory / "change_masks.u8.npy", mask_jobs, masks, size)
    _write_masks(directory / "finding_masks.u8.npy", finding_jobs, masks, size)
    if regions is not None:
        _write_masks(directory / "change_regions.u8.npy", region_jobs, masks, size)
        regions.to_csv(directory / "changes.csv", index=False, lineterminator="\n")

    pairs["has_truth"] = has_truth
    pairs["keyword"] = keywords
    pairs.to_csv(directory / "pairs.csv", index=False, lineterminator="\n")
    np.save(directory / "theta.npy", thetas)
    findings[["dicom_id", "name", "location", "level", "type"]].to_csv(
        directory / "findings.csv", index=False, lineterminator="\n"
    )
    return {
        "pairs": len(pairs),
        "pairs_with_truth": int(has_truth.sum()),
        "findings": len(findings),
        "change_regions": None if regions is None else len(regions),
        "questions_with_keyword": int(sum(int(i) in truth.keywords for i in q.question_index)),
    }


class CacheTruth:
    """A cache's ``truth/`` read back: the tables in memory, the masks memory-mapped read-only."""

    def __init__(self, cache_dir: str | Path):
        directory = Path(cache_dir) / TRUTH
        pairs = pd.read_csv(directory / "pairs.csv", dtype={"keyword": str}, keep_default_na=False)
        keys = zip(pairs.study_id.tolist(), pairs.ref_id.tolist(), strict=True)
        self.pair_row = {key: i for i, key in enumerate(keys)}
        self.has_truth = pairs.has_truth.to_numpy(bool)
        self.keyword = pairs.keyword.tolist()
        self.theta = np.load(directory / "theta.npy")
        self.findings_table = pd.read_csv(directory / "findings.csv", dtype=str, keep_default_na=False)
        self.change_masks = np.load(directory / "change_masks.u8.npy", mmap_mode="r")
        self.finding_masks = np.load(directory / "finding_masks.u8.npy", mmap_mode="r")
        # Per-finding change regions: absent from caches of releases without ground_truth/changes.csv.
        self.has_regions = (directory / "changes.csv").is_file()
        self.region_rows: dict[int, list[int]] = {}  # pair row -> its rows of changes.csv, in file order
        if self.has_regions:
            regions = pd.read_csv(directory / "changes.csv", dtype={"name": str, "side": str}, keep_default_na=False)
            self.region_name, self.region_side = regions.name.tolist(), regions.side.tolist()
            for r, p in enumerate(regions.pair.tolist()):
                self.region_rows.setdefault(int(p), []).append(r)
            self.change_regions = np.load(directory / "change_regions.u8.npy", mmap_mode="r")

    @staticmethod
    def exists(cache_dir: str | Path) -> bool:
        return (Path(cache_dir) / TRUTH / "pairs.csv").is_file()

    def pair(self, study_id: int, ref_id: int) -> dict | None:
        """Ground truth of a pair, or None when the pair has none.

        Returns:
            dict(theta (2, 3) float64, change_mask (S, S) uint8 in {0, 1} in the reference frame, keyword str).
        """
        p = self.pair_row.get((int(study_id), int(ref_id)))
        if p is None or not self.has_truth[p]:
            return None
        return {
            "theta": self.theta[p].copy(),
            "change_mask": np.array(self.change_masks[p]),
            "keyword": self.keyword[p],
        }

    def regions(self, study_id: int, ref_id: int) -> list[dict] | None:
        """The per-finding change regions of a pair (release's changes.csv order); None when the pair has no
        ground truth or the cache has no per-finding regions (:attr:`has_regions`).

        Returns:
            [dict(name, side ("left" | "right" | ""), mask (S, S) uint8 in {0, 1} in the reference frame)];
            [] when nothing changed.
        """
        p = self.pair_row.get((int(study_id), int(ref_id)))
        if p is None or not self.has_truth[p] or not self.has_regions:
            return None
        return [
            {"name": self.region_name[r], "side": self.region_side[r], "mask": np.array(self.change_regions[r])}
            for r in self.region_rows.get(p, [])
        ]

    def findings(self, dicom_id: str) -> list[dict]:
        """The ground-truth findings of an image.

        Returns:
            [dict(name, location, level, type, mask (S, S) uint8 in {0, 1} in the image's cache frame)].
        """
        table, masks = self.findings_table, self.finding_masks
        rows = np.flatnonzero(table.dicom_id.to_numpy() == dicom_id)
        return [
            {k: table[k].iloc[i] for k in ("name", "location", "level", "type")} | {"mask": np.array(masks[i])}
            for i in rows
        ]
