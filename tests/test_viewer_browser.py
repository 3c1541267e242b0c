"""The evaluation viewer in a real headless Chromium, opened from file:// (see tests/support/viewer_browser.py).

A missing browser is a failure, not a skip: the README's test command installs it (`npm ci --prefix tests/browser`).
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image
from support.viewer_browser import ViewerPage, chromium_launch_options

import diffvqa
from diffvqa.cli import main as cli_main
from diffvqa.commands.evaluate import evaluate
from diffvqa.commands.train import main as train_main
from diffvqa.metrics import normalize_answer
from diffvqa.viewer.build import write_viewer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    options = chromium_launch_options()  # raises (fails the test) when the browser is not installed
    with sync_playwright() as p:
        chromium = p.chromium.launch(**options)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def evaluations(phantom_cache, tmp_path_factory):
    """Two evaluations of the same test questions by one tiny model: two-pass and single-pass."""
    root = tmp_path_factory.mktemp("viewer")
    argv = ["--data", str(phantom_cache), "--out", str(root / "run"), "--preset", "tiny", "--no-progress",
            "train.steps=2"]  # fmt: skip
    assert train_main(argv) == 0
    evaluate(root / "run", phantom_cache, out=root / "two_pass", progress=False)
    evaluate(root / "run", phantom_cache, out=root / "single_pass", single_pass=True, report=False, progress=False)
    return root


def _records(eval_dir):
    return [json.loads(line) for line in (eval_dir / "predictions.jsonl").read_text().splitlines()]


def _pointing(record):
    value = record.get("pointing", record.get("pointing_hit"))
    return None if value is None else float(value)


def test_viewer_filters_detail_and_keyboard(browser, evaluations, tmp_path):
    eval_dir = evaluations / "two_pass"
    records = _records(eval_dir)
    view = ViewerPage(browser, eval_dir / "viewer" / "index.html")
    assert view.count() == len(records)  # every question, not a sample

    difference = [i for i, r in enumerate(records) if r["question_type"] == "difference"]
    view.select("f-type", "difference")
    assert view.count() == len(difference) and 0 < len(difference) < len(records)
    assert view.row_ids() == difference[:50]

    view.open_row(0)
    shown, record = view.detail(), records[difference[0]]
    assert shown["question"] == record["question"] and shown["reference"] == record["answer"]
    assert shown["final"] == record["final"] and shown["preliminary"] == record["preliminary"]
    assert shown["keyword"] == (record["keyword"] or "(none: the CAM scored the whole answer)")
    assert shown["line"] == str(difference[0] + 1)
    right = normalize_answer(record["final"]) == normalize_answer(record["answer"])
    assert shown["exact"] == ("✓ right" if right else "✗ wrong")
    pointing = _pointing(record)
    assert shown["pointing"] == ("— (no score in predictions.jsonl)" if pointing is None else f"{pointing:.3f}")
    width, height, src = shown["strip"]
    assert (width, height) == (7 * 96, 96)  # the picture strip of this very question loaded
    assert src.endswith(f"/img/000/{difference[0]:06d}.jpg")

    view.page.keyboard.press("ArrowRight")  # the next question of the filtered list
    assert view.detail()["question"] == records[difference[1]]["question"]
    assert view.detail()["line"] == str(difference[1] + 1)
    view.page.keyboard.press("ArrowLeft")
    assert view.detail()["line"] == str(difference[0] + 1)
    view.page.screenshot(path=str(tmp_path / "viewer.png"))
    assert (tmp_path / "viewer.png").stat().st_size > 10_000
    view.page.keyboard.press("Escape")
    assert view.page.is_hidden("#detail")

    # pointing game (evaluate scores the difference questions with a true change), right/wrong and search filters
    # count what predictions.jsonl says
    scores = {i: _pointing(records[i]) for i in difference}
    assert any(p is not None for p in scores.values())
    for choice, kept in (("hit", [i for i, p in scores.items() if p is not None and p >= 0.5]),
                         ("miss", [i for i, p in scores.items() if p is not None and p < 0.5]),
                         ("none", [i for i, p in scores.items() if p is None])):  # fmt: skip
        view.select("f-pointing", choice)
        assert view.count() == len(kept) and view.row_ids() == kept[:50], choice
    view.select("f-pointing", "")
    view.select("f-type", "")
    view.select("f-correct", "wrong")
    wrong = [i for i, r in enumerate(records) if normalize_answer(r["final"]) != normalize_answer(r["answer"])]
    assert view.count() == len(wrong)
    view.select("f-correct", "")
    study = str(records[-1]["study_id"])
    view.page.fill("#f-search", study)
    assert view.count() == sum(
        study in (str(r["study_id"]), str(r["ref_id"])) or study in r["question"] for r in records
    )
    view.page.fill("#f-search", "")
    view.select("f-sort", "meteor-desc")
    assert view.count() == len(records)
    assert view.errors == [] and view.network == []


def test_compare_mode_shows_both_and_filters_disagreements(browser, evaluations):
    assert cli_main(["view", str(evaluations / "two_pass"), str(evaluations / "single_pass")]) == 0
    index = evaluations / "two_pass" / "viewer-vs-single_pass" / "index.html"
    a, b = _records(evaluations / "two_pass"), _records(evaluations / "single_pass")
    view = ViewerPage(browser, index)
    assert view.count() == len(a) == len(b)
    disagree = [i for i in range(len(a)) if normalize_answer(a[i]["final"]) != normalize_answer(b[i]["final"])]
    view.select("f-correct", "disagree")
    assert view.count() == len(disagree)
    view.select("f-correct", "")
    view.open_row(3)
    assert view.detail(0)["final"] == a[3]["final"] and view.detail(1)["final"] == b[3]["final"]
    assert view.detail(1)["strip"][2].startswith("../../single_pass/viewer/img/")  # the other evaluation's strips
    assert view.detail(1)["strip"][0] == 7 * 96
    assert view.errors == [] and view.network == []


def test_opens_fast_at_the_real_test_split_scale(browser, tmp_path):
    """16,389 questions (the real difference test split): the page opens and filters quickly."""
    n = 16_389
    answers = [
        "the main image has an additional finding of pleural effusion than the reference image. ",
        "nothing has changed.",
        "the level of edema has changed from mild to moderate. ",
    ]
    lines = []
    for i in range(n):
        lines.append(
            json.dumps(
                {
                    "question_index": i,
                    "study_id": 50_000_000 + i // 7,
                    "ref_id": 40_000_000 + i,
                    "subject_id": 10_000_000 + i // 20,
                    "question_type": "difference",
                    "question": "what has changed compared to the reference image?",
                    "answer": answers[i % 3],
                    "preliminary": answers[(i + 1) % 3],
                    "keyword": ["pleural effusion", "", "edema"][i % 3],
                    "final": answers[i % 2],
                    "pointing": (i % 10) / 10,
                }
            )
        )
    (tmp_path / "predictions.jsonl").write_text("\n".join(lines) + "\n")
    index = write_viewer(tmp_path)
    tic = time.perf_counter()
    view = ViewerPage(browser, index)
    opened = time.perf_counter() - tic
    print(f"16,389 questions: the page opened in {opened:.2f} s")
    assert view.count() == n
    assert opened < 2.0, f"the page took {opened:.2f} s to open"
    tic = time.perf_counter()
    view.page.fill("#f-search", "50000010")
    assert view.count() == 7  # study 50000010's questions
    assert time.perf_counter() - tic < 1.0
    assert view.errors == [] and view.network == []


def test_readme_screenshot_command(evaluations, tmp_path):
    """The README's command for its screenshot, in its own process (one sync playwright per process)."""
    script = Path(__file__).parent / "support" / "viewer_browser.py"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(Path(diffvqa.__file__).parents[1]), os.environ.get("PYTHONPATH")])
        ),
    }
    subprocess.run(
        [sys.executable, str(script), str(evaluations / "two_pass"), str(tmp_path / "shot.png")],
        check=True,
        env=env,
        timeout=300,
    )
    with Image.open(tmp_path / "shot.png") as shot:
        assert shot.size[0] == 1400 and shot.size[1] > 560  # the list, then the detail view below it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shot.png"]


