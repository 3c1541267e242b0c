"""The viewer's budget at the paper's image size: bytes and time per picture strip, projected to the real test split.

    python benchmarks/viewer.py [--pairs 40] [--size 224] [--questions 320]

Writes a phantom release of ``--pairs`` pairs to a temporary directory and prepares it at ``--size`` (the paper's
224), then renders the strips of ``--questions`` questions (the cached phantom images as main, reference and aligned
main; CAMs upsampled from a random 7 x 7 grid, as ResNet-50 gives at 224; a true-change box) through
:class:`diffvqa.viewer.strips.StripWriter`, as ``evaluate`` does. Prints the size of a strip (bytes and disk blocks),
the worker's time per strip, and their projection to the 16,389 difference questions of the real test split;
the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from diffvqa.data.cache_writer import prepare
from diffvqa.data.dataset import PairQADataset
from diffvqa.data.phantom import simulate
from diffvqa.viewer.strips import StripWriter

REAL_TEST_QUESTIONS = 16_389  # difference questions of Medical-Diff-VQA's test split
BUDGET_BYTES = 300e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=40)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--questions", type=int, default=320)
    parser.add_argument("--panel", type=int, default=96)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="diffvqa-viewer-bench-"))
    simulate(root / "release", pairs=args.pairs, seed=0, progress=False)
    prepare(root / "release", root / "release", root / "cache", size=args.size, workers=1, progress=False)
    dataset = PairQADataset(root / "cache", "train", None)
    n = min(len(dataset), args.questions)
    items = [dataset[i] for i in range(n)]
    s = args.size
    main_ = torch.stack([torch.as_tensor(it["main"]).reshape(1, s, s).float() for it in items])
    ref = torch.stack([torch.as_tensor(it["ref"]).reshape(1, s, s).float() for it in items])
    grid = torch.rand(n, 1, 7, 7, generator=torch.Generator().manual_seed(0))
    cam = torch.nn.functional.interpolate(grid, size=(s, s), mode="bilinear", align_corners=False)
    cam = cam / cam.amax(dim=(2, 3), keepdim=True)
    change = torch.zeros(n, 1, s, s)
    change[:, :, s // 2 : 3 * s // 4, s // 8 : 3 * s // 8] = 1

    writer = StripWriter(root / "viewer", panel=args.panel)
    tic = time.perf_counter()
    for start in range(0, n, 32):
        rows = slice(start, start + 32)
        result = SimpleNamespace(
            aligned_main=main_[rows],
            cam_main=cam[rows],
            cam_ref=cam[rows].flip(-1),
            mask=torch.maximum(cam[rows], cam[rows].flip(-1)),
        )
        writer(start, {"main": main_[rows], "ref": ref[rows], "truth": {"change_mask": change[rows]}}, result)
    writer.close()
    wall = time.perf_counter() - tic
    files = list((root / "viewer").rglob("*.jpg"))
    size = sum(p.stat().st_size for p in files) / n
    disk = sum(p.stat().st_blocks * 512 for p in files) / n
    worker = writer.worker_seconds / n
    result = {
        "questions": n,
        "size": s,
        "panel": args.panel,
        "bytes_per_strip": round(size),
        "disk_bytes_per_strip": round(disk),
        "worker_ms_per_strip": round(1e3 * worker, 2),
        "wall_ms_per_strip": round(1e3 * wall / n, 2),
        "projected_disk_mb_16389": round(REAL_TEST_QUESTIONS * disk / 1e6),
        "projected_worker_s_16389": round(REAL_TEST_QUESTIONS * worker),
        "within_300_mb": REAL_TEST_QUESTIONS * disk <= BUDGET_BYTES,
    }
    print(
        f"{n} strips at S={s}, {args.panel}-pixel panels: {size / 1e3:.1f} kB each ({disk / 1e3:.1f} kB on disk), "
        f"worker {1e3 * worker:.2f} ms each"
    )
    print(
        f"16,389 questions: {result['projected_disk_mb_16389']} MB on disk (budget 300 MB), "
        f"{result['projected_worker_s_16389']} s of worker time (overlapped with the model's answering)"
    )
    shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
