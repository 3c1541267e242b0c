"""The shared image encoder: a ``transformers.ResNetModel`` run once on the stacked pair.

Its last stage's feature maps (before pooling) are both the decoder's visual input and the Grad-CAM layer, so
the interface is simply ``features(images) -> (N, C, h, w)``.

**BatchNorm statistics per pass.** The saliency loop encodes two kinds of input with the same weights: the
unmasked pair (pass 1 / pass A) and the masked pair (pass 2 / pass B), whose intensity statistics differ (the
mask dims most of the image). One set of running statistics would be a blend of both that fits neither at
evaluation. So every BatchNorm layer keeps a second set (buffers ``masked_running_mean``, ``masked_running_var``,
``masked_num_batches_tracked``): ``features(images, masked=True)`` normalises with, and in training updates, that
set; everything else (weights, affine parameters) is shared. In train mode both passes normalise with their batch
statistics, exactly as before; only what evaluation uses differs. The two sets start equal (a pretrained ResNet's
statistics are copied into both).

**Activation checkpointing** (``train.grad_checkpointing``): in training, the stem and each stage run under
``torch.utils.checkpoint`` (non-reentrant: ``autograd.grad`` w.r.t. the feature maps works, and a retained graph
can be walked twice — the Grad-CAM's backward, then the loss's), so their inner activations are recomputed in the
backward rather than kept. The recompute runs each BatchNorm in train mode a second time, which would update its
running statistics twice — and, after :func:`masked_statistics` has swapped the sets back, the wrong set: so the
recompute restores them (:func:`statistics_kept`). Outputs and gradients are those of the plain forward.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from transformers import ResNetConfig, ResNetModel

from diffvqa.config import ModelConfig
from diffvqa.errors import MissingInputError, UserError


def resnet_config(config: ModelConfig) -> ResNetConfig:
    if config.encoder_layer_type not in ("basic", "bottleneck"):
        raise ValueError(f"model.encoder_layer_type={config.encoder_layer_type!r}: expected 'basic' or 'bottleneck'")
    if len(config.encoder_hidden_sizes) != len(config.encoder_depths):
        raise ValueError(
            f"model.encoder_hidden_sizes {config.encoder_hidden_sizes} and model.encoder_depths "
            f"{config.encoder_depths} must have the same length (one entry per stage)"
        )
    return ResNetConfig(
        num_channels=config.encoder_channels,
        embedding_size=config.encoder_embedding_size,
        hidden_sizes=list(config.encoder_hidden_sizes),
        depths=list(config.encoder_depths),
        layer_type=config.encoder_layer_type,
        hidden_act="relu",
    )


MASKED_PREFIX = "masked_"  # the second set of BatchNorm statistics: masked_running_mean, ...
STATISTICS = ("running_mean", "running_var", "num_batches_tracked")


def add_masked_statistics(module: nn.Module) -> list[nn.Module]:
    """Give every BatchNorm layer of ``module`` a copy of its running statistics for the masked pass; returns the
    layers. Idempotent."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    for norm in norms:
        for name in STATISTICS:
            if MASKED_PREFIX + name not in norm._buffers:
                norm.register_buffer(MASKED_PREFIX + name, norm._buffers[name].detach().clone())
    return norms


@contextlib.contextmanager
def masked_statistics(norms: list[nn.Module], enabled: bool = True) -> Iterator[None]:
    """Within the block, each layer's running statistics *are* its masked set: the buffers trade places (the same
    tensor objects, so in-place updates in train mode land in the masked set, and DDP, which broadcasts buffers by
    object, keeps each set apart). They trade back on exit, exceptions included."""

    def swap() -> None:
        for norm in norms:
            for name in STATISTICS:
                other = MASKED_PREFIX + name
                norm._buffers[name], norm._buffers[other] = norm._buffers[other], norm._buffers[name]

    if not enabled:
        yield
        return
    swap()
    try:
        yield
    finally:
        swap()


