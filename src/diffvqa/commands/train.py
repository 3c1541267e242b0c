"""Training: ``diffvqa train --data CACHE --out RUN [--preset small] [--config FILE] [key=value ...] [--resume]``.

Boring on purpose (torchvision references): AdamW, linear warm-up + cosine decay, gradient clipping, optional
bf16 or fp16 autocast (:mod:`diffvqa.precision`) and activation checkpointing, the saliency-guided objective by
default, validation CIDEr selecting the best checkpoint, atomic checkpoints and exact resume. Runs unchanged under
``torchrun --nproc_per_node=K`` (DDP; only rank 0 writes).

The run directory (its layout, pointers, metrics log and checkpoints: :class:`diffvqa.files.run.RunDir`, which the
loop calls) gets a checkpoint at every validation and every ``train.checkpoint_every`` steps, each written whole
before ``latest`` points at it. Data order is a pure function of (seed, step), so ``--resume`` continues with
exactly the batches, RNG states, optimiser and scheduler an uninterrupted run would have had.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
import warnings
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from diffvqa.commands.evaluate import evenly_spaced, predict
from diffvqa.config import FROM_SCRATCH, Config, apply_overrides, load_config
from diffvqa.data.cache_reader import ImageCache
from diffvqa.data.dataset import Collate, PairQADataset, texts
from diffvqa.data.text import Tokenizer, build_tokenizer
from diffvqa.device import AUTO, resolve_device
from diffvqa.errors import ArgumentParser, UserError, check_output_dir, command
from diffvqa.files.disk import full_disk_said
from diffvqa.files.lock import one_writer
from diffvqa.files.model_card import cache_summary, write_model_card
from diffvqa.files.provenance import run_info, write_run_info
from diffvqa.files.run import BEST, PARTIAL_CHECKPOINTS, RunDir, tensorboard_writer
from diffvqa.model.checkpoint import WEIGHTS_FILE, load_weights, save_checkpoint
from diffvqa.model.vqa import DiffVQA
from diffvqa.precision import autocast, grad_scaler, precision_notes
from diffvqa.saliency.gradcam import keyword_label_indices, keyword_token_mask
from diffvqa.saliency.guided import KeywordFn, SaliencyGuidedVQA
from diffvqa.saliency.keywords import answer_keyword_fn, finish_keywords


# -- distributed -------------------------------------------------------------------------------------------
def setup_distributed(device: str, timeout_minutes: float) -> tuple[int, int, torch.device]:
    """(rank, world size, device); initialises the process group when launched by torchrun, with a timeout of
    ``timeout_minutes`` (``train.dist_timeout_minutes``: the other ranks wait at a barrier while rank 0 validates)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if device == AUTO:
        device = resolve_device(device).type
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=timedelta(minutes=timeout_minutes))
    if device == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    if world > 1:  # share the CPU cores between the processes
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    return rank, world, torch.device(device)


# -- performance levers -----------------------------------------------------------------------------------
def set_backend_levers(config: Config, device: torch.device) -> list[str]:
    """Set the process-wide switches ``train.tf32`` and ``train.cudnn_benchmark`` ask for; returns one note per
    lever that has no effect on ``device`` (printed once by the caller)."""
    t, notes = config.train, []
    for key, wanted in (("tf32", t.tf32), ("cudnn_benchmark", t.cudnn_benchmark)):
        if wanted and device.type != "cuda":
            notes.append(f"train.{key}=true has no effect on {device.type} (CUDA only)")
    if device.type == "cuda":
        # float32 matmuls/convolutions on TF32 tensor cores (bf16 autocast regions are unaffected)
        torch.backends.cuda.matmul.allow_tf32 = t.tf32
        torch.backends.cudnn.allow_tf32 = t.tf32
        torch.backends.cudnn.benchmark = t.cudnn_benchmark
    if config.data.pin_memory and device.type != "cuda":
        notes.append(f"data.pin_memory=true has no effect on {device.type} (CUDA only)")
    return notes


