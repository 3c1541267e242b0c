"""The HTML report and the pictures it is made of."""

from __future__ import annotations

import html
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from diffvqa.report import write_report
from diffvqa.report.drawing import (
    CONTOUR_COLOR,
    apply_colormap,
    heat_overlay,
    mask_contour_overlay,
    mask_outline,
    panel,
)

S = 32


def _gray(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((S, S)).astype(np.float32)


def _blob(cx: float, cy: float) -> np.ndarray:
    y, x = np.mgrid[0:S, 0:S]
    return np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / 40.0).astype(np.float32)


def _metrics(scale: float, comparable: bool) -> dict:
    scores = {"BLEU-1": 0.6 * scale, "BLEU-2": 0.5 * scale, "BLEU-3": 0.4 * scale, "BLEU-4": 0.3 * scale}
    scores |= {"METEOR": 0.25 * scale, "ROUGE-L": 0.55 * scale, "CIDEr": 1.5 * scale, "n": 120}
    return {
        "difference": dict(scores),
        "all": {**scores, "CIDEr": 2.5 * scale, "n": 900},
        "per_type": {"difference": dict(scores), "presence": {**scores, "n": 300}},
        "accuracy_closed": 0.8 * scale,
        "accuracy_open": 0.4 * scale,
        "n_closed": 300,
        "n_open": 480,
        "accuracy_per_type": {"presence": {"accuracy": 0.8 * scale, "n": 300}},
        "implementation": {
            "pycocoevalcap": "1.2",
            "tokenizer": "ptb" if comparable else "fallback",
            "java": "17.0.15" if comparable else None,
            "comparable_with_papers": comparable,
        },
    }


def _examples() -> list[dict]:
    cam_main, cam_ref = _blob(10, 12), _blob(12, 14)
    return [
        {
            "main": _gray(0),
            "ref": _gray(1),
            "aligned_main": _gray(2),
            "cam_main": cam_main,
            "cam_ref": cam_ref,
            "mask": np.maximum(cam_main, cam_ref),
            "change_mask": _blob(11, 13) > 0.5,
            "question": "what has changed compared to the <b>reference</b> image?",
            "preliminary": "the main image has an additional finding of edema than the reference image.",
            "keyword": "edema",
            "final": "the main image has an additional finding of pleural effusion than the reference image.",
            "answer": "the main image has an additional finding of pleural effusion than the reference image. ",
            "question_type": "difference",
            "ids": {"subject_id": "10000032", "study_id": "50414267", "note": "<script>x</script>"},
        },
        {
            "main": _gray(3),
            "ref": _gray(4),
            "aligned_main": _gray(5),
            "cam_main": None,
            "cam_ref": None,
            "mask": None,
            "question": "is there evidence of pneumothorax in this image?",
            "preliminary": "no",
            "keyword": "",
            "final": "no",
            "answer": "yes",
            "question_type": "presence",
            "ids": {"subject_id": "10000033"},
        },
    ]


def _sources(page: str) -> list[str]:
    return [html.unescape(src) for src in re.findall(r'<img\b[^>]*\bsrc="([^"]*)"', page)]


