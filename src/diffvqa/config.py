"""Configuration: small grouped dataclasses, YAML files, dotted ``key=value`` overrides, presets.

Resolution order (later wins): dataclass defaults <- preset YAML (``tiny``/``small``/``paper``) <- user YAML
file <- ``key=value`` overrides such as ``train.lr=3e-4`` or ``saliency.mask=mean``. Unknown keys, values of
the wrong type and values outside a key's range raise :class:`~diffvqa.errors.UserError` (a ``ValueError``)
naming the key, the value, where it came from and what is allowed.

Every field has a :class:`Rule` in its group's ``RULES`` table, right below the fields: the range or choices a
value must satisfy, checked as the value is set (presets, YAML files, overrides and a checkpoint's
``config.json`` alike). ``tests/test_config.py`` fails for a field without one, so a new key cannot skip it.

Every group lives here, in one torch-free module, so that a checkpoint's ``config.json`` can be read and
validated without importing the model, and so that imports flow one way (config <- data <- model <- ...).
Each group documents the module it configures.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

from diffvqa.errors import ArgumentParser, MissingInputError, UserError, command, one_line

PRESETS = ("tiny", "small", "paper")
# The overrides that train the encoder from random weights, with nothing that needs a pretrained finding head: a
# pretrained recipe turned back into the from-scratch one (`diffvqa demo --no-pretrain`, the study's from-scratch
# variants, and the blind baseline, which sees no image).
FROM_SCRATCH = ("model.encoder_pretrained=", "model.finding_head=", "saliency.cam_source=decoder",
                "train.finding_loss_weight=0")  # fmt: skip


@dataclass(frozen=True)
class Rule:
    """The values a config key allows: a number range, a set of choices or a text pattern (each item of a list
    key too, plus its length). ``Rule()`` allows any value of the field's type (flags, free paths)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False  # True: value > low (else >= low)
    high_open: bool = False  # True: value < high (else <= high)
    choices: tuple = ()
    pattern: str = ""  # a text value must match it whole (re.fullmatch)
    items: tuple[int, int | None] = (0, None)  # (min, max) length of a list key
    what: str = ""  # a pattern's meaning, for the message

    def expected(self) -> str:
        if self.choices:
            return "one of " + ", ".join(map(str, self.choices))
        if self.pattern:
            return self.what or f"text matching {self.pattern!r}"
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {self.low:g}")
        if self.high is not None:
            parts.append(f"{'<' if self.high_open else '<='} {self.high:g}")
        return " and ".join(parts) or "any value"

    def problem(self, value: Any) -> str | None:
        """What is wrong with ``value`` (already of the field's type), or None."""
        if isinstance(value, list):
            least, most = self.items
            if len(value) < least or (most is not None and len(value) > most):
                count = f"{least}" if least == most else f"at least {least}" + (f", at most {most}" if most else "")
                return f"expected a list of {count} items, got {len(value)}"
            for i, item in enumerate(value):
                if (problem := self.problem(item)) is not None:
                    return f"item {i} ({item!r}): {problem}"
            return None
        if self.choices and value not in self.choices:
            return f"expected {self.expected()}"
        if self.pattern and not (isinstance(value, str) and re.fullmatch(self.pattern, value)):
            return f"expected {self.expected()}"
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                return "expected a finite number"
            if self.low is not None and (value <= self.low if self.low_open else value < self.low):
                return f"expected a value {self.expected()}"
            if self.high is not None and (value >= self.high if self.high_open else value > self.high):
                return f"expected a value {self.expected()}"
        return None


ANY = Rule()
POSITIVE = Rule(low=0, low_open=True)
NON_NEGATIVE = Rule(low=0)
UNIT = Rule(low=0, high=1)  # probabilities, floors, normalised intensities
AT_LEAST_ONE = Rule(low=1)


# The seven question types of Medical-Diff-VQA, in the release's order.
QUESTION_TYPES = ("abnormality", "presence", "view", "location", "level", "type", "difference")


