"""Finding labels: the CheXpert / NegBio / all_diseases.json readers, training targets, the phantom's label files
(checked against its ground truth) and prepare carrying them into the cache."""

import csv
import gzip
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from diffvqa.data.labels import (
    CHEXPERT_FILE,
    FINDING_OBSERVATIONS,
    FINDINGS_FILE,
    NEGBIO_FILE,
    NO_FINDING,
    OBSERVATIONS,
    find_label_files,
    keyword_label,
    read_label_file,
    targets,
)
from diffvqa.data.vocabulary import FINDINGS
from diffvqa.errors import UserError

LABEL_FILES = (CHEXPERT_FILE, NEGBIO_FILE, FINDINGS_FILE)
HEADER = ["subject_id", "study_id", *OBSERVATIONS]
ALLOWED = {"1.0", "0.0", "-1.0", ""}


def write_csv(path: Path, header: list[str], rows: list[list], gz: bool = True) -> Path:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    data = text.getvalue().encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def observation_rows(path: Path) -> dict[int, dict[str, str]]:
    """study_id -> column -> raw value, read with nothing but csv (the oracle for the reader and the cache)."""
    with gzip.open(path, "rt", newline="") as f:
        return {int(row["study_id"]): row for row in csv.DictReader(f)}


def as_float(value: str) -> float:
    return float(value) if value else np.nan


# ----------------------------------------------------------------------------------------------------------
# CheXpert / NegBio reader


@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "plain"])
def test_observation_columns_read_by_name(tmp_path, gz):
    header = ["Edema", "study_id", "Extra", *reversed(OBSERVATIONS[4:]), "subject_id", *OBSERVATIONS[:3]]
    values = {
        101: {"Edema": "1.0", "Atelectasis": "-1.0", "Cardiomegaly": "0.0", "Support Devices": "1.0"},
        102: {"No Finding": "1.0"},
    }
    rows = [[values[s].get(c, {"study_id": s, "subject_id": 10000001, "Extra": "x"}.get(c, "")) for c in header]
            for s in values]  # fmt: skip
    path = write_csv(tmp_path / ("labels.csv.gz" if gz else "labels.csv"), header, rows, gz=gz)
    table = read_label_file("chexpert", path)
    assert table.problem == "" and not table.skipped
    assert table.study_ids.tolist() == [101, 102]
    assert table.values.shape == (2, 14) and table.values.dtype == np.float32
    for i, study in enumerate(values):
        expected = [as_float(values[study].get(name, "")) for name in OBSERVATIONS]
        np.testing.assert_array_equal(table.values[i], expected)


def test_repeated_column_first_read_and_counted(tmp_path):
    header = [*HEADER, "Edema", " Edema "]
    path = write_csv(tmp_path / CHEXPERT_FILE, header, [[1, 7, *(["1.0"] * 14), "0.0", "-1.0"]])
    table = read_label_file("chexpert", path)
    assert table.problem == "" and dict(table.skipped) == {"column Edema repeated (its first read)": 2}
    assert table.values.tolist() == [[1.0] * 14]


def test_gzip_recognised_by_content_not_name(tmp_path):
    rows = [[1, 7, *(["1.0"] * 14)]]
    gunzipped = write_csv(tmp_path / CHEXPERT_FILE, HEADER, rows, gz=False)  # plain text under the .gz name
    zipped = write_csv(tmp_path / "negbio.csv", HEADER, rows, gz=True)  # gzip under a plain name
    for path in (gunzipped, zipped):
        table = read_label_file("negbio", path)
        assert table.problem == "" and table.values.tolist() == [[1.0] * 14]


