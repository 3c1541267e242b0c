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

from diffvqa.metrics.captions import CAPTION_KEYS, DIFFERENCE, normalize_answer
from diffvqa.report.drawing import colorbar, heat_overlay, mask_contour_overlay, resize_array, to_uint8
from diffvqa.run import VIEWER_DIR

REPORT_FILE = "report.html"
IMAGES_DIR = "report_images"
CSS_FILE = "report.css"
DISPLAY_SIZE = 256  # pictures smaller than this are upsampled (bilinear; masks nearest) before drawing
MISSING = "—"

# (key in metrics, label, higher is better)
ACCURACY_ROWS = (("accuracy_closed", "Accuracy, closed (yes/no)", True), ("accuracy_open", "Accuracy, open", True))
LOCALISATION_KEYS = (
    "pointing_game", "pointing_game_n", "pointing_game_reference", "keyword_conditioning",
    "registration_error_ratio", "registration_error_px", "empty_mask_fallbacks",
)  # fmt: skip
MECHANISMS_NOTE = (
    "Pointing game: the share of the shared mask's maximal pixels inside the question's true change region (the "
    "asked lung for one-lung questions; a flat map scores its area share). It means something only beside its "
    "reference levels: <b>chance</b> (a random pixel: the regions' mean area share), the <b>fixed-point prior</b> "
    "(the one pixel inside the most change regions of the train split — what a map that ignores the images gets) "
    "and the <b>ceiling</b> of the saliency grid (the share of regions that contain a feature-cell centre: no map "
    "of that grid can do better); the <b>difference map</b> |aligned main − reference| (with the model's own Θ) "
    "shows what registration and subtraction alone point at. Keyword conditioning: for answers naming two changes "
    "at least one grid cell apart, how often the map computed for one keyword is higher in that finding's region "
    "than in the other's (0.5 for a map that ignores the keyword), on the keyword's own Grad-CAM (and, "
    "<i>gated</i>, after the change gate), with a 95 % interval over answers (ci95). Registration error ratio: "
    "mean corner error of Θ against the true transform, after / before alignment (1.0 = the identity, no "
    "aligner)."
)


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


def _lower_is_better(name: str) -> bool:
    return "error" in name


def _is_count(name: str) -> bool:
    last = name.rsplit(" · ", 1)[-1]
    return last == "n" or last.startswith("n_")


def _flatten_numbers(name: str, value: Any) -> list[tuple[str, Any]]:
    """A localisation metric as rows: a number is one row; a dict gives one row per numeric leaf."""
    if isinstance(value, Mapping):
        rows = []
        for key, sub in value.items():
            rows += _flatten_numbers(f"{name} · {key}", sub)
        return rows
    return [(name, value)] if _number(value) is not None else []


# ----------------------------------------------------------------------------------------------------------
# the metrics table


def _metric_row(label: str, model: Any, baseline: Any, with_baseline: bool, lower_better: bool = False) -> str:
    a, b = _number(model), _number(baseline)  # floats: an integer-valued score still shows 3 decimals
    cells = [f'<th scope="row">{_esc(label)}</th>', f'<td class="num">{_fmt(a)}</td>']
    if with_baseline:
        cells.append(f'<td class="num">{_fmt(b)}</td>')
        if a is None or b is None:
            cells.append(f'<td class="num">{MISSING}</td>')
        else:
            delta = a - b
            better = delta < 0 if lower_better else delta > 0
            worse = delta > 0 if lower_better else delta < 0
            css = "better" if better else "worse" if worse else ""
            cells.append(f'<td class="num {css}">{delta:+.3f}</td>')
    return "<tr>" + "".join(cells) + "</tr>"


def _group_header(title: str, columns: int) -> str:
    return f'<tr class="group"><th colspan="{columns}">{_esc(title)}</th></tr>'


def _count_row(label: str, model: Any, baseline: Any, with_baseline: bool) -> str:
    cells = [f'<th scope="row" class="count">{_esc(label)}</th>', f'<td class="num count">{_fmt(model)}</td>']
    if with_baseline:
        cells += [f'<td class="num count">{_fmt(baseline)}</td>', "<td></td>"]
    return "<tr>" + "".join(cells) + "</tr>"


