"""A longitudinal chest X-ray phantom, written in the real Medical-Diff-VQA v1.0.1 + MIMIC-CXR-JPG format.

MIMIC-CXR needs PhysioNet credentials, so :func:`simulate` draws patients with 2-4 visits each
(:mod:`~diffvqa.data.phantom.plan`), renders every visit (:mod:`~diffvqa.data.phantom.anatomy`,
:mod:`~diffvqa.data.phantom.findings`, :mod:`~diffvqa.data.phantom.imaging`), asks the release's questions
(``docs/data.md``) about each pair (:mod:`~diffvqa.data.phantom.qa`) and writes a release that the same reader,
loader, training and metrics consume — plus ground truth that no real dataset has::

    out/
      mimic_pair_questions.csv          study_id,subject_id,ref_id,question_type,question,answer,split
      mimic_all.csv                     the 21 columns of docs/data.md, one row per study
      mimic-cxr-2.0.0-metadata.csv.gz   one row per image (MIMIC-CXR-JPG's metadata columns)
      files/p{subject[:2]}/p{subject}/s{study}/{dicom_id}.jpg     8-bit grayscale JPEG, H x W (size=(H, W))
      ground_truth/
        findings.csv  pairs.csv  changes.csv  questions.csv  masks/*.png  changes/*.png
      chest-imagenome/  ms-cxr/           the anatomy's regions as boxes, the changes per region and the findings
                                          as phrases, in Chest ImaGenome's and MS-CXR's layouts (region_files)

Ground-truth contract (file and column names in :mod:`diffvqa.data.ground_truth`, which reads it back). Pixel
coordinates: x to the right, y down, pixel centres at integer coordinates; masks are 8-bit PNGs holding 0 or 255,
H x W like the JPG whose frame they are in; ``*_file`` paths are relative to ``ground_truth/``.

* ``findings.csv`` — one row per (study, finding): ``subject_id,study_id,dicom_id,name,location,level,type,
  mask_file``. ``name`` is one of the 30 official finding names; ``location`` / ``level`` / ``type`` are the
  phrases the QA uses ("" when the finding has none); the mask is in that study's JPG frame.
* ``pairs.csv`` — one row per (main, reference) pair: ``study_id,ref_id,m00,m01,m02,m10,m11,m12,
  change_mask_file,keyword``. M = [[m00, m01, m02], [m10, m11, m12]] maps a reference-JPG pixel to the same
  anatomical point in the main JPG: [x_main, y_main] = M @ [x_ref, y_ref, 1]. The change mask is in the
  *reference* JPG's frame: the union of the regions of the findings that differ between the visits (added ones
  mapped back through M^-1, removed ones, and both extents of those whose level changed); it is empty exactly
  when the difference answer is ``nothing has changed.``. ``keyword`` = the official name of the most visible
  change (largest area of the symmetric difference of the finding's two regions), "" when nothing changed.
* ``changes.csv`` — the change mask split by finding and side: one row per (pair, changed finding, side),
  ``study_id,ref_id,name,side,mask_file``, the mask in the reference JPG's frame made like the change mask
  (the finding's regions at both visits, an added one mapped back through M^-1). ``side`` is ``right`` or
  ``left`` (the patient's: ``left`` lies on the image's right) for findings of the lateral kinds
  (:data:`~diffvqa.data.phantom.plan.LATERAL_KINDS`), one row per lung the finding involves, a bilateral
  finding's region cut at the patient's midline; ``""`` for the others (cardiomegaly, hernia, emphysema, ...),
  one row. So a one-lung difference question ("what has changed in the left lung area?") names exactly the
  findings of its pair's ``left`` rows, and the union of a pair's rows is its change mask (up to the 0.5
  threshold, taken per row). A row's mask can be empty where the finding lies outside the frame. Releases
  written before this table have no ``changes.csv``; readers then have no per-finding regions.
* ``questions.csv`` — ``question_index,keyword`` for every row of mimic_pair_questions.csv (question_index =
  0-based data row): the official finding name the answer is about ("" for view questions and "no
  abnormalities"); for a difference row the most visible change among those its answer names.

What it shows. Per patient, anatomy of varying size, shape and position (body and shoulders, lungs with rounded
apices and sharp costophrenic angles, heart, mediastinum with aortic knob and trachea, hemidiaphragms and gastric
bubble, posterior and anterior ribs, clavicles, spine, hila and branching lung markings, breast shadows) and 22 of
the 30 official findings, each where it occurs clinically, its level changing its extent (``SPECS``,
:mod:`~diffvqa.data.phantom.plan`): pleural effusion / blunting of the costophrenic angle filling the base up
to a meniscus; cardiomegaly / enlargement of the cardiac silhouette as a wider heart; pneumothorax as a lucent
apical rim without markings behind a pleural line; lung opacity, consolidation (air bronchograms) and pneumonia
in a lung zone; linear / plate-like atelectasis above a hemidiaphragm, or retrocardiac; perihilar edema with
Kerley lines; vascular and hilar congestion; a displaced rib fracture; calcified granuloma / calcification;
apical pleural thickening; tortuous descending / thoracic aorta; hiatal hernia with an air-fluid level; gastric
distention; emphysema (hyperinflation, flat domes, pruned markings); scoliosis. Between visits findings appear,
resolve, change level or stay (about a quarter of the pairs: "nothing has changed."). Every visit has its own
pose (within +-2.5 deg rotation, 2.5 % scale and 2.5 % shift, so a pair differs by up to about +-5 deg / 5 % / 5 %),
view (PA, or AP which magnifies the heart), exposure, gamma and noise.

The phantom is *correct*: main is the later study on every row (the v1.0.1 id-swap trap is exercised by the
reader's own test fixtures), splits are by patient (~80/10/10), and the same seed writes byte-identical files.
Sides follow the radiological convention: the patient's left lung is on the image's right.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import multiprocessing
import os
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from diffvqa.data.ground_truth import (
    CHANGES_COLUMNS,
    CHANGES_FILE,
    FINDINGS_COLUMNS,
    FINDINGS_FILE,
    GROUND_TRUTH_DIR,
    KEYWORD_COLUMNS,
    KEYWORDS_FILE,
    PAIRS_COLUMNS,
    PAIRS_FILE,
)
from diffvqa.data.labels import CHEXPERT_FILE, NEGBIO_FILE, OBSERVATIONS
from diffvqa.data.labels import FINDINGS_FILE as DISEASES_FILE
from diffvqa.data.phantom.anatomy import render_static
from diffvqa.data.phantom.findings import render_canonical
from diffvqa.data.phantom.imaging import SIDES, Warp, compose, expose, invert, make_canvas
from diffvqa.data.phantom.label_files import observation_values, write_label_files
from diffvqa.data.phantom.plan import LATERAL_KINDS, Ids, StudyPlan, SubjectPlan, assign_splits, plan_subject
from diffvqa.data.phantom.qa import NOTHING, pair_difference, pair_questions
from diffvqa.data.phantom.region_files import write_region_files
from diffvqa.data.phantom.sheet import contact_sheet
from diffvqa.data.release import QUESTION_COLUMNS, QUESTIONS_FILE, STUDIES_FILE
from diffvqa.errors import ArgumentParser, UserError, command

STUDY_COLUMNS = ("subject_id", "study_id", *OBSERVATIONS, "dicom_id", "view", "split", "study_date", "study_order")
METADATA_COLUMNS = (
    "dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows", "Columns",
    "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning", "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning",
)  # fmt: skip
MIN_SIDE = 32


# ----------------------------------------------------------------------------------------------------------
# rendering one subject: images, finding masks, change masks


def _binary(soft: np.ndarray) -> np.ndarray:
    """Soft region -> 0/255 mask; a region too small to pass 0.5 keeps its core so it is never lost."""
    mask = soft > 0.5
    if not mask.any() and soft.max() > 0.05:
        mask = soft >= 0.5 * soft.max()
    return mask.astype(np.uint8) * 255


def _image_relpath(subject_id: int, study: StudyPlan) -> str:
    subject = str(subject_id)
    return f"files/p{subject[:2]}/p{subject}/s{study.study_id}/{study.dicom_id}.jpg"


def _slug(name: str) -> str:
    return name.replace(" ", "_")


def _region_file(stem: str, name: str, side: str) -> str:
    """``changes/s{main}_s{ref}_{finding}[_{side}].png``, relative to ``ground_truth/``."""
    return f"changes/{stem}_{_slug(name)}{'_' + side if side else ''}.png"


def change_regions(plan: SubjectPlan, k: int, ref_soft: dict, soft: dict, sides: list[np.ndarray]) -> list:
    """The regions of the findings that differ between visit k - 1 and visit k, one per (finding, side).

    A finding of the lateral kinds (``LATERAL_KINDS``: those a one-lung question asks about) gets a row per lung
    it involves, a bilateral one's region cut at the patient's midline; any other finding one row with side "".
    A region is the union of the finding's soft regions at both visits (an added one, a removed one, or both
    extents of a level change), in the canonical frame.

    Args:
        ref_soft, soft: finding name -> soft region (Hc, Wc) at visit k - 1 and visit k.
        sides: per side index (0 = patient right = image left), the canonical half-plane (Hc, Wc) float32.

    Returns:
        [(name, side word: "right" | "left" | "", soft region (Hc, Wc) float32)], lesions in plan order, sides
        in index order.
    """
    rows = []
    for i in plan.changed(k):
        lesion = plan.lesions[i]
        parts = [r for r in (ref_soft.get(lesion.name), soft.get(lesion.name)) if r is not None]
        region = np.maximum(*parts) if len(parts) == 2 else parts[0]
        if lesion.kind in LATERAL_KINDS and lesion.sides:
            for side in lesion.sides:  # one lung: its whole region; both: each half, so the two add up to it
                rows.append((lesion.name, SIDES[side], region * sides[side] if len(lesion.sides) > 1 else region))
        else:
            rows.append((lesion.name, "", region))
    return rows


def render_subject(plan: SubjectPlan, out: Path, size: tuple[int, int]) -> dict:
    """Write a subject's JPGs and ground-truth masks; return per-visit finding areas and per-pair change areas
    (pixels), which rank findings by visibility for the answers and keywords, and per pair the (name, side) of
    each change region written (``change_regions``, in order)."""
    height, width = size
    cv = make_canvas(height, width)
    st = render_static(cv, plan.anatomy, np.random.default_rng(plan.render_seed))
    # The patient's midline splits the canonical frame into the right lung's half (image left) and the left's.
    right = (cv.X < plan.anatomy.mid).astype(np.float32)
    sides = [right, 1 - right]
    areas, changes, regions, previous = [], [], [], None
    for k, study in enumerate(plan.studies):
        D, soft = render_canonical(cv, plan.anatomy, st, plan.present(k), study.view)
        warp = Warp(cv, study.pose)
        image = expose(warp(D), study.exposure, np.random.default_rng(study.noise_seed))
        path = out / _image_relpath(plan.subject_id, study)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image, mode="L").save(path, quality=90)
        visit_areas = {}
        for name, field in soft.items():
            mask = _binary(warp(field))
            Image.fromarray(mask, mode="L").save(
                out / GROUND_TRUTH_DIR / "masks" / f"s{study.study_id}_{_slug(name)}.png"
            )
            visit_areas[name] = int((mask > 0).sum())
        areas.append(visit_areas)
        if k:
            ref_soft, ref_study = previous
            union = np.zeros(cv.shape, np.float32)
            change_areas = {}
            for i in plan.changed(k):
                name = plan.lesions[i].name
                a, b = ref_soft.get(name), soft.get(name)
                ra = a > 0.5 if a is not None else np.zeros(cv.shape, bool)
                rb = b > 0.5 if b is not None else np.zeros(cv.shape, bool)
                change_areas[name] = int((ra ^ rb).sum())
                for region in (a, b):
                    if region is not None:
                        np.maximum(union, region, out=union)
            ref_warp = Warp(cv, ref_study.pose)
            mask = _binary(ref_warp(union)) if change_areas else np.zeros(size, np.uint8)
            stem = f"s{study.study_id}_s{ref_study.study_id}"
            Image.fromarray(mask, mode="L").save(out / GROUND_TRUTH_DIR / "changes" / f"{stem}.png")
            changes.append(change_areas)
            pair_regions = []
            for name, side, region in change_regions(plan, k, ref_soft, soft, sides):
                Image.fromarray(_binary(ref_warp(region)), mode="L").save(
                    out / GROUND_TRUTH_DIR / _region_file(stem, name, side)
                )
                pair_regions.append((name, side))
            regions.append(pair_regions)
        previous = (soft, study)
    return {"areas": areas, "changes": changes, "regions": regions}


def _render_job(job: tuple[SubjectPlan, Path, tuple[int, int]]) -> dict:
    return render_subject(*job)


# ----------------------------------------------------------------------------------------------------------
# writing the release


def _write_csv(path: Path, header, rows, compress: bool = False) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    data = buffer.getvalue().encode()
    if compress:  # mtime=0 and no file name in the header: byte-identical across runs
        with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
            gz.write(data)
    else:
        path.write_bytes(data)


def _validate(pairs, size, seed) -> tuple[int, tuple[int, int]]:
    if isinstance(pairs, bool) or not isinstance(pairs, (int, np.integer)) or pairs < 1:
        raise UserError(f"pairs={pairs!r}: expected a positive integer")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UserError(f"seed={seed!r}: expected a non-negative integer")
    try:
        height, width = (int(v) for v in size)
    except (TypeError, ValueError):
        raise UserError(f"size={size!r}: expected (height, width)") from None
    if min(height, width) < MIN_SIDE or max(height, width) > 4096:
        raise UserError(f"size={size!r}: height and width must be between {MIN_SIDE} and 4096 pixels")
    return int(pairs), (height, width)


OUTPUTS = (
    QUESTIONS_FILE, STUDIES_FILE, "mimic-cxr-2.0.0-metadata.csv.gz", CHEXPERT_FILE, NEGBIO_FILE, DISEASES_FILE, "files",
    GROUND_TRUTH_DIR,
)  # fmt: skip


def simulate(
    out: str | Path,
    pairs: int,
    seed: int = 0,
    size: tuple[int, int] = (320, 256),
    progress: bool = True,
    overwrite: bool = False,
    workers: int = 1,
) -> dict:
    """Write a phantom release of ``pairs`` (main, reference) pairs to ``out`` (format: module docstring).

    Args:
        out: output directory (created). It must not already hold a release unless ``overwrite``, which first
            removes the previous release's files (only those: OUTPUTS).
        pairs: number of (later visit, earlier visit) pairs; subjects have 2-4 visits, consecutive visits pair up.
        seed: the same seed writes byte-identical files.
        size: (height, width) of every image, e.g. (320, 256) portrait.
        progress: show a progress bar.
        workers: rendering processes (0 = up to 2 for runs of 64+ subjects). Every subject is rendered from
            its own plan and seeds, so the files do not depend on ``workers``. More than one spawns processes,
            so a calling script needs the ``if __name__ == "__main__":`` guard; the CLI defaults to 0.

    Returns:
        Counts: subjects, studies, pairs, questions, findings (rows of findings.csv), change_regions (rows of
        changes.csv), questions_by_type, nothing_changed (difference rows answered "nothing has changed."),
        region_files (:func:`~diffvqa.data.phantom.region_files.write_region_files`'s counts).
    """
    pairs, size = _validate(pairs, size, seed)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise UserError(f"workers={workers!r}: expected 0 (automatic) or a positive integer")
    out = Path(out)
    existing = [name for name in OUTPUTS if (out / name).exists()]
    if existing and not overwrite:
        raise UserError(f"{out}: already holds a release ({', '.join(existing)}); pass overwrite=True (--overwrite)")
    for name in existing:
        shutil.rmtree(out / name) if (out / name).is_dir() else (out / name).unlink()
    for sub in ("masks", "changes"):
        (out / GROUND_TRUTH_DIR / sub).mkdir(parents=True, exist_ok=True)

    ids = Ids(np.random.default_rng([seed, 0]))
    plans, remaining = [], pairs
    while remaining:
        rng = np.random.default_rng([seed, 1, len(plans)])
        n_studies = min(int(rng.integers(2, 5)), remaining + 1)
        plans.append(plan_subject(rng, ids, n_studies, size))
        remaining -= n_studies - 1
    assign_splits(plans, np.random.default_rng([seed, 2]))

    from tqdm.auto import tqdm

    if workers == 0:
        workers = min(2, os.cpu_count() or 1) if len(plans) >= 64 else 1
    jobs = [(plan, out, size) for plan in plans]
    bar = dict(total=len(jobs), desc="phantom", unit="subject", disable=not progress)
    if workers > 1:
        # spawn, not fork: the caller may hold threads (torch in a test session) that a fork would copy mid-lock.
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            rendered = list(tqdm(pool.imap(_render_job, jobs, chunksize=4), **bar))
    else:
        rendered = [_render_job(job) for job in tqdm(jobs, **bar)]

    questions, keywords, studies, metadata, findings, pair_rows, change_rows = [], [], [], [], [], [], []
    for plan, result in zip(plans, rendered, strict=True):
        rng = np.random.default_rng(plan.qa_seed)
        for k, study in enumerate(plan.studies):
            present = plan.present(k)
            # mimic_all's reference-only CheXpert columns: the values of the phantom's CheXpert file
            values = observation_values(plan, k, np.random.default_rng([seed, 17, 0, study.study_id]))
            chexpert = [values[c] for c in OBSERVATIONS]
            view = "postero-anterior" if study.view == "PA" else "antero-posterior"
            mimic_split = {"val": "validate"}.get(plan.split, plan.split)
            studies.append((plan.subject_id, study.study_id, *chexpert, study.dicom_id, view, mimic_split,
                            study.date, f"{k + 1:.1f}"))  # fmt: skip
            procedure = "CHEST (PA AND LAT)" if study.view == "PA" else "CHEST (PORTABLE AP)"
            metadata.append((study.dicom_id, plan.subject_id, study.study_id, procedure, study.view, size[0], size[1],
                             study.date, study.time, procedure, view, "Erect"))  # fmt: skip
            for lesion, level in present:
                findings.append((plan.subject_id, study.study_id, study.dicom_id, lesion.name, lesion.location,
                                 lesion.levels[level] if level >= 0 else "", lesion.type,
                                 f"masks/s{study.study_id}_{_slug(lesion.name)}.png"))  # fmt: skip
            if k == 0:
                continue
            ref = plan.studies[k - 1]
            M = compose(study.pose, invert(ref.pose))
            _, pair_keyword = pair_difference(plan, k, result["changes"][k - 1])
            pair_rows.append(
                (
                    study.study_id,
                    ref.study_id,
                    *(f"{v:.10g}" for v in M.ravel()),
                    f"changes/s{study.study_id}_s{ref.study_id}.png",
                    pair_keyword,
                )
            )
            stem = f"s{study.study_id}_s{ref.study_id}"
            for name, side in result["regions"][k - 1]:
                change_rows.append((study.study_id, ref.study_id, name, side, _region_file(stem, name, side)))
            for qtype, question, answer, keyword in pair_questions(plan, k, result, rng):
                questions.append((study.study_id, plan.subject_id, ref.study_id, qtype, question, answer, plan.split))
                keywords.append((len(keywords), keyword))

    truth = out / GROUND_TRUTH_DIR
    _write_csv(out / QUESTIONS_FILE, QUESTION_COLUMNS, questions)
    _write_csv(out / STUDIES_FILE, STUDY_COLUMNS, studies)
    _write_csv(out / "mimic-cxr-2.0.0-metadata.csv.gz", METADATA_COLUMNS, metadata, compress=True)
    _write_csv(truth / FINDINGS_FILE, FINDINGS_COLUMNS, findings)
    _write_csv(truth / PAIRS_FILE, PAIRS_COLUMNS, pair_rows)
    _write_csv(truth / CHANGES_FILE, CHANGES_COLUMNS, change_rows)
    _write_csv(truth / KEYWORDS_FILE, KEYWORD_COLUMNS, keywords)
    write_label_files(out, plans, seed)
    region_files = write_region_files(out, plans, change_rows, size)  # Chest ImaGenome and MS-CXR, read from the masks
    by_type: dict[str, int] = {}
    for row in questions:
        by_type[row[3]] = by_type.get(row[3], 0) + 1
    return {
        "out": str(out),
        "subjects": len(plans),
        "studies": len(studies),
        "pairs": len(pair_rows),
        "questions": len(questions),
        "findings": len(findings),
        "change_regions": len(change_rows),
        "questions_by_type": by_type,
        "nothing_changed": sum(1 for row in questions if row[3] == "difference" and row[5] == NOTHING),
        "region_files": region_files,
    }


# ----------------------------------------------------------------------------------------------------------
# command line


def _size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}: expected an integer number of pixels") from None
    if not MIN_SIDE <= value <= 4096:
        raise argparse.ArgumentTypeError(f"invalid size {value}: expected {MIN_SIDE}..4096 pixels")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected a positive integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid value {value}: expected a positive integer")
    return value


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected a non-negative integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"invalid value {value}: expected a non-negative integer")
    return value


@command("diffvqa simulate")
def simulate_main(argv: list[str]) -> int:
    """``diffvqa simulate --out DIR --pairs N [--seed S] [--size H W] [--overwrite] [--quiet]``."""
    parser = ArgumentParser(prog="diffvqa simulate", description="Write a longitudinal CXR phantom release.")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--pairs", type=_positive, required=True, help="number of (main, reference) pairs")
    parser.add_argument("--seed", type=_non_negative, default=0)
    parser.add_argument("--size", type=_size, nargs=2, default=(320, 256), metavar=("H", "W"), help="image size")
    parser.add_argument("--overwrite", action="store_true", help="replace a release already in --out")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--workers", type=_non_negative, default=0, help="rendering processes (0 = automatic)")
    args = parser.parse_args(argv)
    summary = simulate(args.out, args.pairs, args.seed, tuple(args.size), not args.quiet, args.overwrite, args.workers)
    width = max(map(len, summary))
    for key, value in summary.items():
        print(f"{key:<{width}}  {value}")
    return 0


@command("diffvqa contact-sheet")
def contact_sheet_main(argv: list[str]) -> int:
    """``diffvqa contact-sheet --release DIR --out FILE.png [--pairs 6]``."""
    parser = ArgumentParser(prog="diffvqa contact-sheet", description="Render release pairs to a PNG.")
    parser.add_argument("--release", required=True, help="release directory (a phantom or any release)")
    parser.add_argument("--out", required=True, help="output PNG")
    parser.add_argument("--pairs", type=_positive, default=6)
    args = parser.parse_args(argv)
    if Path(args.out).suffix.lower() != ".png":
        parser.error(f"--out {args.out!r}: expected a .png file name")
    path = contact_sheet(args.release, args.out, args.pairs)  # a UserError is one line (@command); a bug is not
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(simulate_main(sys.argv[1:]))
