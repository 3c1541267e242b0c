"""Training curves: ``diffvqa plot RUN [RUN ...] [--out PREFIX]`` -> ``PREFIX.png`` and ``PREFIX.svg``.

Reads each run's ``metrics.jsonl`` (``diffvqa train`` appends one record per log step and one per validation) and
draws every numeric key over steps, one panel per key, the runs overlaid in one colour each. Panels come in groups:
the loss terms (``loss``, ``loss/*``), validation scores (``val/*``), localisation (any other key naming the
pointing game or registration) and the optimiser (``grad_norm``, ``lr``, ``pairs_per_s``); keys the log gains later
land in "other" rather than being dropped. Counts (``val/n``) and flags (booleans) are not curves and are skipped.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

from diffvqa.errors import ArgumentParser, MissingInputError, UserError, command
from diffvqa.files.jsonl import read_jsonl
from diffvqa.files.run import METRICS_LOG, find_metrics_log

GROUPS = ("loss", "validation", "localisation", "optimiser", "other")
SKIPPED = {"step", "val/n"}


def read_log(path: Path) -> dict[str, tuple[list[int], list[float]]]:
    """``{key: (steps, values)}`` of every numeric key; errors name the file and line."""
    series: dict[str, tuple[list[int], list[float]]] = {}
    for number, record in read_jsonl(path):
        step = record.get("step") if isinstance(record, dict) else None
        if not isinstance(step, int) or isinstance(step, bool):
            raise UserError(f"{path}:{number}: a record needs an integer 'step'")
        for key, value in record.items():
            if key in SKIPPED or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if math.isfinite(value):
                steps, values = series.setdefault(key, ([], []))
                steps.append(step)
                values.append(float(value))
    return series


def group_of(key: str) -> str:
    if key == "loss" or key.startswith("loss/"):
        return "loss"
    if key.startswith("val/"):
        return "validation"
    if "pointing" in key or "registration" in key:
        return "localisation"
    if key in ("grad_norm", "lr", "pairs_per_s"):
        return "optimiser"
    return "other"


def curve_keys(logs: list[dict[str, Any]]) -> list[str]:
    """The panels, in order: by group, ``loss`` first, then by name."""
    return sorted({k for log in logs for k in log}, key=lambda k: (GROUPS.index(group_of(k)), k != "loss", k))


def plot_runs(runs: list[str | Path], out: str | Path, labels: list[str] | None = None) -> list[Path]:
    """Draw the curves of ``runs`` (run directories or their ``metrics.jsonl``); write ``out`` + ``.png`` and
    ``.svg``. Returns the two paths."""
    import matplotlib

    matplotlib.use("Agg")  # no display here, and none needed
    import matplotlib.pyplot as plt

    logs = []
    for run in runs:
        log = find_metrics_log(run)
        if log is None:
            raise MissingInputError(f"{run}: no {METRICS_LOG} (a training run directory written by `diffvqa train`)")
        logs.append(read_log(log))
    labels = labels or _labels([Path(r) for r in runs])
    if not curve_keys(logs):
        raise UserError(f"{', '.join(map(str, runs))}: no numeric records to plot")
    with plt.rc_context({"svg.fonttype": "none"}):  # SVG text stays text: searchable and editable
        return _draw(plt, logs, labels, Path(out))


def _draw(plt, logs: list[dict[str, Any]], labels: list[str], out: Path) -> list[Path]:
    keys = curve_keys(logs)
    columns = min(4, len(keys))
    rows = math.ceil(len(keys) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.0 * rows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, key in zip(axes.flat, keys, strict=False):
        for r, log in enumerate(logs):
            if key in log:
                steps, values = log[key]
                marker = "o" if len(steps) < 30 else None  # validation records are few: show each one
                ax.plot(steps, values, color=colors[r % len(colors)], marker=marker, markersize=3, label=labels[r])
        values = [v for log in logs if key in log for v in log[key][1]]
        if min(values) > 0 and max(values) / min(values) > 1e3:
            ax.set_yscale("log")  # e.g. the registration term, orders of magnitude below the answer losses
        ax.set_title(f"{group_of(key)} · {key}", fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys) :]:
        ax.set_visible(False)
    if len(logs) > 1:
        axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [out.with_name(out.name + ".png"), out.with_name(out.name + ".svg")]
    for path in paths:
        fig.savefig(path, dpi=110)
    plt.close(fig)
    return paths


def _labels(runs: list[Path]) -> list[str]:
    names = [r.resolve().name for r in runs]
    return [str(r) for r in runs] if len(set(names)) < len(names) else names


@command("diffvqa plot")
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="diffvqa plot", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="training run directories (with metrics.jsonl)")
    parser.add_argument("--out", type=Path, help="output prefix (default: FIRST_RUN/curves)")
    parser.add_argument("--labels", help="comma-separated legend names, one per run")
    args = parser.parse_args(argv)
    labels = args.labels.split(",") if args.labels else None
    if labels is not None and len(labels) != len(args.runs):
        parser.error(f"--labels names {len(labels)} runs, but {len(args.runs)} were given")
    paths = plot_runs(args.runs, args.out or args.runs[0] / "curves", labels)
    print("wrote " + ", ".join(map(str, paths)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
