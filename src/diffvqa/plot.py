"""Moved to :mod:`diffvqa.report.curves` (``diffvqa plot``): this old import path is that module itself."""

import sys

from diffvqa.report import curves

sys.modules[__name__] = curves
