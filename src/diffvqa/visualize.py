"""Moved to :mod:`diffvqa.report.drawing`: this old import path is that module itself."""

import sys

from diffvqa.report import drawing

sys.modules[__name__] = drawing