def apply_model_levers(model: DiffVQA, config: Config) -> None:
    """``train.channels_last``, ``train.grad_checkpointing`` and ``train.compile`` on a model already on its device.
    Each keeps parameter names and values, so checkpoints are unchanged (``Module.compile`` compiles in place: no
    ``_orig_mod.`` keys)."""
    model.set_grad_checkpointing(config.train.grad_checkpointing)
    if config.train.channels_last:
        model.encoder.to(memory_format=torch.channels_last)
    if config.train.compile:
        model.encoder.resnet.compile()


def parameter_groups(
    module: nn.Module, lr: float, weight_decay: float, encoder_lr_scale: float = 1.0
) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on matrices only (not biases, norms, or the token/position embeddings); the
    encoder's parameters at ``lr * encoder_lr_scale`` (0: frozen, ``requires_grad`` turned off). Parameters already
    frozen are left out. ``diffvqa train`` and ``diffvqa pretrain`` both build their optimiser from these."""
    groups: dict[tuple[bool, bool], list] = {(d, e): [] for d in (True, False) for e in (True, False)}
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        decays = p.ndim >= 2 and "wte" not in name and "wpe" not in name
        # a group of its own only when its rate differs: scale 1 keeps the two groups (and the checkpoints) as before
        in_encoder = encoder_lr_scale != 1.0 and ".encoder.resnet." in f".{name}"
        if in_encoder and encoder_lr_scale == 0:
            p.requires_grad_(False)  # frozen: no gradient is computed for it at all
            continue
        groups[(decays, in_encoder)].append(p)
    return [
        {
            "params": params,
            "weight_decay": weight_decay if decays else 0.0,
            "lr": lr * (encoder_lr_scale if in_encoder else 1.0),
        }  # fmt: skip
        for (decays, in_encoder), params in groups.items()
        if params
    ]


def make_optimizer(module: nn.Module, config: Config, device: torch.device) -> tuple[torch.optim.Optimizer, list[str]]:
    """AdamW over :func:`parameter_groups` at ``train.lr``, ``train.weight_decay`` and ``train.encoder_lr_scale``;
    fused when ``train.fused_adamw`` and the device has the kernel. Returns the optimiser and any note."""
    t = config.train
    groups = parameter_groups(module, t.lr, t.weight_decay, t.encoder_lr_scale)
    if config.train.fused_adamw:
        try:
            return torch.optim.AdamW(groups, fused=True), []
        except RuntimeError as exc:  # no fused kernel for this device type
            note = f"train.fused_adamw=true has no effect on {device.type} ({exc})"
            return torch.optim.AdamW(groups), [note]
    return torch.optim.AdamW(groups), []


# -- data order --------------------------------------------------------------------------------------------
class StepBatchSampler(torch.utils.data.Sampler):
    """Micro-batches of indices for steps ``start_step .. steps-1``; a pure function of (seed, step).

    Each epoch is a permutation seeded by (seed, epoch); global batches of ``batch_size * accum * world`` indices
    are taken in order (the incomplete tail of an epoch is dropped). A step's global batch is ``accum``
    micro-batches of ``batch_size * world`` consecutive indices, of which each rank takes its contiguous slice;
    so ``accum = 1`` is one batch per step, and ``accum = k`` splits the same indices as ``batch_size * k``.
    """

    def __init__(
        self,
        size: int,
        batch_size: int,
        steps: int,
        seed: int,
        start_step: int = 0,
        rank: int = 0,
        world: int = 1,
        accum: int = 1,
    ):
        if accum < 1:
            raise UserError(f"train.grad_accum={accum}: expected an integer >= 1")
        self.global_batch = batch_size * world * accum
        if size < self.global_batch:
            raise UserError(
                f"the training split has {size} questions, fewer than one optimiser step's batch "
                f"({batch_size} x {accum} micro-batches x {world} processes = {self.global_batch})"
            )
        self.size, self.batch_size, self.steps, self.seed = size, batch_size, steps, seed
        self.start_step, self.rank, self.world, self.accum = start_step, rank, world, accum
        self.per_epoch = size // self.global_batch

    def _permutation(self, epoch: int) -> torch.Tensor:
        return torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch))

    def __iter__(self) -> Iterator[list[int]]:
        epoch, permutation = -1, None
        for step in range(self.start_step, self.steps):
            if step // self.per_epoch != epoch:
                epoch = step // self.per_epoch
                permutation = self._permutation(epoch)
            for micro in range(self.accum):
                start = ((step % self.per_epoch) * self.accum + micro) * self.batch_size * self.world
                start += self.rank * self.batch_size
                yield permutation[start : start + self.batch_size].tolist()

    def __len__(self) -> int:
        return max(0, self.steps - self.start_step) * self.accum


def learning_rate_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up to 1 over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


# -- keywords ---------------------------------------------------------------------------------------------
def batch_keywords(batch: dict[str, Any], source: str, keyword_fn: KeywordFn) -> list[str]:
    """Training keywords: from the ground-truth answer (lexicon/LLM) or the data's own (``truth``)."""
    if source == "truth":
        if batch.get("truth") is None:
            raise UserError("saliency.keyword_source=truth needs ground-truth keywords (a phantom cache)")
        return list(batch["truth"]["keyword"])
    return [keyword_fn(a, q) for a, q in zip(batch["answer"], batch["question"], strict=True)]