def metrics_table(metrics: Mapping[str, Any], baseline: Mapping[str, Any] | None = None) -> str:
    """The HTML ``<table>`` of the headline metrics: model, and when given the blind baseline and the
    difference model − baseline (green where the model is better)."""
    with_baseline = baseline is not None
    baseline = baseline or {}
    columns = 4 if with_baseline else 2
    head = "<th>Metric</th><th>Model</th>" + ("<th>Blind baseline</th><th>Δ (model − baseline)</th>" * with_baseline)
    rows = []
    for key, title in ((DIFFERENCE, "Difference questions (papers' protocol)"), ("all", "All question types")):
        scores, base = metrics.get(key) or {}, baseline.get(key) or {}
        rows.append(_group_header(title, columns))
        rows += [_metric_row(name, scores.get(name), base.get(name), with_baseline) for name in CAPTION_KEYS]
        rows.append(_count_row("questions (n)", scores.get("n"), base.get("n"), with_baseline))
    rows.append(_group_header("Exact-match accuracy (non-difference questions)", columns))
    for key, label, _ in ACCURACY_ROWS:
        rows.append(_metric_row(label, metrics.get(key), baseline.get(key), with_baseline))
    for key, count in (("n_closed", "closed questions (n)"), ("n_open", "open questions (n)")):
        if key in metrics or key in baseline:
            rows.append(_count_row(count, metrics.get(key), baseline.get(key), with_baseline))
    localisation = []
    for key in LOCALISATION_KEYS:
        if key in metrics or key in baseline:
            model_rows = dict(_flatten_numbers(key, metrics.get(key)))
            base_rows = dict(_flatten_numbers(key, baseline.get(key)))
            for name in dict.fromkeys([*model_rows, *base_rows]) or [key]:
                a, b = model_rows.get(name), base_rows.get(name)
                if _is_count(name):
                    localisation.append(_count_row(name, a, b, with_baseline))
                else:
                    localisation.append(_metric_row(name, a, b, with_baseline, _lower_is_better(name)))
    if localisation:
        rows.append(_group_header("Localisation", columns))
        rows += localisation
    return f'<table class="metrics"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


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
        verdict = "the two passes cannot be told apart on these questions"
    rows = [
        ("CIDEr-D, final (pass 2, masked images)", _fmt(passes.get("CIDEr_final"))),
        ("CIDEr-D, preliminary (pass 1, whole images)", _fmt(passes.get("CIDEr_preliminary"))),
        ("final − preliminary (95 % interval, paired over questions)",
         f"{estimate:+.3f} [{low:+.3f}, {high:+.3f}]"),
        ("answers the second pass changed", _fmt(passes.get("answers_changed"))),
        ("exactly right only in the final answer", _fmt(passes.get("right_only_in_final"))),
        ("exactly right only in the preliminary answer", _fmt(passes.get("right_only_in_preliminary"))),
        ("difference questions (n)", _fmt(passes.get("n"))),
    ]  # fmt: skip
    body = "".join(f'<tr><th scope="row">{_esc(k)}</th><td class="num">{v}</td></tr>' for k, v in rows)
    return (
        "<h2>Final vs preliminary answers</h2>"
        f'<p class="note">The method answers twice: once from the whole images, then from the images masked by '
        f"the saliency of its own first answer's keyword. On these questions {verdict} (CIDEr-D per answer, "
        "bootstrap over questions; one trained model — other seeds vary more).</p>"
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
    if not per_type and not accuracy:
        return ""
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
    """Which METEOR compares with which published numbers."""
    if not isinstance(nltk_impl, Mapping):
        return ""
    return (
        '<p class="note">Two METEORs: <b>METEOR</b> is the pycocoevalcap jar at corpus level, the protocol of '
        "EKAID, PLURAL and VED (.34–.39 on the difference questions); <b>METEOR_nltk</b> is NLTK's sentence "
        f"METEOR averaged over answers (NLTK {_esc(nltk_impl.get('nltk'))}, {_esc(nltk_impl.get('matching'))}, "
        f"{_esc(nltk_impl.get('tokens'))} tokens), which reads far higher on the same answers and is the likely "
        "protocol of the seed paper's .651. Compare each published number only with its own key.</p>"
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
    """The training curves of ``training_run`` as a section ("" when it has no metrics.jsonl)."""
    from diffvqa.report.curves import plot_runs
    from diffvqa.run import find_metrics_log

    log = None if training_run is None else find_metrics_log(training_run)
    if log is None:
        return ""
    png, svg = plot_runs([log.parent], image_dir / "training_curves")
    return (
        f'<h2>Training curves</h2><p class="note">{_esc(log)} · <a href="{IMAGES_DIR}/{svg.name}">SVG</a></p>'
        f'<img class="curves" src="{IMAGES_DIR}/{png.name}" alt="training curves" style="max-width: 100%">'
    )


def _summary_line(metrics: Mapping[str, Any]) -> str:
    parts = []
    for key, label in (("all", "questions"), (DIFFERENCE, "difference questions")):
        n = (metrics.get(key) or {}).get("n")
        if isinstance(n, int):
            parts.append(f"{n:,} {label}")
    return " · ".join(parts)


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
        "when the data has it</p>"
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
<h2>Metrics</h2>
{metrics_table(metrics, baseline_metrics)}
{baseline_note}
{passes_section(metrics)}
{implementation_note(metrics)}
{f'<p class="note">{MECHANISMS_NOTE}</p>' if any(k in metrics for k in LOCALISATION_KEYS) else ""}
{per_finding_table(metrics)}
{per_type_table(metrics)}
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
