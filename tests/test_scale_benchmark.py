"""benchmarks/scale.py at 1/200 of MIMIC's size: the synthetic release has the planted shape (counts per type,
v1.0.1's swapped difference rows, each skip kind), and every measurement stage runs."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import load_benchmark


@pytest.fixture
def scale_benchmark():
    return load_benchmark("scale")


def test_synthetic_release_has_the_planted_shape(scale_benchmark, tmp_path):
    from diffvqa.data.release import read_release

    planted = scale_benchmark.synthesise(tmp_path, scale=0.005)
    questions = pd.read_csv(tmp_path / "mimic_pair_questions.csv", dtype=str, keep_default_na=False)
    expected = {t: round(n * 0.005) for t, n in scale_benchmark.TYPE_COUNTS.items()}
    assert questions.question_type.value_counts().to_dict() == expected
    studies = pd.read_csv(tmp_path / "mimic_all.csv", nrows=0)
    assert len(studies.columns) == 21 and len(pd.read_csv(tmp_path / "mimic_all.csv")) == round(227_827 * 0.005)
    release = read_release(tmp_path, tmp_path)
    k = planted["planted_skips_per_kind"]
    assert release.skipped["bad_row"] == release.skipped["unknown_study"] == release.skipped["subject_mismatch"] == k
    assert release.skipped["bad_chronology"] >= k and release.skipped["missing_image"] > 0
    assert release.notes["swapped_difference_rows"] >= planted["swapped_pairs"] > 0
    assert len(list((tmp_path / "files").rglob("*.jpg"))) == planted["jpgs"]


@pytest.mark.slow
def test_every_stage_runs_and_reports(scale_benchmark, tmp_path, capsys):
    assert scale_benchmark.main(["--scale", "0.005", "--root", str(tmp_path / "root")]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(summary["goals_met"]) == set(scale_benchmark.GOALS)
    for key in ("read_seconds", "prepare_overhead_ms_per_image", "resume_seconds", "dataset_index_seconds"):
        assert summary[key] >= 0, key
    assert summary["prepare_images"] > 0 and summary["dataset_samples_per_s"] > 0
    assert not (tmp_path / "root").exists()  # removed without --keep
