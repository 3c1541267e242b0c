"""diffvqa.metrics against its oracle, raw pycocoevalcap called the standard way.

Each call that runs METEOR costs ~6 s (the jar loads its paraphrase table), so the raw oracle runs once per
module with one ``Meteor()`` reused across subsets, and the tests that need Java share it.
"""

import os
import subprocess
import sys
import time

import pytest

from diffvqa.metrics import (
    METRIC_KEYS,
    caption_scores,
    coco,
    evaluate_answers,
    exact_match_accuracy,
    fallback_tokenize,
    java_version,
    normalize_answer,
    ptb_tokenize,
    sanitize_caption,
)

IN_CI = os.environ.get("CI") == "true"  # .ci/run sets it: there a missing Java fails the tests that need it


def require_java() -> None:
    """Skip where Java is not installed -- but fail in CI, which must run every comparison with pycocoevalcap."""
    if java_version() is None:
        message = "Java is not installed (CI has Java 17)"
        if IN_CI:
            pytest.fail(f"{message}; CI=true, so the tests that need Java fail instead of skipping")
        pytest.skip(message)


@pytest.fixture
def java() -> None:
    require_java()


needs_java = pytest.mark.usefixtures("java")

# Medical-Diff-VQA difference answers (the grammar of docs/data.md: level changes, additions, removals, each
# ending ". ").
# Rows 3 and 11 carry a second reference; row 9's prediction is empty; several predictions are wrong.
DIFF = [
    (
        [
            "the main image has an additional finding of pneumothorax than the reference image. the main image "
            "is missing the findings of fracture, lung opacity, and pleural effusion than the reference image. "
        ],
        "the main image has an additional finding of pneumothorax than the reference image. ",
    ),
    (["nothing has changed."], "nothing has changed."),
    (["nothing has changed."], "Nothing has changed."),
    (
        [
            "the level of edema has changed from mild to moderate. ",
            "the level of edema has changed from mild to moderate. nothing else has changed.",
        ],
        "the level of edema has changed from moderate to severe. ",
    ),
    (
        ["the main image has additional findings of atelectasis, and lung opacity than the reference image. "],
        "the main image has additional findings of atelectasis, and lung opacity than the reference image. ",
    ),
    (
        ["the main image is missing the finding of pleural effusion than the reference image. "],
        "the main image has an additional finding of pleural effusion than the reference image. ",
    ),
    (
        [
            "the level of pleural effusion has changed from small to moderate. the main image has an additional "
            "finding of cardiomegaly than the reference image. "
        ],
        "the level of pleural effusion has changed from small to moderate. ",
    ),
    (
        [
            "the main image has additional findings of edema, vascular congestion, and pleural effusion than "
            "the reference image. "
        ],
        "the main image has additional findings of edema, and pleural effusion than the reference image. ",
    ),
    (["nothing has changed."], "the main image is missing the finding of edema than the reference image. "),
    (["the main image is missing the finding of pneumothorax than the reference image. "], ""),
    (
        ["the main image is missing the findings of atelectasis, and consolidation than the reference image. "],
        "the main image is missing the findings of atelectasis, and consolidation than the reference image. ",
    ),
    (
        [
            "the level of atelectasis has changed from mild to moderate to severe. ",
            "the level of atelectasis has changed from mild to moderate to severe.",
        ],
        "the level of atelectasis has changed from mild to moderate. ",
    ),
    (
        [
            "the main image has an additional finding of enlargement of the cardiac silhouette than the reference "
            "image. "
        ],
        "the main image has an additional finding of cardiomegaly than the reference image. ",
    ),
    (
        [
            "the level of lung opacity has changed from minimal to moderate. the main image is missing the "
            "finding of hilar congestion than the reference image. "
        ],
        "the level of lung opacity has changed from mild to moderate. the main image is missing the finding "
        "of hilar congestion than the reference image. ",
    ),
    (
        ["the main image has an additional finding of blunting of the costophrenic angle than the reference image. "],
        "the main image has an additional finding of blunting of the costophrenic angle than the reference image. ",
    ),
    (["nothing has changed."], "nothing has changed."),
    (
        [
            "the main image has additional findings of tortuosity of the descending aorta, scoliosis, and "
            "granuloma than the reference image. "
        ],
        "the main image has additional findings of scoliosis, and granuloma than the reference image. ",
    ),
    (
        ["the main image is missing the findings of heart failure, and pneumonia than the reference image. "],
        "nothing has changed.",
    ),
    (
        [
            "the level of pneumothorax has changed from small to moderate. the main image has an additional "
            "finding of pneumomediastinum than the reference image. the main image is missing the finding of "
            "fracture than the reference image. "
        ],
        "the level of pneumothorax has changed from small to large. the main image has an additional finding "
        "of pneumomediastinum than the reference image. ",
    ),
    (
        ["the level of consolidation has changed from moderate to severe. "],
        "the level of consolidation has changed from moderate to severe. ",
    ),
]
DIFF_REFS = [refs for refs, _ in DIFF]
DIFF_PREDS = [pred for _, pred in DIFF]

