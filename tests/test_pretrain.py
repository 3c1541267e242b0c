"""``diffvqa pretrain``: the encoder learns finding labels from train-split images only, resumes exactly, reports
per-label AUROC and the head's pointing game, and writes an encoder ``model.encoder_pretrained`` loads."""

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from diffvqa.commands.pretrain import (
    ENCODER_DIR,
    METRICS_FILE,
    SUMMARY_FILE,
    LabelledImages,
    main,
    pretrain,
    split_images,
)
from diffvqa.config import apply_overrides, load_config
from diffvqa.data.cache_reader import ImageCache
from diffvqa.errors import UserError
from diffvqa.metrics.auroc import auroc, auroc_interval

QUICK = ["pretrain.steps=6", "pretrain.eval_every=3", "pretrain.batch_size=8", "pretrain.labels=findings"]


def test_auroc_matches_the_pairwise_definition():
    rng = np.random.default_rng(0)
    scores, labels = rng.integers(0, 5, 40).astype(float), rng.integers(0, 2, 40)  # ties included
    pos, neg = scores[labels == 1], scores[labels == 0]
    pairwise = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    assert auroc(scores, labels) == pytest.approx(pairwise)
    assert auroc(scores, np.ones(40)) is None
    interval = auroc_interval(scores, labels)
    assert interval.low <= interval.estimate <= interval.high


def test_split_images_hold_out_images_of_several_splits(phantom_cache, tmp_path):
    cache = ImageCache(phantom_cache)
    images, shared = split_images(cache)
    q = cache.questions()
    for split, ids in images.items():
        used = q[q.main_dicom_id.isin(ids) | q.ref_dicom_id.isin(ids)]
        assert set(used.split) <= {split}, split
    assert shared == 0  # the phantom splits by patient
    # a copy of the cache whose one test image is also used by a train question: held out of both
    copy = tmp_path / "cache"
    shutil.copytree(phantom_cache, copy)
    questions = q.copy()
    test_image = images["test"][0]
    row = questions.index[questions.split == "train"][0]
    questions.loc[row, "main_dicom_id"] = test_image
    questions.to_csv(copy / "questions.csv", index=False)
    images2, shared2 = split_images(ImageCache(copy))
    assert shared2 >= 1 and test_image not in images2["test"] and test_image not in images2["train"]


def test_pretrain_trains_on_train_images_only_and_writes_what_it_promises(phantom_cache, tmp_path, monkeypatch):
    config = load_config("tiny", overrides=QUICK)
    trained, scored = [], []  # training reads images with autograd on; scoring (validation, test) under no_grad
    original = LabelledImages.__getitem__

    def spy(self, i):
        (trained if torch.is_grad_enabled() else scored).append(self.dicom_ids[i])
        return original(self, i)

    monkeypatch.setattr(LabelledImages, "__getitem__", spy)
    metrics = pretrain(config, phantom_cache, run_dir=tmp_path / "pre", progress=False)
    images, _ = split_images(ImageCache(phantom_cache))
    assert len(trained) == 6 * 8 and set(trained) <= set(images["train"])
    assert set(scored) == set(images["val"]) | set(images["test"])

    run = tmp_path / "pre"
    for name in ("config.json", "run_info.json", "metrics.jsonl", "latest", "best", METRICS_FILE, SUMMARY_FILE):
        assert (run / name).is_file(), name
    encoder = run / ENCODER_DIR
    assert {"config.json", "model.safetensors", "finding_head.safetensors", "finding_head.json", "README.md"} <= {
        p.name for p in encoder.iterdir()
    }
    saved = json.loads((run / METRICS_FILE).read_text())
    assert saved == json.loads(json.dumps(metrics))
    assert set(saved["test"]["per_label"]) == set(json.loads((encoder / "finding_head.json").read_text())["names"])
    scored = [e for e in saved["test"]["per_label"].values() if e["auroc"] is not None]
    assert scored and all(e["ci95"][0] <= e["auroc"] <= e["ci95"][1] for e in scored)
    pointing = saved["cam_pointing"]  # the phantom: the head's maps scored against the findings' regions
    assert pointing["overall"]["n"] > 0 and 0 <= pointing["overall"]["score"] <= 1
    assert {"chance", "prior", "ceiling"} <= set(pointing["overall"])
    assert "Not for clinical use" in (encoder / "README.md").read_text()

    # the VQA model takes it unchanged
    from diffvqa.data.text import build_word_tokenizer
    from diffvqa.model.vqa import DiffVQA

    vqa_config = apply_overrides(
        load_config("tiny"), [f"model.encoder_pretrained={encoder}", "model.finding_head=findings"]
    )
    model = DiffVQA(vqa_config, build_word_tokenizer(["a b"]))
    weights = load_file(str(encoder / "finding_head.safetensors"))
    torch.testing.assert_close(model.finding_head.linear.weight, weights["linear.weight"])


