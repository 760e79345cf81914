"""The canonical bar format every stage after ingest reads.

Long format, one row per (symbol, bar): ``timestamp`` is the bar's START in UTC,
regular-hours bars only, sorted by ``symbol`` then ``timestamp``.
"""

from __future__ import annotations

import datetime as dt

import polars as pl

from data_contracts.bars import BARS_DTYPES
from data_contracts.bars import PRICE_COLUMNS as CONTRACT_PRICE_COLUMNS

# The contract in data_contracts/ is the single source of the canonical dtypes.
CANONICAL_SCHEMA: dict[str, pl.DataType] = dict(BARS_DTYPES)
TIMESTAMP_DTYPE = CANONICAL_SCHEMA["timestamp"]
PRICE_COLUMNS: tuple[str, ...] = CONTRACT_PRICE_COLUMNS
CANONICAL_COLUMNS: tuple[str, ...] = tuple(CANONICAL_SCHEMA)
NY_TZ = "America/New_York"


def to_canonical(frame: pl.DataFrame, sort: bool = True) -> pl.DataFrame:
    """Select the canonical columns in order and cast them; sort by symbol then timestamp.

    ``sort=False`` for frames the caller knows to be in canonical order already.
    """
    out = frame.select([pl.col(c).cast(t) for c, t in CANONICAL_SCHEMA.items()])
    return out.sort(["symbol", "timestamp"]) if sort else out


def session_date(ts: pl.Expr) -> pl.Expr:
    """The New York calendar date of a UTC timestamp: the session a regular-hours bar belongs to."""
    return ts.dt.convert_time_zone(NY_TZ).dt.date()


def training_cutoff(timestamps: pl.Series, train_fraction: float) -> dt.datetime:
    """The first bar start after the training range: the leading ``train_fraction`` of sessions.

    Until folds exist (a later stage), the configured training range is this prefix; a
    fitted quantity (normalisation statistics, the regime model) sees rows before it only.
    """
    days = session_date(pl.col("timestamp"))
    sessions = pl.DataFrame({"timestamp": timestamps}).select(days.unique().sort())["timestamp"]
    if sessions.len() < 2:
        from sentio.errors import DataError

        raise DataError(
            f"need at least two sessions to split off a training range, got {sessions.len()}"
        )
    n_train = min(max(1, int(sessions.len() * train_fraction)), sessions.len() - 1)
    first_test = sessions[n_train]
    frame = pl.DataFrame({"timestamp": timestamps}).filter(days >= first_test)
    cutoff = frame["timestamp"].min()
    assert isinstance(cutoff, dt.datetime)
    return cutoff
