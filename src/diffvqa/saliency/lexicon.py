"""The lexicon: Medical-Diff-VQA's 30 official finding names, their other wordings, and finding them in text.

``FINDINGS`` (:mod:`diffvqa.data.vocabulary`), ``SYNONYMS`` (other surface forms -> official name) and
``NOT_FINDINGS`` (phrases that contain a synonym but name something else) define the surface forms. On top of them:

* :func:`find_findings`: every finding named in a text, as character spans; overlaps resolve to the longest form.
* :func:`lexicon_keyword` (the default keyword source of :mod:`diffvqa.saliency.keywords`): the first finding
  named in the answer, else the first named in the question, else ``""``.
* :func:`keyword_spans`: where a keyword is spelled in an answer, so that the Grad-CAM can score just the answer
  tokens that spell it.
* :func:`normalise_keyword`: a free phrase (an LLM reply) mapped to its official name when it names one.

Pure Python (``re``), torch-free.
"""

from __future__ import annotations

import functools
import re

from diffvqa.data.vocabulary import FINDINGS

# Other wordings of the official names that a question, a free-text answer or an LLM reply may use. Kept
# conservative: plurals, British spellings, and unambiguous clinical paraphrases. Ambiguous words
# ("congestion", "tortuous aorta", "calcified" -- also a type answer) are deliberately absent.
SYNONYMS: dict[str, str] = {
    # pleural effusion
    "pleural effusions": "pleural effusion",
    "effusion": "pleural effusion",
    "effusions": "pleural effusion",
    "pleural fluid": "pleural effusion",
    # atelectasis
    "atelectases": "atelectasis",
    "atelectatic": "atelectasis",
    # cardiomegaly
    "cardiac enlargement": "cardiomegaly",
    "enlarged heart": "cardiomegaly",
    "enlarged heart size": "cardiomegaly",
    "heart enlargement": "cardiomegaly",
    "enlargement of the heart": "cardiomegaly",
    "heart size enlarged": "cardiomegaly",
    "heart size is enlarged": "cardiomegaly",
    "heart is enlarged": "cardiomegaly",
    # enlargement of the cardiac silhouette
    "enlarged cardiac silhouette": "enlargement of the cardiac silhouette",
    "enlargement of cardiac silhouette": "enlargement of the cardiac silhouette",
    "cardiac silhouette enlargement": "enlargement of the cardiac silhouette",
    "cardiac silhouette is enlarged": "enlargement of the cardiac silhouette",
    # edema
    "pulmonary edema": "edema",
    "oedema": "edema",
    "pulmonary oedema": "edema",
    # hernia
    "hernias": "hernia",
    "hiatal hernia": "hernia",
    "hiatus hernia": "hernia",
    # vascular congestion
    "pulmonary vascular congestion": "vascular congestion",
    "pulmonary venous congestion": "vascular congestion",
    "venous congestion": "vascular congestion",
    "vascular engorgement": "vascular congestion",
    "pulmonary vascular engorgement": "vascular congestion",
    # hilar congestion
    "hilar vascular congestion": "hilar congestion",
    "hilar engorgement": "hilar congestion",
    # pneumothorax
    "pneumothoraces": "pneumothorax",
    "pneumothoraxes": "pneumothorax",
    # heart failure
    "congestive heart failure": "heart failure",
    "cardiac failure": "heart failure",
    "chf": "heart failure",
    # lung opacity
    "lung opacities": "lung opacity",
    "opacity": "lung opacity",
    "opacities": "lung opacity",
    "pulmonary opacity": "lung opacity",
    "pulmonary opacities": "lung opacity",
    "airspace opacity": "lung opacity",
    "airspace opacities": "lung opacity",
    "air space opacity": "lung opacity",
    "air space opacities": "lung opacity",
    "opacification": "lung opacity",
    # pneumonia
    "pneumonias": "pneumonia",
    "bronchopneumonia": "pneumonia",
    # tortuosity of the descending aorta
    "tortuosity of descending aorta": "tortuosity of the descending aorta",
    "tortuous descending aorta": "tortuosity of the descending aorta",
    "descending aorta tortuosity": "tortuosity of the descending aorta",
    "descending aortic tortuosity": "tortuosity of the descending aorta",
    # scoliosis
    "dextroscoliosis": "scoliosis",
    "levoscoliosis": "scoliosis",
    # gastric distention
    "gastric distension": "gastric distention",
    "stomach distention": "gastric distention",
    "stomach distension": "gastric distention",
    "distended stomach": "gastric distention",
    "gastric dilatation": "gastric distention",
    "gastric dilation": "gastric distention",
    # hypoxemia
    "hypoxaemia": "hypoxemia",
    # hematoma
    "hematomas": "hematoma",
    "haematoma": "hematoma",
    "haematomas": "hematoma",
    # tortuosity of the thoracic aorta
    "tortuosity of thoracic aorta": "tortuosity of the thoracic aorta",
    "tortuous thoracic aorta": "tortuosity of the thoracic aorta",
    "thoracic aorta tortuosity": "tortuosity of the thoracic aorta",
    "thoracic aortic tortuosity": "tortuosity of the thoracic aorta",
    # contusion
    "contusions": "contusion",
    # emphysema
    "emphysematous": "emphysema",
    # granuloma
    "granulomas": "granuloma",
    "granulomata": "granuloma",
    # calcification
    "calcifications": "calcification",
    # pleural thickening
    "thickened pleura": "pleural thickening",
    "thickening of the pleura": "pleural thickening",
    # thymoma
    "thymomas": "thymoma",
    # blunting of the costophrenic angle
    "blunting of the costophrenic angles": "blunting of the costophrenic angle",
    "blunting of costophrenic angle": "blunting of the costophrenic angle",
    "blunting of costophrenic angles": "blunting of the costophrenic angle",
    "costophrenic angle blunting": "blunting of the costophrenic angle",
    "blunted costophrenic angle": "blunting of the costophrenic angle",
    "blunted costophrenic angles": "blunting of the costophrenic angle",
    "costophrenic blunting": "blunting of the costophrenic angle",
    # consolidation
    "consolidations": "consolidation",
    # fracture
    "fractures": "fracture",
    "rib fracture": "fracture",
    "rib fractures": "fracture",
    "fractured rib": "fracture",
    "fractured ribs": "fracture",
    # air collection
    "air collections": "air collection",
    "collection of air": "air collection",
}

