"""The bad-input battery: wrong arguments, configs, files, checkpoints and data for ``ask``, ``prepare``,
``train``, ``evaluate`` and ``keywords``, run through ``diffvqa.cli.main`` as a user would.

Every case must end in exactly one line on stderr, ``diffvqa <command>: error: ...``, naming the file, key or
value at fault, with exit code 2 and no traceback -- or, for data a long job should survive, in a counted skip
that the report shows. Everything runs on the tiny preset and a few-row release, in a few seconds.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_release import write_release

from diffvqa.cli import main as cli_main

QUESTION = "what has changed compared to the reference image?"
TEXTS = [QUESTION, "is there evidence of pleural effusion in this image?", "nothing has changed.", "yes", "no"]


@dataclass
class World:
    """What the cases start from: a tiny checkpoint, two PNGs, a prepared phantom cache, a release."""

    root: Path
    checkpoint: Path
    main: Path
    ref: Path
    cache: Path
    release: Path
    images: Path

    def checkpoint_copy(self, tmp: Path, edit: Callable[[Path], None]) -> Path:
        """A copy of the checkpoint in ``tmp``, changed by ``edit(directory)``."""
        directory = tmp / "ckpt"
        shutil.copytree(self.checkpoint, directory)
        edit(directory)
        return directory

    def cache_copy(self, tmp: Path, edit: Callable[[Path], None]) -> Path:
        """A copy of the prepared cache in ``tmp``, changed by ``edit(directory)``."""
        directory = tmp / "cache"
        shutil.copytree(self.cache, directory)
        edit(directory)
        return directory

    def release_copy(self, tmp: Path, questions: bytes | None = None, studies: bytes | None = None) -> Path:
        """A copy of the release CSVs in ``tmp`` (images stay shared), either CSV replaced when given."""
        directory = tmp / "release"
        shutil.copytree(self.release, directory)
        if questions is not None:
            (directory / "mimic_pair_questions.csv").write_bytes(questions)
        if studies is not None:
            (directory / "mimic_all.csv").write_bytes(studies)
        return directory


@pytest.fixture(scope="module")
def world(tmp_path_factory, phantom_cache) -> World:
    from diffvqa.config import load_config
    from diffvqa.data.text import build_word_tokenizer
    from diffvqa.model.checkpoint import save_checkpoint
    from diffvqa.model.vqa import DiffVQA

    root = tmp_path_factory.mktemp("bad_input")
    torch.manual_seed(0)
    checkpoint = save_checkpoint(DiffVQA(load_config("tiny"), build_word_tokenizer(TEXTS)), root / "ckpt")
    pixels = (np.random.default_rng(0).random((64, 56)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(root / "main.png")
    Image.fromarray(pixels[::-1]).save(root / "ref.png")
    release, images = write_release(root / "data")
    return World(root, checkpoint, root / "main.png", root / "ref.png", phantom_cache, release, images)


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    """``diffvqa ARGV`` in this process -> (exit code, stdout, stderr); argparse's exits are caught."""
    try:
        code = cli_main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


# ----------------------------------------------------------------------------------------------------------
# the cases: (id, argv builder (world, tmp) -> argv, substrings the one error line must hold)


def _ask(w: World, *extra, checkpoint=None, main=None, ref=None, question=QUESTION) -> list:
    return ["ask", "--checkpoint", checkpoint or w.checkpoint, "--main", main or w.main, "--ref", ref or w.ref,
            "--question", question, *extra]  # fmt: skip


def _ask_copy(w: World, t: Path, edit: Callable[[Path], None]) -> list:
    return _ask(w, checkpoint=w.checkpoint_copy(t, edit))


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _edit_config(**changes) -> Callable[[Path], None]:
    def edit(directory: Path) -> None:
        values = json.loads((directory / "config.json").read_text())
        for dotted, value in changes.items():
            group, key = dotted.split("__")
            values[group][key] = value
        (directory / "config.json").write_text(json.dumps(values))

    return edit


def _truncate(directory: Path) -> None:
    path = directory / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _replace(name: str, data: bytes) -> Callable[[Path], None]:
    return lambda directory: (directory / name).write_bytes(data)


def _remove(name: str) -> Callable[[Path], None]:
    return lambda directory: (directory / name).unlink()


