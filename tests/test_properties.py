"""Property-based tests (hypothesis) of the three readers of user text: the ``key=value`` override parser, the
YAML config loader and the release reader. Whatever the text, each either returns a whole, valid result or raises
the documented :class:`~diffvqa.errors.UserError` -- never another exception, never a partial result."""

from __future__ import annotations

import copy
import dataclasses
import string
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diffvqa.config import Config, apply_overrides, check_together, load_config, rule_of
from diffvqa.data.release import QUESTION_COLUMNS, SKIP_REASONS, read_release
from diffvqa.errors import UserError

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
KEYS = [f"{g.name}.{f.name}" for g in dataclasses.fields(Config) for f in dataclasses.fields(g.default_factory)]

# Values that look like what a user types: numbers, YAML scalars and lists, and plain garbage.
yaml_scalars = st.one_of(
    st.integers(-(10**6), 10**6).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["true", "false", "null", "~", "[]", "{}", "[1, 2, 3]", "[a, b]", "1e-3", "3e-4", ".nan", "-.inf",
                     "max", "bf16", "difference", "2001-02-30", "0x10", "1_000", "'quoted'", "[1, [2]]", "{a: 1}"]),
    st.text(max_size=12),
)  # fmt: skip
override_texts = st.one_of(
    st.text(max_size=40),
    st.builds(lambda key, value: f"{key}={value}", st.sampled_from(KEYS), yaml_scalars),
    st.builds(
        lambda key, value: f"{key}={value}", st.text(alphabet=string.ascii_lowercase + "._", max_size=20), yaml_scalars
    ),
)


def assert_whole_and_valid(config: Config) -> None:
    """Every value satisfies its key's rule and the cross-key rules: nothing half-applied or out of range."""
    for group in dataclasses.fields(Config):
        values = getattr(config, group.name)
        for f in dataclasses.fields(values):
            value = getattr(values, f.name)
            assert rule_of(values, f.name).problem(value) is None, (group.name, f.name, value)
    check_together(config)


@SETTINGS
@given(st.lists(override_texts, min_size=1, max_size=3))
def test_overrides_never_raise_anything_else_nor_apply_partly(texts):
    config = load_config("tiny")
    before = copy.deepcopy(config)
    try:
        apply_overrides(config, texts)
    except UserError:
        assert config == before  # all or nothing
        return
    assert_whole_and_valid(config)


# YAML documents: free text, and mappings of groups -> keys -> values (valid and invalid), dumped as YAML.
yaml_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(10**9), 10**9), st.floats(), st.text(max_size=10)),
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
group_documents = st.dictionaries(
    st.sampled_from(["data", "model", "saliency", "train", "preset", "other"]),
    st.one_of(st.dictionaries(st.sampled_from([k.split(".")[1] for k in KEYS] + ["nope"]), yaml_values, max_size=4),
              yaml_values),
    max_size=4,
).map(lambda d: yaml.safe_dump(d, allow_unicode=True))  # fmt: skip


@SETTINGS
@given(st.one_of(st.text(max_size=200), group_documents))
def test_yaml_loader_never_raises_anything_else(tmp_path, text):
    path = tmp_path / "run.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        config = load_config("tiny", file=path)
    except UserError:
        return
    assert_whole_and_valid(config)


# ----------------------------------------------------------------------------------------------------------
# the release reader

STUDIES_CSV = (
    "subject_id,study_id,dicom_id,study_date\n18936629,55088298,d-main,21800301\n18936629,54989200,d-ref,21800101\n"
)
GOOD_ROW = "55088298,18936629,54989200,view,which view is this image taken?,PA view,train"
csv_cells = st.one_of(
    st.sampled_from(["55088298", "54989200", "18936629", "difference", "view", "train", "test", "x", "", '"', '""',
                     '"a,b"', "1.0", "-1", "nothing has changed. "]),
    st.text(max_size=8),
)  # fmt: skip
csv_rows = st.lists(csv_cells, min_size=0, max_size=9).map(",".join)
question_files = st.one_of(
    st.text(max_size=300),
    st.binary(max_size=200),
    st.lists(st.one_of(csv_rows, st.just(GOOD_ROW)), max_size=6).map(
        lambda rows: "\n".join([",".join(QUESTION_COLUMNS), *rows]) + "\n"
    ),
)


def _write(directory: Path, content: str | bytes, name: str = "mimic_pair_questions.csv") -> None:
    path = directory / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")


@SETTINGS
@given(question_files)
def test_release_reader_never_raises_anything_else_nor_returns_part(tmp_path, content):
    (tmp_path / "mimic_all.csv").write_text(STUDIES_CSV)
    _write(tmp_path, content)
    try:
        release = read_release(tmp_path, tmp_path, check_images=False)
    except UserError:
        return
    # every row read is either kept or counted under one reason: nothing dropped on the way
    steps, skipped = release.steps, release.skipped
    assert steps["after_split_filter"] == steps["after_type_filter"] == steps["rows_read"]
    assert steps["kept_questions"] + sum(skipped[r] for r in SKIP_REASONS) == steps["rows_read"]
    assert len(release.questions) == steps["kept_questions"]


def test_release_reader_reads_the_good_row(tmp_path):
    """The generator's anchor: a valid file is read whole (so the property above is not vacuous)."""
    (tmp_path / "mimic_all.csv").write_text(STUDIES_CSV)
    _write(tmp_path, ",".join(QUESTION_COLUMNS) + "\n" + GOOD_ROW + "\n")
    assert read_release(tmp_path, tmp_path, check_images=False).steps["kept_questions"] == 1


study_files = st.one_of(
    st.text(max_size=300),
    st.binary(max_size=200),
    st.lists(st.one_of(csv_rows, st.just("18936629,55088298,d-main,21800301")), max_size=6).map(
        lambda rows: "\n".join(["subject_id,study_id,dicom_id,study_date", *rows]) + "\n"
    ),
)


@SETTINGS
@given(study_files)
def test_release_reader_survives_any_studies_file(tmp_path, content):
    """The same for ``mimic_all.csv``, under a valid question file."""
    _write(tmp_path, ",".join(QUESTION_COLUMNS) + "\n" + GOOD_ROW + "\n")
    _write(tmp_path, content, "mimic_all.csv")
    try:
        release = read_release(tmp_path, tmp_path, check_images=False)
    except UserError:
        return
    assert release.steps["rows_read"] == 1
    assert release.steps["kept_questions"] + sum(release.skipped.values()) == 1
