"""The trading environment: the scalar TradingEnv against the batched simulator, look-ahead,
accounting worked by hand, flags, masks, episode windows and the market arrays.

Hand-worked tests run on both implementations (:class:`Single` wraps
:class:`~sentio.env.single.TradingEnv`, :class:`Batch` a one-account
:class:`~sentio.env.simulator.BatchSimulator`), so each number is checked twice.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import time
import warnings
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import polars as pl
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sentio.env import (
    MASK_LAYERS,
    BatchSimulator,
    EnvParams,
    MarketData,
    SentioVecEnv,
    TradingEnv,
    build_market,
    candidate_episodes,
    ewma_vol,
    layer_names,
    observation_space,
)
from sentio.env.market import CLOCK_SCALE
from sentio.env.simulator import TERMINATION
from sentio.env.single import Account
from sentio.env.torch_simulator import TorchSimulator
from sentio.errors import DataError
from sentio.evaluation import periods_per_year
from sentio.features.normalise import UNNORMALISED_COLUMNS
from tests.env_helpers import (
    hand_market,
    make_params,
    params_from_config,
    random_market,
    realistic_inputs,
)

FLAT_I, LONG_I, SHORT_I = 0, 1, 2  # instrument codes
GRID = [-1.0, -0.5, 0.0, 0.5, 1.0]
A_SHORT1, A_SHORT_HALF, A_FLAT, A_LONG_HALF, A_LONG1 = range(5)
COSTS = {"commission_per_share": 0.01, "half_spread": 0.0005, "slippage_vol_mult": 0.1}
"""Hand-test costs: 1 cent a share, 5 bps half spread, slippage 0.1 x 3 x vol (0.0008 at vol 0.001)."""


# ---------------------------------------------------------------------------- runners


class Single:
    """:class:`TradingEnv` through the small interface the tests share."""

    name = "single"

    def __init__(self, market: MarketData, params: EnvParams, backtest: bool = False) -> None:
        self.env = TradingEnv(market, params, [(0, market.n_rows)], seed=0, backtest=backtest)
        self.params = params

    def reset(self, start: int, end: int, equity: float | None = None) -> dict[str, np.ndarray]:
        opts: dict[str, Any] = {"start": start, "end": end}
        if equity is not None:
            opts["equity"] = equity
        return self.env.reset(options=opts)[0]

    def step(self, a: int) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        obs, r, term, trunc, info = self.env.step(a)
        return obs, float(r), term, trunc, info

    def observe(self) -> dict[str, np.ndarray]:
        return self.env.observe()

    def masks(self) -> np.ndarray:
        return self.env.action_masks()

    def reasons(self) -> dict[float, list[str]]:
        return self.env.mask_reasons()

    def state(self) -> Account:
        assert self.env.account is not None
        return dataclasses.replace(self.env.account)

    def set_state(self, acct: Account) -> None:
        self.env.account = dataclasses.replace(acct)


class Batch:
    """A one-account :class:`BatchSimulator` through the same interface."""

    name = "batch"

    def __init__(self, market: MarketData, params: EnvParams, backtest: bool = False) -> None:
        self.sim = BatchSimulator(market, params, 1, backtest=backtest)
        self.params = params

    def reset(self, start: int, end: int, equity: float | None = None) -> dict[str, np.ndarray]:
        self.sim.reset(np.array([0]), np.array([start]), np.array([end]), equity)
        return self.observe()

    def step(self, a: int) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        res = self.sim.step(np.array([a]))
        return self._outcome(res)

    def _outcome(self, res: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        """The step's tuple from account 0 of a (numpy or torch) step result."""
        info = {
            "equity": float(res.equity[0]),
            "exposure": float(res.exposure[0]),
            "costs": float(res.costs[0]),
            "traded_notional": float(res.traded_notional[0]),
            "termination": TERMINATION[int(res.termination[0])],
        }
        return (
            self.observe(),
            float(res.reward[0]),
            bool(res.terminated[0]),
            bool(res.truncated[0]),
            info,
        )

    def observe(self) -> dict[str, np.ndarray]:
        return {k: v[0] for k, v in self.sim.observe().items()}

    def masks(self) -> np.ndarray:
        return self.sim.action_masks()[0]

    def reasons(self) -> dict[float, list[str]]:
        row = self.sim.blocked_layers()[0]
        return {float(self.params.grid[a]): layer_names(int(row[a])) for a in np.flatnonzero(row)}

    def state(self) -> Account:
        s = self.sim
        return Account(
            t=int(s.t[0]),
            end=int(s.end[0]),
            cash=float(s.cash[0]),
            shares=float(s.shares[0]),
            instrument=int(s.inst[0]),
            action=int(s.held[0]),
            equity=float(s.equity[0]),
            peak=float(s.peak[0]),
            drawdown=float(s.dd[0]),
            entry_equity=float(s.entry_equity[0]),
            bars_held=int(s.bars_held[0]),
            tripped=bool(s.tripped[0]),
        )

    def set_state(self, acct: Account) -> None:
        s = self.sim
        s.t[0], s.end[0], s.cash[0], s.shares[0] = acct.t, acct.end, acct.cash, acct.shares
        s.inst[0], s.held[0], s.equity[0], s.peak[0] = (
            acct.instrument,
            acct.action,
            acct.equity,
            acct.peak,
        )
        s.dd[0], s.entry_equity[0], s.bars_held[0], s.tripped[0] = (
            acct.drawdown,
            acct.entry_equity,
            acct.bars_held,
            acct.tripped,
        )


class Torch(Batch):
    """A one-account :class:`TorchSimulator` (CPU) through the same interface."""

    name = "torch"

    def __init__(self, market: MarketData, params: EnvParams, backtest: bool = False) -> None:
        self.torch_sim = TorchSimulator(market, params, 1, backtest=backtest)
        self.params = params

    @property
    def sim(self) -> Any:  # the account arrays as numpy, for Batch's state/set_state
        return _NumpyView(self.torch_sim)

    def reset(self, start: int, end: int, equity: float | None = None) -> dict[str, np.ndarray]:
        self.torch_sim.reset(torch.tensor([start]), torch.tensor([end]), equity=equity)
        return self.observe()

    def step(self, a: int) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        return self._outcome(self.torch_sim.step(torch.tensor([a])))

    def observe(self) -> dict[str, np.ndarray]:
        return {k: v[0].numpy() for k, v in self.torch_sim.observe().items()}

    def masks(self) -> np.ndarray:
        return self.torch_sim.action_masks()[0].numpy()

    def reasons(self) -> dict[float, list[str]]:
        row = self.torch_sim.blocked_layers()[0].numpy()
        return {float(self.params.grid[a]): layer_names(int(row[a])) for a in np.flatnonzero(row)}


class _NumpyView:
    """The torch simulator's accounts as numpy arrays sharing the CPU tensors' memory
    (writes reach the simulator)."""

    def __init__(self, sim: TorchSimulator) -> None:
        for name in sim.ACCOUNT_STATE:
            setattr(self, name, getattr(sim, name).numpy())


RUNNERS = [Single, Batch, Torch]
both = pytest.mark.parametrize("runner", RUNNERS, ids=lambda r: r.name)


def position(
    market: MarketData,
    t: int,
    action: int,
    equity: float,
    *,
    end: int | None = None,
    bars_held: int = 0,
    drawdown: float = 0.0,
    tripped: bool = False,
    drift: float = 1.0,
) -> Account:
    """A consistent account holding ``GRID[action]`` (times ``drift``) at the close of row t."""
    x = GRID[action]
    inst = LONG_I if x > 0 else SHORT_I if x < 0 else FLAT_I
    shares = abs(x) * drift * equity / market.close[t, inst] if inst != FLAT_I else 0.0
    return Account(
        t=t,
        end=market.n_rows - 1 if end is None else end,
        cash=equity - shares * (market.close[t, inst] if inst != FLAT_I else 0.0),
        shares=shares,
        instrument=inst,
        action=action,
        equity=equity,
        peak=equity / (1.0 - drawdown),
        drawdown=drawdown,
        entry_equity=equity,
        bars_held=bars_held,
        tripped=tripped,
    )


def cents(x: float) -> float:
    """``x`` rounded to the cent."""
    return round(x, 2)