ASK = [
    ("no-arguments", lambda w, t: ["ask"], ["the following arguments are required: --checkpoint"]),
    ("unknown-option", lambda w, t: _ask(w, "--colour"), ["unrecognized arguments: --colour"]),
    ("bad-keyword-source", lambda w, t: _ask(w, "--keyword-source", "gpt"), ["--keyword-source", "'gpt'"]),
    ("no-checkpoint-dir", lambda w, t: _ask(w, checkpoint=t / "nowhere"),
     ["not found: checkpoint directory", "nowhere"]),
    ("no-main-image", lambda w, t: _ask(w, main=t / "gone.png"), ["not found: main image", "gone.png"]),
    ("no-ref-image", lambda w, t: _ask(w, ref=t / "gone.dcm"), ["not found: reference image", "gone.dcm"]),
    ("empty-question", lambda w, t: _ask(w, question="   "), ["--question is empty"]),
    ("main-not-an-image", lambda w, t: _ask(w, main=_write(t / "notes.png", b"hello")), ["notes.png", "cannot read"]),
    ("main-empty-file", lambda w, t: _ask(w, main=_write(t / "empty.jpg", b"")), ["empty.jpg"]),
    ("ref-truncated-png", lambda w, t: _ask(w, ref=_write(t / "cut.png", w.ref.read_bytes()[:60])), ["cut.png"]),
    ("out-is-a-file", lambda w, t: _ask(w, "--out", _write(t / "out", b"")), ["--out", "is a file"]),
    ("checkpoint-empty-dir", lambda w, t: _ask(w, checkpoint=t),
     ["neither a checkpoint (config.json + model.safetensors)"]),
    ("weights-truncated", lambda w, t: _ask_copy(w, t, _truncate),
     ["model.safetensors: not a readable safetensors file", "truncated or corrupt"]),
    ("weights-garbage", lambda w, t: _ask_copy(w, t, _replace("model.safetensors", b"\x00" * 64)),
     ["model.safetensors: not a readable safetensors file"]),
    ("weights-empty", lambda w, t: _ask_copy(w, t, _replace("model.safetensors", b"")),
     ["model.safetensors: not a readable safetensors file"]),
    ("weights-missing", lambda w, t: _ask_copy(w, t, _remove("model.safetensors")),
     ["neither a checkpoint"]),
    ("config-wider-than-weights", lambda w, t: _ask_copy(w, t, _edit_config(model__decoder_width=128)),
     ["model.safetensors: tensor", "has shape (", "expects (", "config.json"]),
    ("config-other-encoder-widths", lambda w, t: _ask_copy(w, t, _edit_config(model__encoder_hidden_sizes=[8, 16, 64])),
     ["model.safetensors: tensor", "expects ("]),
    ("config-more-layers", lambda w, t: _ask_copy(w, t, _edit_config(model__decoder_layers=3)),
     ["model.safetensors", "missing keys"]),
    ("config-not-json", lambda w, t: _ask_copy(w, t, _replace("config.json", b"{oops")),
     ["config.json: cannot read a config"]),
    ("config-not-utf8", lambda w, t: _ask_copy(w, t, _replace("config.json", b"\xff\xfe{}")),
     ["config.json: cannot read a config"]),
    ("config-a-list", lambda w, t: _ask_copy(w, t, _replace("config.json", b"[1, 2]")),
     ["config.json: expected a mapping at top level"]),
    ("config-out-of-range", lambda w, t: _ask_copy(w, t, _edit_config(train__batch_size=-4)),
     ["config.json: config key train.batch_size=-4: expected a value >= 1"]),
    ("config-unknown-key", lambda w, t: _ask_copy(w, t, _edit_config(model__depth=3)),
     ["config.json: unknown config key 'model.depth'"]),
    ("tokenizer-missing", lambda w, t: _ask_copy(w, t, _remove("tokenizer.json")),
     ["tokenizer.json: no tokenizer file"]),
    ("device-unknown", lambda w, t: _ask(w, "--device", "gpu"), ["--device gpu: not a device this machine can use"]),
]  # fmt: skip


def _prepare(w: World, t: Path, *extra, release=None) -> list:
    return ["prepare", "--release", release or w.release, "--images", w.images, "--out", t / "cache", "--quiet",
            "--workers", "1", *extra]  # fmt: skip


