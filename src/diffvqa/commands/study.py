"""The ablation study: ``diffvqa study --data CACHE --out DIR [--eval-data CACHE] [--seeds 3] [--jobs N]
[--variants ...] [key=value ...]``.

Each variant of the method (:data:`VARIANTS`) is trained with each seed on a prepared cache and evaluated two-pass
on the test split's difference questions — of ``--eval-data`` when given (e.g. a larger phantom release of another
seed: evaluation is cheap, and more questions narrow the intervals), else of the training cache — with the same
code a user runs (``diffvqa train`` / ``evaluate``, as subprocesses so that ``--jobs`` runs share the cores).
Finished runs are skipped and interrupted trainings resume, so the study can be stopped and restarted at will.

Every comparison comes with a 95 % interval (:func:`diffvqa.metrics.intervals.seeds_and_questions_interval`: seeds and
questions resampled, paired by seed and question): each variant's final − preliminary CIDEr-D, and each variant's
final CIDEr-D minus the reference variant's (``full`` when it is in the grid). It writes::

    DIR/runs/<variant>/seed<k>/            the training run (diffvqa train) and its eval/ (diffvqa evaluate)
    DIR/study_settings.json                what every run shares (preset, overrides, the two caches): a later
                                           invocation with other settings is refused, not mixed in
    DIR/study.json                         per variant: every seed's numbers, their mean and sd; the comparisons
    DIR/study.md                           the tables (mean ± sd over seeds; comparisons with their intervals)
    DIR/pointing_over_training.png         validation pointing game over steps (phantom caches)
    DIR/registration_over_training.png     validation registration error ratio over steps
    DIR/pointing_per_finding.png           the test pointing game per finding, with chance and prior

The seed sets ``train.seed``: weight initialisation and data order both change with it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from diffvqa.config import FROM_SCRATCH
from diffvqa.errors import ArgumentParser, MissingInputError, UserError, check_output_dir, command
from diffvqa.files.atomic import write_atomic
from diffvqa.files.disk import full_disk_said
from diffvqa.files.lock import one_writer
from diffvqa.files.run import EVAL_METRICS_FILE, LATEST, METRICS_LOG, PREDICTIONS_FILE
from diffvqa.metrics.headline import HEADLINES, STUDY_COLUMNS, STUDY_REFERENCES, lookup
from diffvqa.metrics.intervals import seeds_and_questions_interval

# Variants that start from a pretrained encoder name it {pretrained}: the study pretrains one per seed first
# (`diffvqa pretrain`, same train.seed) into DIR/pretrain/seed<k> and puts its encoder directory there; {labels} is
# the label set it was pretrained on (pretrain.labels).
PRETRAINED = "{pretrained}"
FROM_PRETRAINED = [f"model.encoder_pretrained={PRETRAINED}"]
WITH_HEAD = [*FROM_PRETRAINED, "model.finding_head={labels}"]

# `small` from random weights: the previous `small`, and the reference the pretrained encoder is compared with.
SCRATCH = list(FROM_SCRATCH)

# variant -> (what it tests, its config overrides on top of the preset and the study's own overrides)
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "full": ("the method from random weights (the previous small; shared mask = max)", SCRATCH),
    "no_aligner": ("no pre-alignment (Θ = identity)", [*SCRATCH, "model.align=false"]),
    "no_reg": ("aligner without L_reg", [*SCRATCH, "model.align_reg_weights=[0,0,0]"]),
    "no_similarity": ("aligner trained by the answer loss only (the paper)", [*SCRATCH, "model.align_similarity=0"]),
    "single_pass": ("no saliency loop, from random weights", [*SCRATCH, "saliency.enabled=false"]),
    "mask_mean": ("shared mask = mean of the two CAMs", [*SCRATCH, "saliency.mask=mean"]),
    "mask_main": ("mask from the main image's CAM only", [*SCRATCH, "saliency.mask=main"]),
    "mask_ref": ("mask from the reference image's CAM only", [*SCRATCH, "saliency.mask=ref"]),
    "mask_none": ("no masking (pass 2 sees what pass 1 saw)", [*SCRATCH, "saliency.mask=none"]),
    "floor_05": ("a stronger mask: floor 0.5 instead of the preset's", [*SCRATCH, "saliency.mask_floor=0.5"]),
    "late_guidance": ("the saliency loop in the last 200 of 1,100 steps only", [*SCRATCH, "saliency.start_step=900"]),
    "blind": (
        "question only: both images replaced by zeros",
        ["model.blind=true", "saliency.enabled=false", *FROM_SCRATCH],
    ),  # fmt: skip
    "pretrained": ("the method as configured: the encoder pretrained on finding labels first", FROM_PRETRAINED),
    "pretrained_single_pass": ("no saliency loop, pretrained encoder", [*FROM_PRETRAINED, "saliency.enabled=false"]),
    "demo_schedule": (
        "pretrained, the demo's schedule: 600 steps, the saliency loop from step 300",
        [*FROM_PRETRAINED, "train.steps=600", "saliency.start_step=300"],  # as `diffvqa demo` scales small's
    ),
    "pretrained_truth_keyword": (
        "pretrained, keywords from the phantom's truth instead of the lexicon",
        [*FROM_PRETRAINED, "saliency.keyword_source=truth"],
    ),
    "pretrained_classifier_cam": (
        "pretrained, the keyword's map from the finding head's logit (saliency.cam_source=classifier)",
        [*WITH_HEAD, "saliency.cam_source=classifier"],
    ),
    "pretrained_finding_loss": (
        "pretrained, the finding head's loss kept during VQA training on the reference images "
        "(train.finding_loss_weight=1)",
        [*WITH_HEAD, "train.finding_loss_weight=1"],
    ),
    "pretrained_classifier_cam_finding_loss": (
        "pretrained, classifier map and the finding loss kept (reference images)",
        [*WITH_HEAD, "saliency.cam_source=classifier", "train.finding_loss_weight=1"],
    ),
    "pretrained_finding_loss_both": (
        "pretrained, the finding loss on both images (it trains the aligner through the warped main image too)",
        [*WITH_HEAD, "train.finding_loss_weight=1", "train.finding_loss_images=both"],
    ),
    "pretrained_classifier_cam_finding_loss_both": (
        "pretrained, classifier map and the finding loss on both images",
        [*WITH_HEAD, "saliency.cam_source=classifier", "train.finding_loss_weight=1", "train.finding_loss_images=both"],
    ),
    "pretrained_low_encoder_lr": (
        "pretrained, the encoder fine-tuned at a tenth of the rate (train.encoder_lr_scale=0.1)",
        [*FROM_PRETRAINED, "train.encoder_lr_scale=0.1"],
    ),
    "pretrained_frozen_encoder": (
        "pretrained, the encoder frozen (train.encoder_lr_scale=0): the decoder learns on the classifier's features",
        [*FROM_PRETRAINED, "train.encoder_lr_scale=0"],
    ),
    "pretrained_classifier_cam_frozen_encoder": (
        "pretrained, encoder frozen, the keyword's map from the (then unchanged) classifier",
        [*WITH_HEAD, "saliency.cam_source=classifier", "train.encoder_lr_scale=0"],
    ),
    "pretrained_classifier_cam_low_encoder_lr": (
        "pretrained, classifier map, encoder at a tenth of the rate",
        [*WITH_HEAD, "saliency.cam_source=classifier", "train.encoder_lr_scale=0.1"],
    ),
}

# (column, path into metrics.json): the headline numbers the study tabulates
COLUMNS: list[tuple[str, tuple[str, ...]]] = [(name, HEADLINES[key].path) for name, key in STUDY_COLUMNS.items()]
REFERENCES: list[tuple[str, tuple[str, ...]]] = [(name, HEADLINES[key].path) for name, key in STUDY_REFERENCES.items()]
EVAL_DIR = "eval"  # each run's evaluation, inside its run directory
REFERENCE_VARIANT = "full"  # the variant every other is compared with, when it is in the grid
PRETRAINED_REFERENCE = "pretrained"  # ... except a variant of the pretrained model, compared with it when it is there


def reference_of(variant: str, grid: Sequence[str]) -> str | None:
    """The variant ``variant`` is paired with: ``pretrained`` for a pretrained_* variant or the demo's schedule (one
    change to the pretrained model), ``full`` for the rest (``pretrained`` − ``full`` answers the pretraining
    question); None for the reference itself or when its reference is not in the grid."""
    reference = REFERENCE_VARIANT
    if (variant.startswith(PRETRAINED_REFERENCE + "_") or variant == "demo_schedule") and PRETRAINED_REFERENCE in grid:
        reference = PRETRAINED_REFERENCE
    return reference if reference in grid and reference != variant else None


def _get(metrics: dict[str, Any], path: Sequence[str]) -> float | int | None:
    """The number at ``path`` (a count stays an int, so the table prints it as one); None if absent."""
    value = lookup(metrics, path)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value if isinstance(value, int) else float(value)


def _mean_sd(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None, None
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, sd


def _command(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "diffvqa.cli", *args]


def _run_logged(args: list[str], log, env: dict[str, str], run_dir: Path) -> None:
    """Run ``diffvqa ARGS`` with its output appended to ``log``. A user error of the run (exit 2: a full disk, a
    directory another process is writing, ...) becomes this study's UserError quoting the run's one line."""
    try:
        subprocess.run(_command(args), check=True, stdout=log, stderr=subprocess.STDOUT, env=env)
    except subprocess.CalledProcessError as exc:
        if exc.returncode != 2:
            raise
        log.flush()
        lines = Path(log.name).read_text(encoding="utf-8", errors="replace").splitlines()
        said = next((line for line in reversed(lines) if line.startswith(f"diffvqa {args[0]}: error: ")), None)
        if said is None:
            raise
        raise UserError(f"{run_dir}: {said}; rerun the study to resume") from None


def run_one(
    data: Path, eval_data: Path, *, run_dir: Path, preset: str, overrides: list[str], threads: int, log: Path
) -> dict[str, Any]:
    """Train (or resume) on ``data`` and evaluate on ``eval_data``; returns the metrics.json. Skips what is done."""
    metrics_file = run_dir / EVAL_DIR / EVAL_METRICS_FILE
    if metrics_file.is_file():
        return json.loads(metrics_file.read_text())
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    finished = run_dir / "finished"
    with log.open("a") as out:
        if not finished.is_file():
            resume = ["--resume"] if (run_dir / LATEST).is_file() else []
            train = ["train", "--data", str(data), "--out", str(run_dir), "--preset", preset, "--no-progress",
                     "--device", "cpu", *resume, *([] if resume else overrides)]  # fmt: skip
            _run_logged(train, out, env, run_dir)
            finished.write_text("ok\n")
        evaluate = ["evaluate", "--checkpoint", str(run_dir), "--data", str(eval_data), "--out",
                    str(run_dir / EVAL_DIR), "--question-types", "difference", "--no-progress", "--no-report",
                    "--no-viewer"]  # fmt: skip
        _run_logged(evaluate, out, env, run_dir)
    return json.loads(metrics_file.read_text())


def pretrain_one(data: Path, run_dir: Path, *, preset: str, overrides: list[str], threads: int, log: Path) -> Path:
    """Pretrain (or resume, or reuse) the encoder of one seed; returns its encoder directory."""
    from diffvqa.commands.pretrain import ENCODER_DIR

    encoder = run_dir / ENCODER_DIR
    if (encoder / "config.json").is_file():
        return encoder
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    resume = ["--resume"] if (run_dir / LATEST).is_file() else []
    args = ["pretrain", "--data", str(data), "--out", str(run_dir), "--preset", preset, "--no-progress", "--device",
            "cpu", *resume, *([] if resume else overrides)]  # fmt: skip
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as out:
        _run_logged(args, out, env, run_dir)
    return encoder


def summarise(results: dict[str, dict[int, dict[str, Any]]]) -> dict[str, Any]:
    """Per variant: the seeds' values of every column and reference level, with mean and sd."""
    summary: dict[str, Any] = {}
    for variant, seeds in results.items():
        entry: dict[str, Any] = {
            "what": VARIANTS[variant][0],
            "overrides": VARIANTS[variant][1],
            "seeds": sorted(seeds),
        }
        for name, path in COLUMNS + REFERENCES:
            values = [_get(seeds[s], path) for s in sorted(seeds)]
            mean, sd = _mean_sd(values)
            entry[name] = {"values": values, "mean": mean, "sd": sd}
        summary[variant] = entry
    return summary


