"""A full disk, said in one line: :class:`DiskFullError`, :func:`writing` and :func:`check_free_space`.

Every writer of diffvqa (prepare's cache and shards, a run's checkpoints, pointers and ``metrics.jsonl``, an
evaluation's outputs and viewer, the study) goes through :func:`writing`: when the device fills up under it, the
partial file or directory it names is removed and the failure becomes a :class:`DiskFullError` -- a
:class:`~diffvqa.errors.UserError`, so the command prints one line naming the path and what to do, instead of a
traceback out of pandas, numpy or torch. The faults covered and the lines a user sees: docs/faults.md.

Recognising a full disk: an ``OSError`` with ``errno`` ENOSPC (no space) or EDQUOT (quota), anywhere in the
exception's cause/context chain -- ``torch.save`` into a Python file object, for one, raises a ``RuntimeError``
("unexpected pos ...") whose context is the file's ``OSError``. A ``RuntimeError`` without that chain (torch's C++
writer given a path) counts only when the device really has less than :data:`FULL_MARGIN` bytes free: the free
space decides, never the message's wording, so a bug that happens to raise ``RuntimeError`` keeps its traceback.

This module is a leaf: it imports only :mod:`diffvqa.errors`.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import inspect
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from diffvqa.errors import UserError

FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
FULL_MARGIN = 1 << 20  # bytes: a write that failed with less than this free is taken to have hit the full device


class DiskFullError(UserError):
    """The device under ``path`` is full (or the user's quota is spent). ``detail`` says what was being written
    and what was cleaned up; ``advice`` what to do; both are parts of the one-line message."""

    def __init__(self, path: str | Path, detail: str = "", advice: str = "free space, then run the same command again"):
        self.path, self.detail, self.advice = Path(path), detail, advice
        super().__init__(f"{self.path}: the device is full{f' ({detail})' if detail else ''}; {advice}")

    def with_advice(self, advice: str) -> DiskFullError:
        """The same error with other advice (the caller knows better what to do, e.g. which checkpoint resumes)."""
        return DiskFullError(self.path, self.detail, advice)


def format_bytes(count: float) -> str:
    """``1234567`` -> ``'1.2 MB'`` (decimal units, as ``df -H`` prints them)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(count) < 1000 or unit == "TB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")


def free_bytes(path: str | Path) -> int:
    """Free bytes on the device that holds ``path`` (or its nearest existing parent: ``path`` may be created
    later)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def _errors(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and every exception in its ``__cause__`` / ``__context__`` chain (each once)."""
    seen: set[int] = set()
    stack = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        stack += [current.__cause__, current.__context__]


def is_disk_full(exc: BaseException, path: str | Path | None = None) -> bool:
    """Whether ``exc`` is the device under ``path`` running out of space (module docstring: how it is told)."""
    chain = list(_errors(exc))
    if any(isinstance(e, DiskFullError) for e in chain):
        return True
    if any(isinstance(e, OSError) and e.errno in FULL_ERRNOS for e in chain):
        return True
    # out of memory is a RuntimeError too (torch.OutOfMemoryError), and says so by its type
    out_of_memory = any(c.__name__ == "OutOfMemoryError" for c in type(exc).__mro__)
    if path is not None and isinstance(exc, RuntimeError) and not out_of_memory:
        try:
            return free_bytes(path) < FULL_MARGIN
        except OSError:
            return False
    return False


def _what_failed(exc: BaseException, path: Path) -> str:
    """The detail of a full device's failure: the system's words and the file, when the chain holds them."""
    for e in _errors(exc):
        if isinstance(e, OSError) and e.errno in FULL_ERRNOS:
            return os.strerror(e.errno) + (f" writing {e.filename}" if e.filename else "")
    try:
        return f"a write failed with {format_bytes(free_bytes(path))} free"
    except OSError:
        return "a write failed"


