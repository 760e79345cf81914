"""Reference policies that need more than one observation: the regime rule and the oracle.

Both run through :func:`sentio.env.backtest.backtest` like any policy, under the same
costs and masks as the agent, and choose only allowed actions.

* :func:`regime_rule_policy` -- a causal rule on the filtered HMM probabilities in the
  observation: long the +L ETF while the calmest regime is the most likely one, short
  (the -L ETF) while the most volatile one is, flat otherwise; the size is the largest
  the masks allow (the risk budget is the volatility target).
* :func:`oracle_policy` -- on synthetic data only: the generator's own parameters (the
  planted autocorrelation, each session's true regime and its drift; see
  :func:`sentio.data.synth.truth_record`) give the true conditional mean of the next
  bar's return (:func:`oracle_forecast`); the oracle takes, among the allowed actions,
  the exposure with the best expected gain net of the costs of getting there and of
  getting out again. It knows the model, never the future draws: what it earns is what
  an agent could attain at best with these costs and masks, up to its greedy one-step
  choice, so a report can say what share of it the agent captured.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from sentio.env.backtest import Policy, RowPolicy, held_sign, largest_allowed
from sentio.env.market import LONG, SHORT, UNDERLYING, MarketData
from sentio.env.simulator import EnvParams

__all__ = ["oracle_forecast", "oracle_policy", "regime_rule_policy"]


def regime_rule_policy(params: EnvParams, n_regimes: int, *, min_prob: float = 0.5) -> Policy:
    """Long in the calmest regime, short in the most volatile, flat in between.

    Reads the filtered probabilities at the start of the observation's state (regimes are
    labelled by ascending volatility). A regime counts once its probability is at least
    ``min_prob`` and it is the most likely; otherwise the rule keeps the side it holds
    if that side's regime is still the most likely, else goes flat. Sizes: the largest
    allowed exposure (masks: risk budget, regime cap, session, drawdown).

    Raises:
        ValueError: fewer than two regimes.
    """
    if n_regimes < 2:
        raise ValueError(f"regime_rule_policy needs at least 2 regimes, got {n_regimes}")
    grid, flat = params.grid, params.flat_action
    cap = float(np.abs(grid).max())

    def policy(obs: dict[str, np.ndarray], mask: np.ndarray) -> int:
        probs = obs["state"][:n_regimes]
        k = int(np.argmax(probs))
        sure = float(probs[k]) >= min_prob
        held = held_sign(obs)
        if k == 0 and (sure or held > 0):
            return largest_allowed(grid, mask, 1.0, cap, flat)
        if k == n_regimes - 1 and (sure or held < 0):
            return largest_allowed(grid, mask, -1.0, cap, flat)
        return flat

    return policy


def _session_dates(market: MarketData) -> np.ndarray:
    """The session date of every row (``YYYY-MM-DD`` strings, the exchange's New York date)."""
    import polars as pl

    from sentio.data.schema import session_date

    stamps = pl.Series("t", market.timestamps).dt.replace_time_zone("UTC")
    return np.asarray(
        stamps.to_frame().select(session_date(pl.col("t")).cast(pl.String))["t"].to_list()
    )


def _true_drift(market: MarketData, truth: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """``(mu, known)``, both ``(T,)``: the log drift per bar of the true regime of each
    row's session (0 where unknown), and whether the truth knows the row's session."""
    drift = np.array([r["drift_per_bar"] for r in truth["regimes"]], dtype=float)
    regime_of = truth["session_regime"]
    dates = _session_dates(market)
    known = np.array([d in regime_of for d in dates], dtype=bool)
    k = np.array([regime_of.get(d, 0) for d in dates], dtype=np.int64)
    return np.where(known, drift[k], 0.0), known


def oracle_forecast(market: MarketData, truth: dict[str, Any]) -> np.ndarray:
    """``(T,)``: the true conditional mean, at the close of bar t, of the underlying's log
    return over bar t + 1 (the bar an order decided at t is exposed to).

    ``mu_k + rho * (u_{t+1} / u_t) * (r_t - mu_k)`` with ``r_t = log(C_t / O_t)`` (the
    bar's own return: the planted autocorrelation links consecutive bars' standardised
    returns, overnight included), ``mu_k`` the log drift per bar of the true regime of
    bar t's session, ``rho`` the planted autocorrelation and ``u`` the generator's
    intraday volatility profile ``1 + a (2x - 1)^2`` at the bar's fraction ``x`` of its
    session (the ratio carries the standardisation over). Second-order ``sigma^2 / 2``
    terms are left out. Rows of sessions the truth does not know get 0.
    """
    rho = float(truth["edge_strength"])
    a = float(truth["intraday_u_shape"])
    mu, known = _true_drift(market, truth)
    sess = market.session
    first = np.r_[True, sess[1:] != sess[:-1]]
    start = np.maximum.accumulate(np.where(first, np.arange(market.n_rows), 0))
    minute = np.arange(market.n_rows) - start
    length = np.bincount(sess)[sess]
    x = (minute + 0.5) / length
    u = 1.0 + a * (2.0 * x - 1.0) ** 2
    u_next = np.r_[u[1:], u[-1:]]
    r = np.log(market.close[:, UNDERLYING] / market.open[:, UNDERLYING])
    return np.where(known, mu + rho * (u_next / u) * (r - mu), 0.0)


def oracle_policy(params: EnvParams, market: MarketData, truth: dict[str, Any]) -> RowPolicy:
    """The cost-aware greedy policy on :func:`oracle_forecast` (row-aware: ``takes_row``).

    At row t, for each allowed exposure ``x`` (of the grid), the score is
    ``x * L * G_t - c_t * (|x - x_0| + |x|)``: ``G_t`` the expected log gain of the
    underlying while the position is held (the drift ``mu_k`` over the bars left in the
    session, since ``flat_at_close`` ends every position there, plus the autocorrelated
    part ``rho' (r_t - mu_k) / (1 - rho)``, the sum of its geometric decay), ``x_0`` the
    exposure held, ``c_t`` the simulator's cost per unit of traded notional (half spread,
    volatility slippage, the commission per share at the ETF's price), charged for the
    trade now and the exit later. The best score wins; ties go to the smaller trade.
    """
    m = oracle_forecast(market, truth)
    rho = float(truth["edge_strength"])
    mu, _ = _true_drift(market, truth)
    sess = market.session
    last = np.r_[sess[1:] != sess[:-1], True]
    # bars from t + 1 to the session's last bar (0 on the last bar itself)
    end = np.minimum.accumulate(np.where(last, np.arange(market.n_rows), market.n_rows)[::-1])[::-1]
    left = (end - np.arange(market.n_rows)).astype(float)
    if not params.flat_at_close:
        left = np.maximum(left, 390.0)
    gain = mu * np.maximum(left, 1.0) + (m - mu) / (1.0 - rho)
    L = params.leverage
    grid, flat = params.grid, params.flat_action
    price = np.maximum(np.minimum(market.open[:, LONG], market.open[:, SHORT]), 1e-12)
    nxt = np.minimum(np.arange(market.n_rows) + 1, market.n_rows - 1)
    rate = (
        params.half_spread
        + params.slippage_vol_mult * L * market.vol
        + params.commission_per_share / price[nxt]
    )

    def policy(obs: dict[str, np.ndarray], mask: np.ndarray, row: int) -> int:
        state = obs["state"]
        x0 = float(state[state.shape[-1] - 5])  # exposure (see STATE_FEATURES)
        held = held_sign(obs)
        best, best_score = flat, -math.inf
        for i in np.flatnonzero(mask):
            x = float(grid[i])
            # keeping the side held costs nothing now; resizing it costs the difference
            trade = (
                abs(x - x0) if (np.sign(x) == held or x == 0.0 or held == 0.0) else abs(x) + abs(x0)
            )
            score = x * L * gain[row] - rate[row] * (trade + abs(x))
            if score > best_score + 1e-15 or (
                abs(score - best_score) <= 1e-15 and abs(x - x0) < abs(float(grid[best]) - x0)
            ):
                best, best_score = int(i), score
        return best

    policy.takes_row = True  # type: ignore[attr-defined]
    return policy
