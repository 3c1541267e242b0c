"""Writing the prepared image cache (``diffvqa prepare``): every image a release needs, decoded once into one
memory-mapped uint8 array.

Decoding a 2500 x 3000 JPEG costs tens of milliseconds; training reads each image many times at S x S. So
``diffvqa prepare`` decodes every needed image once (reduced-size JPEG decoding + aspect-preserving resize + pad,
``diffvqa.data.images``) and training reads S x S bytes from a memory map.

The cache's layout and its reader, :class:`~diffvqa.data.cache_reader.ImageCache`: :mod:`diffvqa.data.cache_reader`.

Resuming: images are decoded in chunks; every ``CHECKPOINT_SECONDS`` (and when a run is interrupted) the finished
chunks' pixels and geometry are flushed to disk before their ``status`` entries are written and flushed, so
``status`` only ever marks rows whose data is on disk, and a rerun decodes only the rest.
Sharding: ``shard=(i, n)`` decodes rows ``i, i + n, i + 2n, ...`` into its own directory (compact arrays);
:func:`merge_shards` assembles them and finalises exactly as a single run does (byte-identical files).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import multiprocessing
import os
import shutil
import sys
import time
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

from diffvqa.config import QUESTION_TYPES
from diffvqa.data.cache_labels import report_lines as label_report_lines
from diffvqa.data.cache_labels import write_labels
from diffvqa.data.cache_reader import (
    CACHE_VERSION,
    DONE,
    GEOMETRY,
    IMAGES,
    INDEX,
    MANIFEST,
    PARAMS,
    PENDING,
    QUESTIONS,
    READER,
    READER_QUESTIONS,
    REPORT,
    STATUS,
    UNREADABLE,
    UNREADABLE_IMAGE,
    geometry_from_row,
    read_questions_csv,
)
from diffvqa.data.cache_truth import write_truth
from diffvqa.data.images import DRAFT_MARGIN, RESIZE_METHOD, ImageReadError, load_image, to_uint8
from diffvqa.data.labels import LABEL_SETS, find_label_files
from diffvqa.data.release import (
    COLUMNS,
    QUESTIONS_FILE,
    STUDIES_FILE,
    Release,
    read_ground_truth,
    read_release,
    validate_choices,
)
from diffvqa.errors import ArgumentParser, MissingInputError, UserError, check_output_dir, command
from diffvqa.files.atomic import write_atomic
from diffvqa.files.disk import check_free_space, full_disk_said, preallocate, remove
from diffvqa.files.lock import one_writer

CHECKPOINT_SECONDS = 2.0  # how often decoded rows are flushed and marked done
RESUME_ADVICE = "free space, then run the same command again: it resumes, keeping the images already decoded"
QUESTION_COLUMNS = [c for c in COLUMNS if c not in ("main_path", "ref_path")]


# ----------------------------------------------------------------------------------------------------------
# decoding (runs in worker processes: top-level functions, numpy in and out)


def _decode_one(path: str, size: int, draft: bool) -> tuple[np.ndarray, tuple[int, ...]]:
    image, geometry = load_image(path, size, draft=draft)
    g = geometry
    return to_uint8(image), (g.orig_h, g.orig_w, g.resized_h, g.resized_w, g.pad_top, g.pad_left)


def _decode_chunk(job: tuple[list[int], list[str], int, bool]) -> list[tuple]:
    """-> [(local row, (S, S) uint8 | None, geometry ints | None, error message)] for one chunk."""
    rows, paths, size, draft = job
    out = []
    for row, path in zip(rows, paths, strict=True):
        try:
            pixels, geometry = _decode_one(path, size, draft)
            out.append((row, pixels, geometry, ""))
        except ImageReadError as exc:
            out.append((row, None, None, str(exc)))
    return out


def _imap(function, jobs: list, workers: int, ordered: bool = False) -> Iterable:
    """map over jobs in this process (workers <= 1) or in a pool."""
    if workers <= 1 or len(jobs) <= 1:
        yield from map(function, jobs)
        return
    with multiprocessing.Pool(min(workers, len(jobs))) as pool:
        yield from (pool.imap if ordered else pool.imap_unordered)(function, jobs)


# ----------------------------------------------------------------------------------------------------------
# staging: the index, the arrays, the settings


def _versions() -> dict[str, str]:
    from diffvqa.version import __version__

    versions = {"diffvqa": __version__}
    for package in ("numpy", "pillow", "pydicom"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "unknown"
    return versions


def _write_json(path: Path, value: dict) -> None:
    """Atomic: a reader never sees half a file (the manifest's presence means 'complete')."""
    write_atomic(path, json.dumps(value, indent=2, sort_keys=False) + "\n")


def _index_table(release: Release) -> pd.DataFrame:
    images = release.images()
    prefix = os.path.join(release.images_dir, "")
    if images.path.str.startswith(prefix).all():  # as the reader builds them: one string slice for all
        relpath = images.path.str.slice(len(prefix))
    else:
        relpath = [os.path.relpath(p, release.images_dir) for p in images.path]
    return pd.DataFrame(
        {
            "dicom_id": images.dicom_id,
            "subject_id": images.subject_id,
            "study_id": images.study_id,
            "path": relpath,
        }
    )


def _open_array(path: Path, shape: tuple[int, ...], dtype, create: bool) -> np.memmap:
    if create or not path.exists():
        array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
        try:  # reserve the blocks: a full device is then ENOSPC here, not a SIGBUS in the middle of decoding
            preallocate(path)
        except OSError:
            del array
            remove(path)
            raise
        return array
    array = np.load(path, mmap_mode="r+")
    if array.shape != shape or array.dtype != dtype:
        raise UserError(f"{path}: expected {dtype} {shape}, found {array.dtype} {array.shape}; delete the directory")
    return array


def _shard_rows(num_images: int, shard: tuple[int, int] | None) -> np.ndarray:
    if shard is None:
        return np.arange(num_images)
    index, count = shard
    return np.arange(index, num_images, count)


def _release_files(release_dir: Path) -> dict[str, list[int]] | None:
    """Size and modification time (ns) of the release's two CSVs: with them unchanged (and the same settings), a
    resume takes the staged reader output instead of reading and validating 700k rows again."""
    paths = {name: Path(release_dir) / name for name in (QUESTIONS_FILE, STUDIES_FILE)}
    if not all(path.is_file() for path in paths.values()):
        return None  # the reader says what is missing
    return {name: [path.stat().st_size, path.stat().st_mtime_ns] for name, path in paths.items()}


def _staged_if_unchanged(out: Path, settings: dict) -> Release | None:
    """The staged reader output of an earlier run into ``out`` with these ``settings`` and the same release
    files, else None (then the release is read again)."""
    needed = (PARAMS, INDEX, READER, READER_QUESTIONS, STATUS)
    if not all((out / name).is_file() for name in needed):
        return None
    previous = _read_params(out)
    if any(previous.get(key) != value for key, value in settings.items()):
        return None
    return _load_staged_release(out)


def _read_params(out: Path) -> dict:
    """The settings an earlier run into ``out`` staged (``prepare.json``); unreadable is a UserError naming it."""
    try:
        previous = json.loads((out / PARAMS).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(
            f"{out / PARAMS}: cannot read the staged settings ({exc}); delete {out} and prepare again"
        ) from None
    if not isinstance(previous, dict):
        raise UserError(f"{out / PARAMS}: expected a JSON object of settings; delete {out} and prepare again")
    return previous


def _describe_change(key: str, previous: dict, value) -> str:
    """``"key: old -> new"`` when the staged setting differs from this run's, else ``""``. A setting an older
    diffvqa did not record says so instead of showing ``None``."""
    if key in previous and previous[key] == value:
        return ""
    if key not in previous:
        return f"{key}: not recorded (staged by an older diffvqa) -> {value!r}"
    if key == "cache_version":
        return f"cache_version: {previous[key]!r} (staged by another diffvqa version) -> {value!r}"
    return f"{key}: {previous[key]!r} -> {value!r}"


def _stage(
    out: Path, release: Release, size: int, draft: bool, shard: tuple[int, int] | None, labels_dir: str | None = None
) -> dict:
    """Write (or check, when resuming) the index, settings and reader output. -> the settings."""
    out.mkdir(parents=True, exist_ok=True)
    index = _index_table(release)
    index_bytes = index.to_csv(index=False, lineterminator="\n").encode()
    params = {
        "cache_version": CACHE_VERSION,
        "size": size,
        "draft_decoding": draft,
        "shard": list(shard) if shard else None,
        "num_images": len(index),
        "images_sha256": hashlib.sha256(index_bytes).hexdigest(),
        "release_dir": str(release.release_dir.resolve()),
        "images_dir": str(release.images_dir.resolve()),
        "question_types": release.question_types,
        "keep_bad_chronology": release.keep_bad_chronology,
        "keep_duplicates": release.keep_duplicates,
        "release_files": _release_files(release.release_dir),
    }
    if labels_dir is not None:  # recorded only when given: caches staged before --labels existed resume unchanged
        params["labels_dir"] = labels_dir
    if (out / PARAMS).exists():
        previous = _read_params(out)
        # a touched or rewritten CSV alone is no conflict: the image list's digest decides
        # labels do not change the images: a cache may gain or change its label directory on a rerun
        changed = [
            _describe_change(k, previous, v) for k, v in params.items() if k not in ("release_files", "labels_dir")
        ]
        if any(changed):
            raise UserError(
                f"{out}: holds a cache prepared with other settings or another image list "
                f"({'; '.join(filter(None, changed))}); use a new --out directory or delete this one"
            )
        if any(previous.get(k) != params.get(k) for k in ("release_files", "labels_dir")):  # same images: recorded
            _write_json(out / PARAMS, params)
    else:
        write_atomic(out / INDEX, index_bytes)
        _write_json(out / PARAMS, params)
    # The reader's output, so that finalising (here or after a merge) does not depend on re-reading. Atomic: a
    # resume trusts it whole (_staged_if_unchanged), so a full disk must not leave half of it.
    write_atomic(out / READER_QUESTIONS, release.questions.to_csv(index=False, lineterminator="\n"))
    reader = release.to_dict() | {"release_dir": params["release_dir"], "images_dir": params["images_dir"]}
    _write_json(out / READER, reader)
    return params


def _load_staged_release(directory: Path) -> Release:
    reader = json.loads((directory / READER).read_text())
    return Release(
        questions=read_questions_csv(directory / READER_QUESTIONS),
        steps=reader["steps"],
        skipped=reader["skipped"],
        notes=reader["notes"],
        release_dir=Path(reader["release_dir"]),
        images_dir=Path(reader["images_dir"]),
        splits=reader["splits"],
        question_types=reader["question_types"],
        keep_bad_chronology=reader["keep_bad_chronology"],
        truth=read_ground_truth(reader["release_dir"]),
        keep_duplicates=reader.get("keep_duplicates", False),
    )


# ----------------------------------------------------------------------------------------------------------
# decoding into the arrays, resumably


def _decode_into(
    out: Path,
    index: pd.DataFrame,
    images_dir: Path,
    rows: np.ndarray,
    size: int,
    draft: bool,
    workers: int,
    chunk_size: int,
    progress: bool,
) -> None:
    """Decode index rows ``rows`` into out's compact arrays (local row k = index row rows[k])."""
    from tqdm import tqdm

    create = not (out / STATUS).exists()
    count = len(rows)
    if create:
        needed = count * (size * size + 6 * 4 + 1)  # pixels, geometry (int32) and status of every image
        needed -= sum((out / name).stat().st_size for name in (IMAGES, GEOMETRY) if (out / name).is_file())  # replaced
        check_free_space(out, needed, f"the cache, {count:,} images x {size} x {size} bytes,", RESUME_ADVICE)
    # status first on creation: an array file without a status file is recreated, never trusted
    images = _open_array(out / IMAGES, (count, size, size), np.uint8, create)
    geometry = _open_array(out / GEOMETRY, (count, 6), np.int32, create)
    status = _open_array(out / STATUS, (count,), np.uint8, create)
    pending = np.flatnonzero(status == PENDING)
    paths = (os.path.join(images_dir, "") + index.path.iloc[rows]).tolist()  # vectorised: 10^5 rows on MIMIC
    jobs = [
        (chunk.tolist(), [paths[k] for k in chunk], size, draft)
        for chunk in np.array_split(pending, max(1, -(-len(pending) // chunk_size)))
        if len(chunk)
    ]
    bar = tqdm(total=count, initial=count - len(pending), unit="img", desc="prepare", disable=not progress)
    finished: list[tuple[int, int]] = []  # (local row, status) written to the arrays, not yet marked in status
    errors = (out / UNREADABLE).open("a")

    def checkpoint() -> None:
        # Data before status: a status entry only ever describes rows whose pixels are on disk. (Flushing is
        # an fsync, so it happens every CHECKPOINT_SECONDS rather than per chunk.)
        images.flush()
        geometry.flush()
        errors.flush()
        os.fsync(errors.fileno())
        for local, value in finished:
            status[local] = value
        status.flush()
        finished.clear()

    last = time.monotonic()
    try:
        for results in _imap(_decode_chunk, jobs, workers):
            for local, pixels, geo, message in results:
                if pixels is not None:
                    images[local] = pixels
                    geometry[local] = geo
                else:
                    dicom_id = index.dicom_id.iloc[rows[local]]
                    errors.write(f"{rows[local]}\t{dicom_id}\t{' '.join(message.split())}\n")
            # only whole chunks count as finished: an interruption mid-chunk redoes that chunk
            finished += [(local, DONE if pixels is not None else UNREADABLE_IMAGE) for local, pixels, _, _ in results]
            bar.update(len(results))
            if time.monotonic() - last >= CHECKPOINT_SECONDS:
                checkpoint()
                last = time.monotonic()
            _chunk_done(len(results))
    finally:
        # also on Ctrl-C or an error: keep every chunk that was completely written
        checkpoint()
        errors.close()
        bar.close()


def _chunk_done(count: int) -> None:
    """Called after each chunk is written to the arrays (a seam for tests that interrupt a run)."""


# ----------------------------------------------------------------------------------------------------------
# finalising: questions, truth, manifest


def _read_unreadable(directory: Path) -> dict[int, tuple[str, str]]:
    """unreadable.tsv -> {index row: (dicom_id, error)} (a row may repeat after a resume; the last wins)."""
    entries = {}
    path = directory / UNREADABLE
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                row, dicom_id, error = line.split("\t", 2)
                entries[int(row)] = (dicom_id, error)
    return entries


def _finalise(out: Path, release: Release, strict: bool, workers: int, progress: bool) -> dict:
    params = json.loads((out / PARAMS).read_text())
    size = params["size"]
    index = pd.read_csv(out / INDEX, dtype=str, keep_default_na=False)
    status = np.load(out / STATUS)
    geometry = np.load(out / GEOMETRY)
    if (status == PENDING).any():
        raise RuntimeError(f"{out}: {(status == PENDING).sum()} images not decoded yet")

    # Keep unreadable.tsv deterministic (sorted, one line per row) whatever the decode order was.
    errors = {row: entry for row, entry in _read_unreadable(out).items() if status[row] == UNREADABLE_IMAGE}
    with (out / UNREADABLE).open("w") as f:
        f.writelines(f"{row}\t{dicom_id}\t{error}\n" for row, (dicom_id, error) in sorted(errors.items()))
    unreadable_ids = index.dicom_id.to_numpy()[status == UNREADABLE_IMAGE]
    release = release.drop_images(unreadable_ids, reason="unreadable", strict=strict)

    questions = release.questions[QUESTION_COLUMNS].copy()
    truth_summary = None
    if release.truth is not None:
        questions["truth_keyword"] = [release.truth.keywords.get(int(i), "") for i in questions.question_index]
        decoded = {d: geometry_from_row(geometry[i], size) for i, d in enumerate(index.dicom_id) if status[i] == DONE}
        imap = functools.partial(_imap, workers=workers, ordered=True)
        truth_summary = write_truth(out, release, decoded, size, imap, progress)
    write_atomic(out / QUESTIONS, questions.to_csv(index=False, lineterminator="\n"))
    # finding labels (CheXpert / NegBio beside the images, all_diseases.json beside the questions, or --labels)
    label_files = find_label_files(params.get("labels_dir"), params["images_dir"], params["release_dir"])
    labels_summary = write_labels(out, index, label_files)

    manifest = {
        "cache_version": CACHE_VERSION,
        "versions": _versions(),
        "source": {"release_dir": params["release_dir"], "images_dir": params["images_dir"]},
        "size": size,
        "preprocessing": {
            "gray": "JPEG/PNG via Pillow (L); DICOM: modality LUT, VOI LUT/window, MONOCHROME1 inverted",
            "resize": RESIZE_METHOD,
            "aspect": "preserved: long side -> size, centred zero padding",
            "draft_decoding": params["draft_decoding"],
            "draft_margin": DRAFT_MARGIN if params["draft_decoding"] else None,
            "stored": "uint8 = round(255 * gray)",
        },
        "question_types": params["question_types"],
        "num_images": int((status == DONE).sum()),
        "num_unreadable_images": int((status == UNREADABLE_IMAGE).sum()),
        "num_questions": len(questions),
        "num_pairs": int(len(questions[["study_id", "ref_id"]].drop_duplicates())),
        "skipped": dict(release.skipped),
        "reader": release.to_dict(),
        "truth": truth_summary,
        "labels": labels_summary,
    }
    write_atomic(out / REPORT, _report(release, manifest) + "\n")
    _write_json(out / MANIFEST, manifest)
    return manifest


def _report(release: Release, manifest: dict) -> str:
    lines = [release.report(), f"cache (S = {manifest['size']}):"]
    lines.append(f"  images decoded {manifest['num_images']:,}, unreadable {manifest['num_unreadable_images']:,}")
    lines.append(f"  questions {manifest['num_questions']:,} in {manifest['num_pairs']:,} pairs")
    if manifest["truth"]:
        t = manifest["truth"]
        lines.append(
            f"  ground truth: {t['pairs_with_truth']:,}/{t['pairs']:,} pairs, {t['findings']:,} findings, "
            f"{t['questions_with_keyword']:,} question keywords"
        )
    lines.extend(label_report_lines(manifest.get("labels") or {}))
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# public API


@one_writer("out", "diffvqa prepare")
@full_disk_said("out", advice=RESUME_ADVICE)
def prepare(
    release: str | Path,
    images: str | Path,
    out: str | Path,
    size: int = 128,
    workers: int = 2,
    shard: tuple[int, int] | None = None,
    strict: bool = False,
    question_types: list[str] | None = None,
    progress: bool = True,
    draft: bool = True,
    chunk_size: int = 16,
    keep_bad_chronology: bool = False,
    keep_duplicates: bool = False,
    labels: str | Path | None = None,
    boxes: Sequence[str | Path] | None = None,
) -> dict:
    """Decode every image a release needs into a cache directory (layout in the module docstring).

    Resumable: rerunning with the same arguments after an interruption decodes only what is missing.

    Args:
        release: the directory with mimic_pair_questions.csv and mimic_all.csv (phantom: also ground_truth/).
        images: the MIMIC-CXR-JPG root (holds ``files/``).
        out: the cache directory (for a shard: that shard's directory).
        size: S.
        workers: decoding processes (<= 1: in this process).
        shard: ``(i, n)``: decode only rows i, i + n, ... of the sorted image list; finish with
            :func:`merge_shards`.
        strict: stop at the first skipped question (reader) or unreadable image instead of counting it.
        question_types: keep only these question types (None: all).
        progress: show a tqdm bar.
        draft: reduced-size JPEG decoding (off: full decoding; the result differs by ~0.2 gray levels).
        chunk_size: images per work item.
        keep_bad_chronology: keep difference questions whose reference is not earlier than the main (counted).
        keep_duplicates: keep exact repeats of an earlier question row (by default counted and dropped).
        labels: a directory holding finding-label files (:mod:`diffvqa.data.labels`), looked in before ``images``
            and ``release``.
        boxes: Chest ImaGenome and/or MS-CXR directories whose boxes are carried into ``out/boxes/``
            (:mod:`diffvqa.data.cache_boxes`) once the images are decoded. Not with ``shard``: give them to the
            :func:`merge_shards` that finishes the shards.

    Returns:
        The manifest (a shard returns its settings and counts instead; only a merge writes the manifest).
    """
    if size < 8:
        raise UserError(f"size {size}: expected at least 8 pixels")
    if shard is not None and not (shard[1] >= 1 and 0 <= shard[0] < shard[1]):
        raise UserError(f"shard {shard}: expected (i, n) with 0 <= i < n")
    if boxes and shard is not None:
        raise UserError("boxes: give them to merge_shards, which finishes the shards, not to one shard")
    _check_box_sources(boxes)
    out = Path(out)
    settings = {
        "cache_version": CACHE_VERSION,
        "size": size,
        "draft_decoding": draft,
        "shard": list(shard) if shard else None,
        "release_dir": str(Path(release).resolve()),
        "images_dir": str(Path(images).resolve()),
        "question_types": validate_choices(question_types, QUESTION_TYPES, "question type(s)"),
        "keep_bad_chronology": keep_bad_chronology,
        "keep_duplicates": keep_duplicates,
        "release_files": _release_files(Path(release)),
    }
    if labels is not None:
        found = find_label_files(labels)
        if not found:
            raise MissingInputError(
                f"--labels {labels}: "
                + ("not a directory" if not Path(labels).is_dir() else "holds none of the label files")
                + f"; expected {', '.join(file for file, _ in LABEL_SETS.values())} there"
            )
        settings["labels_dir"] = str(Path(labels).resolve())
    # Resuming with nothing changed: the staged reader output stands (reading MIMIC's CSVs again takes longer
    # than the rest of finding the place). Strict runs always re-read, to stop at the first bad row.
    if strict or _staged_if_unchanged(out, settings) is None:
        reader = read_release(
            release,
            images,
            question_types=question_types,
            strict=strict,
            keep_bad_chronology=keep_bad_chronology,
            keep_duplicates=keep_duplicates,
        )
        if reader.steps["kept_questions"] == 0:  # a cache without questions would only fail later, in train
            counts = ", ".join(f"{k} {v}" for k, v in reader.counts.items())
            where = Path(release) / QUESTIONS_FILE
            raise UserError(f"{where}: no question survived reading ({counts}); nothing to prepare")
        params = _stage(out, reader, size, draft, shard, settings.get("labels_dir"))
    else:
        params = json.loads((out / PARAMS).read_text())
    index = pd.read_csv(out / INDEX, dtype=str, keep_default_na=False)
    rows = _shard_rows(len(index), shard)
    _decode_into(out, index, Path(images), rows, size, draft, workers, chunk_size, progress)
    if shard is not None:
        status = np.load(out / STATUS)
        return params | {"decoded": int((status == DONE).sum()), "unreadable": int((status == UNREADABLE_IMAGE).sum())}
    if strict:
        _raise_on_unreadable(out)
    # Finalise from the staged reader output, as merge_shards does: one code path, identical files.
    manifest = _finalise(out, _load_staged_release(out), strict, workers, progress)
    _carry_boxes(out, boxes, progress)
    return manifest


def _check_box_sources(boxes: Sequence[str | Path] | None) -> None:
    """A box directory that is not there, or holds neither dataset, is said before any decoding."""
    if boxes:
        from diffvqa.data.cache_boxes import box_sources

        box_sources(boxes)


def _raise_on_unreadable(directory: Path) -> None:
    errors = _read_unreadable(directory)
    status = np.load(directory / STATUS)
    bad = [row for row in errors if status[row] == UNREADABLE_IMAGE]
    if bad:
        raise UserError(f"unreadable image (strict): {errors[min(bad)][1]}")


@one_writer("out", "diffvqa prepare --merge")
@full_disk_said("out", advice="free space, then run the same command again")
def merge_shards(
    shard_dirs: Sequence[str | Path],
    out: str | Path,
    workers: int = 2,
    strict: bool = False,
    progress: bool = True,
    boxes: Sequence[str | Path] | None = None,
) -> dict:
    """Merge the directories of ``prepare(..., shard=(i, n))`` for i = 0..n-1 into one cache.

    The result is byte-identical to what a single ``prepare`` run writes; ``boxes`` as in :func:`prepare`.
    Returns the manifest.
    """
    _check_box_sources(boxes)
    shard_dirs = [Path(d) for d in shard_dirs]
    settings = [json.loads((d / PARAMS).read_text()) if (d / PARAMS).exists() else None for d in shard_dirs]
    for d, s in zip(shard_dirs, settings, strict=True):
        if s is None or s.get("shard") is None:
            raise UserError(f"{d}: not a shard directory of diffvqa prepare (no {PARAMS} with a shard)")
    count = settings[0]["shard"][1]
    found = sorted(s["shard"][0] for s in settings)
    if found != list(range(count)) or any(s["shard"][1] != count for s in settings):
        raise UserError(f"expected shards 0..{count - 1} of {count}, got {[s['shard'] for s in settings]}")
    common = {k: v for k, v in settings[0].items() if k != "shard"}
    for d, s in zip(shard_dirs, settings, strict=True):
        other = {k: v for k, v in s.items() if k != "shard"}
        if other != common:
            raise UserError(f"{d}: prepared with other settings than {shard_dirs[0]}: {other} vs {common}")
    for d in shard_dirs:
        pending = int((np.load(d / STATUS) == PENDING).sum())
        if pending:
            raise UserError(f"{d}: {pending} images not decoded yet; rerun its prepare to finish it")

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    size, num = common["size"], common["num_images"]
    needed = num * size * size - ((out / IMAGES).stat().st_size if (out / IMAGES).is_file() else 0)  # replaced
    check_free_space(out, needed, f"the merged cache, {num:,} images x {size} x {size} bytes,")
    images = _open_array(out / IMAGES, (num, size, size), np.uint8, create=True)
    geometry = np.zeros((num, 6), np.int32)
    status = np.zeros(num, np.uint8)
    errors = []
    for d, s in sorted(zip(shard_dirs, settings, strict=True), key=lambda x: x[1]["shard"][0]):
        rows = _shard_rows(num, tuple(s["shard"]))
        part = np.load(d / IMAGES, mmap_mode="r")
        for start in range(0, len(rows), 1024):  # bounded memory
            images[rows[start : start + 1024]] = part[start : start + 1024]
        geometry[rows] = np.load(d / GEOMETRY)
        status[rows] = np.load(d / STATUS)
        errors += list(_read_unreadable(d).items())  # rows there are already global index rows
    images.flush()
    del images
    np.save(out / GEOMETRY, geometry)
    np.save(out / STATUS, status)
    with (out / UNREADABLE).open("w") as f:
        f.writelines(f"{row}\t{dicom_id}\t{error}\n" for row, (dicom_id, error) in sorted(errors))
    shutil.copyfile(shard_dirs[0] / INDEX, out / INDEX)
    shutil.copyfile(shard_dirs[0] / READER_QUESTIONS, out / READER_QUESTIONS)
    shutil.copyfile(shard_dirs[0] / READER, out / READER)
    # The single run's settings, key order included (byte-identical prepare.json).
    _write_json(out / PARAMS, {k: (None if k == "shard" else v) for k, v in settings[0].items()})
    if strict:
        _raise_on_unreadable(out)
    manifest = _finalise(out, _load_staged_release(out), strict, workers, progress)
    _carry_boxes(out, boxes, progress)
    return manifest


@one_writer("out", "diffvqa prepare --boxes")
@full_disk_said("out", partial="boxes.partial")  # the images stay; the same command carries the boxes again
def _carry_boxes(out: Path, dirs: Sequence[str | Path] | None, progress: bool) -> None:
    """Write ``out/boxes/`` from the box datasets and add what was carried and skipped to ``out/report.txt``."""
    if not dirs:
        return
    from diffvqa.data.cache_boxes import report_lines, write_boxes

    summary = write_boxes(out, dirs, progress)
    write_atomic(out / REPORT, (out / REPORT).read_text() + "\n".join(report_lines(summary)) + "\n")


# ----------------------------------------------------------------------------------------------------------
# command line


def _parse_shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard {text!r}: expected i/n, e.g. 0/4") from None
    if not (count >= 1 and 0 <= index < count):
        raise argparse.ArgumentTypeError(f"--shard {text!r}: expected 0 <= i < n")
    return index, count


@command("diffvqa prepare")
def prepare_main(argv: Sequence[str] | None = None) -> int:
    """``diffvqa prepare``: decode a release's images into a cache directory and print the report."""
    parser = ArgumentParser(
        prog="diffvqa prepare",
        description="Decode every image a Medical-Diff-VQA release needs, once, into a memory-mapped cache. "
        "Rerun the same command to resume an interrupted run.",
    )
    parser.add_argument("--release", type=Path, help="directory with mimic_pair_questions.csv and mimic_all.csv")
    parser.add_argument("--images", type=Path, help="MIMIC-CXR-JPG root holding files/ (default: --release)")
    parser.add_argument("--out", type=Path, help="the cache directory to write")
    parser.add_argument(
        "--list-images",
        metavar="FILE",
        help="only write the relative paths of the images the selected questions need, one a line (- for stdout), "
        "for wget -i / rsync --files-from, with their count and download size; reads the CSVs, needs no image",
    )
    parser.add_argument("--size", type=int, default=128, help="S: images are resized and padded to S x S")
    parser.add_argument("--workers", type=int, default=2, help="decoding processes")
    parser.add_argument("--shard", type=_parse_shard, help="i/n: decode the i-th of n shards into --out")
    parser.add_argument("--merge", type=Path, nargs="+", metavar="SHARD_DIR", help="merge finished shards into --out")
    parser.add_argument("--strict", action="store_true", help="stop at the first skipped row or unreadable image")
    parser.add_argument("--question-types", help="comma-separated, e.g. difference (default: all seven)")
    parser.add_argument(
        "--keep-bad-chronology", action="store_true", help="keep difference rows whose reference is not earlier"
    )
    parser.add_argument("--keep-duplicates", action="store_true", help="keep exact repeats of a question row")
    parser.add_argument(
        "--labels",
        type=Path,
        help="directory with finding-label files (mimic-cxr-2.0.0-chexpert.csv.gz, mimic-cxr-2.0.0-negbio.csv.gz, "
        "all_diseases.json) when they are neither beside the images nor beside the release",
    )
    parser.add_argument(
        "--boxes",
        type=Path,
        nargs="+",
        metavar="DIR",
        help="Chest ImaGenome 1.0.0 and/or MS-CXR 1.1.0 directories: carry their boxes into the cache, and evaluate "
        "scores the saliency against them (diffvqa.data.cache_boxes)",
    )
    parser.add_argument(
        "--no-draft", action="store_true", help="decode JPEGs at full size (slower; ~0.1 gray level apart)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    if args.release is None and not args.merge:
        parser.error("--release is required (or --merge SHARD_DIR ...)")
    if args.list_images is not None:
        return _list_images(args, parser)
    if args.out is None:
        parser.error("--out is required (the cache directory to write)")
    check_output_dir(args.out)
    if args.workers < 0:
        parser.error(f"--workers {args.workers}: expected 0 or more decoding processes")
    if args.boxes and args.shard is not None and not args.merge:
        parser.error("--boxes: give it to the --merge that finishes the shards")
    manifest_or_shard = _run(args)
    if args.shard is not None and not args.merge:
        s = manifest_or_shard
        print(
            f"shard {args.shard[0]}/{args.shard[1]}: {s['decoded']:,} images decoded, {s['unreadable']:,} "
            f"unreadable, in {args.out}; merge all shards with: diffvqa prepare --merge DIR ... --out DIR"
        )
    else:
        print((args.out / REPORT).read_text(), end="")
        print(f"cache written to {args.out}")
    return 0


def _list_images(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from diffvqa.data.download_list import needed_images, write_image_list

    if args.merge or args.shard:
        parser.error("--list-images lists what a release needs; it does not combine with --merge or --shard")
    types = [t.strip() for t in args.question_types.split(",") if t.strip()] if args.question_types else None
    image_list = needed_images(args.release, args.images, types)
    write_image_list(image_list, args.list_images)
    destination = "stdout" if args.list_images == "-" else args.list_images
    print(image_list.summary(destination), file=sys.stderr)  # stderr: stdout may be the list itself
    return 0


def _run(args: argparse.Namespace) -> dict:
    if args.merge:
        return merge_shards(args.merge, args.out, args.workers, args.strict, not args.quiet, boxes=args.boxes)
    types = [t.strip() for t in args.question_types.split(",") if t.strip()] if args.question_types else None
    return prepare(
        args.release,
        args.images or args.release,
        args.out,
        size=args.size,
        workers=args.workers,
        shard=args.shard,
        strict=args.strict,
        question_types=types,
        progress=not args.quiet,
        draft=not args.no_draft,
        keep_bad_chronology=args.keep_bad_chronology,
        keep_duplicates=args.keep_duplicates,
        labels=args.labels,
        boxes=args.boxes,
    )