def test_report_references_existing_pictures_and_escapes_text(tmp_path):
    metrics = _metrics(1.0, comparable=True)
    metrics["pointing_game"] = 0.625
    metrics["registration_error_ratio"] = 0.41
    metrics["registration_error_px"] = {"after": 2.05, "before": 5.0, "pairs": 50, "identity_ratio": 1.0}
    path = write_report(tmp_path / "rep", metrics, _examples(), baseline_metrics=_metrics(0.5, comparable=True))
    assert path == tmp_path / "rep" / "report.html"
    page = path.read_text(encoding="utf-8")

    sources = _sources(page)
    assert all(not src.startswith(("/", "file:")) for src in sources)  # relative: the folder can move
    for src in sources:
        assert (path.parent / src).is_file(), src
    # example 1: 6 pictures; example 2 (single pass): main, ref, aligned; plus the colour bar
    assert len(sources) == 6 + 3 + 1
    assert len(list((path.parent / "report_images").glob("*.png"))) == len(sources)
    with Image.open(path.parent / sources[1]) as picture:
        assert picture.size[0] >= 256  # small frames are enlarged for display

    # the values, the baseline and the difference
    for text in ("0.600", "0.300", "+0.300", "1.500", "0.750", "+0.750", "0.800", "0.400", "+0.400", "0.625"):
        assert text in page, text
    assert "registration error ratio" in page and "0.410" in page and ">50<" in page
    assert "pycocoevalcap 1.2" in page and "PTB tokenizer" in page and "Not comparable" not in page
    assert "Blind baseline" in page and "single pass" in page

    # text from data is escaped
    assert "&lt;b&gt;reference&lt;/b&gt;" in page and "<b>reference</b>" not in page
    assert "&lt;script&gt;" in page and "<script>" not in page
    assert "edema" in page and "10000032" in page and "presence" in page

    # the report folder can be moved
    shutil.move(str(path.parent), str(tmp_path / "moved"))
    for src in sources:
        assert (tmp_path / "moved" / src).is_file()


def test_report_tolerates_missing_metrics_and_warns(tmp_path):
    metrics = _metrics(1.0, comparable=False)
    del metrics["difference"]["METEOR"], metrics["accuracy_open"]
    metrics["all"]["unavailable"] = {"METEOR": "no Java found on PATH"}
    page = write_report(tmp_path, metrics, []).read_text(encoding="utf-8")
    assert "Not comparable with published numbers" in page
    assert "no Java found on PATH" in page
    assert "—" in page and "Blind baseline" not in page and "No examples" in page
    assert "pointing_game" not in page

    page = write_report(tmp_path, {}, [], title="empty <run>").read_text(encoding="utf-8")
    assert "<title>empty &lt;run&gt;</title>" in page and "not recorded" in page


def test_report_rejects_bad_examples(tmp_path):
    example = _examples()[1]
    del example["ref"]
    with pytest.raises(ValueError, match="example 0.*'ref'"):
        write_report(tmp_path, {}, [example])
    example = _examples()[0]
    example["cam_main"] = np.zeros((1, S, S))
    with pytest.raises(ValueError, match="'cam_main'.*shape"):
        write_report(tmp_path, {}, [example])


def test_stale_pictures_are_removed(tmp_path):
    write_report(tmp_path, {}, _examples())
    write_report(tmp_path, {}, _examples()[1:])
    names = {p.name for p in (tmp_path / "report_images").iterdir()}
    assert not [n for n in names if n.startswith("example002")]
    assert all(src.split("/")[-1] in names for src in _sources((tmp_path / "report.html").read_text()))


# ----------------------------------------------------------------------------------------------------------
# drawing


def test_colormap_is_dark_to_bright():
    colors = apply_colormap(np.linspace(0, 1, 11)[None]).astype(float)[0]
    luminance = colors @ np.array([0.299, 0.587, 0.114])
    assert np.all(np.diff(luminance) > 0)
    assert tuple(apply_colormap(np.array([[0.0, 1.0, np.nan]]))[0, 0]) == (0, 0, 4)
    assert tuple(apply_colormap(np.array([[2.0]]))[0, 0]) == (252, 255, 164)  # clipped


def test_heat_overlay_blends_and_checks_shapes():
    gray = np.full((4, 4), 0.5)
    out = heat_overlay(gray, np.zeros((4, 4)), alpha=0.0)
    assert out.mode == "RGB" and out.size == (4, 4) and np.all(np.asarray(out) == 128)
    full = np.asarray(heat_overlay(gray, np.ones((4, 4)), alpha=1.0))
    assert tuple(full[0, 0]) == (252, 255, 164)
    with pytest.raises(ValueError, match="differ in shape"):
        heat_overlay(gray, np.ones((5, 5)))
    with pytest.raises(ValueError, match="alpha"):
        heat_overlay(gray, gray, alpha=1.5)


