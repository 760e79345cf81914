"""One million one-minute bars through the default feature set, beside a plain pandas version.

Run: .venv/bin/python benchmarks/bench_features.py [--rows 1000000] [--processes 3]

The pandas baseline computes the same indicators the straightforward way (rolling, ewm,
groupby-cumsum per session, resample + merge_asof for coarse bars, rolling z-scores),
single process, in the same run. Each side runs in fresh processes (``--processes``, 3 by
default): a warm-up on 50,000 rows (imports, the compiled kernels' disk cache, the
calendar), then three timed full runs. The target is judged on the first full run of a
fresh process, which is how the nightly flow builds features (once per process); the
best of the repeated runs in one process is printed beside it (there the baseline gains
most, from its allocator reusing the memory of its earlier runs). Targets (issue 3):
under 2 s and at least 10x faster than pandas. Exit status 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sentio.calendar import sessions  # noqa: E402
from sentio.config import SentioConfig, resolve_for_bars  # noqa: E402
from sentio.features import build_features  # noqa: E402
from tests.conftest import minute_bars  # noqa: E402

TIME_TARGET_S = 2.0
RATIO_TARGET = 10.0
REPEATS = 3


def make_bars(rows: int) -> pl.DataFrame:
    """Whole NYSE sessions of one symbol, about ``rows`` bars."""
    end = dt.date(2010, 1, 4) + dt.timedelta(days=int(rows / 390 * 1.47) + 10)
    bars = minute_bars("2010-01-04", end.isoformat(), "QQQ", seed=1)
    return bars.head(rows)


def _wilder(x: pd.Series, n: int, first: int) -> pd.Series:
    seeded = x.copy()
    seeded.iloc[: first + n - 1] = np.nan
    seeded.iloc[first + n - 1] = x.iloc[first : first + n].mean()
    return seeded.ewm(alpha=1.0 / n, adjust=False).mean()


def _rsi(c: pd.Series, n: int) -> pd.Series:
    d = c.diff()
    g, lo = _wilder(d.clip(lower=0), n, 1), _wilder((-d).clip(lower=0), n, 1)
    return 100 - 100 / (1 + g / lo)


def pandas_features(bars: pl.DataFrame, cfg: SentioConfig) -> pd.DataFrame:
    """The same default indicators in plain pandas (rolling z-score normalisation)."""
    f = cfg.features
    df = bars.to_pandas().set_index("timestamp")
    o, h, lo, c, v = (df[k] for k in ("open", "high", "low", "close", "volume"))
    out = pd.DataFrame(index=df.index)
    r1 = np.log(c / c.shift(1))
    for k in f.return_horizons:
        out[f"log_ret_{k}"] = np.log(c / c.shift(k))
    hl2 = np.log(h / lo) ** 2
    co2 = np.log(c / o) ** 2
    for w in f.vol_windows:
        out[f"rv_cc_{w}"] = r1.rolling(w).std()
        out[f"rv_park_{w}"] = np.sqrt(hl2.rolling(w).mean() / (4 * math.log(2)))
        gk = (0.5 * hl2 - (2 * math.log(2) - 1) * co2).rolling(w).mean()
        out[f"rv_gk_{w}"] = np.sqrt(gk.clip(lower=0))
    out[f"rsi_{f.rsi_window}"] = _rsi(c, f.rsi_window)
    fast, slow, sig = f.macd
    line = c.ewm(span=fast, adjust=False).mean() - c.ewm(span=slow, adjust=False).mean()
    signal = line.ewm(span=sig, adjust=False).mean()
    out["macd_line"], out["macd_signal"], out["macd_hist"] = (
        line / c,
        signal / c,
        (line - signal) / c,
    )
    bw, bk = f.bollinger_window, f.bollinger_k
    mid, sd = c.rolling(bw).mean(), c.rolling(bw).std(ddof=0)
    out[f"bb_pctb_{bw}"] = (c - (mid - bk * sd)) / (2 * bk * sd)
    out[f"bb_width_{bw}"] = 2 * bk * sd / mid
    prev = c.shift(1)
    tr = pd.concat([h - lo, (h - prev).abs(), (lo - prev).abs()], axis=1).max(axis=1)
    out[f"atr_rel_{f.atr_window}"] = _wilder(tr, f.atr_window, 0) / c
    lv = np.log1p(v)
    w = f.volume_z_window
    out[f"volume_z_{w}"] = (lv - lv.rolling(w).mean()) / lv.rolling(w).std()
    session = df.index.tz_convert("America/New_York").date
    first = pd.Series(session, index=df.index) != pd.Series(session, index=df.index).shift(1)
    out["gap"] = np.log(o / prev).where(first).ffill()
    g = df.groupby(session)
    pv = ((h + lo + c) / 3 * v).groupby(session).cumsum()
    out["vwap_dist"] = np.log(c / (pv / g["volume"].cumsum()))
    out["dist_session_high"] = np.log(c / g["high"].cummax())
    out["dist_session_low"] = np.log(c / g["low"].cummin())
    table = sessions(session[0], session[-1]).to_pandas().set_index("session")
    closes = pd.Series(pd.to_datetime(table["close"]).values, index=table.index)
    opens = pd.Series(pd.to_datetime(table["open"]).values, index=table.index)
    end = df.index + pd.Timedelta(minutes=1)
    out["minutes_since_open"] = (end.tz_localize(None) - opens.loc[session].values) / pd.Timedelta(
        minutes=1
    )
    out["minutes_to_close"] = (closes.loc[session].values - end.tz_localize(None)) / pd.Timedelta(
        minutes=1
    )
    out = out.reset_index()
    for m in f.coarse_minutes:
        cc = c.resample(f"{m}min").last().dropna()
        cf = pd.DataFrame(
            {
                f"c{m}_log_ret_1": np.log(cc / cc.shift(1)),
                f"c{m}_rv_cc_{f.coarse_vol_window}": np.log(cc / cc.shift(1))
                .rolling(f.coarse_vol_window)
                .std(),
                f"c{m}_rsi_{f.rsi_window}": _rsi(cc, f.rsi_window),
            }
        )
        cf["visible"] = cf.index + pd.Timedelta(minutes=m - 1)
        out = pd.merge_asof(out, cf.reset_index(drop=True), left_on="timestamp", right_on="visible")
        out = out.drop(columns="visible")
    out = out.set_index("timestamp")
    norm = [col for col in out.columns if not col.startswith("minutes_")]
    nw = f.norm_window
    roll = out[norm].rolling(nw)
    out[norm] = ((out[norm] - roll.mean()) / roll.std()).clip(-10, 10)
    return out.iloc[nw:].astype("float32")


def _worker(impl: str, rows: int) -> None:
    """One fresh process: warm up on 50,000 rows, then time ``REPEATS`` full runs."""
    bars = make_bars(rows)
    cfg = resolve_for_bars(SentioConfig(), 60)  # one-minute bars
    run = build_features if impl == "sentio" else pandas_features
    run(bars.head(50_000), cfg)  # imports, compiled-kernel cache, calendar cache
    times = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        out = run(bars, cfg)
        times.append(time.perf_counter() - t0)
    if isinstance(out, pl.DataFrame):
        shape = [out.height, out.width - 1]
    else:
        shape = [int(out.shape[0]), int(out.shape[1])]
    print(json.dumps({"rows": bars.height, "times": times, "shape": shape}))


def _measure(impl: str, rows: int, processes: int) -> list[dict[str, Any]]:
    results = []
    for _ in range(processes):
        cmd = [sys.executable, __file__, "--worker", impl, "--rows", str(rows)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode:
            raise SystemExit(f"bench_features: the {impl} worker failed:\n{done.stderr}")
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return results


def _list(times: list[float]) -> str:
    return ", ".join(f"{t:.2f}" for t in times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--processes", type=int, default=3, help="fresh processes per side")
    parser.add_argument("--worker", choices=["sentio", "pandas"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    # pandas 3 warns about date objects in the baseline's session lookup; harmless here.
    warnings.filterwarnings("ignore", message="Inferring datetime64")
    if args.worker:
        _worker(args.worker, args.rows)
        return 0
    ours = _measure("sentio", args.rows, args.processes)
    base = _measure("pandas", args.rows, args.processes)
    first = [r["times"][0] for r in ours], [r["times"][0] for r in base]
    every = [t for r in ours for t in r["times"]], [t for r in base for t in r["times"]]
    ratio_first = min(first[1]) / min(first[0])
    ratio_every = min(every[1]) / min(every[0])
    (height, width), (_, ref_width) = ours[0]["shape"], base[0]["shape"]
    print(f"input rows                 {ours[0]['rows']:,}")
    print(f"feature rows x columns     {height:,} x {width}  (pandas {ref_width})")
    print(f"first full run in a fresh process (best of {args.processes} processes):")
    print(f"  sentio build_features    {min(first[0]):6.2f} s  ({_list(first[0])})")
    print(f"  pandas baseline          {min(first[1]):6.2f} s  ({_list(first[1])})")
    print(f"  ratio pandas/sentio      {ratio_first:6.1f} x")
    print(f"repeated runs in one process (best of {len(every[0])}, {REPEATS} per process):")
    print(f"  sentio build_features    {min(every[0]):6.2f} s")
    print(f"  pandas baseline          {min(every[1]):6.2f} s")
    print(f"  ratio pandas/sentio      {ratio_every:6.1f} x")
    print(f"targets                    {TIME_TARGET_S:.0f} s, {RATIO_TARGET:.0f} x (first runs)")
    ok = max(first[0]) < TIME_TARGET_S and ratio_first >= RATIO_TARGET
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
