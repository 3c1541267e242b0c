"""Visual prefix + GPT-2 decoder + generation.

The decoder's input sequence (``docs/design.md``, step 4), one row per sample, text right-padded:

    <main> main-tokens(h*w) <ref> ref-tokens(h*w) <question> question <answer> answer <eos> <pad>...
    |<------------------ prefix, L0 = 2*h*w + 2 ------------->|<------------- text, T ------------->|

Labels are -100 everywhere except the answer tokens and <eos>. Position ids are explicit (0, 1, 2, ... along
the row), so padding never shifts a real token's position; padded slots are masked out of attention.
The LM head is applied only where a token is scored (answer positions for the loss, keyword positions for
Grad-CAM, the last position when generating), which keeps a 50k-token vocabulary affordable.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import DynamicCache, GPT2Config, GPT2LMHeadModel

from diffvqa.config import ModelConfig
from diffvqa.data.text import Tokenizer
from diffvqa.errors import MissingInputError, UserError

IGNORE = -100
# GPT-2's "gelu_new" is GELU's tanh approximation written as seven elementwise ops (and as many saved tensors for
# the backward); "gelu_pytorch_tanh" is the same function as one fused kernel (outputs agree to ~1e-7). On CPU it
# takes ~10 % off a decoder forward and ~15 % off a Grad-CAM's forward + backward (benchmarks/saliency.py).
FUSED_ACTIVATIONS = {"gelu_new": "gelu_pytorch_tanh"}


class PrefixProjection(nn.Module):
    """Feature maps -> prefix tokens: optional average pooling, 1x1 projection C -> d, learned 2-D position and
    image-type embeddings. ``grid`` is the feature maps' (h, w); the tokens form a (h / pool, w / pool) grid."""

    def __init__(self, in_channels: int, width: int, grid: tuple[int, int], pool: int = 1):
        super().__init__()
        if pool < 1 or grid[0] % pool or grid[1] % pool:
            raise UserError(f"model.prefix_pool={pool} must be >= 1 and divide the {grid[0]}x{grid[1]} feature maps")
        self.grid = grid
        self.pool = pool
        grid = (grid[0] // pool, grid[1] // pool)
        self.project = nn.Conv2d(in_channels, width, kernel_size=1)
        self.row = nn.Parameter(torch.randn(grid[0], 1, width) * 0.02)  # (h, 1, d)
        self.col = nn.Parameter(torch.randn(1, grid[1], width) * 0.02)  # (1, w, d)
        self.image_type = nn.Parameter(torch.randn(2, width) * 0.02)  # 0 = main, 1 = reference

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """features (2B, C, h, w), main images first -> main and reference tokens, each (B, h*w, d)."""
        if tuple(features.shape[-2:]) != self.grid:
            raise ValueError(f"feature maps are {tuple(features.shape[-2:])}, the prefix expects {self.grid}")
        if self.pool > 1:
            features = F.avg_pool2d(features, self.pool)
        x = self.project(features).permute(0, 2, 3, 1)  # (2B, h, w, d)
        x = (x + self.row + self.col).flatten(1, 2)  # (2B, h*w, d)
        main, ref = x.chunk(2, dim=0)
        return main + self.image_type[0], ref + self.image_type[1]


@dataclass
class TextBatch:
    """The text part of the decoder input, right-padded."""

    ids: Tensor  # (B, T) long
    mask: Tensor  # (B, T) long, 1 on real tokens
    labels: Tensor  # (B, T) long: the token where it is scored (answer tokens and <eos>), else -100


@dataclass
class Prompt:
    """A generation's prompt pass, kept with its autograd graph so that a teacher-forced continuation (the
    inference Grad-CAM) need not recompute it. Rows are right-padded: row i's prompt ends at ``lengths[i]``."""

    keys_values: list[tuple[Tensor, Tensor]]  # per layer, keys and values (B, heads, L, d / heads)
    mask: Tensor  # (B, L) long attention mask
    lengths: Tensor  # (B,) real prompt lengths
    last_hidden: Tensor  # (B, d) hidden state at each row's last prompt token (<answer>)


@dataclass
class Generation:
    ids: Tensor  # (B, N) generated ids, <eos> included, <pad> after it
    scores: list[Tensor]  # with ``keep_scores``: N tensors (B, V), the logits each token was chosen from
    prompt: Prompt | None = None  # with ``keep_prompt=True``


def _gpt2_config(config: ModelConfig, tokenizer: Tokenizer) -> GPT2Config:
    return GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=config.decoder_positions,
        n_embd=config.decoder_width,
        n_layer=config.decoder_layers,
        n_head=config.decoder_heads,
        resid_pdrop=config.decoder_dropout,
        embd_pdrop=config.decoder_dropout,
        attn_pdrop=config.decoder_dropout,
        activation_function=FUSED_ACTIVATIONS["gelu_new"],
        bos_token_id=tokenizer.eos_id,
        eos_token_id=tokenizer.eos_id,
        pad_token_id=tokenizer.pad_id,
    )


