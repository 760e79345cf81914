"""Benchmark: five years of synthetic one-minute bars for three symbols.

Runs two jobs, each in a fresh Python process so that their peak RSS is their own:

* ``synth``: ``sentio.data.synth.write_synth`` with ``years=5`` (generate the underlying,
  derive the long and short ETFs, write bars, regimes and config);
* ``baseline``: numpy draws as many standard normals as the synth bars hold price and
  volume values (rows x 5) and polars writes them to Feather the same way.

Prints elapsed seconds (work only, imports excluded, and the whole process) and peak RSS
of each, and the ratio synth / baseline. Exits 1 if the synth job takes over 10 s.

Usage: ``.venv/bin/python benchmarks/bench_synth.py [--years 5]``
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LIMIT_S = 10.0


def _peak_rss_mib() -> float:
    # ru_maxrss is KiB on Linux, bytes on macOS
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def _job_synth(years: float, folder: Path) -> dict[str, float]:
    t_import = time.perf_counter()
    import polars as pl

    from sentio.config import SentioConfig, SynthConfig
    from sentio.data.synth import write_synth

    cfg = SentioConfig.model_validate({"synth": SynthConfig.model_validate({"years": years})})
    t0 = time.perf_counter()
    paths = write_synth(folder / "bars.feather", cfg)
    elapsed = time.perf_counter() - t0
    rows = pl.scan_ipc(paths["bars"]).select(pl.len()).collect().item()
    return {"work_s": elapsed, "import_s": t0 - t_import, "rows": rows}


def _job_baseline(rows: int, folder: Path) -> dict[str, float]:
    t_import = time.perf_counter()
    import numpy as np
    import polars as pl

    from sentio.io import write_feather_atomic

    t0 = time.perf_counter()
    draws = np.random.default_rng(0).standard_normal((5, rows))
    frame = pl.DataFrame(
        {c: draws[i] for i, c in enumerate(("open", "high", "low", "close", "volume"))}
    )
    write_feather_atomic(folder / "baseline.feather", frame)
    elapsed = time.perf_counter() - t0
    return {"work_s": elapsed, "import_s": t0 - t_import, "rows": rows}


def _run_child(args: list[str]) -> dict[str, float]:
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"benchmark job {args} failed with exit code {proc.returncode}")
    result: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_s"] = time.perf_counter() - t0
    return result


def main() -> int:
    """Run both jobs, print the comparison, return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--years", type=float, default=5.0)
    parser.add_argument("--job", choices=["synth", "baseline"], help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.job:  # child process: one job, one JSON line
        with tempfile.TemporaryDirectory() as tmp:
            if args.job == "synth":
                res = _job_synth(args.years, Path(tmp))
            else:
                res = _job_baseline(args.rows, Path(tmp))
        res["peak_rss_mib"] = _peak_rss_mib()
        print(json.dumps(res))
        return 0

    synth = _run_child(["--job", "synth", "--years", str(args.years)])
    base = _run_child(["--job", "baseline", "--rows", str(int(synth["rows"]))])
    print(f"synthetic market: {args.years:g} years, {int(synth['rows']):,} bars (3 symbols)")
    print(f"{'job':<10} {'work s':>8} {'process s':>10} {'import s':>9} {'peak RSS MiB':>13}")
    for name, res in (("synth", synth), ("baseline", base)):
        print(
            f"{name:<10} {res['work_s']:>8.2f} {res['process_s']:>10.2f} "
            f"{res['import_s']:>9.2f} {res['peak_rss_mib']:>13.0f}"
        )
    print(
        f"ratio synth/baseline: work {synth['work_s'] / base['work_s']:.2f}x, "
        f"peak RSS {synth['peak_rss_mib'] / base['peak_rss_mib']:.2f}x"
    )
    if synth["work_s"] > LIMIT_S:
        print(f"FAIL: synth took {synth['work_s']:.2f} s > {LIMIT_S:.0f} s", file=sys.stderr)
        return 1
    print(f"OK: synth within {LIMIT_S:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