# Phrases that contain a synonym but name something else: they win the overlap (longest match) and then map to
# no finding, so "pericardial effusion" is not read as a pleural effusion.
NOT_FINDINGS: tuple[str, ...] = ("pericardial effusion", "pericardial effusions")


def normalise_text(text: str) -> str:
    """Lower-case; whitespace and hyphens collapsed to one space (the key of a surface form)."""
    return " ".join(re.split(r"[\s\-]+", text.strip().lower()))


def _phrase_pattern(phrase: str) -> str:
    return r"[\s\-]+".join(re.escape(word) for word in normalise_text(phrase).split(" "))


# surface form (normalised) -> official name, or "" for NOT_FINDINGS
_FORMS: dict[str, str] = {
    **{normalise_text(name): name for name in FINDINGS},
    **{normalise_text(form): name for form, name in SYNONYMS.items()},
    **{normalise_text(form): "" for form in NOT_FINDINGS},
}
assert all(name in FINDINGS for name in SYNONYMS.values()), "a synonym maps to a non-official name"

_EDGE_BEFORE = r"(?<![A-Za-z0-9])"
_EDGE_AFTER = r"(?![A-Za-z0-9])"
# A zero-width lookahead at every position, so finditer reports overlapping candidates; at one position the
# alternation tries longer forms first, so each start gets its longest form.
_FORMS_RE = re.compile(
    r"(?="
    + _EDGE_BEFORE
    + "("
    + "|".join(_phrase_pattern(form) for form in sorted(_FORMS, key=len, reverse=True))
    + ")"
    + _EDGE_AFTER
    + ")",
    re.IGNORECASE,
)


@functools.lru_cache(maxsize=65536)
def _resolved_matches(text: str) -> tuple[tuple[int, int, str], ...]:
    """Non-overlapping ``(start, end, official name or "")`` in text order; overlaps go to the longest."""
    candidates = []
    for match in _FORMS_RE.finditer(text):
        start, end = match.span(1)
        candidates.append((start, end, _FORMS[normalise_text(match.group(1))]))
    # drop every candidate overlapped by a strictly longer one, then any left overlapping an earlier keeper
    longest = [
        (s, e, name)
        for s, e, name in candidates
        if not any(s2 < e and s < e2 and e2 - s2 > e - s for s2, e2, _ in candidates)
    ]
    kept: list[tuple[int, int, str]] = []
    for s, e, name in sorted(longest):
        if not kept or s >= kept[-1][1]:
            kept.append((s, e, name))
    return tuple(kept)


def find_findings(text: str) -> list[tuple[str, int, int]]:
    """Every finding named in ``text``, as ``(official name, start, end)`` character spans in text order."""
    return [(name, s, e) for s, e, name in _resolved_matches(text) if name]


def lexicon_keyword(answer: str, question: str = "") -> str:
    """The first finding named in the answer, else the first named in the question, else ``""``.

    >>> lexicon_keyword("the main image is missing the findings of edema, and effusions than the reference.")
    'edema'
    >>> lexicon_keyword("left side", "is the atelectasis located on the left side or right side?")
    'atelectasis'
    """
    for text in (answer, question):
        found = find_findings(text)
        if found:
            return found[0][0]
    return ""


def keyword_spans(answer: str, keyword: str) -> list[tuple[int, int]]:
    """Character spans ``[start, end)`` of ``answer`` where ``keyword`` is spelled, first occurrence first.

    A lexicon finding matches its official name and every synonym (as resolved in the answer, so "vascular
    congestion" is not found inside "hilar vascular congestion"); any other keyword (a free LLM phrase)
    matches literally, case-insensitive, on word boundaries. ``""`` or a keyword absent from the answer gives
    ``[]``.
    """
    if not keyword.strip():
        return []
    official = _FORMS.get(normalise_text(keyword))
    if official:
        return [(s, e) for name, s, e in find_findings(answer) if name == official]
    pattern = re.compile(_EDGE_BEFORE + _phrase_pattern(keyword) + _EDGE_AFTER, re.IGNORECASE)
    return [m.span() for m in pattern.finditer(answer)]


def normalise_keyword(phrase: str) -> str:
    """A phrase mapped to its official finding name when it names one (exactly, by a synonym, or containing
    one: "small left pleural effusions" -> "pleural effusion"); otherwise the phrase lower-cased and
    space-collapsed."""
    normalised = normalise_text(phrase)
    if normalised in _FORMS and _FORMS[normalised]:
        return _FORMS[normalised]
    found = find_findings(normalised)
    return found[0][0] if found else normalised
