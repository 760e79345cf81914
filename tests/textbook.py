"""Textbook indicator loops in plain Python: independent references for the feature tests."""

from __future__ import annotations


def wilder(values: list[float], n: int, first: int) -> list[float | None]:
    """Wilder's smoothing: the mean of ``values[first:first+n]`` on row ``first+n-1``, then
    ``avg_t = (avg_{t-1} (n - 1) + x_t) / n``; None before (and everywhere when too short)."""
    out: list[float | None] = [None] * len(values)
    if len(values) < first + n:
        return out
    avg = sum(values[first : first + n]) / n
    out[first + n - 1] = avg
    for i in range(first + n, len(values)):
        avg = (avg * (n - 1) + values[i]) / n
        out[i] = avg
    return out


def ema(values: list[float], span: int) -> list[float]:
    """Exponential moving average, ``alpha = 2 / (span + 1)``, seeded with the first value."""
    a = 2.0 / (span + 1)
    out = [values[0]]
    for v in values[1:]:
        out.append(a * v + (1 - a) * out[-1])
    return out
