"""The device-resident rollout path against the SB3 path's implementations.

* GAE and the quantile lambda-targets on tensors equal the numpy references;
* :class:`DeviceRolloutBuffer` computes the same advantages, returns and targets as the
  SB3-path buffers on identical trajectories, and with the same numpy seed yields the same
  minibatches;
* a rollout records what the policy did: replayed through the numpy simulator, the same
  rewards and flags; the stored values and log-probabilities are the policy's; a truncated
  step carries the critic of its terminal observation;
* a model trained on the device path is an ordinary SB3 model: saved, loaded, it acts
  and values exactly as the trained object (``ppo``, ``maskable_ppo``, ``sentio_ppo``).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from gymnasium import spaces
from sb3_contrib.common.maskable.buffers import MaskableDictRolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import configure

from sentio.agents.buffers import QuantileMaskableDictRolloutBuffer
from sentio.agents.device_rollout import (
    DeviceRolloutBuffer,
    collect_rollout,
    learn_on_device,
    rollout_kind,
)
from sentio.agents.distributional import (
    gae,
    gae_torch,
    quantile_lambda_targets,
    quantile_lambda_targets_torch,
)
from sentio.agents.ppo_update import ppo_update
from sentio.agents.training import algorithm_class, make_model, save_model
from sentio.config import SentioConfig, resolve_for_bars, with_overrides
from sentio.env import EnvParams, SentioVecEnv
from sentio.env.device_env import DeviceVecEnv
from sentio.env.simulator import BatchSimulator
from tests.env_helpers import random_market

T, N, Q, A = 12, 6, 5, 5
GAMMA, LAM = 0.9, 0.8


def _trajectory(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    terminated = rng.random((T, N)) < 0.08
    truncated = (rng.random((T, N)) < 0.12) & ~terminated
    q = np.sort(rng.normal(size=(T, N, Q)), axis=-1).astype(np.float32)
    return {
        "window": rng.normal(size=(T, N, 2, 3)).astype(np.float32),
        "state": rng.normal(size=(T, N, 4)).astype(np.float32),
        "actions": rng.integers(0, A, size=(T, N)),
        "masks": rng.random((T, N, A)) < 0.7,
        "rewards": rng.normal(size=(T, N)).astype(np.float32),
        "values": q.mean(-1),
        "log_probs": rng.normal(size=(T, N)).astype(np.float32),
        "terminated": terminated,
        "truncated": truncated,
        "terminal_values": rng.normal(size=(T, N)).astype(np.float32),
        "quantiles": q,
        "terminal_quantiles": np.sort(rng.normal(size=(T, N, Q)), axis=-1).astype(np.float32),
        "last_values": rng.normal(size=N).astype(np.float32),
        "last_quantiles": np.sort(rng.normal(size=(N, Q)), axis=-1).astype(np.float32),
    }


def test_torch_gae_and_quantile_targets_equal_the_numpy_references() -> None:
    d = _trajectory(0)
    nv = np.roll(d["values"], -1, axis=0)
    adv, ret = gae(d["rewards"], d["values"], nv, d["terminated"], d["truncated"], GAMMA, LAM)
    t = torch.as_tensor
    adv_t, ret_t = gae_torch(
        t(d["rewards"]), t(d["values"]), t(nv), t(d["terminated"]), t(d["truncated"]), GAMMA, LAM
    )
    np.testing.assert_allclose(adv_t.numpy(), adv, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ret_t.numpy(), ret, rtol=1e-6, atol=1e-6)
    nq = d["terminal_quantiles"]
    z = quantile_lambda_targets(d["rewards"], nq, d["terminated"], d["truncated"], GAMMA, LAM)
    z_t = quantile_lambda_targets_torch(
        t(d["rewards"]), t(nq), t(d["terminated"]), t(d["truncated"]), GAMMA, LAM
    )
    np.testing.assert_allclose(z_t.numpy(), z, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="gamma"):
        gae_torch(
            t(d["rewards"]), t(d["values"]), t(nv), t(d["terminated"]), t(d["truncated"]), 1.5, LAM
        )


def _spaces() -> tuple[spaces.Dict, spaces.Discrete]:
    obs = spaces.Dict(
        {
            "window": spaces.Box(-np.inf, np.inf, (2, 3), np.float32),
            "state": spaces.Box(-np.inf, np.inf, (4,), np.float32),
        }
    )
    return obs, spaces.Discrete(A)


def _device_buffer(
    d: dict[str, np.ndarray], n_quantiles: int, masked: bool = True
) -> DeviceRolloutBuffer:
    from sentio.agents.device_rollout import _Kind

    kind = _Kind(masked=masked, sentio=n_quantiles > 0, n_quantiles=n_quantiles)
    buf = DeviceRolloutBuffer(
        T,
        N,
        {"window": (2, 3), "state": (4,)},
        A,
        torch.device("cpu"),
        kind=kind,
        gamma=GAMMA,
        gae_lambda=LAM,
    )
    t = torch.as_tensor
    for i in range(T):
        buf.add(
            i,
            {"window": t(d["window"][i]), "state": t(d["state"][i])},
            t(d["actions"][i]),
            t(d["masks"][i]),
            t(d["rewards"][i]),
            t(d["values"][i]),
            t(d["log_probs"][i]),
            t(d["terminated"][i]),
            t(d["truncated"][i]),
            t(d["terminal_values"][i]),
            t(d["quantiles"][i]) if n_quantiles else None,
            t(d["terminal_quantiles"][i]) if n_quantiles else None,
        )
    last_q = t(d["last_quantiles"]) if n_quantiles else None
    buf.compute(t(d["last_values"]), last_q)
    return buf


def _starts(d: dict[str, np.ndarray], i: int) -> np.ndarray:
    """SB3's episode starts: whether step ``i`` begins an episode (the previous one ended)."""
    if i == 0:
        return np.zeros(N, dtype=bool)
    return d["terminated"][i - 1] | d["truncated"][i - 1]


