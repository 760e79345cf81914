"""Benchmark: a paper-trading run that appends one session, incremental vs the full recomputation.

For paper ledgers of several lengths (default 21, 126 and 378 sessions: a month, six months
and a year and a half of paper trading) ending the session before the last one of a bar
history, the same one-session append is timed two ways on copies of the same ledger and
state: ``paper_trade`` given only the new session's bars (the incremental path: the market
over a bounded tail of the stored bars, the replay resumed from the state) and given the
whole history with ``verify=True`` (the full recomputation from the ledger's first bar,
what every run did before). A third column gives the incremental run with the whole
history passed as a frame (only its new bars are used; the overlap with the stored tail
is checked). Bars are passed as frames (the ingest of a bar file is not timed here; it is
content cached and runs on the file given). Each time is the best of ``--repeats`` runs
in one process that has run the ledger's setup already; the first incremental run in a
fresh process is printed apart (imports, and numba's compiled kernels loading on their
first use). The two paths must write identical ledgers.

Target: the incremental run's time per new bar stays flat with the ledger's length (the
longest ledger within 2x of the shortest) and is at least 5x faster than the full
recomputation at every length. What still grows with the ledger is printed: reading and
rewriting the ledger file (zstd feather, atomic).

    .venv/bin/python benchmarks/bench_paper.py --workdir .sentio --bars data/demo/bars.feather \
        [--version V] [--sessions 21,126,378] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FLAT = 2.0
SPEEDUP = 5.0


def _timed(fn: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def cold(workdir: str, version: str, new_file: str, root: str) -> None:
    """One incremental run in this fresh process, after the imports (timed apart)."""
    t0 = time.perf_counter()
    import polars as pl

    from sentio.paper import paper_trade
    from sentio.registry import Registry

    imports = time.perf_counter() - t0
    reg = Registry(Path(workdir) / "registry")
    new = pl.read_ipc(new_file)
    first, s = _timed(lambda: paper_trade(reg, new, version=version, root=root))
    assert s["mode"] == "incremental", s["reason"]
    print(json.dumps({"imports_s": round(imports, 2), "first_incremental_run_s": round(first, 2)}))


def main() -> int:
    if len(sys.argv) == 6 and sys.argv[1] == "--cold":
        cold(*sys.argv[2:])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", default=".sentio", help="working directory holding registry/")
    ap.add_argument("--bars", default="data/demo/bars.feather", help="canonical bar file")
    ap.add_argument("--version", default=None, help="version id (default: the newest)")
    ap.add_argument("--sessions", default="21,126,378", help="ledger lengths in sessions")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import polars as pl

    from sentio.data.schema import session_date
    from sentio.io import write_feather_atomic
    from sentio.paper import ledger_path, paper_trade, read_ledger
    from sentio.registry import Registry

    workdir = Path(args.workdir).expanduser().resolve()
    reg = Registry(workdir / "registry")
    version = args.version or sorted(p.name for p in (reg.root / "versions").iterdir())[-1]
    bars = pl.read_ipc(args.bars)
    day = session_date(pl.col("timestamp"))
    days = bars.select(day.unique().sort()).to_series().to_list()
    last, before = days[-1], days[-2]
    history, upto = bars, bars.filter(day <= before)
    new = bars.filter(day == last)
    n_new = new.filter(pl.col("symbol") == new["symbol"][0]).height
    lengths = [int(x) for x in args.sessions.split(",")]
    print(f"bars: {bars.height:,} rows, {len(days)} sessions to {last}; version {version}")
    print(f"append: the session {last} ({n_new} bars); best of {args.repeats}")
    scratch = Path(tempfile.mkdtemp(prefix="bench-paper-"))
    rows: list[dict[str, Any]] = []
    ok = True
    try:
        for i, sessions in enumerate(lengths):
            start = days[len(days) - 1 - sessions]
            base = scratch / f"base-{sessions}"
            setup_s, _ = _timed(
                lambda base=base, start=start: paper_trade(
                    reg, upto, version=version, start=str(start), root=base
                )
            )

            def copy(tag: str, base: Path = base) -> Path:
                dst = scratch / tag
                shutil.rmtree(dst, ignore_errors=True)
                shutil.copytree(base, dst)
                return dst

            if i == 0:
                new_file = scratch / "new.feather"
                new.write_ipc(new_file)
                out = (
                    subprocess.run(
                        [
                            sys.executable,
                            __file__,
                            "--cold",
                            str(workdir),
                            version,
                            str(new_file),
                            str(copy("c")),
                        ],
                        capture_output=True,
                        text=True,
                        check=True,
                    )
                    .stdout.strip()
                    .splitlines()[-1]
                )
                print(f"a fresh process: {out}")
            inc, inc_whole, full = [], [], []
            for r in range(args.repeats):
                t, s = _timed(lambda: paper_trade(reg, new, version=version, root=copy("i")))
                assert s["mode"] == "incremental" and s["appended"] == n_new, s
                inc.append(t)
                t, s = _timed(lambda: paper_trade(reg, history, version=version, root=copy("h")))
                assert s["mode"] == "incremental" and s["appended"] == n_new, s
                inc_whole.append(t)
                if r == 0:
                    t, s = _timed(
                        lambda: paper_trade(
                            reg, history, version=version, root=copy("f"), verify=True
                        )
                    )
                    assert s["mode"] == "verify", s
                    full.append(t)
                    full_summary = s
            a = read_ledger(ledger_path(scratch / "i", version))
            b = read_ledger(ledger_path(scratch / "f", version))
            assert a is not None and b is not None
            same = a.drop("appended_at").equals(b.drop("appended_at"))
            ok &= same
            ledger = a
            path = scratch / "io.feather"
            io_s, _ = _timed(
                lambda ledger=ledger, path=path: (
                    write_feather_atomic(path, ledger),
                    pl.read_ipc(path).height,
                )
            )
            rows.append(
                {
                    "sessions": sessions,
                    "ledger": ledger.height,
                    "setup": setup_s,
                    "full": min(full),
                    "inc": min(inc),
                    "inc_whole": min(inc_whole),
                    "io": io_s,
                    "same": same,
                    "market_full": full_summary["market_rows"],
                    "market_inc": s["market_rows"],
                }
            )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    print(
        f"{'sessions':>8} {'ledger rows':>11} {'full s':>7} {'inc s':>6} {'inc ms/bar':>10} "
        f"{'ratio':>6} {'inc(whole) s':>12} {'ledger i/o s':>12} {'market rows inc/full':>21}"
    )
    for r in rows:
        print(
            f"{r['sessions']:>8} {r['ledger']:>11,} {r['full']:>7.2f} {r['inc']:>6.2f} "
            f"{1e3 * r['inc'] / n_new:>10.2f} {r['full'] / r['inc']:>5.1f}x "
            f"{r['inc_whole']:>12.2f} {r['io']:>12.3f} "
            f"{r['market_inc']:>9,} / {r['market_full']:>9,}"
        )
    flat = rows[-1]["inc"] / rows[0]["inc"]
    fast = min(r["full"] / r["inc"] for r in rows)
    print(
        f"incremental, longest / shortest ledger: {flat:.2f}x (target <= {FLAT:g}x); "
        f"full / incremental: at least {fast:.1f}x (target >= {SPEEDUP:g}x); "
        f"identical ledgers: {all(r['same'] for r in rows)}"
    )
    ok &= flat <= FLAT and fast >= SPEEDUP
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