@contextlib.contextmanager
def statistics_kept(module: nn.Module) -> Iterator[None]:
    """The running statistics of ``module``'s BatchNorm layers (whichever set is in place) are as they were on entry
    when the block exits, exceptions included (the checkpoint's early stop of a recompute raises one)."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [(norm, {name: norm._buffers[name].clone() for name in STATISTICS}) for norm in norms]
    try:
        yield
    finally:
        with torch.no_grad():
            for norm, buffers in saved:
                for name, value in buffers.items():
                    norm._buffers[name].copy_(value)


def _recompute_contexts(module: nn.Module) -> tuple[contextlib.AbstractContextManager, ...]:
    """``checkpoint``'s context_fn: nothing around the forward, :func:`statistics_kept` around the recompute."""
    return contextlib.nullcontext(), statistics_kept(module)


def feature_stride(config: ModelConfig) -> int:
    """Input pixels per feature-map cell: the stem divides by 4, every stage after the first by 2."""
    return 4 * 2 ** (len(config.encoder_depths) - 1)


class ImageEncoder(nn.Module):
    """Normalises gray [0, 1] images and returns the ResNet's last feature maps.

    With ``load_pretrained`` and ``config.encoder_pretrained`` set, the weights come from that local directory
    (``ResNetModel.from_pretrained``); its architecture must match the config, so a checkpoint rebuilds from the
    config alone.
    """

    def __init__(self, config: ModelConfig, load_pretrained: bool = True):
        super().__init__()
        self.mean, self.std = config.image_mean, config.image_std
        self.channels = config.encoder_channels
        wanted = resnet_config(config)
        if load_pretrained and config.encoder_pretrained:
            path = Path(config.encoder_pretrained)
            if not (path / "config.json").is_file():
                raise MissingInputError(
                    f"model.encoder_pretrained={str(path)!r}: not a Hugging Face model directory "
                    "(expected config.json and weights saved with ResNetModel.save_pretrained)"
                )
            self.resnet = ResNetModel.from_pretrained(path)
            got = self.resnet.config
            for key in ("num_channels", "embedding_size", "hidden_sizes", "depths", "layer_type"):
                if getattr(got, key) != getattr(wanted, key):
                    raise UserError(
                        f"model.encoder_pretrained={str(path)!r} has {key}={getattr(got, key)!r} but the config "
                        f"asks for {getattr(wanted, key)!r}; set the model.encoder_* keys to match the weights"
                    )
        else:
            self.resnet = ResNetModel(wanted)
        self.out_channels = wanted.hidden_sizes[-1]
        self._norms = add_masked_statistics(self.resnet)  # after loading: pretrained statistics start both sets
        self.checkpointing = False  # train.grad_checkpointing (module docstring); a run setting, not saved

    def normalize(self, images: Tensor) -> Tensor:
        """(N, 1, S, S) in [0, 1] -> (N, channels, S, S) normalised; the gray channel repeated for 3-channel nets."""
        x = (images - self.mean) / self.std
        return x.expand(-1, self.channels, -1, -1) if self.channels != 1 else x

    def features(self, images: Tensor, masked: bool = False) -> Tensor:
        """(N, 1, S, S) in [0, 1] -> feature maps (N, C, h, w). ``masked``: the images are the masked pass's, so
        BatchNorm uses (and in training updates) the masked pass's running statistics (module docstring)."""
        with masked_statistics(self._norms, masked):
            pixels = self.normalize(images)
            if self.checkpointing and self.training and torch.is_grad_enabled():
                return self._checkpointed(pixels)
            return self.resnet(pixel_values=pixels).last_hidden_state

    def _checkpointed(self, pixels: Tensor) -> Tensor:
        """The ResNet's forward (stem, then the stages; ``ResNetModel`` adds only the unused pooling) with each
        piece checkpointed -> (N, C, h, w)."""
        x = pixels
        for piece in (self.resnet.embedder, *self.resnet.encoder.stages):
            x = checkpoint(piece, x, use_reentrant=False, context_fn=functools.partial(_recompute_contexts, piece))
        return x
