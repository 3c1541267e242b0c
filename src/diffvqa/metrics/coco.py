"""pycocoevalcap run the standard way, made safe: Java, the PTB tokenizer, one METEOR process per call.

The numbers must be comparable with papers, so the caption scores (:mod:`diffvqa.metrics.captions`) are exactly
what pycocoevalcap 1.2 gives when called the standard way -- PTBTokenizer (Java), ``Bleu(4)``, ``Meteor()``,
``Rouge()``, ``Cider()`` (which is CIDEr-D: Gaussian length penalty with sigma 6, clipped counts), corpus level,
SPICE off -- while avoiding the ways that standard call breaks on users' machines (see pycocoevalcap's issue
history):

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

METRIC_KEYS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")  # what pycocoevalcap scores

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
# Scoring subsets of rows


def empty_scores() -> dict[str, Any]:
    """The scores of a subset without rows: every metric None, every count 0."""
    return {
        **dict.fromkeys(METRIC_KEYS),
        "n": 0,
        "n_empty_predictions": 0,
        "n_distinct_predictions": 0,
        "unavailable": {},
    }


def tokenize(captions: Sequence[str], java: str | None) -> tuple[list[str], str, str | None]:
    """Sanitised captions -> PTB tokens when Java runs it, else the fallback tokenizer's. Returns the tokens,
    ``"ptb"`` or ``"fallback"``, and why PTB was not used when Java was there (else None)."""
    captions = [sanitize_caption(c) for c in captions]
    if java is not None:
        try:
            return ptb_tokenize(captions), "ptb", None
        except RuntimeError as exc:
            return fallback_tokenize(captions), "fallback", f"{exc}; used the Python fallback tokenizer"
    return fallback_tokenize(captions), "fallback", None


def score_subsets(
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

        tokens, tokenizer, problem = tokenize([*predictions, *(r for refs in references for r in refs)], java)
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
                results[name] = empty_scores()
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
