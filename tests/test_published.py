"""The published difference-question results and an evaluation set beside them (comparison.md, the report)."""

from __future__ import annotations

import pytest

from diffvqa.metrics.published import (
    COLUMNS,
    PUBLISHED,
    TEST_DIFFERENCE_QUESTIONS,
    comparability,
    comparison_markdown,
    run_row,
)
from diffvqa.report.page import published_section

SCORES = {"BLEU-1": 0.61, "BLEU-4": 0.33, "METEOR": 0.3217, "METEOR_nltk": 0.5409, "ROUGE-L": 0.55, "CIDEr": 1.9}


def _metrics(**run):
    return {"difference": dict(SCORES), "run": {"split": "test", "limit": 0, "phantom": False, **run}}


def test_a_published_meteor_goes_in_the_column_its_magnitude_reads_like():
    by_method = {r.method: r for r in PUBLISHED}
    assert by_method["EKAID"].meteor_column() == "METEOR"  # 0.339: the jar's range
    assert by_method["SGL-VQA (this method)"].meteor_column() == "METEOR_nltk"  # 0.651: NLTK's range
    row = by_method["Attention-Consistent"].row()
    assert row["METEOR_nltk"] == 0.700 and row["METEOR"] is None and row["BLEU-4"] == 0.425
    assert by_method["VED"].row()["CIDEr"] == 2.119 and by_method["VED"].row()["BLEU-4"] is None
    assert len(PUBLISHED) == 8 and all(set(r.row()) == set(COLUMNS) for r in PUBLISHED)


@pytest.mark.parametrize(
    ("run", "reason"),
    [
        ({"phantom": True}, "built-in phantom"),
        ({"split": "val"}, "the val split was evaluated"),
        ({"limit": 200}, "--limit 200 evaluated a subset"),
        ({"difference_questions": 9000}, "9,000 difference questions were scored; the test split has 16,389"),
    ],
)
def test_each_reason_the_numbers_are_not_comparable_is_named(run, reason):
    reasons = comparability(_metrics(**run))
    assert len(reasons) == 1 and reason in reasons[0]
    text = comparison_markdown(_metrics(**run))
    assert "**Not comparable with the published rows:**" in text and reason in text


def test_a_full_test_split_evaluation_is_comparable():
    metrics = _metrics(difference_questions=TEST_DIFFERENCE_QUESTIONS)
    assert comparability(metrics) == []
    text = comparison_markdown(metrics, baseline={"difference": {**SCORES, "CIDEr": 1.2}})
    assert "Scored as the papers score: 16,389 test difference questions." in text
    lines = text.splitlines()
    assert "| **this run** | diffvqa | 0.610 | 0.330 | 0.322 | 0.541 | 0.550 | 1.900 |" in lines
    assert "| **blind baseline (question only)** | diffvqa | 0.610 | 0.330 | 0.322 | 0.541 | 0.550 | 1.200 |" in lines
    assert (
        "| EKAID (ROUGE-L 0.557 in one transcription) | KDD'23 | 0.628 | 0.434 | 0.339 | – | 0.577 | 1.027 |" in lines
    )
    assert "| SGL-VQA (this method) | arXiv 2509.25374 | – | – | – | 0.651 | 0.627 | 1.263 |" in lines
    assert "placed by its magnitude" in text


def test_a_missing_meteor_is_a_dash_and_a_reason():
    metrics = _metrics(difference_questions=TEST_DIFFERENCE_QUESTIONS)
    metrics["difference"]["METEOR"] = None
    assert run_row(metrics)["METEOR"] is None
    assert "METEOR (jar) did not run" in comparability(metrics)[0]
    assert "| **this run** | diffvqa | 0.610 | 0.330 | – | 0.541 |" in comparison_markdown(metrics)


def test_the_report_folds_the_table_away_when_not_comparable():
    folded = published_section(_metrics(phantom=True))
    assert folded.startswith("<details><summary>Published results on MIMIC-CXR — not comparable with this run:")
    assert "VED" in folded and "0.541" in folded
    shown = published_section(_metrics(difference_questions=TEST_DIFFERENCE_QUESTIONS))
    assert shown.startswith("<h3>Beside published results</h3>") and "<details>" not in shown
