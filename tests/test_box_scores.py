"""Boxes carried into the cache (prepare --boxes, diffvqa.data.cache_boxes) and the saliency scored against them
(diffvqa.metrics.boxes): in metrics.json, the report and the viewer, each score beside its reference levels, and
on the phantom against its pixel truth on the same questions."""

from __future__ import annotations

import json
import shutil
import zipfile
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from diffvqa.data.cache_boxes import CacheBoxes, box_sources, rasterise, to_cache_box, write_boxes
from diffvqa.data.cache_reader import ImageCache
from diffvqa.data.cache_writer import prepare_main
from diffvqa.data.dataset import Collate, PairQADataset
from diffvqa.data.images import Geometry
from diffvqa.data.phantom import simulate
from diffvqa.metrics.boxes import MIN_SCORED, BoxTally, box_priors, warp_to_reference
from diffvqa.report.drawing import BOX_COLOR


@pytest.fixture(scope="module")
def box_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("box_cache")
    release = root / "release"
    simulate(release, pairs=40, seed=5, size=(160, 128), progress=False)
    argv = ["--release", str(release), "--out", str(root / "cache"), "--size", "64", "--workers", "1", "--quiet",
            "--boxes", str(release / "chest-imagenome"), str(release / "ms-cxr")]  # fmt: skip
    assert prepare_main(argv) == 0
    return root / "cache"


@pytest.fixture(scope="module")
def tiny_box_run(box_cache, tmp_path_factory):
    from diffvqa.commands.train import main

    run = tmp_path_factory.mktemp("box_run") / "run"
    argv = ["--data", str(box_cache), "--out", str(run), "--preset", "tiny", "--no-progress", "train.steps=2"]
    assert main(argv) == 0
    return run


# ---- the cache ------------------------------------------------------------------------------------------------
def test_prepare_carries_the_boxes_into_the_cache_frame(box_cache):
    boxes, cache = CacheBoxes(box_cache), ImageCache(box_cache)
    report = (box_cache / "report.txt").read_text()
    assert "Chest ImaGenome:" in report and "MS-CXR:" in report and "box_clamped" in report
    assert not (box_cache / "boxes.partial").exists()
    q = cache.questions()
    covered, shares = [], []
    for row in q[q.question_type == "difference"].itertuples():
        change = cache.pair_truth(row.study_id, row.ref_id)["change_mask"].astype(bool)
        found = boxes.changed_boxes(row.study_id, row.ref_id, row.ref_dicom_id)
        assert bool(found) == bool(change.any()), (row.study_id, row.ref_id)  # boxes name exactly the changed pairs
        if found:
            region = boxes.region_mask(found).astype(bool)
            covered.append((region & change).sum() / change.sum())
            shares.append((region.mean(), change.mean()))
    # the reference's boxes: a heart that grew reaches past its earlier box, so a little of a change can lie outside
    assert len(covered) >= 20 and np.mean(covered) > 0.9 and min(covered) >= 0.6
    assert np.mean([b for b, _ in shares]) > 1.5 * np.mean([c for _, c in shares])  # boxes are coarser than masks


def test_a_whole_image_box_is_the_image_content():
    geometry = Geometry.fit(160, 128, 64)
    box = to_cache_box((0, 0, 128, 160), (128, 160), geometry)
    mask = rasterise([box], 64)
    y0, x0, y1, x1 = geometry.content_box()
    expected = np.zeros((64, 64), np.uint8)
    expected[y0:y1, x0:x1] = 1
    assert np.array_equal(mask, expected)
    # the dataset's copy of the image may be another size: the box is scaled to the cached one
    assert np.allclose(to_cache_box((0, 0, 256, 320), (256, 320), geometry), box)
    assert rasterise([(10.2, 10.2, 10.4, 10.4)], 64).sum() == 1  # a box too small for a pixel centre keeps one


