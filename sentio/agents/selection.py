"""Model selection on a validation tail of a fold's training rows: the best checkpoint, or none.

With more steps PPO fits the noise of a fold's finite training rows as readily as an edge
(``benchmarks/README.md#learning``: 200,000 steps beat the trend rule on a planted edge and
lost significantly on a random walk). So the latest ``train.validation_fraction`` of the
fold's training episodes are held out (:func:`split_validation`): the agent never trains
on them, the reward scale is computed without them, and they lie before the fold's test
block in a walk-forward split (the test block is never read; the fold's feature
normaliser and regime model are fitted on all of its training rows, the held-out tail
included: the agent's weights are what the holdout keeps clean). Every
``train.validation_every`` steps and at the end of training, the current policy is run
deterministically over every held-out episode at once (:func:`validation_returns`: one
account per episode of the training simulator in backtest mode, with the same fills, costs,
masks and breaker as the backtest; flat at the close, so the sessions are independent) and
scored by the t statistic of its per-episode log returns (:func:`t_score`, 0 for a policy
that never trades).

The checkpoint with the highest score becomes the fold's model. If that score is below
``train.validation_min_t`` the agent **stands aside**: the saved model keeps the chosen
weights and carries :data:`~sentio.env.backtest.STAND_ASIDE` = the flat action, so its
backtest, ``sentio signal`` and paper trading stay flat, and the report says why. The
score of the chosen checkpoint is a maximum over several checkpoints and so biased upward;
the threshold (default 2) is the guard against that. A holdout with fewer than
:data:`MIN_EPISODES` episodes is not a measurement: selection is skipped (the final model
is used, trained on all rows) and the reason recorded.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from sentio.env.backtest import MaskedActionError, PredictModel, model_actions, one_torch_thread
from sentio.env.episodes import candidate_episodes
from sentio.env.market import MarketData
from sentio.env.simulator import BatchSimulator, EnvParams

__all__ = [
    "MIN_EPISODES",
    "Holdout",
    "Selection",
    "split_validation",
    "t_score",
    "validation_returns",
]

MIN_EPISODES = 5
"""Fewest held-out episodes that make a validation score (fewer: selection is skipped)."""


@dataclass(frozen=True)
class Holdout:
    """A fold's training rows split into what the agent trains on and what validates it."""

    train_ranges: list[tuple[int, int]]
    """The training ranges cut before the first held-out episode."""
    starts: np.ndarray
    """First row of every held-out episode (time order)."""
    ends: np.ndarray
    """Last row of every held-out episode."""

    @property
    def n_episodes(self) -> int:
        """Number of held-out episodes."""
        return int(self.starts.size)


def split_validation(
    market: MarketData,
    ranges: Sequence[tuple[int, int]],
    *,
    window: int,
    episode_sessions: int,
    fraction: float,
) -> Holdout | str:
    """Hold out the latest ``round(fraction * n)`` of the ``n`` training episodes.

    The training ranges are cut at the first held-out episode's first row, so no training
    episode reads or steps through a held-out row (observation windows of held-out
    episodes may look back into training rows: the past, which the agent may see).

    Returns:
        The :class:`Holdout`, or a one-line reason why there is none (fraction 0, fewer
        than :data:`MIN_EPISODES` held-out episodes, or no training episode left).
    """
    if fraction <= 0:
        return "train.validation_fraction is 0"
    ranges = sorted((int(a), int(b)) for a, b in ranges)
    starts, ends = candidate_episodes(
        market, ranges, window=window, episode_sessions=episode_sessions
    )
    n = int(starts.size)
    k = int(round(fraction * n))
    if k < MIN_EPISODES:
        return (
            f"{k} of the fold's {n} training episodes would be held out "
            f"(train.validation_fraction = {fraction}); at least {MIN_EPISODES} are needed"
        )
    if k >= n:
        return f"no training episode would be left (train.validation_fraction = {fraction})"
    cut = int(starts[n - k])
    train = [(a, min(b, cut)) for a, b in ranges if a < cut]
    return Holdout(train_ranges=train, starts=starts[n - k :].copy(), ends=ends[n - k :].copy())


