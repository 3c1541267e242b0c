"""Gradient accumulation and the performance levers: each leaves the training results unchanged (within a stated
tolerance) on the devices where it is a no-op or a different kernel for the same arithmetic."""

from __future__ import annotations

import copy
import json
from datetime import timedelta

import pytest
import torch
from conftest import QUESTIONS, encode_padded
from safetensors.torch import load_file

from diffvqa.commands.train import StepBatchSampler, main, make_optimizer, set_backend_levers, train_one_step
from diffvqa.model.checkpoint import read_pointer
from diffvqa.saliency.gradcam import keyword_token_mask
from diffvqa.saliency.guided import SaliencyGuidedVQA
from diffvqa.saliency.lexicon import lexicon_keyword

TINY = ["--preset", "tiny", "--no-progress", "train.eval_samples=8"]


def test_sampler_accumulation_splits_the_same_indices():
    """grad_accum = k yields k micro-batches per step holding exactly the indices of one batch_size*k batch, split
    by rank the same way DDP splits a batch."""
    big = list(StepBatchSampler(size=50, batch_size=4, steps=9, seed=2))
    micro = list(StepBatchSampler(size=50, batch_size=2, steps=9, seed=2, accum=2))
    assert len(micro) == 2 * len(big) == 18
    assert [a + b for a, b in zip(micro[0::2], micro[1::2], strict=True)] == big
    ranks = [list(StepBatchSampler(50, 1, 9, 2, rank=r, world=2, accum=2)) for r in (0, 1)]
    assert [a + b for a, b in zip(*ranks, strict=True)] == micro  # each micro-batch is split across the ranks
    resumed = list(StepBatchSampler(size=50, batch_size=2, steps=9, seed=2, start_step=5, accum=2))
    assert resumed == micro[10:]
    with pytest.raises(ValueError, match="grad_accum=0"):
        StepBatchSampler(50, 2, 9, 2, accum=0)
    with pytest.raises(ValueError, match="2 x 13 micro-batches x 2 processes = 52"):
        StepBatchSampler(50, 2, 9, 2, world=2, accum=13)


def _batch(tokenizer, config, answers, seed):
    g = torch.Generator().manual_seed(seed)
    s, n = config.data.image_size, len(answers)
    questions = QUESTIONS[:n]
    q, qm = encode_padded(tokenizer, questions, config.data.max_question_tokens)
    a, am = encode_padded(tokenizer, answers, config.data.max_answer_tokens)
    batch = {"main": torch.rand(n, 1, s, s, generator=g), "ref": torch.rand(n, 1, s, s, generator=g),
             "question_ids": q, "question_mask": qm, "answer_ids": a, "answer_mask": am,
             "question": questions, "answer": list(answers)}  # fmt: skip
    keywords = [lexicon_keyword(x, y) for x, y in zip(batch["answer"], batch["question"], strict=True)]
    return batch, keyword_token_mask(tokenizer, batch["answer"], keywords, a)


def _rows(batch, mask, rows):
    picked = {k: (v[rows] if torch.is_tensor(v) else [v[i] for i in rows]) for k, v in batch.items()}
    return picked, mask[rows]