def test_a_comparison_against_another_prior_is_counted_not_scored(box_cache, tmp_path):
    release = box_cache.parent / "release"
    source = release / "chest-imagenome" / "silver_dataset" / "scene_graph.zip"
    copy = tmp_path / "ci" / "silver_dataset"
    copy.mkdir(parents=True)
    with zipfile.ZipFile(source) as archive:
        members = {n: json.loads(archive.read(n)) for n in archive.namelist()}
    changed = next(n for n, g in members.items() if any("worsened" in r["relationship_names"][0]
                                                         for r in g["relationships"]))  # fmt: skip
    for relationship in members[changed]["relationships"]:
        relationship["object_id"] = "someone-else_" + relationship["bbox_name"]
    with zipfile.ZipFile(copy / "scene_graph.zip", "w") as archive:
        for name, graph in members.items():
            archive.writestr(name, json.dumps(graph))
    cache = tmp_path / "cache"
    shutil.copytree(box_cache, cache)
    summary = write_boxes(cache, [tmp_path / "ci"])
    skipped = summary["skipped"]["prior_not_reference"]
    assert skipped["count"] == len(members[changed]["relationships"]) and "someone-else" in skipped["first"]
    current = members[changed]["image_id"]
    pairs = ImageCache(cache).questions()
    study, ref = pairs[pairs.main_dicom_id == current][["study_id", "ref_id"]].iloc[0]
    assert CacheBoxes(cache).changed(study, ref) == [] and "ms_cxr" not in summary


def test_the_python_api_carries_boxes_as_the_command_does(box_cache, tmp_path):
    """prepare(boxes=) and merge_shards(boxes=) write the boxes the command writes; a shard refuses them."""
    from diffvqa.data.cache_writer import merge_shards, prepare
    from diffvqa.errors import UserError

    release = box_cache.parent / "release"
    dirs = [release / "chest-imagenome", release / "ms-cxr"]
    common = {"size": 64, "workers": 1, "progress": False}
    prepare(release, release, tmp_path / "api", boxes=dirs, **common)
    shards = [tmp_path / f"shard{i}" for i in range(2)]
    for i, shard in enumerate(shards):
        prepare(release, release, shard, shard=(i, 2), **common)
    merge_shards(shards, tmp_path / "merged", workers=1, progress=False, boxes=dirs)
    for cache in (tmp_path / "api", tmp_path / "merged"):
        for name in ("regions.csv", "comparisons.csv", "phrases.csv"):
            assert (cache / "boxes" / name).read_bytes() == (box_cache / "boxes" / name).read_bytes(), (cache, name)
        assert (cache / "report.txt").read_text() == (box_cache / "report.txt").read_text()
    with pytest.raises(UserError, match="merge_shards"):
        prepare(release, release, tmp_path / "shard-with-boxes", shard=(0, 2), boxes=dirs, **common)
    assert not (tmp_path / "shard-with-boxes").exists()


def test_bad_box_directories_are_said_in_one_line(box_cache, tmp_path, capsys):
    release = box_cache.parent / "release"
    argv = ["--release", str(release), "--out", str(tmp_path / "c"), "--quiet", "--boxes"]
    assert prepare_main([*argv, str(tmp_path / "missing")]) == 2
    assert "--boxes" in capsys.readouterr().err and not (tmp_path / "c").exists()  # said before any decoding
    assert prepare_main([*argv, str(release / "ground_truth")]) == 2
    err = capsys.readouterr().err.strip()
    assert "holds neither Chest ImaGenome" in err and "MS_CXR_Local_Alignment_v1.1.0.csv" in err and "\n" not in err
    with pytest.raises(ValueError, match="both hold ms cxr"):
        box_sources([release / "ms-cxr", release])


# ---- the scores ------------------------------------------------------------------------------------------------
def _batch(cache, model, split="train"):
    dataset = PairQADataset(cache, split, ["difference"])
    collate = Collate(model.tokenizer, model.config.data.max_question_tokens, model.config.data.max_answer_tokens)
    return collate([dataset[i] for i in range(len(dataset))])


