"""BatchNorm statistics across the two passes: the two-pass score with the running statistics as trained (blended:
both passes run in train mode, so pass A (unmasked) and pass B (masked) both update them) vs per-pass statistics
re-estimated on the train split (pass 1 normalised with unmasked-image statistics, pass 2 with masked-image ones).

    .venv/bin/python benchmarks/batchnorm_passes.py RUN CACHE [--samples 640]

Prints one JSON object: final/preliminary CIDEr, final BLEU-4 and pointing game of the test split's difference
questions for (1) the trained statistics, (2) per-pass re-estimated, (3) unmasked statistics for both passes.
"""

from __future__ import annotations

import argparse
import json

import torch
from torch import nn

from diffvqa.data.dataset import Collate, PairQADataset
from diffvqa.evaluate import evenly_spaced, predict
from diffvqa.metrics import caption_scores
from diffvqa.model.checkpoint import find_checkpoint, load_checkpoint
from diffvqa.saliency.guided import two_pass_answer
from diffvqa.saliency.keywords import answer_keyword_fn
from diffvqa.saliency.mask import apply_mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run")
    parser.add_argument("cache")
    parser.add_argument("--samples", type=int, default=640, help="train-split pairs to re-estimate the statistics on")
    args = parser.parse_args()
    model = load_checkpoint(find_checkpoint(args.run)).eval()
    cfg = model.config
    norms = [m for m in model.encoder.modules() if isinstance(m, nn.BatchNorm2d)]

    def stats():
        return [(m.running_mean.clone(), m.running_var.clone()) for m in norms]

    def put(values):
        for m, (mean, var) in zip(norms, values, strict=True):
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)

    trained = stats()
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

    per_unmasked, per_masked = estimate(unmasked), estimate(masked)
    test = PairQADataset(args.cache, "test", ["difference"])

    def score(pass1, pass2):
        encode, calls = model.encode, {"n": 0}

        def switching(main, ref):  # two_pass_answer encodes pass 1, then pass 2
            put(pass1 if calls["n"] % 2 == 0 else pass2)
            calls["n"] += 1
            return encode(main, ref)

        model.encode = switching
        records, mechanisms, _ = predict(
            model, test, keyword_fn, 32, progress=False, examples=0, keyword_conditioning=False
        )
        model.encode = encode
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
                "trained (blended)": score(trained, trained),
                "per-pass re-estimated": score(per_unmasked, per_masked),
                "unmasked statistics for both": score(per_unmasked, per_unmasked),
            }
        )
    )


if __name__ == "__main__":
    main()
