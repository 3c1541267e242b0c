"""The Python API (``diffvqa.load`` -> Pipeline -> Answer): every input kind gives the same answer as a file, a
batch the same as its rows one by one, a forced keyword moves the CAM, bad input is one clear UserError."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import train_briefly
from PIL import Image

import diffvqa
from diffvqa.errors import UserError
from diffvqa.saliency.lexicon import keyword_spans

QUESTION = "what has changed compared to the reference image?"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny model trained a few steps on one batch (so it says words, not <eos> at once), saved."""
    from conftest import encode_padded

    from diffvqa.config import load_config
    from diffvqa.data.text import build_word_tokenizer
    from diffvqa.model.checkpoint import save_checkpoint
    from diffvqa.model.vqa import DiffVQA

    answers = [
        "the main image has additional findings of pleural effusion than the reference image.",
        "the main image has additional findings of edema and pleural effusion than the reference image.",
    ]
    tokenizer = build_word_tokenizer([QUESTION, *answers, "nothing has changed."])
    config = load_config("tiny")
    torch.manual_seed(0)
    model = DiffVQA(config, tokenizer)
    generator = torch.Generator().manual_seed(1)
    b = 2
    question_ids, question_mask = encode_padded(tokenizer, [QUESTION] * b, 12)
    answer_ids, answer_mask = encode_padded(tokenizer, answers, 20)
    batch = {
        "main": torch.rand(b, 1, 64, 64, generator=generator),
        "ref": torch.rand(b, 1, 64, 64, generator=generator),
        "question_ids": question_ids,
        "question_mask": question_mask,
        "answer_ids": answer_ids,
        "answer_mask": answer_mask,
    }
    train_briefly(model, batch, steps=40)
    return save_checkpoint(model.eval(), tmp_path_factory.mktemp("api") / "ckpt")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Two gray uint8 images of different shapes (both letterboxed into the 64 x 64 frame), and their PNG files."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:90, 0:70]
    main = np.clip(127 + 80 * np.sin(x / 9.0) * np.cos(y / 13.0) + rng.normal(0, 10, (90, 70)), 0, 255)
    ref = np.clip(127 + 80 * np.cos(np.mgrid[0:70, 0:90][1] / 11.0) + rng.normal(0, 10, (70, 90)), 0, 255)
    main, ref = main.astype(np.uint8), ref.astype(np.uint8)
    root = tmp_path_factory.mktemp("images")
    Image.fromarray(main, "L").save(root / "main.png")
    Image.fromarray(ref, "L").save(root / "ref.png")
    return {"main": main, "ref": ref, "main_path": root / "main.png", "ref_path": root / "ref.png"}


@pytest.fixture(scope="module")
def vqa(checkpoint):
    return diffvqa.load(checkpoint)


def test_the_package_exports_load_without_importing_torch_on_import():
    code = "import sys, diffvqa; assert 'torch' not in sys.modules; assert callable(diffvqa.load); print('ok')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
    assert diffvqa.Answer is diffvqa.api.Answer and diffvqa.Pipeline is diffvqa.api.Pipeline
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        diffvqa.nope  # noqa: B018


def test_an_answer_has_every_named_field(vqa, images):
    answer = vqa(images["main_path"], images["ref_path"], QUESTION)
    assert isinstance(answer, diffvqa.Answer) and answer.question == QUESTION
    assert answer.preliminary and answer.final  # the briefly trained model says words
    assert answer.keyword == "pleural effusion" and answer.cam_text == answer.preliminary  # the lexicon's keyword
    assert answer.theta.shape == (2, 3) and not answer.single_pass and not answer.keyword_forced
    for name in ("cam_main", "cam_ref", "mask", "main_image", "ref_image", "aligned_main"):
        value = getattr(answer, name)
        assert value.shape == (64, 64) and value.dtype == np.float32, name
        assert 0.0 <= value.min() and value.max() <= 1.0, name
    np.testing.assert_allclose(answer.mask, np.maximum(answer.cam_main, answer.cam_ref), atol=1e-6)
    y0, x0, y1, x1 = answer.main_geometry.content_box()
    assert x0 > 0 and answer.main_image[:, :x0].max() == 0  # letterboxed left and right, as the cache does
    assert vqa.device == torch.device("cpu")  # device="auto" on a machine without CUDA


