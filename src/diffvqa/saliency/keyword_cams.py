"""More Grad-CAMs of an evaluated batch: other keywords' maps on pass 1's feature maps, after two-pass inference.

Evaluation scores a keyword's own map where the two-pass result holds another's (the model's keyword): keyword
conditioning computes one per named change (:mod:`diffvqa.metrics.mechanisms`), the box scores one per finding a
dataset names (:mod:`diffvqa.metrics.boxes`). Both take rows of the batch, re-use pass 1's feature maps (no encoder
pass) and teacher-force a text that holds the keyword.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from diffvqa.data.dataset import pad_token_ids
from diffvqa.model.vqa import DiffVQA
from diffvqa.saliency.gradcam import (
    cam_pool,
    classifier_cams,
    keyword_gradcam,
    keyword_label_indices,
    keyword_token_mask,
    merge_cams,
)
from diffvqa.saliency.guided import TwoPassResult


def keyword_cams(
    model: DiffVQA, batch: dict[str, Any], result: TwoPassResult, rows: list[int], keywords: list[str], texts: list[str]
) -> tuple[Tensor, Tensor]:
    """The Grad-CAMs of ``keywords[r]`` for question ``rows[r]`` of an evaluated batch (a question may come more
    than once), on pass 1's feature maps, teacher-forced on ``texts[r]`` (whose tokens spelling the keyword are
    scored; all of it when none does). With ``saliency.cam_source=classifier`` the finding head's map of the
    keyword's label instead, as inference makes it (the decoder's where the labels do not cover the keyword).

    Returns:
        cam_main, cam_ref (R, 1, S, S) in [0, 1], in the reference frame, zero outside the images' content, before
        any keyword-independent gate.
    """
    device = result.features.device
    index = torch.tensor(rows, device=device)
    b = len(batch["question"])
    features = torch.cat([result.features[:b][index], result.features[b:][index]])  # (2R, C, h, w)
    content = None
    if result.content is not None:
        content = torch.cat([result.content[:b][index], result.content[b:][index]])
    limit = model.config.data.max_answer_tokens
    answer_ids, answer_mask = (t.to(device) for t in pad_token_ids(model.tokenizer, texts, limit))
    keyword_mask = keyword_token_mask(model.tokenizer, texts, keywords, answer_ids)
    question_ids, question_mask = batch["question_ids"].to(device)[index], batch["question_mask"].to(device)[index]
    cfg, pool = model.config.saliency, cam_pool(model.config)
    cams = keyword_gradcam(model, features, question_ids, question_mask, answer_ids, answer_mask, keyword_mask,
                           cfg.cam_eps, cfg.cam_method, content, normalize=cfg.cam_normalize, target=cfg.cam_target,
                           pool=pool)  # fmt: skip
    if cfg.cam_source == "classifier":
        labels = keyword_label_indices(model, keywords)
        head_cams = classifier_cams(model, features, labels, cfg.cam_eps, cfg.cam_method, content,
                                    normalize=cfg.cam_normalize, pool=pool)  # fmt: skip
        cams = merge_cams(head_cams, cams, labels >= 0)
    return cams
