"""The directories a run leaves on disk, in one place: their file names, and the one owner of a training run's
directory, :class:`RunDir` (open, log, checkpoint, point, prune, resume).

Importing it does not import torch, so that plotting, the study and the viewer read runs without importing the model
(only :class:`RunDir`'s trainer-state methods import torch, when called).

A training run (``diffvqa train --out RUN``)::

    RUN/config.json                     the resolved config (:data:`CONFIG_FILE`)
    RUN/metrics.jsonl                   one JSON record per log step and per validation (:data:`METRICS_LOG`)
    RUN/tensorboard/                    the same scalars, with ``train.report_to=tensorboard`` (:data:`TENSORBOARD_DIR`)
    RUN/checkpoints/step-NNNNNNN/       a checkpoint (:mod:`diffvqa.model.checkpoint`) + trainer_state.pt
    RUN/checkpoints/.tmp-step-NNNNNNN/  a checkpoint being written; renamed to step-N when complete
    RUN/latest, RUN/best                one line each: the checkpoint directory they point to, relative to RUN

A checkpoint directory is written under a temporary name and renamed when complete, and the pointers are
replaced atomically (:func:`diffvqa.files.atomic.write_atomic`), so a crash never leaves a half-written checkpoint as
the latest. Only the checkpoints ``latest`` and ``best`` point to are kept (:meth:`RunDir.prune`).

An evaluation (``diffvqa evaluate --out DIR``) writes ``DIR/predictions.jsonl`` (:data:`PREDICTIONS_FILE`),
``DIR/metrics.json`` (:data:`EVAL_METRICS_FILE`), ``DIR/report.html`` (:mod:`diffvqa.report`) and ``DIR/viewer/``
(:data:`VIEWER_DIR`, :mod:`diffvqa.viewer`).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from diffvqa.config import Config
from diffvqa.errors import MissingInputError, UserError
from diffvqa.files.atomic import write_atomic
from diffvqa.files.disk import check_free_space, directory_bytes, writing

CONFIG_FILE = "config.json"  # a run's resolved config; a checkpoint directory holds one too
METRICS_LOG = "metrics.jsonl"
CHECKPOINTS_DIR = "checkpoints"
TRAINER_STATE = "trainer_state.pt"  # in each of a run's checkpoints: optimiser, scheduler, step, RNG, best
# what a checkpoint's trainer state holds, and resuming needs
TRAINER_STATE_KEYS = ("step", "optimizer", "scheduler", "torch_rng", "cuda_rng", "best")
LATEST, BEST = "latest", "best"
PARTIAL_CHECKPOINTS = f"{CHECKPOINTS_DIR}/.tmp-step-*"  # what a checkpoint write cut short leaves, relative to RUN
TENSORBOARD_DIR = "tensorboard"
PREDICTIONS_FILE = "predictions.jsonl"
EVAL_METRICS_FILE = "metrics.json"
VIEWER_DIR = "viewer"  # the evaluation's viewer: VIEWER_DIR/index.html


def read_pointer(run_dir: str | Path, name: str) -> Path | None:
    """The checkpoint directory a training run's ``latest`` or ``best`` pointer file names, if any."""
    pointer = Path(run_dir) / name
    if not pointer.is_file():
        return None
    return Path(run_dir) / pointer.read_text().strip()


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


