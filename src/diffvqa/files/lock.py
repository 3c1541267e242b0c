"""One writer per output directory: :func:`output_lock`.

``train``, ``prepare``, ``evaluate`` and ``study`` hold an exclusive lock on their output directory while they run,
so that two processes started at once into the same ``--out`` cannot interleave ``metrics.jsonl`` or race on the
checkpoints: the second gets :class:`DirectoryLockedError`, one line naming the holder's PID.

The lock is ``fcntl.flock`` on ``DIR/.lock`` (which holds the holder's PID and command, for that message). The
operating system releases it when the holder exits, however it exits -- a crash or SIGKILL included -- so a lock
file left behind by a dead process never blocks: the next run simply takes it. Where there is no ``fcntl``
(Windows), ``msvcrt.locking`` on the file's first byte does the same (also released by the OS at exit).

Nesting: a lock is per process and re-entrant -- a process that already holds ``DIR`` (e.g. ``demo`` calling
``prepare`` and ``train``, or a script calling ``train`` inside its own lock) takes it again at no cost and
releases it with the outermost holder. Different directories (the study's ``DIR`` and the runs under
``DIR/runs/``) are different locks, so a study never blocks the trainings it starts. Under ``torchrun`` only rank 0
writes, so only rank 0 locks: the other ranks of the same job must not be turned away by their own rank 0.

A directory the lock created is removed again when the command fails before writing anything into it (a failed
``evaluate`` leaves no empty ``--out`` behind).

This module is a leaf: it imports only :mod:`diffvqa.errors`.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from diffvqa.errors import UserError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
    import msvcrt

LOCK_FILE = ".lock"

_held: dict[Path, int] = {}  # directory -> nesting depth, in this process
_held_guard = threading.Lock()  # the study's threads and evaluate's strip worker share the process


class DirectoryLockedError(UserError):
    """Another process holds the output directory's lock."""


def _try_lock(fd: int) -> bool:
    """Take the exclusive lock on ``fd`` without waiting; False when another process holds it."""
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:
            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError:
        return False
    return True


def _holder(path: Path) -> str:
    """What the lock file says about its holder ("PID 1234, diffvqa train"), for the error message."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError:
        text = ""
    pid, _, what = text.partition(" ")
    if not pid.isdigit():
        return "its PID not recorded yet"
    return f"PID {pid}" + (f", {what}" if what else "")


def _acquire(directory: Path, command: str) -> int:
    """Open and lock ``directory/.lock``; -> its descriptor. Retries while the file it locked was replaced under it
    (a holder that was finishing removed it): a lock on an unlinked file would guard nothing."""
    path = directory / LOCK_FILE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if not _try_lock(fd):
            os.close(fd)
            raise DirectoryLockedError(
                f"{directory}: another process is writing here ({_holder(path)}); wait for it to finish or choose "
                "another output directory"
            )
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    with contextlib.suppress(OSError):  # a full disk: the lock holds without its note (the writes will say why)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {command}\n".encode())
    return fd


def _only_the_lock(directory: Path) -> bool:
    try:
        return {p.name for p in directory.iterdir()} <= {LOCK_FILE}
    except OSError:
        return False


def _is_secondary_rank() -> bool:
    """A rank other than 0 of a torchrun job (rank 0 writes and locks for the job)."""
    return int(os.environ.get("RANK", "0")) != 0


@contextlib.contextmanager
def output_lock(directory: str | Path, command: str = "diffvqa") -> Iterator[Path]:
    """Hold the exclusive lock on ``directory`` (created if needed) for the block; -> the directory.

    Raises :class:`DirectoryLockedError` at once, naming the holder's PID, when another process holds it.
    ``command`` is recorded for that message. Re-entrant within a process; a no-op on torchrun ranks other than
    0. When the block fails and the directory, created here, holds nothing, it is removed.
    """
    directory = Path(directory)
    if _is_secondary_rank():
        yield directory
        return
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    key = directory.resolve()
    with _held_guard:
        depth = _held.get(key, 0)
        fd = None if depth else _acquire(directory, command)
        _held[key] = depth + 1
    failed = True
    try:
        yield directory
        failed = False
    finally:
        with _held_guard:
            _held[key] -= 1
            last = _held[key] == 0
            if last:
                del _held[key]
        if fd is not None:
            # unlink before unlocking: a process waiting to lock this file would otherwise lock a file that is
            # about to disappear (_acquire checks for that, too)
            with contextlib.suppress(OSError):
                (directory / LOCK_FILE).unlink()
            os.close(fd)  # releases the lock
            if failed and created and _only_the_lock(directory):
                with contextlib.suppress(OSError):
                    directory.rmdir()


def one_writer(argument: str, command: str):
    """Decorate a command's library function whose output directory is its parameter ``argument``: the function
    runs holding that directory's :func:`output_lock`."""

    def decorate(function):
        signature = inspect.signature(function)

        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            with output_lock(signature.bind(*args, **kwargs).arguments[argument], command):
                return function(*args, **kwargs)

        return wrapper

    return decorate
