"""The backtest's fast deterministic actions equal SB3's ``predict(deterministic=True)``."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from sentio.agents.training import make_model
from sentio.config import resolve_for_bars
from sentio.env import EnvParams, SentioVecEnv
from sentio.env.backtest import backtest, model_actions, one_torch_thread
from sentio.env.decisions import _direct_actions
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


def _model(variant: str) -> tuple[Any, Any, EnvParams]:
    """A fresh model whose weights are scrambled (seeded) so that its actions vary."""
    cfg = small_cfg(**VARIANTS[variant])
    market = random_market(n_sessions=4, session_len=60, seed=4, bar_vol=5e-4)
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


@pytest.mark.parametrize("variant", ["maskable_ppo", "sentio_ppo"])
def test_backtest_with_the_fast_path_equals_predict(variant: str, monkeypatch: Any) -> None:
    model, market, params = _model(variant)
    rows = [(0, market.n_rows)]
    fast = backtest(model, market, params, rows)
    import sentio.env.decisions as bt_module

    monkeypatch.setattr(bt_module, "_direct_actions", lambda model: None)
    slow = backtest(model, market, params, rows)
    np.testing.assert_array_equal(fast.actions, slow.actions)
    np.testing.assert_array_equal(fast.equity, slow.equity)
    assert fast.trades.height > 0


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
