"""Keyword-conditioned Grad-CAM on the encoder's feature maps of both images (``docs/design.md``, step 7).

score s = sum of log p(y_t) over the answer tokens that spell the keyword (the whole answer and its <eos> when
there is no keyword), teacher-forced. G = ds/dF by ``torch.autograd.grad`` on the feature maps F of *the same
forward* — no second encoder pass, no backward through the encoder, nothing written to any parameter's
``.grad``, no hooks, train/eval mode untouched. Then α = mean_{h,w} G, cam = ReLU(Σ_c α_c F_c), bilinear upsample
to S x S with each cell centred on its receptive field, zeroed outside the image's content (the letterbox holds
no anatomy), and cam /= max(cam) + ε per image.

Cell placement: the ResNet's stem (7x7 conv, stride 2, padding 3; 3x3 max-pool, stride 2, padding 1) and its
stride-2 3x3 convolutions (padding 1) centre feature cell i's receptive field on input pixel stride·i (pixel
centres at integer coordinates; measured as the centroid of the cell's input gradient in the tests). A bilinear
resize with ``align_corners=False`` would put cell i at stride·i + (stride - 1)/2 instead — 7.5 px right and down
at S = 128 — so the maps are upsampled with :func:`upsample_cells`. Beyond the last cell centre the map is flat.

``saliency.cam_method=hirescam`` (a departure from the paper, for ablation) keeps the gradient's spatial
detail: cam = ReLU(Σ_c G_c ⊙ F_c) instead of the channel-averaged weights. ``change_gated`` (also a departure)
multiplies each Grad-CAM by a ``gate`` before normalising — the registered difference of the pair
(:func:`diffvqa.saliency.mask.registered_difference`): the keyword says *what* to look for, the registered
difference *where* something changed.

The decoder is causal, so s depends only on positions up to the last keyword token: when the CAM is computed on
its own (inference), the teacher-forced pass stops there and applies the LM head only at the keyword positions.
In two-pass inference the prompt (prefix, question, ``<answer>``) has already been through the decoder to generate
the preliminary answer: :func:`keyword_gradcam_from_prompt` keeps that pass's graph and teacher-forces only the
answer tokens on top of it, so the CAM costs one backward and a short forward instead of a full forward + backward.

Under fp16 autocast (``train.autocast=fp16``) the feature maps and the gradient flowing back to them are float16,
whose five exponent bits flush a gradient below ~6e-8 to zero and blur one below ~6e-5 — and a trained model,
confident in the ground-truth keyword, has its gradients there (measured on the tiny config after 400 steps: median
|G| 4.5e-7, 5 % flushed to zero, 3.4 % error in G). :func:`score_gradient` scales the score before the backward
and the gradient back in float32 (0.75 % error, none flushed), and the CAM's arithmetic runs in float32 outside
autocast. bf16 has float32's exponent range and takes the plain gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from diffvqa.data.labels import keyword_label
from diffvqa.data.text import Tokenizer
from diffvqa.model.decoder import IGNORE, Prompt, TextBatch
from diffvqa.model.vqa import DiffVQA
from diffvqa.saliency.lexicon import keyword_spans


def keyword_token_mask(tokenizer: Tokenizer, answers: list[str], keywords: list[str], answer_ids: Tensor) -> Tensor:
    """Which answer tokens spell each row's keyword -> (B, La) bool.

    ``answer_ids`` (B, La) must be the tokenizer's encoding of ``answers`` (right-padded, possibly truncated).
    A row whose keyword is empty, absent from its answer, or cut off by truncation selects nothing: the score
    then falls back to the whole answer.
    """
    mask = torch.zeros(answer_ids.shape, dtype=torch.bool)
    for i, (answer, keyword) in enumerate(zip(answers, keywords, strict=True)):
        spans = keyword_spans(answer, keyword)  # the official name or one of its synonyms, first occurrence
        if not spans:
            continue
        span = spans[0]
        ids, offsets = tokenizer.encode_with_offsets(answer)
        n = min(len(ids), answer_ids.shape[1])
        if ids[:n] != answer_ids[i, :n].tolist():
            raise ValueError(f"answer_ids of row {i} are not the tokenizer's encoding of {answer!r}")
        for t in range(n):
            start, end = offsets[t]
            mask[i, t] = start < span[1] and end > span[0]
    return mask.to(answer_ids.device)


def score_selection(text: TextBatch, question_mask: Tensor, keyword_mask: Tensor) -> Tensor:
    """Place the per-answer-token keyword mask into text coordinates -> (B, T) bool over scored tokens.

    Text rows are ``<question> q <answer> a <eos>``, so answer token k of row i sits at column 2 + |q_i| + k.
    Rows that select no keyword token score their whole answer and <eos>.
    """
    scored = text.labels != IGNORE
    select = torch.zeros_like(scored)
    starts = 2 + question_mask.sum(dim=1)  # (B,)
    rows, ks = keyword_mask.nonzero(as_tuple=True)
    cols = starts[rows] + ks
    keep = cols < select.shape[1]
    select[rows[keep], cols[keep]] = True
    select &= scored
    empty = ~select.any(dim=1)
    select[empty] = scored[empty]
    return select


CAM_TARGETS = ("log_prob", "logit")
CAM_NORMALIZATIONS = ("image", "pair")
CAM_GRIDS = ("encoder", "prefix")


def cam_pool(config) -> int:
    """The pooling of the CAM's grid: 1 on the encoder's feature cells (``saliency.cam_grid = encoder``, the
    paper's), ``model.prefix_pool`` on the pooled cells the prefix reads (``prefix``). ``config``: a Config."""
    grid = config.saliency.cam_grid
    if grid not in CAM_GRIDS:
        raise ValueError(f"saliency.cam_grid={grid!r}: expected one of {', '.join(CAM_GRIDS)}")
    return config.model.prefix_pool if grid == "prefix" else 1


def token_scores(logits: Tensor, targets: Tensor, target: str = "log_prob") -> Tensor:
    """Each selected token's contribution to s: (N, V) logits and (N,) target ids -> (N,).

    ``log_prob`` (the paper's): log p(token) — it also rises when the evidence for *other* tokens falls, so its
    gradient mixes in the evidence against competing findings. ``logit`` (an alternative): the token's
    unnormalised score alone — only the evidence for the keyword itself.
    """
    if target == "log_prob":
        return torch.log_softmax(logits.float(), dim=-1).gather(1, targets[:, None]).squeeze(1)
    if target == "logit":
        return logits.float().gather(1, targets[:, None]).squeeze(1)
    raise ValueError(f"saliency.cam_target={target!r}: expected one of {', '.join(CAM_TARGETS)}")


def keyword_log_prob(decoder, hidden: Tensor, text: TextBatch, select: Tensor, target: str = "log_prob") -> Tensor:
    """s per row: the summed log-probabilities (or logits, ``target``) of the selected tokens -> (B,)."""
    logits, targets, rows = decoder.scored_logits(hidden, text, select)
    scores = token_scores(logits, targets, target)
    return torch.zeros(hidden.shape[0], device=hidden.device).index_add(0, rows, scores)


CAM_METHODS = ("gradcam", "hirescam", "change_gated")


def cell_centres(cells: int, size: int, device=None, pool: int = 1) -> Tensor:
    """(cells,) float pixel positions of the grid's cells: each cell at its receptive field's centre.

    ``pool = 1``: feature cell i at pixel ``stride * i``, stride = size / cells. ``pool = k``: the cells are the
    k x k averages the prefix reads (``saliency.cam_grid = prefix``), cell i centred between feature cells k·i and
    k·i + k - 1, at pixel ``stride_f * (k * i + (k - 1) / 2)`` with stride_f = size / (cells * k).
    """
    stride = size / (cells * pool)  # pixels per feature cell
    return stride * (pool * torch.arange(cells, device=device, dtype=torch.float32) + (pool - 1) / 2)


def cell_weights(cells: int, size: int, device=None, pool: int = 1) -> Tensor:
    """(size, cells) linear-interpolation weights that put cell i at :func:`cell_centres`' pixel i. Pixel p reads
    the cells around its position (clamped to the first and last cell: the map is flat beyond them)."""
    centres = cell_centres(cells, size, device, pool)
    spacing = size / cells  # pixels between neighbouring cells
    pixels = torch.arange(size, device=device, dtype=torch.float32)
    position = ((pixels - centres[0]) / spacing).clamp(min=0, max=cells - 1)
    return (1.0 - (position[:, None] - torch.arange(cells, device=device)[None, :]).abs()).clamp(min=0.0)


def upsample_cells(maps: Tensor, size: int, pool: int = 1) -> Tensor:
    """(N, 1, h, w) cell maps -> (N, 1, S, S), each cell centred on its receptive field (:func:`cell_weights`)."""
    wy = cell_weights(maps.shape[-2], size, maps.device, pool).to(maps.dtype)
    wx = cell_weights(maps.shape[-1], size, maps.device, pool).to(maps.dtype)
    return torch.einsum("yi,ncij,xj->ncyx", wy, maps, wx)


def cell_cams(features: Tensor, grads: Tensor, method: str = "gradcam", pool: int = 1) -> Tensor:
    """Class activation maps on the cell grid: (N, C, h, w) features and their gradient -> (N, 1, h / pool, w / pool).

    ``pool = k`` gives the CAM of the k x k average-pooled maps the prefix reads. The pooling is linear and the
    decoder sees only the pooled maps, so the gradient is constant over each k x k block and that CAM is the block
    average of the cell CAM before its ReLU, for Grad-CAM (its channel weights scale by k²) and HiResCAM alike.
    """
    if method in ("gradcam", "change_gated"):  # change_gated: Grad-CAM, gated afterwards by the caller's ``gate``
        alpha = grads.mean(dim=(2, 3), keepdim=True)  # (N, C, 1, 1)
        cam = (alpha * features).sum(dim=1, keepdim=True)
    elif method == "hirescam":
        cam = (grads * features).sum(dim=1, keepdim=True)
    else:
        raise ValueError(f"saliency.cam_method={method!r}: expected one of {', '.join(CAM_METHODS)}")
    if pool > 1:
        cam = F.avg_pool2d(cam, pool)
    return F.relu(cam)


def normalize_cams(cam: Tensor, mode: str = "image", eps: float = 1e-6) -> Tensor:
    """(2B, 1, S, S) maps, main images first, scaled into [0, 1].

    ``image`` (the paper's): each map by its own maximum, so the image in which the keyword's finding is absent
    still gets a full-strength peak. ``pair``: both maps of a pair by their common maximum, so the weaker visit's
    map stays weaker.
    """
    if mode == "image":
        return cam / (cam.amax(dim=(2, 3), keepdim=True) + eps)
    if mode == "pair":
        b = cam.shape[0] // 2
        peak = torch.maximum(cam[:b].amax(dim=(2, 3), keepdim=True), cam[b:].amax(dim=(2, 3), keepdim=True))
        return cam / (torch.cat([peak, peak]) + eps)
    raise ValueError(f"saliency.cam_normalize={mode!r}: expected one of {', '.join(CAM_NORMALIZATIONS)}")


# Scales tried in turn for an fp16 gradient, largest first, then none: the first whose gradient is finite is kept.
# 2^12 lifts gradients down to ~1e-11 out of fp16's flush-to-zero range while intermediate gradients up to ~16 stay
# finite; a random model's larger intermediate gradients overflow there (seen at 2^16) and fall back to 2^6.
FP16_SCORE_SCALES = (2.0**12, 2.0**6)


def score_gradient(score: Tensor, features: Tensor, retain_graph: bool = True) -> Tensor:
    """d(sum of score)/d features in float32 -> the shape of ``features``.

    float16 features (fp16 autocast) get the gradient of the score times a scale, divided by it in float32 (module
    docstring): the largest of :data:`FP16_SCORE_SCALES` whose gradient is finite, else the unscaled one. Each retry
    is one more backward through the decoder, so the tries keep the graph (it is freed with the tensors that hold
    it); an unscaled gradient that is not finite either means the forward itself overflowed, which the training
    step's loss check reports. Other dtypes: the plain gradient.
    """
    if features.dtype == torch.float16:
        total = score.float().sum()
        for scale in FP16_SCORE_SCALES:
            (grads,) = torch.autograd.grad(total * scale, features, retain_graph=True)
            grads = grads.float() / scale
            if bool(torch.isfinite(grads).all()):
                return grads
    (grads,) = torch.autograd.grad(score.sum(), features, retain_graph=retain_graph)
    return grads.float()


def cams_from_score(
    features: Tensor,
    score: Tensor,
    size: int,
    eps: float = 1e-6,
    retain_graph: bool = True,
    method: str = "gradcam",
    content: Tensor | None = None,
    gate: Tensor | None = None,
    normalize: str = "image",
    pool: int = 1,
) -> tuple[Tensor, Tensor]:
    """Grad-CAM of ``score`` (B,) w.r.t. ``features`` (2B, C, h, w), main images first.

    Rows are independent (no layer after the feature maps mixes samples), so one gradient of the summed score
    gives every row's own gradient. In training the graph is retained for the loss's backward. ``content``
    (2B, 1, S, S), main images first, zeroes each map outside its image's content before normalising. Returns the
    main and reference maps, each (B, 1, S, S) in [0, 1], detached. ``gate`` (B, 1, S, S), reference frame,
    multiplies both maps before normalising (``change_gated``); ``normalize``: :func:`normalize_cams`; ``pool``:
    the CAM on the k x k pooled grid the prefix reads (:func:`cell_cams`; 1: the encoder's grid).
    """
    grads = score_gradient(score, features, retain_graph)
    # float32 outside autocast: under autocast the channel sum and the upsampling's einsum would run in half precision
    with torch.autocast(features.device.type, enabled=False):
        cam = upsample_cells(cell_cams(features.detach().float(), grads, method, pool), size, pool)  # (2B, 1, S, S)
        if content is not None:
            cam = cam * content.float()
        if gate is not None:
            cam = cam * torch.cat([gate, gate]).float()
        cam_main, cam_ref = normalize_cams(cam, normalize, eps).chunk(2, dim=0)
    return cam_main, cam_ref


def gate_cams(
    cam_main: Tensor, cam_ref: Tensor, gate: Tensor, normalize: str = "image", eps: float = 1e-6
) -> tuple[Tensor, Tensor]:
    """Maps from :func:`cams_from_score` without a gate -> the same maps gated, as if ``gate`` had been given:
    the normalisations divide by maxima, so gating the normalised maps and normalising again is the same."""
    gated = normalize_cams(torch.cat([cam_main, cam_ref]) * torch.cat([gate, gate]), normalize, eps)
    main, ref = gated.chunk(2, dim=0)
    return main, ref


def keyword_gradcam(
    model: DiffVQA,
    features: Tensor,
    question_ids: Tensor,
    question_mask: Tensor,
    answer_ids: Tensor,
    answer_mask: Tensor,
    keyword_mask: Tensor,
    eps: float = 1e-6,
    method: str = "gradcam",
    content: Tensor | None = None,
    gate: Tensor | None = None,
    normalize: str = "image",
    target: str = "log_prob",
    pool: int = 1,
) -> tuple[Tensor, Tensor]:
    """Grad-CAM from already computed feature maps (inference: the pass-1 features are re-used).

    Works under an outer ``torch.no_grad()``; the feature maps are taken as a detached leaf, so nothing
    upstream (encoder, aligner) is touched. The teacher-forced pass stops at the last scored token.
    Args: features (2B, C, h, w); question/answer ids and masks (B, L); keyword_mask (B, La) bool; content
    (2B, 1, S, S) or None (see :func:`cams_from_score`). Returns cam_main, cam_ref (B, 1, S, S) in [0, 1].
    """
    decoder = model.decoder
    text = decoder.text_batch(question_ids, question_mask, answer_ids, answer_mask)
    select = score_selection(text, question_mask, keyword_mask)
    cut = int(select.nonzero(as_tuple=True)[1].max()) + 1  # causal: later positions cannot change s
    text = TextBatch(ids=text.ids[:, :cut], mask=text.mask[:, :cut], labels=text.labels[:, :cut])
    with torch.enable_grad():
        leaf = features.detach().requires_grad_(True)
        hidden = decoder.hidden_states(*model.prefix(leaf), text)
        score = keyword_log_prob(decoder, hidden, text, select[:, :cut], target)
        return cams_from_score(leaf, score, model.image_size, eps, retain_graph=False, method=method, content=content,
                               gate=gate, normalize=normalize, pool=pool)  # fmt: skip


def keyword_gradcam_from_prompt(
    model: DiffVQA,
    features: Tensor,
    prompt: Prompt,
    answer_ids: Tensor,
    answer_mask: Tensor,
    keyword_mask: Tensor,
    eps: float = 1e-6,
    method: str = "gradcam",
    content: Tensor | None = None,
    gate: Tensor | None = None,
    normalize: str = "image",
    target: str = "log_prob",
    pool: int = 1,
) -> tuple[Tensor, Tensor]:
    """:func:`keyword_gradcam` on a kept prompt pass: the same maps (to float rounding), without re-running it.

    ``features`` (2B, C, h, w) is the leaf (requires grad) the prompt's prefix was projected from, and ``prompt``
    that generation's :class:`Prompt` (``AnswerDecoder.generate(..., keep_prompt=True)``). Only the answer tokens
    up to the last scored one are teacher-forced, on the prompt's keys and values. Works under an outer
    ``torch.no_grad()``; the prompt's graph is freed. Args: answer_ids, answer_mask, keyword_mask (B, La).
    Returns cam_main, cam_ref (B, 1, S, S) in [0, 1].
    """
    decoder, tok = model.decoder, model.tokenizer
    b = answer_ids.shape[0]
    lengths = answer_mask.sum(dim=1)  # (B,)
    rows = torch.arange(b, device=answer_ids.device)
    # Targets in answer coordinates: hidden j (0 = the prompt's <answer>) predicts token j, <eos> after the answer.
    targets = torch.cat([answer_ids, answer_ids.new_full((b, 1), tok.pad_id)], dim=1)
    targets[rows, lengths] = tok.eos_id
    scored = torch.arange(targets.shape[1], device=targets.device) <= lengths[:, None]  # answer tokens and <eos>
    select = torch.cat([keyword_mask, keyword_mask.new_zeros(b, 1)], dim=1) & scored
    empty = ~select.any(dim=1)
    select[empty] = scored[empty]  # no keyword: the whole answer and <eos>
    cut = int(select.nonzero(as_tuple=True)[1].max()) + 1  # causal: later tokens cannot change s
    with torch.enable_grad():
        hidden = decoder.continuation_hidden(prompt, answer_ids[:, : cut - 1], answer_mask[:, : cut - 1])
        sel_rows, sel_cols = select[:, :cut].nonzero(as_tuple=True)
        logits = decoder.gpt2.lm_head(hidden[sel_rows, sel_cols])
        scores = token_scores(logits, targets[sel_rows, sel_cols], target)
        score = torch.zeros(b, device=hidden.device).index_add(0, sel_rows, scores)
        return cams_from_score(features, score, model.image_size, eps, retain_graph=False, method=method,
                               content=content, gate=gate, normalize=normalize, pool=pool)  # fmt: skip


# ----------------------------------------------------------------------------------------------------------
# saliency.cam_source=classifier: the finding head's logit instead of the decoder's keyword score


def keyword_label_indices(model: DiffVQA, keywords: list[str]) -> Tensor:
    """Each keyword's label in the model's finding head -> (B,) long; -1 where the head has none (no keyword, or a
    finding its label set does not cover: :func:`diffvqa.data.labels.keyword_label`)."""
    head = model.finding_head
    if head is None:
        raise ValueError("saliency.cam_source=classifier needs model.finding_head")
    labels = [keyword_label(k, head.label_set) if k else None for k in keywords]
    return torch.tensor([head.index(label) if label is not None else -1 for label in labels], dtype=torch.long)


def classifier_cams(
    model: DiffVQA,
    features: Tensor,
    labels: Tensor,
    eps: float = 1e-6,
    method: str = "gradcam",
    content: Tensor | None = None,
    gate: Tensor | None = None,
    normalize: str = "image",
    pool: int = 1,
) -> tuple[Tensor, Tensor]:
    """Grad-CAM of the finding head's logit for each row's label on both images: features (2B, C, h, w), main
    images first; labels (B,) long (rows with -1 score label 0: the caller replaces their maps). The same maps as
    :func:`cams_from_score` makes from a decoder score, with the head's logit as the score (for ``gradcam``: the
    class activation map, :mod:`diffvqa.model.findings`). Works under ``torch.no_grad()``; touches no parameter."""
    b = labels.shape[0]
    index = labels.clamp(min=0).to(features.device).repeat(2)  # (2B,): each image scores its row's label
    with torch.enable_grad():
        leaf = features.detach().requires_grad_(True)
        logits = model.finding_head(leaf).float()  # (2B, K)
        own = logits.gather(1, index[:, None]).squeeze(1)
        score = own[:b] + own[b:]  # each image's gradient comes from its own logit only
        return cams_from_score(leaf, score, model.image_size, eps, retain_graph=False, method=method,
                               content=content, gate=gate, normalize=normalize, pool=pool)  # fmt: skip


def merge_cams(
    chosen: tuple[Tensor, Tensor], fallback: tuple[Tensor, Tensor], use_chosen: Tensor
) -> tuple[Tensor, Tensor]:
    """Per row, the ``chosen`` maps where ``use_chosen`` (B,) bool, else the ``fallback`` maps (each (B, 1, S, S))."""
    keep = use_chosen.to(chosen[0].device)[:, None, None, None]
    return torch.where(keep, chosen[0], fallback[0]), torch.where(keep, chosen[1], fallback[1])
