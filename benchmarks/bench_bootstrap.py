"""Benchmark: stationary-bootstrap intervals, 2,000 resamples of 100,000 returns.

* sentio: ``sentio.evaluation.bootstrap_metrics`` (vectorised index generation in chunks,
  statistics on the ``(chunk, n)`` matrix, chunks on parallel threads) for the mean and the
  Sharpe ratio on shared resamples, for the maximum drawdown alone, and for all three
  together; at the Politis-White block length of the returns (iid Student-t returns: 1,
  i.e. iid indices, the cheapest case) and at forced block lengths 1.5 (the most block
  starts to draw: the hardest case for the generator) and 10 (``--extra-blocks``).
* baselines, measured in the same run: arch's ``StationaryBootstrap.apply`` (one Python
  call per resample) computing the mean and the Sharpe ratio, on ``--arch-resamples``
  resamples scaled up linearly to the same count; and plain numpy drawing the same number
  of iid uniform indices (``Generator.integers``) in the same chunks, gathering the returns
  and taking their mean: the floor of any bootstrap that materialises its resamples.

Timings are the best of ``--repeats`` runs. Target: each sentio timing under 5 s on the
2-core project machine. Prints figures and ratios; exits 1 if the target is missed.

Usage: ``.venv/bin/python benchmarks/bench_bootstrap.py [--n 100000] [--resamples 2000]``
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from functools import partial

import numpy as np

LIMIT_S = 5.0


def best_of(repeats: int, fn: Callable[[], object]) -> tuple[float, object]:
    """Best wall time of ``repeats`` calls, and the last result."""
    best, out = math.inf, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--arch-resamples", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--extra-blocks",
        type=float,
        nargs="*",
        default=[1.5, 10.0],
        help="block lengths timed besides the Politis-White estimate",
    )
    args = parser.parse_args()

    from arch.bootstrap import StationaryBootstrap

    from sentio.evaluation import bootstrap_metrics, optimal_block_length
    from sentio.evaluation.bootstrap import _chunk_plan, _default_workers

    rng = np.random.default_rng(42)
    x = 2e-5 + 4e-4 * rng.standard_t(4, size=args.n) / math.sqrt(2.0)  # minute-like returns
    ppy = 98_280.0
    t0 = time.perf_counter()
    block = optimal_block_length(x)
    block_s = time.perf_counter() - t0
    n, reps = args.n, args.resamples
    print(
        f"{reps} resamples of {n} returns; Politis-White block length {block:.2f} "
        f"({block_s * 1e3:.0f} ms); {_default_workers()} worker threads"
    )

    def run(stats: tuple[str, ...], b: float) -> object:
        return bootstrap_metrics(
            x, statistics=stats, resamples=reps, seed=0, block_length=b, periods_per_year=ppy
        )

    run(("mean",), block)  # warm-up (imports, thread pool)
    timings: dict[str, float] = {}
    final: object = None
    for b in (block, *args.extra_blocks):
        print(f"  block length {b:.2f}:")
        for label, stats in (
            ("mean + sharpe", ("mean", "sharpe")),
            ("max_drawdown", ("max_drawdown",)),
            ("mean + sharpe + max_drawdown", ("mean", "sharpe", "max_drawdown")),
        ):
            key = f"{label} (block {b:.2f})"
            timings[key], out = best_of(args.repeats, partial(run, stats, b))
            print(f"    sentio {label:30s} {timings[key]:6.2f} s")
            if final is None and len(stats) == 3:
                final = out
    assert isinstance(final, dict)
    for name, res in final.items():
        print(
            f"    {name:13s} estimate {res.estimate: .6g}  95% CI [{res.lower: .6g}, {res.upper: .6g}]"
        )

    # baseline 1: arch, one Python call per resample, mean and Sharpe
    def mean_sharpe(v: np.ndarray) -> np.ndarray:
        return np.array([v.mean(), v.mean() / v.std(ddof=1) * math.sqrt(ppy)])

    # arch types block_size as int but uses only 1 / block_size: the same real-valued length
    bs = StationaryBootstrap(block, x, seed=0)  # type: ignore[arg-type]
    arch_s, _ = best_of(1, lambda: bs.apply(mean_sharpe, reps=args.arch_resamples))
    arch_scaled = arch_s * reps / args.arch_resamples
    print(
        f"  baseline arch StationaryBootstrap.apply (mean + sharpe): {arch_s:.2f} s for "
        f"{args.arch_resamples} resamples -> {arch_scaled:.1f} s for {reps}"
    )

    # baseline 2: numpy iid uniform indices, same chunks, gather and mean
    def numpy_iid() -> np.ndarray:
        gen = np.random.default_rng(0)
        out = np.empty(reps)
        for first, rows in _chunk_plan(n, reps):
            idx = gen.integers(0, n, size=(rows, n), dtype=np.int32)
            out[first : first + rows] = x[idx].mean(axis=1)
        return out

    numpy_s, _ = best_of(args.repeats, numpy_iid)
    print(f"  baseline numpy iid indices + gather + mean (1 thread): {numpy_s:.2f} s")
    ms = timings[f"mean + sharpe (block {block:.2f})"]
    print(
        f"ratios: arch / sentio (mean + sharpe) {arch_scaled / ms:.0f}x; "
        f"numpy-iid floor / sentio (mean + sharpe) {numpy_s / ms:.2f}"
    )

    ok = True
    for label, seconds in timings.items():
        if seconds >= LIMIT_S:
            print(f"FAIL: {label} {seconds:.2f} s >= {LIMIT_S} s")
            ok = False
    print("OK" if ok else "targets missed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
