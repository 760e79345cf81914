"""Contract-checked ingest: vendor bar files in, canonical bars out.

:func:`ingest_files` reads feather, parquet and CSV files, maps vendor column names,
parses timestamps to UTC bar starts, keeps regular-hours bars of the exchange
calendar, and sorts every row into exactly one bucket::

    rows_read = rows_kept + rows_dropped_outside_regular_hours
                + rows_dropped_duplicates + rows_quarantined

Dropped rows are expected and harmless (extended-hours bars, exact duplicates);
quarantined rows are bad data and go to ``<out>.quarantine.csv`` with the file, row
and reason of each. Past ``ingest.max_quarantine_fraction`` (or with
``ingest.on_bad_rows = "error"``) the ingest fails instead. The kept bars are checked
against the pandera contract and the Great Expectations suite before the output is
written atomically, with a JSON ingest report, the GX result (JSON and Data Docs HTML)
and the configuration beside it. Input files are only read, never modified.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import polars as pl

from sentio import __version__
from sentio.calendar import session_gaps
from sentio.calendar import sessions as calendar_sessions
from sentio.config import SentioConfig, write_config
from sentio.data.provenance import provenance_path, read_provenance, write_provenance
from sentio.data.readers import RawFile, read_file
from sentio.data.schema import NY_TZ, PRICE_COLUMNS, TIMESTAMP_DTYPE
from sentio.data.timestamps import DAY_SECONDS, frequency_label, infer_bar_seconds, parse_timestamps
from sentio.errors import ContractError, DataError, QuarantineLimitError
from sentio.io import (
    atomic_write,
    feather_output,
    sha256_file,
    sidecar,
    write_feather_atomic,
    write_json_atomic,
)
from sentio.times import now_utc_text

# Every quarantine reason. A row gets one reason: the first failing check, in the order of
# the steps (parse and value checks, sessions, grid, duplicates, session completeness).
REASONS = (
    "bad_timestamp",
    "missing_symbol",
    "missing_value",
    "non_numeric_value",
    "non_finite_value",
    "non_positive_price",
    "negative_volume",
    "high_below_low",
    "ohlc_inconsistent",
    "not_a_session",
    "off_grid_timestamp",
    "duplicate_timestamp_conflict",
    "incomplete_session",
)
_VALUES = (*PRICE_COLUMNS, "volume")


@dataclass(frozen=True)
class IngestOutputs:
    """Where an ingest writes its files, all derived from the output path."""

    bars: Path
    report: Path
    quarantine: Path
    gx_json: Path
    gx_html: Path
    config: Path
    provenance: Path

    @classmethod
    def for_output(cls, out: str | Path) -> IngestOutputs:
        out = feather_output(out)
        return cls(
            bars=out,
            report=sidecar(out, "ingest.json"),
            quarantine=sidecar(out, "quarantine.csv"),
            gx_json=sidecar(out, "gx.json"),
            gx_html=sidecar(out, "gx.html"),
            config=sidecar(out, "config.yaml"),
            provenance=provenance_path(out),
        )

    def all(self) -> tuple[Path, ...]:
        """Every file an ingest to this output may write."""
        return (
            self.bars,
            self.report,
            self.quarantine,
            self.gx_json,
            self.gx_html,
            self.config,
            self.provenance,
        )


@dataclass(frozen=True)
class IngestResult:
    """What an ingest produced: the paths and the (small) report."""

    outputs: IngestOutputs
    report: dict[str, Any]

    @property
    def output(self) -> Path:
        return self.outputs.bars


def _numeric(col: str, dtype: pl.DataType, file: str) -> tuple[pl.Expr, pl.Expr]:
    """A Float64 expression for ``col`` and a flag of values that were present but not numbers."""
    if dtype == pl.String:
        stripped = pl.col(col).str.strip_chars()
        value = stripped.cast(pl.Float64, strict=False)
        bad = stripped.is_not_null() & (stripped != "") & value.is_null()
        return value, bad
    if dtype.is_numeric() or dtype == pl.Null:
        return pl.col(col).cast(pl.Float64), pl.lit(False)
    raise DataError(f"{file}: column {col!r} has type {dtype}; expected numbers")


def _prepare(raw: RawFile, index: int, cfg: SentioConfig) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Parse one mapped file into the working frame: typed values plus a reason column."""
    file = str(raw.path)
    icfg = cfg.ingest
    frame = raw.frame
    parsed = parse_timestamps(frame["timestamp"], icfg.tz, file)
    info: dict[str, Any] = {
        "path": file,
        "format": raw.format,
        "rows_read": raw.rows,
        "column_mapping": raw.mapping,
        "ignored_columns": raw.ignored,
        "timestamp_format": parsed.source,
    }
    if raw.delimiter is not None:
        info["delimiter"] = raw.delimiter
        info["header"] = raw.header
    symbol = _symbol(frame, icfg.symbol, file, info)
    exprs = [
        pl.lit(index, pl.Int32).alias("__file"),
        pl.int_range(1, pl.len() + 1, dtype=pl.Int64).alias("__row"),
        symbol.alias("symbol"),
    ]
    work = frame.with_columns(__ts=parsed.values, __dst_gap=parsed.dst_gap)
    # Build the value expressions and their reasons in check order.
    values: dict[str, pl.Expr] = {}
    non_numeric: list[pl.Expr] = []
    for col in _VALUES:
        value, bad = _numeric(col, frame.schema[col], file)
        values[col] = value
        non_numeric.append(bad)
    work = work.with_columns(
        *exprs,
        *[v.alias(f"__{c}") for c, v in values.items()],
        __non_numeric=pl.any_horizontal(non_numeric),
    )
    work = work.with_columns(__reason=_first_reason(_row_checks()))
    if parsed.kind == "date":
        work = work.with_columns(__date=pl.col("__ts"))
    else:
        local = pl.col("__ts").dt.convert_time_zone(parsed.tz_used or "UTC")
        work = work.with_columns(__date=local.dt.date())
    info["timestamp_kind"] = parsed.kind
    out = work.select(
        "__file",
        "__row",
        "__ts",
        "__date",
        "symbol",
        *[pl.col(f"__{c}").alias(c) for c in _VALUES],
        "__reason",
        # Local times that do not exist or repeat at a DST change are night-time hours.
        pl.when(pl.col("__dst_gap") & pl.col("__reason").is_null())
        .then(pl.lit("outside_regular_hours"))
        .alias("__drop"),
    )
    return out, info


