"""Which MIMIC-CXR-JPG images a selection of Medical-Diff-VQA questions needs: ``diffvqa prepare --list-images``.

MIMIC-CXR-JPG 2.0.0 holds 377,110 JPEGs (about 570 GB on PhysioNet's project page, ≈ 1.5 MB each); a selection of
questions needs only some of them, and this lists which. Only the two CSVs of the release are read (no image is
opened), so the list can be written before anything is downloaded. Each line is a path relative to the
MIMIC-CXR-JPG root (``files/p10/p10000032/s50414267/<dicom_id>.jpg``), which is also its path under the PhysioNet
download URL::

    wget -N -c -x -nH --cut-dirs=3 --user USER --ask-password \\
        -B https://physionet.org/files/mimic-cxr-jpg/2.0.0/ -i images.txt -P /data/mimic-cxr-jpg
    rsync --files-from=images.txt SOURCE/ /data/mimic-cxr-jpg/
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from diffvqa.data.release import image_relpath, read_release
from diffvqa.files.atomic import write_atomic
from diffvqa.files.disk import format_bytes

MIMIC_CXR_JPG_IMAGES = 377_110
MIMIC_CXR_JPG_BYTES = 570.3e9  # the total PhysioNet gives for MIMIC-CXR-JPG 2.0.0
MEAN_JPEG_BYTES = MIMIC_CXR_JPG_BYTES / MIMIC_CXR_JPG_IMAGES
PHYSIONET_JPG_URL = "https://physionet.org/files/mimic-cxr-jpg/2.0.0/"


@dataclass
class ImageList:
    paths: list[str]  # relative to the MIMIC-CXR-JPG root, sorted
    questions: int
    pairs: int
    present: int  # of ``paths``, already on disk under the images root
    present_bytes: int

    @property
    def estimated_bytes(self) -> float:
        return len(self.paths) * MEAN_JPEG_BYTES

    def summary(self, destination: str) -> str:
        share = len(self.paths) / MIMIC_CXR_JPG_IMAGES
        lines = [
            f"{len(self.paths):,} images ({share:.1%} of MIMIC-CXR-JPG's {MIMIC_CXR_JPG_IMAGES:,}) for "
            f"{self.questions:,} questions on {self.pairs:,} pairs, listed in {destination}",
            f"estimated download: {format_bytes(self.estimated_bytes)} (≈ {MEAN_JPEG_BYTES / 1e6:.2f} MB a JPEG, "
            "MIMIC-CXR-JPG's mean)",
        ]
        if self.present:
            missing = len(self.paths) - self.present
            lines.append(
                f"already on disk: {self.present:,} ({format_bytes(self.present_bytes)}); still to fetch: {missing:,} "
                f"(≈ {format_bytes(missing * MEAN_JPEG_BYTES)})"
            )
        return "\n".join(lines)


def needed_images(
    release_dir: str | Path, images_dir: str | Path | None = None, question_types: list[str] | None = None
) -> ImageList:
    """The images the release's (selected) questions need, from its CSVs alone; ``images_dir``, when given and
    present, is checked for the ones already downloaded (a ``.jpg``, or a ``.dcm`` of a MIMIC-CXR DICOM tree)."""
    release = read_release(release_dir, images_dir or release_dir, question_types=question_types, check_images=False)
    images = release.images()
    questions = release.questions
    paths = sorted(
        image_relpath(subject, study, dicom)
        for subject, study, dicom in zip(images.subject_id, images.study_id, images.dicom_id, strict=True)
    )
    present, present_bytes = 0, 0
    if images_dir is not None and Path(images_dir).is_dir():
        for rel in paths:
            stem = os.path.join(images_dir, rel[: -len(".jpg")])
            for suffix in (".jpg", ".dcm"):
                try:
                    present_bytes += os.stat(stem + suffix).st_size
                except OSError:
                    continue
                present += 1
                break
    pairs = questions[["study_id", "ref_id"]].drop_duplicates().shape[0]
    return ImageList(paths, len(questions), pairs, present, present_bytes)


def write_image_list(image_list: ImageList, destination: str | Path) -> None:
    """One relative path a line (``-``: stdout), ready for ``wget -i`` / ``rsync --files-from``."""
    text = "".join(path + "\n" for path in image_list.paths)
    if str(destination) == "-":
        print(text, end="")
    else:
        write_atomic(destination, text)
