"""Worker for test_guided's DDP test: run under torchrun with 2 processes (gloo, CPU)."""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from diffvqa.config import load_config
from diffvqa.data.text import build_word_tokenizer
from diffvqa.model.vqa import DiffVQA
from diffvqa.saliency.gradcam import keyword_token_mask
from diffvqa.saliency.guided import SaliencyGuidedVQA
from diffvqa.saliency.lexicon import lexicon_keyword

QUESTIONS = ["what has changed compared to the reference image?", "is there edema?"]
ANSWERS = ["the main image has an additional finding of edema than the reference image. ", "yes"]
STEPS = 3


def padded(tokenizer, texts, length):
    ids = torch.full((len(texts), length), tokenizer.pad_id)
    for i, text in enumerate(texts):
        encoded = tokenizer.encode(text)[:length]
        ids[i, : len(encoded)] = torch.tensor(encoded)
    return ids, (ids != tokenizer.pad_id).long()


def main(out_dir: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    config = load_config("tiny")
    tokenizer = build_word_tokenizer(QUESTIONS + ANSWERS)
    torch.manual_seed(0)  # same initial weights on every rank (DDP also broadcasts rank 0's)
    model = DiffVQA(config, tokenizer)
    ddp = torch.nn.parallel.DistributedDataParallel(SaliencyGuidedVQA(model))
    optimiser = torch.optim.AdamW(ddp.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(100 + rank)  # different data per rank
    q, qm = padded(tokenizer, QUESTIONS, 12)
    a, am = padded(tokenizer, ANSWERS, 24)
    keyword_mask = keyword_token_mask(
        tokenizer, ANSWERS, [lexicon_keyword(x, y) for x, y in zip(ANSWERS, QUESTIONS, strict=True)], a
    )
    for _ in range(STEPS):
        main_images, ref_images = torch.rand(2, 1, 64, 64, generator=g), torch.rand(2, 1, 64, 64, generator=g)
        optimiser.zero_grad()
        ddp(main_images, ref_images, q, qm, a, am, keyword_mask).loss.backward()
        optimiser.step()
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    gathered = [torch.zeros_like(flat) for _ in range(2)]
    dist.all_gather(gathered, flat)
    # Both sets of BatchNorm statistics travel apart: an eval-mode forward broadcasts rank 0's buffers (by
    # object) without updating them; then every rank holds rank 0's unmasked and masked sets, and they differ.
    model.eval()
    ddp(main_images, ref_images, q, qm, a, am, keyword_mask)
    norms = [m for m in model.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    plain = torch.cat([m.running_mean for m in norms] + [m.running_var for m in norms])
    masked = torch.cat([m.masked_running_mean for m in norms] + [m.masked_running_var for m in norms])
    buffers = torch.cat([plain, masked])
    gathered_buffers = [torch.zeros_like(buffers) for _ in range(2)]
    dist.all_gather(gathered_buffers, buffers)
    if rank == 0:
        diff = (gathered[0] - gathered[1]).abs().max().item()
        buffer_diff = (gathered_buffers[0] - gathered_buffers[1]).abs().max().item()
        sets_apart = (plain - masked).abs().max().item()
        Path(out_dir, "ddp_report.txt").write_text(
            f"{'identical' if diff == 0 else 'different'} {diff} {STEPS} {buffer_diff} {sets_apart}\n"
        )
    # Release DDP's reducer while the process group is alive: tearing it down after destroy_process_group
    # can leave a gloo rank hanging at interpreter exit.
    del ddp, optimiser
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
