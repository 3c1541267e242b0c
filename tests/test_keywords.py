"""Keywords: the lexicon on every template of docs/data.md, the LLM backend against a fake loopback server, the CLI."""

from __future__ import annotations

import csv
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.fake_llm_server import FakeLLM

from diffvqa.data.vocabulary import FINDINGS
from diffvqa.saliency import llm
from diffvqa.saliency.keywords import keywords_main, make_keyword_fn, precompute_keywords
from diffvqa.saliency.lexicon import SYNONYMS, keyword_spans, lexicon_keyword, normalise_keyword
from diffvqa.saliency.llm import LLMKeywords, parse_reply

# The list of docs/data.md, typed again here so that FINDINGS is checked against the document, not against itself.
DATA_MD_FINDINGS = (
    "pleural effusion, atelectasis, cardiomegaly, enlargement of the cardiac silhouette, edema, hernia, "
    "vascular congestion, hilar congestion, pneumothorax, heart failure, lung opacity, pneumonia, tortuosity of "
    "the descending aorta, scoliosis, gastric distention, hypoxemia, hypertensive heart disease, hematoma, "
    "tortuosity of the thoracic aorta, contusion, emphysema, granuloma, calcification, pleural thickening, "
    "thymoma, blunting of the costophrenic angle, consolidation, fracture, pneumomediastinum, air collection"
).split(", ")

VERBATIM_DIFFERENCE = (
    "the main image has an additional finding of pneumothorax than the reference image. the main image is "
    "missing the findings of fracture, lung opacity, and pleural effusion than the reference image. "
)


def test_findings_are_data_md_list_in_order():
    assert FINDINGS == tuple(DATA_MD_FINDINGS)
    assert len(FINDINGS) == 30


def test_synonyms_map_to_official_names():
    assert set(SYNONYMS.values()) <= set(FINDINGS)
    assert not set(SYNONYMS) & set(FINDINGS)


@pytest.mark.parametrize("name", DATA_MD_FINDINGS)
def test_every_official_name_is_its_own_keyword(name):
    assert lexicon_keyword(name) == name
    assert lexicon_keyword(f"the main image has an additional finding of {name} than the reference image. ") == name
    assert lexicon_keyword("yes", f"is there {name}?") == name


