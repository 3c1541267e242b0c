"""``diffvqa ask``: answer one question about a main (current) / reference (prior) pair and show where the model
looked.

    diffvqa ask --checkpoint runs/small/final --main now.jpg --ref before.dcm \\
        --question "what has changed compared to the reference image?" --out answer/

Images may be JPEG, PNG or DICOM; they are read as gray [0, 1] and fitted into the checkpoint's S x S frame
(:func:`diffvqa.data.images.load_image`), and the question is tokenized with the checkpoint's tokenizer, so
preprocessing always matches the model. Two-pass inference (:func:`diffvqa.saliency.guided.two_pass_answer`)
gives a preliminary answer, its keyword, Grad-CAMs of both images, the shared mask and the final answer.

Privacy: only a DICOM's pixel data and its image-pixel module are read (never its patient or study tags), and
the outputs name the input files by basename only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from diffvqa.errors import ArgumentParser, UserError, check_device, check_output_dir, command

KEYWORD_SOURCES = ("lexicon", "llm")
PNG_FILES = ("main.png", "reference.png", "aligned_main.png", "cam_main.png", "cam_ref.png", "mask.png", "panel.png")


class AskError(UserError):
    """A problem with the user's input, reported as one line on stderr (exit code 2)."""


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="diffvqa ask", description="answer one question about a main/reference chest X-ray pair"
    )
    parser.add_argument("--checkpoint", required=True, help="checkpoint directory (config.json, model.safetensors)")
    parser.add_argument("--main", required=True, help="the current image: JPEG, PNG or DICOM")
    parser.add_argument("--ref", required=True, help="the reference (prior) image: JPEG, PNG or DICOM")
    parser.add_argument("--question", required=True, help='e.g. "what has changed compared to the reference image?"')
    parser.add_argument("--out", help="directory for the overlay PNGs and answer.json (created if needed)")
    parser.add_argument("--single-pass", action="store_true", help="skip the saliency loop: one pass, no maps")
    parser.add_argument(
        "--keyword-source",
        choices=KEYWORD_SOURCES,
        help="where the Grad-CAM keyword comes from (default: the checkpoint's saliency.keyword_source, "
        "or lexicon when that is 'truth')",
    )
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
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
    check_device(args.device)
    question = " ".join(args.question.split())
    if not question:
        raise AskError("--question is empty; ask e.g. 'what has changed compared to the reference image?'")
    return question


def encode_question(tokenizer, question: str, max_tokens: int) -> tuple[list[int], list[str]]:
    """Token ids of ``question`` truncated to ``max_tokens``, and notes for the user (unknown words,
    truncation)."""
    ids, offsets = tokenizer.encode_with_offsets(question)
    notes = []
    unknown = [question[start:end] for i, (start, end) in zip(ids, offsets, strict=True) if i == tokenizer.unk_id]
    if unknown:
        notes.append(
            f"the model's vocabulary lacks {', '.join(repr(w) for w in dict.fromkeys(unknown))}; "
            "they are read as <unk> (the training questions are lower-case)"
        )
    if len(ids) > max_tokens:
        notes.append(
            f"the question has {len(ids)} tokens; only the first {max_tokens} (data.max_question_tokens) are used"
        )
    return ids[:max_tokens], notes


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


def _batch(image: np.ndarray, device):
    """(S, S) float32 -> (1, 1, S, S) tensor on ``device``."""
    import torch

    return torch.from_numpy(image)[None, None].to(device)


def _first_map(tensor) -> np.ndarray | None:
    """(B, 1, S, S) tensor -> the first (S, S) map as float32 numpy; None stays None (single pass)."""
    return None if tensor is None else tensor[0, 0].detach().float().cpu().numpy()


def run(args: argparse.Namespace) -> dict:
    """Answer the question; returns the record written to answer.json."""
    question = check_inputs(args)

    import torch

    from diffvqa.data.images import ImageReadError, load_image
    from diffvqa.model.checkpoint import load_checkpoint
    from diffvqa.saliency.guided import two_pass_answer
    from diffvqa.saliency.keywords import answer_keyword_fn, finish_keywords

    try:
        model = load_checkpoint(args.checkpoint, map_location=args.device).eval()
    except UserError as exc:
        raise AskError(f"cannot load the checkpoint: {exc}") from exc
    config = model.config
    size = config.data.image_size
    try:
        main, main_geometry = load_image(args.main, size)
        ref, ref_geometry = load_image(args.ref, size)
    except ImageReadError as exc:
        raise AskError(str(exc)) from exc

    ids, notes = encode_question(model.tokenizer, question, config.data.max_question_tokens)
    for note in notes:
        print(f"diffvqa ask: note: {note}", file=sys.stderr)
    if not ids:
        raise AskError(f"the question {question!r} gives no tokens")
    source = args.keyword_source or (
        config.saliency.keyword_source if config.saliency.keyword_source in KEYWORD_SOURCES else "lexicon"
    )
    keyword_fn = answer_keyword_fn(dataclasses.replace(config.saliency, keyword_source=source))
    single_pass = args.single_pass or not config.saliency.enabled

    device = next(model.parameters()).device
    question_ids = torch.tensor([ids], dtype=torch.long, device=device)
    boxes = [torch.tensor([g.content_box()], dtype=torch.long, device=device) for g in (main_geometry, ref_geometry)]
    result = two_pass_answer(
        model,
        _batch(main, device),
        _batch(ref, device),
        question_ids,
        torch.ones_like(question_ids),
        [question],
        keyword_fn,
        single_pass=single_pass,
        main_box=boxes[0],
        ref_box=boxes[1],
    )
    if (keywords_report := finish_keywords(keyword_fn)) is not None:  # the LLM backend: where keywords came from
        print(keywords_report, file=sys.stderr)

    record = {
        "question": question,
        "preliminary": result.preliminary[0],
        "keyword": result.keywords[0],
        "final": result.final[0],
        "single_pass": single_pass,
        "keyword_source": None if single_pass else source,
        "main": Path(args.main).name,
        "reference": Path(args.ref).name,
        "checkpoint": str(args.checkpoint),
        "image_size": size,
        "theta": result.theta[0].tolist(),  # main -> reference affine, normalised coordinates
        "geometry": {"main": main_geometry.to_dict(), "reference": ref_geometry.to_dict()},
    }
    print(f"answer:       {record['final'] or '(empty)'}")
    if single_pass:
        print("(single pass: no keyword, no saliency maps)")
    else:
        print(f"preliminary:  {record['preliminary'] or '(empty)'}")
        print(f"keyword:      {record['keyword'] or '(none: the CAM scored the whole answer)'}")

    if args.out:
        images = {"main": main, "ref": ref, "aligned_main": _first_map(result.aligned_main)}
        images.update({key: _first_map(getattr(result, key)) for key in ("cam_main", "cam_ref", "mask")})
        write_outputs(Path(args.out), images, record)
        print(f"wrote {args.out}")
    return record


@command("diffvqa ask")
def main(argv: Sequence[str] | None = None) -> int:
    run(build_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
