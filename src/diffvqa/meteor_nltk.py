"""Moved to :mod:`diffvqa.metrics.meteor_nltk`: this old import path is that module itself."""

import sys

from diffvqa.metrics import meteor_nltk

sys.modules[__name__] = meteor_nltk
