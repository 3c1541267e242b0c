"""A static HTML report of an evaluation: the metrics table and example pairs with their saliency maps.

``write_report`` writes one self-contained ``report.html`` (the style sheet ``report.css`` inlined, no JavaScript,
no server) and its pictures under ``report_images/``, referenced by relative paths so the folder can be moved or
zipped. Every piece of text that comes from data (questions, answers, ids, metric names) is HTML-escaped.

The metrics come in the structure of ``metrics.json`` (:func:`diffvqa.metrics.evaluate_answers`, plus the
optional ``pointing_game`` and ``registration_error_ratio`` of the evaluation); missing values show as "—".
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from diffvqa.data.data_use import DATA_USE_WARNING, needs_data_use_warning
from diffvqa.files.run import METRICS_LOG, VIEWER_DIR
from diffvqa.metrics.captions import CAPTION_KEYS, DIFFERENCE, normalize_answer
from diffvqa.metrics.headline import HEADLINES, MECHANISM_KEYS, lookup
from diffvqa.metrics.published import COLUMN_LABELS, COLUMNS, PUBLISHED, comparability, run_row
from diffvqa.report.drawing import colorbar, draw_outlines, heat_overlay, mask_contour_overlay, resize_array, to_uint8
from diffvqa.version import __version__

REPORT_FILE = "report.html"
IMAGES_DIR = "report_images"
CSS_FILE = "report.css"
DISPLAY_SIZE = 256  # pictures smaller than this are upsampled (bilinear; masks nearest) before drawing
MISSING = "—"

# (key in metrics, label)
ACCURACY_ROWS = (("accuracy_closed", "Accuracy, closed (yes/no)"), ("accuracy_open", "Accuracy, open"))
METRICS_DOC = "docs/metrics.md"  # in the repository: what every number means


# ----------------------------------------------------------------------------------------------------------
# formatting


def _number(value: Any) -> float | None:
    """``value`` as a finite float, or None (missing, None, NaN, not a number)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _fmt(value: Any, digits: int = 3) -> str:
    number = _number(value)
    if number is None:
        return MISSING
    if isinstance(value, int):
        return f"{value:,}"
    return f"{number:.{digits}f}"


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _text_or_missing(value: Any) -> str:
    return _esc(value) if isinstance(value, str) and value.strip() else f'<span class="missing">{MISSING}</span>'


def _fmt_count(value: Any) -> str:
    """A count as an integer (``153``, ``1,024``), also when a JSON round trip made it a float."""
    number = _number(value)
    return MISSING if number is None else f"{round(number):,}"


def _fmt_interval(value: Any, interval: Any) -> str:
    """``0.555 [0.512, 0.598]``: a score with its 95 % interval (the score alone without one)."""
    text = _fmt(_number(value))
    if isinstance(interval, Sequence) and len(interval) == 2 and all(_number(x) is not None for x in interval):
        text += f" [{_number(interval[0]):.3f}, {_number(interval[1]):.3f}]"
    return text


def _docs_reference(name: str) -> str:
    """One of the repository's docs, named in words with the version that wrote the report. Not a link: a report
    travels without the repository (copied, zipped, attached), and neither a link into this machine's checkout nor
    one relative to the report would lead anywhere there."""
    return f"{_esc(name)} in the diffvqa repository (diffvqa {_esc(__version__)})"


# ----------------------------------------------------------------------------------------------------------
# the tables
#
# A table has the columns of what was evaluated: the model's (final) answers, its preliminary (pass-1) answers when
# the evaluation was two-pass, and the blind baseline with the difference model − baseline when one is given. A row
# is (label, values per column, kind): "score" (higher is better), "lower" (lower is better), "reference" (a
# reference level: no difference), "count" (an integer, no difference) or "text" (already formatted).


def _cells(values: Sequence[Any], kind: str) -> list[str]:
    if kind == "count":
        return [f'<td class="num count">{_fmt_count(v)}</td>' for v in values]
    if kind == "text":
        return [f'<td class="num">{v if v is not None else MISSING}</td>' for v in values]
    return [f'<td class="num">{_fmt(_number(v))}</td>' for v in values]


def _delta_cell(model: Any, baseline: Any, kind: str) -> str:
    a, b = _number(model), _number(baseline)
    if kind not in ("score", "lower") or a is None or b is None:
        return "<td></td>"
    delta = a - b
    better = delta < 0 if kind == "lower" else delta > 0
    worse = delta > 0 if kind == "lower" else delta < 0
    css = "better" if better else "worse" if worse else ""
    return f'<td class="num {css}">{delta:+.3f}</td>'


