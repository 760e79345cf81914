"""Device-resident rollouts: the trading accounts, the rollout and the update on one device.

SB3's on-policy loop steps a numpy ``VecEnv``: per step it copies the observations to the
device, runs one small forward pass, copies the actions back, loops over the infos in
Python, and stores everything in a numpy buffer that is copied to the device again for
every minibatch. Here the accounts are a :class:`~sentio.env.device_env.DeviceVecEnv`
(the torch simulator), and for the whole rollout the observations, masks, actions,
rewards, values and quantiles stay tensors on the training device:

**Rollout** (:func:`collect_rollout`): per step one forward pass of the policy in eval mode
on the current observations (with the action masks for ``maskable_ppo`` and
``sentio_ppo``; plain ``ppo`` acts unmasked, as in SB3), one simulator step, and the
critic of the terminal observations of accounts whose episode was cut (bootstrapped, as
SB3 bootstraps a time-limit end). Nothing is read back to the host per step on a GPU.

**Targets** (:class:`DeviceRolloutBuffer`): GAE and, for the quantile critic, the
per-quantile lambda-targets, with :func:`~sentio.agents.distributional.gae_torch` and
:func:`~sentio.agents.distributional.quantile_lambda_targets_torch` (termination and
truncation kept as flags, the same conventions as
:class:`~sentio.agents.buffers.QuantileMaskableDictRolloutBuffer`; for ``ppo`` and
``maskable_ppo`` this is SB3's "add gamma V(terminal) to the reward" rule written as a
bootstrap, equal to float rounding).

**Update**: for ``ppo`` and ``maskable_ppo`` :func:`~sentio.agents.ppo_update.ppo_update`
(their ``train()`` without distribution objects and without per-minibatch host reads; equal
to it on the same minibatches), for ``sentio_ppo`` its own ``train()``; both read this
buffer, which yields the SB3 buffers' minibatch types, already on the device, in the order
SB3 draws (``np.random.permutation``).

The model is an ordinary SB3 model throughout (``save``/``load``, ``predict``): only the
loop that feeds it differs. :func:`learn_on_device` is the counterpart of SB3's
``learn``: same callbacks at the rollout boundaries, same logging, same step counting.
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator
from typing import Any, NamedTuple

import numpy as np
import torch
from sb3_contrib.common.maskable.buffers import MaskableDictRolloutBufferSamples
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.type_aliases import DictRolloutBufferSamples

from sentio.agents.buffers import QuantileRolloutBufferSamples
from sentio.agents.distributional import gae_torch, quantile_lambda_targets_torch
from sentio.agents.ppo_update import ppo_update
from sentio.env.device_env import DeviceVecEnv

__all__ = ["DeviceRolloutBuffer", "collect_rollout", "learn_on_device", "rollout_kind"]


class _Kind(NamedTuple):
    masked: bool
    """The policy acts on masked distributions (MaskablePPO, SentioPPO)."""
    sentio: bool
    """SentioPPO (``forward_with_critic``; its critic may be quantiles)."""
    n_quantiles: int
    """Quantiles of the critic (0: a scalar value head)."""


def rollout_kind(model: BaseAlgorithm) -> _Kind:
    """What the rollout needs to know about ``model``'s algorithm and policy."""
    from sb3_contrib import MaskablePPO

    from sentio.agents.sentio_ppo import SentioPPO

    sentio = isinstance(model, SentioPPO)
    policy: Any = model.policy
    quantiles = int(policy.n_quantiles) if sentio and policy.quantile_critic else 0
    return _Kind(masked=isinstance(model, MaskablePPO), sentio=sentio, n_quantiles=quantiles)


