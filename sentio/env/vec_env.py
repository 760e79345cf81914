"""A stable-baselines3 ``VecEnv`` that steps N trading accounts at once with array operations.

Episodes are sampled uniformly from :func:`~sentio.env.episodes.candidate_episodes` of the
fold's training ranges. A finished account (terminated or truncated) is reset at once to a
new episode; its last observation is in ``infos[i]["terminal_observation"]`` and a
time-limit end sets ``infos[i]["TimeLimit.truncated"]``, the way SB3 bootstraps.
``action_masks()`` returns the ``(N, A)`` allowed actions that sb3-contrib's MaskablePPO
reads (through ``env_method("action_masks")``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from stable_baselines3.common.vec_env import VecEnv
from stable_baselines3.common.vec_env.base_vec_env import VecEnvIndices, VecEnvStepReturn

from sentio.env.episodes import candidate_episodes, sample_episodes
from sentio.env.market import MarketData
from sentio.env.simulator import (
    STATE_FEATURES,
    TERMINATION,
    BatchSimulator,
    EnvParams,
    layer_names,
)

__all__ = ["SentioVecEnv", "observation_space"]


def observation_space(market: MarketData, params: EnvParams) -> spaces.Dict:
    """``{"window": (L, F), "state": (K + 5,)}`` float32 boxes (see :mod:`.simulator`).

    Unbounded: features are clipped by the normaliser, the portfolio state is not bounded
    by construction (an unrealised return, a drawdown).
    """
    return spaces.Dict(
        {
            "window": spaces.Box(
                -np.inf, np.inf, shape=(params.window, market.n_features), dtype=np.float32
            ),
            "state": spaces.Box(
                -np.inf, np.inf, shape=(market.n_regimes + len(STATE_FEATURES),), dtype=np.float32
            ),
        }
    )


class SentioVecEnv(VecEnv):
    """N trading environments in one numpy simulator.

    Args:
        market: aligned arrays of one fold.
        params: the trading model (:meth:`EnvParams.from_config`).
        ranges: the fold's training ranges as half-open market-row ranges.
        n_envs: number of accounts.
        seed: seed of the episode sampler.
        reward_scale: the rewards handed to the learner are the simulator's (per-bar log
            returns of equity) times this (``agent.reward_scale``); the infos of a
            finished episode carry its raw log return (``episode_log_return``).
    """

    render_mode = None

    def __init__(
        self,
        market: MarketData,
        params: EnvParams,
        ranges: Sequence[tuple[int, int]],
        n_envs: int,
        seed: int | None = 0,
        reward_scale: float = 1.0,
    ) -> None:
        if not (reward_scale > 0 and np.isfinite(reward_scale)):
            raise ValueError(f"reward_scale must be a positive number, got {reward_scale}")
        self.reward_scale = float(reward_scale)
        self.sim = BatchSimulator(market, params, n_envs)
        self.params = params
        self.starts, self.ends = candidate_episodes(
            market, ranges, window=params.window, episode_sessions=params.episode_sessions
        )
        self.rng = np.random.default_rng(seed)
        self._actions = np.zeros(n_envs, dtype=np.int64)
        super().__init__(
            n_envs, observation_space(market, params), spaces.Discrete(params.n_actions)
        )
        self.last_result: Any = None

    # ------------------------------------------------------------------ VecEnv API

    def _new_episodes(self, which: np.ndarray) -> None:
        s, e = sample_episodes(self.starts, self.ends, which.size, self.rng)
        self.sim.reset(which, s, e)

    def reset(self) -> dict[str, np.ndarray]:
        """Start every account on a freshly sampled episode; the observations."""
        seeds = [s for s in self._seeds if s is not None]
        if seeds:
            self.rng = np.random.default_rng(seeds[0])
        self._reset_seeds()
        self._reset_options()
        self._new_episodes(np.arange(self.num_envs))
        return self.sim.observe()

    def step_async(self, actions: np.ndarray) -> None:
        """Store the actions of the next :meth:`step_wait`."""
        self._actions = np.asarray(actions, dtype=np.int64).reshape(self.num_envs)

    def step_wait(self) -> VecEnvStepReturn:
        """Step every account; finished ones restart on a new episode (SB3 auto-reset)."""
        res = self.sim.step(self._actions)
        self.last_result = res
        done = res.terminated | res.truncated
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        if done.any():
            which = np.flatnonzero(done)
            terminal = self.sim.observe(which)
            for j, i in enumerate(which):
                info = infos[i]
                info["terminal_observation"] = {k: v[j] for k, v in terminal.items()}
                info["TimeLimit.truncated"] = bool(res.truncated[i])
                info["termination"] = TERMINATION[int(res.termination[i])]
                info["episode_equity"] = float(res.equity[i])
                info["episode_log_return"] = float(
                    np.log(max(res.equity[i], 1e-300) / self.params.initial_cash)
                )
            self._new_episodes(which)
        obs = self.sim.observe()
        return obs, (res.reward * self.reward_scale).astype(np.float32), done, infos

    def close(self) -> None:
        """Nothing to release."""

    def get_state(self) -> dict[str, Any]:
        """Everything a resumed training needs to continue these accounts mid-episode: the
        simulator's accounts, the pending actions and the episode sampler."""
        return {
            "accounts": self.sim.get_state(),
            "actions": self._actions.copy(),
            "sampler": self.rng.bit_generator.state,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`get_state`."""
        self.sim.set_state(state["accounts"])
        self._actions = np.asarray(state["actions"], dtype=np.int64).copy()
        self.rng.bit_generator.state = state["sampler"]

    def action_masks(self) -> np.ndarray:
        """``(N, A)`` bool: the allowed actions of every account."""
        return self.sim.action_masks()

    def mask_reasons(self) -> list[dict[float, list[str]]]:
        """Per account: each blocked action's exposure and the layers that block it."""
        bits = self.sim.blocked_layers()
        grid = self.params.grid
        return [
            {float(grid[a]): layer_names(int(row[a])) for a in np.flatnonzero(row)} for row in bits
        ]

    def _indices(self, indices: VecEnvIndices) -> list[int]:
        return list(self._get_indices(indices))

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        """An attribute of this environment, repeated per account (``action_masks``: rows)."""
        if attr_name == "action_masks":
            return [self.action_masks] * len(self._indices(indices))
        if attr_name == "render_mode":
            return [None] * len(self._indices(indices))
        value = getattr(self, attr_name)
        return [value] * len(self._indices(indices))

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        """Set an attribute of this environment (shared by all accounts)."""
        setattr(self, attr_name, value)

    def env_method(
        self,
        method_name: str,
        *method_args: Any,
        indices: VecEnvIndices = None,
        **method_kwargs: Any,
    ) -> list[Any]:
        """``action_masks`` returns one row per account; other methods are called once."""
        idx = self._indices(indices)
        if method_name == "action_masks":
            masks = self.action_masks()
            return [masks[i] for i in idx]
        result = getattr(self, method_name)(*method_args, **method_kwargs)
        return [result] * len(idx)

    def env_is_wrapped(
        self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None
    ) -> list[bool]:
        """No account is wrapped."""
        return [False] * len(self._indices(indices))

    def seed(self, seed: int | None = None) -> Sequence[int | None]:
        """Seed the episode sampler."""
        self.rng = np.random.default_rng(seed)
        return [seed] * self.num_envs

    def has_attr(self, attr_name: str) -> bool:
        """Whether the environment has ``attr_name``."""
        return attr_name in ("action_masks", "render_mode") or hasattr(self, attr_name)

    def _get_indices(self, indices: VecEnvIndices) -> Iterable[int]:
        if indices is None:
            return range(self.num_envs)
        if isinstance(indices, int):
            return [indices]
        return indices