def _symbol(frame: pl.DataFrame, option: str | None, file: str, info: dict[str, Any]) -> pl.Expr:
    """The symbol of each row: the file's column (normalised) or ``--symbol``; noted in ``info``."""
    if "symbol" in frame.columns:
        # Tickers are case-insensitive: ' qqq' and 'QQQ' are one series (counted in the report).
        given = pl.col("symbol").cast(pl.String)
        symbol = given.str.strip_chars().str.to_uppercase()
        info["symbols_normalised"] = int(
            frame.select((given != given.str.strip_chars().str.to_uppercase()).sum()).item() or 0
        )
        if option is not None:
            info["symbol_option_ignored"] = "the file has its own symbol column"
        return symbol
    if option is not None:
        return pl.lit(option, pl.String)
    raise DataError(f"{file}: no symbol column; pass --symbol (for example --symbol SPY)")


def _row_checks() -> list[tuple[str, pl.Expr]]:
    """The parse and value checks of a working row, in check order (see :data:`REASONS`)."""
    v = {c: pl.col(f"__{c}") for c in _VALUES}
    return [
        ("bad_timestamp", pl.col("__ts").is_null() & ~pl.col("__dst_gap")),
        ("missing_symbol", pl.col("symbol").is_null() | (pl.col("symbol") == "")),
        ("non_numeric_value", pl.col("__non_numeric")),
        ("missing_value", pl.any_horizontal([x.is_null() for x in v.values()])),
        ("non_finite_value", pl.any_horizontal([~x.is_finite() for x in v.values()])),
        ("non_positive_price", pl.any_horizontal([v[c] <= 0 for c in PRICE_COLUMNS])),
        ("negative_volume", v["volume"] < 0),
        ("high_below_low", v["high"] < v["low"]),
        (
            "ohlc_inconsistent",
            (v["high"] < pl.max_horizontal(v["open"], v["close"]))
            | (v["low"] > pl.min_horizontal(v["open"], v["close"])),
        ),
    ]


