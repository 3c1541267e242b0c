"""``diffvqa ask`` end to end on a tiny untrained checkpoint: PNG and DICOM inputs, outputs, errors, no PHI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import write_dicom
from PIL import Image

from diffvqa.commands.ask import PNG_FILES, main

QUESTION = "what has changed compared to the reference image?"
TEXTS = [
    QUESTION,
    "is there evidence of pleural effusion in this image?",
    "the main image has additional findings of pleural effusion than the reference image.",
    "nothing has changed.",
    "yes",
    "no",
]
PHI = ("Doe^Jane", "Doe", "Jane", "PHI-9876543", "19700101", "St Elsewhere", "ACC-55501")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from diffvqa.config import load_config
    from diffvqa.data.text import build_word_tokenizer
    from diffvqa.model.checkpoint import save_checkpoint
    from diffvqa.model.vqa import DiffVQA

    torch.manual_seed(0)
    model = DiffVQA(load_config("tiny"), build_word_tokenizer(TEXTS))
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt"))


def _image(h: int, w: int, seed: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    noise = np.random.default_rng(seed).random((h, w))
    return np.clip(0.5 + 0.3 * np.sin(x / 7.0 + seed) * np.cos(y / 11.0) + 0.1 * noise, 0, 1)


def _write_png(path, h: int, w: int, seed: int):
    Image.fromarray(np.rint(_image(h, w, seed) * 255).astype(np.uint8), "L").save(path)
    return path


def _write_dicom(path, h: int, w: int, seed: int):
    """A 16-bit MONOCHROME2 DICOM carrying patient-identifying tags."""
    pixels = np.rint(_image(h, w, seed) * 65535).astype(np.uint16)
    return write_dicom(
        path,
        pixels,
        PatientName="Doe^Jane",
        PatientID="PHI-9876543",
        PatientBirthDate="19700101",
        InstitutionName="St Elsewhere",
        AccessionNumber="ACC-55501",
    )


def _ask(checkpoint, main_path, ref_path, *extra: str, question: str = QUESTION) -> int:
    argv = ["--checkpoint", str(checkpoint), "--main", str(main_path), "--ref", str(ref_path), "--question", question]
    return main([*argv, *extra])


def test_ask_png_writes_answers_and_pictures(checkpoint, tmp_path, capsys):
    from diffvqa.data.images import load_image
    from diffvqa.model.checkpoint import load_checkpoint
    from diffvqa.saliency.guided import two_pass_answer
    from diffvqa.saliency.lexicon import lexicon_keyword

    main_path = _write_png(tmp_path / "current.png", 90, 70, seed=1)  # portrait: padded left and right
    ref_path = _write_png(tmp_path / "prior.png", 80, 80, seed=2)
    out = tmp_path / "out"
    assert _ask(checkpoint, main_path, ref_path, "--out", str(out)) == 0
    stdout = capsys.readouterr().out

    record = json.loads((out / "answer.json").read_text())
    assert record["question"] == QUESTION and not record["single_pass"]
    assert record["main"] == "current.png" and record["reference"] == "prior.png"  # basenames only
    assert record["checkpoint"] == str(checkpoint) and record["keyword_source"] == "lexicon"
    shown = {key: record[key] or "(empty)" for key in ("final", "preliminary")}
    for line in (f"answer:       {shown['final']}", f"preliminary:  {shown['preliminary']}", "keyword:"):
        assert line in stdout
    for name in PNG_FILES:
        with Image.open(out / name) as picture:
            assert picture.size[0] >= 64, name
            if name != "panel.png":
                assert picture.size == (64, 64), name
    assert str(tmp_path) not in json.dumps({k: v for k, v in record.items() if k != "checkpoint"})

    # the same answers as calling the library with the same preprocessing
    model = load_checkpoint(checkpoint).eval()
    ids = torch.tensor([model.tokenizer.encode(QUESTION)[: model.config.data.max_question_tokens]])
    loaded = [load_image(p, 64) for p in (main_path, ref_path)]
    images = [torch.from_numpy(image)[None, None] for image, _ in loaded]
    boxes = [torch.tensor([geometry.content_box()]) for _, geometry in loaded]
    expected = two_pass_answer(
        model, *images, ids, torch.ones_like(ids), [QUESTION], lexicon_keyword, main_box=boxes[0], ref_box=boxes[1]
    )
    y0, x0, y1, x1 = loaded[0][1].content_box()
    assert x0 > 0 and x1 < 64  # the portrait main image is letterboxed left and right ...
    cam_main = expected.cam_main[0, 0]
    assert cam_main[:, :x0].abs().max() == 0 and cam_main[:, x1:].abs().max() == 0  # ... and its CAM is 0 there
    assert (record["preliminary"], record["keyword"], record["final"]) == (
        expected.preliminary[0],
        expected.keywords[0],
        expected.final[0],
    )


def test_ask_dicom_leaks_no_patient_tags(checkpoint, tmp_path, capsys):
    main_path = _write_dicom(tmp_path / "main.dcm", 96, 80, seed=3)
    ref_path = _write_dicom(tmp_path / "ref.dcm", 80, 96, seed=4)
    assert b"Doe^Jane" in main_path.read_bytes()  # the test file does carry the tags
    out = tmp_path / "out"
    assert _ask(checkpoint, main_path, ref_path, "--out", str(out)) == 0
    captured = capsys.readouterr()
    assert "answer:" in captured.out

    files = sorted(p for p in out.rglob("*") if p.is_file())
    assert {p.name for p in files} == {*PNG_FILES, "answer.json"}
    for text in PHI:
        assert text not in captured.out and text not in captured.err, text
        for path in files:
            data = path.read_bytes()
            assert text.encode() not in data and text.encode("utf-16-le") not in data, (text, path.name)


def test_single_pass_writes_no_maps(checkpoint, tmp_path, capsys):
    main_path = _write_png(tmp_path / "a.png", 64, 64, seed=5)
    ref_path = _write_png(tmp_path / "b.png", 64, 64, seed=6)
    out = tmp_path / "out"
    assert _ask(checkpoint, main_path, ref_path, "--out", str(out), "--single-pass") == 0
    assert "single pass" in capsys.readouterr().out
    record = json.loads((out / "answer.json").read_text())
    assert record["single_pass"] and record["final"] == record["preliminary"] and record["keyword"] == ""
    written = {p.name for p in out.iterdir()}
    assert written == {"main.png", "reference.png", "aligned_main.png", "panel.png", "answer.json"}


def test_cli_dispatches_to_ask_without_out(checkpoint, tmp_path, capsys):
    from diffvqa.cli import main as cli_main

    main_path = _write_png(tmp_path / "a.png", 64, 64, seed=7)
    argv = ["ask", "--checkpoint", str(checkpoint), "--main", str(main_path), "--ref", str(main_path)]
    assert cli_main([*argv, "--question", "is there evidence of pleural effusion in this image?"]) == 0
    assert "answer:" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]  # nothing written without --out


def test_missing_files_are_named(checkpoint, tmp_path, capsys):
    ref_path = _write_png(tmp_path / "b.png", 64, 64, seed=8)
    assert _ask(checkpoint, tmp_path / "nowhere.png", ref_path) == 2
    err = capsys.readouterr().err
    assert "main image" in err and "nowhere.png" in err
    assert _ask(tmp_path / "no-such-run", ref_path, tmp_path / "gone.dcm") == 2
    err = capsys.readouterr().err
    assert "no-such-run" in err and "gone.dcm" in err


def test_unreadable_image_is_named(checkpoint, tmp_path, capsys):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    ref_path = _write_png(tmp_path / "b.png", 64, 64, seed=9)
    assert _ask(checkpoint, ref_path, broken) == 2
    err = capsys.readouterr().err
    assert "broken.png" in err and "cannot read" in err


def test_empty_question_and_unknown_words(checkpoint, tmp_path, capsys):
    path = _write_png(tmp_path / "a.png", 64, 64, seed=10)
    assert _ask(checkpoint, path, path, question="   ") == 2
    assert "question" in capsys.readouterr().err
    assert _ask(checkpoint, path, path, question="Is there a zebra?") == 0
    err = capsys.readouterr().err
    assert "'Is'" in err and "'zebra'" in err and "<unk>" in err


def test_missing_argument_exits_with_usage(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--main", "a.png"])
    assert exc.value.code == 2
    assert "--checkpoint" in capsys.readouterr().err


def test_keyword_forces_the_cam_and_is_recorded(checkpoint, tmp_path, capsys):
    main_path = _write_png(tmp_path / "a.png", 64, 64, seed=11)
    ref_path = _write_png(tmp_path / "b.png", 64, 64, seed=12)
    out = tmp_path / "out"
    assert _ask(checkpoint, main_path, ref_path, "--out", str(out), "--keyword", "pleural  effusion") == 0
    captured = capsys.readouterr()
    assert "keyword:      pleural effusion (forced)" in captured.out
    record = json.loads((out / "answer.json").read_text())
    assert record["keyword"] == "pleural effusion" and record["keyword_forced"]
    assert record["keyword_source"] is None  # nothing was asked for the keyword
    if record["cam_text"] != record["preliminary"]:  # the untrained model's answer does not name it
        assert record["cam_text"] == "pleural effusion" and "does not name 'pleural effusion'" in captured.err
    assert _ask(checkpoint, main_path, ref_path, "--keyword", " ") == 2
    assert "--keyword is empty" in capsys.readouterr().err


def test_device_defaults_to_auto():
    from diffvqa.commands.ask import build_parser

    args = build_parser().parse_args(["--checkpoint", "c", "--main", "m", "--ref", "r", "--question", "q"])
    assert args.device == "auto"
