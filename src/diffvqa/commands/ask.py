"""``diffvqa ask``: answer one question about a main (current) / reference (prior) pair and show where the model
looked.

    diffvqa ask --checkpoint runs/small/final --main now.jpg --ref before.dcm \\
        --question "what has changed compared to the reference image?" --out answer/

Images may be JPEG, PNG or DICOM; they are read as gray [0, 1] and fitted into the checkpoint's S x S frame
(:func:`diffvqa.data.images.load_image`), and the question is tokenized with the checkpoint's tokenizer, so
preprocessing always matches the model. Two-pass inference (:func:`diffvqa.saliency.guided.two_pass_answer`)
gives a preliminary answer, its keyword, Grad-CAMs of both images, the shared mask and the final answer.

The work is done by the Python API (:mod:`diffvqa.api`, ``diffvqa.load``); this command adds the files.

Privacy: only a DICOM's pixel data and its image-pixel module are read (never its patient or study tags), and
the outputs name the input files by basename only.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from diffvqa.errors import ArgumentParser, UserError, check_output_dir, command
from diffvqa.saliency.keywords import INFERENCE_KEYWORD_SOURCES

PNG_FILES = ("main.png", "reference.png", "aligned_main.png", "cam_main.png", "cam_ref.png", "mask.png", "panel.png")


class AskError(UserError):
    """A problem with the user's input, reported as one line on stderr (exit code 2)."""


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="diffvqa ask", description="answer one question about a main/reference chest X-ray pair"
    )
    parser.add_argument(
        "--checkpoint", required=True, help="checkpoint directory (config.json, model.safetensors) or a training run"
    )
    parser.add_argument("--main", required=True, help="the current image: JPEG, PNG or DICOM")
    parser.add_argument("--ref", required=True, help="the reference (prior) image: JPEG, PNG or DICOM")
    parser.add_argument("--question", required=True, help='e.g. "what has changed compared to the reference image?"')
    parser.add_argument("--out", help="directory for the overlay PNGs and answer.json (created if needed)")
    parser.add_argument("--single-pass", action="store_true", help="skip the saliency loop: one pass, no maps")
    parser.add_argument(
        "--keyword",
        help="force the Grad-CAM's keyword (e.g. 'pleural effusion') instead of taking it from the preliminary "
        "answer; when that answer does not name it, the CAM scores the keyword itself",
    )
    parser.add_argument(
        "--keyword-source",
        choices=INFERENCE_KEYWORD_SOURCES,
        help="where the Grad-CAM keyword comes from (default: the checkpoint's saliency.keyword_source, "
        "or lexicon when that is 'truth')",
    )
    parser.add_argument("--device", default="auto", help="torch device: auto (CUDA when available), cpu, cuda")
    return parser


def check_inputs(args: argparse.Namespace) -> str:
    """Validate the paths and the question before anything heavy is loaded; returns the stripped question."""
    missing = [
        f"{what} {path}"
        for what, path, exists in (
            ("checkpoint directory", args.checkpoint, Path(args.checkpoint).is_dir()),
            ("main image", args.main, Path(args.main).is_file()),
            ("reference image", args.ref, Path(args.ref).is_file()),
        )
        if not exists
    ]
    if missing:
        raise AskError("not found: " + "; ".join(missing))
    if args.out:
        check_output_dir(args.out)
    from diffvqa.device import resolve_device  # imports torch: only once the paths are known to be there

    resolve_device(args.device)
    question = " ".join(args.question.split())
    if not question:
        raise AskError("--question is empty; ask e.g. 'what has changed compared to the reference image?'")
    if args.keyword is not None and not args.keyword.strip():
        raise AskError("--keyword is empty; name a finding, e.g. 'pleural effusion'")
    return question


def write_outputs(out: Path, images: dict[str, np.ndarray | None], record: dict) -> list[Path]:
    """The overlay PNGs (maps missing in single-pass mode are skipped), a combined panel and answer.json."""
    from PIL import Image

    from diffvqa.report.drawing import heat_overlay, panel, to_uint8

    out.mkdir(parents=True, exist_ok=True)
    main, ref, aligned = images["main"], images["ref"], images["aligned_main"]
    pictures = {
        "main.png": ("main", Image.fromarray(to_uint8(main), "L")),
        "reference.png": ("reference", Image.fromarray(to_uint8(ref), "L")),
        "aligned_main.png": ("main aligned", Image.fromarray(to_uint8(aligned), "L")),
    }
    if images["cam_main"] is not None:
        pictures["cam_main.png"] = ("CAM main", heat_overlay(aligned, images["cam_main"]))
        pictures["cam_ref.png"] = ("CAM reference", heat_overlay(ref, images["cam_ref"]))
        pictures["mask.png"] = ("shared mask", heat_overlay(ref, images["mask"]))
    written = []
    for name, (_, picture) in pictures.items():
        picture.save(out / name)
        written.append(out / name)
    scale = max(1, 256 // max(main.shape))  # tiny models: enlarge the panel so it can be read
    tiles = [p.resize((p.width * scale, p.height * scale), Image.Resampling.BILINEAR) for _, p in pictures.values()]
    panel(tiles, [title for title, _ in pictures.values()]).save(out / "panel.png")
    written.append(out / "panel.png")
    (out / "answer.json").write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    written.append(out / "answer.json")
    return written


def run(args: argparse.Namespace) -> dict:
    """Answer the question; returns the record written to answer.json."""
    question = check_inputs(args)

    from diffvqa.api import load

    try:
        vqa = load(args.checkpoint, args.device, keyword_source=args.keyword_source, single_pass=args.single_pass)
    except UserError as exc:
        raise AskError(f"cannot load the checkpoint: {exc}") from exc
    answer = vqa(args.main, args.ref, question, keyword=args.keyword)
    for note in answer.notes:
        print(f"diffvqa ask: note: {note}", file=sys.stderr)
    if (keywords_report := vqa.keywords_report()) is not None:  # the LLM backend: where keywords came from
        print(keywords_report, file=sys.stderr)

    record = answer.to_record()
    record.update(
        {
            "keyword_source": None if answer.single_pass or answer.keyword_forced else vqa.keyword_source,
            "main": Path(args.main).name,
            "reference": Path(args.ref).name,
            "checkpoint": str(args.checkpoint),
            "image_size": vqa.image_size,
        }
    )
    print(f"answer:       {record['final'] or '(empty)'}")
    if answer.single_pass:
        print("(single pass: no keyword, no saliency maps)")
    else:
        print(f"preliminary:  {record['preliminary'] or '(empty)'}")
        shown = record["keyword"] or "(none: the CAM scored the whole answer)"
        print(f"keyword:      {shown}{' (forced)' if answer.keyword_forced else ''}")

    if args.out:
        images = {"main": answer.main_image, "ref": answer.ref_image, "aligned_main": answer.aligned_main}
        images.update({"cam_main": answer.cam_main, "cam_ref": answer.cam_ref, "mask": answer.mask})
        write_outputs(Path(args.out), images, record)
        print(f"wrote {args.out}")
    return record


@command("diffvqa ask")
def main(argv: Sequence[str] | None = None) -> int:
    run(build_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