def _per_question(run_dir: Path) -> dict[tuple, dict[str, float]]:
    """question key -> per-answer CIDEr-D of the final (``cider``) and preliminary answers, from the run's
    eval/predictions.jsonl (difference questions)."""
    from diffvqa.files.jsonl import read_jsonl

    rows = {}
    for _, r in read_jsonl(run_dir / EVAL_DIR / PREDICTIONS_FILE):
        if "cider" in r:
            rows[(r["study_id"], r["ref_id"], r["question"])] = r
    return rows


def _entry(differences: list[list[float]]) -> dict[str, Any]:
    interval = seeds_and_questions_interval(differences)
    return {**interval.to_dict(), "per_seed": [sum(d) / len(d) for d in differences]}


def compare(runs: dict[str, dict[int, Path]]) -> dict[str, Any]:
    """The study's paired comparisons of final CIDEr-D, each with a seeds-and-questions 95 % interval.

    ``final_minus_preliminary`` per two-pass variant; ``minus_<reference>`` per other variant (its reference:
    :func:`reference_of`), paired by seed (same ``train.seed``: same initial weights and data order) and by
    question. Questions every run answered.
    """
    tables = {v: {s: _per_question(d) for s, d in seeds.items()} for v, seeds in runs.items()}
    out: dict[str, Any] = {}
    for variant, seeds in tables.items():
        entry: dict[str, Any] = {}
        common = set.intersection(*(set(rows) for rows in seeds.values()))
        keys = sorted(common)
        if keys and all("cider_preliminary" in seeds[s][keys[0]] for s in seeds):
            entry["final_minus_preliminary"] = _entry(
                [[seeds[s][k]["cider"] - seeds[s][k]["cider_preliminary"] for k in keys] for s in sorted(seeds)]
            )
        reference = reference_of(variant, list(tables))
        if reference is not None:
            paired = sorted(set(seeds) & set(tables[reference]))
            keys = sorted(set.intersection(*(set(tables[v][s]) for v in (variant, reference) for s in paired)))
            if paired and keys:
                entry[f"minus_{reference}"] = _entry(
                    [[seeds[s][k]["cider"] - tables[reference][s][k]["cider"] for k in keys] for s in paired]
                )
        out[variant] = entry
    return out


