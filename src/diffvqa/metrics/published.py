"""Published difference-question results on Medical-Diff-VQA, and an evaluation's numbers set beside them.

The rows are the papers' own numbers on the difference questions of the test split (16,389 questions), as the
Attention-Consistent paper (arXiv 2606.06534) tabulates them; the seed method's row is from its abstract
(arXiv 2509.25374). "–" is a number the source does not give.

Two METEORs circulate: pycocoevalcap's jar (corpus METEOR 1.5, our ``METEOR``) and NLTK's sentence-level METEOR
averaged over answers (our ``METEOR_nltk``). On the same answers they differ a lot (0.33 vs 0.54 on our demo), and
the papers do not say which they used. A published METEOR is placed in the column its magnitude reads like (0.3-0.4:
the jar; 0.65-0.70: NLTK) -- an inference, said so beside the table, not a fact from the paper.

:func:`comparison_markdown` writes ``comparison.md`` (``diffvqa evaluate``); the HTML report renders the same rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from diffvqa.metrics.captions import DIFFERENCE

COMPARISON_FILE = "comparison.md"
TEST_DIFFERENCE_QUESTIONS = 16_389  # Medical-Diff-VQA v1.0.1, test split, question_type == difference
COLUMNS = ("BLEU-1", "BLEU-4", "METEOR", "METEOR_nltk", "ROUGE-L", "CIDEr")
COLUMN_LABELS = {"METEOR": "METEOR (jar)", "METEOR_nltk": "METEOR (NLTK)"}
# A published METEOR below this reads like the jar's corpus METEOR; above, like NLTK's sentence METEOR.
METEOR_KIND_THRESHOLD = 0.5


@dataclass(frozen=True)
class PublishedResult:
    method: str
    venue: str
    source: str  # where the numbers are taken from
    scores: Mapping[str, float | None]  # BLEU-1, BLEU-4, METEOR (whichever the paper used), ROUGE-L, CIDEr
    note: str = ""

    def meteor_column(self) -> str | None:
        """The column this row's METEOR goes in, by its magnitude (see the module docstring)."""
        meteor = self.scores.get("METEOR")
        if meteor is None:
            return None
        return "METEOR" if meteor < METEOR_KIND_THRESHOLD else "METEOR_nltk"

    def row(self) -> dict[str, float | None]:
        values = {column: self.scores.get(column) for column in COLUMNS if column not in ("METEOR", "METEOR_nltk")}
        values |= {"METEOR": None, "METEOR_nltk": None}
        if (column := self.meteor_column()) is not None:
            values[column] = self.scores["METEOR"]
        return values


_TABULATED = "as tabulated in arXiv 2606.06534"


def _published(method, venue, bleu1, bleu4, meteor, rouge, cider, source=_TABULATED, note="") -> PublishedResult:
    scores = {"BLEU-1": bleu1, "BLEU-4": bleu4, "METEOR": meteor, "ROUGE-L": rouge, "CIDEr": cider}
    return PublishedResult(method, venue, source, scores, note)


# method, venue, BLEU-1, BLEU-4, METEOR, ROUGE-L, CIDEr (None: not given by the source)
PUBLISHED: tuple[PublishedResult, ...] = (
    _published("MCCFormers", "ICCV'21", 0.214, None, 0.319, 0.340, 0.0),
    _published("IDCPCL", "AAAI'22", 0.614, None, 0.303, 0.582, 0.703),
    _published("EKAID", "KDD'23", 0.628, 0.434, 0.339, 0.577, 1.027, note="ROUGE-L 0.557 in one transcription"),
    _published("RegioMix", "MICCAI'24", 0.705, None, 0.381, 0.651, 1.804),
    _published("PLURAL", "MIDL'24", 0.704, None, 0.381, 0.653, 1.832),
    _published("VED", "MIDL'25", 0.716, None, 0.389, 0.670, 2.119),
    _published("SGL-VQA (this method)", "arXiv 2509.25374", None, None, 0.651, 0.627, 1.263, source="its abstract"),
    _published("Attention-Consistent", "CVPR'26, arXiv 2606.06534", 0.747, 0.425, 0.700, 0.703, 2.011,
               source="its own table"),
)  # fmt: skip


