"""Benchmark: the flow's training fan-out, concurrent (its default) and on Dask, against one
at a time.

What is timed is exactly what the nightly flow runs for its train stage:
``flows.trainings.run_trainings`` with the ``train`` task, inside a Prefect flow (a
throw-away local API), each (fold, seed) training in a process of its own
(``sentio.processes.call_in_process``): with ``train.executor = local`` at most
``parallel_slots(train.max_parallel, train.torch_threads)`` at a time, with ``dask`` on a
``distributed.LocalCluster`` of that many worker processes (Prefect's DaskTaskRunner,
started and stopped inside the timed fan-out). The inputs (ingest, features, folds, regimes of
``--years`` of synthetic bars, ``sentio.data.synth`` seed 5) are built first, untimed,
with the library stages.

Configuration: ``SentioConfig`` defaults (``maskable_ppo`` with the MLP extractor, the
``auto`` rollout shape: 64 environments x 32 steps on the CPU; walk-forward with 4
folds), one seed, ``--steps`` env steps per training. Four runs on fresh working
directories (no cache hits):

* ``flow default``: ``train.max_parallel = 0`` (one training per core) and
  ``train.torch_threads = 1``;
* ``one at a time, 1 thread``: ``max_parallel = 1``, the same models bit for bit;
* ``one at a time, all cores``: ``max_parallel = 1`` and ``torch_threads`` = the cores
  (a different floating-point reduction order, so other models: printed for reference;
  trainings of more than one thread are spawned, not forked from the fork server);
* ``dask, 2 workers``: ``train.executor = dask``, ``max_parallel = 2`` (a LocalCluster of
  two single-threaded worker processes, each training in the worker's own process), the
  same models as the serial run;
* ``one at a time, spawned``: one at a time with ``SENTIO_CHILD_START=spawn``, every
  training's process a fresh interpreter (~5 s of imports) instead of a fork of the fork
  server (``sentio.processes``; the flow default, the first run, starts that server
  inside its timed fan-out, as a flow's first training does), the same models.

Figures: aggregate env steps/s (total steps of the four trainings over the fan-out's
wall time, process start-up and backtests included) and the machine's CPU busy share
over that time (``/proc/stat``: 1 - idle/total; Linux). The ratio printed is the flow
default's rate over the one-at-a-time rate with the same models, the spawned serial run's
wall time against the forked one's, and the Dask run's wall time against both serial
runs. The Dask target is checked against the spawned serial run, the local executor as
it was when the target was set (issue 18: a fresh interpreter per training); against the
forked serial run, which starts its processes ~4 s faster each, a Dask LocalCluster on
the same two cores is not expected to reach 1.7x, and that ratio is printed beside it.
The repeatability check compares the model hashes of the flow default, the serial, the
Dask and the spawned runs.

Targets: a busy share above 80 % for the flow default, a ratio above 1, the Dask run at
least 1.7x faster than one at a time spawned (on a machine with more than one core), and
the fork server no slower than spawning (Linux). Exits 1 if a target or the
repeatability check fails.

    .venv/bin/python benchmarks/bench_parallel.py [--steps 8192] [--years 0.5]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def cpu_times() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs since boot (``/proc/stat``)."""
    fields = [float(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal
    return total - idle, total


def build_inputs(root: Path, years: float) -> dict[str, Any]:
    """Synthetic bars and their ingest, features, folds and regimes (library stages)."""
    from sentio import stages
    from sentio.config import SentioConfig, with_overrides
    from sentio.data.synth import write_synth

    cfg = with_overrides(SentioConfig(), {"synth.years": years, "synth.seed": 5})
    bars = root / "bars.feather"
    write_synth(bars, cfg)
    wd = root / "inputs"
    ingest = stages.ingest_stage([bars], cfg, wd)
    features = stages.features_stage(ingest["output"], cfg, wd)
    folds = stages.folds_stage(features["output"], cfg, wd)
    regimes = stages.regimes_stage(ingest["output"], folds["output"], cfg, wd)
    return {
        "paths": {
            "bars_path": ingest["output"],
            "features_path": features["output"],
            "folds_path": folds["output"],
            "regimes_path": regimes["output"],
        },
        "n_folds": folds["n_folds"],
    }


def fan_out(inputs: dict[str, Any], workdir: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    """Run the flow's training fan-out once; its wall time, steps, CPU share, model hashes."""
    from prefect import flow

    from flows.trainings import run_trainings
    from sentio.config import SentioConfig, with_overrides
    from sentio.processes import parallel_slots

    cfg = with_overrides(SentioConfig(), overrides)
    jobs = [(fold, seed) for fold in range(inputs["n_folds"]) for seed in cfg.train.seeds]
    slots = parallel_slots(cfg.train.max_parallel, cfg.train.torch_threads)

    @flow(name="bench-parallel-training")
    def trainings() -> list[dict[str, Any]]:
        params = {**inputs["paths"], "cfg": cfg, "workdir": str(workdir)}
        storage = str(workdir / "prefect-results")  # a fresh workdir: no cache hits
        return run_trainings(jobs, cfg=cfg, workdir=str(workdir), params=params, storage=storage)

    busy0, total0 = cpu_times()
    start = time.perf_counter()
    runs = trainings()
    seconds = time.perf_counter() - start
    busy1, total1 = cpu_times()
    steps = sum(int(r["train"]["num_timesteps"]) for r in runs)
    return {
        "slots": slots,
        "seconds": seconds,
        "steps": steps,
        "rate": steps / seconds,
        "busy": (busy1 - busy0) / max(total1 - total0, 1.0),
        "models": [r["files"][r["model"]] for r in runs],
        "per_training": [round(r["train"]["steps_per_second"]) for r in runs],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8192, help="env steps per training")
    parser.add_argument("--years", type=float, default=0.5, help="years of synthetic bars")
    args = parser.parse_args()

    from prefect.testing.utilities import prefect_test_harness

    from sentio.processes import START_ENV, available_cores

    os.environ.pop(START_ENV, None)
    cores = available_cores()
    print(f"cores available: {cores}; load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="bench-parallel-") as tmp:
        root = Path(tmp)
        os.environ.update(
            PREFECT_HOME=str(root / "prefect-home"),
            DO_NOT_TRACK="1",
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
        )
        inputs = build_inputs(root, args.years)
        print(f"{inputs['n_folds']} fold trainings of {args.steps} env steps each")
        base = {"train.total_timesteps": args.steps, "train.device": "cpu"}
        runs = {}
        with prefect_test_harness(server_startup_timeout=60):
            for name, extra in (
                ("flow default", {"train.max_parallel": 0, "train.torch_threads": 1}),
                ("one at a time, 1 thread", {"train.max_parallel": 1, "train.torch_threads": 1}),
                (
                    "one at a time, all cores",
                    {"train.max_parallel": 1, "train.torch_threads": cores},
                ),
                ("dask, 2 workers", {"train.executor": "dask", "train.max_parallel": 2}),
                ("one at a time, spawned", {"train.max_parallel": 1, "train.torch_threads": 1}),
            ):
                if name.endswith("spawned"):
                    os.environ[START_ENV] = "spawn"
                try:
                    work = root / name.replace(" ", "-").replace(",", "")
                    runs[name] = r = fan_out(inputs, work, {**base, **extra})
                finally:
                    os.environ.pop(START_ENV, None)
                print(
                    f"{name:<26} {r['slots']} at a time: {r['steps']} steps in "
                    f"{r['seconds']:.1f} s = {r['rate']:,.0f} steps/s aggregate, CPU busy "
                    f"{r['busy']:.0%} (per training: {r['per_training']} steps/s while learning)"
                )
    flow_rate = runs["flow default"]["rate"]
    serial = runs["one at a time, 1 thread"]
    wide = runs["one at a time, all cores"]
    print(
        f"ratio flow default / one at a time (same models): {flow_rate / serial['rate']:.2f}x; "
        f"/ one at a time on all cores: {flow_rate / wide['rate']:.2f}x"
    )
    on_dask = runs["dask, 2 workers"]
    spawned = runs["one at a time, spawned"]
    forked = spawned["seconds"] / serial["seconds"]
    print(f"wall time one at a time spawned / forked (fork server): {forked:.2f}x")
    speedup = spawned["seconds"] / on_dask["seconds"]
    print(
        f"wall time one at a time spawned / dask with 2 workers: {speedup:.2f}x "
        f"(forked / dask: {serial['seconds'] / on_dask['seconds']:.2f}x)"
    )
    same = (
        runs["flow default"]["models"] == serial["models"] == on_dask["models"] == spawned["models"]
    )
    print(
        "repeatable: model hashes of the concurrent, serial, Dask and spawned runs "
        f"{'equal' if same else 'DIFFER'}"
    )
    ok = same
    if sys.platform.startswith("linux"):
        print(f"{'PASS' if forked >= 1.0 else 'FAIL'}: fork server {forked:.2f}x (target 1x)")
        ok &= forked >= 1.0
    busy = runs["flow default"]["busy"]
    print(f"{'PASS' if busy > 0.8 else 'FAIL'}: CPU busy share {busy:.0%} (target > 80%)")
    ok &= busy > 0.8
    if cores > 1:
        better = flow_rate > serial["rate"]
        print(f"{'PASS' if better else 'FAIL'}: concurrent faster than one at a time")
        print(
            f"{'PASS' if speedup >= 1.7 else 'FAIL'}: Dask {speedup:.2f}x one at a time "
            "spawned (target 1.7x)"
        )
        ok &= better and speedup >= 1.7
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
