"""The phantom writes the real release format (docs/data.md) and ground truth that is exact.

The QA checks use regexes written from the template list of docs/data.md and vocabularies, not from the phantom's code.
"""

import csv
import gzip
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from diffvqa.data.phantom import contact_sheet, contact_sheet_main, simulate, simulate_main

# ---- docs/data.md, verbatim ----------------------------------------------------------------------------
NAMES = [
    "pleural effusion", "atelectasis", "cardiomegaly", "enlargement of the cardiac silhouette", "edema", "hernia",
    "vascular congestion", "hilar congestion", "pneumothorax", "heart failure", "lung opacity", "pneumonia",
    "tortuosity of the descending aorta", "scoliosis", "gastric distention", "hypoxemia", "hypertensive heart disease",
    "hematoma", "tortuosity of the thoracic aorta", "contusion", "emphysema", "granuloma", "calcification",
    "pleural thickening", "thymoma", "blunting of the costophrenic angle", "consolidation", "fracture",
    "pneumomediastinum", "air collection",
]  # fmt: skip
LOCATION_WORDS = [
    "mid to lower", "left", "right", "retrocardiac", "pericardial", "bibasilar", "bilateral", "basilar",
    "apicolateral", "basal", "lobe", "lung", "area", "base", "apical", "pleural", "upper", "lower", "middle", "mid",
    "rib",
]  # fmt: skip
LEVELS = [
    "minimal", "subtle", "mild", "mildly", "small", "minor", "moderate", "moderately", "mild to moderate",
    "moderate to large", "moderate to severe", "severe", "massive", "acute", "increasing", "decreasing", "minimally",
]  # fmt: skip
TYPES = [
    "interstitial", "layering", "dense", "parenchymal", "compressive", "obstructive", "linear", "plate-like",
    "patchy", "ground-glass", "calcified", "scattered", "focal", "multifocal",
]  # fmt: skip
CHEXPERT = [
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum", "Fracture", "Lung Lesion",
    "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia", "Pneumothorax", "Support Devices",
]  # fmt: skip
METADATA = [
    "dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows", "Columns",
    "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning", "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning",
]  # fmt: skip


def _alt(words):
    return "(?:" + "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True)) + ")"


NAME, LEVEL, TYPE, WORD = _alt(NAMES), _alt(LEVELS), _alt(TYPES), _alt(LOCATION_WORDS)
PHRASE = rf"(?:the )?{WORD}(?: {WORD})*"
LOCATION = rf"{PHRASE}(?: and {PHRASE})*"
LIST = rf"{NAME}(?:, {NAME})*, and {NAME}"  # two items read "A, and B"
DIFFERENCE = (
    rf"(?:the level of {NAME} has changed from {LEVEL} to {LEVEL}\. )*"
    rf"(?:the main image has an additional finding of {NAME} than the reference image\. "
    rf"|the main image has additional findings of {LIST} than the reference image\. )?"
    rf"(?:the main image is missing the finding of {NAME} than the reference image\. "
    rf"|the main image is missing the findings of {LIST} than the reference image\. )?"
)
YES_NO = "yes|no"
TEMPLATES = {  # question_type -> [(question regex, answer regex)]
    "abnormality": [
        (r"what abnormalities are seen in this image\?", rf"{NAME}(?:, {NAME})*"),
        (r"what abnormalities are seen in the [a-z ]+\?", rf"{NAME}(?:, {NAME})*"),
        (r"is there evidence of any abnormalities in this image\?", YES_NO),
    ],
    "presence": [
        (rf"is there evidence of {NAME} in this image\?", YES_NO),
        (rf"is there {NAME}\?", YES_NO),
        (rf"is there {NAME} in the {PHRASE}\?", YES_NO),
        (rf"is the {NAME} bilateral\?", YES_NO),
    ],
    "view": [
        (r"which view is this image taken\?", "PA view|AP view"),
        (r"is this PA view\?", YES_NO),
        (r"is this AP view\?", YES_NO),
    ],
    "location": [
        (rf"where in the image is the {NAME} located\?", LOCATION),
        (rf"where is the {NAME}\?", LOCATION),
        (rf"is the {NAME} located on the left side or right side\?", "left side|right side"),
    ],
    "level": [(rf"what level is the {NAME}\?", LEVEL)],
    "type": [(rf"what type is the {NAME}\?", TYPE)],
    "difference": [
        (r"what has changed compared to the reference image\?", rf"{DIFFERENCE}|nothing has changed\."),
        (rf"what has changed in the {PHRASE} area\?", rf"{DIFFERENCE}|nothing has changed\."),
    ],
}
FULL_DIFFERENCE = "what has changed compared to the reference image?"


