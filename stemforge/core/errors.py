"""The error every stage raises for bad input: one line that says what is wrong and what to do."""

from __future__ import annotations

__all__ = ["DataError"]


class DataError(ValueError):
    """Bad input data or calibration: the wrong shape, NaN or Inf, a missing or impossible calibration.

    The message is one line; the command-line apps print it as ``error: ...`` and exit with status 2. The analysis
    stage calls it :class:`stemforge.analysis.AnalysisError` (the same class).
    """
