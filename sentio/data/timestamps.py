"""Turning a vendor timestamp column into UTC instants, and inferring the bar frequency."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from sentio.errors import DataError

# Tried in order on string columns; the first that parses every non-empty sample wins.
AWARE_FORMATS = (
    "%Y-%m-%dT%H:%M:%S%.f%z",
    "%Y-%m-%d %H:%M:%S%.f%z",
    "%Y-%m-%dT%H:%M:%S%z",
    "%Y-%m-%d %H:%M:%S%z",
    "%Y-%m-%dT%H:%M%z",
    "%Y-%m-%d %H:%M%z",
)
NAIVE_FORMATS = (
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%dT%H:%M:%S",
    "%Y-%m-%d %H:%M:%S%.f",
    "%Y-%m-%dT%H:%M:%S%.f",
    "%Y-%m-%d %H:%M",
    "%Y-%m-%dT%H:%M",
    "%Y%m%d %H%M%S",
    "%Y%m%d%H%M%S",
    "%Y%m%d %H:%M:%S",
    "%Y%m%d %H%M",
    "%m/%d/%Y %H:%M:%S",
    "%m/%d/%Y %H:%M",
    "%d.%m.%Y %H:%M:%S",
    "%d.%m.%Y %H:%M",
)
DATE_FORMATS = ("%Y-%m-%d", "%Y%m%d", "%m/%d/%Y", "%d.%m.%Y")

DAY_SECONDS = 86_400
_EPOCH_2100 = 4_102_444_800  # 2100-01-01 in epoch seconds


@dataclass(frozen=True)
class ParsedTimestamps:
    """The result of parsing one timestamp column.

    ``values`` is a Datetime column in UTC (intraday) or a Date column (daily, the
    session date as written); rows that could not be parsed are null.
    """

    values: pl.Series
    kind: str  # "datetime" or "date"
    source: str  # how it was read, for the ingest report: format, epoch unit or dtype
    tz_used: str | None
    # Naive local times that do not exist or repeat at a daylight-saving change (null in
    # ``values``): night-time hours, never inside a regular session.
    dst_gap: pl.Series | None = None

    def __post_init__(self) -> None:
        if self.dst_gap is None:
            object.__setattr__(self, "dst_gap", pl.Series("dst_gap", [False] * self.values.len()))


def _epoch_unit(max_abs: int) -> str:
    if max_abs >= 10**17:
        return "ns"
    if max_abs >= 10**14:
        return "us"
    if max_abs >= 10**11:
        return "ms"
    return "s"


def _from_epoch(ints: pl.Series, file: str = "") -> tuple[pl.Series, str]:
    """Epoch integers to UTC; the unit comes from the median magnitude.

    Single values outside 1970-2100 in that unit become null (quarantined as bad
    timestamps); when most are, the column is not epoch time and that is an error.
    """
    median = ints.abs().median()
    unit = _epoch_unit(int(median) if isinstance(median, int | float) else 0)
    per_second = {"ns": 10**9, "us": 10**6, "ms": 10**3, "s": 1}[unit]
    seconds = ints.cast(pl.Int64) // per_second
    in_range = seconds.is_between(0, _EPOCH_2100 - 1).fill_null(False)
    if ints.drop_nulls().len() and in_range.sum() * 2 <= ints.drop_nulls().len():
        example = ints.filter(~in_range).drop_nulls()[0]
        raise DataError(
            f"{file}: column 'timestamp' holds integers read as epoch {unit} outside 1970-2100 "
            f"(e.g. {example}); expected epoch seconds/milliseconds, or dates like YYYYMMDDHHMMSS as text"
        )
    scale = 10**9 // per_second
    nanos = pl.Series(ints.cast(pl.Int64) * scale).set(~in_range, None)
    values = nanos.cast(pl.Datetime("ns", "UTC")).cast(pl.Datetime("us", "UTC"))
    return values, f"epoch-{unit}"


def _pick_format(strings: pl.Series, formats: tuple[str, ...], target: str) -> str | None:
    """The format that parses most of a sample (at least half); single bad rows are quarantined later."""
    sample = strings.drop_nulls().head(2000)
    if sample.len() == 0:
        return None
    best, best_ok = None, 0
    for fmt in formats:
        if target == "date":
            parsed = sample.str.to_date(fmt, strict=False)
        else:
            parsed = sample.str.to_datetime(fmt, strict=False, time_unit="us")
        ok = sample.len() - parsed.null_count()
        if ok == sample.len():
            return fmt
        if ok > best_ok:
            best, best_ok = fmt, ok
    return best if best_ok * 2 >= sample.len() else None


def _localize(values: pl.Series, tz: str) -> pl.Series:
    return values.dt.replace_time_zone(
        tz, ambiguous="null", non_existent="null"
    ).dt.convert_time_zone("UTC")


def parse_timestamps(col: pl.Series, tz: str | None, file: str) -> ParsedTimestamps:
    """Parse a timestamp column of any common vendor form into UTC (or session dates).

    Accepts Datetime (aware or naive), Date, epoch integers (s/ms/us/ns by magnitude, or
    as digit strings) and strings in the formats above. Naive date-times need ``tz``;
    without it a :class:`DataError` says to pass ``--tz``.
    """
    dtype = col.dtype
    if dtype == pl.Date:
        return ParsedTimestamps(col, "date", "date", None)
    if isinstance(dtype, pl.Datetime):
        if dtype.time_zone is None:
            return _naive(col.cast(pl.Datetime("us")), tz, file, f"datetime[{dtype.time_unit}]")
        return ParsedTimestamps(
            col.dt.convert_time_zone("UTC").cast(pl.Datetime("us", "UTC")),
            "datetime",
            f"datetime[{dtype.time_unit}, {dtype.time_zone}]",
            None,
        )
    if dtype.is_integer():
        values, how = _from_epoch(col, file)
        return ParsedTimestamps(values, "datetime", how, None)
    if dtype.is_float():
        raise DataError(
            f"{file}: column 'timestamp' holds floating-point numbers; expected dates or epoch integers"
        )
    if dtype != pl.String:
        raise DataError(f"{file}: column 'timestamp' has type {dtype}; expected dates or times")
    strings = col.str.strip_chars()
    sample = strings.drop_nulls().head(2000)
    compact = _pick_format(strings, ("%Y%m%d%H%M%S", "%Y%m%d%H%M"), "datetime")
    if compact is not None and sample.str.contains(r"^\d{12}(\d{2})?$").all():
        values = strings.str.to_datetime(compact, strict=False, time_unit="us")
        return _naive(values, tz, file, compact)
    if sample.len() and sample.str.contains(r"^-?\d{9,19}$").all():
        ints = strings.cast(pl.Int64, strict=False)
        values, how = _from_epoch(ints, file)
        return ParsedTimestamps(values, "datetime", how, None)
    normalised = strings.str.replace(r"Z$", "+00:00")
    fmt = _pick_format(normalised, AWARE_FORMATS, "datetime")
    if fmt is not None:
        values = normalised.str.to_datetime(fmt, strict=False, time_unit="us", time_zone="UTC")
        return ParsedTimestamps(values, "datetime", fmt, None)
    fmt = _pick_format(strings, NAIVE_FORMATS, "datetime")
    if fmt is not None:
        values = strings.str.to_datetime(fmt, strict=False, time_unit="us")
        return _naive(values, tz, file, fmt)
    fmt = _pick_format(strings, DATE_FORMATS, "date")
    if fmt is not None:
        return ParsedTimestamps(strings.str.to_date(fmt, strict=False), "date", fmt, None)
    example = sample[0] if sample.len() else ""
    raise DataError(
        f"{file}: cannot parse column 'timestamp' (e.g. {example!r}); expected ISO 8601, "
        "'YYYYMMDD HHMMSS', epoch seconds/milliseconds or a date"
    )


def _naive(values: pl.Series, tz: str | None, file: str, how: str) -> ParsedTimestamps:
    if tz is None:
        raise DataError(
            f"{file}: timestamps have no time zone; give their zone with --tz or the ingest.tz "
            "setting (for example America/New_York or UTC)"
        )
    local = _localize(values, tz)
    return ParsedTimestamps(
        local, "datetime", f"{how} in {tz}", tz, dst_gap=values.is_not_null() & local.is_null()
    )


def infer_bar_seconds(ts: pl.DataFrame) -> int:
    """The bar length in seconds: the most common gap between consecutive bars of a symbol.

    ``ts`` has columns ``symbol`` and ``timestamp`` (UTC Datetime). Gaps of a day or more
    mean daily bars (86,400). Raises :class:`DataError` when fewer than two bars exist.
    """
    gaps = (
        ts.lazy()
        .select("symbol", "timestamp")
        .unique()
        .sort("symbol", "timestamp")
        .with_columns(gap=pl.col("timestamp").diff().dt.total_seconds().over("symbol"))
        .filter(pl.col("gap") > 0)
        .group_by("gap")
        .len()
        .sort(["len", "gap"], descending=[True, False])
        .collect()
    )
    if gaps.height == 0:
        raise DataError("cannot infer the bar frequency: need at least two bars of one symbol")
    gap = int(gaps["gap"][0])
    return DAY_SECONDS if gap >= 20 * 3600 else gap


def frequency_label(bar_seconds: int) -> str:
    """A short label for a bar length: 1min, 5min, 1h, 1d, 30s."""
    if bar_seconds >= DAY_SECONDS:
        return "1d"
    if bar_seconds % 3600 == 0:
        return f"{bar_seconds // 3600}h"
    if bar_seconds % 60 == 0:
        return f"{bar_seconds // 60}min"
    return f"{bar_seconds}s"
