"""Sentence-level METEOR as NLTK computes it (``nltk.translate.meteor_score``), the other METEOR in the literature.

Two METEORs are published for Medical-Diff-VQA and they are not comparable (the papers do not say which they
used; the magnitudes tell them apart):

- the pycocoevalcap jar (METEOR 1.5, Java), corpus level: EKAID, PLURAL and VED's .34-.39 on the difference
  questions read like it; ``metrics.json`` → ``METEOR``;
- NLTK's ``meteor_score`` per sentence, averaged over sentences (what Hugging Face ``evaluate``'s "meteor"
  computes): it reads far higher on the same answers, like the seed paper's .651; ``metrics.json`` →
  ``METEOR_nltk``.

NLTK matches words exactly, then by Porter stem, then by WordNet synonym. The WordNet data is a separate download
(``nltk.download("wordnet")``) that machines without internet do not have; without it NLTK raises ``LookupError``.
Here WordNet is used when it is installed and otherwise replaced by a reader that knows no synonyms, so the score
is exact + stem matching; :func:`meteor_nltk_implementation` says which. Tokens are the lower-cased,
whitespace-separated words (NLTK's own ``word_tokenize`` needs the ``punkt`` download too); parameters are NLTK's
defaults (alpha 0.9, beta 3, gamma 0.5).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class _NoSynonyms:
    """A stand-in for ``nltk.corpus.wordnet`` that knows no word: only exact and stem matches remain."""

    @staticmethod
    def synsets(word: str) -> list:
        return []


def _installed_wordnet():
    """NLTK's WordNet reader when its data is installed, else None."""
    from nltk.corpus import wordnet

    try:
        wordnet.synsets("effusion")  # the lazy reader raises LookupError here when the data is missing
    except LookupError:
        return None
    return wordnet


def meteor_nltk_implementation(wordnet: Any = None) -> dict[str, Any]:
    """How :func:`meteor_nltk_sentences` scores on this machine (for ``metrics.json``)."""
    import nltk

    have_wordnet = wordnet is not None or _installed_wordnet() is not None
    return {
        "nltk": nltk.__version__,
        "matching": "exact+stem+wordnet" if have_wordnet else "exact+stem (WordNet data not installed)",
        "tokens": "lower-cased, whitespace-separated",
        "aggregate": "mean of sentence scores",
        "parameters": {"alpha": 0.9, "beta": 3.0, "gamma": 0.5},
    }


def meteor_nltk_sentences(
    predictions: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]], wordnet: Any = None
) -> list[float]:
    """NLTK ``meteor_score`` of each prediction against its reference(s) (best reference when several).

    Args:
        predictions: one answer per row ("" scores 0).
        references: per row a reference string or a list of them.
        wordnet: a WordNet reader (``synsets(word)``); default: NLTK's when its data is installed, else none
            (exact + stem matching).
    """
    from nltk.translate.meteor_score import meteor_score

    if isinstance(predictions, str) or isinstance(references, str) or len(predictions) != len(references):
        raise ValueError(
            f"meteor_nltk: need one reference per prediction (got {type(predictions).__name__} of "
            f"{len(predictions)} and {type(references).__name__} of {len(references)})"
        )
    if wordnet is None:
        wordnet = _installed_wordnet() or _NoSynonyms()
    scores = []
    for i, (prediction, reference) in enumerate(zip(predictions, references, strict=True)):
        refs = [reference] if isinstance(reference, str) else list(reference)
        if not isinstance(prediction, str) or not refs or not all(isinstance(r, str) for r in refs):
            raise ValueError(
                f"meteor_nltk: row {i} needs a string prediction and reference(s), got {prediction!r} / {reference!r}"
            )
        scores.append(float(meteor_score([r.split() for r in refs], prediction.split(), wordnet=wordnet)))
    return scores


def meteor_nltk(
    predictions: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]], wordnet: Any = None
) -> float | None:
    """The mean of :func:`meteor_nltk_sentences` (None for no rows)."""
    scores = meteor_nltk_sentences(predictions, references, wordnet)
    return sum(scores) / len(scores) if scores else None
