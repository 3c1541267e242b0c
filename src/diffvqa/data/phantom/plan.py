"""What the phantom shows and when: the findings it can show, and each subject's plan of visits.

``SPECS`` lists the 22 official findings the phantom renders, each with its levels, types, sides, lung zones,
clinical course over visits and prevalence. :func:`plan_subject` draws one patient from a seeded generator:
anatomy, findings with their geometry and their level at every visit, and per visit the ids, date, time, view,
pose and exposure. How a plan looks is :mod:`diffvqa.data.phantom.findings`'s business; what is asked about it,
:mod:`diffvqa.data.phantom.qa`'s; :mod:`diffvqa.data.phantom.simulator` renders and writes it.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

import numpy as np

from diffvqa.data.phantom.anatomy import Anatomy, sample_anatomy
from diffvqa.data.phantom.findings import Lesion, sample_lesion
from diffvqa.data.phantom.imaging import SIDES, Exposure, pose_matrix, sample_exposure

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
    kind: str  # its renderer (findings.KINDS)
    levels: tuple[str, ...] = ()
    types: tuple[str, ...] = ()
    sides: str = "none"
    zones: tuple[str, ...] = ()
    course: str = "acute"
    prevalence: float = 0.1


_LUNG_ZONES = ("upper", "mid", "lower", "base", "mid to lower")
SPECS = (
    Spec("pleural effusion", "effusion", ("small", "moderate", "moderate to large"), ("layering", ""), "any",
         ("base",), "acute", 0.5),
    Spec("blunting of the costophrenic angle", "blunting", (), (), "any", ("base",), "acute", 0.05),
    Spec("cardiomegaly", "heart", ("mild", "moderate", "severe"), (), "none", (), "slow", 0.3),
    Spec("enlargement of the cardiac silhouette", "heart", ("mild", "moderate"), (), "none", (), "slow", 0.07),
    Spec("pneumothorax", "ptx", ("small", "moderate", "moderate to large"), (), "one", ("apical",), "acute", 0.12),
    Spec("lung opacity", "opacity", ("mild", "moderate", "severe"),
         ("patchy", "ground-glass", "focal", "multifocal", ""), "any", (*_LUNG_ZONES, "retrocardiac"), "acute", 0.4),
    Spec("consolidation", "opacity", (), ("dense", "focal", "patchy"), "one", ("upper", "mid", "lower", "base"),
         "acute", 0.12),
    Spec("pneumonia", "opacity", (), ("patchy", "multifocal", "focal", ""), "any", _LUNG_ZONES, "acute", 0.15),
    Spec("atelectasis", "atelectasis", ("minimal", "mild", "moderate"), ("linear", "plate-like", "compressive", ""),
         "any", ("base", "base", "retrocardiac"), "acute", 0.45),
    Spec("edema", "edema", ("mild", "moderate", "severe"), ("interstitial", ""), "both", (), "acute", 0.25),
    Spec("vascular congestion", "congestion", ("mild", "moderate"), (), "none", (), "acute", 0.18),
    Spec("hilar congestion", "hilar", ("mild", "moderate"), (), "none", (), "acute", 0.05),
    Spec("fracture", "fracture", (), (), "one", (), "lasting", 0.05),
    Spec("granuloma", "nodule", (), ("calcified",), "one", ("apical", "upper", "mid", "lower"), "chronic", 0.1),
    Spec("calcification", "nodule", (), ("calcified",), "one", ("upper", "mid", "lower"), "chronic", 0.05),
    Spec("pleural thickening", "thickening", (), (), "any", ("apical",), "chronic", 0.05),
    Spec("tortuosity of the descending aorta", "aorta_desc", ("mild", "moderate"), (), "none", (), "chronic", 0.07),
    Spec("tortuosity of the thoracic aorta", "aorta_arch", ("mild", "moderate"), (), "none", (), "chronic", 0.04),
    Spec("hernia", "hernia", ("small", "moderate"), (), "none", ("retrocardiac",), "chronic", 0.03),
    Spec("gastric distention", "gastric", ("mild", "moderate"), (), "none", (), "acute", 0.03),
    Spec("emphysema", "emphysema", ("mild", "moderate", "severe"), (), "both", (), "chronic", 0.05),
    Spec("scoliosis", "scoliosis", ("mild", "moderate"), (), "none", (), "chronic", 0.05),
)  # fmt: skip
SPEC = {s.name: s for s in SPECS}
EXCLUSIVE = (
    {"cardiomegaly", "enlargement of the cardiac silhouette"},
    {"pleural effusion", "blunting of the costophrenic angle"},
)
# For the finding-level questions: which findings have a side worth asking about.
LATERAL_KINDS = {"effusion", "blunting", "ptx", "opacity", "atelectasis", "edema", "nodule", "thickening", "fracture"}


def _location(spec: Spec, sides: tuple[int, ...], zone: str, rng: np.random.Generator) -> str:
    """The location phrase of a finding, built from the location words of ``docs/data.md``."""
    if zone == "retrocardiac":
        return "retrocardiac"
    if spec.kind == "fracture":
        return f"{SIDES[sides[0]]} rib"
    if not zone:
        return ""
    if len(sides) == 2:
        if zone == "base":
            return "bibasilar" if rng.random() < 0.6 else "left lung base and right lung base"
        return "left apical area and right apical area" if zone == "apical" else "left lung area and right lung area"
    side = SIDES[sides[0]]
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
    exposure: Exposure
    noise_seed: int


@dataclass
class SubjectPlan:
    subject_id: int
    anatomy: Anatomy
    lesions: list[Lesion]
    states: list[list[int | None]]  # per lesion, per study: level index (-1 = no level) or None (absent)
    studies: list[StudyPlan]
    render_seed: int
    qa_seed: int
    split: str = "train"

    def present(self, k: int) -> list[tuple[Lesion, int]]:
        return [(les, st[k]) for les, st in zip(self.lesions, self.states, strict=True) if st[k] is not None]

    def changed(self, k: int) -> list[int]:
        """Indices of the lesions that differ between visit k - 1 (reference) and visit k (main)."""
        return [i for i, course in enumerate(self.states) if course[k] != course[k - 1]]


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


class Ids:
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


def plan_subject(rng: np.random.Generator, ids: Ids, n_studies: int, size: tuple[int, int]) -> SubjectPlan:
    """One patient: anatomy, findings and their course over ``n_studies`` visits, and per visit the ids, date,
    view, pose and exposure. Everything comes from ``rng`` in a fixed order (determinism)."""
    height, width = size
    an = sample_anatomy(rng)
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
        lesion = Lesion(name, spec.kind, sides, zone, type_, spec.levels, _location(spec, sides, zone, rng))
        course = _course(spec, n_studies, rng)
        if all(level is None for level in course):
            continue
        if spec.kind == "emphysema":
            an.emphysema = lesion.severity(course[0])
        if spec.kind == "scoliosis":
            an.scoliosis = float(rng.choice((-1, 1))) * (0.012 + 0.02 * lesion.severity(course[0]))
        lesions.append(lesion)
        states.append(course)
    lesions = [sample_lesion(lesion, an, rng) for lesion in lesions]
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
        pose = pose_matrix(
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
                exposure=sample_exposure(rng),
                noise_seed=int(rng.integers(2**63)),
            )
        )
    return SubjectPlan(ids.subject(), an, lesions, states, studies, int(rng.integers(2**63)), int(rng.integers(2**63)))


def assign_splits(plans: list[SubjectPlan], rng: np.random.Generator) -> None:
    """Split by patient: a random 80 % / 10 % / 10 % of the subjects (by rank, so small runs stay balanced)."""
    n = len(plans)
    for rank, i in enumerate(rng.permutation(n)):
        plans[i].split = "train" if rank < round(0.8 * n) else "val" if rank < round(0.9 * n) else "test"
