"""Moved to :mod:`diffvqa.metrics.mechanisms`: this old import path is that module itself."""

import sys

from diffvqa.metrics import mechanisms

sys.modules[__name__] = mechanisms
