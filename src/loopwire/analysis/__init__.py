"""Analysis: the lift of a journey over its holdout (`lift.py`, formulas in `stats.py`) and its
renderings as a terminal table, JSON and a self-contained HTML page (`report.py`)."""

from loopwire.analysis.lift import Assignment, Conversion, LiftReport, compute

__all__ = ["Assignment", "Conversion", "LiftReport", "compute"]
