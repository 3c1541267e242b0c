"""Per-finding, per-side change regions: read from a phantom release, carried into the cache, and the region each
question asks about (the dataset's ``truth`` and the fast ``question_regions``)."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
import torch
from test_phantom import NAME

from diffvqa.data.cache_truth import CacheTruth
from diffvqa.data.cache_writer import prepare
from diffvqa.data.dataset import Collate, PairQADataset
from diffvqa.data.ground_truth import read_ground_truth
from diffvqa.data.phantom import simulate
from diffvqa.data.regions import question_regions, question_side
from diffvqa.errors import UserError

SIZE = 48


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    """200 pairs of 64 x 48 images (about 20 one-lung difference questions), prepared twice at S = 48: as written,
    and as a release from before changes.csv (the table removed)."""
    root = tmp_path_factory.mktemp("regions")
    simulate(root / "release", pairs=200, seed=1, size=(64, 48), progress=False, workers=1)
    prepare(root / "release", root / "release", root / "cache", size=SIZE, workers=1, progress=False)
    shutil.copytree(root / "release", root / "old")
    (root / "old" / "ground_truth" / "changes.csv").unlink()
    prepare(root / "old", root / "old", root / "old_cache", size=SIZE, workers=1, progress=False)
    return root


def _named(answer: str) -> set[str]:
    return set(re.findall(NAME, answer))


def test_reader_checks_changes_csv_and_old_releases_have_none(phantom, tmp_path):
    truth = read_ground_truth(phantom / "release")
    assert list(truth.changes.columns) == ["study_id", "ref_id", "name", "side", "mask_file"]
    assert truth.changes.study_id.dtype == np.int64 and set(truth.changes.side) == {"left", "right", ""}
    assert read_ground_truth(phantom / "old").changes is None
    directory = tmp_path / "ground_truth"
    shutil.copytree(phantom / "release" / "ground_truth", directory, ignore=shutil.ignore_patterns("*.png"))
    good = (directory / "changes.csv").read_text().splitlines()
    study, ref, name, side, mask = good[3].split(",")
    for bad, message in (
        (f"{study},{ref},{name},both,{mask}", r"changes.csv: row 2: side='both'; expected one of"),
        (f"x{study},{ref},{name},{side},{mask}", rf"changes.csv: row 2: study_id='x{study}' is not an integer"),
        (f"{study},{ref},{name},{side},", r"changes.csv: row 2: empty mask_file"),
        (f"{ref},{study},{name},{side},{mask}", rf"row 2: pair study_id={ref}, ref_id={study} is not in pairs.csv"),
        (good[1], r"changes.csv: row 2: a second row for"),
    ):
        (directory / "changes.csv").write_text("\n".join([*good[:3], bad, *good[4:]]) + "\n")
        with pytest.raises(UserError, match=message):  # a user error (one line, exit 2), like its siblings
            read_ground_truth(tmp_path)
    (directory / "changes.csv").write_text("study_id,ref_id,name,mask_file\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['side'\]"):
        read_ground_truth(tmp_path)


def test_cache_carries_every_row_into_the_reference_frame(phantom):
    truth = CacheTruth(phantom / "cache")
    release = read_ground_truth(phantom / "release").changes
    assert truth.has_regions and truth.change_regions.shape == (len(release), SIZE, SIZE)
    assert not CacheTruth(phantom / "old_cache").has_regions
    for (study_id, ref_id), rows in release.groupby(["study_id", "ref_id"], sort=False):
        regions = truth.regions(study_id, ref_id)
        assert [(r["name"], r["side"]) for r in regions] == list(zip(rows.name, rows.side, strict=True))
        union = np.zeros((SIZE, SIZE), np.uint8)
        for r in regions:
            union |= r["mask"]
        whole = truth.pair(study_id, ref_id)["change_mask"]
        assert int((union ^ whole).sum()) <= max(2, 0.1 * whole.sum())  # each thresholded on its own


def _half_plane(dataset, sample) -> None:
    """A one-lung question's region lies on its lung's half of the reference image: the patient's left on the
    image's right. The midline is within a few pixels of the content's centre (pose within 2.5 deg / 2.5 %)."""
    region = sample["truth"]["change_mask"][0].numpy() > 0
    if not region.any():
        return
    y0, x0, y1, x1 = sample["ref_box"].tolist()
    centre, margin = (x0 + x1 - 1) / 2, 0.1 * (x1 - x0)
    x = np.broadcast_to(np.arange(SIZE), region.shape)[region]
    if sample["truth"]["side"] == "left":
        assert x.min() > centre - margin and x.mean() > centre, (sample["question"], x.min(), centre)
    else:
        assert x.max() < centre + margin and x.mean() < centre, (sample["question"], x.max(), centre)


def test_difference_samples_ask_about_their_side_and_name_what_the_answer_names(phantom):
    dataset = PairQADataset(phantom / "cache", split=None, question_types=["difference"])
    seen = {"left": 0, "right": 0, "": 0, "one lung, changed": 0}
    for i in range(len(dataset)):
        sample = dataset[i]
        truth = sample["truth"]
        assert truth["per_finding"] and truth["side"] == question_side(sample["question"], "difference")
        assert truth["change_mask"].shape == (1, SIZE, SIZE) and truth["change_mask"].dtype == torch.float32
        names = [c["name"] for c in truth["changes"]]
        assert len(names) == len(set(names)) and set(names) == _named(sample["answer"]), (sample["answer"], names)
        for c in truth["changes"]:
            assert c["mask"].shape == (SIZE, SIZE) and c["mask"].dtype == torch.uint8
            assert c["side"] in ((truth["side"],) if truth["side"] else ("left", "right", "both", ""))
        seen[truth["side"]] += 1
        if truth["side"]:
            _half_plane(dataset, sample)
            seen["one lung, changed"] += bool(names)
            union = torch.zeros(SIZE, SIZE, dtype=torch.uint8)
            for c in truth["changes"]:
                union |= c["mask"]
            assert torch.equal(union.float(), truth["change_mask"][0])  # the region is exactly its side's rows
        else:
            whole = dataset.cache.pair_truth(sample["ids"]["study_id"], sample["ids"]["ref_id"])["change_mask"]
            assert torch.equal(truth["change_mask"][0], torch.from_numpy(whole).float())
    assert min(seen.values()) >= 3, seen
    batch = Collate()([dataset[i] for i in range(4)])
    assert len(batch["truth"]["changes"]) == 4 and isinstance(batch["truth"]["changes"][0], list)
    assert batch["truth"]["change_mask"].shape == (4, 1, SIZE, SIZE) and len(batch["truth"]["side"]) == 4


def test_old_caches_fall_back_to_the_whole_change_mask_and_say_so(phantom):
    old = PairQADataset(phantom / "old_cache", split=None, question_types=["difference"])
    new = PairQADataset(phantom / "cache", split=None, question_types=["difference"])
    one_lung = [i for i in range(len(old)) if question_side(old.questions.question[i], "difference")]
    assert one_lung
    for i in one_lung:
        a, b = old[i]["truth"], new[i]["truth"]
        assert not a["per_finding"] and a["changes"] == [] and a["side"] == b["side"] != ""
        whole = old.cache.pair_truth(old[i]["ids"]["study_id"], old[i]["ids"]["ref_id"])["change_mask"]
        assert torch.equal(a["change_mask"][0], torch.from_numpy(whole).float())
    assert question_regions(phantom / "old_cache", "train").shape[1:] == (SIZE, SIZE)


def test_question_regions_are_the_samples_regions_without_the_images(phantom):
    dataset = PairQADataset(phantom / "cache", split="train", question_types=["difference"])
    expected = [dataset[i]["truth"]["change_mask"][0].numpy() for i in range(len(dataset))]
    expected = [m.astype(np.uint8) for m in expected if m.any()]
    regions = question_regions(phantom / "cache", "train")
    assert regions.dtype == np.uint8 and regions.shape == (len(expected), SIZE, SIZE)
    np.testing.assert_array_equal(regions, np.stack(expected))
    with pytest.raises(ValueError, match="unknown split"):
        question_regions(phantom / "cache", "valid")