def _update(model, micro_batches, config):
    """Parameter change of one train_one_step with plain SGD (lr 1): the update is the accumulated gradient
    itself, so the comparison is not blurred by Adam's normalisation."""
    model = copy.deepcopy(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    guided = SaliencyGuidedVQA(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    record = train_one_step(guided, micro_batches, optimizer, scheduler, config, torch.device("cpu"))
    return {n: p.detach() - before[n] for n, p in model.named_parameters()}, record


@pytest.mark.parametrize("guided", [False, True])
def test_accumulated_micro_batches_give_the_update_of_one_big_batch(tiny_model, tiny_config, tokenizer, guided):
    """Two micro-batches of 2 == one batch of 4, to float32 rounding (rtol 1e-4), when nothing couples the samples:
    the encoder's BatchNorm in eval mode (running statistics), no dropout, and micro-batches holding equally many
    answer tokens (each micro-batch loss is a mean over its own tokens)."""
    tiny_config.train.grad_clip = 1e9  # clipping scales both the same way; keep the raw gradients visible
    model = tiny_model.train()
    model.encoder.eval()
    answers = ["pleural effusion", "yes", "edema", "left lung"]  # 3 answer tokens in each half, plus <eos>s
    batch, mask = _batch(tokenizer, tiny_config, answers, seed=1)
    assert mask.any() or not guided
    masks = (mask, mask[:2], mask[2:]) if guided else (None, None, None)
    whole, record_whole = _update(model, [(batch, masks[0])], tiny_config)
    halves = [(_rows(batch, mask, [0, 1])[0], masks[1]), (_rows(batch, mask, [2, 3])[0], masks[2])]
    accumulated, record_acc = _update(model, halves, tiny_config)
    assert ("loss/answer_masked" in record_whole) == guided
    assert record_acc["loss"] == pytest.approx(record_whole["loss"], rel=1e-5)
    scale = max(v.abs().max().item() for v in whole.values())
    assert scale > 0
    for name in whole:
        torch.testing.assert_close(accumulated[name], whole[name], rtol=1e-4, atol=1e-6 * scale, msg=name)


def _run(phantom_cache, run, *overrides):
    assert main(["--data", str(phantom_cache), "--out", str(run), *TINY, *overrides]) == 0
    return load_file(str(read_pointer(run, "latest") / "model.safetensors"))


def test_grad_accum_counts_optimiser_steps(phantom_cache, tmp_path):
    """train.steps and the log count optimiser steps; each step consumed grad_accum micro-batches."""
    run = tmp_path / "run"
    _run(phantom_cache, run, "train.steps=2", "train.batch_size=2", "train.grad_accum=3", "train.log_every=1")
    assert read_pointer(run, "latest").name == "step-0000002"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2]


def _relative_difference(a, b, init):
    """||(a - init) - (b - init)|| / ||a - init|| over all parameters: how far apart two trainings moved."""
    num = sum(((a[k] - b[k]).double() ** 2).sum() for k in a)
    den = sum(((a[k] - init[k]).double() ** 2).sum() for k in a)
    return float((num / den).sqrt())


def test_levers_leave_training_unchanged_on_cpu(phantom_cache, tmp_path, capsys):
    """channels-last, fused AdamW, TF32, cudnn.benchmark and pinned memory together: the parameters after 3 steps
    move the same way as without them (relative difference <= 1e-3; channels-last and the fused kernel reorder
    float32 sums), and each CUDA-only lever says once that it does nothing here."""
    common = ["train.steps=3", "train.eval_every=100", "train.checkpoint_every=100"]
    # lr 1e-30: no parameter moves in float32 (the config requires lr > 0): the initial weights
    init = _run(phantom_cache, tmp_path / "init", "train.steps=3", "train.lr=1e-30", "train.eval_every=100")
    plain = _run(phantom_cache, tmp_path / "plain", *common)
    capsys.readouterr()
    levers = _run(
        phantom_cache,
        tmp_path / "levers",
        *common,
        "train.channels_last=true",
        "train.fused_adamw=true",
        "train.tf32=true",
        "train.cudnn_benchmark=true",
        "data.pin_memory=true",
    )
    err = capsys.readouterr().err
    for key in ("train.tf32", "train.cudnn_benchmark", "data.pin_memory"):
        assert err.count(f"note: {key}=true has no effect on cpu") == 1, err
    assert "fused_adamw" not in err  # torch has a fused AdamW for CPU: the lever is in effect here
    assert plain.keys() == levers.keys()
    assert _relative_difference(plain, init, init) > 0.0
    assert _relative_difference(plain, levers, init) <= 1e-3


def test_fused_adamw_and_cuda_only_levers():
    from diffvqa.config import load_config

    config = load_config("tiny", overrides=["train.fused_adamw=true", "train.tf32=true"])
    optimizer, notes = make_optimizer(torch.nn.Linear(3, 2), config, torch.device("cpu"))
    assert optimizer.defaults["fused"] is True and notes == []
    assert set_backend_levers(config, torch.device("cpu")) == ["train.tf32=true has no effect on cpu (CUDA only)"]
    config = load_config("tiny", overrides=["train.fused_adamw=false"])
    assert not make_optimizer(torch.nn.Linear(3, 2), config, torch.device("cpu"))[0].defaults["fused"]


@pytest.mark.slow
def test_compile_leaves_training_unchanged(phantom_cache, tmp_path):
    """train.compile (the encoder's ResNet through torch.compile / inductor): same parameter movement as eager
    within 1e-3 relative, and a checkpoint with the plain parameter names."""
    common = ["train.steps=2", "train.eval_every=100", "train.checkpoint_every=100"]
    init = _run(phantom_cache, tmp_path / "init", "train.steps=2", "train.lr=1e-30", "train.eval_every=100")
    eager = _run(phantom_cache, tmp_path / "eager", *common)
    compiled = _run(phantom_cache, tmp_path / "compiled", *common, "train.compile=true")
    assert eager.keys() == compiled.keys()  # no _orig_mod. prefixes
    assert _relative_difference(eager, compiled, init) <= 1e-3


def test_resume_is_exact_with_channels_last_and_fused_adamw(phantom_cache, tmp_path):
    """The paper preset's levers survive --resume: optimiser state saved from channels-last parameters loads into
    them again (4 steps straight == 2 + resume + 2, identical parameters on CPU)."""
    common = ["train.steps=4", "train.checkpoint_every=2", "train.channels_last=true", "train.fused_adamw=true"]
    straight = _run(phantom_cache, tmp_path / "straight", *common)
    _run(phantom_cache, tmp_path / "resumed", *common, "--stop-after", "2")
    assert main(["--data", str(phantom_cache), "--out", str(tmp_path / "resumed"), "--resume", "--no-progress"]) == 0
    resumed = load_file(str(read_pointer(tmp_path / "resumed", "latest") / "model.safetensors"))
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_the_process_group_timeout_comes_from_the_config(monkeypatch, tmp_path):
    """train.dist_timeout_minutes reaches init_process_group: the other ranks wait at a barrier under that timeout
    while rank 0 validates and saves. The default (120 min) leaves room for a validation of the paper preset."""
    import torch.distributed as dist

    from diffvqa.commands import train as train_module
    from diffvqa.config import load_config

    seen = {}
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kwargs: seen.update(backend=backend, **kwargs))
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    threads = torch.get_num_threads()  # setup_distributed shares the cores between the ranks
    try:
        assert train_module.setup_distributed("cpu", 7.5) == (1, 2, torch.device("cpu"))
    finally:
        torch.set_num_threads(threads)
    assert seen == {"backend": "gloo", "timeout": timedelta(minutes=7.5)}

    class Reached(Exception):
        pass

    def reached(device, timeout_minutes):
        raise Reached(timeout_minutes)

    monkeypatch.setattr(train_module, "setup_distributed", reached)
    with pytest.raises(Reached) as error:  # train's first act: it passes the config's value
        train_module.train(load_config("tiny", overrides=["train.dist_timeout_minutes=45"]), tmp_path, run_dir=tmp_path)
    assert error.value.args == (45.0,)
    assert load_config("paper").train.dist_timeout_minutes == 120.0