def _tiny_predictions(directory, box_scores):
    answer = "the main image has an additional finding of pleural effusion than the reference image. "
    rows = [
        {
            "question_index": i,
            "study_id": 50_000_000 + i,
            "ref_id": 40_000_000 + i,
            "subject_id": 10_000_000,
            "question_type": "difference",
            "question": "what has changed compared to the reference image?",
            "answer": answer,
            "preliminary": answer,
            "final": answer,
            "keyword": "pleural effusion",
            "pointing": 1.0,
            **({} if box is None else {"box_pointing": box}),
        }  # fmt: skip
        for i, box in enumerate(box_scores)
    ]
    directory.mkdir()
    (directory / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return write_viewer(directory)


def test_the_boxes_column_only_when_an_evaluation_scored_boxes(browser, tmp_path):
    """Without box scores (no --boxes at prepare) a column of dashes is noise: the list and the detail view omit it."""
    for name, scores, shown in (("without", [None, None], False), ("with", [None, 0.5], True)):
        view = ViewerPage(browser, _tiny_predictions(tmp_path / name, scores))
        heads = view.page.eval_on_selector_all("#list-head th", "cells => cells.map(c => c.textContent)")
        assert ("pointing (boxes)" in heads) is shown, heads
        widths = view.page.eval_on_selector_all("#list-body tr", "rows => rows.map(r => r.children.length)")
        assert widths == [len(heads)] * len(scores)  # every row lines up with the header
        view.open_row(1)
        assert (view.page.locator(".detail-boxes").count() == 1) is shown
        if shown:
            assert view.page.locator(".detail-boxes").first.text_content() == "0.500"
        assert view.errors == [] and view.network == []