def remove(path: str | Path) -> None:
    """Remove a partial file or directory, quietly (it may not exist yet, or be half gone)."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


@contextlib.contextmanager
def writing(
    path: str | Path,
    *,
    partial: str | Path | list[str | Path] | None = None,
    what: str = "",
    advice: str = "free space, then run the same command again",
) -> Iterator[None]:
    """Write ``path`` inside the block; a full device becomes a :class:`DiskFullError` naming ``path``.

    ``partial``: what the block leaves half-written when it fails (a file, a directory, or a list of them), removed
    before the error is raised. ``what``: what the block was doing, for the message (e.g. "appending a record"). Any
    other exception passes untouched, and so does a DiskFullError raised inside (it already names its path).
    """
    items = [partial] if isinstance(partial, (str, Path)) else list(partial or [])
    try:
        yield
    except BaseException as exc:
        if not is_disk_full(exc, path):  # before removing anything: the free space may decide
            raise
        for item in items:
            remove(item)
        if isinstance(exc, DiskFullError):  # raised inside: it already names its path
            raise
        cleaned = f"; removed the partial {', '.join(str(i) for i in items)}" if items else ""
        said = _what_failed(exc, Path(path)) + (f" while {what}" if what else "")
        raise DiskFullError(path, f"{said}{cleaned}", advice) from exc


def full_disk_said(
    argument: str,
    advice: str | Callable[[Path], str] = "free space, then run the same command again",
    partial: str | tuple[str, ...] = (),
):
    """Decorate a command's library function whose output directory is its parameter ``argument``: a full device
    anywhere inside becomes one :class:`DiskFullError` with ``advice`` (a string, or a function of the directory
    called after the failure, e.g. to name the checkpoint a resume continues from). ``partial``: glob patterns,
    relative to the directory, of what a failed write leaves half-done (removed first, and named)."""

    def decorate(function):
        signature = inspect.signature(function)

        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            directory = Path(signature.bind(*args, **kwargs).arguments[argument])
            try:
                return function(*args, **kwargs)
            except BaseException as exc:
                if not is_disk_full(exc, directory):
                    raise
                patterns = (partial,) if isinstance(partial, str) else partial
                removed = sorted({path for pattern in patterns for path in directory.glob(pattern)})
                for path in removed:
                    remove(path)
                error = (
                    exc if isinstance(exc, DiskFullError) else DiskFullError(directory, _what_failed(exc, directory))
                )
                if removed:
                    cleaned = f"removed the partial {', '.join(map(str, removed))}"
                    error = DiskFullError(error.path, "; ".join(filter(None, [error.detail, cleaned])), error.advice)
                raise error.with_advice(advice(directory) if callable(advice) else advice) from exc

        return wrapper

    return decorate


def check_free_space(
    path: str | Path, needed: int, what: str, advice: str = "free space or choose another output directory"
) -> None:
    """Refuse before writing when the device under ``path`` has fewer than ``needed`` bytes free; ``what`` says
    what needs them and how the number was reached (e.g. "the cache: 2,000 images x 128 x 128 bytes")."""
    free = free_bytes(path)
    if free < needed:
        raise DiskFullError(
            path,
            f"{what} needs {format_bytes(needed)} but the device has {format_bytes(free)} free",
            advice,
        )


def directory_bytes(path: str | Path) -> int:
    """Total size of the files under ``path`` (0 when it does not exist)."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def preallocate(path: str | Path) -> None:
    """Reserve the blocks of the file at ``path`` up to its size, so that a memory map can be written without the
    device filling up under it: a write into a sparse file's hole on a full device is a SIGBUS that kills the
    process, whereas ``posix_fallocate`` fails here with ENOSPC. A no-op where the call does not exist."""
    if not hasattr(os, "posix_fallocate"):
        return
    fd = os.open(path, os.O_RDWR)
    try:
        size = os.fstat(fd).st_size
        if size:
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError as exc:
                if exc.errno in FULL_ERRNOS:
                    raise OSError(exc.errno, exc.strerror, str(path)) from None  # the call names no file
                # EOPNOTSUPP/EINVAL: a file system without the call (some network ones); writes go unreserved
    finally:
        os.close(fd)
