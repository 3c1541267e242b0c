"""Reading Chest ImaGenome 1.0.0 (PhysioNet ``chest-imagenome/1.0.0``): anatomical region boxes per image, and which
regions got worse or better since the patient's previous image.

Files read (found by name anywhere under the directory given: the nesting differs between copies)::

    silver_dataset/scene_graph.zip      <dicom_id>_SceneGraph.json per image, in folders that vary between copies
                                        (an unzipped scene_graph/ folder of the same files is read as well)
    silver_dataset/splits/{train,valid,test}.csv     [index,] subject_id, study_id, dicom_id, path, ViewPosition
    gold_dataset/gold_bbox_coordinate_annotations_1000images.csv     image_id (with or without ".dcm"), bbox_name,
                                        original_x1, original_y1, original_x2, original_y2, original_width,
                                        original_height, ...
    gold_dataset/gold_object_comparison_with_coordinates.txt   (tab-separated) current_image_id, previous_image_id,
                                        bbox, comparison, attribute, ... (ids with or without ".dcm")

A scene graph holds ``image_id`` (= dicom_id), ``patient_id``, ``study_id``, ``viewpoint``, ``StudyOrder``,
``StudyDateTime`` and three lists. Of them this reader uses ``objects`` -- one box per region: ``bbox_name``,
``original_x1 .. original_y2`` and ``original_width`` / ``original_height`` in the JPG's pixels (``x1 .. y2`` are
in a letterboxed 224 frame and not used) -- and ``relationships``, which live in the *current* image's graph:
``subject_id`` ``<current dicom>_<region>``, ``object_id`` ``<prior dicom>_<region>``, ``bbox_name``,
``relationship_names`` such as ``comparison|yes|worsened`` (or ``improved``, ``no change``) and ``attributes``, the
findings, such as ``anatomicalfinding|yes|pleural effusion``. 36 region names occur (:data:`REGIONS`; the paper
lists 29). Where the gold files cover an image, its gold boxes replace its silver boxes, and a current image's gold
comparisons replace its silver ones.

Everything is tolerant (:mod:`diffvqa.data.box_reading`): a graph that is not JSON, a missing field, an unknown region
name, a box outside its image or without area, a CSV without a needed column -- each is counted by reason and the
rest is read. Findings are given the Medical-Diff-VQA finding name they correspond to (:data:`FINDING_NAMES`;
"" where none does): the keyword a Grad-CAM is computed for.
"""

from __future__ import annotations

import csv
import io
import json
import zipfile
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from diffvqa.data.box_reading import Box, Skips, checked_box, number_or_none, positive_number

SCENE_GRAPH_SUFFIX = "_SceneGraph.json"
SCENE_GRAPH_ZIP = "scene_graph.zip"
SPLIT_FILES = ("train.csv", "valid.csv", "test.csv")
GOLD_BOXES = "gold_bbox_coordinate_annotations_1000images.csv"
GOLD_COMPARISONS = "gold_object_comparison_with_coordinates.txt"
SPLIT_COLUMNS = ("subject_id", "study_id", "dicom_id")
GOLD_BOX_COLUMNS = ("image_id", "bbox_name", "original_x1", "original_y1", "original_x2", "original_y2",
                    "original_width", "original_height")  # fmt: skip
GOLD_COMPARISON_COLUMNS = ("current_image_id", "previous_image_id", "bbox", "comparison")

REGIONS = (
    "right lung", "right upper lung zone", "right mid lung zone", "right lower lung zone", "right hilar structures",
    "right apical zone", "right costophrenic angle", "right cardiophrenic angle", "right hemidiaphragm",
    "left lung", "left upper lung zone", "left mid lung zone", "left lower lung zone", "left hilar structures",
    "left apical zone", "left costophrenic angle", "left cardiophrenic angle", "left hemidiaphragm",
    "trachea", "spine", "right clavicle", "left clavicle", "aortic arch", "mediastinum", "upper mediastinum", "svc",
    "cardiac silhouette", "left cardiac silhouette", "right cardiac silhouette", "cavoatrial junction",
    "right atrium", "descending aorta", "carina", "left upper abdomen", "right upper abdomen", "abdomen",
)  # fmt: skip
CHANGES = ("worsened", "improved")  # what counts as changed; "no change" is read and not scored
COMPARISONS = (*CHANGES, "no change")