def test_a_gunzipped_copy_is_found_and_gz_wins(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir(), second.mkdir()
    write_csv(second / CHEXPERT_FILE.removesuffix(".gz"), HEADER, [], gz=False)
    (second / FINDINGS_FILE).write_text("[]")
    (first / FINDINGS_FILE).write_text("[]")
    found = find_label_files(None, first, second)
    assert found == {"chexpert": second / "mimic-cxr-2.0.0-chexpert.csv", "findings": first / FINDINGS_FILE}
    write_csv(second / CHEXPERT_FILE, HEADER, [])
    assert find_label_files(first, second)["chexpert"] == second / CHEXPERT_FILE


def test_value_out_of_range_counted_by_column_and_read_as_blank(tmp_path):
    def row(study, **values):
        return [1, study, *(values.get(name.replace(" ", "_"), "") for name in OBSERVATIONS)]

    rows = [
        row(1, Edema="2.0", Atelectasis="1.0"),
        row(2, Edema="yes", Pleural_Effusion="-1.0", Cardiomegaly="maybe"),
        row(3, Edema="1", Atelectasis="-1", Cardiomegaly="0.00", No_Finding=" 0.0 "),  # the same numbers
    ]
    table = read_label_file("chexpert", write_csv(tmp_path / CHEXPERT_FILE, HEADER, rows))
    assert table.problem == ""
    assert dict(table.skipped) == {"value out of range in Edema": 2, "value out of range in Cardiomegaly": 1}
    col = {name: j for j, name in enumerate(OBSERVATIONS)}
    assert table.study_ids.tolist() == [1, 2, 3]
    assert np.isnan(table.values[0, col["Edema"]]) and table.values[0, col["Atelectasis"]] == 1.0
    assert np.isnan(table.values[1, col["Edema"]]) and np.isnan(table.values[1, col["Cardiomegaly"]])
    assert table.values[1, col["Pleural Effusion"]] == -1.0
    third = {name: table.values[2, j] for name, j in col.items() if not np.isnan(table.values[2, j])}
    assert third == {"Edema": 1.0, "Atelectasis": -1.0, "Cardiomegaly": 0.0, "No Finding": 0.0}


def test_bad_study_ids_duplicates_and_ragged_rows_counted(tmp_path):
    ones, zeros = ["1.0"] * 14, ["0.0"] * 14
    rows = [[1, "abc", *ones], [1, "5.5", *ones], [1, "", *ones], [1, 8, *ones], [1, 9, *zeros], [1, 8, *zeros],
            [1, 10, *ones, "extra"], [1, 11, "1.0"]]  # fmt: skip
    table = read_label_file("negbio", write_csv(tmp_path / NEGBIO_FILE, HEADER, rows))
    assert table.problem == ""
    assert dict(table.skipped) == {
        "study_id not an integer": 3,
        "duplicate study (first row kept)": 1,
        "row with a wrong number of fields (the header has 16)": 2,
    }
    assert table.study_ids.tolist() == [8, 9]
    assert table.values.tolist() == [[1.0] * 14, [0.0] * 14]  # study 8: its first row


def _missing_column(path):
    write_csv(path, [c for c in HEADER if c != "Edema"], [[1, 2, *(["1.0"] * 13)]])


def _corrupt_gzip(path):
    path.write_bytes(b"\x1f\x8b\x08\x00" + bytes(range(60)))


def _truncated_gzip(path):
    path.write_bytes(gzip.compress(("\n".join([",".join(HEADER)] * 50)).encode())[:40])


def _not_utf8(path):
    path.write_bytes(gzip.compress(",".join(HEADER).encode() + b"\n1,2,\xff\xfe" + b",0.0" * 13 + b"\n"))


def _empty(path):
    path.write_bytes(b"")


@pytest.mark.parametrize(
    "spoil, says",
    [
        (_missing_column, "missing column(s) ['Edema']"),
        (_corrupt_gzip, "a damaged gzip file"),
        (_truncated_gzip, "a damaged gzip file"),
        (_not_utf8, "utf-8"),
        (_empty, "empty"),
    ],
    ids=["missing-column", "corrupt-gzip", "truncated-gzip", "not-utf8", "empty"],
)
def test_unusable_observation_file_is_a_problem_not_a_crash(tmp_path, spoil, says):
    path = tmp_path / CHEXPERT_FILE
    spoil(path)
    table = read_label_file("chexpert", path)
    assert table.problem and "\n" not in table.problem and says in table.problem
    assert table.values.shape == (0, 14) and len(table.study_ids) == 0
    assert table.summary()["problem"] == table.problem


def test_unknown_label_set_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="expected one of chexpert, negbio, findings"):
        read_label_file("chexbert", tmp_path / "x.csv")