@dataclass
class DataConfig:
    """What the dataset reader and the image pipeline use (``diffvqa.data``)."""

    image_size: int = 128  # S: images are resized (aspect kept) and padded to S x S
    question_types: list[str] = field(default_factory=lambda: list(QUESTION_TYPES))
    max_question_tokens: int = 24
    max_answer_tokens: int = 64
    num_workers: int = 0
    # Page-locked batches, so the host-to-GPU copies (issued non-blocking) overlap compute. CUDA only; a no-op
    # elsewhere. (No persistent_workers key: the training loader is iterated once for the whole run — its sampler
    # spans every step — so its workers never restart.)
    pin_memory: bool = False

    RULES: ClassVar[dict[str, Rule]] = {
        "image_size": Rule(low=16),
        "question_types": Rule(choices=QUESTION_TYPES, items=(1, None)),
        "max_question_tokens": AT_LEAST_ONE,
        "max_answer_tokens": AT_LEAST_ONE,
        "num_workers": NON_NEGATIVE,
        "pin_memory": ANY,
    }


@dataclass
class ModelConfig:
    """The assembled model (``diffvqa.model``): aligner, encoder, prefix and decoder."""

    # --- image normalisation (applied after masking, in [0,1] intensity space) ---
    image_mean: float = 0.5
    image_std: float = 0.25
    # --- aligner (model/align.py) ---
    align: bool = True
    align_input_size: int = 64  # the 2-channel pair is downsampled to this side before the CNN
    align_channels: int = 16
    align_max_delta: float = 0.2  # |delta| bound (tanh-scaled): about +-10 deg, +-20 % scale, +-10 % shift
    align_reg_weights: list[float] = field(default_factory=lambda: [1e-4, 1e-5, 1e-6])  # Frobenius, det, t
    align_corners: bool = False
    # Weight of 1 - NCC(warped main, ref) on the content overlap (an extension; 0 = the paper: the aligner learns
    # through the answer loss only). The answer loss carries almost no alignment signal on the phantom.
    align_similarity: float = 0.0
    # --- encoder (model/encoder.py), a transformers ResNetModel ---
    encoder_channels: int = 1  # 3 for ImageNet-pretrained weights: the gray image is repeated
    encoder_embedding_size: int = 32
    encoder_hidden_sizes: list[int] = field(default_factory=lambda: [32, 64, 128])
    encoder_depths: list[int] = field(default_factory=lambda: [1, 1, 1])
    encoder_layer_type: str = "basic"  # "basic" or "bottleneck" (ResNet-50)
    encoder_pretrained: str = ""  # local directory saved with ResNetModel.save_pretrained
    # --- decoder (model/decoder.py), a transformers GPT2LMHeadModel ---
    decoder_layers: int = 4
    decoder_heads: int = 4
    decoder_width: int = 256
    decoder_positions: int = 256
    decoder_dropout: float = 0.1
    decoder_pretrained: str = ""  # local directory saved with GPT2LMHeadModel.save_pretrained
    tokenizer: str = "word"  # "word" (built from training text) or "gpt2" (BPE files from a local directory)
    tokenizer_path: str = ""  # GPT2Tokenizer.save_pretrained directory (tokenizer.json, or vocab.json + merges.txt)
    # `train` refuses to start while encoder_pretrained / decoder_pretrained (and, for the gpt2 tokenizer,
    # tokenizer_path) are empty: the paper preset sets it, so random weights are only ever trained on purpose.
    require_pretrained: bool = False
    # Average-pool the feature maps by this factor before the prefix projection: fewer prefix tokens (the decoder's
    # cost grows with them) while Grad-CAM keeps the encoder's full-resolution maps. 1 = one token per cell.
    prefix_pool: int = 1
    # A linear multi-label head on the encoder's pooled feature maps (model/findings.py), predicting this label set
    # (chexpert | negbio | findings; "" = none). Loaded from model.encoder_pretrained when that directory was written
    # by `diffvqa pretrain` with the same labels. It serves saliency.cam_source=classifier and
    # train.finding_loss_weight; the answer never reads it.
    finding_head: str = ""
    # --- ablation ---
    blind: bool = False  # question-only baseline: both images replaced by zeros (training and inference)

    RULES: ClassVar[dict[str, Rule]] = {
        "image_mean": UNIT,
        "image_std": POSITIVE,
        "align": ANY,
        "align_input_size": Rule(low=8),
        "align_channels": AT_LEAST_ONE,
        "align_max_delta": Rule(low=0, high=1),
        "align_reg_weights": Rule(low=0, items=(3, 3)),
        "align_corners": ANY,
        "align_similarity": NON_NEGATIVE,
        "encoder_channels": Rule(choices=(1, 3)),
        "encoder_embedding_size": AT_LEAST_ONE,
        "encoder_hidden_sizes": Rule(low=1, items=(1, None)),
        "encoder_depths": Rule(low=1, items=(1, None)),
        "encoder_layer_type": Rule(choices=("basic", "bottleneck")),
        "encoder_pretrained": ANY,  # a directory, checked when the model is built
        "decoder_layers": AT_LEAST_ONE,
        "decoder_heads": AT_LEAST_ONE,
        "decoder_width": AT_LEAST_ONE,
        "decoder_positions": AT_LEAST_ONE,
        "decoder_dropout": Rule(low=0, high=1, high_open=True),
        "decoder_pretrained": ANY,
        "tokenizer": Rule(choices=("word", "gpt2")),
        "require_pretrained": ANY,
        "tokenizer_path": ANY,
        "prefix_pool": AT_LEAST_ONE,
        "finding_head": Rule(choices=("", "chexpert", "negbio", "findings")),
        "blind": ANY,
    }


