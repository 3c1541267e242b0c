import json

import pytest

from diffvqa.commands.evaluate import default_title, evaluate, evenly_spaced, fixed_point_prior, format_table, main
from diffvqa.commands.train import main as train_main


@pytest.fixture(scope="module")
def tiny_run(phantom_cache, tmp_path_factory):
    run = tmp_path_factory.mktemp("eval") / "run"
    argv = ["--data", str(phantom_cache), "--out", str(run), "--preset", "tiny", "--no-progress", "train.steps=2"]
    assert train_main(argv) == 0
    return run


def test_evaluate_writes_predictions_metrics_and_report(tiny_run, phantom_cache, tmp_path):
    out = tmp_path / "eval"
    assert main(["--checkpoint", str(tiny_run), "--data", str(phantom_cache), "--out", str(out), "--no-progress"]) == 0
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert records
    keys = {
        "question_index",
        "study_id",
        "ref_id",
        "subject_id",
        "main_dicom_id",
        "ref_dicom_id",
        "question_type",
        "question",
        "answer",
        "preliminary",
        "final",
        "keyword",
    }
    assert all(keys <= set(r) for r in records)
    metrics = json.loads((out / "metrics.json").read_text())
    for group in ("difference", "all"):
        assert {"BLEU-1", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr"} <= set(metrics[group])
    assert {"accuracy_closed", "accuracy_open", "per_type", "implementation"} <= set(metrics)
    assert 0.0 <= metrics["pointing_game"] <= 1.0 and metrics["pointing_game_n"] > 0
    # an untrained aligner is near the identity: the error ratio is close to 1
    assert metrics["registration_error_ratio"] == pytest.approx(1.0, abs=0.2)
    px = metrics["registration_error_px"]
    assert metrics["registration_error_ratio"] == pytest.approx(px["after"] / px["before"])
    assert px["pairs"] == len({(r["study_id"], r["ref_id"]) for r in records})  # once per pair, not per question
    scored = [r for r in records if "pointing" in r]  # per-question scores: difference questions with a region
    assert len(scored) == metrics["pointing_game_n"] and all(r["question_type"] == "difference" for r in scored)
    assert metrics["pointing_game"] == pytest.approx(sum(r["pointing"] for r in scored) / len(scored))
    reference = metrics["pointing_game_reference"]
    assert 0 < reference["chance"] < 1 and 0 <= reference["ceiling"] <= 1 and reference["grid"] == "4x4"
    assert 0 <= reference["prior"] <= 1 and reference["prior_point"] == list(fixed_point_prior(phantom_cache))
    assert 0 <= reference["difference_map"] <= 1
    per_finding = metrics["pointing_game_per_finding"]
    assert sum(v["n"] for v in per_finding.values()) == metrics["pointing_game_n"]
    assert metrics["empty_mask_fallbacks"]["masks"] == len(records)
    assert metrics["preliminary"]["n"] == sum(r["question_type"] == "difference" for r in records)
    assert metrics["run"]["mode"] == "two-pass" and metrics["run"]["questions"] == len(records)
    # final vs preliminary: per-answer CIDEr-D in the records, whose means are the corpus scores, and the interval
    difference = [r for r in records if r["question_type"] == "difference"]
    assert all("cider" in r and "cider_preliminary" in r for r in difference)
    assert not any("cider" in r for r in records if r["question_type"] != "difference")
    passes = metrics["final_vs_preliminary"]
    assert passes["n"] == len(difference)
    assert passes["CIDEr_final"] == pytest.approx(metrics["difference"]["CIDEr"], abs=1e-9)
    assert passes["CIDEr_preliminary"] == pytest.approx(metrics["preliminary"]["CIDEr"], abs=1e-9)
    gap = passes["CIDEr_difference"]
    mean_gap = sum(r["cider"] - r["cider_preliminary"] for r in difference) / len(difference)
    assert gap["estimate"] == pytest.approx(mean_gap) and gap["low"] <= gap["estimate"] <= gap["high"]
    changed = sum(r["final"] != r["preliminary"] for r in difference)
    assert passes["answers_changed"] == changed
    assert passes["right_only_in_final"] + passes["right_only_in_preliminary"] <= changed
    assert metrics["run"]["phantom"] and metrics["run"]["difference_questions"] == len(difference)
    assert metrics["run"]["encoder"] == "random initialisation"  # the test model has no model.encoder_pretrained
    info = json.loads((out / "run_info.json").read_text())
    assert info["command"][:3] == ["diffvqa", "evaluate", "--checkpoint"] and info["device"] == "cpu"
    comparison = (out / "comparison.md").read_text()
    assert "**Not comparable with the published rows:** the data is the built-in phantom" in comparison
    assert f"| **this run** | diffvqa | {metrics['difference']['BLEU-1']:.3f} |" in comparison
    html = (out / "report.html").read_text()
    assert "Published results on MIMIC-CXR — not comparable with this run" in html
    assert "Final vs preliminary answers" in html and f"{gap['estimate']:+.3f} [{gap['low']:+.3f}," in html
    assert "report_images/" in html
    checkpoint = metrics["run"]["checkpoint"]  # the run's best checkpoint, as find_checkpoint resolved it
    step = checkpoint.rsplit("/", 1)[-1]
    assert f"<h1>diffvqa — {tiny_run.name}/{step} on {phantom_cache.name} (test split)</h1>" in html
    assert "Training curves" in html and (out / "report_images" / "training_curves.svg").is_file()
    assert 'href="viewer/index.html"' in html
    # the viewer: every question with its picture strip, and what writing it cost
    viewer = out / "viewer"
    assert (viewer / "index.html").is_file() and (viewer / "data.js").is_file()
    assert len(list((viewer / "img").rglob("*.jpg"))) == len(records)
    timing = json.loads((viewer / "timing.json").read_text())
    assert timing["questions"] == len(records) and 0 < timing["ratio"] < 1


def test_single_pass_and_question_type_filter(tiny_run, phantom_cache, tmp_path):
    metrics = evaluate(
        tiny_run,
        phantom_cache,
        out=tmp_path,
        question_types=["difference"],
        single_pass=True,
        report=False,
        progress=False,
        viewer=False,
    )
    assert not (tmp_path / "viewer").exists()
    assert metrics["run"]["mode"] == "single-pass" and "pointing_game" not in metrics
    assert metrics["all"]["n"] == metrics["difference"]["n"] == metrics["run"]["questions"]
    assert "final_vs_preliminary" not in metrics  # one pass: nothing to compare; the records still carry CIDEr
    records = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert all("cider" in r and "cider_preliminary" not in r for r in records)


def test_evaluate_errors_are_named(tiny_run, phantom_cache, tmp_path, capsys):
    assert main(["--checkpoint", str(tmp_path), "--data", str(phantom_cache), "--out", str(tmp_path / "o")]) == 2
    assert "best" in capsys.readouterr().err


def test_fixed_point_prior_is_learned_on_the_train_split(phantom_cache):
    from diffvqa.data.regions import question_regions

    y, x = fixed_point_prior(phantom_cache)
    train = question_regions(phantom_cache, "train", ("difference",))
    covered = train[:, y, x].sum()
    assert covered == train.reshape(len(train), -1).sum(axis=0).max()  # no pixel lies in more train regions


def test_the_default_title_names_the_run_and_cache_not_the_paths_as_typed(tmp_path, monkeypatch):
    run = tmp_path / "runs" / "guided-seed3"
    (run / "checkpoints" / "step-0001100").mkdir(parents=True)
    (tmp_path / "caches" / "mimic-test").mkdir(parents=True)
    monkeypatch.chdir(run / "checkpoints")
    title = default_title("step-0001100", "../../../caches/mimic-test", "validation")
    assert title == "diffvqa — guided-seed3/step-0001100 on mimic-test (validation split)"
    monkeypatch.chdir(tmp_path / "caches" / "mimic-test")  # a checkpoint outside a run keeps its own name
    assert default_title(tmp_path / "exported", ".", "test") == "diffvqa — exported on mimic-test (test split)"


def test_evenly_spaced():
    assert evenly_spaced(10, 0) == list(range(10))
    assert evenly_spaced(10, 5) == [0, 2, 4, 6, 8]
    assert evenly_spaced(3, 5) == [0, 1, 2]


def test_format_table_with_baseline():
    model = {"difference": {"BLEU-1": 0.5, "METEOR_nltk": 0.54, "CIDEr": 1.2}, "accuracy_closed": 0.8}
    blind = {"difference": {"BLEU-1": 0.3, "METEOR_nltk": 0.44, "CIDEr": 0.4}, "accuracy_closed": 0.5}
    table = format_table(model, blind)
    assert "difference CIDEr" in table and "0.800" in table and "0.300" in table
    lines = table.splitlines()

    def row(label, *values):  # the label, then model, blind and Δ right-aligned in columns of 10
        return next(line for line in lines if line.startswith(label + " ")).endswith(
            "".join(f"{v:>10}" for v in values)
        )

    assert row("difference CIDEr", "1.200", "0.400", "0.800") and row("accuracy closed", "0.800", "0.500", "0.300")
    assert row("difference METEOR_nltk", "0.540", "0.440", "0.100")  # the sentence METEOR some papers report
    assert len({len(line) for line in lines if line[-1].isdigit()} | {len(lines[0])}) == 1  # columns line up
    lines = format_table({"difference": {"CIDEr": 0.5}}, {"difference": {"CIDEr": 0.75}}).splitlines()
    assert row("difference CIDEr", "0.500", "0.750", "-0.250")
    # the longest label (an indented reference row) still leaves its value in the column
    gated = format_table({"keyword_conditioning": {"score": 0.6, "ci95": [0.5, 0.7], "questions": 3, "pairs": 6,
                                                   "gated": {"score": 0.55}}})  # fmt: skip
    rows = [line for line in gated.splitlines() if line[-1].isdigit() and "interval" not in line]
    assert len({len(line) for line in rows} | {len(gated.splitlines()[0])}) == 1 and len(rows) == 2
    assert "registration" not in table  # rows with no value on either side are left out


def test_inference_time_saliency_overrides(tiny_run, phantom_cache, tmp_path, capsys):
    """saliency.* overrides change the maps (and are recorded); other keys are refused by name."""
    common = ["--checkpoint", str(tiny_run), "--data", str(phantom_cache), "--no-progress", "--no-report",
              "--question-types", "difference"]  # fmt: skip
    assert main([*common, "--out", str(tmp_path / "a")]) == 0
    assert main([*common, "--out", str(tmp_path / "b"), "saliency.mask=none"]) == 0
    flat = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert flat["run"]["saliency_overrides"] == ["saliency.mask=none"]
    # an all-ones mask ties every pixel: it scores each region's area share, i.e. exactly chance
    assert flat["pointing_game"] == pytest.approx(flat["pointing_game_reference"]["chance"])
    assert main([*common, "--out", str(tmp_path / "c"), "model.align=false"]) == 2
    assert "saliency.*" in capsys.readouterr().err


@pytest.mark.slow
def test_batchnorm_passes_benchmark_runs(tiny_run, phantom_cache):
    """benchmarks/batchnorm_passes.py (per-pass BatchNorm statistics measured) at toy size: three scored settings."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "batchnorm_passes.py"
    result = subprocess.run([sys.executable, str(script), str(tiny_run), str(phantom_cache), "--samples", "16"],
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    scores = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(scores) == {"trained, per pass", "unmasked set for both", "per pass, re-estimated"}
    for entry in scores.values():
        assert entry["final_CIDEr"] >= 0 and 0 <= entry["pointing_game"] <= 1
