"""The ``diffvqa`` command: one subcommand per job, each a ``main(argv)`` in the module that does the job.

Only the chosen subcommand's module is imported, so ``diffvqa simulate`` does not pay for torch and
``diffvqa --help`` is instant.

Errors (``diffvqa.errors``): every subcommand reports a user error -- a bad argument, config key or value, file,
checkpoint or data row -- as one line ``diffvqa <command>: error: ...`` on stderr with exit code 2; a bug keeps
its traceback. ``--debug`` or ``DIFFVQA_DEBUG=1`` shows the traceback of a user error too.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

# command -> (module, function taking argv, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "simulate": ("diffvqa.data.phantom", "simulate_main", "write a longitudinal CXR phantom in the release format"),
    "contact-sheet": ("diffvqa.data.phantom", "contact_sheet_main", "render phantom pairs and findings to a PNG"),
    "prepare": (
        "diffvqa.data.cache_writer",
        "prepare_main",
        "decode a release's images once into a memory-mapped cache",
    ),
    "keywords": ("diffvqa.saliency.keywords", "keywords_main", "precompute keywords for every unique answer"),
    "config": ("diffvqa.config", "config_main", "print a preset's resolved config (with overrides), as train uses it"),
    "pretrain": (
        "diffvqa.commands.pretrain",
        "main",
        "pretrain the encoder on finding labels (for model.encoder_pretrained)",
    ),
    "train": ("diffvqa.commands.train", "main", "train a model on a prepared cache"),
    "evaluate": ("diffvqa.commands.evaluate", "main", "evaluate a checkpoint: predictions.jsonl + metrics.json"),
    "view": ("diffvqa.viewer.build", "main", "write the browsable viewer of one evaluation, or two side by side"),
    "plot": ("diffvqa.report.curves", "main", "plot training curves of one or more runs (PNG and SVG)"),
    "ask": ("diffvqa.commands.ask", "main", "answer one question about a main/reference image pair"),
    "study": (
        "diffvqa.commands.study",
        "main",
        "ablation grid x seeds on a prepared cache: study.md, study.json, plots",
    ),
    "demo": ("diffvqa.commands.demo", "main", "phantom -> prepare -> train -> evaluate -> report, end to end"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: diffvqa <command> [options]   (diffvqa <command> --help for its options)", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, _, help_) in COMMANDS.items()]
    lines += ["", "a user error prints one line and exits 2; --debug (or DIFFVQA_DEBUG=1) shows its traceback"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] == "--version":
        from diffvqa.version import __version__

        print(f"diffvqa {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"diffvqa: error: unknown command {command!r}; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module_name, function_name, _ = COMMANDS[command]
    function = getattr(importlib.import_module(module_name), function_name)
    return int(function(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
