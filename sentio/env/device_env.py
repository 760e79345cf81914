"""Training episodes on the device: N accounts of the torch simulator with automatic restarts.

:class:`DeviceVecEnv` is what :class:`~sentio.env.vec_env.SentioVecEnv` is for SB3, for
the device-resident rollout (:mod:`sentio.agents.device_rollout`): episodes are drawn
uniformly from :func:`~sentio.env.episodes.candidate_episodes` of the fold's training
ranges (never across a range, never into a test block), a finished account restarts at
once on a new episode, and everything stays a tensor on the device. Differences from the
SB3 environment, all to avoid host round trips:

* the episode sampler is a ``torch.Generator`` on the device; every step draws one
  candidate per account and only the finished accounts use theirs (a fixed amount of
  work per step, no data-dependent shapes);
* :meth:`step` returns the observation *before* the restarts (``final``: for a truncated
  account its terminal observation, which the learner bootstraps from) beside the one
  after; on the CPU ``final`` is only gathered when an account finished;
* the finished episodes' raw log returns are summed on the device
  (:meth:`pop_episode_returns` reads them once per rollout).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from sentio.env.episodes import candidate_episodes
from sentio.env.market import MarketData
from sentio.env.simulator import EnvParams
from sentio.env.torch_simulator import TorchSimulator

__all__ = ["DeviceStep", "DeviceVecEnv"]


@dataclass
class DeviceStep:
    """One step of every account (tensors on the device)."""

    obs: dict[str, torch.Tensor]
    """Observations after the restarts (what the policy sees next)."""
    final: dict[str, torch.Tensor] | None
    """Observations before the restarts (a finished account's terminal observation);
    None when no account finished and the device is the CPU."""
    reward: torch.Tensor
    """float32 rewards times the reward scale."""
    terminated: torch.Tensor
    truncated: torch.Tensor


class DeviceVecEnv:
    """``n_envs`` training accounts on ``device`` (see the module docstring).

    Args:
        market: aligned arrays of one fold.
        params: the trading model.
        ranges: the fold's training ranges (half-open market-row ranges).
        n_envs: number of accounts.
        device: where the accounts live.
        seed: seed of the episode sampler.
        reward_scale: the learner's rewards are the simulator's times this.
        sync_free: never read a value back per step (gather the terminal observations every
            step); default: off on the CPU, where reading back costs nothing and skipping
            the gather when no account finished is cheaper, on elsewhere. Both give the same
            steps.
    """

    def __init__(
        self,
        market: MarketData,
        params: EnvParams,
        ranges: Sequence[tuple[int, int]],
        n_envs: int,
        *,
        device: torch.device | str = "cpu",
        seed: int = 0,
        reward_scale: float = 1.0,
        sync_free: bool | None = None,
    ) -> None:
        if not (reward_scale > 0 and math.isfinite(reward_scale)):
            raise ValueError(f"reward_scale must be a positive number, got {reward_scale}")
        self.device = torch.device(device)
        self.params = params
        self.num_envs = n_envs
        self.reward_scale = float(reward_scale)
        self.sim = TorchSimulator(market, params, n_envs, device=self.device)
        starts, ends = candidate_episodes(
            market, ranges, window=params.window, episode_sessions=params.episode_sessions
        )
        self.starts = torch.as_tensor(starts, device=self.device)
        self.ends = torch.as_tensor(ends, device=self.device)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(int(seed))
        self._log_cash = math.log(params.initial_cash)
        self._sync_free = self.device.type != "cpu" if sync_free is None else sync_free
        self._ended_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self._ended_count = torch.zeros((), dtype=torch.int64, device=self.device)

    # ------------------------------------------------------------------ episodes

    def _draw(self) -> tuple[torch.Tensor, torch.Tensor]:
        i = torch.randint(
            0, self.starts.numel(), (self.num_envs,), generator=self.generator, device=self.device
        )
        return self.starts[i], self.ends[i]

    def reset(self) -> dict[str, torch.Tensor]:
        """Every account on a freshly drawn episode; the observations."""
        start, end = self._draw()
        self.sim.reset(start, end)
        return self.sim.observe()

    def observe(self) -> dict[str, torch.Tensor]:
        """The current observations (after a restore: where the saved training stood)."""
        return self.sim.observe()

    def action_masks(self) -> torch.Tensor:
        """``(N, A)`` bool: the allowed actions of every account."""
        return self.sim.action_masks()

    def step(self, actions: torch.Tensor) -> DeviceStep:
        """Step every account; finished ones restart on a newly drawn episode."""
        res = self.sim.step(actions)
        done = res.terminated | res.truncated
        final = None
        if self._sync_free or bool(done.any()):
            final = self.sim.observe()
            log_return = torch.log(torch.clamp(res.equity, min=1e-300)) - self._log_cash
            self._ended_sum += torch.where(done, log_return, 0.0).sum()
            self._ended_count += done.sum()
            start, end = self._draw()
            self.sim.reset(start, end, where=done)
        else:
            self._draw()  # the same draws whether or not an account finished
        reward = (res.reward * self.reward_scale).to(torch.float32)
        return DeviceStep(
            obs=self.sim.observe(),
            final=final,
            reward=reward,
            terminated=res.terminated,
            truncated=res.truncated,
        )

    def pop_episode_returns(self) -> tuple[int, float | None]:
        """Episodes finished since the last call and their mean raw log return (None if none)."""
        count = int(self._ended_count.item())
        total = float(self._ended_sum.item())
        self._ended_sum.zero_()
        self._ended_count.zero_()
        return count, (total / count if count else None)

    # ------------------------------------------------------------------ checkpoints

    def get_state(self) -> dict[str, Any]:
        """The accounts, the sampler and the pending episode statistics (for checkpoints)."""
        return {
            "accounts": self.sim.get_state(),
            "sampler": self.generator.get_state(),
            "ended": (float(self._ended_sum.item()), int(self._ended_count.item())),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`get_state`."""
        self.sim.set_state(state["accounts"])
        self.generator.set_state(state["sampler"])
        total, count = state["ended"]
        self._ended_sum.fill_(total)
        self._ended_count.fill_(count)
