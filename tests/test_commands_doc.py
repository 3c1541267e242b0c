"""docs/commands.md against the commands themselves: every command is documented, and every option the table shows
is one its parser takes (a renamed flag would otherwise leave the docs pointing at nothing)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from diffvqa.cli import COMMANDS
from diffvqa.cli import main as cli_main

DOC = Path(__file__).resolve().parents[1] / "docs/commands.md"
ROW = re.compile(r"^\| `diffvqa ([\w-]+)([^`]*)`")  # a table row: the command and what the first cell shows of it


def _documented() -> dict[str, set[str]]:
    flags: dict[str, set[str]] = {}
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if match := ROW.match(line):
            flags.setdefault(match[1], set()).update(re.findall(r"--[a-z][\w-]*", match[2]))
    return flags


def test_every_command_has_a_row():
    assert set(_documented()) == set(COMMANDS)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_the_documented_options_exist(command, capsys):
    with pytest.raises(SystemExit) as done:
        cli_main([command, "--help"])
    assert done.value.code == 0
    usage = capsys.readouterr().out
    missing = sorted(flag for flag in _documented()[command] if not re.search(rf"{re.escape(flag)}(?![\w-])", usage))
    assert not missing, f"docs/commands.md shows diffvqa {command} {missing}, which its --help does not list"
