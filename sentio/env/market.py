"""The market a simulator sees: aligned numpy arrays, built once per fold, read by ``step``.

Row ``t`` is one bar of the underlying (the rows of the feature frame that also have a
price for both leveraged ETFs and, when regimes are used, regime probabilities). Nothing in
the simulators touches polars or pandas; :func:`build_market` does all the joining up front.

Instruments are indexed ``0`` underlying, ``1`` long ETF (TQQQ), ``2`` short ETF (SQQQ).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import polars as pl

from sentio.calendar import gap_rows, sessions
from sentio.config import SentioConfig
from sentio.data.schema import session_date
from sentio.errors import DataError

__all__ = [
    "CLOCK_SCALE",
    "LONG",
    "SHORT",
    "UNDERLYING",
    "MarketData",
    "build_market",
    "ewma_vol",
]

UNDERLYING, LONG, SHORT = 0, 1, 2
CLOCK_SCALE = 390.0
"""Minutes of a regular session: the session-clock features are divided by it (0..1)."""


@dataclass(frozen=True)
class MarketData:
    """Aligned per-row arrays (length ``T``).

    Attributes:
        timestamps: bar starts, ``datetime64[us]`` (naive UTC).
        features: ``(T, F)`` float32 causal features (row t known at the close of bar t),
            as the features stage wrote them except the session clock
            (:data:`~sentio.features.normalise.UNNORMALISED_COLUMNS`, minutes), which is
            divided by :data:`CLOCK_SCALE` so that every input of the networks is of order
            one (a 0..390 input beside unit-scale ones drowns them: the policy collapses
            to one action).
        regime_probs: ``(T, K)`` float32 filtered regime probabilities (``K = 0`` without).
        open, close: ``(T, 3)`` float64 prices of the underlying, long and short ETF.
        session: ``(T,)`` int64 session number (0, 1, ... in time order).
        last_bar: ``(T,)`` bool, the last row of its session.
        minutes_to_close: ``(T,)`` float64 minutes from the START of bar t to its session's
            close (the calendar's, early closes included); 0 for daily bars.
        vol: ``(T,)`` float64 per-bar volatility of the underlying known at the close of
            bar t (EWMA of squared close-to-close log returns, see :func:`ewma_vol`).
        periods_per_year: bars per year of this frequency (annualisation).
        feature_names: names of the feature columns.
        gap_before: ``(T,)`` bool, row t is the first row after one or more sessions of the
            calendar that the data lacks (a data gap); ``None``: no gap. No episode, test
            block or benchmark step spans a gap (:func:`segment_bounds`).
    """

    timestamps: np.ndarray
    features: np.ndarray
    regime_probs: np.ndarray
    open: np.ndarray
    close: np.ndarray
    session: np.ndarray
    last_bar: np.ndarray
    minutes_to_close: np.ndarray
    vol: np.ndarray
    periods_per_year: float
    feature_names: tuple[str, ...]
    gap_before: np.ndarray | None = None

    @property
    def n_rows(self) -> int:
        """``T``."""
        return int(self.timestamps.shape[0])

    @property
    def n_features(self) -> int:
        """``F``."""
        return int(self.features.shape[1])

    @property
    def n_regimes(self) -> int:
        """``K`` (0 without regimes)."""
        return int(self.regime_probs.shape[1])

    @property
    def bar_seconds(self) -> int:
        """The bar length in seconds, from :attr:`periods_per_year` (86,400 for daily bars)."""
        if self.periods_per_year <= 252.0:
            return 86_400
        return max(1, round(390 * 60 * 252.0 / self.periods_per_year))

    def gap_rows(self) -> np.ndarray:
        """Rows that follow a data gap (ascending; see :attr:`gap_before`)."""
        if self.gap_before is None:
            return np.zeros(0, dtype=np.int64)
        return np.flatnonzero(self.gap_before).astype(np.int64)

    def split_at_gaps(self, a: int, b: int) -> list[tuple[int, int]]:
        """The half-open row range ``[a, b)`` cut at every data gap inside it: pieces
        ``[a, g1), [g1, g2), ..., [gk, b)`` with ``g`` the first rows after a gap, so no
        piece holds a step from the last bar before a gap to the first bar after it."""
        cuts = [int(g) for g in self.gap_rows() if a < g < b]
        bounds = [a, *cuts, b]
        return [(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]

    def high_vol_regime(self) -> np.ndarray:
        """``(T,)`` bool: the highest-volatility regime is the most likely one at t."""
        if self.n_regimes == 0:
            return np.zeros(self.n_rows, dtype=bool)
        return np.asarray(self.regime_probs.argmax(axis=1) == self.n_regimes - 1)

    def minutes_since_open(self) -> np.ndarray:
        """``(T,)`` float64 minutes from the start of its session's first row to the start
        of bar t (0 on a session's first row; the first row stands for the open)."""
        first = np.ones(self.n_rows, dtype=bool)
        first[1:] = self.session[1:] != self.session[:-1]
        start = np.maximum.accumulate(np.where(first, np.arange(self.n_rows), 0))
        delta = self.timestamps - self.timestamps[start]
        return delta.astype("timedelta64[us]").astype(np.float64) / 60e6


def ewma_vol(close: np.ndarray, halflife: int) -> np.ndarray:
    """Per-bar volatility from close-to-close log returns, EWMA of their squares.

    ``v_t = (1 - w) v_{t-1} + w r_t^2`` with ``w = 1 - 2^(-1/halflife)``, seeded with the
    first return's square; the result is ``sqrt(v_t)``. Row 0 (one price, no return) is 0:
    nothing is known there yet (taking row 1's value would read the close of bar 1). Causal:
    row t reads closes up to t only.
    """
    c = np.asarray(close, dtype=np.float64)
    if c.size < 2:
        return np.zeros_like(c)
    r2 = np.diff(np.log(c)) ** 2
    w = 1.0 - 2.0 ** (-1.0 / halflife)
    v = pl.Series(r2).ewm_mean(alpha=w, adjust=False).to_numpy()
    return np.sqrt(np.concatenate([[0.0], v]))


def build_market(
    bars: pl.DataFrame,
    features: pl.DataFrame,
    regimes: pl.DataFrame | None,
    cfg: SentioConfig,
) -> MarketData:
    """Align features, regime probabilities and the three instruments' prices by timestamp.

    Args:
        bars: canonical bars holding the underlying and both leveraged ETFs.
        features: the feature frame (``timestamp`` + float columns).
        regimes: ``timestamp`` + ``p_regime_*`` columns (one fold's filtered
            probabilities), or ``None`` to run without regimes.
        cfg: ``universe`` names the symbols; ``env.vol_halflife_bars`` the volatility.

    Rows are the feature timestamps that have all three prices (and regime
    probabilities); a row without them is dropped.

    Raises:
        DataError: a symbol is missing, or no row is left after the join.
    """
    from sentio.evaluation import periods_per_year

    u = cfg.universe
    frame, feature_names, regime_cols = _aligned_frame(bars, features, regimes, cfg)
    stamps = frame["timestamp"]
    session, last, gap_before, minutes = _session_arrays(stamps, u.calendar)
    daily = periods_per_year(stamps) <= 252
    px_open = frame.select([f"open_{i}" for i in range(3)]).to_numpy().astype(np.float64)
    px_close = frame.select([f"close_{i}" for i in range(3)]).to_numpy().astype(np.float64)
    if not (np.isfinite(px_open).all() and np.isfinite(px_close).all()):
        raise DataError("market: non-finite prices after the join")
    if (px_open <= 0).any() or (px_close <= 0).any():
        raise DataError("market: non-positive prices after the join")
    from sentio.features.normalise import UNNORMALISED_COLUMNS

    feats = np.ascontiguousarray(
        frame.select(
            (pl.col(c) / CLOCK_SCALE).alias(c) if c in UNNORMALISED_COLUMNS else pl.col(c)
            for c in feature_names
        )
        .to_numpy()
        .astype(np.float32)
    )
    probs = (
        np.ascontiguousarray(frame.select(regime_cols).to_numpy().astype(np.float32))
        if regime_cols
        else np.zeros((frame.height, 0), dtype=np.float32)
    )
    return MarketData(
        timestamps=stamps.dt.replace_time_zone(None).to_numpy().astype("datetime64[us]"),
        features=feats,
        regime_probs=probs,
        open=np.ascontiguousarray(px_open),
        close=np.ascontiguousarray(px_close),
        session=session,
        last_bar=last,
        minutes_to_close=np.zeros(frame.height) if daily else minutes.astype(np.float64),
        vol=ewma_vol(px_close[:, UNDERLYING], cfg.env.vol_halflife_bars),
        periods_per_year=float(periods_per_year(stamps)),
        feature_names=feature_names,
        gap_before=gap_before if gap_before.any() else None,
    )


def _aligned_frame(
    bars: pl.DataFrame,
    features: pl.DataFrame,
    regimes: pl.DataFrame | None,
    cfg: SentioConfig,
) -> tuple[pl.DataFrame, tuple[str, ...], list[str]]:
    """The feature rows that have every instrument's open and close (``open_i``,
    ``close_i``) and the regime probabilities, in time order; the feature and regime
    column names."""
    u = cfg.universe
    symbols = [u.underlying, u.long, u.short]
    present = set(bars["symbol"].unique().to_list())
    missing = [s for s in symbols if s not in present]
    if missing:
        raise DataError(f"market: the bars lack {missing} (universe {symbols})")
    frame = features.sort("timestamp")
    feature_names = tuple(c for c in frame.columns if c != "timestamp")
    for i, sym in enumerate(symbols):
        px = bars.filter(pl.col("symbol") == sym).select(
            "timestamp", pl.col("open").alias(f"open_{i}"), pl.col("close").alias(f"close_{i}")
        )
        frame = frame.join(px, on="timestamp", how="inner")
    regime_cols: list[str] = []
    if regimes is not None:
        regime_cols = sorted(
            (c for c in regimes.columns if c.startswith("p_regime_")),
            key=lambda c: int(c.rsplit("_", 1)[1]),
        )
        frame = frame.join(regimes.select("timestamp", *regime_cols), on="timestamp", how="inner")
    frame = frame.sort("timestamp")
    if frame.height < 2:
        raise DataError(
            f"market: {frame.height} rows have features, prices of {symbols}"
            + (" and regime probabilities" if regimes is not None else "")
            + "; need at least 2"
        )
    return frame, feature_names, regime_cols


def _session_arrays(
    stamps: pl.Series, calendar: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per row: session index, last bar of its session, calendar gap before it and
    minutes to its session's close (0 where the calendar has no close)."""
    day = stamps.to_frame("t").select(session_date(pl.col("t")).alias("d"))["d"]
    first_day, last_day = day.min(), day.max()
    assert isinstance(first_day, dt.date) and isinstance(last_day, dt.date)
    table = sessions(
        first_day - dt.timedelta(days=1), last_day + dt.timedelta(days=1), calendar
    ).select("session", "close")
    closes = day.to_frame("session").join(table, on="session", how="left")["close"]
    session = (day != day.shift(1)).fill_null(True).cum_sum().to_numpy().astype(np.int64) - 1
    last = np.empty(session.size, dtype=bool)
    last[:-1] = session[1:] != session[:-1]
    last[-1] = True
    gap_before = gap_rows(day, calendar).to_numpy()
    minutes = ((closes - stamps).dt.total_seconds() / 60.0).fill_null(0.0).to_numpy()
    return session, last, gap_before, minutes
