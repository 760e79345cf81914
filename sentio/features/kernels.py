"""Compiled kernels for the feature plan's sliding-window, recursive and per-session hot spots.

Most features are plain polars expressions. A few computations are several times slower
that way than one pass over the column needs to be: rolling standard deviations and the
causal z-scores of every feature column (the normalisation), Wilder's recursive smoothing
(RSI, ATR: in polars a seeded ``ewm_mean`` behind several conditional passes) and
cumulative sums and extremes within each session (``cum_sum().over("session")`` groups by
hashing). They run here as single-pass numba functions, compiled once and cached on disk,
released from the GIL so that several columns run at once, and are wrapped as polars
expressions (``*_expr``) that sit in the same lazy plan as the rest.

Every kernel walks its column from the first row to the last and only looks backwards, so
a prefix of a series gives bit-identical values on the rows it shares with the whole
series (the truncation property the feature tests check). Missing values (polars nulls
reach a kernel as NaN) are left out of the statistics.

Rolling statistics use the sliding Welford update (add the value entering the window,
remove the one leaving it) and are recomputed exactly, by a two-pass sum over the window,
every :data:`RESYNC_WINDOWS` windows at fixed row indices (so prefixes still agree):
rounding errors cannot accumulate for long, and a price spike leaves no trace a few
windows after it has left the window.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numba
import numpy as np
import polars as pl

__all__ = [
    "FLAT_VARIANCE",
    "RESYNC_WINDOWS",
    "rolling_std",
    "rolling_std_expr",
    "rsi_expr",
    "rsi_values",
    "segment_cum",
    "segment_cum_expr",
    "wilder_expr",
    "wilder_values",
    "zscore_expr",
    "zscores",
]

FLAT_VARIANCE = 1e-12
"""A window variance at or below this fraction of the window's mean of squares counts as
zero (a flat window, up to rounding): its z-score is 0."""

RESYNC_WINDOWS = 4
"""Rolling statistics are recomputed from scratch every this many windows of rows."""

_ZSCORE, _STD = 0, 1
_SUM, _MAX, _MIN = 0, 1, 2
SEGMENT_OPS = {"sum": _SUM, "max": _MAX, "min": _MIN}


@numba.njit(nogil=True, cache=True)
def _exact(x: np.ndarray, lo: int, hi: int) -> tuple[int, float, float]:
    """Count, mean and sum of squared deviations of the non-missing ``x[lo:hi]``.

    Two passes, four interleaved accumulators each (a fixed order: deterministic).
    """
    c0 = c1 = c2 = c3 = 0
    s0 = s1 = s2 = s3 = 0.0
    i = lo
    while i + 4 <= hi:
        a, b, c, d = x[i], x[i + 1], x[i + 2], x[i + 3]
        if not math.isnan(a):
            s0 += a
            c0 += 1
        if not math.isnan(b):
            s1 += b
            c1 += 1
        if not math.isnan(c):
            s2 += c
            c2 += 1
        if not math.isnan(d):
            s3 += d
            c3 += 1
        i += 4
    while i < hi:
        a = x[i]
        if not math.isnan(a):
            s0 += a
            c0 += 1
        i += 1
    cnt = (c0 + c1) + (c2 + c3)
    if cnt == 0:
        return 0, 0.0, 0.0
    mean = ((s0 + s1) + (s2 + s3)) / cnt
    q0 = q1 = q2 = q3 = 0.0
    i = lo
    while i + 4 <= hi:
        a, b, c, d = x[i] - mean, x[i + 1] - mean, x[i + 2] - mean, x[i + 3] - mean
        if not math.isnan(a):
            q0 += a * a
        if not math.isnan(b):
            q1 += b * b
        if not math.isnan(c):
            q2 += c * c
        if not math.isnan(d):
            q3 += d * d
        i += 4
    while i < hi:
        a = x[i] - mean
        if not math.isnan(a):
            q0 += a * a
        i += 1
    return cnt, mean, (q0 + q1) + (q2 + q3)


@numba.njit(nogil=True, cache=True)
def _rolling(
    x: np.ndarray,
    window: int,
    min_count: int,
    mode: int,
    param: float,
    fill: float,
    out: np.ndarray,
) -> None:
    """One causal pass of windowed mean/variance over ``x`` into ``out``.

    ``window`` rows back, the current row included (0: every row so far). ``mode``
    ``_ZSCORE``: ``(x_t - mean) / std`` (ddof 1) clipped to ``+-param``; 0 for a flat
    window; ``fill`` for a missing ``x_t`` or fewer than ``max(min_count, 2)`` values in
    the window. ``_STD``: the standard deviation with ddof ``param``; ``fill`` with fewer
    than ``max(min_count, param + 1)`` values.
    """
    n = x.shape[0]
    cnt = 0
    mean = 0.0
    m2 = 0.0
    inv_w = 1.0 / window if window > 0 else 0.0
    ddof = param if mode == _STD else 1.0
    full_scale = 1.0 / (window - ddof) if window > ddof else 0.0
    need = max(min_count, int(ddof) + 1)
    period = RESYNC_WINDOWS * window
    countdown = period
    for t in range(n):
        v = x[t]
        countdown -= 1
        if window > 0 and countdown == 0:  # (t + 1) is a multiple of the period
            countdown = period
            cnt, mean, m2 = _exact(x, t + 1 - window, t + 1)
        else:
            u = x[t - window] if window > 0 and t >= window else np.nan
            if (
                cnt == window and not math.isnan(v) and not math.isnan(u)
            ):  # a full window slides by one row
                dv = v - u
                new_mean = mean + dv * inv_w
                m2 += dv * (v - new_mean + u - mean)
                mean = new_mean
            else:
                if not math.isnan(u):
                    cnt -= 1
                    if cnt == 0:
                        mean = 0.0
                        m2 = 0.0
                    else:
                        d = u - mean
                        mean -= d / cnt
                        m2 -= d * (u - mean)
                if not math.isnan(v):
                    cnt += 1
                    d = v - mean
                    mean += d / cnt
                    m2 += d * (v - mean)
        if cnt < need or (mode == _ZSCORE and math.isnan(v)):
            out[t] = fill
            continue
        var = max(m2, 0.0) * (full_scale if cnt == window else 1.0 / (cnt - ddof))
        if mode == _STD:
            out[t] = math.sqrt(var)
        elif var > FLAT_VARIANCE * (mean * mean + var):
            out[t] = min(max((v - mean) / math.sqrt(var), -param), param)
        else:
            out[t] = 0.0


@numba.njit(nogil=True, cache=True)
def _rolling32(
    x: np.ndarray, window: int, min_count: int, mode: int, param: float, fill: float
) -> np.ndarray:
    out = np.empty(x.shape[0], dtype=np.float32)
    _rolling(x, window, min_count, mode, param, fill, out)
    return out


@numba.njit(nogil=True, cache=True)
def _rolling64(
    x: np.ndarray, window: int, min_count: int, mode: int, param: float, fill: float
) -> np.ndarray:
    out = np.empty(x.shape[0], dtype=np.float64)
    _rolling(x, window, min_count, mode, param, fill, out)
    return out


def _float_array(values: np.ndarray) -> np.ndarray:
    """A contiguous float32/float64 view of ``values`` (copied only when it must be)."""
    arr = np.asarray(values)
    if arr.dtype not in (np.float32, np.float64):
        arr = arr.astype(np.float64)
    return np.ascontiguousarray(arr)


def _check_window(name: str, window: int | None, least: int) -> int:
    if window is None:
        return 0
    if int(window) < least:
        raise ValueError(f"{name}: window must be at least {least} rows, got {window}")
    return int(window)


def zscores(
    values: np.ndarray,
    window: int | None,
    clip: float | None,
    *,
    min_count: int | None = None,
    fill: float = 0.0,
    float32: bool = True,
) -> np.ndarray:
    """Causal z-scores of ``values``: ``(x_t - mean) / std`` (ddof 1), clipped to ``+-clip``.

    The mean and std of the last ``window`` rows, the current one included, or of every
    row so far with ``None``. Missing values (NaN) are left out of the statistics. A
    missing ``x_t``, or a row whose window holds fewer than ``min_count`` values (default:
    ``window``, a full window; 2 when expanding), gives ``fill``; a flat window (variance
    at most :data:`FLAT_VARIANCE` of the mean of squares) gives 0. Float32 out, or
    float64 with ``float32=False``.
    """
    span = _check_window("zscores", window, 2)
    need = (span or 2) if min_count is None else int(min_count)
    limit = math.inf if clip is None else float(clip)
    run = _rolling32 if float32 else _rolling64
    return run(_float_array(values), span, need, _ZSCORE, limit, float(fill))


def rolling_std(values: np.ndarray, window: int, ddof: int = 1) -> np.ndarray:
    """Standard deviation (``ddof``) of the last ``window`` rows, the current one included.

    NaN until the window is full and for windows holding a missing value, like polars'
    ``rolling_std(window, min_samples=window, ddof=ddof)``.
    """
    span = _check_window("rolling_std", window, max(2, ddof + 1))
    return _rolling64(_float_array(values), span, span, _STD, float(ddof), np.nan)


@numba.njit(nogil=True, cache=True)
def _wilder(x: np.ndarray, n: int, first: int) -> np.ndarray:
    out = np.full(x.shape[0], np.nan)
    seed = first + n - 1
    if x.shape[0] <= seed:
        return out
    s = 0.0
    for i in range(first, seed + 1):
        s += x[i]
    avg = s / n
    out[seed] = avg
    for t in range(seed + 1, x.shape[0]):
        v = x[t]
        if not math.isnan(v):
            avg = (avg * (n - 1) + v) / n
            out[t] = avg
    return out


def wilder_values(values: np.ndarray, n: int, first: int) -> np.ndarray:
    """Wilder's smoothing: the mean of rows ``first .. first+n-1`` on row ``first+n-1``,
    then ``avg_t = (avg_{t-1} (n - 1) + x_t) / n``.

    NaN before the seed row; a missing value inside the seed leaves every row NaN, one
    after it gives NaN on its row and leaves the average unchanged.
    """
    if n < 1 or first < 0:
        raise ValueError(f"wilder: need n >= 1 and first >= 0, got n={n}, first={first}")
    return _wilder(_float_array(values), int(n), int(first))


@numba.njit(nogil=True, cache=True)
def _rsi(close: np.ndarray, n: int) -> np.ndarray:
    m = close.shape[0]
    out = np.full(m, np.nan)
    if m <= n:
        return out
    gain = 0.0
    loss = 0.0
    for t in range(1, n + 1):
        d = close[t] - close[t - 1]
        if d > 0:
            gain += d
        else:
            loss -= d
    gain /= n
    loss /= n
    prev = close[n]
    for t in range(n, m):
        if t > n:
            c = close[t]
            if math.isnan(c):
                continue
            d = c - prev
            prev = c
            gain = (gain * (n - 1) + max(d, 0.0)) / n
            loss = (loss * (n - 1) + max(-d, 0.0)) / n
        if loss > 0:
            out[t] = 100.0 - 100.0 / (1.0 + gain / loss)
        elif gain > 0:
            out[t] = 100.0
        elif gain == 0:
            out[t] = 50.0
    return out


def rsi_values(close: np.ndarray, n: int) -> np.ndarray:
    """Wilder's RSI (0..100): one-bar gains and losses, Wilder-smoothed from the mean of the
    first ``n`` changes; 100 with no losses, 50 when the price did not move.

    NaN for the first ``n`` rows. A missing close after them is skipped (NaN on its row;
    the next change is measured from the last known close); one among the first ``n + 1``
    leaves every row NaN.
    """
    if n < 1:
        raise ValueError(f"rsi: need n >= 1, got {n}")
    return _rsi(_float_array(close), int(n))


@numba.njit(nogil=True, cache=True)
def _segment_cum(x: np.ndarray, first: np.ndarray, op: int) -> np.ndarray:
    out = np.empty(x.shape[0], dtype=np.float64)
    acc = np.nan
    for t in range(x.shape[0]):
        v = x[t]
        if first[t] or math.isnan(acc):
            acc = v
        elif not math.isnan(v):
            if op == _SUM:
                acc += v
            elif op == _MAX:
                acc = max(acc, v)
            else:
                acc = min(acc, v)
        out[t] = acc
    return out


def segment_cum(values: np.ndarray, first: np.ndarray, op: str) -> np.ndarray:
    """Running ``op`` (``"sum"``, ``"max"``, ``"min"``) of ``values`` restarted on every row
    where ``first`` is true (the first row of a session).

    A missing value leaves the running value unchanged (NaN until the segment's first
    present value).
    """
    if op not in SEGMENT_OPS:
        raise ValueError(f"segment_cum: op must be one of {sorted(SEGMENT_OPS)}, got {op!r}")
    starts = np.ascontiguousarray(first, dtype=np.bool_)
    x = _float_array(values)
    if starts.shape != x.shape:
        raise ValueError(f"segment_cum: {x.shape[0]} values but {starts.shape[0]} flags")
    return _segment_cum(x, starts, SEGMENT_OPS[op])


def _as_expr(
    inputs: list[pl.Expr], fn: Callable[..., np.ndarray], dtype: type[pl.DataType]
) -> pl.Expr:
    """``fn`` over whole columns (numpy in, numpy out) as a polars expression; NaN -> null."""

    def run(series: Sequence[pl.Series]) -> pl.Series:
        arrays = [s.to_numpy() for s in series]
        return pl.Series(series[0].name, fn(*arrays), dtype=dtype, nan_to_null=True)

    return pl.map_batches(inputs, run, return_dtype=dtype)


def zscore_expr(x: pl.Expr, window: int, clip: float | None = None) -> pl.Expr:
    """:func:`zscores` over full windows as a Float64 expression, null where undefined."""
    return _as_expr(
        [x.cast(pl.Float64)],
        lambda a: zscores(a, window, clip, fill=np.nan, float32=False),
        pl.Float64,
    )


def rolling_std_expr(x: pl.Expr, window: int, ddof: int = 1) -> pl.Expr:
    """:func:`rolling_std` as a Float64 expression, null where undefined."""
    return _as_expr([x.cast(pl.Float64)], lambda a: rolling_std(a, window, ddof), pl.Float64)


def wilder_expr(x: pl.Expr, n: int, first: int) -> pl.Expr:
    """:func:`wilder_values` as a Float64 expression, null where undefined."""
    return _as_expr([x.cast(pl.Float64)], lambda a: wilder_values(a, n, first), pl.Float64)


def rsi_expr(close: pl.Expr, n: int) -> pl.Expr:
    """:func:`rsi_values` as a Float64 expression, null where undefined."""
    return _as_expr([close.cast(pl.Float64)], lambda a: rsi_values(a, n), pl.Float64)


def segment_cum_expr(x: pl.Expr, first: pl.Expr, op: str) -> pl.Expr:
    """:func:`segment_cum` as a Float64 expression; ``first`` a Boolean expression."""
    return _as_expr(
        [x.cast(pl.Float64), first.fill_null(True)],
        lambda a, f: segment_cum(a, f, op),
        pl.Float64,
    )
