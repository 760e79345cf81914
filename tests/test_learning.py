"""Learning tests with bounded budgets: a planted edge is found, a random walk gives none.

The whole chain runs as in the nightly flow: synthetic bars (``sentio.data.synth``),
causal features, a purged walk-forward split on session boundaries, training on the
training block only, a backtest of the deterministic policy on the unseen test block with
the same simulator, and a stationary-bootstrap interval of the annualised Sharpe ratio.

Budget choices (documented, not hidden): half a year of minute bars; the ``returns``
indicator group only (3 horizons x a 4-bar window: the edge is a lag-1 autocorrelation of
returns, and a small input keeps 80,000 steps enough); no costs and no mask layers (the
test is about learning and leakage, not cost modelling); a short discount (gamma 0.5) for
a one-bar-ahead edge; an MLP extractor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sentio.agents.training import algorithm_class, train_agent
from sentio.config import SentioConfig, with_overrides
from sentio.cv import PurgedWalkForward
from sentio.data.synth import generate
from sentio.env import EnvParams, build_market
from sentio.env.backtest import backtest
from sentio.evaluation import bootstrap_ci
from sentio.features import build_features

BUDGET = {
    "synth.years": 0.5,
    "synth.seed": 5,
    "features.indicators": ["returns"],
    "features.norm_window": 120,
    "env.window": 4,
    "env.masks.session": False,
    "env.masks.risk_budget": False,
    "env.masks.regime": False,
    "env.masks.drawdown": False,
    "env.masks.min_hold_bars": 0,
    "env.costs.commission_per_share": 0.0,
    "env.costs.half_spread_bps": 0.0,
    "env.costs.slippage_vol_mult": 0.0,
    "regimes.enabled": False,
    "agent.regime_gating": False,
    "agent.extractor": "mlp",
    "agent.n_steps": 128,
    "agent.batch_size": 256,
    "agent.gamma": 0.5,
    "agent.learning_rate": 5e-4,
    "agent.ent_coef": 0.0,
    "train.n_envs": 8,
    "train.total_timesteps": 80_000,
    "train.device": "cpu",
    "train.checkpoint_every": 1_000_000,
    # one training at a time here: two torch threads learn ~1.4x faster than the one-thread
    # default of the flow (which runs a training per core instead)
    "train.torch_threads": 2,
}
SEEDS = (0, 1, 2)


def _config(algo: str, *, edge: bool) -> SentioConfig:
    market = {"synth.edge_strength": 0.3} if edge else {"synth.random_walk": True}
    return with_overrides(
        SentioConfig(),
        {**BUDGET, **market, "agent.algo": algo, "agent.quantile_critic": algo == "sentio_ppo"},
    )


def _market(cfg: SentioConfig) -> tuple[Any, list[tuple[int, int]], list[tuple[int, int]]]:
    bars = generate(cfg).bars
    market = build_market(bars, build_features(bars, cfg), None, cfg)
    (fold,) = PurgedWalkForward(n_splits=1).folds(market.n_rows, groups=market.session)
    return market, fold.train_ranges(), list(fold.test_blocks)


def _out_of_sample_sharpe(cfg: SentioConfig, seed: int, out: Path) -> Any:
    market, train, test = _market(cfg)
    result = train_agent(cfg, market, train, seed=seed, out_dir=out)
    model = algorithm_class(cfg).load(result.model_path, device="cpu")
    bt = backtest(model, market, EnvParams.from_config(cfg), test)
    assert bt.rows.min() > max(b for _, b in train)  # only bars the agent never trained on
    return bootstrap_ci(
        bt.returns, "sharpe", periods_per_year=market.periods_per_year, resamples=1000, seed=0
    )


@pytest.mark.parametrize("algo", ["maskable_ppo", "sentio_ppo"])
def test_planted_edge_is_found_out_of_sample(
    algo: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _config(algo, edge=True)
    intervals = [_out_of_sample_sharpe(cfg, seed, tmp_path / str(seed)) for seed in SEEDS]
    with capsys.disabled():
        for seed, ci in zip(SEEDS, intervals, strict=True):
            print(
                f"\n{algo} planted edge seed {seed}: out-of-sample Sharpe {ci.estimate:.2f}, "
                f"95% interval [{ci.lower:.2f}, {ci.upper:.2f}]"
            )
    above = sum(ci.lower > 0 for ci in intervals)
    assert above >= 2, [(ci.lower, ci.upper) for ci in intervals]


@pytest.mark.parametrize("algo", ["maskable_ppo", "sentio_ppo"])
def test_random_walk_shows_no_edge(
    algo: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ci = _out_of_sample_sharpe(_config(algo, edge=False), 0, tmp_path)
    with capsys.disabled():
        print(
            f"\n{algo} random walk: out-of-sample Sharpe {ci.estimate:.2f}, "
            f"95% interval [{ci.lower:.2f}, {ci.upper:.2f}]"
        )
    assert ci.lower <= 0 <= ci.upper
    assert np.isfinite(ci.estimate)
