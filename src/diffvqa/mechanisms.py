"""Moved to :mod:`diffvqa.metrics.mechanisms`; this module re-exports it."""

from diffvqa.metrics.mechanisms import MechanismTally

__all__ = ["MechanismTally"]
