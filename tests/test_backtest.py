"""Tests of :mod:`sentio.env.backtest`: the sequential backtester and its reference policies.

Two markets: a hand-built :class:`MarketData` (two sessions of 20 one-minute bars, prices
chosen per test) for worked numbers, and a realistic one from ``tests.conftest.minute_bars``
QQQ bars with derived TQQQ/SQQQ and ``SHORT_WINDOWS`` features (built once per module).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math

import numpy as np
import polars as pl
import pytest

from sentio.config import SentioConfig, resolve_for_bars, with_overrides
from sentio.data.leverage import ensure_universe
from sentio.env import LONG, SHORT, EnvParams, MarketData, SentioVecEnv, build_market
from sentio.env.backtest import (
    EXIT_REASONS,
    TRADE_SCHEMA,
    BacktestResult,
    MaskedActionError,
    backtest,
    flat_policy,
    long_etf_policy,
    trend_policy,
    underlying_buy_and_hold,
)
from sentio.errors import DataError
from sentio.evaluation import METRIC_KEYS, compute_metrics
from sentio.features import build_features
from tests.conftest import SHORT_WINDOWS, minute_bars

NO_MASKS = {
    "mask_session": False,
    "mask_risk_budget": False,
    "mask_regime": False,
    "mask_drawdown": False,
    "min_hold_bars": 0,
}
NO_COSTS = {"commission_per_share": 0.0, "half_spread": 0.0, "slippage_vol_mult": 0.0}

# --------------------------------------------------------------------------------------
# markets


def hand_market(
    n_sessions: int = 2,
    bars: int = 20,
    *,
    seed: int = 0,
    long_close: np.ndarray | None = None,
    n_regimes: int = 0,
) -> MarketData:
    """``n_sessions`` sessions of ``bars`` one-minute bars (14:30 UTC onwards), random walks.

    Opens are the previous close plus a small gap; ``long_close`` replaces the long ETF's
    closes (opens follow them: open[t] = close[t-1]).
    """
    rng = np.random.default_rng(seed)
    T = n_sessions * bars
    day0 = np.datetime64("2024-03-04T14:30:00", "us")
    stamps = np.concatenate(
        [
            day0 + np.timedelta64(d, "D") + np.arange(bars) * np.timedelta64(1, "m")
            for d in range(n_sessions)
        ]
    ).astype("datetime64[us]")
    close = np.empty((T, 3))
    close[:, 0] = 100 * np.exp(np.cumsum(rng.normal(0, 1e-3, T)))
    ret_u = np.diff(np.log(close[:, 0]), prepend=np.log(100.0))
    close[:, 1] = 50 * np.exp(np.cumsum(3 * ret_u))
    close[:, 2] = 50 * np.exp(np.cumsum(-3 * ret_u))
    if long_close is not None:
        close[:, 1] = long_close
    open_ = np.empty_like(close)
    open_[0] = close[0] * (1 - 1e-4)
    open_[1:] = close[:-1] * (1 + rng.normal(0, 2e-4, (T - 1, 3)))
    session = np.repeat(np.arange(n_sessions), bars)
    last = np.zeros(T, dtype=bool)
    last[bars - 1 :: bars] = True
    probs = np.zeros((T, n_regimes), dtype=np.float32)
    if n_regimes:
        probs[np.arange(T), rng.integers(0, n_regimes, T)] = 1.0
    return MarketData(
        timestamps=stamps,
        features=rng.normal(0, 1, (T, 2)).astype(np.float32),
        regime_probs=probs,
        open=open_,
        close=close,
        session=session.astype(np.int64),
        last_bar=last,
        minutes_to_close=np.tile(np.arange(bars, 0, -1, dtype=np.float64), n_sessions),
        vol=np.full(T, 1e-3),
        periods_per_year=252.0 * bars,
        feature_names=("log_ret_1", "x"),
    )


def hand_params(**changes: object) -> EnvParams:
    """Default parameters with a 3-row window, every mask off, then ``changes``."""
    base = EnvParams.from_config(resolve_for_bars(SentioConfig(), 60))
    return dataclasses.replace(base, **{"window": 3, **NO_MASKS, **changes})  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def cfg() -> SentioConfig:
    """Default configuration with the short feature windows and a 32-bar observation window
    (room for the trend rules' look-backs)."""
    return with_overrides(SentioConfig(), {"features": SHORT_WINDOWS["features"], "env.window": 32})


def _market(cfg: SentioConfig, before: str | None = None) -> MarketData:
    """The market of the QQQ bars of 2024-03-04 .. 08 (only those stamped before ``before``)."""
    qqq = minute_bars("2024-03-04", "2024-03-08")
    if before is not None:
        cut = dt.datetime.fromisoformat(before).replace(tzinfo=dt.UTC)
        qqq = qqq.filter(pl.col("timestamp") < cut)
    bars, _ = ensure_universe(qqq, cfg.universe)
    return build_market(bars, build_features(bars, cfg), None, cfg)


@pytest.fixture(scope="module")
def market(cfg: SentioConfig) -> MarketData:
    """Five NYSE sessions of derived QQQ/TQQQ/SQQQ minute bars (four after the warm-up)."""
    return _market(cfg)


@pytest.fixture(scope="module")
def params(cfg: SentioConfig) -> EnvParams:
    """The default trading model (costs, every mask layer on, flat at the close)."""
    return EnvParams.from_config(resolve_for_bars(cfg, 60))


def _equal(a: BacktestResult, b: BacktestResult) -> None:
    for name in ("timestamps", "rows", "returns", "equity", "exposure", "position", "costs"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    np.testing.assert_array_equal(a.actions, b.actions)
    assert a.trades.equals(b.trades)


# --------------------------------------------------------------------------------------
# reference policies and accounting


def test_flat_policy_earns_and_pays_nothing(market: MarketData, params: EnvParams) -> None:
    res = backtest(flat_policy(params), market, params, [(0, market.n_rows)])
    assert res.n_bars == market.n_rows - params.window
    assert np.all(res.returns == 0.0) and np.all(res.costs == 0.0)
    assert np.all(res.equity == params.initial_cash)
    assert np.all(res.exposure == 0.0) and res.trades.height == 0
    assert res.trades.schema == pl.Schema(TRADE_SCHEMA)
    assert res.metrics()["total_return"] == 0.0


def test_buy_and_hold_equals_etf_open_to_close(market: MarketData, params: EnvParams) -> None:
    """No costs, no masks, no flat at the close: one fill, then the ETF's own moves."""
    p = dataclasses.replace(params, flat_at_close=False, **NO_MASKS, **NO_COSTS)  # type: ignore[arg-type]
    a, b = 100, 1100  # crosses two session boundaries (overnight gaps in the ETF opens)
    res = backtest(long_etf_policy(p), market, p, [(a, b)])
    start = max(a, p.window - 1)
    fill = start + 1  # the first decision is at the close of `start`, filled at the next open
    px_open, px_close = market.open[:, LONG], market.close[:, LONG]
    expected = p.initial_cash * px_close[fill:b] / px_open[fill]
    np.testing.assert_allclose(res.equity, expected, rtol=1e-12)
    np.testing.assert_array_equal(res.rows, np.arange(fill, b))
    assert np.all(res.actions == int(np.argmax(p.grid)))
    # the ledger: one trade, bought at the first fill bar's open, sold at the block end
    (trade,) = res.trades.iter_rows(named=True)
    assert trade["instrument"] == "long" and trade["exit_reason"] == "end_of_block"
    assert trade["entry_row"] == fill and trade["exit_row"] == b - 1
    assert trade["entry_price"] == px_open[fill] and trade["exit_price"] == px_close[b - 1]
    assert trade["bars_held"] == b - fill and trade["n_fills"] == 2
    assert trade["costs"] == 0.0
    assert trade["pnl"] == pytest.approx(res.equity[-1] - p.initial_cash, rel=1e-12)


def test_buy_and_hold_flat_at_close_compounds_sessions(
    market: MarketData, params: EnvParams
) -> None:
    """Flat at each close: per session, entry at the open of its first fill bar, exit at its close."""
    p = dataclasses.replace(params, **NO_MASKS, **NO_COSTS)  # type: ignore[arg-type]
    res = backtest(long_etf_policy(p), market, p, [(0, market.n_rows)])
    first_fill = p.window  # decision at row window - 1
    lasts = np.flatnonzero(market.last_bar)
    growth = 1.0
    entry = first_fill
    for last in lasts.tolist():
        growth *= market.close[last, LONG] / market.open[entry, LONG]
        entry = last + 1
    assert res.equity[-1] == pytest.approx(p.initial_cash * growth, rel=1e-12)
    reasons = res.trades["exit_reason"].to_list()
    assert reasons == ["flat_at_close"] * lasts.size
    np.testing.assert_array_equal(res.trades["exit_row"].to_numpy(), lasts)
    assert (res.trades["exit_fill"] == "close").all()
    # exposure is 0 after each forced exit; the position held over that bar is not
    at_close = np.isin(res.rows, lasts)
    assert np.all(res.exposure[at_close] == 0.0)
    assert np.all(res.position[at_close] > 0.9)


def test_costs_in_ledger_add_up_to_the_cent(market: MarketData, params: EnvParams) -> None:
    """With costs and every mask on: ledger costs = the simulator's costs; equity = pnl - costs."""
    policies = {
        "long": long_etf_policy(params),
        "trend": trend_policy(params, 10, feature_names=market.feature_names),
    }
    blocks = [(0, 700), (700, market.n_rows)]  # the first block ends mid-session
    for name, policy in policies.items():
        res = backtest(policy, market, params, blocks, instruments=("TQQQ", "SQQQ"))
        tr = res.trades
        assert tr.height > 0, name
        assert set(tr["instrument"]) <= {"TQQQ", "SQQQ"}
        assert set(tr["exit_reason"]) <= set(EXIT_REASONS)
        total_costs = float(res.costs_cash.sum())
        assert total_costs > 0
        assert abs(float(tr["costs"].sum()) - total_costs) < 0.005, name
        final = res.initial_equity + float(tr["pnl"].sum()) - float(tr["costs"].sum())
        assert abs(final - res.equity[-1]) < 0.005, name
        np.testing.assert_allclose(tr["net_pnl"], tr["pnl"] - tr["costs"])
        # every block ends flat; costs as a fraction of the equity before the bar
        prev = np.concatenate([[res.initial_equity], res.equity[:-1]])
        np.testing.assert_allclose(res.costs, res.costs_cash / prev, rtol=1e-12)
        np.testing.assert_allclose(res.returns, res.equity / prev - 1.0, rtol=1e-12, atol=1e-15)
        assert (tr["bars_held"] >= 1).all()
        assert (tr["exit_row"] >= tr["entry_row"]).all()


def test_trade_costs_by_hand() -> None:
    """One long trade on the hand market: the cost formula applied to each fill by hand."""
    m = hand_market(1, 20)
    p = hand_params(flat_at_close=True)
    grid = p.grid

    def policy(obs: dict[str, np.ndarray], mask: np.ndarray) -> int:
        return int(np.flatnonzero(grid == 0.5)[0])

    res = backtest(policy, m, p, [(0, 20)])
    (trade,) = res.trades.iter_rows(named=True)
    e0 = p.initial_cash
    fill = p.window  # decision at row window - 1
    shares = 0.5 * e0 / m.open[fill, LONG]
    rate = p.half_spread + p.slippage_vol_mult * p.leverage * 1e-3
    buy_cost = p.commission_per_share * shares + rate * shares * m.open[fill, LONG]
    sell_cost = p.commission_per_share * shares + rate * shares * m.close[19, LONG]
    assert trade["shares"] == pytest.approx(shares, rel=1e-12)
    assert trade["costs"] == pytest.approx(buy_cost + sell_cost, rel=1e-12)
    assert trade["pnl"] == pytest.approx(
        shares * (m.close[19, LONG] - m.open[fill, LONG]), rel=1e-9
    )
    assert trade["exit_reason"] == "flat_at_close" and trade["bars_held"] == 20 - fill
    assert res.costs_cash[0] == pytest.approx(buy_cost, rel=1e-12)
    assert res.costs_cash[-1] == pytest.approx(sell_cost, rel=1e-12)
    assert res.equity[-1] == pytest.approx(e0 + trade["pnl"] - trade["costs"], rel=1e-12)


def test_circuit_breaker_exit_then_flat_for_the_session() -> None:
    """A 20% fall of the long ETF trips the breaker: sold at that close, flat until the session ends."""
    long_close = np.full(40, 50.0)
    long_close[10:20] = 40.0  # bar 10 falls 20% (3x leverage of nothing: a hand-made crash)
    long_close[20:] = 41.0
    m = hand_market(2, 20, long_close=long_close)
    m.open[1:, LONG] = long_close[:-1]
    p = hand_params(mask_drawdown=True, flat_at_close=True)
    res = backtest(long_etf_policy(p), m, p, [(0, 40)])
    reasons = res.trades["exit_reason"].to_list()
    assert reasons[0] == "circuit_breaker"
    assert res.trades["exit_row"][0] == 10
    after = (res.rows > 10) & (res.rows < 20)
    assert np.all(res.exposure[after] == 0.0)
    assert np.all(res.mask_blocked[(res.rows > 11) & (res.rows < 20)] & 8)  # drawdown bit
    # the next session trades again
    assert res.trades.height == 2 and reasons[1] == "flat_at_close"


# --------------------------------------------------------------------------------------
# policies: masks, SB3 models, determinism


def test_masked_action_raises_a_clear_error() -> None:
    """Opening a position inside the no-new-exposure window at the close is refused."""
    m = hand_market(1, 20)
    p = hand_params(mask_session=True, no_new_exposure_minutes=5.0)
    long_ = int(np.argmax(p.grid))

    def late_buyer(obs: dict[str, np.ndarray], mask: np.ndarray) -> int:
        return long_ if obs["state"][-1] * 390 <= 6 else p.flat_action

    with pytest.raises(MaskedActionError) as err:
        backtest(late_buyer, m, p, [(0, 20)])
    msg = str(err.value)
    assert "row 14" in msg and f"action {long_}" in msg and "['session']" in msg
    assert "exposure +1" in msg and "allowed actions" in msg


def test_policy_output_is_checked(market: MarketData, params: EnvParams) -> None:
    with pytest.raises(ValueError, match="valid: 0..4"):
        backtest(lambda obs, mask: 7, market, params, [(0, 100)])
    with pytest.raises(ValueError, match="one action index"):
        backtest(lambda obs, mask: [0, 1], market, params, [(0, 100)])  # type: ignore[arg-type, return-value]


def test_maskable_ppo_runs_deterministically(market: MarketData, params: EnvParams) -> None:
    from sb3_contrib import MaskablePPO

    env = SentioVecEnv(market, params, [(0, market.n_rows)], 2, seed=0)
    model = MaskablePPO(
        "MultiInputPolicy",
        env,
        n_steps=8,
        batch_size=16,
        policy_kwargs={"net_arch": [8]},
        seed=0,
        device="cpu",
    )
    blocks = [(0, 500), (500, 900)]
    first = backtest(model, market, params, blocks)
    second = backtest(model, market, params, blocks)
    _equal(first, second)
    assert first.n_bars == (499 - (params.window - 1)) + (899 - 500)  # start rows have no bar
    assert len(set(first.actions.tolist())) > 1  # an untrained policy still varies


def test_sb3_model_without_masks_gets_batched_obs(market: MarketData, params: EnvParams) -> None:
    """A plain ``predict(obs, deterministic)`` (PPO) gets one env's batched observation."""
    seen: list[tuple[tuple[int, ...], tuple[int, ...], bool]] = []

    class Model:
        def predict(
            self,
            observation: dict[str, np.ndarray],
            state: object = None,
            episode_start: object = None,
            deterministic: bool = False,
        ) -> tuple[np.ndarray, None]:
            seen.append((observation["window"].shape, observation["state"].shape, deterministic))
            return np.array([params.flat_action]), None

    res = backtest(Model(), market, params, [(0, 50)])
    assert res.n_bars == 50 - params.window
    assert seen[0] == ((1, params.window, market.n_features), (1, 5), True)


def test_trend_policy_is_deterministic(market: MarketData, params: EnvParams) -> None:
    policy = trend_policy(params, 15, feature_names=market.feature_names)
    a = backtest(policy, market, params, [(0, market.n_rows)])
    b = backtest(policy, market, params, [(0, market.n_rows)])
    _equal(a, b)
    assert a.trades.height > 5
    with pytest.raises(ValueError, match="not among"):
        trend_policy(params, 15, feature_names=market.feature_names, feature="nope")
    with pytest.raises(ValueError, match="lookback"):
        trend_policy(params, params.window + 1, feature_names=market.feature_names)


def test_trend_policy_rule_by_hand() -> None:
    """Sign of the summed feature; the largest allowed size <= max_exposure; else flat."""
    p = hand_params()
    policy = trend_policy(p, 2, feature_names=("log_ret_1", "x"), max_exposure=0.6)
    window = np.array([[9.0, 0.0], [1.0, 0.0], [-2.0, 0.0]], dtype=np.float32)
    state = np.zeros(5, dtype=np.float32)
    all_ok = np.ones(5, dtype=bool)
    grid = list(p.grid)
    assert policy({"window": window, "state": state}, all_ok) == grid.index(-0.5)
    window[1, 0] = 3.0
    assert policy({"window": window, "state": state}, all_ok) == grid.index(0.5)
    only_flat = np.array([True, True, True, False, True])  # +0.5 blocked, +1 above the cap
    assert policy({"window": window, "state": state}, only_flat) == grid.index(0.0)
    window[1, 0] = 2.0
    assert policy({"window": window, "state": state}, all_ok) == grid.index(0.0)


def test_trend_policy_uses_no_future(
    cfg: SentioConfig, market: MarketData, params: EnvParams
) -> None:
    """A market truncated after row k (rebuilt from truncated bars, and sliced) gives the same bars."""
    short = _market(cfg, "2024-03-08")  # the bars of the last session dropped
    k = short.n_rows
    assert k < market.n_rows and market.last_bar[k - 1]
    np.testing.assert_array_equal(short.timestamps, market.timestamps[:k])
    np.testing.assert_array_equal(short.features, market.features[:k])
    sliced = dataclasses.replace(
        market,
        **{
            f: getattr(market, f)[:k]
            for f in (
                "timestamps",
                "features",
                "regime_probs",
                "open",
                "close",
                "session",
                "last_bar",
                "minutes_to_close",
                "vol",
            )
        },
    )
    policy = trend_policy(params, 15, feature_names=market.feature_names)
    full = backtest(policy, market, params, [(0, market.n_rows)])
    n = k - params.window  # the bars of rows window .. k-1
    for trunc_market in (short, sliced):
        part = backtest(policy, trunc_market, params, [(0, k)])
        assert part.n_bars == n
        for name in ("rows", "returns", "equity", "exposure", "costs", "actions"):
            np.testing.assert_array_equal(getattr(part, name), getattr(full, name)[:n])
        shared = full.trades.filter(pl.col("exit_row") < k)
        assert part.trades.equals(shared)


# --------------------------------------------------------------------------------------
# blocks, benchmark, metrics


def test_equity_is_carried_between_blocks(market: MarketData, params: EnvParams) -> None:
    policy = trend_policy(params, 15, feature_names=market.feature_names)
    both = backtest(policy, market, params, [(0, 700), (900, market.n_rows)])
    first = backtest(policy, market, params, [(0, 700)])
    second = backtest(
        policy, market, params, [(900, market.n_rows)], equity=float(first.equity[-1])
    )
    assert both.blocks == [(params.window - 1, 699), (900, market.n_rows - 1)]
    n1 = first.n_bars
    np.testing.assert_array_equal(both.equity[:n1], first.equity)
    np.testing.assert_array_equal(both.equity[n1:], second.equity)
    np.testing.assert_array_equal(both.block, np.repeat([0, 1], [n1, second.n_bars]))
    assert both.rows[n1] == 901  # the second block's first fill bar
    assert both.equity[-1] != first.equity[-1]
    assert second.initial_equity == first.equity[-1]


def test_bad_blocks() -> None:
    m = hand_market()
    p = hand_params()
    with pytest.raises(ValueError, match="overlap"):
        backtest(flat_policy(p), m, p, [(0, 20), (10, 30)])
    with pytest.raises(ValueError, match="half-open"):
        backtest(flat_policy(p), m, p, [(0, 41)])
    with pytest.raises(DataError, match="no test block holds a step"):
        backtest(flat_policy(p), m, p, [(0, 3)])
    # a block too short for one step is skipped, the others run
    res = backtest(flat_policy(p), m, p, [(0, 3), (10, 20)])
    assert res.blocks == [(10, 19)] and res.n_bars == 9


def test_underlying_benchmark_matches_backtest_bars(market: MarketData, params: EnvParams) -> None:
    blocks = [(0, 700), (900, market.n_rows)]
    res = backtest(flat_policy(params), market, params, blocks)
    bench = underlying_buy_and_hold(market, blocks, params)
    np.testing.assert_array_equal(bench.timestamps, res.timestamps)
    np.testing.assert_array_equal(bench.rows, res.rows)
    cu = market.close[:, 0]
    np.testing.assert_allclose(bench.returns, cu[res.rows] / cu[res.rows - 1] - 1.0)
    growth = (cu[699] / cu[params.window - 1]) * (cu[market.n_rows - 1] / cu[900])
    assert bench.equity[-1] == pytest.approx(params.initial_cash * growth, rel=1e-12)
    assert np.all(bench.exposure == 1.0) and np.all(bench.costs == 0.0)
    assert list(bench.metrics()) == list(METRIC_KEYS)


def test_metrics_and_frames(market: MarketData, params: EnvParams) -> None:
    res = backtest(long_etf_policy(params), market, params, [(0, market.n_rows)])
    metrics = res.metrics()
    assert list(metrics) == list(METRIC_KEYS)
    assert metrics["periods_per_year"] == market.periods_per_year
    assert metrics["total_return"] == pytest.approx(res.equity[-1] / res.initial_equity - 1)
    assert metrics["costs_paid"] == pytest.approx(float(res.costs.sum()))
    assert math.isfinite(metrics["sharpe"])
    frame = res.bars_frame()
    assert frame.height == res.n_bars and frame["timestamp"][0] == res.timestamps[0]
    assert {"target_exposure", "mask_blocked", "regime"} <= set(frame.columns)
    assert np.all(res.regime == -1)  # no regimes in this market
    counts = res.mask_layer_counts()
    assert counts["session"] > 0  # the last minutes of every session


def test_regime_is_the_argmax_at_the_decision_row() -> None:
    m = hand_market(n_regimes=3)
    p = hand_params()
    res = backtest(flat_policy(p), m, p, [(0, 40)])
    np.testing.assert_array_equal(res.regime, m.regime_probs.argmax(axis=1)[res.rows - 1])


def test_short_etf_ledger_names_the_short_instrument() -> None:
    m = hand_market()
    p = hand_params()
    short_ = int(np.argmin(p.grid))
    res = backtest(lambda obs, mask: short_, m, p, [(0, 40)], instruments=("TQQQ", "SQQQ"))
    assert res.trades["instrument"].to_list() == ["SQQQ", "SQQQ"]
    assert res.trades["side"].to_list() == ["short", "short"]
    assert np.all(res.position < 0)
    assert res.trades["exit_price"][0] == m.close[19, SHORT]


def test_bars_agree_with_the_scalar_reference_env(market: MarketData, params: EnvParams) -> None:
    """Replaying the backtest's actions in ``TradingEnv`` (backtest mode) gives the same bars."""
    from sentio.env.single import TradingEnv

    lasts = np.flatnonzero(market.last_bar)
    blocks = [(0, int(lasts[1]) + 1), (int(lasts[1]) + 1, market.n_rows)]  # session-aligned
    policy = trend_policy(params, 15, feature_names=market.feature_names)
    res = backtest(policy, market, params, blocks)
    env = TradingEnv(market, params, [(0, market.n_rows)], seed=0, backtest=True)
    equity, costs = [], []
    eq = params.initial_cash
    for block, (start, end) in enumerate(res.blocks):
        env.reset(options={"start": start, "end": end, "equity": eq})
        for a in res.actions[res.block == block]:
            _, _, terminated, truncated, info = env.step(int(a))
            equity.append(info["equity"])
            costs.append(info["costs"])
        assert truncated and not terminated
        eq = equity[-1]
    np.testing.assert_allclose(res.equity, equity, rtol=1e-12)
    np.testing.assert_allclose(res.costs_cash, costs, rtol=1e-9, atol=1e-9)
    assert "end_of_block" not in set(res.trades["exit_reason"])


def test_one_trade_definition_on_a_hand_worked_sequence() -> None:
    """A trade is a round trip, forced exits included: ledger rows = entries = n_trades.

    Three sessions of six bars (rows 0-5, 6-11, 12-17), window 3, flat at the close:

    ======  ===========================  =================================================
    trade   held over bars               how it ends
    ======  ===========================  =================================================
    1       3-5 long                     forced sale at the close of row 5 (session end)
    2       6-8 long (re-bought at 6)    the policy goes flat: sold at the open of row 9
    3       10 short                     switched to long: sold at the open of row 11
    4       11 long                      forced sale at the close of row 11
    5       16 long                      end of the block [0, 17): sold at the close of row 16
    ======  ===========================  =================================================

    Same-sign runs of the held position would count 4 (trades 1 and 2 touch).
    """
    market = hand_market(3, 6)
    p = hand_params(**NO_COSTS, flat_at_close=True)
    long_, short, flat = (int(np.flatnonzero(p.grid == x)[0]) for x in (1.0, -1.0, 0.0))
    script = {2: long_, 3: long_, 4: long_, 5: long_, 6: long_, 7: long_, 9: short}
    script |= {10: long_, 15: long_}

    def policy(obs: dict[str, np.ndarray], mask: np.ndarray, row: int) -> int:
        return script.get(row, flat)

    policy.takes_row = True  # type: ignore[attr-defined]
    res = backtest(policy, market, p, [(0, 17)])  # the block ends mid-session
    tr = res.trades
    assert tr["exit_reason"].to_list() == [
        "flat_at_close",
        "signal",
        "signal",
        "flat_at_close",
        "end_of_block",
    ]
    assert tr["entry_row"].to_list() == [3, 6, 10, 11, 16]
    assert tr["exit_row"].to_list() == [5, 9, 11, 11, 16]
    assert tr["side"].to_list() == ["long", "long", "short", "long", "long"]
    assert tr["bars_held"].to_list() == [3, 3, 1, 1, 1]
    entries = res.entries
    np.testing.assert_array_equal(res.rows[entries == 1], [3, 6, 10, 11, 16])
    m = res.metrics()
    assert m["n_trades"] == tr.height == int(entries.sum()) == 5
    assert m["avg_holding_bars"] == pytest.approx(tr["bars_held"].mean())
    runs = compute_metrics(res.returns, positions=res.position, periods_per_year=252.0 * 6)
    assert runs["n_trades"] == 4  # what sign runs alone see
    # the per-bar frame carries the entries: the report counts the same trades
    assert int(res.bars_frame()["entries"].sum()) == 5


def test_a_data_gap_splits_the_block_for_the_agent_and_the_benchmark() -> None:
    """Sessions missing before row 6: no step from row 5 to row 6, for any series.

    Held long without flat_at_close, the position is sold at the close of row 5 (the last
    bar before the gap, exit reason data_gap), and the piece after the gap starts flat: its
    first decision is taken at the close of row 6 and fills at row 7.
    """
    gap = np.zeros(18, dtype=bool)
    gap[6] = True
    market = dataclasses.replace(hand_market(3, 6), gap_before=gap)
    assert market.gap_rows().tolist() == [6]
    assert market.split_at_gaps(0, 18) == [(0, 6), (6, 18)]
    p = hand_params(**NO_COSTS, flat_at_close=False)
    res = backtest(long_etf_policy(p), market, p, [(0, 18)])
    assert 6 not in res.rows.tolist()  # the step across the gap is never taken
    assert res.rows.tolist() == [3, 4, 5, *range(7, 18)]
    tr = res.trades
    assert tr["exit_reason"].to_list() == ["data_gap", "end_of_block"]
    assert tr["exit_row"].to_list() == [5, 17]
    assert tr["entry_row"].to_list() == [3, 7]
    assert res.exposure[res.rows.tolist().index(5)] == 0.0  # nothing carried across
    growth = (market.close[5, 1] / market.open[3, 1]) * (market.close[17, 1] / market.open[7, 1])
    assert res.equity[-1] == pytest.approx(p.initial_cash * growth, rel=1e-12)
    bench = underlying_buy_and_hold(market, [(0, 18)], p)
    np.testing.assert_array_equal(bench.rows, res.rows)
    assert bench.entries.tolist().count(1) == 2  # bought again after the gap
    close = market.close[:, 0]
    assert bench.equity[-1] == pytest.approx(
        p.initial_cash * close[5] / close[2] * close[17] / close[6], rel=1e-12
    )
    # training episodes: none spans the gap either
    from sentio.env.episodes import candidate_episodes

    for sessions in (1, 2, 3):
        starts, ends = candidate_episodes(market, [(0, 18)], window=3, episode_sessions=sessions)
        assert not ((starts < 6) & (ends >= 6)).any(), sessions
