"""Canonical bars of the underlying -> causal feature frame.

The market features are one polars lazy plan (:func:`feature_plan`; window, recursive and
per-session indicators are compiled kernels inside it, :mod:`sentio.features.kernels`);
:func:`build_features` runs it, keeps the rows after the warm-up (a zero-copy slice),
joins the exogenous columns and normalises.

The row of bar t (stamped with its START) carries features computed from bars up to and
including bar t, i.e. known at its close, the moment the agent decides. Rows inside the
warm-up are dropped: the longest lookback of any enabled indicator (and rows until every
market feature is defined, e.g. the overnight gap needs a previous session), plus the
normalisation warm-up (``norm_window`` rows for ``rolling``/``expanding``).

Feature columns (Float32; ``W``/``n`` are the configured windows, ``m`` a coarse length):

================================  ==========================================================
column                            meaning
================================  ==========================================================
``log_ret_{h}``                   ``ln(C_t / C_{t-h})``
``rv_cc_{W}``                     std (ddof 1) of the last W one-bar log returns
``rv_park_{W}`` / ``rv_gk_{W}``   Parkinson / Garman-Klass volatility over W bars
``rsi_{n}``                       Wilder RSI (0..100)
``macd_line/_signal/_hist``       MACD (fast, slow, signal EMAs) divided by the close
``bb_pctb_{W}`` / ``bb_width_{W}``  Bollinger %b and band width / middle band (k sd, ddof 0)
``atr_rel_{n}``                   Wilder ATR / close
``volume_z_{W}``                  z-score of ``ln(1 + volume)`` over W bars
``gap``                           ``ln(first open of the session / previous session's last
                                  close)``, carried through the session (daily: per bar)
``vwap_dist``                     ``ln(C_t / session VWAP so far)``, VWAP of typical price
                                  ``(H + L + C) / 3``, reset each New York session
``minutes_since_open``            minutes from the session open to the bar's close (1..)
``minutes_to_close``              minutes from the bar's close to the calendar close (..0),
                                  early closes included
``dist_session_high/_low``        ``ln(C_t / max H so far)`` / ``ln(C_t / min L so far)``
``c{m}_log_ret_1``                one-coarse-bar log return of the m-minute bars
``c{m}_rv_cc_{W}``                realized vol of the m-minute bars (``coarse_vol_window``)
``c{m}_rsi_{n}``                  Wilder RSI of the m-minute bars
``exo_<name>`` / ``_stale``       exogenous value / missing flag (:mod:`.exogenous`)
================================  ==========================================================

Intraday-only groups (``vwap``, ``session_clock``, ``session_range``, ``coarse``) are
skipped on daily bars (detected from the data: median gap between bars >= 20 hours).

Coarse bars: the m-minute bar covering ``[s, s + m)`` (``s`` the UTC timestamp truncated
to m minutes; sessions open on such boundaries) is built from the one-minute bars inside
it and becomes visible on the first row whose bar ends at or after ``s + m``: with
one-minute bars, the row of the bucket's last minute (``09:34`` for ``09:30-09:34``).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import polars as pl

from sentio.calendar import sessions
from sentio.config import SentioConfig, resolve_for_bars, sized, unresolved_settings
from sentio.errors import DataError
from sentio.features import indicators as ind
from sentio.features.exogenous import exogenous_join, load_exogenous
from sentio.features.normalise import causal_normalise, normalised_columns

__all__ = ["BarInfo", "build_features", "feature_plan", "feature_summary", "inspect_bars"]

DAILY_THRESHOLD = dt.timedelta(hours=20)
_KEEP = "\x00keep"
INTRADAY_ONLY = frozenset({"vwap", "session_clock", "session_range", "coarse"})

_C, _O, _H, _L, _V = (pl.col(c) for c in ("close", "open", "high", "low", "volume"))


@dataclass(frozen=True)
class BarInfo:
    """What the plan needs to know about the bars before it is built."""

    rows: int
    bar: dt.timedelta
    daily: bool
    first: dt.datetime
    last: dt.datetime


def inspect_bars(bars: pl.DataFrame, symbol: str) -> tuple[pl.DataFrame, BarInfo]:
    """The underlying's bars (timestamp + OHLCV) and their bar length; :class:`DataError` if unusable."""
    needed = ["timestamp", "symbol", "open", "high", "low", "close", "volume"]
    missing = [c for c in needed if c not in bars.columns]
    if missing:
        raise DataError(f"features: the bars lack columns {missing}")
    frame = bars.filter(pl.col("symbol") == symbol).select(needed[:1] + needed[2:])
    if frame.height == 0:
        present = sorted(bars["symbol"].unique().to_list())
        raise DataError(
            f"features: no bars of the underlying {symbol!r} (universe.underlying); "
            f"symbols present: {present}"
        )
    if frame.height < 2:
        raise DataError(f"features: {symbol} has a single bar; need at least two")
    stats = frame.select(
        (pl.col("timestamp").diff() <= dt.timedelta(0)).sum().alias("bad"),
        pl.col("timestamp").diff().median().alias("gap"),
        pl.col("timestamp").min().alias("first"),
        pl.col("timestamp").max().alias("last"),
    ).row(0, named=True)
    if stats["bad"]:
        raise DataError(
            f"features: {symbol} timestamps are not strictly increasing ({stats['bad']} rows); "
            "pass canonical bars"
        )
    gap = stats["gap"]
    assert isinstance(gap, dt.timedelta)
    daily = gap >= DAILY_THRESHOLD
    return frame, BarInfo(frame.height, gap, daily, stats["first"], stats["last"])


