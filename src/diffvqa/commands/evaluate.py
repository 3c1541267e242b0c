"""Evaluation: ``diffvqa evaluate --checkpoint RUN --data CACHE [--split test] [--question-types ...]
[--single-pass] --out DIR``.

Writes ``predictions.jsonl`` (one record per question: ids, question type, question, ground truth, preliminary
and final answer, keyword), ``metrics.json`` (pycocoevalcap BLEU-1..4 / METEOR / ROUGE-L / CIDEr-D for the
difference questions and for all types, per-type scores, exact-match accuracy for closed and open questions,
and, on the phantom, the mechanism scores of :mod:`diffvqa.metrics.mechanisms`: ``pointing_game`` beside its chance,
fixed-point prior and ceiling, per finding, ``keyword_conditioning``, ``registration_error_ratio``; and, whenever
the cache has boxes (``prepare --boxes``), ``box_pointing``: the saliency against Chest ImaGenome's changed regions
and MS-CXR's phrases, :mod:`diffvqa.metrics.boxes`),
``comparison.md`` (the difference-question scores beside the published ones, :mod:`diffvqa.metrics.published`),
``report.html`` and ``viewer/`` (every question with its pictures, to browse from disk; ``--no-viewer`` skips it).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffvqa.config import QUESTION_TYPES
from diffvqa.data.cache_boxes import CacheBoxes
from diffvqa.data.dataset import Collate, PairQADataset
from diffvqa.data.release import validate_choices
from diffvqa.device import resolve_device
from diffvqa.errors import ArgumentParser, UserError, check_output_dir, command
from diffvqa.files.disk import full_disk_said
from diffvqa.files.lock import one_writer
from diffvqa.files.provenance import RUN_INFO_FILE, run_info, write_run_info
from diffvqa.files.run import CHECKPOINTS_DIR, EVAL_METRICS_FILE, PREDICTIONS_FILE, VIEWER_DIR
from diffvqa.metrics.boxes import BoxTally, box_priors
from diffvqa.metrics.headline import EVALUATION_TABLE, HEADLINES, lookup
from diffvqa.metrics.mechanisms import MechanismTally
from diffvqa.metrics.published import COMPARISON_FILE, comparison_markdown
from diffvqa.model.checkpoint import find_checkpoint, load_checkpoint
from diffvqa.model.vqa import DiffVQA
from diffvqa.saliency.guided import KeywordFn, two_pass_answer
from diffvqa.saliency.keywords import answer_keyword_fn, finish_keywords
from diffvqa.viewer.build import finish_viewer
from diffvqa.viewer.strips import StripWriter


def evenly_spaced(size: int, count: int) -> list[int]:
    """``count`` indices spread over ``range(size)`` (all of them when count is 0 or >= size)."""
    if count <= 0 or count >= size:
        return list(range(size))
    return [int(i * size / count) for i in range(count)]


@dataclass
class Predictions:
    """What :func:`predict` returns."""

    records: list[dict[str, Any]]  # one per question: ids, texts, answers, keyword (predictions.jsonl)
    mechanisms: dict[str, Any]  # the mechanism scores (phantom only, else empty): MechanismTally.summary()
    boxes: dict[str, Any]  # the box-based scores (caches with boxes, else empty): BoxTally.summary()
    examples: list[dict[str, Any]]  # up to ``examples`` difference questions with images and maps, for the report


@torch.no_grad()
def predict(
    model: DiffVQA,
    dataset: PairQADataset,
    *,
    keyword_fn: KeywordFn,
    batch_size: int = 32,
    single_pass: bool = False,
    device: torch.device | str = "cpu",
    examples: int = 8,
    progress: bool = True,
    prior_point: tuple[int, int] | None = None,
    keyword_conditioning: bool = True,
    on_batch: Callable[[int, dict[str, Any], Any], None] | None = None,
    box_tally: BoxTally | None = None,
) -> Predictions:
    """Answer every question of ``dataset`` (two-pass unless ``single_pass``).

    Returns the prediction records, the mechanism scores (:mod:`diffvqa.metrics.mechanisms`, with the pointing
    game's fixed-point prior at ``prior_point``) and up to ``examples`` difference questions with their images and
    maps for the report (one per pair).
    ``on_batch(first_record_index, batch, result)`` sees every batch's images and maps (the viewer's strips).
    ``box_tally`` scores the saliency against the cache's boxes (:mod:`diffvqa.metrics.boxes`); the boxes to draw
    go to ``on_batch`` as ``batch["box_outlines"]`` and into the examples.
    """
    config = model.config
    collate = Collate(model.tokenizer, config.data.max_question_tokens, config.data.max_answer_tokens)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, collate_fn=collate, num_workers=config.data.num_workers
    )
    model.eval().to(device)
    records: list[dict[str, Any]] = []
    tally = MechanismTally(model, prior_point, keyword_conditioning)
    kept: list[dict[str, Any]] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(dataset), desc="evaluate", unit="q", dynamic_ncols=True)
    for batch in loader:
        result = two_pass_answer(
            model,
            batch["main"].to(device),
            batch["ref"].to(device),
            batch["question_ids"].to(device),
            batch["question_mask"].to(device),
            batch["question"],
            keyword_fn,
            single_pass=single_pass,
            main_box=_maybe_to(batch.get("main_box"), device),
            ref_box=_maybe_to(batch.get("ref_box"), device),
        )
        pointing = tally.add(batch, result)
        boxed = box_tally.add(batch, result) if box_tally is not None else [None] * len(batch["question"])
        batch["box_outlines"] = [None if b is None else b["outlines"] for b in boxed]
        ids = batch["ids"]
        for i in range(len(batch["question"])):
            records.append(
                {
                    **{k: (v[i] if isinstance(v[i], str) else int(v[i])) for k, v in ids.items()},
                    "question_type": batch["question_type"][i],
                    "question": batch["question"][i],
                    "answer": batch["answer"][i],
                    "preliminary": result.preliminary[i],
                    "keyword": result.keywords[i],
                    "final": result.final[i],
                    **({} if pointing[i] is None else {"pointing": pointing[i]}),
                    **{k: v for k, v in (boxed[i] or {}).items() if k == "box_pointing"},
                }
            )
        if on_batch is not None:
            on_batch(len(records) - len(batch["question"]), batch, result)
        truth = batch["truth"]
        batch_records = records[-len(batch["question"]) :]
        for i, record in enumerate(batch_records):
            if len(kept) >= examples or record["question_type"] != "difference":
                continue
            if any(k["ids"]["study_id"] == record["study_id"] for k in kept):
                continue  # one example per pair
            maps = {
                "main": batch["main"],
                "ref": batch["ref"],
                "aligned_main": result.aligned_main,
                "cam_main": result.cam_main,
                "cam_ref": result.cam_ref,
                "mask": result.mask,
                "change_mask": None if truth is None else truth["change_mask"] > 0.5,
            }
            example = {k: None if v is None else v[i, 0].float().cpu().numpy() for k, v in maps.items()}
            texts = ("question", "preliminary", "keyword", "final", "answer", "question_type")
            example.update({k: record[k] for k in texts}, ids={k: record[k] for k in ids})
            example["outlines"] = batch["box_outlines"][i]
            kept.append(example)
        if bar is not None:
            bar.update(len(batch["question"]))
    if bar is not None:
        bar.close()
    boxes = box_tally.summary() if box_tally is not None else {}
    return Predictions(records=records, mechanisms=tally.summary(), boxes=boxes, examples=kept)


def fixed_point_prior(data: str | Path) -> tuple[int, int] | None:
    """The pointing game's fixed-point prior: the pixel inside the most regions of the *train* split's difference
    questions (:mod:`diffvqa.metrics.pointing`); None for caches without ground truth."""
    from diffvqa.data.cache_reader import ImageCache
    from diffvqa.data.regions import question_regions
    from diffvqa.metrics.pointing import best_fixed_point

    if not ImageCache(data).has_truth:
        return None
    regions = question_regions(data, "train", ("difference",))
    if len(regions) == 0:
        return None
    return best_fixed_point(torch.from_numpy(np.asarray(regions)))


def _maybe_to(tensor: torch.Tensor | None, device) -> torch.Tensor | None:
    return None if tensor is None else tensor.to(device)


@one_writer("out", "diffvqa evaluate")  # it also removes an --out it created when the evaluation fails
@full_disk_said(
    "out",
    partial=(PREDICTIONS_FILE, EVAL_METRICS_FILE, COMPARISON_FILE, RUN_INFO_FILE, "report.html", "report_images",
             VIEWER_DIR),
)  # fmt: skip
def evaluate(
    checkpoint: str | Path,
    data: str | Path,
    *,
    out: str | Path,
    split: str = "test",
    question_types: list[str] | None = None,
    single_pass: bool = False,
    batch_size: int = 32,
    limit: int = 0,
    device: str = "auto",
    report: bool = True,
    progress: bool = True,
    keyword_source: str | None = None,
    baseline: dict[str, Any] | None = None,
    title: str | None = None,
    saliency_overrides: list[str] | None = None,
    viewer: bool = True,
    command: list[str] | None = None,
) -> dict[str, Any]:
    """Evaluate a checkpoint on a split of a prepared cache; write predictions, metrics, the published results
    beside this run's (``comparison.md``) and a report (with a ``baseline``'s metrics beside the model's when
    given) and, unless ``viewer`` is false, the viewer of every question (``out/viewer/index.html``).
    ``device`` ``auto`` is CUDA when available, else the CPU. ``command``: the command line ``run_info.json``
    records (default: this process's)."""
    from diffvqa.metrics import evaluate_answers

    device = resolve_device(device)
    provenance = run_info(device=str(device), argv=command)

    checkpoint = find_checkpoint(checkpoint)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = load_checkpoint(checkpoint)
    if keyword_source is not None:
        model.config.saliency.keyword_source = keyword_source
    if saliency_overrides:  # inference-time ablations (e.g. saliency.cam_method=hirescam) on a trained model
        from diffvqa.config import apply_overrides

        bad = [o for o in saliency_overrides if not o.strip().startswith("saliency.")]
        if bad:
            raise UserError(f"evaluate overrides may only set saliency.* keys (the weights fix the rest): {bad}")
        apply_overrides(model.config, saliency_overrides)
    dataset = PairQADataset(data, split, question_types)
    dataset.cache.check_size(model.image_size)
    phantom = dataset.cache.has_truth  # only the phantom writes ground truth into its cache
    if len(dataset) == 0:
        raise UserError(f"{data}: no {split} questions of types {question_types or 'all'}")
    if limit:
        dataset = torch.utils.data.Subset(dataset, evenly_spaced(len(dataset), limit))
    keyword_fn = answer_keyword_fn(model.config.saliency, out)
    strips = StripWriter(out / VIEWER_DIR) if viewer else None
    box_tally = None
    if CacheBoxes.exists(data):  # prepare --boxes carried Chest ImaGenome / MS-CXR into the cache: score them
        box_tally = BoxTally(model, CacheBoxes(data), box_priors(data))
    tic = time.perf_counter()
    predictions = predict(model, dataset, keyword_fn=keyword_fn, batch_size=batch_size, single_pass=single_pass,
                          device=device, progress=progress, prior_point=fixed_point_prior(data),
                          on_batch=strips, box_tally=box_tally)  # fmt: skip
    records = predictions.records
    if (keywords_report := finish_keywords(keyword_fn)) is not None:
        print(keywords_report, file=sys.stderr)
    two_pass = not single_pass and model.config.saliency.enabled
    metrics = evaluate_answers(
        [r["final"] for r in records], [r["answer"] for r in records], [r["question_type"] for r in records]
    )
    if two_pass:
        metrics["preliminary"] = {
            "accuracy_note": "pass-1 answers (unmasked images), difference questions only",
            **_difference_scores(records, "preliminary"),
        }
    passes = compare_passes(records, two_pass=two_pass)  # also adds per-answer CIDEr to the records
    if passes is not None:
        metrics["final_vs_preliminary"] = passes
    metrics.update(predictions.mechanisms)
    if predictions.boxes:
        metrics["box_pointing"] = predictions.boxes
    with (out / PREDICTIONS_FILE).open("w") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    metrics["run"] = {
        "checkpoint": str(checkpoint),
        "data": str(data),
        "split": split,
        "question_types": question_types,
        "mode": "single-pass" if single_pass or not model.config.saliency.enabled else "two-pass",
        "blind": model.config.model.blind,
        # where its encoder started: model.encoder_pretrained (diffvqa pretrain, or ImageNet weights) or random
        "encoder": "pretrained" if model.config.model.encoder_pretrained else "random initialisation",
        "questions": len(records),
        "difference_questions": sum(r["question_type"] == "difference" for r in records),
        "phantom": phantom,
        "device": str(device),
        "limit": limit,
        "saliency_overrides": list(saliency_overrides or []),
    }
    (out / EVAL_METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    (out / COMPARISON_FILE).write_text(comparison_markdown(metrics, baseline=baseline), encoding="utf-8")
    write_run_info(out, provenance)
    if strips is not None:  # before the report, which links to it
        print(finish_viewer(out, strips, time.perf_counter() - tic), file=sys.stderr)
    if report:
        from diffvqa.report import write_report

        write_report(
            out,
            metrics,
            predictions.examples,
            baseline_metrics=baseline,
            title=title or default_title(checkpoint, data, split),
            training_run=checkpoint,
        )
    return metrics


def default_title(checkpoint: Path, data: str | Path, split: str) -> str:
    """``diffvqa — <run>/<checkpoint> on <cache> (test split)``: names, not the paths as typed (``../../runs/x``
    or ``.`` say nothing on a page someone else opens); metrics.json keeps the paths."""
    checkpoint = Path(checkpoint).resolve()
    name = checkpoint.name
    if checkpoint.parent.name == CHECKPOINTS_DIR:  # a training run's checkpoint: the run names it
        name = f"{checkpoint.parent.parent.name}/{name}"
    return f"diffvqa — {name} on {Path(data).resolve().name} ({split} split)"


def compare_passes(records: list[dict[str, Any]], *, two_pass: bool) -> dict[str, Any] | None:
    """Per-answer CIDEr-D of the difference questions (``cider`` of the final answer and, two-pass,
    ``cider_preliminary``, added to each record for paired comparisons across runs on the same questions) and,
    two-pass, the final − preliminary comparison: mean difference with a paired bootstrap 95 % interval over
    questions (:mod:`diffvqa.metrics.intervals`), and the exact-match answers each pass got right that the other
    did not. None when there are no difference questions, or in single-pass mode (after adding ``cider``)."""
    from diffvqa.metrics import cider_per_answer, normalize_answer
    from diffvqa.metrics.intervals import paired_interval

    rows = [r for r in records if r["question_type"] == "difference"]
    if not rows:
        return None
    sets = {"final": [r["final"] for r in rows]}
    if two_pass:
        sets["preliminary"] = [r["preliminary"] for r in rows]
    scores, tokenizer = cider_per_answer(sets, [r["answer"] for r in rows])
    for i, r in enumerate(rows):
        r["cider"] = scores["final"][i]
        if two_pass:
            r["cider_preliminary"] = scores["preliminary"][i]
    if not two_pass:
        return None
    interval = paired_interval(scores["final"], scores["preliminary"])
    right = [
        (
            normalize_answer(r["final"]) == normalize_answer(r["answer"]),
            normalize_answer(r["preliminary"]) == normalize_answer(r["answer"]),
        )
        for r in rows
    ]
    return {
        "CIDEr_final": sum(scores["final"]) / len(rows),
        "CIDEr_preliminary": sum(scores["preliminary"]) / len(rows),
        "CIDEr_difference": interval.to_dict(),
        "exact_match_final": sum(f for f, _ in right),
        "exact_match_preliminary": sum(p for _, p in right),
        "right_only_in_final": sum(f and not p for f, p in right),
        "right_only_in_preliminary": sum(p and not f for f, p in right),
        "answers_changed": sum(r["final"] != r["preliminary"] for r in rows),
        "n": len(rows),
        "tokenizer": tokenizer,
        "note": "difference questions; CIDEr-D per answer with the IDF of these references (its mean is the "
        "corpus CIDEr-D); final minus preliminary, paired bootstrap over questions",
    }


def _difference_scores(records: list[dict[str, Any]], key: str) -> dict[str, Any]:
    from diffvqa.metrics import caption_scores

    rows = [r for r in records if r["question_type"] == "difference"]
    if not rows:
        return {}
    scores = caption_scores([r[key] for r in rows], [r["answer"] for r in rows])
    return {k: v for k, v in scores.items() if k != "implementation"}


def format_table(metrics: dict[str, Any], baseline: dict[str, Any] | None = None) -> str:
    """A plain-text table of the headline numbers (:data:`diffvqa.metrics.headline.EVALUATION_TABLE`; model vs
    baseline when given)."""

    def fmt(v):
        return "—" if v is None else f"{v:.3f}"

    width = max(len(HEADLINES[name].label) for name in EVALUATION_TABLE) + 2  # the longest label sets the column
    header = f"{'metric':<{width}}{'model':>10}" + (f"{'blind':>10}{'Δ':>10}" if baseline else "")
    lines = [header, "-" * len(header)]
    for name in EVALUATION_TABLE:
        row = HEADLINES[name]
        v = lookup(metrics, row.path)
        if v is None and (baseline is None or lookup(baseline, row.path) is None):
            continue
        line = f"{row.label:<{width}}{fmt(v):>10}"
        if baseline is not None:
            b = lookup(baseline, row.path)
            line += f"{fmt(b):>10}{fmt(None if v is None or b is None else v - b):>10}"
        lines.append(line)
    passes = lookup(metrics, ("final_vs_preliminary", "CIDEr_difference"))
    if passes is not None:
        lines.append(
            f"final − preliminary CIDEr: {passes['estimate']:+.3f}, 95 % interval "
            f"[{passes['low']:+.3f}, {passes['high']:+.3f}] over {passes['n']} questions"
        )
    conditioning = lookup(metrics, ("keyword_conditioning",))
    if conditioning is not None:
        low, high = conditioning["ci95"]
        lines.append(
            f"keyword conditioning: {conditioning['score']:.3f}, 95 % interval [{low:.3f}, {high:.3f}] over "
            f"{conditioning['questions']} answers ({conditioning['pairs']} ordered pairs; chance 0.5)"
        )
    boxes = lookup(metrics, ("box_pointing",)) or {}
    box_rows = (
        ("shared mask vs Chest ImaGenome's changed regions", ("chest_imagenome", "mask"), "pairs"),
        ("each finding's Grad-CAM vs those regions", ("chest_imagenome", "keyword_cam"), "pairs"),
        ("the finding's Grad-CAM vs MS-CXR's boxes", ("ms_cxr", "keyword_cam"), "phrases"),
    )
    for label, path, unit in box_rows:
        entry = lookup(boxes, path)
        if entry is not None:
            prior = "—" if entry["prior"] is None else f"{entry['prior']:.3f}"
            few = "" if entry["enough"] else f" — fewer than {boxes['min_scored']}: too few to read"
            lines.append(
                f"pointing game, {label}: {entry['score']:.3f} [{entry['ci95'][0]:.3f}, {entry['ci95'][1]:.3f}] "
                f"(chance {entry['chance']:.3f}, prior {prior}, ceiling {entry['ceiling']:.3f}) on {entry[unit]} "
                f"{unit}{few}"
            )
    return "\n".join(lines)


@command("diffvqa evaluate")
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="diffvqa evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, type=Path, help="a checkpoint or a training run directory")
    parser.add_argument("--data", required=True, type=Path, help="a prepared cache")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--split", default="test", choices=["train", "val", "test"])
    parser.add_argument("--question-types", help=f"comma-separated subset of {','.join(QUESTION_TYPES)}")
    parser.add_argument("--single-pass", action="store_true", help="skip the saliency loop (ablation)")
    parser.add_argument("--keyword-source", choices=["lexicon", "llm"], help="override the checkpoint's")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--limit", type=int, default=0, help="evaluate N evenly spaced questions (0 = all)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available, else cpu) | cpu | cuda")
    parser.add_argument("--no-report", action="store_true")
    parser.add_argument("--no-viewer", action="store_true", help="skip the browsable viewer of every question")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "overrides",
        nargs="*",
        help="saliency.* key=value overrides for inference, e.g. saliency.cam_method=hirescam saliency.mask=mean",
    )
    args = parser.parse_args(argv)
    check_output_dir(args.out)
    resolve_device(args.device)
    if args.batch_size < 1:
        parser.error(f"--batch-size {args.batch_size}: expected >= 1")
    if args.limit < 0:
        parser.error(f"--limit {args.limit}: expected 0 (all questions) or more")
    types = [t.strip() for t in args.question_types.split(",")] if args.question_types else None
    if types is not None:
        validate_choices(types, QUESTION_TYPES, "question type(s) in --question-types")
    metrics = evaluate(
        args.checkpoint,
        args.data,
        out=args.out,
        split=args.split,
        question_types=types,
        single_pass=args.single_pass,
        batch_size=args.batch_size,
        limit=args.limit,
        device=args.device,
        report=not args.no_report,
        progress=not args.no_progress,
        keyword_source=args.keyword_source,
        saliency_overrides=args.overrides,
        viewer=not args.no_viewer,
        command=["diffvqa", "evaluate", *argv],
    )
    print(format_table(metrics))
    print(f"wrote {args.out / PREDICTIONS_FILE}, {args.out / EVAL_METRICS_FILE}, {args.out / COMPARISON_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