def _row(label: str, values: Sequence[Any], kind: str, with_baseline: bool) -> str:
    """One row: the label, a cell per column and, with a baseline, model − baseline (first and last value)."""
    css = ' class="sub"' if kind in ("reference", "count") else ""
    cells = [f'<th scope="row"{css}>{_esc(label)}</th>', *_cells(values, kind)]
    if with_baseline:
        cells.append(_delta_cell(values[0], values[-1], kind))
    return "<tr>" + "".join(cells) + "</tr>"


def _group_header(title: str, columns: int) -> str:
    return f'<tr class="group"><th colspan="{columns}">{_esc(title)}</th></tr>'


def _table(head: Sequence[str], groups: list[tuple[str, list[str]]]) -> str:
    """A metrics ``<table>`` of titled row groups; groups without rows are left out ("" when none has rows)."""
    body = "".join(_group_header(title, len(head)) + "".join(rows) for title, rows in groups if rows)
    if not body:
        return ""
    heads = "".join(f"<th>{_esc(h)}</th>" for h in head)
    return f'<table class="metrics"><thead><tr>{heads}</tr></thead><tbody>{body}</tbody></table>'


def _asked(block: Any) -> int:
    """How many questions a block of caption scores covers (0 when absent)."""
    n = _number((block or {}).get("n")) if isinstance(block, Mapping) else None
    return int(n or 0)


def metrics_table(metrics: Mapping[str, Any], baseline: Mapping[str, Any] | None = None) -> str:
    """The answer scores: the final answers, beside the preliminary (pass-1) answers of a two-pass evaluation and
    the blind baseline with the difference final − baseline (green where the model is better) when given.

    Blocks that would hold no question are left out: "All question types" when only difference questions were
    asked (it would repeat the difference block), exact match when there are no other questions.
    """
    with_baseline = baseline is not None
    baseline = baseline or {}
    preliminary = metrics.get("preliminary") if isinstance(metrics.get("preliminary"), Mapping) else None
    head = ["Metric", "Final answers" if preliminary is not None else "Model"]
    head += ["Preliminary (pass 1)"] * (preliminary is not None)
    head += ["Blind baseline", "Δ final − blind" if preliminary is not None else "Δ model − blind"] * with_baseline

    def values(model: Any, first_pass: Any, blind: Any) -> list[Any]:
        return [model, *[first_pass] * (preliminary is not None), *[blind] * with_baseline]

    groups = []
    asked_difference = max(_asked(metrics.get(DIFFERENCE)), _asked(baseline.get(DIFFERENCE)))
    for key, title in ((DIFFERENCE, "Difference questions (papers' protocol)"), ("all", "All question types")):
        scores, base = metrics.get(key) or {}, baseline.get(key) or {}
        if not (scores or base) or (key == "all" and max(_asked(scores), _asked(base)) <= asked_difference):
            continue  # nothing asked, or "all" would repeat the difference block
        first = (preliminary or {}) if key == DIFFERENCE else {}
        rows = [_row(k, values(scores.get(k), first.get(k), base.get(k)), "score", with_baseline) for k in CAPTION_KEYS]
        rows.append(_row("questions", values(scores.get("n"), first.get("n"), base.get("n")), "count", with_baseline))
        groups.append((title, rows))
    if any(_number(m.get(k)) for m in (metrics, baseline) for k in ("n_closed", "n_open")):
        rows = [
            _row(label, values(metrics.get(k), None, baseline.get(k)), "score", with_baseline)
            for k, label in ACCURACY_ROWS
        ]
        for key, label in (("n_closed", "closed questions"), ("n_open", "open questions")):
            rows.append(_row(label, values(metrics.get(key), None, baseline.get(key)), "count", with_baseline))
        groups.append(("Exact-match accuracy (non-difference questions)", rows))
    return _table(head, groups)


