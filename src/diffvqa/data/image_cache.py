"""Moved to :mod:`diffvqa.data.cache_reader`: this old import path is that module itself."""

import sys

from diffvqa.data import cache_reader

sys.modules[__name__] = cache_reader