def test_mask_outline_and_contour_overlay():
    mask = np.zeros((9, 9), bool)
    mask[2:7, 2:7] = True
    outline = mask_outline(mask)
    assert outline.sum() == 16 and not outline[3:6, 3:6].any() and not outline[~mask].any()
    assert mask_outline(mask, thickness=2).sum() == 24
    out = np.asarray(mask_contour_overlay(np.zeros((9, 9)), mask))
    assert np.all(out[outline] == CONTOUR_COLOR) and np.all(out[~outline] == 0)
    on_image = mask_contour_overlay(Image.new("RGB", (9, 9), (10, 20, 30)), mask)
    assert tuple(np.asarray(on_image)[4, 4]) == (10, 20, 30)


def test_panel_lays_out_a_labelled_row():
    images = [Image.new("RGB", (40, 40), (255, 0, 0)), Image.new("L", (30, 20), 128)]
    out = panel(images, ["a very long title that cannot fit", "b"], gap=5)
    assert out.mode == "RGB" and out.width == 40 + 30 + 3 * 5 and out.height > 40
    assert tuple(np.asarray(out)[out.height - 10, 10]) == (255, 0, 0)
    with pytest.raises(ValueError, match="2 images but 1 titles"):
        panel(images, ["a"])


def test_report_shows_the_pointing_game_beside_its_reference_levels(tmp_path):
    metrics = _metrics(1.0, comparable=True)
    metrics["pointing_game"] = 0.4375
    metrics["pointing_game_reference"] = {"chance": 0.0512, "prior": 0.3861, "ceiling": 0.8123, "grid": "8x8"}
    metrics["pointing_game_per_finding"] = {
        "pleural effusion": {"score": 0.61, "n": 40, "chance": 0.07, "prior": 0.55, "ceiling": 0.95},
        "pneumothorax": {"score": 0.12, "n": 9, "chance": 0.02, "prior": 0.0, "ceiling": 0.44},
    }
    metrics["keyword_conditioning"] = {"score": 0.5833, "pairs": 24, "questions": 11, "chance": 0.5}
    page = write_report(tmp_path / "rep", metrics, []).read_text(encoding="utf-8")
    for text in ("0.438", "chance: a random pixel", "0.051", "fixed-point prior: the best single pixel", "0.386",
                 "ceiling of the 8x8 saliency grid", "0.812", "the keyword&#x27;s own Grad-CAM", "0.583"):  # fmt: skip
        assert text in page, text
    assert "pointing_game_reference" not in page and "keyword_conditioning" not in page  # words, not key names
    assert "Pointing game per finding" in page and "pleural effusion" in page and "0.440" in page
    assert "fixed-point prior" in page  # the note that says what the reference levels are
    assert "Pointing game per finding" not in write_report(tmp_path / "r2", _metrics(1.0, True), []).read_text()


def test_report_shows_both_meteors_and_which_papers_use_which(tmp_path):
    metrics = _metrics(1.0, comparable=True)
    metrics["difference"]["METEOR_nltk"] = 0.6034
    metrics["implementation"]["METEOR_nltk"] = {
        "nltk": "3.10.4",
        "matching": "exact+stem (WordNet data not installed)",
        "tokens": "lower-cased, whitespace-separated",
    }
    page = write_report(tmp_path, metrics, []).read_text(encoding="utf-8")
    row = page.index(">METEOR_nltk<")
    assert page.index(">METEOR<") < row < page.index(">ROUGE-L<")  # right under the jar's METEOR
    assert "0.603" in page[row : row + 200]
    assert "Two METEORs" in page and "0.65–0.70 like NLTK" in page and "exact+stem (WordNet data not installed)" in page
    # without the NLTK implementation record (an older metrics.json) there is no claim about it
    del metrics["implementation"]["METEOR_nltk"]
    assert "Two METEORs" not in write_report(tmp_path, metrics, []).read_text(encoding="utf-8")


