"""Benchmark: the report stage of a finished nightly run, beside its target.

Rebuilds the report of the latest run in a working directory (``runs/*/run.json``: its
train summaries and ingest summary, its configuration) into a temporary folder with
:func:`sentio.stages.report_stage`, and prints the wall time, the share of it spent in the
stationary bootstrap (:func:`sentio.evaluation.bootstrap.bootstrap_metrics`, timed by
wrapping it) and the number of intervals drawn, beside the target of issue 19: under 30 s
for the demo (``make demo``: two years of synthetic bars, four folds, one seed) on two
cores. Exits 1 when the target is missed.

    .venv/bin/python benchmarks/bench_report.py [--workdir .sentio]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
TARGET_SECONDS = 30.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path(".sentio"))
    args = parser.parse_args()

    import sentio.report.numbers as numbers
    from sentio.config import load_config
    from sentio.stages import report_stage

    records = sorted((args.workdir / "runs").glob("*/run.json"), key=lambda p: p.stat().st_mtime)
    done = [r for r in records if json.loads(r.read_text()).get("status") == "completed"]
    if not done:
        print(f"{args.workdir}: no completed run (run `make demo` first)", file=sys.stderr)
        return 2
    record = json.loads(done[-1].read_text())
    config = Path(done[-1].parent / "config.yaml")
    cfg = load_config(config if config.is_file() else None)
    runs, ingest = record["stages"]["train"]["runs"], record["stages"]["ingest"]

    spent = [0.0, 0]
    inner = numbers.bootstrap_metrics

    def timed(*a: Any, **k: Any) -> Any:
        start = time.perf_counter()
        try:
            return inner(*a, **k)
        finally:
            spent[0] += time.perf_counter() - start
            spent[1] += 1

    numbers.bootstrap_metrics = timed  # type: ignore[assignment]
    with tempfile.TemporaryDirectory(prefix="bench-report-") as tmp:
        start = time.perf_counter()
        report_stage(runs, cfg, Path(tmp), ingest_summary=ingest, profile={})
        seconds = time.perf_counter() - start
    bars = sum(int(r.get("test_bars", 0)) for r in runs)
    print(
        f"run {done[-1].parent.name}: {len(runs)} trainings, {bars:,} out-of-sample bars, "
        f"{cfg.report.bootstrap_resamples} resamples per interval"
    )
    print(
        f"report stage {seconds:.1f} s; bootstrap {spent[0]:.1f} s in {spent[1]} interval sets "
        f"({spent[0] / seconds:.0%}); target {TARGET_SECONDS:.0f} s; ratio {seconds / TARGET_SECONDS:.2f}"
    )
    ok = seconds < TARGET_SECONDS
    print(
        f"{'PASS' if ok else 'FAIL'}: report stage {seconds:.1f} s (target < {TARGET_SECONDS:.0f} s)"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
