"""The phantom's ground truth as a release carries it: ``release_dir/ground_truth/`` (phantom releases only).

The simulator writes it (:mod:`diffvqa.data.phantom.simulator`, whose docstring is the contract: coordinates,
masks, what each table means) with the file and column names defined here; :func:`read_ground_truth` reads it
back for the release reader (:attr:`diffvqa.data.release.Release.truth`), and :mod:`diffvqa.data.cache_truth`
carries it into a prepared cache. Nothing that trains or runs the model reads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from diffvqa.data.csv_files import int_columns, read_csv
from diffvqa.errors import UserError

GROUND_TRUTH_DIR = "ground_truth"
FINDINGS_FILE, PAIRS_FILE, CHANGES_FILE, KEYWORDS_FILE = "findings.csv", "pairs.csv", "changes.csv", "questions.csv"
FINDINGS_COLUMNS = ("subject_id", "study_id", "dicom_id", "name", "location", "level", "type", "mask_file")
PAIRS_COLUMNS = ("study_id", "ref_id", "m00", "m01", "m02", "m10", "m11", "m12", "change_mask_file", "keyword")
CHANGES_COLUMNS = ("study_id", "ref_id", "name", "side", "mask_file")
KEYWORD_COLUMNS = ("question_index", "keyword")
CHANGE_SIDES = ("left", "right", "")
MATRIX_COLUMNS = ("m00", "m01", "m02", "m10", "m11", "m12")


@dataclass
class GroundTruth:
    """The phantom's ``ground_truth/`` directory (contract in :mod:`diffvqa.data.phantom.simulator`).

    Attributes:
        directory: ``release_dir/ground_truth``; mask files are relative to it.
        findings: one row per finding (FINDINGS_COLUMNS); masks are 0/255 PNGs in the study's JPG frame.
        pairs: one row per (study_id, ref_id) (PAIRS_COLUMNS); ``M = [[m00, m01, m02], [m10, m11, m12]]`` maps a
            reference-JPG pixel to the same anatomy in the main JPG, ``[x_main, y_main] = M @ [x_ref, y_ref, 1]``
            (x right, y down, pixel centres at integers); the change mask is in the reference JPG's frame.
        keywords: question_index -> ground-truth keyword.
        changes: one row per (pair, changed finding, side) (CHANGES_COLUMNS: study_id, ref_id int64; name; side
            "left" | "right" | ""; mask_file in the reference JPG's frame), or None for a release written before
            ``changes.csv`` existed (no per-finding change regions then).
    """

    directory: Path
    findings: pd.DataFrame
    pairs: pd.DataFrame
    keywords: dict[int, str]
    changes: pd.DataFrame | None = None

    def matrix(self, row: int) -> np.ndarray:
        """(2, 3) float64 M of ``pairs`` row ``row`` (positional)."""
        values = self.pairs.iloc[row][list(MATRIX_COLUMNS)].to_numpy(dtype=np.float64)
        return values.reshape(2, 3)


def read_ground_truth(release_dir: str | Path) -> GroundTruth | None:
    """Read ``release_dir/ground_truth`` when it exists (phantom releases), else None."""
    directory = Path(release_dir) / GROUND_TRUTH_DIR
    if not directory.is_dir():
        return None
    findings = read_csv(directory / FINDINGS_FILE, FINDINGS_COLUMNS, FINDINGS_COLUMNS)
    pairs = read_csv(directory / PAIRS_FILE, PAIRS_COLUMNS, PAIRS_COLUMNS)
    keywords_table = read_csv(directory / KEYWORDS_FILE, KEYWORD_COLUMNS, KEYWORD_COLUMNS)
    int_columns(findings, ("subject_id", "study_id"), directory / FINDINGS_FILE)
    int_columns(pairs, ("study_id", "ref_id"), directory / PAIRS_FILE)
    int_columns(keywords_table, ("question_index",), directory / KEYWORDS_FILE)
    for column in MATRIX_COLUMNS:
        parsed = pd.to_numeric(pairs[column], errors="coerce")
        if parsed.isna().any():
            row = int(np.flatnonzero(parsed.isna().to_numpy())[0])
            raise UserError(f"{directory / PAIRS_FILE}: row {row}: {column}={pairs[column].iloc[row]!r}")
        pairs[column] = parsed.astype(np.float64)
    keywords = dict(zip(keywords_table["question_index"].tolist(), keywords_table["keyword"].tolist(), strict=True))
    changes = read_changes(directory, pairs)
    return GroundTruth(directory=directory, findings=findings, pairs=pairs, keywords=keywords, changes=changes)


def read_changes(directory: Path, pairs: pd.DataFrame) -> pd.DataFrame | None:
    """``ground_truth/changes.csv`` checked row by row against ``pairs`` (the parsed pairs.csv); None when the
    release predates it. Raises :class:`~diffvqa.errors.UserError` naming the file, the 0-based data row and the
    bad value."""
    path = directory / CHANGES_FILE
    if not path.is_file():
        return None
    changes = read_csv(path, CHANGES_COLUMNS, CHANGES_COLUMNS)
    int_columns(changes, ("study_id", "ref_id"), path)
    known = set(zip(pairs.study_id.tolist(), pairs.ref_id.tolist(), strict=True))
    seen: set = set()
    for row, (study_id, ref_id, name, side, mask_file) in enumerate(changes.itertuples(index=False)):
        if (study_id, ref_id, name, side) in seen:
            raise UserError(f"{path}: row {row}: a second row for ({study_id}, {ref_id}, {name!r}, {side!r})")
        seen.add((study_id, ref_id, name, side))
        if side not in CHANGE_SIDES:
            raise UserError(f"{path}: row {row}: side={side!r}; expected one of {list(CHANGE_SIDES)}")
        if not name or not mask_file:
            raise UserError(f"{path}: row {row}: empty {'name' if not name else 'mask_file'}")
        if (study_id, ref_id) not in known:
            raise UserError(f"{path}: row {row}: pair study_id={study_id}, ref_id={ref_id} is not in pairs.csv")
    return changes
