"""SentioPPO: quantile critic, CVaR advantages, regime gating, masks, ratio 1, save/load, seeds.

Small markets (tests/env_helpers.py), tiny networks and rollouts of 16-64 steps: the whole
module runs in well under a minute on two CPU cores.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from sb3_contrib import MaskablePPO
from sb3_contrib.common.maskable.buffers import MaskableDictRolloutBuffer
from sb3_contrib.common.maskable.distributions import MaskableCategorical
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.utils import obs_as_tensor
from stable_baselines3.common.vec_env import DummyVecEnv
from torch import nn

from sentio.agents.buffers import QuantileMaskableDictRolloutBuffer
from sentio.agents.distributional import (
    quantile_huber_loss,
    quantile_midpoints,
    risk_adjusted_value,
)
from sentio.agents.extractors import TransformerExtractor
from sentio.agents.policies import (
    RegimeGatedLogits,
    SentioActorCriticPolicy,
    SentioMultiInputPolicy,
    has_train_mode_behaviour,
)
from sentio.agents.sentio_ppo import SentioPPO, quantile_huber_loss_per_sample
from sentio.env import SentioVecEnv
from tests.env_helpers import make_params, random_market

K = 3  # regimes of the test markets
N_ACTIONS = 5

# ---------------------------------------------------------------- helpers


class DropoutExtractor(BaseFeaturesExtractor):
    """Flatten the Dict observation, one linear layer, dropout: train and eval mode differ."""

    def __init__(
        self, observation_space: spaces.Dict, features_dim: int = 16, p: float = 0.5
    ) -> None:
        super().__init__(observation_space, features_dim)
        n_in = sum(math.prod(s.shape or ()) for s in observation_space.spaces.values())
        self.net = nn.Sequential(nn.Linear(n_in, features_dim), nn.ReLU(), nn.Dropout(p))

    def forward(self, observations: dict[str, torch.Tensor]) -> torch.Tensor:
        flat = [observations[k].flatten(1) for k in sorted(observations)]
        return self.net(torch.cat(flat, dim=1))


class ToyEnv(gym.Env[Any, Any]):
    """Dict observations of Sentio's shape, random masks, a fixed episode end.

    Episodes end after ``length`` steps: truncated (time limit) or terminated.
    """

    def __init__(self, length: int, terminate: bool, seed: int) -> None:
        self.observation_space = spaces.Dict(
            {
                "window": spaces.Box(-np.inf, np.inf, shape=(2, 3), dtype=np.float32),
                "state": spaces.Box(-np.inf, np.inf, shape=(K + 5,), dtype=np.float32),
            }
        )
        self.action_space = spaces.Discrete(N_ACTIONS)
        self.length, self.terminate = length, terminate
        self.rng = np.random.default_rng(seed)
        self.t = 0
        self._mask = np.ones(N_ACTIONS, dtype=bool)

    def _obs(self) -> dict[str, np.ndarray]:
        state = self.rng.normal(size=K + 5).astype(np.float32)
        state[:K] = self.rng.dirichlet(np.ones(K))
        self._mask = self.rng.random(N_ACTIONS) < 0.5
        self._mask[2] = True
        return {"window": self.rng.normal(size=(2, 3)).astype(np.float32), "state": state}

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        self.t = 0
        return self._obs(), {}

    def step(self, action: int) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        assert self._mask[action], "a masked action was executed"
        self.t += 1
        end = self.t >= self.length
        reward = float(self.rng.normal(0.1, 1.0))
        return self._obs(), reward, end and self.terminate, end and not self.terminate, {}

    def action_masks(self) -> np.ndarray:
        return self._mask.copy()


class MaskCheckingVecEnv(SentioVecEnv):
    """SentioVecEnv that asserts every executed action is allowed by its current mask."""

    checked = 0
    blocked_seen = 0

    def step_async(self, actions: np.ndarray) -> None:
        masks = self.action_masks()
        a = np.asarray(actions, dtype=np.int64).reshape(self.num_envs)
        assert masks[np.arange(self.num_envs), a].all(), "a masked action was sampled"
        self.checked += a.size
        self.blocked_seen += int((~masks).sum())
        super().step_async(actions)


class InfoRecorder(BaseCallback):
    """Keeps the ``infos`` and the rewards of every step of the rollout."""

    def __init__(self) -> None:
        super().__init__()
        self.infos: list[list[dict[str, Any]]] = []
        self.rewards: list[np.ndarray] = []

    def _on_step(self) -> bool:
        self.infos.append(self.locals["infos"])
        self.rewards.append(np.array(self.locals["rewards"], copy=True))
        return True


def sentio_env(n_envs: int = 4, seed: int = 0, **params: Any) -> SentioVecEnv:
    market = random_market(n_sessions=3, session_len=40, seed=seed, n_regimes=K)
    return SentioVecEnv(
        market, make_params(window=4, **params), [(0, market.n_rows)], n_envs, seed=seed
    )


def toy_vec_env() -> DummyVecEnv:
    specs = [(5, False, 1), (4, True, 2), (7, False, 3)]  # (length, terminate, seed)
    return DummyVecEnv([lambda s=s: ToyEnv(*s) for s in specs])  # type: ignore[misc]


def make_model(env: Any, seed: int = 0, **kwargs: Any) -> SentioPPO:
    policy_kwargs = {"net_arch": [16], "n_quantiles": 8}
    policy_kwargs.update(kwargs.pop("policy_kwargs", {}))
    options: dict[str, Any] = {
        "n_steps": 16,
        "batch_size": 32,
        "n_epochs": 2,
        "seed": seed,
        "device": "cpu",
    }
    options.update(kwargs)
    return SentioPPO("MultiInputPolicy", env, policy_kwargs=policy_kwargs, **options)


def collect(model: SentioPPO, callback: BaseCallback | None = None) -> None:
    """One rollout into ``model.rollout_buffer`` (as ``learn`` does before ``train``)."""
    _, cb = model._setup_learn(model.n_steps * model.n_envs, callback)
    assert model.env is not None
    assert model.collect_rollouts(model.env, cb, model.rollout_buffer, model.n_steps)


def reference_targets(
    rewards: np.ndarray,
    quantiles: np.ndarray,
    last_quantiles: np.ndarray,
    terminated: np.ndarray,
    truncated: np.ndarray,
    terminal_quantiles: np.ndarray,
    gamma: float,
    lam: float,
) -> np.ndarray:
    """DESIGN.md's z_i,t = r_t + gamma (1 - term_t) [(1 - lam) theta_i(s_t+1) + lam z_i,t+1],
    one environment and one step at a time with the boundary cases written out."""
    T, N, _ = quantiles.shape
    z = np.zeros(quantiles.shape, dtype=np.float64)
    for n in range(N):
        for t in reversed(range(T)):
            r = float(rewards[t, n])
            if terminated[t, n]:
                z[t, n] = r
            elif truncated[t, n]:
                z[t, n] = r + gamma * terminal_quantiles[t, n]
            elif t == T - 1:
                z[t, n] = r + gamma * last_quantiles[n]
            else:
                z[t, n] = r + gamma * ((1 - lam) * quantiles[t + 1, n] + lam * z[t + 1, n])
    return z


def probs_of(distribution: Any) -> torch.Tensor:
    """The probabilities of a masked categorical action distribution."""
    inner = distribution.distribution
    assert isinstance(inner, MaskableCategorical)
    return inner.probs


def dict_obs_space() -> spaces.Dict:
    return ToyEnv(3, False, 0).observation_space  # type: ignore[return-value]


# ---------------------------------------------------------------- PPO ratio and masks


@pytest.mark.parametrize(
    ("extractor", "extractor_kwargs"),
    [
        (DropoutExtractor, {"p": 0.5}),
        (TransformerExtractor, {"d_model": 8, "n_heads": 2, "n_layers": 1, "dropout": 0.3}),
    ],
)
def test_first_minibatch_ratio_is_one_with_dropout(
    extractor: type[BaseFeaturesExtractor], extractor_kwargs: dict[str, Any]
) -> None:
    env = sentio_env(n_envs=4)
    model = make_model(
        env,
        policy_kwargs={
            "features_extractor_class": extractor,
            "features_extractor_kwargs": extractor_kwargs,
            "regime_gating": True,
            "n_regimes": K,
        },
    )
    policy = model.policy
    assert policy.has_train_mode_behaviour
    collect(model)

    # SB3's train-mode evaluation would not reproduce the behaviour log-probabilities ...
    batch = next(model.rollout_buffer.get(32))
    actions = batch.actions.long().flatten()
    policy.set_training_mode(True)
    with torch.no_grad():
        _, train_mode_logp, _ = policy.evaluate_actions(
            batch.observations, actions, batch.action_masks
        )
    assert (train_mode_logp - batch.old_log_prob).abs().max() > 1e-4

    # ... SentioPPO's update does: the actor runs in eval mode, the critic in train mode.
    modes: set[bool] = set()
    dropouts = [m for m in policy.features_extractor.modules() if isinstance(m, nn.Dropout)]
    hooks = [m.register_forward_hook(lambda m, i, o: modes.add(m.training)) for m in dropouts]
    model.train()
    for hook in hooks:
        hook.remove()
    assert modes == {True, False}
    ratio = model.first_minibatch_ratio
    assert ratio is not None and ratio.numel() == 32
    torch.testing.assert_close(ratio, torch.ones_like(ratio), atol=1e-6, rtol=0)


def test_first_minibatch_ratio_is_one_in_every_update() -> None:
    ratios: list[torch.Tensor] = []

    class Hook(BaseCallback):
        def _on_rollout_start(self) -> None:
            r = self.model.first_minibatch_ratio  # type: ignore[attr-defined]
            if r is not None:
                ratios.append(r)

        def _on_step(self) -> bool:
            return True

    model = make_model(sentio_env(), policy_kwargs={"cvar_beta": 0.5}, n_epochs=3)
    model.learn(4 * 16 * 4, callback=Hook())
    assert len(ratios) == 3
    for r in ratios:
        torch.testing.assert_close(r, torch.ones_like(r), atol=1e-6, rtol=0)


def test_masked_actions_are_never_sampled() -> None:
    env = MaskCheckingVecEnv(
        random_market(n_sessions=3, session_len=40, n_regimes=K),
        make_params(window=4, mask_session=True, no_new_exposure_minutes=30.0, min_hold_bars=4),
        [(0, 120)],
        4,
        seed=1,
    )
    model = make_model(env, policy_kwargs={"regime_gating": True, "n_regimes": K}, n_steps=64)
    model.learn(2 * 64 * 4)
    assert env.checked == 2 * 64 * 4 and env.blocked_seen > 100  # the masks did bite
    buf = model.rollout_buffer
    a = buf.actions.reshape(-1).astype(np.int64)
    allowed = buf.action_masks.reshape(-1, N_ACTIONS)[np.arange(a.size), a]
    assert allowed.all()


def test_masked_actions_have_probability_zero() -> None:
    obs_space, policy = dict_obs_space(), None
    policy = SentioMultiInputPolicy(
        obs_space,
        spaces.Discrete(N_ACTIONS),
        lambda _: 1e-3,
        net_arch=[8],
        regime_gating=True,
        n_regimes=K,
    )
    obs = {
        k: torch.as_tensor(np.stack([s.sample() for _ in range(64)]))
        for k, s in obs_space.spaces.items()
    }
    masks = torch.rand(64, N_ACTIONS) < 0.5
    masks[:, 2] = True
    dist = policy.get_distribution(obs, masks)
    probs = probs_of(dist)
    assert torch.all(probs[~masks] == 0)
    torch.testing.assert_close(probs.sum(-1), torch.ones(64))
    for _ in range(20):
        assert masks[torch.arange(64), dist.sample()].all()


# ---------------------------------------------------------------- targets and advantages


def _fill_buffers(
    beta: float, seed: int = 0
) -> tuple[QuantileMaskableDictRolloutBuffer, MaskableDictRolloutBuffer, dict[str, Any]]:
    """The same hand-built rollout in a quantile buffer and in sb3-contrib's scalar buffer.

    Environment 0 is truncated at t=2 and terminated at t=4; environment 1 terminated at t=0
    and truncated at the last step; environment 2 runs through.
    """
    T, N, Q, gamma, lam = 6, 3, 4, 0.9, 0.8
    rng = np.random.default_rng(seed)
    space = dict_obs_space()
    qbuf = QuantileMaskableDictRolloutBuffer(
        T, space, spaces.Discrete(N_ACTIONS), "cpu", lam, gamma, N, n_quantiles=Q
    )
    sbuf = MaskableDictRolloutBuffer(T, space, spaces.Discrete(N_ACTIONS), "cpu", lam, gamma, N)
    quantiles = np.sort(rng.normal(size=(T, N, Q)), axis=-1).astype(np.float32)
    terminal_q = np.sort(rng.normal(size=(T, N, Q)), axis=-1).astype(np.float32)
    last_q = np.sort(rng.normal(size=(N, Q)), axis=-1).astype(np.float32)
    rewards = rng.normal(size=(T, N)).astype(np.float32)
    terminated = np.zeros((T, N), dtype=bool)
    truncated = np.zeros((T, N), dtype=bool)
    truncated[2, 0] = terminated[4, 0] = terminated[0, 1] = truncated[T - 1, 1] = True
    dones = terminated | truncated

    def v(q: np.ndarray) -> np.ndarray:
        return risk_adjusted_value(torch.as_tensor(q), 0.25, beta).numpy()

    obs = {k: np.zeros((N, *s.shape), dtype=np.float32) for k, s in space.spaces.items()}  # type: ignore[misc]
    actions, log_probs = np.zeros((N, 1)), torch.zeros(N)
    starts = np.ones(N, dtype=np.float32)
    for t in range(T):
        values = torch.as_tensor(v(quantiles[t]))
        qbuf.add(
            obs,
            actions,
            rewards[t],
            starts,
            values,
            log_probs,
            quantiles=torch.as_tensor(quantiles[t]),
            terminated=terminated[t],
            truncated=truncated[t],
            terminal_quantiles=terminal_q[t],
            terminal_values=v(terminal_q[t]),
        )
        # SB3: the bootstrap of a time-limit end is folded into the reward
        sb3_reward = rewards[t] + np.where(truncated[t], gamma * v(terminal_q[t]), 0.0).astype(
            np.float32
        )
        sbuf.add(obs, actions, sb3_reward, starts, values, log_probs)
        starts = dones[t].astype(np.float32)
    qbuf.compute_targets_and_advantages(torch.as_tensor(v(last_q)), torch.as_tensor(last_q))
    sbuf.compute_returns_and_advantage(torch.as_tensor(v(last_q)), dones[T - 1])
    data: dict[str, Any] = {
        "rewards": rewards,
        "quantiles": quantiles,
        "last_q": last_q,
        "terminated": terminated,
        "truncated": truncated,
        "terminal_q": terminal_q,
        "gamma": np.float64(gamma),
        "lam": np.float64(lam),
    }
    return qbuf, sbuf, data


@pytest.mark.parametrize("beta", [0.0, 0.7])
def test_advantages_equal_maskable_ppo_on_the_same_values(beta: float) -> None:
    qbuf, sbuf, _ = _fill_buffers(beta)
    np.testing.assert_allclose(qbuf.advantages, sbuf.advantages, atol=2e-6, rtol=0)
    np.testing.assert_allclose(qbuf.returns, sbuf.returns, atol=2e-6, rtol=0)
    if beta == 0.0:
        np.testing.assert_array_equal(qbuf.values, qbuf.quantiles.mean(-1))  # V_0 is the mean
        # the mean of the per-quantile targets is the lambda-return
        np.testing.assert_allclose(qbuf.quantile_targets.mean(-1), qbuf.returns, atol=2e-6, rtol=0)


def test_quantile_targets_match_a_hand_computation() -> None:
    qbuf, _, d = _fill_buffers(0.0)
    ref = reference_targets(
        d["rewards"],
        d["quantiles"],
        d["last_q"],
        d["terminated"],
        d["truncated"],
        d["terminal_q"],
        float(d["gamma"]),
        float(d["lam"]),
    )
    np.testing.assert_allclose(qbuf.quantile_targets, ref, atol=2e-6, rtol=0)
    # spot checks: termination keeps the reward only, truncation bootstraps its terminal quantiles
    np.testing.assert_allclose(qbuf.quantile_targets[4, 0], np.full(4, d["rewards"][4, 0]))
    np.testing.assert_allclose(
        qbuf.quantile_targets[2, 0], d["rewards"][2, 0] + 0.9 * d["terminal_q"][2, 0], rtol=1e-6
    )
    # minibatches carry the old quantiles and the targets of the same rows
    (batch,) = list(qbuf.get(None))
    got = np.concatenate([batch.old_quantiles.numpy(), batch.target_quantiles.numpy()], axis=1)
    flat = np.concatenate([d["quantiles"], ref], axis=2).swapaxes(0, 1).reshape(-1, 8)
    np.testing.assert_allclose(got[np.argsort(got[:, 0])], flat[np.argsort(flat[:, 0])], atol=2e-6)


def test_collected_rollout_targets_match_an_independent_computation() -> None:
    """Wiring: stored quantiles are theta(s_t), truncations bootstrap from terminal_observation."""
    env = toy_vec_env()
    model = make_model(
        env, n_steps=12, batch_size=12, gamma=0.9, gae_lambda=0.7, policy_kwargs={"cvar_beta": 0.5}
    )
    recorder = InfoRecorder()
    collect(model, recorder)
    buf = model.rollout_buffer
    assert isinstance(buf, QuantileMaskableDictRolloutBuffer)
    policy = model.policy
    T, N, Q = 12, 3, 8

    def theta(obs: dict[str, np.ndarray]) -> np.ndarray:
        with torch.no_grad():
            return policy.predict_quantiles(obs_as_tensor(obs, torch.device("cpu"))).numpy()

    quantiles = np.stack([theta({k: v[t] for k, v in buf.observations.items()}) for t in range(T)])
    np.testing.assert_allclose(buf.quantiles, quantiles, atol=1e-6)
    np.testing.assert_allclose(
        buf.values, risk_adjusted_value(torch.as_tensor(quantiles), 0.1, 0.5).numpy(), atol=1e-6
    )

    terminated = np.zeros((T, N), dtype=bool)
    truncated = np.zeros((T, N), dtype=bool)
    terminal_q = np.zeros((T, N, Q), dtype=np.float32)
    for t, infos in enumerate(recorder.infos):
        for n, info in enumerate(infos):
            if "terminal_observation" not in info:
                continue
            if info["TimeLimit.truncated"]:
                truncated[t, n] = True
                term_obs = {k: v[None] for k, v in info["terminal_observation"].items()}
                terminal_q[t, n] = theta(term_obs)[0]
            else:
                terminated[t, n] = True
    assert truncated[:, 0].sum() == 2 and terminated[:, 1].sum() == 3 and truncated[:, 2].sum() == 1
    np.testing.assert_array_equal(buf.truncated, truncated)
    np.testing.assert_array_equal(buf.terminated, terminated)
    np.testing.assert_allclose(buf.terminal_quantiles, terminal_q, atol=1e-6)
    assert model._last_obs is not None
    last_q = theta(model._last_obs)
    ref = reference_targets(
        buf.rewards, quantiles, last_q, terminated, truncated, terminal_q, 0.9, 0.7
    )
    np.testing.assert_allclose(buf.quantile_targets, ref, atol=1e-5)
    # the rewards are stored as they came: no bootstrap folded in
    np.testing.assert_array_equal(buf.rewards, np.stack(recorder.rewards))


# ---------------------------------------------------------------- the critic loss


def test_per_sample_loss_and_value_clipping() -> None:
    gen = torch.Generator().manual_seed(0)
    pred = torch.sort(torch.randn(10, 8, generator=gen), dim=-1).values.requires_grad_()
    target = torch.randn(10, 8, generator=gen)
    taus = quantile_midpoints(8)
    per_sample = quantile_huber_loss_per_sample(pred, target, taus, 0.5)
    torch.testing.assert_close(per_sample.mean(), quantile_huber_loss(pred, target, taus, 0.5))

    model = make_model(sentio_env(n_envs=2), value_clip=0.1)
    old = torch.sort(pred.detach() + 0.3 * torch.randn(10, 8, generator=gen), dim=-1).values
    samples: Any = type("S", (), {"target_quantiles": target, "old_quantiles": old})()
    loss, fraction = model._quantile_critic_loss(pred, samples, taus)
    clipped = old + torch.clamp(pred - old, -0.1, 0.1)
    expected = torch.maximum(
        quantile_huber_loss_per_sample(pred, target, taus, 1.0),
        quantile_huber_loss_per_sample(clipped, target, taus, 1.0),
    ).mean()
    torch.testing.assert_close(loss, expected)
    assert 0.0 < fraction < 1.0
    assert torch.all(clipped[:, 1:] >= clipped[:, :-1])  # clipping keeps the quantiles sorted
    loss.backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all()


def test_quantile_head_keeps_its_own_initialisation() -> None:
    policy = make_model(sentio_env(n_envs=2)).policy
    head = policy.value_net
    space = policy.observation_space
    assert isinstance(space, spaces.Dict)
    obs = {
        k: torch.as_tensor(np.stack([s.sample() for _ in range(16)]))
        for k, s in space.spaces.items()
    }
    with torch.no_grad():
        q = policy.predict_quantiles(obs)
    gaps = q[:, 1:] - q[:, :-1]
    assert q.shape == (16, 8) and torch.all(gaps >= 0)
    torch.testing.assert_close(
        gaps, torch.full_like(gaps, 1e-3), atol=5e-4, rtol=0
    )  # not SB3's bias 0
    assert head.increments is not None


# ---------------------------------------------------------------- regime gating


def _gated_policy(gating: bool = True) -> SentioMultiInputPolicy:
    torch.manual_seed(0)
    return SentioMultiInputPolicy(
        dict_obs_space(),
        spaces.Discrete(N_ACTIONS),
        lambda _: 1e-3,
        net_arch=[8],
        regime_gating=gating,
        n_regimes=K if gating else 0,
    )


def _obs(
    batch: int, regime_probs: np.ndarray | None = None, seed: int = 0
) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    state = rng.normal(size=(batch, K + 5)).astype(np.float32)
    state[:, :K] = rng.dirichlet(np.ones(K), size=batch) if regime_probs is None else regime_probs
    window = rng.normal(size=(batch, 2, 3)).astype(np.float32)
    return {"window": torch.as_tensor(window), "state": torch.as_tensor(state)}


def test_one_hot_regime_gives_that_experts_policy() -> None:
    policy = _gated_policy()
    head = policy.action_net
    assert isinstance(head, RegimeGatedLogits)
    for k in range(K):
        obs = _obs(6, np.eye(K, dtype=np.float32)[[k] * 6])
        with torch.no_grad():
            probs = probs_of(policy.get_distribution(obs))
            latent = policy.mlp_extractor.forward_actor(policy.extract_features(obs))  # type: ignore[arg-type]
            expert = torch.softmax(head.expert_logits(latent)[:, k], dim=-1)
        torch.testing.assert_close(probs, expert, atol=1e-6, rtol=0)


def test_gated_policy_is_a_mixture_of_probabilities() -> None:
    policy = _gated_policy()
    obs = _obs(8)
    w = obs["state"][:, :K]
    with torch.no_grad():
        probs = probs_of(policy.get_distribution(obs))
        latent = policy.mlp_extractor.forward_actor(policy.extract_features(obs))  # type: ignore[arg-type]
        experts = torch.softmax(policy.action_net.expert_logits(latent), dim=-1)  # type: ignore[operator]
    torch.testing.assert_close(probs, (w[:, :, None] * experts).sum(1), atol=1e-6, rtol=0)
    # the regime probabilities reach every path: forward, evaluate_actions and predict agree
    masks = torch.ones(8, N_ACTIONS, dtype=torch.bool)
    masks[:, 0] = False
    with torch.no_grad():
        actions, _, logp = policy(obs, action_masks=masks)
        _, logp_eval, _ = policy.evaluate_actions(obs, actions, masks)
        dist = policy.get_distribution(obs, masks)
    torch.testing.assert_close(logp, logp_eval)
    torch.testing.assert_close(dist.log_prob(actions), logp)
    predicted, _ = policy.predict(
        {k: v.numpy() for k, v in obs.items()}, deterministic=True, action_masks=masks.numpy()
    )
    np.testing.assert_array_equal(predicted, probs_of(dist).argmax(-1).numpy())
    # a different regime belief changes the policy
    other = dict(obs, state=obs["state"].clone())
    other["state"][:, :K] = torch.eye(K)[[0] * 8]
    with torch.no_grad():
        assert not torch.allclose(probs_of(policy.get_distribution(other)), probs)
    # a one-hot belief has finite gradients (log 0 inside the logsumexp)
    head = policy.action_net
    out = head(latent.detach().requires_grad_(), torch.eye(K)[[1] * 8])
    out.logsumexp(-1).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in head.parameters() if p.grad is not None)


def test_gating_off_is_the_plain_head() -> None:
    policy = _gated_policy(gating=False)
    assert isinstance(policy.action_net, nn.Linear)
    obs = _obs(5)
    with torch.no_grad():
        probs = probs_of(policy.get_distribution(obs))
        latent = policy.mlp_extractor.forward_actor(policy.extract_features(obs))  # type: ignore[arg-type]
        plain = torch.softmax(policy.action_net(latent), dim=-1)
    torch.testing.assert_close(probs, plain)


def test_invalid_options_are_rejected() -> None:
    space, actions = dict_obs_space(), spaces.Discrete(N_ACTIONS)
    with pytest.raises(ValueError, match="n_regimes >= 1"):
        SentioMultiInputPolicy(space, actions, lambda _: 1e-3, regime_gating=True, n_regimes=0)
    with pytest.raises(ValueError, match="at least n_regimes"):
        SentioMultiInputPolicy(space, actions, lambda _: 1e-3, regime_gating=True, n_regimes=K + 6)
    with pytest.raises(ValueError, match="quantile_critic"):
        SentioMultiInputPolicy(space, actions, lambda _: 1e-3, quantile_critic=False, cvar_beta=0.5)
    with pytest.raises(ValueError, match="huber_kappa"):
        make_model(sentio_env(n_envs=1), huber_kappa=0.0)
    assert not has_train_mode_behaviour(_gated_policy())
    assert has_train_mode_behaviour(nn.MultiheadAttention(4, 2, dropout=0.1))
    assert not has_train_mode_behaviour(nn.MultiheadAttention(4, 2, dropout=0.0))


# ---------------------------------------------------------------- learn, save/load, seeds


def test_learn_on_sentio_vec_env_and_log() -> None:
    model = make_model(
        sentio_env(n_envs=4, mask_session=True, min_hold_bars=2),
        policy_kwargs={"regime_gating": True, "n_regimes": K, "cvar_beta": 0.5, "cvar_alpha": 0.25},
        value_clip=0.2,
        target_kl=0.5,
    )
    model.learn(300)
    assert model.num_timesteps >= 300
    logged = model.logger.name_to_value
    for key in (
        "train/quantile_loss",
        "train/cvar",
        "train/risk_adjusted_value",
        "train/value_clip_fraction",
        "train/first_ratio_max_deviation",
    ):
        assert key in logged and np.isfinite(logged[key]), key
    assert logged["train/cvar"] <= logged["train/quantile_mean"] + 1e-6
    assert logged["train/first_ratio_max_deviation"] < 1e-6


def test_save_load_round_trip(tmp_path: Path) -> None:
    env = sentio_env(n_envs=2)
    model = make_model(env, policy_kwargs={"regime_gating": True, "n_regimes": K, "cvar_beta": 0.3})
    model.learn(64)
    model.save(tmp_path / "model.zip")
    loaded = SentioPPO.load(tmp_path / "model.zip", device="cpu")
    assert isinstance(loaded.policy, SentioMultiInputPolicy)
    assert (
        loaded.policy.regime_gating and loaded.policy.cvar_beta == 0.3 and loaded.huber_kappa == 1.0
    )
    obs = {k: v.numpy() for k, v in _obs(16, seed=3).items()}
    obs["window"] = np.random.default_rng(3).normal(size=(16, 4, 3)).astype(np.float32)
    masks = np.random.default_rng(4).random((16, N_ACTIONS)) < 0.6
    masks[:, 2] = True
    for deterministic in (True, False):
        torch.manual_seed(1)
        a1, _ = model.predict(obs, deterministic=deterministic, action_masks=masks)
        torch.manual_seed(1)
        a2, _ = loaded.predict(obs, deterministic=deterministic, action_masks=masks)
        np.testing.assert_array_equal(a1, a2)
    t_obs = obs_as_tensor(obs, torch.device("cpu"))
    with torch.no_grad():
        torch.testing.assert_close(
            model.policy.predict_quantiles(t_obs), loaded.policy.predict_quantiles(t_obs)
        )
    loaded.set_env(sentio_env(n_envs=2))
    loaded.learn(32)  # a loaded model trains on


def _trained_parameters(seed: int, **kwargs: Any) -> dict[str, torch.Tensor]:
    model = make_model(sentio_env(n_envs=2, seed=0), seed=seed, **kwargs)
    model.learn(2 * 16 * 2)
    return {k: v.clone() for k, v in model.policy.state_dict().items()}


def test_same_seed_same_parameters_on_cpu() -> None:
    kwargs = {"policy_kwargs": {"regime_gating": True, "n_regimes": K, "cvar_beta": 0.5}}
    first, second = _trained_parameters(7, **kwargs), _trained_parameters(7, **kwargs)
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name
    other = _trained_parameters(8, **kwargs)
    assert any(not torch.equal(first[k], other[k]) for k in first)


def test_scalar_critic_matches_maskable_ppo() -> None:
    """quantile_critic=False, no gating, no dropout: MaskablePPO's result for the same seed."""
    options: dict[str, Any] = {
        "n_steps": 16,
        "batch_size": 16,
        "n_epochs": 2,
        "seed": 3,
        "device": "cpu",
    }
    reference = MaskablePPO(
        "MultiInputPolicy", sentio_env(n_envs=2), policy_kwargs={"net_arch": [16]}, **options
    )
    reference.learn(3 * 16 * 2)
    model = SentioPPO(
        "MultiInputPolicy",
        sentio_env(n_envs=2),
        policy_kwargs={"net_arch": [16], "quantile_critic": False},
        **options,
    )
    assert isinstance(model.rollout_buffer, MaskableDictRolloutBuffer)
    assert not isinstance(model.rollout_buffer, QuantileMaskableDictRolloutBuffer)
    model.learn(3 * 16 * 2)
    ref_params = reference.policy.state_dict()
    for name, value in model.policy.state_dict().items():
        torch.testing.assert_close(value, ref_params[name], atol=1e-5, rtol=1e-4, msg=name)


def test_bf16_autocast_path_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA bf16 path, exercised with CPU autocast: heads and losses stay float32."""
    model = make_model(sentio_env(n_envs=2), policy_kwargs={"regime_gating": True, "n_regimes": K})
    monkeypatch.setattr(model, "_autocast", lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    model.learn(2 * 16 * 2)
    ratio = model.first_minibatch_ratio
    assert ratio is not None and ratio.dtype == torch.float32
    assert (ratio - 1).abs().max() < 1e-2
    obs = obs_as_tensor(model._last_obs, torch.device("cpu"))  # type: ignore[arg-type]
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        _, values, logp, q = model.policy.forward_with_critic(obs)
    assert values.dtype == logp.dtype == q.dtype == torch.float32


def test_policy_classes() -> None:
    model = make_model(sentio_env(n_envs=1))
    assert isinstance(model.policy, SentioActorCriticPolicy)
    assert isinstance(model.rollout_buffer, QuantileMaskableDictRolloutBuffer)
    with pytest.raises(RuntimeError, match="scalar critic"):
        SentioMultiInputPolicy(
            dict_obs_space(), spaces.Discrete(N_ACTIONS), lambda _: 1e-3, quantile_critic=False
        ).predict_quantiles(_obs(2))
