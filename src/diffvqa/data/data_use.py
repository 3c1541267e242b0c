"""The data-use warning every output made from MIMIC-CXR carries (model cards, the report, the viewer).

MIMIC-CXR-JPG and Medical-Diff-VQA are credentialed PhysioNet data. Their data-use agreement forbids sharing the
data with anyone who has not signed it; a report or viewer embeds image strips and answers derived from it, and a
checkpoint is trained on it. Outputs of the phantom carry no warning: it holds no patient data.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

DATA_USE_WARNING = (
    "Made from MIMIC-CXR data: it falls under the PhysioNet Credentialed Health Data Use Agreement. Do not share "
    "it (weights, predictions, reports, viewers or pictures) with anyone who has not signed that agreement, and "
    "do not post it publicly."
)


def needs_data_use_warning(metrics: Mapping[str, Any] | None) -> bool:
    """Whether an evaluation's outputs come from credentialed data: every evaluation not known to be of the phantom
    (``metrics.json`` ``run.phantom``), older ones without the flag included -- a missing warning costs more than
    a superfluous one."""
    run = (metrics or {}).get("run")
    return not (isinstance(run, Mapping) and run.get("phantom") is True)
