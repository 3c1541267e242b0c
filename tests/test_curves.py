"""diffvqa plot: every numeric key of metrics.jsonl over steps, runs overlaid, PNG + SVG; errors name the file."""

import json

import pytest
from PIL import Image

from diffvqa.cli import main as cli_main
from diffvqa.files.run import find_metrics_log
from diffvqa.report.curves import curve_keys, group_of, plot_runs, read_log


def _run(path, scale, extra=True):
    path.mkdir(parents=True)
    lines = []
    for step in range(1, 11):
        lines.append(
            {
                "step": step,
                "loss": 3.0 * scale / step,
                "loss/answer_masked": 1.5 / step,
                "loss/registration": 1e-9 * step,
                "grad_norm": 2.0,
                "lr": 1e-3,
                "pairs_per_s": 40.0,
            }
        )
        if step % 5 == 0:
            localisation = {"val/pointing_game": 0.3, "registration_error_ratio": 0.9} if extra else {}
            lines.append(
                {"step": step, "val/CIDEr": 0.1 * step * scale, "val/n": 8, "val/single_pass": False, **localisation}
            )
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return path


def test_every_numeric_key_grouped(tmp_path):
    log = read_log(_run(tmp_path / "a", 1.0) / "metrics.jsonl")
    assert "val/n" not in log and "val/single_pass" not in log and "step" not in log  # a count and a flag
    assert log["val/CIDEr"] == ([5, 10], [0.5, 1.0])
    assert curve_keys([log]) == ["loss", "loss/answer_masked", "loss/registration", "val/CIDEr",
                                 "val/pointing_game", "registration_error_ratio", "grad_norm", "lr",
                                 "pairs_per_s"]  # fmt: skip
    assert group_of("val/pointing_game") == "validation" and group_of("pointing_game_train") == "localisation"
    assert group_of("something_new") == "other"


def test_runs_overlaid_png_and_svg(tmp_path):
    a, b = _run(tmp_path / "model", 1.0), _run(tmp_path / "blind", 2.0, extra=False)
    png, svg = plot_runs([a, b], tmp_path / "out" / "curves")
    assert cli_main(["plot", str(a), str(b), "--out", str(tmp_path / "cli"), "--labels", "ours,question-only"]) == 0
    assert "question-only" in (tmp_path / "cli.svg").read_text()
    with Image.open(png) as image:
        assert image.size[0] > 1000  # 4 panels a row
    text = svg.read_text()
    for key in ("loss/answer_masked", "val/CIDEr", "registration_error_ratio", "pairs_per_s"):
        assert key in text, key
    assert "model" in text and "blind" in text  # the legend names both runs


def test_cli_plot_and_errors(tmp_path, capsys):
    run = _run(tmp_path / "run", 1.0)
    assert cli_main(["plot", str(run)]) == 0
    assert (run / "curves.png").is_file() and (run / "curves.svg").is_file()
    checkpoint = run / "checkpoints" / "step-10"
    checkpoint.mkdir(parents=True)
    assert find_metrics_log(checkpoint) == run / "metrics.jsonl"  # the report finds a checkpoint's run

    assert cli_main(["plot", str(tmp_path / "empty")]) == 2
    assert "empty: no metrics.jsonl" in capsys.readouterr().err
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n{"loss": 2.0}\n')
    assert cli_main(["plot", str(run)]) == 2
    assert "metrics.jsonl:2: a record needs an integer 'step'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["plot", str(run), "--labels", "a,b"])