def mechanisms_table(metrics: Mapping[str, Any], baseline: Mapping[str, Any] | None = None) -> str:
    """The mechanisms scored against the phantom's ground truth, each beside its reference levels, in words
    ("" when the evaluation has none: real data). What each number means: ``docs/metrics.md``."""
    with_baseline = baseline is not None and any(k in baseline for k in MECHANISM_KEYS)
    baseline = baseline or {}
    head = ["Mechanism", "Model", *(["Blind baseline", "Δ model − blind"] * with_baseline)]

    def row(label: str, path: Sequence[str], kind: str) -> str | None:
        model, blind = lookup(metrics, path), lookup(baseline, path)
        if _number(model) is None and (not with_baseline or _number(blind) is None):
            return None
        return _row(label, [model, *[blind] * with_baseline], kind, with_baseline)

    def rows(*specs: tuple[str, Sequence[str], str]) -> list[str]:
        return [r for r in (row(*spec) for spec in specs) if r is not None]

    reference = metrics.get("pointing_game_reference") or {}
    grid = reference.get("grid") if isinstance(reference, Mapping) else None
    pointing = rows(
        ("pointing game of the shared mask", HEADLINES["pointing game"].path, "score"),
        ("chance: a random pixel (the regions' mean area share)", HEADLINES["chance"].path, "reference"),
        ("fixed-point prior: the best single pixel, learned on the train split", HEADLINES["prior"].path, "reference"),
        (f"ceiling of the {grid or ''} saliency grid".replace("  ", " "), HEADLINES["ceiling"].path, "reference"),
        ("registered difference |aligned main − reference| alone", HEADLINES["difference map"].path, "reference"),
        ("difference questions with a changed region", ("pointing_game_n",), "count"),
    )
    conditioning = []
    for label, path in (
        ("the keyword's own Grad-CAM", ("keyword_conditioning",)),
        ("after the change gate", ("keyword_conditioning", "gated")),
    ):
        model, blind = lookup(metrics, path), lookup(baseline, path)
        if isinstance(model, Mapping) or (with_baseline and isinstance(blind, Mapping)):
            texts = [
                _fmt_interval(e.get("score"), e.get("ci95")) if isinstance(e, Mapping) else None
                for e in (model, *[blind] * with_baseline)
            ]
            cells = "".join(_cells(texts, "text")) + ("<td></td>" if with_baseline else "")
            conditioning.append(f'<tr><th scope="row">{_esc(label)} (95 % interval)</th>{cells}</tr>')
    if conditioning:
        entry = metrics.get("keyword_conditioning") or {}
        gap = _number(entry.get("min_gap_px"))
        conditioning += rows(
            ("chance: a map that ignores the keyword", ("keyword_conditioning", "chance"), "reference"),
            (
                f"ordered pairs of named changes{f' at least {gap:g} px apart' if gap else ''}",
                ("keyword_conditioning", "pairs"),
                "count",
            ),
            ("answers they come from", ("keyword_conditioning", "questions"), "count"),
        )
    registration = rows(
        (
            "registration error ratio: corner error after / before alignment",
            HEADLINES["registration error ratio"].path,
            "lower",
        ),
        ("identity: no aligner", HEADLINES["identity"].path, "reference"),
        ("mean corner error after alignment (px)", ("registration_error_px", "after"), "reference"),
        ("mean corner error before alignment (px)", ("registration_error_px", "before"), "reference"),
        ("pairs", ("registration_error_px", "pairs"), "count"),
    )
    masks = []
    for m in (metrics, *[baseline] * with_baseline):
        fallbacks = m.get("empty_mask_fallbacks")
        if isinstance(fallbacks, Mapping):
            fell_back, masks_made = fallbacks.get("fell_back_to_all_ones"), fallbacks.get("masks")
            masks.append(f"{_fmt_count(fell_back)} of {_fmt_count(masks_made)}")
        else:
            masks.append(None)
    mask_rows = []
    if any(masks):
        cells = "".join(_cells(masks, "text")) + ("<td></td>" if with_baseline else "")
        mask_rows.append(f'<tr><th scope="row">shared masks that fell back to all ones (no masking)</th>{cells}</tr>')
    return _table(
        head,
        [
            ("Pointing game: does the shared mask peak in the question's true change region?", pointing),
            (
                "Keyword conditioning: is the map for one named change higher in its region than in the other's?",
                conditioning,
            ),
            ("Registration: Θ against the true transform between the visits", registration),
            ("Saliency masks", mask_rows),
        ],
    )