# ----------------------------------------------------------------------------------------------------------
# all_diseases.json reader


def _findings_row(table, study):
    row = table.values[table.row_of()[study]]
    return {FINDINGS[j] for j in np.flatnonzero(row == 1)}, set(np.unique(row).tolist())


def test_findings_json_list_of_records(tmp_path):
    records = [
        {"study_id": "50000001", "subject_id": "10000001", "no_entity": ["edema"],
         "entity": {"pleural effusion": {"entity_name": "pleural effusion", "level": ["small"]},
                    "Vascular Congestion ": {}}},
        {"study_id": 50000002, "entity": ["atelectasis", "not a finding", "cardiomegaly"]},
        {"study_id": "s50000003", "entity": {}},
        {"subject_id": "10000001", "entity": {"edema": {}}},
        {"study_id": "50000004"},
        {"study_id": "50000005", "entity": "edema"},
        {"study_id": "50000001", "entity": {"edema": {}}},
        "not a record",
    ]  # fmt: skip
    path = tmp_path / FINDINGS_FILE
    path.write_text(json.dumps(records))
    table = read_label_file("findings", path)
    assert table.problem == "" and table.names == FINDINGS
    assert dict(table.skipped) == {
        "finding not in the vocabulary (1 name: 'not a finding' x1)": 1,
        "record without study_id": 2,
        "record without entity": 1,
        "entity neither a mapping nor a list": 1,
        "duplicate study (first row kept)": 1,
    }
    assert table.study_ids.tolist() == [50000001, 50000002, 50000003]
    assert _findings_row(table, 50000001) == ({"pleural effusion", "vascular congestion"}, {0.0, 1.0})
    assert _findings_row(table, 50000002) == ({"atelectasis", "cardiomegaly"}, {0.0, 1.0})
    assert _findings_row(table, 50000003) == (set(), {0.0})  # nothing found: every finding negative


def test_findings_json_unknown_names_are_one_skip_line(tmp_path):
    # a real release names hundreds of findings outside the vocabulary: one line, most frequent first, not one each
    records = [{"study_id": 1, "entity": ["edema", *(f"other {k}" for k in range(8)), "other 7", "other 7", "other 3"]},
               {"study_id": 2, "entity": ["other 7", "cardiomegaly"]}]  # fmt: skip
    path = tmp_path / FINDINGS_FILE
    path.write_text(json.dumps(records))
    table = read_label_file("findings", path)
    assert dict(table.skipped) == {
        "finding not in the vocabulary (8 names: 'other 7' x4, 'other 3' x2, 'other 0' x1, 'other 1' x1, "
        "'other 2' x1 and 3 more)": 12
    }
    assert _findings_row(table, 1) == ({"edema"}, {0.0, 1.0})


def test_findings_json_keyed_by_study(tmp_path):
    keyed = {
        "50000001": {"subject_id": "1", "entity": {"edema": {"level": ["mild"]}}},  # a record
        "50000002": {"pneumothorax": {"level": ["small"]}, "fracture": {}},  # the entity itself
        "50000003": ["hernia", "emphysema"],  # a list of names
        "x50000004": [],
    }
    path = tmp_path / FINDINGS_FILE
    path.write_text(json.dumps(keyed))
    table = read_label_file("findings", path)
    assert dict(table.skipped) == {"study_id not an integer": 1}
    assert _findings_row(table, 50000001)[0] == {"edema"}
    assert _findings_row(table, 50000002)[0] == {"pneumothorax", "fracture"}
    assert _findings_row(table, 50000003)[0] == {"hernia", "emphysema"}


@pytest.mark.parametrize("text", ["[{", '"a string"', "\udcff"], ids=["truncated", "not-a-list", "not-utf8"])
def test_unusable_findings_json_is_a_problem(tmp_path, text):
    path = tmp_path / FINDINGS_FILE
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    table = read_label_file("findings", path)
    assert table.problem and table.values.shape == (0, 30)