def _prepare_csv(w: World, t: Path, questions: bytes | None = None, studies: bytes | None = None) -> list:
    return _prepare(w, t, release=w.release_copy(t, questions, studies))


HEADER = b"study_id,subject_id,ref_id,question_type,question,answer,split\n"
ROW = b"53189527,10000032,50414267,abnormality,what abnormalities are seen in this image?,atelectasis,train\n"

PREPARE = [
    ("no-out", lambda w, t: ["prepare", "--release", w.release], ["--out is required (the cache directory to write)"]),
    ("no-release", lambda w, t: ["prepare", "--out", t / "c"], ["--release is required"]),
    ("release-missing", lambda w, t: _prepare(w, t, release=t / "nowhere"),
     ["nowhere", "mimic_pair_questions.csv: not found"]),
    ("questions-empty", lambda w, t: _prepare_csv(w, t, b""),
     ["mimic_pair_questions.csv: empty file"]),
    ("questions-not-utf8", lambda w, t: _prepare_csv(w, t, HEADER + ROW[:40] + b"\xe9" + ROW[40:]),
     ["mimic_pair_questions.csv: not UTF-8 text: byte 103 (line 2)"]),
    ("questions-header-only", lambda w, t: _prepare_csv(w, t, HEADER),
     ["mimic_pair_questions.csv: no question survived reading (rows_read 0", "kept_questions 0"]),
    ("questions-all-skipped", lambda w, t: _prepare_csv(w, t, HEADER + ROW.replace(b"train", b"nope")),
     ["no question survived reading (rows_read 1", "skipped_bad_row 1"]),
    ("questions-missing-column",
     lambda w, t: _prepare_csv(w, t, HEADER.replace(b",split", b"") + ROW.replace(b",train", b"")),
     ["mimic_pair_questions.csv: missing column(s) ['split']"]),
    ("questions-ragged-row", lambda w, t: _prepare_csv(w, t, HEADER + ROW + b"1,2,3\n"),
     ["mimic_pair_questions.csv: line 3 has 3 fields but the header has 7"]),
    ("questions-nul-byte", lambda w, t: _prepare_csv(w, t, HEADER + b"\x00" + ROW),
     ["mimic_pair_questions.csv: a NUL byte at byte 63 (line 2)"]),
    ("studies-empty", lambda w, t: _prepare_csv(w, t, studies=b""), ["mimic_all.csv: empty file"]),
    ("studies-missing-column", lambda w, t: _prepare_csv(w, t, studies=b"subject_id,study_id\n1,2\n"),
     ["mimic_all.csv: missing column(s) ['dicom_id', 'study_date']"]),
    ("size-too-small", lambda w, t: _prepare(w, t, "--size", "4"), ["size 4: expected at least 8 pixels"]),
    ("size-not-a-number", lambda w, t: _prepare(w, t, "--size", "big"), ["--size", "invalid int value: 'big'"]),
    ("shard-out-of-range", lambda w, t: _prepare(w, t, "--shard", "3/2"), ["--shard '3/2': expected 0 <= i < n"]),
    ("shard-garbage", lambda w, t: _prepare(w, t, "--shard", "half"), ["--shard 'half': expected i/n"]),
    ("question-type-unknown", lambda w, t: _prepare(w, t, "--question-types", "diff"),
     ["unknown question type(s) ['diff']"]),
    ("workers-negative", lambda w, t: _prepare(w, t, "--workers", "-1"), ["--workers -1: expected 0 or more"]),
    ("out-is-a-file", lambda w, t: ["prepare", "--release", w.release, "--out", _write(t / "f", b"x")],
     ["--out", "is a file"]),
    ("merge-not-a-shard", lambda w, t: ["prepare", "--merge", t, "--out", t / "m"], ["not a shard directory"]),
]  # fmt: skip


def _train(w: World, t: Path, *extra) -> list:
    return ["train", "--data", w.cache, "--out", t / "run", "--preset", "tiny", "--no-progress", *extra]


def _set_manifest_size(size: int) -> Callable[[Path], None]:
    def edit(directory: Path) -> None:
        manifest = json.loads((directory / "manifest.json").read_text())
        (directory / "manifest.json").write_text(json.dumps(manifest | {"size": size}))

    return edit


