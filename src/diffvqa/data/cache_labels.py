"""Finding labels in a prepared cache: ``labels/`` holds, per label set found beside the release, one row per
cached image (``images.csv`` order).

    labels/labels.json      per set: file, names, images labelled, images whose study the file lacks, skips
    labels/<set>.npy        (N, K) float32: 1 positive, 0 negative, -1 uncertain, NaN blank or unlabelled

``prepare`` writes it when it finds the files (:func:`diffvqa.data.labels.find_label_files`: MIMIC-CXR-JPG's
CheXpert/NegBio CSVs beside the images, Medical-Diff-VQA's all_diseases.json beside the questions, or a
directory named by ``--labels``); ``diffvqa pretrain`` reads it (:class:`CacheLabels`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from diffvqa.data.labels import LABEL_SETS, read_label_file
from diffvqa.errors import UserError, one_line
from diffvqa.files.atomic import write_atomic

LABELS = "labels"
LABELS_MANIFEST = "labels.json"


def write_labels(out: Path, index: pd.DataFrame, files: dict[str, Path]) -> dict:
    """Join each label file to the cache's images on study_id; returns the summary (also labels/labels.json).

    ``index``: the cache's images.csv (dicom_id, subject_id, study_id, ...). A study the file lacks leaves its
    images unlabelled (NaN), counted; a file that cannot be read is reported and skipped.
    """
    directory = out / LABELS
    summary: dict[str, dict] = {}
    # An earlier finalise of this cache may have left labels the files no longer give (moved, or unreadable
    # now): remove them, labels.json first, so a cache never reads labels of files it was not given.
    for stale in (LABELS_MANIFEST, *(f"{label_set}.npy" for label_set in LABEL_SETS)):
        (directory / stale).unlink(missing_ok=True)
    if not files:
        if directory.is_dir() and not any(directory.iterdir()):
            directory.rmdir()
        return summary
    directory.mkdir(parents=True, exist_ok=True)
    studies = index.study_id.astype(np.int64).to_numpy()
    for label_set, path in files.items():
        table = read_label_file(label_set, path)
        entry = table.summary() | {"names": list(table.names)}
        if table.problem:
            summary[label_set] = entry
            continue
        rows = table.row_of()
        where = np.array([rows.get(int(s), -1) for s in studies], np.int64)
        values = np.full((len(studies), len(table.names)), np.nan, np.float32)
        found = where >= 0
        values[found] = table.values[where[found]]
        np.save(directory / f"{label_set}.npy", values)
        entry |= {
            "images": int(len(studies)),
            "images_labelled": int(found.sum()),
            "images_without_study_in_file": int((~found).sum()),
            "positives": {n: int((values[:, j] == 1).sum()) for j, n in enumerate(table.names)},
        }
        summary[label_set] = entry
    # last and atomic: labels.json is what marks the labels complete (CacheLabels.exists)
    write_atomic(directory / LABELS_MANIFEST, json.dumps(summary, indent=2) + "\n")
    return summary


def report_lines(summary: dict) -> list[str]:
    """The labels' part of prepare's report: per set what was joined and what was skipped, by reason."""
    lines = []
    for label_set, entry in summary.items():
        if entry.get("problem"):
            lines.append(f"  labels {label_set}: {entry['file']} not read ({entry['problem']})")
            continue
        lines.append(
            f"  labels {label_set}: {entry['images_labelled']:,}/{entry['images']:,} images labelled from "
            f"{entry['file']} ({entry['images_without_study_in_file']:,} whose study the file lacks)"
        )
        for reason, count in entry["skipped"].items():
            lines.append(f"    skipped {count:,}: {reason}")
    return lines


class CacheLabels:
    """A cache's ``labels/`` read back."""

    def __init__(self, cache_dir: str | Path):
        self.directory = Path(cache_dir) / LABELS
        manifest = self.directory / LABELS_MANIFEST
        try:
            self.summary: dict = json.loads(manifest.read_text()) if manifest.is_file() else {}
        except (OSError, UnicodeDecodeError, ValueError) as exc:  # the user's files, not a bug here
            raise UserError(
                f"{manifest}: unreadable ({one_line(exc)}); prepare the cache again into a new --out directory"
            ) from exc
        self.sets = [s for s, e in self.summary.items() if not e.get("problem")]

    @staticmethod
    def exists(cache_dir: str | Path) -> bool:
        return (Path(cache_dir) / LABELS / LABELS_MANIFEST).is_file()

    def names(self, label_set: str) -> tuple[str, ...]:
        return tuple(self.summary[label_set]["names"])

    def values(self, label_set: str) -> np.ndarray:
        """(N, K) float32 in images.csv order; a UserError naming what the cache has when the set is absent."""
        if label_set not in self.sets:
            have = ", ".join(self.sets) or "none"
            entry = self.summary.get(label_set) or {}
            why = f"; {entry['file']} was not read: {entry['problem']}" if entry.get("problem") else ""
            files = ", ".join(file for file, _ in LABEL_SETS.values())
            raise UserError(
                f"{self.directory.parent}: no {label_set!r} labels in this cache (it has: {have}{why}); prepare it "
                f"again with the label files beside the release or images, or name their directory with --labels "
                f"({files})"
            )
        path = self.directory / f"{label_set}.npy"
        try:
            return np.load(path)
        except (OSError, ValueError) as exc:
            raise UserError(
                f"{path}: unreadable ({one_line(exc)}); prepare the cache again into a new --out directory"
            ) from exc