# ----------------------------------------------------------------------------------------------------------
# targets and keywords

N = np.nan


def _observations(**values) -> list[float]:
    return [values.get(name.replace(" ", "_"), N) for name in OBSERVATIONS]


def test_targets_uncertain_policies_and_no_finding():
    values = np.array(
        [
            _observations(Edema=1.0, Atelectasis=-1.0, Cardiomegaly=0.0),
            _observations(No_Finding=1.0, Pneumonia=-1.0),  # No Finding = 1: blanks are negatives
            _observations(No_Finding=0.0),  # No Finding = 0 says nothing of the others
        ],
        np.float32,
    )
    col = {name: j for j, name in enumerate(OBSERVATIONS)}
    a, e, c, p, nf = (col[n] for n in ("Atelectasis", "Edema", "Cardiomegaly", "Pneumonia", NO_FINDING))
    for policy, uncertain_target, uncertain_mask in [("ignore", 0.0, 0.0), ("ones", 1.0, 1.0), ("zeros", 0.0, 1.0)]:
        target, mask = targets(values, OBSERVATIONS, policy)
        assert target.dtype == mask.dtype == np.float32 and target.shape == mask.shape == values.shape
        assert (target[0, e], mask[0, e]) == (1.0, 1.0)
        assert (target[0, c], mask[0, c]) == (0.0, 1.0)
        assert (target[0, a], mask[0, a]) == (uncertain_target, uncertain_mask)
        assert (target[1, p], mask[1, p]) == (uncertain_target, uncertain_mask)  # -1 follows the policy
        blanks_0 = np.isnan(values[0])
        assert (mask[0, blanks_0] == 0).all()
        others = [j for j in range(14) if j not in (nf, p)]
        assert (target[1, others] == 0).all() and (mask[1, others] == 1).all()
        assert (target[1, nf], mask[1, nf]) == (1.0, 1.0)
        assert mask[2].tolist() == [1.0 if j == nf else 0.0 for j in range(14)]
    with pytest.raises(UserError, match="expected one of ignore, ones, zeros"):
        targets(values, OBSERVATIONS, "u-ones")


def test_targets_findings_set_keeps_blanks_masked():
    values = np.zeros((2, 30), np.float32)
    values[0, FINDINGS.index("edema")] = 1.0
    values[1] = np.nan  # an image whose study the file lacks
    target, mask = targets(values, FINDINGS)
    assert mask[0].tolist() == [1.0] * 30 and target[0].tolist() == [float(n == "edema") for n in FINDINGS]
    assert mask[1].tolist() == [0.0] * 30


def test_keyword_label():
    assert keyword_label("hilar congestion", "findings") == "hilar congestion"
    assert keyword_label("not a finding", "findings") is None
    for label_set in ("chexpert", "negbio"):
        assert keyword_label("vascular congestion", label_set) == "Edema"
        assert keyword_label("atelectasis", label_set) == "Atelectasis"
        assert keyword_label("enlargement of the cardiac silhouette", label_set) == "Enlarged Cardiomediastinum"
        assert keyword_label("blunting of the costophrenic angle", label_set) == "Pleural Effusion"
        assert keyword_label("scoliosis", label_set) is None
        assert keyword_label("not a finding", label_set) is None


def test_finding_table_covers_the_vocabulary():
    assert set(FINDING_OBSERVATIONS) == set(FINDINGS) and len(FINDINGS) == 30
    used = {o for observations in FINDING_OBSERVATIONS.values() for o in observations}
    assert used <= set(OBSERVATIONS) - {NO_FINDING, "Support Devices"}
    assert sum(1 for observations in FINDING_OBSERVATIONS.values() if not observations) == 14


# ----------------------------------------------------------------------------------------------------------
# the phantom's label files: the rule on hand-made visits, then a simulated release against its ground truth


class _Draw:
    """A stand-in generator: every hedge draw returns ``value`` (< 0.3 hedges)."""

    def __init__(self, value: float):
        self.value = value

    def random(self) -> float:
        return self.value