# -- validation --------------------------------------------------------------------------------------------
def validate(
    model: DiffVQA,
    dataset: PairQADataset,
    *,
    keyword_fn: KeywordFn,
    samples: int,
    batch_size: int,
    device: torch.device,
    single_pass: bool = False,
) -> dict[str, float]:
    """CIDEr-D of the final (two-pass) answers on a fixed, evenly spaced subset of the validation split; on caches
    with ground truth also the pointing game and the registration error ratio (their curves over training)."""
    from diffvqa.metrics import cider_score, normalize_answer

    subset = torch.utils.data.Subset(dataset, evenly_spaced(len(dataset), samples))
    predictions = predict(
        model,
        subset,
        keyword_fn=keyword_fn,
        batch_size=batch_size,
        single_pass=single_pass,
        device=device,
        examples=0,
        progress=False,
        keyword_conditioning=False,
    )
    records, mechanisms = predictions.records, predictions.mechanisms
    model.train()
    predictions, references = [r["final"] for r in records], [r["answer"] for r in records]
    exact = sum(normalize_answer(p) == normalize_answer(r) for p, r in zip(predictions, references, strict=True))
    scores = {"CIDEr": cider_score(predictions, references), "exact_match": exact / len(records), "n": len(records)}
    for key in ("pointing_game", "registration_error_ratio"):
        if key in mechanisms:
            scores[key] = mechanisms[key]
    return scores


# -- checkpoints -------------------------------------------------------------------------------------------
def trainer_state(optimizer, scheduler, step: int, best: dict | None, scaler=None) -> dict[str, Any]:
    """What a checkpoint keeps beside the weights so that ``--resume`` continues exactly
    (:data:`diffvqa.files.run.TRAINER_STATE_KEYS`, plus the fp16 gradient scaler's state)."""
    return {
        "step": step,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "best": best or {},
        "grad_scaler": scaler.state_dict() if scaler is not None else {},  # {} unless train.autocast=fp16
    }


def check_pretrained(config: Config, keys: tuple[str, ...] = ("encoder_pretrained", "decoder_pretrained")) -> None:
    """``model.require_pretrained`` (the paper preset): stop before a GPU-week is spent on random weights. ``keys``:
    the pretrained paths the command uses (``pretrain`` trains the encoder alone)."""
    m = config.model
    missing = [key for key in keys if not getattr(m, key)]
    if "decoder_pretrained" in keys and m.tokenizer == "gpt2" and not m.tokenizer_path:
        missing.append("tokenizer_path")
    if m.require_pretrained and missing:
        raise UserError(
            "this config trains from pretrained weights (model.require_pretrained=true, as --preset paper does) but "
            + ", ".join(f"model.{k}" for k in missing)
            + " is empty: point it at a local save_pretrained directory (README, Real data, step 2), or pass "
            "model.require_pretrained=false to train from random initialisation on purpose"
        )


# -- the loop ----------------------------------------------------------------------------------------------
def _to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def _finding_targets(batch: dict[str, Any], config: Config) -> dict[str, Any]:
    """The auxiliary finding loss's inputs for the training forward: targets and mask (2B, K), main images first."""
    if config.train.finding_loss_weight == 0 or "finding_targets" not in batch:
        return {}
    targets, mask = batch["finding_targets"], batch["finding_mask"]  # (B, 2, K)
    return {
        "finding_targets": torch.cat([targets[:, 0], targets[:, 1]]),
        "finding_mask": torch.cat([mask[:, 0], mask[:, 1]]),
        "finding_weight": config.train.finding_loss_weight,
    }


