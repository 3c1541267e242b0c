"""The prepared cache: values, geometry, resume, shards, ground truth (theta_true), the CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from test_release import dicom_id, write_release

from diffvqa.data import cache_writer as cache_module
from diffvqa.data.cache_reader import ImageCache
from diffvqa.data.cache_writer import merge_shards, prepare, prepare_main
from diffvqa.data.images import load_image, to_uint8
from diffvqa.data.release import image_relpath

SIZE = 64
# The two pairs given ground truth: (subject, main study, ref study, main shape, ref shape)
TRUTH_PAIRS = [
    (10000032, 53189527, 50414267, (220, 180), (240, 200)),  # both portrait, different sizes
    (15000015, 56000002, 56000001, (180, 260), (240, 200)),  # landscape main, portrait ref
]
# M: reference pixel -> main pixel; a near-identity pose change between visits
ANGLE, ZOOM, SHIFT = np.deg2rad(6.0), 1.04, (9.0, -6.0)
M = np.array(
    [
        [ZOOM * np.cos(ANGLE), -ZOOM * np.sin(ANGLE), SHIFT[0]],
        [ZOOM * np.sin(ANGLE), ZOOM * np.cos(ANGLE), SHIFT[1]],
    ]
)


def _anatomy(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A smooth test pattern defined on the reference frame's pixel coordinates."""
    blob = np.exp(-((x - 120) ** 2 + (y - 80) ** 2) / (2 * 18.0**2))
    return np.clip(0.45 + 0.25 * np.sin(x / 11.0) * np.cos(y / 15.0) + 0.3 * blob, 0, 1)


def _disk(shape: tuple[int, int], cx: float, cy: float, r: float) -> np.ndarray:
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]]
    return ((x - cx) ** 2 + (y - cy) ** 2 <= r**2).astype(np.uint8) * 255


def write_truth(release: Path, images: Path) -> None:
    """Phantom-style ground truth for two pairs; their JPGs are rewritten so main = ref warped by M, exactly."""
    directory = release / "ground_truth"
    (directory / "masks").mkdir(parents=True)
    pairs, findings = [], []
    m3 = np.vstack([M, [0, 0, 1]])
    for subject, main, ref, main_shape, ref_shape in TRUTH_PAIRS:
        y, x = np.mgrid[0 : ref_shape[0], 0 : ref_shape[1]].astype(np.float64)
        ref_pixels = _anatomy(x, y)
        y, x = np.mgrid[0 : main_shape[0], 0 : main_shape[1]].astype(np.float64)
        inverse = np.linalg.inv(m3)  # main pixel -> reference pixel: evaluate the pattern there
        xr = inverse[0, 0] * x + inverse[0, 1] * y + inverse[0, 2]
        yr = inverse[1, 0] * x + inverse[1, 1] * y + inverse[1, 2]
        main_pixels = _anatomy(xr, yr)
        for study, pixels in ((main, main_pixels), (ref, ref_pixels)):
            path = images / image_relpath(subject, study, dicom_id(study))
            Image.fromarray((pixels * 255).round().astype(np.uint8)).save(path, quality=98)
        change = f"masks/change_{main}_{ref}.png"
        Image.fromarray(_disk(ref_shape, 130, 60, 30)).save(directory / change)
        finding = f"masks/finding_{main}.png"
        Image.fromarray(_disk(main_shape, 60, 150, 20)).save(directory / finding)
        pairs.append((main, ref, *M.ravel(), change, "pneumothorax"))
        findings.append((subject, main, dicom_id(main), "pneumothorax", "left apical area", "small", "", finding))
    columns = ["study_id", "ref_id", "m00", "m01", "m02", "m10", "m11", "m12", "change_mask_file", "keyword"]
    pd.DataFrame(pairs, columns=columns).to_csv(directory / "pairs.csv", index=False)
    columns = ["subject_id", "study_id", "dicom_id", "name", "location", "level", "type", "mask_file"]
    pd.DataFrame(findings, columns=columns).to_csv(directory / "findings.csv", index=False)
    keywords = pd.DataFrame({"question_index": [0, 2, 13], "keyword": ["atelectasis", "pneumothorax", ""]})
    keywords.to_csv(directory / "questions.csv", index=False)


