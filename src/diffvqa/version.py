"""diffvqa's version, in a leaf that imports nothing, so every layer reads it without climbing to the package root:
``diffvqa.__version__``, ``diffvqa --version``, a prepared cache's ``prepare.json`` (:mod:`diffvqa.data.cache_writer`),
``run_info.json`` (:mod:`diffvqa.files.provenance`) and the package metadata (pyproject.toml reads it from here).
"""

__version__ = "0.1.0"
