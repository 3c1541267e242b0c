"""Moved to :mod:`diffvqa.data.cache_writer` (``diffvqa prepare``); this module re-exports it."""

from diffvqa.data.cache_writer import merge_shards, prepare, prepare_main

__all__ = ["merge_shards", "prepare", "prepare_main"]
