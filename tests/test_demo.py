import pytest

from diffvqa.commands.demo import main


@pytest.mark.slow
def test_demo_runs_end_to_end_on_the_tiny_preset(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["--out", str(out), "--pairs", "40", "--preset", "tiny", "--steps", "2", "--workers", "1", "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "difference CIDEr" in printed and "blind" in printed and "report:" in printed
    html = (out / "eval" / "report.html").read_text()
    assert "blind" in html.lower() and "report_images/" in html
    assert (out / "eval" / "metrics.json").is_file() and (out / "eval_blind" / "metrics.json").is_file()
    # every answer, the model beside the blind baseline
    assert (out / "eval" / "viewer-vs-eval_blind" / "index.html").is_file() and "viewer, model vs blind" in printed
    # a second demo into the same directory is refused rather than mixed with the first
    assert main(argv) == 2