def test_report_links_the_viewer_when_there_is_one(tmp_path):
    assert "viewer/index.html" not in write_report(tmp_path, _metrics(1.0, True), []).read_text(encoding="utf-8")
    (tmp_path / "viewer").mkdir()
    (tmp_path / "viewer" / "index.html").write_text("<!DOCTYPE html>")
    assert 'href="viewer/index.html"' in write_report(tmp_path, _metrics(1.0, True), []).read_text(encoding="utf-8")


def _difference_only(scale: float, preliminary: bool) -> dict:
    """A two-pass evaluation of difference questions only, as the demo's (JSON numbers: counts may be floats)."""
    scores = _metrics(scale, comparable=True)["difference"] | {"METEOR_nltk": 0.5 * scale, "n": 192}
    metrics = {
        "difference": dict(scores),
        "all": dict(scores),
        "per_type": {"difference": dict(scores)},
        "accuracy_closed": None,
        "accuracy_open": None,
        "n_closed": 0,
        "n_open": 0,
        "accuracy_per_type": {},
        "implementation": _metrics(scale, comparable=True)["implementation"],
        "run": {"split": "test", "mode": "two-pass"},
    }
    if preliminary:
        metrics["preliminary"] = {**scores, "CIDEr": 2.144}
        metrics["final_vs_preliminary"] = {
            "CIDEr_final": 1.5,
            "CIDEr_preliminary": 2.144,
            "CIDEr_difference": {"estimate": -0.644, "low": -0.9, "high": -0.4, "level": 0.95, "n": 192},
            "answers_changed": 57,
            "right_only_in_final": 3,
            "right_only_in_preliminary": 11,
            "n": 192,
        }
        metrics |= {
            "pointing_game": 0.503,
            "pointing_game_n": 153.0,
            "pointing_game_reference": {"chance": 0.052, "prior": 0.366, "ceiling": 0.889, "difference_map": 0.719,
                                        "grid": "8x8"},
            "keyword_conditioning": {"score": 0.555, "ci95": [0.512, 0.598], "pairs": 200.0, "questions": 63,
                                     "min_gap_px": 16, "chance": 0.5,
                                     "gated": {"score": 0.53, "ci95": [0.49, 0.57], "pairs": 200, "questions": 63}},
            "registration_error_ratio": 0.244,
            "registration_error_px": {"after": 1.07, "before": 4.38, "pairs": 192.0, "identity_ratio": 1.0},
            "empty_mask_fallbacks": {"masks": 192, "fell_back_to_all_ones": 0},
        }  # fmt: skip
    return metrics


def _row_of(page: str, label: str) -> str:
    start = page.index(label)
    return page[start : page.index("</tr>", start)]


def test_report_puts_final_beside_preliminary_beside_blind_and_leaves_empty_blocks_out(tmp_path):
    blind = _difference_only(0.5, preliminary=False)
    blind["registration_error_ratio"] = 1.0
    blind["registration_error_px"] = {"after": 4.38, "before": 4.38, "pairs": 192, "identity_ratio": 1.0}
    page = write_report(tmp_path, _difference_only(1.0, preliminary=True), [], baseline_metrics=blind).read_text()
    head = page[page.index("<thead>") : page.index("</thead>")]
    assert head.index("Final answers") < head.index("Preliminary (pass 1)") < head.index("Blind baseline")
    cider = _row_of(page, ">CIDEr<")
    assert cider.index("1.500") < cider.index("2.144") < cider.index("0.750") and "+0.750" in cider
    # only difference questions: no "All question types" block repeating it, no per-type table, no exact match
    assert "All question types" not in page and "Per question type" not in page and "Exact-match" not in page
    assert "Final vs preliminary answers" in page and "-0.644 [-0.900, -0.400]" in page
    assert "answers <b>worse</b>" in page
    # counts are integers, scores with their interval, reference levels and counts carry no difference
    assert ">153<" in page and ">200<" in page and ">192<" in page and "153.000" not in page and ".000</td>" in page
    assert "200.000" not in page and "192.000" not in page
    assert "0.555 [0.512, 0.598]" in page and "0.530 [0.490, 0.570]" in page
    for label in ("error before alignment", ">pairs<", "identity: no aligner", "chance: a random pixel"):
        assert _row_of(page, label).endswith("<td></td>"), label  # no Δ
    assert "+" not in _row_of(page, "error before alignment")
    assert "-0.756" in _row_of(page, "registration error ratio") and "0 of 192" in page
    assert "docs/metrics.md" in page