def tensorboard_writer():
    """torch's ``SummaryWriter`` class; a one-line error when the tensorboard package is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError(
            "train.report_to=tensorboard needs the tensorboard package: pip install -e '.[tensorboard]' "
            "(or train.report_to=none: metrics.jsonl and `diffvqa plot` need nothing)"
        ) from None
    return SummaryWriter


class MetricsLog:
    """JSONL records in the run directory (``metrics.jsonl``); TensorBoard scalars too with
    ``train.report_to=tensorboard`` (under ``<run>/tensorboard``)."""

    def __init__(self, run_dir: Path, enabled: bool, report_to: str = "none"):
        self.enabled = enabled
        self.run_dir = run_dir
        self.tensorboard = None
        if enabled and report_to == "tensorboard":
            self.tensorboard = tensorboard_writer()(str(run_dir / TENSORBOARD_DIR))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        append_metrics(self.run_dir, record)
        if self.tensorboard is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.tensorboard.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


class RunDir:
    """A training run's directory and its life: :meth:`open` (or :meth:`resume_from`), :meth:`log`,
    :meth:`checkpoint`, :meth:`point`, :meth:`prune`. The training loop calls these and never joins a path itself.

    Under ``torchrun`` only rank 0 writes: the other ranks read (:meth:`resume_from`, :meth:`trainer_state`) and
    log with ``enabled=False``.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # -- reading -----------------------------------------------------------------------------------------------
    @property
    def config_file(self) -> Path:
        """``RUN/config.json``: the run's resolved config."""
        return self.path / CONFIG_FILE

    @property
    def latest(self) -> Path | None:
        """The checkpoint directory ``latest`` points to, if any (it may be gone)."""
        return read_pointer(self.path, LATEST)

    @property
    def best(self) -> Path | None:
        """The checkpoint directory ``best`` points to, if any."""
        return read_pointer(self.path, BEST)

    def saved_config(self) -> Config:
        return Config.load(self.config_file)

    # -- open and resume ---------------------------------------------------------------------------------------
    def open(self, config: Config) -> None:
        """Start a new run: refuse a directory that already holds one, create it and save ``config`` in it."""
        if self.latest is not None:
            raise UserError(f"{self.path} already holds a training run; use --resume or another --out")
        self.path.mkdir(parents=True, exist_ok=True)
        config.save(self.config_file)

    def resume_from(self) -> Path:
        """The checkpoint ``--resume`` continues from: the latest complete one (a :class:`MissingInputError` when
        there is none)."""
        latest = self.latest
        if latest is None or not latest.is_dir():
            raise MissingInputError(f"--resume: {self.path} has no complete checkpoint (no 'latest' pointer)")
        return latest

    def trainer_state(self, checkpoint: Path) -> dict[str, Any]:
        """The trainer state saved with ``checkpoint`` (optimiser, scheduler, step, RNG, best; :data:`TRAINER_STATE`);
        a :class:`UserError` when it is missing, unreadable or lacks a key resuming needs."""
        import torch

        path = checkpoint / TRAINER_STATE
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - a missing, truncated or foreign file: the run directory's fault
            raise UserError(
                f"{path}: cannot read the trainer state ({type(exc).__name__}: {exc}); resume "
                f"from an intact checkpoint (point {self.path / LATEST} at it) or start a new run"
            ) from exc
        missing = [k for k in TRAINER_STATE_KEYS if not isinstance(state, dict) or k not in state]
        if missing:
            raise UserError(
                f"{path}: the trainer state lacks {missing} (it holds "
                f"{sorted(state) if isinstance(state, dict) else type(state).__name__}); resume from an intact "
                f"checkpoint (point {self.path / LATEST} at it) or start a new run"
            )
        return state

    def check_resume_config(self, config: Config, may_change: set[tuple[str, str]]) -> None:
        """A :class:`UserError` listing every key whose value differs from the run's saved config, except the
        (group, key) pairs a resume ``may_change``."""
        saved, current = self.saved_config().to_dict(), config.to_dict()
        changed = [
            f"{group}.{key}: {saved[group][key]!r} -> {current[group][key]!r}"
            for group in current
            for key in current[group]
            if saved[group].get(key) != current[group][key] and (group, key) not in may_change
        ]
        if changed:
            raise UserError(f"--resume with a different config than {self.config_file}: {'; '.join(changed)}")

    def clean_after_interruption(self, step: int) -> None:
        """Undo what a killed run left behind, before this one writes: ``metrics.jsonl`` records after ``step`` (the
        step training resumes from; they are logged again) and a torn last line, and ``checkpoints/.tmp-step-N``
        directories of saves that never finished."""
        for tmp in self.path.glob(PARTIAL_CHECKPOINTS):
            shutil.rmtree(tmp, ignore_errors=True)
        path = self.path / METRICS_LOG
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

    def resume_advice(self) -> str:
        """What to do after a full disk stopped training: which complete checkpoint ``--resume`` continues from."""
        latest = self.latest
        if latest is None or not latest.is_dir():
            return f"free space, then run the same command again (no checkpoint was complete yet in {self.path})"
        step = latest.name.removeprefix("step-").lstrip("0") or "0"
        return (
            f"free space, then rerun with --resume: it continues from {latest} (step {step}); nothing before it is lost"
        )

    # -- log ---------------------------------------------------------------------------------------------------
    def log(self, *, enabled: bool = True, report_to: str = "none") -> MetricsLog:
        """The run's metrics log (:class:`MetricsLog`); ``enabled=False`` on the ranks that do not write."""
        return MetricsLog(self.path, enabled, report_to)

    # -- checkpoint, point, prune ------------------------------------------------------------------------------
    def check_room(self, like: Path, what: str) -> None:
        """Refuse (a :class:`~diffvqa.files.disk.DiskFullError` naming ``what``) when the device has less free space
        than the checkpoint ``like`` takes: the next one will be as large."""
        check_free_space(self.path, directory_bytes(like), f"{what}, as large as {like.name},")

    def checkpoint(self, step: int, write: Callable[[Path], None], trainer_state: dict[str, Any]) -> Path:
        """Write ``checkpoints/step-N`` atomically and point ``latest`` at it; returns its directory.

        ``write(directory)`` writes the model into the temporary ``checkpoints/.tmp-step-N``; the trainer state goes
        beside it, then the directory is renamed (a rerun of the same step after a resume replaces the earlier one).
        Refuses first when the device has less free space than the previous checkpoint took (a full device during
        the write: the temporary directory is removed by the command's :func:`~diffvqa.files.disk.full_disk_said`,
        and ``latest`` still names the previous checkpoint)."""
        import torch

        final = self.path / CHECKPOINTS_DIR / f"step-{step:07d}"
        tmp = self.path / CHECKPOINTS_DIR / f".tmp-step-{step:07d}"
        shutil.rmtree(tmp, ignore_errors=True)
        previous = self.latest
        if previous is not None and previous.is_dir():
            self.check_room(previous, f"the checkpoint of step {step}")
        write(tmp)
        # through a Python file: torch keeps its OSError (ENOSPC) as the context of its own RuntimeError
        with (tmp / TRAINER_STATE).open("wb") as f:
            torch.save(trainer_state, f)
        if final.exists():  # rerun of the same step after a resume
            shutil.rmtree(final)
        os.rename(tmp, final)
        self.point(LATEST, final)
        return final

    def point(self, name: str, checkpoint: str | Path) -> None:
        """Point ``RUN/<name>`` (``latest`` or ``best``) at ``checkpoint`` (a directory inside the run), atomically."""
        write_atomic(self.path / name, str(Path(checkpoint).relative_to(self.path)) + "\n")

    def prune(self) -> None:
        """Keep only the checkpoints ``latest`` and ``best`` point to."""
        keep = {self.latest, self.best}
        for path in (self.path / CHECKPOINTS_DIR).glob("step-*"):
            if path not in keep:
                shutil.rmtree(path, ignore_errors=True)
