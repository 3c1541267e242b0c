"""A longitudinal chest X-ray phantom, written in the real Medical-Diff-VQA v1.0.1 + MIMIC-CXR-JPG format.

No one can run MIMIC here, so :func:`simulate` draws patients with 2-4 visits each, renders every visit
(anatomy and findings: :mod:`diffvqa.data.phantom_render`) and writes a release that the same reader, loader,
training and metrics consume — plus ground truth that no real dataset has::

    out/
      mimic_pair_questions.csv          study_id,subject_id,ref_id,question_type,question,answer,split
      mimic_all.csv                     the 21 columns of DATA.md, one row per study
      mimic-cxr-2.0.0-metadata.csv.gz   one row per image (the metadata columns of DATA.md)
      files/p{subject[:2]}/p{subject}/s{study}/{dicom_id}.jpg     8-bit grayscale JPEG, H x W (size=(H, W))
      ground_truth/
        findings.csv  pairs.csv  questions.csv  masks/*.png  changes/*.png

Ground-truth contract (read by ``diffvqa.data.release.read_ground_truth``). Pixel coordinates: x to the right,
y down, pixel centres at integer coordinates; masks are 8-bit PNGs holding 0 or 255, H x W like the JPG whose
frame they are in; ``*_file`` paths are relative to ``ground_truth/``.

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
* ``questions.csv`` — ``question_index,keyword`` for every row of mimic_pair_questions.csv (question_index =
  0-based data row): the official finding name the answer is about ("" for view questions and "no
  abnormalities"); for a difference row the most visible change among those its answer names.

What it shows. Per patient, anatomy of varying size, shape and position (body and shoulders, lungs with rounded
apices and sharp costophrenic angles, heart, mediastinum with aortic knob and trachea, hemidiaphragms and gastric
bubble, posterior and anterior ribs, clavicles, spine, hila and branching lung markings, breast shadows) and 22 of
the 30 official findings, each where it occurs clinically, its level changing its extent (``SPECS``,
:mod:`~diffvqa.data.phantom_render`): pleural effusion / blunting of the costophrenic angle filling the base up
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
import datetime
import gzip
import io
import multiprocessing
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from diffvqa.data import phantom_render as render

QUESTION_COLUMNS = ("study_id", "subject_id", "ref_id", "question_type", "question", "answer", "split")
CHEXPERT = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum", "Fracture", "Lung Lesion",
    "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia", "Pneumothorax", "Support Devices",
)  # fmt: skip
STUDY_COLUMNS = ("subject_id", "study_id", *CHEXPERT, "dicom_id", "view", "split", "study_date", "study_order")
METADATA_COLUMNS = (
    "dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows", "Columns",
    "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning", "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning",
)  # fmt: skip
FINDINGS_COLUMNS = ("subject_id", "study_id", "dicom_id", "name", "location", "level", "type", "mask_file")
PAIRS_COLUMNS = ("study_id", "ref_id", "m00", "m01", "m02", "m10", "m11", "m12", "change_mask_file", "keyword")
NOTHING = "nothing has changed."
MIN_SIDE = 32


# ----------------------------------------------------------------------------------------------------------
# the findings the phantom shows


@dataclass(frozen=True)
class Spec:
    """A finding the phantom can show.

    sides: "none" (midline / not lateralised), "one" (left or right), "any" (left, right or bilateral), "both".
    course: "acute" (comes, changes level, goes), "slow" (rarely goes), "lasting" (stays once seen),
    "chronic" (in every visit at one level). An empty string in ``types`` means "sometimes no type".
    """

    name: str
    kind: str  # phantom_render kind
    levels: tuple[str, ...] = ()
    types: tuple[str, ...] = ()
    sides: str = "none"
    zones: tuple[str, ...] = ()
    course: str = "acute"
    prevalence: float = 0.1
    chexpert: tuple[str, ...] = ()


_LUNG_ZONES = ("upper", "mid", "lower", "base", "mid to lower")
SPECS = (
    Spec("pleural effusion", "effusion", ("small", "moderate", "moderate to large"), ("layering", ""), "any",
         ("base",), "acute", 0.5, ("Pleural Effusion",)),
    Spec("blunting of the costophrenic angle", "blunting", (), (), "any", ("base",), "acute", 0.05,
         ("Pleural Effusion",)),
    Spec("cardiomegaly", "heart", ("mild", "moderate", "severe"), (), "none", (), "slow", 0.3, ("Cardiomegaly",)),
    Spec("enlargement of the cardiac silhouette", "heart", ("mild", "moderate"), (), "none", (), "slow", 0.07,
         ("Enlarged Cardiomediastinum", "Cardiomegaly")),
    Spec("pneumothorax", "ptx", ("small", "moderate", "moderate to large"), (), "one", ("apical",), "acute", 0.12,
         ("Pneumothorax",)),
    Spec("lung opacity", "opacity", ("mild", "moderate", "severe"),
         ("patchy", "ground-glass", "focal", "multifocal", ""), "any", (*_LUNG_ZONES, "retrocardiac"), "acute", 0.4,
         ("Lung Opacity",)),
    Spec("consolidation", "opacity", (), ("dense", "focal", "patchy"), "one", ("upper", "mid", "lower", "base"),
         "acute", 0.12, ("Consolidation", "Lung Opacity")),
    Spec("pneumonia", "opacity", (), ("patchy", "multifocal", "focal", ""), "any", _LUNG_ZONES, "acute", 0.15,
         ("Pneumonia", "Lung Opacity")),
    Spec("atelectasis", "atelectasis", ("minimal", "mild", "moderate"), ("linear", "plate-like", "compressive", ""),
         "any", ("base", "base", "retrocardiac"), "acute", 0.45, ("Atelectasis", "Lung Opacity")),
    Spec("edema", "edema", ("mild", "moderate", "severe"), ("interstitial", ""), "both", (), "acute", 0.25,
         ("Edema", "Lung Opacity")),
    Spec("vascular congestion", "congestion", ("mild", "moderate"), (), "none", (), "acute", 0.18, ("Edema",)),
    Spec("hilar congestion", "hilar", ("mild", "moderate"), (), "none", (), "acute", 0.05),
    Spec("fracture", "fracture", (), (), "one", (), "lasting", 0.05, ("Fracture",)),
    Spec("granuloma", "nodule", (), ("calcified",), "one", ("apical", "upper", "mid", "lower"), "chronic", 0.1,
         ("Lung Lesion",)),
    Spec("calcification", "nodule", (), ("calcified",), "one", ("upper", "mid", "lower"), "chronic", 0.05),
    Spec("pleural thickening", "thickening", (), (), "any", ("apical",), "chronic", 0.05, ("Pleural Other",)),
    Spec("tortuosity of the descending aorta", "aorta_desc", ("mild", "moderate"), (), "none", (), "chronic", 0.07),
    Spec("tortuosity of the thoracic aorta", "aorta_arch", ("mild", "moderate"), (), "none", (), "chronic", 0.04),
    Spec("hernia", "hernia", ("small", "moderate"), (), "none", ("retrocardiac",), "chronic", 0.03),
    Spec("gastric distention", "gastric", ("mild", "moderate"), (), "none", (), "acute", 0.03),
    Spec("emphysema", "emphysema", ("mild", "moderate", "severe"), (), "both", (), "chronic", 0.05),
    Spec("scoliosis", "scoliosis", ("mild", "moderate"), (), "none", (), "chronic", 0.05),
)  # fmt: skip
SPEC = {s.name: s for s in SPECS}
EXCLUSIVE = ({"cardiomegaly", "enlargement of the cardiac silhouette"},
             {"pleural effusion", "blunting of the costophrenic angle"})  # fmt: skip
# For the finding-level questions: which findings have a side worth asking about.
LATERAL_KINDS = {"effusion", "blunting", "ptx", "opacity", "atelectasis", "edema", "nodule", "thickening", "fracture"}


def _location(spec: Spec, sides: tuple[int, ...], zone: str, rng: np.random.Generator) -> str:
    """The location phrase of a finding, built from DATA.md's location words."""
    if zone == "retrocardiac":
        return "retrocardiac"
    if spec.kind == "fracture":
        return f"{render.SIDES[sides[0]]} rib"
    if not zone:
        return ""
    if len(sides) == 2:
        if zone == "base":
            return "bibasilar" if rng.random() < 0.6 else "left lung base and right lung base"
        return "left apical area and right apical area" if zone == "apical" else "left lung area and right lung area"
    side = render.SIDES[sides[0]]
    if zone == "base":
        return f"the {side} lung base" if rng.random() < 0.3 else f"{side} lung base"
    if zone == "apical":
        return f"{side} apical area"
    return f"{side} {zone} lung"


