"""Everything diffvqa writes, and how it writes it safely.

Leaf to root: :mod:`~diffvqa.files.disk` (a full disk said in one line), :mod:`~diffvqa.files.atomic` (files
written whole or not at all), :mod:`~diffvqa.files.lock` (one writer per output directory),
:mod:`~diffvqa.files.jsonl` (JSON Lines read with errors that name file and line), :mod:`~diffvqa.files.run`
(the run directory's layout, and its one owner: :class:`~diffvqa.files.run.RunDir`),
:mod:`~diffvqa.files.provenance` (``run_info.json``) and :mod:`~diffvqa.files.model_card` (a checkpoint's
``README.md``; it reads a prepared cache, so it alone imports :mod:`diffvqa.data`).

Importing any of them does not import torch: plotting, the study and the viewer read what a run wrote without
loading the model.
"""