# (question type, question, answer, expected keyword) -- expectations written by hand.
TEMPLATE_TABLE = [
    # abnormality
    ("abnormality", "what abnormalities are seen in this image?",
     "pleural effusion, pneumothorax, atelectasis, lung opacity", "pleural effusion"),
    ("abnormality", "what abnormalities are seen in the soft tissues?", "atelectasis", "atelectasis"),
    ("abnormality", "what abnormalities are seen in the upper abdomen?", "gastric distention", "gastric distention"),
    ("abnormality", "what abnormalities are seen in this image?",
     "enlargement of the cardiac silhouette, cardiomegaly", "enlargement of the cardiac silhouette"),
    ("abnormality", "what abnormalities are seen in this image?",
     "tortuosity of the thoracic aorta, hilar congestion", "tortuosity of the thoracic aorta"),
    ("abnormality", "what abnormalities are seen in this image?", "hilar congestion, edema", "hilar congestion"),
    ("abnormality", "is there evidence of any abnormalities in this image?", "yes", ""),
    ("abnormality", "is there evidence of any abnormalities in this image?", "no", ""),
    # presence
    ("presence", "is there evidence of pneumothorax in this image?", "no", "pneumothorax"),
    ("presence", "is there evidence of tortuosity of the descending aorta in this image?", "yes",
     "tortuosity of the descending aorta"),
    ("presence", "is there hilar congestion?", "yes", "hilar congestion"),
    ("presence", "is there vascular congestion?", "no", "vascular congestion"),
    ("presence", "is there pleural thickening in the left lung base?", "yes", "pleural thickening"),
    ("presence", "is there blunting of the costophrenic angle in the right lung base?", "no",
     "blunting of the costophrenic angle"),
    ("presence", "is there lung opacity in the mid to lower lung?", "yes", "lung opacity"),
    ("presence", "is the pleural effusion bilateral?", "yes", "pleural effusion"),
    # view
    ("view", "which view is this image taken?", "PA view", ""),
    ("view", "which view is this image taken?", "AP view", ""),
    ("view", "is this PA view?", "yes", ""),
    ("view", "is this AP view?", "no", ""),
    # location
    ("location", "where in the image is the lung opacity located?", "left lung area and right lung area",
     "lung opacity"),
    ("location", "where is the atelectasis?", "the left lung base", "atelectasis"),
    ("location", "where is the pneumothorax?", "left apical area", "pneumothorax"),
    ("location", "where in the image is the fracture located?", "rib", "fracture"),
    ("location", "where is the consolidation?", "retrocardiac", "consolidation"),
    ("location", "is the atelectasis located on the left side or right side?", "left side", "atelectasis"),
    ("location", "is the pleural effusion located on the left side or right side?", "right side",
     "pleural effusion"),
    # level
    ("level", "what level is the pleural effusion?", "small", "pleural effusion"),
    ("level", "what level is the edema?", "mild to moderate", "edema"),
    ("level", "what level is the enlargement of the cardiac silhouette?", "moderate",
     "enlargement of the cardiac silhouette"),
    ("level", "what level is the pneumothorax?", "moderate to large", "pneumothorax"),
    # type
    ("type", "what type is the lung opacity?", "patchy", "lung opacity"),
    ("type", "what type is the pleural effusion?", "layering", "pleural effusion"),
    ("type", "what type is the atelectasis?", "plate-like", "atelectasis"),
    ("type", "what type is the granuloma?", "calcified", "granuloma"),  # not "calcification"
    ("type", "what type is the edema?", "interstitial", "edema"),
    ("type", "what type is the lung opacity?", "ground-glass", "lung opacity"),
    # difference
    ("difference", "what has changed compared to the reference image?", "nothing has changed.", ""),
    ("difference", "what has changed in the right lung base area?", "nothing has changed.", ""),
    ("difference", "what has changed compared to the reference image?", VERBATIM_DIFFERENCE, "pneumothorax"),
    ("difference", "what has changed compared to the reference image?",
     "the level of pleural effusion has changed from small to moderate. ", "pleural effusion"),
    ("difference", "what has changed compared to the reference image?",
     "the level of edema has changed from mild to severe. the main image has an additional finding of "
     "pneumonia than the reference image. ", "edema"),
    ("difference", "what has changed compared to the reference image?",
     "the main image has additional findings of hilar congestion, vascular congestion, and heart failure "
     "than the reference image. ", "hilar congestion"),
    ("difference", "what has changed compared to the reference image?",
     "the main image is missing the finding of tortuosity of the descending aorta than the reference image. ",
     "tortuosity of the descending aorta"),
    ("difference", "what has changed compared to the reference image?",
     "the main image is missing the findings of pleural thickening, and pleural effusion than the reference "
     "image. ", "pleural thickening"),
    ("difference", "what has changed compared to the reference image?",
     "the main image has additional findings of hypertensive heart disease, and heart failure than the "
     "reference image. ", "hypertensive heart disease"),
    ("difference", "what has changed in the left lung area?",
     "the main image has an additional finding of lung opacity than the reference image. ", "lung opacity"),
]  # fmt: skip


@pytest.mark.parametrize(("qtype", "question", "answer", "expected"), TEMPLATE_TABLE)
def test_lexicon_on_templates(qtype, question, answer, expected):
    assert lexicon_keyword(answer, question) == expected


def test_table_covers_all_question_types():
    assert {row[0] for row in TEMPLATE_TABLE} == {
        "abnormality", "presence", "view", "location", "level", "type", "difference"
    }  # fmt: skip


