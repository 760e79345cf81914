"""Rollout buffers of Sentio PPO: sb3-contrib's maskable buffers plus the quantile critic's data.

Besides what ``MaskableRolloutBuffer`` / ``MaskableDictRolloutBuffer`` keep (observations,
actions, masks, rewards, episode starts, values, behaviour log-probabilities), the quantile
buffers store per step ``t`` and environment ``n``:

* ``quantiles[t, n]`` -- ``theta(s_t)``, shape ``(N,)``, from the same forward pass that
  chose the action (eval mode, the behaviour policy); ``values[t, n]`` is their
  risk-adjusted value ``V_beta`` (what SB3 calls the value);
* ``terminated[t, n]`` / ``truncated[t, n]`` -- how step ``t`` ended its episode, if it did;
* ``terminal_quantiles[t, n]`` / ``terminal_values[t, n]`` -- for a truncated step, the
  critic's quantiles and ``V_beta`` of the episode's final observation
  (``infos[n]["terminal_observation"]``); zero otherwise;
* ``rewards[t, n]`` -- the environment's reward as it came. Unlike SB3's scalar path, the
  bootstrap value of a truncated episode is *not* folded into the reward: the truncation is
  kept as a flag, and both the scalar advantages and the quantile targets bootstrap from the
  terminal observation through :func:`~sentio.agents.distributional.gae` and
  :func:`~sentio.agents.distributional.quantile_lambda_targets` (so nothing is counted
  twice, and each quantile bootstraps from its own ``theta_i``).

:meth:`compute_targets_and_advantages` builds the state after every step -- ``s_{t+1}`` of
the same episode for a step that is not done (its stored quantiles/values at ``t + 1``), the
terminal observation for a truncated step, the observation after the rollout for the last
step -- and fills ``advantages`` / ``returns`` (GAE on ``V_beta``; with ``beta = 0``
MaskablePPO's advantages on the same values) and ``quantile_targets`` ``(T, n_envs, N)``.
Minibatches (:class:`QuantileRolloutBufferSamples`) carry ``old_quantiles`` and
``target_quantiles`` on top of sb3-contrib's fields; the permutation is drawn exactly as
sb3-contrib draws it.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, NamedTuple

import numpy as np
import torch
from sb3_contrib.common.maskable.buffers import MaskableDictRolloutBuffer, MaskableRolloutBuffer
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.type_aliases import TensorDict
from stable_baselines3.common.vec_env import VecNormalize

from sentio.agents.distributional import gae, quantile_lambda_targets

__all__ = [
    "QuantileMaskableDictRolloutBuffer",
    "QuantileMaskableRolloutBuffer",
    "QuantileRolloutBufferSamples",
]


class QuantileRolloutBufferSamples(NamedTuple):
    """One minibatch: sb3-contrib's maskable samples plus the quantile critic's tensors."""

    observations: torch.Tensor | TensorDict
    actions: torch.Tensor
    old_values: torch.Tensor
    old_log_prob: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    action_masks: torch.Tensor
    old_quantiles: torch.Tensor
    target_quantiles: torch.Tensor


class _QuantileStorage(RolloutBuffer):
    """The quantile fields and their computation, mixed into a maskable buffer class."""

    n_quantiles: int
    quantiles: np.ndarray
    terminal_quantiles: np.ndarray
    terminal_values: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    quantile_targets: np.ndarray

    def _init_quantiles(self, n_quantiles: int) -> None:
        if n_quantiles < 1:
            raise ValueError(f"n_quantiles must be at least 1, got {n_quantiles}")
        self.n_quantiles = n_quantiles

    def reset(self) -> None:
        shape = (self.buffer_size, self.n_envs)
        self.quantiles = np.zeros((*shape, self.n_quantiles), dtype=np.float32)
        self.terminal_quantiles = np.zeros((*shape, self.n_quantiles), dtype=np.float32)
        self.terminal_values = np.zeros(shape, dtype=np.float32)
        self.terminated = np.zeros(shape, dtype=bool)
        self.truncated = np.zeros(shape, dtype=bool)
        self.quantile_targets = np.zeros((*shape, self.n_quantiles), dtype=np.float32)
        super().reset()

    def add(  # type: ignore[override]
        self,
        obs: np.ndarray | dict[str, np.ndarray],
        action: np.ndarray,
        reward: np.ndarray,
        episode_start: np.ndarray,
        value: torch.Tensor,
        log_prob: torch.Tensor,
        *,
        action_masks: np.ndarray | None = None,
        quantiles: torch.Tensor,
        terminated: np.ndarray,
        truncated: np.ndarray,
        terminal_quantiles: np.ndarray,
        terminal_values: np.ndarray,
    ) -> None:
        """Store one step of every environment.

        Args:
            obs, action, episode_start, log_prob, action_masks: as sb3-contrib's buffers.
            reward: the environment's rewards, ``(n_envs,)``, *without* a bootstrap folded in.
            value: ``V_beta(s_t)``, ``(n_envs, 1)``.
            quantiles: ``theta(s_t)``, ``(n_envs, N)``.
            terminated: ``(n_envs,)`` bool, the step reached a true terminal state.
            truncated: ``(n_envs,)`` bool, the episode was cut; its final observation's
                quantiles/value are ``terminal_quantiles`` / ``terminal_values``.
            terminal_quantiles: ``(n_envs, N)`` (rows of steps that are not truncated ignored).
            terminal_values: ``(n_envs,)`` (entries of steps that are not truncated ignored).
        """
        term = np.asarray(terminated, dtype=bool).reshape(self.n_envs)
        trunc = np.asarray(truncated, dtype=bool).reshape(self.n_envs) & ~term
        self.quantiles[self.pos] = (
            quantiles.detach().to(torch.float32).cpu().numpy().reshape(self.n_envs, -1)
        )
        self.terminated[self.pos] = term
        self.truncated[self.pos] = trunc
        tq = np.asarray(terminal_quantiles, dtype=np.float32).reshape(self.n_envs, self.n_quantiles)
        tv = np.asarray(terminal_values, dtype=np.float32).reshape(self.n_envs)
        self.terminal_quantiles[self.pos] = np.where(trunc[:, None], tq, 0.0)
        self.terminal_values[self.pos] = np.where(trunc, tv, 0.0)
        super().add(obs, action, reward, episode_start, value, log_prob, action_masks=action_masks)  # type: ignore[call-arg, arg-type]

    def compute_returns_and_advantage(self, last_values: torch.Tensor, dones: np.ndarray) -> None:
        """Not used by the quantile buffers: call :meth:`compute_targets_and_advantages`."""
        raise TypeError("a quantile rollout buffer computes with compute_targets_and_advantages()")

    def next_state_arrays(
        self, last_values: np.ndarray, last_quantiles: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(next_values (T, n_envs), next_quantiles (T, n_envs, N))`` of the state after each step.

        Not done: the stored entry at ``t + 1`` (or ``last_*`` at ``T - 1``); truncated: the
        terminal observation's; terminated: 0 (never bootstrapped).
        """
        next_values = np.empty_like(self.values)
        next_quantiles = np.empty_like(self.quantiles)
        next_values[:-1], next_quantiles[:-1] = self.values[1:], self.quantiles[1:]
        next_values[-1] = np.asarray(last_values, dtype=np.float32).reshape(self.n_envs)
        next_quantiles[-1] = np.asarray(last_quantiles, dtype=np.float32).reshape(
            self.n_envs, self.n_quantiles
        )
        next_values = np.where(self.truncated, self.terminal_values, next_values)
        next_quantiles = np.where(
            self.truncated[..., None], self.terminal_quantiles, next_quantiles
        )
        next_values = np.where(self.terminated, 0.0, next_values).astype(np.float32)
        next_quantiles = np.where(self.terminated[..., None], 0.0, next_quantiles).astype(
            np.float32
        )
        return next_values, next_quantiles

    def compute_targets_and_advantages(
        self, last_values: torch.Tensor | np.ndarray, last_quantiles: torch.Tensor | np.ndarray
    ) -> None:
        """Fill ``advantages``, ``returns`` and ``quantile_targets`` after the last :meth:`add`.

        Args:
            last_values: ``V_beta`` of the observations after the rollout, ``(n_envs,)`` or
                ``(n_envs, 1)``.
            last_quantiles: their quantiles, ``(n_envs, N)``.
        """
        next_values, next_quantiles = self.next_state_arrays(
            _numpy(last_values), _numpy(last_quantiles)
        )
        advantages, returns = gae(
            self.rewards,
            self.values,
            next_values,
            self.terminated,
            self.truncated,
            self.gamma,
            self.gae_lambda,
        )
        self.advantages = advantages.astype(np.float32, copy=False)
        self.returns = returns.astype(np.float32, copy=False)
        self.quantile_targets = quantile_lambda_targets(
            self.rewards,
            next_quantiles,
            self.terminated,
            self.truncated,
            self.gamma,
            self.gae_lambda,
        ).astype(np.float32, copy=False)

    def get(  # type: ignore[override]
        self, batch_size: int | None = None
    ) -> Generator[QuantileRolloutBufferSamples, None, None]:
        """Minibatches over a random permutation (drawn as sb3-contrib draws it)."""
        if not self.generator_ready:
            self.quantiles = self.swap_and_flatten(self.quantiles)
            self.quantile_targets = self.swap_and_flatten(self.quantile_targets)
        yield from super().get(batch_size)  # type: ignore[misc]

    def _get_samples(  # type: ignore[override]
        self, batch_inds: np.ndarray, env: VecNormalize | None = None
    ) -> QuantileRolloutBufferSamples:
        base: Any = super()._get_samples(batch_inds)  # sb3-contrib's maskable samples
        return QuantileRolloutBufferSamples(
            observations=base.observations,
            actions=base.actions,
            old_values=base.old_values,
            old_log_prob=base.old_log_prob,
            advantages=base.advantages,
            returns=base.returns,
            action_masks=base.action_masks,
            old_quantiles=self.to_torch(self.quantiles[batch_inds]),
            target_quantiles=self.to_torch(self.quantile_targets[batch_inds]),
        )


