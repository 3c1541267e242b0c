"""The readers of Chest ImaGenome 1.0.0 and MS-CXR 1.1.0 (diffvqa.data.chest_imagenome, diffvqa.data.ms_cxr), on
the files the phantom writes in the real layouts and on copies of them with the faults real copies have.

The formats are checked against what the public readers of the datasets read (docs/data.md): a scene graph's objects
with original_x1..y2 and original_width/height, relationships on the current image from <current>_<region> to
<prior>_<region> named comparison|yes|worsened/improved/no change, split CSVs with an unnamed index column, gold ids
with and without ".dcm", MS-CXR rows of x, y, w, h grouped by image and phrase.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from diffvqa.data.box_reading import Skips, checked_box
from diffvqa.data.chest_imagenome import (
    FINDING_NAMES,
    REGIONS,
    find_chest_imagenome,
    read_chest_imagenome,
    region_side,
    strip_dcm,
)
from diffvqa.data.ms_cxr import CATEGORIES, find_ms_cxr, read_ms_cxr
from diffvqa.data.phantom import simulate
from diffvqa.data.phantom.region_files import ATTRIBUTES, MS_CXR_CATEGORIES, place, region_boxes

SIZE = (160, 128)


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    out = tmp_path_factory.mktemp("boxes") / "release"
    summary = simulate(out, pairs=40, seed=4, size=SIZE, progress=False)
    return out, summary


def _graphs(zip_path: Path) -> dict[str, dict]:
    with zipfile.ZipFile(zip_path) as archive:
        return {n: json.loads(archive.read(n)) for n in archive.namelist() if n.endswith("_SceneGraph.json")}


def _rezip(path: Path, members: dict[str, bytes | str]) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


# ---- the phantom writes the real layouts ----------------------------------------------------------------------
def test_phantom_writes_both_datasets_in_their_layouts(release):
    out, summary = release
    root = out / "chest-imagenome"
    assert (root / "silver_dataset" / "scene_graph.zip").is_file()
    for split in ("train", "valid", "test"):
        header = (root / "silver_dataset" / "splits" / f"{split}.csv").read_text().splitlines()[0]
        assert header == ",subject_id,study_id,dicom_id,path,ViewPosition"  # the unnamed index column first
    graphs = _graphs(root / "silver_dataset" / "scene_graph.zip")
    assert len(graphs) == summary["studies"] == summary["region_files"]["images"]
    graph = next(iter(graphs.values()))
    assert {"image_id", "patient_id", "study_id", "viewpoint", "StudyOrder", "StudyDateTime", "objects",
            "attributes", "relationships"} <= set(graph)  # fmt: skip
    obj = graph["objects"][0]
    assert {"bbox_name", "original_x1", "original_y1", "original_x2", "original_y2", "original_width",
            "original_height", "x1", "y1", "x2", "y2"} <= set(obj)  # fmt: skip
    assert (obj["original_width"], obj["original_height"]) == (SIZE[1], SIZE[0])
    assert all(o["bbox_name"] in REGIONS for g in graphs.values() for o in g["objects"])
    relationships = [r for g in graphs.values() for r in g["relationships"]]
    assert relationships and all(r["subject_id"].endswith("_" + r["bbox_name"]) for r in relationships)
    assert {n for r in relationships for n in r["relationship_names"]} == {
        "comparison|yes|worsened", "comparison|yes|improved", "comparison|yes|no change"}  # fmt: skip
    gold = pd.read_csv(root / "gold_dataset" / "gold_bbox_coordinate_annotations_1000images.csv")
    assert gold.image_id.str.endswith(".dcm").all()  # the gold boxes' ids carry ".dcm"
    comparisons = pd.read_csv(root / "gold_dataset" / "gold_object_comparison_with_coordinates.txt", sep="\t")
    assert not comparisons.current_image_id.str.endswith(".dcm").any()  # the gold comparisons' do not
    ms = pd.read_csv(out / "ms-cxr" / "MS_CXR_Local_Alignment_v1.1.0.csv")
    assert list(ms.columns) == ["dicom_id", "category_name", "label_text", "path", "x", "y", "w", "h", "image_width",
                                "image_height", "split"]  # fmt: skip
    assert set(ms.category_name) <= set(CATEGORIES) and (ms.w > 0).all() and (ms.h > 0).all()


def test_region_files_are_the_same_for_a_seed(tmp_path):
    a = simulate(tmp_path / "a", pairs=6, seed=9, size=(64, 48), progress=False)
    simulate(tmp_path / "b", pairs=6, seed=9, size=(64, 48), progress=False, workers=2)
    files = sorted(p.relative_to(tmp_path / "a") for d in ("chest-imagenome", "ms-cxr")
                   for p in (tmp_path / "a" / d).rglob("*") if p.is_file())  # fmt: skip
    assert len(files) == 7 and a["region_files"]["images"] == a["studies"]
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_every_phantom_finding_is_written_with_the_name_the_reader_gives_back():
    for name, attribute in ATTRIBUTES.items():
        if attribute is None:
            continue
        back = FINDING_NAMES[attribute.split("|")[-1]]
        assert back == name or (name, back) in {("enlargement of the cardiac silhouette", "cardiomegaly"),
                                                ("tortuosity of the descending aorta",
                                                 "tortuosity of the thoracic aorta")}, name  # fmt: skip
    for name, category in MS_CXR_CATEGORIES.items():
        assert CATEGORIES[category] in (name, "cardiomegaly")


def test_region_boxes_hold_what_the_phantom_draws_there(release):
    """The cardiac silhouette's box holds the drawn heart of every cardiomegaly visit (the region boxes follow the
    renderer's shapes)."""
    out, _ = release
    findings = pd.read_csv(out / "ground_truth" / "findings.csv", dtype=str, keep_default_na=False)
    graphs = {
        g["image_id"]: g for g in _graphs(out / "chest-imagenome" / "silver_dataset" / "scene_graph.zip").values()
    }
    hearts = findings[findings.name == "cardiomegaly"]
    assert len(hearts)
    for row in hearts.itertuples():
        mask = np.asarray(Image.open(out / "ground_truth" / row.mask_file)) > 127
        obj = next(o for o in graphs[row.dicom_id]["objects"] if o["bbox_name"] == "cardiac silhouette")
        rows, cols = np.nonzero(mask)
        assert obj["original_x1"] <= cols.min() + 1 and cols.max() <= obj["original_x2"]
        assert obj["original_y1"] <= rows.min() + 1 and rows.max() <= obj["original_y2"]


