"""Moved to :mod:`diffvqa.metrics.meteor_nltk`; this module re-exports it."""

from diffvqa.metrics.meteor_nltk import meteor_nltk, meteor_nltk_implementation, meteor_nltk_sentences

__all__ = ["meteor_nltk", "meteor_nltk_implementation", "meteor_nltk_sentences"]