def passes_section(metrics: Mapping[str, Any]) -> str:
    """Does the saliency loop help? The final (masked, pass-2) answers beside the preliminary (pass-1) ones on the
    difference questions, with the paired 95 % interval of the difference; empty for single-pass evaluations."""
    passes = metrics.get("final_vs_preliminary")
    if not isinstance(passes, Mapping):
        return ""
    d = passes.get("CIDEr_difference") or {}
    estimate, low, high = _number(d.get("estimate")), _number(d.get("low")), _number(d.get("high"))
    if estimate is None or low is None or high is None:
        return ""
    if low > 0:
        verdict = "the masked second pass answers <b>better</b> than the first"
    elif high < 0:
        verdict = "the masked second pass answers <b>worse</b> than the first"
    else:
        verdict = "the two passes cannot be told apart"
    rows = [
        ("final − preliminary CIDEr-D (95 % interval, paired over questions)",
         f"{estimate:+.3f} [{low:+.3f}, {high:+.3f}]"),
        ("answers the second pass changed", _fmt_count(passes.get("answers_changed"))),
        ("exactly right only in the final answer", _fmt_count(passes.get("right_only_in_final"))),
        ("exactly right only in the preliminary answer", _fmt_count(passes.get("right_only_in_preliminary"))),
        ("difference questions", _fmt_count(passes.get("n"))),
    ]  # fmt: skip
    body = "".join(f'<tr><th scope="row">{_esc(k)}</th><td class="num">{v}</td></tr>' for k, v in rows)
    return (
        "<h3>Final vs preliminary answers</h3>"
        f'<p class="note">The method answers twice: once from the whole images (preliminary), then from the images '
        f"masked by the saliency of its own first answer's keyword (final). On these questions {verdict} "
        "(CIDEr-D per answer, bootstrap over questions; one trained model — other seeds vary more).</p>"
        f'<table class="metrics"><tbody>{body}</tbody></table>'
    )


def per_finding_table(metrics: Mapping[str, Any]) -> str:
    """The pointing game per finding (the question's most visible change) beside its reference levels."""
    per_finding = metrics.get("pointing_game_per_finding")
    if not isinstance(per_finding, Mapping) or not per_finding:
        return ""
    head = "<th>finding</th><th>n</th><th>pointing game</th><th>chance</th><th>prior</th><th>ceiling</th>"
    rows = []
    for name, entry in per_finding.items():
        cells = [f"<td>{_esc(name)}</td>", f'<td class="num count">{_fmt(entry.get("n"))}</td>']
        cells += [f'<td class="num">{_fmt(entry.get(k))}</td>' for k in ("score", "chance", "prior", "ceiling")]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (
        "<h3>Pointing game per finding</h3>"
        f'<table class="metrics"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
    )