def test_report_of_a_single_pass_evaluation_has_no_preliminary_column(tmp_path):
    metrics = _difference_only(1.0, preliminary=False)
    metrics["run"]["mode"] = "single-pass"
    page = write_report(tmp_path, metrics, []).read_text()
    assert "Preliminary" not in page and "Blind baseline" not in page and "Mechanisms" not in page
    assert "192 difference questions · test split · single-pass" in page


def test_report_of_credentialed_data_warns_at_the_top(tmp_path):
    metrics = _metrics(1.0, True)
    page = write_report(tmp_path / "mimic", {**metrics, "run": {"phantom": False}}, []).read_text(encoding="utf-8")
    warning = page.index('class="warning data-use"')
    assert warning < page.index("<h2>Answers</h2>")  # above every number
    assert "PhysioNet Credentialed Health Data Use Agreement" in page
    phantom = write_report(tmp_path / "phantom", {**metrics, "run": {"phantom": True}}, []).read_text(encoding="utf-8")
    assert "data-use" not in phantom


def test_a_copied_report_still_reads_right(tmp_path):
    """Copied away from its run (the demo's lies in a temporary directory), the report names no path of the machine
    that wrote it: the training curves say which run and steps they show, the docs are named, not linked, and
    every link and picture is relative and comes with the copy."""
    import json

    from diffvqa.version import __version__

    run = tmp_path / "work" / "run"
    run.mkdir(parents=True)
    records = [{"step": step, "loss": 3.0 / step} for step in range(2, 21, 2)] + [{"step": 20, "val/CIDEr": 0.5}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    metrics = _metrics(1.0, comparable=True)
    metrics["pointing_game"] = 0.5  # the mechanisms section and its note
    metrics["implementation"]["METEOR_nltk"] = {"nltk": "3.10.4", "matching": "exact", "tokens": "lower-cased"}
    out = tmp_path / "work" / "eval"
    page = write_report(out, metrics, _examples(), training_run=run / "checkpoints" / "step-0000020").read_text()
    assert "Training curves" in page
    assert str(tmp_path) not in page and "file:" not in page
    assert "metrics.jsonl of the training run “run”, steps 2–20" in page
    said = f"docs/metrics.md in the diffvqa repository (diffvqa {__version__})"
    assert page.count(said) == 2

    copy = tmp_path / "elsewhere" / "report"
    shutil.copytree(out, copy)
    targets = [html.unescape(t) for t in re.findall(r'\b(?:href|src)="([^"]*)"', page)]
    assert targets and all(not t.startswith(("/", "file:", "http")) for t in targets)
    assert [t for t in targets if t.endswith(".md")] == []  # no link to a document the copy does not hold
    assert [t for t in targets if not (copy / t).is_file()] == []


def test_the_subtitle_says_where_the_encoder_started(tmp_path):
    metrics = _difference_only(1.0, preliminary=False)
    assert "encoder" not in write_report(tmp_path / "a", metrics, []).read_text().split("</p>")[0]  # not recorded
    metrics["run"]["encoder"] = "pretrained"
    assert "two-pass · encoder pretrained" in write_report(tmp_path / "b", metrics, []).read_text()
    metrics["run"]["encoder"] = "random initialisation"
    assert "two-pass · encoder from random weights" in write_report(tmp_path / "c", metrics, []).read_text()
    metrics["difference"]["n"] = metrics["all"]["n"] = 1
    assert ">1 difference question · test split" in write_report(tmp_path / "d", metrics, []).read_text()
