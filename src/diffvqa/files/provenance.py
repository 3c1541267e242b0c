"""Where a run came from: ``run_info.json`` in every training run and evaluation directory.

A number is only worth comparing when one can say what made it. ``run_info.json`` records the command line, the
diffvqa version and the git commit of its source (with whether the working tree had uncommitted changes), the
world size and device, the Python / torch / CUDA / cuDNN / transformers versions, the host and the start time.
A resumed training run keeps the earlier starts under ``earlier`` (newest last), so a run trained in several
slices says what ran each.

This module is a leaf: it imports nothing from diffvqa but the atomic write and the version.
"""

from __future__ import annotations

import json
import platform
import socket
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from diffvqa.files.atomic import write_atomic

RUN_INFO_FILE = "run_info.json"
_SOURCE = Path(__file__).resolve().parent


def git_state(directory: Path = _SOURCE) -> dict[str, Any] | None:
    """The commit of the git checkout holding ``directory`` and whether it had uncommitted changes; None when the
    code is not in a git checkout (an installed wheel) or git is missing."""

    def git(*args: str) -> str | None:
        try:
            result = subprocess.run(
                ["git", "-C", str(directory), *args], capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return result.stdout.strip() if result.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return None
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def library_versions() -> dict[str, str | None]:
    """The versions that change numbers: torch (and its CUDA / cuDNN builds), transformers, numpy, pycocoevalcap."""
    import importlib.metadata

    import torch

    def version(package: str) -> str | None:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return None

    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": None if cudnn is None else str(cudnn),
        "transformers": version("transformers"),
        "numpy": version("numpy"),
        "pycocoevalcap": version("pycocoevalcap"),
    }


def run_info(*, world_size: int = 1, device: str = "cpu", argv: list[str] | None = None) -> dict[str, Any]:
    """This process's provenance (see the module docstring)."""
    import torch

    from diffvqa.version import __version__

    gpu = None
    if device.startswith("cuda") and torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(torch.device(device))
    return {
        "command": list(sys.argv if argv is None else argv),
        "diffvqa": __version__,
        "git": git_state(),
        "world_size": world_size,
        "device": device,
        "gpu": gpu,
        "versions": library_versions(),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def write_run_info(directory: str | Path, info: dict[str, Any]) -> Path:
    """Write ``directory/run_info.json``; an earlier one's starts move under ``earlier`` (a resumed run)."""
    path = Path(directory) / RUN_INFO_FILE
    earlier: list[dict[str, Any]] = []
    if path.is_file():
        try:
            previous = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            previous = None  # unreadable: replaced (it is a record, not an input)
        if isinstance(previous, dict):
            earlier = [*previous.pop("earlier", []), previous]
    record = {**info, **({"earlier": earlier} if earlier else {})}
    write_atomic(path, json.dumps(record, indent=2) + "\n")
    return path
