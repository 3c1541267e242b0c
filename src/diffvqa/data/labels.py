"""Finding labels per study: MIMIC-CXR-JPG's CheXpert and NegBio files and Medical-Diff-VQA's ``all_diseases.json``.

What the files hold (MIMIC-CXR-JPG 2.0.0; checked against public readers of the release):

* ``mimic-cxr-2.0.0-chexpert.csv.gz`` and ``mimic-cxr-2.0.0-negbio.csv.gz``: one row per study, ``subject_id``,
  ``study_id`` and the 14 CheXpert observations as named columns (:data:`OBSERVATIONS`). A value is ``1.0``
  (positive), ``0.0`` (negative: the report negates it), ``-1.0`` (uncertain) or blank (not mentioned). Copies in
  the wild order the columns differently, so columns are read by name. Images join through
  ``mimic-cxr-2.0.0-metadata.csv.gz`` (or a prepared cache's ``images.csv``) on (``subject_id``, ``study_id``).
* ``all_diseases.json`` (Medical-Diff-VQA): the per-study findings the question generator extracted from each
  report, in the answers' official names. Its format is documented only by the code that writes it (the
  dataset's ``question_gen.py``, ``gen_disease_json``): a JSON list of per-study objects with ``study_id`` (a
  string of digits), ``subject_id``, ``entity`` (finding name -> its attributes: ``entity_name``, ``location``,
  ``type``, ``level`` as lists of words or null, ...) and ``no_entity`` (the names the report negates; not used
  here). Accepted here: that list, or an object keyed by study id whose values are such records or directly the
  entity; ``entity`` as a mapping or a list of names. A finding it lists is positive; one it does not list,
  negative (the generator's own reading: the "abnormality" answers list exactly ``entity``); a study it lacks,
  unlabelled.

Each label set becomes, per study, a vector over its names (:data:`LABEL_NAMES`) of ``1``, ``0``, ``-1`` or NaN
(blank), read by :func:`read_label_file`. A file that cannot be read at all (missing column, corrupt gzip, not
UTF-8, not JSON) is reported in one line; a malformed row, a value outside {1, 0, -1, blank} (per column) and a
study the file lacks (:mod:`diffvqa.data.cache_labels`) are counted skips, reported by reason
(:class:`LabelTable`); none is a crash. Gzip is recognised by its content, and :func:`find_label_files` also
takes a gunzipped copy (``mimic-cxr-2.0.0-chexpert.csv``).

Training targets from these values (:func:`targets`): the uncertain policy ``ignore`` (default), ``ones`` or
``zeros`` (Irvin et al. 2019, "U-Ignore / U-Ones / U-Zeros"); a blank is masked, unless the study's No Finding is
1, which says every other observation is negative.

The keyword of an answer is one of the 30 official finding names; :data:`FINDING_OBSERVATIONS` maps each to the
CheXpert observations whose report mentions cover it (first = the one the keyword's classifier map uses). Fourteen
names have none (aortic tortuosity, hernia, scoliosis, emphysema, ...): the 14 observations say nothing about
them.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from diffvqa.data.vocabulary import FINDINGS
from diffvqa.errors import UserError, one_line

# The 14 CheXpert observations, in the files' usual (alphabetical) order.
OBSERVATIONS = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum", "Fracture", "Lung Lesion",
    "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia", "Pneumothorax", "Support Devices",
)  # fmt: skip
NO_FINDING = "No Finding"

# The official names no CheXpert observation covers: the 14 observations say nothing about them.
NO_OBSERVATION = (
    "hernia", "tortuosity of the descending aorta", "scoliosis", "gastric distention", "hypoxemia",
    "hypertensive heart disease", "hematoma", "tortuosity of the thoracic aorta", "contusion", "emphysema",
    "calcification", "thymoma", "pneumomediastinum", "air collection",
)  # fmt: skip
# Official finding name -> the CheXpert observations a report naming it is labelled with (the CheXpert labeler's
# mention phrases: vascular/hilar congestion and heart failure are Edema mentions; a blunted costophrenic angle is
# an effusion's; Lung Opacity is the parent of edema, consolidation, pneumonia and atelectasis). The first
# observation is the keyword's own (saliency.cam_source=classifier). () = no observation covers it.
FINDING_OBSERVATIONS: dict[str, tuple[str, ...]] = {
    "pleural effusion": ("Pleural Effusion",),
    "blunting of the costophrenic angle": ("Pleural Effusion",),
    "atelectasis": ("Atelectasis", "Lung Opacity"),
    "cardiomegaly": ("Cardiomegaly",),
    "enlargement of the cardiac silhouette": ("Enlarged Cardiomediastinum", "Cardiomegaly"),
    "edema": ("Edema", "Lung Opacity"),
    "vascular congestion": ("Edema",),
    "hilar congestion": ("Edema",),
    "heart failure": ("Edema",),
    "pneumothorax": ("Pneumothorax",),
    "lung opacity": ("Lung Opacity",),
    "pneumonia": ("Pneumonia", "Lung Opacity"),
    "consolidation": ("Consolidation", "Lung Opacity"),
    "fracture": ("Fracture",),
    "granuloma": ("Lung Lesion",),
    "pleural thickening": ("Pleural Other",),
    **{name: () for name in NO_OBSERVATION},
}

CHEXPERT_FILE = "mimic-cxr-2.0.0-chexpert.csv.gz"
NEGBIO_FILE = "mimic-cxr-2.0.0-negbio.csv.gz"
FINDINGS_FILE = "all_diseases.json"
# label set -> (file, its names)
LABEL_SETS: dict[str, tuple[str, tuple[str, ...]]] = {
    "chexpert": (CHEXPERT_FILE, OBSERVATIONS),
    "negbio": (NEGBIO_FILE, OBSERVATIONS),
    "findings": (FINDINGS_FILE, FINDINGS),
}
LABEL_NAMES = {name: names for name, (_, names) in LABEL_SETS.items()}
UNCERTAIN_POLICIES = ("ignore", "ones", "zeros")
LABEL_VALUES = (1.0, 0.0, -1.0)  # positive, negative, uncertain; blank = not mentioned


def keyword_label(keyword: str, label_set: str) -> str | None:
    """The label of ``label_set`` whose classifier map stands for ``keyword`` (an official finding name), or None
    when the set has no label for it."""
    if label_set == "findings":
        return keyword if keyword in FINDINGS else None
    observations = FINDING_OBSERVATIONS.get(keyword, ())
    return observations[0] if observations else None


@dataclass
class LabelTable:
    """One label set read from its file: ``values`` (studies, K) float32 of 1 / 0 / -1 / NaN, one row per study.

    ``skipped`` counts what was not read, by reason (``"value out of range in Edema"``, ``"duplicate study"``,
    ``"study_id not an integer"``, ...); ``problem`` is set (and ``values`` empty) when the whole file was unusable.
    """

    label_set: str
    path: Path
    names: tuple[str, ...]
    study_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (studies,)
    values: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))  # (studies, K)
    skipped: Counter = field(default_factory=Counter)
    problem: str = ""

    def row_of(self) -> dict[int, int]:
        return {int(s): i for i, s in enumerate(self.study_ids.tolist())}

    def summary(self) -> dict:
        return {
            "file": str(self.path),
            "studies": int(len(self.study_ids)),
            "skipped": dict(sorted(self.skipped.items())),
            **({"problem": self.problem} if self.problem else {}),
        }


def _count(table: LabelTable, reason: str, count: int) -> None:
    if count:
        table.skipped[reason] += count


def _text(path: Path) -> str:
    """A label file's text; gzip is recognised by its magic bytes, not the name (a gunzipped copy often keeps
    ``.gz``, or loses it). A UTF-8 byte-order mark (a spreadsheet's export) is dropped."""
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:  # a bad header, a truncated or a corrupt body
            raise UserError(f"a damaged gzip file ({exc})") from exc
    return data.decode("utf-8-sig")


def _read_observation_csv(table: LabelTable) -> None:
    """CheXpert / NegBio: columns by name; a row with a wrong number of fields is skipped and a value outside
    {1, 0, -1, blank} is left blank, each counted (the latter per column)."""
    rows = [row for row in csv.reader(io.StringIO(_text(table.path))) if row]  # blank lines: nothing
    if not rows:
        raise UserError("empty file (no header)")
    header = [name.strip() for name in rows[0]]
    missing = [c for c in ("subject_id", "study_id", *table.names) if c not in header]
    if missing:
        raise UserError(f"missing column(s) {missing} (it has {header})")
    ragged = [row for row in rows[1:] if len(row) != len(header)]
    _count(table, f"row with a wrong number of fields (the header has {len(header)})", len(ragged))
    frame = pd.DataFrame([row for row in rows[1:] if len(row) == len(header)], columns=header, dtype=str)
    for name in sorted({c for c in header if header.count(c) > 1}):  # the first of a repeated column is read
        _count(table, f"column {name} repeated (its first read)", header.count(name) - 1)
    frame = frame.loc[:, ~frame.columns.duplicated()]
    ids = pd.to_numeric(frame.study_id.str.strip(), errors="coerce")
    bad_id = ids.isna() | (ids % 1 != 0)
    _count(table, "study_id not an integer", int(bad_id.sum()))
    frame, ids = frame[~bad_id], ids[~bad_id].astype(np.int64)
    duplicate = ids.duplicated(keep="first")
    _count(table, "duplicate study (first row kept)", int(duplicate.sum()))
    frame, ids = frame[~duplicate], ids[~duplicate]
    values = np.full((len(frame), len(table.names)), np.nan, np.float32)
    for j, name in enumerate(table.names):
        column = frame[name].str.strip()
        parsed = pd.to_numeric(column, errors="coerce")  # "1.0", "1", "1.00" alike
        valid = parsed.isin(LABEL_VALUES)
        _count(table, f"value out of range in {name}", int((~valid & (column != "")).sum()))
        values[:, j] = parsed.where(valid).to_numpy(np.float32)  # out of range: NaN, as if not mentioned
    table.study_ids, table.values = ids.to_numpy(np.int64), values


def _read_findings_json(table: LabelTable) -> None:
    """all_diseases.json: per study the findings its report names (module docstring)."""
    loaded = json.loads(_text(table.path))
    if isinstance(loaded, dict):  # study id -> its record, or directly its entity (a mapping or a list of names)
        records = [
            {"study_id": key, **v} if isinstance(v, dict) and "entity" in v else {"study_id": key, "entity": v}
            for key, v in loaded.items()
        ]
    elif isinstance(loaded, list):
        records = loaded
    else:
        raise UserError(f"expected a JSON list of per-study objects, got {type(loaded).__name__}")
    column = {name: j for j, name in enumerate(table.names)}
    ids, rows, seen = [], [], set()
    unknown: Counter = Counter()  # names outside the vocabulary: one skip line for all of them (a release has many)
    for record in records:
        if not isinstance(record, dict) or "study_id" not in record:
            table.skipped["record without study_id"] += 1
            continue
        try:
            study = int(str(record["study_id"]).strip().lstrip("s"))
        except ValueError:
            table.skipped["study_id not an integer"] += 1
            continue
        if study in seen:
            table.skipped["duplicate study (first row kept)"] += 1
            continue
        if "entity" not in record:  # not "no findings": the generator writes an empty mapping for those
            table.skipped["record without entity"] += 1
            continue
        entity = record["entity"]
        if not isinstance(entity, (dict, list)):
            table.skipped["entity neither a mapping nor a list"] += 1
            continue
        names = list(entity)
        row = np.zeros(len(table.names), np.float32)  # a finding the report does not name is negative
        for name in names:
            name = str(name).strip().lower()
            if name in column:
                row[column[name]] = 1.0
            else:
                unknown[name] += 1
        seen.add(study)
        ids.append(study)
        rows.append(row)
    if unknown:
        table.skipped[_unknown_names_reason(unknown)] = sum(unknown.values())
    table.study_ids = np.asarray(ids, np.int64)
    table.values = np.stack(rows) if rows else np.zeros((0, len(table.names)), np.float32)


def _unknown_names_reason(unknown: Counter, shown: int = 5) -> str:
    """One skip reason for every finding name outside the vocabulary, naming the most frequent ``shown``."""
    common = ", ".join(f"{name!r} x{count:,}" for name, count in unknown.most_common(shown))
    more = f" and {len(unknown) - shown:,} more" if len(unknown) > shown else ""
    names = f"{len(unknown):,} name{'s' if len(unknown) != 1 else ''}"
    return f"finding not in the vocabulary ({names}: {common}{more})"


def read_label_file(label_set: str, path: str | Path) -> LabelTable:
    """Read one label file; a file that cannot be read at all is reported in ``problem`` (nothing else lost)."""
    if label_set not in LABEL_SETS:
        raise UserError(f"label set {label_set!r}: expected one of {', '.join(LABEL_SETS)}")
    table = LabelTable(label_set, Path(path), LABEL_NAMES[label_set])
    table.values = np.zeros((0, len(table.names)), np.float32)
    try:
        if label_set == "findings":
            _read_findings_json(table)
        else:
            _read_observation_csv(table)
    except (OSError, UnicodeDecodeError, ValueError, csv.Error, UserError) as exc:
        # OSError: unreadable; json.JSONDecodeError is a ValueError
        table.problem = one_line(exc)
        table.study_ids = np.zeros(0, np.int64)
        table.values = np.zeros((0, len(table.names)), np.float32)
    return table


def find_label_files(*directories: str | Path | None) -> dict[str, Path]:
    """label set -> its file, looked for in ``directories`` in order (the first that holds it wins; in one
    directory the ``.gz`` file before a gunzipped copy of it)."""
    found: dict[str, Path] = {}
    for directory in directories:
        if directory is None:
            continue
        for label_set, (file, _) in LABEL_SETS.items():
            names = (file, file.removesuffix(".gz")) if file.endswith(".gz") else (file,)
            path = next((Path(directory) / n for n in names if (Path(directory) / n).is_file()), None)
            if label_set not in found and path is not None:
                found[label_set] = path
    return found


def targets(values: np.ndarray, names: tuple[str, ...], uncertain: str = "ignore") -> tuple[np.ndarray, np.ndarray]:
    """Stored values (N, K) of 1 / 0 / -1 / NaN -> (targets, mask), both (N, K) float32.

    ``uncertain``: ``ignore`` masks a -1 (U-Ignore), ``ones`` and ``zeros`` read it as 1 or 0 (U-Ones, U-Zeros).
    A blank (NaN) is masked, unless the row's No Finding is 1: then every other observation is negative.
    """
    if uncertain not in UNCERTAIN_POLICIES:
        raise UserError(f"uncertain policy {uncertain!r}: expected one of {', '.join(UNCERTAIN_POLICIES)}")
    values = np.asarray(values, np.float32)
    target = np.where(values == 1, 1.0, 0.0).astype(np.float32)
    mask = (values == 1) | (values == 0)
    if uncertain != "ignore":
        target[values == -1] = 1.0 if uncertain == "ones" else 0.0
        mask |= values == -1
    if NO_FINDING in names:
        says_negative = (values[:, names.index(NO_FINDING)] == 1)[:, None] & np.isnan(values)
        mask |= says_negative  # target stays 0
    return target, mask.astype(np.float32)
