"""Benchmark: does a warm start reach a cold start's out-of-sample quality in fewer steps?

For every scenario and seed ``i`` the script generates ``--years`` of synthetic one-minute
bars (``synth.seed = 300 + i``, market seeds the defaults were not tuned on; the same
markets as ``bench_learning.py``), runs the library stages of the nightly flow, and
trains every walk-forward fold twice with training seed ``i``:

* **cold**: every fold from scratch with ``train.total_timesteps`` (the default pipeline);
* **warm**: fold 0 as cold (the same training), then each later fold warm-started
  (``train.warm_start = champion``, ``train.warm_start_fraction``) from the previous fold's
  model, registered and promoted as the champion the way a night's registry stage
  leaves it: the nightly cycle, each night's model starting from yesterday's. Walk-forward
  fold ``k + 1`` is tested after fold ``k``'s test window, so the leakage rule allows it
  (the script checks that every warm fold did start warm).

Both sides are scored on the same bars: folds 1 .. n-1 stitched (fold 0 is identical).
Printed per scenario and seed: each side's stitched Sharpe with its stationary-bootstrap
interval, trades, mean |exposure|, the environment steps the folds 1 .. n-1 trained and
their training time; then per scenario the mean Sharpe difference (warm - cold) and the
steps ratio. Target: the warm start reaches the cold start's quality, i.e. for every
scenario and seed its Sharpe is at least the lower end of the cold start's interval
(exit code 1 otherwise). The default ``train.warm_start`` follows these figures
(``benchmarks/README.md``).

    .venv/bin/python benchmarks/bench_warm_start.py [--scenarios ac03,null] [--seeds 0,1,2]
        [--years 1] [--fraction 0.25] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_learning import parse_sets, prepare  # noqa: E402


def _register(registry: Any, run: dict[str, Any], folds_path: str, fold: int, cfg: Any) -> str:
    """Register a fold's training the way the registry stage does and promote it."""
    from sentio import stages

    entry = next(f for f in stages.load_folds(folds_path)["folds"] if int(f["fold"]) == fold)
    block = entry["test_blocks"][-1]
    folder = Path(run["model"]).parent
    files: dict[str, str] = {}
    normaliser = folder / "normaliser.json"
    if normaliser.is_file():
        files["normaliser.json"] = str(normaliser)
    elif entry.get("normaliser"):
        files["normaliser.json"] = str(stages.index_file(folds_path, entry["normaliser"]))
    version = registry.register(
        run["model"],
        folder / "config.yaml",
        {
            **run["metrics"],
            "window_start": entry["test_blocks"][0]["start"],
            "window_end": block["end"],
        },
        data_hashes={},
        code_version="bench",
        algo=cfg.agent.algo,
        extra={
            "fold": fold,
            "train_start": entry["train_ranges"][0]["start"],
            "train_end": entry["train_ranges"][-1]["end"],
            "window_start": entry["test_blocks"][0]["start"],
            "window_end": block["end"],
            "feature_columns": run["feature_columns"],
        },
        extra_files=files,
    ).version
    registry.promote(version, "bench: yesterday's model")
    return str(version)