def test_place_prefers_the_most_specific_regions():
    boxes = {
        "left lower lung zone": (60.0, 60.0, 100.0, 100.0),
        "left mid lung zone": (60.0, 30.0, 100.0, 62.0),
        "cardiac silhouette": (30.0, 50.0, 70.0, 90.0),
        "right lower lung zone": (0.0, 60.0, 40.0, 100.0),
    }
    mask = np.zeros((120, 110), bool)
    mask[70:90, 70:95] = True  # inside the left lower zone only
    assert place(mask, boxes) == ["left lower lung zone"]
    mask[40:50, 70:95] = True  # and a part in the mid zone
    assert place(mask, boxes) == ["left lower lung zone", "left mid lung zone"]
    assert place(mask, boxes, side="right") == []  # a one-lung row stays in its lung
    assert place(np.zeros((120, 110), bool), boxes) == []


def test_region_boxes_follow_the_patient_sides(release):
    from diffvqa.data.phantom.plan import Ids, plan_subject

    plan = plan_subject(np.random.default_rng([1, 1, 0]), Ids(np.random.default_rng(0)), 2, SIZE)
    boxes = region_boxes(plan, 0, SIZE)
    assert boxes["right lung"][2] < boxes["left lung"][0] + 5  # the patient's right lung lies on the image's left
    for word in ("right", "left"):
        lung = boxes[f"{word} lung"]
        for zone in ("upper lung zone", "mid lung zone", "lower lung zone"):
            inner = boxes[f"{word} {zone}"]
            assert lung[0] - 2 <= inner[0] and inner[2] <= lung[2] + 2 and lung[1] - 2 <= inner[1]
    assert region_side("left costophrenic angle") == "left" and region_side("cardiac silhouette") == ""


# ---- Chest ImaGenome ------------------------------------------------------------------------------------------
def test_reader_reads_boxes_comparisons_splits_and_gold(release):
    out, summary = release
    info = read_chest_imagenome(out / "chest-imagenome")
    assert len(info.boxes) == summary["studies"] and not info.skips.counts.get("invalid_json")
    assert info.split_images == set(info.boxes)
    assert info.gold and info.gold < set(info.boxes)  # every 10th subject's images: boxes from the gold file
    comparisons = [c for cs in info.comparisons.values() for c in cs]
    counts = summary["region_files"]
    for change in ("worsened", "improved", "no change"):
        assert sum(c.change == change for c in comparisons) == counts[change]
    assert all(c.prior != c.current and c.region in REGIONS for c in comparisons)
    assert {f for c in comparisons for f in c.findings} - {""} <= set(FINDING_NAMES.values())
    assert find_chest_imagenome(out / "chest-imagenome") and not find_chest_imagenome(out / "ground_truth")