def assert_same_obs(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    """Observations equal: the feature window exactly, the float32 state to rounding."""
    assert set(a) == set(b) == {"window", "state"}
    assert a["window"].dtype == b["window"].dtype == np.float32
    assert a["state"].dtype == b["state"].dtype == np.float32
    np.testing.assert_array_equal(a["window"], b["window"])
    np.testing.assert_allclose(a["state"], b["state"], rtol=1e-6, atol=1e-7)


def assert_same_account(a: Account, b: Account) -> None:
    """Account states equal: integers and flags exactly, money to rtol 1e-9."""
    for f in ("t", "end", "instrument", "action", "bars_held", "tripped"):
        assert getattr(a, f) == getattr(b, f), f
    for f in ("cash", "shares", "equity", "peak", "drawdown", "entry_equity"):
        assert getattr(a, f) == pytest.approx(getattr(b, f), rel=1e-9, abs=1e-9), f


# ---------------------------------------------------------------------------- API


def _small_setup(**overrides: Any) -> tuple[MarketData, EnvParams]:
    market = random_market(n_sessions=3, session_len=30, seed=3, bar_vol=1e-3)
    params = make_params(
        window=4,
        mask_session=True,
        mask_risk_budget=True,
        target_vol_annual=3.0,
        mask_regime=True,
        mask_drawdown=True,
        drawdown_limit=0.05,
        min_hold_bars=2,
        flat_at_close=True,
        **COSTS,
        **overrides,
    )
    return market, params


def test_gymnasium_and_sb3_env_checkers_pass() -> None:
    from gymnasium.utils.env_checker import check_env as gym_check
    from stable_baselines3.common.env_checker import check_env as sb3_check

    market, params = _small_setup()
    env = TradingEnv(market, params, [(0, market.n_rows)], seed=0)
    assert env.observation_space == observation_space(market, params)
    assert env.action_space == gym.spaces.Discrete(5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unbounded boxes, no spec, (L, F) window shape
        gym_check(env)
        sb3_check(env)


def test_reset_seeding_matches_the_vec_env_sampler() -> None:
    market, params = _small_setup()
    ranges = [(0, 40), (45, market.n_rows)]
    env = TradingEnv(market, params, ranges, seed=11)
    vec = SentioVecEnv(market, params, ranges, n_envs=1, seed=11)
    vec.reset()
    starts, ends = candidate_episodes(market, ranges, window=params.window)
    got, want = [], []
    for _ in range(20):
        info = env.reset()[1]
        got.append((info["row"], info["end"]))
        want.append((int(vec.sim.t[0]), int(vec.sim.end[0])))
        while True:  # run the vec env's account to its end: it restarts on a new episode
            vec.step_async(np.array([A_FLAT]))
            if vec.step_wait()[2][0]:
                break
    assert got == want
    assert set(got) <= set(zip(starts.tolist(), ends.tolist(), strict=True))
    # reset(seed=...) reseeds; the constructor seed is the same stream
    first = TradingEnv(market, params, ranges).reset(seed=11)[1]["row"]
    assert first == got[0][0]


def test_reset_options_and_errors() -> None:
    market, params = _small_setup()
    env = TradingEnv(market, params, [(0, market.n_rows)], seed=0)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(A_FLAT)
    obs, info = env.reset(options={"start": 5, "end": 8, "equity": 2_500.0})
    assert info == {"row": 5, "end": 8, "equity": 2_500.0}
    assert obs in env.observation_space
    np.testing.assert_array_equal(obs["window"], market.features[2:6].astype(np.float32))
    assert env.account is not None and env.account.equity == 2_500.0
    for bad in ({"start": 2, "end": 8}, {"start": 8, "end": 8}, {"start": 5, "end": 90}):
        with pytest.raises(ValueError, match="window-1 <= start < end"):
            env.reset(options=bad)
    with pytest.raises(ValueError, match="both 'start' and 'end'"):
        env.reset(options={"start": 5})
    with pytest.raises(ValueError, match="positive"):
        env.reset(options={"start": 5, "end": 8, "equity": 0.0})
    env.reset(options={"start": 5, "end": 6})
    with pytest.raises(ValueError, match="action must be in"):
        env.step(5)
    _, _, term, trunc, _ = env.step(np.int64(A_FLAT))
    assert trunc and not term
    with pytest.raises(RuntimeError, match="ended"):
        env.step(A_FLAT)


def test_maskable_ppo_smoke_on_dummy_vec_env() -> None:
    from sb3_contrib import MaskablePPO
    from sb3_contrib.common.maskable.utils import get_action_masks
    from stable_baselines3.common.vec_env import DummyVecEnv

    market, params = _small_setup()

    def maker(seed: int) -> Callable[[], gym.Env[Any, Any]]:
        return lambda: TradingEnv(market, params, [(0, market.n_rows)], seed=seed)

    venv = DummyVecEnv([maker(0), maker(1)])
    t0 = time.perf_counter()
    model = MaskablePPO(
        "MultiInputPolicy", venv, n_steps=32, batch_size=32, n_epochs=1, seed=0, device="cpu"
    )
    model.learn(64)
    obs = venv.reset()
    assert isinstance(obs, dict)
    for _ in range(20):
        masks = get_action_masks(venv)
        assert masks.shape == (2, 5) and masks[:, A_FLAT].all()
        actions, _ = model.predict(obs, action_masks=masks, deterministic=False)
        assert masks[np.arange(2), actions].all()
        obs = venv.step(actions)[0]
        assert isinstance(obs, dict)
    assert time.perf_counter() - t0 < 30


# ---------------------------------------------------------------------------- N=1 equivalence


def _random_params(rng: np.random.Generator) -> EnvParams:
    return make_params(
        window=int(rng.choice([1, 3])),
        flat_at_close=bool(rng.random() < 0.5),
        drawdown_penalty=float(rng.choice([0.0, 0.5, 3.0])),
        commission_per_share=float(rng.choice([0.0, 0.005, 0.02])),
        half_spread=float(rng.uniform(0, 5e-4)),
        slippage_vol_mult=float(rng.uniform(0, 0.3)),
        mask_session=bool(rng.random() < 0.6),
        no_new_exposure_minutes=float(rng.integers(0, 20)),
        opening_minutes=float(rng.integers(0, 5)),
        mask_risk_budget=bool(rng.random() < 0.6),
        target_vol_annual=float(rng.uniform(0.5, 4.0)),
        mask_regime=bool(rng.random() < 0.6),
        high_vol_regime_cap=float(rng.choice([0.0, 0.5, 0.7, 1.0])),
        mask_drawdown=bool(rng.random() < 0.6),
        drawdown_limit=float(rng.uniform(0.005, 0.04)),
        min_hold_bars=int(rng.integers(0, 6)),
        episode_sessions=int(rng.integers(1, 3)),
    )


def _policy(rng: np.random.Generator, mask: np.ndarray, held: int) -> int:
    """A random valid action that keeps the position half of the time."""
    if mask[held] and rng.random() < 0.5:
        return held
    return int(rng.choice(np.flatnonzero(mask)))


@pytest.mark.parametrize("backtest", [False, True], ids=["train", "backtest"])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_single_equals_batch_simulator_over_random_valid_steps(seed: int, backtest: bool) -> None:
    """Same start/end rows, same valid actions: the same observations, rewards, flags, masks."""
    rng = np.random.default_rng(seed)
    market = random_market(n_sessions=5, session_len=40, seed=seed, bar_vol=1.5e-3)
    n_checked = 0
    for _ in range(3):  # three parameter draws per seed
        params = _random_params(rng)
        single, batch = Single(market, params, backtest), Batch(market, params, backtest)
        steps = 0
        while steps < 200:
            start = int(rng.integers(params.window - 1, market.n_rows - 2))
            end = int(rng.integers(start + 1, min(start + 80, market.n_rows - 1) + 1))
            equity = float(rng.choice([params.initial_cash, rng.uniform(500, 50_000)]))
            assert_same_obs(single.reset(start, end, equity), batch.reset(start, end, equity))
            e0, total = equity, 0.0
            done = False
            while not done:
                mask = single.masks()
                np.testing.assert_array_equal(mask, batch.masks())
                assert mask[params.flat_action]
                assert single.reasons() == batch.reasons()
                assert set(single.reasons()) == {
                    float(params.grid[a]) for a in np.flatnonzero(~mask)
                }
                a = _policy(rng, mask, single.state().action)
                o1, r1, te1, tr1, i1 = single.step(a)
                o2, r2, te2, tr2, i2 = batch.step(a)
                assert_same_obs(o1, o2)
                assert r1 == pytest.approx(r2, rel=1e-9, abs=1e-12)
                assert (te1, tr1) == (te2, tr2)
                assert i1["termination"] == i2["termination"]
                for k in ("equity", "exposure", "costs", "traded_notional"):
                    assert i1[k] == pytest.approx(i2[k], rel=1e-9, abs=1e-9), k
                assert_same_account(single.state(), batch.state())
                total += r1
                steps += 1
                done = te1 or tr1
            if params.drawdown_penalty == 0:  # rewards add up to the log growth of equity
                assert total == pytest.approx(math.log(single.state().equity / e0), abs=1e-9)
        n_checked += steps
    assert n_checked >= 600


def test_single_equals_vec_env_with_sampling_and_auto_reset() -> None:
    """SentioVecEnv(n_envs=1) and TradingEnv with the same seed: same episodes and values."""
    market = random_market(n_sessions=6, session_len=25, seed=7, bar_vol=1.5e-3)
    params = make_params(
        window=3,
        flat_at_close=True,
        mask_session=True,
        mask_risk_budget=True,
        target_vol_annual=2.0,
        mask_drawdown=True,
        drawdown_limit=0.01,
        min_hold_bars=2,
        mask_regime=True,
        **COSTS,
    )
    ranges = [(0, 70), (80, market.n_rows)]
    vec = SentioVecEnv(market, params, ranges, n_envs=1, seed=5)
    env = TradingEnv(market, params, ranges, seed=5)
    rng = np.random.default_rng(0)
    vobs = vec.reset()
    obs, _ = env.reset()
    assert_same_obs({k: v[0] for k, v in vobs.items()}, obs)
    ends = {"truncated": 0, "terminated": 0}
    for _ in range(1_000):
        mask = env.action_masks()
        np.testing.assert_array_equal(vec.action_masks()[0], mask)
        assert vec.mask_reasons()[0] == env.mask_reasons()
        assert env.account is not None
        a = _policy(rng, mask, env.account.action)
        vec.step_async(np.array([a]))
        step_obs, vrew, vdone, vinfos = vec.step_wait()
        assert isinstance(step_obs, dict)
        vobs = step_obs
        obs, r, term, trunc, info = env.step(a)
        assert vrew.dtype == np.float32
        assert float(vrew[0]) == pytest.approx(r, rel=1e-6, abs=1e-7)
        assert bool(vdone[0]) == (term or trunc)
        if term or trunc:
            ends["terminated" if term else "truncated"] += 1
            vinfo = vinfos[0]
            assert_same_obs(vinfo["terminal_observation"], obs)
            assert vinfo["TimeLimit.truncated"] == trunc
            assert vinfo["termination"] == info["termination"]
            assert vinfo["episode_equity"] == pytest.approx(info["equity"], rel=1e-12)
            obs, _ = env.reset()
        else:
            assert vinfos[0] == {}
        assert_same_obs({k: v[0] for k, v in vobs.items()}, obs)
    assert ends["truncated"] > 5 and ends["terminated"] > 0


def test_vec_env_auto_reset_infos_with_several_accounts() -> None:
    """N=3: a finished account reports its pre-reset observation; the others run on."""
    market = random_market(n_sessions=4, session_len=20, seed=2, bar_vol=2e-3)
    params = make_params(window=2, mask_drawdown=True, drawdown_limit=0.01, **COSTS)
    vec = SentioVecEnv(market, params, [(0, market.n_rows)], n_envs=3, seed=1)
    vobs = vec.reset()
    envs = [Single(market, params) for _ in range(3)]
    for i, e in enumerate(envs):
        obs = e.reset(int(vec.sim.t[i]), int(vec.sim.end[i]))
        assert_same_obs({k: v[i] for k, v in vobs.items()}, obs)
    rng = np.random.default_rng(0)
    kinds: set[bool] = set()
    for _ in range(300):
        np.testing.assert_array_equal(vec.action_masks(), [e.masks() for e in envs])
        actions = np.array([_policy(rng, e.masks(), e.state().action) for e in envs])
        vec.step_async(actions)
        step_obs, vrew, vdone, vinfos = vec.step_wait()
        assert isinstance(step_obs, dict)
        vobs = step_obs
        for i, e in enumerate(envs):
            obs, r, term, trunc, _ = e.step(int(actions[i]))
            assert bool(vdone[i]) == (term or trunc)
            if term or trunc:
                assert_same_obs(vinfos[i]["terminal_observation"], obs)
                assert vinfos[i]["TimeLimit.truncated"] is trunc
                kinds.add(trunc)
                # the account restarted at once: its new observation is the first of the
                # new episode, not the terminal one
                obs = e.reset(int(vec.sim.t[i]), int(vec.sim.end[i]))
                assert vec.sim.equity[i] == params.initial_cash
            else:
                assert "terminal_observation" not in vinfos[i]
            assert_same_obs({k: v[i] for k, v in vobs.items()}, obs)
    assert kinds == {True, False}


# ---------------------------------------------------------------------------- look-ahead


def _lookahead_setup() -> tuple[MarketData, EnvParams]:
    market = random_market(n_sessions=3, session_len=50, seed=4, bar_vol=1.5e-3, halflife=10)
    params = make_params(
        window=3,
        flat_at_close=True,
        mask_session=True,
        mask_risk_budget=True,
        target_vol_annual=3.0,
        mask_regime=True,
        high_vol_regime_cap=0.5,
        mask_drawdown=True,
        drawdown_limit=0.03,
        min_hold_bars=3,
        drawdown_penalty=1.0,
        **COSTS,
    )
    return market, params


def _trajectory(
    runner_cls: type[Single] | type[Batch],
    market: MarketData,
    params: EnvParams,
    start: int,
    end: int,
    seed: int,
) -> list[tuple[Any, ...]]:
    """(mask, observation, reward) per step of a seeded random valid policy."""
    runner = runner_cls(market, params, backtest=True)  # the breaker does not end it
    obs = runner.reset(start, end)
    rng = np.random.default_rng(seed)
    out: list[tuple[Any, ...]] = [(runner.masks(), obs, None)]
    done = False
    while not done:
        a = _policy(rng, runner.masks(), runner.state().action)
        obs, r, term, trunc, _ = runner.step(a)
        done = term or trunc
        out.append((runner.masks(), obs, r))
    return out


def _same_prefix(a: list[tuple[Any, ...]], b: list[tuple[Any, ...]], n: int) -> None:
    assert len(a) > n and len(b) > n
    for (m1, o1, r1), (m2, o2, r2) in zip(a[: n + 1], b[: n + 1], strict=True):
        np.testing.assert_array_equal(m1, m2)
        np.testing.assert_array_equal(o1["window"], o2["window"])
        np.testing.assert_array_equal(o1["state"], o2["state"])
        assert r1 == r2


@both
@pytest.mark.parametrize("offset", [0, 3, 11, 30])
def test_prices_two_rows_ahead_change_nothing_up_to_step_t(runner: type, offset: int) -> None:
    """Prices (any instrument, open or close) at rows >= t+2 move neither observations,
    masks nor rewards up to step t (whose observation is at row t+1)."""
    market, params = _lookahead_setup()
    start, end = 52, 99  # the second session
    t = start + offset
    rng = np.random.default_rng(offset)
    shock = np.exp(rng.normal(0.0, 0.05, size=(market.n_rows - t - 2, 2, 3)))
    op, cl = market.open.copy(), market.close.copy()
    op[t + 2 :] *= shock[:, 0]
    cl[t + 2 :] *= shock[:, 1]
    vol = ewma_vol(cl[:, 0], 10)
    np.testing.assert_array_equal(vol[: t + 2], market.vol[: t + 2])  # vol is causal
    changed = dataclasses.replace(market, open=op, close=cl, vol=vol)
    for seed in range(3):
        base = _trajectory(runner, market, params, start, end, seed)
        moved = _trajectory(runner, changed, params, start, end, seed)
        _same_prefix(base, moved, t - start + 1)


@both
@pytest.mark.parametrize("offset", [0, 5, 20])
def test_features_and_regimes_after_t_do_not_change_observation_at_t(
    runner: type, offset: int
) -> None:
    market, params = _lookahead_setup()
    start, end = 52, 99
    t = start + offset
    rng = np.random.default_rng(offset)
    feats = market.features.copy()
    feats[t + 1 :] = rng.normal(size=feats[t + 1 :].shape)
    probs = market.regime_probs.copy()
    probs[t + 1 :] = probs[t + 1 :, ::-1]  # another regime most likely
    changed = dataclasses.replace(market, features=feats, regime_probs=probs)
    for seed in range(3):
        base = _trajectory(runner, market, params, start, end, seed)
        moved = _trajectory(runner, changed, params, start, end, seed)
        _same_prefix(base, moved, t - start)  # observation and masks at row t, rewards up to t
        # the prices did not change: every reward up to step t agrees as well
        assert [r for _, _, r in base[: t - start + 2]] == [r for _, _, r in moved[: t - start + 2]]


@both
@pytest.mark.parametrize("action", [A_LONG1, A_SHORT_HALF])
def test_order_fills_at_the_next_open_not_the_close_just_seen(runner: type, action: int) -> None:
    """Entering at t: the reward of step t moves with open[t+1] (a same-bar fill would not)
    and ignores the ETFs' close[t] (a same-bar fill would read it)."""
    market, params = _lookahead_setup()
    t = 60
    inst = LONG_I if GRID[action] > 0 else SHORT_I

    def reward_of_step_t(m: MarketData) -> float:
        r = runner(m, params)
        r.reset(t, t + 5)
        return r.step(action)[1]

    base = reward_of_step_t(market)
    op = market.open.copy()
    op[t + 1, inst] *= 1.01
    assert reward_of_step_t(dataclasses.replace(market, open=op)) != pytest.approx(base, abs=1e-6)
    cl = market.close.copy()
    cl[t, 1:] *= 1.01
    assert reward_of_step_t(dataclasses.replace(market, close=cl)) == base


def test_ewma_vol_is_causal_from_the_first_row() -> None:
    """Volatility on a truncated series equals the full series' on the shared rows."""
    close = 100.0 * np.exp(np.cumsum(np.random.default_rng(0).normal(0, 1e-3, 200)))
    full = ewma_vol(close, 20)
    assert full[0] == 0.0  # no return known at the first row
    assert full[1] == pytest.approx(abs(math.log(close[1] / close[0])))
    for k in range(1, 200, 7):
        np.testing.assert_array_equal(ewma_vol(close[:k], 20), full[:k])


# ---------------------------------------------------------------------------- accounting by hand


def _four_trade_market() -> MarketData:
    # columns: underlying, TQQQ, SQQQ
    return hand_market(
        open_=[
            [100.0, 50.0, 20.0],
            [100.0, 50.0, 20.0],
            [101.2, 52.0, 19.28],
            [100.3, 50.5, 19.6],
            [99.9, 49.5, 19.9],
        ],
        close=[
            [100.0, 50.0, 20.0],
            [101.0, 51.5, 19.4],
            [100.8, 51.0, 19.52],
            [100.1, 49.8, 19.8],
            [99.8, 49.2, 20.0],
        ],
        vol=[0.001, 0.001, 0.002, 0.001, 0.003],
    )


@both
def test_entry_resize_switch_exit_to_the_cent(runner: type) -> None:
    """+1 TQQQ, resize to +0.5, switch to -1 (SQQQ), exit; costs 1c/share + (5 bps + 0.3 vol[t])."""
    r = runner(_four_trade_market(), make_params(**COSTS))
    r.reset(0, 4)

    # step 0: buy 10,000 / 50 = 200 TQQQ at the open of row 1; rate 0.0005 + 0.3 x 0.001
    _, rew, term, trunc, info = r.step(A_LONG1)
    s = r.state()
    assert s.shares == pytest.approx(200.0) and s.instrument == LONG_I
    assert info["costs"] == pytest.approx(0.01 * 200 + 0.0008 * 10_000)  # 2 + 8 = 10.00
    assert s.cash == pytest.approx(-10.0)
    assert info["equity"] == pytest.approx(-10.0 + 200 * 51.5)  # 10,290.00 at the close
    assert info["traded_notional"] == pytest.approx(10_000.0)
    assert rew == pytest.approx(math.log(10_290.0 / 10_000.0))
    assert info["exposure"] == pytest.approx(200 * 51.5 / 10_290.0)
    assert (term, trunc) == (False, False)

    # step 1: resize to +0.5 at the open of row 2 (52): equity there -10 + 200 x 52 = 10,390
    _, rew, _, _, info = r.step(A_LONG_HALF)
    keep = 0.5 * 10_390.0 / 52.0  # 99.9038 shares
    sold = 200.0 - keep  # 100.0962 shares, notional 5,205.00
    cost = 0.01 * sold + 0.0008 * sold * 52.0  # 5.16
    cash = -10.0 + sold * 52.0 - cost  # 5,189.84
    s = r.state()
    assert s.shares == pytest.approx(keep) and s.instrument == LONG_I
    assert info["traded_notional"] == pytest.approx(5_205.0)
    assert cents(info["costs"]) == 5.16
    assert cents(s.cash) == 5_189.84
    assert info["equity"] == pytest.approx(cash + keep * 51.0)
    assert cents(info["equity"]) == 10_284.93
    assert rew == pytest.approx(math.log(info["equity"] / 10_290.0))
    assert s.entry_equity == pytest.approx(10_390.0)

    # step 2: switch to SQQQ at the open of row 3; both legs pay 0.0005 + 0.3 x vol[2] = 0.0011
    _, rew, _, _, info = r.step(A_SHORT1)
    e_open = cash + keep * 50.5  # 10,234.98
    leg1 = 0.01 * keep + 0.0011 * keep * 50.5  # sell every TQQQ: 6.55
    short = e_open / 19.6  # 522.19 SQQQ
    leg2 = 0.01 * short + 0.0011 * short * 19.6  # 16.48
    s = r.state()
    assert s.instrument == SHORT_I and s.shares == pytest.approx(short)
    assert info["costs"] == pytest.approx(leg1 + leg2)
    assert cents(info["costs"]) == 23.03
    assert info["traded_notional"] == pytest.approx(keep * 50.5 + e_open)
    assert s.cash == pytest.approx(-(leg1 + leg2))
    assert cents(info["equity"]) == 10_316.39  # -23.03 + 522.19 x 19.8
    assert info["exposure"] == pytest.approx(-short * 19.8 / info["equity"])
    assert rew == pytest.approx(math.log(10_316.388730692 / 10_284.931192308), abs=1e-9)

    # step 3: flat at the open of row 4 (19.9), rate 0.0008 (vol[3]); the time limit
    _, rew, term, trunc, info = r.step(A_FLAT)
    cost = 0.01 * short + 0.0008 * short * 19.9  # 13.54
    s = r.state()
    assert s.shares == 0.0 and s.instrument == FLAT_I
    assert info["costs"] == pytest.approx(cost)
    assert info["equity"] == pytest.approx(-(leg1 + leg2) + short * 19.9 - cost)
    assert cents(info["equity"]) == 10_355.07
    assert s.cash == pytest.approx(info["equity"])
    assert info["exposure"] == 0.0
    assert (term, trunc) == (False, True)


@both
def test_observation_state_by_hand(runner: type) -> None:
    """``state`` = regime probabilities, exposure, unrealised return, drawdown, bars / 390,
    minutes to the close / 390; ``window`` = the last L feature rows."""
    base = _four_trade_market()
    probs = np.array([[0.7, 0.3], [0.6, 0.4], [0.5, 0.5], [0.25, 0.75], [0.1, 0.9]])
    market = dataclasses.replace(base, regime_probs=probs.astype(np.float32))
    r = runner(market, make_params(window=2, **COSTS))
    obs = r.reset(1, 4)
    np.testing.assert_array_equal(obs["window"], [[0.0], [1.0]])  # one feature: the row number
    np.testing.assert_allclose(obs["state"], [0.6, 0.4, 0, 0, 0, 0, 4 / 390], rtol=1e-6)
    obs, *_ = r.step(A_LONG1)  # 10,000 / 52 TQQQ at the open of row 2, rate 0.0008 (vol[1])
    shares = 10_000 / 52.0
    equity = -(0.01 * shares + 0.0008 * 10_000) + shares * 51.0  # 9,797.77 at the close
    assert cents(equity) == 9_797.77
    np.testing.assert_array_equal(obs["window"], [[1.0], [2.0]])
    np.testing.assert_allclose(
        obs["state"],
        [
            0.5,
            0.5,
            shares * 51.0 / equity,
            equity / 10_000 - 1,
            1 - equity / 10_000,
            1 / 390,
            3 / 390,
        ],
        rtol=1e-6,
    )
    obs, *_ = r.step(A_LONG1)  # held: the exposure drifts, one more bar in the position
    equity2 = equity + shares * (49.8 - 51.0)
    np.testing.assert_allclose(
        obs["state"],
        [
            0.25,
            0.75,
            shares * 49.8 / equity2,
            equity2 / 10_000 - 1,
            1 - equity2 / 10_000,
            2 / 390,
            2 / 390,
        ],
        rtol=1e-6,
    )


@both
def test_daily_bars_have_no_session_mask_and_full_time_to_close(runner: type) -> None:
    flat = [[100.0, 50.0, 20.0]] * 4
    market = hand_market(flat, flat, session=[0, 1, 2, 3], minutes_to_close=[0.0] * 4)
    r = runner(
        market, make_params(mask_session=True, no_new_exposure_minutes=390, episode_sessions=4)
    )
    obs = r.reset(0, 3)
    assert obs["state"][-1] == 1.0
    assert r.masks().all()


def _gap_market() -> MarketData:
    # session 0: rows 0-2, session 1: rows 3-5; TQQQ gaps down from 51 to 50.6 overnight
    return hand_market(
        open_=[
            [100.0, 50.0, 20.0],
            [100.0, 50.0, 20.0],
            [100.6, 51.8, 19.65],
            [99.9, 50.6, 20.06],
            [99.9, 50.4, 20.1],
            [100.2, 50.3, 20.0],
        ],
        close=[
            [100.0, 50.0, 20.0],
            [100.7, 52.0, 19.6],
            [100.3, 51.0, 19.8],
            [99.95, 50.5, 20.1],
            [99.8, 50.2, 20.2],
            [100.3, 50.9, 19.9],
        ],
        session=[0, 0, 0, 1, 1, 1],
    )


@both
@pytest.mark.parametrize("hold", [True, False], ids=["hold", "sell-at-gap-open"])
def test_overnight_gap_lands_in_equity_through_the_open(runner: type, hold: bool) -> None:
    """flat_at_close off: 200 TQQQ held over the session boundary (no costs here)."""
    r = runner(_gap_market(), make_params())
    r.reset(0, 5)
    assert r.step(A_LONG1)[4]["equity"] == pytest.approx(200 * 52.0)  # 10,400: the peak
    _, _, _, _, info = r.step(A_LONG1)
    assert info["equity"] == pytest.approx(10_200.0)
    assert r.state().drawdown == pytest.approx(1 - 10_200 / 10_400)
    # overnight: the decision at the last bar fills at the gapped open of the next session
    _, rew, term, trunc, info = r.step(A_LONG1 if hold else A_FLAT)
    equity = 200 * 50.5 if hold else 200 * 50.6  # marked at the close / sold at the open
    assert info["equity"] == pytest.approx(equity)
    assert rew == pytest.approx(math.log(equity / 10_200.0))
    s = r.state()
    # the new session's peak starts from the previous close (10,200), not session 0's 10,400
    assert s.peak == pytest.approx(10_200.0)
    assert s.drawdown == pytest.approx(1 - equity / 10_200.0)
    assert s.shares == (200.0 if hold else 0.0)
    assert s.bars_held == (3 if hold else 0)
    assert (term, trunc) == (False, False)


@both
def test_drawdown_penalty_on_increases_of_the_session_drawdown(runner: type) -> None:
    r = runner(_gap_market(), make_params(drawdown_penalty=2.0))
    r.reset(0, 5)
    rewards = [r.step(A_LONG1)[1] for _ in range(5)]
    dd1 = 1 - 10_200 / 10_400  # session 0
    dd3 = 1 - 10_100 / 10_200  # session 1: the first step's previous DD counts as 0
    dd4 = 1 - 10_040 / 10_200
    expected = [
        math.log(10_400 / 10_000),  # new high, no drawdown
        math.log(10_200 / 10_400) - 2.0 * dd1,
        math.log(10_100 / 10_200) - 2.0 * dd3,
        math.log(10_040 / 10_100) - 2.0 * (dd4 - dd3),
        math.log(10_180 / 10_040),  # the drawdown shrinks: no penalty
    ]
    assert rewards == pytest.approx(expected, abs=1e-12)


def _close_market() -> MarketData:
    return hand_market(
        open_=[[100.0, 50.0, 20.0], [100.0, 50.0, 20.0], [101.0, 51.2, 19.65], [101.0, 51.4, 19.6]],
        close=[
            [100.0, 50.0, 20.0],
            [101.0, 51.0, 19.7],
            [101.1, 51.3, 19.62],
            [101.0, 51.2, 19.65],
        ],
        session=[0, 0, 1, 1],
        vol=[0.001, 0.002, 0.001, 0.001],
    )


@both
def test_flat_at_close_sells_at_the_last_close_with_costs(runner: type) -> None:
    r = runner(_close_market(), make_params(flat_at_close=True, **COSTS))
    r.reset(0, 3)
    obs, rew, term, trunc, info = r.step(A_LONG1)  # fills at row 1, the session's last bar
    entry = 0.01 * 200 + 0.0008 * 10_000  # 10.00 at the open (vol[0] = 0.001)
    exit_ = 0.01 * 200 + (0.0005 + 0.3 * 0.002) * 200 * 51  # 13.22 at the close (vol[1])
    assert info["costs"] == pytest.approx(entry + exit_)
    assert info["costs"] == pytest.approx(23.22)
    assert info["traded_notional"] == pytest.approx(10_000 + 10_200)
    assert info["equity"] == pytest.approx(10_000 - 10_000 - 10 + 10_200 - 13.22)  # 10,176.78
    assert rew == pytest.approx(math.log(10_176.78 / 10_000))
    s = r.state()
    assert (s.shares, s.instrument, s.action, s.bars_held) == (0.0, FLAT_I, A_FLAT, 0)
    assert s.cash == pytest.approx(10_176.78)
    assert info["exposure"] == 0.0 and obs["state"][0] == 0.0
    assert (term, trunc) == (False, False)
    if runner is Single:
        assert info["forced_exit"] == "close" and info["fill_exposure"] == pytest.approx(1.0)
    # flat at the last bar: nothing trades over the night
    _, rew, _, _, info = r.step(A_FLAT)
    assert rew == 0.0 and info["costs"] == 0.0 and info["equity"] == pytest.approx(10_176.78)


@both
def test_no_forced_exit_without_flat_at_close(runner: type) -> None:
    r = runner(_close_market(), make_params(**COSTS))
    r.reset(0, 3)
    _, _, _, _, info = r.step(A_LONG1)
    assert info["costs"] == pytest.approx(10.0)
    assert r.state().shares == pytest.approx(200.0)


def _crash_market() -> MarketData:
    # TQQQ falls from 50 to 45 on row 2; session 1 starts at row 4
    return hand_market(
        open_=[
            [100.0, 50.0, 20.0],
            [100.0, 50.0, 20.0],
            [99.0, 49.0, 20.3],
            [97.0, 45.0, 21.6],
            [98.0, 47.0, 21.0],
            [99.0, 48.5, 20.6],
        ],
        close=[
            [100.0, 50.0, 20.0],
            [100.0, 50.0, 20.0],
            [97.0, 45.0, 21.6],
            [97.5, 46.0, 21.3],
            [98.5, 48.0, 20.7],
            [99.0, 49.0, 20.4],
        ],
        session=[0, 0, 0, 0, 1, 1],
        vol=0.001,
    )


@both
@pytest.mark.parametrize("backtest", [False, True], ids=["train", "backtest"])
def test_drawdown_breaker(runner: type, backtest: bool) -> None:
    params = make_params(mask_drawdown=True, drawdown_limit=0.1, **COSTS)
    r = runner(_crash_market(), params, backtest)
    r.reset(0, 5)
    _, _, _, _, info = r.step(A_LONG1)  # 200 TQQQ, 10.00 of costs: 9,990 at the close
    assert info["equity"] == pytest.approx(9_990.0)
    assert r.state().drawdown == pytest.approx(0.001)
    assert r.masks().all()
    _, rew, term, trunc, info = r.step(A_LONG1)
    # -10 + 200 x 45 = 8,990: drawdown 1 - 8,990 / 10,000 = 0.101 >= 0.1, sold at the close
    exit_ = 0.01 * 200 + 0.0008 * 200 * 45  # 9.20
    assert info["costs"] == pytest.approx(exit_)
    assert info["equity"] == pytest.approx(8_980.80)
    assert rew == pytest.approx(math.log(8_980.80 / 9_990.0))
    s = r.state()
    assert s.shares == 0.0 and s.instrument == FLAT_I and s.tripped
    assert s.drawdown == pytest.approx(1 - 8_980.80 / 10_000)
    assert trunc is False
    if not backtest:
        assert term is True and info["termination"] == "circuit_breaker"
        return
    assert term is False and info["termination"] is None
    only_flat = {x: ["drawdown"] for x in GRID if x != 0.0}
    # row 2: flat for the rest of the session
    assert r.masks().tolist() == [False, False, True, False, False]
    assert r.reasons() == only_flat
    _, _, term, _, info = r.step(A_FLAT)
    assert not term and info["costs"] == 0.0
    # row 3, the session's last bar: its decision fills at the next session's open, where
    # drawdown and breaker start afresh, so nothing is blocked
    assert r.state().tripped and r.masks().all()
    _, _, term, _, info = r.step(A_FLAT)
    assert not term and info["costs"] == 0.0
    s = r.state()  # row 4, a new session: the breaker is reset
    assert s.t == 4 and not s.tripped and s.drawdown == 0.0
    assert s.peak == pytest.approx(8_980.80)
    assert r.masks().all()


@both
def test_drawdown_warning_blocks_new_exposure_only(runner: type) -> None:
    market = _crash_market()
    r = runner(market, make_params(mask_drawdown=True, drawdown_limit=0.1))
    r.reset(0, 5)
    r.set_state(position(market, 1, A_LONG_HALF, 9_400.0, drawdown=0.06, bars_held=3))
    assert r.reasons() == {-1.0: ["drawdown"], -0.5: ["drawdown"], 1.0: ["drawdown"]}
    r.set_state(position(market, 1, A_LONG_HALF, 9_600.0, drawdown=0.04, bars_held=3))
    assert r.masks().all()


@both
@pytest.mark.parametrize("backtest", [False, True], ids=["train", "backtest"])
def test_ruin_terminates(runner: type, backtest: bool) -> None:
    market = hand_market(
        open_=[[100.0, 50.0, 20.0], [100.0, 50.0, 20.0], [60.0, 0.02, 60.0]],
        close=[[100.0, 50.0, 20.0], [100.0, 50.0, 20.0], [60.0, 0.01, 61.0]],
        vol=0.001,
    )
    r = runner(market, make_params(**COSTS), backtest)
    r.reset(0, 2)
    r.step(A_LONG1)
    _, rew, term, trunc, info = r.step(A_LONG1)
    assert info["equity"] == pytest.approx(-10.0 + 200 * 0.01)  # -8: cash went to the costs
    assert (term, trunc) == (True, False)
    assert info["termination"] == "ruin"
    assert math.isfinite(rew) and rew < -100


@both
def test_time_limit_truncates_and_does_not_terminate(runner: type) -> None:
    market, params = _small_setup()
    r = runner(market, params)
    r.reset(10, 13)
    flags = [r.step(A_FLAT)[2:4] for _ in range(3)]
    assert flags == [(False, False), (False, False), (False, True)]
    assert r.state().t == 13


# ---------------------------------------------------------------------------- masks


def _mask_market() -> MarketData:
    T = 8
    ones = [[100.0, 50.0, 20.0]] * T
    probs = np.tile([0.2, 0.3, 0.5], (T, 1))  # the high-volatility regime most likely ...
    probs[2] = [0.5, 0.3, 0.2]  # ... except on row 2
    return hand_market(
        ones,
        ones,
        minutes_to_close=[30, 20, 16, 15, 14, 3, 2, 1],
        vol=0.8 / 300,  # 3 x vol x sqrt(10,000) = 0.8: the risk budget caps |x| at 0.75
        regime_probs=probs,
        periods_per_year=10_000.0,
    )


@both
def test_session_layer_blocks_new_exposure_when_the_fill_bar_is_late(runner: type) -> None:
    market = _mask_market()
    r = runner(market, make_params(mask_session=True, no_new_exposure_minutes=15))
    r.reset(0, 7)
    r.set_state(position(market, 1, A_LONG_HALF, 10_000.0))  # fill bar 2 opens 16 min early
    assert r.masks().all()
    r.set_state(position(market, 2, A_LONG_HALF, 10_000.0))  # fill bar 3: 15 minutes left
    # a larger or an opposite exposure is new; keeping +0.5 or closing is not
    assert r.reasons() == {-1.0: ["session"], -0.5: ["session"], 1.0: ["session"]}
    r.set_state(position(market, 2, A_FLAT, 10_000.0))
    assert r.masks().tolist() == [False, False, True, False, False]


@both
def test_session_layer_blocks_new_exposure_in_the_opening_minutes(runner: type) -> None:
    # two sessions of 6 one-minute bars (rows 0-5 and 6-11); no new exposure while the fill
    # bar opens less than 3 minutes after its session's first bar
    ones = np.ones((12, 3))
    market = hand_market(ones, ones, session=[0] * 6 + [1] * 6)
    np.testing.assert_array_equal(market.minutes_since_open(), [0, 1, 2, 3, 4, 5] * 2)
    r = runner(market, make_params(mask_session=True, no_new_exposure_minutes=0, opening_minutes=3))
    r.reset(0, 11)
    for t, opening in [
        (0, True),
        (1, True),
        (2, False),
        (4, False),
        (5, True),
        (7, True),
        (8, False),
    ]:
        r.set_state(position(market, t, A_FLAT, 10_000.0))
        blocked = {-1.0: ["session"], -0.5: ["session"], 0.5: ["session"], 1.0: ["session"]}
        assert r.reasons() == (blocked if opening else {}), t
    # keeping or closing a position is allowed in the opening minutes; more of it is not
    r.set_state(position(market, 6, A_LONG_HALF, 10_000.0))
    assert r.reasons() == {-1.0: ["session"], -0.5: ["session"], 1.0: ["session"]}
    # 0 switches the opening rule off
    r = runner(market, make_params(mask_session=True, no_new_exposure_minutes=0, opening_minutes=0))
    r.reset(0, 11)
    r.set_state(position(market, 0, A_FLAT, 10_000.0))
    assert r.reasons() == {}


@both
def test_risk_budget_and_regime_layers(runner: type) -> None:
    market = _mask_market()
    r = runner(market, make_params(mask_risk_budget=True, target_vol_annual=0.6))
    r.reset(0, 7)
    assert r.reasons() == {-1.0: ["risk_budget"], 1.0: ["risk_budget"]}  # cap 0.75
    r = runner(market, make_params(mask_regime=True, high_vol_regime_cap=0.5))
    r.reset(1, 7)
    assert r.reasons() == {-1.0: ["regime"], 1.0: ["regime"]}
    r.reset(2, 7)  # another regime is most likely on row 2
    assert r.masks().all()
    r = runner(market, make_params(mask_regime=True, high_vol_regime_cap=0.0))
    r.reset(1, 7)
    assert r.masks().tolist() == [False, False, True, False, False]


@both
def test_min_hold_layer_allows_keep_and_close_only(runner: type) -> None:
    market = _mask_market()
    r = runner(market, make_params(min_hold_bars=3))
    r.reset(0, 7)
    r.set_state(position(market, 1, A_SHORT_HALF, 10_000.0, bars_held=2))
    assert r.reasons() == {-1.0: ["min_hold"], 0.5: ["min_hold"], 1.0: ["min_hold"]}
    r.set_state(position(market, 1, A_SHORT_HALF, 10_000.0, bars_held=3))
    assert r.masks().all()


@both
def test_layers_combine_with_every_reason_named(runner: type) -> None:
    market = _mask_market()
    params = make_params(
        mask_session=True,
        mask_risk_budget=True,
        mask_regime=True,
        high_vol_regime_cap=0.5,
        mask_drawdown=True,
        drawdown_limit=0.1,
        min_hold_bars=3,
    )
    r = runner(market, params)
    r.reset(0, 7)
    r.set_state(position(market, 4, A_LONG_HALF, 9_000.0, bars_held=1, drawdown=0.07))
    assert r.reasons() == {
        -1.0: ["session", "risk_budget", "regime", "drawdown", "min_hold"],
        -0.5: ["session", "drawdown", "min_hold"],
        1.0: ["session", "risk_budget", "regime", "drawdown", "min_hold"],
    }
    r.set_state(position(market, 4, A_LONG_HALF, 9_000.0, bars_held=1, tripped=True))
    assert r.reasons()[0.5] == ["drawdown"]  # the tripped breaker blocks even keeping


mask_settings = st.fixed_dictionaries(
    {
        "mask_session": st.booleans(),
        "no_new_exposure_minutes": st.integers(0, 60).map(float),
        "opening_minutes": st.integers(0, 8).map(float),
        "mask_risk_budget": st.booleans(),
        "target_vol_annual": st.floats(0.05, 8.0),
        "mask_regime": st.booleans(),
        "high_vol_regime_cap": st.floats(0.0, 1.0),
        "mask_drawdown": st.booleans(),
        "drawdown_limit": st.floats(0.005, 0.5),
        "min_hold_bars": st.integers(0, 6),
        "flat_at_close": st.booleans(),
    }
)
PROPERTY_MARKET = random_market(n_sessions=3, session_len=30, seed=9, bar_vol=2e-3)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    settings_=mask_settings,
    t=st.integers(0, PROPERTY_MARKET.n_rows - 2),
    action=st.integers(0, 4),
    equity=st.floats(100.0, 1e6),
    drift=st.floats(0.7, 1.3),
    bars_held=st.integers(0, 8),
    drawdown=st.floats(0.0, 0.6),
    tripped=st.booleans(),
    backtest=st.booleans(),
    pick=st.integers(0, 10_000),
)
def test_masks_property_flat_always_valid_and_valid_actions_execute(
    settings_: dict[str, Any],
    t: int,
    action: int,
    equity: float,
    drift: float,
    bars_held: int,
    drawdown: float,
    tripped: bool,
    backtest: bool,
    pick: int,
) -> None:
    """Any state, any mask settings: flat is allowed, both implementations agree, and the
    action executed at the open is the valid one chosen; only a forced exit at the close
    (to flat, itself always allowed) can leave the account elsewhere."""
    market = PROPERTY_MARKET
    params = make_params(**COSTS, **settings_)
    acct = position(
        market,
        t,
        action,
        equity,
        end=t + 1,
        bars_held=bars_held,
        drawdown=drawdown,
        tripped=tripped,
        drift=drift,
    )
    single, batch = Single(market, params, backtest), Batch(market, params, backtest)
    for r in (single, batch):
        r.reset(0, 1)
        r.set_state(acct)
    mask = single.masks()
    np.testing.assert_array_equal(mask, batch.masks())
    assert mask[A_FLAT]
    reasons = single.reasons()
    assert reasons == batch.reasons()
    assert set(reasons) == {GRID[a] for a in np.flatnonzero(~mask)}
    assert all(names and set(names) <= set(MASK_LAYERS) for names in reasons.values())
    valid = np.flatnonzero(mask)
    a = int(valid[pick % valid.size])
    _, _, _, _, info = single.step(a)
    batch.step(a)
    assert_same_account(single.state(), batch.state())
    assert info["action"] == a and mask[info["action"]]
    if a != action:  # a trade at the open, to exactly the chosen exposure
        assert info["fill_exposure"] == pytest.approx(GRID[a], abs=1e-12)
    elif info["forced_exit"] is None:  # keeping: nothing trades
        assert info["traded_notional"] == 0.0 and info["costs"] == 0.0
    after = single.state()
    if info["forced_exit"] is None:
        assert after.action == a
    else:
        assert after.action == A_FLAT and after.shares == 0.0
        assert info["forced_exit"] in ("close", "circuit_breaker")


# ---------------------------------------------------------------------------- episodes


@st.composite
def sessions_and_ranges(draw: st.DrawFn) -> tuple[np.ndarray, list[tuple[int, int]], int, int]:
    lengths = draw(st.lists(st.integers(1, 12), min_size=1, max_size=10))
    session = np.repeat(np.arange(len(lengths)), lengths)
    T = session.size
    cuts = sorted(draw(st.lists(st.integers(0, T), min_size=2, max_size=8)))
    ranges = [(cuts[i], cuts[i + 1]) for i in range(0, len(cuts) - 1, 2)]
    window = draw(st.integers(1, 6))
    k = draw(st.integers(1, 3))
    return session, ranges, window, k


def _brute_force_episodes(
    session: np.ndarray, ranges: list[tuple[int, int]], window: int, k: int
) -> list[tuple[int, int]]:
    """Per range: its rows from ``a + window - 1`` on, grouped by session, k sessions a chunk."""
    out = []
    for a, b in ranges:
        rows = [r for r in range(a + window - 1, min(b, session.size))]
        ids = sorted({int(session[r]) for r in rows})
        for i in range(0, len(ids), k):
            chunk = [r for r in rows if int(session[r]) in ids[i : i + k]]
            if len(chunk) >= 2:
                out.append((chunk[0], chunk[-1]))
    return out


@settings(max_examples=150, deadline=None)
@given(sessions_and_ranges(), st.integers(0, 2**16))
def test_episodes_stay_inside_one_training_range(
    case: tuple[np.ndarray, list[tuple[int, int]], int, int], seed: int
) -> None:
    session, ranges, window, k = case
    T = session.size
    flat = [[100.0, 50.0, 20.0]] * T
    market = hand_market(flat, flat, session=session.tolist())
    expected = _brute_force_episodes(session, ranges, window, k)
    if not expected:
        with pytest.raises(DataError, match="no episode"):
            candidate_episodes(market, ranges, window=window, episode_sessions=k)
        return
    starts, ends = candidate_episodes(market, ranges, window=window, episode_sessions=k)
    assert list(zip(starts.tolist(), ends.tolist(), strict=True)) == expected
    for s, e in expected:
        assert s >= window - 1 and e > s
        # inside one range: the first observation window and the fill rows too
        assert any(a <= s - window + 1 and e < b for a, b in ranges)
        assert len(set(session[s : e + 1].tolist())) <= k
    # the environment samples from these and steps only through rows of one range
    env = TradingEnv(market, make_params(window=window, episode_sessions=k), ranges, seed=seed)
    for _ in range(3):
        env.reset()
        assert env.account is not None
        s, e = env.account.t, env.account.end
        assert (s, e) in expected
        (a, b) = next((a, b) for a, b in ranges if a <= s < b)
        rows = {s}
        done = False
        while not done:
            _, _, term, trunc, info = env.step(A_FLAT)
            rows.add(info["row"])  # the fill row of the decision just taken
            done = term or trunc
        assert rows == set(range(s, e + 1)) and min(rows) >= a and max(rows) < b


# ---------------------------------------------------------------------------- build_market


@pytest.fixture(scope="module")
def real_inputs() -> tuple[pl.DataFrame, pl.DataFrame, Any]:
    """QQQ minute bars (2023-11-21 .. 27, an early close on the 24th), derived TQQQ/SQQQ."""
    return realistic_inputs()


def _utc(ts: np.datetime64) -> dt.datetime:
    return ts.astype("datetime64[us]").astype(dt.datetime).replace(tzinfo=dt.UTC)


def test_build_market_aligns_by_timestamp(real_inputs: tuple[Any, ...]) -> None:
    bars, features, cfg = real_inputs
    # drop every 7th TQQQ bar and a block of feature rows: the market keeps the intersection
    tq = bars.filter(pl.col("symbol") == "TQQQ")
    dropped = tq["timestamp"].gather_every(7)
    bars2 = bars.join(
        pl.DataFrame({"symbol": "TQQQ", "timestamp": dropped}),
        on=["symbol", "timestamp"],
        how="anti",
    )
    feats2 = features.filter((pl.int_range(pl.len()) < 100) | (pl.int_range(pl.len()) >= 130))
    m = build_market(bars2, feats2.sample(fraction=1.0, shuffle=True, seed=0), None, cfg)
    keep = set(feats2["timestamp"].to_list()) - set(dropped.to_list())
    assert m.n_rows == len(keep)
    stamps = [_utc(t) for t in m.timestamps]
    assert stamps == sorted(keep)
    assert m.features.shape == (m.n_rows, features.width - 1) and m.features.dtype == np.float32
    assert m.feature_names == tuple(features.columns[1:])
    assert m.open.shape == m.close.shape == (m.n_rows, 3) and m.regime_probs.shape == (m.n_rows, 0)
    by_time = features.with_row_index("i").select("timestamp", "i")
    idx = (
        pl.DataFrame({"timestamp": stamps})
        .cast({"timestamp": features["timestamp"].dtype})
        .join(by_time, on="timestamp", how="left")["i"]
        .to_numpy()
    )
    want = features.drop("timestamp").to_numpy()[idx]
    clock = [i for i, n in enumerate(m.feature_names) if n in UNNORMALISED_COLUMNS]
    assert clock  # the session clock reaches the networks in sessions (0..1), not minutes
    other = [i for i in range(want.shape[1]) if i not in clock]
    np.testing.assert_array_equal(m.features[:, other], want[:, other])
    np.testing.assert_allclose(m.features[:, clock], want[:, clock] / CLOCK_SCALE, rtol=1e-6)
    for col, sym in enumerate(("QQQ", "TQQQ", "SQQQ")):
        px = (
            pl.DataFrame({"timestamp": stamps})
            .cast({"timestamp": bars["timestamp"].dtype})
            .join(bars.filter(pl.col("symbol") == sym), on="timestamp", how="left")
        )
        np.testing.assert_array_equal(m.open[:, col], px["open"].to_numpy())
        np.testing.assert_array_equal(m.close[:, col], px["close"].to_numpy())
    np.testing.assert_array_equal(m.vol, ewma_vol(m.close[:, 0], cfg.env.vol_halflife_bars))
    assert m.periods_per_year == periods_per_year(pl.Series(stamps)) > 252 * 100


def test_build_market_sessions_and_minutes_to_close(real_inputs: tuple[Any, ...]) -> None:
    bars, features, cfg = real_inputs
    m = build_market(bars, features, None, cfg)
    ny = [
        _utc(t).astimezone(dt.timezone(dt.timedelta(hours=-5))).date() for t in m.timestamps
    ]  # EST all week
    days = sorted(set(ny))
    assert days == [dt.date(2023, 11, d) for d in (22, 24, 27)]
    np.testing.assert_array_equal(m.session, [days.index(d) for d in ny])
    np.testing.assert_array_equal(m.last_bar, np.append(m.session[1:] != m.session[:-1], True))
    closes = {days[0]: 21, days[1]: 18, days[2]: 21}  # UTC hour of the close: 13:00 on the 24th
    for t, d, minutes in zip(m.timestamps, ny, m.minutes_to_close, strict=True):
        close = dt.datetime.combine(d, dt.time(closes[d]), tzinfo=dt.UTC)
        assert minutes == (close - _utc(t)).total_seconds() / 60
    early = np.flatnonzero(m.session == 1)
    assert m.minutes_to_close[early[0]] == 210.0 and m.minutes_to_close[early[-1]] == 1.0
    assert early.size == 210
    full = np.flatnonzero(m.session == 2)
    assert m.minutes_to_close[full[0]] == 390.0 and full.size == 390
    # the session mask on the early close: no new exposure filled from 12:45 New York on
    params = make_params(mask_session=True, no_new_exposure_minutes=15)
    env = TradingEnv(m, params, [(0, m.n_rows)])
    blocked = []
    for t in early[:-1]:
        env.reset(options={"start": int(t), "end": int(t) + 1})
        blocked.append(not env.action_masks()[params.grid != 0].any())
    assert blocked == [m.minutes_to_close[t + 1] <= 15 for t in early[:-1]]
    assert sum(blocked) == 15  # fill bars 12:45 .. 12:59


def test_build_market_is_causal_on_truncated_inputs(real_inputs: tuple[Any, ...]) -> None:
    bars, features, cfg = real_inputs
    full = build_market(bars, features, None, cfg)
    cut = full.timestamps[400]
    cut_pl = pl.lit(_utc(cut)).cast(bars["timestamp"].dtype)
    short = build_market(
        bars.filter(pl.col("timestamp") <= cut_pl),
        features.filter(pl.col("timestamp") <= cut_pl),
        None,
        cfg,
    )
    assert short.n_rows == 401
    for name in ("timestamps", "features", "open", "close", "session", "minutes_to_close", "vol"):
        np.testing.assert_array_equal(getattr(short, name), getattr(full, name)[:401], name)
    np.testing.assert_array_equal(short.last_bar[:-1], full.last_bar[:400])


def test_build_market_regimes_join_and_order(real_inputs: tuple[Any, ...]) -> None:
    bars, features, cfg = real_inputs
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(3), size=features.height)
    regimes = pl.DataFrame(
        {
            "timestamp": features["timestamp"],
            "p_regime_2": p[:, 2],
            "p_regime_0": p[:, 0],
            "p_regime_1": p[:, 1],
            "regime": p.argmax(1),
        }
    ).slice(10)
    m = build_market(bars, features, regimes, cfg)
    assert m.n_rows == features.height - 10 and m.n_regimes == 3
    np.testing.assert_allclose(m.regime_probs, p[10:].astype(np.float32))
    np.testing.assert_array_equal(m.high_vol_regime(), p[10:].argmax(1) == 2)
    assert observation_space(m, params_from_config())["state"].shape == (8,)


