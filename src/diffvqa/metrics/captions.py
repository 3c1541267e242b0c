"""Answer metrics for Medical-Diff-VQA: caption scores as papers compute them, and exact-match accuracy.

:func:`caption_scores` and :func:`evaluate_answers` give exactly what pycocoevalcap 1.2 gives when called the
standard way (corpus level, PTB tokenizer, BLEU-1..4, METEOR 1.5, ROUGE-L, CIDEr-D; SPICE off); how they run it
safely -- without Java, under a foreign locale, on a read-only install, against a hung METEOR -- is
:mod:`diffvqa.metrics.coco`. ``METEOR_nltk`` beside the jar's ``METEOR`` is :mod:`diffvqa.metrics.meteor_nltk`
(which METEOR compares with which papers: ``docs/metrics.md``).

pycocoevalcap is imported inside the functions that use it; importing this module is cheap and needs no Java.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from diffvqa.config import QUESTION_TYPES
from diffvqa.metrics.coco import METRIC_KEYS, empty_scores, java_version, score_subsets, tokenize

DIFFERENCE = "difference"
CLOSED_ANSWERS = ("yes", "no")
# Every caption score of metrics.json, in the order tables show them: NLTK's sentence METEOR right under the jar's
# corpus METEOR (papers report one or the other).
_AFTER_METEOR = METRIC_KEYS.index("METEOR") + 1
CAPTION_KEYS = (*METRIC_KEYS[:_AFTER_METEOR], "METEOR_nltk", *METRIC_KEYS[_AFTER_METEOR:])


# ------------------------------------------------------------------------------------------------------------
# Caption scores


def _as_reference_lists(references: Sequence[str] | Sequence[Sequence[str]], n: int) -> list[list[str]]:
    if isinstance(references, str) or len(references) != n:
        got = "a string" if isinstance(references, str) else f"{len(references)} references"
        raise ValueError(f"need one reference (or list of references) per prediction: {n} predictions, {got}")
    out = []
    for i, ref in enumerate(references):
        refs = [ref] if isinstance(ref, str) else list(ref)
        if not refs or not all(isinstance(r, str) for r in refs):
            raise ValueError(f"reference {i} must be a string or a non-empty list of strings, got {ref!r}")
        out.append(refs)
    return out


def _check_predictions(predictions: Sequence[str]) -> None:
    if isinstance(predictions, str):
        raise ValueError("predictions must be a sequence of strings, got one string")
    for i, p in enumerate(predictions):
        if not isinstance(p, str):
            raise ValueError(f"prediction {i} must be a string (use '' for no answer), got {p!r}")


def caption_scores(
    predictions: Sequence[str],
    references: Sequence[str] | Sequence[Sequence[str]],
    *,
    meteor_timeout: float = 300.0,
) -> dict[str, Any]:
    """Corpus-level BLEU-1..4, METEOR, ROUGE-L and CIDEr-D exactly as pycocoevalcap computes them.

    Args:
        predictions: one generated answer per row; ``""`` is allowed (it scores zero).
        references: per row one reference string or a non-empty list of them.
        meteor_timeout: seconds METEOR may take from its start; past it the process is killed and METEOR is
            ``None`` with a reason under ``unavailable``.

    Returns:
        ``{"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr"}`` (float or ``None``),
        ``"n"`` (rows), ``"n_empty_predictions"``, ``"n_distinct_predictions"`` (after trimming white space),
        ``"unavailable"`` (``{what: why}``, empty when all ran) and
        ``"implementation"`` (``pycocoevalcap`` version, ``tokenizer`` ``"ptb"`` or ``"fallback"``, ``java``
        version or ``None``, ``comparable_with_papers``: true when the PTB tokenizer was used, so every number
        present is computed as in papers). ``CIDEr`` is pycocoevalcap's ``Cider()``, i.e. CIDEr-D, with its
        IDF taken from these references.
    """
    _check_predictions(predictions)
    if len(predictions) == 0:
        raise ValueError("caption_scores needs at least one prediction")
    refs = _as_reference_lists(references, len(predictions))
    results, implementation = score_subsets(predictions, refs, {"all": list(range(len(predictions)))}, meteor_timeout)
    return {**results["all"], "implementation": implementation}


# ------------------------------------------------------------------------------------------------------------
# Exact match and the full report


def normalize_answer(text: str) -> str:
    """Lower-case, strip surrounding whitespace and one trailing period: ``" Yes. "`` -> ``"yes"``."""
    text = text.strip().lower()
    return text[:-1].rstrip() if text.endswith(".") else text


def _check_rows(predictions, references, question_types) -> None:
    _check_predictions(predictions)
    n = len(predictions)
    if len(references) != n or len(question_types) != n:
        raise ValueError(
            f"predictions, references and question_types must have one entry per row: got {n}, "
            f"{len(references)} and {len(question_types)}"
        )
    for i, (ref, qtype) in enumerate(zip(references, question_types, strict=True)):
        if not isinstance(ref, str):
            raise ValueError(f"reference {i} must be a string, got {ref!r}")
        if not isinstance(qtype, str) or not qtype:
            raise ValueError(f"question_type {i} must be one of {QUESTION_TYPES}, got {qtype!r}")


def _ordered_types(question_types: Sequence[str]) -> list[str]:
    present = set(question_types)
    return [t for t in QUESTION_TYPES if t in present] + sorted(present - set(QUESTION_TYPES))


def exact_match_accuracy(
    predictions: Sequence[str], references: Sequence[str], question_types: Sequence[str]
) -> dict[str, Any]:
    """Exact-match accuracy of the non-difference rows (``difference`` rows are ignored).

    Answers are compared after :func:`normalize_answer`. A row is closed when its normalised reference is
    ``yes`` or ``no``, open otherwise.

    Returns:
        ``accuracy_closed``, ``accuracy_open`` (``None`` when there are no such rows), ``n_closed``,
        ``n_open`` and ``accuracy_per_type``: ``{question_type: {"accuracy": float, "n": int}}``.
    """
    _check_rows(predictions, references, question_types)
    hits: dict[str, list[bool]] = {"closed": [], "open": []}
    per_type: dict[str, list[bool]] = {t: [] for t in _ordered_types(question_types) if t != DIFFERENCE}
    for pred, ref, qtype in zip(predictions, references, question_types, strict=True):
        if qtype == DIFFERENCE:
            continue
        ref = normalize_answer(ref)
        hit = normalize_answer(pred) == ref
        hits["closed" if ref in CLOSED_ANSWERS else "open"].append(hit)
        per_type[qtype].append(hit)

    def mean(xs: list[bool]) -> float | None:
        return sum(xs) / len(xs) if xs else None

    return {
        "accuracy_closed": mean(hits["closed"]),
        "accuracy_open": mean(hits["open"]),
        "n_closed": len(hits["closed"]),
        "n_open": len(hits["open"]),
        "accuracy_per_type": {t: {"accuracy": mean(h), "n": len(h)} for t, h in per_type.items()},
    }


def evaluate_answers(
    predictions: Sequence[str],
    references: Sequence[str],
    question_types: Sequence[str],
    *,
    meteor_timeout: float = 300.0,
) -> dict[str, Any]:
    """The body of ``metrics.json``: the papers' protocol plus per-type detail.

    ``difference`` is what recent papers report (caption scores on difference rows only); ``all`` scores every
    row; ``per_type`` scores each question type alone. Each is a :func:`caption_scores` dict without
    ``implementation`` (given once at the top). CIDEr-D's IDF comes from the references being scored, so the
    difference-only CIDEr differs from the difference rows' share of the all-type CIDEr, and ``per_type``
    CIDEr values are each relative to their own type: report ``difference`` and ``all`` side by side, never
    mix them. ``accuracy_closed``/``accuracy_open`` (with ``n_closed``, ``n_open``, ``accuracy_per_type``) are
    exact-match accuracies over the non-difference rows (:func:`exact_match_accuracy`).

    One PTBTokenizer run and one METEOR process serve all subsets.
    """
    accuracy = exact_match_accuracy(predictions, references, question_types)
    if len(predictions) == 0:
        raise ValueError("evaluate_answers needs at least one prediction")
    types = _ordered_types(question_types)
    subsets = {"all": list(range(len(predictions)))}
    subsets.update({f"type:{t}": [i for i, q in enumerate(question_types) if q == t] for t in types})
    results, implementation = score_subsets(predictions, [[r] for r in references], subsets, meteor_timeout)
    _add_meteor_nltk(results, subsets, predictions, references, implementation)
    difference = results.get(f"type:{DIFFERENCE}")
    return {
        DIFFERENCE: dict(difference) if difference is not None else empty_scores(),
        "all": results["all"],
        "per_type": {t: results[f"type:{t}"] for t in types},
        **accuracy,
        "implementation": implementation,
    }


def _add_meteor_nltk(results, subsets, predictions, references, implementation) -> None:
    """``METEOR_nltk`` (sentence-level NLTK METEOR, mean over rows) beside the jar's corpus ``METEOR`` in each
    subset: papers report one or the other (see :mod:`diffvqa.metrics.meteor_nltk`)."""
    from diffvqa.metrics.meteor_nltk import meteor_nltk_implementation, meteor_nltk_sentences

    sentences = meteor_nltk_sentences(predictions, references)
    for name, rows in subsets.items():
        results[name]["METEOR_nltk"] = sum(sentences[i] for i in rows) / len(rows) if rows else None
    implementation["METEOR_nltk"] = meteor_nltk_implementation()


def cider_per_answer(
    predictions: dict[str, Sequence[str]], references: Sequence[str]
) -> tuple[dict[str, list[float]], str]:
    """Per-answer CIDEr-D of one or more sets of predictions of the same questions -> ({name: scores}, tokenizer).

    Every set is scored against the same ``references`` with the IDF of those references — as the corpus score
    computes it, so each list's mean is that set's corpus CIDEr-D — which makes the sets comparable answer by
    answer (the paired intervals of :mod:`diffvqa.metrics.intervals`). One tokenizer run (PTB when Java runs it,
    else the fallback; the second item says which) and no METEOR: validation during training calls it often.
    """
    from pycocoevalcap.cider.cider import Cider

    n = len(references)
    for name, rows in predictions.items():
        _check_predictions(rows)
        if n == 0 or len(rows) != n:
            raise ValueError(f"cider_per_answer needs matching, non-empty lists ({name}: {len(rows)} vs {n})")
    names = list(predictions)
    captions = [c for name in names for c in predictions[name]]
    tokens, tokenizer, _ = tokenize([*captions, *references], java_version())
    refs = {i: [tokens[len(captions) + i]] for i in range(n)}
    scores = {}
    for k, name in enumerate(names):
        _, per_answer = Cider().compute_score(refs, {i: [tokens[k * n + i]] for i in range(n)})
        scores[name] = [float(x) for x in per_answer]
    return scores, tokenizer


def cider_score(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus CIDEr-D alone, as in :func:`caption_scores` but without starting METEOR (model selection
    during training validates often; METEOR's JVM start-up would dominate). PTB tokens when Java is present,
    the fallback tokenizer otherwise."""
    scores, _ = cider_per_answer({"predictions": predictions}, references)
    return sum(scores["predictions"]) / len(scores["predictions"])
