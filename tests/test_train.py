import json

import pytest
import torch
from conftest import run_torchrun
from safetensors.torch import load_file

from diffvqa.commands.train import StepBatchSampler, learning_rate_factor, main
from diffvqa.model.checkpoint import load_checkpoint, read_pointer

TINY = ["--preset", "tiny", "--no-progress", "train.eval_samples=8"]


def test_main_trains_two_steps_and_writes_a_loadable_checkpoint(phantom_cache, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["--data", str(phantom_cache), "--out", str(run), *TINY, "train.steps=2"]) == 0
    latest = read_pointer(run, "latest")
    assert latest.name == "step-0000002" and (latest / "trainer_state.pt").is_file()
    assert read_pointer(run, "best") == latest  # validated at the last step
    model = load_checkpoint(run)
    assert model.config.train.steps == 2
    log = (run / "metrics.jsonl").read_text().splitlines()
    assert any('"val/CIDEr"' in line for line in log) and any('"loss/answer_masked"' in line for line in log)
    # a second run into the same directory is refused, not overwritten
    assert main(["--data", str(phantom_cache), "--out", str(run), *TINY, "train.steps=2"]) == 2
    assert "already holds a training run" in capsys.readouterr().err


def _params(run):
    return load_file(str(read_pointer(run, "latest") / "model.safetensors"))


def test_resume_is_exact(phantom_cache, tmp_path):
    """4 steps straight == 2 steps, stop, --resume, 2 more (identical parameters on CPU)."""
    common = [*TINY, "train.steps=4", "train.checkpoint_every=2", "model.decoder_dropout=0.1"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(["--data", str(phantom_cache), "--out", str(straight), *common]) == 0
    assert main(["--data", str(phantom_cache), "--out", str(resumed), *common, "--stop-after", "2"]) == 0
    assert read_pointer(resumed, "latest").name == "step-0000002"
    halfway = _params(resumed)
    # what a SIGKILL after step 3 leaves: its log record, a torn line, and saves that never finished
    with (resumed / "metrics.jsonl").open("a") as log:
        log.write(json.dumps({"step": 3, "loss": 9.0}) + '\n{"step": 3, "lo')
    for step in (3, 9):  # step 9 is past the run's end: nothing else would ever remove it
        (resumed / "checkpoints" / f".tmp-step-{step:07d}").mkdir()
    assert main(["--data", str(phantom_cache), "--out", str(resumed), "--resume", "--no-progress"]) == 0
    a, b = _params(straight), _params(resumed)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], halfway[k]) for k in a)  # steps 3-4 really trained
    steps = [
        [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
        for run in (straight, resumed)
    ]
    assert steps[1] == steps[0]  # each step logged once, in order, as in the uninterrupted run
    assert not list((resumed / "checkpoints").glob(".tmp-step-*"))


def test_saliency_start_step(phantom_cache, tmp_path):
    """Steps before saliency.start_step train single-pass; the guided objective takes over from it."""
    run = tmp_path / "run"
    assert main(["--data", str(phantom_cache), "--out", str(run), *TINY, "train.steps=3", "train.log_every=1",
                 "train.eval_every=1", "saliency.start_step=2"]) == 0  # fmt: skip
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    guided = {r["step"]: "loss/answer_masked" in r for r in records if "loss" in r}
    assert guided == {1: False, 2: False, 3: True}
    # validation is single-pass while the masked pass is untrained, and only a two-pass score can make the best
    single = {r["step"]: r["val/single_pass"] for r in records if "val/CIDEr" in r}
    assert single == {1: True, 2: True, 3: False}
    assert read_pointer(run, "best").name == "step-0000003"


def test_resume_refuses_a_changed_config(phantom_cache, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["--data", str(phantom_cache), "--out", str(run), *TINY, "train.steps=2"]) == 0
    assert main(["--data", str(phantom_cache), "--out", str(run), "--resume", "train.lr=1.0"]) == 2
    assert "train.lr" in capsys.readouterr().err


def test_truth_keywords_and_ablation_keys(phantom_cache, tmp_path):
    run = tmp_path / "run"
    argv = [
        "--data",
        str(phantom_cache),
        "--out",
        str(run),
        *TINY,
        "train.steps=1",
        "saliency.keyword_source=truth",
        "saliency.mask=mean",
        "model.align=false",
        "model.align_reg_weights=[0, 0, 0]",
    ]
    assert main(argv) == 0
    model = load_checkpoint(run)
    assert model.aligner is None
    assert (model.config.saliency.keyword_source, model.config.saliency.mask) == ("truth", "mean")
    assert model.config.model.align_reg_weights == [0, 0, 0]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("loss/answer_masked" in r for r in records)  # the guided step ran on ground-truth keywords


def test_batch_keywords_from_truth_or_the_answer():
    from diffvqa.commands.train import batch_keywords
    from diffvqa.saliency.lexicon import lexicon_keyword

    batch = {
        "answer": ["the main image has an additional finding of edema than the reference image. "],
        "question": ["what has changed compared to the reference image?"],
        "truth": {"keyword": ["pleural effusion"]},
    }
    assert batch_keywords(batch, "truth", lexicon_keyword) == ["pleural effusion"]
    assert batch_keywords(batch, "lexicon", lexicon_keyword) == ["edema"]
    with pytest.raises(ValueError, match="ground-truth keywords"):
        batch_keywords({**batch, "truth": None}, "truth", lexicon_keyword)


def test_bad_data_directory(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--data", str(tmp_path), "--out", str(tmp_path / "run")])
    assert exit_.value.code == 2 and "not a prepared cache" in capsys.readouterr().err


def test_sampler_is_a_function_of_seed_and_step():
    full = list(StepBatchSampler(size=50, batch_size=4, steps=30, seed=1))
    tail = list(StepBatchSampler(size=50, batch_size=4, steps=30, seed=1, start_step=17))
    assert full[17:] == tail
    epoch = [i for batch in full[:12] for i in batch]  # 12 batches of 4 per epoch (2 dropped)
    assert len(set(epoch)) == 48
    ranks = [list(StepBatchSampler(50, 2, 30, 1, rank=r, world=2)) for r in (0, 1)]
    assert [a + b for a, b in zip(*ranks, strict=True)] == full  # the ranks split each global batch


def test_learning_rate_schedule():
    assert learning_rate_factor(0, 10, 100) == pytest.approx(0.1)
    assert learning_rate_factor(9, 10, 100) == pytest.approx(1.0)
    assert learning_rate_factor(55, 10, 100) == pytest.approx(0.5)
    assert learning_rate_factor(100, 10, 100) == pytest.approx(0.0)


@pytest.mark.slow
def test_torchrun_two_processes_through_the_cli(phantom_cache, tmp_path):
    run = tmp_path / "run"
    result = run_torchrun(
        [
            "-m",
            "diffvqa.cli",
            "train",
            "--data",
            phantom_cache,
            "--out",
            run,
            *TINY,
            "train.steps=2",
            "train.batch_size=2",
            "train.log_every=1",
            "saliency.start_step=1",  # one single-pass step, then one guided step: DDP runs both kinds
            "train.grad_accum=2",  # DDP's no_sync on the first micro-batch of each step, bucket views on
        ]
    )
    assert read_pointer(run, "latest").name == "step-0000002"
    assert result.stdout.count("run:") == 1  # only rank 0 reports and writes
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [("loss/answer_masked" in r) for r in records if "loss" in r] == [False, True]
    load_checkpoint(run)
