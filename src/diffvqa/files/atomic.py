"""Files written whole or not at all: :func:`write_atomic`.

A reader (another process, a resumed run, a user's ``cat``) never sees half a file: the bytes go to a temporary
file in the same directory, which then replaces the target in one ``os.replace`` (atomic on POSIX and Windows
within one file system). Every file diffvqa rewrites in place -- a cache's ``manifest.json`` and ``prepare.json``,
a run's ``latest``/``best`` pointers and ``metrics.jsonl`` after a resume, the LLM keyword cache -- goes through it.

A full device is a :class:`~diffvqa.files.disk.DiskFullError` naming ``path`` (the temporary file removed, an existing
target untouched).

This module is a leaf: it imports only :mod:`diffvqa.files.disk`.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from diffvqa.files.disk import writing


def write_atomic(path: str | Path, data: str | bytes, encoding: str = "utf-8") -> None:
    """Write ``data`` (text or bytes) to ``path`` atomically; the directory must exist.

    The temporary file is ``.{name}.{pid}.{thread}.tmp`` beside ``path`` (so concurrent writers never share one)
    and is removed when the write fails. The result has the permissions of any new file (the umask's).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with writing(path):  # the temporary file is removed below
        try:
            if isinstance(data, bytes):
                tmp.write_bytes(data)
            else:
                tmp.write_text(data, encoding=encoding)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
