"""The headline numbers of an evaluation, defined once: where ``metrics.json`` holds each and what it is called.

``diffvqa evaluate`` prints :data:`EVALUATION_TABLE` (:func:`diffvqa.commands.evaluate.format_table`), the study
tabulates :data:`STUDY_COLUMNS` and :data:`STUDY_REFERENCES` over seeds (:mod:`diffvqa.commands.study`), and the HTML
report (:mod:`diffvqa.report`) labels its mechanism rows with the same words. A table picks its rows here by name; none
spells a path into ``metrics.json`` itself. What each number means: ``docs/metrics.md``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from diffvqa.metrics.captions import DIFFERENCE


@dataclass(frozen=True)
class Headline:
    path: tuple[str, ...]  # keys into metrics.json
    label: str  # in the evaluation's text table (a leading indent marks a reference level of the row above)


HEADLINES: dict[str, Headline] = {
    **{k: Headline((DIFFERENCE, k), f"difference {k}") for k in ("BLEU-1", "BLEU-4", "METEOR", "METEOR_nltk")},
    **{k: Headline((DIFFERENCE, k), f"difference {k}") for k in ("ROUGE-L", "CIDEr")},
    "preliminary CIDEr": Headline(("final_vs_preliminary", "CIDEr_preliminary"), "  preliminary CIDEr (pass 1)"),
    "all BLEU-1": Headline(("all", "BLEU-1"), "all types BLEU-1"),
    "all CIDEr": Headline(("all", "CIDEr"), "all types CIDEr"),
    "accuracy closed": Headline(("accuracy_closed",), "accuracy closed"),
    "accuracy open": Headline(("accuracy_open",), "accuracy open"),
    "distinct answers": Headline((DIFFERENCE, "n_distinct_predictions"), "distinct difference answers"),
    "pointing game": Headline(("pointing_game",), "pointing game"),
    "chance": Headline(("pointing_game_reference", "chance"), "  chance (area share)"),
    "prior": Headline(("pointing_game_reference", "prior"), "  fixed-point prior"),
    "ceiling": Headline(("pointing_game_reference", "ceiling"), "  ceiling of the grid"),
    "difference map": Headline(("pointing_game_reference", "difference_map"), "  registered difference alone"),
    "keyword conditioning": Headline(("keyword_conditioning", "score"), "keyword conditioning"),
    "gated keyword conditioning": Headline(
        ("keyword_conditioning", "gated", "score"), "  gated (after the change gate)"
    ),
    "registration error ratio": Headline(("registration_error_ratio",), "registration error ratio"),
    "identity": Headline(("registration_error_px", "identity_ratio"), "  identity (no aligner)"),
}

# the rows of `diffvqa evaluate`'s printed table, in order
EVALUATION_TABLE = (
    "BLEU-1", "BLEU-4", "METEOR", "METEOR_nltk", "ROUGE-L", "CIDEr", "preliminary CIDEr", "all BLEU-1", "all CIDEr",
    "accuracy closed", "accuracy open", "pointing game", "chance", "prior", "ceiling", "keyword conditioning",
    "gated keyword conditioning", "registration error ratio", "identity",
)  # fmt: skip
# the study's columns (its short name -> headline) and the reference levels it prints under its table
STUDY_COLUMNS = {
    "CIDEr": "CIDEr",
    "prelim. CIDEr": "preliminary CIDEr",
    "BLEU-4": "BLEU-4",
    "METEOR": "METEOR",
    "ROUGE-L": "ROUGE-L",
    "pointing": "pointing game",
    "kw-cond": "keyword conditioning",
    "kw-cond gated": "gated keyword conditioning",
    "reg. ratio": "registration error ratio",
    "distinct": "distinct answers",
}
STUDY_REFERENCES = {name: name for name in ("chance", "prior", "ceiling", "difference map")}
# the top-level keys of metrics.json that MechanismTally.summary writes (phantom caches only)
MECHANISM_KEYS = (
    "pointing_game", "pointing_game_n", "pointing_game_reference", "pointing_game_per_finding",
    "keyword_conditioning", "registration_error_ratio", "registration_error_px", "empty_mask_fallbacks",
)  # fmt: skip


def lookup(metrics: Mapping[str, Any] | None, path: Sequence[str]) -> Any:
    """The value at ``path`` in a ``metrics.json`` dict; None where any key is missing."""
    value: Any = metrics
    for key in path:
        value = value.get(key) if isinstance(value, Mapping) else None
    return value