def test_scene_graphs_are_found_by_name_whatever_the_nesting(release, tmp_path):
    out, _ = release
    graphs = _graphs(out / "chest-imagenome" / "silver_dataset" / "scene_graph.zip")
    names = sorted(graphs)
    members = {}
    for k, name in enumerate(names):
        leaf = name.rsplit("/", 1)[-1]
        members[["", "scene_graph/", "a/b/scene_graph/"][k % 3] + leaf] = json.dumps(graphs[name])
    copy = tmp_path / "copy" / "deep" / "er"
    copy.mkdir(parents=True)
    _rezip(copy / "scene_graph.zip", members)
    assert len(read_chest_imagenome(tmp_path / "copy").boxes) == len(names)
    loose = tmp_path / "loose" / "scene_graph"  # an unzipped copy reads the same
    loose.mkdir(parents=True)
    for name in names[:5]:
        (loose / name.rsplit("/", 1)[-1]).write_text(json.dumps(graphs[name]))
    wanted = {graphs[n]["image_id"] for n in names[:3]}
    assert set(read_chest_imagenome(tmp_path / "loose", wanted).boxes) == wanted


def test_faulty_entries_are_counted_by_reason_and_nothing_else_is_lost(release, tmp_path):
    out, _ = release
    graphs = _graphs(out / "chest-imagenome" / "silver_dataset" / "scene_graph.zip")
    names = sorted(graphs)
    members = {name: json.dumps(graph) for name, graph in graphs.items()}
    members[names[0]] = "{not json"
    broken = dict(graphs[names[1]])
    del broken["image_id"]
    members[names[1]] = json.dumps(broken)
    edited = json.loads(json.dumps(graphs[names[2]]))
    edited["objects"][0]["bbox_name"] = "left elbow"  # unknown region
    edited["objects"][1]["original_x2"] = 10_000  # outside the image: clamped
    edited["objects"][2]["original_x1"] = edited["objects"][2]["original_x2"] = 50  # no area: dropped
    del edited["objects"][3]["original_y2"]  # a missing field
    edited["objects"][4]["original_y1"] = "n/a"  # not a number
    edited["relationships"].append({"relationship_names": ["comparison|yes|worsened"], "bbox_name": "left lung"})
    members[names[2]] = json.dumps(edited)
    root = tmp_path / "ci" / "silver_dataset"
    root.mkdir(parents=True)
    _rezip(root / "scene_graph.zip", members)
    (root / "splits").mkdir()
    (root / "splits" / "train.csv").write_text("subject_id,study_id,path\n1,2,x\n")  # no dicom_id column
    info = read_chest_imagenome(tmp_path / "ci")
    counts = info.skips.counts
    assert counts["invalid_json"] == 1 and counts["unknown_region"] == 1 and counts["box_clamped"] >= 1
    assert counts["box_zero_area"] == 1 and counts["missing_column"] == 1 and counts["not_a_number"] == 1
    assert counts["missing_field"] == 3  # no image_id; an object without original_y2; a comparison without object_id
    assert "train.csv" in info.skips.examples["missing_column"] and "dicom_id" in info.skips.examples["missing_column"]
    assert len(info.boxes) == len(names) - 2  # only the two unreadable graphs are lost
    kept = info.boxes[edited["image_id"]]
    assert len(kept) == len(edited["objects"]) - 4 and kept[edited["objects"][1]["bbox_name"]][2] == SIZE[1]


