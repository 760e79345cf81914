"""Compiled kernels for the feature plan's window, recursive and per-session indicators.

The feature plan is a polars lazy plan; its per-bar indicators and the normalisation run
here, as numba functions over whole columns: each indicator group is one causal pass
(several outputs where they share the work, e.g. Parkinson and Garman-Klass volatility
for every window from one pass of ``ln(H/L)`` and ``ln(C/O)``). Written as polars
expressions the same indicators took several times longer (rolling_std, Wilder smoothing
as a seeded ``ewm_mean`` behind conditional passes, ``cum_sum().over("session")`` grouping
by hashing, and a new column for every intermediate step). The kernels are compiled once
and cached on disk, run without the GIL so that polars evaluates several at once, and are
wrapped as polars expressions (``*_expr``; groups as Struct expressions, one field per
output) that sit in the same lazy plan as the rest.

Every kernel walks its column from the first row to the last and only looks backwards, so
a prefix of a series gives bit-identical values on the rows it shares with the whole
series (the truncation property the feature tests check). Missing values (polars nulls
reach a kernel as NaN) are left out of rolling statistics and skipped by the RSI; the
price-based groups expect complete bars (canonical bars have every price). Arithmetic is
double precision; the numpy functions return float64, or float32 with ``float32=True``,
which the expressions use (the feature frame is float32: half the memory traffic).

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
    "atr_rel",
    "atr_rel_expr",
    "bollinger",
    "bollinger_expr",
    "column_values",
    "macd",
    "macd_expr",
    "range_vol",
    "range_vol_expr",
    "returns",
    "returns_expr",
    "rolling_std",
    "rolling_std_expr",
    "rsi_expr",
    "rsi_values",
    "session_features",
    "session_features_expr",
    "zscore_expr",
    "zscores",
]

FLAT_VARIANCE = 1e-12
"""A window variance at or below this fraction of the window's mean of squares counts as
zero (a flat window, up to rounding): its z-score is 0."""

RESYNC_WINDOWS = 4
"""Rolling statistics are recomputed from scratch every this many windows of rows."""

_ZSCORE, _STD = 0, 1
_BLOCK = 1024


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
    mean_out: np.ndarray,
) -> None:
    """One causal pass of windowed mean/variance over ``x`` into ``out``.

    ``window`` rows back, the current row included (0: every row so far). ``mode``
    ``_ZSCORE``: ``(x_t - mean) / std`` (ddof 1) clipped to ``+-param``; 0 for a flat
    window; ``fill`` for a missing ``x_t`` or fewer than ``max(min_count, 2)`` values in
    the window. ``_STD``: the standard deviation with ddof ``param``; ``fill`` with fewer
    than ``max(min_count, param + 1)`` values. A non-empty ``mean_out`` also receives the
    mean wherever ``out`` is not ``fill``.
    """
    n = x.shape[0]
    cnt = 0
    mean = 0.0
    m2 = 0.0
    inv_w = 1.0 / window if window > 0 else 0.0
    ddof = param if mode == _STD else 1.0
    full_scale = 1.0 / (window - ddof) if window > ddof else 0.0
    need = max(min_count, int(ddof) + 1)
    keep_mean = mean_out.shape[0] > 0
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
            if keep_mean:
                mean_out[t] = fill
            continue
        if keep_mean:
            mean_out[t] = mean
        var = max(m2, 0.0) * (full_scale if cnt == window else 1.0 / (cnt - ddof))
        if mode == _STD:
            out[t] = math.sqrt(var)
        elif var > FLAT_VARIANCE * (mean * mean + var):
            out[t] = min(max((v - mean) / math.sqrt(var), -param), param)
        else:
            out[t] = 0.0


@numba.njit(nogil=True, cache=True)
def _zscores_dense(x: np.ndarray, window: int, clip: float, fill: float, out: np.ndarray) -> bool:
    """:func:`_rolling` in ``_ZSCORE`` mode with full windows required, for a column
    without missing values (the normalisation's common case): the same values, faster.

    The sequential pass stores each row's mean and variance for a block of rows; the
    block's divisions and roots then run in :func:`_zscore_block`, a loop the compiler
    vectorises (they bound the one-row-at-a-time loop). Returns False, with ``out``
    unfinished, on meeting a missing value.
    """
    n = x.shape[0]
    means = np.empty(_BLOCK)
    variances = np.empty(_BLOCK)
    mean = 0.0
    m2 = 0.0
    inv_w = 1.0 / window
    inv_w1 = 1.0 / (window - 1)
    period = RESYNC_WINDOWS * window
    countdown = period
    for lo in range(0, n, _BLOCK):
        hi = min(n, lo + _BLOCK)
        for t in range(lo, hi):
            v = x[t]
            if math.isnan(v):
                return False
            countdown -= 1
            if countdown == 0:  # (t + 1) is a multiple of the period, as in _rolling
                countdown = period
                _, mean, m2 = _exact(x, t + 1 - window, t + 1)
            elif t >= window:
                u = x[t - window]
                dv = v - u
                new_mean = mean + dv * inv_w
                m2 += dv * (v - new_mean + u - mean)
                mean = new_mean
            else:
                d = v - mean
                mean += d / (t + 1)
                m2 += d * (v - mean)
            var = max(m2, 0.0) * inv_w1
            means[t - lo] = mean
            if t < window - 1:
                variances[t - lo] = -1.0
            elif var > FLAT_VARIANCE * (mean * mean + var):
                variances[t - lo] = var
            else:
                variances[t - lo] = 0.0
        _zscore_block(x, means, variances, lo, hi, clip, fill, out)
    return True


@numba.njit(nogil=True, cache=True, error_model="numpy")
def _zscore_block(
    x: np.ndarray,
    means: np.ndarray,
    variances: np.ndarray,
    lo: int,
    hi: int,
    clip: float,
    fill: float,
    out: np.ndarray,
) -> None:
    """Rows ``lo:hi`` of z-scores from their means and variances (-1: ``fill``; 0: a flat
    window, scored 0). Branch-free (every row divides; a select keeps the right value)
    and with IEEE division semantics, so that the loop vectorises."""
    for i in range(hi - lo):
        var = variances[i]
        z = (x[lo + i] - means[i]) / math.sqrt(var)
        z = min(max(z, -clip), clip)
        out[lo + i] = z if var > 0.0 else (0.0 if var == 0.0 else fill)


@numba.njit(nogil=True, cache=True)
def _new64(rows: int, n: int) -> np.ndarray:
    return np.empty((rows, n))


@numba.njit(nogil=True, cache=True)
def _new32(rows: int, n: int) -> np.ndarray:
    return np.empty((rows, n), dtype=np.float32)


def _empty_rows(rows: int, n: int, float32: bool) -> np.ndarray:
    """An uninitialised ``rows x n`` buffer (float32 or float64) from numba's allocator.

    Used instead of ``np.empty`` for large arrays: numpy asks the kernel for transparent
    huge pages on arrays of 4 MiB and more, and on machines that compact memory on demand
    for them every fresh buffer then costs milliseconds to fault in.
    """
    return (_new32 if float32 else _new64)(rows, n)


def _empty(n: int, float32: bool) -> np.ndarray:
    """:func:`_empty_rows` for one row, as a 1-D array."""
    return _empty_rows(1, n, float32)[0]


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
    float64 with ``float32=False``; the statistics are double precision either way.
    """
    span = _check_window("zscores", window, 2)
    need = (span or 2) if min_count is None else int(min_count)
    limit = math.inf if clip is None else float(clip)
    x = _float_array(values)
    out = _empty(x.shape[0], float32)
    if not (span and need == span and _zscores_dense(x, span, limit, float(fill), out)):
        _rolling(x, span, need, _ZSCORE, limit, float(fill), out, _empty(0, False))
    return out


def rolling_std(
    values: np.ndarray, window: int, ddof: int = 1, *, float32: bool = False
) -> np.ndarray:
    """Standard deviation (``ddof``) of the last ``window`` rows, the current one included.

    NaN until the window is full and for windows holding a missing value, like polars'
    ``rolling_std(window, min_samples=window, ddof=ddof)``. Float32 out with ``float32``.
    """
    span = _check_window("rolling_std", window, max(2, ddof + 1))
    x = _float_array(values)
    out = _empty(x.shape[0], float32)
    _rolling(x, span, span, _STD, float(ddof), np.nan, out, _empty(0, False))
    return out


@numba.njit(nogil=True, cache=True)
def _wilder_into(x: np.ndarray, n: int, first: int, out: np.ndarray) -> None:
    """Wilder's smoothing of ``x`` into ``out``: the mean of rows ``first .. first+n-1``
    on row ``first+n-1``, then ``avg_t = avg_{t-1} (n - 1) / n + x_t / n`` (multiplications
    by precomputed factors: a division would lengthen the loop's dependency chain); NaN
    before. A missing value after the seed gives NaN on its row and leaves the average
    as it was. ``out`` may be ``x`` (in place)."""
    seed = first + n - 1
    if x.shape[0] <= seed:
        out[:] = np.nan
        return
    s = 0.0
    for i in range(first, seed + 1):
        s += x[i]
    avg = s / n
    out[:seed] = np.nan  # after the seed is read: ``out`` may be ``x`` itself
    out[seed] = avg
    inv_n = 1.0 / n
    keep = (n - 1) * inv_n
    for t in range(seed + 1, x.shape[0]):
        v = x[t]
        if math.isnan(v):
            out[t] = np.nan
        else:
            avg = avg * keep + v * inv_n
            out[t] = avg


@numba.njit(nogil=True, cache=True)
def _rsi(close: np.ndarray, n: int, out: np.ndarray) -> None:
    m = close.shape[0]
    out[:] = np.nan
    if m <= n:
        return
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
    inv_n = 1.0 / n
    keep = (n - 1) * inv_n
    prev = close[n]
    for t in range(n, m):
        if t > n:
            c = close[t]
            if math.isnan(c):
                continue
            d = c - prev
            prev = c
            gain = gain * keep + max(d, 0.0) * inv_n
            loss = loss * keep + max(-d, 0.0) * inv_n
        if loss > 0:
            out[t] = 100.0 - 100.0 / (1.0 + gain / loss)
        elif gain > 0:
            out[t] = 100.0
        elif gain == 0:
            out[t] = 50.0


def rsi_values(close: np.ndarray, n: int, *, float32: bool = False) -> np.ndarray:
    """Wilder's RSI (0..100): one-bar gains and losses, Wilder-smoothed from the mean of the
    first ``n`` changes; 100 with no losses, 50 when the price did not move.

    NaN for the first ``n`` rows. A missing close after them is skipped (NaN on its row;
    the next change is measured from the last known close); one among the first ``n + 1``
    leaves every row NaN.
    """
    if n < 1:
        raise ValueError(f"rsi: need n >= 1, got {n}")
    c = _float_array(close)
    out = _empty(c.shape[0], float32)
    _rsi(c, int(n), out)
    return out


@numba.njit(nogil=True, cache=True)
def _atr_rel(high: np.ndarray, low: np.ndarray, close: np.ndarray, n: int, out: np.ndarray) -> None:
    m = close.shape[0]
    tr = np.empty(m)
    for t in range(m):
        tr[t] = high[t] - low[t]
        if t > 0:
            prev = close[t - 1]
            tr[t] = max(tr[t], abs(high[t] - prev), abs(low[t] - prev))
    _wilder_into(tr, n, 0, tr)  # in place: row t is read before it is written
    for t in range(m):
        out[t] = tr[t] / close[t]


def atr_rel(
    high: np.ndarray, low: np.ndarray, close: np.ndarray, n: int, *, float32: bool = False
) -> np.ndarray:
    """Wilder's average true range over ``n`` bars divided by the close.

    True range ``max(H - L, |H - C_prev|, |L - C_prev|)`` (``H - L`` on the first row),
    Wilder-smoothed from the mean of the first ``n``; NaN for the first ``n - 1`` rows.
    """
    if n < 1:
        raise ValueError(f"atr: need n >= 1, got {n}")
    c = _float_array(close)
    out = _empty(c.shape[0], float32)
    _atr_rel(_float_array(high), _float_array(low), c, int(n), out)
    return out


@numba.njit(nogil=True, cache=True)
def _window_sum(x: np.ndarray, lo: int, hi: int) -> float:
    """Sum of ``x[lo:hi]`` with four interleaved accumulators (a fixed order)."""
    s0 = s1 = s2 = s3 = 0.0
    i = lo
    while i + 4 <= hi:
        s0 += x[i]
        s1 += x[i + 1]
        s2 += x[i + 2]
        s3 += x[i + 3]
        i += 4
    while i < hi:
        s0 += x[i]
        i += 1
    return (s0 + s1) + (s2 + s3)


@numba.njit(nogil=True, cache=True)
def _rolling_mean(x: np.ndarray, window: int, out: np.ndarray) -> None:
    """Mean of the last ``window`` values of a column without missing values (NaN until
    the window is full): a sliding sum, recomputed exactly every :data:`RESYNC_WINDOWS`
    windows at fixed rows like :func:`_rolling`."""
    n = x.shape[0]
    inv_w = 1.0 / window
    period = RESYNC_WINDOWS * window
    countdown = period
    s = 0.0
    for t in range(n):
        countdown -= 1
        if countdown == 0:
            countdown = period
            s = _window_sum(x, t + 1 - window, t + 1)
        else:
            s += x[t]
            if t >= window:
                s -= x[t - window]
        out[t] = s * inv_w if t >= window - 1 else np.nan


@numba.njit(nogil=True, cache=True)
def _returns(log_c: np.ndarray, horizons: np.ndarray, windows: np.ndarray, out: np.ndarray) -> None:
    m = log_c.shape[0]
    for k in range(horizons.shape[0]):
        h = horizons[k]
        for t in range(m):
            out[k, t] = log_c[t] - log_c[t - h] if t >= h else np.nan
    if windows.shape[0] == 0:
        return
    r1 = np.empty(m)
    for t in range(m):
        r1[t] = log_c[t] - log_c[t - 1] if t >= 1 else np.nan
    for j in range(windows.shape[0]):
        w = windows[j]
        _rolling(r1, w, w, _STD, 1.0, np.nan, out[horizons.shape[0] + j], np.empty(0))


def returns(
    close: np.ndarray, horizons: list[int], windows: list[int], *, float32: bool = False
) -> np.ndarray:
    """Log returns and close-to-close realized volatility: one row per horizon ``h``
    (``ln C_t - ln C_{t-h}``, NaN for the first ``h`` rows), then one per window ``W``
    (sample std, ddof 1, of the last ``W`` one-bar log returns; NaN until ``W`` returns
    are known, i.e. for the first ``W`` rows)."""
    spans = np.array([_check_window("returns", h, 1) for h in horizons], dtype=np.int64)
    wins = np.array([_check_window("realized_vol", w, 2) for w in windows], dtype=np.int64)
    c = _float_array(close)
    log_c = _empty(c.shape[0], False)
    np.log(c, out=log_c)  # vectorised (see range_vol)
    out = _empty_rows(len(spans) + len(wins), c.shape[0], float32)
    _returns(log_c, spans, wins, out)
    return out


@numba.njit(nogil=True, cache=True)
def _range_vol(
    log_hl: np.ndarray, log_co: np.ndarray, windows: np.ndarray, out: np.ndarray
) -> None:
    m = log_hl.shape[0]
    gk_c = 2.0 * math.log(2.0) - 1.0
    hl2, gk = log_hl, log_co  # the squared terms replace the logarithms in place
    for t in range(m):
        a, b = log_hl[t], log_co[t]
        hl2[t] = a * a
        gk[t] = 0.5 * a * a - gk_c * b * b
    park_c = 1.0 / (4.0 * math.log(2.0))
    mean = np.empty(m)
    for k in range(windows.shape[0]):
        w = windows[k]
        park, garman = out[2 * k], out[2 * k + 1]
        _rolling_mean(hl2, w, mean)
        for t in range(m):
            park[t] = math.sqrt(mean[t] * park_c)
        _rolling_mean(gk, w, mean)
        for t in range(m):
            garman[t] = math.sqrt(max(mean[t], 0.0))


def range_vol(
    open_: np.ndarray,
    high: np.ndarray,
    low: np.ndarray,
    close: np.ndarray,
    windows: list[int],
    *,
    float32: bool = False,
) -> np.ndarray:
    """Range-based volatility per bar over each window: rows ``2k`` and ``2k + 1`` of the
    result are Parkinson ``sqrt(mean(ln(H/L)^2) / (4 ln 2))`` and Garman-Klass
    ``sqrt(max(mean(0.5 ln(H/L)^2 - (2 ln 2 - 1) ln(C/O)^2), 0))`` over ``windows[k]``
    bars; NaN until the window is full."""
    spans = np.array([_check_window("range_vol", w, 1) for w in windows], dtype=np.int64)
    o, h, lo, c = (_float_array(a) for a in (open_, high, low, close))
    # Logarithms vectorised by numpy (several times faster than one call per row), into
    # buffers the kernel then overwrites.
    log_hl, log_co = _empty(c.shape[0], False), _empty(c.shape[0], False)
    np.log(np.divide(h, lo, out=log_hl), out=log_hl)
    np.log(np.divide(c, o, out=log_co), out=log_co)
    out = _empty_rows(2 * len(spans), c.shape[0], float32)
    _range_vol(log_hl, log_co, spans, out)
    return out


@numba.njit(nogil=True, cache=True)
def _macd(close: np.ndarray, fast: int, slow: int, signal: int, out: np.ndarray) -> None:
    m = close.shape[0]
    if m == 0:
        return
    a_fast, a_slow, a_sig = 2.0 / (fast + 1), 2.0 / (slow + 1), 2.0 / (signal + 1)
    e_fast = e_slow = close[0]
    sig = 0.0
    for t in range(m):
        c = close[t]
        if t > 0:
            e_fast = (1.0 - a_fast) * e_fast + a_fast * c
            e_slow = (1.0 - a_slow) * e_slow + a_slow * c
        line = e_fast - e_slow
        sig = line if t == 0 else (1.0 - a_sig) * sig + a_sig * line
        inv_c = 1.0 / c
        out[0, t] = line * inv_c
        out[1, t] = sig * inv_c
        out[2, t] = (line - sig) * inv_c


def macd(
    close: np.ndarray, fast: int, slow: int, signal: int, *, float32: bool = False
) -> np.ndarray:
    """MACD line, signal and histogram (rows 0, 1, 2), each divided by the close.

    EMAs with ``alpha = 2 / (span + 1)`` seeded with the first value:
    line = EMA_fast(close) - EMA_slow(close), signal = EMA_signal(line), histogram =
    line - signal. The closes must all be present.
    """
    if min(fast, slow, signal) < 1:
        raise ValueError(f"macd: spans must be >= 1, got {(fast, slow, signal)}")
    c = _float_array(close)
    out = _empty_rows(3, c.shape[0], float32)
    _macd(c, int(fast), int(slow), int(signal), out)
    return out


@numba.njit(nogil=True, cache=True)
def _bollinger(close: np.ndarray, window: int, k: float, out: np.ndarray) -> None:
    m = close.shape[0]
    sd, mid = np.empty(m), np.empty(m)
    _rolling(close, window, window, _STD, 0.0, np.nan, sd, mid)
    for t in range(m):
        s, c, mu = sd[t], close[t], mid[t]
        if math.isnan(s):
            out[0, t] = np.nan
            out[1, t] = np.nan
            continue
        if not s * s > FLAT_VARIANCE * (mu * mu + s * s):  # a flat window, up to rounding
            s = 0.0
        out[0, t] = (c - (mu - k * s)) / (2.0 * k * s) if s > 0 else 0.5
        out[1, t] = 2.0 * k * s / mu if mu != 0 else np.nan


def bollinger(close: np.ndarray, window: int, k: float, *, float32: bool = False) -> np.ndarray:
    """Bollinger %b (row 0: ``(C - lower) / (upper - lower)``) and band width relative to
    the middle band (row 1: ``2 k sd / mean``), bands ``mean +- k sd`` of the last
    ``window`` closes (ddof 0); NaN until the window is full. A flat window (variance at
    most :data:`FLAT_VARIANCE` of the mean of squares) has %b 0.5 and width 0; a middle
    band of 0 (not a price) has no width (NaN)."""
    span = _check_window("bollinger", window, 1)
    c = _float_array(close)
    out = _empty_rows(2, c.shape[0], float32)
    _bollinger(c, span, float(k), out)
    return out


@numba.njit(nogil=True, cache=True)
def _session_ratios(
    high: np.ndarray,
    low: np.ndarray,
    close: np.ndarray,
    volume: np.ndarray,
    first: np.ndarray,
    out: np.ndarray,
) -> None:
    pv = vol = top = bottom = 0.0
    for t in range(close.shape[0]):
        h, lo, c, v = high[t], low[t], close[t], volume[t]
        if first[t] or t == 0:
            pv = vol = 0.0
            top, bottom = h, lo
        pv += (h + lo + c) / 3.0 * v
        vol += v
        top = max(top, h)
        bottom = min(bottom, lo)
        out[0, t] = c / (pv / vol) if vol > 0 else 1.0
        out[1, t] = c / top
        out[2, t] = c / bottom


@numba.njit(nogil=True, cache=True)
def _copy_into(src: np.ndarray, dst: np.ndarray) -> None:
    for i in range(src.shape[0]):
        for t in range(src.shape[1]):
            dst[i, t] = src[i, t]


def session_features(
    high: np.ndarray,
    low: np.ndarray,
    close: np.ndarray,
    volume: np.ndarray,
    first: np.ndarray,
    *,
    float32: bool = False,
) -> np.ndarray:
    """Per-session running features, restarted on every row where ``first`` is true:
    row 0 ``ln(C / VWAP)`` with the session VWAP of the typical price ``(H + L + C) / 3``
    so far (0 while the session has traded no volume), rows 1 and 2 ``ln(C / max H)`` and
    ``ln(C / min L)`` over the session so far. Prices and volumes must all be present."""
    starts = np.ascontiguousarray(first, dtype=np.bool_)
    c = _float_array(close)
    if starts.shape != c.shape:
        raise ValueError(f"session_features: {c.shape[0]} bars but {starts.shape[0]} flags")
    ratios = _empty_rows(3, c.shape[0], False)
    _session_ratios(_float_array(high), _float_array(low), c, _float_array(volume), starts, ratios)
    np.log(ratios, out=ratios)  # vectorised, in double precision (the ratios are near 1)
    if not float32:
        return ratios
    out = _empty_rows(3, c.shape[0], True)
    _copy_into(ratios, out)
    return out


def column_values(series: pl.Series) -> np.ndarray:
    """The values of a polars column as numpy, nulls as NaN (Boolean nulls as True).

    Without nulls this is a view of polars' memory; with them polars fills a copy
    (rather than numpy: see :func:`_empty`).
    """
    if series.null_count():
        fill = True if series.dtype == pl.Boolean else np.nan
        series = series.fill_null(fill)
    return series.to_numpy()


def _single(
    inputs: list[pl.Expr], fn: Callable[..., np.ndarray], name: str | None = None
) -> pl.Expr:
    """``fn`` over whole Float64 columns (numpy in, one float32 array out) as a Float32
    expression; NaN becomes null."""

    def run(series: Sequence[pl.Series]) -> pl.Series:
        arrays = [column_values(s) for s in series]
        return pl.Series(name or series[0].name, fn(*arrays), dtype=pl.Float32, nan_to_null=True)

    return pl.map_batches(inputs, run, return_dtype=pl.Float32)


def _struct(inputs: list[pl.Expr], fn: Callable[..., np.ndarray], fields: list[str]) -> pl.Expr:
    """``fn`` returning one row per field (a 2-D float32 array) as a Struct expression of
    Float32 ``fields``; NaN becomes null."""
    dtype = pl.Struct({f: pl.Float32 for f in fields})

    def run(series: Sequence[pl.Series]) -> pl.Series:
        rows = fn(*(column_values(s) for s in series))
        frame = pl.DataFrame(
            [pl.Series(f, rows[i], nan_to_null=True) for i, f in enumerate(fields)]
        )
        return frame.to_struct(series[0].name)

    return pl.map_batches(inputs, run, return_dtype=dtype)


def _f64(*columns: pl.Expr) -> list[pl.Expr]:
    return [c.cast(pl.Float64) for c in columns]


def zscore_expr(
    x: pl.Expr, window: int, clip: float | None = None, *, log1p: bool = False
) -> pl.Expr:
    """:func:`zscores` over full windows (of ``ln(1 + x)`` with ``log1p``) as a Float32
    expression, null where undefined."""

    def run(a: np.ndarray) -> np.ndarray:
        return zscores(np.log1p(a) if log1p else a, window, clip, fill=np.nan)

    return _single(_f64(x), run)


def rolling_std_expr(x: pl.Expr, window: int, ddof: int = 1) -> pl.Expr:
    """:func:`rolling_std` as a Float32 expression, null where undefined."""
    return _single(_f64(x), lambda a: rolling_std(a, window, ddof, float32=True))


def rsi_expr(close: pl.Expr, n: int) -> pl.Expr:
    """:func:`rsi_values` as a Float32 expression, null where undefined."""
    return _single(_f64(close), lambda a: rsi_values(a, n, float32=True))


def atr_rel_expr(high: pl.Expr, low: pl.Expr, close: pl.Expr, n: int) -> pl.Expr:
    """:func:`atr_rel` as a Float32 expression, null where undefined."""
    return _single(_f64(high, low, close), lambda h, lo, c: atr_rel(h, lo, c, n, float32=True))


def returns_expr(close: pl.Expr, horizons: list[int], windows: list[int]) -> pl.Expr:
    """:func:`returns` as a Struct expression with fields ``ret_{h}`` and ``rv_{W}``."""
    fields = [f"ret_{h}" for h in horizons] + [f"rv_{w}" for w in windows]
    return _struct(_f64(close), lambda c: returns(c, horizons, windows, float32=True), fields)


def range_vol_expr(
    open_: pl.Expr, high: pl.Expr, low: pl.Expr, close: pl.Expr, windows: list[int]
) -> pl.Expr:
    """:func:`range_vol` as a Struct expression with fields ``park_{w}`` and ``gk_{w}``."""
    fields = [f"{kind}_{w}" for w in windows for kind in ("park", "gk")]
    return _struct(
        _f64(open_, high, low, close),
        lambda o, h, lo, c: range_vol(o, h, lo, c, windows, float32=True),
        fields,
    )


def macd_expr(close: pl.Expr, fast: int, slow: int, signal: int) -> pl.Expr:
    """:func:`macd` as a Struct expression with fields ``line``, ``signal``, ``hist``."""
    return _struct(
        _f64(close),
        lambda c: macd(c, fast, slow, signal, float32=True),
        ["line", "signal", "hist"],
    )


def bollinger_expr(close: pl.Expr, window: int, k: float) -> pl.Expr:
    """:func:`bollinger` as a Struct expression with fields ``pctb`` and ``width``."""
    return _struct(_f64(close), lambda c: bollinger(c, window, k, float32=True), ["pctb", "width"])


def session_features_expr(
    high: pl.Expr, low: pl.Expr, close: pl.Expr, volume: pl.Expr, first: pl.Expr
) -> pl.Expr:
    """:func:`session_features` as a Struct expression with fields ``vwap_dist``,
    ``dist_high`` and ``dist_low``; ``first`` a Boolean expression (null counts as a
    session start)."""
    return _struct(
        [*_f64(high, low, close, volume), first],
        lambda h, lo, c, v, f: session_features(h, lo, c, v, f, float32=True),
        ["vwap_dist", "dist_high", "dist_low"],
    )
