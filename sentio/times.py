"""UTC time helpers, said once: parsing, ISO-8601 text and numpy ``datetime64`` conversions.

Conventions of the project (``DESIGN.md``): market timestamps are naive-UTC
``datetime64[us]`` (the START of each bar); files written for people or other programs
carry timezone-aware ISO-8601 UTC text. Two spellings of UTC are in use and both are kept
stable because files already written use them: ``...Z`` (registry, live signals, paper
ledgers: :func:`iso_z`) and ``...+00:00`` (folds, run records: :func:`iso_offset`).

Library code only: no orchestration imports.
"""

from __future__ import annotations

import datetime as dt

import numpy as np

from sentio.errors import DataError

__all__ = [
    "Timestamp",
    "as_utc",
    "from_datetime64",
    "iso_offset",
    "iso_z",
    "now_utc",
    "now_utc_text",
    "to_datetime64",
    "utc64",
]

Timestamp = str | dt.datetime
"""An ISO-8601 string or a datetime (naive means UTC)."""


def as_utc(value: Timestamp, what: str = "timestamp") -> dt.datetime:
    """A timezone-aware UTC datetime from an ISO string or a datetime (naive means UTC).

    Raises:
        DataError: ``value`` is not ISO-8601 (the message names ``what``).

    >>> as_utc("2024-01-10T09:30:00-05:00").isoformat()
    '2024-01-10T14:30:00+00:00'
    """
    if isinstance(value, dt.datetime):
        t = value
    else:
        text = str(value).strip()
        try:
            t = dt.datetime.fromisoformat(text)
        except ValueError:
            raise DataError(
                f"{what} {text!r} is not an ISO-8601 timestamp (e.g. 2024-01-10T14:30:00Z)"
            ) from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return t.astimezone(dt.UTC)


def iso_z(t: dt.datetime) -> str:
    """ISO-8601 UTC text with a ``Z`` suffix (a naive datetime is taken as UTC).

    >>> iso_z(dt.datetime(2024, 1, 10, 14, 30))
    '2024-01-10T14:30:00Z'
    """
    return as_utc(t).isoformat().replace("+00:00", "Z")


def iso_offset(t: dt.datetime | np.datetime64 | str) -> str:
    """ISO-8601 UTC text with a ``+00:00`` suffix, from a datetime, a naive-UTC
    ``datetime64`` or timezone-aware ISO text.

    >>> iso_offset(np.datetime64("2024-01-10T14:30:00"))
    '2024-01-10T14:30:00+00:00'
    >>> iso_offset("2024-01-10T09:30:00-05:00")
    '2024-01-10T14:30:00+00:00'
    """
    if isinstance(t, np.datetime64):
        return from_datetime64(t).isoformat()
    return as_utc(t).isoformat()


def to_datetime64(t: dt.datetime) -> np.datetime64:
    """A datetime (naive means UTC) as a naive-UTC ``datetime64[us]``."""
    return np.datetime64(as_utc(t).replace(tzinfo=None), "us")


def utc64(iso: str) -> np.datetime64:
    """ISO text (naive means UTC) as a naive-UTC ``datetime64[us]``.

    >>> utc64("2024-01-10T09:30:00-05:00")
    np.datetime64('2024-01-10T14:30:00.000000')
    """
    return to_datetime64(as_utc(iso))


def from_datetime64(t: np.datetime64) -> dt.datetime:
    """A naive-UTC ``datetime64`` as a timezone-aware UTC datetime."""
    value = t.astype("datetime64[us]").astype(dt.datetime)
    assert isinstance(value, dt.datetime)
    return value.replace(tzinfo=dt.UTC)


def now_utc() -> dt.datetime:
    """The current time, timezone-aware UTC."""
    return dt.datetime.now(dt.UTC)


def now_utc_text() -> str:
    """The current time as ISO-8601 UTC text with a ``+00:00`` suffix, whole seconds."""
    return now_utc().replace(microsecond=0).isoformat()