def test_resume_continues_exactly(phantom_cache, tmp_path):
    config = load_config("tiny", overrides=QUICK)
    pretrain(config, phantom_cache, run_dir=tmp_path / "whole", progress=False)
    assert pretrain(config, phantom_cache, run_dir=tmp_path / "cut", stop_after=4, progress=False) is None
    pretrain(config, phantom_cache, run_dir=tmp_path / "cut", resume=True, progress=False)
    whole = load_file(str(tmp_path / "whole" / ENCODER_DIR / "model.safetensors"))
    cut = load_file(str(tmp_path / "cut" / ENCODER_DIR / "model.safetensors"))
    assert whole.keys() == cut.keys()
    for key in whole:
        assert torch.equal(whole[key], cut[key]), key


def test_bad_input_is_one_line(phantom_cache, tmp_path, capsys):
    bare = tmp_path / "bare"
    shutil.copytree(phantom_cache, bare)
    shutil.rmtree(bare / "labels")
    assert main(["--data", str(bare), "--out", str(tmp_path / "p"), "--preset", "tiny", *QUICK]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "mimic-cxr-2.0.0-chexpert.csv.gz" in err[0] and "all_diseases.json" in err[0]
    assert not (tmp_path / "p").exists()  # refused before anything was written
    with pytest.raises(UserError, match="pretrain.labels"):
        load_config("tiny", overrides=["pretrain.labels=radlex"])
    # the paper preset pretrains from ImageNet weights: an empty model.encoder_pretrained is refused, not trained
    assert main(["--data", str(phantom_cache), "--out", str(tmp_path / "paper"), "--preset", "paper"]) == 2
    err = capsys.readouterr().err
    assert "model.encoder_pretrained" in err and "model.require_pretrained=false" in err
    assert not (tmp_path / "paper").exists()


def test_cam_pointing_reference_levels_match_a_direct_count(phantom_cache):
    """Each finding's chance (mean area share) and fixed-point prior (the pixel inside most of its train regions, hit
    rate on its test regions), recounted here from the cache's findings without the metrics helpers' batching."""
    from diffvqa.commands.pretrain import cam_pointing
    from diffvqa.data.labels import keyword_label
    from diffvqa.model.findings import FindingClassifier

    config = load_config("tiny", overrides=QUICK)
    cache = ImageCache(phantom_cache)
    images, _ = split_images(cache)
    classifier = FindingClassifier(config.model, "findings", load_pretrained=False)
    scored = images["train"] + images["test"]  # train images too: on them the prior must hit (the test set is small)
    result = cam_pointing(classifier, cache, images["train"], scored, "findings", cells=4, device="cpu")
    priors = [e["prior"] for e in result["per_finding"].values() if e["prior"] is not None]
    assert priors and max(priors) > 0  # some finding's prior hits: a wrong fixed point would show
    for name, entry in result["per_finding"].items():
        train = [
            f["mask"] > 0 for d in images["train"] for f in cache.findings(d) if f["name"] == name and f["mask"].any()
        ]
        test = [f["mask"] > 0 for d in scored for f in cache.findings(d)
                if f["name"] == name and f["mask"].any() and keyword_label(name, "findings") is not None]  # fmt: skip
        assert entry["n"] == len(test)
        assert entry["chance"] == pytest.approx(np.mean([m.mean() for m in test]), abs=1e-6)
        if not train:
            assert entry["prior"] is None
            continue
        y, x = np.unravel_index(np.argmax(np.sum(train, axis=0)), train[0].shape)
        assert entry["prior"] == pytest.approx(np.mean([m[y, x] for m in test]))