def _cut(name: str) -> Callable[[Path], None]:
    return lambda directory: _write(directory / name, (directory / name).read_bytes()[:200])


def _train_on(w: World, t: Path, edit: Callable[[Path], None]) -> list:
    return ["train", "--data", w.cache_copy(t, edit), "--out", t / "run", "--preset", "tiny", "--no-progress"]


def _broken_run(w: World, t: Path, edit: Callable[[Path], None]) -> Path:
    """A run directory as ``train`` leaves it (config.json, checkpoints/step-N, latest), its checkpoint changed by
    ``edit(directory)``."""
    run = t / "run"
    step = run / "checkpoints" / "step-0000001"
    shutil.copytree(w.checkpoint, step)
    torch.save({"step": 1}, step / "trainer_state.pt")
    shutil.copy(w.checkpoint / "config.json", run / "config.json")
    (run / "latest").write_text("checkpoints/step-0000001\n")
    edit(step)
    return run


def _resume(w: World, t: Path, edit: Callable[[Path], None]) -> list:
    return ["train", "--data", w.cache, "--out", _broken_run(w, t, edit), "--resume", "--no-progress"]


TRAIN = [
    ("no-data", lambda w, t: ["train", "--out", t / "run"], ["the following arguments are required: --data"]),
    ("data-not-a-cache", lambda w, t: ["train", "--data", t, "--out", t / "run"], ["not a prepared cache"]),
    ("unknown-preset", lambda w, t: _train(w, t, "--preset", "huge"), ["unknown preset 'huge'", "tiny, small, paper"]),
    ("unknown-key", lambda w, t: _train(w, t, "train.lrr=1"), ["unknown config key 'train.lrr'"]),
    ("unknown-group", lambda w, t: _train(w, t, "trian.lr=1"), ["unknown config key 'trian'"]),
    ("wrong-type", lambda w, t: _train(w, t, "train.steps=abc"), ["train.steps", "expected int, got 'abc'"]),
    ("no-equals", lambda w, t: _train(w, t, "train.lr"), ["override 'train.lr': expected key=value"]),
    ("bad-yaml-value", lambda w, t: _train(w, t, "train.lr=[1"), ["override 'train.lr=[1': not valid YAML"]),
    ("checkpoint-every-zero", lambda w, t: _train(w, t, "train.checkpoint_every=0"),
     ["train.checkpoint_every=0: expected a value >= 1"]),
    ("batch-size-negative", lambda w, t: _train(w, t, "train.batch_size=-4"),
     ["train.batch_size=-4: expected a value >= 1"]),
    ("lr-negative", lambda w, t: _train(w, t, "train.lr=-1e-3"), ["train.lr=-0.001: expected a value > 0"]),
    ("mask-floor-above-one", lambda w, t: _train(w, t, "saliency.mask_floor=2"), ["saliency.mask_floor=2.0"]),
    ("autocast-unknown", lambda w, t: _train(w, t, "train.autocast=fp8"), ["expected one of none, bf16, fp16"]),
    ("width-not-multiple-of-heads", lambda w, t: _train(w, t, "model.decoder_width=65"),
     ["model.decoder_width=65 must be a multiple of model.decoder_heads=2"]),
    ("config-file-missing", lambda w, t: _train(w, t, "--config", t / "run.yaml"), ["--config", "run.yaml: not found"]),
    ("config-file-a-list", lambda w, t: _train(w, t, "--config", _write(t / "l.yaml", b"- 1\n")),
     ["l.yaml: expected a mapping of config groups, got list"]),
    ("config-file-bad-yaml", lambda w, t: _train(w, t, "--config", _write(t / "b.yaml", b"train: [1\n")),
     ["b.yaml: not valid YAML"]),
    ("config-file-bad-value", lambda w, t: _train(w, t, "--config", _write(t / "v.yaml", b"train:\n  log_every: 0\n")),
     ["v.yaml: config key train.log_every=0: expected a value >= 1"]),
    ("resume-without-run", lambda w, t: _train(w, t, "--resume"), ["--resume", "config.json not found"]),
    ("device-unknown", lambda w, t: _train(w, t, "--device", "gpu"), ["--device gpu: not a device"]),
    ("cache-of-another-size", lambda w, t: _train_on(w, t, _set_manifest_size(32)),
     ["images prepared at S = 32, but data.image_size is 64", "--size 64"]),
    ("cache-manifest-not-json", lambda w, t: _train_on(w, t, _replace("manifest.json", b"{oops")),
     ["a damaged prepared cache", "run `diffvqa prepare` again"]),
    ("cache-questions-missing", lambda w, t: _train_on(w, t, _remove("questions.csv")),
     ["a damaged prepared cache", "questions.csv"]),
    ("truth-keywords-without-truth", lambda w, t: [*_train_on(w, t, lambda d: shutil.rmtree(d / "truth")),
                                                   "saliency.keyword_source=truth"],
     ["saliency.keyword_source=truth needs ground-truth keywords, which only a phantom cache has"]),
    ("cache-status-junk", lambda w, t: _train_on(w, t, _replace("status.npy", b"junk")), ["a damaged prepared cache"]),
    ("resume-trainer-state-junk", lambda w, t: _resume(w, t, _replace("trainer_state.pt", b"junk")),
     ["trainer_state.pt: cannot read the trainer state"]),
    ("resume-weights-truncated", lambda w, t: _resume(w, t, _truncate),
     ["model.safetensors: not a readable safetensors file"]),
    ("resume-changed-config", lambda w, t: [*_resume(w, t, lambda d: None), "train.lr=1.0"],
     ["--resume with a different config than", "train.lr"]),
    ("stop-after-zero", lambda w, t: _train(w, t, "--stop-after", "0"),
     ["--stop-after 0: expected a number of steps >= 1"]),
    ("out-is-a-file", lambda w, t: ["train", "--data", w.cache, "--out", _write(t / "f", b"x"), "--preset", "tiny"],
     ["--out", "is a file"]),
    ("image-size-not-a-stride-multiple", lambda w, t: [*_train_on(w, t, _set_manifest_size(72)), "data.image_size=72"],
     ["data.image_size=72 must be a multiple of the encoder's stride 16"]),
    ("decoder-positions-too-short", lambda w, t: _train(w, t, "model.decoder_positions=16"),
     ["model.decoder_positions=16 is too short"]),
    ("batch-larger-than-data", lambda w, t: _train(w, t, "train.batch_size=100000"),
     ["fewer than one optimiser step's batch (100000"]),
    ("gpt2-without-tokenizer-path", lambda w, t: _train(w, t, "model.tokenizer=gpt2"),
     ["model.tokenizer=gpt2 needs model.tokenizer_path"]),
]  # fmt: skip


