"""User errors: one type for "the input is wrong", one way for every command to report it.

A :class:`UserError` is raised where user input enters (an argument, a config key or value, a file, a
checkpoint, a data row) with a message that names the value, where it came from and what was expected. Every
``diffvqa`` subcommand's ``main`` is wrapped in :func:`command`, which prints such an error as one line,
``diffvqa <command>: error: <message>``, on stderr and returns exit code 2. Anything else is a bug and keeps its
traceback. ``--debug`` (or ``DIFFVQA_DEBUG=1``) prints the traceback of a user error too.

Why not catch ``ValueError`` wholesale: numpy, pandas, torch and our own internal checks raise it for bugs as
well, and a bug reported as a one-line "error" is a bug hidden. ``UserError`` subclasses ``ValueError`` so that
library callers (and tests) that catch ``ValueError`` keep working; the commands catch only ``UserError``.

This module is a leaf: it imports nothing from diffvqa, so any module may raise these.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import traceback
from collections.abc import Callable, Sequence

DEBUG_FLAG = "--debug"
DEBUG_ENV = "DIFFVQA_DEBUG"
EXIT_USER_ERROR = 2  # argparse's convention for a usage error; every user error uses it


class UserError(ValueError):
    """Bad user input: reported as one line and exit code 2 by the commands, never with a traceback."""


class MissingInputError(UserError, FileNotFoundError):
    """A file or directory the user named does not exist (also a ``FileNotFoundError`` for library callers)."""


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose usage errors are one line (no usage block), and which accepts
    ``--debug``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Read by :func:`command` before parsing; declared here so --help lists it and parsing accepts it.
        self.add_argument(DEBUG_FLAG, action="store_true", help="show the traceback of a user error too")

    def error(self, message: str):  # argparse calls this for a bad or missing argument
        _print_error(self.prog, f"{message} (see {self.prog} --help)")
        self.exit(EXIT_USER_ERROR)


def check_output_dir(path, option: str = "--out") -> None:
    """An output directory may exist (it is reused) but must not be a file."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{option} {path}: is a file; expected a directory (it is created if needed)")


def check_device(name: str, option: str = "--device") -> None:
    """A torch device name that this machine can use ("cuda" without a GPU is a user error, not a traceback)."""
    import torch

    try:
        torch.empty(0, device=torch.device(name))
    except Exception as exc:  # noqa: BLE001 - RuntimeError (unknown name), AssertionError (torch without CUDA)...
        raise UserError(f"{option} {name}: not a device this machine can use ({one_line(exc)[:200]})") from None


def one_line(message: object) -> str:
    """A message with its line breaks and runs of whitespace collapsed to single spaces."""
    return " ".join(str(message).split())


def _print_error(prog: str, message: object) -> None:
    print(f"{prog}: error: {one_line(message)}", file=sys.stderr)


def debug_requested(argv: Sequence[str]) -> bool:
    return DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def command(prog: str) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Decorate a subcommand's ``main(argv) -> int``: a :class:`UserError` becomes one line on stderr and
    exit code 2 (with the traceback first under ``--debug`` / ``DIFFVQA_DEBUG=1``); other exceptions pass."""

    def decorate(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def wrapper(argv: Sequence[str] | None = None) -> int:
            args = list(sys.argv[1:] if argv is None else argv)
            try:
                return main(args)
            except UserError as exc:
                if debug_requested(args):
                    traceback.print_exc()
                _print_error(prog, exc)
                return EXIT_USER_ERROR

        return wrapper

    return decorate
