"""The saliency loop: the two-step training objective (``docs/design.md``, step 9) and two-pass inference (step 10).

Training is one forward of :class:`SaliencyGuidedVQA` and one backward, so DDP sees every parameter used
exactly as in a plain step (no ``find_unused_parameters``): align once; pass A on the unmasked pair keeps its
graph; Grad-CAM from pass A's own feature maps with the ground-truth answer's keyword gives M (detached); pass B
on the masked pair; L = L_B + λ_A L_A + L_reg. The CAM's ``autograd.grad`` is taken w.r.t. the feature maps only,
so it writes no parameter ``.grad`` and fires no DDP hook.

Inference re-uses pass 1's work: its feature maps (a detached leaf: no encoder backward) and its prompt pass
through the decoder, kept with its graph, so the Grad-CAM teacher-forces only the preliminary answer's tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from diffvqa.data.dataset import pad_token_ids
from diffvqa.model.align import AlignOutput
from diffvqa.model.content import box_masks
from diffvqa.model.findings import finding_loss
from diffvqa.model.vqa import DiffVQA
from diffvqa.saliency.gradcam import (
    cam_pool,
    cams_from_score,
    classifier_cams,
    keyword_gradcam_from_prompt,
    keyword_label_indices,
    keyword_log_prob,
    keyword_token_mask,
    merge_cams,
    score_selection,
)
from diffvqa.saliency.keywords import KeywordFn
from diffvqa.saliency.lexicon import keyword_spans
from diffvqa.saliency.mask import apply_mask, guard_empty, registered_difference, shared_mask


@dataclass
class GuidedOutput:
    loss: Tensor  # scalar: L_B + λ_A L_A + L_reg + w_sim L_sim (or the single-pass loss)
    # unweighted terms: answer_masked, answer_unmasked, registration, alignment_similarity (+ findings: the finding
    # head's loss, with train.finding_loss_weight)
    losses: dict[str, Tensor]
    theta: Tensor  # (B, 2, 3)
    mask: Tensor | None  # (B, 1, S, S) shared mask M; None in single-pass mode
    empty_mask: Tensor | None  # (B,) bool: rows whose M was all zero and fell back to all ones


def aligned_pair(
    model: DiffVQA, main: Tensor, ref: Tensor, main_box: Tensor | None, ref_box: Tensor | None
) -> tuple[AlignOutput, Tensor | None]:
    """Align main onto ref with their content masks -> (alignment, content (2B, 1, S, S) or None).

    ``content`` marks where the aligned main and the reference hold image (main first, as the feature maps);
    None when neither image has a recorded content box (the whole frame counts).
    """
    size, batch = main.shape[-1], main.shape[0]
    main_content = None if main_box is None else box_masks(main_box, size, device=main.device)
    ref_content = None if ref_box is None else box_masks(ref_box, size, device=ref.device)
    aligned = model.align(main, ref, main_content, ref_content)
    if aligned.content is None and ref_content is None:
        return aligned, None
    ones = torch.ones(batch, 1, size, size, device=main.device)
    content = torch.cat(
        [ones if aligned.content is None else aligned.content, ones if ref_content is None else ref_content]
    )
    return aligned, content


def cam_gate(method: str, aligned_main: Tensor, ref: Tensor, content: Tensor | None) -> Tensor | None:
    """The gate ``change_gated`` multiplies the CAMs by (the registered difference, detached); None otherwise."""
    if method != "change_gated":
        return None
    return registered_difference(aligned_main.detach(), ref.detach(), content)


class SaliencyGuidedVQA(nn.Module):
    """The top-level training module: wraps a :class:`DiffVQA` and runs the saliency-guided objective.

    With ``config.saliency.enabled = False`` it runs the plain single pass (loss terms ``answer_unmasked`` and
    ``registration``), the ablation and speed baseline.
    """

    def __init__(self, model: DiffVQA):
        super().__init__()
        self.model = model

    def forward(
        self, main: Tensor, ref: Tensor, question_ids: Tensor, question_mask: Tensor, answer_ids: Tensor,
        answer_mask: Tensor, keyword_mask: Tensor, guided: bool = True, main_box: Tensor | None = None,
        ref_box: Tensor | None = None, keyword_labels: Tensor | None = None, finding_targets: Tensor | None = None,
        finding_mask: Tensor | None = None, finding_weight: float = 0.0,
    ) -> GuidedOutput:  # fmt: skip
        """``guided=False`` runs this step single-pass (``saliency.start_step``); every parameter is still used.
        ``main_box``/``ref_box`` (B, 4): each image's content box (``diffvqa.model.content``); None: whole frame.
        ``keyword_labels`` (B,) long: each keyword's finding-head label, -1 none (``saliency.cam_source=classifier``).
        ``finding_targets``/``finding_mask`` (2B, K), main images first: the finding head's loss, weighted by
        ``finding_weight`` (``train.finding_loss_weight``)."""
        model = self.model
        cfg = model.config.saliency
        enabled = cfg.enabled and guided
        main, ref = model.inputs(main, ref)
        aligned, content = aligned_pair(model, main, ref, main_box, ref_box)
        similarity_weight = model.config.model.align_similarity
        text = model.decoder.text_batch(question_ids, question_mask, answer_ids, answer_mask)
        # λ_A = 0: L_A does not count, so pass A serves the CAM alone: no graph into the encoder, and the CAM's
        # gradient frees the decoder's. The step's gradients are unchanged (they lose only λ_A ∂L_A = 0), and pass B
        # still uses every parameter (DDP-safe).
        cam_only = enabled and cfg.unmasked_loss_weight == 0
        if cam_only:
            with torch.no_grad():
                features_a = model.encode(aligned.aligned, ref)
            features_a.requires_grad_(torch.is_grad_enabled())  # a leaf: the CAM's gradient stops here
        else:
            features_a = model.encode(aligned.aligned, ref)
            if enabled and torch.is_grad_enabled() and not features_a.requires_grad:
                # a frozen encoder (train.encoder_lr_scale=0) without the aligner: nothing upstream learns, yet the
                # CAM needs the gradient at the feature maps
                features_a.requires_grad_(True)
        loss_a, hidden_a = model.decode_loss(features_a, text)
        alignment = aligned.reg_loss + similarity_weight * aligned.similarity_loss
        extra: dict[str, Tensor] = {}
        if finding_targets is not None and finding_weight > 0:
            b = main.shape[0]
            if model.config.train.finding_loss_images == "both":  # on pass A's feature maps: it trains the aligner too
                logits, rows = model.finding_head(features_a), slice(None)
            else:  # reference: a pass of its own over the reference images, which the aligner never touches (in pass
                # A, BatchNorm would still carry the loss's gradient to the warped main images of the same batch)
                logits, rows = model.finding_head(model.encoder.features(ref)), slice(b, None)
            extra["findings"] = finding_loss(logits, finding_targets[rows], finding_mask[rows])
            alignment = alignment + finding_weight * extra["findings"]
        if not enabled:
            losses = {
                "answer_unmasked": loss_a,
                "registration": aligned.reg_loss,
                "alignment_similarity": aligned.similarity_loss,
                **extra,
            }
            return GuidedOutput(loss_a + alignment, losses, aligned.theta, None, None)

        select = score_selection(text, question_mask, keyword_mask)
        score = keyword_log_prob(model.decoder, hidden_a, text, select, cfg.cam_target)
        gate = cam_gate(cfg.cam_method, aligned.aligned, ref, content)
        cam_main, cam_ref = cams_from_score(
            features_a,
            score,
            model.image_size,
            cfg.cam_eps,
            retain_graph=not cam_only,
            method=cfg.cam_method,
            content=content,
            gate=gate,
            normalize=cfg.cam_normalize,
            pool=cam_pool(model.config),
        )
        if cfg.cam_source == "classifier":  # the head's map where the keyword has a label, the decoder's elsewhere
            if keyword_labels is None:
                raise ValueError("saliency.cam_source=classifier: pass keyword_labels (B,) to the training forward")
            cams = classifier_cams(model, features_a, keyword_labels, cfg.cam_eps, cfg.cam_method, content, gate,
                                   cfg.cam_normalize, cam_pool(model.config))  # fmt: skip
            cam_main, cam_ref = merge_cams(cams, (cam_main, cam_ref), keyword_labels >= 0)
        if cam_only:
            loss_a = loss_a.detach()
            del hidden_a, score  # pass A's decoder graph goes now (an fp16 CAM kept it for a possible retry)
        mask, empty = guard_empty(shared_mask(cam_main, cam_ref, cfg.mask))
        features_b = model.encode(
            apply_mask(aligned.aligned, mask, cfg.mask_floor), apply_mask(ref, mask, cfg.mask_floor), masked=True
        )
        loss_b, _ = model.decode_loss(features_b, text)
        losses = {
            "answer_masked": loss_b,
            "answer_unmasked": loss_a,
            "registration": aligned.reg_loss,
            "alignment_similarity": aligned.similarity_loss,
            **extra,
        }
        loss = loss_b + cfg.unmasked_loss_weight * loss_a + alignment
        return GuidedOutput(loss, losses, aligned.theta, mask, empty)


@dataclass
class TwoPassResult:
    preliminary: list[str]  # pass-1 answers (unmasked images)
    keywords: list[str]  # from the preliminary answers ("" = none: the CAM scored the whole answer)
    cam_main: Tensor | None  # (B, 1, S, S) in [0, 1], reference frame (main was aligned)
    cam_ref: Tensor | None  # (B, 1, S, S)
    mask: Tensor | None  # (B, 1, S, S) shared mask M
    theta: Tensor  # (B, 2, 3)
    aligned_main: Tensor  # (B, 1, S, S)
    final: list[str]  # pass-2 answers (masked images); equal to ``preliminary`` in single-pass mode
    empty_mask: Tensor | None = None  # (B,) bool: rows whose M was all zero and fell back to all ones
    content: Tensor | None = None  # (2B, 1, S, S) content of the aligned main and the reference; None: whole frame
    features: Tensor | None = None  # (2B, C, h, w) pass-1 feature maps (for further CAMs of the same pass)
    cam_texts: list[str] | None = None  # the teacher-forced text each row's CAM scored (None: single pass)


@torch.no_grad()
def two_pass_answer(
    model: DiffVQA,
    main: Tensor,
    ref: Tensor,
    question_ids: Tensor,
    question_mask: Tensor,
    questions: list[str],
    keyword_fn: KeywordFn,
    single_pass: bool = False,
    main_box: Tensor | None = None,
    ref_box: Tensor | None = None,
    keywords: list[str] | None = None,
) -> TwoPassResult:
    """Two-pass inference: answer, keyword, Grad-CAM on the pass-1 features, shared mask, answer again.

    Call with the model in eval mode. ``single_pass`` (or ``config.saliency.enabled = False``) skips the saliency
    loop and returns the pass-1 answer as final. ``main_box``/``ref_box`` (B, 4): content boxes (None: whole frame).

    ``keywords`` (one per row) forces the keyword instead of asking ``keyword_fn``: the CAM scores the keyword's
    tokens in the preliminary answer, or -- when the preliminary answer does not name it -- the keyword itself
    teacher-forced as the answer (the evidence the model has for saying it). ``cam_texts`` records which.
    """
    cfg = model.config.saliency
    main, ref = model.inputs(main, ref)
    aligned, content = aligned_pair(model, main, ref, main_box, ref_box)
    features = model.encode(aligned.aligned, ref)
    if single_pass or not cfg.enabled:
        preliminary, _ = model.generate_from_features(features, question_ids, question_mask)
        return TwoPassResult(
            preliminary,
            [""] * len(preliminary),
            None,
            None,
            None,
            aligned.theta,
            aligned.aligned,
            list(preliminary),
            content=content,
            features=features,
        )

    # Pass 1 projects the feature maps from a leaf and keeps its prompt pass's graph: the Grad-CAM re-uses both
    # (no encoder backward, no second prompt pass).
    leaf = features.detach().requires_grad_(True)
    preliminary, generation = model.generate_from_features(leaf, question_ids, question_mask, keep_prompt=True)
    if keywords is None:
        keywords = [keyword_fn(answer, question) for answer, question in zip(preliminary, questions, strict=True)]
        cam_texts = list(preliminary)
    else:
        if len(keywords) != len(preliminary):
            raise ValueError(f"{len(keywords)} forced keywords for {len(preliminary)} questions")
        cam_texts = [a if not k or keyword_spans(a, k) else k for a, k in zip(preliminary, keywords, strict=True)]
    limit = model.config.data.max_answer_tokens
    answer_ids, answer_mask = (t.to(main.device) for t in pad_token_ids(model.tokenizer, cam_texts, limit))
    keyword_mask = keyword_token_mask(model.tokenizer, cam_texts, keywords, answer_ids)
    gate = cam_gate(cfg.cam_method, aligned.aligned, ref, content)
    labels = keyword_label_indices(model, keywords) if cfg.cam_source == "classifier" else None
    if labels is not None:  # the head's map where the keyword has a label (module docstring of gradcam)
        cams = classifier_cams(model, features, labels, cfg.cam_eps, cfg.cam_method, content, gate,
                               cfg.cam_normalize, cam_pool(model.config))  # fmt: skip
    if labels is None or bool((labels < 0).any()):
        decoder_cams = keyword_gradcam_from_prompt(
            model,
            leaf,
            generation.prompt,
            answer_ids,
            answer_mask,
            keyword_mask,
            cfg.cam_eps,
            cfg.cam_method,
            content,
            gate,
            cfg.cam_normalize,
            cfg.cam_target,
            cam_pool(model.config),
        )
        cams = decoder_cams if labels is None else merge_cams(cams, decoder_cams, labels >= 0)
    generation = None  # the prompt's graph goes now (unused when every keyword had a label)
    cam_main, cam_ref = cams
    mask, empty = guard_empty(shared_mask(cam_main, cam_ref, cfg.mask))
    masked = model.encode(
        apply_mask(aligned.aligned, mask, cfg.mask_floor), apply_mask(ref, mask, cfg.mask_floor), masked=True
    )
    final, _ = model.generate_from_features(masked, question_ids, question_mask)
    return TwoPassResult(
        preliminary,
        keywords,
        cam_main,
        cam_ref,
        mask,
        aligned.theta,
        aligned.aligned,
        final,
        empty_mask=empty,
        content=content,
        features=features,
        cam_texts=cam_texts,
    )