# Chest ImaGenome finding (the last part of an attribute such as "anatomicalfinding|yes|pleural effusion") -> the
# Medical-Diff-VQA finding name (docs/data.md) it corresponds to. Findings not listed keep "" (no keyword).
FINDING_NAMES = {
    "lung opacity": "lung opacity",
    "airspace opacity": "lung opacity",
    "infiltration": "lung opacity",
    "consolidation": "consolidation",
    "atelectasis": "atelectasis",
    "linear/patchy atelectasis": "atelectasis",
    "lobar/segmental collapse": "atelectasis",
    "pulmonary edema/hazy opacity": "edema",
    "vascular congestion": "vascular congestion",
    "vascular redistribution": "vascular congestion",
    "pleural effusion": "pleural effusion",
    "costophrenic angle blunting": "blunting of the costophrenic angle",
    "pleural/parenchymal scarring": "pleural thickening",
    "enlarged cardiac silhouette": "cardiomegaly",
    "enlarged hilum": "hilar congestion",
    "tortuous aorta": "tortuosity of the thoracic aorta",
    "vascular calcification": "calcification",
    "pneumomediastinum": "pneumomediastinum",
    "pneumothorax": "pneumothorax",
    "hydropneumothorax": "pneumothorax",
    "calcified nodule": "granuloma",
    "granulomatous disease": "granuloma",
    "rib fracture": "fracture",
    "clavicle fracture": "fracture",
    "spinal fracture": "fracture",
    "hernia": "hernia",
    "scoliosis": "scoliosis",
    "copd/emphysema": "emphysema",
    "pneumonia": "pneumonia",
    "fluid overload/heart failure": "heart failure",
}


def region_side(region: str) -> str:
    """The patient's side a region lies on ("left" / "right"), "" for midline regions."""
    first = region.split(" ", 1)[0]
    return first if first in ("left", "right") else ""


def strip_dcm(image_id: str) -> str:
    """A gold file's image id without its ``.dcm`` (the gold files give ids with and without it)."""
    image_id = image_id.strip()
    return image_id[:-4] if image_id.lower().endswith(".dcm") else image_id


@dataclass(frozen=True)
class Comparison:
    """One region of a current image compared with the same region of a prior image.

    ``findings``: the Medical-Diff-VQA names of the findings the comparison names ("" for one without a name);
    ``attributes``: the dataset's own finding phrases, as given.
    """

    current: str  # dicom_id of the later image
    prior: str  # dicom_id of the earlier image
    region: str
    change: str  # "worsened" | "improved" | "no change"
    findings: tuple[str, ...] = ()
    attributes: tuple[str, ...] = ()


@dataclass
class ChestImaGenome:
    """What :func:`read_chest_imagenome` read.

    ``boxes``: dicom_id -> region -> box in original pixels, with ``sizes``: dicom_id -> (width, height) of the
    image the boxes are given in; ``comparisons``: current dicom_id -> its comparisons; ``split_images``: dicom_ids
    listed in the split CSVs; ``files``: what was read from where; ``skips``: what was not, by reason; ``gold``:
    the images whose boxes the gold file gave.
    """

    boxes: dict[str, dict[str, Box]] = field(default_factory=dict)
    sizes: dict[str, tuple[float, float]] = field(default_factory=dict)
    comparisons: dict[str, list[Comparison]] = field(default_factory=dict)
    split_images: set[str] = field(default_factory=set)
    files: dict[str, str] = field(default_factory=dict)
    skips: Skips = field(default_factory=Skips)
    gold: set[str] = field(default_factory=set)  # dicom_ids whose boxes come from the gold file


