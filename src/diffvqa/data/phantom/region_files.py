"""The phantom's anatomy and changes as Chest ImaGenome 1.0.0 and MS-CXR 1.1.0 write them, in their real layouts.

:func:`write_region_files` runs after the simulator has written a release (it reads the release's ground-truth
masks) and adds::

    out/chest-imagenome/silver_dataset/scene_graph.zip          scene_graph/<dicom_id>_SceneGraph.json per image
    out/chest-imagenome/silver_dataset/splits/{train,valid,test}.csv
    out/chest-imagenome/gold_dataset/gold_bbox_coordinate_annotations_1000images.csv     (every 10th subject;
    out/chest-imagenome/gold_dataset/gold_object_comparison_with_coordinates.txt          image ids with ".dcm"
                                                                                            in the first only)
    out/ms-cxr/MS_CXR_Local_Alignment_v1.1.0.csv

so that the readers (:mod:`diffvqa.data.chest_imagenome`, :mod:`diffvqa.data.ms_cxr`) run on files in the real
layout and the box-based scores can be checked against the phantom's pixel truth on the same pairs.

* **Regions.** Every image gets a box for each anatomical region the phantom draws (:func:`region_boxes`: the lungs
  and their zones, costophrenic and cardiophrenic angles, hila, hemidiaphragms, clavicles, the cardiac silhouette at
  that visit's size, mediastinum, aortic arch, descending aorta, trachea, carina, spine, upper abdomen), the box of
  the region's outline in chest coordinates carried through the visit's pose into the JPG's pixels.
* **Comparisons.** A finding that changed between the visits (a row of ``ground_truth/changes.csv``) is placed in
  the *most specific* regions that hold its change region (:func:`place`: greedily, the region of the reference's
  boxes that adds most of the mask until three quarters of it are covered; a one-lung row only in that lung's
  regions, never a whole lung or the whole mediastinum), and each such region of the main image is compared with
  the reference's as ``worsened`` (new, or a higher level) or ``improved`` (gone, or a lower level); a finding
  present unchanged gets ``no change`` in the regions of its mask. Real silver graphs also mark the parent region
  (the whole lung beside its lower zone), so real boxes are coarser still.
* **MS-CXR.** Each visit's findings of MS-CXR's 8 categories become a phrase with one box per lung the finding
  lies in (the box of its mask on that side of the patient's midline).

No randomness is drawn: the files follow from the plans and the masks, and the simulator's own outputs do not
change.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from diffvqa.data.ground_truth import GROUND_TRUTH_DIR
from diffvqa.data.phantom.anatomy import Anatomy, hemidiaphragm, lung_point
from diffvqa.data.phantom.plan import SubjectPlan

CHEST_IMAGENOME_DIR = "chest-imagenome"
MS_CXR_DIR = "ms-cxr"
GOLD_EVERY = 10  # every 10th subject's images are in the gold files
COVERAGE = 0.75  # a change is placed in regions until they hold this share of its mask
MIN_GAIN = 0.05  # ... each adding at least this share

# The Chest ImaGenome attribute the phantom writes for each of its findings (None: the dataset has no such finding)
ATTRIBUTES = {
    "pleural effusion": "anatomicalfinding|yes|pleural effusion",
    "blunting of the costophrenic angle": "anatomicalfinding|yes|costophrenic angle blunting",
    "cardiomegaly": "anatomicalfinding|yes|enlarged cardiac silhouette",
    "enlargement of the cardiac silhouette": "anatomicalfinding|yes|enlarged cardiac silhouette",
    "pneumothorax": "anatomicalfinding|yes|pneumothorax",
    "lung opacity": "anatomicalfinding|yes|lung opacity",
    "consolidation": "anatomicalfinding|yes|consolidation",
    "pneumonia": "disease|yes|pneumonia",
    "atelectasis": "anatomicalfinding|yes|atelectasis",
    "edema": "anatomicalfinding|yes|pulmonary edema/hazy opacity",
    "vascular congestion": "anatomicalfinding|yes|vascular congestion",
    "hilar congestion": "anatomicalfinding|yes|enlarged hilum",
    "fracture": "anatomicalfinding|yes|rib fracture",
    "granuloma": "anatomicalfinding|yes|calcified nodule",
    "calcification": "anatomicalfinding|yes|vascular calcification",
    "pleural thickening": "anatomicalfinding|yes|pleural/parenchymal scarring",
    "tortuosity of the descending aorta": "anatomicalfinding|yes|tortuous aorta",
    "tortuosity of the thoracic aorta": "anatomicalfinding|yes|tortuous aorta",
    "hernia": "anatomicalfinding|yes|hernia",
    "gastric distention": None,
    "emphysema": "disease|yes|copd/emphysema",
    "scoliosis": "anatomicalfinding|yes|scoliosis",
}
MS_CXR_CATEGORIES = {
    "atelectasis": "Atelectasis",
    "cardiomegaly": "Cardiomegaly",
    "enlargement of the cardiac silhouette": "Cardiomegaly",
    "consolidation": "Consolidation",
    "edema": "Edema",
    "lung opacity": "Lung Opacity",
    "pleural effusion": "Pleural Effusion",
    "pneumonia": "Pneumonia",
    "pneumothorax": "Pneumothorax",
}
# Regions a change may be placed in: the specific ones (not a whole lung, the mediastinum or the abdomen).
PLACEABLE = (
    "right apical zone", "right upper lung zone", "right mid lung zone", "right lower lung zone",
    "right costophrenic angle", "right hilar structures",
    "left apical zone", "left upper lung zone", "left mid lung zone", "left lower lung zone",
    "left costophrenic angle", "left hilar structures",
    "cardiac silhouette", "aortic arch", "descending aorta", "upper mediastinum", "spine", "left upper abdomen",
)  # fmt: skip
SIDE_WORDS = ("right", "left")  # side index -> the patient's side (the image's left is the patient's right)

ChestBox = tuple[float, float, float, float]  # (X1, Y1, X2, Y2) in chest units


# ----------------------------------------------------------------------------------------------------------
# where the regions are: chest units, then a visit's JPG pixels


def _visit_shapes(plan: SubjectPlan, k: int) -> dict:
    """The per-visit sizes render_canonical draws (heart, aortic knob, descending aorta, gastric bubble)."""
    by_kind = {lesion.kind: (lesion, level) for lesion, level in plan.present(k)}
    scale = 1.07 if plan.studies[k].view == "AP" else 1.0
    if "heart" in by_kind:
        lesion, level = by_kind["heart"]
        scale *= 1.12 + 0.24 * lesion.severity(level)
    knob_r, knob_dx, bulge, bubble = 0.03, 0.0, 0.0, 1.0
    if "aorta_arch" in by_kind:
        lesion, level = by_kind["aorta_arch"]
        knob_r, knob_dx = 0.03 * (1.35 + 0.35 * lesion.severity(level)), 0.02
    if "aorta_desc" in by_kind:
        lesion, level = by_kind["aorta_desc"]
        bulge = 0.025 + 0.03 * lesion.severity(level)
    if "gastric" in by_kind:
        lesion, level = by_kind["gastric"]
        bubble = 1.6 + 0.8 * lesion.severity(level)
    return {"heart": scale, "knob_r": knob_r, "knob_dx": knob_dx, "bulge": bulge, "bubble": bubble}


def chest_regions(an: Anatomy, shapes: dict) -> dict[str, ChestBox]:
    """Region -> (X1, Y1, X2, Y2) in chest units, for one visit of a subject (``shapes``: :func:`_visit_shapes`)."""
    out: dict[str, ChestBox] = {}

    def lateral(side: int, s_in: float, s_out: float, y1: float, y2: float) -> ChestBox:
        xs = (an.mid - s_in, an.mid - s_out) if side == 0 else (an.mid + s_in, an.mid + s_out)
        return min(xs), y1, max(xs), y2

    def zone(side: int, t0: float, t1: float) -> ChestBox:
        """A lung's band between height fractions t0 and t1 (apex 0, costophrenic angle 1)."""
        _, ya, yc, _ = an.lung(side)
        reach = abs(lung_point(an, side, min(t1, 0.75), 1.0)[0] - an.mid)  # widest at the bottom of the zone
        # the upper mediastinum is narrower: the lung reaches further in there (anatomy.lung_field's 0.8)
        return lateral(side, 0.8 * an.s_med, reach + 0.01, ya + t0 * (yc - ya), ya + t1 * (yc - ya))

    for side, word in enumerate(SIDE_WORDS):
        wl, ya, yc, dh = an.lung(side)
        s_med = 0.8 * an.s_med
        out[f"{word} lung"] = lateral(side, s_med, wl + 0.01, ya - 0.01, yc + 0.01)
        out[f"{word} apical zone"] = zone(side, 0.0, 0.16)
        out[f"{word} upper lung zone"] = zone(side, 0.0, 0.36)
        out[f"{word} mid lung zone"] = zone(side, 0.33, 0.62)
        out[f"{word} lower lung zone"] = zone(side, 0.6, 1.0)
        out[f"{word} costophrenic angle"] = lateral(side, 0.62 * wl, wl + 0.01, yc - 0.11, yc + 0.01)
        base = float(hemidiaphragm(an, side, an.s_med))
        out[f"{word} cardiophrenic angle"] = lateral(side, an.s_med, an.s_med + 0.12, base - 0.08, base + 0.01)
        out[f"{word} hemidiaphragm"] = lateral(side, an.s_med, wl + 0.01, yc - dh - 0.02, yc + 0.01)
        hx = an.s_med + 0.045
        out[f"{word} hilar structures"] = lateral(side, hx - 0.06, hx + 0.06, an.hilum_y[side] - 0.07,
                                                   an.hilum_y[side] + 0.07)  # fmt: skip
        ss = np.linspace(0.05, 0.40, 9)  # the clavicle's centreline, as anatomy.render_static draws it
        ys = an.clav_y - 0.3 * (ss - 0.05) + 0.018 * np.sin(2 * np.pi * (ss - 0.05) / 0.35)
        out[f"{word} clavicle"] = lateral(side, 0.05 - 0.014, 0.40 + 0.014, float(ys.min()) - 0.014,
                                          float(ys.max()) + 0.014)  # fmt: skip

    # the cardiac silhouette: findings.heart_field's tilted ellipse at this visit's size
    scale = shapes["heart"]
    a, b = an.heart_a * scale, an.heart_b * (1 + 0.5 * (scale - 1))
    x0, y0 = an.mid + 0.3 * a, float(hemidiaphragm(an, 1, 0.1)) - 0.5 * b
    c, s = math.cos(an.heart_tilt), math.sin(an.heart_tilt)
    hx, hy = math.hypot(a * c, b * s), math.hypot(a * s, b * c)
    out["cardiac silhouette"] = (x0 - hx, y0 - hy, x0 + hx, y0 + hy)
    top = min(an.y_apex) - 0.06
    knob_x, knob_r = an.mid + 0.9 * an.s_med + shapes["knob_dx"], shapes["knob_r"]
    out["aortic arch"] = (knob_x - knob_r, an.knob_y - knob_r, knob_x + knob_r, an.knob_y + knob_r)
    out["upper mediastinum"] = (an.mid - 0.9 * an.s_med, top, max(knob_x + knob_r, an.mid + 0.9 * an.s_med),
                                an.knob_y + knob_r + 0.03)  # fmt: skip
    heart = out["cardiac silhouette"]
    out["mediastinum"] = (min(heart[0], an.mid - an.s_med), top, max(heart[2], an.mid + an.s_med), heart[3])
    low = float(hemidiaphragm(an, 1, 0.05))
    out["descending aorta"] = (an.mid, an.knob_y, an.mid + an.s_med + 0.015 + shapes["bulge"], low)
    carina = min(an.hilum_y) - 0.06
    out["trachea"] = (an.mid - 0.025, top - 0.1, an.mid + 0.025, carina)
    out["carina"] = (an.mid - 0.04, carina - 0.02, an.mid + 0.04, carina + 0.05)
    curve = abs(an.scoliosis)
    out["spine"] = (an.mid - 0.042 - curve, top, an.mid + 0.042 + curve, max(an.y_cp))
    wl0, _, yc0, dh0 = an.lung(0)
    wl1, _, yc1, dh1 = an.lung(1)
    bubble = shapes["bubble"]  # the gastric bubble under the left hemidiaphragm must fit its box
    out["left upper abdomen"] = (an.mid + 0.03, yc1 - dh1, an.mid + wl1 + 0.02, yc1 + 0.08 + 0.09 * bubble)
    out["right upper abdomen"] = (an.mid - wl0 - 0.02, yc0 - dh0, an.mid - 0.03, yc0 + 0.2)
    out["abdomen"] = (an.mid - wl0 - 0.02, min(yc0 - dh0, yc1 - dh1), an.mid + wl1 + 0.02, max(yc0, yc1) + 0.2)
    return out