def _evaluate(w: World, t: Path, *extra, checkpoint=None) -> list:
    return ["evaluate", "--checkpoint", checkpoint or w.checkpoint, "--data", w.cache, "--out", t / "eval",
            "--no-progress", *extra]  # fmt: skip


def _evaluate_on(w: World, t: Path, edit: Callable[[Path], None]) -> list:
    return ["evaluate", "--checkpoint", w.checkpoint, "--data", w.cache_copy(t, edit), "--out", t / "eval",
            "--no-progress", "--no-report", "--limit", "2"]  # fmt: skip


EVALUATE = [
    ("no-checkpoint", lambda w, t: _evaluate(w, t, checkpoint=t / "none"), ["none: neither a checkpoint"]),
    ("data-not-a-cache", lambda w, t: ["evaluate", "--checkpoint", w.checkpoint, "--data", t, "--out", t / "e"],
     ["not a prepared cache"]),
    ("weights-truncated", lambda w, t: _evaluate(w, t, checkpoint=w.checkpoint_copy(t, _truncate)),
     ["model.safetensors: not a readable safetensors file"]),
    ("config-wider-than-weights", lambda w, t: _evaluate(w, t, checkpoint=w.checkpoint_copy(
        t, _edit_config(model__decoder_width=128))), ["model.safetensors: tensor", "has shape (", "expects ("]),
    ("batch-size-zero", lambda w, t: _evaluate(w, t, "--batch-size", "0"), ["--batch-size 0: expected >= 1"]),
    ("limit-negative", lambda w, t: _evaluate(w, t, "--limit", "-1"), ["--limit -1: expected 0"]),
    ("question-type-unknown", lambda w, t: _evaluate(w, t, "--question-types", "diff"),
     ["unknown question type(s) in --question-types ['diff']"]),
    ("split-unknown", lambda w, t: _evaluate(w, t, "--split", "dev"), ["--split", "invalid choice: 'dev'"]),
    ("device-unknown", lambda w, t: _evaluate(w, t, "--device", "tpu"), ["--device tpu: not a device"]),
    ("cache-of-another-size", lambda w, t: _evaluate_on(w, t, _set_manifest_size(128)),
     ["images prepared at S = 128, but data.image_size is 64"]),
    ("cache-images-truncated", lambda w, t: _evaluate_on(w, t, _cut("images.u8.npy")),
     ["a damaged prepared cache", "run `diffvqa prepare` again"]),
    ("cache-index-missing", lambda w, t: _evaluate_on(w, t, _remove("images.csv")),
     ["a damaged prepared cache", "images.csv"]),
    ("out-is-a-file", lambda w, t: ["evaluate", "--checkpoint", w.checkpoint, "--data", w.cache, "--out",
                                    _write(t / "f", b"x")], ["--out", "is a file"]),
]  # fmt: skip


