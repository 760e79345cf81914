"""The legs a simulator step reports (:class:`~sentio.env.simulator.StepResult`) are the
trades it made: checked against the independent scalar environment
(:class:`~sentio.env.single.TradingEnv`, which spells every leg out) over random valid
steps, and :meth:`BatchSimulator.close_out` against a hand computation."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from sentio.env.market import LONG, SHORT
from sentio.env.simulator import FLAT, FORCED_EXITS, BatchSimulator
from tests.env_helpers import hand_market, make_params, random_market
from tests.test_env import COSTS, Single, _policy, _random_params

SINGLE_FORCED = {None: 0, "close": FORCED_EXITS.index("flat_at_close"), "circuit_breaker": 2}
"""The scalar environment's ``forced_exit`` names as the simulator's codes."""


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_legs_are_the_trades_of_the_independent_scalar_environment(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    market = random_market(n_sessions=5, session_len=40, seed=seed, bar_vol=1.5e-3)
    kinds = {"switch": 0, "resize": 0, "forced": 0}
    for _ in range(3):
        # forced exits at every session's close, so that each kind of leg happens
        params = dataclasses.replace(_random_params(rng), flat_at_close=True)
        single = Single(market, params, backtest=True)
        sim = BatchSimulator(market, params, 1, backtest=True)
        for _ in range(4):
            start = int(rng.integers(params.window - 1, market.n_rows - 60))
            end = start + 50
            single.reset(start, end)
            sim.reset(np.array([0]), np.array([start]), np.array([end]))
            done = False
            while not done:
                cash0, shares0, inst0 = float(sim.cash[0]), float(sim.shares[0]), int(sim.inst[0])
                a = _policy(rng, single.masks(), single.state().action)
                _, _, term, trunc, info = single.step(a)
                res = sim.step(np.array([a]))
                done = term or trunc
                sold, bought = float(res.sold[0]), float(res.bought[0])
                inst, shares = int(res.inst[0]), float(res.shares[0])
                forced = int(res.forced_exit[0])
                assert forced == SINGLE_FORCED[info["forced_exit"]]
                assert int(res.sold_inst[0]) == inst0
                # the inventory: what was sold and bought at the open leads to what is held
                if inst == inst0:
                    assert shares == pytest.approx(shares0 - sold + bought, rel=1e-12, abs=1e-9)
                    kinds["resize"] += bool(sold or bought)
                else:
                    assert (sold, bought) == pytest.approx((shares0, shares), rel=1e-12)
                    kinds["switch"] += inst0 != FLAT and inst != FLAT
                if forced:
                    kinds["forced"] += 1
                    assert (info["shares"], info["instrument"]) == (0.0, FLAT)
                else:
                    assert info["shares"] == pytest.approx(shares, rel=1e-12)
                    assert info["instrument"] == inst
                # every unit of cash is accounted for by a leg
                flows = (
                    sold * float(res.sold_price[0])
                    - bought * float(res.bought_price[0])
                    - float(res.sold_costs[0])
                    - float(res.bought_costs[0])
                )
                exit_value = shares * float(res.close_price[0]) if forced else 0.0
                flows += exit_value - float(res.exit_costs[0])
                assert cash0 + flows == pytest.approx(info["cash"], rel=1e-10, abs=1e-7)
                legs = float(res.sold_costs[0] + res.bought_costs[0] + res.exit_costs[0])
                assert legs == pytest.approx(info["costs"], rel=1e-10, abs=1e-12)
                assert float(res.costs[0]) == pytest.approx(legs, rel=1e-12, abs=1e-15)
                assert (float(res.exit_costs[0]) > 0) <= bool(forced)
                notional = (
                    sold * float(res.sold_price[0]) + bought * float(res.bought_price[0])
                ) + exit_value
                assert notional == pytest.approx(info["traded_notional"], rel=1e-10, abs=1e-9)
                # the position over the bar: value at the close over equity before any exit
                sign = -1.0 if inst == SHORT else 1.0
                e_pre = float(res.equity[0] + res.exit_costs[0])
                expected = sign * shares * float(res.close_price[0]) / e_pre
                assert float(res.position[0]) == pytest.approx(expected, rel=1e-9, abs=1e-12)
                if not forced:
                    assert float(res.position[0]) == pytest.approx(info["exposure"], rel=1e-9)
    assert min(kinds.values()) > 0, kinds  # every kind of leg was exercised


def test_close_out_sells_at_the_close_with_the_exit_cost_formula() -> None:
    """Long 1x of the long ETF, then the episode's end: sold at the close, hand-computed
    costs (1 cent a share, 5 bps half spread, slippage 0.1 x 3 x vol)."""
    m = hand_market(
        [[100.0, 50.0, 20.0], [101.0, 52.0, 19.0], [102.0, 55.0, 18.0]],
        [[100.5, 51.0, 19.5], [101.5, 54.0, 18.5], [102.5, 56.0, 17.5]],
        vol=0.001,
    )
    p = make_params(**COSTS)
    sim = BatchSimulator(m, p, 1, backtest=True)
    sim.reset(np.array([0]), np.array([0]), np.array([2]), equity=10_000.0)
    long1 = int(np.argmax(p.grid))
    res = sim.step(np.array([long1]))
    bought = 10_000.0 / 52.0
    buy_costs = 0.01 * bought + (0.0005 + 0.1 * 3 * 0.001) * bought * 52.0
    assert float(res.bought[0]) == pytest.approx(bought)
    assert float(res.bought_costs[0]) == pytest.approx(buy_costs)
    assert (float(res.sold[0]), int(res.inst[0])) == (0.0, LONG)
    equity_before = float(res.equity[0])
    shares, price, costs = sim.close_out()
    expected = 0.01 * bought + (0.0005 + 0.1 * 3 * 0.001) * bought * 54.0
    assert (float(shares[0]), float(price[0])) == pytest.approx((bought, 54.0))
    assert float(costs[0]) == pytest.approx(expected)
    assert float(sim.equity[0]) == pytest.approx(equity_before - expected)
    assert (float(sim.shares[0]), int(sim.inst[0]), int(sim.held[0])) == (0.0, FLAT, p.flat_action)
    # a flat account sells nothing and pays nothing
    shares, _, costs = sim.close_out()
    assert (float(shares[0]), float(costs[0])) == (0.0, 0.0)
