"""Keywords: the one clinical term of an answer that conditions the Grad-CAM (DESIGN.md item 6).

Three sources, each a callable ``(answer, question="") -> keyword`` where ``""`` means "no keyword" (the
Grad-CAM score then falls back to the whole answer):

* ``lexicon_keyword`` (the default; :mod:`diffvqa.saliency.lexicon`): the first of the dataset's 30 finding
  names (or a synonym of one) named in the answer, else the first named in the question, else ``""``.
* ``LLMKeywords``: an OpenAI-compatible chat endpoint (the paper used Llama-3-70B; a local Ollama serves one
  at ``http://127.0.0.1:11434/v1``), cached per unique answer text in a JSON file, falling back to the
  lexicon on any failure, which is counted by reason, never raised. A reply is only accepted when the
  Grad-CAM can use it: the keyword is spelled in the answer (after the lexicon's normalisation) or is one of
  the answer's findings; any other (a hallucinated phrase) is counted ``rejected`` and never cached.
* ground truth: comes with the samples (the phantom knows its findings), so it is the caller's business.

``make_keyword_fn`` picks the source of ``SaliencyConfig.keyword_source``. ``diffvqa keywords``
(``keywords_main``) precomputes the LLM keyword of every unique answer of a release or prepared cache. The
lexicon itself, and ``keyword_spans`` (where a keyword is spelled in an answer, for the Grad-CAM), are in
:mod:`diffvqa.saliency.lexicon`. This module is torch-free.
"""

from __future__ import annotations

import csv
import http.client
import io
import ipaddress
import json
import re
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from diffvqa.atomic import write_atomic
from diffvqa.config import SaliencyConfig
from diffvqa.errors import ArgumentParser, MissingInputError, UserError, command
from diffvqa.saliency.lexicon import (
    keyword_spans,
    lexicon_keyword,
    normalise_keyword,
    normalise_text,
)

KeywordFn = Callable[..., str]  # (answer: str, question: str = "") -> str

# ----------------------------------------------------------------------------------------------------------
# the LLM backend

SYSTEM_PROMPT = (
    "You read one answer about a chest X-ray and name the single most important clinical finding in it. "
    "Reply with the finding only: a short noun phrase of at most five words, copied from the answer's own "
    "wording, lower-case, with no explanation and no punctuation. If the answer names no clinical finding "
    "(for example 'yes', 'no', 'left side', 'small', 'PA view' or 'nothing has changed.'), "
    "reply exactly: none"
)
MAX_KEYWORD_WORDS = 6
_NONE_REPLIES = {"none", "no finding", "no findings", "nothing", "null", "no keyword", "no clinical finding"}
_REPLY_PREFIX = re.compile(r"^(?:the\s+)?(?:key\s*word|keyword|finding|answer|most important finding)\s*:\s*")
_REPLY_STRIP = " \t\r\n.,;:!?\"'`*()[]{}"
_REPLY_OK = re.compile(r"[a-z]+(?:[ \-][a-z]+)*")
FALLBACK_REASONS = ("timeout", "connection_error", "http_error", "bad_reply", "rejected", "llm_disabled")


class BadReply(ValueError):
    """The endpoint answered, but not with a usable keyword."""


