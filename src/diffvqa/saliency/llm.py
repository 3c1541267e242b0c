"""Keywords from an LLM: a client of an OpenAI-compatible chat endpoint, cached per answer text.

The paper used Llama-3-70B; a local Ollama serves such an endpoint at ``http://127.0.0.1:11434/v1``.
:class:`LLMKeywords` is a keyword source ``(answer, question="") -> keyword`` (:mod:`diffvqa.saliency.keywords`
chooses among the sources): it asks ``POST {base_url}/chat/completions`` once per unique answer, keeps the replies
in a JSON file, and falls back to the lexicon on any failure, which is counted by reason, never raised. A reply is
only accepted when the Grad-CAM can use it: the keyword is spelled in the answer (after the lexicon's
normalisation) or is one of the answer's findings; any other (a hallucinated phrase) is counted ``rejected`` and
never cached. Torch-free.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from diffvqa.errors import UserError
from diffvqa.files.atomic import write_atomic
from diffvqa.saliency.lexicon import keyword_spans, lexicon_keyword, normalise_keyword, normalise_text

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
        fallback: Callable[..., str] = lexicon_keyword,  # a keyword source
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
