"""The backtest's fast deterministic actions (per bar, and with the window part batched over
rows) equal SB3's ``predict(deterministic=True)``."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
import torch

import sentio.env.decisions as decisions
from sentio.agents.training import make_model
from sentio.config import resolve_for_bars
from sentio.env import EnvParams, SentioVecEnv
from sentio.env.backtest import backtest, model_actions, one_torch_thread
from sentio.env.decisions import STAND_ASIDE, WINDOW_CHUNK, _direct_actions, _window_split
from sentio.env.market import MarketData
from sentio.env.simulator import BatchSimulator
from tests.env_helpers import random_market
from tests.test_training import small_cfg

VARIANTS = {
    "maskable_ppo": {},
    "sentio_ppo": {
        "agent.algo": "sentio_ppo",
        "agent.extractor": "transformer",
        "agent.quantile_critic": True,
        "agent.regime_gating": True,
        "env.window": 8,
    },
    "ppo": {
        "agent.algo": "ppo",
        "env.masks.session": False,
        "env.masks.risk_budget": False,
        "env.masks.regime": False,
        "env.masks.drawdown": False,
        "env.masks.min_hold_bars": 0,
    },
}


def _model(variant: str, n_sessions: int = 4) -> tuple[Any, Any, EnvParams]:
    """A fresh model whose weights are scrambled (seeded) so that its actions vary."""
    cfg = small_cfg(**VARIANTS[variant])
    market = random_market(n_sessions=n_sessions, session_len=60, seed=4, bar_vol=5e-4)
    params = EnvParams.from_config(resolve_for_bars(cfg, 60))
    env = SentioVecEnv(market, params, [(0, market.n_rows)], 4, seed=0)
    model = make_model(cfg, env, seed=0, device=torch.device("cpu"))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for w in model.policy.parameters():
            w.add_(torch.randn(w.shape, generator=gen) * 0.5)
    return model, market, params


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_fast_actions_equal_predict(variant: str) -> None:
    model, market, params = _model(variant)
    sim_env = SentioVecEnv(market, params, [(0, market.n_rows)], 256, seed=3)
    obs = sim_env.reset()
    rng = np.random.default_rng(0)
    masks = rng.random((256, params.n_actions)) < 0.6
    masks[:, params.flat_action] = True  # flat is always allowed
    assert _direct_actions(model) is not None  # the fast path is taken
    fast = model_actions(model)(obs, masks)
    slow = model_actions(model, fast=False)(obs, masks)
    if variant == "ppo":  # plain PPO's predict takes no masks
        expected, _ = model.predict(obs, deterministic=True)
    else:
        expected, _ = model.predict(obs, action_masks=masks, deterministic=True)
        assert masks[np.arange(256), fast].all()
    np.testing.assert_array_equal(slow, expected)
    np.testing.assert_array_equal(fast, expected)
    assert np.unique(fast).size >= 3  # the comparison has teeth: varied actions


def _backtest_by(mode: str, monkeypatch: Any, *args: Any) -> Any:
    """The backtest with ``mode``'s inference: predict, per bar, or batched (the default)."""
    with monkeypatch.context() as m:
        if mode in ("predict", "per bar"):
            m.setattr(decisions, "window_batched_actions", lambda *a: None)
        if mode == "predict":
            m.setattr(decisions, "_direct_actions", lambda model: None)
        return backtest(*args)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_backtest_batched_and_per_bar_equal_predict(variant: str, monkeypatch: Any) -> None:
    """Three inference paths, one backtest (over two window chunks: rows cross 512)."""
    model, market, params = _model(variant, n_sessions=10)
    assert market.n_rows > WINDOW_CHUNK
    sim = BatchSimulator(market, params, 1, backtest=True)
    assert decisions.window_batched_actions(model, sim) is not None  # the batched path is taken
    rows = [(0, market.n_rows)]
    runs = {
        mode: _backtest_by(mode, monkeypatch, model, market, params, rows)
        for mode in ("predict", "per bar", "batched")
    }
    for mode in ("per bar", "batched"):
        np.testing.assert_array_equal(runs[mode].actions, runs["predict"].actions)
        np.testing.assert_array_equal(runs[mode].equity, runs["predict"].equity)
    assert runs["batched"].trades.height > 0
    assert np.unique(runs["batched"].actions).size >= 3


@pytest.mark.parametrize("variant", ["maskable_ppo", "sentio_ppo"])
def test_window_split_gives_the_actor_logits(variant: str) -> None:
    """``head(pre(window), state)`` is the actor's logits up to float rounding."""
    model, market, params = _model(variant)
    policy = model.policy
    split = _window_split(policy)
    assert split is not None
    env = SentioVecEnv(market, params, [(0, market.n_rows)], 64, seed=5)
    obs = env.reset()
    rng = np.random.default_rng(2)
    obs["state"] = obs["state"] + rng.normal(0, 0.3, obs["state"].shape).astype(np.float32)
    if variant == "sentio_ppo":  # valid regime probabilities for the gate
        k = market.n_regimes
        obs["state"][:, :k] = rng.dirichlet(np.ones(k), size=64).astype(np.float32)
    policy.set_training_mode(False)
    with torch.no_grad():
        t = {k: torch.as_tensor(v) for k, v in obs.items()}
        expected = (
            policy.actor_logits(t)
            if variant == "sentio_ppo"
            else policy.action_net(policy.mlp_extractor.forward_actor(policy.extract_features(t)))
        )
        pre = split.pre(t["window"])
        got = torch.cat([split.head(pre[i : i + 1], t["state"][i : i + 1]) for i in range(64)])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert float(expected.std()) > 0.1  # the logits vary: the comparison has teeth


