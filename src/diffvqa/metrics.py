"""Answer metrics for Medical-Diff-VQA: pycocoevalcap caption scores and exact-match accuracy.

The numbers must be comparable with papers, so :func:`caption_scores` gives exactly what pycocoevalcap 1.2
gives when called the standard way -- PTBTokenizer (Java), ``Bleu(4)``, ``Meteor()``, ``Rouge()``, ``Cider()``
(which is CIDEr-D: Gaussian length penalty with sigma 6, clipped counts), corpus level, SPICE off -- while
avoiding the ways that standard call breaks on users' machines (see pycocoevalcap's issue history):

- no Java: ``FileNotFoundError`` deep inside the tokenizer. Here Java is checked first (:func:`java_version`);
  without it METEOR and the PTB tokenizer are reported unavailable (value ``None``, a reason under
  ``unavailable``) and BLEU/ROUGE-L/CIDEr-D are computed from :func:`fallback_tokenize`, labelled
  ``comparable_with_papers: False``;
- METEOR parses its own floats with the JVM's default locale, so under e.g. a German locale it dies with
  ``InputMismatchException`` and Python sees ``ValueError: could not convert string to float: ''``. Every JVM
  here gets ``-Duser.language=en -Duser.country=US`` on its command line (which beats ``JAVA_TOOL_OPTIONS``)
  and appended to ``_JAVA_OPTIONS`` when the user has set that (it is read after the command line);
- PTBTokenizer writes its temporary file into its own site-packages folder (``PermissionError`` on a read-only
  install). Here the same jar runs with the same arguments on a file in a fresh temporary directory
  (:func:`ptb_tokenize`); its output is post-processed exactly as pycocoevalcap does;
- a newline, ``\\r``, ``|||`` or another control character in a caption shifts PTBTokenizer's line alignment
  or breaks METEOR's ``|||``-separated stdin protocol. Captions are sanitised first (:func:`sanitize_caption`);
- a hung METEOR blocks forever (and pycocoevalcap's ``Meteor.__del__`` deadlocks on its lock after an error).
  Here METEOR's conversation runs under a timeout; on expiry the process is killed and METEOR reported
  unavailable, the other metrics are still returned.

METEOR is driven through the same jar, arguments and ``SCORE``/``EVAL`` protocol as ``Meteor.compute_score``
(same strings in, same floats out), but one process serves a whole call: each row is ``SCORE``d once and
every subset gets its own ``EVAL`` over its rows' statistics, which is what ``compute_score`` on that subset
computes. Likewise PTBTokenizer runs once per call: with ``-preserveLines`` it tokenizes line by line, so
tokenizing predictions and references of all subsets together gives the same tokens as pycocoevalcap's
per-set calls.

pycocoevalcap is imported inside the functions that use it; importing this module is cheap and needs no Java.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from diffvqa.config import QUESTION_TYPES

METRIC_KEYS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")
DIFFERENCE = "difference"
CLOSED_ANSWERS = ("yes", "no")

# Forced on every JVM we start: METEOR reads and writes floats with the default locale; UTF-8 so that
# non-ASCII text reads the same under a C locale (PTBTokenizer reads UTF-8 regardless).
JAVA_FLAGS = ("-Duser.language=en", "-Duser.country=US", "-Dfile.encoding=UTF-8")
PTB_JAR = "stanford-corenlp-3.4.1.jar"  # pycocoevalcap/tokenizer/
METEOR_JAR = "meteor-1.5.jar"  # pycocoevalcap/meteor/
PTB_TIMEOUT_S = 600.0  # PTBTokenizer handles ~1M tokens/s; the whole 700k-row csv is well inside this


# ------------------------------------------------------------------------------------------------------------
# Java


def _java_executable() -> str | None:
    """The ``java`` that pycocoevalcap would spawn: the first one on ``PATH``."""
    return shutil.which("java")


@functools.cache
def java_version() -> str | None:
    """The version of the ``java`` on ``PATH`` (e.g. ``"17.0.15"``), or ``None`` when there is no usable Java.

    Cached for the process; call ``java_version.cache_clear()`` after changing ``PATH``.
    """
    java = _java_executable()
    if java is None:
        return None
    try:
        proc = subprocess.run(
            [java, "-version"], capture_output=True, timeout=60, env=_java_env(), stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = proc.stderr.decode(errors="replace") + proc.stdout.decode(errors="replace")
    if proc.returncode != 0:
        return None
    match = re.search(r'version "([^"]+)"', text)  # stderr may start with "Picked up JAVA_TOOL_OPTIONS: ..."
    if match:
        return match.group(1)
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[0].strip() if lines else "unknown"


def _java_env() -> dict[str, str]:
    """The environment for our JVMs: ``_JAVA_OPTIONS`` beats the command line, so our flags go last in it."""
    env = dict(os.environ)
    if env.get("_JAVA_OPTIONS"):
        env["_JAVA_OPTIONS"] = env["_JAVA_OPTIONS"] + " " + " ".join(JAVA_FLAGS)
    return env


def _no_java_message() -> str:
    return (
        "no Java found on PATH: pycocoevalcap's PTBTokenizer and METEOR are Java programs. Install a JRE "
        "(e.g. `apt-get install default-jre-headless`; CI uses Java 17) to get numbers comparable with papers"
    )


def _pycocoevalcap_dir() -> Path:
    import pycocoevalcap  # namespace package in 1.2: no __file__

    return Path(next(iter(pycocoevalcap.__path__)))


def pycocoevalcap_version() -> str | None:
    try:
        return importlib.metadata.version("pycocoevalcap")
    except importlib.metadata.PackageNotFoundError:
        return None


# ------------------------------------------------------------------------------------------------------------
# Sanitising and tokenization

_PIPES = re.compile(r"\|\|\|")


def sanitize_caption(text: str) -> str:
    """Replace what breaks PTBTokenizer's lines or METEOR's protocol by a space.

    Control characters (newline, ``\\r``, tab, vertical tab, form feed, NEL ...), Unicode line/paragraph
    separators and METEOR's field separator ``|||`` each become one space. Text without them is returned
    unchanged, so clean captions tokenize exactly as pycocoevalcap tokenizes them.
    """
    text = _PIPES.sub(" ", text)
    if text.isprintable() and "\u2028" not in text and "\u2029" not in text:
        return text
    return "".join(" " if unicodedata.category(c) in ("Cc", "Zl", "Zp") else c for c in text)


def _punctuations() -> frozenset[str]:
    from pycocoevalcap.tokenizer.ptbtokenizer import PUNCTUATIONS

    return frozenset(PUNCTUATIONS)


def ptb_tokenize(captions: Sequence[str]) -> list[str]:
    """Tokenize like ``pycocoevalcap``'s ``PTBTokenizer.tokenize``, without writing into site-packages.

    Runs the same jar and arguments (``PTBTokenizer -preserveLines -lowerCase <file>``) on the same bytes
    (captions joined by ``"\\n"``), from a file in a fresh temporary directory (``TMPDIR`` is honoured), and
    keeps the tokens of each output line that are not in pycocoevalcap's ``PUNCTUATIONS``, joined by single
    spaces.

    Args:
        captions: sanitised captions (no line breaks; see :func:`sanitize_caption`).

    Raises:
        RuntimeError: no Java, the tokenizer failed or timed out, or its output has the wrong number of lines.
    """
    java = _java_executable()
    if java is None:
        raise RuntimeError(_no_java_message())
    if any(("\n" in c or "\r" in c) for c in captions):
        raise ValueError("ptb_tokenize: captions must be sanitised first (a caption holds a line break)")
    jar = _pycocoevalcap_dir() / "tokenizer" / PTB_JAR
    punctuations = _punctuations()
    with tempfile.TemporaryDirectory(prefix="diffvqa-ptb-") as tmp:
        path = Path(tmp) / "captions.txt"
        path.write_bytes("\n".join(captions).encode())
        cmd = [java, *JAVA_FLAGS, "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer"]
        cmd += ["-preserveLines", "-lowerCase", str(path)]
        try:
            proc = subprocess.run(
                cmd, capture_output=True, timeout=PTB_TIMEOUT_S, env=_java_env(), stdin=subprocess.DEVNULL
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RuntimeError(f"PTBTokenizer did not run: {exc}") from exc
    if proc.returncode != 0:
        stderr = proc.stderr.decode(errors="replace").strip()[-2000:]
        raise RuntimeError(f"PTBTokenizer exited with {proc.returncode}: {stderr}")
    lines = proc.stdout.decode().split("\n")
    if len(lines) != len(captions):
        raise RuntimeError(f"PTBTokenizer returned {len(lines)} lines for {len(captions)} captions")
    return [" ".join(w for w in line.rstrip().split(" ") if w not in punctuations) for line in lines]


# A Python stand-in for PTBTokenizer, used only without Java. It reproduces PTBTokenizer 3.4.1
# (-preserveLines -lowerCase) + pycocoevalcap's punctuation filter on Medical-Diff-VQA's language: lower-case
# words, hyphenated words kept whole (left-sided, plate-like, ground-glass), decimals (2.5) and grouped
# numbers (1,000) kept, ", . ; : ? !" and quotes split off and dropped, clitics split ("patient's" ->
# "patient 's", "can't" -> "ca n't"), brackets kept as "-lrb-"/"-rrb-"... (PTB's -LRB- survives
# pycocoevalcap's filter once lower-cased). It does not know PTB's abbreviation list ("dr." keeps its period
# in PTB) nor its rarer rules.
_CLITIC_NT = re.compile(r"(?<=\w)(n't)\b")
_CLITIC_APOSTROPHE = re.compile(r"(?<=\w)('(?:s|re|ll|ve|d|m))\b")
_FALLBACK_TOKEN = re.compile(
    r"""
      \d+(?:[.,]\d+)*                 # numbers: 2, 2.5, 1,000
    | (?:[^\W\d_]\.){2,}              # dotted abbreviations: e.g. u.s.
    | n't | '(?:s|re|ll|ve|d|m)\b     # clitics, already split from their word
    | [^\W_]+(?:[-/][^\W_]+)*         # words; hyphenated and slashed words stay whole
    | \.\.\. | -- | [!?]{2,}          # multi-character punctuation PTB keeps together
    | \S                              # any other single character
    """,
    re.VERBOSE,
)
_FALLBACK_MAP = {
    "(": "-lrb-",
    ")": "-rrb-",
    "[": "-lsb-",
    "]": "-rsb-",
    "{": "-lcb-",
    "}": "-rcb-",
    '"': "''",
}


def fallback_tokenize(captions: Sequence[str]) -> list[str]:
    """Tokenize in Python the way :func:`ptb_tokenize` does on this data (no Java needed).

    Exact on Medical-Diff-VQA's questions and answers (checked against PTBTokenizer in the tests); an
    approximation on general English, so numbers from it are never labelled comparable with papers.
    """
    punctuations = _punctuations()
    out = []
    for caption in captions:
        text = _CLITIC_APOSTROPHE.sub(r" \1", _CLITIC_NT.sub(r" \1", caption.lower()))
        tokens = (_FALLBACK_MAP.get(t, t) for t in _FALLBACK_TOKEN.findall(text))
        out.append(" ".join(t for t in tokens if t not in punctuations))
    return out


# ------------------------------------------------------------------------------------------------------------
# METEOR


def _meteor_command(java: str) -> list[str]:
    """pycocoevalcap's ``Meteor`` command, with our locale flags; run in the jar's folder."""
    return [java, *JAVA_FLAGS, "-jar", "-Xmx2G", METEOR_JAR, "-", "-", "-stdio", "-l", "en", "-norm"]


class _Meteor:
    """One METEOR process speaking pycocoevalcap's ``SCORE``/``EVAL`` protocol; :meth:`close` kills it."""

    def __init__(self, java: str):
        self._stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            _meteor_command(java),
            cwd=_pycocoevalcap_dir() / "meteor",
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=_java_env(),
        )

    def _ask(self, line: str) -> str:
        try:
            self.proc.stdin.write(f"{line}\n".encode())
            self.proc.stdin.flush()
        except OSError as exc:  # BrokenPipeError: it died
            self.proc.wait()
            raise RuntimeError(
                f"METEOR stopped reading ({exc}; exit code {self.proc.returncode}): {self.stderr_tail()}"
            ) from None
        return self._read()

    def _read(self) -> str:
        answer = self.proc.stdout.readline()
        if not answer:
            try:
                code = self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                code = None
            raise RuntimeError(f"METEOR closed its output (exit code {code}): {self.stderr_tail()}")
        return answer.decode().strip()

    def stderr_tail(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace").strip()[-1000:]

    def score(
        self, hypotheses: Sequence[str], references: Sequence[Sequence[str]], subsets: dict[str, list[int]]
    ) -> dict[str, float]:
        """Corpus METEOR of each subset of rows, exactly as ``Meteor().compute_score`` on that subset."""
        needed = sorted({i for rows in subsets.values() for i in rows})
        stats = {}
        for i in needed:
            # Meteor._stat: only the hypothesis is cleaned of '|||' and double spaces
            hypothesis = hypotheses[i].replace("|||", "").replace("  ", " ")
            stat = self._ask(" ||| ".join(("SCORE", " ||| ".join(references[i]), hypothesis)))
            try:
                [float(x) for x in stat.split()]
            except ValueError:
                raise RuntimeError(f"METEOR rejected row {i}: {stat!r}") from None
            stats[i] = stat
        scores = {}
        for name, rows in subsets.items():
            self._ask("EVAL" + "".join(f" ||| {stats[i]}" for i in rows))  # the first row's score
            for _ in range(len(rows) - 1):
                self._read()
            answer = self._read()
            try:
                scores[name] = float(answer)
            except ValueError:
                raise RuntimeError(f"METEOR answered {answer!r} to EVAL") from None
        return scores

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # first, so that a thread still talking to it gets EOF instead of blocking
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self._stderr):
            try:
                stream.close()
            except (OSError, ValueError):  # unflushed input to a dead process, or a read in progress
                pass


