"""Optional exogenous columns (sentiment, macro, anything with a timestamp) from a user file.

The file (feather/arrow/ipc, parquet or CSV) has a ``timestamp`` column, timezone-aware
(CSV: ISO 8601 with an offset, e.g. ``2024-03-01T15:00:30+00:00``), and numeric columns.
Each numeric column ``name`` becomes the feature ``exo_<name>`` (snake_case) plus a flag
``exo_<name>_stale``.

Timing (DESIGN: the observation at t uses data up to the close of bar t): a row sees the
latest exogenous record stamped at or before its bar's CLOSE (bar start + bar length,
capped at the session close; for daily bars the session close). The join is as-of
backward, so a record stamped after the close is never used. A record older than
``features.exogenous_max_staleness_minutes`` at that moment, no record yet, or a null
value in the latest record counts as missing: the value is null before normalisation
(0 after it, see :mod:`sentio.features.normalise`) and the flag is 1.0; otherwise the
flag is 0.0. Missing values are never forward-filled beyond the staleness limit.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import polars as pl

from sentio.errors import DataError

__all__ = ["exogenous_join", "load_exogenous"]

_NUMERIC = (
    pl.Float32,
    pl.Float64,
    pl.Int8,
    pl.Int16,
    pl.Int32,
    pl.Int64,
    pl.UInt8,
    pl.UInt16,
    pl.UInt32,
    pl.UInt64,
    pl.Boolean,
)


def _snake(name: str) -> str:
    s = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name.strip())
    s = re.sub(r"[^0-9a-zA-Z]+", "_", s).strip("_").lower()
    return s or "value"


def load_exogenous(path: str | Path) -> pl.DataFrame:
    """Read the exogenous file: ``timestamp`` (UTC, sorted, unique) + ``exo_<name>`` Float64.

    Raises :class:`DataError` naming the file for a missing file, an unknown format, a
    missing, naive or duplicated timestamp, or no numeric column.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: exogenous file not found (features.exogenous_path)")
    suffix = p.suffix.lower()
    try:
        if suffix in (".feather", ".arrow", ".ipc"):
            raw = pl.read_ipc(p)
        elif suffix == ".parquet":
            raw = pl.read_parquet(p)
        elif suffix in (".csv", ".txt"):
            raw = pl.read_csv(p, try_parse_dates=False)
        else:
            raise DataError(
                f"{p}: unknown exogenous file type {suffix!r} (use .feather, .parquet or .csv)"
            )
    except (OSError, pl.exceptions.PolarsError) as err:
        raise DataError(f"{p}: cannot read the exogenous file: {err}") from None
    if "timestamp" not in raw.columns:
        raise DataError(f"{p}: the exogenous file needs a 'timestamp' column, got {raw.columns}")
    ts = raw["timestamp"]
    if ts.dtype == pl.String:
        try:
            ts = ts.str.to_datetime(time_unit="us")
        except pl.exceptions.PolarsError as err:
            raise DataError(f"{p}: cannot parse 'timestamp' as ISO 8601: {err}") from None
    if not isinstance(ts.dtype, pl.Datetime):
        raise DataError(f"{p}: 'timestamp' must be a datetime, got {ts.dtype}")
    if ts.dtype.time_zone is None:
        raise DataError(
            f"{p}: 'timestamp' must be timezone-aware (e.g. 2024-03-01T15:00:30+00:00), got naive"
        )
    ts = ts.dt.convert_time_zone("UTC").cast(pl.Datetime("us", "UTC"))
    if ts.null_count():
        raise DataError(f"{p}: 'timestamp' has {ts.null_count()} empty values")
    values = {}
    for name in raw.columns:
        if name == "timestamp":
            continue
        if not isinstance(raw[name].dtype, _NUMERIC):
            continue
        col = f"exo_{_snake(name)}"
        if col in values:
            raise DataError(f"{p}: two exogenous columns map to the same feature name {col!r}")
        values[col] = raw[name].cast(pl.Float64)
    if not values:
        raise DataError(f"{p}: the exogenous file has no numeric column besides 'timestamp'")
    frame = pl.DataFrame({"exo_ts": ts, **values}).sort("exo_ts")
    dup = frame["exo_ts"].is_duplicated()
    if dup.any():
        first = frame.filter(dup)["exo_ts"][0]
        raise DataError(f"{p}: duplicate exogenous timestamp {first} (one record per time)")
    # Non-finite values are missing values.
    return frame.with_columns(
        [pl.when(pl.col(c).is_finite()).then(pl.col(c)).alias(c) for c in values]
    )


def exogenous_join(
    lf: pl.LazyFrame, exo: pl.DataFrame, obs_col: str, max_staleness_minutes: int
) -> tuple[pl.LazyFrame, list[str], list[str]]:
    """As-of backward join of ``exo`` onto ``lf`` at ``obs_col`` (the row's observation time).

    Returns the joined frame, the value columns and the flag columns. Values older than
    the staleness limit become null and their flag 1.0.
    """
    names = [c for c in exo.columns if c != "exo_ts"]
    limit = dt.timedelta(minutes=max_staleness_minutes)
    joined = lf.join_asof(
        exo.lazy(), left_on=obs_col, right_on="exo_ts", strategy="backward", check_sortedness=False
    )
    fresh = pl.col("exo_ts").is_not_null() & ((pl.col(obs_col) - pl.col("exo_ts")) <= limit)
    exprs: list[pl.Expr] = []
    for c in names:
        ok = fresh & pl.col(c).is_not_null()
        exprs.append(pl.when(ok).then(pl.col(c)).otherwise(None).alias(c))
        exprs.append(pl.when(ok).then(0.0).otherwise(1.0).alias(f"{c}_stale"))
    return joined.with_columns(exprs).drop("exo_ts"), names, [f"{c}_stale" for c in names]
