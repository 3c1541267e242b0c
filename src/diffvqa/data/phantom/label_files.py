"""The phantom's finding labels, written in the real files' formats (:mod:`diffvqa.data.labels`).

Per study, from what the study shows (its findings) and what the subject's previous study showed:

* ``mimic-cxr-2.0.0-chexpert.csv.gz`` / ``mimic-cxr-2.0.0-negbio.csv.gz`` — each present finding marks its
  observations (:data:`~diffvqa.data.labels.FINDING_OBSERVATIONS`) positive, ``1.0``; a finding at its lowest
  level is reported hedged ("possible small effusion") with probability 0.3 and marks them uncertain, ``-1.0``,
  instead (a positive from another finding wins); a finding of the previous study that is gone is reported
  negated ("the effusion has resolved") and marks its observations ``0.0`` unless something present marks them;
  No Finding is ``1.0`` when nothing is positive or uncertain; everything else is blank (not mentioned). The two
  labelers draw their hedges independently, so they disagree where real CheXpert and NegBio labels mostly do: on
  uncertainty.
* ``all_diseases.json`` — per study (the generator's record: ``study_id`` and ``subject_id`` as strings,
  ``entity``, ``no_entity``) its present findings by official name, each with its location, level and type, and
  in ``no_entity`` the findings of the previous study that are gone (the generator reads a "has resolved"
  sentence as a negation).

Vascular and hilar congestion are Edema mentions, as heart failure is. The seven phantom findings no observation
covers (calcification, both tortuous aortas, hernia, gastric distention, emphysema, scoliosis) leave the 14
columns untouched: a study showing only such findings reads No Finding = 1, as the CheXpert labeler would read its
report; ``all_diseases.json`` names every finding. The hedges are drawn from their own random stream, so the
images and questions of a seed do not change.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from pathlib import Path

import numpy as np

from diffvqa.data.labels import (
    CHEXPERT_FILE,
    FINDING_OBSERVATIONS,
    FINDINGS_FILE,
    NEGBIO_FILE,
    NO_FINDING,
    OBSERVATIONS,
)
from diffvqa.data.phantom.findings import Lesion
from diffvqa.data.phantom.plan import SubjectPlan

HEDGED = 0.3  # probability that a finding at its lowest level is reported uncertain
LABELERS = (CHEXPERT_FILE, NEGBIO_FILE)


def observation_values(plan: SubjectPlan, k: int, rng: np.random.Generator) -> dict[str, str]:
    """Observation -> "1.0" | "0.0" | "-1.0" | "" for study k of ``plan`` (module docstring)."""
    values: dict[str, str] = {}
    present = {lesion.name for lesion, _ in plan.present(k)}
    for lesion, level in plan.present(k):
        hedged = level == 0 and len(lesion.levels) > 1 and rng.random() < HEDGED
        for observation in FINDING_OBSERVATIONS[lesion.name]:
            if not hedged:
                values[observation] = "1.0"
            elif values.get(observation) != "1.0":
                values[observation] = "-1.0"
    if k:
        for lesion, _ in plan.present(k - 1):
            if lesion.name not in present:
                for observation in FINDING_OBSERVATIONS[lesion.name]:
                    values.setdefault(observation, "0.0")
    if not any(v in ("1.0", "-1.0") for v in values.values()):
        values[NO_FINDING] = "1.0"
    return {o: values.get(o, "") for o in OBSERVATIONS}


def _attributes(lesion: Lesion, level: int) -> dict:
    """A finding's entry in ``entity``, keyed as the dataset's generator writes it: each attribute a list of
    phrases (its consumers join them with spaces) or null."""

    def phrases(text: str) -> list[str] | None:
        return [text] if text else None

    return {
        "entity_name": lesion.name,
        "location": phrases(lesion.location),
        "type": phrases(lesion.type),
        "level": phrases(lesion.levels[level] if level >= 0 else ""),
        "post_location": None,
        "location2": None,
        "type2": None,
        "level2": None,
        "post_location2": None,
    }


def write_label_files(out: Path, plans: list[SubjectPlan], seed: int) -> dict[str, int]:
    """Write the three label files into the release directory ``out``; returns row counts per file."""
    rows: dict[str, list[list]] = {file: [] for file in LABELERS}
    diseases = []
    for plan in plans:
        for k, study in enumerate(plan.studies):
            for j, file in enumerate(LABELERS):
                rng = np.random.default_rng([seed, 17, j, study.study_id])  # its own stream (module docstring)
                values = observation_values(plan, k, rng)
                rows[file].append([plan.subject_id, study.study_id, *(values[o] for o in OBSERVATIONS)])
            present = plan.present(k)
            entity = {lesion.name: _attributes(lesion, level) for lesion, level in present}
            names = set(entity)
            gone = [lesion.name for lesion, _ in (plan.present(k - 1) if k else []) if lesion.name not in names]
            diseases.append(
                {
                    "study_id": str(study.study_id),
                    "subject_id": str(plan.subject_id),
                    "entity": entity,
                    "no_entity": gone,
                }
            )
    for file, table in rows.items():
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(["subject_id", "study_id", *OBSERVATIONS])
        writer.writerows(sorted(table, key=lambda r: (r[0], r[1])))
        # mtime=0: the same seed writes byte-identical files
        (out / file).write_bytes(gzip.compress(text.getvalue().encode(), mtime=0))
    (out / FINDINGS_FILE).write_text(json.dumps(diseases, indent=1) + "\n")
    return {CHEXPERT_FILE: len(rows[CHEXPERT_FILE]), NEGBIO_FILE: len(rows[NEGBIO_FILE]), FINDINGS_FILE: len(diseases)}
