"""benchmarks/gpu.py at toy size on CPU: every code path the GPU run takes (batch sweep and its out-of-memory
exit, plain and guided steps, two-pass inference, the loader from a prepared cache), so the script cannot rot
before someone runs it on a GPU."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import load_benchmark


@pytest.fixture
def gpu_benchmark():
    return load_benchmark("gpu")


def _summary(capsys) -> tuple[str, dict]:
    out = capsys.readouterr().out
    return out, json.loads(out.strip().splitlines()[-1])


@pytest.mark.slow
def test_quick_run_on_cpu_reports_every_figure(gpu_benchmark, tmp_path, capsys):
    assert gpu_benchmark.main(["--device", "cpu", "--quick", "--workers", "1", "--workdir", str(tmp_path)]) == 0
    out, summary = _summary(capsys)
    assert summary["quick"] is True and summary["largest_batch"] == 2
    assert [row["batch"] for row in summary["sweep"]] == [1, 2] and all(row["fits"] for row in summary["sweep"])
    for key in ("plain_pairs_per_s", "guided_pairs_per_s", "two_pass_pairs_per_s", "loader_pairs_per_s_workers_0",
                "loader_pairs_per_s_workers_1"):  # fmt: skip
        assert summary[key] > 0, key
    assert summary["answer_tokens"] == 6  # <eos> suppressed: every answer has the fixed length
    assert summary["guided_peak_gb"] is None  # no GPU memory to report on CPU
    assert "note: train.tf32=true has no effect on cpu" in out and "guided/plain" in out
    levers = summary["levers"]
    assert summary["lever_batch"] == 1 and [row["lever"] for row in levers] == list(gpu_benchmark.LEVERS)
    assert all(row["fits"] and row["guided_pairs_per_s"] > 0 and row["peak_ratio"] is None for row in levers)
    assert levers[0]["pairs_per_s_ratio"] == 1.0 and "levers for smaller GPUs" in out


def test_the_sweep_stops_at_the_first_batch_that_does_not_fit(gpu_benchmark, monkeypatch):
    """An out-of-memory error ends the sweep and the largest batch before it is kept; other errors propagate."""
    calls = []

    class FakeTrainer:
        device = torch.device("cpu")
        config = type("C", (), {"data": type("D", (), {"image_size": 8})()})()
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)

        def step(self, batch, keyword_mask, guided):
            calls.append(len(batch["answer"]))
            if len(batch["answer"]) > 4:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return 0.5

    monkeypatch.setattr(gpu_benchmark, "make_batch", lambda tok, n, size, dev: ({"answer": [""] * n}, None))
    largest, rows = gpu_benchmark.batch_sweep(FakeTrainer(), None, [2, 4, 8, 16])
    assert largest == 4 and [r["fits"] for r in rows] == [True, True, False]
    assert rows[1]["guided_pairs_per_s"] == 8.0 and 16 not in calls

    def broken(self, batch, keyword_mask, guided):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(FakeTrainer, "step", broken)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        gpu_benchmark.batch_sweep(FakeTrainer(), None, [2])


def test_measuring_falls_back_one_batch_when_memory_runs_out_again(gpu_benchmark, monkeypatch):
    class FakeTrainer:
        device = torch.device("cpu")
        model = torch.nn.Linear(1, 1)
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)

    def steps(trainer, tokenizer, batch, repeats):
        if batch == 4:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return {"batch": batch}

    monkeypatch.setattr(gpu_benchmark, "interleaved_steps", steps)
    monkeypatch.setattr(gpu_benchmark, "inference", lambda trainer, tokenizer, batch, repeats: {"batch": batch})
    sweep = [{"batch": 2, "fits": True}, {"batch": 4, "fits": True}, {"batch": 8, "fits": False}]
    assert gpu_benchmark.measure_at_largest(FakeTrainer(), None, sweep, 1) == ({"batch": 2}, {"batch": 2}, 2)


def test_the_lever_comparison_sets_each_lever_beside_the_preset(gpu_benchmark, monkeypatch):
    """Each lever's config reaches its own trainer; a lever that runs out of memory is a row, not the end of the
    run; ratios are to the preset's (first) row."""
    from diffvqa.config import load_config

    built, peaks = [], iter([4.0, 8.0, 4.2, 2.0])

    class FakeTrainer:
        def __init__(self, config, tokenizer, device):
            built.append((config.train.autocast, config.train.grad_checkpointing))
            self.config = config

        def step(self, batch, keyword_mask, guided):
            if self.config.train.autocast == "none":
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return 0.5 if self.config.train.grad_checkpointing else 0.25

    monkeypatch.setattr(gpu_benchmark, "Trainer", FakeTrainer)
    monkeypatch.setattr(gpu_benchmark, "make_batch", lambda tok, n, size, dev: ({"answer": [""] * n}, None))
    monkeypatch.setattr(gpu_benchmark, "peak_gb", lambda device: next(peaks))
    rows = gpu_benchmark.lever_comparison(load_config("paper"), None, 4, 3, torch.device("cpu"))
    assert built == [("bf16", False), ("none", False), ("fp16", False), ("bf16", True), ("fp16", True)]
    by_name = {row["lever"]: row for row in rows}
    assert by_name["float32"] == {"lever": "float32", "fits": False}
    assert by_name["preset (bf16)"]["pairs_per_s_ratio"] == 1.0 and by_name["preset (bf16)"]["peak_ratio"] == 1.0
    assert by_name["fp16 + scaler"] == {"lever": "fp16 + scaler", "fits": True, "guided_pairs_per_s": 16.0,
                                        "peak_gb": 8.0, "pairs_per_s_ratio": 1.0, "peak_ratio": 2.0}  # fmt: skip
    assert by_name["fp16 + checkpointing"]["pairs_per_s_ratio"] == 0.5
    assert by_name["bf16 + checkpointing"]["peak_ratio"] == 1.05
