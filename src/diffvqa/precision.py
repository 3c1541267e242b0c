"""Mixed precision in training: ``train.autocast`` (none | bf16 | fp16) and fp16's gradient scaler.

bf16 keeps float32's exponent range, so autocast alone suffices. fp16 has five exponent bits: a gradient below
~6e-8 flushes to zero and one below ~6e-5 loses precision. So the fp16 step multiplies the loss by a scale before
its backward and divides the gradients by it before clipping (``torch.amp.GradScaler``: the scale grows while the
gradients stay finite; a step whose gradients are not is skipped and the scale halved). The scaler's state is part
of the trainer state, so ``--resume`` continues exactly.

The Grad-CAM inside the step takes its own gradient (of the keyword score, not the loss) and scales it itself:
:func:`diffvqa.saliency.gradcam.score_gradient`.

fp16 autocast runs on CPU too (torch 2.13's CPU autocast casts to float16, and ``GradScaler("cpu")`` works), which
is how the tests check this path; it is meant for GPUs without bf16 (V100, T4), and on CPU is noted once, like the
other GPU levers (at toy size there it was slower than float32: benchmarks/gpu.py --device cpu --quick).
"""

from __future__ import annotations

import contextlib

import torch

from diffvqa.config import Config

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(config: Config, device: torch.device) -> contextlib.AbstractContextManager:
    """The forward's autocast region for ``train.autocast`` (a no-op context for ``none``)."""
    mode = config.train.autocast
    if mode == "none":
        return contextlib.nullcontext()
    if mode not in AUTOCAST_DTYPES:  # the config's rule lists the same choices
        raise ValueError(f"train.autocast={mode!r}: expected one of none, {', '.join(AUTOCAST_DTYPES)}")
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPES[mode])


def grad_scaler(config: Config, device: torch.device) -> torch.amp.GradScaler:
    """A gradient scaler, enabled for ``train.autocast=fp16`` only (disabled, each of its calls passes through)."""
    return torch.amp.GradScaler(device.type, enabled=config.train.autocast == "fp16")


def precision_notes(config: Config, device: torch.device) -> list[str]:
    """One note per precision setting that is not what it is meant for on ``device`` (printed once by the caller)."""
    if config.train.autocast == "fp16" and device.type == "cpu":
        return ["train.autocast=fp16 on cpu runs float16 kernels that are meant for GPUs (use none or bf16 on CPU)"]
    return []
