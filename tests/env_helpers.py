"""Shared fixtures of the trading-environment tests: small markets built from numpy arrays.

* :func:`make_params` -- :class:`EnvParams` with hand-friendly defaults (every mask off).
* :func:`hand_market` -- a :class:`MarketData` of a few rows given explicitly (prices,
  volatility, sessions, minutes to the close ...), for accounting worked by hand.
* :func:`random_market` -- a larger synthetic market (a random walk, daily-reset
  leveraged series with overnight gaps, random features and regime probabilities) built
  directly as arrays, fast enough for thousands of steps.
* :func:`realistic_inputs` / :func:`realistic_market` -- bars of
  :func:`tests.conftest.minute_bars` for QQQ, TQQQ/SQQQ derived by
  :func:`sentio.data.leverage.ensure_universe`, features of
  :func:`sentio.features.build_features` with the short windows of the tests, joined by
  :func:`sentio.env.build_market`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import polars as pl
from numpy.typing import ArrayLike

from sentio.config import SentioConfig, resolve_for_bars
from sentio.env.market import MarketData, build_market, ewma_vol
from sentio.env.simulator import EnvParams
from tests.conftest import SHORT_WINDOWS, minute_bars

MINUTE_PERIODS_PER_YEAR = 252.0 * 390.0

_PARAM_DEFAULTS: dict[str, Any] = {
    "grid": np.array([-1.0, -0.5, 0.0, 0.5, 1.0]),
    "window": 1,
    "flat_at_close": False,
    "initial_cash": 10_000.0,
    "drawdown_penalty": 0.0,
    "leverage": 3.0,
    "commission_per_share": 0.0,
    "half_spread": 0.0,
    "slippage_vol_mult": 0.0,
    "mask_session": False,
    "no_new_exposure_minutes": 15.0,
    "opening_minutes": 0.0,
    "mask_risk_budget": False,
    "target_vol_annual": 0.6,
    "mask_regime": False,
    "high_vol_regime_cap": 0.5,
    "mask_drawdown": False,
    "drawdown_limit": 0.1,
    "min_hold_bars": 0,
    "episode_sessions": 1,
}


def make_params(**overrides: Any) -> EnvParams:
    """:class:`EnvParams` with simple defaults: window 1, no costs, every mask off.

    The defaults: grid ``{-1, -0.5, 0, 0.5, 1}``, 10,000 of cash, leverage 3, no
    ``flat_at_close``, no drawdown penalty, one session per episode.
    """
    unknown = set(overrides) - set(_PARAM_DEFAULTS)
    if unknown:
        raise TypeError(f"unknown EnvParams fields {sorted(unknown)}")
    values = {**_PARAM_DEFAULTS, **overrides}
    values["grid"] = np.asarray(sorted(np.asarray(values["grid"], dtype=np.float64)))
    return EnvParams(**values)


def params_from_config(**env: Any) -> EnvParams:
    """:meth:`EnvParams.from_config` of a default configuration with ``env`` overrides."""
    return EnvParams.from_config(resolve_for_bars(SentioConfig.model_validate({"env": env}), 60))


def hand_market(
    open_: ArrayLike,
    close: ArrayLike,
    *,
    session: ArrayLike | None = None,
    vol: ArrayLike = 0.0,
    minutes_to_close: ArrayLike | None = None,
    last_bar: ArrayLike | None = None,
    features: np.ndarray | None = None,
    regime_probs: np.ndarray | None = None,
    periods_per_year: float = MINUTE_PERIODS_PER_YEAR,
) -> MarketData:
    """A :class:`MarketData` of the rows given, one row per bar.

    Args:
        open_, close: ``T`` rows of ``(underlying, long ETF, short ETF)`` prices.
        session: session number per row (default: all rows one session).
        vol: per-bar volatility of the underlying (scalar: the same on every row).
        minutes_to_close: from the start of each bar (default: counting down to 1 at the
            last row of each session, one minute per bar).
        last_bar: the last row of each session (default: from ``session``).
        features: ``(T, F)`` (default: one column holding the row number).
        regime_probs: ``(T, K)`` (default: no regimes).
        periods_per_year: annualisation of the risk budget.
    """
    o = np.asarray(open_, dtype=np.float64)
    c = np.asarray(close, dtype=np.float64)
    if o.shape != c.shape or o.ndim != 2 or o.shape[1] != 3:
        raise ValueError(f"open and close must both be (T, 3), got {o.shape} and {c.shape}")
    T = o.shape[0]
    sess = np.zeros(T, dtype=np.int64) if session is None else np.asarray(session, np.int64)
    if last_bar is None:
        last = np.append(sess[1:] != sess[:-1], True)
    else:
        last = np.asarray(last_bar, dtype=bool)
    if minutes_to_close is None:
        minutes = np.zeros(T)
        for s in np.unique(sess):
            rows = np.flatnonzero(sess == s)
            minutes[rows] = np.arange(rows.size, 0, -1, dtype=np.float64)
    else:
        minutes = np.asarray(minutes_to_close, dtype=np.float64)
    feats = (
        np.arange(T, dtype=np.float32)[:, None]
        if features is None
        else np.asarray(features, dtype=np.float32)
    )
    probs = (
        np.zeros((T, 0), dtype=np.float32)
        if regime_probs is None
        else np.asarray(regime_probs, dtype=np.float32)
    )
    return MarketData(
        timestamps=np.datetime64("2024-01-02T14:30", "us") + np.arange(T) * np.timedelta64(1, "m"),
        features=np.ascontiguousarray(feats),
        regime_probs=np.ascontiguousarray(probs),
        open=o,
        close=c,
        session=sess,
        last_bar=last,
        minutes_to_close=minutes,
        vol=np.broadcast_to(np.asarray(vol, dtype=np.float64), (T,)).copy(),
        periods_per_year=periods_per_year,
        feature_names=tuple(f"f{i}" for i in range(feats.shape[1])),
    )


def random_market(
    n_sessions: int = 6,
    session_len: int = 60,
    *,
    seed: int = 0,
    n_features: int = 3,
    n_regimes: int = 3,
    bar_vol: float = 2e-3,
    gap_vol: float = 1e-2,
    leverage: float = 3.0,
    halflife: int = 10,
) -> MarketData:
    """A synthetic market of ``n_sessions`` sessions of ``session_len`` one-minute bars.

    The underlying is a random walk (``bar_vol`` per bar, ``gap_vol`` overnight); the long
    and short ETFs reset daily to ``1 +/- leverage x`` the underlying's return since the
    previous close, so an overnight gap lands in their opens. Minutes to the close count
    down from ``session_len`` to 1; ``vol`` is :func:`ewma_vol` of the underlying's closes.
    """
    rng = np.random.default_rng(seed)
    T = n_sessions * session_len
    session = np.repeat(np.arange(n_sessions, dtype=np.int64), session_len)
    first = np.append(True, session[1:] != session[:-1])
    step = np.where(first, rng.normal(0.0, gap_vol, T), rng.normal(0.0, bar_vol, T))
    intrabar = rng.normal(0.0, bar_vol / 2, T)
    close_u = 100.0 * np.exp(np.cumsum(step))
    open_u = close_u * np.exp(-intrabar)  # an open between the previous close and the close
    open_u[0] = 100.0
    opens = np.empty((T, 3))
    closes = np.empty((T, 3))
    opens[:, 0], closes[:, 0] = open_u, close_u
    for col, lev, base0 in ((1, leverage, 50.0), (2, -leverage, 20.0)):
        base, ref = base0, open_u[0]
        for s in range(n_sessions):
            rows = np.flatnonzero(session == s)
            opens[rows, col] = base * (1.0 + lev * (open_u[rows] / ref - 1.0))
            closes[rows, col] = base * (1.0 + lev * (close_u[rows] / ref - 1.0))
            base, ref = closes[rows[-1], col], close_u[rows[-1]]
    if (opens <= 0).any() or (closes <= 0).any():
        raise ValueError("non-positive derived price; use a smaller bar_vol")
    minutes = np.tile(np.arange(session_len, 0, -1, dtype=np.float64), n_sessions)
    probs = rng.dirichlet(np.ones(n_regimes), size=T) if n_regimes else np.zeros((T, 0))
    market = hand_market(
        opens,
        closes,
        session=session,
        minutes_to_close=minutes,
        features=rng.normal(size=(T, n_features)),
        regime_probs=probs,
    )
    return dataclasses.replace(market, vol=ewma_vol(close_u, halflife))


def realistic_config() -> SentioConfig:
    """The default configuration with the short feature windows of the tests."""
    return SentioConfig.model_validate({"features": SHORT_WINDOWS["features"]})


def realistic_inputs(
    start: str = "2023-11-21", end: str = "2023-11-27", seed: int = 0
) -> tuple[pl.DataFrame, pl.DataFrame, SentioConfig]:
    """Canonical bars of QQQ with derived TQQQ/SQQQ, their features and the configuration.

    The default dates hold the early close of 2023-11-24 (13:00 New York).
    """
    from sentio.data.leverage import ensure_universe
    from sentio.features import build_features

    cfg = realistic_config()
    bars, _ = ensure_universe(minute_bars(start, end, seed=seed), cfg.universe)
    features = build_features(bars, cfg)
    return bars, features, cfg


def realistic_market(
    start: str = "2023-11-21", end: str = "2023-11-27", seed: int = 0
) -> MarketData:
    """:func:`build_market` of :func:`realistic_inputs` (no regimes)."""
    bars, features, cfg = realistic_inputs(start, end, seed)
    return build_market(bars, features, None, cfg)
