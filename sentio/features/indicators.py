"""Causal technical indicators as polars expressions.

Every function returns a ``pl.Expr`` over columns of one symbol's bars in time order
(``open``, ``high``, ``low``, ``close``, ``volume``); the value on a row uses that row
and earlier rows only. Recursive indicators (EMA, Wilder smoothing) run from the first
row of the frame, so a prefix of a series gives bit-identical values on the rows it
shares with the whole series. Window, recursive and per-session indicators are compiled
kernels (:mod:`sentio.features.kernels`); groups that share their work (range
volatilities, MACD, Bollinger bands, the session features) are Struct expressions with
one field per output.

Prices enter as ratios or logs, so features are scale-free: returns and distances are
log ratios, volatilities are per bar (not annualised), MACD and ATR are divided by the
close.
"""

from __future__ import annotations

import polars as pl

from sentio.features import kernels

__all__ = [
    "atr_rel",
    "bollinger",
    "log_return",
    "macd",
    "range_vol",
    "realized_vol",
    "returns",
    "rsi",
    "session_features",
    "volume_z",
]


def log_return(close: pl.Expr, horizon: int) -> pl.Expr:
    """``ln(close_t / close_{t-horizon})``; null for the first ``horizon`` rows.

    Computed as ``ln close_t - ln close_{t-horizon}``: one logarithm per row, shared by
    every horizon (polars evaluates the common ``ln close`` once).
    """
    log_close = close.log()
    return log_close - log_close.shift(horizon)


def returns(close: pl.Expr, horizons: list[int], windows: list[int]) -> pl.Expr:
    """Log returns over each horizon and close-to-close realized volatility over each window,
    from one pass of ``ln close``: a Struct with fields ``ret_{h}`` = ``ln(C_t / C_{t-h})``
    and ``rv_{W}`` = sample std (ddof 1) of the last ``W`` one-bar log returns."""
    return kernels.returns_expr(close, horizons, windows)


def realized_vol(close: pl.Expr, window: int) -> pl.Expr:
    """Close-to-close realized volatility per bar: sample std (ddof 1) of ``window`` log returns."""
    return kernels.rolling_std_expr(log_return(close, 1), window, ddof=1)


def range_vol(
    open_: pl.Expr, high: pl.Expr, low: pl.Expr, close: pl.Expr, windows: list[int]
) -> pl.Expr:
    """Parkinson (1980) and Garman-Klass (1980) volatility per bar over each window.

    Struct fields ``park_{W}``: ``sqrt(mean(ln(H/L)^2) / (4 ln 2))`` and ``gk_{W}``:
    ``sqrt(mean(0.5 ln(H/L)^2 - (2 ln 2 - 1) ln(C/O)^2))`` over ``W`` bars (a negative
    mean, possible on tiny samples, is floored at zero); null until the window is full.
    """
    return kernels.range_vol_expr(open_, high, low, close, windows)


def rsi(close: pl.Expr, n: int) -> pl.Expr:
    """Wilder's RSI in [0, 100]: ``100 - 100 / (1 + avg_gain / avg_loss)`` (Wilder smoothing
    of one-bar gains and losses, seeded with their mean over the first ``n`` changes).

    100 when there were no losses, 50 when the price did not move at all; null for the
    first ``n`` rows.
    """
    return kernels.rsi_expr(close, n)


def macd(close: pl.Expr, fast: int, slow: int, signal: int) -> pl.Expr:
    """MACD as a Struct: fields ``line``, ``signal``, ``hist``, each divided by the close.

    line = EMA_fast(close) - EMA_slow(close); signal = EMA_signal(line); histogram =
    line - signal (EMAs with ``alpha = 2 / (span + 1)``, seeded with the first value).
    """
    return kernels.macd_expr(close, fast, slow, signal)


def bollinger(close: pl.Expr, window: int, k: float) -> pl.Expr:
    """Bollinger bands ``mean +- k sd`` (ddof 0) of ``window`` closes as a Struct: field
    ``pctb`` = ``(C - lower) / (upper - lower)`` (0.5 when the window is flat) and
    ``width`` = ``2 k sd / mean``; null until the window is full."""
    return kernels.bollinger_expr(close, window, k)


def atr_rel(high: pl.Expr, low: pl.Expr, close: pl.Expr, n: int) -> pl.Expr:
    """Wilder's average true range divided by the close (a fraction of the price).

    True range ``max(H - L, |H - C_prev|, |L - C_prev|)``, ``H - L`` on the first row;
    Wilder smoothing seeded with the mean of the first ``n``.
    """
    return kernels.atr_rel_expr(high, low, close, n)


def volume_z(volume: pl.Expr, window: int) -> pl.Expr:
    """Z-score of ``ln(1 + volume)`` over ``window`` bars (ddof 1; 0 for a flat window)."""
    return kernels.zscore_expr(volume, window, log1p=True)


def session_features(
    high: pl.Expr, low: pl.Expr, close: pl.Expr, volume: pl.Expr, first: pl.Expr
) -> pl.Expr:
    """Running features of each session (``first``: true on a session's first bar) as a
    Struct: ``vwap_dist`` = ``ln(C / VWAP so far)`` with the VWAP of the typical price
    ``(H + L + C) / 3`` (0 before the session has traded volume), ``dist_high`` /
    ``dist_low`` = ``ln(C / max H so far)`` / ``ln(C / min L so far)``."""
    return kernels.session_features_expr(high, low, close, volume, first)