def _findings(attributes) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Affirmed findings of an attribute list (``category|yes|name``) -> (Diff-VQA names, dataset names)."""
    raw = []
    for attribute in attributes if isinstance(attributes, list) else []:
        parts = str(attribute).split("|")
        if len(parts) >= 3 and parts[1].strip() != "yes":
            continue  # "...|no|..." denies the finding
        raw.append(parts[-1].strip())
    return tuple(FINDING_NAMES.get(name, "") for name in raw), tuple(raw)


def _changes(names) -> list[str]:
    """The comparisons a relationship names (``comparison|yes|worsened`` -> "worsened"); [] when none."""
    out = []
    for name in names if isinstance(names, list) else []:
        parts = [p.strip() for p in str(name).split("|")]
        if parts[0] == "comparison" and parts[-1] in COMPARISONS and (len(parts) < 3 or parts[1] == "yes"):
            out.append(parts[-1])
    return out


def _known_region(region, where: str, skips: Skips) -> bool:
    """Is ``region`` one of the 36 names? A missing or unknown one is counted."""
    if not isinstance(region, str):
        skips.add("missing_field", f"{where}: no bbox_name")
        return False
    if region not in REGIONS:
        skips.add("unknown_region", f"{where}: bbox_name {region!r}")
        return False
    return True


def parse_scene_graph(text: str | bytes, where: str, skips: Skips) -> tuple[str, dict, tuple | None, list] | None:
    """One scene graph -> (dicom_id, region -> box, (width, height) or None, [Comparison]); None when it is not
    JSON or has no ``image_id`` (counted). Bad boxes and comparisons are counted and left out."""
    try:
        graph = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        skips.add("invalid_json", f"{where}: {exc}")
        return None
    if not isinstance(graph, dict) or not isinstance(graph.get("image_id"), str) or not graph["image_id"]:
        skips.add("missing_field", f"{where}: no image_id")
        return None
    dicom_id = graph["image_id"].strip()
    boxes, size = {}, None
    for k, obj in enumerate(graph.get("objects") or []):
        here = f"{where}: objects[{k}]"
        region = obj.get("bbox_name") if isinstance(obj, dict) else None
        if not _known_region(region, here, skips):
            continue
        keys = ("original_x1", "original_y1", "original_x2", "original_y2")
        if any(key not in obj for key in (*keys, "original_width", "original_height")):
            skips.add("missing_field", f"{here} ({region}): no original_x1..y2 / original_width / original_height")
            continue
        coords = [number_or_none(obj[key]) for key in keys]
        width, height = positive_number(obj["original_width"]), positive_number(obj["original_height"])
        if None in coords or width is None or height is None:
            skips.add("not_a_number", f"{here} ({region}): {[obj[key] for key in keys]} in {obj['original_width']!r}"
                      f" x {obj['original_height']!r}")  # fmt: skip
            continue
        box = checked_box(tuple(coords), width, height, f"{here} ({region}): {coords}", skips)
        if box is not None:
            boxes[region], size = box, (width, height)
    comparisons = []
    for k, rel in enumerate(graph.get("relationships") or []):
        here = f"{where}: relationships[{k}]"
        if not isinstance(rel, dict):
            skips.add("missing_field", f"{here}: not an object")
            continue
        changes = _changes(rel.get("relationship_names"))
        if not changes:
            continue  # not a comparison
        subject, obj = rel.get("subject_id"), rel.get("object_id")
        if not isinstance(obj, str) or "_" not in obj:
            skips.add("missing_field", f"{here}: object_id {obj!r} (expected <prior dicom_id>_<region>)")
            continue
        region = rel.get("bbox_name")
        if not isinstance(region, str) and isinstance(subject, str) and "_" in subject:
            region = subject.split("_", 1)[1]
        if not _known_region(region, here, skips):
            continue
        findings, raw = _findings(rel.get("attributes"))
        prior = obj.split("_", 1)[0].strip()
        comparisons += [Comparison(dicom_id, prior, region, change, findings, raw) for change in changes]
    return dicom_id, boxes, size, comparisons


def _scene_graph_sources(root: Path) -> tuple[list[Path], list[Path]]:
    """The scene-graph zips and the loose scene-graph files under ``root`` (found by name)."""
    zips = sorted(p for p in root.rglob("*.zip") if p.name == SCENE_GRAPH_ZIP)
    loose = sorted(root.rglob(f"*{SCENE_GRAPH_SUFFIX}"))
    return zips, loose


def _graphs(root: Path, wanted: Collection[str] | None, info: ChestImaGenome) -> Iterator[tuple[str, bytes]]:
    """(where, bytes) of every scene graph under ``root`` whose file name names a wanted image; zips first."""
    zips, loose = _scene_graph_sources(root)
    seen: set[str] = set()
    for path in zips:
        try:
            archive = zipfile.ZipFile(path)
        except (OSError, zipfile.BadZipFile) as exc:
            info.skips.add("invalid_json", f"{path}: not a readable zip ({exc})")
            continue
        info.files.setdefault("scene_graphs", str(path))
        with archive:
            for member in archive.infolist():
                name = member.filename.rsplit("/", 1)[-1]
                if not name.endswith(SCENE_GRAPH_SUFFIX) or member.is_dir():
                    continue
                dicom_id = name[: -len(SCENE_GRAPH_SUFFIX)]
                if (wanted is not None and dicom_id not in wanted) or dicom_id in seen:
                    continue
                seen.add(dicom_id)
                try:
                    data = archive.read(member)
                except (OSError, zipfile.BadZipFile, EOFError) as exc:
                    info.skips.add("invalid_json", f"{path}:{member.filename}: unreadable ({exc})")
                    continue
                yield f"{path.name}:{member.filename}", data
    for path in loose:
        dicom_id = path.name[: -len(SCENE_GRAPH_SUFFIX)]
        if (wanted is not None and dicom_id not in wanted) or dicom_id in seen:
            continue
        seen.add(dicom_id)
        info.files.setdefault("scene_graphs", str(path.parent))
        yield str(path), path.read_bytes()


def _table(path: Path, required: tuple[str, ...], skips: Skips, delimiter: str = ",") -> list[dict[str, str]] | None:
    """The rows of a CSV/TSV as dicts of stripped strings; None (counted) when a needed column is missing."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        skips.add("missing_column", f"{path}: unreadable ({exc})")
        return None
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = [h.strip() for h in reader.fieldnames or []]
    missing = [c for c in required if c not in header]
    if missing:
        skips.add("missing_column", f"{path}: no column(s) {missing} (found {header})")
        return None
    reader.fieldnames = header
    return [{k: (v or "").strip() for k, v in row.items() if k is not None} for row in reader]