def test_an_oracle_map_scores_what_the_boxes_cover(box_cache, tiny_box_run):
    """M = the true change mask: the pixel truth scores 1, the boxes the share of the mask they cover; a map
    peaking outside every box scores 0. Reference levels come with every score."""
    from diffvqa.model.checkpoint import load_checkpoint

    model = load_checkpoint(tiny_box_run)
    batch = _batch(box_cache, model)
    boxes = CacheBoxes(box_cache)
    n = len(batch["question"])
    oracle = SimpleNamespace(mask=batch["truth"]["change_mask"], theta=torch.eye(2, 3).repeat(n, 1, 1), features=None)
    tally = BoxTally(model, boxes, box_priors(box_cache))
    per_question = tally.add(batch, oracle)
    scored = [i for i, p in enumerate(per_question) if p and "box_pointing" in p]
    assert len(scored) >= 20
    for i in scored:
        found = boxes.changed_boxes(batch["ids"]["study_id"][i], batch["ids"]["ref_id"][i],
                                    batch["ids"]["ref_dicom_id"][i])  # fmt: skip
        change = batch["truth"]["change_mask"][i, 0].numpy() > 0.5
        covered = (boxes.region_mask(found).astype(bool) & change).sum() / change.sum()
        assert per_question[i]["box_pointing"] == pytest.approx(covered, abs=1e-6)
    summary = tally.summary()["chest_imagenome"]
    agreement = summary["pixel_truth"]
    assert agreement["pixel"]["score"] == 1.0 and agreement["box"]["score"] > 0.9
    assert agreement["area_ratio"] > 1 and agreement["questions"] == len(scored)
    assert agreement["above_chance"]["pixel"]["score"] == pytest.approx(1.0)  # every peak in the true mask
    for key in ("mask",):
        entry = summary[key]
        assert set(entry) >= {"score", "ci95", "n", "pairs", "chance", "prior", "ceiling", "enough"}
        assert entry["chance"] < entry["score"] and entry["enough"] == (entry["pairs"] >= MIN_SCORED)
    assert summary["per_finding"] and all("mask" in e for e in summary["per_finding"].values())

    corner = torch.zeros_like(oracle.mask)
    corner[:, :, 0, 0] = 1.0  # the top-left pixel: in no region's box
    tally = BoxTally(model, boxes, box_priors(box_cache))
    tally.add(batch, SimpleNamespace(mask=corner, theta=oracle.theta, features=None))
    assert tally.summary()["chest_imagenome"]["mask"]["score"] == 0.0


def test_warp_to_reference_follows_the_aligner():
    region = torch.zeros(32, 32)
    region[10:20, 5:15] = 1
    assert torch.equal(warp_to_reference(region, torch.eye(2, 3)), region)
    shift = torch.tensor([[1.0, 0.0, 2 * 4 / 32], [0.0, 1.0, 0.0]])  # the aligned image at x shows the main at x + 4
    assert torch.equal(warp_to_reference(region, shift), torch.roll(region, -4, dims=1))