@dataclass
class SaliencyConfig:
    """The saliency loop (``diffvqa.saliency``): keywords, Grad-CAM, shared mask, two passes."""

    enabled: bool = True  # False: single pass, no Grad-CAM, no mask (ablation and speed baseline)
    mask: str = "max"  # max | mean | min | main | ref | none
    mask_floor: float = 0.0  # beta: masked = (beta + (1 - beta) * M) * I
    cam_eps: float = 1e-6
    # gradcam (the paper's) | hirescam (a departure: gradient x activation per cell, no channel averaging) |
    # change_gated (a departure: Grad-CAM times the registered difference |aligned main - ref|)
    cam_method: str = "gradcam"
    # The score whose gradient Grad-CAM takes: log_prob (the paper's: log p of the keyword's tokens) | logit (the
    # keyword tokens' logits alone: evidence for the keyword, not against the other findings)
    cam_target: str = "log_prob"
    # image (the paper's: each map scaled by its own maximum) | pair (both maps of a pair by their common maximum)
    cam_normalize: str = "image"
    # encoder (the paper's: the encoder's last feature maps) | prefix (the model.prefix_pool-pooled cells the decoder
    # reads: a coarser grid, the block average of the encoder-grid CAM before its ReLU)
    cam_grid: str = "encoder"
    # decoder (the paper's: the gradient of the keyword's score through GPT-2) | classifier (a departure: the
    # gradient of the finding head's logit for the keyword's label -- its class activation map; a keyword the
    # head has no label for falls back to the decoder's map). Needs model.finding_head.
    cam_source: str = "decoder"
    keyword_source: str = "lexicon"  # lexicon | llm | truth
    llm_base_url: str = "http://127.0.0.1:11434/v1"
    llm_model: str = "llama3:70b"
    llm_timeout: float = 30.0
    llm_cache: str = ""  # JSON file of answer -> keyword; empty: <run dir>/keywords_llm.json
    unmasked_loss_weight: float = 1.0  # lambda_A
    # Training steps before this one run single-pass (pass A only): a model trained from scratch has no Grad-CAM
    # worth masking with yet. 0 (the paper's setting: it starts from pretrained weights) guides every step.
    start_step: int = 0

    RULES: ClassVar[dict[str, Rule]] = {
        "enabled": ANY,
        "mask": Rule(choices=("max", "mean", "min", "main", "ref", "none")),
        "mask_floor": UNIT,
        "cam_eps": POSITIVE,
        "cam_method": Rule(choices=("gradcam", "hirescam", "change_gated")),
        "cam_target": Rule(choices=("log_prob", "logit")),
        "cam_normalize": Rule(choices=("image", "pair")),
        "cam_grid": Rule(choices=("encoder", "prefix")),
        "cam_source": Rule(choices=("decoder", "classifier")),
        "keyword_source": Rule(choices=("lexicon", "llm", "truth")),
        "llm_base_url": Rule(pattern=r"https?://\S+", what="an http(s):// URL such as http://127.0.0.1:11434/v1"),
        "llm_model": Rule(pattern=r"\S.*", what="a model name (not empty)"),
        "llm_timeout": POSITIVE,
        "llm_cache": ANY,  # a JSON file; empty: <run dir>/keywords_llm.json
        "unmasked_loss_weight": NON_NEGATIVE,
        "start_step": NON_NEGATIVE,
    }


