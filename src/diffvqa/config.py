"""Configuration: small grouped dataclasses, YAML files, dotted ``key=value`` overrides, presets.

Resolution order (later wins): dataclass defaults <- preset YAML (``tiny``/``small``/``paper``) <- user YAML
file <- ``key=value`` overrides such as ``train.lr=3e-4`` or ``saliency.mask=mean``. Unknown keys and values of
the wrong type raise ``ValueError`` naming them.

Every group lives here, in one torch-free module, so that a checkpoint's ``config.json`` can be read and
validated without importing the model, and so that imports flow one way (config <- data <- model <- ...).
Each group documents the module it configures.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

PRESETS = ("tiny", "small", "paper")


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
    # Average-pool the feature maps by this factor before the prefix projection: fewer prefix tokens (the decoder's
    # cost grows with them) while Grad-CAM keeps the encoder's full-resolution maps. 1 = one token per cell.
    prefix_pool: int = 1
    # --- ablation ---
    blind: bool = False  # question-only baseline: both images replaced by zeros (training and inference)


@dataclass
class SaliencyConfig:
    """The saliency loop (``diffvqa.saliency``): keywords, Grad-CAM, shared mask, two passes."""

    enabled: bool = True  # False: single pass, no Grad-CAM, no mask (ablation and speed baseline)
    mask: str = "max"  # max | mean | min | main | ref | none
    mask_floor: float = 0.0  # beta: masked = (beta + (1 - beta) * M) * I
    cam_eps: float = 1e-6
    keyword_source: str = "lexicon"  # lexicon | llm | truth
    llm_base_url: str = "http://127.0.0.1:11434/v1"
    llm_model: str = "llama3:70b"
    llm_timeout: float = 30.0
    llm_cache: str = ""  # JSON file of answer -> keyword; empty: <run dir>/keywords_llm.json
    unmasked_loss_weight: float = 1.0  # lambda_A
    # Training steps before this one run single-pass (pass A only): a model trained from scratch has no Grad-CAM
    # worth masking with yet. 0 (the paper's setting: it starts from pretrained weights) guides every step.
    start_step: int = 0


@dataclass
class TrainConfig:
    """The training loop (``diffvqa.train``)."""

    seed: int = 0
    steps: int = 2000
    batch_size: int = 32
    lr: float = 5e-4
    weight_decay: float = 0.05
    warmup_steps: int = 100
    grad_clip: float = 1.0
    autocast: str = "none"  # none | bf16
    eval_every: int = 500
    eval_samples: int = 512  # validation questions scored at each evaluation (0 = the whole split)
    checkpoint_every: int = 500
    log_every: int = 10
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


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    saliency: SaliencyConfig = field(default_factory=SaliencyConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "config") -> Config:
        config = cls()
        _update(config, values, where)
        return config

    @classmethod
    def load(cls, path: str | Path) -> Config:
        path = Path(path)
        try:
            values = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: cannot read a config from it ({exc})") from exc
        return cls.from_dict(values, where=str(path))


# ----------------------------------------------------------------------------------------------------------
# validation


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check ``value`` against ``annotation`` (ints widen to floats), or raise ValueError naming ``key``."""
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
            except ValueError:
                pass
    else:  # pragma: no cover - a new annotation kind in this file
        raise TypeError(f"config field {key}: unsupported annotation {annotation!r}")
    name = getattr(annotation, "__name__", str(annotation))
    raise ValueError(f"config key {key!r}: expected {name}, got {value!r} ({type(value).__name__})")


def _update(obj: Any, values: dict[str, Any], where: str, prefix: str = "") -> None:
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected a mapping at {prefix.rstrip('.') or 'top level'}, got {values!r}")
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in values.items():
        dotted = prefix + key
        if key not in names:
            raise ValueError(f"{where}: unknown config key {dotted!r}; known keys here: {sorted(names)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _update(current, value, where, dotted + ".")
        else:
            setattr(obj, key, _coerce(value, hints[key], dotted))


def _parse_override(text: str) -> tuple[list[str], Any]:
    import yaml

    if "=" not in text:
        raise ValueError(f"override {text!r}: expected key=value, e.g. train.lr=3e-4")
    key, raw = text.split("=", 1)
    value = yaml.safe_load(raw) if raw.strip() else ""
    # YAML 1.1 reads "3e-4" as a string; accept it as a number.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            pass
    return key.strip().split("."), value


def _nest(path: list[str], value: Any) -> dict[str, Any]:
    for part in reversed(path):
        value = {part: value}
    return value


def preset_values(name: str) -> dict[str, Any]:
    """The YAML values of a preset (``tiny``, ``small`` or ``paper``)."""
    import yaml

    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    text = resources.files("diffvqa").joinpath("configs", f"{name}.yaml").read_text()
    return yaml.safe_load(text) or {}


def load_config(preset: str = "small", file: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Resolve a config: defaults <- preset <- YAML ``file`` <- ``key=value`` overrides.

    A YAML file may name its own preset with a top-level ``preset: paper`` key.
    """
    import yaml

    file_values: dict[str, Any] = {}
    if file is not None:
        try:
            file_values = yaml.safe_load(Path(file).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"{file}: cannot read a YAML config from it ({exc})") from exc
        if not isinstance(file_values, dict):
            raise ValueError(f"{file}: expected a mapping of config groups, got {type(file_values).__name__}")
        preset = file_values.pop("preset", preset)
    config = Config()
    _update(config, preset_values(preset), where=f"preset {preset}")
    if file is not None:
        _update(config, file_values, where=str(file))
    return apply_overrides(config, overrides)


def apply_overrides(config: Config, overrides: typing.Sequence[str]) -> Config:
    """Apply ``key=value`` overrides to ``config`` in place (and return it)."""
    for text in overrides:
        path, value = _parse_override(text)
        _update(config, _nest(path, value), where=f"override {text!r}")
    return config