def test_evaluate_scores_boxes_in_metrics_report_and_viewer(box_cache, tiny_box_run, tmp_path, capsys):
    from diffvqa.commands.evaluate import main

    out = tmp_path / "eval"
    argv = ["--checkpoint", str(tiny_box_run), "--data", str(box_cache), "--out", str(out), "--split", "train",
            "--question-types", "difference", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out  # the table evaluate prints ends with the box scores, the few ones marked
    assert "pointing game, shared mask vs Chest ImaGenome's changed regions:" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    boxes = metrics["box_pointing"]
    assert boxes["min_scored"] == MIN_SCORED and boxes["grid"] == "4x4" and boxes["skipped"]["box_clamped"] > 0
    ci, ms = boxes["chest_imagenome"], boxes["ms_cxr"]
    for entry in (ci["mask"], ci["keyword_cam"], ms["keyword_cam"], *ms["per_finding"].values(),
                  *(e for f in ci["per_finding"].values() for e in f.values())):  # fmt: skip
        assert 0 <= entry["score"] <= 1 and entry["ci95"][0] <= entry["score"] <= entry["ci95"][1]
        assert 0 < entry["chance"] < 1 and 0 <= entry["ceiling"] <= 1 and entry["prior"] is not None
    assert ci["keyword_cam"]["n"] >= ci["keyword_cam"]["pairs"]  # one map per named finding of a pair
    assert ms["keyword_cam"]["phrases"] == ms["keyword_cam"]["n"] > 0
    few = [e for f in ci["per_finding"].values() for e in f.values() if not e["enough"]]
    assert few  # 40 pairs: some findings have fewer than the minimum ...
    assert ci["pixel_truth"]["questions"] == ci["mask"]["n"]
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert sum("box_pointing" in r for r in records) == ci["mask"]["n"]
    html = (out / "report.html").read_text()
    assert "Saliency against boxes" in html and "too few (&lt; 30)" in html  # ... and are marked, not hidden
    assert "Against the phantom's pixel truth" in html and "box_clamped" in html
    data = (out / "viewer" / "data.js").read_text()
    assert "pointing game against boxes" not in data and '"boxes":[{"label":"Chest ImaGenome, shared mask"' in data
    line = next(i for i, r in enumerate(records) if "box_pointing" in r)
    strip = np.asarray(Image.open(out / "viewer" / "img" / "000" / f"{line:06d}.jpg").convert("RGB")).astype(int)
    mask_panel = strip[:, 6 * strip.shape[0] :]
    red, green, blue = (mask_panel[..., c] for c in range(3))
    cyan = (green - red > 60) & (blue - red > 60) & (blue > green)  # neither inferno nor the green contour
    assert BOX_COLOR[2] > BOX_COLOR[1] > BOX_COLOR[0] and cyan.sum() > 20  # the boxes are drawn over the mask
    figures = sorted((out / "report_images").glob("example*_mask.png"))
    assert figures and "changed regions&#x27; boxes (cyan)" in html


def test_evaluate_without_boxes_writes_no_box_scores(box_cache, tiny_box_run, tmp_path):
    from diffvqa.commands.evaluate import evaluate

    cache = tmp_path / "cache"
    shutil.copytree(box_cache, cache, ignore=shutil.ignore_patterns("boxes"))
    metrics = evaluate(tiny_box_run, cache, out=tmp_path / "eval", question_types=["difference"], report=False,
                       viewer=False, progress=False)  # fmt: skip
    assert "box_pointing" not in metrics


def test_the_boxes_benchmark_carries_the_boxes_and_compares_them_with_the_pixel_truth(
    box_cache, tiny_box_run, tmp_path, capsys
):
    from conftest import load_benchmark

    cache = tmp_path / "cache"
    shutil.copytree(box_cache, cache, ignore=shutil.ignore_patterns("boxes"))  # the benchmark carries them in itself
    release = box_cache.parent / "release"
    argv = ["--checkpoint", str(tiny_box_run), "--cache", str(cache), "--release", str(release), "--out",
            str(tmp_path / "eval"), "--split", "train"]  # fmt: skip
    assert load_benchmark("boxes").main(argv) == 0
    out = capsys.readouterr().out
    assert "Chest ImaGenome:" in out and "the changed regions boxes" in out and "box - pixel" in out
    result = json.loads(out.strip().splitlines()[-1])
    truth = result["pixel_truth"]
    assert truth["questions"] >= 20 and truth["box"]["chance"] > truth["pixel"]["chance"]
    assert result["mask"]["score"] == truth["box"]["score"] or result["mask"]["n"] > truth["questions"]


def test_a_full_disk_while_carrying_the_boxes_is_one_line_and_keeps_the_old_boxes(box_cache, tmp_path, monkeypatch,
                                                                                   capsys):  # fmt: skip
    import errno
    import os

    import diffvqa.data.cache_boxes

    cache = tmp_path / "cache"
    shutil.copytree(box_cache, cache)
    before = (cache / "boxes" / "regions.csv").read_bytes()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(diffvqa.data.cache_boxes, "write_atomic", full)
    release = box_cache.parent / "release"
    argv = ["--release", str(release), "--out", str(cache), "--size", "64", "--workers", "1", "--quiet", "--boxes",
            str(release / "ms-cxr")]  # fmt: skip
    assert prepare_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no space left" in err.lower() and "boxes.partial" in err
    assert not (cache / "boxes.partial").exists() and (cache / "boxes" / "regions.csv").read_bytes() == before


def test_the_box_priors_are_the_best_fixed_points_of_the_train_regions(box_cache):
    """Summed counts (what box_priors keeps, not an (N, S, S) stack) give the pixel best_fixed_point picks."""
    from diffvqa.data.regions import question_side
    from diffvqa.metrics.pointing import best_fixed_point

    boxes, q = CacheBoxes(box_cache), ImageCache(box_cache).questions()
    train = q[(q.split == "train") & (q.question_type == "difference")]
    masks = [
        boxes.region_mask(found)
        for r in train.itertuples()
        if (found := boxes.changed_boxes(r.study_id, r.ref_id, r.ref_dicom_id, question_side(r.question, "difference")))
    ]
    images = dict.fromkeys([*q[q.split == "train"].main_dicom_id, *q[q.split == "train"].ref_dicom_id])
    phrases = [boxes.region_mask(p["boxes"]) for d in images for p in boxes.phrases.get(d, [])]
    priors = box_priors(box_cache)
    assert priors["chest_imagenome"] == best_fixed_point(torch.from_numpy(np.stack(masks)))
    assert priors["ms_cxr"] == best_fixed_point(torch.from_numpy(np.stack(phrases)))
