"""diffvqa: saliency-guided longitudinal difference VQA on chest X-ray pairs.

    import diffvqa
    vqa = diffvqa.load("runs/small")    # a run directory or a checkpoint directory; device="auto"
    answer = vqa("now.jpg", "before.jpg", "what has changed compared to the reference image?")

Importing the package is cheap: it does not import torch, the training loop, pycocoevalcap or pydicom. The API
(:func:`load`, :class:`Pipeline`, :class:`Answer`, in ``diffvqa.api``) is imported on first use.
"""

from diffvqa.version import __version__

__all__ = ["Answer", "Pipeline", "__version__", "load"]

_API = {"load", "Pipeline", "Answer"}


def __getattr__(name: str):
    # PEP 562: the API module imports torch and transformers, so it loads when first asked for, not with the package
    if name in _API:
        from diffvqa import api

        return getattr(api, name)
    raise AttributeError(f"module 'diffvqa' has no attribute {name!r}")
