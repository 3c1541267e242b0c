"""The Python API: load a trained model once, then ask questions about image pairs.

    import diffvqa
    vqa = diffvqa.load("runs/small")                      # a run directory (its best checkpoint) or a checkpoint
    answer = vqa("now.jpg", "before.dcm", "what has changed compared to the reference image?")
    print(answer.final, answer.keyword, answer.mask.shape)

Images may be paths (JPEG, PNG, DICOM), Pillow images or arrays ((H, W) gray, or (H, W, 3) uint8); they are fitted
into the checkpoint's S x S frame exactly as ``diffvqa ask`` and the cache fit them, and the question is tokenized
with the checkpoint's tokenizer. Lists of images and questions (equal lengths) answer a batch in one forward and
return a list of :class:`Answer`. ``keyword=`` forces the Grad-CAM's keyword (``diffvqa ask --keyword``).

``diffvqa ask`` is a thin command-line wrapper around :class:`Pipeline`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from diffvqa.data.dataset import pad_token_ids
from diffvqa.data.images import Geometry, gray_float, load_image, resize_pad
from diffvqa.device import resolve_device
from diffvqa.errors import UserError
from diffvqa.model.checkpoint import find_checkpoint, load_checkpoint
from diffvqa.model.vqa import DiffVQA
from diffvqa.saliency.guided import two_pass_answer
from diffvqa.saliency.keywords import INFERENCE_KEYWORD_SOURCES, KeywordFn, answer_keyword_fn, finish_keywords

ImageInput = str | Path | Image.Image | np.ndarray


@dataclasses.dataclass
class Answer:
    """One question's answer and where the model looked. Maps are (S, S) float32 in the reference image's cache
    frame (the main image aligned onto it); they are None in single-pass mode."""

    question: str
    preliminary: str  # pass 1, on the unmasked pair
    final: str  # pass 2, on the masked pair (== preliminary in single-pass mode)
    keyword: str  # the Grad-CAM's keyword ("" = none: the CAM scored the whole preliminary answer)
    keyword_forced: bool  # keyword= was given
    cam_text: str | None  # the teacher-forced text the CAM scored (the preliminary answer, or a forced keyword)
    theta: np.ndarray  # (2, 3) main -> reference affine in normalised coordinates
    cam_main: np.ndarray | None
    cam_ref: np.ndarray | None
    mask: np.ndarray | None  # the shared mask M = max(CAM_main, CAM_ref)
    main_image: np.ndarray  # (S, S) the main image as the model saw it (before alignment)
    ref_image: np.ndarray  # (S, S)
    aligned_main: np.ndarray  # (S, S) the main image after the learned alignment
    main_geometry: Geometry  # where the original main image lies in the frame
    ref_geometry: Geometry
    single_pass: bool
    notes: list[str]  # what the user should know (unknown words, truncation, a forced keyword not in the answer)

    def to_record(self) -> dict[str, Any]:
        """The JSON-ready summary ``diffvqa ask`` writes to answer.json (no pixel arrays)."""
        return {
            "question": self.question,
            "preliminary": self.preliminary,
            "keyword": self.keyword,
            "keyword_forced": self.keyword_forced,
            "cam_text": self.cam_text,
            "final": self.final,
            "single_pass": self.single_pass,
            "theta": self.theta.tolist(),  # main -> reference affine, normalised coordinates
            "geometry": {"main": self.main_geometry.to_dict(), "reference": self.ref_geometry.to_dict()},
            "notes": list(self.notes),
        }


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


def fit_input(image: ImageInput, size: int, name: str) -> tuple[np.ndarray, Geometry]:
    """A path, Pillow image or array -> ((S, S) float32 in [0, 1], its :class:`Geometry`)."""
    if isinstance(image, (str, Path)):
        if not Path(image).is_file():
            raise UserError(f"{name} {image}: not found")
        return load_image(image, size)
    if isinstance(image, (Image.Image, np.ndarray)):
        return resize_pad(gray_float(image, name), size)
    raise UserError(f"{name}: expected a path, a PIL image or a numpy array, got {type(image).__name__}")


def _as_list(value, name: str) -> tuple[list, bool]:
    """(items, batched): a list/tuple is a batch; anything else (one path, image, array or string) is one item."""
    if isinstance(value, (list, tuple)):
        if not value:
            raise UserError(f"{name}: an empty batch")
        return list(value), True
    return [value], False


def _numpy(tensor: torch.Tensor | None, row: int) -> np.ndarray | None:
    return None if tensor is None else tensor[row, 0].detach().float().cpu().numpy()


class Pipeline:
    """A loaded model that answers questions about (main, reference) pairs; see the module docstring.

    Args:
        model: a :class:`DiffVQA` (put in eval mode here).
        keyword_source: ``lexicon`` or ``llm`` (default: the checkpoint's ``saliency.keyword_source``, or
            ``lexicon`` when that is ``truth``: a generated answer has no ground truth).
        single_pass: skip the saliency loop (one pass, no maps).
    """

    def __init__(self, model: DiffVQA, *, keyword_source: str | None = None, single_pass: bool = False):
        self.model = model.eval()
        config = model.config
        if keyword_source is not None and keyword_source not in INFERENCE_KEYWORD_SOURCES:
            raise UserError(
                f"keyword_source {keyword_source!r}: expected one of {', '.join(INFERENCE_KEYWORD_SOURCES)}"
            )
        default = config.saliency.keyword_source
        self.keyword_source = keyword_source or (default if default in INFERENCE_KEYWORD_SOURCES else "lexicon")
        self.single_pass = single_pass or not config.saliency.enabled
        self._keyword_fn: KeywordFn | None = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def image_size(self) -> int:
        return self.model.config.data.image_size

    def keyword_fn(self) -> KeywordFn:
        if self._keyword_fn is None:  # the LLM client is built on first use only
            saliency = dataclasses.replace(self.model.config.saliency, keyword_source=self.keyword_source)
            self._keyword_fn = answer_keyword_fn(saliency)
        return self._keyword_fn

    def keywords_report(self) -> str | None:
        """Where the LLM backend's keywords came from (cache, endpoint, fallback); None for the lexicon."""
        return None if self._keyword_fn is None else finish_keywords(self._keyword_fn)

    def __call__(
        self,
        main: ImageInput | Sequence[ImageInput],
        ref: ImageInput | Sequence[ImageInput],
        question: str | Sequence[str],
        keyword: str | Sequence[str] | None = None,
    ) -> Answer | list[Answer]:
        """Answer ``question`` about ``main`` (current) against ``ref`` (prior); lists answer a batch."""
        mains, batched = _as_list(main, "main")
        refs, _ = _as_list(ref, "ref")
        questions, _ = _as_list(question, "question")
        keywords = None if keyword is None else _as_list(keyword, "keyword")[0]
        sizes = {"main": len(mains), "ref": len(refs), "question": len(questions)}
        if keywords is not None:
            sizes["keyword"] = len(keywords)
        if len(set(sizes.values())) != 1:
            raise UserError(
                "a batch needs one of each per pair; got " + ", ".join(f"{n} {k}" for k, n in sizes.items())
            )
        answers = self._answer(mains, refs, questions, keywords)
        return answers if batched else answers[0]

    @torch.no_grad()
    def _answer(self, mains: list, refs: list, questions: list, keywords: list[str] | None) -> list[Answer]:
        model, size, device = self.model, self.image_size, self.device
        config = model.config
        fitted = [
            (fit_input(m, size, f"main[{i}]"), fit_input(r, size, f"ref[{i}]"))
            for i, (m, r) in enumerate(zip(mains, refs, strict=True))
        ]
        notes: list[list[str]] = []
        texts: list[str] = []  # the questions, whitespace collapsed
        for i, text in enumerate(questions):
            if not isinstance(text, str) or not " ".join(text.split()):
                raise UserError(
                    f"question[{i}] {text!r}: expected a non-empty string, e.g. "
                    "'what has changed compared to the reference image?'"
                )
            text = " ".join(text.split())
            ids, row_notes = encode_question(model.tokenizer, text, config.data.max_question_tokens)
            if not ids:
                raise UserError(f"question[{i}] {text!r} gives no tokens")
            texts.append(text)
            notes.append(row_notes)
        if keywords is not None:
            bad = [k for k in keywords if not isinstance(k, str)]
            if bad:
                raise UserError(f"keyword {bad[0]!r}: expected a string (a finding, e.g. 'pleural effusion')")
            keywords = [" ".join(k.split()) for k in keywords]

        # padded exactly as evaluation's batches are (Collate): <pad> after each question, truncated to the limit
        question_ids, question_mask = (
            t.to(device) for t in pad_token_ids(model.tokenizer, texts, config.data.max_question_tokens)
        )
        stack = lambda k: torch.from_numpy(np.stack([pair[k][0] for pair in fitted]))[:, None].to(device)  # noqa: E731
        boxes = [
            torch.tensor([pair[k][1].content_box() for pair in fitted], dtype=torch.long, device=device) for k in (0, 1)
        ]
        result = two_pass_answer(
            model,
            stack(0),
            stack(1),
            question_ids,
            question_mask,
            texts,
            self.keyword_fn() if keywords is None and not self.single_pass else _no_keyword,
            single_pass=self.single_pass,
            main_box=boxes[0],
            ref_box=boxes[1],
            keywords=None if self.single_pass else keywords,
        )
        answers = []
        for row, text in enumerate(texts):
            cam_text = None if result.cam_texts is None else result.cam_texts[row]
            row_notes = notes[row]
            if keywords is not None and not self.single_pass and keywords[row] and cam_text != result.preliminary[row]:
                row_notes.append(
                    f"the preliminary answer does not name {keywords[row]!r}: the CAM scores the keyword itself "
                    "as the answer (the model's evidence for saying it)"
                )
            if keywords is not None and self.single_pass:
                row_notes.append("single pass: no saliency loop, so the forced keyword is not used")
            answers.append(
                Answer(
                    question=text,
                    preliminary=result.preliminary[row],
                    final=result.final[row],
                    keyword=result.keywords[row],
                    keyword_forced=keywords is not None and not self.single_pass,
                    cam_text=cam_text,
                    theta=result.theta[row].detach().float().cpu().numpy(),
                    cam_main=_numpy(result.cam_main, row),
                    cam_ref=_numpy(result.cam_ref, row),
                    mask=_numpy(result.mask, row),
                    main_image=fitted[row][0][0],
                    ref_image=fitted[row][1][0],
                    aligned_main=_numpy(result.aligned_main, row),
                    main_geometry=fitted[row][0][1],
                    ref_geometry=fitted[row][1][1],
                    single_pass=self.single_pass,
                    notes=row_notes,
                )
            )
        return answers


def _no_keyword(answer: str, question: str = "") -> str:
    """The keyword function of single-pass mode and of forced keywords: never asked."""
    return ""


def load(
    run_or_checkpoint: str | Path,
    device: str = "auto",
    *,
    keyword_source: str | None = None,
    single_pass: bool = False,
) -> Pipeline:
    """Load a checkpoint directory, or a training run directory (its best checkpoint, else its latest), onto
    ``device`` (``auto``: CUDA when available, else CPU) -> a callable :class:`Pipeline`."""
    path = Path(run_or_checkpoint)
    torch_device = resolve_device(device, option="device")
    if not path.is_dir():
        raise UserError(f"{path}: not found; expected a checkpoint directory or a training run directory")
    find_checkpoint(path)  # the one-line error for a directory that is neither
    model = load_checkpoint(path, map_location=torch_device)
    return Pipeline(model, keyword_source=keyword_source, single_pass=single_pass)
