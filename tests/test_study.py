"""diffvqa study at toy size: the grid runs, resumes without redoing finished runs, and seeds change the runs."""

import json

import pytest

from diffvqa.commands.study import VARIANTS, compare, comparison_table, main, markdown_table, reference_of, summarise


@pytest.mark.slow
def test_study_runs_resumes_and_seeds_differ(phantom_cache, tmp_path, capsys):
    out = tmp_path / "study"
    held_out = tmp_path / "held_out"  # evaluation on another cache (here the same files under another name)
    held_out.symlink_to(phantom_cache, target_is_directory=True)
    argv = ["--data", str(phantom_cache), "--eval-data", str(held_out), "--out", str(out), "--preset", "tiny",
            "--seeds", "2", "--jobs", "2",
            "--variants", "full,no_aligner", "--no-progress", "train.steps=3", "train.eval_every=3",
            "train.checkpoint_every=3", "saliency.start_step=1"]  # fmt: skip
    assert main(argv) == 0
    record = json.loads((out / "study.json").read_text())
    assert set(record["variants"]) == {"full", "no_aligner"} and record["seeds"] == 2
    assert record["eval_data"] == str(held_out)
    evaluated = json.loads((out / "runs" / "full" / "seed0" / "eval" / "metrics.json").read_text())
    assert evaluated["run"]["data"] == str(held_out)
    full = record["variants"]["full"]
    assert len(full["CIDEr"]["values"]) == 2 and full["pointing"]["mean"] is not None
    assert full["reg. ratio"]["values"][0] != full["reg. ratio"]["values"][1]  # the seeds change the runs
    assert record["variants"]["no_aligner"]["reg. ratio"]["values"] == [1.0, 1.0]  # identity: no aligner
    for png in ("pointing_over_training.png", "registration_over_training.png", "pointing_per_finding.png"):
        assert (out / png).stat().st_size > 1000
    table = (out / "study.md").read_text()
    assert "| full | 2 |" in table and "full: final − preliminary" in table and "no_aligner − full" in table
    comparison = record["comparisons"]["no_aligner"]["minus_full"]
    assert comparison["low"] <= comparison["estimate"] <= comparison["high"] and len(comparison["per_seed"]) == 2
    assert "final_minus_preliminary" in record["comparisons"]["full"]
    weights = out / "runs" / "full" / "seed0" / "latest"
    stamp = weights.stat().st_mtime_ns
    assert main(argv) == 0  # resumed: every run finished, nothing is trained or evaluated again
    assert weights.stat().st_mtime_ns == stamp
    assert json.loads((out / "study.json").read_text())["variants"] == record["variants"]
    capsys.readouterr()
    assert main([*argv, "saliency.mask_floor=0.5"]) == 2  # other settings: refused, not mixed with these runs
    err = capsys.readouterr().err.strip()
    assert "other settings" in err and "saliency.mask_floor=0.5" in err and "new --out" in err and "\n" not in err
    assert weights.stat().st_mtime_ns == stamp


def test_study_settings_are_recorded_and_others_refused(phantom_cache, tmp_path):
    from diffvqa.commands.study import STUDY_SETTINGS, check_settings
    from diffvqa.errors import UserError

    settings = {"preset": "small", "overrides": ["data.question_types=[difference]"], "data": "ab", "eval_data": "cd"}
    check_settings(tmp_path, settings)
    assert json.loads((tmp_path / STUDY_SETTINGS).read_text()) == settings
    check_settings(tmp_path, dict(settings))  # the same settings: accepted (seeds and variants may grow)
    with pytest.raises(UserError, match=r"eval_data 'cd' then, 'ef' now"):
        check_settings(tmp_path, settings | {"eval_data": "ef"})
    with pytest.raises(UserError, match="preset 'small' then, 'tiny' now"):
        check_settings(tmp_path, settings | {"preset": "tiny"})