class AnswerDecoder(nn.Module):
    """GPT-2 (``GPT2LMHeadModel``) fed ``inputs_embeds``: the visual prefix, then the question and answer."""

    def __init__(self, config: ModelConfig, tokenizer: Tokenizer, load_pretrained: bool = True):
        super().__init__()
        self.tokenizer = tokenizer
        wanted = _gpt2_config(config, tokenizer)
        if load_pretrained and config.decoder_pretrained:
            path = Path(config.decoder_pretrained)
            if not (path / "config.json").is_file():
                raise MissingInputError(
                    f"model.decoder_pretrained={str(path)!r}: not a Hugging Face model directory "
                    "(expected config.json and weights saved with GPT2LMHeadModel.save_pretrained)"
                )
            activation = GPT2Config.from_pretrained(path).activation_function
            self.gpt2 = GPT2LMHeadModel.from_pretrained(
                path, activation_function=FUSED_ACTIVATIONS.get(activation, activation)
            )
            for key in ("n_embd", "n_layer", "n_head", "n_positions"):
                if getattr(self.gpt2.config, key) != getattr(wanted, key):
                    raise UserError(
                        f"model.decoder_pretrained={str(path)!r} has {key}={getattr(self.gpt2.config, key)} but "
                        f"the config asks for {getattr(wanted, key)}; set the model.decoder_* keys to match"
                    )
            pretrained_vocab = self.gpt2.config.vocab_size
            if tokenizer.kind != "gpt2" or len(tokenizer) < pretrained_vocab:
                raise UserError(
                    f"model.decoder_pretrained={str(path)!r} has a {pretrained_vocab}-token vocabulary: it needs "
                    f"model.tokenizer=gpt2 with that model's BPE files (got a {tokenizer.kind} tokenizer of "
                    f"{len(tokenizer)} tokens)"
                )
            # Our special tokens follow the pretrained vocabulary; their new rows are freshly initialised.
            self.gpt2.resize_token_embeddings(len(tokenizer))
            self.gpt2.config.update({k: getattr(wanted, k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")})
        else:
            self.gpt2 = GPT2LMHeadModel(wanted)
        self.max_positions = wanted.n_positions

    def set_checkpointing(self, enabled: bool) -> None:
        """Activation checkpointing of every GPT-2 block while training with autograd on (``train.grad_checkpointing``;
        generation and evaluation run as before). Non-reentrant: the Grad-CAM's ``autograd.grad`` w.r.t. the feature
        maps works, and its retained graph can be walked again by the loss's backward."""
        if enabled:
            self.gpt2.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            self.gpt2.activation_checkpointing_disable()

    # -- sequence assembly ----------------------------------------------------------------------------------
    def text_batch(
        self,
        question_ids: Tensor,
        question_mask: Tensor,
        answer_ids: Tensor | None = None,
        answer_mask: Tensor | None = None,
    ) -> TextBatch:
        """``<question> q <answer> a <eos>`` per row (or the prompt ``<question> q <answer>`` without an answer).

        Args: question_ids/question_mask (B, Lq), answer_ids/answer_mask (B, La), right-padded.
        """
        tok = self.tokenizer
        device = question_ids.device
        q_open, a_open, eos = (torch.tensor([t], device=device) for t in (tok.question_id, tok.answer_id, tok.eos_id))
        rows, label_rows = [], []
        for i in range(question_ids.shape[0]):
            q = question_ids[i][question_mask[i].bool()]
            prompt = torch.cat([q_open, q, a_open])
            if answer_ids is None:
                rows.append(prompt)
                label_rows.append(torch.full_like(prompt, IGNORE))
            else:
                scored = torch.cat([answer_ids[i][answer_mask[i].bool()], eos])
                rows.append(torch.cat([prompt, scored]))
                label_rows.append(torch.cat([torch.full_like(prompt, IGNORE), scored]))
        ids = nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=tok.pad_id)
        labels = nn.utils.rnn.pad_sequence(label_rows, batch_first=True, padding_value=IGNORE)
        lengths = torch.tensor([len(r) for r in rows], device=device)
        mask = (torch.arange(ids.shape[1], device=device) < lengths[:, None]).long()
        return TextBatch(ids=ids, mask=mask, labels=labels)

    def embed(self, prefix_main: Tensor, prefix_ref: Tensor, text_ids: Tensor) -> Tensor:
        """-> (B, L0 + T, d) input embeddings."""
        wte = self.gpt2.transformer.wte
        b = prefix_main.shape[0]
        specials = wte(torch.tensor([self.tokenizer.main_id, self.tokenizer.ref_id], device=text_ids.device))
        main_open = specials[0].expand(b, 1, -1)
        ref_open = specials[1].expand(b, 1, -1)
        return torch.cat([main_open, prefix_main, ref_open, prefix_ref, wte(text_ids)], dim=1)

    def hidden_states(self, prefix_main: Tensor, prefix_ref: Tensor, text: TextBatch) -> Tensor:
        """Teacher-forced pass -> last hidden states (B, L0 + T, d)."""
        embeds = self.embed(prefix_main, prefix_ref, text.ids)
        b, length = embeds.shape[:2]
        if length > self.max_positions:
            raise ValueError(f"sequence of {length} positions exceeds model.decoder_positions={self.max_positions}")
        prefix_mask = text.mask.new_ones(b, length - text.ids.shape[1])
        attention_mask = torch.cat([prefix_mask, text.mask], dim=1)
        positions = torch.arange(length, device=embeds.device).expand(b, -1)
        # use_cache=False: nothing reads a cache of this pass (and checkpointed blocks would refuse it with a warning)
        out = self.gpt2.transformer(
            inputs_embeds=embeds, attention_mask=attention_mask, position_ids=positions, use_cache=False
        )
        return out.last_hidden_state

    def scored_logits(
        self, hidden: Tensor, text: TextBatch, select: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Logits at the positions that predict scored tokens, and those tokens.

        ``select`` (B, T) bool restricts scoring to a subset of the labelled tokens (the keyword's). Returns
        (logits (K, V), targets (K,), row index of each (K,)) flattened over the batch.
        """
        scored = text.labels != IGNORE
        if select is not None:
            scored = scored & select
        rows, cols = scored.nonzero(as_tuple=True)
        prefix_len = hidden.shape[1] - text.ids.shape[1]
        # The hidden state one position earlier predicts the token (causal LM shift).
        logits = self.gpt2.lm_head(hidden[rows, prefix_len + cols - 1])
        return logits, text.labels[rows, cols], rows

    def answer_loss(self, hidden: Tensor, text: TextBatch) -> Tensor:
        """Mean cross-entropy over the answer tokens and <eos> of the batch."""
        logits, targets, _ = self.scored_logits(hidden, text)
        return F.cross_entropy(logits.float(), targets)

    # -- generation -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        prefix_main: Tensor,
        prefix_ref: Tensor,
        question_ids: Tensor,
        question_mask: Tensor,
        max_new_tokens: int = 64,
        use_cache: bool = True,
        keep_prompt: bool = False,
        keep_scores: bool = False,
    ) -> Generation:
        """Greedy decoding, batched over right-padded questions, stopping at <eos> or ``max_new_tokens``.

        Every row's prompt ends at its own length, so each step feeds one new token per row at position
        (prompt length + step), attending to the real prompt tokens and the tokens generated so far; the padded
        slots between them stay masked. ``use_cache=False`` recomputes the whole sequence at every step
        (the reference the KV-cached path is tested against). ``keep_prompt=True`` runs the prompt pass with
        autograd on (a graph exists only if the prefix requires grad) and returns it as ``Generation.prompt``
        for :meth:`continuation_hidden`; the decoding steps run without graph either way. ``keep_scores`` keeps
        every step's (B, V) logits (off by default: with GPT-2's 50k vocabulary they outweigh everything else).
        """
        tok = self.tokenizer
        text = self.text_batch(question_ids, question_mask)
        with torch.set_grad_enabled(keep_prompt):
            embeds = self.embed(prefix_main, prefix_ref, text.ids)
        b, length = embeds.shape[:2]
        if length + max_new_tokens > self.max_positions:
            raise ValueError(
                f"prompt of {length} positions + {max_new_tokens} new tokens exceeds "
                f"model.decoder_positions={self.max_positions}"
            )
        mask = torch.cat([text.mask.new_ones(b, length - text.ids.shape[1]), text.mask], dim=1)
        prompt_lengths = mask.sum(dim=1)  # (B,)
        positions = torch.arange(length, device=embeds.device).expand(b, -1)
        transformer, lm_head = self.gpt2.transformer, self.gpt2.lm_head
        with torch.set_grad_enabled(keep_prompt):
            out = transformer(
                inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=use_cache or keep_prompt
            )
            last_hidden = out.last_hidden_state[torch.arange(b), prompt_lengths - 1]  # (B, d)
        prompt = None
        if keep_prompt:  # the cache grows by concatenation, so these prompt tensors stay as they are
            kept = [(layer.keys, layer.values) for layer in out.cache.layers]
            prompt = Prompt(keys_values=kept, mask=mask, lengths=prompt_lengths, last_hidden=last_hidden)
        embeds, last_hidden = embeds.detach(), last_hidden.detach()
        logits = lm_head(last_hidden)  # (B, V)
        cache = out.cache if use_cache else None

        generated, scores = [], []
        finished = torch.zeros(b, dtype=torch.bool, device=embeds.device)
        for step in range(max_new_tokens):
            if keep_scores:
                scores.append(logits)
            next_ids = logits.argmax(dim=-1).masked_fill(finished, tok.pad_id)
            generated.append(next_ids)
            finished |= next_ids == tok.eos_id
            if finished.all() or step == max_new_tokens - 1:
                break
            new_embeds = self.gpt2.transformer.wte(next_ids)[:, None]  # (B, 1, d)
            new_positions = (prompt_lengths + step)[:, None]
            mask = torch.cat([mask, mask.new_ones(b, 1)], dim=1)
            if use_cache:
                out = transformer(
                    inputs_embeds=new_embeds,
                    attention_mask=mask,
                    position_ids=new_positions,
                    cache=cache,
                    use_cache=True,
                )
                cache = out.cache
            else:
                embeds = torch.cat([embeds, new_embeds], dim=1)
                positions = torch.cat([positions, new_positions], dim=1)
                out = transformer(inputs_embeds=embeds, attention_mask=mask, position_ids=positions)
            logits = lm_head(out.last_hidden_state[:, -1])
        return Generation(ids=torch.stack(generated, dim=1), scores=scores, prompt=prompt)

    def continuation_hidden(self, prompt: Prompt, ids: Tensor, mask: Tensor) -> Tensor:
        """Teacher-forced pass of ``ids`` appended after each row's prompt, on the prompt's kept keys and values.

        Positions and masking are those of generation (token k of row i at position ``prompt.lengths[i] + k``), so
        the hidden states equal a full teacher-forced pass's. Autograd follows the prompt's graph.
        Args: ids, mask (B, T) right-padded. Returns (B, 1 + T, d): the prompt's last hidden state, then one per id.
        """
        if ids.shape[1] == 0:
            return prompt.last_hidden[:, None]
        if int(prompt.lengths.max()) + ids.shape[1] > self.max_positions:
            raise ValueError(f"continuation exceeds model.decoder_positions={self.max_positions}")
        transformer = self.gpt2.transformer
        cache = DynamicCache(prompt.keys_values, config=self.gpt2.config)
        positions = prompt.lengths[:, None] + torch.arange(ids.shape[1], device=ids.device)
        out = transformer(
            inputs_embeds=transformer.wte(ids),
            attention_mask=torch.cat([prompt.mask, mask], dim=1),
            position_ids=positions,
            cache=cache,
            use_cache=True,
        )
        return torch.cat([prompt.last_hidden[:, None], out.last_hidden_state], dim=1)