SYNONYM_TABLE = [
    ("Pleural Effusions.", "pleural effusion"),
    ("small bilateral effusions", "pleural effusion"),
    ("PLEURAL   EFFUSION ", "pleural effusion"),
    ("enlarged cardiac silhouette", "enlargement of the cardiac silhouette"),
    ("bilateral pneumothoraces", "pneumothorax"),
    ("bibasilar opacities", "lung opacity"),
    ("lung opacities", "lung opacity"),
    ("opacity", "lung opacity"),
    ("pulmonary vascular congestion", "vascular congestion"),
    ("hilar vascular congestion", "hilar congestion"),
    ("mild pulmonary edema", "edema"),
    ("left rib fractures", "fracture"),
    ("costophrenic angle blunting", "blunting of the costophrenic angle"),
    ("heart size enlarged", "cardiomegaly"),
    ("hiatal hernia", "hernia"),
    ("congestive heart failure", "heart failure"),
    ("tortuous descending aorta", "tortuosity of the descending aorta"),
    ("calcifications", "calcification"),
    ("bronchopneumonia", "pneumonia"),
    ("pericardial effusion with edema", "edema"),  # a pericardial effusion is not a pleural one
    ("pericardial effusion", ""),
    ("edematous", ""),  # word boundaries: "edema" is not inside "edematous"
    ("calcified", ""),  # a type answer, not a finding
    ("the mediastinum", ""),
]


@pytest.mark.parametrize(("answer", "expected"), SYNONYM_TABLE)
def test_lexicon_synonyms_and_boundaries(answer, expected):
    assert lexicon_keyword(answer) == expected


@pytest.mark.parametrize("answer", ["", "yes", "no", "PA view", "left side", "small", "patchy", "nothing has changed."])
def test_no_keyword(answer):
    assert lexicon_keyword(answer) == ""
    assert lexicon_keyword(answer, "what abnormalities are seen in the soft tissues?") == ""


def test_answer_has_priority_over_question():
    assert lexicon_keyword("atelectasis", "is there pleural effusion?") == "atelectasis"
    assert lexicon_keyword("no", "is there pleural effusion?") == "pleural effusion"


def test_keyword_spans():
    start = VERBATIM_DIFFERENCE.index("pneumothorax")
    assert keyword_spans(VERBATIM_DIFFERENCE, "pneumothorax") == [(start, start + len("pneumothorax"))]
    text = "small effusions and a larger pleural effusion."
    assert keyword_spans(text, "pleural effusion") == [(6, 15), (29, 45)]
    assert keyword_spans(text, "effusion") == [(6, 15), (29, 45)]  # a synonym given as the keyword
    assert keyword_spans("hilar vascular congestion", "vascular congestion") == []  # inside a longer name
    assert keyword_spans("hilar vascular congestion", "hilar congestion") == [(0, 25)]
    assert keyword_spans("a small Nodule.", "nodule") == [(8, 14)]  # a free phrase: literal
    assert keyword_spans("yes", "pleural effusion") == []
    assert keyword_spans(VERBATIM_DIFFERENCE, "") == []


def test_normalise_keyword():
    assert normalise_keyword("Pleural Effusions") == "pleural effusion"
    assert normalise_keyword("small left pleural effusion") == "pleural effusion"
    assert normalise_keyword("Left  basal nodule") == "left basal nodule"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('"Pleural effusions."', "pleural effusion"),
        ("Keyword: atelectasis", "atelectasis"),
        ("  pneumothorax\n", "pneumothorax"),
        ("None.", ""),
        ("new right lower lobe nodule", "new right lower lobe nodule"),
    ],
)
def test_parse_reply(content, expected):
    body = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
    assert parse_reply(body) == expected


@pytest.mark.parametrize(
    "body",
    [b"not json", b'{"choices": []}', b'{"choices": [{"message": {"content": 3}}]}',
     json.dumps({"choices": [{"message": {"content": "the answer is: 1) effusion"}}]}).encode()],
)  # fmt: skip
def test_parse_reply_rejects(body):
    with pytest.raises(llm.BadReply):
        parse_reply(body)


def test_module_does_not_import_torch():
    code = "import sys, diffvqa.saliency.keywords; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# ----------------------------------------------------------------------------------------------------------