# ----------------------------------------------------------------------------------------------------------
# planning: who, when, what each visit shows, pose and exposure


@dataclass
class StudyPlan:
    study_id: int
    dicom_id: str
    date: int  # YYYYMMDD
    time: str  # HHMMSS.fff
    view: str  # "PA" | "AP"
    pose: np.ndarray  # (2, 3) canonical -> image pixels
    exposure: render.Exposure
    noise_seed: int


@dataclass
class SubjectPlan:
    subject_id: int
    anatomy: render.Anatomy
    lesions: list[render.Lesion]
    states: list[list[int | None]]  # per lesion, per study: level index (-1 = no level) or None (absent)
    studies: list[StudyPlan]
    render_seed: int
    qa_seed: int
    split: str = "train"

    def present(self, k: int) -> list[tuple[render.Lesion, int]]:
        return [(les, st[k]) for les, st in zip(self.lesions, self.states, strict=True) if st[k] is not None]


def _course(spec: Spec, n: int, rng: np.random.Generator) -> list[int | None]:
    """One finding's level index (or None = absent) at each of n visits."""
    count = len(spec.levels)

    def pick() -> int:
        return int(rng.integers(count)) if count else -1

    if spec.course == "chronic":
        return [pick()] * n
    present = rng.random() < {"slow": 0.7, "lasting": 0.4}.get(spec.course, 0.55)
    level = pick() if present else None
    out = [level]
    resolve, change = (0.1, 0.3) if spec.course == "slow" else (0.35, 0.35)
    for _ in range(n - 1):
        r = rng.random()
        if level is None:
            level = pick() if r < 0.5 else None
        elif spec.course != "lasting":
            if r < resolve:
                level = None
            elif r < resolve + change and count > 1:
                step = 1 if level == 0 else -1 if level == count - 1 else int(rng.choice((-1, 1)))
                level += step
        out.append(level)
    return out


