"""Measuring answers and mechanisms.

The answer metrics (papers' caption scores and exact match) are importable from here:
:mod:`~diffvqa.metrics.captions` (the API), run through :mod:`~diffvqa.metrics.coco` (pycocoevalcap
and Java, made safe), with :mod:`~diffvqa.metrics.meteor_nltk` (the other METEOR). The mechanisms are scored
against the phantom's ground truth by :mod:`~diffvqa.metrics.pointing` (the pointing game, its reference levels,
keyword conditioning; pure functions) and :mod:`~diffvqa.metrics.mechanisms` (the tally an evaluation keeps);
:mod:`~diffvqa.metrics.intervals` gives the bootstrap intervals and :mod:`~diffvqa.metrics.headline` the
headline numbers every table shows. What each number means: ``docs/metrics.md``.

Importing this package is cheap: no torch, no pycocoevalcap, no Java.
"""

from diffvqa.metrics.captions import (
    CAPTION_KEYS,
    CLOSED_ANSWERS,
    DIFFERENCE,
    caption_scores,
    cider_per_answer,
    cider_score,
    evaluate_answers,
    exact_match_accuracy,
    normalize_answer,
)
from diffvqa.metrics.coco import (
    JAVA_FLAGS,
    METEOR_JAR,
    METRIC_KEYS,
    PTB_JAR,
    fallback_tokenize,
    java_version,
    ptb_tokenize,
    pycocoevalcap_version,
    sanitize_caption,
)

__all__ = [
    "CAPTION_KEYS",
    "CLOSED_ANSWERS",
    "DIFFERENCE",
    "JAVA_FLAGS",
    "METEOR_JAR",
    "METRIC_KEYS",
    "PTB_JAR",
    "caption_scores",
    "cider_per_answer",
    "cider_score",
    "evaluate_answers",
    "exact_match_accuracy",
    "fallback_tokenize",
    "java_version",
    "normalize_answer",
    "ptb_tokenize",
    "pycocoevalcap_version",
    "sanitize_caption",
]
