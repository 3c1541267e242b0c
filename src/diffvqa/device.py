"""Which torch device a command runs on: ``auto`` picks CUDA when this machine has it, else the CPU.

Every command that runs the model (``train``, ``evaluate``, ``ask``, the Python API) defaults to ``auto``, so a GPU
user who forgets ``--device`` is not silently put on the CPU, and a CPU-only machine needs no flag.
"""

from __future__ import annotations

import torch

from diffvqa.errors import check_device

AUTO = "auto"


def resolve_device(name: str, option: str = "--device") -> torch.device:
    """``auto`` -> ``cuda`` when available, else ``cpu``; any other name is checked to be usable here."""
    if name == AUTO:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    check_device(name, option)
    return torch.device(name)
