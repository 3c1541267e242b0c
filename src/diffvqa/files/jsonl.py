"""JSON Lines files (``predictions.jsonl``, a run's ``metrics.jsonl``) read with errors that name file and line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from diffvqa.errors import UserError


def read_jsonl(path: str | Path) -> Iterator[tuple[int, Any]]:
    """``(line number, record)`` of each non-blank line; a line that is not JSON raises ``ValueError`` naming
    ``path:line``."""
    with Path(path).open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}:{number}: not JSON ({exc.msg})") from None
