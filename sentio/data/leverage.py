"""Daily-reset leveraged ETF series derived from an underlying.

A daily-reset ETF with leverage ``L`` (``+3`` for TQQQ, ``-3`` for SQQQ) delivers, at
every instant of session ``d``, ``L`` times the underlying's return since the previous
session's close, on a base that was itself reset at that close and charged the carry
accrued since:

.. math::

    P_L(t) = B_d \\bigl(1 + L\\,(P_U(t) / C_U(d-1) - 1)\\bigr), \\qquad
    B_d = C_L(d-1)\\,(1 - g_d),

    g_d = (\\text{expense} - (1 - L)\\,\\text{financing}) \\cdot \\Delta_{\\text{cal}}(d-1, d) / 365.

The carry follows swap replication: a fund with leverage ``L`` keeps its assets in cash
(earning ``r_f``, the ``financing`` rate) and holds swaps on ``L`` times its NAV (paying
``L (r_u - r_f)``), so per unit of NAV it earns ``L r_u + (1 - L) r_f``. ``+3x`` pays
``2 r_f`` (``g = expense + 2 financing``); ``-3x`` earns ``4 r_f``
(``g = expense - 4 financing``, a net credit when ``4 financing > expense``).

``C_U(d-1)`` and ``C_L(d-1)`` are the last closes of the previous session and
``\\Delta_{cal}`` counts calendar days (3 over a weekend). On the first session the
reference is the underlying's first open and ``B`` is ``start_price``. The map is affine
and monotone within a session, so open and close map to open and close, and high / low
map from high / low when ``L > 0`` and from low / high when ``L < 0``. An overnight gap
of the underlying therefore lands in the leveraged open.

Everything is vectorised in polars: the per-session bases are cumulative products of the
per-session growth factors and carry factors, joined back onto the bars.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from sentio.config import UniverseConfig
from sentio.data.schema import (
    CANONICAL_COLUMNS,
    PRICE_COLUMNS,
    session_date,
    to_canonical,
)
from sentio.errors import DataError

__all__ = ["derive_leveraged", "derived_provenance", "ensure_universe"]

_DAYS_PER_YEAR = 365.0


def _check_underlying(underlying: pl.DataFrame) -> str:
    """Validate the input of :func:`derive_leveraged`; return its symbol."""
    missing = [c for c in CANONICAL_COLUMNS if c not in underlying.columns]
    if missing:
        raise DataError(f"derive_leveraged: underlying bars lack columns {missing}")
    if underlying.height == 0:
        raise DataError("derive_leveraged: the underlying has no bars")
    symbols = [str(s) for s in underlying["symbol"].unique().to_list()]
    if len(symbols) != 1:
        raise DataError(f"derive_leveraged: expected bars of one symbol, got {sorted(symbols)}")
    nulls = {c: n for c in (*PRICE_COLUMNS, "timestamp") if (n := underlying[c].null_count())}
    if nulls:
        raise DataError(f"derive_leveraged: {symbols[0]} has missing values {nulls}")
    bad = underlying.filter(pl.min_horizontal(*PRICE_COLUMNS) <= 0)
    if bad.height:
        raise DataError(
            f"derive_leveraged: {symbols[0]} has a non-positive price at {bad['timestamp'][0]}"
        )
    if underlying["timestamp"].n_unique() != underlying.height:
        dup = underlying.filter(pl.col("timestamp").is_duplicated())["timestamp"].min()
        raise DataError(f"derive_leveraged: {symbols[0]} has duplicate bars at {dup!s}")
    return symbols[0]


def derive_leveraged(
    underlying: pl.DataFrame,
    leverage: float,
    symbol: str,
    expense_ratio_annual: float,
    financing_rate_annual: float,
    start_price: float | None = None,
    volume_ratio: float = 1.0,
) -> pl.DataFrame:
    """Canonical bars of a daily-reset leveraged ETF on ``underlying``.

    Args:
        underlying: canonical bars (minute or daily) of exactly one symbol.
        leverage: daily leverage ``L``, e.g. ``3.0`` or ``-3.0``; ``|L| >= 1``.
        symbol: the symbol of the derived series.
        expense_ratio_annual: annual expense ratio, accrued per calendar day.
        financing_rate_annual: annual cash rate ``r_f``, accrued per calendar day; the
            fund earns ``(1 - L) r_f`` per year on its NAV (``+3x`` pays ``2 r_f``,
            ``-3x`` earns ``4 r_f``).
        start_price: the derived series' base on the first session (default: the
            underlying's first open).
        volume_ratio: derived volume = underlying volume x this ratio.

    Returns:
        Canonical bars of ``symbol`` on the underlying's timestamps. Sessions are the New
        York dates of the timestamps (:func:`sentio.data.schema.session_date`).

    Raises:
        DataError: bad input, or a derived price <= 0 (the ETF would be wiped out); the
            message names the first offending timestamp.
    """
    if abs(leverage) < 1.0:
        raise DataError(f"derive_leveraged: |leverage| must be >= 1, got {leverage}")
    if volume_ratio <= 0:
        raise DataError(f"derive_leveraged: volume_ratio must be > 0, got {volume_ratio}")
    if start_price is not None and not start_price > 0:
        raise DataError(f"derive_leveraged: start_price must be > 0, got {start_price}")
    _check_underlying(underlying)

    lev = float(leverage)
    # daily charge on the base per calendar day; negative (a credit) when the cash
    # interest (1 - L) r_f exceeds the expense ratio, e.g. for -3x at usual rates
    fee_rate = (expense_ratio_annual - (1.0 - lev) * financing_rate_annual) / _DAYS_PER_YEAR

    bars = underlying.select(CANONICAL_COLUMNS)
    if not bars["timestamp"].is_sorted():
        bars = bars.sort("timestamp")
    bars = bars.with_columns(session_date(pl.col("timestamp")).alias("_session"))
    first_open = bars["open"][0]
    base0 = float(first_open if start_price is None else start_price)
    per_session = _session_bases(bars, lev, fee_rate, first_open, base0)

    def level(col: str) -> pl.Expr:
        return pl.col("_base") * (1.0 + lev * (pl.col(col) / pl.col("_ref") - 1.0))

    hi_src, lo_src = ("high", "low") if lev > 0 else ("low", "high")
    out = bars.join(per_session, on="_session", how="left", maintain_order="left").select(
        "timestamp",
        pl.lit(symbol, dtype=pl.String).alias("symbol"),
        level("open").alias("open"),
        level(hi_src).alias("high"),
        level(lo_src).alias("low"),
        level("close").alias("close"),
        (pl.col("volume") * volume_ratio).alias("volume"),
    )
    _check_derived(out, symbol, lev)
    # one symbol, already in time order: canonical without another sort
    return to_canonical(out, sort=False)


def _session_bases(
    bars: pl.DataFrame, lev: float, fee_rate: float, first_open: Any, base0: float
) -> pl.DataFrame:
    """One row per session, in time order: its reset reference ``_ref`` and base ``_base``."""
    return (
        bars.group_by("_session", maintain_order=True)
        .agg(pl.col("close").last().alias("_close_u"))
        .with_columns(
            pl.col("_close_u").shift(1).fill_null(first_open).alias("_ref"),
            (pl.col("_session") - pl.col("_session").shift(1))
            .dt.total_days()
            .fill_null(0)
            .alias("_days"),
        )
        .with_columns(
            # growth of the leveraged series over the whole session (close to close)
            (1.0 + lev * (pl.col("_close_u") / pl.col("_ref") - 1.0)).alias("_growth"),
            (1.0 - fee_rate * pl.col("_days")).alias("_fee_factor"),
        )
        .with_columns(
            (
                base0
                * pl.col("_growth").cum_prod().shift(1).fill_null(1.0)
                * pl.col("_fee_factor").cum_prod()
            ).alias("_base"),
        )
        .select("_session", "_ref", "_base")
    )


def _check_derived(out: pl.DataFrame, symbol: str, lev: float) -> None:
    """Raise :class:`DataError` at the first derived bar with a price <= 0 (or NaN)."""
    bad = out.filter(~(pl.min_horizontal(*PRICE_COLUMNS) > 0))  # also catches NaN
    if bad.height:
        row = bad.row(0, named=True)
        raise DataError(
            f"derive_leveraged: {symbol} (leverage {lev:g}) has a non-positive price at "
            f"{row['timestamp']} (open {row['open']:.6g}, high {row['high']:.6g}, "
            f"low {row['low']:.6g}, close {row['close']:.6g}): the underlying moved more "
            f"than 1/{abs(lev):g} against it since the previous close"
        )


def derived_provenance(
    universe: UniverseConfig, symbols: list[str] | None = None
) -> dict[str, dict[str, Any]]:
    """How the universe's derived series are built, keyed by symbol (JSON-ready).

    ``symbols`` restricts the result to those of the long / short ETFs that were
    actually derived (default: both). Each entry names the underlying, the leverage
    (``+L`` / ``-L``), the expense ratio and the financing rate.
    """
    legs = ((universe.long, universe.leverage), (universe.short, -universe.leverage))
    return {
        sym: {
            "underlying": universe.underlying,
            "leverage": float(lev),
            "expense_ratio_annual": float(universe.expense_ratio_annual),
            "financing_rate_annual": float(universe.financing_rate_annual),
        }
        for sym, lev in legs
        if symbols is None or sym in symbols
    }


def ensure_universe(
    bars: pl.DataFrame, universe: UniverseConfig, *, volume_ratio: float | None = None
) -> tuple[pl.DataFrame, list[str]]:
    """Make sure the universe's long and short ETFs are in ``bars``; derive what is missing.

    Missing ``universe.long`` / ``universe.short`` series are derived from
    ``universe.underlying`` with :func:`derive_leveraged` (leverage ``+L`` / ``-L``, the
    universe's expense ratio, financing rate and ``derived_volume_ratio``, the
    underlying's first open as start price). Series that are present are left untouched;
    other symbols are kept. ``volume_ratio``, when given, overrides
    ``universe.derived_volume_ratio``.

    Returns:
        The canonical frame (sorted by symbol, timestamp) and the derived symbols, in the
        order long, short.

    Raises:
        DataError: the underlying is not in ``bars`` (the universe needs it; the message
            names it and the symbols present).
    """
    ratio = universe.derived_volume_ratio if volume_ratio is None else volume_ratio
    present = sorted(str(s) for s in bars["symbol"].unique().to_list()) if bars.height else []
    if universe.underlying not in present:
        raise DataError(
            f"underlying {universe.underlying!r} of the universe is not in the bars "
            f"(symbols present: {present or 'none'})"
        )
    wanted = ((universe.long, universe.leverage), (universe.short, -universe.leverage))
    missing = [(sym, lev) for sym, lev in wanted if sym not in present]
    frames = [to_canonical(bars)]
    if missing:
        under = frames[0].filter(pl.col("symbol") == universe.underlying)
        for sym, lev in missing:
            frames.append(
                derive_leveraged(
                    under,
                    lev,
                    sym,
                    universe.expense_ratio_annual,
                    universe.financing_rate_annual,
                    volume_ratio=ratio,
                )
            )
    out = to_canonical(pl.concat(frames)) if len(frames) > 1 else frames[0]
    return out, [sym for sym, _ in missing]