def train_one_step(
    guided: nn.Module,
    micro_batches: list[tuple[dict[str, Any], torch.Tensor | None]],
    optimizer,
    scheduler,
    config: Config,
    device: torch.device,
    scaler: torch.amp.GradScaler | None = None,
) -> dict[str, float]:
    """One optimiser step over ``train.grad_accum`` micro-batches ``(batch, keyword_mask)``: per micro-batch one
    forward of the top-level module and one backward of its loss / k, then clip and step. ``keyword_mask=None``
    runs a micro-batch single-pass (a step before ``saliency.start_step``, or the saliency loop off). ``scaler``
    (:func:`diffvqa.precision.grad_scaler`, required for ``train.autocast=fp16``) scales each backward; the
    gradients are unscaled before clipping, and a step with non-finite gradients is skipped by the scaler.

    The mean of k micro-batch losses equals one big batch's loss when the micro-batches hold equally many answer
    tokens (each loss is a mean over its own tokens) and nothing couples samples (BatchNorm in train mode does);
    otherwise the update differs slightly, as it does between DDP ranks."""
    if scaler is None:
        if config.train.autocast == "fp16":
            raise ValueError("train.autocast=fp16 needs a gradient scaler: pass diffvqa.precision.grad_scaler(...)")
        scaler = torch.amp.GradScaler(device.type, enabled=False)  # every call passes through
    optimizer.zero_grad(set_to_none=True)
    k = len(micro_batches)
    sums: dict[str, float] = {}
    for i, (batch, keyword_mask) in enumerate(micro_batches):
        is_guided = keyword_mask is not None
        if keyword_mask is None:  # the module takes a mask either way; a single-pass step never reads it
            keyword_mask = torch.zeros_like(batch["answer_ids"], dtype=torch.bool)
        # DDP all-reduces during backward; the first k-1 micro-batches only accumulate locally
        sync = i == k - 1 or not isinstance(guided, nn.parallel.DistributedDataParallel)
        with contextlib.nullcontext() if sync else guided.no_sync():
            with autocast(config, device):
                out = guided(batch["main"], batch["ref"], batch["question_ids"], batch["question_mask"],
                             batch["answer_ids"], batch["answer_mask"], keyword_mask, guided=is_guided,
                             main_box=batch.get("main_box"), ref_box=batch.get("ref_box"),
                             keyword_labels=batch.get("keyword_labels"), **_finding_targets(batch, config))  # fmt: skip
            if not torch.isfinite(out.loss):
                terms = {name: v.item() for name, v in out.losses.items()}
                raise FloatingPointError(f"non-finite loss {out.loss.item()} (terms: {terms})")
            scaler.scale(out.loss / k).backward()
        for name, value in {"loss": out.loss, **{f"loss/{n}": v for n, v in out.losses.items()}}.items():
            sums[name] = sums.get(name, 0.0) + value.item() / k
    scaler.unscale_(optimizer)  # clip the true gradients
    grad_norm = nn.utils.clip_grad_norm_(guided.parameters(), config.train.grad_clip)
    scaler.step(optimizer)  # skipped when a gradient is not finite (fp16 only)
    scaler.update()
    with warnings.catch_warnings():
        # After a step the scaler skipped, torch warns that the scheduler stepped before the optimizer. The schedule
        # counts steps, skipped ones too, so this is intended.
        warnings.filterwarnings("ignore", r"Detected call of `lr_scheduler\.step\(\)` before", UserWarning)
        scheduler.step()
    norm = float(grad_norm)
    # An fp16 step whose gradients overflowed was skipped: its norm is not a number JSON can hold (metrics.jsonl)
    record = {**sums, "grad_norm": norm if math.isfinite(norm) else None, "lr": scheduler.get_last_lr()[0]}
    if not math.isfinite(norm):
        record["step_skipped"] = True  # the scaler skipped the update and lowered its scale
    if scaler.is_enabled():
        record["grad_scale"] = scaler.get_scale()  # the scale the next step uses
    return record


