"""Exchange sessions from ``exchange_calendars`` as a small polars table.

The calendar, never a hard-coded 09:30-16:00, decides sessions, holidays and early
closes. Times are timezone-aware UTC.
"""

from __future__ import annotations

import datetime as dt
from functools import lru_cache

import exchange_calendars as xcals
import polars as pl

from sentio.errors import DataError

SESSION_SCHEMA: dict[str, pl.DataType] = {
    "session": pl.Date(),
    "open": pl.Datetime("us", "UTC"),
    "close": pl.Datetime("us", "UTC"),
    "minutes": pl.Int32(),
    "early_close": pl.Boolean(),
}


@lru_cache(maxsize=16)
def _sessions_cached(calendar: str, start: dt.date, end: dt.date) -> pl.DataFrame:
    try:
        cal = xcals.get_calendar(calendar, start=start.isoformat(), end=end.isoformat())
    except xcals.errors.InvalidCalendarName:
        raise DataError(f"unknown exchange calendar {calendar!r} (for example 'XNYS')") from None
    except ValueError as err:  # dates outside the calendar's bounds
        raise DataError(f"calendar {calendar}: cannot cover {start}..{end}: {err}") from None
    sched = cal.schedule
    if len(sched) == 0:
        return pl.DataFrame(schema=SESSION_SCHEMA)
    opens = sched["open"]
    closes = sched["close"]
    frame = pl.DataFrame(
        {
            "session": [d.date() for d in sched.index],
            "open": opens.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy(),
            "close": closes.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy(),
        }
    ).with_columns(
        pl.col("open").cast(pl.Datetime("us")).dt.replace_time_zone("UTC"),
        pl.col("close").cast(pl.Datetime("us")).dt.replace_time_zone("UTC"),
    )
    frame = frame.with_columns(
        ((pl.col("close") - pl.col("open")).dt.total_minutes()).cast(pl.Int32).alias("minutes")
    )
    regular = frame["minutes"].max()
    frame = frame.with_columns((pl.col("minutes") < regular).alias("early_close"))
    return frame.select(list(SESSION_SCHEMA))


def sessions(start: dt.date, end: dt.date, calendar: str = "XNYS") -> pl.DataFrame:
    """Sessions with ``start <= session <= end``: date, UTC open and close, minutes, early close.

    ``early_close`` marks sessions shorter than the calendar's regular length (13:00 New
    York closes on NYSE).
    """
    if end < start:
        raise DataError(f"calendar range is empty: start {start} is after end {end}")
    # Build the calendar on a padded range so that one-day queries do not hit its bounds,
    # and cache it: exchange_calendars takes a while to construct.
    lo = dt.date(start.year, 1, 1)
    hi = dt.date(end.year, 12, 31)
    table = _sessions_cached(calendar, lo, hi)
    return table.filter(pl.col("session").is_between(start, end))


def session_gaps(present: pl.Series, calendar: str = "XNYS") -> list[dict[str, object]]:
    """Runs of calendar sessions missing between the first and last of ``present``.

    ``present`` holds the session dates that have data (any order, repeats allowed).
    Each gap is ``{"after": last session present before it, "before": first session
    present after it, "sessions_missing": sessions of the calendar in between}`` (dates
    as ``YYYY-MM-DD``), in time order; no data before the first or after the last present
    session is a gap.
    """
    days = present.drop_nulls().unique().sort()
    if days.len() < 2:
        return []
    first, last = days[0], days[-1]
    assert isinstance(first, dt.date) and isinstance(last, dt.date)
    table = sessions(first, last, calendar)["session"]
    position = table.search_sorted(days)  # index of each present day among the sessions
    skipped = position.diff().drop_nulls() - 1
    out: list[dict[str, object]] = []
    for i in (skipped > 0).arg_true().to_list():
        out.append(
            {
                "after": days[i].isoformat(),
                "before": days[i + 1].isoformat(),
                "sessions_missing": int(skipped[i]),
            }
        )
    return out


def gap_rows(days: pl.Series, calendar: str = "XNYS") -> pl.Series:
    """Per row of ``days`` (session dates in time order), whether one or more calendar
    sessions are missing between the previous row's session and this one (False on the
    first row and within a session)."""
    if days.len() == 0:
        return pl.Series(dtype=pl.Boolean)
    first, last = days.min(), days.max()
    assert isinstance(first, dt.date) and isinstance(last, dt.date)
    table = sessions(first, last, calendar)["session"]
    position = table.search_sorted(days).cast(pl.Int64)
    return (position.diff().fill_null(0) > 1).alias("gap_before")