def region_boxes(plan: SubjectPlan, k: int, size: tuple[int, int]) -> dict[str, ChestBox]:
    """Region -> (x1, y1, x2, y2) in visit k's JPG pixels, box edges (the whole image is [0, W] x [0, H]): the
    chest box's corners through the visit's pose, rounded to whole pixels as the dataset gives them."""
    height, width = size
    k_px = min(width, height / 1.22)  # imaging.make_canvas's pixels per chest unit
    pose = plan.studies[k].pose
    out = {}
    for region, (x1, y1, x2, y2) in chest_regions(plan.anatomy, _visit_shapes(plan, k)).items():
        corners = np.array([[x1, y1], [x2, y1], [x1, y2], [x2, y2]]) * k_px + [(width - 1) / 2, (height - 1) / 2]
        pixels = corners @ pose[:, :2].T + pose[:, 2]  # pixel centres; the edges lie half a pixel out
        lo, hi = pixels.min(axis=0) + 0.5, pixels.max(axis=0) + 0.5
        out[region] = (float(round(lo[0])), float(round(lo[1])), float(round(hi[0])), float(round(hi[1])))
    return out


def box_pixels(box: ChestBox, shape: tuple[int, int]) -> np.ndarray:
    """The (H, W) bool of the pixels whose centres a box (edges) holds."""
    mask = np.zeros(shape, bool)
    c0, c1 = max(0, math.ceil(box[0] - 0.5)), min(shape[1] - 1, math.floor(box[2] - 0.5))
    r0, r1 = max(0, math.ceil(box[1] - 0.5)), min(shape[0] - 1, math.floor(box[3] - 0.5))
    if c1 >= c0 and r1 >= r0:
        mask[r0 : r1 + 1, c0 : c1 + 1] = True
    return mask