def _plan(*visits: dict[str, int]):
    """A subject whose visit k shows the findings of ``visits[k]`` (name -> level index) and nothing else."""
    from diffvqa.data.phantom.findings import Lesion
    from diffvqa.data.phantom.plan import SPEC, SubjectPlan

    names = sorted({name for visit in visits for name in visit})
    lesions = [Lesion(name, SPEC[name].kind, (), levels=SPEC[name].levels) for name in names]
    states = [[visit.get(name) for visit in visits] for name in names]
    return SubjectPlan(1, None, lesions, states, [], 0, 0)


def _marked(plan, k, draw=0.99) -> dict[str, str]:
    from diffvqa.data.phantom.label_files import observation_values

    values = observation_values(plan, k, _Draw(draw))
    assert list(values) == list(OBSERVATIONS)
    return {name: v for name, v in values.items() if v}


def test_phantom_rule_on_hand_made_visits():
    # hilar congestion alone is an Edema mention
    assert _marked(_plan({"hilar congestion": 1}), 0) == {"Edema": "1.0"}
    # at its lowest level it may be reported hedged: uncertain
    assert _marked(_plan({"hilar congestion": 0}), 0, draw=0.0) == {"Edema": "-1.0"}
    assert _marked(_plan({"hilar congestion": 0}), 0, draw=0.99) == {"Edema": "1.0"}
    # a positive from another finding wins over a hedge; the hedged finding's other observation stays uncertain
    hedged_last = _plan({"edema": 0, "vascular congestion": 1})  # findings are visited in name order
    assert _marked(hedged_last, 0, draw=0.0) == {"Edema": "1.0", "Lung Opacity": "-1.0"}
    hedged_first = _plan({"edema": 1, "hilar congestion": 0})
    assert _marked(hedged_first, 0, draw=0.0) == {"Edema": "1.0", "Lung Opacity": "1.0"}
    # gone since the previous visit: negated, unless something present marks the observation
    gone = _plan({"pleural effusion": 1, "atelectasis": 2}, {"lung opacity": 1})
    assert _marked(gone, 1) == {"Pleural Effusion": "0.0", "Atelectasis": "0.0", "Lung Opacity": "1.0"}
    assert _marked(_plan({"pleural effusion": 2}, {}), 1) == {"Pleural Effusion": "0.0", NO_FINDING: "1.0"}
    # findings no observation covers leave the 14 columns blank: No Finding
    assert _marked(_plan({"scoliosis": 1, "tortuosity of the thoracic aorta": 0}), 0, draw=0.0) == {NO_FINDING: "1.0"}
    assert _marked(_plan({}), 0) == {NO_FINDING: "1.0"}


def test_phantom_findings_without_observation_are_the_documented_seven():
    from diffvqa.data.phantom.plan import SPECS

    assert {s.name for s in SPECS if not FINDING_OBSERVATIONS[s.name]} == {
        "calcification", "tortuosity of the descending aorta", "tortuosity of the thoracic aorta", "hernia",
        "gastric distention", "emphysema", "scoliosis",
    }  # fmt: skip


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    from diffvqa.data.phantom import simulate

    out = tmp_path_factory.mktemp("labels") / "release"
    simulate(out, pairs=30, seed=3, size=(160, 128), progress=False)
    return out


def _truth(release: Path):
    """Per study: its findings (name -> level phrase) and its previous study, from ground_truth/ and mimic_all."""
    with open(release / "ground_truth" / "findings.csv", newline="") as f:
        findings: dict[int, dict[str, str]] = {}
        for row in csv.DictReader(f):
            findings.setdefault(int(row["study_id"]), {})[row["name"]] = row["level"]
    with open(release / "mimic_all.csv", newline="") as f:
        studies = list(csv.DictReader(f))
    previous, last = {}, {}
    for row in sorted(studies, key=lambda r: (r["subject_id"], float(r["study_order"]))):
        study = int(row["study_id"])
        previous[study] = last.get(row["subject_id"])
        last[row["subject_id"]] = study
    return {int(r["study_id"]): r for r in studies}, findings, previous


