"""Causal per-bar inputs of the regime model.

Design (one row per bar of the underlying, all windows end at the bar itself):

* column 0, ``agg_log_return``: the sum of the last ``aggregate_bars`` intraday log returns
  ``log(close / open)``. Intraday returns exclude the overnight gap (the open of a session's
  first bar already contains it), so one gap cannot dominate a window; windows run across
  session boundaries.
* column 1, ``log_realized_vol``: ``log`` of the rolling mean ABSOLUTE intraday log return
  over the last ``vol_window`` bars (default 2730 = seven sessions; whole sessions average out
  the intraday U-shape). Mean absolute returns are a robust volatility estimate under fat
  tails; on synthetic data with Student-t(4) returns and a persistent stochastic log-vol they
  separated the regimes better than a rolling standard deviation or shorter windows (test
  balanced accuracy 0.79 vs 0.70 for the std, 0.60 for a 390-bar std, same data and seed).
  The value is floored at ``1e-12`` so that constant prices give a finite (constant) value.

Warm-up: the first ``max(aggregate_bars, vol_window) - 1`` bars lack a full window; they are
DROPPED (``RegimeInputs.timestamps`` starts after them and ``RegimeInputs.warmup`` counts
them). Every value depends on bars up to and including its own, so the rows computed on a
prefix of the bars are identical to the shared rows computed on the whole series.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from sentio.config import SentioConfig, resolve_for_bars, unresolved_settings
from sentio.data.schema import session_date, training_cutoff
from sentio.data.timestamps import infer_bar_seconds
from sentio.errors import DataError

__all__ = [
    "OBSERVATION_COLUMNS",
    "RETURN_COLUMN",
    "VOL_COLUMN",
    "RegimeInputs",
    "regime_observations",
    "train_rows",
]

OBSERVATION_COLUMNS = ("agg_log_return", "log_realized_vol")
RETURN_COLUMN = 0  # index of the aggregated return input (states are ordered by its variance)
VOL_COLUMN = 1  # index of the realized-volatility input (the quantile fallback uses it)
_STD_FLOOR = 1e-12


@dataclass(frozen=True, eq=False)
class RegimeInputs:
    """Regime-model inputs of the underlying bars after the warm-up.

    Attributes:
        timestamps: bar START times (UTC) of the rows of ``X``.
        X: float64 array ``(T, 2)``; columns as in :data:`OBSERVATION_COLUMNS`.
        columns: names of the columns of ``X``.
        warmup: number of leading bars dropped because their windows were incomplete.
    """

    timestamps: pl.Series
    X: np.ndarray
    columns: tuple[str, ...]
    warmup: int


def regime_observations(
    bars: pl.DataFrame, cfg: SentioConfig, *, vol_window: int | None = None
) -> RegimeInputs:
    """Causal regime inputs of ``cfg.universe.underlying`` from canonical bars.

    Args:
        bars: canonical bars (any symbols; only the underlying is used).
        cfg: configuration; ``cfg.regimes.aggregate_bars`` sets the return aggregation.
        vol_window: bars in the realized-volatility window; ``cfg.regimes.vol_window``
            when not given.

    Raises:
        DataError: when the bars hold no row of the underlying.
    """
    symbol = cfg.universe.underlying
    under = bars.filter(pl.col("symbol") == symbol).sort("timestamp")
    if under.height == 0:
        raise DataError(f"regime_observations: no bars of the underlying {symbol!r}")
    if unresolved_settings(cfg):  # 'auto' windows: sized by the bar length of the data
        cfg = resolve_for_bars(cfg, infer_bar_seconds(under.select("symbol", "timestamp")))
    if vol_window is None:
        vol_window = int(cfg.regimes.vol_window)
    if vol_window < 2:
        raise ValueError(f"vol_window must be >= 2, got {vol_window}")
    agg = int(cfg.regimes.aggregate_bars)
    warmup = max(agg, vol_window) - 1
    r = (
        under.select((pl.col("close") / pl.col("open")).log())
        .to_series()
        .to_numpy()
        .astype(np.float64)
    )
    # window sums as differences of running sums: a running sum only reads the past, so
    # values on a prefix are bit-identical to those on the whole series
    agg_ret = _window_sum(r, agg)
    vol = np.log(np.maximum(_window_sum(np.abs(r), vol_window) / vol_window, _STD_FLOOR))
    X = np.column_stack([agg_ret, vol])[warmup:]
    timestamps = under["timestamp"].slice(warmup)
    return RegimeInputs(
        timestamps=timestamps,
        X=np.ascontiguousarray(X),
        columns=OBSERVATION_COLUMNS,
        warmup=min(warmup, under.height),
    )


def _window_sum(x: np.ndarray, window: int) -> np.ndarray:
    """Sum of the last ``window`` values at each row (NaN before the window is full)."""
    cs = np.cumsum(x)
    out = np.full(x.shape, np.nan)
    if x.size >= window:
        out[window - 1] = cs[window - 1]
        out[window:] = cs[window:] - cs[:-window]
    return out


def train_rows(timestamps: pl.Series, train_fraction: float) -> int:
    """Number of leading rows in the first ``train_fraction`` of the sessions.

    The split is :func:`sentio.data.schema.training_cutoff` (at least one training and one
    test session); with fewer than two sessions every row is a training row.
    """
    if timestamps.to_frame("t").select(session_date(pl.col("t")).n_unique()).item() < 2:
        return int(timestamps.len())
    return int((timestamps < training_cutoff(timestamps, train_fraction)).sum())