def run_one(
    scenario: str, seed: int, years: float, fraction: float, overrides: dict[str, Any], root: Path
) -> dict[str, Any]:
    from sentio import stages
    from sentio.processes import call_in_process
    from sentio.registry import Registry
    from sentio.report import stitched_figures
    from sentio.stages.warm import warm_stage

    warm = {
        "cv.method": "walk_forward",
        "train.warm_start": "champion",
        "train.warm_start_fraction": fraction,
    }
    cfg, wd, args, features, folds = prepare(scenario, seed, years, {**overrides, **warm}, root)

    def train(fold: int, warm_path: str | None) -> dict[str, Any]:
        run = call_in_process(
            stages.train_stage,
            *args,
            fold=fold,
            seed=seed,
            threads=cfg.train.torch_threads,
            progress_arg=None,
            warm_path=warm_path,
        )
        run["feature_columns"] = list(features["columns"])
        return dict(run)

    n = int(folds["n_folds"])
    out: dict[str, Any] = {"scenario": scenario, "seed": seed, "folds": n}
    start = time.perf_counter()
    cold = [train(f, None) for f in range(n)]
    cold_seconds = time.perf_counter() - start
    registry = Registry(wd / "registry")
    warm = [cold[0]]
    start = time.perf_counter()
    for fold in range(1, n):
        _register(registry, warm[-1], folds["output"], fold - 1, cfg)
        frozen = warm_stage(cfg, wd, registry)
        assert frozen is not None
        run = train(fold, frozen["output"])
        if not (run.get("warm_start") or {}).get("applies"):
            raise SystemExit(f"fold {fold} did not start warm: {run.get('warm_start')}")
        warm.append(run)
    warm_seconds = time.perf_counter() - start
    for name, runs, seconds in (("cold", cold, cold_seconds), ("warm", warm, warm_seconds)):
        later = runs[1:]
        fig = stitched_figures(later, cfg)
        out[name] = {
            **fig["agent"],
            "steps": sum(int(r["train"]["num_timesteps"]) for r in later),
            "seconds": seconds if name == "warm" else seconds * (n - 1) / n,
        }
    return out


def _f(x: Any, fmt: str = "{:.2f}") -> str:
    return "n/a" if x is None else fmt.format(x)


def line(fig: dict[str, Any], side: str) -> str:
    a = fig[side]
    return (
        f"{fig['scenario']:<7}{fig['seed']:>5}  {side:<5}{_f(a['sharpe']):>7} [{_f(a['lower'])}, "
        f"{_f(a['upper'])}]  {a['trades']:>6}  {a['mean_abs_exposure']:.3f}  "
        f"{a['steps']:>9,}  {a['seconds']:>6.0f}s"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenarios", default="ac03,null")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--years", type=float, default=1.0)
    ap.add_argument("--fraction", type=float, default=0.25)
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--workdir", type=Path, default=None, help="keep the outputs here")
    args = ap.parse_args()
    overrides = parse_sets(args.sets)
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    seeds = [int(s) for s in args.seeds.split(",")]
    print(
        f"bench_warm_start: {args.years} years per market, seeds {seeds}, warm fraction "
        f"{args.fraction}, overrides {overrides}; folds 1..n-1 stitched"
    )
    print(
        f"{'market':<7}{'seed':>5}  {'side':<5}{'Sharpe [interval]':>24}  {'trades':>6}  "
        f"{'|exp|':>5}  {'steps':>9}  {'train':>7}",
        flush=True,
    )
    figs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-warm-") as tmp:
        root = args.workdir or Path(tmp)
        for scenario in scenarios:
            for seed in seeds:
                fig = run_one(scenario, seed, args.years, args.fraction, overrides, root)
                figs.append(fig)
                print(line(fig, "cold"), flush=True)
                print(line(fig, "warm"), flush=True)
    for scenario in scenarios:
        rows = [f for f in figs if f["scenario"] == scenario]
        diffs = [
            f["warm"]["sharpe"] - f["cold"]["sharpe"]
            for f in rows
            if f["warm"]["sharpe"] is not None and f["cold"]["sharpe"] is not None
        ]
        steps = sum(f["warm"]["steps"] for f in rows) / max(
            sum(f["cold"]["steps"] for f in rows), 1
        )
        mean = sum(diffs) / len(diffs) if diffs else float("nan")
        print(
            f"{scenario}: warm - cold Sharpe {mean:+.2f} on average over {len(diffs)} seeds "
            f"({', '.join(f'{d:+.2f}' for d in diffs)}); warm trained {steps:.2f}x the steps"
        )
    missed = [
        f"{f['scenario']} seed {f['seed']}: warm Sharpe {_f(f['warm']['sharpe'])} below the "
        f"cold interval's lower end {_f(f['cold']['lower'])}"
        for f in figs
        if f["warm"]["sharpe"] is None
        or f["cold"]["lower"] is None
        or f["warm"]["sharpe"] < f["cold"]["lower"]
    ]
    for m in missed:
        print(f"target missed: {m}")
    print("warm start reaches the cold start's quality" if not missed else f"{len(missed)} missed")
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