def test_device_buffer_equals_the_quantile_buffer_and_draws_the_same_minibatches() -> None:
    d = _trajectory(1)
    obs_space, act_space = _spaces()
    ref = QuantileMaskableDictRolloutBuffer(
        T, obs_space, act_space, "cpu", gae_lambda=LAM, gamma=GAMMA, n_envs=N, n_quantiles=Q
    )
    for i in range(T):
        ref.add(
            {"window": d["window"][i], "state": d["state"][i]},
            d["actions"][i].reshape(N, 1),
            d["rewards"][i],
            _starts(d, i),
            torch.as_tensor(d["values"][i]).reshape(N, 1),
            torch.as_tensor(d["log_probs"][i]),
            action_masks=d["masks"][i],
            quantiles=torch.as_tensor(d["quantiles"][i]),
            terminated=d["terminated"][i],
            truncated=d["truncated"][i],
            terminal_quantiles=d["terminal_quantiles"][i],
            terminal_values=d["terminal_values"][i],
        )
    ref.compute_targets_and_advantages(d["last_values"], d["last_quantiles"])
    buf = _device_buffer(d, Q)
    np.testing.assert_array_equal(buf.advantages.numpy(), ref.advantages)
    np.testing.assert_array_equal(buf.return_tensor.numpy(), ref.returns)
    np.testing.assert_array_equal(buf.returns, ref.returns)
    assert buf.quantile_targets is not None
    np.testing.assert_array_equal(buf.quantile_targets.numpy(), ref.quantile_targets)
    np.random.seed(5)
    ours = list(buf.get(16))
    np.random.seed(5)
    theirs = list(ref.get(16))
    assert len(ours) == len(theirs) == -(-T * N // 16)
    for a, b in zip(ours, theirs, strict=True):
        for k in ("window", "state"):
            np.testing.assert_array_equal(a.observations[k].numpy(), b.observations[k].numpy())
        np.testing.assert_array_equal(a.actions.numpy(), b.actions.long().flatten().numpy())
        np.testing.assert_array_equal(a.action_masks.numpy(), b.action_masks.bool().numpy())
        for k in (
            "old_values",
            "old_log_prob",
            "advantages",
            "returns",
            "old_quantiles",
            "target_quantiles",
        ):
            np.testing.assert_array_equal(getattr(a, k).numpy(), getattr(b, k).numpy(), err_msg=k)


def test_device_buffer_equals_sb3s_maskable_buffer_with_the_bootstrap_folded_into_rewards() -> None:
    """SB3 adds gamma V(terminal) to a truncated step's reward; the device buffer bootstraps
    it as a flag: the same advantages and returns to float rounding."""
    d = _trajectory(2)
    d["terminated"][:] = False  # SB3's scalar buffer knows ends only as episode starts
    obs_space, act_space = _spaces()
    ref = MaskableDictRolloutBuffer(
        T, obs_space, act_space, "cpu", gae_lambda=LAM, gamma=GAMMA, n_envs=N
    )
    for i in range(T):
        folded = d["rewards"][i] + np.where(d["truncated"][i], GAMMA * d["terminal_values"][i], 0.0)
        ref.add(
            {"window": d["window"][i], "state": d["state"][i]},
            d["actions"][i].reshape(N, 1),
            folded.astype(np.float32),
            _starts(d, i),
            torch.as_tensor(d["values"][i]).reshape(N, 1),
            torch.as_tensor(d["log_probs"][i]),
            action_masks=d["masks"][i],
        )
    last_done = d["truncated"][-1]
    ref.compute_returns_and_advantage(torch.as_tensor(d["last_values"]), last_done)
    buf = _device_buffer(d, 0)
    # SB3 does not bootstrap the rollout's last step when it ended an episode: compare the rest
    np.testing.assert_allclose(
        buf.advantages.numpy()[:-1], ref.advantages[:-1], rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(buf.returns[:-1], ref.returns[:-1], rtol=1e-5, atol=1e-5)
    keep = ~last_done
    np.testing.assert_allclose(
        buf.advantages.numpy()[-1][keep], ref.advantages[-1][keep], rtol=1e-5, atol=1e-5
    )


# ---------------------------------------------------------------------------- rollouts


BASE = {
    "agent.extractor": "mlp",
    "agent.quantile_critic": False,
    "agent.regime_gating": False,
    "agent.n_steps": 16,
    "agent.batch_size": 64,
    "train.n_envs": 8,
    "train.device": "cpu",
    "env.window": 3,
}
NO_MASKS = {
    "env.masks.session": False,
    "env.masks.risk_budget": False,
    "env.masks.regime": False,
    "env.masks.drawdown": False,
    "env.masks.min_hold_bars": 0,
}
ALGOS = {
    "ppo": {"agent.algo": "ppo", **NO_MASKS},
    "maskable_ppo": {"agent.algo": "maskable_ppo"},
    "sentio_ppo": {
        "agent.algo": "sentio_ppo",
        "agent.quantile_critic": True,
        "agent.n_quantiles": 8,
        "agent.regime_gating": True,
    },
}


def _setup(
    algo: str, market: Any, **more: Any
) -> tuple[SentioConfig, Any, DeviceVecEnv, EnvParams]:
    cfg = with_overrides(SentioConfig(), {**BASE, **ALGOS[algo], **more})
    params = EnvParams.from_config(resolve_for_bars(cfg, 60))
    ranges = [(0, market.n_rows)]
    env = SentioVecEnv(market, params, ranges, cfg.train.n_envs, seed=0)
    torch.manual_seed(0)
    model = make_model(cfg, env, seed=0, device=torch.device("cpu"))
    denv = DeviceVecEnv(market, params, ranges, cfg.train.n_envs, seed=3, reward_scale=50.0)
    return cfg, model, denv, params


def _buffer(model: Any, denv: DeviceVecEnv) -> DeviceRolloutBuffer:
    space: Any = model.observation_space
    return DeviceRolloutBuffer(
        model.n_steps,
        denv.num_envs,
        {k: tuple(s.shape) for k, s in space.spaces.items()},
        model.action_space.n,
        denv.device,
        kind=rollout_kind(model),
        gamma=model.gamma,
        gae_lambda=model.gae_lambda,
    )


@pytest.mark.parametrize("algo", list(ALGOS))
def test_rollout_records_what_the_policy_did(algo: str) -> None:
    """Replayed through the numpy simulator: the same rewards and flags; the stored values and
    log-probabilities are the policy's; the masked algorithms act within the masks (``ppo``
    runs without mask layers, as the configuration requires)."""
    market = random_market(n_sessions=4, session_len=40, seed=2, n_regimes=3)
    cfg, model, denv, params = _setup(algo, market)
    obs = denv.reset()
    start_state = denv.sim.get_state()
    buf = _buffer(model, denv)
    collect_rollout(model, denv, buf, obs)
    assert model.num_timesteps == 16 * 8
    ref = BatchSimulator(market, params, 8)
    ref.set_state(start_state)
    policy: Any = model.policy
    for t in range(16):
        o = {k: torch.as_tensor(v) for k, v in ref.observe().items()}
        for k in o:
            np.testing.assert_array_equal(buf.observations[k][t].numpy(), o[k].numpy())
        masks = torch.as_tensor(ref.action_masks())
        actions = buf.actions[t]
        if algo != "ppo":
            np.testing.assert_array_equal(buf.action_masks[t].numpy(), masks.numpy())
            assert bool(masks.gather(1, actions[:, None]).all())
        with torch.no_grad():
            if algo == "ppo":
                values, log_prob, _ = policy.evaluate_actions(o, actions)
            else:
                values, log_prob, _ = policy.evaluate_actions(o, actions, action_masks=masks)
        np.testing.assert_allclose(
            buf.value_tensor[t].numpy(), values.flatten().numpy(), rtol=1e-5, atol=1e-6
        )
        np.testing.assert_allclose(buf.log_probs[t].numpy(), log_prob.numpy(), rtol=1e-5, atol=1e-6)
        res = ref.step(actions.numpy())
        np.testing.assert_array_equal(
            buf.rewards[t].numpy(), (res.reward * 50.0).astype(np.float32)
        )
        np.testing.assert_array_equal(buf.terminated[t].numpy(), res.terminated)
        np.testing.assert_array_equal(buf.truncated[t].numpy(), res.truncated & ~res.terminated)
        assert not (res.terminated | res.truncated).any()  # 40-bar sessions: no end in 16 steps


def test_truncated_steps_bootstrap_from_their_terminal_observation() -> None:
    """Sessions of 8 bars (window 1: 7 steps per episode, no breaker): every account is cut
    at step 6 and restarts; the stored terminal value is the critic's of the terminal
    observation."""
    market = random_market(n_sessions=6, session_len=8, seed=4, n_regimes=3)
    cfg, model, denv, params = _setup(
        "sentio_ppo", market, **{"env.window": 1, "env.masks.drawdown": False}
    )
    obs = denv.reset()
    start_state = denv.sim.get_state()
    buf = _buffer(model, denv)
    collect_rollout(model, denv, buf, obs)
    ref = BatchSimulator(market, params, 8)
    ref.set_state(start_state)
    steps = int((start_state["end"] - start_state["t"])[0])
    assert (start_state["end"] - start_state["t"] == steps).all()
    for t in range(steps):
        ref.step(buf.actions[t].numpy())
    assert buf.truncated[steps - 1].all() and not buf.truncated[: steps - 1].any()
    final = {k: torch.as_tensor(v) for k, v in ref.observe().items()}
    policy: Any = model.policy
    with torch.no_grad():
        critic = policy.predict_critic(final)
    np.testing.assert_allclose(
        buf.terminal_values[steps - 1].numpy(),
        policy.values_from_critic(critic).flatten().numpy(),
        rtol=1e-5,
        atol=1e-6,
    )
    assert buf.terminal_quantiles is not None
    np.testing.assert_allclose(
        buf.terminal_quantiles[steps - 1].numpy(), critic.numpy(), rtol=1e-5, atol=1e-6
    )
    # the restarted accounts sit at session starts again
    assert denv.pop_episode_returns()[0] >= 8


class _Count(BaseCallback):
    def __init__(self) -> None:
        super().__init__()
        self.starts = self.ends = 0

    def _on_rollout_start(self) -> None:
        self.starts += 1

    def _on_rollout_end(self) -> None:
        self.ends += 1

    def _on_step(self) -> bool:
        return True


@pytest.mark.parametrize("algo", list(ALGOS))
def test_device_trained_model_saves_loads_and_acts_identically(algo: str, tmp_path: Path) -> None:
    market = random_market(n_sessions=4, session_len=40, seed=6, n_regimes=3)
    cfg, model, denv, _ = _setup(algo, market)
    before = {k: v.clone() for k, v in model.policy.state_dict().items()}
    counter = _Count()
    learn_on_device(model, denv, 512, callback=counter)
    assert model.num_timesteps == 512 and counter.starts == counter.ends == 4
    assert any(not torch.equal(before[k], v) for k, v in model.policy.state_dict().items())
    path = save_model(model, tmp_path / "model.zip")
    loaded = algorithm_class(cfg).load(path, device="cpu")
    obs = {k: v.numpy() for k, v in denv.observe().items()}
    masks = denv.action_masks().numpy()
    kw = {} if algo == "ppo" else {"action_masks": masks}
    a1, _ = model.predict(obs, deterministic=True, **kw)
    a2, _ = loaded.predict(obs, deterministic=True, **kw)
    np.testing.assert_array_equal(a1, a2)
    t_obs = {k: torch.as_tensor(v) for k, v in obs.items()}
    with torch.no_grad():
        np.testing.assert_array_equal(
            model.policy.predict_values(t_obs).numpy(), loaded.policy.predict_values(t_obs).numpy()
        )
    for k, v in model.policy.state_dict().items():
        assert torch.equal(v, loaded.policy.state_dict()[k]), k


@pytest.mark.parametrize("algo", ["ppo", "maskable_ppo"])
def test_ppo_update_equals_the_algorithms_own_train(algo: str) -> None:
    """On the same rollout and minibatch order, :func:`ppo_update` and SB3's ``train()``
    give the same parameters bit for bit and the same logged losses (averaged in another
    order: to rounding)."""
    market = random_market(n_sessions=4, session_len=40, seed=8, n_regimes=3)
    _, model, denv, _ = _setup(algo, market)
    buf = _buffer(model, denv)
    collect_rollout(model, denv, buf, denv.reset())
    state = {k: v.clone() for k, v in model.policy.state_dict().items()}
    opt = copy.deepcopy(model.policy.optimizer.state_dict())
    model.rollout_buffer = buf
    model._current_progress_remaining = 1.0
    model.set_logger(configure(None, []))
    np.random.seed(11)
    model.train()
    theirs = {k: v.clone() for k, v in model.policy.state_dict().items()}
    their_logs = dict(model.logger.name_to_value)
    model.policy.load_state_dict(state)
    model.policy.optimizer.load_state_dict(opt)
    np.random.seed(11)
    ppo_update(model, masked=algo == "maskable_ppo")
    changed = 0
    for k, v in model.policy.state_dict().items():
        assert torch.equal(v, theirs[k]), k
        changed += int(not torch.equal(v, state[k]))
    assert changed > 0
    for key in (
        "train/policy_gradient_loss",
        "train/value_loss",
        "train/entropy_loss",
        "train/clip_fraction",
    ):
        assert model.logger.name_to_value[key] == pytest.approx(their_logs[key], rel=1e-4, abs=1e-6)


def test_the_gpus_sync_free_steps_equal_the_cpus() -> None:
    """On a GPU the environment never reads back per step (it gathers terminal observations
    every step); forced on the CPU, that branch gives the very same rollout."""
    market = random_market(n_sessions=6, session_len=8, seed=4, n_regimes=3)
    buffers = []
    for sync_free in (False, True):
        cfg, model, _, params = _setup("sentio_ppo", market, **{"env.window": 1})
        denv = DeviceVecEnv(
            market, params, [(0, market.n_rows)], 8, seed=3, reward_scale=50.0, sync_free=sync_free
        )
        buf = _buffer(model, denv)
        torch.manual_seed(1)
        collect_rollout(model, denv, buf, denv.reset())
        buffers.append((buf, denv.pop_episode_returns()))
    (a, ended_a), (b, ended_b) = buffers
    assert ended_a == ended_b and ended_a[0] >= 8  # episodes ended inside the rollout
    for name in (
        "actions",
        "rewards",
        "value_tensor",
        "terminated",
        "truncated",
        "terminal_values",
        "advantages",
    ):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a.terminal_quantiles is not None and b.terminal_quantiles is not None
    assert torch.equal(a.terminal_quantiles, b.terminal_quantiles)
