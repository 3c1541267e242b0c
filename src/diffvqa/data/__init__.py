"""The data: the Medical-Diff-VQA + MIMIC-CXR-JPG release and what is made from it.

Leaf to root: :mod:`~diffvqa.data.csv_files` (reading the user's CSVs verbatim), :mod:`~diffvqa.data.images`
(JPEG/PNG/DICOM to gray [0, 1] in an S x S frame), :mod:`~diffvqa.data.ground_truth` (the phantom's truth in a
release), :mod:`~diffvqa.data.release` (the reader: chronology, counted skips), :mod:`~diffvqa.data.cache_truth`,
:mod:`~diffvqa.data.cache_reader` and :mod:`~diffvqa.data.cache_writer` (the prepared cache and its two sides),
:mod:`~diffvqa.data.regions`, :mod:`~diffvqa.data.dataset`, :mod:`~diffvqa.data.text` (tokenizers) and
:mod:`~diffvqa.data.phantom` (the simulator). The release format and its traps: ``docs/data.md``.
"""
