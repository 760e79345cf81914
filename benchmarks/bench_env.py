"""Benchmark: environment steps per second, batched simulator vs single envs in DummyVecEnv.

Market: one year of synthetic one-minute bars (``sentio.data.synth.generate``, seed 11,
QQQ and derived TQQQ/SQQQ), features of the default ``SentioConfig()`` (``build_features``,
rolling normalisation), random regime probabilities (Dirichlet(1), seeded, one column per
``regimes.n_states``: the simulator reads them like fitted ones), default trading model
(``window`` 32, every mask layer on, costs, flat at the close). Episodes: one session,
sampled from the whole market.

* sentio: ``SentioVecEnv`` with 256 accounts; each vector step reads ``action_masks()``,
  draws one action per account uniformly among its ALLOWED actions (vectorised: argmax of
  uniform keys times the mask) and calls ``step`` (auto-reset included). 2,000 vector steps
  after 20 warm-up steps.
* baseline: ``sentio.env.single.TradingEnv`` (one account in Python scalars) x 256 in
  stable-baselines3's ``DummyVecEnv``, the same random-valid-action loop (masks through
  ``env_method("action_masks")``). 50 vector steps after 2 warm-up steps.

Rates are env steps per second (accounts x vector steps / seconds, masks and sampling
included). Targets: sentio >= 1,000,000 env steps/s and >= 20x the DummyVecEnv rate.
Prints figures and the ratio; exits 1 if a target is missed.

Usage: ``.venv/bin/python benchmarks/bench_env.py [--envs 256] [--steps 2000]
[--baseline-steps 50] [--years 1]``
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

TARGET_STEPS_S = 1_000_000.0
TARGET_RATIO = 20.0


def random_valid_actions(masks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One action per row, uniform among the row's allowed actions (flat always is)."""
    keys = rng.random(masks.shape) * masks
    return keys.argmax(axis=1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--envs", type=int, default=256)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--baseline-steps", type=int, default=50)
    parser.add_argument("--years", type=float, default=1.0)
    args = parser.parse_args()

    import polars as pl
    from stable_baselines3.common.vec_env import DummyVecEnv

    from sentio.config import SentioConfig
    from sentio.data.synth import generate
    from sentio.env import EnvParams, SentioVecEnv, build_market
    from sentio.env.single import TradingEnv
    from sentio.features import build_features

    t0 = time.perf_counter()
    cfg = SentioConfig.model_validate({"synth": {"years": args.years, "seed": 11}})
    bars = generate(cfg).bars
    feats = build_features(bars, cfg)
    K = cfg.regimes.n_states
    probs = np.random.default_rng(0).dirichlet(np.ones(K), size=feats.height)
    regimes = pl.DataFrame(
        {"timestamp": feats["timestamp"]} | {f"p_regime_{k}": probs[:, k] for k in range(K)}
    )
    market = build_market(bars, feats, regimes, cfg)
    params = EnvParams.from_config(cfg, market)
    ranges = [(0, market.n_rows)]
    print(
        f"market: {market.n_rows:,} one-minute rows, {market.n_features} features, "
        f"{market.n_regimes} regimes, window {params.window}, {params.n_actions} actions "
        f"(built in {time.perf_counter() - t0:.1f} s)"
    )
    N = args.envs

    # ---------------------------------------------------------------- batched
    venv = SentioVecEnv(market, params, ranges, N, seed=0)
    venv.reset()
    rng = np.random.default_rng(1)
    for _ in range(20):
        venv.step(random_valid_actions(venv.action_masks(), rng))
    t_mask = t_step = 0.0
    done_count = 0
    start = time.perf_counter()
    for _ in range(args.steps):
        a0 = time.perf_counter()
        actions = random_valid_actions(venv.action_masks(), rng)
        a1 = time.perf_counter()
        _, _, dones, _ = venv.step(actions)
        t_mask += a1 - a0
        t_step += time.perf_counter() - a1
        done_count += int(dones.sum())
    batched_s = time.perf_counter() - start
    rate = N * args.steps / batched_s
    print(
        f"sentio SentioVecEnv x{N}: {args.steps} vector steps in {batched_s:.2f} s = "
        f"{rate:,.0f} env steps/s ({1e6 * batched_s / args.steps:.0f} us per vector step: "
        f"masks + sampling {1e6 * t_mask / args.steps:.0f} us, step + observe "
        f"{1e6 * t_step / args.steps:.0f} us; {done_count} episode ends)"
    )

    # ---------------------------------------------------------------- baseline
    def make(i: int) -> Callable[[], Any]:
        return lambda: TradingEnv(market, params, ranges, seed=i)

    dummy = DummyVecEnv([make(i) for i in range(N)])
    dummy.reset()

    def dummy_masks() -> np.ndarray:
        return np.stack(dummy.env_method("action_masks"))

    for _ in range(2):
        dummy.step(random_valid_actions(dummy_masks(), rng))
    start = time.perf_counter()
    for _ in range(args.baseline_steps):
        dummy.step(random_valid_actions(dummy_masks(), rng))
    base_s = time.perf_counter() - start
    base_rate = N * args.baseline_steps / base_s
    ratio = rate / base_rate
    print(
        f"baseline DummyVecEnv x{N} TradingEnv: {args.baseline_steps} vector steps in "
        f"{base_s:.2f} s = {base_rate:,.0f} env steps/s"
    )
    print(f"ratio sentio / DummyVecEnv: {ratio:.1f}x")

    ok = True
    if rate < TARGET_STEPS_S:
        print(f"FAIL: {rate:,.0f} env steps/s < {TARGET_STEPS_S:,.0f}")
        ok = False
    if ratio < TARGET_RATIO:
        print(f"FAIL: ratio {ratio:.1f}x < {TARGET_RATIO:.0f}x")
        ok = False
    print("OK" if ok else "targets missed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