def test_paths_pil_images_and_arrays_give_the_same_answer(vqa, images):
    from_files = vqa(images["main_path"], images["ref_path"], QUESTION)
    with Image.open(images["main_path"]) as main, Image.open(images["ref_path"]) as ref:
        from_pil = vqa(main, ref, QUESTION)
    from_arrays = vqa(images["main"], images["ref"], QUESTION)
    from_floats = vqa(images["main"] / np.float32(255), images["ref"] / np.float32(255), QUESTION)
    for other in (from_pil, from_arrays, from_floats):
        assert (other.preliminary, other.keyword, other.final) == (
            from_files.preliminary,
            from_files.keyword,
            from_files.final,
        )
        np.testing.assert_allclose(other.mask, from_files.mask, atol=1e-5)
        np.testing.assert_allclose(other.theta, from_files.theta, atol=1e-6)


def test_a_batch_answers_as_its_rows_do(vqa, images):
    flipped = np.ascontiguousarray(images["ref"][:, ::-1])
    mains, refs = [images["main"], images["ref"]], [images["ref"], flipped]
    batch = vqa(mains, refs, [QUESTION, QUESTION])
    assert isinstance(batch, list) and len(batch) == 2
    for i in range(2):
        one = vqa(mains[i], refs[i], QUESTION)
        assert (batch[i].preliminary, batch[i].final) == (one.preliminary, one.final)
        np.testing.assert_allclose(batch[i].mask, one.mask, atol=1e-5)


def test_a_forced_keyword_drives_the_cam(vqa, images):
    args = (images["main"], images["ref"], QUESTION)
    plain = vqa(*args)
    named = vqa(*args, keyword="edema")
    # the keyword the answer names: its own tokens in the preliminary answer are scored
    own = vqa(*args, keyword=plain.keyword)
    assert own.keyword_forced and own.cam_text == plain.preliminary
    np.testing.assert_allclose(own.mask, plain.mask, atol=1e-6)
    # another keyword: scored where the answer spells it, else the keyword itself is teacher-forced
    expected = plain.preliminary if keyword_spans(plain.preliminary, "edema") else "edema"
    assert named.keyword == "edema" and named.cam_text == expected
    assert np.abs(named.mask - plain.mask).max() > 1e-3  # a different keyword, a different map
    absent = vqa(*args, keyword="pneumothorax")
    assert absent.cam_text == "pneumothorax" and "does not name 'pneumothorax'" in absent.notes[0]
    assert absent.preliminary == plain.preliminary  # forcing the keyword never changes the first pass


def test_single_pass_has_no_maps(checkpoint, images):
    answer = diffvqa.load(checkpoint, single_pass=True)(images["main"], images["ref"], QUESTION)
    assert answer.single_pass and answer.final == answer.preliminary and answer.keyword == ""
    assert answer.mask is None and answer.cam_main is None and answer.cam_text is None


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda v, i: v([i["main"], i["main"]], [i["ref"]], [QUESTION, QUESTION]), "2 main, 1 ref, 2 question"),
        (lambda v, i: v(i["main"] * 2.0, i["ref"], QUESTION), "main[0]: a float image must hold finite values"),
        (lambda v, i: v(i["main"], np.zeros((4, 4, 2)), QUESTION), "ref[0]: expected an (H, W) gray"),
        (lambda v, i: v(i["main"], 3, QUESTION), "ref[0]: expected a path, a PIL image or a numpy array, got int"),
        (lambda v, i: v("nowhere.png", i["ref"], QUESTION), "main[0] nowhere.png: not found"),
        (lambda v, i: v(i["main"], i["ref"], "  "), "question[0] '  ': expected a non-empty string"),
        (lambda v, i: v([], [], []), "main: an empty batch"),
    ],
)
def test_bad_input_is_one_clear_error(vqa, images, call, message):
    with pytest.raises(UserError) as error:
        call(vqa, images)
    assert message in str(error.value)


def test_load_names_what_it_expected(tmp_path):
    with pytest.raises(UserError, match="no-such-run: not found; expected a checkpoint directory"):
        diffvqa.load(tmp_path / "no-such-run")
    with pytest.raises(UserError, match="neither a checkpoint"):
        diffvqa.load(tmp_path)
    with pytest.raises(UserError, match="device warp: not a device"):
        diffvqa.load(tmp_path, device="warp")


def test_the_readme_example_runs_as_written(checkpoint, images, tmp_path, monkeypatch):
    """README's "From Python" block, verbatim, with its run directory and images made here."""
    import re
    import shutil
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    block = re.search(r"\*\*From Python\*\*.*?```python\n(.*?)```", readme, re.S).group(1)
    assert 'diffvqa.load("demo_out/run")' in block and "current.png" in block
    shutil.copytree(checkpoint, tmp_path / "demo_out" / "run")
    shutil.copy(images["main_path"], tmp_path / "current.png")
    shutil.copy(images["ref_path"], tmp_path / "prior.png")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(block, "README.md (From Python)", "exec"), namespace)
    answer = namespace["answer"]
    assert isinstance(answer, diffvqa.Answer) and answer.final and answer.mask.shape == (64, 64)