# the LLM backend against a fake server on loopback

DIFF_PNEUMOTHORAX = "the main image has an additional finding of pneumothorax than the reference image. "
DIFF_EFFUSION = "the main image has an additional finding of pleural effusion than the reference image. "


@pytest.fixture
def server():
    with FakeLLM() as fake:
        yield fake


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_llm_normal_reply_is_normalised(server):
    backend = LLMKeywords(server.base_url, "llama3:70b", timeout=5)
    assert backend(DIFF_EFFUSION) == "pleural effusion"  # the fake says "Pleural effusions."
    assert backend.stats == {"llm": 1}
    assert server.requests == 1
    request = server.bodies[0]
    assert request["model"] == "llama3:70b" and request["temperature"] == 0
    assert [m["role"] for m in request["messages"]] == ["system", "user"]
    assert DIFF_EFFUSION.strip() in request["messages"][1]["content"]
    assert "1 asked" in backend.report()


def test_llm_none_falls_back_to_the_question(server):
    server.reply = "none"
    backend = LLMKeywords(server.base_url, "m", timeout=5)
    assert backend("yes", "is there pneumothorax?") == "pneumothorax"
    assert backend("yes") == ""
    assert backend.stats == {"llm": 1, "cache_hit": 1}
    assert backend.cache == {"yes": ""}


@pytest.mark.parametrize(
    ("mode", "reason", "requests"),
    [
        ("slow", "timeout", 2),  # one retry
        ("error500", "http_error", 2),  # 5xx retried once
        ("error404", "http_error", 1),  # 4xx not retried
        ("not_json", "bad_reply", 1),
        ("no_choices", "bad_reply", 1),
        ("long", "bad_reply", 1),
    ],
)
def test_llm_failures_fall_back_to_the_lexicon(mode, reason, requests, tmp_path):
    with FakeLLM(mode, delay=1.5) as fake:
        cache = tmp_path / "kw.json"
        backend = LLMKeywords(fake.base_url, "m", timeout=0.3, cache_path=cache)
        began = time.monotonic()
        assert backend(DIFF_PNEUMOTHORAX, "what has changed compared to the reference image?") == "pneumothorax"
        assert time.monotonic() - began < 1.4  # bounded: (1 + retries) x timeout, not the server's delay
        assert backend.stats == {reason: 1}
        assert fake.requests == requests
        assert reason in backend.report() and "fell back" in backend.report()
        backend.save()
        assert backend.cache == {} and not cache.exists()  # failures are not cached


def test_llm_connection_refused(tmp_path):
    backend = LLMKeywords(f"http://127.0.0.1:{_closed_port()}/v1", "m", timeout=1, max_failures=2)
    answers = [f"the main image is missing the finding of {name} than the reference image. " for name in FINDINGS[:4]]
    assert [backend(a) for a in answers] == list(FINDINGS[:4])
    # two failures in a row take the server as down: the rest is not asked
    assert backend.stats == {"connection_error": 2, "llm_disabled": 2}
    assert backend.requests == 4  # two calls, each retried once


def test_llm_cache_persists_across_instances(server, tmp_path):
    cache = tmp_path / "sub" / "keywords.json"
    with LLMKeywords(server.base_url, "m", timeout=5, cache_path=cache) as first:
        assert first(DIFF_EFFUSION) == "pleural effusion"
        assert first("small left pleural effusion") == "pleural effusion"
    assert server.requests == 2
    assert json.loads(cache.read_text()) == {
        DIFF_EFFUSION.strip(): "pleural effusion",
        "small left pleural effusion": "pleural effusion",
    }
    assert [p.name for p in cache.parent.iterdir()] == ["keywords.json"]  # no temp file left behind

    second = LLMKeywords(server.base_url, "m", timeout=5, cache_path=cache)
    assert second(DIFF_EFFUSION) == "pleural effusion"
    assert second(DIFF_EFFUSION.strip()) == "pleural effusion"  # keyed with whitespace collapsed
    assert second("small left pleural effusion") == "pleural effusion"
    assert server.requests == 2  # nothing asked
    assert second.stats == {"cache_hit": 3}