def _build_model(config: Config, data: Path) -> DiffVQA:
    tokenizer = build_tokenizer(config.model.tokenizer, texts(data, "train"), config.model.tokenizer_path)
    return DiffVQA(config, tokenizer)


# Keys a resumed run may change: extending the run; the process group's timeout (a resumed job that timed out at a
# barrier must be able to raise it); activation checkpointing (same numbers, less memory: a run that ran out of
# memory resumes with it); where the curves are reported.
RESUME_MAY_CHANGE = {
    ("train", "steps"),
    ("train", "dist_timeout_minutes"),
    ("train", "grad_checkpointing"),
    ("train", "report_to"),
}


@one_writer("run_dir", "diffvqa train")
@full_disk_said("run_dir", advice=lambda run_dir: RunDir(run_dir).resume_advice(), partial=PARTIAL_CHECKPOINTS)
def train(
    config: Config,
    data: Path,
    *,
    run_dir: Path,
    resume: bool = False,
    stop_after: int | None = None,
    device: str = "auto",
    progress: bool = True,
    command: list[str] | None = None,
) -> Path:
    """Train and return the run directory. ``stop_after`` ends this invocation after that many steps (for
    time-sliced jobs; ``--resume`` continues). ``command``: the command line run_info.json records (default:
    this process's)."""
    check_pretrained(config)
    if config.model.finding_head and not config.model.encoder_pretrained and not resume:
        raise UserError(
            f"model.finding_head={config.model.finding_head} comes from the pretrained encoder, but "
            "model.encoder_pretrained is empty: pretrain one first (diffvqa pretrain --data CACHE --out PRE) and pass "
            "model.encoder_pretrained=PRE/encoder, or train from random weights with " + " ".join(FROM_SCRATCH)
        )
    if config.train.report_to == "tensorboard":
        tensorboard_writer()  # missing package: fail before anything is built or written
    rank, world, dev = setup_distributed(device, config.train.dist_timeout_minutes)
    is_main = rank == 0
    run_dir = Path(run_dir)
    run = RunDir(run_dir)
    cache = ImageCache(data)  # checked before anything is built or written
    cache.check_size(config.data.image_size)
    if (
        config.train.finding_loss_weight > 0
    ):  # the auxiliary loss's labels: missing ones said before anything is written
        cache.labels().values(config.model.finding_head)
    if config.saliency.enabled and config.saliency.keyword_source == "truth" and not cache.has_truth:
        raise UserError(
            f"{data}: saliency.keyword_source=truth needs ground-truth keywords, which only a phantom cache has; "
            "use lexicon or llm"
        )
    if resume:
        latest = run.resume_from()
        run.check_resume_config(config, RESUME_MAY_CHANGE)
        if is_main:  # the next checkpoint will take as much room as this one: refuse now, not after an hour
            run.check_room(latest, "the next checkpoint")
    elif is_main:
        run.open(config)
        if config.saliency.enabled and config.saliency.start_step >= config.train.steps:
            print(
                f"diffvqa train: warning: saliency.start_step={config.saliency.start_step} >= train.steps="
                f"{config.train.steps}: no step will use the saliency loop",
                file=sys.stderr,
            )

    torch.manual_seed(config.train.seed)
    if resume:
        model = DiffVQA(config, Tokenizer.load(latest, config.model.tokenizer), load_pretrained=False)
        load_weights(model, latest / WEIGHTS_FILE)
    else:
        model = _build_model(config, data)
    notes = set_backend_levers(config, dev) + precision_notes(config, dev)
    if not resume and not config.model.encoder_pretrained and not config.model.blind:
        # the presets name no encoder directory (it is the user's pretraining run), so say which recipe this is
        notes.append(
            "the encoder starts from random weights (model.encoder_pretrained is empty); the measured recipe "
            "pretrains it first: diffvqa pretrain --data CACHE --out PRE, then model.encoder_pretrained=PRE/encoder"
        )
    if model.finding_head is not None:  # trained only by the auxiliary loss; else a fixed map (cam_source)
        model.finding_head.requires_grad_(config.train.finding_loss_weight > 0)
    model.to(dev).train()
    apply_model_levers(model, config)
    guided: nn.Module = SaliencyGuidedVQA(model)
    if world > 1:
        guided = nn.parallel.DistributedDataParallel(
            guided,
            device_ids=[dev.index] if dev.type == "cuda" else None,
            gradient_as_bucket_view=config.train.ddp_bucket_view,
        )
    optimizer, optimizer_notes = make_optimizer(guided, config, dev)
    if is_main:
        for note in notes + optimizer_notes:
            print(f"diffvqa train: note: {note}", file=sys.stderr)
    t = config.train
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: learning_rate_factor(s, t.warmup_steps, t.steps))
    start_step, best = 0, {}
    scaler = grad_scaler(config, dev)
    if resume:
        state = run.trainer_state(latest)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"]:
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        start_step, best = state["step"], state["best"]
        if state.get("grad_scaler"):  # an fp16 run's scale and growth tracker (absent before this key existed)
            scaler.load_state_dict(state["grad_scaler"])
    if is_main:
        run.clean_after_interruption(start_step)
        info = run_info(world_size=world, device=str(dev), argv=command)
        write_run_info(run_dir, {**info, "start_step": start_step})

    finding_labels = (config.model.finding_head, config.pretrain.uncertain) if t.finding_loss_weight > 0 else None
    train_set = PairQADataset(data, "train", config.data.question_types, labels=finding_labels)
    val_set = PairQADataset(data, "val", config.data.question_types) if is_main else None
    collate = Collate(model.tokenizer, config.data.max_question_tokens, config.data.max_answer_tokens)
    sampler = StepBatchSampler(len(train_set), t.batch_size, t.steps, t.seed, start_step, rank, world, t.grad_accum)
    loader = torch.utils.data.DataLoader(
        train_set,
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=config.data.num_workers,
        pin_memory=config.data.pin_memory and dev.type == "cuda",
        generator=torch.Generator().manual_seed(t.seed),
    )
    keyword_fn = answer_keyword_fn(config.saliency, run_dir)
    data_summary = cache_summary(cache)  # for each checkpoint's model card
    log = run.log(enabled=is_main, report_to=t.report_to)
    end_step = t.steps if stop_after is None else min(t.steps, start_step + stop_after)
    bar = None
    if is_main and progress:
        from tqdm import tqdm

        bar = tqdm(total=t.steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)
    step, busy, pairs = start_step, 0.0, 0  # pairs/s counts training time only (not validation or saving)
    micro_batches, tic = [], time.perf_counter()
    for batch in loader:
        if step >= end_step:
            break
        if not micro_batches:
            tic = time.perf_counter()
        keyword_mask = None  # keywords only for the steps that use them (an LLM source costs a request each)
        if config.saliency.enabled and step >= config.saliency.start_step:
            keywords = batch_keywords(batch, config.saliency.keyword_source, keyword_fn)
            keyword_mask = keyword_token_mask(model.tokenizer, batch["answer"], keywords, batch["answer_ids"])
            keyword_mask = keyword_mask.to(dev, non_blocking=True)
            if config.saliency.cam_source == "classifier":
                batch["keyword_labels"] = keyword_label_indices(model, keywords)
        micro_batches.append((_to(batch, dev), keyword_mask))
        if len(micro_batches) < t.grad_accum:
            continue
        record = train_one_step(guided, micro_batches, optimizer, scheduler, config, dev, scaler)
        step += 1
        pairs += sum(len(b["answer"]) for b, _ in micro_batches) * world
        micro_batches = []
        busy += time.perf_counter() - tic
        if bar is not None:
            bar.update(1)
        if step % t.log_every == 0 or step == end_step:
            rate = pairs / busy
            log.write({"step": step, **record, "pairs_per_s": rate})
            if bar is not None:
                bar.set_postfix(loss=f"{record['loss']:.3f}", pairs_s=f"{rate:.1f}")
            busy, pairs = 0.0, 0
        at_eval = step % t.eval_every == 0 or step == t.steps
        at_checkpoint = at_eval or step % t.checkpoint_every == 0 or step == end_step
        if at_checkpoint and is_main:
            improved, scores = False, None
            if at_eval and len(val_set):
                # Before saliency.start_step the masked pass is untrained: validate the single pass, and let only
                # checkpoints whose two-pass answers were scored (what `evaluate` runs) become the best.
                warming_up = config.saliency.enabled and step <= config.saliency.start_step
                scores = validate(
                    model,
                    val_set,
                    keyword_fn=keyword_fn,
                    samples=t.eval_samples,
                    batch_size=t.batch_size,
                    device=dev,
                    single_pass=warming_up,
                )
                scores["single_pass"] = warming_up
                log.write({"step": step, **{f"val/{k}": v for k, v in scores.items()}})
                if bar is not None:
                    bar.write(
                        f"step {step}: validation CIDEr {scores['CIDEr']:.3f} on {scores['n']} questions"
                        + (" (single pass: before saliency.start_step)" if warming_up else "")
                    )
                if not warming_up and scores["CIDEr"] > best.get("CIDEr", -math.inf):
                    best, improved = {"step": step, "CIDEr": scores["CIDEr"]}, True
            state = trainer_state(optimizer, scheduler, step, best, scaler)
            path = run.checkpoint(step, lambda directory: save_checkpoint(model, directory), state)
            write_model_card(path, config, step=step, data=data_summary, validation=scores, best=best)
            if improved:
                run.point(BEST, path)
            run.prune()
        if at_checkpoint and world > 1:
            dist.barrier()
    if bar is not None:
        bar.close()
    log.close()
    if is_main and (keywords_report := finish_keywords(keyword_fn)) is not None:
        print(keywords_report, file=sys.stderr)
    if world > 1:
        # Release DDP's reducer while the process group is alive: tearing it down after destroy_process_group
        # can leave a gloo rank hanging at interpreter exit.
        del guided
        dist.barrier()
        dist.destroy_process_group()
    return run_dir


