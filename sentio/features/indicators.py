"""Causal technical indicators as polars expressions.

Every function returns a ``pl.Expr`` over columns of one symbol's bars in time order
(``open``, ``high``, ``low``, ``close``, ``volume``); the value on a row uses that row
and earlier rows only. Recursive indicators (EMA, Wilder smoothing) run from the first
row of the frame, so a prefix of a series gives bit-identical values on the rows it
shares with the whole series.

Prices enter as ratios or logs, so features are scale-free: returns and distances are
log ratios, volatilities are per bar (not annualised), MACD and ATR are divided by the
close.
"""

from __future__ import annotations

import math

import polars as pl

from sentio.features.kernels import rolling_std_expr, rsi_expr, wilder_expr

__all__ = [
    "atr_rel",
    "bollinger_pctb",
    "bollinger_width",
    "ema",
    "garman_klass_vol",
    "log_return",
    "macd",
    "parkinson_vol",
    "realized_vol",
    "rsi",
    "safe_div",
    "true_range",
    "wilder",
]


def safe_div(num: pl.Expr, den: pl.Expr, default: float = 0.0) -> pl.Expr:
    """``num / den``, or ``default`` where ``den`` is zero (a flat window, a zero volume)."""
    return pl.when(den != 0).then(num / den).otherwise(pl.lit(default, pl.Float64))


def log_return(close: pl.Expr, horizon: int) -> pl.Expr:
    """``ln(close_t / close_{t-horizon})``; null for the first ``horizon`` rows."""
    return (close / close.shift(horizon)).log()


def realized_vol(close: pl.Expr, window: int) -> pl.Expr:
    """Close-to-close realized volatility per bar: sample std (ddof 1) of ``window`` log returns."""
    return rolling_std_expr(log_return(close, 1), window, ddof=1)


def parkinson_vol(high: pl.Expr, low: pl.Expr, window: int) -> pl.Expr:
    """Parkinson (1980) range volatility per bar: ``sqrt(mean(ln(H/L)^2) / (4 ln 2))``."""
    hl2 = (high / low).log().pow(2)
    return (hl2.rolling_mean(window, min_samples=window) / (4.0 * math.log(2.0))).sqrt()


def garman_klass_vol(
    open_: pl.Expr, high: pl.Expr, low: pl.Expr, close: pl.Expr, window: int
) -> pl.Expr:
    """Garman-Klass (1980) volatility per bar.

    ``sqrt(mean(0.5 ln(H/L)^2 - (2 ln 2 - 1) ln(C/O)^2))``, the mean over ``window``
    bars; a negative mean (possible on tiny samples) is floored at zero.
    """
    term = 0.5 * (high / low).log().pow(2) - (2.0 * math.log(2.0) - 1.0) * (
        close / open_
    ).log().pow(2)
    return term.rolling_mean(window, min_samples=window).clip(lower_bound=0.0).sqrt()


def ema(x: pl.Expr, span: int) -> pl.Expr:
    """Exponential moving average, ``alpha = 2 / (span + 1)``, seeded with the first value."""
    return x.ewm_mean(span=span, adjust=False)


def wilder(x: pl.Expr, n: int, first: int) -> pl.Expr:
    """Wilder's smoothing of ``x``: seeded with the simple mean of ``x`` over rows
    ``first .. first+n-1``, then ``avg_t = (avg_{t-1} (n - 1) + x_t) / n``.

    Null before row ``first + n - 1``. ``first`` is the first row on which ``x`` is
    defined (1 for quantities built from a previous close). One compiled pass
    (:func:`sentio.features.kernels.wilder_values`).
    """
    return wilder_expr(x, n, first)


def rsi(close: pl.Expr, n: int) -> pl.Expr:
    """Wilder's RSI in [0, 100]: ``100 - 100 / (1 + avg_gain / avg_loss)`` (Wilder smoothing
    of one-bar gains and losses, seeded with their mean over the first ``n`` changes).

    100 when there were no losses, 50 when the price did not move at all; null for the
    first ``n`` rows. One compiled pass (:func:`sentio.features.kernels.rsi_values`).
    """
    return rsi_expr(close, n)


def true_range(high: pl.Expr, low: pl.Expr, close: pl.Expr) -> pl.Expr:
    """``max(H - L, |H - C_prev|, |L - C_prev|)``; ``H - L`` on the first row (no previous close)."""
    prev = close.shift(1)
    return pl.max_horizontal(high - low, (high - prev).abs(), (low - prev).abs())


def atr_rel(high: pl.Expr, low: pl.Expr, close: pl.Expr, n: int) -> pl.Expr:
    """Wilder's average true range divided by the close (a fraction of the price)."""
    return wilder(true_range(high, low, close), n, first=0) / close


def macd(close: pl.Expr, fast: int, slow: int, signal: int) -> tuple[pl.Expr, pl.Expr, pl.Expr]:
    """MACD line, signal and histogram, each divided by the close.

    line = EMA_fast(close) - EMA_slow(close); signal = EMA_signal(line);
    histogram = line - signal (EMAs seeded with the first value).
    """
    line = ema(close, fast) - ema(close, slow)
    sig = ema(line, signal)
    return line / close, sig / close, (line - sig) / close


def bollinger_pctb(close: pl.Expr, window: int, k: float, sd: pl.Expr | None = None) -> pl.Expr:
    """Bollinger %b: ``(C - lower) / (upper - lower)`` with bands ``mean +- k sd`` (ddof 0).

    0.5 when the window is flat. ``sd``: the window's std (ddof 0) when already computed.
    """
    mid = close.rolling_mean(window, min_samples=window)
    if sd is None:
        sd = rolling_std_expr(close, window, ddof=0)
    return safe_div(close - (mid - k * sd), 2.0 * k * sd, default=0.5)


def bollinger_width(close: pl.Expr, window: int, k: float, sd: pl.Expr | None = None) -> pl.Expr:
    """Bollinger band width relative to the middle band: ``2 k sd / mean`` (ddof 0)."""
    mid = close.rolling_mean(window, min_samples=window)
    if sd is None:
        sd = rolling_std_expr(close, window, ddof=0)
    return 2.0 * k * sd / mid