def _numpy(x: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to(torch.float32).cpu().numpy()
    return np.asarray(x, dtype=np.float32)


class QuantileMaskableRolloutBuffer(_QuantileStorage, MaskableRolloutBuffer):  # type: ignore[misc]
    """``MaskableRolloutBuffer`` (array observations) with the quantile critic's data.

    Args:
        buffer_size, observation_space, action_space, device, gae_lambda, gamma, n_envs:
            as sb3-contrib's ``MaskableRolloutBuffer``.
        n_quantiles: number ``N`` of critic quantiles.
    """

    def __init__(
        self,
        buffer_size: int,
        observation_space: Any,
        action_space: Any,
        device: torch.device | str = "auto",
        gae_lambda: float = 1,
        gamma: float = 0.99,
        n_envs: int = 1,
        n_quantiles: int = 32,
    ) -> None:
        self._init_quantiles(n_quantiles)
        MaskableRolloutBuffer.__init__(
            self, buffer_size, observation_space, action_space, device, gae_lambda, gamma, n_envs
        )


class QuantileMaskableDictRolloutBuffer(_QuantileStorage, MaskableDictRolloutBuffer):  # type: ignore[misc]
    """``MaskableDictRolloutBuffer`` (Dict observations) with the quantile critic's data.

    Args:
        buffer_size, observation_space, action_space, device, gae_lambda, gamma, n_envs:
            as sb3-contrib's ``MaskableDictRolloutBuffer``.
        n_quantiles: number ``N`` of critic quantiles.
    """

    def __init__(
        self,
        buffer_size: int,
        observation_space: Any,
        action_space: Any,
        device: torch.device | str = "auto",
        gae_lambda: float = 1,
        gamma: float = 0.99,
        n_envs: int = 1,
        n_quantiles: int = 32,
    ) -> None:
        self._init_quantiles(n_quantiles)
        MaskableDictRolloutBuffer.__init__(
            self, buffer_size, observation_space, action_space, device, gae_lambda, gamma, n_envs
        )
