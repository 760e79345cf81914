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