def run_command_arguments(parser: ArgumentParser, *, data: str, out: str, example: str) -> None:
    """The options a command that trains a run takes (``train``, ``pretrain``): --data, --out, --preset, --config,
    --resume, --stop-after, --device, --no-progress and key=value overrides."""
    parser.add_argument("--data", required=True, type=Path, help=data)
    parser.add_argument("--out", required=True, type=Path, help=out)
    parser.add_argument("--preset", default="small", help="tiny | small | paper (default: small)")
    parser.add_argument("--config", type=Path, help="a YAML file of config overrides")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    parser.add_argument("--stop-after", type=int, help="stop this invocation after N steps (resume later)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("overrides", nargs="*", help=f"key=value config overrides, e.g. {example}")


def run_command_config(args, parser: ArgumentParser) -> Config:
    """Check the options of :func:`run_command_arguments` where they enter and resolve the run's config: the saved
    one with ``--resume`` (the overrides may change only what a resume allows), else preset <- file <- overrides."""
    if not (args.data / "manifest.json").is_file():
        parser.error(f"--data {args.data}: not a prepared cache (no manifest.json); run `diffvqa prepare` first")
    if args.stop_after is not None and args.stop_after < 1:
        parser.error(f"--stop-after {args.stop_after}: expected a number of steps >= 1")
    if args.resume:
        saved = RunDir(args.out).config_file
        if not saved.is_file():
            parser.error(f"--resume: {saved} not found")
        config = apply_overrides(Config.load(saved), args.overrides)  # the command checks what may differ
    else:
        config = load_config(args.preset, args.config, args.overrides)
    check_output_dir(args.out)
    resolve_device(args.device)  # an unusable --device: one line before anything is read
    return config


@command("diffvqa train")
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="diffvqa train", description=__doc__.split("\n\n")[0])
    run_command_arguments(parser, data="a prepared cache (diffvqa prepare)", out="the run directory",
                          example="train.lr=3e-4")  # fmt: skip
    args = parser.parse_args(argv)
    config = run_command_config(args, parser)
    run = train(
        config,
        args.data,
        run_dir=args.out,
        resume=args.resume,
        stop_after=args.stop_after,
        device=args.device,
        progress=not args.no_progress,
        command=["diffvqa", "train", *argv],
    )
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"run: {run}  latest: {RunDir(run).latest}  best: {RunDir(run).best}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
