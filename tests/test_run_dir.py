"""The run directory's one owner, :class:`diffvqa.files.run.RunDir`: open, log, checkpoint, point, prune, resume --
the files and names a training run has always written, without a model (the training tests run it for real)."""

import ast
import json
import re
from pathlib import Path

import pytest
import torch

from diffvqa.config import load_config
from diffvqa.errors import MissingInputError, UserError
from diffvqa.files.run import BEST, LATEST, TRAINER_STATE_KEYS, RunDir, find_metrics_log, read_pointer

STATE = {"step": 0, "optimizer": {}, "scheduler": {}, "torch_rng": torch.get_rng_state(), "cuda_rng": [], "best": {}}


def _weights(directory: Path) -> None:
    """Stands in for the model checkpoint: what the training loop's writer puts into the directory."""
    directory.mkdir(parents=True)
    (directory / "model.safetensors").write_bytes(b"weights")


def test_open_saves_the_config_and_refuses_a_directory_that_holds_a_run(tmp_path):
    run = RunDir(tmp_path / "run")
    config = load_config("tiny")
    run.open(config)
    assert run.config_file == tmp_path / "run" / "config.json"
    assert run.saved_config().to_dict() == config.to_dict()
    assert run.latest is None and run.best is None
    run.checkpoint(1, _weights, {**STATE, "step": 1})
    with pytest.raises(UserError, match="already holds a training run; use --resume or another --out"):
        run.open(config)


def test_checkpoint_writes_step_n_whole_and_points_latest_at_it(tmp_path):
    run = RunDir(tmp_path)
    path = run.checkpoint(2, _weights, {**STATE, "step": 2})
    assert path == tmp_path / "checkpoints" / "step-0000002"
    assert sorted(p.name for p in path.iterdir()) == ["model.safetensors", "trainer_state.pt"]
    assert (tmp_path / LATEST).read_text() == "checkpoints/step-0000002\n"  # relative to the run
    assert run.latest == path == read_pointer(tmp_path, LATEST)
    assert not list((tmp_path / "checkpoints").glob(".tmp-step-*"))
    assert run.trainer_state(path)["step"] == 2
    # the same step again (after a resume) replaces the earlier checkpoint
    assert run.checkpoint(2, _weights, {**STATE, "step": 2, "best": {"step": 2}}) == path
    assert run.trainer_state(path)["best"] == {"step": 2}


def test_a_checkpoint_cut_short_leaves_latest_on_the_previous_one(tmp_path):
    run = RunDir(tmp_path)
    first = run.checkpoint(1, _weights, STATE)

    def broken(directory: Path) -> None:
        _weights(directory)
        raise OSError("cut short")

    with pytest.raises(OSError, match="cut short"):
        run.checkpoint(2, broken, STATE)
    assert run.latest == first and (tmp_path / "checkpoints" / ".tmp-step-0000002").is_dir()
    run.clean_after_interruption(1)
    assert not (tmp_path / "checkpoints" / ".tmp-step-0000002").exists()


def test_point_and_prune_keep_only_latest_and_best(tmp_path):
    run = RunDir(tmp_path)
    best = run.checkpoint(1, _weights, STATE)
    run.point(BEST, best)
    run.checkpoint(2, _weights, STATE)
    latest = run.checkpoint(3, _weights, STATE)
    run.prune()
    assert sorted((tmp_path / "checkpoints").iterdir()) == [best, latest]
    assert (tmp_path / BEST).read_text() == "checkpoints/step-0000001\n" and run.best == best


def test_resume_from_the_latest_complete_checkpoint(tmp_path):
    run = RunDir(tmp_path)
    with pytest.raises(MissingInputError, match=r"has no complete checkpoint \(no 'latest' pointer\)"):
        run.resume_from()
    assert "no checkpoint was complete yet" in run.resume_advice()
    path = run.checkpoint(40, _weights, STATE)
    assert run.resume_from() == path
    assert run.resume_advice().endswith(f"it continues from {path} (step 40); nothing before it is lost")


def test_a_trainer_state_that_cannot_resume_is_one_line(tmp_path):
    run = RunDir(tmp_path)
    path = run.checkpoint(1, _weights, {"step": 1})
    with pytest.raises(UserError, match=r"the trainer state lacks \['optimizer'"):
        run.trainer_state(path)
    (path / "trainer_state.pt").write_bytes(b"not a pickle")
    with pytest.raises(
        UserError, match=rf"(?s)cannot read the trainer state .*point {re.escape(str(tmp_path / LATEST))} at"
    ):
        run.trainer_state(path)
    assert set(TRAINER_STATE_KEYS) <= set(STATE)


def test_the_log_appends_records_and_a_resume_drops_what_came_after_its_step(tmp_path):
    run = RunDir(tmp_path)
    log = run.log()
    for step in (1, 2, 3):
        log.write({"step": step, "loss": 1.0 / step})
    log.close()
    RunDir(tmp_path).log(enabled=False).write({"step": 4})  # a rank that does not write
    assert find_metrics_log(tmp_path) == tmp_path / "metrics.jsonl"
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 4, "lo')  # a torn line: the kill came mid-write
    run.clean_after_interruption(2)
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]


def test_the_training_loop_never_joins_a_path_onto_the_run_directory():
    """``train`` hands the run directory to :class:`RunDir`: no ``run_dir / ...`` or ``run.path / ...`` in it."""
    source = Path(__file__).resolve().parents[1] / "src" / "diffvqa" / "commands" / "train.py"
    joins = [
        ast.unparse(node)
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8")))
        if isinstance(node, ast.BinOp)
        and isinstance(node.op, ast.Div)
        and ast.unparse(node.left) in ("run_dir", "run.path", "args.out", "run")
    ]
    assert joins == []
