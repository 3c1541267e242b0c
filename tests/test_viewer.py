"""The viewer's data and picture strips (no browser; tests/test_viewer_browser.py drives the page)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from diffvqa.cli import main as cli_main
from diffvqa.report.drawing import CONTOUR_COLOR
from diffvqa.viewer.build import build_data, pointing_score, write_viewer
from diffvqa.viewer.strips import PANELS, StripWriter, render_strips, strip_path


def _write(eval_dir, records, metrics=None):
    eval_dir.mkdir(parents=True, exist_ok=True)
    (eval_dir / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if metrics is not None:
        (eval_dir / "metrics.json").write_text(json.dumps(metrics))
    return eval_dir


def _record(i, final, **extra):
    return {
        "question_index": i,
        "study_id": 100 + i,
        "ref_id": 200 + i,
        "subject_id": 1,
        "question_type": "difference",
        "question": f"what has changed? ({i})",
        "answer": "nothing has changed.",
        "preliminary": final,
        "keyword": "",
        "final": final,
        **extra,
    }


def _load(index):
    text = (index.parent / "data.js").read_text()
    assert text.startswith("window.DIFFVQA_DATA = ") and text.endswith(";\n")
    return json.loads(text[len("window.DIFFVQA_DATA = ") : -2])


def test_compare_matches_questions_and_flags_disagreements(tmp_path):
    a = _write(
        tmp_path / "model",
        [_record(0, "Nothing has changed. "), _record(1, "edema"), _record(2, "x")],
        {"run": {"split": "test", "mode": "two-pass"}, "difference": {"METEOR": 0.3}},
    )
    # the blind run lists the questions in another order and lacks question 2
    b = _write(tmp_path / "blind", [_record(1, "edema."), _record(0, "effusion")])
    data = _load(write_viewer(a, b))
    strings = data["strings"]
    assert [r["name"] for r in data["runs"]] == ["model", "blind"] and data["runs"][0]["split"] == "test"
    rows = {strings[row[4]]: row for row in data["rows"]}
    q0, q1, q2 = (rows[f"what has changed? ({i})"] for i in range(3))
    assert q0[7][0][4] == 1 and q0[7][1][4] == 0  # exact match after normalisation
    assert q0[7][1][0] == 1  # line 2 of the blind run's predictions.jsonl
    assert q0[8] == 1 and q1[8] == 0  # "edema" == "edema." after normalisation: they agree
    assert q2[7][1] is None and q2[8] == 0
    assert q0[7][0][5] == round(1 - 0.5 / 27, 4)  # METEOR_nltk of the final answer, 4 decimals
    assert len(data["panels"]) == len(PANELS) == 7


def test_pointing_from_the_record():
    assert pointing_score({"pointing": 0.25}) == 0.25 and pointing_score({"pointing_hit": True}) == 1.0
    assert pointing_score({"pointing_hit": False}) == 0.0
    assert pointing_score({}) is None and pointing_score({"pointing": None}) is None
    assert pointing_score({"pointing": 3}) is None  # not a score


def test_duplicate_questions_are_an_error(tmp_path):
    eval_dir = _write(tmp_path / "e", [_record(0, "a"), _record(0, "b")])
    with pytest.raises(ValueError, match=r"predictions.jsonl:2: the question .* appears twice"):
        build_data([eval_dir], tmp_path)


def test_view_cli_errors_name_the_file(tmp_path, capsys):
    assert cli_main(["view", str(tmp_path)]) == 2
    assert f"{tmp_path / 'predictions.jsonl'}: not found" in capsys.readouterr().err
    (tmp_path / "predictions.jsonl").write_text(json.dumps(_record(0, "a")) + "\nnot json\n")
    assert cli_main(["view", str(tmp_path)]) == 2
    assert "predictions.jsonl:2: not JSON" in capsys.readouterr().err
    (tmp_path / "predictions.jsonl").write_text(json.dumps(_record(0, "a")) + "\n")
    assert cli_main(["view", str(tmp_path), "--out", str(tmp_path / "v")]) == 0
    assert (tmp_path / "v" / "index.html").is_file() and (tmp_path / "v" / "viewer.js").is_file()
    assert _load(tmp_path / "v" / "index.html")["runs"][0]["images"] is None  # no strips were written


def test_strips_two_pass_and_single_pass(tmp_path):
    b, s = 3, 32
    gray = torch.rand(b, 1, s, s)
    heat = torch.zeros(b, 1, s, s)
    heat[:, :, 8:16, 8:16] = 1.0
    change = torch.zeros(b, 1, s, s, dtype=torch.bool)
    change[:, :, 4:20, 4:20] = True
    strips = render_strips(gray, gray, gray, heat, heat, heat, change, panel=48)
    assert strips.shape == (b, 48, 7 * 48, 3) and strips.dtype == np.uint8
    assert (strips[:, :, 3 * 48 : 4 * 48] == 0).all()  # aligned == reference: no difference
    mask_panel = strips[0, :, 6 * 48 :]
    assert (mask_panel == CONTOUR_COLOR).all(axis=-1).sum() > 20  # the true change is outlined
    single = render_strips(gray, gray, gray, None, None, None, None, panel=48)
    assert (single[:, :, 4 * 48 :] == 64).all()  # no CAMs in single pass: flat gray

    class Result:
        aligned_main, cam_main, cam_ref, mask = gray, heat, heat, heat

    writer = StripWriter(tmp_path, panel=48)
    writer(998, {"main": gray, "ref": gray, "truth": {"change_mask": change.float()}}, Result)
    writer.close()  # the strips are written by a worker thread
    assert strip_path(999) == "img/000/000999.jpg" and strip_path(1000) == "img/001/001000.jpg"
    assert [p.relative_to(tmp_path).as_posix() for p in sorted(tmp_path.rglob("*.jpg"))] == [
        strip_path(998),
        strip_path(999),
        strip_path(1000),
    ]
    assert writer.count == 3 and writer.seconds > 0
    StripWriter(tmp_path).close()  # a new evaluation here starts without the old strips
    assert not list(tmp_path.rglob("*.jpg"))


def test_a_failing_strip_worker_fails_the_evaluation(tmp_path):
    gray = torch.rand(2, 1, 16, 16)

    class Result:
        aligned_main, cam_main, cam_ref, mask = gray, None, None, None

    blocked = tmp_path / "viewer"
    blocked.write_text("a file where the viewer's folder should be")  # saving fails in the worker
    writer = StripWriter(blocked, panel=16)
    writer(0, {"main": gray, "ref": gray, "truth": None}, Result)
    with pytest.raises(RuntimeError, match="writing the viewer's strips failed"):
        writer.close()


def test_viewer_benchmark_runs():
    """benchmarks/viewer.py (the budgets in docs/benchmarks.md), on a small configuration."""
    script = Path(__file__).parents[1] / "benchmarks" / "viewer.py"
    out = subprocess.run([sys.executable, str(script), "--pairs", "6", "--size", "64", "--questions", "16"],
                         capture_output=True, text=True, check=True, timeout=300)  # fmt: skip
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["questions"] == 16 and result["disk_bytes_per_strip"] > 1000 and result["worker_ms_per_strip"] > 0


def test_outputs_of_credentialed_data_carry_the_data_use_warning(tmp_path):
    phantom = _write(tmp_path / "phantom", [_record(0, "x")], {"run": {"phantom": True}})
    assert _load(write_viewer(phantom))["data_use"] is None  # no patient data, no warning
    mimic = _write(tmp_path / "mimic", [_record(0, "x")], {"run": {"phantom": False}})
    assert "PhysioNet Credentialed Health Data Use Agreement" in _load(write_viewer(mimic))["data_use"]
    unknown = _write(tmp_path / "old", [_record(0, "x")])  # an evaluation older than the flag: warned
    assert _load(write_viewer(unknown))["data_use"] is not None
    assert _load(write_viewer(phantom, mimic))["data_use"] is not None  # one credentialed run is enough