def _rows(market: MarketData, a: int, b: int) -> MarketData:
    """Market rows ``[a, b)``, every per-row array sliced."""
    n = market.n_rows
    return dataclasses.replace(
        market,
        **{
            f.name: getattr(market, f.name)[a:b]
            for f in dataclasses.fields(market)
            if isinstance(getattr(market, f.name), np.ndarray)
            and getattr(market, f.name).shape[:1] == (n,)
        },
    )


@pytest.mark.parametrize("variant", ["maskable_ppo", "sentio_ppo"])
def test_batched_actions_do_not_see_later_rows_or_depend_on_where_rows_start(
    variant: str,
) -> None:
    """A row's batched action comes from its own window and state only: the same on a
    market cut after it, and on one whose first rows are dropped (other chunk positions)."""
    model, market, params = _model(variant, n_sessions=12)
    n = market.n_rows
    full = backtest(model, market, params, [(60, n)])
    assert full.trades.height > 0
    k = 8 * 60  # a session boundary inside the second chunk of 512 rows
    cut = backtest(model, _rows(market, 0, k), params, [(60, k)])
    assert cut.n_bars < full.n_bars
    np.testing.assert_array_equal(cut.actions, full.actions[: cut.n_bars])
    np.testing.assert_array_equal(cut.equity, full.equity[: cut.n_bars])
    s = 180  # rows shifted by a non-multiple of the chunk
    late = backtest(model, _rows(market, s, n), params, [(60, n - s)])
    start = int(np.flatnonzero(full.rows == late.rows[0] + s)[0])
    np.testing.assert_array_equal(late.rows + s, full.rows[start:])
    np.testing.assert_array_equal(late.actions, full.actions[start:])


@pytest.mark.parametrize("variant", ["maskable_ppo", "sentio_ppo"])
def test_window_part_does_not_depend_on_the_row_s_place_in_its_batch(variant: str) -> None:
    """Bit for bit, whatever the batch's other rows and the row's offset in it: what lets
    a replay over a shorter market (other chunk boundaries) reproduce a full one."""
    model, market, params = _model(variant, n_sessions=12)
    split = _window_split(model.policy)
    assert split is not None
    sim = BatchSimulator(market, params, 1, backtest=True)
    rows = np.arange(params.window - 1, params.window - 1 + WINDOW_CHUNK)
    windows = torch.as_tensor(sim.windows(rows))
    with torch.no_grad():
        whole = split.pre(windows)
        for shift in (1, 7, 100, 333):
            rolled = split.pre(torch.roll(windows, shift, 0))
            assert torch.equal(torch.roll(whole, shift, 0), rolled), shift
        for size in (8, 64):  # sub-batches of a power of two, as for long windows
            parts = torch.cat(
                [split.pre(windows[i : i + size]) for i in range(0, WINDOW_CHUNK, size)]
            )
            assert torch.equal(parts, whole), size


def test_long_windows_are_encoded_in_sub_batches(monkeypatch: Any) -> None:
    """The attention scores grow with the window's square: fewer rows per batch, same actions."""
    model, market, params = _model("sentio_ppo", n_sessions=10)
    split = _window_split(model.policy)
    assert split is not None and split.rows == WINDOW_CHUNK  # an 8-bar window: one batch
    rows = [(0, market.n_rows)]
    whole = backtest(model, market, params, rows)
    monkeypatch.setattr(decisions, "WINDOW_BATCH_ELEMENTS", 1 << 12)
    small = _window_split(model.policy)
    assert small is not None and 1 <= small.rows < WINDOW_CHUNK
    assert small.rows * model.policy.pi_features_extractor.activation_elements() <= 1 << 12
    np.testing.assert_array_equal(backtest(model, market, params, rows).actions, whole.actions)


def test_models_the_batched_path_does_not_apply_to_fall_back() -> None:
    model, market, params = _model("maskable_ppo")
    sim = BatchSimulator(market, params, 1, backtest=True)
    setattr(model, STAND_ASIDE, params.flat_action)
    assert decisions.window_batched_actions(model, sim) is None  # stands aside, never queried
    delattr(model, STAND_ASIDE)
    net = model.policy.mlp_extractor.policy_net
    net[0] = torch.nn.Sequential(net[0])  # the same actor, no Linear first to cut
    assert _window_split(model.policy) is None
    net[0] = net[0][0]
    assert _window_split(model.policy) is not None

    class Wrapped(type(model.policy.pi_features_extractor)):  # type: ignore[misc]
        def forward(self, observations: Any) -> Any:  # another actor: not to be split
            return super().forward(observations) * 2.0

    model.policy.pi_features_extractor.__class__ = Wrapped
    assert _window_split(model.policy) is None
    assert decisions.window_batched_actions(model, sim) is None
    res = backtest(model, market, params, [(0, market.n_rows)])  # the per-bar path runs it
    assert res.n_bars > 0


def test_one_torch_thread_restores_the_setting() -> None:
    before = torch.get_num_threads()
    with one_torch_thread():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_non_finite_logits_are_an_error_as_in_predict() -> None:
    model, market, params = _model("maskable_ppo")
    with torch.no_grad():
        next(iter(model.policy.action_net.parameters())).fill_(float("nan"))
    env = SentioVecEnv(market, params, [(0, market.n_rows)], 4, seed=3)
    obs = env.reset()
    masks = np.ones((4, params.n_actions), dtype=bool)
    with pytest.raises(ValueError):
        model.predict(obs, action_masks=masks, deterministic=True)
    with pytest.raises(ValueError, match="not finite"):
        model_actions(model)(obs, masks)
