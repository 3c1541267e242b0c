"""Pictures: the HTML report of an evaluation (:mod:`~diffvqa.report.page`, styled by ``report.css``), the drawings
it and ``diffvqa ask`` are made of (:mod:`~diffvqa.report.drawing`) and the training curves
(:mod:`~diffvqa.report.curves`, ``diffvqa plot``). The browsable viewer of every question is :mod:`diffvqa.viewer`.

The package offers the page's API: ``from diffvqa.report import write_report``.
"""

from diffvqa.report.page import (
    IMAGES_DIR,
    REPORT_FILE,
    example_pictures,
    implementation_note,
    metrics_table,
    passes_section,
    per_finding_table,
    per_type_table,
    write_report,
)

__all__ = [
    "IMAGES_DIR",
    "REPORT_FILE",
    "example_pictures",
    "implementation_note",
    "metrics_table",
    "passes_section",
    "per_finding_table",
    "per_type_table",
    "write_report",
]
