"""The end-to-end demo on the built-in longitudinal CXR phantom: ``diffvqa demo [--out DIR]``.

simulate a phantom release -> prepare the image cache (with the phantom's finding labels) -> pretrain the encoder on
those labels (train-split images) -> train the ``small`` config with the saliency loop on that encoder -> train the
blind (question-only) baseline -> evaluate both two-pass on the test split -> write the report and print the metrics
table (model vs blind baseline) and the time each stage took. Every step is the same code a user runs on MIMIC.
``--no-pretrain`` trains the encoder from random weights instead (no pretraining stage).

By default the demo trains and evaluates on the *difference* questions only — the protocol of the papers it is
compared with (EKAID, PLURAL, VED, the seed paper) and the questions that need both images; ``--all-types``
trains and evaluates on all seven question types instead.
"""

from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path

from diffvqa.config import FROM_SCRATCH, apply_overrides, load_config
from diffvqa.errors import ArgumentParser, UserError, command

# The demo trains 600 of small's 1,100 steps (the saliency loop from step 300) to fit 12 minutes on 2 CPU cores. It
# shows the method run, not its best numbers: docs/results.md ("One demo run is one sample") gives what one demo run
# scored and how a shorter schedule fell short of 1,100 steps in the one run tried.
DEMO_STEPS = 600
# The blind baseline sees no image, so no encoder, finding head or saliency serves it.
BLIND = ["model.blind=true", "saliency.enabled=false", *FROM_SCRATCH]


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
    pretrain_encoder: bool = True,
    pretrain_steps: int | None = None,
) -> dict:
    from diffvqa.commands.evaluate import evaluate, format_table
    from diffvqa.commands.pretrain import ENCODER_DIR, pretrain
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
    if pretrain_encoder:
        overrides = [f"model.encoder_pretrained={out / 'pretrain' / ENCODER_DIR}", *overrides]
    else:
        overrides = [*FROM_SCRATCH, *overrides]
    config = load_config(preset, overrides=overrides)
    types = config.data.question_types
    if steps:  # keep the preset's share of single-pass steps unless it was set explicitly
        if not any(o.startswith("saliency.start_step=") for o in overrides):
            config.saliency.start_step = round(config.saliency.start_step * steps / config.train.steps)
        config.train.steps = steps
    if pretrain_steps is not None:
        config.pretrain.steps = pretrain_steps
        config.pretrain.eval_every = min(config.pretrain.eval_every, pretrain_steps)
    size = config.data.image_size
    stages = 6 if pretrain_encoder else 5
    times: dict[str, float] = {}
    number = iter(range(1, stages + 1))

    def stage(name: str, title: str):
        times[name] = time.perf_counter()
        print(f"\n== {next(number)}/{stages} {title} ==", flush=True)

    def done(name: str) -> None:
        times[name] = time.perf_counter() - times[name]
        print(f"   ({times[name]:.0f} s)", flush=True)

    stage("simulate", f"simulate {pairs} phantom pairs -> {out / 'release'}")
    summary = simulate(out / "release", pairs=pairs, seed=config.train.seed, progress=progress, workers=workers)
    print("   " + json.dumps(summary))
    done("simulate")

    stage("prepare", f"prepare the image cache at {size}x{size}, with the finding labels -> {out / 'cache'}")
    prepare(out / "release", out / "release", out / "cache", size=size, workers=workers, progress=progress)
    done("prepare")

    if pretrain_encoder:
        p = config.pretrain
        stage("pretrain", f"pretrain the encoder on the `{p.labels}` finding labels ({p.steps} steps, train-split "
              f"images) -> {out / 'pretrain'}")  # fmt: skip
        # the encoder it writes is what the model starts from; it starts from random weights itself
        from_scratch = apply_overrides(copy.deepcopy(config), ["model.encoder_pretrained="])
        scores = pretrain(from_scratch, out / "cache", run_dir=out / "pretrain", progress=progress)
        print(f"   held-out mean AUROC {scores['test']['mean_auroc']:.3f} over {scores['test']['labels_scored']} "
              f"labels (per label: {out / 'pretrain' / 'pretrain.md'})")  # fmt: skip
        done("pretrain")

    warm = min(config.saliency.start_step, config.train.steps) if config.saliency.enabled else config.train.steps
    plan = f"{warm} single-pass steps, then {config.train.steps - warm} with the saliency loop"
    start = "the pretrained encoder" if pretrain_encoder else "random weights"
    stage("train", f"train the {preset} config from {start}: {plan} -> {out / 'run'}")
    train(config, out / "cache", run_dir=out / "run", progress=progress)
    done("train")

    blind = load_config(preset, overrides=[*overrides, *BLIND])
    # The question-only model learns the answer distribution of the one difference question. It trains as long as the
    # model, so the two differ in the images alone, not in training length; validated five times so its log shows the
    # plateau.
    blind.train.steps = blind_steps if blind_steps is not None else config.train.steps
    blind.train.eval_every = max(1, blind.train.steps // 5)
    blind.train.checkpoint_every = blind.train.steps
    stage("blind", f"train the blind baseline: images replaced by zeros ({blind.train.steps} steps) -> {out / 'blind'}")
    train(blind, out / "cache", run_dir=out / "blind", progress=progress)
    done("blind")

    stage("evaluate", "evaluate both on the test split (two-pass) and write the report")
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
    done("evaluate")

    report = out / "eval" / "report.html"
    print("\n" + format_table(model_metrics, blind_metrics))
    print(f"\nreport: {report}\nviewer, model vs blind baseline: {compare}")
    total = time.perf_counter() - started
    print("time per stage: " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in times.items())
          + f"; total {total:.0f} s ({total / 60:.1f} min)")  # fmt: skip
    return {"model": model_metrics, "blind": blind_metrics, "report": str(report), "seconds": times | {"total": total}}


@command("diffvqa demo")
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="diffvqa demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="output directory (default: demo_out)")
    parser.add_argument("--pairs", type=int, default=2000, help="phantom pairs to simulate (default: 2000)")
    parser.add_argument("--preset", default="small", help="config preset (default: small)")
    parser.add_argument(
        "--steps", type=int, default=DEMO_STEPS, help=f"training steps (default: {DEMO_STEPS}; 0: the preset's)"
    )
    parser.add_argument(
        "--blind-steps", type=int, help="blind-baseline training steps (default: as many as the model's)"
    )
    parser.add_argument("--no-pretrain", action="store_true", help="train the encoder from random weights instead")
    parser.add_argument("--pretrain-steps", type=int, help="encoder pretraining steps (default: the preset's)")
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
             progress=not args.no_progress, pretrain_encoder=not args.no_pretrain,
             pretrain_steps=args.pretrain_steps)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
