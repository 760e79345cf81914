"""Benchmark: does the default pipeline learn? Synthetic markets with and without an edge.

For every scenario and seed ``i`` the script generates ``--years`` of synthetic one-minute
bars (``synth.seed = 300 + i``: market seeds neither the tests nor the tuning of the defaults used), runs the library stages of
the nightly flow on them (ingest, features, folds, regimes, then every fold's training
and out-of-sample backtest with training seed ``i``, each training in a process of its
own, ``train.max_parallel`` at a time) and stitches the folds' test blocks the way the
report does. Costs and masks are on: the configuration is the pipeline's default plus
``--set`` overrides (the ablations of ``benchmarks/README.md`` are ``--set`` runs).

Scenarios (``--scenarios``):

* ``null``: a random walk (``synth.random_walk``): no edge exists;
* ``ac03`` / ``ac01``: a planted lag-1 autocorrelation of 0.3 / 0.1 (``synth.edge_strength``)
  on the default regime market;
* ``regime``: the default regime market (calm bull, choppy, volatile bear).

Printed per scenario and seed: the agent's stitched annualised Sharpe with its
stationary-bootstrap interval (``report.ci_level``), the oracle's Sharpe (the
generator's truth turned into positions; ``n/a`` before it exists), the share of the
oracle's Sharpe the agent captured, the best causal reference (its name and Sharpe),
trades, mean |exposure|, environment steps, training time and how many folds stood aside
(their validation found no edge: ``sentio.agents.selection``). Targets (issue 14):

* null: every interval contains 0 and mean |exposure| < 0.1;
* ac03: every interval above 0 and the agent's Sharpe at least the best causal reference's;
* ac01: interval above 0 for at least 2 of 3 seeds;
* regime: not significantly negative (interval upper bound not below 0).

Exit code 1 when a target of a scenario that ran is missed.

    .venv/bin/python benchmarks/bench_learning.py [--scenarios null,ac03,ac01,regime]
        [--seeds 0,1,2] [--years 1] [--set agent.gamma=0.5 ...] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SCENARIOS: dict[str, dict[str, Any]] = {
    "null": {"synth.random_walk": True},
    "ac03": {"synth.edge_strength": 0.3},
    "ac01": {"synth.edge_strength": 0.1},
    "regime": {},
}


def parse_sets(items: list[str]) -> dict[str, Any]:
    """``key=value`` pairs, values parsed as YAML (numbers, booleans, lists)."""
    out: dict[str, Any] = {}
    for item in items:
        key, _, value = item.partition("=")
        out[key.strip()] = yaml.safe_load(value)
    return out


def prepare(
    scenario: str, seed: int, years: float, overrides: dict[str, Any], root: Path
) -> tuple[Any, Path, tuple[Any, ...], dict[str, Any], dict[str, Any]]:
    """The scenario's market for ``seed`` through the stages before training:
    ``(cfg, workdir, train_stage's positional arguments, features, folds)``."""
    from sentio import stages
    from sentio.config import SentioConfig, with_overrides
    from sentio.data.synth import write_synth

    cfg = with_overrides(
        SentioConfig(),
        {
            **overrides,
            **SCENARIOS[scenario],
            "synth.years": years,
            "synth.seed": 300 + seed,
            "train.seeds": [seed],
        },
    )
    wd = root / f"{scenario}-{seed}"
    bars = write_synth(wd / "bars.feather", cfg)["bars"]
    ingest = stages.ingest_stage([bars], cfg, wd)
    features = stages.features_stage(ingest["output"], cfg, wd)
    folds = stages.folds_stage(features["output"], cfg, wd)
    regimes = (
        stages.regimes_stage(ingest["output"], folds["output"], cfg, wd)["output"]
        if cfg.regimes.enabled
        else None
    )
    args = (ingest["output"], features["output"], folds["output"], regimes, cfg, wd)
    return cfg, wd, args, features, folds


def run_one(
    scenario: str, seed: int, years: float, overrides: dict[str, Any], root: Path
) -> dict[str, Any]:
    """One scenario and seed through the stages; the stitched figures."""
    from sentio import stages
    from sentio.orchestration import training_slots
    from sentio.processes import call_in_process
    from sentio.report import stitched_figures

    cfg, wd, args, features, folds = prepare(scenario, seed, years, overrides, root)
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=training_slots(cfg)) as pool:
        runs = list(
            pool.map(
                lambda fold: call_in_process(
                    stages.train_stage,
                    *args,
                    fold=fold,
                    seed=seed,
                    threads=cfg.train.torch_threads,
                    progress_arg=None,
                ),
                range(folds["n_folds"]),
            )
        )
    seconds = time.perf_counter() - start
    fig = stitched_figures(runs, cfg)
    fig.update(
        scenario=scenario,
        seed=seed,
        steps=sum(int(r["train"]["num_timesteps"]) for r in runs),
        train_seconds=seconds,
        aside=sum(bool((r["train"].get("validation") or {}).get("stands_aside")) for r in runs),
        folds=len(runs),
    )
    return fig