def _header(path: Path) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", newline="") as f:
        return next(csv.reader(f))


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _mask(release: Path, relpath: str) -> np.ndarray:
    return np.asarray(Image.open(release / "ground_truth" / relpath))


# ---- fixtures -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def release(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantom")
    summary = simulate(out, pairs=30, seed=7, size=(128, 104), progress=False)
    return out, summary


@pytest.fixture(scope="module")
def tables(release):
    out, _ = release
    return {
        "questions": _read(out / "mimic_pair_questions.csv"),
        "studies": _read(out / "mimic_all.csv"),
        "findings": _read(out / "ground_truth" / "findings.csv"),
        "pairs": _read(out / "ground_truth" / "pairs.csv"),
        "keywords": _read(out / "ground_truth" / "questions.csv"),
    }


# ---- format ---------------------------------------------------------------------------------------------
def test_columns_are_the_release_columns_in_order(release):
    out, summary = release
    assert _header(out / "mimic_pair_questions.csv") == [
        "study_id", "subject_id", "ref_id", "question_type", "question", "answer", "split"
    ]  # fmt: skip
    assert _header(out / "mimic_all.csv") == [
        "subject_id", "study_id", *CHEXPERT, "dicom_id", "view", "split", "study_date", "study_order"
    ]  # fmt: skip
    assert _header(out / "mimic-cxr-2.0.0-metadata.csv.gz") == METADATA
    assert _header(out / "ground_truth" / "findings.csv") == [
        "subject_id", "study_id", "dicom_id", "name", "location", "level", "type", "mask_file"
    ]  # fmt: skip
    assert _header(out / "ground_truth" / "pairs.csv") == [
        "study_id", "ref_id", "m00", "m01", "m02", "m10", "m11", "m12", "change_mask_file", "keyword"
    ]  # fmt: skip
    assert _header(out / "ground_truth" / "questions.csv") == ["question_index", "keyword"]
    assert summary["pairs"] == 30


def test_every_qa_row_matches_a_data_md_template(tables):
    q = tables["questions"]
    assert set(q.question_type) == set(TEMPLATES)  # all seven types appear
    for row in q.itertuples():
        matches = [a for qr, a in TEMPLATES[row.question_type] if re.fullmatch(qr, row.question)]
        assert matches, f"question {row.question!r} ({row.question_type}) matches no template"
        assert any(re.fullmatch(a, row.answer) for a in matches), f"{row.question!r} -> answer {row.answer!r}"
        for text in (row.question, row.answer):  # lower-case but for "PA"/"AP"
            bare = re.sub(r"\b(?:PA|AP) view\b", "", text)
            assert bare == bare.lower(), text


def test_difference_answers_follow_the_sentence_grammar(tables):
    q = tables["questions"]
    diff = q[q.question_type == "difference"]
    assert len(diff) == len(tables["pairs"]) == 30  # one difference question per pair
    assert (diff.answer == "nothing has changed.").any() and (diff.answer != "nothing has changed.").any()
    for answer in diff.answer:
        if answer == "nothing has changed.":
            continue
        assert answer.endswith(". ")  # trailing space after every sentence, the last included
        sentences = answer.split(". ")[:-1]
        order = ["level" if s.startswith("the level") else "add" if "additional" in s else "remove" for s in sentences]
        assert order == sorted(order, key=["level", "add", "remove"].index)
        assert order.count("add") <= 1 and order.count("remove") <= 1
        named = re.findall(NAME, answer)
        assert len(named) == len(set(named)), answer  # a finding changes in one way only


def test_answers_use_only_the_official_vocabulary(tables):
    f = tables["findings"]
    assert set(f.name) <= set(NAMES)
    assert f.name.nunique() >= 8  # a varied phantom
    assert set(f.level) - {""} <= set(LEVELS)
    assert set(f.type) - {""} <= set(TYPES)
    for location in set(f.location) - {""}:
        assert re.fullmatch(LOCATION, location), location


