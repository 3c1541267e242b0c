"""The evaluation viewer: ``diffvqa view EVAL_DIR [EVAL_DIR2] [--out DIR]``, also written by ``evaluate``.

A folder that opens from ``file://`` with no server and no network: ``index.html``, our own ``viewer.js`` and
``viewer.css`` (package data, copied), ``data.js`` (every question of ``predictions.jsonl``) and, when
``evaluate`` wrote them, one picture strip per question under ``img/`` (:mod:`diffvqa.viewer.strips`).
``data.js`` assigns the data to a global instead of being fetched as JSON: Chromium refuses ``fetch()`` of a
local file from a ``file://`` page.

With two evaluations of the same questions (e.g. the model and the blind baseline) the page shows them side by
side and can filter the questions where their final answers disagree. Questions are matched by
``question_index`` (the release's row), else by study, reference and question text. The compare page refers to
each evaluation's own ``viewer/img`` by a relative path, so keep the evaluation folders beside each other.

Per question the data holds, for each evaluation: the preliminary and final answer, the keyword, exact match after
:func:`diffvqa.metrics.normalize_answer`, the sentence METEOR_nltk of the final answer (the sort score) and, when
the record has one (``pointing`` as a score in [0, 1], or ``pointing_hit`` as a bool), the pointing game; a hit
is a score of at least 0.5. When the evaluation scored the saliency against boxes (:mod:`diffvqa.metrics.boxes`),
each question also carries its ``box_pointing`` and each run the summary of those scores beside their reference
levels, and the strips show the boxes.
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any

from diffvqa.data.data_use import DATA_USE_WARNING, needs_data_use_warning
from diffvqa.errors import ArgumentParser, MissingInputError, UserError, command
from diffvqa.files.disk import full_disk_said
from diffvqa.files.jsonl import read_jsonl
from diffvqa.files.run import EVAL_METRICS_FILE, PREDICTIONS_FILE, VIEWER_DIR
from diffvqa.viewer.strips import PANELS, strip_path

DATA_FILE = "data.js"
STATIC_FILES = ("index.html", "viewer.js", "viewer.css")
SUMMARY_KEYS = ("BLEU-4", "METEOR", "METEOR_nltk", "ROUGE-L", "CIDEr")


def read_predictions(eval_dir: Path) -> list[dict[str, Any]]:
    """The records of ``eval_dir/predictions.jsonl``; errors name the file and line."""
    path = Path(eval_dir) / PREDICTIONS_FILE
    if not path.is_file():
        raise MissingInputError(
            f"{path}: not found (an evaluation directory holds the predictions.jsonl that `diffvqa evaluate` writes)"
        )
    records = []
    needed = ("question_type", "question", "answer", "final")
    for number, record in read_jsonl(path):
        missing = [k for k in needed if not isinstance(record, dict) or not isinstance(record.get(k), str)]
        if missing:
            raise UserError(f"{path}:{number}: a prediction record needs the strings {missing}")
        records.append(record)
    if not records:
        raise UserError(f"{path}: no predictions")
    return records


def _read_metrics(eval_dir: Path) -> dict[str, Any]:
    path = Path(eval_dir) / EVAL_METRICS_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not JSON ({exc.msg})") from None


def pointing_score(record: dict[str, Any]) -> float | None:
    """The record's pointing-game score in [0, 1] (``pointing`` number or ``pointing_hit`` bool), else None."""
    value = record.get("pointing", record.get("pointing_hit"))
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and 0.0 <= value <= 1.0:
        return float(value)
    return None


def box_score(record: dict[str, Any]) -> float | None:
    """The record's box-based pointing game (``box_pointing`` in [0, 1]), else None."""
    value = record.get("box_pointing")
    return float(value) if isinstance(value, (int, float)) and 0.0 <= value <= 1.0 else None