@dataclass
class TrainConfig:
    """The training loop (``diffvqa.commands.train``)."""

    seed: int = 0
    steps: int = 2000
    batch_size: int = 32
    lr: float = 5e-4
    weight_decay: float = 0.05
    warmup_steps: int = 100
    grad_clip: float = 1.0
    # The encoder's learning rate is lr x this (0 freezes it): a pretrained encoder fine-tuned gently keeps more of
    # what it learned from the finding labels.
    encoder_lr_scale: float = 1.0
    # Weight of the finding head's multi-label loss (masked BCE on both images' labels, pretrain.uncertain policy)
    # added to the answer loss: keeps the encoder's channels finding-specific. Needs model.finding_head and a cache
    # with those labels.
    finding_loss_weight: float = 0.0
    # Which images that loss sees: reference (the default: a pass of its own over the reference images, so that it
    # cannot train the aligner, which warps the main image) or both (on pass A's feature maps: cheaper, but the loss
    # then steers the aligner too; registration got worse with it: docs/results.md).
    finding_loss_images: str = "reference"
    # none | bf16 | fp16 (diffvqa.precision). fp16 for GPUs without bf16 (V100, T4): a gradient scaler keeps the
    # small gradients from underflowing, its state saved with the trainer state. CPU runs it too (for the tests).
    autocast: str = "none"
    eval_every: int = 500
    eval_samples: int = 512  # validation questions scored at each evaluation (0 = the whole split)
    checkpoint_every: int = 500
    log_every: int = 10
    # Where the training curves go besides metrics.jsonl: none, or tensorboard (<run>/tensorboard; needs the
    # optional extra: pip install -e '.[tensorboard]')
    report_to: str = "none"
    # Micro-batches per optimiser step (>= 1): the effective batch is batch_size * grad_accum * world size. Each
    # micro-batch's loss is scaled by 1/grad_accum; DDP synchronises gradients on the last one only.
    grad_accum: int = 1
    # Performance levers (benchmarks/gpu.py). Each is a no-op, noted once, where the device lacks it.
    channels_last: bool = False  # the encoder's weights (and so its activations) in NHWC memory format
    fused_adamw: bool = False  # AdamW's single fused kernel (CUDA and CPU)
    tf32: bool = False  # TF32 tensor-core matmuls and convolutions for float32 work (CUDA, Ampere or newer)
    cudnn_benchmark: bool = False  # cuDNN picks the fastest convolution algorithm per shape (fixed S: pays once)
    compile: bool = False  # torch.compile the encoder's ResNet (the decoder's lengths vary: it would recompile)
    ddp_bucket_view: bool = True  # DDP gradient_as_bucket_view: gradients alias the all-reduce buckets (no copy)
    # Activation checkpointing of the encoder (its stem and each stage) and the decoder (each GPT-2 block): their
    # activations are recomputed in the backward instead of kept, for a GPU too small for the batch. Same losses and
    # gradients (tests/test_train_memory_levers.py); slower, as the checkpointed forwards run again in the backward
    # (pass A's decoder twice: for the Grad-CAM's gradient and for the loss's).
    grad_checkpointing: bool = False
    # The process group's timeout (torchrun runs): the other ranks wait at a barrier while rank 0 validates and
    # saves, so it must outlast one validation of train.eval_samples questions (eval_samples=0: the whole split).
    dist_timeout_minutes: float = 120.0

    RULES: ClassVar[dict[str, Rule]] = {
        "seed": NON_NEGATIVE,
        "steps": AT_LEAST_ONE,
        "batch_size": AT_LEAST_ONE,
        "lr": POSITIVE,
        "weight_decay": NON_NEGATIVE,
        "warmup_steps": NON_NEGATIVE,
        "grad_clip": POSITIVE,
        "encoder_lr_scale": NON_NEGATIVE,
        "finding_loss_weight": NON_NEGATIVE,
        "finding_loss_images": Rule(choices=("reference", "both")),
        "autocast": Rule(choices=("none", "bf16", "fp16")),
        "eval_every": AT_LEAST_ONE,
        "eval_samples": NON_NEGATIVE,  # 0 = the whole validation split
        "checkpoint_every": AT_LEAST_ONE,
        "log_every": AT_LEAST_ONE,
        "report_to": Rule(choices=("none", "tensorboard")),
        "grad_accum": AT_LEAST_ONE,
        "channels_last": ANY,
        "fused_adamw": ANY,
        "tf32": ANY,
        "cudnn_benchmark": ANY,
        "compile": ANY,
        "ddp_bucket_view": ANY,
        "grad_checkpointing": ANY,
        "dist_timeout_minutes": POSITIVE,
    }


