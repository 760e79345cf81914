"""Learning tests with bounded budgets, costs and masks on: a planted edge is found, a
random walk gives none and the agent stays out.

The whole chain runs as in the nightly flow: synthetic bars (``sentio.data.synth``),
causal features, a purged walk-forward split on session boundaries, training on the
training block only, a backtest of the deterministic policy on the unseen test block with
the same simulator, and a stationary-bootstrap interval of the annualised Sharpe ratio.

The configuration is the pipeline's default (every cost, the session, risk-budget,
drawdown and minimum-holding mask layers, the default features and agent settings) with a
smaller budget: half a year of minute bars, ``BUDGET_STEPS`` steps, no regime model
(fitting HMMs is not what is tested here; the regime mask layer needs one, so it is off,
and ``sentio_ppo`` runs without regime gating). The seeds (market seed 5, training seeds
10-12) are not among those the defaults were chosen on (``benchmarks/README.md``).

The planted-edge tests check the learner: they train on all of the fold's training rows
(``train.validation_fraction: 0``), because the default model selection holds out the
latest fifth of them and needs a t statistic of 2 on the held-out sessions to trade;
half a year gives it 12 sessions, on which an agent of this budget rarely shows an
annualised Sharpe above 9 (the benchmark's year-long markets give it about 10-40 per
fold, and there it beat the trend rule on the 0.3 edge on every seed). The random-walk
tests run the default, selection included: the agent must stay out and must not lose.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sentio.agents.training import algorithm_class, train_agent
from sentio.config import SentioConfig, resolve_for_bars, with_overrides
from sentio.cv import PurgedWalkForward
from sentio.data.synth import generate
from sentio.env import EnvParams, build_market
from sentio.env.backtest import backtest
from sentio.evaluation import bootstrap_ci
from sentio.features import build_features

BUDGET_STEPS = 100_000
BUDGET = {
    "synth.years": 0.5,
    "synth.seed": 5,
    "regimes.enabled": False,
    "env.masks.regime": False,
    "agent.regime_gating": False,
    "train.total_timesteps": BUDGET_STEPS,
    "train.device": "cpu",
    "train.checkpoint_every": 1_000_000,
    # one training at a time here: two torch threads learn ~1.4x faster than the one-thread
    # default of the flow (which runs a training per core instead)
    "train.torch_threads": 2,
}
SEEDS = (10, 11, 12)
ALGOS = {
    "maskable_ppo": {"agent.algo": "maskable_ppo", "agent.quantile_critic": False},
    "sentio_ppo": {"agent.algo": "sentio_ppo", "agent.quantile_critic": True},
}
EDGE_SEEDS = {"maskable_ppo": SEEDS, "sentio_ppo": SEEDS[:2]}
"""Sentio PPO (quantile critic) trains at about half the speed: two seeds, both must find it."""
EDGE_NEEDED = {"maskable_ppo": 2, "sentio_ppo": 2}


def _config(algo: str, *, edge: bool) -> SentioConfig:
    market = (
        {"synth.edge_strength": 0.3, "train.validation_fraction": 0.0}
        if edge
        else {"synth.random_walk": True}
    )
    return with_overrides(SentioConfig(), {**BUDGET, **market, **ALGOS[algo]})


def _market(cfg: SentioConfig) -> tuple[Any, list[tuple[int, int]], list[tuple[int, int]]]:
    bars = generate(cfg).bars
    market = build_market(bars, build_features(bars, cfg), None, cfg)
    (fold,) = PurgedWalkForward(n_splits=1).folds(market.n_rows, groups=market.session)
    return market, fold.train_ranges(), list(fold.test_blocks)


def _out_of_sample(cfg: SentioConfig, seed: int, out: Path) -> tuple[Any, float, float]:
    """The test block's Sharpe interval, mean |exposure| and total return of the agent."""
    params = EnvParams.from_config(resolve_for_bars(cfg, 60))
    assert params.half_spread > 0 and params.commission_per_share > 0  # costs on
    assert params.mask_session and params.mask_risk_budget and params.mask_drawdown
    assert params.min_hold_bars > 0
    market, train, test = _market(cfg)
    result = train_agent(cfg, market, train, seed=seed, out_dir=out)
    model = algorithm_class(cfg).load(result.model_path, device="cpu")
    bt = backtest(model, market, params, test)
    assert bt.rows.min() > max(b for _, b in train)  # only bars the agent never trained on
    ci = bootstrap_ci(
        bt.returns, "sharpe", periods_per_year=market.periods_per_year, resamples=1000, seed=0
    )
    return ci, float(np.abs(bt.position).mean()), float(bt.equity[-1] / bt.initial_equity - 1)


@pytest.mark.parametrize("algo", list(ALGOS))
def test_planted_edge_is_found_out_of_sample(
    algo: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _config(algo, edge=True)
    seeds = EDGE_SEEDS[algo]
    results = [_out_of_sample(cfg, seed, tmp_path / str(seed)) for seed in seeds]
    with capsys.disabled():
        for seed, (ci, exposure, _) in zip(seeds, results, strict=True):
            print(
                f"\n{algo} planted edge seed {seed}: out-of-sample Sharpe {ci.estimate:.2f}, "
                f"95% interval [{ci.lower:.2f}, {ci.upper:.2f}], mean |exposure| {exposure:.3f}"
            )
    above = sum(ci.lower > 0 for ci, _, _ in results)
    assert above >= EDGE_NEEDED[algo], [(ci.lower, ci.upper) for ci, _, _ in results]


@pytest.mark.parametrize("algo", list(ALGOS))
def test_random_walk_shows_no_edge_and_the_agent_stays_out(
    algo: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ci, exposure, total = _out_of_sample(_config(algo, edge=False), SEEDS[0], tmp_path)
    with capsys.disabled():
        print(
            f"\n{algo} random walk: out-of-sample Sharpe {ci.estimate:.2f}, "
            f"95% interval [{ci.lower:.2f}, {ci.upper:.2f}], mean |exposure| {exposure:.3f}, "
            f"total return {total:+.2%}"
        )
    # no edge is claimed where none exists, no significant loss either, and the agent
    # stays out (before env.masks.opening_minutes, maskable_ppo lost here on a dozen trades
    # entered minutes after the open: interval [-9.7, -1.7])
    assert ci.lower <= 0 <= ci.upper
    assert np.isfinite(ci.estimate)
    assert exposure < 0.1
    assert total > -0.02