def _allowed_values(now: dict[str, str], before: dict[str, str]) -> dict[str, set[str]]:
    """observation -> the values the phantom's rule allows (No Finding apart), from the findings alone."""
    from diffvqa.data.phantom.plan import SPEC

    allowed = {}
    for observation in OBSERVATIONS:
        covers = [name for name, observations in FINDING_OBSERVATIONS.items() if observation in observations]
        present = [name for name in covers if name in now]
        hedgeable = [n for n in present if len(SPEC[n].levels) > 1 and now[n] == SPEC[n].levels[0]]
        if len(hedgeable) < len(present):
            allowed[observation] = {"1.0"}
        elif present:
            allowed[observation] = {"1.0", "-1.0"}
        elif any(name in before for name in covers):
            allowed[observation] = {"0.0"}
        else:
            allowed[observation] = {""}
    return allowed


def test_phantom_label_files_follow_the_ground_truth(release):
    mimic_all, findings, previous = _truth(release)
    counts = {"uncertain": 0, "negated": 0, "no finding": 0, "effusion": 0, "edema from congestion": 0}
    for file in (CHEXPERT_FILE, NEGBIO_FILE):
        with gzip.open(release / file, "rt", newline="") as f:
            reader = csv.reader(f)
            assert next(reader) == HEADER
            rows = list(reader)
        studies = [int(row[1]) for row in rows]
        assert sorted(studies) == sorted(mimic_all) and len(set(studies)) == len(studies)  # one row per study
        for row in rows:
            values = dict(zip(HEADER, row, strict=True))
            assert set(row[2:]) <= ALLOWED
            study = int(values["study_id"])
            assert values["subject_id"] == mimic_all[study]["subject_id"]
            now, ref = findings.get(study, {}), previous[study]
            before = findings.get(ref, {}) if ref is not None else {}
            allowed = _allowed_values(now, {n: v for n, v in before.items() if n not in now})
            for observation in OBSERVATIONS:
                if observation != NO_FINDING:
                    assert values[observation] in allowed[observation], (file, study, observation, now, before)
            mentioned = any(values[o] in ("1.0", "-1.0") for o in OBSERVATIONS if o != NO_FINDING)
            assert values[NO_FINDING] == ("" if mentioned else "1.0")
            counts["uncertain"] += "-1.0" in row
            counts["negated"] += "0.0" in row
            counts["no finding"] += values[NO_FINDING] == "1.0"
            if "pleural effusion" in now:
                assert values["Pleural Effusion"] in ("1.0", "-1.0")
                counts["effusion"] += 1
            if {"hilar congestion", "vascular congestion"} & set(now):
                assert values["Edema"] in ("1.0", "-1.0")
                counts["edema from congestion"] += 1
    assert all(counts.values()), counts  # the release exercises every branch of the rule


def test_phantom_all_diseases_and_mimic_all(release):
    mimic_all, findings, previous = _truth(release)
    records = json.loads((release / FINDINGS_FILE).read_text())
    assert sorted(int(r["study_id"]) for r in records) == sorted(mimic_all)
    for record in records:
        study = int(record["study_id"])
        assert isinstance(record["study_id"], str) and record["subject_id"] == mimic_all[study]["subject_id"]
        now = findings.get(study, {})
        assert set(record["entity"]) == set(now)
        for name, attributes in record["entity"].items():
            assert attributes["entity_name"] == name
            assert attributes["level"] == ([now[name]] if now[name] else None)
        before = findings.get(previous[study], {}) if previous[study] else {}
        assert set(record["no_entity"]) == set(before) - set(now)
    chexpert = observation_rows(release / CHEXPERT_FILE)
    for study, row in mimic_all.items():  # mimic_all's reference-only columns are the CheXpert file's values
        assert [row[o] for o in OBSERVATIONS] == [chexpert[study][o] for o in OBSERVATIONS]
    # the reader takes the phantom's files whole
    for label_set, file in (("chexpert", CHEXPERT_FILE), ("negbio", NEGBIO_FILE), ("findings", FINDINGS_FILE)):
        table = read_label_file(label_set, release / file)
        assert table.problem == "" and not table.skipped and len(table.study_ids) == len(mimic_all)