def test_llm_bad_cache_file_is_an_error(server, tmp_path):
    cache = tmp_path / "keywords.json"
    cache.write_text("[1, 2]")
    with pytest.raises(ValueError, match="keywords.json"):
        LLMKeywords(server.base_url, "m", cache_path=cache)


def test_llm_bad_arguments():
    with pytest.raises(ValueError, match="base URL"):
        LLMKeywords("127.0.0.1:11434/v1", "m")
    with pytest.raises(ValueError, match="timeout"):
        LLMKeywords("http://127.0.0.1:11434/v1", "m", timeout=0)


def _reply_by_finding(user_message: str) -> str:
    """The fake LLM's answer: the last official name in the message, upper-cased (a different choice from the
    lexicon's, so the test can tell who answered)."""
    named = [name for name in FINDINGS if name in user_message]
    return max(named, key=user_message.rindex).upper() if named else "none"


def test_precompute_asks_once_per_unique_answer(server):
    server.reply = _reply_by_finding
    a = "the main image is missing the findings of edema, and pneumonia than the reference image. "
    answers = [a, "yes", a, "atelectasis", "yes", a]
    backend = LLMKeywords(server.base_url, "m", timeout=5)
    result = precompute_keywords(answers, backend, progress=False)
    assert result == {a: "pneumonia", "yes": "", "atelectasis": "atelectasis"}
    assert server.requests == 3


def test_precompute_with_workers(server):
    server.reply = _reply_by_finding
    answers = [f"{name}, atelectasis" for name in FINDINGS[:8]] * 3
    backend = LLMKeywords(server.base_url, "m", timeout=5)
    result = precompute_keywords(answers, backend, progress=False, workers=4)
    assert result == {f"{name}, atelectasis": "atelectasis" for name in FINDINGS[:8]}
    assert server.requests == 8 and backend.stats == {"llm": 8}


def test_precompute_with_the_lexicon():
    assert precompute_keywords(["yes", "edema", "edema"], lexicon_keyword, progress=False) == {
        "yes": "",
        "edema": "edema",
    }


def test_make_keyword_fn(tmp_path):
    assert make_keyword_fn("lexicon") is lexicon_keyword
    backend = make_keyword_fn("llm", base_url="http://127.0.0.1:1/v1", model="x", timeout=2.0, cache_path=None)
    assert isinstance(backend, LLMKeywords) and backend.model == "x" and backend.timeout == 2.0
    with pytest.raises(ValueError, match="samples"):
        make_keyword_fn("truth")
    with pytest.raises(ValueError, match="lexicon, llm, truth"):
        make_keyword_fn("gpt")


# ----------------------------------------------------------------------------------------------------------
# diffvqa keywords

RELEASE_ROWS = [
    ("55088298", "18936629", "54989200", "abnormality", "what abnormalities are seen in the soft tissues?",
     "atelectasis", "train"),
    ("55088298", "18936629", "54989200", "location", "is the atelectasis located on the left side or right side?",
     "left side", "train"),
    ("55088298", "18936629", "54989200", "difference", "what has changed compared to the reference image?",
     VERBATIM_DIFFERENCE, "train"),
    ("55088299", "18936630", "54989201", "abnormality", "what abnormalities are seen in the soft tissues?",
     "atelectasis", "val"),
]  # fmt: skip


def _write_release(directory: Path, name: str = "mimic_pair_questions.csv") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / name).open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["study_id", "subject_id", "ref_id", "question_type", "question", "answer", "split"])
        writer.writerows(RELEASE_ROWS)
    return directory