class DeviceRolloutBuffer:
    """``n_steps`` x ``n_envs`` transitions as tensors on ``device`` (see the module docstring).

    Attributes read by the algorithms' ``train()``: :meth:`get`, ``values`` and
    ``returns`` (numpy copies, for SB3's explained variance), and for the quantile critic
    ``quantiles``, ``quantile_targets`` and ``n_quantiles``.
    """

    def __init__(
        self,
        n_steps: int,
        n_envs: int,
        obs_shapes: dict[str, tuple[int, ...]],
        n_actions: int,
        device: torch.device,
        *,
        kind: _Kind,
        gamma: float,
        gae_lambda: float,
    ) -> None:
        self.n_steps, self.n_envs, self.kind = n_steps, n_envs, kind
        self.buffer_size = n_steps
        self.gamma, self.gae_lambda = gamma, gae_lambda
        self.device = device
        self.n_quantiles = kind.n_quantiles
        shape = (n_steps, n_envs)

        def zeros(*extra: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
            return torch.zeros((*shape, *extra), dtype=dtype, device=device)

        self.observations = {k: zeros(*s) for k, s in obs_shapes.items()}
        self.actions = zeros(dtype=torch.int64)
        self.action_masks = zeros(n_actions, dtype=torch.bool) if kind.masked else None
        self.rewards = zeros()
        self.value_tensor = zeros()
        self.log_probs = zeros()
        self.terminated = zeros(dtype=torch.bool)
        self.truncated = zeros(dtype=torch.bool)
        self.terminal_values = zeros()
        q = kind.n_quantiles
        self.quantiles = zeros(q) if q else None
        self.terminal_quantiles = zeros(q) if q else None
        self.quantile_targets: torch.Tensor | None = None
        self.advantages = zeros()
        self.return_tensor = zeros()
        self.values = np.zeros(shape, dtype=np.float32)
        self.returns = np.zeros(shape, dtype=np.float32)

    def add(
        self,
        t: int,
        obs: dict[str, torch.Tensor],
        actions: torch.Tensor,
        masks: torch.Tensor | None,
        rewards: torch.Tensor,
        values: torch.Tensor,
        log_probs: torch.Tensor,
        terminated: torch.Tensor,
        truncated: torch.Tensor,
        terminal_values: torch.Tensor | None,
        quantiles: torch.Tensor | None = None,
        terminal_quantiles: torch.Tensor | None = None,
    ) -> None:
        """Store step ``t`` of every environment (``truncated`` excludes ``terminated``).

        ``terminal_values`` / ``terminal_quantiles``: the critic of the observations before
        the restarts (read on the truncated accounts only); None when no account finished.
        """
        for k, v in obs.items():
            self.observations[k][t] = v
        self.actions[t] = actions.reshape(self.n_envs)
        if self.action_masks is not None and masks is not None:
            self.action_masks[t] = masks
        self.rewards[t] = rewards
        self.value_tensor[t] = values.reshape(self.n_envs).float()
        self.log_probs[t] = log_probs.reshape(self.n_envs).float()
        self.terminated[t] = terminated
        trunc = truncated & ~terminated
        self.truncated[t] = trunc
        if terminal_values is None:
            self.terminal_values[t] = 0.0
        else:
            tv = terminal_values.reshape(self.n_envs).float()
            self.terminal_values[t] = torch.where(trunc, tv, 0.0)
        if self.quantiles is not None and quantiles is not None:
            self.quantiles[t] = quantiles.float().reshape(self.n_envs, -1)
            assert self.terminal_quantiles is not None
            if terminal_quantiles is None:
                self.terminal_quantiles[t] = 0.0
            else:
                tq = terminal_quantiles.float().reshape(self.n_envs, -1)
                self.terminal_quantiles[t] = torch.where(trunc[:, None], tq, 0.0)

    def compute(self, last_values: torch.Tensor, last_quantiles: torch.Tensor | None) -> None:
        """Advantages, returns and (quantile critic) the per-quantile targets."""
        term, trunc = self.terminated, self.truncated
        next_values = torch.empty_like(self.value_tensor)
        next_values[:-1] = self.value_tensor[1:]
        next_values[-1] = last_values.reshape(self.n_envs).float()
        next_values = torch.where(trunc, self.terminal_values, next_values)
        next_values = torch.where(term, 0.0, next_values)
        self.advantages, self.return_tensor = gae_torch(
            self.rewards, self.value_tensor, next_values, term, trunc, self.gamma, self.gae_lambda
        )
        if self.quantiles is not None:
            assert self.terminal_quantiles is not None and last_quantiles is not None
            nq = torch.empty_like(self.quantiles)
            nq[:-1] = self.quantiles[1:]
            nq[-1] = last_quantiles.float().reshape(self.n_envs, -1)
            nq = torch.where(trunc[..., None], self.terminal_quantiles, nq)
            nq = torch.where(term[..., None], 0.0, nq)
            self.quantile_targets = quantile_lambda_targets_torch(
                self.rewards, nq, term, trunc, self.gamma, self.gae_lambda
            )
        # host copies for SB3's explained variance (once per rollout)
        self.values = self.value_tensor.cpu().numpy()
        self.returns = self.return_tensor.cpu().numpy()

    def get(self, batch_size: int | None = None) -> Generator[Any, None, None]:
        """Minibatches over a random permutation of the transitions (drawn as SB3 draws it)."""
        total = self.n_steps * self.n_envs
        order = torch.as_tensor(np.random.permutation(total), device=self.device)
        size = total if batch_size is None else batch_size

        def flat(v: torch.Tensor) -> torch.Tensor:  # environment-major, as SB3 flattens
            return v.transpose(0, 1).reshape(total, *v.shape[2:])

        obs_flat = {k: flat(v) for k, v in self.observations.items()}
        actions = flat(self.actions)
        old_values = flat(self.value_tensor)
        old_log_prob = flat(self.log_probs)
        advantages = flat(self.advantages)
        returns = flat(self.return_tensor)
        masks = None if self.action_masks is None else flat(self.action_masks)
        quantiles = targets = None
        if self.quantiles is not None:
            assert self.quantile_targets is not None
            quantiles = flat(self.quantiles)
            targets = flat(self.quantile_targets)
        for start in range(0, total, size):
            idx = order[start : start + size]
            obs = {k: v[idx] for k, v in obs_flat.items()}
            common = (
                obs,
                actions[idx],
                old_values[idx],
                old_log_prob[idx],
                advantages[idx],
                returns[idx],
            )
            if quantiles is not None:
                assert masks is not None and targets is not None
                yield QuantileRolloutBufferSamples(
                    *common, masks[idx], quantiles[idx], targets[idx]
                )
            elif masks is not None:
                yield MaskableDictRolloutBufferSamples(*common, masks[idx])
            else:
                yield DictRolloutBufferSamples(*common)


def _autocast(model: BaseAlgorithm) -> contextlib.AbstractContextManager[Any]:
    make = getattr(model, "_autocast", None)
    return make() if make is not None else contextlib.nullcontext()


def _critic(
    model: BaseAlgorithm, kind: _Kind, obs: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(values (N,), quantiles (N, Q) or None)`` of ``obs``."""
    policy: Any = model.policy
    with torch.no_grad(), _autocast(model):
        if kind.sentio:
            critic = policy.predict_critic(obs)
            values = policy.values_from_critic(critic)
            return values.float().reshape(-1), critic.float() if kind.n_quantiles else None
        return policy.predict_values(obs).float().reshape(-1), None


def collect_rollout(
    model: BaseAlgorithm,
    env: DeviceVecEnv,
    buffer: DeviceRolloutBuffer,
    obs: dict[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """Fill ``buffer`` with ``n_steps`` steps of every account from ``obs``; the next observations.

    Adds the steps to ``model.num_timesteps`` and computes the targets.
    """
    kind = buffer.kind
    policy: Any = model.policy
    policy.set_training_mode(False)
    for t in range(buffer.n_steps):
        masks = env.action_masks() if kind.masked else None
        with torch.no_grad(), _autocast(model):
            if kind.sentio:
                actions, values, log_probs, critic = policy.forward_with_critic(
                    obs, action_masks=masks
                )
            elif kind.masked:
                actions, values, log_probs = policy(obs, action_masks=masks)
                critic = None
            else:
                actions, values, log_probs = policy(obs)
                critic = None
        actions = actions.reshape(-1)
        step = env.step(actions)
        terminal_values = terminal_quantiles = None
        if step.final is not None:
            terminal_values, terminal_quantiles = _critic(model, kind, step.final)
        buffer.add(
            t,
            obs,
            actions,
            masks,
            step.reward,
            values,
            log_probs,
            step.terminated,
            step.truncated,
            terminal_values,
            critic if kind.n_quantiles else None,
            terminal_quantiles,
        )
        obs = step.obs
        model.num_timesteps += env.num_envs
    last_values, last_quantiles = _critic(model, kind, obs)
    buffer.compute(last_values, last_quantiles)
    return obs


def learn_on_device(
    model: BaseAlgorithm,
    env: DeviceVecEnv,
    total_timesteps: int,
    *,
    callback: BaseCallback,
    reset_num_timesteps: bool = True,
    tb_log_name: str = "run",
    on_rollout: Any = None,
) -> BaseAlgorithm:
    """SB3's ``learn`` for ``model`` with the rollouts of ``env`` on the device.

    ``callback`` sees ``on_training_start``, ``on_rollout_start`` (before each rollout),
    ``on_rollout_end`` and ``on_training_end``, as in SB3 (not ``on_step``: nothing is
    read back per step). ``on_rollout(count, mean)`` is called before ``on_rollout_end``
    with the training episodes that ended in the rollout and their mean raw log return.
    When ``reset_num_timesteps`` is False the accounts continue where ``env`` stands (a
    restored checkpoint).
    """
    n_steps = int(getattr(model, "n_steps"))  # noqa: B009
    if env.num_envs != model.n_envs:
        raise ValueError(
            f"the model was built for {model.n_envs} environments, the device env has {env.num_envs}"
        )
    total, callback = model._setup_learn(
        total_timesteps, callback, reset_num_timesteps, tb_log_name, False
    )
    callback.on_training_start(locals(), globals())
    obs = env.reset() if reset_num_timesteps else env.observe()
    space: Any = model.observation_space
    buffer = DeviceRolloutBuffer(
        n_steps,
        env.num_envs,
        {k: tuple(s.shape) for k, s in space.spaces.items()},
        int(getattr(model.action_space, "n")),  # noqa: B009
        env.device,
        kind=rollout_kind(model),
        gamma=float(getattr(model, "gamma")),  # noqa: B009
        gae_lambda=float(getattr(model, "gae_lambda")),  # noqa: B009
    )
    sb3_buffer = getattr(model, "rollout_buffer", None)
    iteration = 0
    try:
        while model.num_timesteps < total:
            callback.on_rollout_start()
            obs = collect_rollout(model, env, buffer, obs)
            if on_rollout is not None:
                on_rollout(*env.pop_episode_returns())
            callback.on_rollout_end()
            iteration += 1
            model._update_current_progress_remaining(model.num_timesteps, total)
            getattr(model, "dump_logs")(iteration)  # noqa: B009
            model.rollout_buffer = buffer  # type: ignore[attr-defined]
            if buffer.kind.sentio:
                getattr(model, "train")()  # noqa: B009  # SentioPPO's own update
            else:
                ppo_update(model, masked=buffer.kind.masked)
    finally:
        model.rollout_buffer = sb3_buffer  # type: ignore[attr-defined]
    callback.on_training_end()
    return model