def test_ids_dates_and_chronology(tables):
    q, s = tables["questions"], tables["studies"]
    assert s.subject_id.str.fullmatch(r"1\d{7}").all() and s.study_id.str.fullmatch(r"5\d{7}").all()
    assert s.dicom_id.str.fullmatch(r"[0-9a-f]{8}(?:-[0-9a-f]{8}){4}").all()
    assert s.study_id.is_unique and s.dicom_id.is_unique
    assert s.study_date.str.fullmatch(r"2[12]\d{6}").all()
    assert set(s.view) <= {"postero-anterior", "antero-posterior"}
    for _, visits in s.groupby("subject_id", sort=False):
        assert (visits.study_date.astype(int).diff().dropna() > 0).all()  # strictly increasing
        assert visits.study_order.tolist() == [f"{k}.0" for k in range(1, len(visits) + 1)]
    date = dict(zip(s.study_id, s.study_date.astype(int), strict=True))
    assert all(date[r] < date[m] for m, r in zip(q.study_id, q.ref_id, strict=True))  # main is the later study
    subject = dict(zip(s.study_id, s.subject_id, strict=True))
    assert all(subject[m] == subject[r] == sid for m, r, sid in zip(q.study_id, q.ref_id, q.subject_id, strict=True))


def test_splits_are_disjoint_by_subject(tables):
    q = tables["questions"]
    assert set(q.split) <= {"train", "val", "test"}
    assert (q.groupby("subject_id").split.nunique() == 1).all()
    assert set(q.split) == {"train", "val", "test"}  # 80/10/10 of ~15 subjects keeps all three


def test_images_follow_the_mimic_layout(release, tables):
    out, _ = release
    metadata = pd.read_csv(out / "mimic-cxr-2.0.0-metadata.csv.gz", dtype=str)
    assert set(metadata.dicom_id) == set(tables["studies"].dicom_id)
    for row in tables["studies"].itertuples():
        path = out / f"files/p{row.subject_id[:2]}/p{row.subject_id}/s{row.study_id}/{row.dicom_id}.jpg"
        with Image.open(path) as image:
            assert image.format == "JPEG" and image.mode == "L" and image.size == (104, 128)  # W x H


# ---- ground truth ---------------------------------------------------------------------------------------
def test_finding_masks_exist_in_each_jpg_frame(release, tables):
    out, _ = release
    for row in tables["findings"].itertuples():
        mask = _mask(out, row.mask_file)
        assert mask.shape == (128, 104) and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 255} and mask.any(), row.mask_file


def test_change_mask_is_nonempty_iff_something_changed(release, tables):
    out, _ = release
    q, pairs = tables["questions"], tables["pairs"]
    full = q[q.question == FULL_DIFFERENCE].set_index(["study_id", "ref_id"]).answer
    assert len(full) >= 20
    for row in pairs.itertuples():
        mask = _mask(out, row.change_mask_file)
        assert mask.shape == (128, 104) and set(np.unique(mask)) <= {0, 255}
        if (row.study_id, row.ref_id) not in full.index:
            continue
        answer = full[(row.study_id, row.ref_id)]
        changed = answer != "nothing has changed."
        assert mask.any() == changed, (row.study_id, answer)
        assert (row.keyword != "") == changed and (row.keyword in answer)


def test_keywords_cover_every_question(tables):
    q, kw = tables["questions"], tables["keywords"]
    assert kw.question_index.tolist() == [str(i) for i in range(len(q))]
    assert set(kw.keyword) - {""} <= set(NAMES)
    for row, keyword in zip(q.itertuples(), kw.keyword, strict=True):
        if row.question_type in ("presence", "location", "level", "type"):
            assert keyword and keyword in row.question
        elif row.question_type == "view":
            assert keyword == ""
        else:
            assert (keyword == "") == (row.answer in ("no", "nothing has changed.")), (row.question, row.answer)
            assert keyword in row.answer or row.answer == "yes"


def _matrix(row) -> np.ndarray:
    return np.array([[row.m00, row.m01, row.m02], [row.m10, row.m11, row.m12]], dtype=float)


