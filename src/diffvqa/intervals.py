"""Moved to :mod:`diffvqa.metrics.intervals`: this old import path is that module itself."""

import sys

from diffvqa.metrics import intervals

sys.modules[__name__] = intervals
