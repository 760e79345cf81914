"""The oracle and the causal regime rule, on hand-made markets where positions are known.

Markets come from :func:`tests.env_helpers.hand_market` (one session starting at
2024-01-02 14:30 UTC, i.e. the New York session of 2024-01-02). The truth given to the
oracle is written here by hand in the format of :func:`sentio.data.synth.truth_record`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
import pytest

from sentio.config import SentioConfig, with_overrides
from sentio.data.synth import generate
from sentio.env.backtest import backtest
from sentio.env.references import oracle_forecast, oracle_policy, regime_rule_policy
from sentio.env.simulator import STATE_FEATURES
from tests.env_helpers import hand_market, make_params

DAY = "2024-01-02"


def _truth(rho: float, drift: float = 0.0, u_shape: float = 0.0, day: str = DAY) -> dict[str, Any]:
    return {
        "edge_strength": rho,
        "intraday_u_shape": u_shape,
        "bars_per_year": 98280,
        "regimes": [{"name": "only", "drift_per_bar": drift, "vol_annual": 0.2}],
        "session_regime": {day: 0},
    }


def _market(under_open: list[float], under_close: list[float], **kw: Any) -> Any:
    o = np.array([[u, 50.0, 20.0] for u in under_open])
    c = np.array([[u, 50.0, 20.0] for u in under_close])
    return hand_market(o, c, **kw)


def _obs(probs: list[float], exposure: float = 0.0) -> dict[str, np.ndarray]:
    state = np.zeros(len(probs) + len(STATE_FEATURES), dtype=np.float32)
    state[: len(probs)] = probs
    state[len(probs)] = exposure
    return {"window": np.zeros((1, 1), dtype=np.float32), "state": state}


# ---------------------------------------------------------------------- oracle forecast


def test_oracle_forecast_by_hand() -> None:
    """mu + rho (u_{t+1} / u_t) (r_t - mu), r_t = log(C_t / O_t) of the underlying."""
    opens = [100.0, 101.0, 100.0, 100.0]
    closes = [101.0, 100.0, 100.0, 102.0]
    market = _market(opens, closes)
    r = np.log(np.array(closes) / np.array(opens))
    got = oracle_forecast(market, _truth(0.5, drift=1e-4))
    np.testing.assert_allclose(got, 1e-4 + 0.5 * (r - 1e-4), rtol=1e-12)
    # the intraday profile: 4 bars, x = 0.125, 0.375, 0.625, 0.875; u = 1 + 2 (2x - 1)^2
    u = 1.0 + 2.0 * (2.0 * np.array([0.125, 0.375, 0.625, 0.875]) - 1.0) ** 2
    ratio = np.r_[u[1:] / u[:-1], 1.0]
    got = oracle_forecast(market, _truth(0.5, u_shape=2.0))
    np.testing.assert_allclose(got, 0.5 * ratio * r, rtol=1e-12)


def test_oracle_forecast_is_zero_on_sessions_the_truth_does_not_know() -> None:
    market = _market([100.0, 101.0], [101.0, 100.0])
    assert (oracle_forecast(market, _truth(0.5, drift=1e-3, day="2023-01-03")) == 0.0).all()


def test_truth_record_of_the_generator() -> None:
    cfg = with_overrides(SentioConfig(), {"synth.years": 0.05, "synth.edge_strength": 0.2})
    data = generate(cfg)
    truth = data.truth
    assert truth["edge_strength"] == 0.2
    assert [r["name"] for r in truth["regimes"]] == [r.name for r in cfg.synth.regimes]
    assert truth["regimes"][0]["drift_per_bar"] == pytest.approx(0.25 / (252 * 390))
    # the session regime is the regime of every bar of that session
    per_bar = data.regimes.with_columns(
        day=data.regimes["timestamp"].dt.convert_time_zone("America/New_York").dt.date()
    )
    days = per_bar.group_by("day").agg(
        first=pl.col("regime").first(), n=pl.col("regime").n_unique()
    )
    assert days["n"].max() == 1 and len(truth["session_regime"]) == days.height
    for day, regime in days.select("day", "first").iter_rows():
        assert truth["session_regime"][day.isoformat()] == regime


# ---------------------------------------------------------------------- oracle policy


def test_oracle_without_costs_follows_the_sign_of_the_forecast() -> None:
    """Zero costs: the largest exposure on the side of the expected move; with no
    expected move every exposure scores 0 and the tie goes to the smallest trade (keep)."""
    opens = [100.0, 100.0, 101.0, 101.0, 100.0, 100.0]
    closes = [100.0, 101.0, 101.0, 100.0, 100.0, 100.0]
    market = _market(opens, closes)
    params = make_params()
    bt = backtest(oracle_policy(params, market, _truth(0.3)), market, params, [(0, 6)])
    # decisions at rows 0..4: r = 0, +, 0, -, 0 -> forecast 0, +, 0, -, 0
    assert bt.grid[bt.actions].tolist() == [0.0, 1.0, 1.0, -1.0, -1.0]


def test_oracle_stays_out_when_the_edge_does_not_pay_the_costs() -> None:
    opens = [100.0, 100.0, 101.0]
    closes = [100.0, 100.01, 101.0]  # a 1 bp move: rho 0.3 expects 0.3 bp, 3x: ~1.3 bp
    market = _market(opens, closes)
    cheap = make_params()
    dear = make_params(half_spread=5e-4)
    assert (
        backtest(oracle_policy(cheap, market, _truth(0.3)), market, cheap, [(0, 3)]).actions[1] == 4
    )
    bt = backtest(oracle_policy(dear, market, _truth(0.3)), market, dear, [(0, 3)])
    assert (bt.grid[bt.actions] == 0.0).all()


def test_oracle_picks_only_allowed_actions() -> None:
    market = _market([100.0, 100.0, 101.0], [100.0, 101.0, 101.0])
    params = make_params()
    policy = oracle_policy(params, market, _truth(0.3))
    no_full_long = np.array([True, True, True, True, False])
    assert policy(_obs([]), no_full_long, 1) == 3  # +0.5, the best allowed
    only_flat = np.array([False, False, True, False, False])
    assert policy(_obs([]), only_flat, 1) == 2
    assert getattr(policy, "takes_row", False)


def test_oracle_holds_the_drift_regime_for_the_session() -> None:
    """No autocorrelation, a positive drift worth more than the costs over the bars left:
    long from the first decision, and it does not trade again."""
    n = 20
    market = _market([100.0] * n, [100.0] * n)
    params = make_params(half_spread=1e-4, flat_at_close=True)
    bt = backtest(oracle_policy(params, market, _truth(0.0, drift=1e-4)), market, params, [(0, n)])
    assert bt.grid[bt.actions[0]] == 1.0
    assert bt.trades.height == 1


# ---------------------------------------------------------------------- regime rule


def test_regime_rule_by_hand() -> None:
    params = make_params()
    policy = regime_rule_policy(params, 3)
    ok = np.ones(5, dtype=bool)
    assert policy(_obs([0.8, 0.1, 0.1]), ok) == 4  # calm: long +1
    assert policy(_obs([0.1, 0.8, 0.1]), ok) == 2  # choppy: flat
    assert policy(_obs([0.1, 0.1, 0.8]), ok) == 0  # volatile: short (-1)
    # unsure (most likely below min_prob): keep the side of the regime still most likely
    assert policy(_obs([0.45, 0.35, 0.2], exposure=1.0), ok) == 4
    assert policy(_obs([0.45, 0.35, 0.2], exposure=0.0), ok) == 2
    assert policy(_obs([0.2, 0.35, 0.45], exposure=-0.5), ok) == 0
    # sizes by the masks (e.g. the risk budget allows 0.5 only)
    capped = np.array([False, True, True, True, False])
    assert policy(_obs([0.8, 0.1, 0.1]), capped) == 3
    assert policy(_obs([0.1, 0.1, 0.8]), capped) == 1
    with pytest.raises(ValueError, match="at least 2 regimes"):
        regime_rule_policy(params, 1)


def test_regime_rule_in_a_backtest() -> None:
    probs = np.array(
        [[0.9, 0.05, 0.05]] * 3 + [[0.05, 0.9, 0.05]] * 2 + [[0.05, 0.05, 0.9]] * 3, dtype=float
    )
    n = probs.shape[0]
    market = _market([100.0] * n, [100.0] * n, regime_probs=probs)
    params = make_params()
    bt = backtest(regime_rule_policy(params, 3), market, params, [(0, n)])
    assert bt.grid[bt.actions].tolist() == [1.0, 1.0, 1.0, 0.0, 0.0, -1.0, -1.0]
