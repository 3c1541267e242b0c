"""Benchmark the image pipeline on MIMIC-sized JPEGs: the prepared cache vs decoding JPEGs, draft vs full decoding.

    python benchmarks/data.py [--pairs 32] [--size 128] [--repeats 3]

Writes a release of ``--pairs`` pairs of full-size (3000 x 2500) JPEGs to a temporary directory: copies of the
JPEGs of a small phantom release (``diffvqa.data.phantom.simulate``; ``--synthetic``: of synthetic chest-like
images), one file per study. Then, side by side in one process, after a warm-up, median of ``--repeats``:

* batch loading: one batch of ``--pairs`` pairs (main + reference each) from JPEG files (decode + resize_pad,
  full decoding and draft decoding) vs from the prepared cache (``PairQADataset`` + ``Collate``);
* prepare throughput (images/s, one worker) with reduced-size (draft) JPEG decoding vs full decoding, and how
  much the two caches differ.

Prints a table, and as its last line one JSON object with ``cached_over_jpeg_speedup`` (target >= 20) and
``draft_decode_speedup`` (target >= 2).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from diffvqa.data.cache_writer import prepare
from diffvqa.data.dataset import Collate, PairQADataset
from diffvqa.data.images import load_image
from diffvqa.data.release import QUESTION_COLUMNS, image_relpath

SHAPE = (3000, 2500)  # (H, W), MIMIC-CXR-JPG's typical portrait frame
DIFF_Q = "what has changed compared to the reference image?"


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 + 0.5 * np.tanh(0.5 * z)


def _chest(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A chest-like gray image: body, two dark lungs, heart, ribs, mild noise (JPEG-compresses like an X-ray)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    X, Y = (x - w / 2) / w, (y - h / 2) / h
    body = _sigmoid((0.42 - np.abs(X)) * 60)
    image = 0.25 + 0.55 * body
    for side in (-1, 1):
        cx = side * (0.17 + rng.uniform(-0.02, 0.02))
        lung = ((X - cx) / 0.15) ** 2 + ((Y + 0.05) / 0.33) ** 2
        image -= 0.35 * _sigmoid((1 - lung) * 12)
    heart = ((X - 0.05) / 0.14) ** 2 + ((Y - 0.15) / 0.13) ** 2
    image += 0.25 * _sigmoid((1 - heart) * 10)
    image += 0.05 * body * (np.sin(Y * 70 + np.abs(X) * 18) > 0.6)  # ribs
    image += rng.normal(0, 0.012, (h, w)).astype(np.float32)
    return np.clip(image, 0, 1)


def _synthetic_sources(root: Path, count: int = 8) -> list[Path]:
    """``count`` distinct full-size synthetic chest JPEGs."""
    directory = root / "synthetic"
    directory.mkdir(parents=True)
    rng = np.random.default_rng(0)
    base = _chest(rng, *SHAPE)
    paths = []
    for k in range(count):
        # per-image variation without re-rendering: shift, exposure and fresh noise
        pixels = np.roll(base, (rng.integers(-40, 40), rng.integers(-40, 40)), (0, 1)) * rng.uniform(0.9, 1.1)
        pixels = pixels + rng.normal(0, 0.006, SHAPE).astype(np.float32)
        paths.append(directory / f"{k}.jpg")
        Image.fromarray((np.clip(pixels, 0, 1) * 255).astype(np.uint8)).save(paths[-1], quality=95)
    return paths


def _phantom_sources(root: Path) -> list[Path] | None:
    """The JPEGs of a small MIMIC-size phantom release (about 6 studies, ~30 s), or None without the phantom."""
    try:
        from diffvqa.data.phantom import simulate
    except ImportError:
        return None
    simulate(root / "phantom", pairs=4, seed=0, size=SHAPE, progress=False)
    return sorted((root / "phantom" / "files").rglob("*.jpg"))


def _write_release(root: Path, sources: list[Path], pairs: int) -> tuple[Path, Path]:
    """A release of ``pairs`` difference questions over 2 * ``pairs`` distinct image files (copies of
    ``sources``, cycled: every file is decoded on its own, so the timings are per-image timings)."""
    release, images = root / "release", root / "images"
    release.mkdir(parents=True)
    questions, studies = [], []
    for p in range(pairs):
        subject = 10000000 + p
        ids = (50000000 + 2 * p, 50000000 + 2 * p + 1)  # (ref, main)
        for order, study in enumerate(ids):
            dicom = hashlib.sha1(str(study).encode()).hexdigest()
            dicom = "-".join(dicom[i : i + 8] for i in range(0, 40, 8))
            path = images / image_relpath(subject, study, dicom)
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(sources[(2 * p + order) % len(sources)], path)
            studies.append(
                {
                    "subject_id": subject,
                    "study_id": study,
                    "dicom_id": dicom,
                    "view": "postero-anterior",
                    "study_date": 21800101 + 100 * order,
                    "study_order": float(order + 1),
                }
            )
        questions.append((ids[1], subject, ids[0], "difference", DIFF_Q, "nothing has changed.", "train"))
    pd.DataFrame(questions, columns=list(QUESTION_COLUMNS)).to_csv(release / "mimic_pair_questions.csv", index=False)
    pd.DataFrame(studies).to_csv(release / "mimic_all.csv", index=False)
    return release, images


def _median_time(function, repeats: int) -> float:
    function()  # warm-up (page cache, imports, first-touch of the memory map)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=32, help="pairs per batch (and in the release)")
    parser.add_argument("--size", type=int, default=128, help="S")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--synthetic", action="store_true", help="do not use the phantom")
    parser.add_argument("--keep", type=Path, help="write here and keep the files (default: a temporary dir)")
    args = parser.parse_args(argv)
    root = args.keep or Path(tempfile.mkdtemp(prefix="diffvqa-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        start = time.perf_counter()
        sources = None if args.synthetic else _phantom_sources(root)
        source = "phantom" if sources else "synthetic"
        release, images = _write_release(root, sources or _synthetic_sources(root), args.pairs)
        generate_s = time.perf_counter() - start
        file_mb = float(np.mean([p.stat().st_size for p in images.rglob("*.jpg")])) / 1e6

        # prepare throughput, draft vs full decoding (one worker: per-core throughput, no pool noise)
        def run_prepare(draft: bool) -> None:
            out = root / f"cache_{'draft' if draft else 'full'}"
            shutil.rmtree(out, ignore_errors=True)
            prepare(release, images, out, size=args.size, workers=1, progress=False, draft=draft)

        prepare_draft_s = _median_time(lambda: run_prepare(True), args.repeats)
        prepare_full_s = _median_time(lambda: run_prepare(False), args.repeats)
        cache_dir = root / "cache_draft"
        dataset = PairQADataset(cache_dir, split=None)
        num_images = len(dataset.cache)
        full_cache = np.load(root / "cache_full" / "images.u8.npy")
        draft_cache = np.load(cache_dir / "images.u8.npy")
        draft_diff = float(np.abs(full_cache.astype(np.int16) - draft_cache).mean())

        # one batch of pairs: JPEG decode + resize_pad vs the cache
        batch_size = min(args.pairs, len(dataset))
        paths = [(str(images / m), str(images / r)) for m, r in _pair_paths(dataset, batch_size)]

        def from_jpeg(draft: bool) -> None:
            main = [torch.from_numpy(load_image(m, args.size, draft=draft)[0]) for m, _ in paths]
            ref = [torch.from_numpy(load_image(r, args.size, draft=draft)[0]) for _, r in paths]
            torch.stack(main)[:, None], torch.stack(ref)[:, None]

        collate = Collate()

        def from_cache() -> None:
            collate([dataset[i] for i in range(batch_size)])

        jpeg_full_s = _median_time(lambda: from_jpeg(False), args.repeats)
        jpeg_draft_s = _median_time(lambda: from_jpeg(True), args.repeats)
        cache_s = _median_time(from_cache, max(args.repeats, 5))
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)

    rows = [
        ("images", f"{num_images} JPEGs of about {SHAPE[0]}x{SHAPE[1]} ({source}), S = {args.size}"),
        ("generate release", f"{generate_s:.1f} s; mean JPEG file {file_mb:.2f} MB"),
        ("prepare, draft decoding", f"{prepare_draft_s:.2f} s  ({num_images / prepare_draft_s:.1f} img/s, 1 worker)"),
        ("prepare, full decoding", f"{prepare_full_s:.2f} s  ({num_images / prepare_full_s:.1f} img/s, 1 worker)"),
        ("draft vs full cache", f"{draft_diff:.3f} gray levels mean |difference| (of 255)"),
        (f"batch of {batch_size} pairs, JPEG full", f"{jpeg_full_s * 1000:.1f} ms"),
        (f"batch of {batch_size} pairs, JPEG draft", f"{jpeg_draft_s * 1000:.1f} ms"),
        (f"batch of {batch_size} pairs, cache", f"{cache_s * 1000:.2f} ms"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    result = {
        "cached_over_jpeg_speedup": round(jpeg_full_s / cache_s, 1),
        "cached_over_draft_jpeg_speedup": round(jpeg_draft_s / cache_s, 1),
        "draft_decode_speedup": round(prepare_full_s / prepare_draft_s, 2),
        "draft_mean_abs_diff_gray_levels": round(draft_diff, 3),
        "images": num_images,
        "size": args.size,
        "source": source,
    }
    print(json.dumps(result))
    return 0


def _pair_paths(dataset: PairQADataset, count: int) -> list[tuple[str, str]]:
    """Relative image paths (main, ref) of the first ``count`` questions, from the cache's index."""
    index = pd.read_csv(dataset.cache.directory / "images.csv", dtype=str, keep_default_na=False)
    path_of = dict(zip(index.dicom_id, index.path, strict=True))
    q = dataset.questions
    return [(path_of[q.main_dicom_id[i]], path_of[q.ref_dicom_id[i]]) for i in range(count)]


if __name__ == "__main__":
    sys.exit(main())