class _Thread(threading.Thread):
    """Runs ``fn()`` now; ``value`` or ``error`` hold its outcome once it is done."""

    def __init__(self, fn):
        super().__init__(name="diffvqa-meteor", daemon=True)
        self.fn, self.value, self.error = fn, None, None
        self.start()

    def run(self) -> None:
        try:
            self.value = self.fn()
        except Exception as exc:  # reported by the caller as "METEOR failed: ..."
            self.error = exc


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


def _empty_scores() -> dict[str, Any]:
    return {
        **dict.fromkeys(METRIC_KEYS),
        "n": 0,
        "n_empty_predictions": 0,
        "n_distinct_predictions": 0,
        "unavailable": {},
    }


def _tokenize(captions: Sequence[str], java: str | None) -> tuple[list[str], str, str | None]:
    """Sanitised captions -> PTB tokens when Java runs it, else the fallback tokenizer's. Returns the tokens,
    ``"ptb"`` or ``"fallback"``, and why PTB was not used when Java was there (else None)."""
    captions = [sanitize_caption(c) for c in captions]
    if java is not None:
        try:
            return ptb_tokenize(captions), "ptb", None
        except RuntimeError as exc:
            return fallback_tokenize(captions), "fallback", f"{exc}; used the Python fallback tokenizer"
    return fallback_tokenize(captions), "fallback", None


