"""Reading a prepared image cache: its layout on disk and :class:`ImageCache` (``diffvqa prepare`` writes it:
:mod:`diffvqa.data.cache_writer`).

Cache directory layout (``S`` = size, ``N`` = images)::

    manifest.json           written last: sources, size, preprocessing, versions, counts, skips by reason
    report.txt              the reader's report plus the cache's counts (what ``diffvqa prepare`` prints)
    questions.csv           one row per question: question_index, subject_id, study_id, ref_id, main_dicom_id,
                            ref_dicom_id, question_type, question, answer (verbatim), split[, truth_keyword]
    images.csv              the index, row i = array row i: dicom_id, subject_id, study_id, path (relative to
                            the images directory); sorted by dicom_id
    images.u8.npy           (N, S, S) uint8 = round(255 * gray); zeros for unreadable images
    geometry.npy            (N, 6) int32: orig_h, orig_w, resized_h, resized_w, pad_top, pad_left
    status.npy              (N,) uint8: 0 pending, 1 decoded, 2 unreadable
    unreadable.tsv          row, dicom_id, error for each unreadable image
    prepare.json            the settings and the image list's digest, written first (resume/merge checks)
    reader.json, reader_questions.csv   the reader's counts and table, staged for finalising (and merging)
    labels/                 finding labels per image, when prepare found label files
                            (layout: :mod:`diffvqa.data.cache_labels`)
    truth/                  phantom releases only: theta_true, change masks (per pair, and per changed finding
                            and side) and finding masks in the cache frames
                            (layout and conventions: :mod:`diffvqa.data.cache_truth`)
    boxes/                  caches prepared with --boxes: Chest ImaGenome's regions and comparisons, MS-CXR's
                            phrases, in the cache frames (layout: :mod:`diffvqa.data.cache_boxes`)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from diffvqa.data.cache_labels import CacheLabels
from diffvqa.data.cache_truth import CacheTruth
from diffvqa.data.images import Geometry
from diffvqa.errors import UserError

CACHE_VERSION = 1
MANIFEST = "manifest.json"
REPORT = "report.txt"
QUESTIONS = "questions.csv"
INDEX = "images.csv"
IMAGES = "images.u8.npy"
GEOMETRY = "geometry.npy"
STATUS = "status.npy"
UNREADABLE = "unreadable.tsv"
PARAMS = "prepare.json"
READER = "reader.json"
READER_QUESTIONS = "reader_questions.csv"

PENDING, DONE, UNREADABLE_IMAGE = 0, 1, 2


def read_questions_csv(path: Path) -> pd.DataFrame:
    """A question table written by prepare (questions.csv, reader_questions.csv): ids as int64, the rest
    verbatim strings (an answer "none" or "NA" stays a string)."""
    ints = {c: np.int64 for c in ("question_index", "subject_id", "study_id", "ref_id")}
    header = pd.read_csv(path, nrows=0).columns
    return pd.read_csv(path, dtype={c: ints.get(c, str) for c in header}, keep_default_na=False)


def geometry_from_row(ints: Sequence[int], size: int) -> Geometry:
    """An images.csv/geometry.npy row (orig_h, orig_w, resized_h, resized_w, pad_top, pad_left) -> Geometry."""
    orig_h, orig_w, resized_h, resized_w, pad_top, pad_left = (int(v) for v in ints)
    return Geometry(orig_h, orig_w, size / max(orig_h, orig_w), pad_top, pad_left, size, resized_h, resized_w)


# ----------------------------------------------------------------------------------------------------------
# reading a cache


def _damaged(directory: Path, problem: object) -> UserError:
    return UserError(
        f"{directory}: a damaged prepared cache ({problem}); run `diffvqa prepare` again into a new --out directory"
    )


class ImageCache:
    """Read access to a prepared cache directory.

    The (N, S, S) array is memory-mapped on first access, not in ``__init__``, and dropped when pickled: each
    DataLoader worker opens its own map after fork/spawn.
    """

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        manifest_path = self.directory / MANIFEST
        if not manifest_path.is_file():
            raise UserError(
                f"{self.directory}: not a prepared cache (no {MANIFEST}); run `diffvqa prepare` "
                "(an interrupted prepare resumes when rerun)"
            )
        try:
            self.manifest = json.loads(manifest_path.read_text())
            self.size: int = int(self.manifest["size"])
            index = pd.read_csv(self.directory / INDEX, dtype=str, keep_default_na=False)
            self.dicom_ids: list[str] = index.dicom_id.tolist()
            self._geometry = np.load(self.directory / GEOMETRY)  # (N, 6) int32, small
            self._status = np.load(self.directory / STATUS)
        # a deleted, truncated or overwritten file of the cache: the user's data, not a bug here
        except (OSError, ValueError, KeyError, TypeError, AttributeError, pd.errors.ParserError) as exc:
            raise _damaged(self.directory, exc) from exc
        if self._geometry.shape != (len(self.dicom_ids), 6) or self._status.shape != (len(self.dicom_ids),):
            raise _damaged(
                self.directory,
                f"{GEOMETRY} {self._geometry.shape} or {STATUS} {self._status.shape} "
                f"do not match the {len(self.dicom_ids)} images of {INDEX}",
            )
        self.row: dict[str, int] = {d: i for i, d in enumerate(self.dicom_ids)}
        self._images: np.ndarray | None = None
        self._truth: CacheTruth | None = None  # the ground-truth tables and memory maps, loaded on first use
        self.has_truth = CacheTruth.exists(self.directory)  # asked per sample: look once
        self.has_labels = CacheLabels.exists(self.directory)

    def __len__(self) -> int:
        return len(self.dicom_ids)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_images"] = state["_truth"] = None  # never ship a memory map to another process
        return state

    @property
    def images(self) -> np.ndarray:
        """(N, S, S) uint8, memory-mapped read-only."""
        if self._images is None:
            try:
                images = np.load(self.directory / IMAGES, mmap_mode="r")
            except (OSError, ValueError) as exc:
                raise _damaged(self.directory, exc) from exc
            if images.shape != (len(self), self.size, self.size):
                raise _damaged(
                    self.directory, f"{IMAGES} is {images.shape}, expected {(len(self), self.size, self.size)}"
                )
            self._images = images
        return self._images

    def check_size(self, image_size: int) -> None:
        """A model reads the cache's S x S images as they are: its ``data.image_size`` must be S."""
        if image_size != self.size:
            raise UserError(
                f"{self.directory}: images prepared at S = {self.size}, but data.image_size is {image_size}; "
                f"prepare a cache with --size {image_size} (or train with data.image_size={self.size})"
            )

    def _row(self, dicom_id: str) -> int:
        row = self.row.get(dicom_id)
        if row is None:
            raise KeyError(f"{self.directory}: dicom_id {dicom_id!r} is not in this cache")
        if self._status[row] != DONE:
            raise KeyError(f"{self.directory}: dicom_id {dicom_id!r} could not be decoded (see {UNREADABLE})")
        return row

    def image(self, dicom_id: str) -> np.ndarray:
        """(S, S) uint8 (a copy: safe to hand to torch)."""
        return np.array(self.images[self._row(dicom_id)])

    def geometry(self, dicom_id: str) -> Geometry:
        return geometry_from_row(self._geometry[self._row(dicom_id)], self.size)

    def questions(self) -> pd.DataFrame:
        """questions.csv: ids as int64, text verbatim (see the module docstring for the columns)."""
        try:
            return read_questions_csv(self.directory / QUESTIONS)
        except (OSError, ValueError, pd.errors.ParserError) as exc:
            raise _damaged(self.directory, exc) from exc

    def _load_truth(self) -> CacheTruth:
        if self._truth is None:
            self._truth = CacheTruth(self.directory)
        return self._truth

    def pair_truth(self, study_id: int, ref_id: int) -> dict | None:
        """Ground truth of a pair (phantom caches), else None (:meth:`.CacheTruth.pair`)."""
        return self._load_truth().pair(study_id, ref_id) if self.has_truth else None

    def pair_regions(self, study_id: int, ref_id: int) -> list[dict] | None:
        """Per-finding change regions of a pair (phantom caches that have them), else None
        (:meth:`.CacheTruth.regions`)."""
        return self._load_truth().regions(study_id, ref_id) if self.has_truth else None

    def findings(self, dicom_id: str) -> list[dict]:
        """The ground-truth findings of an image (phantom caches; [] otherwise; :meth:`.CacheTruth.findings`)."""
        return self._load_truth().findings(dicom_id) if self.has_truth else []

    def labels(self) -> CacheLabels:
        """The cache's finding labels (:mod:`diffvqa.data.cache_labels`); a UserError naming the files to give
        ``prepare`` when it has none."""
        if not self.has_labels:
            from diffvqa.data.labels import LABEL_SETS

            files = ", ".join(file for file, _ in LABEL_SETS.values())
            raise UserError(
                f"{self.directory}: this cache has no finding labels; prepare it again with the label files ({files}) "
                "beside the images or the release, or in a directory named by `diffvqa prepare --labels DIR`"
            )
        return CacheLabels(self.directory)