def _plan_subject(rng: np.random.Generator, ids: _Ids, n_studies: int, size: tuple[int, int]) -> SubjectPlan:
    """One patient: anatomy, findings and their course over ``n_studies`` visits, and per visit the ids, date,
    view, pose and exposure. Everything comes from ``rng`` in a fixed order (determinism)."""
    height, width = size
    an = render.sample_anatomy(rng)
    names: list[str] = []
    for spec in SPECS:
        if rng.random() < spec.prevalence and not any(spec.name in g and g & set(names) for g in EXCLUSIVE):
            names.append(spec.name)
    names = [names[i] for i in rng.permutation(len(names))]
    lesions, states = [], []
    for name in names:
        spec = SPEC[name]
        zone = str(rng.choice(spec.zones)) if spec.zones else ""
        if spec.sides == "both":
            sides = (0, 1)
        elif spec.sides == "none":
            sides = ()
        elif zone == "retrocardiac":
            sides = (1,)
        elif spec.sides == "any" and rng.random() < 0.25:
            sides = (0, 1)
        else:
            sides = (int(rng.integers(2)),)
        type_ = str(rng.choice(spec.types)) if spec.types else ""
        lesion = render.Lesion(name, spec.kind, sides, zone, type_, spec.levels, _location(spec, sides, zone, rng))
        course = _course(spec, n_studies, rng)
        if all(level is None for level in course):
            continue
        if spec.kind == "emphysema":
            an.emphysema = lesion.severity(course[0])
        if spec.kind == "scoliosis":
            an.scoliosis = float(rng.choice((-1, 1))) * (0.012 + 0.02 * lesion.severity(course[0]))
        lesions.append(lesion)
        states.append(course)
    lesions = [render.sample_lesion(lesion, an, rng) for lesion in lesions]
    for k in range(1, n_studies):  # some revisits show exactly what the previous one did
        if rng.random() < 0.08:
            for course in states:
                course[k] = course[k - 1]

    p_ap = rng.uniform(0.0, 0.7)  # inpatients are imaged AP more often
    day = datetime.date(2110, 1, 1) + datetime.timedelta(days=int(rng.integers(0, 365 * 90)))
    studies = []
    for k in range(n_studies):
        if k:
            day += datetime.timedelta(days=int(rng.integers(1, 500)))
        seconds = int(rng.integers(0, 86400))
        clock = f"{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}.{int(rng.integers(1000)):03d}"
        # Per-visit pose within +-2.5 deg / 2.5 % so a pair's relative pose stays within about +-5 deg / 5 %.
        pose = render.pose_matrix(
            rng.uniform(-2.5, 2.5),
            rng.uniform(0.975, 1.025),
            (rng.uniform(-0.025, 0.025) * width, rng.uniform(-0.025, 0.025) * height),
            height,
            width,
        )
        studies.append(
            StudyPlan(
                study_id=ids.study(),
                dicom_id=ids.dicom(),
                date=int(day.strftime("%Y%m%d")),
                time=clock,
                view="AP" if rng.random() < p_ap else "PA",
                pose=pose,
                exposure=render.sample_exposure(rng),
                noise_seed=int(rng.integers(2**63)),
            )
        )
    return SubjectPlan(ids.subject(), an, lesions, states, studies, int(rng.integers(2**63)), int(rng.integers(2**63)))