def _score_subsets(
    predictions: Sequence[str],
    references: list[list[str]],
    subsets: dict[str, list[int]],
    meteor_timeout: float,
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Scores of each subset of rows, with one tokenizer run and one METEOR process for all of them."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    if not meteor_timeout > 0:
        raise ValueError(f"meteor_timeout must be > 0 seconds, got {meteor_timeout!r}")
    unavailable: dict[str, str] = {}
    java_ver = java_version()
    java = _java_executable() if java_ver is not None else None
    if java is None:
        unavailable["PTBTokenizer"] = unavailable["METEOR"] = _no_java_message()

    meteor = None
    deadline = time.monotonic() + meteor_timeout
    try:
        if java is not None:
            try:  # start now: the JVM loads its paraphrase table while we tokenize and score the rest
                meteor = _Meteor(java)
            except OSError as exc:
                unavailable["METEOR"] = f"METEOR did not start: {exc}"

        tokens, tokenizer, problem = _tokenize([*predictions, *(r for refs in references for r in refs)], java)
        if problem is not None:
            unavailable["PTBTokenizer"] = problem
        hyps, refs, pos = tokens[: len(predictions)], [], len(predictions)
        for r in references:
            refs.append(tokens[pos : pos + len(r)])
            pos += len(r)

        if meteor is not None:  # METEOR talks in a thread while the Python metrics run here
            nonempty = {name: rows for name, rows in subsets.items() if rows}
            meteor_thread = _Thread(lambda: meteor.score(hyps, refs, nonempty))

        results = {}
        for name, rows in subsets.items():
            if not rows:
                results[name] = _empty_scores()
                continue
            gts = {k: refs[i] for k, i in enumerate(rows)}
            res = {k: [hyps[i]] for k, i in enumerate(rows)}
            bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
            rouge, _ = Rouge().compute_score(gts, res)
            cider, _ = Cider().compute_score(gts, res)
            results[name] = {
                **{f"BLEU-{k + 1}": float(b) for k, b in enumerate(bleu)},
                "METEOR": None,
                "ROUGE-L": float(rouge),
                "CIDEr": float(cider),
                "n": len(rows),
                "n_empty_predictions": sum(not predictions[i].strip() for i in rows),
                # a model that ignores its inputs collapses to a few answers: this shows it at a glance
                "n_distinct_predictions": len({predictions[i].strip() for i in rows}),
                "unavailable": {},
            }

        if meteor is not None:
            meteor_thread.join(max(0.0, deadline - time.monotonic()))
            if meteor_thread.is_alive():
                meteor.proc.kill()  # unblocks the thread's read
                meteor_thread.join(10)
                unavailable["METEOR"] = (
                    f"METEOR did not finish within meteor_timeout={meteor_timeout:g} s and was killed. "
                    f"{meteor.stderr_tail()}"
                ).strip()
            elif meteor_thread.error is not None:
                unavailable["METEOR"] = f"METEOR failed: {meteor_thread.error}"
            else:
                for name, value in meteor_thread.value.items():
                    results[name]["METEOR"] = value
    finally:
        if meteor is not None:
            meteor.close()

    for name, rows in subsets.items():
        if rows:
            results[name]["unavailable"] = dict(unavailable)
    implementation = {
        "pycocoevalcap": pycocoevalcap_version(),
        "tokenizer": tokenizer,
        "java": java_ver,
        "comparable_with_papers": tokenizer == "ptb",
    }
    return results, implementation


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
    results, implementation = _score_subsets(predictions, refs, {"all": list(range(len(predictions)))}, meteor_timeout)
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
    results, implementation = _score_subsets(predictions, [[r] for r in references], subsets, meteor_timeout)
    _add_meteor_nltk(results, subsets, predictions, references, implementation)
    difference = results.get(f"type:{DIFFERENCE}")
    return {
        DIFFERENCE: dict(difference) if difference is not None else _empty_scores(),
        "all": results["all"],
        "per_type": {t: results[f"type:{t}"] for t in types},
        **accuracy,
        "implementation": implementation,
    }


def _add_meteor_nltk(results, subsets, predictions, references, implementation) -> None:
    """``METEOR_nltk`` (sentence-level NLTK METEOR, mean over rows) beside the jar's corpus ``METEOR`` in each
    subset: papers report one or the other (see :mod:`diffvqa.meteor_nltk`)."""
    from diffvqa.meteor_nltk import meteor_nltk_implementation, meteor_nltk_sentences

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
    answer (the paired intervals of :mod:`diffvqa.intervals`). One tokenizer run (PTB when Java runs it, else the
    fallback; the second item says which) and no METEOR: validation during training calls it often.
    """
    from pycocoevalcap.cider.cider import Cider

    n = len(references)
    for name, rows in predictions.items():
        _check_predictions(rows)
        if n == 0 or len(rows) != n:
            raise ValueError(f"cider_per_answer needs matching, non-empty lists ({name}: {len(rows)} vs {n})")
    names = list(predictions)
    captions = [c for name in names for c in predictions[name]]
    tokens, tokenizer, _ = _tokenize([*captions, *references], java_version())
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
