"""The finding classifier: a linear multi-label head on the encoder's pooled feature maps, its class activation map,
and how a pretrained encoder and its head travel together on disk.

``diffvqa pretrain`` trains :class:`FindingClassifier` (the preset's :class:`~diffvqa.model.encoder.ImageEncoder`
plus :class:`FindingHead`) on finding labels (:mod:`diffvqa.data.labels`), then writes a directory that
``model.encoder_pretrained`` loads unchanged (``ResNetModel.from_pretrained``) and that carries the head beside it::

    DIR/config.json, DIR/model.safetensors     the encoder (ResNetModel.save_pretrained)
    DIR/finding_head.safetensors               the head's weight (K, C) and bias (K,)
    DIR/finding_head.json                      its label set and label names (and how it was trained)

**The head's map.** The logit of label k is z_k = w_k · mean_{h,w} F + b_k, so ∂z_k/∂F = w_k / (h w) at every cell:
Grad-CAM of z_k weights channel c by w_kc / (h w), and (up to that positive factor, which the per-image
normalisation removes) the map is ReLU(Σ_c w_kc F_c) — the class activation map of Zhou et al. (2016), computed
without a backward pass (:meth:`FindingHead.cams`; ``tests/test_findings.py`` checks it against autograd).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from transformers import ResNetModel

from diffvqa.config import ModelConfig
from diffvqa.data.labels import LABEL_NAMES
from diffvqa.errors import MissingInputError, UserError
from diffvqa.model.encoder import MASKED_PREFIX, ImageEncoder, resnet_config

HEAD_WEIGHTS = "finding_head.safetensors"
HEAD_INFO = "finding_head.json"


class FindingHead(nn.Module):
    """Multi-label logits from feature maps: (N, C, h, w) -> (N, K), one per name of ``label_set``."""

    def __init__(self, channels: int, label_set: str):
        super().__init__()
        if label_set not in LABEL_NAMES:
            raise UserError(f"finding head label set {label_set!r}: expected one of {', '.join(LABEL_NAMES)}")
        self.label_set = label_set
        self.names: tuple[str, ...] = LABEL_NAMES[label_set]
        self.linear = nn.Linear(channels, len(self.names))

    def forward(self, features: Tensor) -> Tensor:
        return self.linear(features.mean(dim=(2, 3)))

    def index(self, name: str) -> int:
        return self.names.index(name)

    def cams(self, features: Tensor, labels: Tensor) -> Tensor:
        """The class activation map of one label per image: features (N, C, h, w), labels (N,) long -> (N, 1, h, w),
        ReLU(Σ_c w_{label,c} F_c) (the Grad-CAM of that logit up to a positive factor: module docstring)."""
        weights = self.linear.weight[labels].to(features.dtype)  # (N, C)
        return torch.relu(torch.einsum("nc,nchw->nhw", weights, features))[:, None]


def finding_loss(logits: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
    """Masked multi-label BCE: the mean over the (image, label) entries ``mask`` keeps; 0 when it keeps none.
    logits, targets, mask: (N, K) (targets and mask from :func:`diffvqa.data.labels.targets`)."""
    losses = nn.functional.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="none")
    return (losses * mask).sum() / mask.sum().clamp(min=1.0)


class FindingClassifier(nn.Module):
    """The preset's image encoder with a finding head: what ``diffvqa pretrain`` trains."""

    def __init__(self, config: ModelConfig, label_set: str, load_pretrained: bool = True):
        super().__init__()
        self.encoder = ImageEncoder(config, load_pretrained=load_pretrained)
        self.head = FindingHead(self.encoder.out_channels, label_set)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(N, 1, S, S) in [0, 1] -> logits (N, K) and the feature maps (N, C, h, w)."""
        features = self.encoder.features(images)
        return self.head(features), features


def save_pretrained_encoder(classifier: FindingClassifier, directory: str | Path, config: ModelConfig,
                            info: dict) -> Path:  # fmt: skip
    """Write the encoder in the ``ResNetModel.save_pretrained`` layout (without the masked pass's second set of
    BatchNorm statistics, which only the VQA model keeps) and the head beside it. Returns ``directory``."""
    directory = Path(directory)
    state = {k: v for k, v in classifier.encoder.resnet.state_dict().items() if MASKED_PREFIX not in k}
    resnet = ResNetModel(resnet_config(config))
    resnet.load_state_dict(state)
    resnet.save_pretrained(directory)
    head = classifier.head
    save_file({k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}, str(directory / HEAD_WEIGHTS))
    (directory / HEAD_INFO).write_text(
        json.dumps({"label_set": head.label_set, "names": list(head.names), **info}, indent=2) + "\n"
    )
    return directory


def head_info(directory: str | Path) -> dict | None:
    """The finding head's description in a pretrained encoder directory, or None when it has no head."""
    path = Path(directory) / HEAD_INFO
    return json.loads(path.read_text()) if path.is_file() else None


def load_head(head: FindingHead, directory: str | Path) -> None:
    """Load a head written by :func:`save_pretrained_encoder` into ``head`` (same label set and width), or raise a
    UserError naming the directory and what differs."""
    directory = Path(directory)
    info = head_info(directory)
    if info is None or not (directory / HEAD_WEIGHTS).is_file():
        raise MissingInputError(
            f"{directory}: no finding head ({HEAD_INFO}, {HEAD_WEIGHTS}); model.finding_head needs an encoder "
            "written by `diffvqa pretrain` (or set model.finding_head= empty)"
        )
    if info.get("label_set") != head.label_set:
        raise UserError(
            f"{directory}: its finding head predicts {info.get('label_set')!r} labels but model.finding_head="
            f"{head.label_set!r}; set model.finding_head={info.get('label_set')}"
        )
    state = load_file(str(directory / HEAD_WEIGHTS))
    expected = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if got != expected:
        raise UserError(f"{directory / HEAD_WEIGHTS}: expected tensors {expected}, found {got}")
    head.load_state_dict(state)
