"""Reading MS-CXR v1.1.0 (PhysioNet ``ms-cxr/1.1.0``): boxes around the phrases of 8 findings on single MIMIC-CXR
images.

``MS_CXR_Local_Alignment_v1.1.0.csv`` (found by name under the directory given; another version's
``MS_CXR_Local_Alignment_v*.csv`` is read when 1.1.0's is not there) has the columns ``dicom_id, category_name,
label_text, path, x, y, w, h, image_width, image_height`` and, in 1.1.0, ``split``. One row is one box in the
image's original pixels (``x``, ``y`` its top-left corner, ``w`` x ``h`` its size); a phrase with several boxes
(e.g. both lungs) has several rows, so rows are grouped by image and phrase (:class:`Phrase`). The 8 categories
are findings of the Medical-Diff-VQA vocabulary (:data:`CATEGORIES`), the keyword a Grad-CAM is computed for.

Tolerant like the Chest ImaGenome reader (:mod:`diffvqa.data.box_reading`): a missing column skips the file, and a
row with an unknown category, a value that is not a number, or a box without area is counted and left out; a box
reaching past its image is clamped.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

from diffvqa.data.box_reading import Box, Skips, checked_box, number_or_none, positive_number

FILE = "MS_CXR_Local_Alignment_v1.1.0.csv"
FILE_PATTERN = "MS_CXR_Local_Alignment_v*.csv"
COLUMNS = ("dicom_id", "category_name", "label_text", "x", "y", "w", "h", "image_width", "image_height")
# MS-CXR category -> the Medical-Diff-VQA finding name (docs/data.md)
CATEGORIES = {
    "Atelectasis": "atelectasis",
    "Cardiomegaly": "cardiomegaly",
    "Consolidation": "consolidation",
    "Edema": "edema",
    "Lung Opacity": "lung opacity",
    "Pleural Effusion": "pleural effusion",
    "Pneumonia": "pneumonia",
    "Pneumothorax": "pneumothorax",
}


@dataclass
class Phrase:
    """One phrase of one image with its boxes (original pixels of an ``width`` x ``height`` image)."""

    dicom_id: str
    category: str
    finding: str  # the Medical-Diff-VQA name of ``category``
    text: str
    boxes: list[Box] = field(default_factory=list)
    width: float = 0.0
    height: float = 0.0
    split: str = ""


@dataclass
class MsCxr:
    """What :func:`read_ms_cxr` read: the phrases (in file order), the file, and what was skipped."""

    phrases: list[Phrase] = field(default_factory=list)
    file: str = ""
    skips: Skips = field(default_factory=Skips)


def find_ms_cxr(root: str | Path) -> Path | None:
    """The MS-CXR CSV under ``root`` (1.1.0's when there, else the newest other version's), or None."""
    found = sorted(Path(root).rglob(FILE_PATTERN))
    exact = [p for p in found if p.name == FILE]
    return (exact or found or [None])[-1]


def read_ms_cxr(root: str | Path, wanted: Collection[str] | None = None) -> MsCxr:
    """The phrases of the images ``wanted`` (dicom_ids; None: all) in the MS-CXR CSV under ``root``.

    Rows are grouped by (dicom_id, label_text, category), in the order the file first gives them.
    """
    out = MsCxr()
    path = find_ms_cxr(root)
    if path is None:
        return out
    out.file = str(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        out.skips.add("missing_column", f"{path}: unreadable ({exc})")
        return out
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [h.strip() for h in reader.fieldnames or []]
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        out.skips.add("missing_column", f"{path}: no column(s) {missing} (found {header})")
        return out
    reader.fieldnames = header
    phrases: dict[tuple[str, str, str], Phrase] = {}
    for number, raw in enumerate(reader, start=2):
        row = {k: (v or "").strip() for k, v in raw.items() if k is not None}
        dicom_id, category = row["dicom_id"], row["category_name"]
        if not dicom_id or (wanted is not None and dicom_id not in wanted):
            continue
        where = f"{path.name} line {number} ({dicom_id})"
        if category not in CATEGORIES:
            out.skips.add("unknown_category", f"{where}: category_name {category!r}")
            continue
        x, y, w, h = (number_or_none(row[k]) for k in ("x", "y", "w", "h"))
        width, height = positive_number(row["image_width"]), positive_number(row["image_height"])
        if None in (x, y, w, h) or width is None or height is None:
            values = [row[k] for k in ("x", "y", "w", "h", "image_width", "image_height")]
            out.skips.add("not_a_number", f"{where}: x, y, w, h, image_width, image_height = {values}")
            continue
        box = checked_box((x, y, x + w, y + h), width, height, f"{where}: x={x} y={y} w={w} h={h}", out.skips)
        if box is None:
            continue
        key = (dicom_id, row["label_text"], category)
        if key not in phrases:
            phrases[key] = Phrase(dicom_id, category, CATEGORIES[category], row["label_text"], [], width, height,
                                  row.get("split", ""))  # fmt: skip
            out.phrases.append(phrases[key])
        phrases[key].boxes.append(box)
    return out
