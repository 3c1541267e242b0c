"""Keywords: the one clinical term of an answer that conditions the Grad-CAM (``docs/design.md``, step 6).

Three sources, each a callable ``(answer, question="") -> keyword`` where ``""`` means "no keyword" (the
Grad-CAM score then falls back to the whole answer):

* ``lexicon_keyword`` (the default; :mod:`diffvqa.saliency.lexicon`): the first of the dataset's 30 finding
  names (or a synonym of one) named in the answer, else the first named in the question, else ``""``.
* ``LLMKeywords`` (:mod:`diffvqa.saliency.llm`): an OpenAI-compatible chat endpoint, cached per unique answer
  text in a JSON file, falling back to the lexicon on any failure (counted by reason, never raised).
* ground truth: comes with the samples (the phantom knows its findings), so it is the caller's business.

``make_keyword_fn`` picks the source of ``SaliencyConfig.keyword_source``. ``diffvqa keywords``
(``keywords_main``) precomputes the LLM keyword of every unique answer of a release or prepared cache. The
lexicon itself, and ``keyword_spans`` (where a keyword is spelled in an answer, for the Grad-CAM), are in
:mod:`diffvqa.saliency.lexicon`. This module is torch-free.
"""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from diffvqa.config import SaliencyConfig
from diffvqa.errors import ArgumentParser, MissingInputError, UserError, command
from diffvqa.saliency.lexicon import lexicon_keyword
from diffvqa.saliency.llm import LLMKeywords, cache_key

KeywordFn = Callable[..., str]  # (answer: str, question: str = "") -> str
# the sources that can name a *generated* answer's keyword (ground truth cannot: a generated answer has none)
INFERENCE_KEYWORD_SOURCES = ("lexicon", "llm")


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
    return make_keyword_fn(
        saliency.keyword_source,
        base_url=saliency.llm_base_url,
        model=saliency.llm_model,
        timeout=saliency.llm_timeout,
        cache_path=cache,
    )


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
    from diffvqa.data.csv_files import read_csv_text

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