def test_phantom_label_files_are_byte_identical_per_seed(tmp_path):
    from diffvqa.data.phantom import simulate

    for name in ("a", "b"):
        simulate(tmp_path / name, pairs=6, seed=11, size=(64, 64), progress=False)
    for file in LABEL_FILES:
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes(), file
    for file in (CHEXPERT_FILE, NEGBIO_FILE):  # no time in the gzip header, or runs a second apart would differ
        assert (tmp_path / "a" / file).read_bytes()[4:8] == b"\0\0\0\0"


# ----------------------------------------------------------------------------------------------------------
# prepare carries the labels into the cache


def test_prepare_carries_labels(phantom_cache):
    from diffvqa.data.cache_reader import ImageCache

    release = phantom_cache.parent / "release"
    cache = ImageCache(phantom_cache)
    assert cache.has_labels
    labels = cache.labels()
    with open(phantom_cache / "images.csv", newline="") as f:
        image_studies = [int(row["study_id"]) for row in csv.DictReader(f)]
    assert len(image_studies) == len(cache)
    for label_set, file in (("chexpert", CHEXPERT_FILE), ("negbio", NEGBIO_FILE)):
        values = labels.values(label_set)
        assert labels.names(label_set) == OBSERVATIONS and values.shape == (len(cache), 14)
        rows = observation_rows(release / file)
        expected = [[as_float(rows[s][o]) for o in OBSERVATIONS] for s in image_studies]
        np.testing.assert_array_equal(values, np.array(expected, np.float32))  # NaN == NaN here
    records = {int(r["study_id"]): set(r["entity"]) for r in json.loads((release / FINDINGS_FILE).read_text())}
    found = labels.values("findings")
    assert found.shape == (len(cache), 30)
    for i, study in enumerate(image_studies):
        assert {FINDINGS[j] for j in np.flatnonzero(found[i] == 1)} == records[study]
        assert set(np.unique(found[i]).tolist()) <= {0.0, 1.0}

    manifest = json.loads((phantom_cache / "manifest.json").read_text())
    assert set(manifest["labels"]) == {"chexpert", "negbio", "findings"}
    report = (phantom_cache / "report.txt").read_text()
    for label_set, entry in manifest["labels"].items():
        assert entry["images_labelled"] == len(cache) and entry["images_without_study_in_file"] == 0
        assert f"labels {label_set}: {len(cache)}/{len(cache)} images labelled" in report


@pytest.fixture(scope="module")
def small_release(tmp_path_factory):
    from diffvqa.data.phantom import simulate

    out = tmp_path_factory.mktemp("labels_small") / "release"
    simulate(out, pairs=8, seed=4, size=(64, 64), progress=False)
    return out


def _copy_release(release: Path, to: Path, with_labels: bool) -> Path:
    ignore = None if with_labels else shutil.ignore_patterns(*LABEL_FILES)
    shutil.copytree(release, to, ignore=ignore)
    return to