@dataclass
class PretrainConfig:
    """Pretraining the encoder on finding labels (``diffvqa pretrain``, :mod:`diffvqa.model.findings`). The loop's
    other settings (seed, autocast, grad_clip, log_every, report_to, ...) are the ``train`` group's."""

    labels: str = "chexpert"  # chexpert | negbio (MIMIC-CXR-JPG's 14 observations) | findings (the 30 answer names)
    # What an uncertain (-1) label trains as: ignore (masked; the default: no guess enters the loss), ones, zeros
    # (U-Ignore / U-Ones / U-Zeros of the CheXpert paper, which found different policies useful for different
    # observations).
    uncertain: str = "ignore"
    steps: int = 600
    batch_size: int = 48
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 30
    eval_every: int = 200  # held-out AUROC (validation images) at these steps; the best checkpoint is kept

    RULES: ClassVar[dict[str, Rule]] = {
        "labels": Rule(choices=("chexpert", "negbio", "findings")),
        "uncertain": Rule(choices=("ignore", "ones", "zeros")),
        "steps": AT_LEAST_ONE,
        "batch_size": AT_LEAST_ONE,
        "lr": POSITIVE,
        "weight_decay": NON_NEGATIVE,
        "warmup_steps": NON_NEGATIVE,
        "eval_every": AT_LEAST_ONE,
    }


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    saliency: SaliencyConfig = field(default_factory=SaliencyConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "config") -> Config:
        config = cls()
        _update(config, values, where)
        check_together(config, where)
        return config

    @classmethod
    def load(cls, path: str | Path) -> Config:
        path = Path(path)
        if not path.is_file():
            raise MissingInputError(f"{path}: not found (expected a config.json written by diffvqa)")
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            raise UserError(f"{path}: cannot read a config from it ({exc})") from exc
        return cls.from_dict(values, where=str(path))