# Other question types: (type, reference, prediction).
OTHER = [
    ("abnormality", "pleural effusion, pneumothorax, atelectasis, lung opacity", "pleural effusion, atelectasis"),
    ("abnormality", "atelectasis", "atelectasis"),
    ("abnormality", "yes", "yes"),
    ("presence", "yes", "Yes."),
    ("presence", "no", "yes"),
    ("view", "PA view", "pa view"),
    ("view", "no", "no"),
    ("location", "left lung area and right lung area", "left lung area"),
    ("location", "left side", " left side "),
    ("level", "mild to moderate", "mild"),
    ("level", "small", "small"),
    ("type", "layering", "layering"),
    ("type", "patchy", "plate-like"),
]
# Interleave the types, as a real test split would.
MIXED = (
    [("difference", refs[0], pred) for refs, pred in DIFF[:13]]
    + OTHER
    + [("difference", refs[0], pred) for refs, pred in DIFF[13:]]
)
MIXED_TYPES = [t for t, _, _ in MIXED]
MIXED_REFS = [r for _, r, _ in MIXED]
MIXED_PREDS = [p for _, _, p in MIXED]

TINY_REFS = [DIFF_REFS[0][0], "nothing has changed.", DIFF_REFS[3][0]]
TINY_REFS.append("the main image is missing the finding of atelectasis than the reference image. ")
TINY_PREDS = [DIFF_PREDS[0], "nothing has changed.", DIFF_PREDS[3]]
TINY_PREDS.append("the main image has an additional finding of atelectasis than the reference image. ")
# Raw pycocoevalcap 1.2 (PTBTokenizer, Bleu(4), Meteor(), Rouge(), Cider()) with meteor-1.5 on Java 17.
TINY_GOLDEN = {
    "BLEU-1": 0.5656656802500992,
    "BLEU-2": 0.5340760525973897,
    "BLEU-3": 0.5109474645842587,
    "BLEU-4": 0.4865735194050674,
    "METEOR": 0.372708068538236,
    "ROUGE-L": 0.7798857630918699,
    "CIDEr": 4.931939836847028,
}


def assert_scores_equal(ours, expected, keys=METRIC_KEYS, tol=1e-12):
    for key in keys:
        assert ours[key] == pytest.approx(expected[key], rel=0, abs=tol), key


# --------------------------------------------------------------------------------------------------------------
# The oracle


@pytest.fixture(scope="module")
def raw_meteor():
    require_java()
    from pycocoevalcap.meteor.meteor import Meteor

    return Meteor()


def raw_tokenize(captions_per_row: dict) -> dict:
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    return PTBTokenizer().tokenize({k: [{"caption": c} for c in caps] for k, caps in captions_per_row.items()})