def _keywords(w: World, t: Path, *extra, data=None) -> list:
    return ["keywords", "--data", data or w.release, "--out", t / "kw.json", "--no-progress", *extra]


KEYWORDS = [
    ("no-out", lambda w, t: ["keywords", "--data", w.release], ["the following arguments are required: --out"]),
    ("data-missing", lambda w, t: _keywords(w, t, data=t / "nowhere"), ["nowhere: no such directory"]),
    ("data-dir-without-csv", lambda w, t: _keywords(w, t, data=t), ["expected a prepared cache (questions.csv)"]),
    ("csv-without-answer", lambda w, t: _keywords(w, t, data=_write(t / "q.csv", b"question\nis it?\n")),
     ["q.csv: expected an 'answer' column, found columns ['question']"]),
    ("csv-empty", lambda w, t: _keywords(w, t, data=_write(t / "e.csv", b"")), ["e.csv: empty file"]),
    ("csv-not-utf8", lambda w, t: _keywords(w, t, data=_write(t / "l.csv", b"answer\nyes\nn\xf6\n")),
     ["l.csv: not UTF-8 text: byte 12 (line 3)"]),
    ("cache-not-json", lambda w, t: _keywords(w, t) if _write(t / "kw.json", b"{") else [],
     ["kw.json: cannot read a keyword cache"]),
    ("cache-a-list", lambda w, t: _keywords(w, t) if _write(t / "kw.json", b"[1]") else [],
     ["kw.json: expected a JSON object mapping answer text to keyword"]),
    ("base-url-not-http", lambda w, t: _keywords(w, t, "--base-url", "ftp://host/v1"),
     ["LLM base URL 'ftp://host/v1'"]),
    ("timeout-zero", lambda w, t: _keywords(w, t, "--timeout", "0"), ["LLM timeout must be > 0 seconds, got 0.0"]),
    ("timeout-garbage", lambda w, t: _keywords(w, t, "--timeout", "soon"),
     ["--timeout", "invalid float value: 'soon'"]),
    ("workers-zero", lambda w, t: _keywords(w, t, "--workers", "0"), ["--workers 0: expected 1 or more"]),
]  # fmt: skip

GROUPS = {"ask": ASK, "prepare": PREPARE, "train": TRAIN, "evaluate": EVALUATE, "keywords": KEYWORDS}
CASES = [(command, case_id, build, expected) for command, group in GROUPS.items() for case_id, build, expected in group]


def test_the_battery_is_big_enough():
    assert len(CASES) >= 60 and all(GROUPS.values())
    assert len({(command, case_id) for command, case_id, _, _ in CASES}) == len(CASES)


@pytest.mark.parametrize(
    ("command", "build", "expected"), [(c[0], c[2], c[3]) for c in CASES], ids=[f"{c[0]}-{c[1]}" for c in CASES]
)
def test_bad_input_is_one_clear_line(world, tmp_path, capsys, command, build, expected):
    code, out, err = run(build(world, tmp_path), capsys)
    # a note said before the failure (e.g. train's "the encoder starts from random weights") is not the error
    lines = [line for line in err.strip().splitlines() if not line.startswith(f"diffvqa {command}: note: ")]
    assert code == 2, f"exit code {code}; stderr: {err[-2000:]}"
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    assert lines[0].startswith(f"diffvqa {command}: error: "), lines[0]
    for text in expected:
        assert text in lines[0], f"{text!r} not in {lines[0]!r}"