# ----------------------------------------------------------------------------------------------------------
# validation


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check ``value`` against ``annotation`` (ints widen to floats), or raise UserError naming ``key``."""
    origin = typing.get_origin(annotation)
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif annotation is int or annotation is str or annotation is bool:
        if type(value) is annotation:
            return value
    elif origin is list:
        (item_type,) = typing.get_args(annotation)
        if isinstance(value, (list, tuple)):
            return [_coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(value)]
    elif origin in (typing.Union, types.UnionType):
        for option in typing.get_args(annotation):
            try:
                return _coerce(value, option, key)
            except UserError:
                pass
    else:  # pragma: no cover - a new annotation kind in this file
        raise TypeError(f"config field {key}: unsupported annotation {annotation!r}")
    name = getattr(annotation, "__name__", str(annotation))
    raise UserError(f"config key {key!r}: expected {name}, got {value!r} ({type(value).__name__})")


def rule_of(group: Any, key: str) -> Rule | None:
    """The :class:`Rule` of ``key`` in a group dataclass (or its type), None when the table lacks one."""
    return getattr(group, "RULES", {}).get(key)


def _update(obj: Any, values: dict[str, Any], where: str, prefix: str = "") -> None:
    if not isinstance(values, dict):
        raise UserError(f"{where}: expected a mapping at {prefix.rstrip('.') or 'top level'}, got {values!r}")
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in values.items():
        dotted = prefix + str(key)
        if key not in names:
            raise UserError(f"{where}: unknown config key {dotted!r}; known keys here: {sorted(names)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _update(current, value, where, dotted + ".")
            continue
        try:
            value = _coerce(value, hints[key], dotted)
        except UserError as exc:
            raise UserError(f"{where}: {exc}") from None
        rule = rule_of(obj, key)
        if rule is None:  # pragma: no cover - test_config fails first for a field without a rule
            raise TypeError(f"config key {dotted!r} has no rule in {type(obj).__name__}.RULES")
        if (problem := rule.problem(value)) is not None:
            raise UserError(f"{where}: config key {dotted}={value!r}: {problem}")
        setattr(obj, key, value)


def check_together(config: Config, where: str = "config") -> None:
    """The rules that tie two keys together (each key alone is checked as it is set)."""
    m = config.model
    if len(m.encoder_hidden_sizes) != len(m.encoder_depths):
        raise UserError(
            f"{where}: model.encoder_hidden_sizes={m.encoder_hidden_sizes} and model.encoder_depths="
            f"{m.encoder_depths} must have the same length (one entry per encoder stage)"
        )
    if m.decoder_width % m.decoder_heads:
        raise UserError(
            f"{where}: model.decoder_width={m.decoder_width} must be a multiple of model.decoder_heads="
            f"{m.decoder_heads} (each attention head gets width / heads channels)"
        )
    needs_head = [
        key
        for key, on in (
            ("saliency.cam_source=classifier", config.saliency.cam_source == "classifier"),
            ("train.finding_loss_weight > 0", config.train.finding_loss_weight > 0),
        )
        if on
    ]
    if needs_head and not m.finding_head:
        raise UserError(
            f"{where}: {' and '.join(needs_head)} need a finding head: set model.finding_head to the label set the "
            "pretrained encoder was trained on (chexpert, negbio or findings; `diffvqa pretrain` writes it)"
        )
    if config.train.compile and config.train.grad_checkpointing:
        raise UserError(
            f"{where}: train.compile=true and train.grad_checkpointing=true cannot be combined (the checkpointed "
            "encoder runs its stages one by one, outside the compiled ResNet forward); set one of them to false"
        )


def _parse_override(text: str) -> tuple[list[str], Any]:

    if "=" not in text:
        raise UserError(f"override {text!r}: expected key=value, e.g. train.lr=3e-4")
    key, raw = text.split("=", 1)
    value = _parse_yaml(raw, f"override {text!r}") if raw.strip() else ""
    # YAML 1.1 reads "3e-4" as a string; accept it as a number.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            pass
    return key.strip().split("."), value


def _parse_yaml(text: str, where: str) -> Any:
    """YAML text -> value, any parse failure a UserError naming ``where``."""
    import yaml

    try:
        return yaml.safe_load(text)
    # YAMLError for bad syntax; ValueError/OverflowError for a YAML date or number Python cannot hold
    # ("2001-02-30"); RecursionError for absurd nesting.
    except (yaml.YAMLError, ValueError, OverflowError, RecursionError) as exc:
        raise UserError(f"{where}: not valid YAML ({one_line(exc)})") from None


def _nest(path: list[str], value: Any) -> dict[str, Any]:
    for part in reversed(path):
        value = {part: value}
    return value


def preset_values(name: str) -> dict[str, Any]:
    """The YAML values of a preset (``tiny``, ``small`` or ``paper``)."""
    import yaml

    if not isinstance(name, str) or name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    text = resources.files("diffvqa").joinpath("configs", f"{name}.yaml").read_text()
    return yaml.safe_load(text) or {}


def load_config(preset: str = "small", file: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Resolve a config: defaults <- preset <- YAML ``file`` <- ``key=value`` overrides.

    A YAML file may name its own preset with a top-level ``preset: paper`` key.
    """
    file_values: dict[str, Any] = {}
    if file is not None:
        path = Path(file)
        if not path.is_file():
            raise MissingInputError(f"--config {path}: not found (expected a YAML file of config groups)")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"{path}: cannot read a YAML config from it ({exc})") from exc
        file_values = _parse_yaml(text, str(path))
        if file_values is None:
            file_values = {}
        if not isinstance(file_values, dict):
            raise UserError(f"{path}: expected a mapping of config groups, got {type(file_values).__name__}")
        preset = file_values.pop("preset", preset)
    config = Config()
    _update(config, preset_values(preset), where=f"preset {preset}")
    if file is not None:
        _update(config, file_values, where=str(file))
    return apply_overrides(config, overrides)


