"""A MIMIC-size dry run without MIMIC: the release reader, `prepare`'s bookkeeping, resume and the dataset's indexing
on a synthetic release of the real size.

    python benchmarks/scale.py [--root DIR] [--keep] [--size 32]

The synthetic release (written under ``--root``, a temporary directory by default, removed afterwards unless
``--keep``) has the real row counts and shapes:

* ``mimic_pair_questions.csv``: 700,703 rows, the real counts per question type (abnormality 145,421, presence
  155,726, view 56,265, location 84,193, level 67,296, type 27,478, difference 164,324), one difference row per
  pair and the other rows spread over the pairs, splits per pair in the difference questions' proportions
  (131,556 : 16,278 : 16,389), template questions and answers; v1.0.1's swap (10 % of the pairs: the difference
  row carries the ids the other way round from its pair's other questions); and about 2,000 rows of each skip
  kind (bad row, unknown study, subject mismatch, bad chronology) plus a few hundred images missing from disk;
* ``mimic_all.csv``: 227,827 studies of 65,379 subjects, all 21 columns, dates in shifted years;
* a MIMIC-CXR-JPG tree ``files/pXX/pSUBJECT/sSTUDY/DICOM.jpg`` for every study a pair needs: four small real
  JPEGs hard-linked (so the tree costs directories, not image bytes).

Each measurement runs in a fresh process (its peak RSS is its own): reading and validating the release (all types;
difference only, as the README's recipe prepares); ``prepare`` of all question types at S = ``--size`` with the image
decoder replaced by a stub that returns a constant image (so the time is prepare's own overhead: staging, the
decode loop's bookkeeping and checkpoints, finalising 700k questions), one process; resume of that cache with its
second half marked pending and no manifest, timed until the first chunk is decoded (``_chunk_done``); and
``PairQADataset`` indexing the training split, plus 2,000 random samples.

Goals (issue 12, this 2-core machine): reading <= 60 s and <= 4 GB RSS; prepare overhead <= 1 ms per image; resume
finds its place in <= 10 s. Prints a table and, as its last line, one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

TYPE_COUNTS = {
    "abnormality": 145_421,
    "presence": 155_726,
    "view": 56_265,
    "location": 84_193,
    "level": 67_296,
    "type": 27_478,
    "difference": 164_324,
}
SPLIT_SHARES = {"train": 131_556, "val": 16_278, "test": 16_389}  # difference questions per split
STUDIES, SUBJECTS = 227_827, 65_379
SWAPPED_SHARE = 0.10
SKIPS_PER_KIND = 2_000
MISSING_IMAGES = 300
CHEXPERT = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum", "Fracture",
            "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia",
            "Pneumothorax", "Support Devices"]  # fmt: skip
TEMPLATES = {
    "abnormality": [("what abnormalities are seen in this image?", "pleural effusion, atelectasis, lung opacity"),
                    ("is there evidence of any abnormalities in this image?", "yes"),
                    ("what abnormalities are seen in the soft tissues?", "atelectasis")],
    "presence": [("is there evidence of pneumothorax in this image?", "no"), ("is there edema?", "yes"),
                 ("is the pleural effusion bilateral?", "yes")],
    "view": [("which view is this image taken?", "PA view"), ("is this AP view?", "no")],
    "location": [("where in the image is the lung opacity located?", "left lung base"),
                 ("is the atelectasis located on the left side or right side?", "left side")],
    "level": [("what level is the pleural effusion?", "small"), ("what level is the edema?", "mild to moderate")],
    "type": [("what type is the opacity?", "patchy"), ("what type is the pleural effusion?", "layering")],
    "difference": [
        ("what has changed compared to the reference image?",
         "the main image has an additional finding of pneumothorax than the reference image. the main image is "
         "missing the findings of fracture, lung opacity, and pleural effusion than the reference image. "),
        ("what has changed compared to the reference image?", "nothing has changed."),
        ("what has changed in the left lung area?",
         "the level of pleural effusion has changed from small to moderate. "),
    ],
}  # fmt: skip
GOALS = {"read_seconds": 60.0, "read_peak_rss_gb": 4.0, "prepare_overhead_ms_per_image": 1.0, "resume_seconds": 10.0}


# ----------------------------------------------------------------------------------------------------------
# the synthetic release


def _dates(days: np.ndarray) -> np.ndarray:
    """Days since 2150-01-01 -> int YYYYMMDD (MIMIC's shifted years)."""
    stamps = pd.Timestamp("2150-01-01") + pd.to_timedelta(days, unit="D")
    return (stamps.year * 10_000 + stamps.month * 100 + stamps.day).to_numpy()


def synthesise(root: Path, scale: float = 1.0, seed: int = 0) -> dict:
    """Write the release CSVs and the hard-linked JPG tree under ``root``; returns what was planted. ``scale``
    shrinks every count (tests run the same code at a fraction of the size)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    type_counts = {t: max(1, round(n * scale)) for t, n in TYPE_COUNTS.items()}
    STUDIES, SUBJECTS = round(globals()["STUDIES"] * scale), round(globals()["SUBJECTS"] * scale)  # noqa: N806
    skips, missing_images = max(2, round(SKIPS_PER_KIND * scale)), max(1, round(MISSING_IMAGES * scale))
    # studies: every subject has one, the rest spread at random; dates strictly increase within a subject
    subject_of = np.sort(np.concatenate([np.arange(SUBJECTS), rng.integers(0, SUBJECTS, STUDIES - SUBJECTS)]))
    subject_ids = 10_000_000 + rng.choice(9_000_000, SUBJECTS, replace=False)
    study_ids = 50_000_000 + rng.choice(9_000_000, STUDIES, replace=False)
    order = np.arange(STUDIES) - np.searchsorted(subject_of, subject_of)  # rank within the subject
    days = rng.integers(0, 30, STUDIES) + 40 * order
    dicom = [f"{a:08x}-{b:08x}-{c:08x}-{d:08x}-{e:08x}" for a, b, c, d, e in rng.integers(0, 2**32, (STUDIES, 5))]
    dicom = np.array(dicom, dtype=object)
    studies = pd.DataFrame({"subject_id": subject_ids[subject_of], "study_id": study_ids})
    for name in CHEXPERT:
        studies[name] = rng.choice(np.array(["", "1.0", "0.0", "-1.0"], dtype=object), STUDIES, p=[0.7, 0.1, 0.1, 0.1])
    studies["dicom_id"] = dicom
    studies["view"] = rng.choice(
        np.array(["postero-anterior", "antero-posterior", "lateral", ""], dtype=object),
        STUDIES,
        p=[0.45, 0.4, 0.08, 0.07],
    )
    studies["split"] = rng.choice(np.array(["train", "validate", "test"], dtype=object), STUDIES, p=[0.98, 0.01, 0.01])
    studies["study_date"] = _dates(days)
    studies["study_order"] = (order + 1).astype(float)
    studies.to_csv(root / "mimic_all.csv", index=False)

    # pairs: each study with the one before it (same subject), topped up with skip-one pairs to the real count
    consecutive = np.flatnonzero(order >= 1)
    top_up = type_counts["difference"] - len(consecutive)
    skip_one = rng.choice(np.flatnonzero(order >= 2), max(0, top_up), replace=False)
    if top_up < 0:
        consecutive = np.sort(rng.choice(consecutive, type_counts["difference"], replace=False))
    main = np.concatenate([consecutive, skip_one])
    ref = np.concatenate([consecutive - 1, skip_one - 2])
    pairs = len(main)
    split_of_pair = rng.choice(
        np.array(list(SPLIT_SHARES), dtype=object),
        pairs,
        p=np.array(list(SPLIT_SHARES.values())) / sum(SPLIT_SHARES.values()),
    )
    # question rows: one difference row per pair, the other types spread over the pairs
    types = np.concatenate([np.full(n, t, dtype=object) for t, n in type_counts.items()])
    pair_of = np.concatenate([rng.integers(0, pairs, len(types) - pairs), np.arange(pairs)])
    row_order = np.lexsort((types, pair_of))
    types, pair_of = types[row_order], pair_of[row_order]
    question, answer = np.empty(len(types), dtype=object), np.empty(len(types), dtype=object)
    for name, options in TEMPLATES.items():
        rows = np.flatnonzero(types == name)
        pick = rng.integers(0, len(options), len(rows))
        question[rows] = np.array([q for q, _ in options], dtype=object)[pick]
        answer[rows] = np.array([a for _, a in options], dtype=object)[pick]
    study_col = study_ids[main[pair_of]].astype(object)
    ref_col = study_ids[ref[pair_of]].astype(object)
    subject_col = subject_ids[subject_of[main[pair_of]]].astype(object)
    split_col = split_of_pair[pair_of].copy()
    is_difference = types == "difference"
    # v1.0.1: the other questions of a swapped pair keep v1.0.0's order (main = the earlier study)
    swapped_pairs = rng.random(pairs) < SWAPPED_SHARE
    flip = swapped_pairs[pair_of] & ~is_difference
    study_col[flip], ref_col[flip] = ref_col[flip], study_col[flip].copy()

    # planted skips, each on its own rows (difference rows of unswapped pairs for the chronology ones)
    free = np.ones(len(types), bool)

    def take(candidates: np.ndarray, count: int) -> np.ndarray:
        chosen = rng.choice(np.flatnonzero(candidates & free), count, replace=False)
        free[chosen] = False
        return chosen

    anywhere = np.ones(len(types), bool)
    bad = take(anywhere, skips)
    split_col[bad[: skips // 2]] = "training"
    subject_col[bad[skips // 2 :]] = "n/a"
    unknown = take(anywhere, skips)
    study_col[unknown] = 49_000_000 + np.arange(skips)  # below every real study id
    mismatch = take(anywhere, skips)
    subject_col[mismatch] = subject_ids[(subject_of[main[pair_of[mismatch]]] + 1) % SUBJECTS]
    reversed_ = take(is_difference & ~swapped_pairs[pair_of], skips)
    study_col[reversed_], ref_col[reversed_] = ref_col[reversed_], study_col[reversed_].copy()
    columns = {
        "study_id": study_col,
        "subject_id": subject_col,
        "ref_id": ref_col,
        "question_type": types,
        "question": question,
        "answer": answer,
        "split": split_col,
    }
    questions = pd.DataFrame(columns)
    questions.to_csv(root / "mimic_pair_questions.csv", index=False)

    # the JPG tree: every study a pair uses, minus a few "missing" ones; four small real JPEGs hard-linked
    sources = []
    for k in range(4):
        path = root / f"source{k}.jpg"
        y, x = np.mgrid[0:80, 0:64]
        Image.fromarray(((x * 3 + y * 2 + 40 * k) % 256).astype(np.uint8), "L").save(path, quality=90)
        sources.append(path)
    needed = np.unique(np.concatenate([main, ref]))
    missing = rng.choice(needed, missing_images, replace=False)
    linked = np.setdiff1d(needed, missing)
    for i in linked.tolist():
        subject = str(subject_ids[subject_of[i]])
        directory = root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study_ids[i]}"
        directory.mkdir(parents=True, exist_ok=True)
        os.link(sources[i % len(sources)], directory / f"{dicom[i]}.jpg")
    return {
        "question_rows": len(types),
        "studies": STUDIES,
        "pairs": pairs,
        "jpgs": len(linked),
        "swapped_pairs": int(swapped_pairs.sum()),
        "missing_images": missing_images,
        "planted_skips_per_kind": skips,
    }


# ----------------------------------------------------------------------------------------------------------
# the measurements, one per process


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def _stub_decoder(size: int):
    """Stands in for decoding: a constant image and a plausible geometry, no file opened."""
    pixels = np.zeros((size, size), np.uint8)
    geometry = (80, 64, size, size * 64 // 80, 0, (size - size * 64 // 80) // 2)

    def decode(path: str, size_: int, draft: bool):
        return pixels, geometry

    return decode


def stage(name: str, root: Path, size: int) -> dict:
    from diffvqa.data import cache_writer as cache_module
    from diffvqa.data.dataset import PairQADataset
    from diffvqa.data.release import read_release

    release, out = root, root / "cache"
    tic = time.perf_counter()
    if name in ("read_all", "read_difference"):
        types = None if name == "read_all" else ["difference"]
        r = read_release(release, release, question_types=types)
        result = {
            "kept_questions": r.steps["kept_questions"],
            "unique_images": r.steps["unique_images"],
            "skipped": r.skipped,
            "swapped_difference_rows": r.notes["swapped_difference_rows"],
        }
    elif name == "prepare":
        cache_module._decode_one = _stub_decoder(size)
        reader_seconds = []
        real_reader = cache_module.read_release

        def timed_reader(*args, **kwargs):
            start = time.perf_counter()
            value = real_reader(*args, **kwargs)
            reader_seconds.append(time.perf_counter() - start)
            return value

        cache_module.read_release = timed_reader
        manifest = cache_module.prepare(release, release, out, size=size, workers=1, progress=False)
        images = manifest["num_images"] + manifest["num_unreadable_images"]
        total = time.perf_counter() - tic
        result = {
            "images": images,
            "questions": manifest["num_questions"],
            "reader_seconds": reader_seconds[0],
            "overhead_ms_per_image": 1000 * (total - reader_seconds[0]) / images,
        }
    elif name == "dataset":
        dataset = PairQADataset(out, "train")
        indexed = time.perf_counter() - tic
        picks = np.random.default_rng(0).integers(0, len(dataset), 2000)
        start = time.perf_counter()
        for i in picks.tolist():
            dataset[i]
        result = {
            "train_questions": len(dataset),
            "index_seconds": indexed,
            "samples_per_s": len(picks) / (time.perf_counter() - start),
        }
    elif name == "resume":
        # an interrupted run: the second half of the images pending, no manifest yet
        status = np.load(out / "status.npy", mmap_mode="r+")
        status[len(status) // 2 :] = 0
        status.flush()
        del status
        (out / "manifest.json").unlink(missing_ok=True)
        cache_module._decode_one = _stub_decoder(size)
        found = []

        def first_chunk(count: int) -> None:
            found.append(time.perf_counter() - tic)
            raise KeyboardInterrupt  # stop here: the place is found, the rest is decoding

        cache_module._chunk_done = first_chunk
        try:
            cache_module.prepare(release, release, out, size=size, workers=1, progress=False)
        except KeyboardInterrupt:
            pass
        result = {"seconds_to_first_chunk": found[0]}
    else:
        raise ValueError(f"unknown stage {name!r}")
    return {"stage": name, "seconds": time.perf_counter() - tic, "peak_rss_gb": _peak_rss_gb(), **result}


def run_stage(name: str, root: Path, size: int) -> dict:
    command = [sys.executable, __file__, "--stage", name, "--root", str(root), "--size", str(size)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"stage {name} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, help="where to write the synthetic release (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the synthetic release and cache")
    parser.add_argument("--size", type=int, default=32, help="S of the dry-run cache (pixels are a stub)")
    parser.add_argument("--scale", type=float, default=1.0, help="shrink every count (tests: 0.005)")
    parser.add_argument("--stage", help=argparse.SUPPRESS)  # internal: one measurement in this process
    args = parser.parse_args(argv)
    if args.stage:
        print(json.dumps(stage(args.stage, args.root, args.size)))
        return 0

    root = args.root or Path(tempfile.mkdtemp(prefix="diffvqa-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores; python {platform.python_version()}; "
        f"pandas {pd.__version__}; release under {root}"
    )
    try:
        tic = time.perf_counter()
        planted = synthesise(root, args.scale)
        synth_seconds = time.perf_counter() - tic
        print(f"synthesised in {synth_seconds:.0f} s: {json.dumps(planted)}", flush=True)
        results = {}
        for name in ("read_all", "read_difference", "prepare", "dataset", "resume"):
            results[name] = run_stage(name, root, args.size)
            print(f"  {name}: {json.dumps(results[name])}", flush=True)

        read, prep, data, resume = results["read_all"], results["prepare"], results["dataset"], results["resume"]
        summary = {
            "read_seconds": round(read["seconds"], 1),
            "read_peak_rss_gb": round(read["peak_rss_gb"], 2),
            "read_difference_seconds": round(results["read_difference"]["seconds"], 1),
            "read_difference_peak_rss_gb": round(results["read_difference"]["peak_rss_gb"], 2),
            "kept_questions": read["kept_questions"],
            "skipped": read["skipped"],
            "swapped_difference_rows": read["swapped_difference_rows"],
            "prepare_images": prep["images"],
            "prepare_seconds": round(prep["seconds"], 1),
            "prepare_peak_rss_gb": round(prep["peak_rss_gb"], 2),
            "prepare_overhead_ms_per_image": round(prep["overhead_ms_per_image"], 3),
            "resume_seconds": round(resume["seconds_to_first_chunk"], 1),
            "dataset_index_seconds": round(data["index_seconds"], 1),
            "dataset_peak_rss_gb": round(data["peak_rss_gb"], 2),
            "dataset_samples_per_s": round(data["samples_per_s"]),
            "synthesis_seconds": round(synth_seconds),
        }
        print(f"\n{'measure':<44}{'result':>12}{'goal':>10}")
        rows = [
            ("read + validate the release (all types), s", "read_seconds", "<= 60"),
            ("  its peak RSS, GB", "read_peak_rss_gb", "<= 4"),
            ("read + validate, difference only, s", "read_difference_seconds", ""),
            ("  its peak RSS, GB", "read_difference_peak_rss_gb", ""),
            (f"prepare {prep['images']:,} images (stub decoder), s", "prepare_seconds", ""),
            ("  overhead per image, ms (reader excluded)", "prepare_overhead_ms_per_image", "<= 1"),
            ("  peak RSS, GB", "prepare_peak_rss_gb", ""),
            ("resume: first chunk decoded after, s", "resume_seconds", "<= 10"),
            (f"dataset: index {data['train_questions']:,} train questions, s", "dataset_index_seconds", ""),
            ("  its peak RSS, GB", "dataset_peak_rss_gb", ""),
            ("  random samples per s (one process)", "dataset_samples_per_s", ""),
        ]
        for label, key, goal in rows:
            print(f"{label:<44}{summary[key]:>12}{goal:>10}")
        print(f"skipped rows by reason: {read['skipped']}")
        met = {k: summary[k] <= v for k, v in GOALS.items()}
        print(f"goals met: {met}")
        print(json.dumps(summary | {"goals_met": met}))
    finally:
        if not args.keep:
            print(f"removing {root} (hundreds of thousands of directories: can take minutes)", file=sys.stderr)
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
