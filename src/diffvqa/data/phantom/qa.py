"""The phantom's questions and answers: the templates of ``docs/data.md``, verbatim, filled in from a pair's findings.

:func:`pair_questions` writes the ~7 QA rows of one (main, reference) pair of a subject's plan
(:mod:`diffvqa.data.phantom.plan`); :func:`difference_answer` spells a difference in the release's wording,
with the release's list rule (:func:`join_list`). The keyword of every row is the official name of the finding
its answer is about (for a difference, the most visible change that it names).
"""

from __future__ import annotations

import numpy as np

from diffvqa.data.phantom.imaging import SIDES
from diffvqa.data.phantom.plan import EXCLUSIVE, LATERAL_KINDS, SPEC, SPECS, SubjectPlan

NOTHING = "nothing has changed."


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


def pair_difference(
    plan: SubjectPlan, k: int, change_areas: dict[str, int], side: int | None = None
) -> tuple[str, str]:
    """(answer, keyword) of visit k against visit k - 1, optionally restricted to findings on one side."""
    levels, added, removed = [], [], []
    for i in sorted(plan.changed(k), key=lambda i: -change_areas[plan.lesions[i].name]):
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
        question = f"what abnormalities are seen in the {SIDES[s]} lung?"
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
            other = own.replace(SIDES[lesion.sides[0]], SIDES[1 - lesion.sides[0]])
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
            rows.append(
                (
                    "location",
                    f"is the {lesion.name} located on the left side or right side?",
                    f"{SIDES[lesion.sides[0]]} side",
                    lesion.name,
                )
            )
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
        answer, keyword = pair_difference(plan, k, change_areas, side)
        rows.append(("difference", f"what has changed in the {SIDES[side]} lung area?", answer, keyword))
    else:
        answer, keyword = pair_difference(plan, k, change_areas)
        rows.append(("difference", "what has changed compared to the reference image?", answer, keyword))
    return rows