def place(mask: np.ndarray, boxes: dict[str, ChestBox], side: str = "") -> list[str]:
    """The most specific regions that hold a finding's mask (H, W bool), in the order chosen: greedily the region
    adding the most uncovered mask pixels (the smaller box on a tie) until :data:`COVERAGE` of the mask is covered
    or none adds :data:`MIN_GAIN` of it. ``side`` ("left" / "right") keeps to that lung's regions."""
    total = int(mask.sum())
    if not total:
        return []
    names = [r for r in PLACEABLE if r in boxes and (not side or r.startswith(side + " "))]
    pixels = {r: box_pixels(boxes[r], mask.shape) for r in names}
    covered = np.zeros_like(mask)
    chosen: list[str] = []
    while covered[mask].sum() < COVERAGE * total:
        gains = {r: int((mask & pixels[r] & ~covered).sum()) for r in names if r not in chosen}
        if not gains:
            break
        best = max(gains, key=lambda r: (gains[r], -int(pixels[r].sum())))
        if gains[best] < MIN_GAIN * total and chosen:
            break
        if gains[best] == 0:
            break
        chosen.append(best)
        covered |= pixels[best]
    return chosen


# ----------------------------------------------------------------------------------------------------------
# writing


def _mask(out: Path, relpath: str) -> np.ndarray:
    with Image.open(out / GROUND_TRUTH_DIR / relpath) as image:
        return np.asarray(image.convert("L")) > 127