def test_build_market_errors(real_inputs: tuple[Any, ...]) -> None:
    bars, features, cfg = real_inputs
    with pytest.raises(DataError, match=r"lack \['SQQQ'\]"):
        build_market(bars.filter(pl.col("symbol") != "SQQQ"), features, None, cfg)
    late = features.filter(pl.col("timestamp") > bars["timestamp"].max())
    with pytest.raises(DataError, match="0 rows"):
        build_market(bars, late, None, cfg)


def test_mask_lookup_table_equals_the_rules_it_was_built_from() -> None:
    """The (N, A) lookup of the layer bits equals evaluating the rules account by account."""
    market = random_market(n_sessions=3, session_len=30, seed=5, bar_vol=3e-3)
    rng = np.random.default_rng(3)
    for _ in range(5):
        params = make_params(
            window=2,
            mask_session=True,
            no_new_exposure_minutes=float(rng.integers(0, 10)),
            opening_minutes=float(rng.integers(0, 4)),
            mask_risk_budget=True,
            mask_regime=True,
            mask_drawdown=True,
            drawdown_limit=float(rng.uniform(0.001, 0.05)),
            min_hold_bars=int(rng.integers(0, 4)),
            target_vol_annual=float(rng.uniform(0.05, 2.0)),
            high_vol_regime_cap=float(rng.choice([0.0, 0.5, 1.0])),
        )
        sim = BatchSimulator(market, params, 64)
        assert sim._lut is not None
        sim.reset(np.arange(64), np.full(64, 1), np.full(64, market.n_rows - 1))
        sim.t[:] = rng.integers(1, market.n_rows - 1, 64)
        sim.held[:] = rng.integers(0, params.n_actions, 64)
        sim.dd[:] = rng.uniform(0, 0.05, 64)
        sim.tripped[:] = rng.random(64) < 0.3
        sim.bars_held[:] = rng.integers(0, 5, 64)
        table = sim.blocked_layers()
        assert len(np.unique(table)) > 3  # several layer combinations occur
        sim._lut = None  # the direct evaluation (used for grids too large for a table)
        np.testing.assert_array_equal(table, sim.blocked_layers())