def parse_reply(body: bytes) -> str:
    """The keyword in an OpenAI chat-completion response body: normalised, ``""`` for "none".

    Raises:
        BadReply: not JSON, no ``choices[0].message.content`` string, or not a short phrase of letters,
            spaces and hyphens (at most ``MAX_KEYWORD_WORDS`` words).
    """
    try:
        content = json.loads(body)["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise BadReply(f"not a chat completion ({type(exc).__name__}: {exc})") from exc
    if not isinstance(content, str):
        raise BadReply(f"message content is {type(content).__name__}, not a string")
    phrase = _REPLY_PREFIX.sub("", normalise_text(content)).strip(_REPLY_STRIP)
    if phrase in _NONE_REPLIES:
        return ""
    if not _REPLY_OK.fullmatch(phrase) or len(phrase.split()) > MAX_KEYWORD_WORDS:
        raise BadReply(f"not a short phrase: {content[:80]!r}")
    return normalise_keyword(phrase)


def keyword_in_answer(keyword: str, answer: str) -> bool:
    """Whether the Grad-CAM can use ``keyword`` for ``answer``: ``""`` (no finding), one of the answer's lexicon
    findings, or a phrase the answer spells (case, hyphens and spacing normalised as the lexicon does)."""
    return not keyword or bool(keyword_spans(answer, keyword))


def _is_loopback(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cache_key(answer: str) -> str:
    """The cache key of an answer: its text, whitespace collapsed (the release's answers end in ". ")."""
    return " ".join(answer.split())


def _load_cache(path: Path) -> dict[str, str]:
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot read a keyword cache from it ({exc})") from exc
    if not isinstance(values, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in values.items()):
        raise UserError(f"{path}: expected a JSON object mapping answer text to keyword (strings)")
    return values


def _write_cache(path: Path, values: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(values, ensure_ascii=False, indent=0, sort_keys=True) + "\n")


class LLMKeywords:
    """Keywords from an OpenAI-compatible ``POST {base_url}/chat/completions``, cached per answer text.

    ``__call__(answer, question)`` returns the cached or freshly asked keyword of ``answer``; when the LLM
    says the answer names no finding, the question's first lexicon finding (as ``lexicon_keyword`` does).
    Any failure -- timeout, connection error, HTTP error, malformed or garbage reply, or a keyword that the
    answer does not spell (``rejected``: see :func:`keyword_in_answer`) -- returns ``fallback(answer,
    question)`` and is counted in ``stats`` by reason; failures are not cached, so a later run asks again.

    Timeouts, connection errors and 5xx are retried ``retries`` times; after ``max_failures`` consecutive such
    failures the server is taken as down and no longer asked (counted as ``llm_disabled``), which bounds a run
    against a dead host. Thread-safe: ``precompute_keywords`` may call it from several threads.

    The cache (``cache_path``: JSON ``cache_key(answer)`` -> keyword, ``""`` for none) is loaded at
    construction and written atomically at most every ``save_every_s`` seconds, by ``save()``, and on leaving
    a ``with`` block.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        timeout: float = 30.0,
        cache_path: str | Path | None = None,
        fallback: KeywordFn = lexicon_keyword,
        *,
        retries: int = 1,
        max_failures: int = 5,
        max_tokens: int = 16,
        api_key: str | None = None,
        save_every_s: float = 10.0,
    ) -> None:
        if timeout <= 0:
            raise UserError(f"LLM timeout must be > 0 seconds, got {timeout}")
        if urllib.parse.urlsplit(base_url).scheme not in ("http", "https"):
            raise UserError(f"LLM base URL {base_url!r}: expected http(s)://host:port/v1")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.timeout = timeout
        self.fallback = fallback
        self.retries = retries
        self.max_failures = max_failures
        self.max_tokens = max_tokens
        self.api_key = api_key
        self.save_every_s = save_every_s
        self.cache_path = Path(cache_path) if cache_path else None
        self.cache: dict[str, str] = {}
        if self.cache_path is not None and self.cache_path.exists():
            self.cache = _load_cache(self.cache_path)
        self.stats: Counter[str] = Counter()
        self.requests = 0  # HTTP requests sent, retries included
        self._failures_in_row = 0
        # A cache written before keywords were checked, or edited by hand, may hold keywords that their answer
        # does not spell: drop them (counted, and gone from the file at the next save) so they are asked again.
        stale = [key for key, keyword in self.cache.items() if not keyword_in_answer(keyword, key)]
        for key in stale:
            del self.cache[key]
        self.dropped_from_cache = len(stale)
        self._dirty = bool(stale)
        self._last_save = time.monotonic()
        self._lock = threading.Lock()
        self._save_lock = threading.Lock()
        # A proxy from the environment must not swallow a local server's requests.
        handlers = [urllib.request.ProxyHandler({})] if _is_loopback(self.url) else []
        self._opener = urllib.request.build_opener(*handlers)

    # --- the HTTP exchange ---

    def _request_body(self, answer: str) -> bytes:
        return json.dumps(
            {
                "model": self.model,
                "messages": [
                    {"role": "system", "content": SYSTEM_PROMPT},
                    {"role": "user", "content": f"Answer: {answer.strip()}\nMost important finding:"},
                ],
                "temperature": 0,
                "max_tokens": self.max_tokens,
                "stream": False,
            }
        ).encode()

    def _post(self, body: bytes) -> bytes:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        with self._lock:
            self.requests += 1
        with self._opener.open(request, timeout=self.timeout) as response:
            return response.read()

    def ask(self, answer: str) -> tuple[str | None, str]:
        """One question to the server: ``(keyword, "llm")`` or ``(None, failure reason)``; never raises."""
        body = self._request_body(answer)
        reason = "timeout"
        for _ in range(1 + max(self.retries, 0)):
            try:
                keyword = parse_reply(self._post(body))
            except BadReply:
                return None, "bad_reply"
            except urllib.error.HTTPError as exc:
                reason = "http_error"
                if exc.code < 500:
                    break
            except TimeoutError:  # socket.timeout is TimeoutError
                reason = "timeout"
            except urllib.error.URLError as exc:
                reason = "timeout" if isinstance(exc.reason, TimeoutError) else "connection_error"
            except (OSError, http.client.HTTPException):  # reset, remote disconnected, incomplete read
                reason = "connection_error"
            else:
                return (keyword, "llm") if keyword_in_answer(keyword, answer) else (None, "rejected")
        return None, reason

    # --- the callable ---

    def __call__(self, answer: str, question: str = "") -> str:
        key = cache_key(answer)
        with self._lock:
            cached = self.cache.get(key)
            disabled = 0 < self.max_failures <= self._failures_in_row
            if cached is not None:
                self.stats["cache_hit"] += 1
            elif disabled:
                self.stats["llm_disabled"] += 1
        if cached is None and disabled:
            return self.fallback(answer, question)
        if cached is None:
            keyword, reason = self.ask(answer)
            with self._lock:
                self.stats[reason] += 1
                if keyword is None:
                    if reason not in ("bad_reply", "rejected"):  # the server is up: it answered
                        self._failures_in_row += 1
                else:
                    self._failures_in_row = 0
                    self.cache[key] = keyword
                    self._dirty = True
            if keyword is None:
                return self.fallback(answer, question)
            cached = keyword
            if time.monotonic() - self._last_save >= self.save_every_s:
                self.save()
        return cached or lexicon_keyword("", question)

    # --- cache and reporting ---

    def save(self, force: bool = False) -> None:
        """Write the cache now (atomically: temp file, then ``os.replace``) if it changed or ``force``."""
        if self.cache_path is None:
            return
        with self._save_lock:  # one writer at a time, so an older snapshot never replaces a newer one
            with self._lock:
                if not (self._dirty or force):
                    return
                snapshot = dict(self.cache)
                self._dirty = False
                self._last_save = time.monotonic()
            _write_cache(self.cache_path, snapshot)

    def __enter__(self) -> LLMKeywords:
        return self

    def __exit__(self, *exc: object) -> None:
        self.save()

    @property
    def fallbacks(self) -> int:
        return sum(self.stats[reason] for reason in FALLBACK_REASONS)

    def report(self) -> str:
        """One line: where the keywords came from, failures by reason."""
        stats = self.stats
        text = f"keywords from {self.model} at {self.url}: {stats['llm']} asked, {stats['cache_hit']} cached"
        failed = {reason: self.stats[reason] for reason in FALLBACK_REASONS if self.stats[reason]}
        if failed:
            detail = ", ".join(f"{n} {reason}" for reason, n in failed.items())
            text += f"; {self.fallbacks} fell back to the lexicon ({detail})"
        if self.dropped_from_cache:
            text += f"; {self.dropped_from_cache} cached keywords not in their answer dropped"
        return text + f"; {self.requests} HTTP requests"


def precompute_keywords(
    answers: Iterable[str], backend: KeywordFn, progress: bool = True, workers: int = 1
) -> dict[str, str]:
    """The keyword of every *unique* answer (first-seen order), asked once each, with a progress bar.

    ``workers`` > 1 asks a thread-safe backend (``LLMKeywords``) concurrently. A backend with ``save()`` is
    saved at the end.
    """
    from tqdm import tqdm

    unique = list(dict.fromkeys(answers))
    bar = tqdm(total=len(unique), desc="keywords", unit="answer", disable=not progress)
    result: dict[str, str] = {}

    def one(answer: str) -> str:
        keyword = backend(answer)
        bar.update(1)
        return keyword

    try:
        if workers > 1:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                result = dict(zip(unique, pool.map(one, unique), strict=True))
        else:
            result = {answer: one(answer) for answer in unique}
    finally:
        bar.close()
        if hasattr(backend, "save"):
            backend.save()
    return result


def make_keyword_fn(
    source: str,
    *,
    base_url: str = SaliencyConfig.llm_base_url,
    model: str = SaliencyConfig.llm_model,
    timeout: float = SaliencyConfig.llm_timeout,
    cache_path: str | Path | None = None,
) -> KeywordFn:
    """The keyword callable ``(answer, question="") -> str`` of ``SaliencyConfig.keyword_source``.

    ``"lexicon"`` gives ``lexicon_keyword``; ``"llm"`` an ``LLMKeywords`` (call its ``save()`` at the end of a
    run). ``"truth"`` is not a function of the answer: ground-truth keywords come with the samples.
    """
    if source == "lexicon":
        return lexicon_keyword
    if source == "llm":
        return LLMKeywords(base_url, model, timeout=timeout, cache_path=cache_path)
    if source == "truth":
        raise ValueError(
            "keyword source 'truth': ground-truth keywords come with the samples (the dataset's findings), "
            "not from a function of the answer; read them from the batch instead of calling make_keyword_fn"
        )
    raise ValueError(f"unknown keyword source {source!r}; choose one of lexicon, llm, truth")


def answer_keyword_fn(saliency: SaliencyConfig, run_dir: str | Path | None = None) -> KeywordFn:
    """The keyword of a *generated* answer (inference, and training's Grad-CAM on the ground-truth answer when
    the source is a function of it). ``truth`` falls back to the lexicon: a generated answer has no ground truth.
    The LLM cache defaults to ``<run_dir>/keywords_llm.json``."""
    if saliency.keyword_source in ("lexicon", "truth"):
        return lexicon_keyword
    cache = saliency.llm_cache or (str(Path(run_dir) / "keywords_llm.json") if run_dir is not None else None)
    return make_keyword_fn(saliency.keyword_source, base_url=saliency.llm_base_url, model=saliency.llm_model,
                           timeout=saliency.llm_timeout, cache_path=cache)  # fmt: skip


def finish_keywords(keyword_fn: KeywordFn) -> str | None:
    """End of a run: write an LLM backend's cache and return its one-line report (None for the lexicon)."""
    if not isinstance(keyword_fn, LLMKeywords):
        return None
    keyword_fn.save()
    return keyword_fn.report()


# ----------------------------------------------------------------------------------------------------------
# diffvqa keywords

QUESTION_FILES = ("questions.csv", "mimic_pair_questions.csv")  # a prepared cache, a release directory


def read_answers(data: str | Path) -> list[str]:
    """Every answer (with repeats) of ``questions.csv`` (prepared cache) or ``mimic_pair_questions.csv``
    (release) in the directory ``data``, or of the CSV file ``data`` itself."""
    data = Path(data)
    if data.is_dir():
        found = [data / name for name in QUESTION_FILES if (data / name).is_file()]
        if not found:
            raise UserError(
                f"{data}: expected a prepared cache (questions.csv) or a Medical-Diff-VQA release directory "
                f"(mimic_pair_questions.csv); found neither"
            )
        path = found[0]
    elif data.is_file():
        path = data
    else:
        raise MissingInputError(f"{data}: no such directory (expected a prepared cache or a release directory)")
    from diffvqa.data.release import read_csv_text

    reader = csv.reader(io.StringIO(read_csv_text(path, "a CSV with an 'answer' column"), newline=""))
    try:
        header = next(reader, [])
        if "answer" not in header:
            raise UserError(f"{path}: expected an 'answer' column, found columns {header}")
        column = header.index("answer")
        return [row[column] for row in reader if len(row) > column]
    except csv.Error as exc:
        raise UserError(f"{path}: line {reader.line_num}: not a readable CSV ({exc})") from None


@command("diffvqa keywords")
def keywords_main(argv: Sequence[str] | None = None) -> int:
    """``diffvqa keywords``: ask an LLM for the keyword of every unique answer; write answer -> keyword JSON.

    The output file is the ``LLMKeywords`` cache itself (``saliency.llm_cache``): answers whose request failed
    are left out, so running the command again asks only for those.
    """
    defaults = SaliencyConfig()
    parser = ArgumentParser(prog="diffvqa keywords", description="precompute LLM keywords for every unique answer")
    parser.add_argument("--data", required=True, help="prepared cache or release directory (or a questions CSV)")
    parser.add_argument("--out", required=True, help="JSON file answer -> keyword (resumed if it exists)")
    parser.add_argument("--base-url", default=defaults.llm_base_url, help="OpenAI-compatible API base URL")
    parser.add_argument("--model", default=defaults.llm_model, help="model name served at --base-url")
    parser.add_argument("--timeout", type=float, default=defaults.llm_timeout, help="seconds per request")
    parser.add_argument("--workers", type=int, default=1, help="concurrent requests")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    if args.workers < 1:
        parser.error(f"--workers {args.workers}: expected 1 or more concurrent requests")
    answers = read_answers(args.data)
    backend = LLMKeywords(args.base_url, args.model, timeout=args.timeout, cache_path=args.out)
    keys = {cache_key(answer) for answer in answers}
    unique = len(keys)
    print(f"{len(answers)} answers, {unique} unique, {len(backend.cache)} already in {args.out}")
    precompute_keywords(answers, backend, progress=not args.no_progress, workers=args.workers)
    backend.save(force=True)  # even when nothing new came back, so that --out exists
    print(backend.report())
    done = sum(1 for key in keys if key in backend.cache)
    print(f"wrote {done} of {unique} unique answers to {args.out}")
    if unique and done < unique:
        print(
            f"{unique - done} answers have no LLM keyword (they fall back to the lexicon); rerun to retry",
            file=sys.stderr,
        )
    if unique and done == 0:
        print(
            f"diffvqa keywords: error: no answer got an LLM keyword; is {args.base_url} serving?",
            file=sys.stderr,
        )
        return 1
    return 0