def validation_returns(
    model: PredictModel,
    market: MarketData,
    params: EnvParams,
    starts: np.ndarray,
    ends: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Per held-out episode: the deterministic policy's log return and its mean |exposure|.

    All episodes run at once, one account each, in backtest mode (the breaker keeps an
    account flat until its episode ends), with one torch thread. An account whose episode
    has ended is parked (stepped flat on its own episode again, reset whenever it ends)
    and its figures are frozen. The policy is queried on the whole batch at once: where
    two actions are within rounding of each other, a one-row query (the backtest's) may
    pick the other one, so a validation figure can differ slightly from a backtest of
    the same model on the same episodes.

    Raises:
        MaskedActionError: the policy chose a masked action (as in the backtest).
    """
    with one_torch_thread():
        return _run(model_actions(model), market, params, starts, ends)


def _run(
    act: Any, market: MarketData, params: EnvParams, starts: np.ndarray, ends: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    n = int(starts.size)
    flat = params.flat_action
    sim = BatchSimulator(market, params, n, backtest=True)
    sim.reset(np.arange(n), starts, ends)
    log_ret = np.zeros(n)
    exposure = np.zeros(n)
    bars = np.zeros(n)
    live = np.ones(n, dtype=bool)
    while live.any():
        masks = sim.action_masks()
        actions = np.asarray(act(sim.observe(), masks), dtype=np.int64).reshape(n)
        bad = live & ~masks[np.arange(n), np.clip(actions, 0, params.n_actions - 1)]
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise MaskedActionError(
                f"the policy chose a masked action on a validation episode at row "
                f"{int(sim.t[i])}: action {int(actions[i])}; allowed "
                f"{np.flatnonzero(masks[i]).tolist()}"
            )
        res = sim.step(np.where(live, actions, flat))
        exposure += np.where(live, np.abs(res.exposure), 0.0)
        bars += live
        ended = res.terminated | res.truncated
        done = live & ended
        if done.any():
            idx = np.flatnonzero(done)
            log_ret[idx] = np.log(np.maximum(res.equity[idx], 1e-300) / params.initial_cash)
            live[idx] = False
        if ended.any():  # parked (again): stepped flat on its own episode, never past its end
            idx = np.flatnonzero(ended)
            sim.reset(idx, starts[idx], ends[idx])
    return log_ret, exposure / np.maximum(bars, 1)


def t_score(returns: np.ndarray) -> float:
    """``mean / (sd / sqrt(n))`` of per-episode returns; 0 when undefined (n < 2 or sd 0)."""
    r = np.asarray(returns, dtype=float)
    if r.size < 2:
        return 0.0
    sd = float(r.std(ddof=1))
    if not sd > 0 or not math.isfinite(sd):
        return 0.0
    return float(r.mean() / (sd / math.sqrt(r.size)))


@dataclass
class Selection:
    """The validation history of one training and its best checkpoint so far."""

    min_t: float
    episodes: int
    periods_per_year: float = 252.0
    """Held-out episodes per year (252 / ``env.episode_sessions``): annualises the Sharpe."""
    history: list[dict[str, float]] = field(default_factory=list)
    best_steps: int = -1
    best_score: float = -math.inf

    def record(self, steps: int, returns: np.ndarray, exposure: np.ndarray) -> bool:
        """Add the evaluation at ``steps``; True when it is the best so far (ties: earlier)."""
        score = t_score(returns)
        self.history.append(
            {
                "steps": int(steps),
                "t": score,
                "mean_log_return": float(np.mean(returns)),
                "sharpe": score / math.sqrt(returns.size) * math.sqrt(self.periods_per_year),
                "mean_abs_exposure": float(np.mean(exposure)),
            }
        )
        if score > self.best_score:
            self.best_score, self.best_steps = score, int(steps)
            return True
        return False

    def evaluated(self, steps: int) -> bool:
        """Whether the policy at ``steps`` has been evaluated."""
        return any(h["steps"] == steps for h in self.history)

    @property
    def stands_aside(self) -> bool:
        """The best checkpoint's score is below ``min_t``: no evidence of an edge."""
        return self.best_score < self.min_t

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable (a checkpoint's and the training summary's record)."""
        out = asdict(self)
        out["best_score"] = None if not math.isfinite(self.best_score) else self.best_score
        out["stands_aside"] = self.stands_aside
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Selection:
        """Inverse of :meth:`to_dict`."""
        best = data.get("best_score")
        return cls(
            min_t=float(data["min_t"]),
            episodes=int(data["episodes"]),
            periods_per_year=float(data.get("periods_per_year", 252.0)),
            history=list(data.get("history", [])),
            best_steps=int(data.get("best_steps", -1)),
            best_score=-math.inf if best is None else float(best),
        )
