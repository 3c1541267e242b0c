"""diffvqa: saliency-guided longitudinal difference VQA on chest X-ray pairs.

Importing the package is cheap: it does not import the training loop, pycocoevalcap or pydicom; the
submodules are imported where they are used (``diffvqa.model``, ``diffvqa.saliency``, ``diffvqa.data``).
"""

__version__ = "0.1.0"
