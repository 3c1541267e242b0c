"""Moved to :mod:`diffvqa.data.cache_writer` (``diffvqa prepare``): this old import path is that module itself."""

import sys

from diffvqa.data import cache_writer

sys.modules[__name__] = cache_writer
