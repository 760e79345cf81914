"""What of the oracle's Sharpe a causal agent could reach: the planted autocorrelation alone.

The oracle of :mod:`sentio.env.references` knows the generator's truth: the planted lag-1
autocorrelation and each session's regime drift. No causal agent can know the drift, so
this script also runs the same cost-aware policy with every regime drift set to 0 (the
autocorrelation part only: what an agent that learned the planted edge exactly would
make). Both under the default costs and masks (regime layer off), on the last 80 % of a
market of the benchmark's kind (``synth.seed = 300 + seed``, as ``bench_learning.py``)::

    .venv/bin/python benchmarks/oracle_parts.py EDGE SEED [YEARS]    # e.g. 0.1 0 1
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    import numpy as np

    from sentio.config import SentioConfig, with_overrides
    from sentio.data.synth import generate
    from sentio.env import EnvParams, build_market
    from sentio.env.backtest import backtest
    from sentio.env.references import oracle_policy
    from sentio.evaluation import bootstrap_ci
    from sentio.features import build_features

    if len(sys.argv) < 3:
        print(__doc__)
        return 2
    edge, seed = float(sys.argv[1]), int(sys.argv[2])
    years = float(sys.argv[3]) if len(sys.argv) > 3 else 1.0
    cfg = with_overrides(
        SentioConfig(),
        {
            "synth.edge_strength": edge,
            "synth.seed": 300 + seed,
            "synth.years": years,
            "env.masks.regime": False,
        },
    )
    data = generate(cfg)
    market = build_market(data.bars, build_features(data.bars, cfg), None, cfg)
    params = EnvParams.from_config(cfg, market)
    rows = [(int(0.2 * market.n_rows), market.n_rows)]
    no_drift = copy.deepcopy(data.truth)
    for regime in no_drift["regimes"]:
        regime["drift_per_bar"] = 0.0
    for name, truth in (("oracle", data.truth), ("autocorrelation only", no_drift)):
        bt = backtest(oracle_policy(params, market, truth), market, params, rows)
        ci = bootstrap_ci(
            bt.returns, "sharpe", periods_per_year=market.periods_per_year, resamples=500, seed=0
        )
        print(
            f"edge {edge} seed {seed} {years:g} y  {name:<21} Sharpe {ci.estimate:6.2f} "
            f"[{ci.lower:.2f}, {ci.upper:.2f}]  trades {bt.trades.height:>5}  "
            f"|exposure| {float(np.abs(bt.position).mean()):.3f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