# ----------------------------------------------------------------------------------------------------------
# data a long job survives: counted, reported skips


@pytest.fixture(scope="module")
def prepared(world, tmp_path_factory):
    """``prepare`` over the fixture release (one of every skip) plus an exact repeat of a row."""
    import io

    tmp = tmp_path_factory.mktemp("skips")
    questions = (world.release / "mimic_pair_questions.csv").read_bytes()
    repeat = questions.splitlines(keepends=True)[1]
    release = world.release_copy(tmp, questions + repeat)
    capture = io.StringIO()
    import contextlib

    with contextlib.redirect_stdout(capture), contextlib.redirect_stderr(io.StringIO()):
        code = cli_main(["prepare", "--release", str(release), "--images", str(world.images), "--out",
                         str(tmp / "cache"), "--size", "32", "--workers", "1", "--quiet"])  # fmt: skip
    manifest = json.loads((tmp / "cache" / "manifest.json").read_text())
    return code, capture.getvalue(), manifest


@pytest.mark.parametrize(
    ("reason", "count"),
    [("duplicate", 1), ("bad_row", 1), ("unknown_study", 1), ("subject_mismatch", 1), ("bad_chronology", 2),
     ("missing_image", 1), ("unreadable", 1)],
)  # fmt: skip
def test_bad_rows_and_images_are_counted_and_reported(prepared, reason, count):
    code, report, manifest = prepared
    assert code == 0
    assert manifest["skipped"][reason] == count
    line = next(line for line in report.splitlines() if line.strip().startswith(reason))
    assert line.split()[1] == str(count)


def test_single_image_questions_with_an_earlier_main_are_kept_and_noted(prepared):
    code, report, manifest = prepared
    assert code == 0 and manifest["reader"]["notes"]["single_image_main_not_later"] == 1
    assert "1 single-image questions (not difference) whose main study is not later" in report


# ----------------------------------------------------------------------------------------------------------
# the error path itself: --debug, DIFFVQA_DEBUG, bugs, unknown commands


def test_debug_shows_the_traceback_of_a_user_error(world, tmp_path, capsys, monkeypatch):
    argv = _train(world, tmp_path, "train.checkpoint_every=0")
    code, _, err = run([*argv, "--debug"], capsys)
    assert code == 2 and "Traceback" in err and "UserError" in err
    assert err.strip().splitlines()[-1].startswith("diffvqa train: error: ")
    monkeypatch.setenv("DIFFVQA_DEBUG", "1")
    code, _, err = run(argv, capsys)
    assert code == 2 and "Traceback" in err


def test_a_bug_keeps_its_traceback(world, tmp_path, monkeypatch):
    """Only UserError is reported as one line: any other exception -- a ValueError from deep inside included --
    propagates (Python prints it with its traceback)."""
    import diffvqa.commands.train

    def broken(*args, **kwargs):
        raise ValueError("an internal invariant failed")

    monkeypatch.setattr(diffvqa.commands.train, "train", broken)
    with pytest.raises(ValueError, match="internal invariant"):
        cli_main([str(a) for a in _train(world, tmp_path)])


def test_unknown_command_is_one_line(capsys):
    code, _, err = run(["trian"], capsys)
    from diffvqa.cli import COMMANDS

    assert code == 2 and err.strip() == f"diffvqa: error: unknown command 'trian'; choose one of {', '.join(COMMANDS)}"
    assert "train" in COMMANDS and "evaluate" in COMMANDS


def test_every_subcommand_goes_through_the_one_error_path():
    """A subcommand added to cli.COMMANDS without ``@errors.command`` fails here."""
    import importlib

    from diffvqa.cli import COMMANDS

    for name, (module, function, _) in COMMANDS.items():
        main = getattr(importlib.import_module(module), function)
        assert getattr(main, "__wrapped__", None) is not None, f"diffvqa {name}: {module}.{function} lacks @command"
