"""What the learner sees: the session clock in 0..1, rewards scaled, progress and curve.

* the market arrays carry the session-clock features divided by 390 (everything of
  order one), the features stage keeps minutes;
* ``agent.reward_scale = "auto"`` is 1 / sd of the long ETF's one-bar log returns over
  the training rows only, the vector environment multiplies rewards by it and nothing
  else changes, and the model zip carries it;
* training reports progress with the recent episode return and records a learning curve.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sentio.agents.training import algorithm_class, reward_scale, train_agent
from sentio.config import SentioConfig, resolve_for_bars, with_overrides
from sentio.env import EnvParams, SentioVecEnv
from sentio.env.market import CLOCK_SCALE, LONG
from sentio.errors import ConfigError
from sentio.progress import format_progress
from tests.env_helpers import random_market, realistic_inputs
from tests.test_training import SMALL as TRAINING_SMALL

SMALL = {**TRAINING_SMALL, "train.total_timesteps": 512, "train.checkpoint_every": 100_000}


@pytest.fixture(scope="module")
def market() -> Any:
    return random_market(n_sessions=6, session_len=60, seed=3, bar_vol=2e-3)


def test_session_clock_reaches_the_networks_in_sessions_not_minutes() -> None:
    from sentio.env import build_market

    bars, features, cfg = realistic_inputs()
    market = build_market(bars, features, None, cfg)
    for name in ("minutes_since_open", "minutes_to_close"):
        j = market.feature_names.index(name)
        raw = features.sort("timestamp")[name].to_numpy()[-market.n_rows :]
        np.testing.assert_allclose(market.features[:, j], raw / CLOCK_SCALE, rtol=1e-6)
        assert market.features[:, j].min() >= 0.0 and market.features[:, j].max() <= 1.0
        assert raw.max() > 100  # the features stage itself keeps minutes
    other = [i for i, n in enumerate(market.feature_names) if not n.startswith("minutes_")]
    np.testing.assert_array_equal(
        market.features[:, other],
        features.sort("timestamp")
        .select([market.feature_names[i] for i in other])
        .to_numpy()
        .astype(np.float32)[-market.n_rows :],
    )


def test_auto_reward_scale_is_one_over_the_training_rows_sd(market: Any) -> None:
    cfg = with_overrides(SentioConfig(), SMALL)
    train = [(0, 120), (180, 240)]
    parts = []
    for a, b in train:
        r = np.diff(np.log(market.close[a:b, LONG]))
        parts.append(r[market.session[a + 1 : b] == market.session[a : b - 1]])
    expected = 1.0 / np.concatenate(parts).std(ddof=1)
    got = reward_scale(cfg, market, train)
    assert got == pytest.approx(expected, rel=5e-3)  # three significant digits
    assert got == float(f"{got:.3g}")
    # rows outside the training ranges are never read
    close = market.close.copy()
    close[240:, :] *= np.exp(np.linspace(0, 1, close.shape[0] - 240))[:, None]
    close[120:180, LONG] *= 1.5
    changed = dataclasses.replace(market, close=close)
    assert reward_scale(cfg, changed, train) == got
    fixed = with_overrides(cfg, {"agent.reward_scale": 250})
    assert reward_scale(fixed, market, train) == 250.0


def test_reward_scale_setting_is_validated() -> None:
    with pytest.raises(ConfigError, match="reward_scale"):
        with_overrides(SentioConfig(), {"agent.reward_scale": 0})
    with pytest.raises(ConfigError, match="reward_scale"):
        with_overrides(SentioConfig(), {"agent.reward_scale": "big"})


def test_vec_env_scales_rewards_and_nothing_else(market: Any) -> None:
    params = EnvParams.from_config(resolve_for_bars(with_overrides(SentioConfig(), SMALL), 60))
    ranges = [(0, market.n_rows)]
    envs = [SentioVecEnv(market, params, ranges, 3, seed=5, reward_scale=s) for s in (1.0, 400.0)]
    obs = [e.reset() for e in envs]
    rng = np.random.default_rng(0)
    for _ in range(150):
        masks = envs[0].action_masks()
        actions = np.array([rng.choice(np.flatnonzero(m)) for m in masks])
        out = [e.step(actions) for e in envs]
        (o1, r1, d1, i1), (o2, r2, d2, i2) = out
        for k in o1:
            np.testing.assert_array_equal(o1[k], o2[k])
        np.testing.assert_allclose(r2, (r1.astype(np.float64) * 400.0), rtol=1e-5, atol=1e-9)
        np.testing.assert_array_equal(d1, d2)
        for a, b in zip(i1, i2, strict=True):
            if "episode_log_return" in a:
                assert a["episode_log_return"] == b["episode_log_return"]
                assert a["episode_log_return"] == pytest.approx(
                    np.log(a["episode_equity"] / params.initial_cash)
                )
    assert obs[0]["state"].shape == obs[1]["state"].shape
    with pytest.raises(ValueError, match="reward_scale"):
        SentioVecEnv(market, params, ranges, 1, reward_scale=0.0)


def test_model_carries_its_reward_scale_and_curve(market: Any, tmp_path: Path) -> None:
    cfg = with_overrides(SentioConfig(), SMALL)
    calls: list[tuple[int, int, float | None]] = []
    result = train_agent(
        cfg,
        market,
        [(0, market.n_rows)],
        seed=0,
        out_dir=tmp_path,
        progress=lambda d, t, e: calls.append((d, t, e)),
    )
    assert result.reward_scale == reward_scale(cfg, market, [(0, market.n_rows)]) > 100
    model = algorithm_class(cfg).load(result.model_path, device="cpu")
    assert model.reward_scale == result.reward_scale
    rollout = cfg.agent.n_steps * cfg.train.n_envs
    assert [c["steps"] for c in result.curve] == list(range(rollout, 513, rollout))
    # one-session episodes (~56 decisions), 4 accounts of 128 steps each: about 9 episodes
    assert sum(c["episodes"] for c in result.curve) >= 8
    for point, call in zip(result.curve, calls, strict=False):
        assert call[0] == point["steps"] and call[2] == point["mean_episode_log_return"]
    assert all(
        c["mean_episode_log_return"] is None or abs(c["mean_episode_log_return"]) < 0.5
        for c in result.curve
    )  # raw log returns of one session, not scaled ones


def test_progress_line() -> None:
    line = format_progress("train fold 1 seed 2", 25_000, 50_000, 50.0, -0.002)
    assert line == (
        "train fold 1 seed 2: 25,000 / 50,000 steps (50%), 500 steps/s, elapsed 0:00:50, "
        "ETA 0:00:50, recent episode return -0.200%"
    )
    assert "recent" not in format_progress("x", 0, 10, 0.0, None)


@pytest.mark.parametrize("algo", ["maskable_ppo", "sentio_ppo"])
def test_flat_prior_sets_the_initial_policy(market: Any, algo: str) -> None:
    """agent.flat_prior = 2: flat with probability e^2 / (e^2 + 4) at the start, for the
    linear head and for every expert of the regime-gated head alike."""
    import torch
    from stable_baselines3.common.utils import obs_as_tensor

    from sentio.agents.training import make_model

    gated = (
        {"agent.quantile_critic": True, "agent.regime_gating": True} if algo == "sentio_ppo" else {}
    )
    cfg = with_overrides(SentioConfig(), {**SMALL, "agent.algo": algo, **gated})
    env = SentioVecEnv(
        market, EnvParams.from_config(resolve_for_bars(cfg, 60)), [(0, market.n_rows)], 4, seed=0
    )
    obs = obs_as_tensor(env.reset(), torch.device("cpu"))
    flat = env.params.flat_action
    for prior, want in ((0.0, 1 / 5), (2.0, np.exp(2) / (np.exp(2) + 4))):
        model = make_model(
            with_overrides(cfg, {"agent.flat_prior": prior}),
            env,
            seed=0,
            device=torch.device("cpu"),
        )
        with torch.no_grad():
            dist = model.policy.get_distribution(obs, action_masks=np.ones((4, 5), dtype=bool))
            probs = dist.distribution.probs.numpy()
        np.testing.assert_allclose(probs[:, flat], want, atol=0.03)