def _slug(name: str) -> str:
    return name.replace(" ", "_")


def _change(before, after) -> str:
    """How a finding's level index (None: absent) moved between two visits."""
    if before is None:
        return "worsened"
    if after is None:
        return "improved"
    return "worsened" if after > before else "improved" if after < before else "no change"


def _letterbox(size: tuple[int, int]) -> tuple[float, float, float]:
    """(scale, pad_x, pad_y) of the dataset's 224 x 224 frame."""
    height, width = size
    scale = 224 / max(height, width)
    return scale, (224 - width * scale) / 2, (224 - height * scale) / 2


def _object(dicom_id: str, region: str, box: ChestBox, size: tuple[int, int]) -> dict:
    scale, px, py = _letterbox(size)
    x1, y1, x2, y2 = (round(box[0] * scale + px), round(box[1] * scale + py), round(box[2] * scale + px),
                      round(box[3] * scale + py))  # fmt: skip
    return {
        "object_id": f"{dicom_id}_{region}", "x1": x1, "y1": y1, "x2": x2, "y2": y2, "width": x2 - x1,
        "height": y2 - y1, "bbox_name": region, "synsets": [], "name": region,
        "original_x1": int(box[0]), "original_y1": int(box[1]), "original_x2": int(box[2]), "original_y2": int(box[3]),
        "original_width": size[1], "original_height": size[0],
    }  # fmt: skip


