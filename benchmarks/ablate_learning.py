"""One cell of the learning ablation of ``benchmarks/README.md``: one market, one seed, one variant.

A quick single-split probe of what makes the agent learn, cheaper than
``bench_learning.py`` (one walk-forward split instead of four folds, no regime model):
``--years`` (0.6) of synthetic minute bars of the scenario with ``synth.seed = 200 + seed``,
the default features, costs and masks (the regime layer off: no regime model), a purged
walk-forward split on session boundaries (60 % training), one training with training seed
``seed``, the deterministic policy backtested on the unseen block, and a stationary-bootstrap
interval of its annualised Sharpe (500 resamples). Prints one JSON line: Sharpe, interval,
mean |exposure held|, trades, seconds, and the mean raw return of the last five rollouts'
training episodes in basis points (``train_last``, in sample).

The variant is ``KEY=VALUE`` overrides on top of ``BEFORE_THE_STUDY``: the configuration
the study started from (the issue's probe: MaskablePPO with an MLP on the 32-bar window,
gamma 0.5, no entropy bonus, auto reward scale, a uniform initial policy, 100,000 steps),
so that every row of the table can be run again::

    .venv/bin/python benchmarks/ablate_learning.py ac03 0 w4fp2 env.window=4 agent.flat_prior=2
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

sys.path.insert(0, str(REPO / "benchmarks"))
from bench_learning import SCENARIOS  # noqa: E402  (the same markets as the benchmark)

BEFORE_THE_STUDY = {
    "agent.algo": "maskable_ppo",
    "agent.extractor": "mlp",
    "agent.quantile_critic": False,
    "agent.regime_gating": False,
    "agent.flat_prior": 0.0,
    "agent.gamma": 0.5,
    "agent.ent_coef": 0.0,
    "agent.reward_scale": "auto",
    "env.window": 32,
    "regimes.enabled": False,
    "env.masks.regime": False,
    "train.total_timesteps": 100_000,
    "train.device": "cpu",
    "train.checkpoint_every": 1_000_000,
}


def main() -> int:
    import tempfile

    import numpy as np
    import yaml

    from sentio.agents.training import algorithm_class, train_agent
    from sentio.config import SentioConfig, with_overrides
    from sentio.cv import PurgedWalkForward
    from sentio.data.synth import generate
    from sentio.env import EnvParams, build_market
    from sentio.env.backtest import backtest
    from sentio.evaluation import bootstrap_ci
    from sentio.features import build_features

    if len(sys.argv) < 4 or sys.argv[1] not in SCENARIOS:
        print(__doc__)
        return 2
    scenario, seed, tag = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    sets = {k: yaml.safe_load(v) for k, _, v in (a.partition("=") for a in sys.argv[4:])}
    cfg = with_overrides(
        SentioConfig(),
        {
            **BEFORE_THE_STUDY,
            **sets,
            **SCENARIOS[scenario],
            "synth.years": 0.6,
            "synth.seed": 200 + seed,
        },
    )
    bars = generate(cfg).bars
    market = build_market(bars, build_features(bars, cfg), None, cfg)
    (fold,) = PurgedWalkForward(n_splits=1).folds(market.n_rows, groups=market.session)
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        res = train_agent(cfg, market, fold.train_ranges(), seed=seed, out_dir=tmp)
        model = algorithm_class(cfg).load(res.model_path, device="cpu")
    bt = backtest(model, market, EnvParams.from_config(cfg, market), list(fold.test_blocks))
    ci = bootstrap_ci(
        bt.returns, "sharpe", periods_per_year=market.periods_per_year, resamples=500, seed=0
    )
    curve = [
        c["mean_episode_log_return"] for c in res.curve if c["mean_episode_log_return"] is not None
    ]
    print(
        json.dumps(
            {
                "tag": tag,
                "scenario": scenario,
                "seed": seed,
                "sharpe": round(ci.estimate, 2),
                "lo": round(ci.lower, 2),
                "hi": round(ci.upper, 2),
                "exp": round(float(np.abs(bt.position).mean()), 3),
                "trades": bt.trades.height,
                "sec": round(time.time() - start),
                "train_last": round(float(np.mean(curve[-5:])) * 1e4, 1) if curve else None,
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
