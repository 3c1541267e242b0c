"""The end-to-end demo on the built-in longitudinal CXR phantom: ``diffvqa demo [--out DIR]``.

simulate a phantom release -> prepare the image cache -> train the ``small`` config with the saliency loop ->
train the blind (question-only) baseline -> evaluate both two-pass on the test split -> write the report and
print the metrics table (model vs blind baseline). Every step is the same code a user runs on MIMIC.

By default the demo trains and evaluates on the *difference* questions only — the protocol of the papers it is
compared with (EKAID, PLURAL, VED, the seed paper) and the questions that need both images; ``--all-types``
trains and evaluates on all seven question types instead.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from diffvqa.config import load_config
from diffvqa.errors import ArgumentParser, UserError, command


def _stage(title: str) -> float:
    print(f"\n== {title} ==", flush=True)
    return time.perf_counter()


def _done(start: float) -> None:
    print(f"   ({time.perf_counter() - start:.0f} s)", flush=True)


def run_demo(
    out: Path,
    *,
    pairs: int,
    preset: str,
    steps: int | None,
    blind_steps: int | None,
    workers: int,
    overrides: list[str],
    all_types: bool = False,
    progress: bool = True,
) -> dict:
    from diffvqa.commands.evaluate import evaluate, format_table
    from diffvqa.commands.train import train
    from diffvqa.data.cache_writer import prepare
    from diffvqa.data.phantom import simulate
    from diffvqa.viewer.build import write_viewer

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} is not empty; choose another --out or remove it")
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if not all_types:
        overrides = ["data.question_types=[difference]", *overrides]
    config = load_config(preset, overrides=overrides)
    types = config.data.question_types
    if steps is not None:  # keep the preset's share of single-pass steps unless it was set explicitly
        if not any(o.startswith("saliency.start_step=") for o in overrides):
            config.saliency.start_step = round(config.saliency.start_step * steps / config.train.steps)
        config.train.steps = steps
    size = config.data.image_size

    t = _stage(f"1/5 simulate {pairs} phantom pairs -> {out / 'release'}")
    summary = simulate(out / "release", pairs=pairs, seed=config.train.seed, progress=progress, workers=workers)
    print("   " + json.dumps(summary))
    _done(t)

    t = _stage(f"2/5 prepare the image cache at {size}x{size} -> {out / 'cache'}")
    prepare(out / "release", out / "release", out / "cache", size=size, workers=workers, progress=progress)
    _done(t)

    warm = min(config.saliency.start_step, config.train.steps) if config.saliency.enabled else config.train.steps
    plan = f"{warm} single-pass steps, then {config.train.steps - warm} with the saliency loop"
    t = _stage(f"3/5 train the {preset} config: {plan} -> {out / 'run'}")
    train(config, out / "cache", run_dir=out / "run", progress=progress)
    _done(t)

    blind = load_config(preset, overrides=[*overrides, "model.blind=true", "saliency.enabled=false"])
    # The question-only model learns one answer distribution per question template and levels off long before
    # the image model: half its steps, validated five times so its log shows the plateau.
    blind.train.steps = blind_steps if blind_steps is not None else max(1, config.train.steps // 2)
    blind.train.eval_every = max(1, blind.train.steps // 5)
    blind.train.checkpoint_every = blind.train.steps
    t = _stage(f"4/5 train the blind baseline: images replaced by zeros ({blind.train.steps} steps) -> {out / 'blind'}")
    train(blind, out / "cache", run_dir=out / "blind", progress=progress)
    _done(t)

    t = _stage("5/5 evaluate both on the test split (two-pass) and write the report")
    blind_metrics = evaluate(
        out / "blind", out / "cache", out=out / "eval_blind", question_types=types, report=False, progress=progress
    )
    model_metrics = evaluate(
        out / "run",
        out / "cache",
        out=out / "eval",
        question_types=types,
        progress=progress,
        baseline=blind_metrics,
        title="diffvqa demo — longitudinal CXR phantom",
    )
    compare = write_viewer(out / "eval", out / "eval_blind")  # every answer, the model beside the blind baseline
    _done(t)

    report = out / "eval" / "report.html"
    print("\n" + format_table(model_metrics, blind_metrics))
    print(f"\nreport: {report}\nviewer, model vs blind baseline: {compare}")
    print(f"total: {time.perf_counter() - started:.0f} s")
    return {"model": model_metrics, "blind": blind_metrics, "report": str(report)}


@command("diffvqa demo")
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="diffvqa demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="output directory (default: demo_out)")
    parser.add_argument("--pairs", type=int, default=2000, help="phantom pairs to simulate (default: 2000)")
    parser.add_argument("--preset", default="small", help="config preset (default: small)")
    parser.add_argument("--steps", type=int, help="training steps (default: the preset's)")
    parser.add_argument("--blind-steps", type=int, help="blind-baseline training steps (default: half the model's)")
    parser.add_argument(
        "--workers", type=int, default=2, help="processes that render the phantom and decode its images"
    )
    parser.add_argument("--all-types", action="store_true", help="train/evaluate all 7 question types")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_args(argv)
    # a UserError (a bad override, a full disk, a busy directory) is one line through @command; a bug keeps its
    # traceback
    run_demo(args.out, pairs=args.pairs, preset=args.preset, steps=args.steps, blind_steps=args.blind_steps,
             workers=args.workers, overrides=args.overrides, all_types=args.all_types,
             progress=not args.no_progress)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
