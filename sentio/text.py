"""Numbers as text for people, said once: the report's cells, the registry decision and
the CLI's tables all use :func:`format_number`.

The lowest layer of the library on purpose (standard library only): the registry, the
report and the CLI import it, it imports none of them.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

__all__ = ["MISSING", "format_bytes", "format_number", "warm_start_text"]

MISSING = "n/a"
"""The text of a missing number in the report and the registry decision."""


def format_number(value: Any, digits: int = 3, *, missing: str = MISSING) -> str:
    """A number as text: a real number with ``digits`` decimals, an integer as it is.

    ``missing`` stands for what is not a finite number: None, NaN, an infinity or
    anything that is not a number (a string is not parsed). Integers are written
    without decimals, so counts stay counts (a boolean as ``True`` / ``False``); numpy
    scalars are numbers too.

    >>> format_number(1.23456), format_number(0.5, 1), format_number(1170.0, 0)
    ('1.235', '0.5', '1170')
    >>> format_number(42), format_number(None), format_number(float("nan"), missing="-")
    ('42', 'n/a', '-')
    """
    if isinstance(value, numbers.Integral):
        return str(value)
    if not isinstance(value, numbers.Real):
        return missing
    number = float(value)
    return f"{number:.{digits}f}" if math.isfinite(number) else missing


def format_bytes(size: int) -> str:
    """A size in bytes as people read it: ``812 B``, ``4.2 kB``, ``1.3 GB`` (powers of 1000)."""
    value = float(size)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")  # pragma: no cover


def warm_start_text(plan: Mapping[str, Any] | None, *, reason: bool = True) -> str:
    """How a training started, from its summary's ``warm_start`` (``sentio.warm.WarmPlan``):
    ``from <version>``, ``cold: <why>`` (``cold`` alone without ``reason``), or ``cold``
    (warm starts off: None).

    >>> warm_start_text({"version": "v3", "applies": True, "reason": "ok"})
    'from v3'
    >>> warm_start_text({"version": "v3", "applies": False, "reason": "new features"})
    'cold: new features'
    >>> warm_start_text(None)
    'cold'
    """
    if not plan:
        return "cold"
    if plan.get("applies"):
        return f"from {plan['version']}"
    return f"cold: {plan.get('reason')}" if reason and plan.get("reason") else "cold"