def raw_scores(gts: dict, res: dict, meteor) -> dict:
    """pycocoevalcap's metrics on tokenized ``gts``/``res``, as ``COCOEvalCap.evaluate`` runs them."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    out = {f"BLEU-{k + 1}": b for k, b in enumerate(bleu)}
    out["METEOR"], _ = meteor.compute_score(gts, res)
    out["ROUGE-L"], _ = Rouge().compute_score(gts, res)
    out["CIDEr"], _ = Cider().compute_score(gts, res)
    return out


@pytest.fixture(scope="module")
def raw_diff(raw_meteor):
    gts = raw_tokenize(dict(enumerate(DIFF_REFS)))
    res = raw_tokenize({i: [p] for i, p in enumerate(DIFF_PREDS)})
    return raw_scores(gts, res, raw_meteor)


@pytest.fixture
def no_java(monkeypatch, tmp_path):
    """A PATH without java, as on a machine without a JRE."""
    monkeypatch.setenv("PATH", str(tmp_path))
    java_version.cache_clear()
    yield
    java_version.cache_clear()


# --------------------------------------------------------------------------------------------------------------
# Equality with raw pycocoevalcap


@needs_java
def test_caption_scores_equal_raw_pycocoevalcap(raw_diff):
    ours = caption_scores(DIFF_PREDS, DIFF_REFS)
    assert_scores_equal(ours, raw_diff)
    assert ours["n"] == 20 and ours["n_empty_predictions"] == 1 and ours["unavailable"] == {}
    assert ours["n_distinct_predictions"] == 18  # 20 predictions, two repeated
    impl = ours["implementation"]
    assert impl["tokenizer"] == "ptb" and impl["comparable_with_papers"] is True
    assert impl["pycocoevalcap"] == "1.2" and impl["java"] == java_version()
    assert all(type(ours[k]) is float for k in METRIC_KEYS)  # json-serialisable, no numpy scalars


@needs_java
def test_evaluate_answers_equal_raw_per_subset(raw_meteor):
    out = evaluate_answers(MIXED_PREDS, MIXED_REFS, MIXED_TYPES)

    gts_all = raw_tokenize({i: [r] for i, r in enumerate(MIXED_REFS)})
    res_all = raw_tokenize({i: [p] for i, p in enumerate(MIXED_PREDS)})

    def raw_subset(rows):
        return raw_scores({i: gts_all[i] for i in rows}, {i: res_all[i] for i in rows}, raw_meteor)

    assert_scores_equal(out["all"], raw_subset(range(len(MIXED))))
    diff_rows = [i for i, t in enumerate(MIXED_TYPES) if t == "difference"]
    assert_scores_equal(out["difference"], raw_subset(diff_rows))
    assert list(out["per_type"]) == ["abnormality", "presence", "view", "location", "level", "type", "difference"]
    for qtype, scores in out["per_type"].items():
        rows = [i for i, t in enumerate(MIXED_TYPES) if t == qtype]
        assert scores["n"] == len(rows)
        assert_scores_equal(scores, raw_subset(rows))
    # CIDEr's IDF comes from the scored references: difference-only and all-type CIDEr differ.
    assert out["difference"]["CIDEr"] != out["all"]["CIDEr"]
    assert out["accuracy_closed"] == 0.75 and out["n_closed"] == 4
    assert out["accuracy_open"] == pytest.approx(5 / 9) and out["n_open"] == 9
    assert out["implementation"]["comparable_with_papers"] is True


@needs_java
def test_golden_values_tiny_corpus():
    ours = caption_scores(TINY_PREDS, TINY_REFS)
    assert_scores_equal(ours, TINY_GOLDEN)


@needs_java
def test_hostile_captions_and_locale(monkeypatch, tmp_path):
    """Newlines, \\r, tabs and ``|||`` in captions, a German JVM locale and a private TMPDIR: same numbers.

    Raw pycocoevalcap fails on each: METEOR dies on ``EVAL`` under ``-Duser.language=de``, a ``\\r`` shifts
    PTBTokenizer's lines, ``|||`` splits METEOR's fields.
    """
    german = "-Duser.language=de -Duser.country=DE"
    monkeypatch.setenv("JAVA_TOOL_OPTIONS", german)
    monkeypatch.setenv("_JAVA_OPTIONS", german)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    preds = [TINY_PREDS[0].replace(" than ", " than\n", 1), "nothing |||has\r\nchanged.", *TINY_PREDS[2:]]
    refs = [[TINY_REFS[0].replace(" of ", "\tof\x0b", 1)], ["nothing\u2028has changed.|||"], *TINY_REFS[2:]]
    ours = caption_scores(preds, refs)
    assert ours["unavailable"] == {}
    assert_scores_equal(ours, TINY_GOLDEN)
    assert list(tmp_path.iterdir()) == []  # temporary files cleaned up


# --------------------------------------------------------------------------------------------------------------
# Without Java, and when METEOR fails


def test_no_java_fallback(request):
    raw = request.getfixturevalue("raw_diff") if java_version() is not None else None
    request.getfixturevalue("no_java")
    assert java_version() is None
    ours = caption_scores(DIFF_PREDS, DIFF_REFS)
    assert ours["METEOR"] is None
    assert "no Java" in ours["unavailable"]["METEOR"] and "PTBTokenizer" in ours["unavailable"]
    impl = ours["implementation"]
    assert impl == {**impl, "tokenizer": "fallback", "java": None, "comparable_with_papers": False}
    no_meteor = [k for k in METRIC_KEYS if k != "METEOR"]

    class NoMeteor:
        def compute_score(self, gts, res):
            return None, None

    gts = {i: fallback_tokenize(refs) for i, refs in enumerate(DIFF_REFS)}
    res = {i: fallback_tokenize([p]) for i, p in enumerate(DIFF_PREDS)}
    assert_scores_equal(ours, raw_scores(gts, res, NoMeteor()), keys=no_meteor)
    if raw is not None:
        # The fallback tokenizer agrees with PTBTokenizer on this data, so the Java-free numbers are the same.
        assert_scores_equal(ours, raw, keys=no_meteor)


def test_evaluate_answers_without_java(no_java):
    out = evaluate_answers(MIXED_PREDS, MIXED_REFS, MIXED_TYPES)
    assert out["difference"]["METEOR"] is None and out["difference"]["BLEU-4"] > 0
    assert out["per_type"]["level"]["n_distinct_predictions"] == 2  # "mild", "small"
    assert out["per_type"]["location"]["n_distinct_predictions"] == 2  # "left lung area", "left side"
    # white space around an answer does not make it a different answer
    assert caption_scores(["left side", " left side ", "right"], ["a", "b", "c"])["n_distinct_predictions"] == 2
    assert out["per_type"]["view"]["unavailable"]["METEOR"]
    assert out["implementation"]["comparable_with_papers"] is False


@needs_java
def test_fallback_tokenizer_matches_ptb():
    templates = [
        "what abnormalities are seen in this image?",
        "what abnormalities are seen in the soft tissues?",
        "is there evidence of any abnormalities in this image?",
        "which view is this image taken?",
        "is this PA view?",
        "is this AP view?",
        "PA view",
        "AP view",
    ]
    findings = [
        "pleural effusion", "atelectasis", "cardiomegaly", "enlargement of the cardiac silhouette", "edema",
        "hernia", "vascular congestion", "hilar congestion", "pneumothorax", "heart failure", "lung opacity",
        "pneumonia", "tortuosity of the descending aorta", "scoliosis", "gastric distention", "hypoxemia",
        "hypertensive heart disease", "hematoma", "tortuosity of the thoracic aorta", "contusion", "emphysema",
        "granuloma", "calcification", "pleural thickening", "thymoma", "blunting of the costophrenic angle",
        "consolidation", "fracture", "pneumomediastinum", "air collection",
    ]  # fmt: skip
    for f in findings:
        templates += [
            f"is there evidence of {f} in this image?",
            f"is there {f}?",
            f"is there {f} in the left lower lobe?",
            f"is the {f} bilateral?",
            f"where in the image is the {f} located?",
            f"where is the {f}?",
            f"is the {f} located on the left side or right side?",
            f"what level is the {f}?",
            f"what type is the {f}?",
            f"what has changed in the {f} area?",
        ]
    answers = [
        "mid to lower left-sided retrocardiac pericardial bibasilar bilateral basilar apicolateral basal lobe",
        "left lung base, right apical area, left upper lung, right middle lobe, mid rib, the left lung base",
        "minimal subtle mild mildly small minor moderate moderately mild to moderate moderate to large severe",
        "moderate to severe massive acute increasing decreasing minimally",
        "interstitial layering dense parenchymal compressive obstructive linear plate-like patchy ground-glass",
        "calcified scattered focal multifocal",
        "yes",
        "no",
        "",
        "Nothing has changed.",
    ]
    general = ["the patient's lungs (left) aren't clear; see 2.5 cm, 1,000 -- \"quoted\" e.g. x-ray... ok!"]
    captions = templates + answers + general + DIFF_PREDS + [r for refs in DIFF_REFS for r in refs]
    assert fallback_tokenize(captions) == ptb_tokenize(captions)


@needs_java
def test_ptb_tokenize_writes_nothing_into_site_packages():
    folder = coco._pycocoevalcap_dir() / "tokenizer"
    before = sorted(os.listdir(folder))
    assert ptb_tokenize(["Nothing has changed.", ""]) == ["nothing has changed", ""]
    assert sorted(os.listdir(folder)) == before


def hanging_meteor(pid_file):
    code = "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(600)"
    return lambda java: [sys.executable, "-c", code, str(pid_file)]


@needs_java
def test_meteor_timeout_kills_a_hung_process(monkeypatch, tmp_path):
    pid_file = tmp_path / "pid"
    monkeypatch.setattr(coco, "_meteor_command", hanging_meteor(pid_file))
    start = time.monotonic()
    ours = caption_scores(TINY_PREDS, TINY_REFS, meteor_timeout=1.0)
    assert time.monotonic() - start < 20
    assert ours["METEOR"] is None and "meteor_timeout" in ours["unavailable"]["METEOR"]
    assert_scores_equal(ours, TINY_GOLDEN, keys=[k for k in METRIC_KEYS if k != "METEOR"])
    assert ours["implementation"]["tokenizer"] == "ptb"
    with pytest.raises(ProcessLookupError):  # killed and reaped
        os.kill(int(pid_file.read_text()), 0)


@needs_java
def test_meteor_timeout_real_jar():
    start = time.monotonic()
    ours = caption_scores(TINY_PREDS, TINY_REFS, meteor_timeout=0.01)
    assert time.monotonic() - start < 20
    assert ours["METEOR"] is None and "killed" in ours["unavailable"]["METEOR"]
    assert ours["BLEU-1"] == pytest.approx(TINY_GOLDEN["BLEU-1"], abs=1e-12)


@needs_java
def test_meteor_crash_is_reported(monkeypatch):
    code = "import sys; sys.stderr.write('boom: out of memory'); sys.exit(3)"
    monkeypatch.setattr(coco, "_meteor_command", lambda java: [sys.executable, "-c", code])
    ours = caption_scores(TINY_PREDS, TINY_REFS)
    assert ours["METEOR"] is None and "boom: out of memory" in ours["unavailable"]["METEOR"]
    assert ours["CIDEr"] == pytest.approx(TINY_GOLDEN["CIDEr"], abs=1e-12)


# --------------------------------------------------------------------------------------------------------------
# Pure functions and validation


def test_sanitize_caption():
    assert sanitize_caption("a\nb|||c\rd\te\u2028f\x85g") == "a b c d e f g"
    clean = DIFF_REFS[0][0]
    assert sanitize_caption(clean) is clean


def test_exact_match_accuracy():
    out = exact_match_accuracy(MIXED_PREDS, MIXED_REFS, MIXED_TYPES)
    assert (out["accuracy_closed"], out["n_closed"]) == (0.75, 4)
    assert out["accuracy_open"] == pytest.approx(5 / 9) and out["n_open"] == 9
    assert "difference" not in out["accuracy_per_type"]  # difference rows are ignored
    assert out["accuracy_per_type"]["presence"] == {"accuracy": 0.5, "n": 2}
    assert out["accuracy_per_type"]["view"] == {"accuracy": 1.0, "n": 2}
    assert normalize_answer("  Left Side. ") == "left side"
    only_open = exact_match_accuracy(["small"], ["Small."], ["level"])
    assert only_open["accuracy_closed"] is None and only_open["accuracy_open"] == 1.0
    assert exact_match_accuracy(["x"], ["nothing has changed."], ["difference"])["n_open"] == 0


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="one entry per row"):
        exact_match_accuracy(["yes"], ["yes", "no"], ["presence"])
    with pytest.raises(ValueError, match="prediction 1"):
        caption_scores(["a", None], ["a", "b"])
    with pytest.raises(ValueError, match="2 predictions, 1 references"):
        caption_scores(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="reference 0"):
        caption_scores(["a"], [[]])
    with pytest.raises(ValueError, match="at least one"):
        caption_scores([], [])
    with pytest.raises(ValueError, match="meteor_timeout"):
        caption_scores(["a"], ["a"], meteor_timeout=0)


def test_import_does_not_import_pycocoevalcap():
    code = "import diffvqa.metrics, sys; assert 'pycocoevalcap' not in sys.modules; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_missing_java_fails_the_java_tests_in_ci(no_java, monkeypatch):
    """Locally a machine without Java skips the tests that need it; CI (CI=true) fails them instead."""
    monkeypatch.setattr(sys.modules[__name__], "IN_CI", True)
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        require_java()
    monkeypatch.setattr(sys.modules[__name__], "IN_CI", False)
    with pytest.raises(pytest.skip.Exception, match="Java is not installed"):
        require_java()
