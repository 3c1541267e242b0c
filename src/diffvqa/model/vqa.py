"""The assembled model: align main -> reference, encode both at once, project to a prefix, decode with GPT-2.

:class:`DiffVQA` exposes the pieces the saliency loop re-combines (``align``, ``encode``, ``prefix``,
``decoder``), a plain single-pass ``forward`` (training without the saliency loop) and ``generate_from_features``
(greedy answers; inference runs :func:`diffvqa.saliency.guided.two_pass_answer`). Inputs are gray images in
[0, 1], (B, 1, S, S); normalisation happens inside the encoder, after any masking.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from diffvqa.config import Config
from diffvqa.data.text import Tokenizer
from diffvqa.errors import UserError
from diffvqa.model.align import Aligner, AlignOutput, identity_theta
from diffvqa.model.decoder import AnswerDecoder, Generation, PrefixProjection, TextBatch
from diffvqa.model.encoder import ImageEncoder, feature_stride
from diffvqa.model.findings import FindingHead, load_head


@dataclass
class VQAOutput:
    loss: Tensor  # scalar: answer + registration + model.align_similarity * alignment_similarity
    losses: dict[str, Tensor]  # named scalar terms
    theta: Tensor  # (B, 2, 3)
    aligned_main: Tensor  # (B, 1, S, S)
    features: Tensor  # (2B, C, h, w): main images first, then references


class DiffVQA(nn.Module):
    def __init__(self, config: Config, tokenizer: Tokenizer, load_pretrained: bool = True):
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        m = config.model
        self.image_size = config.data.image_size
        stride = feature_stride(m)
        if self.image_size % stride:
            raise UserError(
                f"data.image_size={self.image_size} must be a multiple of the encoder's stride {stride} "
                f"({len(m.encoder_depths)} stages)"
            )
        grid = self.image_size // stride
        tokens = grid // m.prefix_pool
        prefix_len = 2 * tokens * tokens + 2
        longest = prefix_len + config.data.max_question_tokens + config.data.max_answer_tokens + 3
        if longest > m.decoder_positions:
            raise UserError(
                f"model.decoder_positions={m.decoder_positions} is too short: the prefix takes {prefix_len} positions "
                f"({tokens}x{tokens} tokens per image) and the text up to "
                f"{config.data.max_question_tokens + config.data.max_answer_tokens + 3}"
            )
        self.aligner = (
            Aligner(
                m.align_input_size,
                m.align_channels,
                m.align_max_delta,
                m.align_reg_weights,
                m.align_corners,
                m.align_similarity,
            )  # fmt: skip
            if m.align
            else None
        )
        self.encoder = ImageEncoder(m, load_pretrained=load_pretrained)
        self.prefix = PrefixProjection(self.encoder.out_channels, m.decoder_width, (grid, grid), m.prefix_pool)
        self.decoder = AnswerDecoder(m, tokenizer, load_pretrained=load_pretrained)
        # model.finding_head: the pretrained classifier's head, for saliency.cam_source=classifier and the
        # auxiliary finding loss (train.finding_loss_weight); the answer never reads it
        self.finding_head = FindingHead(self.encoder.out_channels, m.finding_head) if m.finding_head else None
        if self.finding_head is not None and load_pretrained and m.encoder_pretrained:
            load_head(self.finding_head, m.encoder_pretrained)

    def set_grad_checkpointing(self, enabled: bool) -> None:
        """``train.grad_checkpointing``: activation checkpointing of the encoder's stages and the decoder's blocks,
        in training only. Parameters and buffers are unchanged, so checkpoints are too."""
        self.encoder.checkpointing = enabled
        self.decoder.set_checkpointing(enabled)

    def inputs(self, main: Tensor, ref: Tensor) -> tuple[Tensor, Tensor]:
        """The images the model sees: zeros in the blind (question-only) baseline."""
        if self.config.model.blind:
            return torch.zeros_like(main), torch.zeros_like(ref)
        return main, ref

    def align(
        self, main: Tensor, ref: Tensor, main_content: Tensor | None = None, ref_content: Tensor | None = None
    ) -> AlignOutput:
        """Warp main (B, 1, S, S) onto ref; the identity (and zero losses) when the aligner is off.

        ``main_content``/``ref_content`` (B, 1, S, S) mark each image's content (not letterbox); None: all of it.
        """
        if self.aligner is None:
            theta = identity_theta(main.shape[0], main.device, main.dtype)
            zero = main.new_zeros(())
            return AlignOutput(aligned=main, theta=theta, reg_loss=zero, similarity_loss=zero, content=main_content)
        return self.aligner(main, ref, main_content, ref_content)

    def encode(self, main: Tensor, ref: Tensor, masked: bool = False) -> Tensor:
        """Both images through the shared encoder as one batch -> (2B, C, h, w), main images first. ``masked``:
        the saliency loop's masked pass (its own BatchNorm statistics, :mod:`diffvqa.model.encoder`)."""
        if self.config.model.blind:
            # Every image is zeros: encode one pair and broadcast it. Identical to encoding the whole batch (its
            # BatchNorm statistics over identical images equal one image's) at a 1/B of the cost.
            batch = main.shape[0]
            one = self.encoder.features(torch.cat([main[:1], ref[:1]], dim=0), masked=masked)
            return torch.cat([one[:1].expand(batch, -1, -1, -1), one[1:].expand(batch, -1, -1, -1)], dim=0)
        return self.encoder.features(torch.cat([main, ref], dim=0), masked=masked)

    def decode_loss(self, features: Tensor, text: TextBatch) -> tuple[Tensor, Tensor]:
        """Teacher-forced answer loss from feature maps; also returns the hidden states."""
        hidden = self.decoder.hidden_states(*self.prefix(features), text)
        return self.decoder.answer_loss(hidden, text), hidden

    def forward(
        self, main: Tensor, ref: Tensor, question_ids: Tensor, question_mask: Tensor, answer_ids: Tensor,
        answer_mask: Tensor, main_content: Tensor | None = None, ref_content: Tensor | None = None,
    ) -> VQAOutput:  # fmt: skip
        """Single pass (no saliency loop): losses ``answer``, ``registration`` and ``alignment_similarity``."""
        main, ref = self.inputs(main, ref)
        aligned = self.align(main, ref, main_content, ref_content)
        features = self.encode(aligned.aligned, ref)
        text = self.decoder.text_batch(question_ids, question_mask, answer_ids, answer_mask)
        answer_loss, _ = self.decode_loss(features, text)
        losses = {
            "answer": answer_loss,
            "registration": aligned.reg_loss,
            "alignment_similarity": aligned.similarity_loss,
        }
        loss = answer_loss + aligned.reg_loss + self.config.model.align_similarity * aligned.similarity_loss
        return VQAOutput(
            loss=loss,
            losses=losses,
            theta=aligned.theta,
            aligned_main=aligned.aligned,
            features=features,
        )

    def generate_from_features(
        self,
        features: Tensor,
        question_ids: Tensor,
        question_mask: Tensor,
        use_cache: bool = True,
        keep_prompt: bool = False,
        keep_scores: bool = False,
    ) -> tuple[list[str], Generation]:
        """Greedy answers from feature maps (2B, C, h, w). ``keep_prompt`` keeps the prompt pass's graph from the
        feature maps on (pass them as a leaf that requires grad), so a Grad-CAM can re-use it."""
        with torch.set_grad_enabled(keep_prompt):
            prefix_main, prefix_ref = self.prefix(features)
        generation = self.decoder.generate(
            prefix_main,
            prefix_ref,
            question_ids,
            question_mask,
            max_new_tokens=self.config.data.max_answer_tokens + 1,
            use_cache=use_cache,
            keep_prompt=keep_prompt,
            keep_scores=keep_scores,
        )
        return [self.tokenizer.decode(row) for row in generation.ids.tolist()], generation
