"""Boxes in a prepared cache: Chest ImaGenome's regions and comparisons and MS-CXR's phrases, in the cache frames.

``diffvqa prepare --boxes DIR [DIR ...]`` calls :func:`write_boxes` after the images are decoded: it reads the
datasets under the directories (:mod:`diffvqa.data.chest_imagenome`, :mod:`diffvqa.data.ms_cxr`; each directory is
recognised by what it holds) for the cache's images, maps every box into its image's S x S cache frame and writes
``boxes/``; :class:`CacheBoxes` reads it back for ``evaluate`` (:mod:`diffvqa.metrics.boxes`). Layout::

    boxes/regions.csv      one row per (cached image, region): dicom_id, region, x1, y1, x2, y2, source
    boxes/comparisons.csv  one row per comparison of a cached pair, made between the pair's own two images:
                           study_id, ref_id, region, change (worsened | improved | no change), findings
                           (Medical-Diff-VQA names joined by ";", "" for one without a name), attributes (as given)
    boxes/phrases.csv      one row per MS-CXR box of a cached image: dicom_id, phrase (number of the phrase in this
                           file), category, finding, text, x1, y1, x2, y2, split
    boxes/boxes.json       written last: the sources read, counts, and every skip by reason with its first example

Coordinates are cache pixels (x right, y down, pixel centres at integers, :mod:`diffvqa.data.images`); a box covers
[x1, x2] x [y1, y2] and, rasterised (:func:`rasterise`), the pixels whose centres it holds. The dataset's box edges
[0, W] are the image's outer pixel edges, so a box over a whole image covers exactly its content in the frame.

A comparison is kept only when it was made between the pair's main image (the later, Chest ImaGenome's current)
and its reference image (the prior); one whose prior is another image is counted (``prior_not_reference``) and not
scored, as is a changed region that the reference image has no box for (``no_reference_box``). The scores are in
the reference frame (the main image is aligned onto it), so a changed region is drawn with the reference's box.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from diffvqa.data.box_reading import Box, Skips
from diffvqa.data.cache_reader import ImageCache
from diffvqa.data.chest_imagenome import CHANGES, find_chest_imagenome, read_chest_imagenome, region_side
from diffvqa.data.images import Geometry
from diffvqa.data.ms_cxr import FILE as MS_CXR_FILE
from diffvqa.data.ms_cxr import find_ms_cxr, read_ms_cxr
from diffvqa.errors import MissingInputError, UserError
from diffvqa.files.atomic import write_atomic

BOXES = "boxes"
SUMMARY = "boxes.json"
REGION_COLUMNS = ("dicom_id", "region", "x1", "y1", "x2", "y2", "source")
COMPARISON_COLUMNS = ("study_id", "ref_id", "region", "change", "findings", "attributes")
PHRASE_COLUMNS = ("dicom_id", "phrase", "category", "finding", "text", "x1", "y1", "x2", "y2", "split")


def box_sources(dirs: Sequence[str | Path]) -> dict[str, Path]:
    """Which dataset each directory holds -> {"chest_imagenome": dir, "ms_cxr": dir} (one directory may hold
    both). A directory that is not there, holds neither, or repeats a dataset is a UserError naming it."""
    found: dict[str, Path] = {}
    for directory in map(Path, dirs):
        if not directory.is_dir():
            raise MissingInputError(f"--boxes {directory}: not a directory")
        kinds = [k for k, there in (("chest_imagenome", find_chest_imagenome(directory)),
                                    ("ms_cxr", find_ms_cxr(directory) is not None)) if there]  # fmt: skip
        if not kinds:
            raise UserError(
                f"--boxes {directory}: holds neither Chest ImaGenome (silver_dataset/scene_graph.zip or the gold "
                f"files) nor MS-CXR ({MS_CXR_FILE}); expected the directory of one of them"
            )
        for kind in kinds:
            if kind in found and found[kind] != directory:
                raise UserError(f"--boxes: {found[kind]} and {directory} both hold {kind.replace('_', ' ')}")
            found[kind] = directory
    return found


def to_cache_box(box: Box, size: tuple[float, float], geometry: Geometry) -> Box:
    """A box in an image's original pixels (given for a ``size`` = (width, height) image) -> cache pixels. The
    dataset's size may differ from the cached file's (another copy of the image): the box is scaled to it."""
    width, height = size
    sx, sy = geometry.orig_w / width, geometry.orig_h / height
    # box edges [0, W] are pixel edges: in pixel-centre coordinates they are -0.5 and W - 0.5
    xs, ys = geometry.to_cache(np.array([box[0] * sx, box[2] * sx]) - 0.5, np.array([box[1] * sy, box[3] * sy]) - 0.5)
    return float(xs[0]), float(ys[0]), float(xs[1]), float(ys[1])


def rasterise(boxes: Sequence[Box], size: int) -> np.ndarray:
    """The union of boxes (cache pixels) -> (S, S) uint8 {0, 1}: the pixels whose centres a box holds; a box too
    small to hold one marks the pixel nearest its centre."""
    mask = np.zeros((size, size), np.uint8)
    for x1, y1, x2, y2 in boxes:
        c0, c1 = max(0, int(np.ceil(x1))), min(size - 1, int(np.floor(x2)))
        r0, r1 = max(0, int(np.ceil(y1))), min(size - 1, int(np.floor(y2)))
        if c1 < c0 or r1 < r0:
            c0 = c1 = int(np.clip(round((x1 + x2) / 2), 0, size - 1))
            r0 = r1 = int(np.clip(round((y1 + y2) / 2), 0, size - 1))
        mask[r0 : r1 + 1, c0 : c1 + 1] = 1
    return mask


def _geometries(cache: ImageCache) -> dict[str, Geometry]:
    """dicom_id -> geometry of every decoded image of the cache."""
    out = {}
    for dicom_id in cache.dicom_ids:
        try:
            out[dicom_id] = cache.geometry(dicom_id)
        except KeyError:  # not decoded: no frame to map into
            continue
    return out


def _fmt(value: float) -> str:
    return f"{value:.3f}"


def write_boxes(cache_dir: str | Path, dirs: Sequence[str | Path], progress: bool = False) -> dict:
    """Read the box datasets under ``dirs`` for a prepared cache's images and write ``cache_dir/boxes/`` (layout:
    module docstring), replacing an earlier one whole. Returns the summary written to ``boxes/boxes.json``."""
    sources = box_sources(dirs)
    cache = ImageCache(cache_dir)
    geometries = _geometries(cache)
    q = cache.questions()
    pairs = q[["study_id", "ref_id", "main_dicom_id", "ref_dicom_id", "split"]].drop_duplicates(["study_id", "ref_id"])
    skips = Skips()
    summary: dict = {"sources": {k: str(Path(v).resolve()) for k, v in sources.items()}, "size": cache.size}
    regions, comparisons, phrases = [], [], []
    if "chest_imagenome" in sources:
        ci = read_chest_imagenome(sources["chest_imagenome"], set(geometries), progress)
        skips.update(ci.skips)
        for dicom_id in sorted(ci.boxes):
            geometry = geometries[dicom_id]
            for region, box in ci.boxes[dicom_id].items():
                x1, y1, x2, y2 = to_cache_box(box, ci.sizes[dicom_id], geometry)
                source = "gold" if dicom_id in ci.gold else "silver"
                regions.append((dicom_id, region, *map(_fmt, (x1, y1, x2, y2)), source))
        compared = changed = 0
        for pair in pairs.itertuples(index=False):
            kept = []
            for c in ci.comparisons.get(pair.main_dicom_id, []):
                where = f"pair ({pair.study_id}, {pair.ref_id}): {pair.main_dicom_id} {c.region} {c.change}"
                if c.prior != pair.ref_dicom_id:
                    skips.add(
                        "prior_not_reference", f"{where} against {c.prior}, not the reference {pair.ref_dicom_id}"
                    )
                    continue
                if c.change in CHANGES and c.region not in ci.boxes.get(pair.ref_dicom_id, {}):
                    skips.add("no_reference_box", f"{where}: the reference {pair.ref_dicom_id} has no such box")
                    continue
                kept.append(c)
            compared += bool(kept)
            changed += any(c.change in CHANGES for c in kept)
            comparisons += [(pair.study_id, pair.ref_id, c.region, c.change, ";".join(c.findings),
                             ";".join(c.attributes)) for c in kept]  # fmt: skip
        summary["chest_imagenome"] = {
            "files": ci.files,
            "images_with_boxes": len(ci.boxes),
            "gold_images": len(ci.gold),
            "cached_images_in_splits": len(ci.split_images & set(geometries)),
            "pairs": len(pairs),
            "pairs_compared": compared,
            "pairs_with_a_changed_region": changed,
            "comparisons": len(comparisons),
        }
    if "ms_cxr" in sources:
        ms = read_ms_cxr(sources["ms_cxr"], set(geometries))
        skips.update(ms.skips)
        for number, phrase in enumerate(ms.phrases):
            for box in phrase.boxes:
                cache_box = to_cache_box(box, (phrase.width, phrase.height), geometries[phrase.dicom_id])
                phrases.append((phrase.dicom_id, number, phrase.category, phrase.finding, phrase.text,
                                *map(_fmt, cache_box), phrase.split))  # fmt: skip
        summary["ms_cxr"] = {
            "file": ms.file,
            "phrases": len(ms.phrases),
            "boxes": len(phrases),
            "images": len({p.dicom_id for p in ms.phrases}),
        }
    summary["skipped"] = skips.to_dict()
    _write_directory(Path(cache_dir), regions, comparisons, phrases, summary)
    return summary


def _write_directory(cache_dir: Path, regions: list, comparisons: list, phrases: list, summary: dict) -> None:
    """Write boxes/ beside the old one and swap it in: a reader never sees half of it."""
    partial = cache_dir / f"{BOXES}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    for name, columns, rows in (("regions.csv", REGION_COLUMNS, regions),
                                ("comparisons.csv", COMPARISON_COLUMNS, comparisons),
                                ("phrases.csv", PHRASE_COLUMNS, phrases)):  # fmt: skip
        pd.DataFrame(rows, columns=list(columns)).to_csv(partial / name, index=False, lineterminator="\n")
    write_atomic(partial / SUMMARY, json.dumps(summary, indent=2) + "\n")
    target = cache_dir / BOXES
    if target.exists():
        old = cache_dir / f"{BOXES}.old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(partial, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(partial, target)


def report_lines(summary: dict) -> list[str]:
    """What ``prepare`` prints about the boxes it carried (counts, then every skip by reason)."""
    lines = ["boxes (saliency scored against them by evaluate):"]
    ci = summary.get("chest_imagenome")
    if ci:
        lines.append(
            f"  Chest ImaGenome: {ci['images_with_boxes']:,} cached images with region boxes ({ci['gold_images']:,} "
            f"gold); {ci['pairs_compared']:,} of {ci['pairs']:,} pairs compared between their own two images, "
            f"{ci['pairs_with_a_changed_region']:,} with a region worsened or improved"
        )
    ms = summary.get("ms_cxr")
    if ms:
        lines.append(f"  MS-CXR: {ms['phrases']:,} phrases ({ms['boxes']:,} boxes) on {ms['images']:,} cached images")
    skipped = summary.get("skipped") or {}
    if skipped:
        lines.append("  skipped or changed (each counted under its reason; the first of each shown):")
        for reason, entry in skipped.items():
            lines.append(f"    {reason:<20} {entry['count']:>8,}   {entry['meaning']}")
            lines.append(f"    {'':<20} {'':>8}   first: {entry['first']}")
    else:
        lines.append("  nothing skipped")
    return lines


class CacheBoxes:
    """A cache's ``boxes/`` read back (tables in memory; masks rasterised on request, S x S uint8 {0, 1})."""

    def __init__(self, cache_dir: str | Path):
        self.directory = Path(cache_dir) / BOXES
        try:
            self.summary = json.loads((self.directory / SUMMARY).read_text(encoding="utf-8"))
            regions = pd.read_csv(self.directory / "regions.csv", dtype={"dicom_id": str, "region": str})
            comparisons = pd.read_csv(self.directory / "comparisons.csv", dtype=str, keep_default_na=False)
            phrases = pd.read_csv(self.directory / "phrases.csv", dtype={"dicom_id": str, "text": str},
                                  keep_default_na=False)  # fmt: skip
        except (OSError, ValueError, KeyError, pd.errors.ParserError) as exc:
            raise UserError(f"{self.directory}: damaged ({exc}); run `diffvqa prepare ... --boxes DIR` again") from None
        self.size = int(self.summary["size"])
        self.boxes: dict[str, dict[str, Box]] = {}
        for d, r, *box in regions[["dicom_id", "region", "x1", "y1", "x2", "y2"]].itertuples(index=False):
            self.boxes.setdefault(d, {})[r] = tuple(float(v) for v in box)
        self.comparisons: dict[tuple[int, int], list[dict]] = {}
        for row in comparisons.itertuples(index=False):
            findings = tuple(row.findings.split(";")) if row.findings else ()
            entry = {"region": row.region, "change": row.change, "findings": findings}
            self.comparisons.setdefault((int(row.study_id), int(row.ref_id)), []).append(entry)
        self.phrases: dict[str, list[dict]] = {}
        for number, group in phrases.groupby("phrase", sort=True):
            first = group.iloc[0]
            boxes = [tuple(float(v) for v in b) for b in group[["x1", "y1", "x2", "y2"]].itertuples(index=False)]
            self.phrases.setdefault(first.dicom_id, []).append(
                {
                    "phrase": int(number),
                    "finding": first.finding,
                    "category": first.category,
                    "text": first.text,
                    "boxes": boxes,
                    "split": first.split,
                }  # fmt: skip
            )

    @staticmethod
    def exists(cache_dir: str | Path) -> bool:
        return (Path(cache_dir) / BOXES / SUMMARY).is_file()

    @property
    def has_comparisons(self) -> bool:
        return "chest_imagenome" in self.summary

    @property
    def has_phrases(self) -> bool:
        return "ms_cxr" in self.summary

    def changed(self, study_id: int, ref_id: int, side: str = "", finding: str | None = None) -> list[dict]:
        """The pair's comparisons that mark a region worsened or improved -- on the patient's ``side`` ("left" /
        "right"; "" for any), naming ``finding`` (None for any) -- each dict(region, change, findings)."""
        return [
            c for c in self.comparisons.get((int(study_id), int(ref_id)), [])
            if c["change"] in CHANGES and (not side or region_side(c["region"]) == side)
            and (finding is None or finding in c["findings"])
        ]  # fmt: skip

    def changed_boxes(self, study_id: int, ref_id: int, ref_dicom_id: str, side: str = "",
                      finding: str | None = None) -> list[Box]:  # fmt: skip
        """The reference image's boxes of the regions :meth:`changed` returns (each region once, in order)."""
        regions = dict.fromkeys(c["region"] for c in self.changed(study_id, ref_id, side, finding))
        boxes = self.boxes.get(ref_dicom_id, {})
        return [boxes[r] for r in regions if r in boxes]

    def region_mask(self, boxes: Sequence[Box]) -> np.ndarray:
        """:func:`rasterise` at this cache's S."""
        return rasterise(boxes, self.size)


