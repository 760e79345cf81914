"""Benchmark: HMM regime fit on 250,000 rows and causal filtering throughput.

* fit: ``sentio.regimes.fit_regimes`` (default ``RegimesConfig``: 5 initialisations) on the
  first 250,000 regime inputs of a synthetic market; baseline: ONE plain hmmlearn
  ``GaussianHMM.fit`` with the same settings on the same standardised rows. Target < 20 s.
* filter: ``sentio.regimes.filter_probs`` over all rows with the fitted model; baselines:
  hmmlearn's ``predict_proba`` (forward-backward in C, smoothed: the work of one forward
  pass plus one backward pass) and sentio's own ``OnlineFilter`` (one bar at a time, Python
  loop) on a slice. Filter timings are the best of 3 runs; the inputs are repeated end to
  end to reach >= 1,000,000 rows. Target >= 1,000,000 rows/s.

Prints figures and ratios; exits 1 if a target is missed.

Usage: ``.venv/bin/python benchmarks/bench_regimes.py [--rows 250000] [--years 4]``
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings

import numpy as np

FIT_LIMIT_S = 20.0
FILTER_TARGET_ROWS_S = 1_000_000.0
REPEATS = 3  # filter timings: best of this many runs (sentio and baseline alike)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=250_000)
    parser.add_argument("--years", type=float, default=4.0)
    args = parser.parse_args()

    from hmmlearn.hmm import GaussianHMM

    from sentio.config import RegimesConfig, SentioConfig
    from sentio.data.synth import generate
    from sentio.regimes import OnlineFilter, filter_probs, fit_regimes, regime_observations

    cfg = SentioConfig.model_validate({"synth": {"years": args.years, "seed": 11}})
    inputs = regime_observations(generate(cfg).bars, cfg)
    X = inputs.X
    if X.shape[0] < args.rows:
        print(f"only {X.shape[0]} rows; raise --years", file=sys.stderr)
        return 2
    X_train = X[: args.rows]
    rcfg = RegimesConfig()

    t0 = time.perf_counter()
    model = fit_regimes(X_train, rcfg)
    fit_s = time.perf_counter() - t0
    Z = (X_train - X_train.mean(0)) / X_train.std(0)
    base = GaussianHMM(
        n_components=rcfg.n_states,
        covariance_type=rcfg.covariance_type,
        n_iter=rcfg.n_iter,
        tol=rcfg.tol * args.rows,
        random_state=0,
    )
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base.fit(Z)
    base_fit_s = time.perf_counter() - t0
    print(
        f"fit {args.rows} rows x {X.shape[1]}: sentio fit_regimes {fit_s:.2f} s "
        f"({rcfg.n_init} inits, method={model.method}, kept fit {model.n_iter} EM iterations); "
        f"baseline one hmmlearn fit {base_fit_s:.2f} s ({base.monitor_.iter} iterations); "
        f"ratio {fit_s / base_fit_s:.2f}"
    )
    print(f"  reason: {model.reason}")

    # throughput on >= 1,000,000 rows: the inputs repeated end to end
    X = np.concatenate([X] * int(np.ceil(1_000_000 / X.shape[0])))
    filter_probs(model, X[:10_000])  # warm-up
    filt_s = math.inf
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        probs = filter_probs(model, X)
        filt_s = min(filt_s, time.perf_counter() - t0)
    rate = X.shape[0] / filt_s
    hmm = GaussianHMM(n_components=model.n_states, covariance_type=model.covariance_type)
    hmm.startprob_, hmm.transmat_ = model.startprob, model.transmat
    hmm.means_, hmm.covars_ = model.means, model.covars
    Zall = (X - model.mean) / model.std
    base_s = math.inf
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        smoothed = hmm.predict_proba(Zall)
        base_s = min(base_s, time.perf_counter() - t0)
    base_rate = X.shape[0] / base_s
    n_online = 20_000
    online = OnlineFilter(model)
    t0 = time.perf_counter()
    steps = np.stack([online.step(x) for x in X[:n_online]])
    online_rate = n_online / (time.perf_counter() - t0)
    assert np.allclose(steps, probs[:n_online], atol=1e-10)
    assert smoothed.shape == probs.shape
    print(
        f"filter {X.shape[0]} rows: sentio filter_probs {filt_s:.3f} s = {rate:,.0f} rows/s; "
        f"baseline hmmlearn predict_proba (smoothing, C) {base_rate:,.0f} rows/s "
        f"(ratio {rate / base_rate:.2f}); OnlineFilter per-bar loop {online_rate:,.0f} rows/s "
        f"(ratio {rate / online_rate:.1f})"
    )
    ok = True
    if fit_s >= FIT_LIMIT_S:
        print(f"FAIL: fit {fit_s:.2f} s >= {FIT_LIMIT_S} s")
        ok = False
    if rate < FILTER_TARGET_ROWS_S:
        print(f"FAIL: filter {rate:,.0f} rows/s < {FILTER_TARGET_ROWS_S:,.0f}")
        ok = False
    print("OK" if ok else "targets missed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