def _first_reason(checks: list[tuple[str, pl.Expr]], current: pl.Expr | None = None) -> pl.Expr:
    """A string column holding the name of the first check that is true, else ``current``."""
    expr = pl.lit(None, pl.String) if current is None else current
    for name, cond in reversed(checks):
        expr = pl.when(cond.fill_null(False)).then(pl.lit(name)).otherwise(expr)
    if current is not None:
        return pl.when(current.is_not_null()).then(current).otherwise(expr)
    return expr


def _mark(frame: pl.DataFrame, name: str, cond: pl.Expr) -> pl.DataFrame:
    """Give still-clean rows where ``cond`` holds the quarantine reason ``name``."""
    return frame.with_columns(
        __reason=pl.when(
            pl.col("__reason").is_null() & pl.col("__drop").is_null() & cond.fill_null(False)
        )
        .then(pl.lit(name))
        .otherwise(pl.col("__reason"))
    )


def _clean() -> pl.Expr:
    return pl.col("__reason").is_null() & pl.col("__drop").is_null()


def _place_in_sessions(
    work: pl.DataFrame, bar_seconds: int, cfg: SentioConfig
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Attach sessions; drop bars outside regular hours; set daily bars to the session open."""
    dates = work.filter(pl.col("__date").is_not_null())["__date"]
    if dates.len() == 0:
        return work.with_columns(timestamp=pl.lit(None, TIMESTAMP_DTYPE)), pl.DataFrame()
    lo, hi = dates.min(), dates.max()
    assert isinstance(lo, dt.date) and isinstance(hi, dt.date)
    table = (
        calendar_sessions(lo, hi, cfg.universe.calendar)
        .rename({"open": "__open", "close": "__close", "minutes": "__minutes"})
        .drop("early_close")
    )
    if bar_seconds >= DAY_SECONDS:
        work = work.join(table, left_on="__date", right_on="session", how="left")
        work = work.with_columns(timestamp=pl.col("__open"), __session=pl.col("__date"))
        work = _mark(work, "not_a_session", pl.col("__open").is_null())
        return work, table
    # Intraday: the session is the New York date of the bar start.
    work = work.with_columns(__session=pl.col("__ts").dt.convert_time_zone(NY_TZ).dt.date())
    work = work.join(table, left_on="__session", right_on="session", how="left")
    outside = (
        pl.col("__open").is_null()
        | (pl.col("__ts") < pl.col("__open"))
        | (pl.col("__ts") >= pl.col("__close"))
    )
    # Bars outside regular hours are dropped whatever their values: Sentio never uses
    # them, so a bad pre-market print is no reason to reject a file.
    movable = pl.col("__ts").is_not_null() & pl.col("__drop").is_null() & outside.fill_null(True)
    work = work.with_columns(
        timestamp=pl.col("__ts"),
        __drop=pl.when(movable).then(pl.lit("outside_regular_hours")).otherwise(pl.col("__drop")),
        __reason=pl.when(movable).then(pl.lit(None, pl.String)).otherwise(pl.col("__reason")),
    )
    off_grid = ((pl.col("__ts") - pl.col("__open")).dt.total_seconds() % bar_seconds) != 0
    work = _mark(work, "off_grid_timestamp", off_grid)
    return work, table


def _resolve_duplicates(work: pl.DataFrame) -> pl.DataFrame:
    """Exact duplicates of (symbol, timestamp) are dropped; conflicting ones quarantined."""
    keys = ["symbol", "timestamp"]
    work = work.with_columns(
        __n=pl.when(_clean()).then(pl.len().over(pl.when(_clean()).then(pl.struct(keys))))
    )
    dup = work.filter(pl.col("__n") > 1)
    if dup.height == 0:
        return work.drop("__n")
    groups = dup.group_by(keys).agg(
        __distinct=pl.struct(list(_VALUES)).n_unique(),
        __first=pl.col("__row").min(),
        __first_file=pl.col("__file").min(),
    )
    work = work.join(groups, on=keys, how="left")
    conflict = pl.col("__distinct") > 1
    work = _mark(work, "duplicate_timestamp_conflict", (pl.col("__n") > 1) & conflict)
    # Of identical duplicates keep the first occurrence (lowest file, then row).
    rank = (
        pl.struct("__file", "__row")
        .rank("ordinal")
        .over(pl.when(_clean() & (pl.col("__n") > 1)).then(pl.struct(keys)))
    )
    work = work.with_columns(
        __drop=pl.when(_clean() & (pl.col("__n") > 1) & ~conflict.fill_null(False) & (rank > 1))
        .then(pl.lit("duplicate"))
        .otherwise(pl.col("__drop"))
    )
    return work.drop("__n", "__distinct", "__first", "__first_file")


def _coverage(
    work: pl.DataFrame,
    table: pl.DataFrame,
    bar_seconds: int,
    *,
    ongoing: bool,
    spans: pl.DataFrame,
) -> pl.DataFrame:
    """Bars present and expected for every (symbol, session) between a symbol's first and last session.

    Intraday, a symbol's first session is expected from its first bar on: data may start
    inside a session (a download begun at noon, the rest of a session delivered the next
    morning), and it stays the first session as later data is added. With ``ongoing``
    (a live signal during the session) the last session is expected only up to its last
    bar: the bars after it have not happened yet. Bars missing inside those spans still
    count; every other session is expected whole. ``spans``: the symbols' first and last
    sessions to use (:func:`_spans` of the bars before any session was rejected).
    ``whole``: the bars of the whole session.
    """
    kept = work.filter(_clean())
    if kept.height == 0 or table.height == 0:
        return pl.DataFrame(
            schema={
                "symbol": pl.String,
                "session": pl.Date,
                "expected": pl.Int64,
                "present": pl.Int64,
                "missing": pl.Int64,
                "whole": pl.Int64,
            }
        )
    slot = (pl.col("timestamp") - pl.col("__open")).dt.total_seconds() // bar_seconds
    present = (
        kept.group_by("symbol", "__session")
        .agg(present=pl.len(), __lo=slot.min().cast(pl.Int64), __hi=slot.max().cast(pl.Int64))
        .rename({"__session": "session"})
    )
    if bar_seconds >= DAY_SECONDS:
        whole = pl.lit(1, pl.Int64)
        expected = whole
    else:
        whole = (pl.col("__minutes").cast(pl.Int64) * 60 + bar_seconds - 1) // bar_seconds
        lo = pl.when(pl.col("session") == pl.col("first")).then(pl.col("__lo")).otherwise(0)
        hi = pl.col("__whole")
        if ongoing:
            last = (pl.col("session") == pl.col("last")) & pl.col("__hi").is_not_null()
            hi = pl.when(last).then(pl.col("__hi") + 1).otherwise(hi)
        expected = (hi - lo.fill_null(0)).clip(lower_bound=0)
    grid = (
        spans.join(table.select("session", "__minutes"), how="cross")
        .filter(pl.col("session").is_between(pl.col("first"), pl.col("last")))
        .with_columns(__whole=whole)
    )
    return (
        grid.join(present, on=["symbol", "session"], how="left")
        .with_columns(present=pl.col("present").fill_null(0).cast(pl.Int64))
        .with_columns(expected=expected)
        .with_columns(missing=(pl.col("expected") - pl.col("present")).clip(lower_bound=0))
        .select("symbol", "session", "expected", "present", "missing", whole="__whole")
        .sort("symbol", "session")
    )


def _spans(work: pl.DataFrame) -> pl.DataFrame:
    """Every symbol's first and last session among the clean rows of ``work``."""
    return (
        work.filter(_clean())
        .group_by("symbol")
        .agg(first=pl.col("__session").min(), last=pl.col("__session").max())
    )


def _example(quarantined: pl.DataFrame, files: list[str]) -> str:
    first = quarantined.sort("__file", "__row").row(0, named=True)
    return f"{files[first['__file']]} row {first['__row']}: {first['__reason']}"


def _write_quarantine(path: Path, q: pl.DataFrame, raws: list[RawFile]) -> None:
    """Write quarantined rows with the values as given, the file, row and reason."""
    parts = []
    for i, raw in enumerate(raws):
        rows = q.filter(pl.col("__file") == i).select("__row", "__reason")
        if rows.height == 0:
            continue
        original = raw.original
        given = original.with_row_index("__row", offset=1).select(
            pl.col("__row").cast(pl.Int64), *[pl.col(c).cast(pl.String) for c in original.columns]
        )
        part = rows.join(given, on="__row", how="left").select(
            pl.lit(str(raw.path)).alias("source_file"),
            pl.col("__row").alias("source_row"),
            pl.col("__reason").alias("reason"),
            *[pl.col(c) for c in original.columns],
        )
        parts.append(part)
    frame = pl.concat(parts, how="diagonal_relaxed").sort("source_file", "source_row")
    atomic_write(path, lambda tmp: frame.write_csv(tmp))


def ingest_files(
    inputs: Sequence[str | Path],
    out: str | Path,
    cfg: SentioConfig | None = None,
    input_sha256: Mapping[Path, str] | None = None,
    *,
    ongoing: bool = False,
) -> IngestResult:
    """Ingest vendor bar files into one canonical, contract-checked feather file at ``out``.

    ``ongoing``: the bars are those of a live signal, whose last session may still be in
    progress: it is expected only up to its last bar (see :func:`_coverage`; the report's
    ``partial_sessions`` names it). Training and paper trading ingest without it.

    Raises :class:`DataError` for unreadable input, :class:`QuarantineLimitError` when too
    many rows are rejected and :class:`ContractError` when the kept bars violate a data
    contract. See the module docstring for the accounting and the files written.
    """
    cfg = cfg or SentioConfig()
    if not inputs:
        raise DataError("no input files given")
    outputs = IngestOutputs.for_output(out)
    resolved = [Path(p) for p in inputs]
    ours = set(outputs.all())
    for p in resolved:
        if p.exists() and p.resolve() in ours:
            raise DataError(f"{p}: ingest would overwrite this input file; choose another --out")
    raws = [read_file(p, cfg.ingest.columns) for p in resolved]
    frames, input_info = _prepare_inputs(raws, cfg, input_sha256)
    work = pl.concat(frames, how="vertical_relaxed")
    rows_read = work.height
    valid_ts = work.filter(_clean())
    if valid_ts.height < 2:
        _fail_too_few(work, outputs, input_info, raws)
    if any(info["timestamp_kind"] == "date" for info in input_info):
        bar_seconds = DAY_SECONDS
    else:
        bar_seconds = infer_bar_seconds(
            valid_ts.select("symbol", pl.col("__ts").alias("timestamp"))
        )
    if cfg.ingest.bar_timestamp == "end" and bar_seconds < DAY_SECONDS:
        work = work.with_columns(
            __ts=pl.col("__ts") - pl.duration(seconds=bar_seconds),
        ).with_columns(__date=pl.col("__ts").dt.convert_time_zone(NY_TZ).dt.date())

    work, table = _place_in_sessions(work, bar_seconds, cfg)
    work = _resolve_duplicates(work)
    work, coverage, incomplete = _reject_incomplete_sessions(work, table, bar_seconds, cfg, ongoing)

    quarantined = work.filter(pl.col("__reason").is_not_null())
    kept = work.filter(_clean())
    bars = kept.select(
        pl.col("timestamp").cast(TIMESTAMP_DTYPE), "symbol", *[pl.col(c) for c in _VALUES]
    ).sort("symbol", "timestamp")
    report = _report(
        cfg,
        outputs,
        input_info,
        rows_read=rows_read,
        work=work,
        quarantined=quarantined,
        kept=kept,
        bars=bars,
        bar_seconds=bar_seconds,
        coverage=coverage,
        incomplete=incomplete,
        ongoing=ongoing,
    )
    problem = _problem(report, quarantined, bars, raws, cfg)
    if problem is not None:
        _fail(outputs, report, problem, quarantined, raws)
    _write_outputs(outputs, report, bars, quarantined, raws, input_info, cfg)
    return IngestResult(outputs, report)


def _prepare_inputs(
    raws: list[RawFile], cfg: SentioConfig, input_sha256: Mapping[Path, str] | None
) -> tuple[list[pl.DataFrame], list[dict[str, Any]]]:
    """The working frame and the report entry of every input (hash, size, provenance).

    Raises :class:`DataError` when daily and intraday files are mixed.
    """
    input_info = []
    frames = []
    for i, raw in enumerate(raws):
        frame, info = _prepare(raw, i, cfg)
        known = (input_sha256 or {}).get(raw.path)
        info["sha256"] = known or sha256_file(raw.path)
        info["bytes"] = raw.path.stat().st_size
        provenance = read_provenance(raw.path, info["sha256"])
        if provenance is not None:
            info["provenance"] = provenance
        frames.append(frame)
        input_info.append(info)
    kinds = {info["timestamp_kind"] for info in input_info}
    if len(kinds) > 1:
        dates = [i["path"] for i in input_info if i["timestamp_kind"] == "date"]
        raise DataError(
            f"{dates[0]}: daily bars (dates only) mixed with intraday files in one ingest; "
            "ingest each frequency on its own"
        )
    return frames, input_info


def _fail_too_few(
    work: pl.DataFrame,
    outputs: IngestOutputs,
    input_info: list[dict[str, Any]],
    raws: list[RawFile],
) -> NoReturn:
    """Fail an ingest that has fewer than two valid bars to infer the frequency from."""
    rows_read = work.height
    files = [str(r.path) for r in raws]
    bad = work.filter(pl.col("__reason").is_not_null())
    reasons = dict(bad.group_by("__reason").len().iter_rows())
    too_few = QuarantineLimitError(
        f"{', '.join(files)}: {bad.height} of {rows_read} rows rejected, too few valid bars "
        f"left to read: {_fmt_reasons(reasons)}; e.g. {_example(bad, files)}"
        if bad.height
        else f"{', '.join(files)}: need at least two bars, got {rows_read}"
    )
    failed: dict[str, Any] = {
        "sentio_version": __version__,
        "created_at": now_utc_text(),
        "inputs": input_info,
        "rows_read": rows_read,
        "rows_quarantined": bad.height,
        "quarantined_by_reason": reasons,
        "quarantine": str(outputs.quarantine) if bad.height else None,
    }
    _fail(outputs, failed, too_few, bad, raws)


def _reject_incomplete_sessions(
    work: pl.DataFrame, table: pl.DataFrame, bar_seconds: int, cfg: SentioConfig, ongoing: bool
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Quarantine intraday sessions below ``ingest.min_session_coverage``.

    Returns the frame, the coverage of the bars left and the rejected (symbol, session)s.
    The coverage after a rejection keeps the symbols' first and last sessions of the bars
    before it (a rejected last session does not make the one before it partial).
    """
    spans = _spans(work)
    coverage = _coverage(work, table, bar_seconds, ongoing=ongoing, spans=spans)
    incomplete = pl.DataFrame(schema={"symbol": pl.String, "session": pl.Date})
    if bar_seconds < DAY_SECONDS and coverage.height:
        incomplete = coverage.filter(
            (pl.col("present") > 0)
            & (pl.col("present") < pl.col("expected") * cfg.ingest.min_session_coverage)
        ).select("symbol", "session")
        if incomplete.height:
            work = work.join(
                incomplete.with_columns(__inc=pl.lit(True)),
                left_on=["symbol", "__session"],
                right_on=["symbol", "session"],
                how="left",
            )
            work = _mark(work, "incomplete_session", pl.col("__inc")).drop("__inc")
            coverage = _coverage(work, table, bar_seconds, ongoing=ongoing, spans=spans)
    return work, coverage, incomplete


def _report(
    cfg: SentioConfig,
    outputs: IngestOutputs,
    input_info: list[dict[str, Any]],
    *,
    rows_read: int,
    work: pl.DataFrame,
    quarantined: pl.DataFrame,
    kept: pl.DataFrame,
    bars: pl.DataFrame,
    bar_seconds: int,
    coverage: pl.DataFrame,
    incomplete: pl.DataFrame,
    ongoing: bool,
) -> dict[str, Any]:
    """The ingest report (see the module docstring for the accounting it checks)."""
    by_reason = {
        r: n for r, n in quarantined.group_by("__reason").len().sort("__reason").iter_rows()
    }
    dropped = {
        r: n
        for r, n in work.filter(pl.col("__drop").is_not_null()).group_by("__drop").len().iter_rows()
    }
    report: dict[str, Any] = {
        "sentio_version": __version__,
        "created_at": now_utc_text(),
        "status": "ok",
        "config_hash": cfg.hash("ingest", "universe"),
        "inputs": input_info,
        "output": str(outputs.bars),
        "rows_read": rows_read,
        "rows_kept": bars.height,
        "rows_dropped_outside_regular_hours": dropped.get("outside_regular_hours", 0),
        "rows_dropped_duplicates": dropped.get("duplicate", 0),
        "rows_quarantined": quarantined.height,
        "quarantined_by_reason": by_reason,
        "quarantine": str(outputs.quarantine) if quarantined.height else None,
        "rows_out_of_order": _out_of_order(kept),
        "bar_seconds": bar_seconds,
        "frequency": frequency_label(bar_seconds),
        "bar_timestamp": cfg.ingest.bar_timestamp,
        "calendar": cfg.universe.calendar,
        "symbols": _symbol_summary(bars, coverage),
        "derived_symbols": sorted(
            {
                sym
                for info in input_info
                for sym in info.get("provenance", {}).get("derived_symbols", {})
            }
            & set(bars["symbol"].unique().to_list())
        ),
        "sessions_rejected_incomplete": incomplete.height,
        "gaps": session_gaps(
            coverage.filter(pl.col("present") > 0)["session"], cfg.universe.calendar
        ),
        "missing_bars_by_session": [
            {**row, "session": row["session"].isoformat()}
            for row in coverage.filter(pl.col("missing") > 0)
            .select("symbol", "session", "expected", "present", "missing")
            .iter_rows(named=True)
        ],
        "partial_sessions": _partial_sessions(kept, coverage),
        "ongoing": ongoing,
    }
    accounted = (
        report["rows_kept"]
        + report["rows_dropped_outside_regular_hours"]
        + report["rows_dropped_duplicates"]
        + report["rows_quarantined"]
    )
    if accounted != rows_read:  # pragma: no cover - an internal invariant
        raise AssertionError(f"ingest accounting broken: {accounted} != {rows_read}")
    return report


def _out_of_order(kept: pl.DataFrame) -> int:
    """Kept bars whose timestamp is earlier than the previous row of their symbol in the input."""
    if not kept.height:
        return 0
    return int(
        kept.select(
            (
                (pl.col("timestamp").diff().over("symbol", order_by=["__file", "__row"]))
                < pl.duration()
            ).sum()
        ).item()
    )


def _problem(
    report: dict[str, Any],
    quarantined: pl.DataFrame,
    bars: pl.DataFrame,
    raws: list[RawFile],
    cfg: SentioConfig,
) -> DataError | None:
    """Why the ingest fails (bad rows refused, too many quarantined, no bars), or None."""
    files = [str(r.path) for r in raws]
    rows_read = report["rows_read"]
    by_reason = report["quarantined_by_reason"]
    if quarantined.height and cfg.ingest.on_bad_rows == "error":
        return DataError(
            f"{_example(quarantined, files)} ({quarantined.height} bad rows: "
            f"{_fmt_reasons(by_reason)}); set ingest.on_bad_rows=quarantine to set them aside"
        )
    if quarantined.height > math.floor(cfg.ingest.max_quarantine_fraction * rows_read):
        frac = quarantined.height / rows_read
        return QuarantineLimitError(
            f"{', '.join(files)}: {quarantined.height} of {rows_read} rows rejected ({frac:.2%}, limit "
            f"{cfg.ingest.max_quarantine_fraction:.2%}): {_fmt_reasons(by_reason)}; e.g. {_example(quarantined, files)}"
        )
    if bars.height == 0:
        return DataError(f"{', '.join(files)}: no regular-hours bars left after ingest")
    return None


def _write_outputs(
    outputs: IngestOutputs,
    report: dict[str, Any],
    bars: pl.DataFrame,
    quarantined: pl.DataFrame,
    raws: list[RawFile],
    input_info: list[dict[str, Any]],
    cfg: SentioConfig,
) -> None:
    """Check the contracts, then write the quarantine, bars, configuration, provenance and
    report (the report last, with the contract result and the output's hash)."""
    if quarantined.height:
        _write_quarantine(outputs.quarantine, quarantined, raws)
    else:
        outputs.quarantine.unlink(missing_ok=True)  # from an earlier run of the same output

    report["contract"] = check_contracts(bars, outputs.bars, sorted(report["symbols"]))
    write_feather_atomic(outputs.bars, bars)
    report["output_sha256"] = sha256_file(outputs.bars)
    write_config(outputs.config, cfg)
    _carry_provenance(outputs, input_info, report["derived_symbols"])
    write_json_atomic(outputs.report, report)


def _fail(
    outputs: IngestOutputs,
    report: dict[str, Any],
    problem: Exception,
    quarantined: pl.DataFrame,
    raws: list[RawFile],
) -> NoReturn:
    """Record a failed ingest: quarantine file and failed report written, earlier outputs removed."""
    if quarantined.height:
        _write_quarantine(outputs.quarantine, quarantined, raws)
    else:
        outputs.quarantine.unlink(missing_ok=True)
    # Outputs of an earlier run must not sit beside a report saying this one failed.
    for stale in (
        outputs.bars,
        outputs.gx_json,
        outputs.gx_html,
        outputs.config,
        outputs.provenance,
    ):
        stale.unlink(missing_ok=True)
    report["status"] = "failed"
    report["error"] = str(problem)
    write_json_atomic(outputs.report, report)
    raise problem


def _carry_provenance(
    outputs: IngestOutputs, input_info: list[dict[str, Any]], derived: list[str]
) -> None:
    """Say beside the output which of its symbols have derived prices and, for a single
    synthetic input, the generator's truth (or remove a stale sidecar)."""
    truth = input_info[0].get("provenance", {}).get("truth") if len(input_info) == 1 else None
    if not derived and truth is None:
        outputs.provenance.unlink(missing_ok=True)
        return
    details: dict[str, Any] = {}
    for info in input_info:
        for sym, spec in info.get("provenance", {}).get("derived_symbols", {}).items():
            if sym in derived:
                details.setdefault(sym, spec)
    sources = sorted({i["provenance"].get("source", "?") for i in input_info if "provenance" in i})
    record: dict[str, Any] = {
        "source": f"sentio ingest of {', '.join(sources)}",
        "derived_symbols": details,
    }
    if truth is not None:
        record["truth"] = truth
    write_provenance(outputs.bars, record)


def _fmt_reasons(by_reason: dict[str, int]) -> str:
    return ", ".join(f"{r} {n}" for r, n in sorted(by_reason.items(), key=lambda kv: -kv[1]))


def _partial_sessions(kept: pl.DataFrame, coverage: pl.DataFrame) -> list[dict[str, Any]]:
    """The sessions expected only in part (a symbol's first, begun inside the session;
    with ``ongoing`` its last, in progress): symbol, session, first and last bar kept, the
    bars present and the session's."""
    part = coverage.filter((pl.col("present") > 0) & (pl.col("expected") < pl.col("whole")))
    if part.height == 0:
        return []
    spans = kept.group_by("symbol", "__session").agg(
        first=pl.col("timestamp").min(), last=pl.col("timestamp").max()
    )
    rows = part.join(
        spans, left_on=["symbol", "session"], right_on=["symbol", "__session"], how="left"
    ).sort("symbol", "session")
    return [
        {
            "symbol": r["symbol"],
            "session": r["session"].isoformat(),
            "first": r["first"].isoformat(),
            "last": r["last"].isoformat(),
            "present": r["present"],
            "of": r["whole"],
        }
        for r in rows.iter_rows(named=True)
    ]


def _symbol_summary(bars: pl.DataFrame, coverage: pl.DataFrame) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    stats = bars.group_by("symbol").agg(
        rows=pl.len(), start=pl.col("timestamp").min(), end=pl.col("timestamp").max()
    )
    for row in stats.sort("symbol").iter_rows(named=True):
        cov = coverage.filter(pl.col("symbol") == row["symbol"])
        summary[row["symbol"]] = {
            "rows": row["rows"],
            "start": row["start"].isoformat(),
            "end": row["end"].isoformat(),
            "sessions": int((cov["present"] > 0).sum()),
            "sessions_absent": int((cov["present"] == 0).sum()),
            "sessions_with_missing_bars": int(((cov["missing"] > 0) & (cov["present"] > 0)).sum()),
            "missing_bars": int(cov["missing"].sum()),
        }
    return summary


def check_contracts(bars: pl.DataFrame, path: Path, symbols: list[str]) -> dict[str, Any]:
    """Validate bars that will be written to ``path`` with pandera and Great Expectations.

    The GX result is saved beside ``path`` (``<stem>.gx.json`` and ``<stem>.gx.html``).
    Raises :class:`ContractError` naming the failed checks.
    """
    from data_contracts import ContractViolation, run_gx_validation, validate_bars

    try:
        validate_bars(bars, str(path))
    except ContractViolation as err:
        raise ContractError(str(err)) from None
    gx = run_gx_validation(bars, path.parent, path.stem, symbols=symbols)
    if not gx.success:
        raise ContractError(
            f"{path}: Great Expectations suite failed: {', '.join(gx.failed)} (see {gx.html_path})"
        )
    return {
        "pandera": "passed",
        "gx_success": gx.success,
        "gx_evaluated": gx.evaluated,
        "gx_json": str(gx.json_path),
        "gx_html": str(gx.html_path),
    }
