"""Pretraining the encoder on finding labels: ``diffvqa pretrain --data CACHE --out DIR [--preset P] [--config F]
[key=value ...] [--resume]``.

The preset's encoder (exactly its ``ResNetModel`` shape, so ``model.encoder_pretrained=DIR/encoder`` loads it
unchanged) with a linear multi-label head (:mod:`diffvqa.model.findings`) learns the cache's finding labels
(``pretrain.labels``: MIMIC-CXR-JPG's 14 CheXpert or NegBio observations, or Medical-Diff-VQA's 30 finding names;
:mod:`diffvqa.data.labels`) on the **train split's images only**: an image any validation or test question uses
is never trained on. Loss: masked binary cross-entropy (``pretrain.uncertain`` decides what an uncertain label
trains as; a blank one is masked unless No Finding says negative). It starts from random weights, or from
``model.encoder_pretrained`` (ImageNet ResNet-50 -> MIMIC labels is the real-data recipe).

Every ``pretrain.eval_every`` steps it scores the held-out validation images (mean AUROC over the labels with both
classes there); the best checkpoint becomes the output. At the end it reports per-label AUROC with bootstrap
intervals on the validation and test images and, on the phantom, the head's own class-activation map's pointing
game per finding on the test images, beside chance, the fixed-point prior and the grid's ceiling. It writes::

    DIR/encoder/                 the best encoder + its finding head (model.encoder_pretrained=DIR/encoder) + README.md
    DIR/pretrain_metrics.json    per-label AUROC (validation, test) with intervals; the phantom's pointing game
    DIR/pretrain.md              the same as tables
    DIR/config.json, run_info.json, metrics.jsonl, checkpoints/, latest, best     as a training run has them

Progress, ``--resume`` (exact: weights, optimiser, scheduler, RNG and data order), the output lock, full-disk
handling, ``train.report_to`` and one-line errors work as in ``diffvqa train``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from diffvqa.commands.train import (
    StepBatchSampler,
    check_pretrained,
    learning_rate_factor,
    parameter_groups,
    run_command_arguments,
    run_command_config,
)
from diffvqa.config import Config
from diffvqa.data.cache_reader import ImageCache
from diffvqa.data.labels import keyword_label
from diffvqa.data.labels import targets as label_targets
from diffvqa.device import resolve_device
from diffvqa.errors import ArgumentParser, UserError, command
from diffvqa.files.atomic import write_atomic
from diffvqa.files.disk import full_disk_said
from diffvqa.files.lock import one_writer
from diffvqa.files.provenance import run_info, write_run_info
from diffvqa.files.run import BEST, PARTIAL_CHECKPOINTS, RunDir, tensorboard_writer
from diffvqa.metrics.auroc import auroc, auroc_interval
from diffvqa.model.checkpoint import WEIGHTS_FILE, load_weights, save_weights
from diffvqa.model.content import box_masks
from diffvqa.model.encoder import feature_stride
from diffvqa.model.findings import FindingClassifier, finding_loss, save_pretrained_encoder
from diffvqa.precision import autocast
from diffvqa.saliency.gradcam import upsample_cells

ENCODER_DIR = "encoder"
METRICS_FILE = "pretrain_metrics.json"
SUMMARY_FILE = "pretrain.md"
# keys a pretraining run's config may change on --resume (its schedule's length; where the curves go)
RESUME_MAY_CHANGE = {("pretrain", "steps"), ("train", "report_to")}


# -- which images ------------------------------------------------------------------------------------------
def split_images(cache: ImageCache) -> tuple[dict[str, list[str]], int]:
    """split -> the cache's images whose every question is in that split, and the count of images that questions
    of several splits share (held out of every split: never trained on, never scored). The cache's questions use
    decoded images only (prepare drops those of unreadable ones)."""
    questions = cache.questions()
    splits: dict[str, set[str]] = {}
    for column in ("main_dicom_id", "ref_dicom_id"):
        for dicom_id, split in zip(questions[column].tolist(), questions.split.tolist(), strict=True):
            splits.setdefault(dicom_id, set()).add(split)
    out: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    shared = 0
    for dicom_id in sorted(splits):
        if len(splits[dicom_id]) > 1:
            shared += 1
        else:
            out.setdefault(next(iter(splits[dicom_id])), []).append(dicom_id)
    return out, shared


class LabelledImages(torch.utils.data.Dataset):
    """Images of a cache with their label targets and masks (:func:`diffvqa.data.labels.targets`)."""

    def __init__(self, cache: ImageCache, dicom_ids: list[str], label_set: str, uncertain: str):
        labels = cache.labels()
        target, mask = label_targets(labels.values(label_set), labels.names(label_set), uncertain)
        self.cache, self.dicom_ids = cache, dicom_ids
        self.rows = [cache.row[d] for d in dicom_ids]
        self.target, self.mask = torch.from_numpy(target[self.rows]), torch.from_numpy(mask[self.rows])

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        image = torch.from_numpy(self.cache.image(self.dicom_ids[i])).float().div_(255.0).unsqueeze(0)
        return {"image": image, "target": self.target[i], "mask": self.mask[i], "index": i}


# -- scoring -----------------------------------------------------------------------------------------------
@torch.no_grad()
def predict_labels(classifier: FindingClassifier, dataset: LabelledImages, batch_size: int, device) -> np.ndarray:
    """Sigmoid scores (N, K) of the classifier on every image of ``dataset`` (eval mode; mode restored)."""
    was_training = classifier.training
    classifier.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    scores = [torch.sigmoid(classifier(b["image"].to(device))[0].float()).cpu() for b in loader]
    classifier.train(was_training)
    return torch.cat(scores).numpy() if scores else np.zeros((0, len(classifier.head.names)), np.float32)


def label_aurocs(scores: np.ndarray, dataset: LabelledImages, names: tuple[str, ...], intervals: bool) -> dict:
    """Per label: AUROC over the images whose label is known (mask), with its interval when ``intervals``; the mean
    over the labels that have one."""
    per_label: dict[str, Any] = {}
    target, mask = dataset.target.numpy(), dataset.mask.numpy() > 0
    for j, name in enumerate(names):
        known = mask[:, j]
        y, s = target[known, j], scores[known, j]
        entry: dict[str, Any] = {"positives": int(y.sum()), "negatives": int((1 - y).sum())}
        if intervals:
            interval = auroc_interval(s, y)
            entry["auroc"] = None if interval is None else interval.estimate
            entry["ci95"] = None if interval is None else [interval.low, interval.high]
        else:
            entry["auroc"] = auroc(s, y)
        per_label[name] = entry
    values = [e["auroc"] for e in per_label.values() if e["auroc"] is not None]
    return {"mean_auroc": float(np.mean(values)) if values else None, "labels_scored": len(values),
            "per_label": per_label}  # fmt: skip


@torch.no_grad()
def cam_pointing(classifier: FindingClassifier, cache: ImageCache, train_ids: list[str], test_ids: list[str],
                 label_set: str, cells: int, device, batch_size: int = 32) -> dict[str, Any]:  # fmt: skip
    """The phantom's check of the head's maps: per finding, on the test images that show it, does the class
    activation map of the finding's label peak inside the finding's true region? Beside chance (the region's area
    share), the fixed-point prior (the pixel inside most of the finding's regions on the train images) and the
    grid's ceiling (``cells`` x ``cells``, the encoder's feature grid). Findings the label set has no label for are
    counted, not scored."""
    from diffvqa.metrics.pointing import area_shares, best_fixed_point, fixed_point_hits, grid_ceiling, pointing_scores

    size = cache.size
    head = classifier.head
    train_regions: dict[str, list[np.ndarray]] = {}
    for dicom_id in train_ids:
        for f in cache.findings(dicom_id):
            if f["mask"].any():
                train_regions.setdefault(f["name"], []).append(f["mask"])
    # the fixed-point prior of each finding, learned once from its train regions
    points = {
        name: best_fixed_point(torch.from_numpy(np.stack(masks)).float()) for name, masks in train_regions.items()
    }
    jobs, unlabelled = [], {}
    for dicom_id in test_ids:
        for f in cache.findings(dicom_id):
            if not f["mask"].any():
                continue
            label = keyword_label(f["name"], label_set)
            if label is None:
                unlabelled[f["name"]] = unlabelled.get(f["name"], 0) + 1
                continue
            jobs.append((dicom_id, f["name"], head.index(label), f["mask"]))
    was_training = classifier.training
    classifier.eval()
    rows: dict[str, list[dict[str, float]]] = {}
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        images = torch.stack([torch.from_numpy(cache.image(d)).float().div(255.0)[None] for d, *_ in chunk])
        boxes = torch.stack([torch.tensor(cache.geometry(d).content_box()) for d, *_ in chunk])
        features = classifier.encoder.features(images.to(device))
        labels = torch.tensor([j for _, _, j, _ in chunk], device=device)
        maps = upsample_cells(head.cams(features, labels).float(), size).cpu()
        maps = maps * box_masks(boxes, size)  # the letterbox holds no anatomy
        regions = torch.stack([torch.from_numpy(m).float()[None] for *_, m in chunk])
        scores = pointing_scores(maps, regions)
        chance, ceiling = area_shares(regions), grid_ceiling(regions, cells)
        for i, (_, name, _, _) in enumerate(chunk):
            prior = float(fixed_point_hits(regions[i : i + 1], points[name])[0]) if name in points else None
            rows.setdefault(name, []).append(
                {"score": float(scores[i]), "chance": float(chance[i]), "ceiling": float(ceiling[i]), "prior": prior}
            )
    classifier.train(was_training)

    def mean(values):
        values = [v for v in values if v is not None]
        return float(np.mean(values)) if values else None

    per_finding = {
        name: {key: mean(r[key] for r in found) for key in ("score", "chance", "prior", "ceiling")} | {"n": len(found)}
        for name, found in sorted(rows.items(), key=lambda kv: -len(kv[1]))
    }
    everything = [r for found in rows.values() for r in found]
    return {
        "map": "the finding head's class activation map of the finding's label (its logit's Grad-CAM)",
        "grid": f"{cells}x{cells}",
        "overall": {key: mean(r[key] for r in everything) for key in ("score", "chance", "prior", "ceiling")}
        | {"n": len(everything)},
        "per_finding": per_finding,
        "findings_without_label": unlabelled,
    }


# -- checkpoints -------------------------------------------------------------------------------------------
def _save(run: RunDir, classifier: FindingClassifier, optimizer, scheduler, step: int, best: dict) -> Path:
    """``checkpoints/step-N``: the classifier's weights and the trainer state, written whole (:class:`RunDir`)."""
    state = {"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "torch_rng": torch.get_rng_state(), "cuda_rng": [], "best": best}  # fmt: skip

    def write(directory: Path) -> None:
        directory.mkdir(parents=True)
        save_weights(classifier, directory / WEIGHTS_FILE)

    return run.checkpoint(step, write, state)


def _resume_advice(run_dir: Path) -> str:
    return RunDir(run_dir).resume_advice()


def _card(config: Config, cache: ImageCache, metrics: dict[str, Any], images: dict[str, int]) -> str:
    from diffvqa.data.data_use import DATA_USE_WARNING

    p, m = config.pretrain, config.model
    phantom = cache.has_truth
    test = metrics.get("test") or {}
    lines = [
        "# diffvqa pretrained encoder",
        "",
        *([f"> **Data use.** {DATA_USE_WARNING}", ""] if not phantom else []),
        f"A ResNet encoder ({list(m.encoder_hidden_sizes)}, {m.encoder_layer_type}, image size "
        f"{config.data.image_size}) with a linear head for the `{p.labels}` finding labels, written by "
        "`diffvqa pretrain`. Load it with `model.encoder_pretrained=<this directory>` (the head comes with "
        f"`model.finding_head={p.labels}`).",
        "",
        f"- Data: {'the built-in phantom (synthetic)' if phantom else 'MIMIC-CXR-JPG (credentialed PhysioNet data)'}; "
        f"cache `{cache.directory}`; {images['train']:,} train-split images trained on (validation and test "
        "images never).",
        f"- {p.steps:,} steps, batch {p.batch_size}, lr {p.lr:g}, uncertain labels: `{p.uncertain}`; initialised "
        + (f"from `{m.encoder_pretrained}`." if m.encoder_pretrained else "randomly."),
        f"- Best validation mean AUROC {metrics['best']['mean_auroc']:.3f} at step {metrics['best']['step']:,}; "
        + (f"test mean AUROC {test['mean_auroc']:.3f}." if test.get("mean_auroc") is not None else "no test AUROC."),
        "- Per-label AUROC with intervals: `pretrain_metrics.json` and `pretrain.md` in the run directory.",
        "",
        "Not for clinical use: report-derived labels, not read by radiologists for this purpose.",
        "",
    ]
    return "\n".join(lines)


def summary_markdown(metrics: dict[str, Any]) -> str:
    """pretrain.md: per-label AUROC (test, validation) and, on the phantom, the maps' pointing game."""
    lines = [f"# diffvqa pretrain — `{metrics['labels']}` labels", ""]
    best = metrics["best"]
    lines.append(f"Best checkpoint: step {best['step']:,} (validation mean AUROC {best['mean_auroc']:.3f}).")
    lines.append("")
    lines.append("| label | test AUROC [95 %] | test pos / neg | validation AUROC |")
    lines.append("|---|---|---|---|")
    test, val = metrics["test"]["per_label"], metrics["validation"]["per_label"]
    unscored = []  # no AUROC on either held-out split: said in one line below the table
    for name, entry in test.items():
        v = val.get(name, {}).get("auroc")
        if entry["auroc"] is None and v is None:
            unscored.append(name)
            continue
        cell = (
            "—" if entry["auroc"] is None else f"{entry['auroc']:.3f} [{entry['ci95'][0]:.3f}, {entry['ci95'][1]:.3f}]"
        )
        lines.append(f"| {name} | {cell} | {entry['positives']} / {entry['negatives']} | "
                     f"{'—' if v is None else f'{v:.3f}'} |")  # fmt: skip
    mean = metrics["test"]["mean_auroc"]
    lines += ["", f"Mean test AUROC over the {metrics['test']['labels_scored']} labels with both classes: "
              + ("—" if mean is None else f"{mean:.3f}") + "."]  # fmt: skip
    if unscored:
        lines.append(
            f"No held-out image has (or every one has) these labels, so they have no AUROC: {', '.join(unscored)}."
        )
    pointing = metrics.get("cam_pointing")
    if pointing:
        o = pointing["overall"]
        lines += [
            "",
            f"## The head's maps on the phantom's test images ({pointing['grid']} grid)",
            "",
            "| finding | n | pointing game | chance | fixed-point prior | ceiling |",
            "|---|---|---|---|---|---|",
        ]
        fmt = lambda v: "—" if v is None else f"{v:.3f}"  # noqa: E731
        for name, e in pointing["per_finding"].items():
            lines.append(f"| {name} | {e['n']} | {fmt(e['score'])} | {fmt(e['chance'])} | {fmt(e['prior'])} | "
                         f"{fmt(e['ceiling'])} |")  # fmt: skip
        lines.append(f"| **all** | {o['n']} | {fmt(o['score'])} | {fmt(o['chance'])} | {fmt(o['prior'])} | "
                     f"{fmt(o['ceiling'])} |")  # fmt: skip
        if pointing["findings_without_label"]:
            skipped = ", ".join(f"{k} {v}" for k, v in pointing["findings_without_label"].items())
            lines += ["", f"Findings with no label in this set (not scored): {skipped}."]
    return "\n".join(lines) + "\n"


# -- the loop ----------------------------------------------------------------------------------------------
@one_writer("run_dir", "diffvqa pretrain")
@full_disk_said("run_dir", advice=_resume_advice, partial=PARTIAL_CHECKPOINTS)
def pretrain(
    config: Config,
    data: Path,
    *,
    run_dir: Path,
    resume: bool = False,
    stop_after: int | None = None,
    device: str = "auto",
    progress: bool = True,
    command: list[str] | None = None,
) -> dict[str, Any] | None:
    """Pretrain and return the metrics (also ``pretrain_metrics.json``); the encoder goes to ``run_dir/encoder``.
    ``stop_after``: end this invocation after that many steps, at a checkpoint (``--resume`` continues); returns
    None then."""
    p, t = config.pretrain, config.train
    check_pretrained(config, keys=("encoder_pretrained",))  # the paper preset starts from ImageNet weights
    if t.report_to == "tensorboard":
        tensorboard_writer()
    run_dir, data = Path(run_dir), Path(data)
    run = RunDir(run_dir)
    dev = resolve_device(device)
    cache = ImageCache(data)
    cache.check_size(config.data.image_size)
    cache.labels().values(p.labels)  # no such labels: one line naming the files to give prepare, before writing
    images, shared = split_images(cache)
    if not images["train"]:
        raise UserError(f"{data}: no train-split image to pretrain on")
    if resume:
        latest = run.resume_from()
        run.check_resume_config(config, RESUME_MAY_CHANGE)
    else:
        run.open(config)  # refuses a directory that already holds a run

    torch.manual_seed(t.seed)
    classifier = FindingClassifier(config.model, p.labels, load_pretrained=not resume)
    classifier.to(dev).train()
    optimizer = torch.optim.AdamW(parameter_groups(classifier, p.lr, p.weight_decay))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: learning_rate_factor(s, p.warmup_steps, p.steps))
    start, best = 0, {}
    if resume:
        load_weights(classifier, latest / WEIGHTS_FILE)
        state = run.trainer_state(latest)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        start, best = state["step"], state["best"]
    run.clean_after_interruption(start)
    write_run_info(run_dir, {**run_info(device=str(dev), argv=command), "start_step": start})

    train_set = LabelledImages(cache, images["train"], p.labels, p.uncertain)
    val_set = LabelledImages(cache, images["val"], p.labels, p.uncertain)
    sampler = StepBatchSampler(len(train_set), p.batch_size, p.steps, t.seed, start)
    loader = torch.utils.data.DataLoader(train_set, batch_sampler=sampler, num_workers=config.data.num_workers)
    log = run.log(report_to=t.report_to)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=p.steps, initial=start, desc="pretrain", unit="step", dynamic_ncols=True)
    end = p.steps if stop_after is None else min(p.steps, start + stop_after)
    step, busy, seen = start, 0.0, 0  # images/s counts training time only (not validation or saving)
    for batch in loader:
        if step >= end:
            break
        tic = time.perf_counter()
        with autocast(config, dev):
            logits, _ = classifier(batch["image"].to(dev))
        loss = finding_loss(logits, batch["target"].to(dev), batch["mask"].to(dev))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite pretraining loss {loss.item()} at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = float(nn.utils.clip_grad_norm_(classifier.parameters(), t.grad_clip))
        optimizer.step()
        scheduler.step()
        step += 1
        busy, seen = busy + time.perf_counter() - tic, seen + len(batch["image"])
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if step % t.log_every == 0 or step == p.steps:
            log.write({"step": step, "loss": loss.item(), "grad_norm": grad_norm, "lr": scheduler.get_last_lr()[0],
                       "images_per_s": seen / max(busy, 1e-9)})  # fmt: skip
            busy, seen = 0.0, 0
        if step % p.eval_every == 0 or step == p.steps:  # validate, then checkpoint
            scores = label_aurocs(predict_labels(classifier, val_set, p.batch_size, dev), val_set,
                                  classifier.head.names, intervals=False)  # fmt: skip
            log.write({"step": step, "val/mean_auroc": scores["mean_auroc"]})
            if bar is not None:
                bar.write(f"step {step}: validation mean AUROC {scores['mean_auroc']}")
            improved = scores["mean_auroc"] is not None and scores["mean_auroc"] > best.get("mean_auroc", -math.inf)
            if improved:
                best = {"step": step, "mean_auroc": scores["mean_auroc"]}
            path = _save(run, classifier, optimizer, scheduler, step, best)
            if improved:
                run.point(BEST, path)
            run.prune()
        elif step == end:  # stopped early (stop_after): a checkpoint to resume from
            _save(run, classifier, optimizer, scheduler, step, best)
            run.prune()
    if bar is not None:
        bar.close()
    log.close()
    if step < p.steps:
        return None
    return finish(config, cache, run, classifier, images, shared, dev)


