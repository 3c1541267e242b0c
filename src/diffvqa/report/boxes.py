"""The report's section on the saliency scored against boxes (``metrics.json``'s ``box_pointing``,
:mod:`diffvqa.metrics.boxes`): Chest ImaGenome's changed regions and MS-CXR's phrases.

One table: each score with its 95 % interval beside chance, the fixed-point prior and the grid's ceiling on the same
questions, and how many pairs (MS-CXR: phrases) it rests on -- a score on fewer than the stated minimum is greyed
and marked, not left out. Per finding, the shared mask and the finding's own Grad-CAM share a row: both are scored
on the same regions. On the phantom, a paragraph compares the box-based pointing game with the pixel-truth one on
the same questions. The boxes themselves are drawn over the example pictures
(:func:`diffvqa.report.page.example_pictures`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from diffvqa.report.page import METRICS_DOC, _docs_reference, _esc, _fmt, _fmt_count, _fmt_interval, _number


def _row(label: str, entries: list[Any], unit: str, minimum: int, sub: bool = False) -> str:
    """One row: the scores of ``entries`` (the shared mask's, the Grad-CAM's; None where absent) with the reference
    levels of the first present one -- the entries of a row are scored on the same regions. "" when none is there."""
    present = [e for e in entries if isinstance(e, Mapping)]
    if not present:
        return ""
    first = present[0]
    few = any(e.get("enough") is False for e in present)
    css = ' class="few"' if few else ""
    label_css = ' class="sub"' if sub else ""
    scores = [
        _fmt_interval(e.get("score"), e.get("ci95")) if isinstance(e, Mapping) else '<span class="missing">—</span>'
        for e in entries
    ]
    cells = [
        f'<th scope="row"{label_css}>{_esc(label)}</th>',
        *(f'<td class="num">{text}</td>' for text in scores),
        *(f'<td class="num">{_fmt(first.get(k))}</td>' for k in ("chance", "prior", "ceiling")),
        f'<td class="num count">{_fmt_count(first.get(unit + "s"))}</td>',
        f'<td class="note">{f"too few (&lt; {minimum})" if few else ""}</td>',
    ]
    return f"<tr{css}>" + "".join(cells) + "</tr>"


def _agreement(entry: Any) -> str:
    """The phantom's check: the box-based pointing game of M beside the pixel-truth one on the same questions."""
    if not isinstance(entry, Mapping):
        return ""
    box, pixel, diff = entry.get("box") or {}, entry.get("pixel") or {}, entry.get("difference") or {}
    above = entry.get("above_chance") or {}
    lift, pixel_lift, lifted = above.get("box") or {}, above.get("pixel") or {}, above.get("difference") or {}
    verdict = (
        "lies within the pixel-truth score's 95 % interval"
        if entry.get("box_within_pixel_interval")
        else "lies outside the pixel-truth score's 95 % interval"
    )
    ratio = _number(entry.get("area_ratio"))
    return (
        '<p class="note"><b>Against the phantom\'s pixel truth</b>, on the same '
        f"{_fmt_count(entry.get('questions'))} questions: the shared mask scores "
        f"{_fmt_interval(box.get('score'), box.get('ci95'))} against the boxes and "
        f"{_fmt_interval(pixel.get('score'), pixel.get('ci95'))} against the true change masks; the box score "
        f"{verdict} (box − pixel {_fmt(diff.get('estimate'))}, 95 % interval [{_fmt(diff.get('low'))}, "
        f"{_fmt(diff.get('high'))}]). Boxes are coarser than masks"
        + (f" — {ratio:.1f}× their area (chance {_fmt(box.get('chance'))} vs {_fmt(pixel.get('chance'))})" if ratio
           else "")
        + ": a peak beside a finding but inside its region's box counts as a hit, so the box score is the higher "
        "one. Above its own chance level — (score − chance) / (1 − chance) per question — the boxes give "
        f"{_fmt_interval(lift.get('score'), lift.get('ci95'))} and the masks "
        f"{_fmt_interval(pixel_lift.get('score'), pixel_lift.get('ci95'))} (box − pixel "
        f"{_fmt(lifted.get('estimate'))} [{_fmt(lifted.get('low'))}, {_fmt(lifted.get('high'))}]).</p>"
    )  # fmt: skip


def boxes_section(metrics: Mapping[str, Any]) -> str:
    """The section ("" when the evaluation scored no boxes)."""
    boxes = metrics.get("box_pointing")
    if not isinstance(boxes, Mapping) or not boxes:
        return ""
    minimum = int(_number(boxes.get("min_scored")) or 0)
    groups = []
    ci = boxes.get("chest_imagenome") or {}
    if ci:
        rows = [
            _row("all changed regions: the shared mask M", [ci.get("mask"), None], "pair", minimum),
            _row("all changed regions: each named finding's Grad-CAM", [None, ci.get("keyword_cam")], "pair",
                 minimum),
        ]  # fmt: skip
        for finding, entry in (ci.get("per_finding") or {}).items():
            entry = entry or {}
            rows.append(_row(f"{finding}: the regions where it changed", [entry.get("mask"), entry.get("keyword_cam")],
                             "pair", minimum, sub=True))  # fmt: skip
        groups.append(("Chest ImaGenome: regions marked worsened or improved between the pair's two images "
                       "(the reference image's boxes)", "pairs", rows))  # fmt: skip
    ms = boxes.get("ms_cxr") or {}
    if ms:
        rows = [_row("all phrases", [None, ms.get("keyword_cam")], "phrase", minimum)]
        rows += [_row(finding, [None, entry], "phrase", minimum, sub=True)
                 for finding, entry in (ms.get("per_finding") or {}).items()]  # fmt: skip
        groups.append(("MS-CXR: a phrase's boxes on its single image, against its finding's Grad-CAM on that image",
                       "phrases", rows))  # fmt: skip
    head = "".join(
        f"<th>{_esc(h)}</th>"
        for h in ("Pointing game against", "shared mask M", "the finding's Grad-CAM", "chance", "prior", "ceiling",
                  "pairs / phrases", "")
    )  # fmt: skip
    body = "".join(
        f'<tr class="group"><th colspan="8">{_esc(title)}</th></tr>' + "".join(rows) for title, _, rows in groups
    )
    skipped = boxes.get("skipped") or {}
    skipped_text = ", ".join(f"{_esc(k)} {_fmt_count(v)}" for k, v in skipped.items())
    return (
        "<h2>Saliency against boxes: Chest ImaGenome and MS-CXR</h2>"
        '<p class="note">The pointing game against the datasets\' boxes (drawn in cyan over the example pictures): '
        "a map scores the share of its maximal pixels inside the region. Each score sits beside chance (the region's "
        "area share), the fixed-point prior learned on the train split, and the ceiling of the "
        f"{_esc(boxes.get('grid') or '')} CAM grid, all on the same questions; [a, b] is a 95 % interval. Scores on "
        f"fewer than {minimum} pairs (phrases) are greyed and marked too few to read. "
        f"Definitions: {_docs_reference(METRICS_DOC)}.</p>"
        f'<table class="metrics boxes"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
        f"{_agreement(ci.get('pixel_truth'))}"
        + (f'<p class="note">Not scored or changed when the boxes were carried: {skipped_text} '
           "(the prepare report says why, with the first of each).</p>" if skipped_text else "")
    )  # fmt: skip