def run_row(metrics: Mapping[str, Any]) -> dict[str, float | None]:
    """An evaluation's difference-question scores in :data:`COLUMNS` (None where ``metrics.json`` lacks one)."""
    scores = metrics.get(DIFFERENCE) or {}
    return {column: scores.get(column) for column in COLUMNS}


def comparability(metrics: Mapping[str, Any]) -> list[str]:
    """Why this evaluation's numbers are *not* comparable with the published rows ([] when they are): phantom
    data, another split, a subset of the questions, or a METEOR that could not run."""
    run = metrics.get("run") or {}
    reasons = []
    if run.get("phantom"):
        reasons.append("the data is the built-in phantom, not MIMIC-CXR: other images, questions and answers")
    if run.get("split", "test") != "test":
        reasons.append(f"the {run['split']} split was evaluated; the papers report the test split")
    if run.get("limit"):
        reasons.append(f"--limit {run['limit']} evaluated a subset")
    n = run.get("difference_questions")
    if n is not None and n != TEST_DIFFERENCE_QUESTIONS and not run.get("phantom"):
        reasons.append(f"{n:,} difference questions were scored; the test split has {TEST_DIFFERENCE_QUESTIONS:,}")
    if (metrics.get(DIFFERENCE) or {}).get("METEOR") is None:
        reasons.append("METEOR (jar) did not run (Java missing?)")
    return reasons


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def comparison_markdown(
    metrics: Mapping[str, Any], *, label: str = "this run", baseline: Mapping[str, Any] | None = None
) -> str:
    """``comparison.md``: this run's difference-question scores (and its blind baseline's) above the published
    rows, with which METEOR each published number reads like and whether the comparison is fair at all."""
    run = metrics.get("run") or {}
    header = ["method", "venue", *(COLUMN_LABELS.get(c, c) for c in COLUMNS)]
    lines = [
        "# This evaluation beside published results",
        "",
        "Difference questions of Medical-Diff-VQA (test split, 16,389 questions in the papers). Scores in [0, 1], "
        "CIDEr-D unscaled.",
        "",
    ]
    reasons = comparability(metrics)
    if reasons:
        lines += ["**Not comparable with the published rows:** " + "; ".join(reasons) + ".", ""]
    else:
        n = run.get("difference_questions")
        scored = f"{n:,} test difference questions" if isinstance(n, int) else "the test difference questions"
        lines += [f"Scored as the papers score: {scored}.", ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    ours = [(label, "diffvqa", run_row(metrics))]
    if baseline is not None:
        ours.append(("blind baseline (question only)", "diffvqa", run_row(baseline)))
    for method, venue, row in ours:
        lines.append(f"| **{method}** | {venue} | " + " | ".join(_fmt(row[c]) for c in COLUMNS) + " |")
    for result in PUBLISHED:
        row = result.row()
        method = result.method + (f" ({result.note})" if result.note else "")
        lines.append(f"| {method} | {result.venue} | " + " | ".join(_fmt(row[c]) for c in COLUMNS) + " |")
    lines += [
        "",
        "Which METEOR: this run reports both, pycocoevalcap's jar (corpus METEOR 1.5) and NLTK's sentence METEOR "
        "averaged over answers; on the same answers the jar gives much lower values. No paper above says which it "
        f"used, so each published METEOR is placed by its magnitude (below {METEOR_KIND_THRESHOLD}: the jar's "
        "column; above: NLTK's) — an inference, not the paper's statement. Compare a published METEOR only with "
        "this run's number in the same column.",
        "",
        "Sources: the rows up to VED as tabulated in arXiv 2606.06534; the seed method (SGL-VQA, arXiv "
        "2509.25374) from its abstract; Attention-Consistent from its own table. – : not given by the source.",
        "",
    ]
    return "\n".join(lines)