def changed_region_counts(cache_dir: str | Path, split: str) -> tuple[np.ndarray, int]:
    """How many changed-region masks (union of the reference's boxes of a pair's worsened or improved regions, the
    asked lung's for a one-lung question) of ``split``'s difference questions hold each pixel -> ((S, S) int64, the
    number of masks): e.g. to learn the fixed-point prior on the train split. Summed, not stacked: MIMIC's train
    split has 131,556 difference questions."""
    from diffvqa.data.regions import question_side

    boxes = CacheBoxes(cache_dir)
    q = ImageCache(cache_dir).questions()
    q = q[(q.split == split) & (q.question_type == "difference")]
    counts, n = np.zeros((boxes.size, boxes.size), np.int64), 0
    for study_id, ref_id, ref_dicom_id, question in zip(q.study_id, q.ref_id, q.ref_dicom_id, q.question,
                                                        strict=True):  # fmt: skip
        found = boxes.changed_boxes(study_id, ref_id, ref_dicom_id, question_side(question, "difference"))
        if found:
            counts += boxes.region_mask(found)
            n += 1
    return counts, n


def phrase_counts(cache_dir: str | Path, split: str) -> tuple[np.ndarray, int]:
    """How many MS-CXR phrase masks (union of a phrase's boxes) of the images of ``split``'s questions hold each
    pixel -> ((S, S) int64, the number of masks)."""
    boxes = CacheBoxes(cache_dir)
    q = ImageCache(cache_dir).questions()
    q = q[q.split == split]
    counts, n = np.zeros((boxes.size, boxes.size), np.int64), 0
    for dicom_id in dict.fromkeys([*q.main_dicom_id, *q.ref_dicom_id]):
        for phrase in boxes.phrases.get(dicom_id, []):
            counts += boxes.region_mask(phrase["boxes"])
            n += 1
    return counts, n
