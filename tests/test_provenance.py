"""What a run says about itself: run_info.json (training, resumed training, evaluation), each checkpoint's model
card, TensorBoard when asked for, `diffvqa config`, and the paper preset's refusal to train random weights."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import run_torchrun

from diffvqa.commands.train import check_pretrained, main
from diffvqa.config import load_config
from diffvqa.files.provenance import RUN_INFO_FILE, git_state, write_run_info
from diffvqa.model.checkpoint import read_pointer

TINY = ["--preset", "tiny", "--no-progress", "train.eval_samples=8"]


@pytest.fixture(scope="module")
def trained(phantom_cache, tmp_path_factory):
    """A 2-step tiny run (validated at step 2), then resumed to 3 steps."""
    run = tmp_path_factory.mktemp("prov") / "run"
    base = ["--data", str(phantom_cache), "--out", str(run)]
    assert main([*base, *TINY, "train.steps=3", "train.eval_every=2", "--stop-after", "2"]) == 0
    assert main([*base, "--resume", "--no-progress"]) == 0
    return run


def test_run_info_records_the_command_versions_and_each_start(trained, phantom_cache):
    info = json.loads((trained / RUN_INFO_FILE).read_text())
    assert info["command"] == [
        "diffvqa",
        "train",
        "--data",
        str(phantom_cache),
        "--out",
        str(trained),
        "--resume",
        "--no-progress",
    ]
    assert info["world_size"] == 1 and info["device"] == "cpu" and info["start_step"] == 2
    assert info["versions"]["torch"] == torch.__version__ and info["versions"]["transformers"]
    assert info["started"].endswith("+00:00") and info["diffvqa"]
    assert info["git"] == git_state()  # this checkout's commit (None where the code is not a git checkout)
    (first,) = info["earlier"]  # the first slice, kept when the run resumed
    assert first["start_step"] == 0 and "--stop-after" in first["command"] and "earlier" not in first


def test_run_info_names_the_commit_of_a_git_checkout(tmp_path):
    repository = tmp_path / "repo"
    repository.mkdir()
    git = ["git", "-C", str(repository), "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (repository / "a.txt").write_text("a\n")
    subprocess.run([*git, "add", "a.txt"], check=True)
    subprocess.run([*git, "commit", "-qm", "a"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    assert git_state(repository) == {"commit": head, "dirty": False}
    (repository / "a.txt").write_text("b\n")
    assert git_state(repository) == {"commit": head, "dirty": True}
    assert git_state(tmp_path) is None  # not a checkout


def test_an_unreadable_run_info_is_replaced_not_fatal(tmp_path):
    (tmp_path / RUN_INFO_FILE).write_text("{ torn")
    write_run_info(tmp_path, {"command": ["x"]})
    assert json.loads((tmp_path / RUN_INFO_FILE).read_text()) == {"command": ["x"]}


def test_every_checkpoint_has_a_model_card(trained):
    checkpoints = sorted((trained / "checkpoints").glob("step-*"))
    assert [c.name for c in checkpoints] == ["step-0000002", "step-0000003"]
    validated = (checkpoints[0] / "README.md").read_text()
    assert validated.startswith("# diffvqa checkpoint — step 2 of 3")
    assert "built-in longitudinal chest X-ray phantom" in validated and "Data use" not in validated  # no patient data
    assert "Validation at this step (two-pass, 8 questions): CIDEr-D" in validated  # tiny guides from step 0
    assert "Not for clinical use" in validated and "Initialisation: random" in validated
    last = (checkpoints[1] / "README.md").read_text()  # the last step is always validated; the best so far is named
    assert "Validation at this step (two-pass" in last and "Best validation CIDEr-D of the run so far" in last


def test_a_model_card_of_credentialed_data_carries_the_warning():
    from diffvqa.files.model_card import model_card

    card = model_card(load_config("tiny"), step=5, data={"cache": "/data/cache224", "phantom": False, "pairs": 10})
    assert "> **Data use.** Made from MIMIC-CXR data" in card and "PhysioNet" in card
    assert "Not validated at this step." in card and "Best validation" not in card
    assert "MIMIC-CXR-JPG images with Medical-Diff-VQA questions" in card and "(10 pairs)" in card


def test_tensorboard_when_asked_for(phantom_cache, tmp_path):
    pytest.importorskip("tensorboard")  # the optional extra; the dev install has it
    run = tmp_path / "run"
    assert main(["--data", str(phantom_cache), "--out", str(run), *TINY, "train.steps=2", "train.log_every=1",
                 "train.report_to=tensorboard"]) == 0  # fmt: skip
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("loss")] == [1, 2]
    assert "val/CIDEr" in events.Tags()["scalars"]
    plain = tmp_path / "plain"
    assert main(["--data", str(phantom_cache), "--out", str(plain), *TINY, "train.steps=1"]) == 0
    assert not (plain / "tensorboard").exists()  # report_to=none (the default) writes none


def test_tensorboard_missing_is_one_line(phantom_cache, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if the package were not installed
    run = tmp_path / "run"
    assert main(["--data", str(phantom_cache), "--out", str(run), *TINY, "train.report_to=tensorboard"]) == 2
    assert "pip install -e '.[tensorboard]'" in capsys.readouterr().err
    assert not run.exists()  # refused before anything was written


def test_paper_preset_refuses_random_weights(phantom_cache, tmp_path, capsys):
    config = load_config("paper")
    with pytest.raises(Exception, match="model.encoder_pretrained, model.decoder_pretrained, model.tokenizer_path"):
        check_pretrained(config)
    check_pretrained(load_config("paper", overrides=["model.require_pretrained=false"]))  # on purpose: allowed
    check_pretrained(load_config("small"))  # the other presets train from random weights by design
    run = tmp_path / "run"
    assert main(["--data", str(phantom_cache), "--out", str(run), "--preset", "paper", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "model.require_pretrained=false to train from random initialisation" in err
    assert not run.exists()


def test_config_command_prints_the_resolved_config(capsys):
    from diffvqa.cli import main as cli

    assert cli(["config", "--preset", "paper", "train.steps=7", "--format", "json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == load_config("paper", overrides=["train.steps=7"]).to_dict()
    assert printed["train"]["steps"] == 7 and printed["model"]["require_pretrained"] is True
    assert cli(["config", "--preset", "tiny"]) == 0
    assert "image_size: 64" in capsys.readouterr().out
    assert cli(["config", "train.stepz=1"]) == 2
    assert "unknown config key 'train.stepz'" in capsys.readouterr().err


def test_run_info_of_a_ddp_run_says_world_size_two(phantom_cache, tmp_path):
    run = tmp_path / "run"
    run_torchrun(["-m", "diffvqa.cli", "train", "--data", phantom_cache, "--out", run, *TINY, "train.steps=1",
                  "train.batch_size=2"])  # fmt: skip
    info = json.loads((run / RUN_INFO_FILE).read_text())
    assert info["world_size"] == 2 and read_pointer(run, "latest") is not None