def comparison_table(comparisons: dict[str, Any]) -> str:
    """Markdown: each comparison's mean difference, its 95 % interval and the per-seed means."""
    lines = [
        "| comparison (final CIDEr-D) | mean Δ | 95 % interval (seeds × questions) | per seed | questions |",
        "|---|---|---|---|---|",
    ]
    for variant, entry in comparisons.items():
        against = [(k, f"{variant} − {k.removeprefix('minus_')}") for k in entry if k.startswith("minus_")]
        for key, label in [("final_minus_preliminary", f"{variant}: final − preliminary"), *against]:
            if key in entry:
                e = entry[key]
                seeds = ", ".join(f"{d:+.3f}" for d in e["per_seed"])
                lines.append(
                    f"| {label} | {e['estimate']:+.3f} | [{e['low']:+.3f}, {e['high']:+.3f}] | {seeds} | {e['n']} |"
                )
    return "\n".join(lines)


def markdown_table(summary: dict[str, Any]) -> str:
    def cell(stats: dict[str, Any]) -> str:
        if stats["mean"] is None:
            return "—"
        digits = 0 if all(isinstance(v, int) for v in stats["values"]) else 3  # counts print as counts
        if len(stats["values"]) > 1:
            return f"{stats['mean']:.{digits or 1}f} ± {stats['sd']:.{digits or 1}f}"
        return f"{stats['mean']:.{digits}f}"

    names = [name for name, _ in COLUMNS]
    lines = ["| variant | seeds | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for variant, entry in summary.items():
        cells = [cell(entry[name]) for name in names]
        lines.append(f"| {variant} | {len(entry['seeds'])} | " + " | ".join(cells) + " |")
    refs = []
    for name, _ in REFERENCES:
        means = {v: e[name]["mean"] for v, e in summary.items() if e[name]["mean"] is not None}
        if not means:
            continue
        if max(means.values()) - min(means.values()) < 1e-9:  # a level of the questions: the same for every run
            refs.append(f"{name} {next(iter(means.values())):.3f}")
        else:  # a level of the model (the registered difference uses each run's own aligner)
            refs.append(f"{name} " + " / ".join(f"{value:.3f} ({v})" for v, value in means.items()))
    lines.append("")
    lines.append(
        "Pointing game reference levels (same test questions for every run): "
        + (", ".join(refs) or "—")
        + "; keyword conditioning (on the keyword's own CAM; `gated`: after the change gate): chance 0.5; "
        "registration ratio: identity 1.0."
    )
    return "\n".join(lines)


def _validation_curves(run_dir: Path, key: str) -> tuple[list[int], list[float]]:
    steps, values = [], []
    log = run_dir / METRICS_LOG
    if not log.is_file():
        return steps, values
    for line in log.read_text().splitlines():
        record = json.loads(line)
        if isinstance(record.get(f"val/{key}"), (int, float)):
            steps.append(int(record["step"]))
            values.append(float(record[f"val/{key}"]))
    return steps, values


def plot_study(
    out: Path, runs: dict[str, dict[int, Path]], summary: dict[str, Any], results: dict[str, dict[int, dict[str, Any]]]
) -> list[Path]:
    """The study's PNG plots (matplotlib, headless)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for key, title, file in (
        ("pointing_game", "validation pointing game over training", "pointing_over_training.png"),
        ("registration_error_ratio", "validation registration error ratio over training",
         "registration_over_training.png"),
    ):  # fmt: skip
        fig, ax = plt.subplots(figsize=(7, 4))
        for variant, seeds in runs.items():
            for k, (_seed, run_dir) in enumerate(sorted(seeds.items())):
                steps, values = _validation_curves(run_dir, key)
                if steps:
                    ax.plot(
                        steps,
                        values,
                        marker="o",
                        label=variant if k == 0 else None,
                        color=f"C{list(runs).index(variant) % 10}",
                        alpha=0.8,
                    )
        ax.set_xlabel("step")
        ax.set_ylabel(key.replace("_", " "))
        ax.set_title(title)
        if key == "registration_error_ratio":
            ax.axhline(1.0, color="gray", linestyle="--", linewidth=1, label="identity")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / file, dpi=110)
        plt.close(fig)
        written.append(out / file)

    full = results.get("full", {})
    per_finding: dict[str, list[dict[str, Any]]] = {}
    for metrics in full.values():
        for name, entry in (metrics.get("pointing_game_per_finding") or {}).items():
            per_finding.setdefault(name, []).append(entry)
    if per_finding:
        names = sorted(per_finding, key=lambda n: -sum(e["n"] for e in per_finding[n]))
        fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(names)), 4))
        xs = range(len(names))
        for offset, key, label in ((-0.27, "score", "full model"), (0.0, "prior", "fixed-point prior"),
                                   (0.27, "chance", "chance")):  # fmt: skip
            values = [_mean_sd([e[key] for e in per_finding[n] if e.get(key) is not None])[0] or 0.0 for n in names]
            ax.bar([x + offset for x in xs], values, width=0.27, label=label)
        ax.set_xticks(list(xs))
        ax.set_xticklabels([f"{n} ({per_finding[n][0]['n']})" for n in names], rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("pointing game")
        ax.set_title("test pointing game per finding (full model, mean over seeds)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "pointing_per_finding.png", dpi=110)
        plt.close(fig)
        written.append(out / "pointing_per_finding.png")
    return written


STUDY_SETTINGS = "study_settings.json"


def _cache_identity(cache: Path) -> str:
    """A prepared cache's identity: its manifest's digest (the same cache moved or linked elsewhere is the same)."""
    return hashlib.sha256((Path(cache) / "manifest.json").read_bytes()).hexdigest()[:16]


def check_settings(out: Path, settings: dict[str, Any]) -> None:
    """Record what every run of the study shares, or refuse settings that differ from the recorded ones: a finished
    run is reused as it is, so runs made otherwise would be tabulated as if they were these."""
    path = out / STUDY_SETTINGS
    if not path.is_file():
        write_atomic(path, json.dumps(settings, indent=2) + "\n")  # a cut-short file would lock the runs out
        return
    try:
        before = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"{path}: unreadable ({exc}); give a new --out") from exc
    changed = [f"{k} {before.get(k)!r} then, {v!r} now" for k, v in settings.items() if before.get(k) != v]
    if changed:
        raise UserError(
            f"{out}: its runs were made with other settings ({'; '.join(changed)}); their finished runs would be "
            "reused as if made with these: give a new --out, or the settings of the runs there"
        )


@one_writer("out", "diffvqa study")  # the runs under out/runs/ lock their own directories
@full_disk_said("out")
def run_study(
    data: Path,
    out: Path,
    *,
    preset: str = "small",
    seeds: int = 3,
    jobs: int = 1,
    variants: Sequence[str] | None = None,
    overrides: Sequence[str] = (),
    progress: bool = True,
    eval_data: Path | None = None,
) -> dict[str, Any]:
    """Run (or resume) the grid and write study.json, study.md and the plots; returns the summary."""
    variants = list(variants or VARIANTS)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise UserError(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    if seeds < 1 or jobs < 1:
        raise UserError(f"--seeds and --jobs must be >= 1 (got {seeds}, {jobs})")
    eval_data = Path(eval_data) if eval_data is not None else Path(data)
    for flag, path in (("--data", data), ("--eval-data", eval_data)):
        if not (Path(path) / "manifest.json").is_file():
            raise MissingInputError(f"{flag} {path}: not a prepared cache (no manifest.json)")
    out.mkdir(parents=True, exist_ok=True)
    base = ["data.question_types=[difference]", *overrides]
    identity = {"data": _cache_identity(Path(data)), "eval_data": _cache_identity(eval_data)}
    check_settings(out, {"preset": preset, "overrides": base, **identity})
    threads = max(1, (os.cpu_count() or 1) // jobs)
    runs = {v: {s: out / "runs" / v / f"seed{s}" for s in range(seeds)} for v in variants}
    jobs_list = [(v, s) for s in range(seeds) for v in variants]
    started = time.perf_counter()
    from diffvqa.config import load_config

    labels = load_config(preset, overrides=list(overrides)).pretrain.labels
    seed_locks = {s: threading.Lock() for s in range(seeds)}  # one pretraining per seed, whichever job needs it first

    def pretrained(seed: int) -> str:
        with seed_locks[seed]:
            pretrain_dir = out / "pretrain" / f"seed{seed}"
            settings = [*overrides, f"train.seed={seed}"]
            log = out / "pretrain" / f"seed{seed}.log"
            encoder = pretrain_one(
                Path(data), pretrain_dir, preset=preset, overrides=settings, threads=threads, log=log
            )
        return str(encoder)

    def work(job: tuple[str, int]) -> tuple[str, int, dict[str, Any]]:
        variant, seed = job
        run_dir = runs[variant][seed]
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        log = run_dir.parent / f"seed{seed}.log"
        settings = [*base, *VARIANTS[variant][1], f"train.seed={seed}"]
        if any(PRETRAINED in o for o in settings) and not (run_dir / EVAL_DIR / EVAL_METRICS_FILE).is_file():
            encoder = pretrained(seed)
            settings = [o.replace(PRETRAINED, encoder).replace("{labels}", labels) for o in settings]
        tic = time.perf_counter()
        metrics = run_one(
            Path(data), eval_data, run_dir=run_dir, preset=preset, overrides=settings, threads=threads, log=log
        )
        if progress:
            cider = _get(metrics, ("difference", "CIDEr"))
            print(f"study: {variant} seed {seed} done ({time.perf_counter() - tic:.0f} s, CIDEr {cider})", flush=True)
        return variant, seed, metrics

    results: dict[str, dict[int, dict[str, Any]]] = {v: {} for v in variants}
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for variant, seed, metrics in pool.map(work, jobs_list):
            results[variant][seed] = metrics
    summary = summarise(results)
    comparisons = compare(runs)
    record = {
        "data": str(data),
        "eval_data": str(eval_data),
        "preset": preset,
        "overrides": base,
        "seeds": seeds,
        "variants": summary,
        "comparisons": comparisons,
        "wall_s_this_invocation": round(time.perf_counter() - started, 1),
    }
    (out / "study.json").write_text(json.dumps(record, indent=2) + "\n")
    header = (
        f"# diffvqa study\n\ntrained on `{data}`, evaluated on the test split of `{eval_data}` (difference "
        f"questions, two-pass); preset `{preset}`, overrides `{' '.join(base)}`, {seeds} seed(s).\n\n"
    )
    body = markdown_table(summary) + "\n\n" + comparison_table(comparisons) + "\n"
    (out / "study.md").write_text(header + body)
    plot_study(out, runs, summary, results)
    return record


@command("diffvqa study")
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="diffvqa study", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, type=Path, help="a prepared cache to train on")
    parser.add_argument("--eval-data", type=Path, help="a prepared cache whose test split evaluates (default: --data)")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel (they share the CPU cores)")
    parser.add_argument("--variants", help=f"comma-separated subset of {','.join(VARIANTS)} (default: all)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every run (e.g. train.steps=200)")
    args = parser.parse_args(argv)
    check_output_dir(args.out)
    variants = [v.strip() for v in args.variants.split(",")] if args.variants else None
    try:
        record = run_study(
            args.data,
            args.out,
            preset=args.preset,
            seeds=args.seeds,
            jobs=args.jobs,
            variants=variants,
            overrides=args.overrides,
            progress=not args.no_progress,
            eval_data=args.eval_data,
        )
    except subprocess.CalledProcessError as exc:
        print(
            f"diffvqa study: error: a run failed ({' '.join(exc.cmd[2:5])} ...); see its log under "
            f"{args.out / 'runs'}; rerun the same command to resume",
            file=sys.stderr,
        )
        return 1
    print((args.out / "study.md").read_text())
    print(f"wall time of this invocation: {record['wall_s_this_invocation']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