def apply_overrides(config: Config, overrides: typing.Sequence[str]) -> Config:
    """Apply ``key=value`` overrides to ``config`` in place (and return it). All or nothing: when one override
    is wrong, ``config`` is left as it was."""
    updated = copy.deepcopy(config)
    for text in overrides:
        path, value = _parse_override(text)
        _update(updated, _nest(path, value), where=f"override {text!r}")
    check_together(updated, "overrides" if overrides else "config")
    for group in dataclasses.fields(config):
        setattr(config, group.name, getattr(updated, group.name))
    return config


def format_config(config: Config, fmt: str = "yaml") -> str:
    """The whole resolved config as YAML (grouped, in field order) or JSON -- what a run's config.json holds."""
    values = config.to_dict()
    if fmt == "json":
        return json.dumps(values, indent=2)
    import yaml

    return yaml.safe_dump(values, sort_keys=False, default_flow_style=None, width=120).rstrip()


@command("diffvqa config")
def config_main(argv: list[str]) -> int:
    """``diffvqa config [--preset P] [--config FILE] [--format yaml|json] [key=value ...]``: print the resolved
    config -- the preset, then the file, then the overrides, validated exactly as ``train`` would take them."""
    parser = ArgumentParser(prog="diffvqa config", description="print a preset's config with overrides applied")
    parser.add_argument("--preset", default="small", help="tiny | small | paper (default: small)")
    parser.add_argument("--config", type=Path, help="a YAML file of config overrides")
    parser.add_argument("--format", choices=("yaml", "json"), default="yaml")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. train.lr=3e-4")
    args = parser.parse_args(argv)
    print(format_config(load_config(args.preset, args.config, args.overrides), args.format))
    return 0