@pytest.mark.parametrize("name", ["mimic_pair_questions.csv", "questions.csv"])
def test_keywords_main_writes_the_cache(server, tmp_path, capsys, name):
    server.reply = _reply_by_finding
    release = _write_release(tmp_path / "release", name)
    out = tmp_path / "keywords.json"
    argv = ["--data", str(release), "--out", str(out), "--base-url", server.base_url, "--model", "m"]
    assert keywords_main([*argv, "--timeout", "5", "--no-progress"]) == 0
    assert json.loads(out.read_text()) == {
        "atelectasis": "atelectasis",
        "left side": "",
        VERBATIM_DIFFERENCE.strip(): "pleural effusion",  # the fake's choice: the last name in the answer
    }
    assert server.requests == 3
    assert "3 asked" in capsys.readouterr().out
    # a second run resumes from the file: nothing asked
    assert keywords_main([*argv, "--no-progress"]) == 0
    assert server.requests == 3


def test_keywords_main_through_the_cli(server, tmp_path):
    from diffvqa.cli import main

    server.reply = _reply_by_finding
    release = _write_release(tmp_path / "release")
    out = tmp_path / "keywords.json"
    argv = ["keywords", "--data", str(release), "--out", str(out), "--base-url", server.base_url, "--model", "m"]
    assert main([*argv, "--no-progress"]) == 0
    assert set(json.loads(out.read_text())) == {"atelectasis", "left side", VERBATIM_DIFFERENCE.strip()}


def test_keywords_main_without_questions(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert keywords_main(["--data", str(empty), "--out", str(tmp_path / "k.json"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert str(empty) in err and "questions.csv" in err and "mimic_pair_questions.csv" in err


def test_keywords_main_server_down(tmp_path, capsys):
    release = _write_release(tmp_path / "release")
    out = tmp_path / "keywords.json"
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    assert keywords_main(["--data", str(release), "--out", str(out), "--base-url", url, "--no-progress"]) == 1
    assert json.loads(out.read_text()) == {}
    assert "connection_error" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("reply", "answer", "accepted"),
    [
        ("Pleural effusions.", DIFF_PNEUMOTHORAX, None),  # a finding the answer does not name: hallucinated
        ("pulmonary nodule", "yes", None),  # a free phrase the answer does not spell
        ("Pleural effusions.", "small left pleural effusion", "pleural effusion"),  # a finding of the answer
        ("effusions", "left pleural effusions", "pleural effusion"),  # a synonym, resolved to the answer's finding
        ("Left-Sided", "left sided", "left sided"),  # a free phrase the answer spells (hyphen and case normalised)
        ("none", "yes", ""),  # "no finding" is always usable
    ],
)
def test_llm_keyword_must_occur_in_the_answer(server, tmp_path, reply, answer, accepted):
    server.reply = reply
    cache = tmp_path / "kw.json"
    with LLMKeywords(server.base_url, "m", timeout=5, cache_path=cache) as backend:
        got = backend(answer, "is there pneumothorax?")
    if accepted is None:
        assert got == lexicon_keyword(answer, "is there pneumothorax?")  # the lexicon's keyword instead
        assert backend.stats == {"rejected": 1} and "1 rejected" in backend.report()
        assert backend.cache == {} and not cache.exists()  # never cached: a later run asks again
    else:
        assert backend.stats == {"llm": 1} and backend.cache == {" ".join(answer.split()): accepted}
        assert got == (accepted or lexicon_keyword("", "is there pneumothorax?"))


def test_cached_keywords_not_in_their_answer_are_dropped(server, tmp_path):
    """A cache from before keywords were checked may hold a hallucinated one: it is dropped, not used."""
    cache = tmp_path / "kw.json"
    cache.write_text(json.dumps({"yes": "pleural effusion", DIFF_EFFUSION.strip(): "pleural effusion"}))
    server.reply = "none"
    with LLMKeywords(server.base_url, "m", timeout=5, cache_path=cache) as backend:
        assert backend.cache == {DIFF_EFFUSION.strip(): "pleural effusion"} and backend.dropped_from_cache == 1
        assert backend("yes", "is there pneumothorax?") == "pneumothorax"  # asked again: "none" -> the question's
        assert "1 cached keywords not in their answer dropped" in backend.report()
    assert json.loads(cache.read_text()) == {DIFF_EFFUSION.strip(): "pleural effusion", "yes": ""}
