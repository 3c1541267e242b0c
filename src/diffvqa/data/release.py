"""Reading Medical-Diff-VQA (v1.0.1) exactly as released, joined with the MIMIC-CXR-JPG image tree.

Inputs (``docs/data.md``): ``mimic_pair_questions.csv`` (7 columns: study_id, subject_id, ref_id, question_type,
question, answer, split) and ``mimic_all.csv`` (one row per study; we use subject_id, study_id, dicom_id,
study_date) in ``release_dir``; JPGs at ``images_dir/files/p{subject[:2]}/p{subject}/s{study}/{dicom}.jpg``.

Every question row either survives or is counted under the first check it fails, in this order:

``duplicate``         the same seven fields as an earlier row of the file (kept with ``keep_duplicates``)
``bad_row``           an id that is not an integer, or a question_type / split outside the release's values
``unknown_study``     study_id or ref_id absent from mimic_all.csv
``subject_mismatch``  mimic_all.csv gives either study to another subject than the row's subject_id
``bad_chronology``    a *difference* row whose reference study_date is not strictly earlier than its main's (or a
                      date is missing)
``missing_image``     a study without a dicom_id, or its JPG not on disk (only checked with ``check_images``)
``unreadable``        the image exists but cannot be decoded; only known once it is opened
                      (``prepare`` decodes every image and reports these through :meth:`Release.drop_images`)

Chronology comes from ``study_date`` alone, never from id order or ``study_order``. v1.0.1 fixed v1.0.0's
difference rows whose reference was the later study by swapping their study_id/ref_id, so a pair's difference
row can carry the two ids the other way round from the pair's other questions. That needs no special case:
each difference row is judged by its own dates, so a swapped row whose main is the later study is kept, and any
difference row (swapped or not) whose main is the earlier study is a ``bad_chronology`` skip (or kept, with
``keep_bad_chronology``). We never swap ids back: the answer's "additional"/"missing" wording depends on the
direction. The report counts the reversed difference rows and how many of them survived.

The six single-image types (abnormality ... type) ask about the ``study_id`` image alone, so after the v1.0.1
swap their main can be the earlier study of the pair: they are valid, kept, and counted in the note
``single_image_main_not_later``.

A skip never stops the reader unless ``strict=True``; then the first failing row raises ``UserError`` naming
the file, the row and the reason.

Phantom releases also carry ``ground_truth/`` (findings, per-pair transforms and change masks, keywords); it is
read by :func:`diffvqa.data.ground_truth.read_ground_truth` and attached as :attr:`Release.truth`. The CSVs are
read verbatim, with errors that name file and line, by :mod:`diffvqa.data.csv_files`.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from diffvqa.config import QUESTION_TYPES
from diffvqa.data.csv_files import read_csv, to_int
from diffvqa.data.ground_truth import GroundTruth, read_ground_truth
from diffvqa.errors import UserError

QUESTIONS_FILE = "mimic_pair_questions.csv"
STUDIES_FILE = "mimic_all.csv"

SPLITS = ("train", "val", "test")
QUESTION_COLUMNS = ("study_id", "subject_id", "ref_id", "question_type", "question", "answer", "split")
STUDY_COLUMNS = ("subject_id", "study_id", "dicom_id", "study_date")  # the ones we use of the 21
SKIP_REASONS = (
    "duplicate", "bad_row", "unknown_study", "subject_mismatch", "bad_chronology", "missing_image", "unreadable",
)  # fmt: skip
SKIP_HELP = {
    "duplicate": "the same seven fields as an earlier row (an exact repeat)",
    "bad_row": "an id is not an integer, or question_type/split is not one of the release's",
    "unknown_study": "study_id or ref_id is not in mimic_all.csv",
    "subject_mismatch": "mimic_all.csv puts a study under another subject_id",
    "bad_chronology": "difference row whose reference study_date is not strictly earlier than main's",
    "missing_image": "no dicom_id for a study, or its image file is not on disk",
    "unreadable": "the image file exists but cannot be decoded",
}
# The reader's output table, in this column order.
COLUMNS = (
    "question_index",
    "subject_id",
    "study_id",
    "ref_id",
    "main_dicom_id",
    "ref_dicom_id",
    "main_path",
    "ref_path",
    "question_type",
    "question",
    "answer",
    "split",
)
IMAGE_SUFFIXES = (".jpg", ".dcm")  # MIMIC-CXR-JPG first; a MIMIC-CXR DICOM tree has the same layout


def image_relpath(subject_id: int, study_id: int, dicom_id: str, suffix: str = ".jpg") -> str:
    """``files/p10/p10000032/s50414267/{dicom_id}.jpg``: the MIMIC-CXR(-JPG) layout."""
    subject = str(int(subject_id))
    return f"files/p{subject[:2]}/p{subject}/s{int(study_id)}/{dicom_id}{suffix}"


# ----------------------------------------------------------------------------------------------------------
# the release


@dataclass
class Release:
    """The reader's result.

    Attributes:
        questions: one row per kept question, columns ``COLUMNS`` (ids int64, ``question_index`` = 0-based data
            row of mimic_pair_questions.csv, answers verbatim including the trailing space).
        steps: ordered counts: rows_read, after_split_filter, after_type_filter, kept_questions, unique_pairs,
            unique_images.
        skipped: rows skipped, by reason (SKIP_REASONS order, zeros included).
        notes: informational counts that are not skips (reversed difference rows, kept bad chronology, ...).
        release_dir, images_dir, splits, question_types, keep_bad_chronology: what was read, and how.
        truth: the phantom's ground truth, when ``release_dir/ground_truth`` exists.
    """

    questions: pd.DataFrame
    steps: dict[str, int]
    skipped: dict[str, int]
    notes: dict[str, int]
    release_dir: Path
    images_dir: Path
    splits: list[str] | None = None
    question_types: list[str] | None = None
    keep_bad_chronology: bool = False
    truth: GroundTruth | None = field(default=None, repr=False)
    keep_duplicates: bool = False

    def images(self) -> pd.DataFrame:
        """The unique images the kept questions need (main and reference), sorted by dicom_id.

        Columns: dicom_id, subject_id, study_id, path (absolute str).
        """
        q = self.questions
        both = pd.concat(
            [
                pd.DataFrame({"dicom_id": q.main_dicom_id, "study_id": q.study_id, "path": q.main_path}),
                pd.DataFrame({"dicom_id": q.ref_dicom_id, "study_id": q.ref_id, "path": q.ref_path}),
            ]
        )
        both["subject_id"] = pd.concat([q.subject_id, q.subject_id]).to_numpy()
        both = both.drop_duplicates("dicom_id").sort_values("dicom_id", kind="stable")
        return both[["dicom_id", "subject_id", "study_id", "path"]].reset_index(drop=True)

    def drop_images(self, dicom_ids, reason: str = "unreadable", strict: bool = False) -> Release:
        """A copy without the questions that need any of ``dicom_ids``, counted under ``reason``."""
        if reason not in SKIP_REASONS:
            raise ValueError(f"unknown skip reason {reason!r}; choose one of {SKIP_REASONS}")
        bad = set(dicom_ids)
        q = self.questions
        drop = q.main_dicom_id.isin(bad) | q.ref_dicom_id.isin(bad)
        if strict and drop.any():
            row = q[drop].iloc[0]
            raise UserError(
                f"{self.release_dir / QUESTIONS_FILE}: row {row.question_index}: {reason} "
                f"(image {row.main_dicom_id if row.main_dicom_id in bad else row.ref_dicom_id})"
            )
        skipped = dict(self.skipped)
        skipped[reason] += int(drop.sum())
        kept = q[~drop].reset_index(drop=True)
        return dataclasses.replace(self, questions=kept, skipped=skipped, steps=_final_steps(self.steps, kept))

    @property
    def counts(self) -> dict[str, int]:
        """Every count in reading order: rows_read, after_split_filter, after_type_filter, skipped_<reason> ...,
        kept_questions, unique_pairs, unique_images."""
        s = self.steps
        ordered = {k: s[k] for k in ("rows_read", "after_split_filter", "after_type_filter")}
        ordered |= {f"skipped_{reason}": self.skipped[reason] for reason in SKIP_REASONS}
        return ordered | {k: s[k] for k in ("kept_questions", "unique_pairs", "unique_images")}

    def to_dict(self) -> dict:
        """Counts and filters, JSON-ready (for the cache manifest)."""
        return {
            "steps": dict(self.steps),
            "skipped": dict(self.skipped),
            "notes": dict(self.notes),
            "splits": self.splits,
            "question_types": self.question_types,
            "keep_bad_chronology": self.keep_bad_chronology,
            "keep_duplicates": self.keep_duplicates,
        }

    def report(self) -> str:
        """A printable account of every step and skip."""
        s, n = self.steps, self.notes
        width = 44
        lines = [f"Medical-Diff-VQA release {self.release_dir}", f"images {self.images_dir}"]
        lines.append(f"  {'rows read (' + QUESTIONS_FILE + ')':<{width}}{s['rows_read']:>10,}")
        splits = ",".join(self.splits) if self.splits else "all"
        types = ",".join(self.question_types) if self.question_types else "all"
        lines.append(f"  {'after split filter [' + splits + ']':<{width}}{s['after_split_filter']:>10,}")
        lines.append(f"  {'after type filter [' + types + ']':<{width}}{s['after_type_filter']:>10,}")
        lines.append("  skipped (each row under the first check it fails):")
        for reason in SKIP_REASONS:
            lines.append(f"    {reason:<{width - 2}}{self.skipped[reason]:>10,}   {SKIP_HELP[reason]}")
        lines.append(f"  {'kept questions':<{width}}{s['kept_questions']:>10,}")
        lines.append(f"  {'unique pairs (study_id, ref_id)':<{width}}{s['unique_pairs']:>10,}")
        lines.append(f"  {'unique images':<{width}}{s['unique_images']:>10,}")
        if n.get("swapped_difference_rows"):
            lines.append(
                f"  note: {n['swapped_difference_rows']:,} difference rows carry their pair's ids the other way "
                f"round from its other questions (the v1.0.1 fix); chronology is decided by study_date: "
                f"{n['swapped_difference_kept']:,} of them kept"
            )
        if n.get("single_image_main_not_later"):
            lines.append(
                f"  note: {n['single_image_main_not_later']:,} single-image questions (not difference) whose main "
                "study is not later than the reference kept: they ask about the main image alone"
            )
        if n.get("duplicates_kept"):
            lines.append(f"  note: {n['duplicates_kept']:,} exact duplicate rows kept (keep_duplicates)")
        if n.get("bad_chronology_kept"):
            lines.append(f"  note: {n['bad_chronology_kept']:,} rows with bad chronology kept (keep_bad_chronology)")
        if n.get("duplicate_study_rows"):
            lines.append(f"  note: {n['duplicate_study_rows']:,} repeated study_id rows in {STUDIES_FILE} ignored")
        if len(self.questions):
            table = pd.crosstab(self.questions.question_type, self.questions.split, margins=True, margins_name="all")
            order = [t for t in QUESTION_TYPES if t in table.index] + ["all"]
            table = table.reindex(order).reindex(columns=[c for c in (*SPLITS, "all") if c in table.columns])
            lines.append("  kept questions by type and split:")
            lines += ["    " + line for line in table.to_string().splitlines()]
        return "\n".join(lines)


def _final_steps(steps: dict[str, int], kept: pd.DataFrame) -> dict[str, int]:
    steps = dict(steps)
    steps["kept_questions"] = len(kept)
    steps["unique_pairs"] = int(len(kept[["study_id", "ref_id"]].drop_duplicates()))
    steps["unique_images"] = int(len(pd.unique(pd.concat([kept.main_dicom_id, kept.ref_dicom_id]))))
    return steps


def _read_studies(path: Path) -> tuple[pd.DataFrame, int]:
    """mimic_all.csv -> (table indexed by study_id: subject_id, dicom_id, study_date, relpath; repeats)."""
    raw = read_csv(path, STUDY_COLUMNS, STUDY_COLUMNS)
    studies = pd.DataFrame(
        {
            "study_id": to_int(raw.study_id),
            "subject_id": to_int(raw.subject_id),
            "dicom_id": raw.dicom_id.str.strip(),
            "study_date": to_int(raw.study_date),
        }
    )
    studies = studies[studies.study_id.notna()]
    # files/p{subject[:2]}/p{subject}/s{study}/{dicom}.jpg, built column-wise (one string per study, not per row)
    subject = studies.subject_id.astype(str)
    relpath = "files/p" + subject.str[:2] + "/p" + subject + "/s" + studies.study_id.astype(str) + "/"
    relpath = relpath + studies.dicom_id + ".jpg"
    ok = studies.subject_id.notna() & (studies.dicom_id != "")
    studies["relpath"] = relpath.where(ok, "")
    repeated = int(studies.study_id.duplicated().sum())
    studies = studies.drop_duplicates("study_id").set_index("study_id")
    return studies, repeated


def validate_choices(values, choices: tuple[str, ...], what: str) -> list[str] | None:
    if values is None:
        return None
    values = [values] if isinstance(values, str) else list(values)
    unknown = [v for v in values if v not in choices]
    if unknown:
        raise UserError(f"unknown {what} {unknown}; choose from {list(choices)}")
    return values


def read_release(
    release_dir: str | Path,
    images_dir: str | Path,
    splits: list[str] | None = None,
    question_types: list[str] | None = None,
    strict: bool = False,
    keep_bad_chronology: bool = False,
    check_images: bool = True,
    keep_duplicates: bool = False,
) -> Release:
    """Read mimic_pair_questions.csv + mimic_all.csv and resolve each question's two images.

    Args:
        release_dir: the directory with the two CSVs (and, for the phantom, ``ground_truth/``).
        images_dir: the MIMIC-CXR-JPG root (the directory that holds ``files/``).
        splits: keep these splits (``train``/``val``/``test``); None keeps all.
        question_types: keep these types; None keeps all seven.
        strict: raise UserError at the first skipped row instead of counting it.
        keep_bad_chronology: keep difference rows whose reference is not earlier than main (counted in ``notes``).
        check_images: stat every image file (``missing_image``); off, paths are assumed to exist as ``.jpg``.
        keep_duplicates: keep exact repeats of an earlier row (counted in ``notes``) instead of dropping them.

    Returns:
        A :class:`Release`.
    """
    release_dir, images_dir = Path(release_dir), Path(images_dir)
    splits = validate_choices(splits, SPLITS, "split(s)")
    question_types = validate_choices(question_types, QUESTION_TYPES, "question type(s)")
    questions_path = release_dir / QUESTIONS_FILE
    raw = read_csv(questions_path, QUESTION_COLUMNS, QUESTION_COLUMNS)
    studies, repeated = _read_studies(release_dir / STUDIES_FILE)

    q = pd.DataFrame(
        {
            "question_index": np.arange(len(raw), dtype=np.int64),
            "subject_id": to_int(raw.subject_id),
            "study_id": to_int(raw.study_id),
            "ref_id": to_int(raw.ref_id),
            "question_type": raw.question_type,
            "question": raw.question,
            "answer": raw.answer,
            "split": raw.split,
        }
    )
    steps = {"rows_read": len(q)}
    q["swapped"] = _reversed_difference_rows(q)
    q["duplicate"] = raw.duplicated(keep="first").to_numpy()
    if splits is not None:
        q = q[q.split.isin(splits)]
    steps["after_split_filter"] = len(q)
    if question_types is not None:
        q = q[q.question_type.isin(question_types)]
    steps["after_type_filter"] = len(q)

    # Look up both studies (an absent id -> NA / empty, caught by unknown_study first).
    main = studies.reindex(q.study_id)
    ref = studies.reindex(q.ref_id)
    known = main.subject_id.notna().to_numpy() & ref.subject_id.notna().to_numpy()
    subject = q.subject_id.to_numpy(dtype="float64", na_value=np.nan)
    main_date = main.study_date.to_numpy(dtype="float64", na_value=np.nan)
    ref_date = ref.study_date.to_numpy(dtype="float64", na_value=np.nan)

    checks: dict[str, np.ndarray] = {}
    duplicate = q.duplicate.to_numpy()
    checks["duplicate"] = np.zeros(len(q), bool) if keep_duplicates else duplicate
    checks["bad_row"] = (
        q[["subject_id", "study_id", "ref_id"]].isna().any(axis=1).to_numpy()
        | ~q.question_type.isin(QUESTION_TYPES).to_numpy()
        | ~q.split.isin(SPLITS).to_numpy()
    )
    checks["unknown_study"] = ~known
    main_subject = main.subject_id.to_numpy(dtype="float64", na_value=np.nan)
    ref_subject = ref.subject_id.to_numpy(dtype="float64", na_value=np.nan)
    checks["subject_mismatch"] = (main_subject != subject) | (ref_subject != subject)
    # NaN dates compare False, so a missing date fails the check too. Only difference questions compare the two
    # images; the others are about the main image alone (``docs/data.md``).
    is_difference = (q.question_type == "difference").to_numpy()
    not_later = ~(ref_date < main_date)
    bad_chronology = not_later & is_difference
    checks["bad_chronology"] = np.zeros(len(q), bool) if keep_bad_chronology else bad_chronology

    alive = ~np.logical_or.reduce([checks[name] for name in SKIP_REASONS[:5]])
    needed = pd.unique(pd.concat([main.relpath[alive], ref.relpath[alive]]))
    resolved = _resolve_images(images_dir, [r for r in needed if r], check_images)
    main_path = main.relpath.map(resolved).astype(object).fillna("").to_numpy(dtype=object)
    ref_path = ref.relpath.map(resolved).astype(object).fillna("").to_numpy(dtype=object)
    checks["missing_image"] = (main_path == "") | (ref_path == "")

    reason = np.full(len(q), "", dtype=object)
    for name in reversed(SKIP_REASONS[:-1]):  # the first failing check wins
        reason[checks[name]] = name
    if strict and (reason != "").any():
        i = int(np.flatnonzero(reason != "")[0])
        raise UserError(
            f"{questions_path}: row {int(q.question_index.iloc[i])} (0-based data row): {reason[i]} "
            f"({_explain(reason[i], q.iloc[i], main_date[i], ref_date[i], main.relpath.iloc[i], ref.relpath.iloc[i])})"
        )
    skipped = {name: int((reason == name).sum()) for name in SKIP_REASONS}

    keep = reason == ""
    out = pd.DataFrame(
        {
            "question_index": q.question_index.to_numpy()[keep],
            "subject_id": q.subject_id.to_numpy()[keep].astype(np.int64),
            "study_id": q.study_id.to_numpy()[keep].astype(np.int64),
            "ref_id": q.ref_id.to_numpy()[keep].astype(np.int64),
            "main_dicom_id": main.dicom_id.to_numpy(dtype=object)[keep],
            "ref_dicom_id": ref.dicom_id.to_numpy(dtype=object)[keep],
            "main_path": main_path[keep],
            "ref_path": ref_path[keep],
            "question_type": q.question_type.to_numpy()[keep],
            "question": q.question.to_numpy()[keep],
            "answer": q.answer.to_numpy()[keep],
            "split": q.split.to_numpy()[keep],
        },
        columns=list(COLUMNS),
    )
    swapped = q.swapped.to_numpy()
    notes = {
        "swapped_difference_rows": int(swapped.sum()),
        "swapped_difference_kept": int((swapped & keep).sum()),
        "bad_chronology_kept": int((bad_chronology & keep).sum()),
        "single_image_main_not_later": int((not_later & ~is_difference & keep).sum()),
        "duplicates_kept": int((duplicate & keep).sum()),
        "duplicate_study_rows": repeated,
    }
    return Release(
        questions=out,
        steps=_final_steps(steps, out),
        skipped=skipped,
        notes=notes,
        release_dir=release_dir,
        images_dir=images_dir,
        splits=splits,
        question_types=question_types,
        keep_bad_chronology=keep_bad_chronology,
        truth=read_ground_truth(release_dir),
        keep_duplicates=keep_duplicates,
    )


def _reversed_difference_rows(q: pd.DataFrame) -> np.ndarray:
    """(N,) bool: difference rows whose (ref_id, study_id) is the pair of some non-difference row (v1.0.1)."""
    is_difference = (q.question_type == "difference").to_numpy()
    others = q.loc[~is_difference, ["study_id", "ref_id"]].dropna().drop_duplicates()
    others = set(zip(others.study_id.tolist(), others.ref_id.tolist(), strict=True))
    flags = np.zeros(len(q), bool)
    rows = np.flatnonzero(is_difference)
    for i, study, ref in zip(rows, q.study_id.to_numpy()[rows], q.ref_id.to_numpy()[rows], strict=True):
        flags[i] = (ref, study) in others and (study, ref) not in others
    return flags


def _resolve_images(images_dir: Path, relpaths: list[str], check: bool) -> dict[str, str]:
    """Relative ``.jpg`` path -> absolute path of the file on disk (``.jpg``, else ``.dcm``); absent if none."""
    found = {}
    for rel in relpaths:
        stem = os.path.join(images_dir, rel[: -len(".jpg")])
        if not check:
            found[rel] = stem + ".jpg"
            continue
        for suffix in IMAGE_SUFFIXES:
            if os.path.isfile(stem + suffix):
                found[rel] = stem + suffix
                break
    return found


def _explain(reason: str, row: pd.Series, main_date: float, ref_date: float, main_rel, ref_rel) -> str:
    ids = f"study_id={row.study_id}, ref_id={row.ref_id}, subject_id={row.subject_id}"
    if reason == "duplicate":
        return f"{ids}: the same seven fields as an earlier row"
    if reason == "bad_row":
        return f"{ids}, question_type={row.question_type!r}, split={row.split!r}"
    if reason == "unknown_study":
        return f"{ids}: not both in {STUDIES_FILE}"
    if reason == "subject_mismatch":
        return f"{ids}: {STUDIES_FILE} gives a study to another subject"
    if reason == "bad_chronology":
        return f"{ids}: main study_date {main_date:.0f} is not later than reference study_date {ref_date:.0f}"
    return f"{ids}: images dir lacks {main_rel or 'main (no dicom_id)'} or {ref_rel or 'ref (no dicom_id)'}"