def test_gold_ids_with_and_without_dcm_replace_the_silver_ones(release, tmp_path):
    out, _ = release
    graphs = list(_graphs(out / "chest-imagenome" / "silver_dataset" / "scene_graph.zip").values())
    current = next(g for g in graphs if g["relationships"])
    prior = current["relationships"][0]["object_id"].split("_")[0]
    gold = tmp_path / "ci" / "gold_dataset"
    gold.mkdir(parents=True)
    header = "image_id,bbox_name,original_x1,original_y1,original_x2,original_y2,original_width,original_height\n"
    (gold / "gold_bbox_coordinate_annotations_1000images.csv").write_text(
        header + f"{current['image_id']}.dcm,left lung,1,2,30,40,128,160\n" + f"{prior},trachea,5,5,9,9,128,160\n"
    )
    (gold / "gold_object_comparison_with_coordinates.txt").write_text(
        "current_image_id\tprevious_image_id\tbbox\tcomparison\tattribute\n"
        f"{current['image_id']}\t{prior}.dcm\tleft lung\tworsened\tanatomicalfinding|yes|pleural effusion\n"
    )
    silver = tmp_path / "ci" / "silver_dataset"
    silver.mkdir()
    shutil.copy(out / "chest-imagenome" / "silver_dataset" / "scene_graph.zip", silver / "scene_graph.zip")
    info = read_chest_imagenome(tmp_path / "ci")
    assert info.boxes[current["image_id"]] == {"left lung": (1.0, 2.0, 30.0, 40.0)}
    assert info.boxes[prior] == {"trachea": (5.0, 5.0, 9.0, 9.0)} and info.gold == {current["image_id"], prior}
    (only,) = info.comparisons[current["image_id"]]
    assert (only.prior, only.region, only.change, only.findings) == (prior, "left lung", "worsened",
                                                                     ("pleural effusion",))  # fmt: skip
    assert strip_dcm(" abc.DCM ") == "abc"


def test_checked_box_clamps_and_drops():
    skips = Skips()
    assert checked_box((-5, 10, 50, 300), 100, 200, "a", skips) == (0.0, 10, 50, 200.0)
    assert checked_box((50, 10, 20, 5), 100, 200, "b", skips) == (20, 5, 50, 10)  # corners put in order
    assert checked_box((150, 10, 180, 20), 100, 200, "c", skips) is None
    assert dict(skips.counts) == {"box_clamped": 1, "box_zero_area": 1}
    with pytest.raises(ValueError, match="unknown skip reason"):
        skips.add("whatever", "x")


# ---- MS-CXR ---------------------------------------------------------------------------------------------------
def test_ms_cxr_rows_are_grouped_by_image_and_phrase(tmp_path):
    rows = [
        ("d1", "Edema", "bilateral edema", 10, 20, 30, 40),
        ("d1", "Edema", "bilateral edema", 60, 20, 30, 40),  # the same phrase's second box
        ("d1", "Pneumothorax", "small left apical pneumothorax", 70, 5, 20, 10),
        ("d2", "Cardiomegaly", "enlarged heart", 90, 150, 50, 40),  # reaches past the image: clamped
        ("d2", "Nodule", "a nodule", 1, 1, 5, 5),  # not one of the 8 categories
        ("d2", "Edema", "no area", 5, 5, 0, 10),
        ("d3", "Edema", "bad", "x", 1, 1, 1),
    ]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["dicom_id", "category_name", "label_text", "path", "x", "y", "w", "h", "image_width",
                     "image_height", "split"])  # fmt: skip
    writer.writerows(
        [(d, c, t, f"files/p10/p1/s1/{d}.jpg", x, y, w, h, 128, 160, "test") for d, c, t, x, y, w, h in rows]
    )
    (tmp_path / "MS_CXR_Local_Alignment_v1.1.0.csv").write_text(buffer.getvalue())
    ms = read_ms_cxr(tmp_path)
    grouped = [(p.dicom_id, p.finding, len(p.boxes)) for p in ms.phrases]
    assert grouped == [("d1", "edema", 2), ("d1", "pneumothorax", 1), ("d2", "cardiomegaly", 1)]
    assert ms.phrases[0].boxes == [(10.0, 20.0, 40.0, 60.0), (60.0, 20.0, 90.0, 60.0)]
    assert ms.phrases[2].boxes == [(90.0, 150.0, 128.0, 160.0)]
    assert dict(ms.skips.counts) == {"box_clamped": 1, "unknown_category": 1, "box_zero_area": 1, "not_a_number": 1}
    assert [p.dicom_id for p in read_ms_cxr(tmp_path, {"d2"}).phrases] == ["d2"]


def test_ms_cxr_missing_column_and_other_versions(tmp_path):
    (tmp_path / "MS_CXR_Local_Alignment_v1.0.0.csv").write_text("dicom_id,category_name,label_text,x,y,w\n")
    assert find_ms_cxr(tmp_path).name == "MS_CXR_Local_Alignment_v1.0.0.csv"  # 1.1.0 absent: another version
    ms = read_ms_cxr(tmp_path)
    assert ms.phrases == [] and ms.skips.counts["missing_column"] == 1
    assert "['h', 'image_width', 'image_height']" in ms.skips.examples["missing_column"]
    assert find_ms_cxr(tmp_path / "nothing") is None