def _centroid(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


def test_affine_maps_unchanged_findings_onto_themselves(release, tables):
    """An unchanged finding is the same anatomy on both visits: M carries its reference centroid onto its main
    centroid (affine maps preserve centroids), to sub-pixel accuracy."""
    out, _ = release
    f, s = tables["findings"], tables["studies"].set_index("study_id")
    errors = []
    for row in tables["pairs"].itertuples():
        M = _matrix(row)
        assert np.allclose(M[:, :2], np.eye(2), atol=0.15) and np.abs(M[:, 2]).max() < 20  # near identity
        main, ref = f[f.study_id == row.study_id].set_index("name"), f[f.study_id == row.ref_id].set_index("name")
        for name in main.index.intersection(ref.index):
            if main.loc[name, "level"] != ref.loc[name, "level"] or name in row.keyword:
                continue
            if "cardi" in name and s.loc[row.study_id, "view"] != s.loc[row.ref_id, "view"]:
                continue  # an AP film magnifies the heart
            a, b = _mask(out, ref.loc[name, "mask_file"]) > 0, _mask(out, main.loc[name, "mask_file"]) > 0
            if a.sum() < 40 or any(m[[0, -1]].any() or m[:, [0, -1]].any() for m in (a, b)):
                continue  # too small, or cut by the frame (the cut moves with the pose)
            moved = M @ np.append(_centroid(a), 1.0)
            errors.append(np.linalg.norm(moved - _centroid(b)))
    # Thresholding at each pose moves a region's centroid by a fraction of a pixel (more for thin, two-sided
    # regions such as bilateral apical caps); a wrong or inverted M is off by the pose change itself (pixels).
    assert len(errors) >= 5
    assert np.median(errors) < 0.35 and np.percentile(errors, 80) < 0.8, errors


def test_new_findings_pulled_through_m_inverse_land_in_the_change_mask(release, tables):
    out, _ = release
    f = tables["findings"]
    checked = 0
    for row in tables["pairs"].itertuples():
        Minv = np.linalg.inv(np.vstack([_matrix(row), [0, 0, 1]]))[:2]
        change = _mask(out, row.change_mask_file) > 0
        # a one-pixel tolerance: thin regions (a linear atelectasis, a pneumothorax rim) are thresholded per frame
        padded = np.pad(change, 1)
        change = np.logical_or.reduce(
            [padded[1 + dy : 129 + dy, 1 + dx : 105 + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
        )
        ref_names = set(f[f.study_id == row.ref_id].name)
        for added in f[(f.study_id == row.study_id) & ~f.name.isin(ref_names)].itertuples():
            ys, xs = np.nonzero(_mask(out, added.mask_file))
            x, y = Minv @ np.stack([xs, ys, np.ones_like(xs)])
            inside = (x > -0.5) & (x < 103.5) & (y > -0.5) & (y < 127.5)
            hit = change[np.clip(np.round(y), 0, 127).astype(int), np.clip(np.round(x), 0, 103).astype(int)]
            assert hit[inside].mean() > 0.9, (row.study_id, added.name)
            checked += 1
    assert checked >= 3


def _bilinear(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = x - x0, y - y0
    return (
        image[y0, x0] * (1 - fx) * (1 - fy)
        + image[y0, x0 + 1] * fx * (1 - fy)
        + image[y0 + 1, x0] * (1 - fx) * fy
        + image[y0 + 1, x0 + 1] * fx * fy
    )


def test_affine_registers_the_images_themselves(release, tables):
    """Independent of the masks: the reference JPG pulled through M^-1 matches the main JPG far better than the
    unregistered reference does (away from what changed)."""
    out, _ = release
    s = tables["studies"].set_index("study_id")

    def jpg(study):
        r = s.loc[study]
        return np.asarray(
            Image.open(out / f"files/p{r.subject_id[:2]}/p{r.subject_id}/s{study}/{r.dicom_id}.jpg"), dtype=float
        )

    pairs = tables["pairs"].copy()
    pairs["motion"] = [np.abs(_matrix(r) - np.eye(2, 3)).sum() for r in pairs.itertuples()]
    row = next(pairs.sort_values("motion", ascending=False).itertuples())  # the largest pose change
    main, ref = jpg(row.study_id), jpg(row.ref_id)
    ys, xs = np.mgrid[0:128, 0:104]
    Minv = np.linalg.inv(np.vstack([_matrix(row), [0, 0, 1]]))[:2]
    x, y = Minv @ np.stack([xs.ravel(), ys.ravel(), np.ones(xs.size)])
    changed = _mask(out, row.change_mask_file) > 0
    ok = (x >= 1) & (x <= 101) & (y >= 1) & (y <= 125)
    ok[ok] &= ~changed[np.round(y[ok]).astype(int), np.round(x[ok]).astype(int)]
    registered = _bilinear(ref, x[ok], y[ok])
    ncc_registered = np.corrcoef(registered, main.ravel()[ok])[0, 1]
    ncc_identity = np.corrcoef(ref.ravel()[ok], main.ravel()[ok])[0, 1]
    assert ncc_registered > 0.97 and ncc_registered > ncc_identity + 0.01, (ncc_registered, ncc_identity)


# ---- change regions per finding and side (ground_truth/changes.csv) -----------------------------------------
@pytest.fixture(scope="module")
def many(tmp_path_factory):
    """A release with enough one-lung difference questions (about 1 in 10) to compare every one of them."""
    out = tmp_path_factory.mktemp("phantom_many")
    simulate(out, pairs=200, seed=1, size=(64, 48), progress=False, workers=1)
    return out, _read(out / "mimic_pair_questions.csv"), _read(out / "ground_truth" / "changes.csv")


def test_change_rows_name_exactly_what_each_difference_answer_names(many):
    _, q, changes = many
    assert _header(many[0] / "ground_truth" / "changes.csv") == ["study_id", "ref_id", "name", "side", "mask_file"]
    assert set(changes.side) == {"left", "right", ""} and set(changes.name) <= set(NAMES)
    rows = changes.groupby(["study_id", "ref_id"])
    asked = {"left": 0, "right": 0, "whole": 0, "one lung, changed": 0}
    for row in q[q.question_type == "difference"].itertuples():
        named = set(re.findall(NAME, row.answer))
        pair = rows.get_group((row.study_id, row.ref_id)) if (row.study_id, row.ref_id) in rows.groups else None
        side = re.fullmatch(r"what has changed in the (left|right) lung area\?", row.question)
        if side:  # one lung: the rows of that side, and only those
            truth = set() if pair is None else set(pair.name[pair.side == side[1]])
            asked[side[1]] += 1
            asked["one lung, changed"] += bool(named)
        else:
            assert row.question == FULL_DIFFERENCE
            truth = set() if pair is None else set(pair.name)
            asked["whole"] += 1
        assert named == truth, (row.question, row.answer, None if pair is None else pair[["name", "side"]])
    assert min(asked.values()) >= 3, asked  # the comparison covered both sides and real changes


def test_change_rows_lie_on_their_side_and_add_up_to_the_change_mask(many):
    out, _, changes = many
    pairs = _read(out / "ground_truth" / "pairs.csv")
    width = 48
    columns = np.arange(width)
    for pair in pairs.itertuples():
        union = _mask(out, pair.change_mask_file) > 0
        rows = changes[(changes.study_id == pair.study_id) & (changes.ref_id == pair.ref_id)]
        assert rows.empty == (not union.any()), pair.study_id
        total = np.zeros_like(union)
        for row in rows.itertuples():
            assert row.mask_file.startswith("changes/"), row.mask_file
            mask = _mask(out, row.mask_file)
            assert mask.shape == union.shape and set(np.unique(mask)) <= {0, 255}, row.mask_file
            region = mask > 0
            total |= region
            if row.side and region.any():
                # The patient's left lies on the image's right. The midline sits within a few pixels of the
                # image centre (pose within 2.5 deg / 2.5 %); the lungs start further out than that.
                x = np.broadcast_to(columns, region.shape)[region]
                centre, margin = (width - 1) / 2, 0.1 * width
                if row.side == "left":
                    assert x.min() > centre - margin and x.mean() > centre, (row.mask_file, x.min(), x.mean())
                else:
                    assert x.max() < centre + margin and x.mean() < centre, (row.mask_file, x.max(), x.mean())
        # Each row is thresholded on its own: the union may differ from the change mask on its rim only.
        differ = int((total ^ union).sum())
        assert differ <= max(2, 0.05 * union.sum()), (pair.change_mask_file, differ, int(union.sum()))


def test_bilateral_findings_split_into_a_left_and_a_right_row(many):
    out, _, changes = many
    named = changes[changes.side != ""].groupby(["study_id", "ref_id", "name"]).side.apply(sorted)
    both = named[named.apply(lambda s: s == ["left", "right"])]
    assert len(both) >= 5  # edema is always bilateral; effusions and opacities sometimes
    assert (changes[changes.name.isin(["cardiomegaly", "hernia", "emphysema", "scoliosis"])].side == "").all()
    for study_id, ref_id, name in both.index[:10]:
        rows = changes[(changes.study_id == study_id) & (changes.ref_id == ref_id) & (changes.name == name)]
        left, right = (_mask(out, rows.mask_file[rows.side == s].iloc[0]) > 0 for s in ("left", "right"))
        assert not (left & right).any()  # cut at the midline: no pixel in both halves


# ---- determinism, CLI, contact sheet --------------------------------------------------------------------
FILES = ("mimic_pair_questions.csv", "mimic_all.csv", "mimic-cxr-2.0.0-metadata.csv.gz",
         "ground_truth/findings.csv", "ground_truth/pairs.csv", "ground_truth/changes.csv",
         "ground_truth/questions.csv")  # fmt: skip


def test_same_seed_same_bytes_and_workers_do_not_matter(tmp_path):
    a = simulate(tmp_path / "a", pairs=8, seed=11, size=(64, 48), progress=False, workers=1)
    simulate(tmp_path / "b", pairs=8, seed=11, size=(64, 48), progress=False, workers=2)
    simulate(tmp_path / "c", pairs=8, seed=12, size=(64, 48), progress=False)
    for name in FILES:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert (tmp_path / "a" / FILES[0]).read_bytes() != (tmp_path / "c" / FILES[0]).read_bytes()
    jpgs = sorted((tmp_path / "a").rglob("*.jpg"))
    assert len(jpgs) == a["studies"]
    pngs = sorted((tmp_path / "a" / "ground_truth").rglob("*.png"))
    assert len(pngs) == a["findings"] + a["pairs"] + a["change_regions"]
    for path in jpgs + pngs:
        assert path.read_bytes() == (tmp_path / "b" / path.relative_to(tmp_path / "a")).read_bytes()


def test_bad_arguments_are_named(tmp_path, capsys):
    with pytest.raises(ValueError, match="pairs=0"):
        simulate(tmp_path / "x", pairs=0)
    with pytest.raises(ValueError, match=r"size=\(10, 80\)"):
        simulate(tmp_path / "x", pairs=1, size=(10, 80))
    simulate(tmp_path / "y", pairs=1, size=(48, 40), progress=False)
    with pytest.raises(ValueError, match="already holds a release"):
        simulate(tmp_path / "y", pairs=1, size=(48, 40), progress=False)
    simulate(tmp_path / "y", pairs=2, size=(48, 40), progress=False, overwrite=True)
    for argv, shown in (
        (["--out", "z", "--pairs", "0"], "invalid value 0"),
        (["--out", "z", "--pairs", "2", "--size", "12", "9"], "invalid size 12"),
    ):
        with pytest.raises(SystemExit) as exit_:
            simulate_main(argv)
        assert exit_.value.code == 2 and shown in capsys.readouterr().err


def test_cli_and_contact_sheet(tmp_path, release, capsys):
    assert simulate_main(["--out", str(tmp_path / "r"), "--pairs", "3", "--size", "64", "56", "--quiet"]) == 0
    assert "pairs" in capsys.readouterr().out
    out, _ = release
    sheet = tmp_path / "sheet.png"
    assert contact_sheet_main(["--release", str(out), "--out", str(sheet), "--pairs", "4"]) == 0
    with Image.open(sheet) as image:
        assert image.mode == "RGB" and image.width > 2 * 3 * 104 and image.height > 2 * 128
    with pytest.raises(FileNotFoundError):
        contact_sheet(tmp_path / "nowhere", tmp_path / "x.png")