def _box_summary(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """The run's box-based scores for the page's header: label, score, reference levels, how many, enough."""
    boxes = metrics.get("box_pointing") or {}
    out = []
    for label, path, unit in (("Chest ImaGenome, shared mask", ("chest_imagenome", "mask"), "pairs"),
                              ("Chest ImaGenome, each finding's Grad-CAM", ("chest_imagenome", "keyword_cam"), "pairs"),
                              ("MS-CXR, the finding's Grad-CAM", ("ms_cxr", "keyword_cam"), "phrases")):  # fmt: skip
        entry = boxes
        for key in path:
            entry = entry.get(key) if isinstance(entry, dict) else None
        if isinstance(entry, dict):
            out.append({"label": label, "unit": unit, "count": entry.get(unit),
                        **{k: entry.get(k) for k in ("score", "chance", "prior", "ceiling", "enough")}})  # fmt: skip
    return out


def question_key(record: dict[str, Any]) -> tuple:
    if "question_index" in record:
        return ("index", record["question_index"])
    return ("text", record.get("study_id"), record.get("ref_id"), record["question"])


class _Strings:
    """A string table: answers repeat thousands of times, so rows hold indices into one list."""

    def __init__(self):
        self.values: list[str] = []
        self.index: dict[str, int] = {}

    def __call__(self, text: Any) -> int:
        text = "" if text is None else str(text)
        if text not in self.index:
            self.index[text] = len(self.values)
            self.values.append(text)
        return self.index[text]


def _run_entry(
    eval_dir: Path, metrics: dict[str, Any], records: list[dict[str, Any]], out: Path, label: str
) -> dict[str, Any]:
    images = Path(eval_dir) / VIEWER_DIR
    has_images = (images / strip_path(0)).is_file() and (images / strip_path(len(records) - 1)).is_file()
    run = metrics.get("run") or {}
    return {
        "name": label,
        "path": str(eval_dir),
        "split": run.get("split") or "unknown",
        "mode": run.get("mode") or "unknown",
        "checkpoint": run.get("checkpoint"),
        # the folder the strips' paths are relative to, seen from the page (None: this evaluation wrote none)
        "images": Path(os.path.relpath(images, out)).as_posix() if has_images else None,
        "questions": len(records),
        "difference": {k: (metrics.get("difference") or {}).get(k) for k in SUMMARY_KEYS},
        "meteor_nltk": (metrics.get("implementation") or {}).get("METEOR_nltk"),
        "boxes": _box_summary(metrics),
        "min_scored": (metrics.get("box_pointing") or {}).get("min_scored"),
    }


def _labels(dirs: list[Path]) -> list[str]:
    names = [d.resolve().name for d in dirs]
    if len(set(names)) < len(names):  # runs/a/eval vs runs/b/eval
        names = [f"{d.resolve().parent.name}/{d.resolve().name}" for d in dirs]
    return names


def build_data(eval_dirs: list[Path], out: Path, title: str | None = None) -> dict[str, Any]:
    """The viewer's data (what ``data.js`` assigns): runs, a string table and one row per question."""
    from diffvqa.metrics import normalize_answer
    from diffvqa.metrics.meteor_nltk import meteor_nltk_sentences

    strings = _Strings()
    runs, per_run, credentialed = [], [], False
    for eval_dir, label in zip(eval_dirs, _labels(eval_dirs), strict=True):
        records = read_predictions(eval_dir)
        metrics = _read_metrics(eval_dir)
        credentialed |= needs_data_use_warning(metrics)
        runs.append(_run_entry(eval_dir, metrics, records, out, label))
        meteor = meteor_nltk_sentences([r["final"] for r in records], [r["answer"] for r in records])
        per_run.append((records, meteor, runs[-1]["split"]))

    rows, where = [], {}  # question key -> row number
    for r, (records, meteor, split) in enumerate(per_run):
        for line, record in enumerate(records):
            key = question_key(record)
            if key not in where:
                where[key] = len(rows)
                rows.append([strings(record.get("study_id")), strings(record.get("ref_id")),
                             strings(record.get("subject_id")), strings(record["question_type"]),
                             strings(record["question"]), strings(record["answer"]), strings(split),
                             [None] * len(per_run), 0])  # fmt: skip
            row = rows[where[key]]
            if row[7][r] is not None:
                raise UserError(f"{eval_dirs[r] / PREDICTIONS_FILE}:{line + 1}: the question {key} appears twice")
            exact = normalize_answer(record["final"]) == normalize_answer(record["answer"])
            row[7][r] = [line, strings(record.get("preliminary")), strings(record.get("keyword")),
                         strings(record["final"]), int(exact), round(meteor[line], 4),
                         pointing_score(record), box_score(record)]  # fmt: skip
    if len(per_run) == 2:
        for row in rows:
            a, b = row[7]
            # both answered and the answers differ after normalisation (what exact match compares)
            differ = a is not None and b is not None
            row[8] = int(differ and normalize_answer(strings.values[a[3]]) != normalize_answer(strings.values[b[3]]))
    return {
        "title": title or " vs ".join(r["name"] for r in runs),
        "created": datetime.now().strftime("%Y-%m-%d %H:%M"),
        "data_use": DATA_USE_WARNING if credentialed else None,  # shown above everything else when set
        "runs": runs,
        "panels": [caption for _, caption in PANELS],
        "strings": strings.values,
        "rows": rows,
    }


@full_disk_said("eval_dir")
def write_viewer(
    eval_dir: str | Path, other: str | Path | None = None, out: str | Path | None = None, title: str | None = None
) -> Path:
    """Write the viewer of ``eval_dir`` (side by side with ``other`` when given); return its ``index.html``.

    ``out`` defaults to ``eval_dir/viewer`` (where ``evaluate`` put the strips), or ``eval_dir/viewer-vs-NAME``
    for a comparison with ``other``.
    """
    eval_dir = Path(eval_dir)
    dirs = [eval_dir] + ([Path(other)] if other is not None else [])
    if out is None:
        out = eval_dir / (VIEWER_DIR if other is None else f"{VIEWER_DIR}-vs-{Path(other).resolve().name}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = build_data(dirs, out, title)
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    (out / DATA_FILE).write_text(f"window.DIFFVQA_DATA = {text};\n", encoding="utf-8")
    static = resources.files("diffvqa.viewer") / "static"
    for name in STATIC_FILES:
        (out / name).write_bytes((static / name).read_bytes())
    return out / "index.html"


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def finish_viewer(eval_dir: Path, strips: Any, total_seconds: float) -> str:
    """After ``evaluate``: finish the strips, write the viewer beside them and return a line saying its size and
    the wall time it added as a share of the evaluation's own time (``total_seconds`` covers the evaluation and
    the strips' calls, not this function). Also saved as ``viewer/timing.json``."""
    calls = strips.seconds  # inside total_seconds
    tic = time.perf_counter()
    strips.close()
    index = write_viewer(eval_dir)
    viewer_seconds = calls + time.perf_counter() - tic
    evaluation_seconds = max(total_seconds - calls, 1e-9)
    size = folder_bytes(index.parent)
    timing = {
        "questions": strips.count,
        "viewer_seconds": viewer_seconds,
        "evaluation_seconds": evaluation_seconds,
        "ratio": viewer_seconds / evaluation_seconds,
        "strip_worker_seconds": strips.worker_seconds,
        "bytes": size,
        "bytes_per_question": size / max(strips.count, 1),
    }
    (index.parent / "timing.json").write_text(json.dumps(timing, indent=2) + "\n")
    return (
        f"viewer: {index} — {strips.count} questions, {size / 1e6:.1f} MB, written in {viewer_seconds:.2f} s "
        f"= {100 * timing['ratio']:.2f} % of the evaluation's {evaluation_seconds:.1f} s"
    )


@command("diffvqa view")
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="diffvqa view", description=__doc__.split("\n\n")[0])
    parser.add_argument("eval_dir", type=Path, help="an evaluation directory (holds predictions.jsonl)")
    parser.add_argument("other", type=Path, nargs="?", help="a second evaluation of the same questions, to compare")
    parser.add_argument("--out", type=Path, help="default: EVAL_DIR/viewer, or EVAL_DIR/viewer-vs-NAME")
    parser.add_argument("--title")
    args = parser.parse_args(argv)
    index = write_viewer(args.eval_dir, args.other, args.out, args.title)
    print(f"wrote {index} (open it in a browser: {index.resolve().as_uri()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