def _enabled(cfg: SentioConfig, daily: bool) -> set[str]:
    groups: set[str] = set(cfg.features.indicators)
    return groups - INTRADAY_ONLY if daily else groups


def _bar_minutes(info: BarInfo) -> int:
    return max(1, round(info.bar.total_seconds() / 60))


def warmup_rows(cfg: SentioConfig, info: BarInfo) -> int:
    """The longest lookback, in rows, of the enabled indicators (before normalisation)."""
    f = cfg.features
    on = _enabled(cfg, info.daily)
    need = [1]
    if "returns" in on:
        need.append(max(f.return_horizons))
    if "realized_vol" in on:
        need.append(max(f.vol_windows) + 1)
    if "range_vol" in on:
        need.append(max(f.vol_windows))
    if "rsi" in on:
        need.append(f.rsi_window + 1)
    if "macd" in on:
        need.append(f.macd[1] + f.macd[2])
    if "bollinger" in on:
        need.append(f.bollinger_window)
    if "atr" in on:
        need.append(f.atr_window)
    if "volume_z" in on:
        need.append(sized(f.volume_z_window, "features.volume_z_window"))
    if "coarse" in on and f.coarse_minutes:
        coarse_bars = max(f.rsi_window + 1, f.coarse_vol_window + 1) + 1
        need.append(max(f.coarse_minutes) // _bar_minutes(info) * coarse_bars)
    return max(need)


def _market_exprs(
    cfg: SentioConfig, on: set[str], daily: bool
) -> tuple[dict[str, pl.Expr], list[pl.Expr]]:
    """Helper columns (indicator groups as Structs, computed first, then dropped) and the
    market feature expressions."""
    f = cfg.features
    helpers: dict[str, pl.Expr] = {}
    out: list[pl.Expr] = []

    def fields(group: str, expr: pl.Expr, names: dict[str, str]) -> None:
        helpers[f"\x00{group}"] = expr
        out.extend(pl.col(f"\x00{group}").struct.field(k).alias(v) for k, v in names.items())

    horizons = f.return_horizons if "returns" in on else []
    windows = f.vol_windows if "realized_vol" in on else []
    if horizons or windows:
        names = {f"ret_{h}": f"log_ret_{h}" for h in horizons}
        names |= {f"rv_{w}": f"rv_cc_{w}" for w in windows}
        fields("returns", ind.returns(_C, horizons, windows), names)
    if "range_vol" in on:
        names = {}
        for w in f.vol_windows:
            if "parkinson" in f.range_vol:
                names[f"park_{w}"] = f"rv_park_{w}"
            if "garman_klass" in f.range_vol:
                names[f"gk_{w}"] = f"rv_gk_{w}"
        fields("range_vol", ind.range_vol(_O, _H, _L, _C, f.vol_windows), names)
    if "rsi" in on:
        out.append(ind.rsi(_C, f.rsi_window).alias(f"rsi_{f.rsi_window}"))
    if "macd" in on:
        names = {"line": "macd_line", "signal": "macd_signal", "hist": "macd_hist"}
        fields("macd", ind.macd(_C, *f.macd), names)
    if "bollinger" in on:
        w, k = f.bollinger_window, f.bollinger_k
        names = {"pctb": f"bb_pctb_{w}", "width": f"bb_width_{w}"}
        fields("bollinger", ind.bollinger(_C, w, k), names)
    if "atr" in on:
        out.append(ind.atr_rel(_H, _L, _C, f.atr_window).alias(f"atr_rel_{f.atr_window}"))
    if "volume_z" in on:
        z = sized(f.volume_z_window, "features.volume_z_window")
        out.append(ind.volume_z(_V, z).alias(f"volume_z_{z}"))
    first = pl.col("session") != pl.col("session").shift(1)
    if "gap" in on:
        gap = (_O / _C.shift(1)).log()
        if not daily:
            gap = pl.when(first).then(gap).otherwise(None).forward_fill()
        out.append(gap.cast(pl.Float32).alias("gap"))
    session = {}
    if "vwap" in on:
        session["vwap_dist"] = "vwap_dist"
    if "session_range" in on:
        session |= {"dist_high": "dist_session_high", "dist_low": "dist_session_low"}
    if session:
        fields("session", ind.session_features(_H, _L, _C, _V, first), session)
    return helpers, out


def _clock_exprs() -> list[pl.Expr]:
    return [
        ((pl.col("obs_time") - pl.col("open_t")).dt.total_seconds() / 60.0).alias(
            "minutes_since_open"
        ),
        ((pl.col("close_t") - pl.col("obs_time")).dt.total_seconds() / 60.0).alias(
            "minutes_to_close"
        ),
    ]


def _coarse_frame(
    base: pl.LazyFrame, cfg: SentioConfig, minutes: int, bar: dt.timedelta
) -> tuple[pl.LazyFrame, list[str]]:
    f = cfg.features
    p = f"c{minutes}_"
    names = [f"{p}log_ret_1", f"{p}rv_cc_{f.coarse_vol_window}", f"{p}rsi_{f.rsi_window}"]
    coarse = (
        base.group_by(
            pl.col("timestamp").dt.truncate(f"{minutes}m").alias("bucket"), maintain_order=True
        )
        .agg(pl.col("close").last())
        .with_columns(
            ind.log_return(_C, 1).cast(pl.Float32).alias(names[0]),
            ind.realized_vol(_C, f.coarse_vol_window).alias(names[1]),
            ind.rsi(_C, f.rsi_window).alias(names[2]),
            # Visible on the row of the bar that ends when the coarse bar ends.
            (pl.col("bucket") + dt.timedelta(minutes=minutes) - bar).alias(f"{p}visible"),
        )
        .select(f"{p}visible", *names)
    )
    return coarse, names


def sized_for_bars(cfg: SentioConfig, bars: pl.DataFrame) -> SentioConfig:
    """``cfg`` with its ``'auto'`` settings sized by the bar length of the underlying's
    bars (:func:`sentio.config.resolve_for_bars`); unchanged when nothing is ``'auto'``."""
    if not unresolved_settings(cfg):
        return cfg
    _, info = inspect_bars(bars, cfg.universe.underlying)
    return resolve_for_bars(cfg, 86_400 if info.daily else round(info.bar.total_seconds()))


def feature_plan(bars: pl.DataFrame, cfg: SentioConfig) -> tuple[pl.LazyFrame, list[str]]:
    """The lazy plan of the market features (every bar, warm-up included) and their names.

    Columns: ``timestamp``, ``obs_time`` (when the bar's values are known), the features,
    and a Boolean column named by ``_KEEP`` that holds from the first row after the
    warm-up on. :func:`build_features` runs it, keeps those rows, joins the exogenous
    columns and normalises.
    """
    cfg = sized_for_bars(cfg, bars)
    frame, info = inspect_bars(bars, cfg.universe.underlying)
    f = cfg.features
    on = _enabled(cfg, info.daily)
    # Sessions (calendar) attached by an as-of join on the open: session date, open, close.
    table = sessions(
        info.first.date() - dt.timedelta(days=1),
        info.last.date() + dt.timedelta(days=1),
        cfg.universe.calendar,
    ).select("session", pl.col("open").alias("open_t"), pl.col("close").alias("close_t"))
    joined = frame.join_asof(
        table, left_on="timestamp", right_on="open_t", strategy="backward", check_sortedness=False
    )
    bad = joined.filter(pl.col("close_t").is_null() | (pl.col("timestamp") >= pl.col("close_t")))
    if bad.height:
        raise DataError(
            f"features: {bad.height} bars outside regular sessions of {cfg.universe.calendar} "
            f"(first at {bad['timestamp'][0]}); pass ingested (canonical) bars"
        )
    obs = (
        pl.col("close_t")
        if info.daily
        else pl.min_horizontal(pl.col("timestamp") + info.bar, pl.col("close_t"))
    )
    base = joined.lazy()
    lf = base.with_columns(obs.alias("obs_time"))
    helpers, market = _market_exprs(cfg, on, info.daily)
    if helpers:
        lf = lf.with_columns(**helpers)
    lf = lf.with_columns(market)
    if helpers:
        lf = lf.drop(*helpers)
    names = [e.meta.output_name() for e in market]
    if "session_clock" in on:
        lf = lf.with_columns(_clock_exprs())
        names += ["minutes_since_open", "minutes_to_close"]
    if "coarse" in on:
        for m in sorted(f.coarse_minutes):
            coarse, cnames = _coarse_frame(base, cfg, m, info.bar)
            lf = lf.join_asof(
                coarse,
                left_on="timestamp",
                right_on=f"c{m}_visible",
                strategy="backward",
                check_sortedness=False,
            ).drop(f"c{m}_visible")
            names += cnames
    # Warm-up: the longest lookback, then until every market feature is defined. Both
    # conditions only switch on, so the rows kept are a suffix: a zero-copy slice.
    idx = pl.int_range(pl.len(), dtype=pl.Int64)
    defined = pl.all_horizontal(pl.col(n).is_not_null() for n in names)
    keep = (idx >= warmup_rows(cfg, info)) & (defined.cast(pl.Int8).cum_max() == 1)
    return lf.with_columns(keep.alias(_KEEP)), names


def _suffix(frame: pl.DataFrame, flag: str) -> pl.DataFrame:
    """The rows from the first one where the Boolean column ``flag`` holds (it holds on
    every later row), without ``flag``; a zero-copy slice."""
    start = frame[flag].arg_true()
    first = int(start[0]) if start.len() else frame.height
    return frame.slice(first).drop(flag)


def build_features(bars: pl.DataFrame, cfg: SentioConfig) -> pl.DataFrame:
    """Causal features of ``cfg.universe.underlying``: ``timestamp`` + Float32 columns.

    One row per bar of the underlying after the warm-up (see the module docstring for the
    columns and :mod:`sentio.features.normalise` for the normalisation). With
    ``normalisation = "train_fit"`` the values are returned unnormalised; the caller
    applies :func:`~sentio.features.normalise.fit_normaliser` and
    :func:`~sentio.features.normalise.apply_normaliser`.

    Raises:
        DataError: the underlying is absent, timestamps are not increasing, bars lie
            outside the calendar's sessions, or the exogenous file is unusable.
    """
    cfg = sized_for_bars(cfg, bars)
    f = cfg.features
    plan, names = feature_plan(bars, cfg)
    # The in-memory engine runs this plan (whole-column kernels, as-of joins) faster than
    # the streaming one; the results are identical.
    lf = _suffix(plan.collect(engine="in-memory"), _KEEP).lazy()
    exo_names: list[str] = []
    flag_names: list[str] = []
    if f.exogenous_path is not None:
        exo = load_exogenous(f.exogenous_path)
        lf, exo_names, flag_names = exogenous_join(
            lf, exo, "obs_time", f.exogenous_max_staleness_minutes
        )
    columns = names + [c for pair in zip(exo_names, flag_names, strict=True) for c in pair]
    frame = lf.select("timestamp", *columns).collect(engine="in-memory")
    if f.normalisation in ("rolling", "expanding"):
        norm = sized(f.norm_window, "features.norm_window")
        window = norm if f.normalisation == "rolling" else None
        frame = causal_normalise(frame, normalised_columns(columns), window, f.norm_clip)
        frame = frame.slice(norm - 1)  # the normalisation's warm-up
    else:  # train_fit: raw values; a missing exogenous value is 0 (its flag says so)
        frame = frame.with_columns(pl.col(exo_names).fill_null(0.0))
    return frame.select("timestamp", *(pl.col(c).cast(pl.Float32) for c in columns))


def feature_summary(frame: pl.DataFrame) -> list[dict[str, Any]]:
    """Per feature column: ``column``, ``count``, ``mean``, ``std``, ``min``, ``max`` (floats)."""
    columns = [c for c in frame.columns if c != "timestamp"]
    if not columns:
        return []
    stats = frame.select(
        [
            e
            for c in columns
            for e in (
                pl.col(c).count().alias(f"{c}\x00count"),
                pl.col(c).cast(pl.Float64).mean().alias(f"{c}\x00mean"),
                pl.col(c).cast(pl.Float64).std().alias(f"{c}\x00std"),
                pl.col(c).cast(pl.Float64).min().alias(f"{c}\x00min"),
                pl.col(c).cast(pl.Float64).max().alias(f"{c}\x00max"),
            )
        ]
    ).row(0, named=True)

    def num(v: Any) -> float | None:
        return None if v is None else float(v)

    return [
        {
            "column": c,
            "count": int(stats[f"{c}\x00count"]),
            "mean": num(stats[f"{c}\x00mean"]),
            "std": num(stats[f"{c}\x00std"]),
            "min": num(stats[f"{c}\x00min"]),
            "max": num(stats[f"{c}\x00max"]),
        }
        for c in columns
    ]
