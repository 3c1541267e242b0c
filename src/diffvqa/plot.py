"""Moved to :mod:`diffvqa.report.curves` (``diffvqa plot``); this module re-exports it."""

from diffvqa.report.curves import curve_keys, group_of, main, plot_runs, read_log
from diffvqa.run import find_metrics_log

__all__ = ["curve_keys", "find_metrics_log", "group_of", "main", "plot_runs", "read_log"]