from sentio.report import CAUSAL_REFERENCES  # noqa: E402


def _f(x: Any, fmt: str = "{:.2f}") -> str:
    return "n/a" if x is None else fmt.format(x)


def line(fig: dict[str, Any]) -> str:
    """One printed row."""
    a = fig["agent"]
    ora = fig["references"].get("oracle", {})
    oracle = ora.get("sharpe")
    causal = {
        k: v
        for k, v in fig["references"].items()
        if k in CAUSAL_REFERENCES and v["sharpe"] is not None
    }
    best = max(causal, key=lambda k: causal[k]["sharpe"]) if causal else None
    share = a["sharpe"] / oracle if oracle and a["sharpe"] is not None and oracle > 0 else None
    return (
        f"{fig['scenario']:<7}{fig['seed']:>5}  {_f(a['sharpe']):>7} [{_f(a['lower'])}, "
        f"{_f(a['upper'])}]  {_f(oracle):>6} [{_f(ora.get('lower'))}, {_f(ora.get('upper'))}]"
        f"  {_f(share, '{:.0%}'):>6}  "
        f"{(best or 'n/a'):<12}{_f(causal[best]['sharpe'] if best else None):>7}  "
        f"{a['trades']:>6}  {a['mean_abs_exposure']:.3f}  {fig['steps']:>8,}  "
        f"{fig['train_seconds']:>6.0f}s  {fig['aside']}/{fig['folds']}"
    )


HEADER = (
    f"{'market':<7}{'seed':>5}  {'agent Sharpe [interval]':>24}  {'oracle [interval]':>20}"
    f"  {'share':>6}  "
    f"{'best causal':<12}{'Sharpe':>7}  {'trades':>6}  {'|exp|':>5}  {'steps':>8}  {'train':>7}"
    f"  aside"
)


def targets(figs: list[dict[str, Any]]) -> list[str]:
    """The issue's targets that these results miss (one line each)."""
    missed: list[str] = []
    by: dict[str, list[dict[str, Any]]] = {}
    for f in figs:
        by.setdefault(f["scenario"], []).append(f)
    for f in by.get("null", []):
        a = f["agent"]
        if not (a["lower"] <= 0 <= a["upper"]) or a["mean_abs_exposure"] >= 0.1:
            missed.append(f"null seed {f['seed']}: interval or exposure off target")
    for f in by.get("ac03", []):
        a = f["agent"]
        causal = [
            v["sharpe"]
            for k, v in f["references"].items()
            if k in CAUSAL_REFERENCES and v["sharpe"]
        ]
        if not a["lower"] > 0 or (causal and a["sharpe"] < max(causal)):
            missed.append(f"ac03 seed {f['seed']}: interval not above 0 or below a causal rule")
    ac01 = by.get("ac01", [])
    if ac01 and sum(f["agent"]["lower"] > 0 for f in ac01) < min(2, len(ac01)):
        missed.append("ac01: fewer than 2 of the seeds have their interval above 0")
    for f in by.get("regime", []):
        # an agent that never trades has the interval [0, 0]: not significantly negative
        if f["agent"]["upper"] < 0:
            missed.append(f"regime seed {f['seed']}: significantly negative")
    return missed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenarios", default="null,ac03,ac01,regime")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--years", type=float, default=1.0)
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument("--workdir", type=Path, default=None, help="keep the outputs here")
    args = ap.parse_args()
    overrides = parse_sets(args.sets)
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"bench_learning: {args.years} years per market, seeds {seeds}, overrides {overrides}")
    print(HEADER, flush=True)
    figs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-learning-") as tmp:
        root = args.workdir or Path(tmp)
        for scenario in scenarios:
            for seed in seeds:
                fig = run_one(scenario, seed, args.years, overrides, root)
                figs.append(fig)
                print(line(fig), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"overrides": overrides, "results": figs}, indent=1))
    missed = targets(figs)
    for m in missed:
        print(f"target missed: {m}")
    print("all targets met" if not missed else f"{len(missed)} target(s) missed")
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
