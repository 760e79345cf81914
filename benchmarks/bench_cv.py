"""Benchmark: purged, embargoed folds on 1,000,000 samples grouped into sessions of 390.

Times each splitter's full ``folds(...)`` (every split: purge, embargo, index arrays,
fold records) with session groups and an embargo of 390 bars:

* walk-forward, 4 splits (anchored); baseline: scikit-learn's ``TimeSeriesSplit(4)``;
* k-fold, 5 splits; baseline: scikit-learn's ``KFold(5)``;
* combinatorial purged CV, N = 6, k = 2 (15 splits); baseline (scikit-learn has none):
  plain numpy, per split a boolean test mask and the index arrays of test and complement.

Each is timed with the default spans (``[i, i + 1]``) and with explicit spans of random
length up to 390 bars (episode-length labels). Baselines build unpurged indices of the
same size, measured in the same run; ratio = sentio / baseline. Timings are the best of 3.
Target: every ``folds`` call under 1 s; exits 1 if missed.

Usage: ``.venv/bin/python benchmarks/bench_cv.py [--samples 1000000] [--session 390]``
"""

from __future__ import annotations

import argparse
import functools
import itertools
import math
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

LIMIT_S = 1.0
REPEATS = 3


def best_of(fn: Callable[[], Any]) -> float:
    """Best wall time of ``REPEATS`` calls."""
    best = math.inf
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def numpy_baseline(n: int, bounds: np.ndarray, combos: Sequence[tuple[int, ...]]) -> None:
    """Unpurged splits: a boolean test mask per split, then both index arrays."""
    for combo in combos:
        mask = np.zeros(n, dtype=bool)
        for g in combo:
            mask[bounds[g] : bounds[g + 1]] = True
        np.flatnonzero(mask)
        np.flatnonzero(~mask)


def masks_baseline(
    n: int, n_blocks: int, groups: np.ndarray, n_test: int = 1
) -> Callable[[], None]:
    """The numpy baseline over the same session-aligned blocks, every ``n_test``-subset tested."""
    from sentio.cv import contiguous_blocks

    bounds = contiguous_blocks(n, n_blocks, groups)
    combos = list(itertools.combinations(range(n_blocks), n_test))
    return lambda: numpy_baseline(n, bounds, combos)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--session", type=int, default=390)
    parser.add_argument("--embargo", type=int, default=390)
    args = parser.parse_args()

    from sentio.cv import CombinatorialPurgedCV, PurgedKFold, PurgedWalkForward

    n = args.samples
    groups = np.repeat(np.arange(math.ceil(n / args.session)), args.session)[:n]
    rng = np.random.default_rng(0)
    t0 = np.arange(n, dtype=np.int64)
    spans = np.column_stack([t0, t0 + rng.integers(1, args.session + 1, n)])
    print(
        f"{n:,} samples in {int(groups[-1]) + 1:,} sessions of {args.session}; "
        f"embargo {args.embargo} bars; best of {REPEATS}"
    )

    try:
        from sklearn.model_selection import KFold, TimeSeriesSplit
    except ImportError:  # pragma: no cover - sklearn is optional
        KFold = TimeSeriesSplit = None  # noqa: N806

    X = np.zeros((n, 1), dtype=np.float32)
    cases: list[tuple[str, Any, str, Callable[[], Any]]] = []
    wf = PurgedWalkForward(4, anchored=True, embargo=args.embargo)
    kf = PurgedKFold(5, embargo=args.embargo)
    cp = CombinatorialPurgedCV(6, 2, embargo=args.embargo)
    if TimeSeriesSplit is not None and KFold is not None:
        cases.append(
            (
                "walk-forward 4",
                wf,
                "sklearn TimeSeriesSplit(4)",
                lambda: list(TimeSeriesSplit(4).split(X)),
            )
        )
        cases.append(("k-fold 5", kf, "sklearn KFold(5)", lambda: list(KFold(5).split(X))))
    else:
        for name, sp in (("walk-forward 4", wf), ("k-fold 5", kf)):
            cases.append((name, sp, "numpy masks", masks_baseline(n, sp.n_blocks, groups)))
    cases.append(("cpcv N=6 k=2", cp, "numpy masks (15 splits)", masks_baseline(n, 6, groups, 2)))

    ok = True
    for name, splitter, base_name, base in cases:
        base_s = best_of(base)
        for label, kwargs in (("default spans", {}), ("random spans <= 390", {"spans": spans})):
            folds = splitter.folds(n, groups=groups, **kwargs)  # warm-up and figures
            secs = best_of(functools.partial(splitter.folds, n, groups=groups, **kwargs))
            purged = sum(f.n_purged for f in folds)
            embargoed = sum(f.n_embargoed for f in folds)
            print(
                f"{name:>15} ({label}): sentio folds {secs * 1000:7.1f} ms for {len(folds)} splits "
                f"(purged {purged:,}, embargoed {embargoed:,}); baseline {base_name} "
                f"{base_s * 1000:7.1f} ms; ratio {secs / base_s:.2f}"
            )
            if secs >= LIMIT_S:
                print(f"FAIL: {name} ({label}) {secs:.3f} s >= {LIMIT_S} s")
                ok = False
    print("OK" if ok else "targets missed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
