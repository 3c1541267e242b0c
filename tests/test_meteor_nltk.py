"""METEOR_nltk: NLTK's sentence METEOR, pinned on hand-computed pairs, with and without WordNet.

Hand computation (NLTK's defaults alpha 0.9, beta 3, gamma 0.5): with m matched unigrams, P = m/|hyp|,
R = m/|ref|, Fmean = P R / (0.9 P + 0.1 R), penalty = 0.5 (chunks/m)^3, score = (1 - penalty) Fmean.
"""

import pytest

from diffvqa.metrics import evaluate_answers, meteor_nltk
from diffvqa.metrics.meteor_nltk import _NoSynonyms, meteor_nltk_implementation, meteor_nltk_sentences

# (prediction, reference, hand-computed score)
PAIRS = [
    # 3 exact matches in one chunk: P = R = 1, penalty 0.5/27
    ("nothing has changed.", "Nothing has changed.", 1 - 0.5 / 27),
    # stem matches only (effusions~effusion, increased~increase): 2 matches, 1 chunk, penalty 0.5/8
    ("effusions increased", "effusion increase", 1 - 0.5 / 8),
    # 2 of 3 / 2 of 5: Fmean = (2/3)(2/5) / (0.9·2/3 + 0.1·2/5) = 0.41667, 1 chunk, penalty 0.0625
    ("left pleural effusion", "right pleural effusion is larger", (4 / 15) / 0.64 * (1 - 0.0625)),
    # swapped order: 2 matches in 2 chunks, penalty 0.5
    ("edema atelectasis", "atelectasis edema", 0.5),
    ("no match", "pneumothorax", 0.0),
    ("", "nothing has changed.", 0.0),
]


def test_hand_checked_pairs_without_wordnet():
    scores = meteor_nltk_sentences([p for p, _, _ in PAIRS], [r for _, r, _ in PAIRS], wordnet=_NoSynonyms())
    assert scores == pytest.approx([s for _, _, s in PAIRS], abs=1e-12)


class _Thesaurus:
    """A WordNet reader with one synonym pair, ``big`` ~ ``huge`` (words that are their own Porter stems: NLTK
    looks synonyms up after the stem stage, on stemmed words)."""

    class _Synset:
        def __init__(self, names):
            self._names = names

        def lemmas(self):
            return [type("Lemma", (), {"name": lambda self, n=n: n})() for n in self._names]

    def synsets(self, word):
        return [self._Synset(["big", "huge"])] if word in ("big", "huge") else []


def test_wordnet_synonyms_are_used_when_given():
    # "big" matches "huge" only through the synonym: 1 match of 1 / of 1, one chunk, penalty 0.5
    assert meteor_nltk_sentences(["big"], ["huge"], wordnet=_Thesaurus()) == [pytest.approx(0.5)]
    assert meteor_nltk_sentences(["big"], ["huge"], wordnet=_NoSynonyms()) == [0.0]


def test_default_reader_follows_what_is_installed(monkeypatch):
    monkeypatch.setattr(meteor_nltk, "_installed_wordnet", lambda: None)
    assert meteor_nltk_sentences(["big"], ["huge"]) == [0.0]
    assert meteor_nltk_implementation()["matching"].startswith("exact+stem (")
    monkeypatch.setattr(meteor_nltk, "_installed_wordnet", lambda: _Thesaurus())
    assert meteor_nltk_sentences(["big"], ["huge"]) == [pytest.approx(0.5)]
    assert meteor_nltk_implementation()["matching"] == "exact+stem+wordnet"


def test_installed_wordnet_missing_data_is_not_an_error(monkeypatch):
    class Missing:
        def synsets(self, word):
            raise LookupError("Resource wordnet not found.")

    import nltk.corpus

    monkeypatch.setattr(nltk.corpus, "wordnet", Missing())
    assert meteor_nltk._installed_wordnet() is None
    assert meteor_nltk_sentences(["effusions"], ["effusion"]) == [pytest.approx(0.5)]


def test_several_references_take_the_best():
    assert meteor_nltk_sentences(["b a"], [["x", "a b"]], wordnet=_NoSynonyms()) == [pytest.approx(0.5)]


def test_bad_input_raises():
    with pytest.raises(ValueError, match="one reference per prediction"):
        meteor_nltk_sentences(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="row 0"):
        meteor_nltk_sentences([None], ["a"])


def test_metrics_json_carries_both_meteors(monkeypatch):
    monkeypatch.setattr(meteor_nltk, "_installed_wordnet", lambda: None)
    preds = [p for p, _, _ in PAIRS] + ["yes"]
    refs = [r for _, r, _ in PAIRS] + ["no"]
    types = ["difference"] * len(PAIRS) + ["presence"]
    out = evaluate_answers(preds, refs, types)
    expected = sum(s for _, _, s in PAIRS) / len(PAIRS)
    assert out["difference"]["METEOR_nltk"] == pytest.approx(expected)
    assert out["all"]["METEOR_nltk"] == pytest.approx(expected * len(PAIRS) / (len(PAIRS) + 1))
    assert out["per_type"]["presence"]["METEOR_nltk"] == 0.0
    assert "METEOR" in out["difference"]  # the jar's corpus METEOR stays (None without Java)
    assert out["implementation"]["METEOR_nltk"]["matching"].startswith("exact+stem (")