class _Ids:
    """Unique MIMIC-like identifiers: subject 1xxxxxxx, study 5xxxxxxx, dicom 5 dashed 8-hex-digit groups."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.seen: set = set()

    def _unique(self, draw):
        while (value := draw()) in self.seen:
            pass
        self.seen.add(value)
        return value

    def subject(self) -> int:
        return self._unique(lambda: int(self.rng.integers(10_000_000, 20_000_000)))

    def study(self) -> int:
        return self._unique(lambda: int(self.rng.integers(50_000_000, 60_000_000)))

    def dicom(self) -> str:
        return self._unique(lambda: "-".join(f"{int(x):08x}" for x in self.rng.integers(0, 2**32, 5)))


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


def _changed(plan: SubjectPlan, k: int) -> list[int]:
    """Indices of the lesions that differ between visit k - 1 (reference) and visit k (main)."""
    return [i for i, course in enumerate(plan.states) if course[k] != course[k - 1]]


def render_subject(plan: SubjectPlan, out: Path, size: tuple[int, int]) -> dict:
    """Write a subject's JPGs and ground-truth masks; return per-visit finding areas and per-pair change areas
    (pixels), which rank findings by visibility for the answers and keywords."""
    height, width = size
    cv = render.make_canvas(height, width)
    st = render.render_static(cv, plan.anatomy, np.random.default_rng(plan.render_seed))
    areas, changes, previous = [], [], None
    for k, study in enumerate(plan.studies):
        D, soft = render.render_canonical(cv, plan.anatomy, st, plan.present(k), study.view)
        warp = render.Warp(cv, study.pose)
        image = render.expose(warp(D), study.exposure, np.random.default_rng(study.noise_seed))
        path = out / _image_relpath(plan.subject_id, study)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image, mode="L").save(path, quality=90)
        visit_areas = {}
        for name, field in soft.items():
            mask = _binary(warp(field))
            Image.fromarray(mask, mode="L").save(
                out / "ground_truth" / "masks" / f"s{study.study_id}_{_slug(name)}.png"
            )
            visit_areas[name] = int((mask > 0).sum())
        areas.append(visit_areas)
        if k:
            ref_soft, ref_study = previous
            union = np.zeros(cv.shape, np.float32)
            change_areas = {}
            for i in _changed(plan, k):
                name = plan.lesions[i].name
                a, b = ref_soft.get(name), soft.get(name)
                ra = a > 0.5 if a is not None else np.zeros(cv.shape, bool)
                rb = b > 0.5 if b is not None else np.zeros(cv.shape, bool)
                change_areas[name] = int((ra ^ rb).sum())
                for region in (a, b):
                    if region is not None:
                        np.maximum(union, region, out=union)
            mask = _binary(render.Warp(cv, ref_study.pose)(union)) if change_areas else np.zeros(size, np.uint8)
            Image.fromarray(mask, mode="L").save(
                out / "ground_truth" / "changes" / f"s{study.study_id}_s{ref_study.study_id}.png"
            )
            changes.append(change_areas)
        previous = (soft, study)
    return {"areas": areas, "changes": changes}


def _render_job(job: tuple[SubjectPlan, Path, tuple[int, int]]) -> dict:
    return render_subject(*job)


# ----------------------------------------------------------------------------------------------------------
# questions and answers (DATA.md's templates, verbatim)


def join_list(items: list[str]) -> str:
    """The release's list rule: every item but the last gets a trailing comma, the last is preceded by "and "."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + ", and " + items[-1]


