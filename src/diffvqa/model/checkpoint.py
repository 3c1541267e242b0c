"""Checkpoints: a directory that describes itself.

    config.json          the resolved Config; the model rebuilds from it alone
    model.safetensors    the weights (never a pickle)
    tokenizer.json       the tokenizer (word-level or GPT-2 BPE with our special tokens)

Training runs add ``trainer_state`` (see ``diffvqa.train``). Saving unwraps DDP and ``torch.compile`` wrappers,
so keys never carry ``module.`` or ``_orig_mod.`` prefixes. Loading is strict: a missing or unexpected key is
an error that names it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from diffvqa.config import Config
from diffvqa.data.text import Tokenizer
from diffvqa.errors import MissingInputError, UserError
from diffvqa.model.vqa import DiffVQA

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


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
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items() if k not in tied}, str(path))


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    """``model.safetensors`` -> tensors; a missing, truncated or corrupt file is a UserError naming it."""
    if not path.is_file():
        raise MissingInputError(f"{path}: not found (a checkpoint holds {CONFIG_FILE} and {WEIGHTS_FILE})")
    try:
        return load_file(str(path))
    # safetensors raises its own SafetensorError for a bad header and OSError/RuntimeError for a short file
    except Exception as exc:  # noqa: BLE001 - any failure to parse the file is the file's fault
        raise UserError(
            f"{path}: not a readable safetensors file ({type(exc).__name__}: {exc}); the checkpoint is truncated "
            "or corrupt: copy it again, or use another checkpoint of the run"
        ) from exc


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load ``model.safetensors`` strictly. A missing or unexpected key, or a tensor whose shape differs from
    the model's (a ``config.json`` that does not describe these weights), raises :class:`UserError` naming the
    file and the first offender."""
    path = Path(path)
    model = unwrap_model(model)
    expected = model.state_dict()
    tied = _shared_duplicates(expected)
    state = _read_weights(path)
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


def read_pointer(run_dir: str | Path, name: str) -> Path | None:
    """The checkpoint directory a training run's ``latest`` or ``best`` pointer file names, if any."""
    pointer = Path(run_dir) / name
    if not pointer.is_file():
        return None
    return Path(run_dir) / pointer.read_text().strip()


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory itself, or a training run's best checkpoint (else its latest)."""
    path = Path(path)
    if (path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file():
        return path
    for name in ("best", "latest"):
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
