"""The release reader on a fixture written in the exact release format (docs/data.md)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from diffvqa.data.release import QUESTION_COLUMNS, SKIP_REASONS, image_relpath, read_release
from diffvqa.errors import UserError

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
        # 5-6: the v1.0.1 fix: siblings carry the ids the other way round (main earlier: a single-image question
        #      about study_id, kept), the swapped difference row has main later -> kept
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
    "duplicate": 0,
    "bad_row": 1,
    "unknown_study": 1,
    "subject_mismatch": 1,
    "bad_chronology": 2,
    "missing_image": 1,
    "unreadable": 0,
}
EXPECTED_KEPT = [0, 1, 2, 3, 5, 6, 10, 13, 14, 15]


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
    assert release.steps["unique_pairs"] == 7
    assert list(release.counts)[:4] == ["rows_read", "after_split_filter", "after_type_filter", "skipped_duplicate"]
    assert release.counts["skipped_bad_chronology"] == 2 and list(release.counts)[-1] == "unique_images"
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
    assert kept.notes["bad_chronology_kept"] == 2
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


# ----------------------------------------------------------------------------------------------------------
# the v1.0.1 swap on verbatim rows, duplicates, and CSVs that cannot be read

VERBATIM_HEADER = "study_id,subject_id,ref_id,question_type,question,answer,split\n"
VERBATIM_ANSWER = (
    '"the main image has an additional finding of pneumothorax than the reference image. the main image is missing '
    'the findings of fracture, lung opacity, and pleural effusion than the reference image. "'
)


def write_verbatim_pair(root: Path, question_rows: str) -> tuple[Path, Path]:
    """The verbatim v1.0.1 rows of docs/data.md of subject 18936629, with study 55088298 dated *before* 54989200 (so the
    single-image rows' main is the earlier study, as after the v1.0.1 swap). -> (release, images)."""
    release, images = root / "release", root / "images"
    release.mkdir(parents=True)
    (release / "mimic_pair_questions.csv").write_text(VERBATIM_HEADER + question_rows, encoding="utf-8")
    rows = []
    for order, (study, date) in enumerate(((55088298, 21800101), (54989200, 21800301)), start=1):
        rows.append([18936629, study, *([""] * len(CHEXPERT)), dicom_id(study), "postero-anterior", "train", date,
                     float(order)])  # fmt: skip
        path = images / image_relpath(18936629, study, dicom_id(study))
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((_image(study, (40, 32)) * 255).round().astype(np.uint8)).save(path)
    pd.DataFrame(rows, columns=STUDY_COLUMNS_21).to_csv(release / "mimic_all.csv", index=False)
    return release, images


def test_single_image_questions_whose_main_is_earlier_are_kept(tmp_path):
    rows = (
        "55088298,18936629,54989200,abnormality,what abnormalities are seen in the soft tissues?,atelectasis,train\n"
        "55088298,18936629,54989200,location,is the atelectasis located on the left side or right side?,left side,"
        "train\n"
        f"55088298,18936629,54989200,difference,what has changed compared to the reference image?,{VERBATIM_ANSWER},"
        "train\n"
        f"54989200,18936629,55088298,difference,what has changed compared to the reference image?,{VERBATIM_ANSWER},"
        "train\n"
    )
    release = read_release(*write_verbatim_pair(tmp_path, rows))
    # rows 0-1: single-image questions about study 55088298, kept although it is the earlier study;
    # row 2: a difference row whose reference is later: dropped; row 3: the v1.0.1-swapped difference row: kept
    assert release.questions.question_index.tolist() == [0, 1, 3]
    assert release.skipped["bad_chronology"] == 1
    assert release.notes["single_image_main_not_later"] == 2
    assert release.notes["swapped_difference_rows"] == 1 and release.notes["swapped_difference_kept"] == 1
    assert release.questions.answer.iloc[2].endswith("than the reference image. ")
    assert "2 single-image questions" in release.report()
    kept = read_release(*[tmp_path / "release", tmp_path / "images"], keep_bad_chronology=True)
    assert kept.notes["bad_chronology_kept"] == 1  # only the difference row counts as bad chronology


def test_exact_duplicate_rows_are_counted_and_dropped(tmp_path):
    row = "55088298,18936629,54989200,abnormality,what abnormalities are seen in the soft tissues?,atelectasis,train\n"
    other = row.replace(",train", ",val")  # differs in one field: not a duplicate
    release_dir, images_dir = write_verbatim_pair(tmp_path, row + row + other + row)
    release = read_release(release_dir, images_dir)
    assert release.questions.question_index.tolist() == [0, 2]
    assert release.skipped["duplicate"] == 2 and "duplicate" in release.report()
    kept = read_release(release_dir, images_dir, keep_duplicates=True)
    assert kept.questions.question_index.tolist() == [0, 1, 2, 3] and kept.notes["duplicates_kept"] == 2
    with pytest.raises(ValueError, match=r"row 1 .*duplicate"):
        read_release(release_dir, images_dir, strict=True)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", r"mimic_pair_questions.csv: empty file; expected a CSV whose header holds study_id"),
        (b" \n\n", r"mimic_pair_questions.csv: empty file"),
        (
            VERBATIM_HEADER.encode() + b"55088298,18936629,54989200,view,which view?,PA view\xe9,train\n",
            rf"mimic_pair_questions.csv: not UTF-8 text: byte {len(VERBATIM_HEADER) + 51} \(line 2\) is b'\\xe9'",
        ),
        (
            VERBATIM_HEADER.encode() + b'55088298,18936629,54989200,view,"which view?,PA view,train\n',
            r"mimic_pair_questions.csv: line 2 has \d+ fields but the header has 7",
        ),
        (
            VERBATIM_HEADER.encode() + b"55088298,18936629,54989200,view,which view?,PA,view,train,x\n",
            r"mimic_pair_questions.csv: line 2 has \d+ fields but the header has 7",
        ),
        (
            VERBATIM_HEADER.encode() + b"55088298,18936629,54989200,view,which view?\n",
            r"mimic_pair_questions.csv: line 2 has 5 fields but the header has 7",
        ),
    ],
    ids=["empty", "blank", "latin-1", "open-quote", "extra-fields", "short-row"],
)
def test_unreadable_questions_csv_names_the_file_and_place(tmp_path, content, message):
    release_dir, images_dir = write_verbatim_pair(tmp_path, "")
    (release_dir / "mimic_pair_questions.csv").write_bytes(content)
    with pytest.raises(UserError, match=message):
        read_release(release_dir, images_dir)
