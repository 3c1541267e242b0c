import json

import pytest

from diffvqa.commands.demo import main


@pytest.mark.slow
def test_demo_runs_end_to_end_on_the_tiny_preset(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["--out", str(out), "--pairs", "40", "--preset", "tiny", "--steps", "2", "--workers", "1", "--no-progress",
            "--pretrain-steps", "2"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "difference CIDEr" in printed and "blind" in printed and "report:" in printed
    # the encoder was pretrained on the phantom's labels and the model started from it
    assert (out / "pretrain" / "encoder" / "config.json").is_file() and "mean AUROC" in printed
    assert json.loads((out / "run" / "config.json").read_text())["model"]["encoder_pretrained"] == str(
        out / "pretrain" / "encoder"
    )
    assert "time per stage: simulate" in printed and "pretrain" in printed.split("time per stage:")[1]
    html = (out / "eval" / "report.html").read_text()
    assert "blind" in html.lower() and "report_images/" in html
    assert (out / "eval" / "metrics.json").is_file() and (out / "eval_blind" / "metrics.json").is_file()
    # every answer, the model beside the blind baseline
    assert (out / "eval" / "viewer-vs-eval_blind" / "index.html").is_file() and "viewer, model vs blind" in printed
    # a second demo into the same directory is refused rather than mixed with the first
    assert main(argv) == 2


@pytest.mark.slow
def test_demo_without_pretraining_trains_from_random_weights(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["--out", str(out), "--pairs", "30", "--preset", "tiny", "--steps", "2", "--workers", "1", "--no-progress",
            "--no-pretrain", "--blind-steps", "1"]  # fmt: skip
    assert main(argv) == 0
    assert not (out / "pretrain").exists()
    assert json.loads((out / "run" / "config.json").read_text())["model"]["encoder_pretrained"] == ""
    assert "pretrain" not in capsys.readouterr().out.split("time per stage:")[1]
