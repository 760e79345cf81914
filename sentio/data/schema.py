"""The canonical bar format every stage after ingest reads.

Long format, one row per (symbol, bar): ``timestamp`` is the bar's START in UTC,
regular-hours bars only, sorted by ``symbol`` then ``timestamp``.
"""

from __future__ import annotations

import polars as pl

from data_contracts.bars import BARS_DTYPES
from data_contracts.bars import PRICE_COLUMNS as CONTRACT_PRICE_COLUMNS

# The contract in data_contracts/ is the single source of the canonical dtypes.
CANONICAL_SCHEMA: dict[str, pl.DataType] = dict(BARS_DTYPES)
TIMESTAMP_DTYPE = CANONICAL_SCHEMA["timestamp"]
PRICE_COLUMNS: tuple[str, ...] = CONTRACT_PRICE_COLUMNS
CANONICAL_COLUMNS: tuple[str, ...] = tuple(CANONICAL_SCHEMA)
NY_TZ = "America/New_York"


def empty_bars() -> pl.DataFrame:
    """An empty frame with the canonical schema."""
    return pl.DataFrame(schema=CANONICAL_SCHEMA)


def to_canonical(frame: pl.DataFrame, sort: bool = True) -> pl.DataFrame:
    """Select the canonical columns in order and cast them; sort by symbol then timestamp.

    ``sort=False`` for frames the caller knows to be in canonical order already.
    """
    out = frame.select([pl.col(c).cast(t) for c, t in CANONICAL_SCHEMA.items()])
    return out.sort(["symbol", "timestamp"]) if sort else out


def session_date(ts: pl.Expr) -> pl.Expr:
    """The New York calendar date of a UTC timestamp: the session a regular-hours bar belongs to."""
    return ts.dt.convert_time_zone(NY_TZ).dt.date()
