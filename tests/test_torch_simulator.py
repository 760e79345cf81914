"""The torch simulator against the numpy one, step for step, for 1 and 1,024 accounts.

:class:`~sentio.env.torch_simulator.TorchSimulator` repeats
:class:`~sentio.env.simulator.BatchSimulator`'s arithmetic on float64 tensors, so
everything is compared bit for bit (``assert_array_equal``) except the reward, whose
logarithm comes from another library (torch's vs numpy's ``log``; the tolerance is two
units in the last place). The hand-worked accounting tests of ``tests/test_env.py`` run on
the torch simulator too (its ``Torch`` runner).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from sentio.env.market import MarketData
from sentio.env.simulator import BatchSimulator, EnvParams, StepResult
from sentio.env.torch_simulator import TorchSimulator, TorchStepResult
from tests.env_helpers import make_params, random_market

STEP_FIELDS = [
    *(
        f.name
        for f in dataclasses.fields(StepResult)
        if f.name not in ("reward", "commission_per_share")
    ),
    "sold_costs",
    "bought_costs",
    "position",
    "forced_exit",
]
"""Every array of a step's result but the reward, and the legs derived from them, are
compared bit for bit."""

GRIDS = ([-1.0, -0.5, 0.0, 0.5, 1.0], [-1.0, 0.0, 1.0], [0.0, 0.3, 0.6, 1.0])


def _params(rng: np.random.Generator, *, all_masks: bool | None = None) -> EnvParams:
    """A random trading model; ``all_masks`` True/False forces every layer on/off."""
    on = (lambda p: all_masks) if all_masks is not None else (lambda p: bool(rng.random() < p))
    return make_params(
        grid=GRIDS[int(rng.integers(len(GRIDS)))],
        window=int(rng.choice([1, 4])),
        flat_at_close=bool(rng.random() < 0.5),
        drawdown_penalty=float(rng.choice([0.0, 0.5])),
        commission_per_share=float(rng.choice([0.0, 0.005])),
        half_spread=float(rng.uniform(0, 5e-4)),
        slippage_vol_mult=float(rng.uniform(0, 0.3)),
        mask_session=on(0.6),
        no_new_exposure_minutes=float(rng.integers(0, 20)),
        opening_minutes=float(rng.integers(0, 5)),
        mask_risk_budget=on(0.6),
        target_vol_annual=float(rng.uniform(0.5, 4.0)),
        mask_regime=on(0.6),
        high_vol_regime_cap=float(rng.choice([0.0, 0.5, 1.0])),
        mask_drawdown=on(0.6),
        drawdown_limit=float(rng.uniform(0.003, 0.03)),
        min_hold_bars=int(rng.integers(1, 6)) if all_masks else int(rng.integers(0, 6)),
    )


def _random_valid(rng: np.random.Generator, masks: np.ndarray, held: np.ndarray) -> np.ndarray:
    """Per account a random allowed action, keeping the held one about half of the time."""
    scores = rng.random(masks.shape) * masks
    pick = scores.argmax(axis=1)
    keep = masks[np.arange(held.size), held] & (rng.random(held.size) < 0.5)
    return np.where(keep, held, pick)


def _episodes(
    rng: np.random.Generator, market: MarketData, params: EnvParams, n: int
) -> tuple[np.ndarray, np.ndarray]:
    start = rng.integers(params.window - 1, market.n_rows - 2, size=n)
    end = np.minimum(start + rng.integers(1, 120, size=n), market.n_rows - 1)
    return start, end


def _assert_same(np_sim: BatchSimulator, t_sim: TorchSimulator) -> None:
    a, b = np_sim.get_state(), t_sim.get_state()
    for name in BatchSimulator.ACCOUNT_STATE:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    np.testing.assert_array_equal(np_sim.blocked_layers(), t_sim.blocked_layers().cpu().numpy())
    o1, o2 = np_sim.observe(), t_sim.observe()
    for k in ("window", "state"):
        assert o2[k].dtype == torch.float32
        np.testing.assert_array_equal(o1[k], o2[k].cpu().numpy(), err_msg=k)


def _run(
    market: MarketData,
    params: EnvParams,
    n: int,
    backtest: bool,
    seed: int,
    steps: int,
    device: str = "cpu",
) -> int:
    """Step both simulators with the same random valid actions; restart finished accounts."""
    rng = np.random.default_rng(seed)
    np_sim = BatchSimulator(market, params, n, backtest=backtest)
    t_sim = TorchSimulator(market, params, n, backtest=backtest, device=device)
    start, end = _episodes(rng, market, params, n)
    np_sim.reset(np.arange(n), start, end)
    t_sim.reset(torch.as_tensor(start), torch.as_tensor(end))
    _assert_same(np_sim, t_sim)
    ends = 0
    for _ in range(steps):
        actions = _random_valid(rng, np_sim.action_masks(), np_sim.held)
        r1 = np_sim.step(actions)
        r2 = t_sim.step(torch.as_tensor(actions))
        for k in STEP_FIELDS:
            np.testing.assert_array_equal(getattr(r1, k), getattr(r2, k).cpu().numpy(), err_msg=k)
        np.testing.assert_array_max_ulp(r1.reward, r2.reward.cpu().numpy(), maxulp=2)
        _assert_same(np_sim, t_sim)
        done = r1.terminated | r1.truncated
        if done.any():
            ends += int(done.sum())
            s, e = _episodes(rng, market, params, n)
            np_sim.reset(np.flatnonzero(done), s[done], e[done])
            t_sim.reset(torch.as_tensor(s), torch.as_tensor(e), where=torch.as_tensor(done))
            _assert_same(np_sim, t_sim)
    return ends


@pytest.mark.parametrize("backtest", [False, True], ids=["train", "backtest"])
@pytest.mark.parametrize(
    "masks", [None, True, False], ids=["random-layers", "all-layers", "no-layers"]
)
@pytest.mark.parametrize("n", [1, 1024])
def test_torch_simulator_equals_numpy_step_for_step(
    n: int, masks: bool | None, backtest: bool
) -> None:
    rng = np.random.default_rng([n, 0 if masks is None else 1 + int(masks), int(backtest)])
    market = random_market(n_sessions=4, session_len=60, seed=int(rng.integers(1000)), bar_vol=3e-3)
    ends = 0
    for draw in range(3 if n == 1 else 2):
        params = _params(rng, all_masks=masks)
        ends += _run(market, params, n, backtest, seed=draw, steps=300 if n == 1 else 150)
    assert ends > 0  # auto-resets were exercised


def test_breaker_and_ruin_paths_are_exercised_and_equal() -> None:
    """A volatile market with a tight breaker: trips (and, in train mode, terminations) happen."""
    market = random_market(n_sessions=3, session_len=60, seed=7, bar_vol=8e-3, gap_vol=5e-2)
    params = make_params(mask_drawdown=True, drawdown_limit=0.004, flat_at_close=True, window=2)
    rng = np.random.default_rng(0)
    n = 256
    np_sim = BatchSimulator(market, params, n)
    t_sim = TorchSimulator(market, params, n)
    start, end = _episodes(rng, market, params, n)
    np_sim.reset(np.arange(n), start, end)
    t_sim.reset(torch.as_tensor(start), torch.as_tensor(end))
    trips = 0
    for _ in range(40):
        actions = _random_valid(rng, np_sim.action_masks(), np_sim.held)
        r1, r2 = np_sim.step(actions), t_sim.step(torch.as_tensor(actions))
        np.testing.assert_array_equal(r1.termination, r2.termination.numpy())
        trips += int((r1.termination == 1).sum())
        _assert_same(np_sim, t_sim)
        done = r1.terminated | r1.truncated
        s, e = _episodes(rng, market, params, n)
        np_sim.reset(np.flatnonzero(done), s[done], e[done])
        t_sim.reset(torch.as_tensor(s), torch.as_tensor(e), where=torch.as_tensor(done))
    assert trips > 0


def test_state_round_trips_between_the_two_simulators() -> None:
    market = random_market(n_sessions=2, session_len=50, seed=3)
    params = make_params(window=3, mask_drawdown=True, min_hold_bars=3)
    rng = np.random.default_rng(1)
    np_sim, t_sim = BatchSimulator(market, params, 16), TorchSimulator(market, params, 16)
    start = rng.integers(2, 40, size=16)
    np_sim.reset(np.arange(16), start, start + 40)
    for _ in range(10):
        np_sim.step(_random_valid(rng, np_sim.action_masks(), np_sim.held))
    t_sim.set_state(np_sim.get_state())
    _assert_same(np_sim, t_sim)
    with pytest.raises(ValueError, match="shape"):
        TorchSimulator(market, params, 4).set_state(np_sim.get_state())


def test_out_of_range_actions_are_refused_on_the_cpu() -> None:
    market = random_market(n_sessions=2, session_len=30, seed=0)
    sim = TorchSimulator(market, make_params(), 2)
    sim.reset(torch.tensor([0, 0]), torch.tensor([10, 10]))
    with pytest.raises(ValueError, match=r"actions must be in \[0, 5\)"):
        sim.step(torch.tensor([0, 5]))


def test_both_simulators_return_the_same_step_result_contract() -> None:
    """The device simulator's step result has exactly the numpy one's fields, in order."""
    assert [f.name for f in dataclasses.fields(TorchStepResult)] == [
        f.name for f in dataclasses.fields(StepResult)
    ]
