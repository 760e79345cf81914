"""Timestamps in the report: naive UTC for ordering and joins, New York wall-clock time
for axes and tables.

Library code only: no orchestration imports.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from sentio.data.schema import NY_TZ


def _naive_utc(ts: pl.Series) -> pl.Series:
    """Timestamps as naive UTC microseconds (tz-aware ones converted)."""
    if isinstance(ts.dtype, pl.Datetime) and ts.dtype.time_zone is not None:
        ts = ts.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
    return ts.cast(pl.Datetime("us"))


def _new_york(ts: pl.Series) -> pl.Series:
    """Naive New York wall-clock times of UTC timestamps (for axes and tables)."""
    return (
        _naive_utc(ts)
        .dt.replace_time_zone("UTC")
        .dt.convert_time_zone(NY_TZ)
        .dt.replace_time_zone(None)
    )


def _ny_stamp(text: str) -> np.datetime64:
    """An ISO time (naive = UTC) as a naive New York ``datetime64``.

    Raises:
        DataError: ``text`` is not ISO-8601.
    """
    import zoneinfo

    from sentio.times import as_utc

    t = as_utc(text)
    return np.datetime64(t.astimezone(zoneinfo.ZoneInfo(NY_TZ)).replace(tzinfo=None), "us")
