"""Performance metrics of a strategy from its per-bar returns, positions and costs.

Inputs (numpy arrays of equal length, one entry per bar):

* ``returns``: the strategy's simple return over each bar, net of costs (fraction of equity).
* ``positions``: the signed exposure held OVER each bar as a fraction of equity (the
  position that earns ``returns[t]``; +0.5 = half of equity long, -1 = all of equity short).
  The strategy starts flat before the first bar.
* ``costs``: the costs paid in each bar. Any unit works (the metric is a plain sum); the
  pipeline passes fractions of equity at the time paid, the unit of ``returns``, so that
  ``costs_paid`` reads as the return given up to costs (simple sum, not compounded).
* ``timestamps``: the START of each bar (UTC; a naive clock is taken as UTC), used to detect
  the bar frequency for annualisation (:func:`periods_per_year`) and to express drawdown
  durations in days.

Annualisation follows the bar frequency actually present: 252 for daily bars and
252 x (median bars per New York session) for intraday bars, e.g. 252 x 390 = 98,280 for
one-minute regular-hours bars. A hard-coded 252 is never applied to intraday bars.

Undefined values are NaN (never ``None``, never an exception): see :data:`METRIC_KEYS`
for every key and its rule. :func:`metrics_to_json` turns NaN and infinities into ``None``
for strict JSON.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import polars as pl

from sentio.data.schema import session_date
from sentio.evaluation.errors import EvaluationError
from sentio.evaluation.rowstats import RowStats

__all__ = [
    "DAILY_PERIODS",
    "METRIC_KEYS",
    "DrawdownEpisodes",
    "TimestampsLike",
    "as_returns",
    "compute_metrics",
    "drawdown_episodes",
    "metrics_to_json",
    "periods_per_year",
    "to_daily",
]

DAILY_PERIODS = 252  # trading sessions per year
WEEKLY_PERIODS = 52
MONTHLY_PERIODS = 12

TimestampsLike = pl.Series | np.ndarray | Sequence[dt.datetime]

# Every key compute_metrics returns, in a stable order, with its convention.
METRIC_KEYS: dict[str, str] = {
    "n_bars": "number of bars",
    "periods_per_year": "bars per year used to annualise (see periods_per_year())",
    "years": "n_bars / periods_per_year",
    "mean_return": "arithmetic mean return per bar",
    "total_return": "prod(1 + r) - 1",
    "cagr": "(1 + total_return)^(1 / years) - 1; -1 once equity reaches zero; may overflow to inf on very short, strongly positive series",
    "volatility": "annualised volatility: sample std (ddof 1) per bar x sqrt(periods_per_year); NaN for fewer than 2 bars",
    "sharpe": "mean(r - rf) / std(r - rf) x sqrt(periods_per_year); 0 when r == rf on every bar (a flat strategy), NaN when std is 0 otherwise or fewer than 2 bars",
    "sortino": "(mean(r) - target) / sqrt(mean(min(r - target, 0)^2)) x sqrt(periods_per_year), downside deviation over ALL bars; 0 when every bar equals target, NaN when no bar is below target otherwise",
    "max_drawdown": "max over t of 1 - E_t / running peak of the compounded equity E (E_0 = 1 counts as a peak); positive fraction, 0 when never under water (above 1 only if a bar loses more than all equity)",
    "max_drawdown_duration_bars": "bars from the peak before the maximum drawdown to the recovery of that peak (or to the last bar if unrecovered); 0 without drawdown",
    "max_drawdown_duration_days": "the same span in calendar days between bar timestamps (equity after bar t is stamped with the start of bar t + 1, the final equity with the last bar's start); NaN without timestamps",
    "longest_drawdown_bars": "longest span in bars from a peak to its recovery (or to the end) among all drawdowns",
    "calmar": "cagr / max_drawdown; NaN when max_drawdown is 0",
    "var_95": "historical 5% value at risk per bar, a POSITIVE loss: -quantile(r, 0.05) (linear interpolation)",
    "cvar_95": "historical 5% expected shortfall per bar, a POSITIVE loss: -mean(r[r <= quantile(r, 0.05)])",
    "hit_rate": "with positions: share of bars with a nonzero position whose return is > 0; without: share of nonzero-return bars that are > 0; NaN when the denominator is 0",
    "turnover_per_bar": "mean over bars of |position_t - position_{t-1}| (starting flat; a final exit is not counted); NaN without positions",
    "annual_turnover": "turnover_per_bar x periods_per_year (sum of |position change| per year, in equity multiples); NaN without positions",
    "exposure_share": "share of bars with a nonzero position; NaN without positions",
    "mean_abs_exposure": "mean |position| over all bars; NaN without positions",
    "mean_net_exposure": "mean signed position over all bars; NaN without positions",
    "n_trades": "number of trades, a trade being a round trip from an entry to the exit that closes it (forced exits count): the sum of entries when given (the backtest's ledger rows), otherwise the maximal runs of bars with same-sign nonzero positions; NaN without positions",
    "avg_holding_bars": "bars held with a nonzero position / n_trades (the mean bars_held of the ledger); NaN without positions or without any trade",
    "costs_paid": "sum of the per-bar costs in the unit given (fraction of equity in the pipeline); NaN without costs",
    "annual_costs": "costs_paid / years; NaN without costs",
}


# --------------------------------------------------------------------------------------
# inputs


def as_returns(returns: Any, name: str = "returns") -> np.ndarray:
    """``returns`` as a 1-D float64 array (not copied when it already is one).

    Raises:
        EvaluationError: not one-dimensional, empty, or with a NaN or infinity.
    """
    arr = np.asarray(returns, dtype=np.float64)
    if arr.ndim != 1:
        raise EvaluationError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if arr.size == 0:
        raise EvaluationError(f"{name} is empty: need at least one bar")
    if not np.all(np.isfinite(arr)):
        bad = int(np.flatnonzero(~np.isfinite(arr))[0])
        raise EvaluationError(f"{name} has a non-finite value at position {bad}: {arr[bad]}")
    return arr


def _same_length(arr: np.ndarray, n: int, name: str) -> np.ndarray:
    if arr.shape[0] != n:
        raise EvaluationError(f"{name} has {arr.shape[0]} entries but returns has {n}")
    return arr


def _as_utc(timestamps: TimestampsLike) -> pl.Series:
    """Timestamps as a polars Datetime series in UTC; strictly increasing.

    Naive datetimes are taken as UTC. Plain dates (polars Date, numpy ``datetime64[D]``)
    are daily bars of those session dates, placed at 12:00 UTC (the same New York date).
    """
    if isinstance(timestamps, pl.Series):
        ts = timestamps
    elif isinstance(timestamps, np.ndarray):
        if not np.issubdtype(timestamps.dtype, np.datetime64):
            raise EvaluationError(
                f"timestamps must be datetime64 values, got numpy dtype {timestamps.dtype}"
            )
        if np.datetime_data(timestamps.dtype)[0] == "D":
            ts = pl.Series("timestamp", timestamps).cast(pl.Date)
        else:
            ts = pl.Series("timestamp", timestamps.astype("datetime64[us]"))
    else:
        ts = pl.Series("timestamp", list(timestamps))
    if ts.dtype == pl.Date:
        ts = ts.cast(pl.Datetime("us")) + dt.timedelta(hours=12)
    if not isinstance(ts.dtype, pl.Datetime):
        raise EvaluationError(f"timestamps must be datetimes, got {ts.dtype}")
    if ts.null_count():
        raise EvaluationError(f"timestamps have {ts.null_count()} missing values")
    tz = ts.dtype.time_zone
    ts = ts.dt.replace_time_zone("UTC") if tz is None else ts.dt.convert_time_zone("UTC")
    ts = ts.cast(pl.Datetime("us", "UTC"))
    if ts.len() >= 2:
        gaps = ts.diff().drop_nulls().dt.total_microseconds()
        if int(gaps.min() or 0) <= 0:  # type: ignore[arg-type]
            bad = int(np.flatnonzero(gaps.to_numpy() <= 0)[0]) + 1
            raise EvaluationError(
                f"timestamps must be strictly increasing: position {bad} ({ts[bad]}) "
                f"does not come after {ts[bad - 1]}"
            )
    return ts


def periods_per_year(timestamps: TimestampsLike) -> float:
    """Bars per year from the bar frequency actually present in ``timestamps``.

    * median gap between bars >= 20 days: monthly bars, 12;
    * median gap >= 4 days: weekly bars, 52;
    * median gap >= 20 hours: daily bars, 252;
    * otherwise intraday: 252 x the (upper) median number of bars per New York session date,
      e.g. 252 x 390 = 98,280 for one-minute regular-hours bars and 252 x 78 = 19,656 for
      five-minute bars. Early-close sessions (210 one-minute bars) and a partial first or
      last session do not move the median.

    Raises:
        EvaluationError: fewer than two timestamps, or not strictly increasing.
    """
    ts = _as_utc(timestamps)
    if ts.len() < 2:
        raise EvaluationError(
            f"need at least two timestamps to detect the bar frequency, got {ts.len()}"
        )
    gaps = ts.diff().drop_nulls().dt.total_seconds().to_numpy()
    median_gap_h = float(np.median(gaps)) / 3600.0
    if median_gap_h >= 20 * 24:
        return float(MONTHLY_PERIODS)
    if median_gap_h >= 4 * 24:
        return float(WEEKLY_PERIODS)
    if median_gap_h >= 20:
        return float(DAILY_PERIODS)
    counts = (
        pl.DataFrame({"timestamp": ts})
        .group_by(session_date(pl.col("timestamp")).alias("session"))
        .len()["len"]
        .to_numpy()
    )
    # the upper median: with two sessions, one of them partial, the full one counts
    return float(DAILY_PERIODS * np.sort(counts)[counts.size // 2])


_detect_periods_per_year = periods_per_year  # compute_metrics' argument shadows the name


def to_daily(returns: Any, timestamps: TimestampsLike) -> tuple[np.ndarray, np.ndarray]:
    """Compound intraday simple returns into one return per New York session date.

    Returns ``(daily_returns, dates)``: ``daily_returns[i] = prod(1 + r) - 1`` over the bars
    whose start falls on New York date ``dates[i]`` (numpy ``datetime64[D]``, ascending).
    """
    r = as_returns(returns)
    ts = _as_utc(timestamps)
    _same_length(np.empty(ts.len()), r.size, "timestamps")
    frame = (
        pl.DataFrame({"timestamp": ts, "r": r})
        .group_by(session_date(pl.col("timestamp")).alias("date"), maintain_order=True)
        .agg(((pl.col("r") + 1.0).product() - 1.0).alias("r"))
    )
    return frame["r"].to_numpy().astype(np.float64), frame["date"].to_numpy()


# --------------------------------------------------------------------------------------
# drawdowns


class DrawdownEpisodes(NamedTuple):
    """Every drawdown of a compounded equity curve, in time order, as parallel arrays.

    The equity curve has ``n + 1`` points: ``E_0 = 1`` before the first bar and
    ``E_k = prod_{s < k} (1 + r_s)`` after bar ``k - 1``. Indices are equity-point indices:
    ``peak`` the point the episode falls from, ``trough`` its (first) lowest point, ``end``
    the first point back at or above the peak (``n`` when the curve is still under water at
    the end); ``depth = 1 - E_trough / E_peak``. An episode lasts ``end - peak`` bars.
    """

    peak: np.ndarray
    trough: np.ndarray
    end: np.ndarray
    depth: np.ndarray


def drawdown_episodes(returns: Any) -> DrawdownEpisodes:
    """The drawdown episodes of the compounded equity curve of ``returns`` (vectorised)."""
    r = as_returns(returns)
    n = r.size
    equity = np.concatenate([[1.0], np.cumprod(1.0 + r)])
    under = equity < np.maximum.accumulate(equity)
    # runs of under-water points [start, stop); the point before a run is its peak
    edges = np.diff(np.concatenate([[0], under.astype(np.int8), [0]]))
    starts = np.flatnonzero(edges == 1)
    stops = np.flatnonzero(edges == -1)
    if starts.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return DrawdownEpisodes(empty, empty, empty, np.zeros(0))
    padded = np.concatenate([equity, [np.inf]])  # stops may be n + 1
    bounds = np.empty(2 * starts.size, dtype=np.int64)
    bounds[0::2], bounds[1::2] = starts, stops
    lows = np.minimum.reduceat(padded, bounds)[0::2]
    # first point of each run at its run's low
    points = np.flatnonzero(under)
    run = np.searchsorted(starts, points, side="right") - 1
    is_low = equity[points] == lows[run]
    at_low = points[is_low]
    _, first = np.unique(run[is_low], return_index=True)
    peaks = starts - 1
    return DrawdownEpisodes(
        peak=peaks,
        trough=at_low[first],
        end=np.minimum(stops, n),
        depth=1.0 - lows / equity[peaks],
    )


def _drawdown_stats(r: np.ndarray, ts: pl.Series | None) -> tuple[float, float, float]:
    """Duration of the maximum drawdown (bars, days) and the longest drawdown (bars)."""
    ep = drawdown_episodes(r)
    if ep.peak.size == 0:
        return 0.0, (0.0 if ts is not None else math.nan), 0.0
    k = int(np.argmax(ep.depth))  # the first of equally deep episodes
    peak, end = int(ep.peak[k]), int(ep.end[k])
    days = math.nan
    if ts is not None:
        n = r.size
        # equity point k is observed at the start of bar k; the last one at the last bar
        days = (ts[min(end, n - 1)] - ts[min(peak, n - 1)]).total_seconds() / 86_400.0
    return float(end - peak), days, float(np.max(ep.end - ep.peak))


# --------------------------------------------------------------------------------------
# positions


def _trade_runs(pos: np.ndarray) -> np.ndarray:
    """Lengths of the maximal runs of same-sign nonzero positions."""
    sign = np.sign(pos).astype(np.int8)
    if not np.any(sign):
        return np.zeros(0, dtype=np.int64)
    change = np.flatnonzero(np.diff(sign) != 0) + 1
    bounds = np.concatenate([[0], change, [sign.size]])
    run_sign = sign[bounds[:-1]]
    lengths = np.diff(bounds)
    return lengths[run_sign != 0]


# --------------------------------------------------------------------------------------
# the metrics


def compute_metrics(
    returns: Any,
    *,
    positions: Any = None,
    costs: Any = None,
    timestamps: TimestampsLike | None = None,
    periods_per_year: float | None = None,
    rf: float | Any = 0.0,
    target: float = 0.0,
    entries: Any = None,
) -> dict[str, float]:
    """All performance metrics of one strategy, keyed as in :data:`METRIC_KEYS`.

    Args:
        returns: per-bar simple returns, net of costs (1-D).
        positions: signed exposure held over each bar (fraction of equity), optional.
        costs: costs paid in each bar (fraction of equity in the pipeline), optional.
        timestamps: bar starts (UTC), optional; give them or ``periods_per_year``.
        periods_per_year: bars per year; overrides the frequency detected from
            ``timestamps``.
        rf: per-bar risk-free rate of the Sharpe ratio, a scalar or one value per bar.
        target: per-bar target return of the Sortino ratio.
        entries: trades entered in each bar (non-negative; a seed ensemble's are the
            seeds' mean), optional; needs
            ``positions``. A round trip that a forced sale at a close ends and a purchase at
            the next open restarts is two trades, which same-sign runs of ``positions``
            cannot tell apart: the backtest gives its ledger's entries here.

    Returns:
        A dict of floats with every key of :data:`METRIC_KEYS`, in that order; undefined
        values are NaN. Never raises on a flat strategy (all returns and positions zero).

    Raises:
        EvaluationError: empty or non-finite inputs, mismatched lengths, timestamps that
            are not strictly increasing, or neither timestamps nor ``periods_per_year``.
    """
    r = as_returns(returns)
    n = r.size
    ts = None
    if timestamps is not None:
        ts = _as_utc(timestamps)
        if ts.len() != n:
            raise EvaluationError(f"timestamps has {ts.len()} entries but returns has {n}")
    ppy = _annualisation(ts, periods_per_year)
    out, rows = _return_metrics(r, ts, ppy, rf, target)
    if positions is None and entries is not None:
        raise EvaluationError("entries need positions (the bars a trade is held over)")
    if positions is None:
        out["hit_rate"] = float(rows.hit_rate()[0])
    out.update(_position_metrics(r, positions, entries, ppy))
    out.update(_cost_metrics(costs, n, ppy))
    return {key: out[key] for key in METRIC_KEYS}


def _annualisation(ts: pl.Series | None, periods_per_year: float | None) -> float:
    """Bars per year: ``periods_per_year`` when given, else detected from ``ts``."""
    if periods_per_year is None:
        if ts is None:
            raise EvaluationError(
                "cannot annualise: give timestamps (the bar frequency is detected) "
                "or periods_per_year"
            )
        return _detect_periods_per_year(ts)
    ppy = float(periods_per_year)
    if not (ppy > 0 and math.isfinite(ppy)):
        raise EvaluationError(f"periods_per_year must be positive, got {periods_per_year}")
    return ppy


def _return_metrics(
    r: np.ndarray, ts: pl.Series | None, ppy: float, rf: float | Any, target: float
) -> tuple[dict[str, float], RowStats]:
    """The metrics of the returns alone (size, return, risk, drawdown) and their row stats."""
    n = r.size
    rf_arr = np.asarray(rf, dtype=np.float64)
    if rf_arr.ndim == 0:
        sharpe_rows = RowStats(r[None, :], periods_per_year=ppy, rf=float(rf_arr))
    else:
        rf_arr = _same_length(as_returns(rf_arr, "rf"), n, "rf")
        sharpe_rows = RowStats((r - rf_arr)[None, :], periods_per_year=ppy)
    rows = RowStats(r[None, :], periods_per_year=ppy, target=target)

    def one(values: np.ndarray) -> float:
        return float(values[0])

    dd_bars, dd_days, longest = _drawdown_stats(r, ts)
    out = {
        "n_bars": float(n),
        "periods_per_year": ppy,
        "years": n / ppy,
        "mean_return": one(rows.mean),
        "total_return": one(rows.total_return()),
        "cagr": one(rows.cagr()),
        "volatility": one(rows.volatility()),
        "sharpe": one(sharpe_rows.sharpe()),
        "sortino": one(rows.sortino()),
        "max_drawdown": one(rows.max_drawdown()),
        "max_drawdown_duration_bars": dd_bars,
        "max_drawdown_duration_days": dd_days,
        "longest_drawdown_bars": longest,
        "calmar": one(rows.calmar()),
        "var_95": one(rows.var()),
        "cvar_95": one(rows.cvar()),
    }
    return out, rows


def _position_metrics(r: np.ndarray, positions: Any, entries: Any, ppy: float) -> dict[str, float]:
    """Hit rate over the bars held, turnover, exposure and trades (NaN without positions)."""
    nan = math.nan
    if positions is None:
        return dict(
            turnover_per_bar=nan,
            annual_turnover=nan,
            exposure_share=nan,
            mean_abs_exposure=nan,
            mean_net_exposure=nan,
            n_trades=nan,
            avg_holding_bars=nan,
        )
    n = r.size
    pos = _same_length(as_returns(positions, "positions"), n, "positions")
    active = pos != 0
    n_active = int(active.sum())
    hit_rate = float((r[active] > 0).sum() / n_active) if n_active else nan
    turnover = float(np.abs(np.diff(pos, prepend=0.0)).sum()) / n
    if entries is None:
        n_trades = float(_trade_runs(pos).size)
    else:
        e = _same_length(as_returns(entries, "entries"), n, "entries")
        if (e < 0).any():
            raise EvaluationError("entries must be non-negative (trades entered per bar)")
        n_trades = float(e.sum())
    return dict(
        hit_rate=hit_rate,
        turnover_per_bar=turnover,
        annual_turnover=turnover * ppy,
        exposure_share=n_active / n,
        mean_abs_exposure=float(np.abs(pos).mean()),
        mean_net_exposure=float(pos.mean()),
        n_trades=float(n_trades),
        avg_holding_bars=n_active / n_trades if n_trades else nan,
    )


def _cost_metrics(costs: Any, n: int, ppy: float) -> dict[str, float]:
    """Costs paid in total and per year (NaN without costs)."""
    if costs is None:
        return dict(costs_paid=math.nan, annual_costs=math.nan)
    c = _same_length(as_returns(costs, "costs"), n, "costs")
    paid = float(c.sum())
    return dict(costs_paid=paid, annual_costs=paid / (n / ppy))


def metrics_to_json(metrics: dict[str, float]) -> dict[str, float | None]:
    """The metrics with NaN and infinities replaced by ``None`` (strict JSON has neither)."""
    return {k: (v if math.isfinite(v) else None) for k, v in metrics.items()}