def _read_gold(root: Path, wanted: Collection[str] | None, info: ChestImaGenome) -> None:
    """The gold boxes and comparisons under ``root`` replace the silver ones of the images they cover."""
    for path in sorted(root.rglob(GOLD_BOXES)):
        rows = _table(path, GOLD_BOX_COLUMNS, info.skips)
        if rows is None:
            continue
        info.files["gold_boxes"] = str(path)
        gold: dict[str, dict[str, Box]] = {}
        for number, row in enumerate(rows, start=2):
            dicom_id, region = strip_dcm(row["image_id"]), row["bbox_name"]
            if wanted is not None and dicom_id not in wanted:
                continue
            where = f"{path.name} line {number} ({dicom_id}, {region})"
            if region not in REGIONS:
                info.skips.add("unknown_region", f"{where}: bbox_name {region!r}")
                continue
            coords = [number_or_none(row[k]) for k in GOLD_BOX_COLUMNS[2:6]]
            width, height = positive_number(row["original_width"]), positive_number(row["original_height"])
            if None in coords or width is None or height is None:
                info.skips.add("not_a_number", f"{where}: {[row[k] for k in GOLD_BOX_COLUMNS[2:]]}")
                continue
            box = checked_box(tuple(coords), width, height, f"{where}: {coords}", info.skips)
            if box is not None:
                gold.setdefault(dicom_id, {})[region] = box
                info.sizes[dicom_id] = (width, height)
        info.boxes.update(gold)
        info.gold.update(gold)
    for path in sorted(root.rglob(GOLD_COMPARISONS)):
        rows = _table(path, GOLD_COMPARISON_COLUMNS, info.skips, delimiter="\t")
        if rows is None:
            continue
        info.files["gold_comparisons"] = str(path)
        gold_comparisons: dict[str, list[Comparison]] = {}
        for number, row in enumerate(rows, start=2):
            current, prior = strip_dcm(row["current_image_id"]), strip_dcm(row["previous_image_id"])
            if wanted is not None and current not in wanted:
                continue
            region = row["bbox"]
            if region not in REGIONS:
                info.skips.add("unknown_region", f"{path.name} line {number}: bbox {region!r}")
                continue
            if not current or not prior:
                info.skips.add("missing_field", f"{path.name} line {number}: an empty image id")
                continue
            changes = [c.strip() for c in row["comparison"].replace(";;", ",").split(",") if c.strip() in COMPARISONS]
            findings, raw = _findings([row.get("attribute", "")] if row.get("attribute") else [])
            for change in changes:
                gold_comparisons.setdefault(current, []).append(
                    Comparison(current, prior, region, change, findings, raw)
                )
        info.comparisons.update(gold_comparisons)


def find_chest_imagenome(root: str | Path) -> bool:
    """Does ``root`` hold Chest ImaGenome's scene graphs or gold files (anywhere below it)?"""
    root = Path(root)
    zips, loose = _scene_graph_sources(root)
    return bool(zips or loose or any(root.rglob(GOLD_BOXES)) or any(root.rglob(GOLD_COMPARISONS)))


def read_chest_imagenome(
    root: str | Path, wanted: Collection[str] | None = None, progress: bool = False
) -> ChestImaGenome:
    """Read the boxes and comparisons of the images ``wanted`` (dicom_ids; None: all) under ``root``.

    Comparisons are kept for current images in ``wanted``; whether a comparison's prior is the right image is for
    the caller to check (:mod:`diffvqa.data.cache_boxes`). Nothing raises on bad content: see the module docstring.
    """
    from tqdm import tqdm

    root = Path(root)
    info = ChestImaGenome()
    for path in sorted(root.rglob("*.csv")):
        if path.name in SPLIT_FILES and path.parent.name == "splits":
            rows = _table(path, SPLIT_COLUMNS, info.skips)
            if rows is not None:
                info.files.setdefault("splits", str(path.parent))
                info.split_images.update(row["dicom_id"] for row in rows if row["dicom_id"])
    bar = tqdm(desc="scene graphs", unit="graph", total=None if wanted is None else len(wanted), disable=not progress)
    for where, data in _graphs(root, wanted, info):
        parsed = parse_scene_graph(data, where, info.skips)
        bar.update(1)
        if parsed is None:
            continue
        dicom_id, boxes, size, comparisons = parsed
        if boxes:
            info.boxes[dicom_id], info.sizes[dicom_id] = boxes, size
        if comparisons:
            info.comparisons[dicom_id] = comparisons
    bar.close()
    _read_gold(root, wanted, info)
    return info
