"""The longitudinal chest X-ray phantom: a simulator that writes a Medical-Diff-VQA + MIMIC-CXR-JPG release with
ground truth no real dataset has (format and ground-truth contract: :mod:`diffvqa.data.phantom.simulator`).

Modules, leaf to root: :mod:`~diffvqa.data.phantom.imaging` (frames, raster primitives, pose, exposure),
:mod:`~diffvqa.data.phantom.anatomy`, :mod:`~diffvqa.data.phantom.findings`, :mod:`~diffvqa.data.phantom.plan`
(what each subject shows and when), :mod:`~diffvqa.data.phantom.qa` (questions and answers),
:mod:`~diffvqa.data.phantom.sheet` (contact sheet), :mod:`~diffvqa.data.phantom.region_files` (the regions, changes
and findings as Chest ImaGenome and MS-CXR write them) and :mod:`~diffvqa.data.phantom.simulator` (renders and
writes the release; the ``simulate`` and ``contact-sheet`` commands).
"""

from diffvqa.data.phantom.sheet import contact_sheet
from diffvqa.data.phantom.simulator import contact_sheet_main, simulate, simulate_main

__all__ = ["contact_sheet", "contact_sheet_main", "simulate", "simulate_main"]
