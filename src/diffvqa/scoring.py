"""Moved to :mod:`diffvqa.metrics.pointing`: this old import path is that module itself."""

import sys

from diffvqa.metrics import pointing

sys.modules[__name__] = pointing