def finish(config: Config, cache: ImageCache, run: RunDir, classifier: FindingClassifier, images: dict,
           shared: int, dev) -> dict[str, Any]:  # fmt: skip
    """Load the best checkpoint, score it (validation and test AUROC with intervals; the phantom's pointing game),
    write the encoder directory, the metrics and the summary."""
    p = config.pretrain
    run_dir = run.path
    best_dir = run.best or run.latest
    load_weights(classifier, best_dir / WEIGHTS_FILE)
    best = run.trainer_state(best_dir)["best"] or {}
    names = classifier.head.names
    metrics: dict[str, Any] = {
        "labels": p.labels,
        "uncertain": p.uncertain,
        "images": {split: len(ids) for split, ids in images.items()} | {"in_several_splits_held_out": shared},
        "best": {
            "step": best.get("step", int(best_dir.name.removeprefix("step-"))),
            "mean_auroc": best.get("mean_auroc", float("nan")),
        },  # fmt: skip
    }
    for split, key in (("val", "validation"), ("test", "test")):
        dataset = LabelledImages(cache, images[split], p.labels, p.uncertain)
        metrics[key] = label_aurocs(predict_labels(classifier, dataset, p.batch_size, dev), dataset, names, True)
    if cache.has_truth:
        cells = config.data.image_size // feature_stride(config.model)
        metrics["cam_pointing"] = cam_pointing(classifier, cache, images["train"], images["test"], p.labels, cells, dev)
    encoder = run_dir / ENCODER_DIR
    tmp = run_dir / f".tmp-{ENCODER_DIR}"
    shutil.rmtree(tmp, ignore_errors=True)
    save_pretrained_encoder(classifier, tmp, config.model, {"uncertain": p.uncertain, "step": metrics["best"]["step"],
                                                             "source": str(cache.directory)})  # fmt: skip
    (tmp / "README.md").write_text(_card(config, cache, metrics, {k: len(v) for k, v in images.items()}))
    shutil.rmtree(encoder, ignore_errors=True)
    os.rename(tmp, encoder)
    write_atomic(run_dir / METRICS_FILE, json.dumps(metrics, indent=2) + "\n")
    write_atomic(run_dir / SUMMARY_FILE, summary_markdown(metrics))
    return metrics


@command("diffvqa pretrain")
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="diffvqa pretrain", description=__doc__.split("\n\n")[0])
    run_command_arguments(parser, data="a prepared cache with finding labels", out="the pretraining run directory",
                          example="pretrain.labels=findings")  # fmt: skip
    args = parser.parse_args(argv)
    config = run_command_config(args, parser)
    metrics = pretrain(config, args.data, run_dir=args.out, resume=args.resume, stop_after=args.stop_after,
                       device=args.device, progress=not args.no_progress,
                       command=["diffvqa", "pretrain", *argv])  # fmt: skip
    if metrics is None:
        print(f"stopped at a checkpoint in {args.out}; continue with --resume")
        return 0
    print((args.out / SUMMARY_FILE).read_text())
    print(f"encoder: {args.out / ENCODER_DIR}  (train with model.encoder_pretrained={args.out / ENCODER_DIR} "
          f"model.finding_head={metrics['labels']})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
