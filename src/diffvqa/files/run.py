"""The directories a run leaves on disk, in one place: their file names, pointers, metrics log and pruning.

Torch-free, so that plotting, the study and the viewer read runs without importing the model.

A training run (``diffvqa train --out RUN``)::

    RUN/config.json                     the resolved config (:data:`CONFIG_FILE`)
    RUN/metrics.jsonl                   one JSON record per log step and per validation (:data:`METRICS_LOG`)
    RUN/checkpoints/step-NNNNNNN/       a checkpoint (:mod:`diffvqa.model.checkpoint`) + trainer_state.pt
    RUN/checkpoints/.tmp-step-NNNNNNN/  a checkpoint being written; renamed to step-N when complete
    RUN/latest, RUN/best                one line each: the checkpoint directory they point to, relative to RUN

A checkpoint directory is written under a temporary name and renamed when complete, and the pointers are
replaced atomically (:func:`diffvqa.files.atomic.write_atomic`), so a crash never leaves a half-written checkpoint as
the latest. Only the checkpoints ``latest`` and ``best`` point to are kept (:func:`prune_checkpoints`).

An evaluation (``diffvqa evaluate --out DIR``) writes ``DIR/predictions.jsonl`` (:data:`PREDICTIONS_FILE`),
``DIR/metrics.json`` (:data:`EVAL_METRICS_FILE`), ``DIR/report.html`` (:mod:`diffvqa.report`) and ``DIR/viewer/``
(:data:`VIEWER_DIR`, :mod:`diffvqa.viewer`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from diffvqa.files.atomic import write_atomic
from diffvqa.files.disk import writing

CONFIG_FILE = "config.json"  # a run's resolved config; a checkpoint directory holds one too
METRICS_LOG = "metrics.jsonl"
CHECKPOINTS_DIR = "checkpoints"
TRAINER_STATE = "trainer_state.pt"  # in each of a run's checkpoints: optimiser, scheduler, step, RNG, best
LATEST, BEST = "latest", "best"
PREDICTIONS_FILE = "predictions.jsonl"
EVAL_METRICS_FILE = "metrics.json"
VIEWER_DIR = "viewer"  # the evaluation's viewer: VIEWER_DIR/index.html


def checkpoint_dir(run_dir: str | Path, step: int) -> Path:
    """``RUN/checkpoints/step-NNNNNNN``: where the checkpoint of ``step`` lives once complete."""
    return Path(run_dir) / CHECKPOINTS_DIR / f"step-{step:07d}"


def partial_checkpoint_dir(run_dir: str | Path, step: int) -> Path:
    """``RUN/checkpoints/.tmp-step-NNNNNNN``: where the checkpoint of ``step`` is written before it is complete."""
    return Path(run_dir) / CHECKPOINTS_DIR / f".tmp-step-{step:07d}"


def read_pointer(run_dir: str | Path, name: str) -> Path | None:
    """The checkpoint directory a training run's ``latest`` or ``best`` pointer file names, if any."""
    pointer = Path(run_dir) / name
    if not pointer.is_file():
        return None
    return Path(run_dir) / pointer.read_text().strip()


def write_pointer(run_dir: str | Path, name: str, checkpoint: str | Path) -> None:
    """Point ``RUN/<name>`` (``latest`` or ``best``) at ``checkpoint`` (a directory inside the run), atomically."""
    run_dir = Path(run_dir)
    write_atomic(run_dir / name, str(Path(checkpoint).relative_to(run_dir)) + "\n")


def append_metrics(run_dir: str | Path, record: dict[str, Any]) -> None:
    """Append one record to ``RUN/metrics.jsonl``; on a full device the log is cut back to its earlier records
    (no torn line) and the error is a :class:`~diffvqa.files.disk.DiskFullError`."""
    path = Path(run_dir) / METRICS_LOG
    size = path.stat().st_size if path.is_file() else 0
    try:
        with writing(path, what="appending a record"):
            with path.open("a") as f:
                f.write(json.dumps(record) + "\n")
    except BaseException:
        if path.is_file() and path.stat().st_size > size:
            with path.open("r+") as f:
                f.truncate(size)
        raise


def find_metrics_log(path: str | Path) -> Path | None:
    """``metrics.jsonl`` of a run directory, or of the run a checkpoint directory (``RUN/checkpoints/step-N``) is
    in; None when there is none."""
    path = Path(path)
    if path.is_file() and path.name == METRICS_LOG:
        return path
    for directory in (path, path.parent, path.parent.parent):
        if (directory / METRICS_LOG).is_file():
            return directory / METRICS_LOG
    return None


def clean_after_interruption(run_dir: str | Path, step: int) -> None:
    """Undo what a killed run left behind, before this one writes: ``metrics.jsonl`` records after ``step`` (the
    step training resumes from; they are logged again) and a torn last line, and ``checkpoints/.tmp-step-N``
    directories of saves that never finished."""
    run_dir = Path(run_dir)
    for tmp in (run_dir / CHECKPOINTS_DIR).glob(".tmp-step-*"):
        shutil.rmtree(tmp, ignore_errors=True)
    path = run_dir / METRICS_LOG
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:  # a line cut short by the kill
            continue
        if isinstance(record, dict) and record.get("step", 0) <= step:
            kept.append(line)
    write_atomic(path, "".join(line + "\n" for line in kept))


def prune_checkpoints(run_dir: str | Path) -> None:
    """Keep only the checkpoints ``latest`` and ``best`` point to."""
    keep = {read_pointer(run_dir, LATEST), read_pointer(run_dir, BEST)}
    for path in (Path(run_dir) / CHECKPOINTS_DIR).glob("step-*"):
        if path not in keep:
            shutil.rmtree(path, ignore_errors=True)