def per_type_table(metrics: Mapping[str, Any]) -> str:
    """Per question type: n, the caption scores and exact-match accuracy ("" when there is no per-type data)."""
    per_type = metrics.get("per_type") or {}
    accuracy = metrics.get("accuracy_per_type") or {}
    if len(set(per_type) | set(accuracy)) < 2:
        return ""  # one question type: the answers table above already shows it
    names = ("BLEU-1", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")
    head = "<th>Question type</th><th>n</th>" + "".join(f"<th>{_esc(n)}</th>" for n in names) + "<th>Accuracy</th>"
    rows = []
    for qtype in dict.fromkeys([*per_type, *accuracy]):
        scores = per_type.get(qtype) or {}
        acc = (accuracy.get(qtype) or {}).get("accuracy")
        cells = [f'<th scope="row">{_esc(qtype)}</th>', f'<td class="num">{_fmt(scores.get("n"))}</td>']
        cells += [f'<td class="num">{_fmt(scores.get(n))}</td>' for n in names]
        cells.append(f'<td class="num">{_fmt(acc)}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (
        "<details><summary>Per question type (CIDEr is relative to each type's own references)</summary>"
        f'<table class="metrics per-type"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
        "</details>"
    )


def published_section(metrics: Mapping[str, Any], baseline: Mapping[str, Any] | None = None) -> str:
    """This run's difference-question scores above the published rows (``comparison.md`` as HTML). Folded away
    when the run is not comparable with them (the phantom, a subset, another split), with the reasons in its
    summary line."""
    reasons = comparability(metrics)
    head = '<th>Method</th><th class="text">Venue</th>'
    head += "".join(f"<th>{_esc(COLUMN_LABELS.get(c, c))}</th>" for c in COLUMNS)
    ours = [("this run", run_row(metrics))]
    if baseline is not None:
        ours.append(("blind baseline", run_row(baseline)))
    rows = [
        f'<tr class="ours"><th scope="row">{_esc(name)}</th><td class="text">diffvqa</td>'
        + "".join(f'<td class="num">{_fmt(row[c])}</td>' for c in COLUMNS)
        + "</tr>"
        for name, row in ours
    ]
    for result in PUBLISHED:
        row = result.row()
        name = result.method + (f" ({result.note})" if result.note else "")
        rows.append(
            f'<tr><th scope="row">{_esc(name)}</th><td class="text">{_esc(result.venue)}</td>'
            + "".join(f'<td class="num">{_fmt(row[c])}</td>' for c in COLUMNS)
            + "</tr>"
        )
    table = f'<table class="metrics"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
    note = (
        '<p class="note">Difference questions of the Medical-Diff-VQA test split (16,389 in the papers). No paper '
        "says which METEOR it used; each published METEOR is placed by magnitude (0.3–0.4 reads like the "
        "pycocoevalcap jar, 0.65–0.70 like NLTK's sentence METEOR) — compare within a column only. – : not given.</p>"
    )
    if reasons:
        summary = "Published results on MIMIC-CXR — not comparable with this run: " + "; ".join(reasons)
        return f"<details><summary>{_esc(summary)}</summary>{table}{note}</details>"
    return f"<h3>Beside published results</h3>{table}{note}"


def implementation_note(metrics: Mapping[str, Any]) -> str:
    """How the caption scores were computed, with a warning when they are not comparable with papers."""
    impl = metrics.get("implementation")
    if not isinstance(impl, Mapping):
        return (
            '<p class="warning">⚠ The metric implementation is not recorded in these metrics; '
            "the numbers may not be comparable with published ones.</p>"
        )
    version = impl.get("pycocoevalcap")
    tokenizer = {"ptb": "PTB tokenizer (Stanford CoreNLP, Java)", "fallback": "Python fallback tokenizer"}.get(
        impl.get("tokenizer"), f"tokenizer {impl.get('tokenizer') or 'unknown'}"
    )
    java = impl.get("java")
    parts = [f"pycocoevalcap {version}" if version else "pycocoevalcap (version unknown)", tokenizer]
    parts.append(f"Java {java}" if java else "no Java")
    text = (
        f'<p class="note">Scores: {_esc(", ".join(parts))}; corpus-level BLEU-1..4, METEOR 1.5, ROUGE-L, '
        "CIDEr-D, as pycocoevalcap computes them.</p>"
    )
    text += _meteor_note(impl.get("METEOR_nltk"))
    if impl.get("comparable_with_papers") is not True:
        text += (
            '<p class="warning">⚠ Not comparable with published numbers: these scores were not computed with '
            "pycocoevalcap's PTB tokenizer (install a Java runtime and re-run the evaluation).</p>"
        )
    unavailable: dict[str, str] = {}
    for key in (DIFFERENCE, "all"):
        unavailable.update((metrics.get(key) or {}).get("unavailable") or {})
    if unavailable:
        items = "".join(f"<li><b>{_esc(what)}</b>: {_esc(why)}</li>" for what, why in unavailable.items())
        text += f'<div class="warning">⚠ Not computed:<ul>{items}</ul></div>'
    return text


def _meteor_note(nltk_impl: Any) -> str:
    """Which METEOR compares with which published numbers (in full: docs/metrics.md)."""
    if not isinstance(nltk_impl, Mapping):
        return ""
    return (
        '<p class="note">Two METEORs: <b>METEOR</b> (the pycocoevalcap jar, corpus level) and <b>METEOR_nltk</b> '
        f"(NLTK's sentence METEOR, mean over answers: NLTK {_esc(nltk_impl.get('nltk'))}, "
        f"{_esc(nltk_impl.get('matching'))}, {_esc(nltk_impl.get('tokens'))} tokens). Published METEORs of 0.3–0.4 "
        "read like the jar, 0.65–0.70 like NLTK's (the papers do not say which they used); never compare one with "
        f"the other's numbers: {_docs_reference(METRICS_DOC)}.</p>"
    )


# ----------------------------------------------------------------------------------------------------------
# example pictures


def _array(example: Mapping[str, Any], key: str, index: int, required: bool) -> np.ndarray | None:
    value = example.get(key)
    if value is None:
        if required:
            raise ValueError(f"report example {index}: missing image {key!r}")
        return None
    array = np.asarray(value)
    if array.ndim != 2:
        raise ValueError(f"report example {index}: {key!r} must be an (S, S) array, got shape {array.shape}")
    return array


def _display(array: np.ndarray) -> np.ndarray:
    size = max(array.shape)
    return resize_array(array, DISPLAY_SIZE) if size < DISPLAY_SIZE else array


def example_pictures(example: Mapping[str, Any], index: int = 0) -> list[tuple[str, str, Image.Image | None]]:
    """The pictures of one example as ``(file stem, caption, image or None)``; None marks a map that a
    single-pass example does not have."""
    main = _display(_array(example, "main", index, True))
    ref = _display(_array(example, "ref", index, True))
    aligned = _display(_array(example, "aligned_main", index, True))
    cams = {key: _array(example, key, index, False) for key in ("cam_main", "cam_ref", "mask")}
    cams = {key: None if value is None else _display(value.astype(np.float32)) for key, value in cams.items()}
    change = _array(example, "change_mask", index, False)
    change = None if change is None else _display(change.astype(bool))
    thickness = 2 if max(ref.shape) >= DISPLAY_SIZE else 1

    def overlay(gray: np.ndarray, heat: np.ndarray | None) -> Image.Image | None:
        return None if heat is None else heat_overlay(gray, heat)

    pictures: list[tuple[str, str, Image.Image | None]] = [
        ("main", "main (current)", Image.fromarray(to_uint8(main), "L")),
        ("ref", "reference (prior)", Image.fromarray(to_uint8(ref), "L")),
        ("aligned", "main aligned to reference", Image.fromarray(to_uint8(aligned), "L")),
        ("cam_main", "Grad-CAM, aligned main", overlay(aligned, cams["cam_main"])),
        ("cam_ref", "Grad-CAM, reference", overlay(ref, cams["cam_ref"])),
    ]
    if cams["mask"] is not None:
        mask_image = heat_overlay(ref, cams["mask"])
        caption = "shared mask M on reference"
        if change is not None:
            mask_image = mask_contour_overlay(mask_image, change, thickness=thickness)
            caption += " + true change (green)"
        pictures.append(("mask", caption, mask_image))
    elif change is not None:
        pictures.append(
            ("mask", "true change (green), no saliency", mask_contour_overlay(ref, change, thickness=thickness))
        )
    else:
        pictures.append(("mask", "shared mask M", None))
    outlines = example.get("outlines") or {}  # a dataset's boxes (diffvqa.metrics.boxes), in S x S pixels
    for k, (stem, caption, picture) in enumerate(pictures):
        if picture is not None and outlines.get(stem):
            draw_outlines(picture, outlines[stem], picture.width / _array(example, "ref", index, True).shape[-1],
                          width=thickness)  # fmt: skip
            pictures[k] = (stem, caption + (" + changed regions' boxes (cyan)" if stem == "mask" else
                                            " + MS-CXR boxes (cyan)"), picture)  # fmt: skip
    return pictures


# ----------------------------------------------------------------------------------------------------------
# the page


def _css() -> str:
    """The page's style sheet (package data beside this module), inlined so that the report is one file."""
    return (resources.files("diffvqa.report") / CSS_FILE).read_text(encoding="utf-8")


def _example_html(index: int, example: Mapping[str, Any], images: list[tuple[str, str | None]]) -> str:
    figures = []
    for caption, src in images:
        if src is None:
            body = '<div class="placeholder">single pass:<br>no saliency map</div>'
        else:
            body = f'<img src="{_esc(src)}" alt="{_esc(caption)}" loading="lazy">'
        figures.append(f"<figure>{body}<figcaption>{_esc(caption)}</figcaption></figure>")

    qtype = example.get("question_type")
    ids = example.get("ids") or {}
    header = [f"Example {index + 1}"]
    if isinstance(qtype, str) and qtype:
        header.append(f'<span class="tag">{_esc(qtype)}</span>')
    header += [f'<span class="id">{_esc(key)}: {_esc(value)}</span>' for key, value in ids.items()]

    final, truth = example.get("final"), example.get("answer")
    badge = ""
    if qtype != DIFFERENCE and isinstance(final, str) and isinstance(truth, str) and truth.strip():
        hit = normalize_answer(final) == normalize_answer(truth)
        badge = '<span class="badge hit">exact match</span>' if hit else '<span class="badge miss">no match</span>'
    keyword = example.get("keyword")
    keyword_html = (
        _esc(keyword)
        if isinstance(keyword, str) and keyword.strip()
        else f'<span class="missing">{MISSING} none (the CAM scored the whole answer)</span>'
    )
    if example.get("mask") is None and example.get("cam_main") is None:
        keyword_html = f'<span class="missing">{MISSING} (single pass)</span>'
    rows = [
        ("Question", _text_or_missing(example.get("question")), ""),
        ("Preliminary answer", _text_or_missing(example.get("preliminary")), ""),
        ("Keyword", keyword_html, ""),
        ("Final answer", _text_or_missing(final) + badge, "final"),
        ("Ground truth", _text_or_missing(truth), ""),
    ]
    table = "".join(f'<tr class="{css}"><th>{label}</th><td>{value}</td></tr>' for label, value, css in rows)
    return (
        f'<section class="example" id="example-{index + 1}"><h3>{" ".join(header)}</h3>'
        f'<div class="images">{"".join(figures)}</div><table class="qa">{table}</table></section>'
    )


def _viewer_link(out_dir: Path) -> str:
    """A link to the viewer of every question (``evaluate`` writes it beside the report), when it is there."""
    if not (out_dir / VIEWER_DIR / "index.html").is_file():
        return ""
    return (
        '<p class="note">A few examples below; every question with its pictures, filters and search: '
        f'<a href="{VIEWER_DIR}/index.html">{VIEWER_DIR}/index.html</a>.</p>'
    )


def _training_curves(training_run: str | Path | None, image_dir: Path) -> str:
    """The training curves of ``training_run`` as a section ("" when it has no metrics.jsonl). The note says what
    they were drawn from in words that stay right when the report is copied: the run's name and the steps its log
    covers, not the log's path (the demo's run lies in a directory the copy leaves behind)."""
    from diffvqa.files.run import find_metrics_log
    from diffvqa.report.curves import plot_runs, read_log

    log = None if training_run is None else find_metrics_log(training_run)
    if log is None:
        return ""
    png, svg = plot_runs([log.parent], image_dir / "training_curves")
    steps = [step for steps, _ in read_log(log).values() for step in steps]
    span = f", steps {min(steps):,}–{max(steps):,}" if steps else ""
    source = f"{METRICS_LOG} of the training run “{log.parent.name}”{span}"
    return (
        f'<h2>Training curves</h2><p class="note">{_esc(source)} · <a href="{IMAGES_DIR}/{svg.name}">SVG</a></p>'
        f'<img class="curves" src="{IMAGES_DIR}/{png.name}" alt="training curves" style="max-width: 100%">'
    )


def _mechanisms_section(metrics: Mapping[str, Any], baseline: Mapping[str, Any] | None) -> str:
    """The mechanism scores with their reference levels and per finding ("" on real data: no ground truth)."""
    table = mechanisms_table(metrics, baseline)
    if not table:
        return ""
    return (
        "<h2>Mechanisms, against the phantom's ground truth</h2>"
        '<p class="note">A score means something only beside its reference levels: above chance and the fixed-point '
        "prior, below the ceiling of the saliency grid; 0.5 is chance for keyword conditioning, 1.0 the identity for "
        f"the registration ratio. Definitions: {_docs_reference(METRICS_DOC)}.</p>"
        f"{table}{per_finding_table(metrics)}"
    )


def _summary_line(metrics: Mapping[str, Any]) -> str:
    """``2,000 questions · 192 difference questions · test split · two-pass · encoder pretrained`` (counts once when
    they are equal; where the encoder started when the evaluation recorded it)."""
    counts = {key: (metrics.get(key) or {}).get("n") for key in ("all", DIFFERENCE)}
    parts = []
    for key, label in (("all", "questions"), (DIFFERENCE, "difference questions")):
        n = counts[key]
        if isinstance(n, int) and not (key == "all" and n == counts[DIFFERENCE]):
            parts.append(f"{n:,} {label if n != 1 else label[:-1]}")  # "1 difference question"
    run = metrics.get("run") if isinstance(metrics.get("run"), Mapping) else {}
    if isinstance(run.get("split"), str):
        parts.append(f"{run['split']} split")
    if isinstance(run.get("mode"), str):
        parts.append(run["mode"])
    if run.get("encoder") == "pretrained" and not run.get("blind"):
        parts.append("encoder pretrained")
    elif run.get("encoder") and not run.get("blind"):
        parts.append("encoder from random weights")
    return " · ".join(parts)


def _data_use_note(metrics: Mapping[str, Any]) -> str:
    """The PhysioNet data-use warning, on every report not known to be of the phantom."""
    if not needs_data_use_warning(metrics):
        return ""
    return f'<p class="warning data-use">⚠ {_esc(DATA_USE_WARNING)}</p>'


def write_report(
    out_dir: str | Path,
    metrics: Mapping[str, Any],
    examples: Sequence[Mapping[str, Any]],
    baseline_metrics: Mapping[str, Any] | None = None,
    title: str = "diffvqa report",
    training_run: str | Path | None = None,
) -> Path:
    """Write ``out_dir/report.html`` and its pictures under ``out_dir/report_images/``.

    Args:
        out_dir: created if needed; an earlier report there is replaced.
        metrics: the model's ``metrics.json`` (see the module docstring); missing keys show as "—".
        examples: dicts with ``main``, ``ref``, ``aligned_main`` ((S, S) float arrays in [0, 1]); ``cam_main``,
            ``cam_ref``, ``mask`` (same, or None for single-pass); optional ``change_mask`` ((S, S) bool, the
            true change, drawn as a green outline); strings ``question``, ``preliminary``, ``keyword``,
            ``final``, ``answer`` (the ground truth), ``question_type``; ``ids`` (dict shown as tags).
        baseline_metrics: the blind (question-only) baseline's ``metrics.json``, shown beside the model's.
        title: the page title.
        training_run: a run directory or checkpoint; when its run has a ``metrics.jsonl``, the report shows its
            training curves (:mod:`diffvqa.report.curves`).

    Returns:
        The path of ``report.html``.
    """
    out_dir = Path(out_dir)
    image_dir = out_dir / IMAGES_DIR
    image_dir.mkdir(parents=True, exist_ok=True)
    for stale in image_dir.glob("example*.png"):
        stale.unlink()

    colorbar().save(image_dir / "colorbar.png")
    sections = []
    for index, example in enumerate(examples):
        images = []
        for stem, caption, picture in example_pictures(example, index):
            if picture is None:
                images.append((caption, None))
                continue
            name = f"example{index + 1:03d}_{stem}.png"
            picture.save(image_dir / name)
            images.append((caption, f"{IMAGES_DIR}/{name}"))
        sections.append(_example_html(index, example, images))

    curves_html = _training_curves(training_run, image_dir)
    from diffvqa.report.boxes import boxes_section  # it builds on this module's formatting

    summary = _summary_line(metrics)
    baseline_note = (
        '<p class="note">Blind baseline: the same model trained and evaluated with both images replaced by '
        "zeros (question only); Δ is green where the model beats it.</p>"
        if baseline_metrics is not None
        else ""
    )
    legend = (
        f'<p class="legend">heat: 0 <img src="{IMAGES_DIR}/colorbar.png" alt="colour scale"> 1 · CAMs and the '
        'mask are in the reference frame (main aligned) · <span class="swatch"></span> true change region, '
        "when the data has it · <span class=\"swatch boxes\"></span> a dataset's boxes (Chest ImaGenome's changed "
        "regions over the mask, MS-CXR's over the Grad-CAMs), when the cache has them</p>"
    )
    examples_html = "".join(sections) or '<p class="note">No examples.</p>'
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_esc(title)}</title>
<style>{_css()}</style>
</head>
<body>
<main>
<h1>{_esc(title)}</h1>
<p class="subtitle">{_esc(summary)}</p>
{_data_use_note(metrics)}
<h2>Answers</h2>
{metrics_table(metrics, baseline_metrics) or '<p class="note">No scores.</p>'}
{baseline_note}
{implementation_note(metrics)}
{passes_section(metrics)}
{per_type_table(metrics)}
{published_section(metrics, baseline_metrics)}
{_mechanisms_section(metrics, baseline_metrics)}
{boxes_section(metrics)}
{curves_html}
<h2>Examples</h2>
{_viewer_link(out_dir)}
{legend}
{examples_html}
<footer>Generated by diffvqa on {datetime.now().strftime("%Y-%m-%d %H:%M")}.</footer>
</main>
</body>
</html>
"""
    path = out_dir / REPORT_FILE
    path.write_text(page, encoding="utf-8")
    return path