@pytest.fixture
def fixture(tmp_path):
    release, images = write_release(tmp_path / "data")
    write_truth(release, images)
    return release, images


def _files(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_values_geometry_and_counts(fixture, tmp_path):
    release, images = fixture
    manifest = prepare(release, images, tmp_path / "cache", size=SIZE, workers=1, progress=False)
    cache = ImageCache(tmp_path / "cache")
    assert manifest["num_images"] == 10 and manifest["num_unreadable_images"] == 1
    assert manifest["skipped"]["unreadable"] == 1 and manifest["skipped"]["bad_chronology"] == 2
    assert manifest["num_questions"] == 9 and manifest["preprocessing"]["draft_decoding"] is True
    assert set(manifest["versions"]) == {"diffvqa", "numpy", "pillow", "pydicom"}
    questions = cache.questions()
    assert 10 not in set(questions.question_index)  # the corrupt JPG's question, dropped as unreadable
    assert questions.answer[questions.question_index == 2].item().endswith("reference image. ")
    for row in questions.itertuples():
        for study, dicom in ((row.study_id, row.main_dicom_id), (row.ref_id, row.ref_dicom_id)):
            expected, geometry = load_image(images / image_relpath(row.subject_id, study, dicom), SIZE)
            np.testing.assert_array_equal(cache.image(dicom), to_uint8(expected))
            assert cache.geometry(dicom) == geometry
    with pytest.raises(KeyError, match="could not be decoded"):
        cache.image(dicom_id(55000002))
    with pytest.raises(ValueError, match="not a prepared cache"):
        ImageCache(tmp_path)


def test_theta_true_aligns_main_onto_ref(fixture, tmp_path):
    release, images = fixture
    prepare(release, images, tmp_path / "cache", size=SIZE, workers=2, progress=False)
    cache = ImageCache(tmp_path / "cache")
    for _, main, ref, _, _ in TRUTH_PAIRS:
        truth = cache.pair_truth(main, ref)
        assert truth is not None and truth["keyword"] == "pneumothorax"
        theta = torch.tensor(truth["theta"], dtype=torch.float32)[None]  # (1, 2, 3)
        main_image = torch.from_numpy(cache.image(dicom_id(main))).float()[None, None] / 255
        ref_image = torch.from_numpy(cache.image(dicom_id(ref))).float()[None, None] / 255
        grid = F.affine_grid(theta, [1, 1, SIZE, SIZE], align_corners=False)
        warped = F.grid_sample(main_image, grid, align_corners=False)
        # compare where the reference has content and the sample point falls inside the main's content
        ref_geo, main_geo = cache.geometry(dicom_id(ref)), cache.geometry(dicom_id(main))
        inside = np.zeros((SIZE, SIZE), bool)
        ref_geo.content(inside)[2:-2, 2:-2] = True
        x, y = main_geo.from_normalised(grid[0, ..., 0].numpy(), grid[0, ..., 1].numpy())
        inside &= (x > 3) & (x < main_geo.orig_w - 4) & (y > 3) & (y < main_geo.orig_h - 4)
        assert inside.sum() > 0.5 * SIZE * SIZE * ref_geo.resized_w / SIZE
        error = (warped - ref_image)[0, 0].numpy()[inside]
        identity_grid = F.affine_grid(torch.eye(2, 3)[None], [1, 1, SIZE, SIZE], align_corners=False)
        identity = F.grid_sample(main_image, identity_grid, align_corners=False)
        identity_error = (identity - ref_image)[0, 0].numpy()[inside]
        assert np.abs(error).mean() < 0.015, np.abs(error).mean()
        assert np.abs(identity_error).mean() > 4 * np.abs(error).mean()
        # the change mask lands in the reference's cache frame where its disk was
        mask = truth["change_mask"]
        assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
        ys, xs = np.nonzero(mask)
        np.testing.assert_allclose((xs.mean(), ys.mean()), ref_geo.to_cache(130, 60), atol=0.3)
        assert mask.sum() == pytest.approx(np.pi * 30**2 * ref_geo.scale_x * ref_geo.scale_y, rel=0.1)
        (finding,) = cache.findings(dicom_id(main))
        assert finding["name"] == "pneumothorax" and finding["mask"].sum() > 0
    questions = cache.questions()
    keyword = dict(zip(questions.question_index, questions.truth_keyword, strict=True))
    assert keyword[2] == "pneumothorax" and keyword[0] == "atelectasis" and keyword[1] == ""
    assert cache.pair_truth(52000002, 52000001) is None  # a pair without ground truth


def test_interrupted_prepare_resumes_to_the_same_result(fixture, tmp_path, monkeypatch):
    release, images = fixture
    prepare(release, images, tmp_path / "fresh", size=SIZE, workers=1, progress=False, chunk_size=2)

    calls = {"chunks": 0, "decoded": 0}

    def crash_after_two(count):
        calls["chunks"] += 1
        if calls["chunks"] == 2:
            raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(cache_module, "_chunk_done", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        prepare(release, images, tmp_path / "resumed", size=SIZE, workers=1, progress=False, chunk_size=2)
    assert not (tmp_path / "resumed" / "manifest.json").exists()
    assert (np.load(tmp_path / "resumed" / "status.npy") != 0).sum() == 4

    decode = cache_module._decode_one

    def counting(*args):
        calls["decoded"] += 1
        return decode(*args)

    monkeypatch.setattr(cache_module, "_chunk_done", lambda count: None)
    monkeypatch.setattr(cache_module, "_decode_one", counting)
    prepare(release, images, tmp_path / "resumed", size=SIZE, workers=1, progress=False, chunk_size=2)
    assert calls["decoded"] == 11 - 4  # only what was missing
    assert _files(tmp_path / "resumed") == _files(tmp_path / "fresh")
    with pytest.raises(ValueError, match="other settings"):
        prepare(release, images, tmp_path / "resumed", size=32, workers=1, progress=False)


def test_resume_with_an_unchanged_release_does_not_read_it_again(fixture, tmp_path, monkeypatch):
    """The staged reader output stands while the release's CSVs keep their size and mtime (MIMIC: the reader is
    most of a resume's start-up); a touched CSV, other settings or --strict read the release again."""
    release, images = fixture
    prepare(release, images, tmp_path / "fresh", size=SIZE, workers=1, progress=False)
    monkeypatch.setattr(cache_module, "_chunk_done", lambda count: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        prepare(release, images, tmp_path / "resumed", size=SIZE, workers=1, progress=False, chunk_size=2)
    monkeypatch.setattr(cache_module, "_chunk_done", lambda count: None)
    reads = []
    real_reader = cache_module.read_release
    monkeypatch.setattr(cache_module, "read_release", lambda *a, **k: reads.append(1) or real_reader(*a, **k))
    prepare(release, images, tmp_path / "resumed", size=SIZE, workers=1, progress=False, chunk_size=2)
    assert reads == [] and _files(tmp_path / "resumed") == _files(tmp_path / "fresh")
    prepare(release, images, tmp_path / "resumed", size=SIZE, workers=1, progress=False, strict=False)
    assert reads == []
    questions = release / "mimic_pair_questions.csv"
    stat = questions.stat()
    os.utime(questions, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    prepare(release, images, tmp_path / "resumed", size=SIZE, workers=1, progress=False)
    assert reads == [1]
    changed = {k for k, v in _files(tmp_path / "resumed").items() if _files(tmp_path / "fresh")[k] != v}
    assert changed == {"prepare.json"}  # the new fingerprint, nothing else
    prepare(release, images, tmp_path / "resumed", size=SIZE, workers=1, progress=False)
    assert reads == [1]  # and with it the next run trusts the staged output again
    with pytest.raises(ValueError, match="bad_chronology"):  # --strict reads again, to stop at the first bad row
        prepare(release, images, tmp_path / "resumed", size=SIZE, workers=1, progress=False, strict=True)
    assert reads == [1, 1]


def test_shards_merge_to_exactly_a_single_run(fixture, tmp_path):
    release, images = fixture
    prepare(release, images, tmp_path / "single", size=SIZE, workers=1, progress=False)
    for i in range(2):
        prepare(release, images, tmp_path / f"shard{i}", size=SIZE, workers=1, shard=(i, 2), progress=False)
    assert not (tmp_path / "shard0" / "manifest.json").exists()
    merge_shards([tmp_path / "shard1", tmp_path / "shard0"], tmp_path / "merged", workers=1, progress=False)
    single, merged = _files(tmp_path / "single"), _files(tmp_path / "merged")
    assert sorted(single) == sorted(merged)
    for name in single:
        assert single[name] == merged[name], name
    with pytest.raises(ValueError, match="expected shards"):
        merge_shards([tmp_path / "shard0"], tmp_path / "bad", progress=False)


def test_prepare_cli_prints_the_report(fixture, tmp_path, capsys):
    release, images = fixture
    out = tmp_path / "cli"
    code = prepare_main(
        ["--release", str(release), "--images", str(images), "--out", str(out), "--size", "32"]
        + ["--workers", "1", "--question-types", "difference", "--quiet"]
    )
    assert code == 0
    printed = capsys.readouterr().out
    for text in ("rows read", "bad_chronology", "missing_image", "unreadable", "kept questions", "cache (S = 32)"):
        assert text in printed
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["question_types"] == ["difference"] and manifest["size"] == 32
    assert set(ImageCache(out).questions().question_type) == {"difference"}
    with pytest.raises(SystemExit):
        prepare_main(["--release", str(release), "--out", str(out), "--shard", "2/2"])
    code = prepare_main(["--release", str(release), "--images", str(images), "--out", str(tmp_path / "x")]
                        + ["--question-types", "diff", "--quiet"])  # fmt: skip
    assert code == 2 and "unknown question type(s) ['diff']" in capsys.readouterr().err
    args = ["--release", str(release), "--images", str(images), "--size", "32", "--workers", "1", "--quiet"]
    for i in range(2):
        assert prepare_main([*args, "--out", str(tmp_path / f"s{i}"), "--shard", f"{i}/2"]) == 0
    assert "shard 1/2" in capsys.readouterr().out
    merged = ["--merge", str(tmp_path / "s0"), str(tmp_path / "s1"), "--out", str(tmp_path / "m"), "--quiet"]
    assert prepare_main(merged) == 0 and "cache (S = 32)" in capsys.readouterr().out


def test_phantom_release_end_to_end(tmp_path):
    """The phantom's ground-truth contract, read through prepare: theta_true aligns its pairs."""
    from diffvqa.data import phantom

    phantom.simulate(tmp_path / "phantom", pairs=8, seed=0, size=(128, 112), progress=False)
    manifest = prepare(tmp_path / "phantom", tmp_path / "phantom", tmp_path / "cache", size=48, progress=False)
    assert manifest["truth"]["pairs_with_truth"] == manifest["num_pairs"] == 8
    assert sum(manifest["skipped"].values()) == 0
    cache = ImageCache(tmp_path / "cache")
    pairs = cache.questions()[["study_id", "ref_id", "main_dicom_id", "ref_dicom_id"]].drop_duplicates()
    main = torch.stack([torch.from_numpy(cache.image(d)) for d in pairs.main_dicom_id]).float()[:, None] / 255
    ref = torch.stack([torch.from_numpy(cache.image(d)) for d in pairs.ref_dicom_id]).float()[:, None] / 255
    theta = torch.stack(
        [torch.tensor(cache.pair_truth(s, r)["theta"]) for s, r in zip(pairs.study_id, pairs.ref_id, strict=True)]
    ).float()
    aligned = F.grid_sample(main, F.affine_grid(theta, list(main.shape), align_corners=False), align_corners=False)
    # exposure, noise and the findings themselves change between visits, so compare against no alignment
    assert (aligned - ref).abs().mean() < 0.85 * (main - ref).abs().mean()


def test_header_only_release_is_an_error_with_the_counts(tmp_path, capsys):
    release, images = write_release(tmp_path / "data")
    path = release / "mimic_pair_questions.csv"
    path.write_text(path.read_text().splitlines()[0] + "\n")
    code = prepare_main(["--release", str(release), "--images", str(images), "--out", str(tmp_path / "c"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "mimic_pair_questions.csv: no question survived reading (rows_read 0," in err
    assert "skipped_duplicate 0" in err and "kept_questions 0" in err
    assert not (tmp_path / "c" / "manifest.json").exists()