def _midline_side(plan: SubjectPlan, k: int, size: tuple[int, int]) -> np.ndarray:
    """(H, W) int: the patient's side of every pixel of visit k (0 right = image left, 1 left)."""
    height, width = size
    k_px = min(width, height / 1.22)
    inverse = np.linalg.inv(np.vstack([plan.studies[k].pose, [0, 0, 1]]))[:2]
    ys, xs = np.mgrid[0:height, 0:width]
    canonical_x = inverse[0, 0] * xs + inverse[0, 1] * ys + inverse[0, 2]
    return (canonical_x > plan.anatomy.mid * k_px + (width - 1) / 2).astype(np.int64)


def _mask_boxes(mask: np.ndarray, sides: np.ndarray, split: bool) -> list[ChestBox]:
    """Boxes (edges) of a mask: one per patient side it lies on when ``split``, else one."""
    parts = [mask & (sides == s) for s in (0, 1)] if split else [mask]
    out = []
    for part in parts:
        rows, cols = np.nonzero(part)
        if len(rows):
            out.append((float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1)))
    return out


def _write_zip(path: Path, members: list[tuple[str, str]]) -> None:
    """A zip with a fixed date on every member: the same members give the same bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, text in members:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, text)


def _write_table(path: Path, header: Sequence[str], rows: list, delimiter: str = ",") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    path.write_bytes(buffer.getvalue().encode())


def write_region_files(out: str | Path, plans: Sequence[SubjectPlan], change_rows: Sequence[tuple],
                       size: tuple[int, int]) -> dict:  # fmt: skip
    """Write the release's Chest ImaGenome and MS-CXR files (module docstring) from the subjects' ``plans``, the
    rows of ``ground_truth/changes.csv`` (study_id, ref_id, name, side, mask_file) and the masks already written.
    Earlier such files in ``out`` are replaced. Returns counts: images, comparisons by change, unplaced changes
    (a change region outside every box), MS-CXR phrases and boxes."""
    out = Path(out)
    for name in (CHEST_IMAGENOME_DIR, MS_CXR_DIR):
        shutil.rmtree(out / name, ignore_errors=True)
    changes_of: dict[int, list[tuple]] = {}
    for row in change_rows:
        changes_of.setdefault(int(row[0]), []).append(row)
    graphs, splits, gold_boxes, gold_comparisons, ms_rows = [], {}, [], [], []
    counts = {"images": 0, "worsened": 0, "improved": 0, "no change": 0, "unplaced": 0, "ms_cxr_phrases": 0,
              "ms_cxr_boxes": 0}  # fmt: skip
    for number, plan in enumerate(plans):
        gold = number % GOLD_EVERY == 0
        boxes = [region_boxes(plan, k, size) for k in range(len(plan.studies))]
        placed: list[dict[str, list[str]]] = []  # per visit: finding -> the regions of its own mask
        for k, study in enumerate(plan.studies):
            sides = _midline_side(plan, k, size)
            here: dict[str, list[str]] = {}
            for lesion, level in plan.present(k):
                mask = _mask(out, f"masks/s{study.study_id}_{_slug(lesion.name)}.png")
                here[lesion.name] = place(mask, boxes[k], SIDE_WORDS[lesion.sides[0]] if len(lesion.sides) == 1
                                          else "")  # fmt: skip
                category = MS_CXR_CATEGORIES.get(lesion.name)
                parts = _mask_boxes(mask, sides, split=len(lesion.sides) > 0) if category else []
                if parts:
                    level_word = lesion.levels[level] if level >= 0 else ""
                    text = " ".join(w for w in (level_word, lesion.name) if w)
                    text += f", {lesion.location}" if lesion.location else ""
                    subject = str(plan.subject_id)
                    path = f"files/p{subject[:2]}/p{subject}/s{study.study_id}/{study.dicom_id}.jpg"
                    for x1, y1, x2, y2 in parts:
                        ms_rows.append((study.dicom_id, category, text, path, int(x1), int(y1), int(x2 - x1),
                                        int(y2 - y1), size[1], size[0], plan.split))  # fmt: skip
                    counts["ms_cxr_phrases"] += 1
                    counts["ms_cxr_boxes"] += len(parts)
            placed.append(here)
            relationships = []
            if k:
                ref = plan.studies[k - 1]
                states = {lesion.name: course for lesion, course in zip(plan.lesions, plan.states, strict=True)}
                compared: list[tuple[str, str, str]] = []  # (region, change, finding)
                for _, _, name, side, mask_file in changes_of.get(study.study_id, []):
                    change = _change(states[name][k - 1], states[name][k])
                    regions = place(_mask(out, mask_file), boxes[k - 1], side)
                    counts["unplaced"] += not regions
                    compared += [(r, change, name) for r in regions]
                for lesion, level in plan.present(k):
                    if states[lesion.name][k - 1] == level:
                        compared += [(r, "no change", lesion.name) for r in placed[k - 1].get(lesion.name, [])]
                for j, (region, change, name) in enumerate(compared):
                    counts[change] += 1
                    attribute = ATTRIBUTES.get(name)
                    relationships.append({
                        "relationship_id": f"{study.dicom_id}_{ref.dicom_id}_{j}",
                        "predicate": f"['{change}']",
                        "synsets": [],
                        "relationship_names": [f"comparison|yes|{change}"],
                        "relationship_contexts": [1.0],
                        "phrase": f"{name}: {change}",
                        "attributes": [attribute] if attribute else [],
                        "bbox_name": region,
                        "subject_id": f"{study.dicom_id}_{region}",
                        "object_id": f"{ref.dicom_id}_{region}",
                    })  # fmt: skip
                    if gold:
                        gold_comparisons.append((f"{study.dicom_id}_{ref.dicom_id}_{j}", f"{study.dicom_id}_{region}",
                                                 f"{ref.dicom_id}_{region}", region, change, attribute or "",
                                                 f"{name}: {change}", study.dicom_id, ref.dicom_id))  # fmt: skip
            attributes = {}
            for lesion, _ in plan.present(k):
                for region in here.get(lesion.name, []):
                    entry = attributes.setdefault(
                        region,
                        {
                            "bbox_name": region,
                            "name": region,
                            "attributes": [],
                            "phrases": [],
                            "object_id": f"{study.dicom_id}_{region}",
                        },
                    )
                    entry["attributes"].append([a for a in (ATTRIBUTES.get(lesion.name), "nlp|yes|abnormal") if a])
                    entry["phrases"].append(lesion.name)
            graph = {
                "image_id": study.dicom_id,
                "viewpoint": study.view,
                "patient_id": plan.subject_id,
                "study_id": study.study_id,
                "StudyOrder": k + 1,
                "StudyDateTime": f"{str(study.date)[:4]}-{str(study.date)[4:6]}-{str(study.date)[6:]} "
                f"{study.time[:2]}:{study.time[2:4]}:{study.time[4:6]}",
                "objects": [_object(study.dicom_id, r, b, size) for r, b in boxes[k].items()],
                "attributes": list(attributes.values()),
                "relationships": relationships,
            }
            graphs.append((f"scene_graph/{study.dicom_id}_SceneGraph.json", json.dumps(graph, indent=1)))
            subject = str(plan.subject_id)
            dcm = f"files/p{subject[:2]}/p{subject}/s{study.study_id}/{study.dicom_id}.dcm"
            split = {"val": "valid"}.get(plan.split, plan.split)
            splits.setdefault(split, []).append((plan.subject_id, study.study_id, study.dicom_id, dcm, study.view))
            if gold:
                for region, box in boxes[k].items():
                    obj = _object(study.dicom_id, region, box, size)
                    gold_boxes.append((f"{study.dicom_id}.dcm", obj["x1"], obj["y1"], obj["x2"], obj["y2"],
                                       obj["width"], obj["height"], region, f"{study.dicom_id}|{region}",
                                       *(obj[f"original_{c}"] for c in ("x1", "x2", "y1", "y2", "width", "height")),
                                       "phantom", f"[{obj['x1']}, {obj['y1']}, {obj['x2']}, {obj['y2']}]",
                                       f"[{obj['original_x1']}, {obj['original_y1']}, {obj['original_x2']}, "
                                       f"{obj['original_y2']}]"))  # fmt: skip
            counts["images"] += 1
    root = out / CHEST_IMAGENOME_DIR
    _write_zip(root / "silver_dataset" / "scene_graph.zip", graphs)
    for split in ("train", "valid", "test"):
        rows = [(i, *row) for i, row in enumerate(splits.get(split, []))]
        _write_table(root / "silver_dataset" / "splits" / f"{split}.csv",
                     ("", "subject_id", "study_id", "dicom_id", "path", "ViewPosition"), rows)  # fmt: skip
    _write_table(root / "gold_dataset" / "gold_bbox_coordinate_annotations_1000images.csv",
                 ("image_id", "x1", "y1", "x2", "y2", "width", "height", "bbox_name", "annot_id", "original_x1",
                  "original_x2", "original_y1", "original_y2", "original_width", "original_height", "annotator",
                  "coord224", "coord_original"), gold_boxes)  # fmt: skip
    _write_table(root / "gold_dataset" / "gold_object_comparison_with_coordinates.txt",
                 ("relationship_id", "subject_id", "object_id", "bbox", "comparison", "attribute", "sentence",
                  "current_image_id", "previous_image_id"), gold_comparisons, delimiter="\t")  # fmt: skip
    _write_table(out / MS_CXR_DIR / "MS_CXR_Local_Alignment_v1.1.0.csv",
                 ("dicom_id", "category_name", "label_text", "path", "x", "y", "w", "h", "image_width",
                  "image_height", "split"), ms_rows)  # fmt: skip
    return counts
