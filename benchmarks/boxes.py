"""Do boxes measure what the pixel truth measures? The box-based pointing game against the phantom's pixel truth.

    python benchmarks/boxes.py --checkpoint RUN --cache CACHE --release RELEASE --out EVAL_DIR [--split test]

``CACHE`` is a phantom cache (``diffvqa prepare``) of ``RELEASE`` (``diffvqa simulate``, which writes Chest
ImaGenome and MS-CXR beside the release's CSVs); its boxes are carried in first when it has none (as
``prepare --boxes RELEASE/chest-imagenome RELEASE/ms-cxr`` does). Then ``diffvqa evaluate`` runs two-pass on the
difference questions of ``--split`` into ``EVAL_DIR`` (its report and viewer draw the boxes), and this prints, on the
questions that have both a true change region and a changed region's box: the shared mask's pointing game against
the pixel truth and against the boxes, each with its 95 % interval and chance, their paired difference, whether
the box score lies within the pixel score's interval, and both again as the share of the way from each one's own
chance to 1; then the keyword CAMs' and MS-CXR's box scores beside their reference levels. The last line is one
JSON object (``metrics.json``'s ``box_pointing``, abridged).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _fmt(entry: dict) -> str:
    low, high = entry["ci95"]
    return f"{entry['score']:.3f} [{low:.3f}, {high:.3f}]"


def main(argv: list[str] | None = None) -> int:
    from diffvqa.commands.evaluate import evaluate
    from diffvqa.data.cache_boxes import CacheBoxes, report_lines, write_boxes

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, type=Path)
    parser.add_argument("--cache", required=True, type=Path, help="a phantom cache")
    parser.add_argument("--release", required=True, type=Path, help="the phantom release the cache was prepared from")
    parser.add_argument("--out", required=True, type=Path, help="the evaluation directory to write")
    parser.add_argument("--split", default="test", choices=["train", "val", "test"])
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)

    if not CacheBoxes.exists(args.cache):
        summary = write_boxes(args.cache, [args.release / "chest-imagenome", args.release / "ms-cxr"])
        print("\n".join(report_lines(summary)))
    metrics = evaluate(args.checkpoint, args.cache, out=args.out, split=args.split, question_types=["difference"],
                       batch_size=args.batch_size, progress=False, device="cpu")  # fmt: skip
    boxes = metrics.get("box_pointing") or {}
    ci, ms = boxes.get("chest_imagenome") or {}, boxes.get("ms_cxr") or {}
    truth = ci.get("pixel_truth")
    if truth is None:
        sys.exit(f"{args.cache}: no question with both a true change region and a changed region's box")
    difference = truth["difference"]
    print(f"\nshared mask M on {truth['questions']} difference questions ({args.split} split), grid {boxes['grid']}:")
    print(f"  {'against':<28}{'pointing game [95 %]':>26}{'chance':>10}")
    print(f"  {'the true change masks':<28}{_fmt(truth['pixel']):>26}{truth['pixel']['chance']:>10.3f}")
    print(f"  {'the changed regions boxes':<28}{_fmt(truth['box']):>26}{truth['box']['chance']:>10.3f}")
    low, high = difference["low"], difference["high"]
    print(f"  box - pixel {difference['estimate']:+.3f} [{low:+.3f}, {high:+.3f}] (paired); box score within the "
          f"pixel score's interval: {truth['box_within_pixel_interval']}; boxes {truth['area_ratio']:.2f}x the "
          "masks' area")  # fmt: skip
    lift = truth["above_chance"]
    low, high = lift["difference"]["low"], lift["difference"]["high"]
    estimate = lift["difference"]["estimate"]
    print(f"  above its own chance, (score - chance) / (1 - chance): boxes {_fmt(lift['box'])}, pixels "
          f"{_fmt(lift['pixel'])}, box - pixel {estimate:+.3f} [{low:+.3f}, {high:+.3f}]")  # fmt: skip
    for label, entry in (("M vs changed regions (all)", ci.get("mask")),
                         ("each finding's CAM vs changed regions", ci.get("keyword_cam")),
                         ("MS-CXR: finding's CAM vs its phrase", ms.get("keyword_cam"))):  # fmt: skip
        if entry:
            prior = "—" if entry["prior"] is None else f"{entry['prior']:.3f}"
            print(f"  {label:<40}{_fmt(entry):>26}  chance {entry['chance']:.3f}  prior {prior}  "
                  f"ceiling {entry['ceiling']:.3f}  n {entry['n']}")  # fmt: skip
    abridged = {"pixel_truth": truth, **{k: ci.get(k) for k in ("mask", "keyword_cam")},
                "ms_cxr": ms.get("keyword_cam"), "grid": boxes.get("grid")}  # fmt: skip
    print(json.dumps(abridged))
    return 0


if __name__ == "__main__":
    sys.exit(main())
