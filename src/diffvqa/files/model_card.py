"""The model card: a ``README.md`` in every checkpoint a training run writes.

A checkpoint travels without its run directory (copied to a cluster, attached to a paper), so it says itself what
it was trained on and how: the data (phantom or MIMIC-CXR, the cache's counts), the architecture and training
settings, the step, the validation score, what it is for and what it is not for. A checkpoint trained on
MIMIC-CXR carries the PhysioNet data-use warning: weights, predictions and pictures made from credentialed data
fall under its agreement.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from diffvqa.config import Config
from diffvqa.data.cache_reader import ImageCache
from diffvqa.data.data_use import DATA_USE_WARNING
from diffvqa.files.atomic import write_atomic

MODEL_CARD_FILE = "README.md"


def cache_summary(cache: ImageCache) -> dict[str, Any]:
    """What the card says about the training data: the prepared cache's manifest, and whether it is the phantom
    (only the phantom writes ground truth into its cache, as ``evaluate`` tells it)."""
    manifest = cache.manifest
    return {
        "cache": str(cache.directory),
        "phantom": cache.has_truth,
        "release": (manifest.get("source") or {}).get("release_dir"),
        "images": manifest.get("num_images"),
        "pairs": manifest.get("num_pairs"),
        "questions": manifest.get("num_questions"),
        "image_size": manifest.get("size"),
    }


def model_card(
    config: Config,
    *,
    step: int,
    data: Mapping[str, Any],
    validation: Mapping[str, Any] | None = None,
    best: Mapping[str, Any] | None = None,
) -> str:
    """The card's Markdown (see the module docstring). ``validation``: this step's validation scores, if any."""
    m, t, s = config.model, config.train, config.saliency
    phantom = data.get("phantom")
    source = (
        "the built-in longitudinal chest X-ray phantom (synthetic images; no patient data)"
        if phantom
        else "MIMIC-CXR-JPG images with Medical-Diff-VQA questions (credentialed PhysioNet data)"
    )
    pretrained = [f"`{p}`" for p in (m.encoder_pretrained, m.decoder_pretrained) if p]
    initialisation = "pretrained from " + ", ".join(pretrained) if pretrained else "random"
    counts = ", ".join(f"{data[k]:,} {k}" for k in ("images", "pairs", "questions") if isinstance(data.get(k), int))
    lines = [
        f"# diffvqa checkpoint — step {step:,} of {t.steps:,}",
        "",
        *([f"> **Data use.** {DATA_USE_WARNING}", ""] if not phantom else []),
        "Saliency-guided longitudinal difference VQA (arXiv 2509.25374): answers questions about a current (main) and "
        "a prior (reference) chest X-ray of one patient and shows where it looked.",
        "",
        "## Training data",
        "",
        f"- Source: {source}.",
        f"- Prepared cache: `{data.get('cache')}`" + (f" ({counts})" if counts else "") + ".",
        f"- Release: `{data.get('release')}`." if data.get("release") else "- Release: not recorded.",
        f"- Question types: {', '.join(config.data.question_types)}.",
        "",
        "## Model and training",
        "",
        f"- Image size {config.data.image_size}; ResNet encoder {list(m.encoder_hidden_sizes)} "
        f"({m.encoder_layer_type}); GPT-2 decoder {m.decoder_layers} layers × {m.decoder_width}; "
        f"tokenizer `{m.tokenizer}`; aligner {'on' if m.align else 'off'}.",
        f"- Initialisation: {initialisation}.",
        f"- Saliency loop: {'on' if s.enabled else 'off (single pass)'}"
        + (
            f", guided from step {s.start_step}, keywords from `{s.keyword_source}`, mask `{s.mask}`"
            if s.enabled
            else ""
        )
        + ".",
        f"- Steps {step:,} of {t.steps:,}; batch {t.batch_size} × grad_accum {t.grad_accum} per process; lr {t.lr:g}; "
        f"seed {t.seed}; autocast {t.autocast}.",
        "- Everything else: `config.json` beside this file (`diffvqa config` prints any preset the same way).",
        "",
        "## Scores",
        "",
    ]
    if validation:
        mode = "single pass" if validation.get("single_pass") else "two-pass"
        lines.append(
            f"- Validation at this step ({mode}, {validation.get('n', '?')} questions): CIDEr-D "
            f"{validation['CIDEr']:.3f}."
            if "CIDEr" in validation
            else "- Validation at this step: not scored."
        )
    else:
        lines.append("- Not validated at this step.")
    if best and "CIDEr" in best:
        lines.append(f"- Best validation CIDEr-D of the run so far: {best['CIDEr']:.3f} at step {best['step']:,}.")
    lines += [
        "- Test scores: run `diffvqa evaluate` (its `metrics.json` and `comparison.md`); validation numbers are "
        "not test numbers.",
        "",
        "## Intended use",
        "",
        "Research on longitudinal chest X-ray VQA and on saliency-guided answering: reproducing and ablating the "
        "method, inspecting where it looks. **Not for clinical use**: it has not been validated for diagnosis, "
        "its answers come from report-derived templates, and its saliency maps are not segmentations.",
        "",
        "## Limits",
        "",
        "- Trained on the phantom: its answers describe synthetic findings and say nothing about real radiographs."
        if phantom
        else "- Medical-Diff-VQA's answers are generated from reports by rules; they inherit the reports' and the "
        "rules' errors, and the test split shares hospitals and protocols with training.",
        "- On the phantom, the saliency-guided second pass has not been shown to improve the answers over the first "
        "pass (see the repository's docs/results.md).",
        "",
    ]
    return "\n".join(lines)


def write_model_card(directory: str | Path, config: Config, **details: Any) -> Path:
    """Write the model card (:data:`MODEL_CARD_FILE`) into ``directory`` (:func:`model_card` with ``details``)."""
    path = Path(directory) / MODEL_CARD_FILE
    write_atomic(path, model_card(config, **details))
    return path