def test_study_rejects_unknown_variants_and_bad_counts(phantom_cache, tmp_path, capsys):
    assert main(["--data", str(phantom_cache), "--out", str(tmp_path), "--variants", "full,nope"]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["--data", str(phantom_cache), "--out", str(tmp_path), "--seeds", "0"]) == 2
    assert main(["--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "manifest.json" in capsys.readouterr().err


def test_summary_mean_and_sd_over_seeds():
    results = {
        "full": {
            0: {"difference": {"CIDEr": 1.0}, "pointing_game": 0.2},
            1: {"difference": {"CIDEr": 2.0}, "pointing_game": 0.4},
        }
    }
    summary = summarise(results)
    assert summary["full"]["CIDEr"]["mean"] == pytest.approx(1.5)
    assert summary["full"]["CIDEr"]["sd"] == pytest.approx(0.7071, abs=1e-4)  # sample sd
    assert summary["full"]["kw-cond"]["mean"] is None
    assert "1.500 ± 0.707" in markdown_table(summary)


def test_the_table_prints_counts_as_counts_and_model_levels_per_variant():
    def metrics(distinct, difference_map):
        return {"difference": {"CIDEr": 1.0, "n_distinct_predictions": distinct}, "pointing_game": 0.5,
                "pointing_game_reference": {"chance": 0.05, "difference_map": difference_map}}  # fmt: skip

    table = markdown_table(summarise({"full": {0: metrics(62, 0.7)}, "no_similarity": {0: metrics(98, 0.2)}}))
    assert "| 62 |" in table and "| 98 |" in table and "62.000" not in table
    assert "chance 0.050" in table  # the same questions for every run: one number
    assert "difference map 0.700 (full) / 0.200 (no_similarity)" in table  # each run's own aligner
    two_seeds = markdown_table(summarise({"full": {0: metrics(62, 0.7), 1: metrics(64, 0.7)}}))
    assert "63.0 ± 1.4" in two_seeds
    assert set(VARIANTS) >= {"full", "no_aligner", "no_reg", "no_similarity", "single_pass", "mask_mean",
                             "mask_main", "mask_ref", "mask_none", "blind"}  # fmt: skip


def _predictions(path, ciders, preliminaries=None):
    path.mkdir(parents=True)
    with (path / "predictions.jsonl").open("w") as f:
        for q, cider in enumerate(ciders):
            record = {"study_id": q, "ref_id": 100 + q, "question": "what has changed?", "cider": cider}
            if preliminaries is not None:
                record["cider_preliminary"] = preliminaries[q]
            f.write(json.dumps(record) + "\n")


def test_comparisons_pair_seeds_and_questions(tmp_path):
    """full beats single_pass by 0.5 on every question of both seeds, and its final beats its preliminary by 0.2:
    both intervals sit on those values; the per-seed means are reported."""
    runs = {"full": {}, "single_pass": {}}
    for seed in (0, 1):
        base = [1.0 + 0.1 * q + seed for q in range(20)]
        full, single = tmp_path / "full" / f"seed{seed}", tmp_path / "single" / f"seed{seed}"
        _predictions(full / "eval", [b + 0.5 for b in base], preliminaries=[b + 0.3 for b in base])
        _predictions(single / "eval", base)
        runs["full"][seed], runs["single_pass"][seed] = full, single
    result = compare(runs)
    gain = result["single_pass"]["minus_full"]
    assert gain["estimate"] == pytest.approx(-0.5) and gain["low"] == pytest.approx(-0.5)
    assert gain["high"] == pytest.approx(-0.5) and gain["per_seed"] == pytest.approx([-0.5, -0.5])
    assert result["full"]["final_minus_preliminary"]["estimate"] == pytest.approx(0.2)
    assert "final_minus_preliminary" not in result["single_pass"]  # no preliminary answers in single-pass runs
    table = comparison_table(result)
    assert "| full: final − preliminary | +0.200 | [+0.200, +0.200] | +0.200, +0.200 | 20 |" in table
    assert "| single_pass − full | -0.500 |" in table


def test_a_pretrained_variant_is_compared_with_pretrained_and_pretrained_with_full(tmp_path):
    """One change at a time: pretrained_single_pass − pretrained, pretrained − full (the pretraining question),
    single_pass − full; without `pretrained` in the grid a pretrained_* variant falls back to full."""
    runs = {}
    for variant, level in (("full", 1.0), ("pretrained", 2.0), ("pretrained_single_pass", 1.75), ("single_pass", 0.5)):
        _predictions(tmp_path / variant / "eval", [level + 0.01 * q for q in range(10)])
        runs[variant] = {0: tmp_path / variant}
    result = compare(runs)
    assert set(result["pretrained_single_pass"]) == {"minus_pretrained"}
    assert result["pretrained_single_pass"]["minus_pretrained"]["estimate"] == pytest.approx(-0.25)
    assert result["pretrained"]["minus_full"]["estimate"] == pytest.approx(1.0)
    assert result["single_pass"]["minus_full"]["estimate"] == pytest.approx(-0.5)
    assert result["full"] == {}
    table = comparison_table(result)
    assert "| pretrained_single_pass − pretrained | -0.250 |" in table and "| pretrained − full | +1.000 |" in table
    without = compare({v: runs[v] for v in ("full", "pretrained_single_pass")})
    assert without["pretrained_single_pass"]["minus_full"]["estimate"] == pytest.approx(0.75)
    assert reference_of("demo_schedule", ["full", "pretrained", "demo_schedule"]) == "pretrained"
    assert reference_of("blind", ["blind"]) is None