def difference_answer(levels: list[tuple[str, str, str]], added: list[str], removed: list[str]) -> str:
    """Level changes, then additions, then removals; each sentence ends ". "; or exactly "nothing has changed."."""
    out = [f"the level of {n} has changed from {a} to {b}. " for n, a, b in levels]
    if added:
        many = len(added) > 1
        out.append(
            f"the main image has {'additional findings' if many else 'an additional finding'} of "
            f"{join_list(added)} than the reference image. "
        )
    if removed:
        plural = "s" if len(removed) > 1 else ""
        out.append(f"the main image is missing the finding{plural} of {join_list(removed)} than the reference image. ")
    return "".join(out) or NOTHING


def _difference(plan: SubjectPlan, k: int, change_areas: dict[str, int], side: int | None = None) -> tuple[str, str]:
    """(answer, keyword) of visit k against visit k - 1, optionally restricted to findings on one side."""
    levels, added, removed = [], [], []
    for i in sorted(_changed(plan, k), key=lambda i: -change_areas[plan.lesions[i].name]):
        lesion, before, after = plan.lesions[i], plan.states[i][k - 1], plan.states[i][k]
        if side is not None and (side not in lesion.sides or lesion.kind not in LATERAL_KINDS):
            continue
        if before is None:
            added.append(lesion.name)
        elif after is None:
            removed.append(lesion.name)
        else:
            levels.append((lesion.name, lesion.levels[before], lesion.levels[after]))
    named = [n for n, _, _ in levels] + added + removed
    keyword = max(named, key=lambda n: change_areas[n]) if named else ""
    return difference_answer(levels, added, removed), keyword


def pair_questions(plan: SubjectPlan, k: int, rendered: dict, rng: np.random.Generator) -> list[tuple[str, ...]]:
    """The QA rows of the pair (visit k, visit k - 1): (question_type, question, answer, keyword), ~7 of them.

    Questions of every type but ``difference`` are about the main (later) image only, as in the release.
    """
    area = rendered["areas"][k]
    present = sorted(plan.present(k), key=lambda p: -area[p[0].name])  # most visible first
    names = [lesion.name for lesion, _ in present]
    rows = []

    def choose(options):
        return options[int(rng.integers(len(options)))]

    # abnormality
    lateral = {s: [les.name for les, _ in present if s in les.sides and les.kind in LATERAL_KINDS] for s in (0, 1)}
    r = rng.random()
    if not present:
        rows.append(("abnormality", "is there evidence of any abnormalities in this image?", "no", ""))
    elif r < 0.25:
        rows.append(("abnormality", "is there evidence of any abnormalities in this image?", "yes", names[0]))
    elif r < 0.45 and (sides := [s for s in (0, 1) if lateral[s]]):
        s = choose(sides)
        question = f"what abnormalities are seen in the {render.SIDES[s]} lung?"
        rows.append(("abnormality", question, ", ".join(lateral[s]), lateral[s][0]))
    else:
        rows.append(("abnormality", "what abnormalities are seen in this image?", ", ".join(names), names[0]))

    # presence: one finding that is there (when any), one that is not
    if present:
        lesion, _ = choose(present)
        n, r = lesion.name, rng.random()
        unilateral = len(lesion.sides) == 1 and lesion.location and lesion.location != "retrocardiac"
        if r < 0.3 and unilateral:
            own = lesion.location.removeprefix("the ")
            other = own.replace(render.SIDES[lesion.sides[0]], render.SIDES[1 - lesion.sides[0]])
            here = rng.random() < 0.5
            rows.append(("presence", f"is there {n} in the {own if here else other}?", "yes" if here else "no", n))
        elif r < 0.45 and SPEC[n].sides in ("any", "both"):
            rows.append(("presence", f"is the {n} bilateral?", "yes" if len(lesion.sides) == 2 else "no", n))
        else:
            template = choose(("is there evidence of {} in this image?", "is there {}?"))
            rows.append(("presence", template.format(n), "yes", n))
    blocked = set(names).union(*(g for g in EXCLUSIVE if g & set(names)))
    absent = choose([s.name for s in SPECS if s.name not in blocked])
    template = choose(("is there evidence of {} in this image?", "is there {}?"))
    rows.append(("presence", template.format(absent), "no", absent))

    # view
    view = plan.studies[k].view
    r = rng.random()
    if r < 0.5:
        rows.append(("view", "which view is this image taken?", f"{view} view", ""))
    else:
        asked = choose(("PA", "AP"))
        rows.append(("view", f"is this {asked} view?", "yes" if asked == view else "no", ""))

    # location, level, type: one finding each, where some finding has one
    located = [les for les, _ in present if les.location]
    if located:
        lesion = choose(located)
        if len(lesion.sides) == 1 and rng.random() < 0.3:
            rows.append(("location", f"is the {lesion.name} located on the left side or right side?",
                         f"{render.SIDES[lesion.sides[0]]} side", lesion.name))  # fmt: skip
        else:
            template = choose(("where in the image is the {} located?", "where is the {}?"))
            rows.append(("location", template.format(lesion.name), lesion.location, lesion.name))
    levelled = [(les, level) for les, level in present if les.levels]
    if levelled:
        lesion, level = choose(levelled)
        rows.append(("level", f"what level is the {lesion.name}?", lesion.levels[level], lesion.name))
    typed = [les for les, _ in present if les.type]
    if typed:
        lesion = choose(typed)
        rows.append(("type", f"what type is the {lesion.name}?", lesion.type, lesion.name))

    # difference: mostly the whole image, sometimes one lung
    change_areas = rendered["changes"][k - 1]
    if rng.random() < 0.1:
        side = int(rng.integers(2))
        answer, keyword = _difference(plan, k, change_areas, side)
        rows.append(("difference", f"what has changed in the {render.SIDES[side]} lung area?", answer, keyword))
    else:
        answer, keyword = _difference(plan, k, change_areas)
        rows.append(("difference", "what has changed compared to the reference image?", answer, keyword))
    return rows


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


