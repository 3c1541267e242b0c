"""The release reader on a fixture written in the exact release format (DATA.md)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from diffvqa.data.release import QUESTION_COLUMNS, SKIP_REASONS, image_relpath, read_release

CHEXPERT = (
    "Atelectasis,Cardiomegaly,Consolidation,Edema,Enlarged Cardiomediastinum,Fracture,Lung Lesion,Lung Opacity,"
    "No Finding,Pleural Effusion,Pleural Other,Pneumonia,Pneumothorax,Support Devices"
).split(",")
STUDY_COLUMNS_21 = ["subject_id", "study_id", *CHEXPERT, "dicom_id", "view", "split", "study_date", "study_order"]
DIFF_Q = "what has changed compared to the reference image?"
DIFF_A = "the main image has an additional finding of pneumothorax than the reference image. "

# subject -> [(study_id, study_date)]; dates are shifted years as in MIMIC.
STUDIES = {
    10000032: [(50414267, 21800506), (53189527, 21800626), (53911762, 21800723)],
    10046166: [(50051329, 21950105), (51738740, 21950320)],  # difference row swapped, main earlier: bad
    11000011: [(52000001, 21300101), (52000002, 21300505)],  # v1.0.1 fix: difference row swapped, dates right
    12000012: [(53000001, 21400101), (53000002, 21400101)],  # same date: bad chronology
    13000013: [(54000001, 21500101), (54000002, 21500301)],  # main JPG missing
    14000014: [(55000001, 21600101), (55000002, 21600301)],  # main JPG corrupt
    15000015: [(56000001, 21700101), (56000002, 21700301)],  # portrait/landscape mix, val + test
}


def dicom_id(study_id: int) -> str:
    h = hashlib.sha1(str(study_id).encode()).hexdigest()
    return "-".join(h[i : i + 8] for i in range(0, 40, 8))


def _rows() -> list[tuple]:
    """The question rows in release column order (study_id, subject_id, ref_id, type, question, answer, split)."""
    return [
        # 0-2: a good pair
        (
            53189527,
            10000032,
            50414267,
            "abnormality",
            "what abnormalities are seen in this image?",
            "atelectasis",
            "train",
        ),
        (53189527, 10000032, 50414267, "location", "where is the atelectasis?", "left lung base", "train"),
        (53189527, 10000032, 50414267, "difference", DIFF_Q, DIFF_A, "train"),
        # 3-4: siblings right, difference row swapped with its main the earlier study -> bad_chronology
        (51738740, 10046166, 50051329, "view", "which view is this image taken?", "PA view", "train"),
        (50051329, 10046166, 51738740, "difference", DIFF_Q, "nothing has changed.", "train"),
        # 5-6: the v1.0.1 fix: siblings carry the ids the other way round (main earlier -> bad_chronology),
        #      the swapped difference row has main later -> kept
        (52000001, 11000011, 52000002, "presence", "is there pneumothorax?", "no", "val"),
        (52000002, 11000011, 52000001, "difference", DIFF_Q, DIFF_A, "val"),
        # 7: same date -> bad_chronology
        (53000002, 12000012, 53000001, "difference", DIFF_Q, "nothing has changed.", "train"),
        # 8: unknown reference study
        (53911762, 10000032, 59999999, "difference", DIFF_Q, DIFF_A, "train"),
        # 9: missing JPG
        (54000002, 13000013, 54000001, "difference", DIFF_Q, DIFF_A, "test"),
        # 10: corrupt JPG (exists: the reader keeps it; prepare counts it unreadable)
        (55000002, 14000014, 55000001, "level", "what level is the pleural effusion?", "small", "test"),
        # 11: subject mismatch
        (53911762, 15000015, 53189527, "difference", DIFF_Q, DIFF_A, "train"),
        # 12: bad row
        (53911762, 10000032, 53189527, "bogus", "what?", "none", "train"),
        # 13-15: a good pair in val and test rows, an answer that pandas would read as NA by default
        (56000002, 15000015, 56000001, "difference", DIFF_Q, "nothing has changed.", "test"),
        (56000002, 15000015, 56000001, "type", "what type is the opacity?", "none", "test"),
        (53911762, 10000032, 53189527, "difference", DIFF_Q, DIFF_A, "val"),
    ]


EXPECTED_SKIPS = {
    "bad_row": 1,
    "unknown_study": 1,
    "subject_mismatch": 1,
    "bad_chronology": 3,
    "missing_image": 1,
    "unreadable": 0,
}
EXPECTED_KEPT = [0, 1, 2, 3, 6, 10, 13, 14, 15]


def _image(seed: int, shape: tuple[int, int]) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]]
    a, b = rng.uniform(5, 15, 2)
    return (0.5 + 0.3 * np.sin(x / a) * np.cos(y / b)).astype(np.float32)


def write_release(root: Path, shape: tuple[int, int] = (48, 40)) -> tuple[Path, Path]:
    """Write the fixture: release CSVs (exact columns, in order) and a MIMIC-CXR-JPG tree. -> (release, images)."""
    release, images = root / "release", root / "images"
    release.mkdir(parents=True)
    pd.DataFrame(_rows(), columns=list(QUESTION_COLUMNS)).to_csv(release / "mimic_pair_questions.csv", index=False)
    rows = []
    for subject, studies in STUDIES.items():
        for order, (study, date) in enumerate(studies, start=1):
            labels = [""] * len(CHEXPERT)
            labels[0] = "1.0"
            view = "" if study == 53911762 else "postero-anterior"  # view may be empty
            rows.append([subject, study, *labels, dicom_id(study), view, "train", date, float(order)])
            if (subject, study) in ((13000013, 54000002),):
                continue
            path = images / image_relpath(subject, study, dicom_id(study))
            path.parent.mkdir(parents=True, exist_ok=True)
            if study == 55000002:
                path.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
                continue
            hw = shape[::-1] if subject == 15000015 and order == 2 else shape
            pixels = (_image(study, hw) * 255).round().astype(np.uint8)
            Image.fromarray(pixels).save(path, quality=95)
    pd.DataFrame(rows, columns=STUDY_COLUMNS_21).to_csv(release / "mimic_all.csv", index=False)
    return release, images


def test_reader_counts_every_skip_and_keeps_the_rest(tmp_path):
    release_dir, images_dir = write_release(tmp_path)
    release = read_release(release_dir, images_dir)
    q = release.questions
    assert q.question_index.tolist() == EXPECTED_KEPT
    assert release.skipped == EXPECTED_SKIPS
    assert list(release.skipped) == list(SKIP_REASONS)
    assert release.steps["rows_read"] == 16
    assert release.steps["kept_questions"] == len(EXPECTED_KEPT)
    assert release.steps["unique_pairs"] == 6
    assert list(release.counts)[:4] == ["rows_read", "after_split_filter", "after_type_filter", "skipped_bad_row"]
    assert release.counts["skipped_bad_chronology"] == 3 and list(release.counts)[-1] == "unique_images"
    assert release.notes["swapped_difference_rows"] == 2
    assert release.notes["swapped_difference_kept"] == 1
    # verbatim text and ids
    row = q.set_index("question_index").loc[2]
    assert row.answer == DIFF_A and row.answer.endswith(". ")
    assert q.set_index("question_index").loc[14].answer == "none"
    assert row.main_dicom_id == dicom_id(53189527) and row.ref_dicom_id == dicom_id(50414267)
    assert row.main_path == str(images_dir / image_relpath(10000032, 53189527, dicom_id(53189527)))
    assert q.study_id.dtype == np.int64 and q.ref_id.dtype == np.int64
    report = release.report()
    for reason in SKIP_REASONS:
        assert reason in report
    assert "kept questions" in report and "unique pairs" in report


def test_filters_and_keep_bad_chronology(tmp_path):
    release_dir, images_dir = write_release(tmp_path)
    release = read_release(release_dir, images_dir, splits=["train"], question_types=["difference"])
    assert release.steps["after_split_filter"] == 9
    assert release.steps["after_type_filter"] == 5
    assert release.questions.question_index.tolist() == [2]
    kept = read_release(release_dir, images_dir, keep_bad_chronology=True)
    assert kept.skipped["bad_chronology"] == 0
    assert kept.notes["bad_chronology_kept"] == 3
    assert {4, 5, 7} <= set(kept.questions.question_index)
    with pytest.raises(ValueError, match="question type"):
        read_release(release_dir, images_dir, question_types=["diff"])


def test_strict_raises_naming_the_row(tmp_path):
    release_dir, images_dir = write_release(tmp_path)
    with pytest.raises(ValueError, match=r"mimic_pair_questions.csv: row 4 .*bad_chronology"):
        read_release(release_dir, images_dir, strict=True)


def test_missing_column_names_file_and_columns(tmp_path):
    release_dir, images_dir = write_release(tmp_path)
    path = release_dir / "mimic_pair_questions.csv"
    pd.read_csv(path).drop(columns=["ref_id"]).to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"mimic_pair_questions.csv: missing column\(s\) \['ref_id'\]; found"):
        read_release(release_dir, images_dir)
