"""Checkpoints: a directory that describes itself.

    config.json          the resolved Config; the model rebuilds from it alone
    model.safetensors    the weights (never a pickle)
    tokenizer.json       the tokenizer (word-level or GPT-2 BPE with our special tokens)

A training run's checkpoints add ``trainer_state.pt`` (the run directory: :mod:`diffvqa.files.run`). Saving unwraps
DDP and ``torch.compile`` wrappers, so keys never carry ``module.`` or ``_orig_mod.`` prefixes. Loading is strict:
a missing or unexpected key is an error that names it.

The weights file carries the checkpoint's format version in its safetensors metadata (``diffvqa_format``):

* 1 (no version recorded): one set of BatchNorm statistics, blended over the saliency loop's two passes. Such a
  checkpoint still loads: both passes use that one set, as when it was trained, and a note says so.
* 2: a second set of BatchNorm statistics for the masked pass (:mod:`diffvqa.model.encoder`).

A format newer than this code knows is an error.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save
from torch import nn

from diffvqa.config import Config
from diffvqa.data.text import Tokenizer
from diffvqa.errors import MissingInputError, UserError
from diffvqa.files.run import BEST, CONFIG_FILE, LATEST, read_pointer
from diffvqa.model.encoder import MASKED_PREFIX
from diffvqa.model.vqa import DiffVQA

WEIGHTS_FILE = "model.safetensors"
FORMAT_KEY = "diffvqa_format"
FORMAT_VERSION = 2


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module inside DDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def _shared_duplicates(state: dict[str, torch.Tensor]) -> set[str]:
    """Keys whose tensor shares storage with an earlier key (GPT-2's lm_head is tied to its embedding)."""
    seen: dict[tuple[int, tuple[int, ...]], str] = {}
    duplicates = set()
    for key, tensor in state.items():
        ident = (tensor.untyped_storage().data_ptr(), tuple(tensor.shape))
        if ident in seen:
            duplicates.add(key)
        else:
            seen[ident] = key
    return duplicates


def save_weights(model: nn.Module, path: str | Path) -> None:
    state = unwrap_model(model).state_dict()
    tied = _shared_duplicates(state)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items() if k not in tied}
    # serialised here and written by Python: safetensors' own file writer reports a full disk as a SafetensorError
    # without an errno, and a full disk must be told as one (diffvqa.files.disk)
    Path(path).write_bytes(save(tensors, metadata={FORMAT_KEY: str(FORMAT_VERSION)}))


def _read_weights(path: Path) -> tuple[dict[str, torch.Tensor], int]:
    """``model.safetensors`` -> (tensors, format version); a missing, truncated or corrupt file is a UserError
    naming it."""
    if not path.is_file():
        raise MissingInputError(f"{path}: not found (a checkpoint holds {CONFIG_FILE} and {WEIGHTS_FILE})")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(path))
    # safetensors raises its own SafetensorError for a bad header and OSError/RuntimeError for a short file
    except Exception as exc:  # noqa: BLE001 - any failure to parse the file is the file's fault
        raise UserError(
            f"{path}: not a readable safetensors file ({type(exc).__name__}: {exc}); the checkpoint is truncated "
            "or corrupt: copy it again, or use another checkpoint of the run"
        ) from exc
    raw = metadata.get(FORMAT_KEY, "1")
    if not raw.isdigit():
        raise UserError(f"{path}: metadata {FORMAT_KEY}={raw!r} is not a format version (expected an integer)")
    version = int(raw)
    if version > FORMAT_VERSION:
        raise UserError(
            f"{path}: checkpoint format {version} was written by a newer diffvqa (this one reads formats 1 to "
            f"{FORMAT_VERSION}); upgrade diffvqa to load it"
        )
    return tensors, version


def _single_statistics(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], path: Path) -> None:
    """Format 1: give the masked pass the checkpoint's one set of BatchNorm statistics (what it was trained and
    evaluated with), in place, and say so once."""
    copied = 0
    for key in expected:
        module, _, name = key.rpartition(".")
        if name.startswith(MASKED_PREFIX) and key not in state:
            source = f"{module}.{name[len(MASKED_PREFIX) :]}"
            if source in state:
                state[key] = state[source].clone()
                copied += 1
    if copied:
        print(
            f"diffvqa: note: {path} is a format-1 checkpoint (written before per-pass BatchNorm statistics): both "
            "passes use its single set of statistics, as when it was trained; a model trained by this version "
            "keeps one set per pass",
            file=sys.stderr,
        )


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load ``model.safetensors`` strictly. A missing or unexpected key, or a tensor whose shape differs from
    the model's (a ``config.json`` that does not describe these weights), raises :class:`UserError` naming the
    file and the first offender. A format-1 checkpoint loads with its one set of BatchNorm statistics for both
    passes (module docstring)."""
    path = Path(path)
    model = unwrap_model(model)
    expected = model.state_dict()
    tied = _shared_duplicates(expected)
    state, version = _read_weights(path)
    if version == 1:
        _single_statistics(state, expected, path)
    missing = [k for k in expected if k not in state and k not in tied]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise UserError(
            f"{path}: the weights do not match the model built from its config: "
            f"missing keys {missing}, unexpected keys {unexpected}"
        )
    for key, wanted in expected.items():  # in the model's order: the first mismatch is the one reported
        if key in state and tuple(state[key].shape) != tuple(wanted.shape):
            raise UserError(
                f"{path}: tensor {key!r} has shape {tuple(state[key].shape)} but the model built from "
                f"{path.parent / CONFIG_FILE} expects {tuple(wanted.shape)}; the config does not describe "
                "these weights"
            )
    model.load_state_dict(state, strict=False)


def save_checkpoint(model: nn.Module, directory: str | Path) -> Path:
    """Write config, weights and tokenizer to ``directory`` (created if needed)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    plain = unwrap_model(model)
    plain.config.save(directory / CONFIG_FILE)
    plain.tokenizer.save(directory)
    save_weights(plain, directory / WEIGHTS_FILE)
    return directory


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory itself, or a training run's best checkpoint (else its latest)."""
    path = Path(path)
    if (path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file():
        return path
    for name in (BEST, LATEST):
        target = read_pointer(path, name)
        if target is not None and target.is_dir():
            return target
    raise MissingInputError(
        f"{path}: neither a checkpoint (config.json + model.safetensors) nor a training run with a "
        "'best' or 'latest' checkpoint"
    )


def load_checkpoint(directory: str | Path, map_location: str | torch.device = "cpu") -> DiffVQA:
    """Rebuild a :class:`DiffVQA` from a checkpoint directory or a training run directory (its best, else
    latest checkpoint). Pretrained-weight paths are not needed."""
    directory = find_checkpoint(directory)
    config = Config.load(directory / CONFIG_FILE)
    tokenizer = Tokenizer.load(directory, config.model.tokenizer)
    model = DiffVQA(config, tokenizer, load_pretrained=False)
    load_weights(model, directory / WEIGHTS_FILE)
    return model.to(map_location)
