"""A contact sheet of a release: pairs side by side with their findings, difference answer and change mask.

Works on any release in the Medical-Diff-VQA format; a phantom's ``ground_truth/`` adds the findings of both
visits and the change mask outlined on the reference (``diffvqa contact-sheet``, :mod:`diffvqa.data.phantom.simulator`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from diffvqa.data.csv_files import read_csv
from diffvqa.data.ground_truth import FINDINGS_FILE, GROUND_TRUTH_DIR, PAIRS_FILE
from diffvqa.data.release import QUESTIONS_FILE, STUDIES_FILE
from diffvqa.errors import MissingInputError, UserError


def _outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` (bool) with a 4-neighbour outside it."""
    p = np.pad(mask, 1)
    inner = p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return mask & ~inner


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> list[str]:
    """Greedy word wrap to ``width`` pixels."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}".strip()
            if line and draw.textlength(candidate, font=font) > width:
                lines.append(line)
                line = word
            else:
                line = candidate
        lines.append(line)
    return lines


def contact_sheet(release: str | Path, out: str | Path, pairs: int = 6) -> Path:
    """A PNG grid of the first ``pairs`` pairs: reference | main | reference with the change mask outlined,
    each row labelled with the findings of both visits and the difference answer.

    Works on any release; without ``ground_truth/`` the third panel shows the reference alone.
    """
    release, out = Path(release), Path(out)
    if pairs < 1:
        raise UserError(f"pairs={pairs!r}: expected a positive integer")
    questions_path = release / QUESTIONS_FILE
    if not questions_path.is_file():
        raise MissingInputError(f"{questions_path}: not found; is {release} a release directory?")
    # read_csv: a missing or malformed file is a UserError naming it (pandas' own errors name neither file nor line)
    q = read_csv(questions_path, ("subject_id", "study_id", "ref_id", "question", "answer"))
    q = q[q.question == "what has changed compared to the reference image?"].drop_duplicates(["study_id", "ref_id"])
    studies = read_csv(release / STUDIES_FILE, ("subject_id", "study_id", "dicom_id", "study_date"))
    studies = studies.set_index("study_id")
    truth = release / GROUND_TRUTH_DIR
    findings = pairs_gt = None
    if (truth / PAIRS_FILE).is_file():
        findings = read_csv(truth / FINDINGS_FILE, ("study_id", "name", "location", "level", "type"))
        pairs_gt = read_csv(truth / PAIRS_FILE, ("study_id", "ref_id", "change_mask_file"))
        pairs_gt = pairs_gt.set_index(["study_id", "ref_id"])

    def describe(study_id: str) -> str:
        if findings is None:
            return "?"
        rows = findings[findings.study_id == study_id]
        parts = [
            " ".join(filter(None, (r.level, r.type, r["name"]))) + (f" ({r.location})" if r.location else "")
            for _, r in rows.iterrows()
        ]
        return ", ".join(parts) or "no finding"

    def image(study_id: str) -> Image.Image:
        if study_id not in studies.index:
            raise UserError(f"{release / STUDIES_FILE}: no row for study_id {study_id} (named in {questions_path})")
        s = studies.loc[study_id]
        path = release / f"files/p{s.subject_id[:2]}/p{s.subject_id}/s{study_id}/{s.dicom_id}.jpg"
        if not path.is_file():
            raise MissingInputError(f"{path}: not found (the image of study {study_id} in {release / STUDIES_FILE})")
        return Image.open(path).convert("L")

    font = ImageFont.load_default()
    tiles = []
    for _, row in q.head(pairs).iterrows():
        ref, main = image(row.ref_id), image(row.study_id)
        overlay = ref.convert("RGB")
        key = (row.study_id, row.ref_id)
        if pairs_gt is not None and key in pairs_gt.index:
            change = np.asarray(Image.open(truth / pairs_gt.loc[key, "change_mask_file"])) > 0
            pixels = np.asarray(overlay).copy()
            pixels[_outline(change)] = (255, 40, 40)
            overlay = Image.fromarray(pixels)
        w, h = ref.width + main.width + overlay.width + 8, max(ref.height, main.height)
        text = (
            f"subject {row.subject_id}: ref s{row.ref_id} ({studies.loc[row.ref_id, 'study_date']}) -> "
            f"main s{row.study_id} ({studies.loc[row.study_id, 'study_date']})\n"
            f"ref: {describe(row.ref_id)}\nmain: {describe(row.study_id)}\ndiff: {row.answer.strip()}"
        )
        scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))
        lines = _wrap(scratch, text, font, w - 8)
        line_h = 12
        tile = Image.new("RGB", (w, h + line_h * len(lines) + 8), (255, 255, 255))
        tile.paste(ref.convert("RGB"), (0, 0))
        tile.paste(main.convert("RGB"), (ref.width + 4, 0))
        tile.paste(overlay, (ref.width + main.width + 8, 0))
        draw = ImageDraw.Draw(tile)
        for i, line in enumerate(lines):
            draw.text((4, h + 4 + i * line_h), line, fill=(0, 0, 0), font=font)
        tiles.append(tile)
    if not tiles:
        raise UserError(f"{questions_path}: no difference questions to show")
    columns = 2 if len(tiles) > 3 else 1
    rows = -(-len(tiles) // columns)
    cell_w, cell_h = max(t.width for t in tiles), max(t.height for t in tiles)
    sheet = Image.new("RGB", (columns * cell_w + (columns + 1) * 6, rows * cell_h + (rows + 1) * 6), (200, 200, 200))
    for i, tile in enumerate(tiles):
        sheet.paste(tile, (6 + (i % columns) * (cell_w + 6), 6 + (i // columns) * (cell_h + 6)))
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out
