"""The canonical bar format every stage after ingest reads.

Long format, one row per (symbol, bar): ``timestamp`` is the bar's START in UTC,
regular-hours bars only, sorted by ``symbol`` then ``timestamp``.
"""

from __future__ import annotations

import polars as pl

TIMESTAMP_DTYPE = pl.Datetime("us", "UTC")
PRICE_COLUMNS: tuple[str, ...] = ("open", "high", "low", "close")
CANONICAL_SCHEMA: dict[str, pl.DataType] = {
    "timestamp": TIMESTAMP_DTYPE,
    "symbol": pl.String(),
    "open": pl.Float64(),
    "high": pl.Float64(),
    "low": pl.Float64(),
    "close": pl.Float64(),
    "volume": pl.Float64(),
}
CANONICAL_COLUMNS: tuple[str, ...] = tuple(CANONICAL_SCHEMA)
NY_TZ = "America/New_York"


def empty_bars() -> pl.DataFrame:
    """An empty frame with the canonical schema."""
    return pl.DataFrame(schema=CANONICAL_SCHEMA)


def to_canonical(frame: pl.DataFrame) -> pl.DataFrame:
    """Select the canonical columns in order, cast, and sort by symbol then timestamp."""
    return (
        frame.select([pl.col(c).cast(t) for c, t in CANONICAL_SCHEMA.items()])
        .sort(["symbol", "timestamp"])
    )


def session_date(ts: pl.Expr) -> pl.Expr:
    """The New York calendar date of a UTC timestamp: the session a regular-hours bar belongs to."""
    return ts.dt.convert_time_zone(NY_TZ).dt.date()
