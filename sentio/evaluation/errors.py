"""The evaluation package's error: bad inputs to a metric or statistic."""

from __future__ import annotations

from sentio.errors import DataError

__all__ = ["EvaluationError"]


class EvaluationError(DataError, ValueError):
    """Inputs to a metric or statistic are invalid (lengths, values, parameters).

    A :class:`sentio.errors.DataError` (the CLI prints it on one line) and a
    :class:`ValueError` (what numerical code conventionally raises), so either can be caught.
    """
