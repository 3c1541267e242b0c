"""BatchNorm statistics across the two passes, on a trained run: the two-pass score with

1. the statistics as trained — one set per pass (pass 1 normalised with the unmasked-image set, pass 2 with the
   masked-image set, each a running average over training; ``diffvqa.model.encoder``);
2. the unmasked set for both passes — what a single set of statistics fitted to pass 1 gives pass 2;
3. per-pass statistics re-estimated on train pairs after training (cumulative averages of the final weights'
   batch statistics) — a check that the running averages of training are not stale.

    .venv/bin/python benchmarks/batchnorm_passes.py RUN CACHE [--samples 640]

Prints one JSON object: final/preliminary CIDEr, final BLEU-4 and pointing game of the test split's difference
questions for each setting.
"""

from __future__ import annotations

import argparse
import json

import torch
from torch import nn

from diffvqa.commands.evaluate import evenly_spaced, predict
from diffvqa.data.dataset import Collate, PairQADataset
from diffvqa.metrics import caption_scores
from diffvqa.model.checkpoint import find_checkpoint, load_checkpoint
from diffvqa.saliency.guided import two_pass_answer
from diffvqa.saliency.keywords import answer_keyword_fn
from diffvqa.saliency.mask import apply_mask

SETS = ("running_mean", "running_var")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run")
    parser.add_argument("cache")
    parser.add_argument("--samples", type=int, default=640, help="train-split pairs to re-estimate the statistics on")
    args = parser.parse_args()
    model = load_checkpoint(find_checkpoint(args.run)).eval()
    cfg = model.config
    norms = [m for m in model.encoder.modules() if isinstance(m, nn.BatchNorm2d)]

    def stats(prefix: str = "") -> list[tuple[torch.Tensor, ...]]:
        return [tuple(getattr(m, prefix + s).clone() for s in SETS) for m in norms]

    def put(pass1, pass2) -> None:
        for m, one, two in zip(norms, pass1, pass2, strict=True):
            for s, a, b in zip(SETS, one, two, strict=True):
                getattr(m, s).copy_(a)
                getattr(m, "masked_" + s).copy_(b)

    trained = stats(), stats("masked_")
    train = PairQADataset(args.cache, "train", ["difference"])
    subset = torch.utils.data.Subset(train, evenly_spaced(len(train), args.samples))
    collate = Collate(model.tokenizer, cfg.data.max_question_tokens, cfg.data.max_answer_tokens)
    keyword_fn = answer_keyword_fn(cfg.saliency, None)
    unmasked, masked = [], []
    with torch.no_grad():  # the images each pass sees, with the masks the trained model makes
        for batch in torch.utils.data.DataLoader(subset, batch_size=32, collate_fn=collate):
            r = two_pass_answer(
                model,
                batch["main"],
                batch["ref"],
                batch["question_ids"],
                batch["question_mask"],
                batch["question"],
                keyword_fn,
                main_box=batch["main_box"],
                ref_box=batch["ref_box"],
            )
            floor = cfg.saliency.mask_floor
            unmasked.append(torch.cat([r.aligned_main, batch["ref"]]))
            masked.append(
                torch.cat([apply_mask(r.aligned_main, r.mask, floor), apply_mask(batch["ref"], r.mask, floor)])
            )

    def estimate(inputs):  # cumulative averages (momentum None) over the inputs, in train mode, no gradients
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
        model.encoder.train()
        with torch.no_grad():
            for x in inputs:
                model.encoder.features(x)
        model.eval()
        for m in norms:
            m.momentum = 0.1
        return stats()

    re_estimated = estimate(unmasked), estimate(masked)
    test = PairQADataset(args.cache, "test", ["difference"])

    def score(pass1, pass2):
        put(pass1, pass2)
        predictions = predict(
            model, test, keyword_fn=keyword_fn, batch_size=32, progress=False, examples=0, keyword_conditioning=False
        )
        records, mechanisms = predictions.records, predictions.mechanisms
        final = caption_scores([r["final"] for r in records], [r["answer"] for r in records])
        preliminary = caption_scores([r["preliminary"] for r in records], [r["answer"] for r in records])
        return {
            "final_CIDEr": round(final["CIDEr"], 3),
            "preliminary_CIDEr": round(preliminary["CIDEr"], 3),
            "final_BLEU-4": round(final["BLEU-4"], 3),
            "pointing_game": mechanisms.get("pointing_game"),
        }

    print(
        json.dumps(
            {
                "trained, per pass": score(*trained),
                "unmasked set for both": score(trained[0], trained[0]),
                "per pass, re-estimated": score(*re_estimated),
            }
        )
    )


if __name__ == "__main__":
    main()
