"""Ingest of one million one-minute bars: time and peak memory, beside a plain polars.read_ipc.

Run: .venv/bin/python benchmarks/bench_ingest.py [--rows 1000000]

Each measurement runs in a fresh subprocess so that its peak resident memory (ru_maxrss)
is its own. Targets (issue 2): ingest under 15 s and under 2 GB. Exit status 1 when a
target is missed.
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

TIME_TARGET_S = 15.0
MEMORY_TARGET_MB = 2048.0


def make_input(path: Path, rows: int) -> None:
    """One-minute regular-hours bars of three symbols on the NYSE calendar, ``rows`` in all."""
    import datetime as dt

    import polars as pl

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.conftest import minute_bars

    per_symbol = rows // 3
    end = dt.date(2010, 1, 4) + dt.timedelta(days=int(per_symbol / 390 * 1.5) + 30)
    frames = []
    for i, symbol in enumerate(("QQQ", "SQQQ", "TQQQ")):
        bars = minute_bars("2010-01-04", end.isoformat(), symbol, seed=i)
        # Whole sessions only (a cut session would be rejected as incomplete).
        day = pl.col("timestamp").dt.date().alias("day")
        sizes = bars.group_by(day).len().sort("day")
        keep = sizes.filter(pl.col("len").cum_sum() - pl.col("len") < per_symbol)["day"]
        frames.append(bars.filter(day.is_in(keep.implode())))
    pl.concat(frames).write_ipc(path)


def _child(mode: str, src: str, out: str) -> None:
    t0 = time.perf_counter()
    if mode == "read_ipc":
        import polars as pl

        rows = pl.read_ipc(src).height
    else:
        from sentio.data.ingest import ingest_files

        rows = ingest_files([src], out).report["rows_kept"]
    elapsed = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"mode": mode, "rows": rows, "seconds": elapsed, "peak_mb": peak_mb}))


def measure(mode: str, src: Path, out: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", mode, str(src), str(out)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "bars.feather"
        make_input(src, args.rows)
        base = measure("read_ipc", src, Path(tmp) / "unused.feather")
        ing = measure("ingest", src, Path(tmp) / "out" / "bars.feather")
    print(f"input rows            {base['rows']:>12,}")
    print(f"polars.read_ipc       {base['seconds']:>9.2f} s   peak {base['peak_mb']:>7.0f} MB")
    print(f"sentio ingest         {ing['seconds']:>9.2f} s   peak {ing['peak_mb']:>7.0f} MB")
    print(
        f"ratio ingest/read     {ing['seconds'] / base['seconds']:>9.1f} x   {ing['peak_mb'] / base['peak_mb']:>7.1f} x"
    )
    print(f"targets               {TIME_TARGET_S:>9.0f} s        {MEMORY_TARGET_MB:>7.0f} MB")
    ok = (
        ing["seconds"] < TIME_TARGET_S
        and ing["peak_mb"] < MEMORY_TARGET_MB
        and ing["rows"] == base["rows"]
    )
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