def test_prepare_labels_dir_elsewhere_with_bad_rows_and_a_bad_file(small_release, tmp_path, capsys):
    from diffvqa.data.cache_labels import CacheLabels
    from diffvqa.data.cache_writer import prepare_main

    release = _copy_release(small_release, tmp_path / "release", with_labels=False)
    labels_dir = tmp_path / "labels"
    labels_dir.mkdir()
    rows = observation_rows(small_release / CHEXPERT_FILE)
    dropped, spoiled = sorted(rows)[:2]
    kept = [[row[c] for c in HEADER] for s, row in sorted(rows.items()) if s != dropped]
    kept[0][HEADER.index("Edema")] = "2.0"  # the first kept row is study `spoiled`
    write_csv(labels_dir / CHEXPERT_FILE, HEADER, kept)
    (labels_dir / NEGBIO_FILE).write_bytes(b"\x1f\x8b not really gzip")
    shutil.copy(small_release / FINDINGS_FILE, labels_dir / FINDINGS_FILE)

    cache_dir = tmp_path / "cache"
    args = ["--release", str(release), "--out", str(cache_dir), "--size", "32", "--workers", "1", "--quiet"]
    assert prepare_main([*args, "--labels", str(labels_dir)]) == 0
    out = capsys.readouterr().out
    negbio_lines = [line for line in out.splitlines() if "labels negbio" in line]
    assert len(negbio_lines) == 1 and "not read (" in negbio_lines[0]
    assert "skipped 1: value out of range in Edema" in out
    assert "labels findings: " in out

    with open(cache_dir / "images.csv", newline="") as f:
        studies = [int(row["study_id"]) for row in csv.DictReader(f)]
    labels = CacheLabels(cache_dir)
    summary = labels.summary["chexpert"]
    assert summary["images_without_study_in_file"] == studies.count(dropped) == 1
    assert summary["images_labelled"] == len(studies) - 1 and summary["file"] == str(labels_dir / CHEXPERT_FILE)
    chexpert = labels.values("chexpert")
    assert np.isnan(chexpert[studies.index(dropped)]).all()
    spoiled_row = chexpert[studies.index(spoiled)]
    assert np.isnan(spoiled_row[OBSERVATIONS.index("Edema")])
    expected = [as_float(rows[spoiled][o]) for o in OBSERVATIONS if o != "Edema"]
    np.testing.assert_array_equal(np.delete(spoiled_row, OBSERVATIONS.index("Edema")), expected)
    assert labels.sets == ["chexpert", "findings"]
    with pytest.raises(UserError, match=f"{NEGBIO_FILE} was not read"):
        labels.values("negbio")


def test_prepare_without_label_files_and_stale_labels(small_release, tmp_path):
    from diffvqa.data.cache_reader import ImageCache
    from diffvqa.data.cache_writer import prepare

    release = _copy_release(small_release, tmp_path / "release", with_labels=True)
    cache_dir = tmp_path / "cache"
    kwargs = dict(size=32, workers=1, progress=False)
    prepare(release, release, cache_dir, **kwargs)
    assert ImageCache(cache_dir).has_labels
    elsewhere = tmp_path / "moved"
    elsewhere.mkdir()
    for file in LABEL_FILES:
        shutil.move(release / file, elsewhere / file)
    manifest = prepare(release, release, cache_dir, **kwargs)  # the same cache, finalised again
    assert manifest["labels"] == {} and not (cache_dir / "labels").exists()
    cache = ImageCache(cache_dir)
    assert not cache.has_labels
    with pytest.raises(UserError) as caught:
        cache.labels()
    message = str(caught.value)
    assert "\n" not in message and "--labels" in message
    assert all(file in message for file in LABEL_FILES)

    labelled = prepare(release, release, tmp_path / "cache2", labels=elsewhere, **kwargs)  # the library's --labels
    assert set(labelled["labels"]) == {"chexpert", "negbio", "findings"}
    assert ImageCache(tmp_path / "cache2").labels().values("findings").shape == (len(cache), 30)


def test_labels_option_is_checked_where_it_enters_and_may_be_added_to_a_prepared_cache(small_release, tmp_path):
    from diffvqa.data.cache_writer import prepare
    from diffvqa.errors import MissingInputError

    release = _copy_release(small_release, tmp_path / "release", with_labels=False)
    kwargs = dict(size=32, workers=1, progress=False)
    with pytest.raises(MissingInputError, match="not a directory"):
        prepare(release, release, tmp_path / "c0", labels=tmp_path / "nowhere", **kwargs)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MissingInputError, match="holds none of the label files"):
        prepare(release, release, tmp_path / "c0", labels=empty, **kwargs)
    assert not (tmp_path / "c0").exists()  # refused before anything was written

    cache_dir = tmp_path / "cache"
    assert prepare(release, release, cache_dir, **kwargs)["labels"] == {}
    images = (cache_dir / "images.u8.npy").stat().st_mtime_ns
    # the labels arrive later: the same cache takes them without decoding its images again
    manifest = prepare(release, release, cache_dir, labels=small_release, **kwargs)
    assert set(manifest["labels"]) == {"chexpert", "negbio", "findings"}
    assert (cache_dir / "images.u8.npy").stat().st_mtime_ns == images