def _assign_splits(plans: list[SubjectPlan], rng: np.random.Generator) -> None:
    """Split by patient: a random 80 % / 10 % / 10 % of the subjects (by rank, so small runs stay balanced)."""
    n = len(plans)
    for rank, i in enumerate(rng.permutation(n)):
        plans[i].split = "train" if rank < round(0.8 * n) else "val" if rank < round(0.9 * n) else "test"


def _validate(pairs, size, seed) -> tuple[int, tuple[int, int]]:
    if isinstance(pairs, bool) or not isinstance(pairs, (int, np.integer)) or pairs < 1:
        raise ValueError(f"pairs={pairs!r}: expected a positive integer")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed={seed!r}: expected a non-negative integer")
    try:
        height, width = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ValueError(f"size={size!r}: expected (height, width)") from None
    if min(height, width) < MIN_SIDE or max(height, width) > 4096:
        raise ValueError(f"size={size!r}: height and width must be between {MIN_SIDE} and 4096 pixels")
    return int(pairs), (height, width)


OUTPUTS = ("mimic_pair_questions.csv", "mimic_all.csv", "mimic-cxr-2.0.0-metadata.csv.gz", "files", "ground_truth")


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
        Counts: subjects, studies, pairs, questions, findings (rows of findings.csv), questions_by_type,
        nothing_changed (difference rows answered "nothing has changed.").
    """
    pairs, size = _validate(pairs, size, seed)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers={workers!r}: expected 0 (automatic) or a positive integer")
    out = Path(out)
    existing = [name for name in OUTPUTS if (out / name).exists()]
    if existing and not overwrite:
        raise ValueError(f"{out}: already holds a release ({', '.join(existing)}); pass overwrite=True (--overwrite)")
    for name in existing:
        shutil.rmtree(out / name) if (out / name).is_dir() else (out / name).unlink()
    for sub in ("masks", "changes"):
        (out / "ground_truth" / sub).mkdir(parents=True, exist_ok=True)

    ids = _Ids(np.random.default_rng([seed, 0]))
    plans, remaining = [], pairs
    while remaining:
        rng = np.random.default_rng([seed, 1, len(plans)])
        n_studies = min(int(rng.integers(2, 5)), remaining + 1)
        plans.append(_plan_subject(rng, ids, n_studies, size))
        remaining -= n_studies - 1
    _assign_splits(plans, np.random.default_rng([seed, 2]))

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

    questions, keywords, studies, metadata, findings, pair_rows = [], [], [], [], [], []
    for plan, result in zip(plans, rendered, strict=True):
        rng = np.random.default_rng(plan.qa_seed)
        for k, study in enumerate(plan.studies):
            present = plan.present(k)
            labels = {c for lesion, _ in present for c in SPEC[lesion.name].chexpert}
            chexpert = ["1.0" if c in labels or (c == "No Finding" and not labels) else "" for c in CHEXPERT]
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
            M = render.compose(study.pose, render.invert(ref.pose))
            _, pair_keyword = _difference(plan, k, result["changes"][k - 1])
            pair_rows.append((study.study_id, ref.study_id, *(f"{v:.10g}" for v in M.ravel()),
                              f"changes/s{study.study_id}_s{ref.study_id}.png", pair_keyword))  # fmt: skip
            for qtype, question, answer, keyword in pair_questions(plan, k, result, rng):
                questions.append((study.study_id, plan.subject_id, ref.study_id, qtype, question, answer, plan.split))
                keywords.append((len(keywords), keyword))

    _write_csv(out / "mimic_pair_questions.csv", QUESTION_COLUMNS, questions)
    _write_csv(out / "mimic_all.csv", STUDY_COLUMNS, studies)
    _write_csv(out / "mimic-cxr-2.0.0-metadata.csv.gz", METADATA_COLUMNS, metadata, compress=True)
    _write_csv(out / "ground_truth" / "findings.csv", FINDINGS_COLUMNS, findings)
    _write_csv(out / "ground_truth" / "pairs.csv", PAIRS_COLUMNS, pair_rows)
    _write_csv(out / "ground_truth" / "questions.csv", ("question_index", "keyword"), keywords)
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
        "questions_by_type": by_type,
        "nothing_changed": sum(1 for row in questions if row[3] == "difference" and row[5] == NOTHING),
    }


# ----------------------------------------------------------------------------------------------------------
# contact sheet


def _outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` (bool) with a 4-neighbour outside it."""
    p = np.pad(mask, 1)
    inner = p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return mask & ~inner


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> list[str]:
    """Greedy word wrap to ``width`` pixels."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}".strip()
            if line and draw.textlength(candidate, font=font) > width:
                lines.append(line)
                line = word
            else:
                line = candidate
        lines.append(line)
    return lines


def contact_sheet(release: str | Path, out: str | Path, pairs: int = 6) -> Path:
    """A PNG grid of the first ``pairs`` pairs: reference | main | reference with the change mask outlined,
    each row labelled with the findings of both visits and the difference answer.

    Works on any release; without ``ground_truth/`` the third panel shows the reference alone.
    """
    import pandas as pd

    release, out = Path(release), Path(out)
    if pairs < 1:
        raise ValueError(f"pairs={pairs!r}: expected a positive integer")
    questions_path = release / "mimic_pair_questions.csv"
    if not questions_path.is_file():
        raise FileNotFoundError(f"{questions_path}: not found; is {release} a release directory?")
    q = pd.read_csv(questions_path, dtype=str, keep_default_na=False)
    q = q[q.question == "what has changed compared to the reference image?"].drop_duplicates(["study_id", "ref_id"])
    studies = pd.read_csv(release / "mimic_all.csv", dtype=str, keep_default_na=False).set_index("study_id")
    truth = release / "ground_truth"
    findings = pairs_gt = None
    if (truth / "pairs.csv").is_file():
        findings = pd.read_csv(truth / "findings.csv", dtype=str, keep_default_na=False)
        pairs_gt = pd.read_csv(truth / "pairs.csv", dtype=str, keep_default_na=False).set_index(["study_id", "ref_id"])

    def describe(study_id: str) -> str:
        if findings is None:
            return "?"
        rows = findings[findings.study_id == study_id]
        parts = [" ".join(filter(None, (r.level, r.type, r["name"]))) + (f" ({r.location})" if r.location else "")
                 for _, r in rows.iterrows()]  # fmt: skip
        return ", ".join(parts) or "no finding"

    def image(study_id: str) -> Image.Image:
        s = studies.loc[study_id]
        return Image.open(release / f"files/p{s.subject_id[:2]}/p{s.subject_id}/s{study_id}/{s.dicom_id}.jpg").convert(
            "L"
        )

    font = ImageFont.load_default()
    tiles = []
    for _, row in q.head(pairs).iterrows():
        ref, main = image(row.ref_id), image(row.study_id)
        overlay = ref.convert("RGB")
        key = (row.study_id, row.ref_id)
        if pairs_gt is not None and key in pairs_gt.index:
            change = np.asarray(Image.open(truth / pairs_gt.loc[key, "change_mask_file"])) > 0
            pixels = np.asarray(overlay).copy()
            pixels[_outline(change)] = (255, 40, 40)
            overlay = Image.fromarray(pixels)
        w, h = ref.width + main.width + overlay.width + 8, max(ref.height, main.height)
        text = (f"subject {row.subject_id}: ref s{row.ref_id} ({studies.loc[row.ref_id, 'study_date']}) -> "
                f"main s{row.study_id} ({studies.loc[row.study_id, 'study_date']})\n"
                f"ref: {describe(row.ref_id)}\nmain: {describe(row.study_id)}\ndiff: {row.answer.strip()}")  # fmt: skip
        scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))
        lines = _wrap(scratch, text, font, w - 8)
        line_h = 12
        tile = Image.new("RGB", (w, h + line_h * len(lines) + 8), (255, 255, 255))
        tile.paste(ref.convert("RGB"), (0, 0))
        tile.paste(main.convert("RGB"), (ref.width + 4, 0))
        tile.paste(overlay, (ref.width + main.width + 8, 0))
        draw = ImageDraw.Draw(tile)
        for i, line in enumerate(lines):
            draw.text((4, h + 4 + i * line_h), line, fill=(0, 0, 0), font=font)
        tiles.append(tile)
    if not tiles:
        raise ValueError(f"{questions_path}: no difference questions to show")
    columns = 2 if len(tiles) > 3 else 1
    rows = -(-len(tiles) // columns)
    cell_w, cell_h = max(t.width for t in tiles), max(t.height for t in tiles)
    sheet = Image.new("RGB", (columns * cell_w + (columns + 1) * 6, rows * cell_h + (rows + 1) * 6), (200, 200, 200))
    for i, tile in enumerate(tiles):
        sheet.paste(tile, (6 + (i % columns) * (cell_w + 6), 6 + (i // columns) * (cell_h + 6)))
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out


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


def simulate_main(argv: list[str]) -> int:
    """``diffvqa simulate --out DIR --pairs N [--seed S] [--size H W] [--overwrite] [--quiet]``."""
    parser = argparse.ArgumentParser(prog="diffvqa simulate", description="Write a longitudinal CXR phantom release.")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--pairs", type=_positive, required=True, help="number of (main, reference) pairs")
    parser.add_argument("--seed", type=_non_negative, default=0)
    parser.add_argument("--size", type=_size, nargs=2, default=(320, 256), metavar=("H", "W"), help="image size")
    parser.add_argument("--overwrite", action="store_true", help="replace a release already in --out")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--workers", type=_non_negative, default=0, help="rendering processes (0 = automatic)")
    args = parser.parse_args(argv)
    try:
        summary = simulate(
            args.out, args.pairs, args.seed, tuple(args.size), not args.quiet, args.overwrite, args.workers
        )
    except ValueError as error:
        parser.error(str(error))
    width = max(map(len, summary))
    for key, value in summary.items():
        print(f"{key:<{width}}  {value}")
    return 0


def contact_sheet_main(argv: list[str]) -> int:
    """``diffvqa contact-sheet --release DIR --out FILE.png [--pairs 6]``."""
    parser = argparse.ArgumentParser(prog="diffvqa contact-sheet", description="Render release pairs to a PNG.")
    parser.add_argument("--release", required=True, help="release directory (a phantom or any release)")
    parser.add_argument("--out", required=True, help="output PNG")
    parser.add_argument("--pairs", type=_positive, default=6)
    args = parser.parse_args(argv)
    if Path(args.out).suffix.lower() != ".png":
        parser.error(f"--out {args.out!r}: expected a .png file name")
    try:
        path = contact_sheet(args.release, args.out, args.pairs)
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(simulate_main(sys.argv[1:]))
