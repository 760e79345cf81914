"""Benchmark: backtest time per bar, the policy's batched and per-bar inference vs SB3's ``predict``.

The backtest queries the policy once per bar: the account part of the observation is
sequential, the feature windows are not. Three ways to get the same deterministic
actions, run over the same bars with one torch thread, in one process, alternating, best
of ``--repeats``:

* ``predict``: ``model.predict(obs, action_masks=mask, deterministic=True)`` per bar (the
  baseline);
* ``per bar``: ``sentio.env.decisions.model_actions``' fast path, the actor's logits
  without SB3's distribution objects, per bar;
* ``batched`` (the default): ``sentio.env.decisions.window_batched_actions``, the window
  part of the actor (the transformer encoder, or the MLP's first layer over the window)
  computed for 512 rows at once, and per bar only the rest.

Policies: the default configuration's (MaskablePPO, MLP on the 4-bar window) and Sentio
PPO with the transformer on a 32-bar window (regime gating on). The actions of the
three must be identical. Target: the default (batched) at least 1.3x faster than
``predict`` for each policy.

    .venv/bin/python benchmarks/bench_backtest.py [--sessions 10] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TARGET = 1.3


def _setup(overrides: dict[str, Any], sessions: int) -> tuple[Any, Any, Any, list[tuple[int, int]]]:
    import torch

    from sentio.agents.training import make_model
    from sentio.config import SentioConfig, with_overrides
    from sentio.data.synth import generate
    from sentio.env import EnvParams, SentioVecEnv, build_market
    from sentio.features import build_features

    cfg = with_overrides(
        SentioConfig(),
        {"synth.years": sessions / 252 + 0.05, "regimes.enabled": False, **overrides},
    )
    bars = generate(cfg).bars
    market = build_market(bars, build_features(bars, cfg), None, cfg)
    params = EnvParams.from_config(cfg, market)
    env = SentioVecEnv(market, params, [(0, market.n_rows)], 2, seed=0)
    model = make_model(cfg, env, seed=0, device=torch.device("cpu"))
    last = market.n_rows
    first = max(0, last - sessions * 390)
    return model, market, params, [(first, last)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import numpy as np

    import sentio.env.backtest as bt
    import sentio.env.decisions as decisions

    variants = {
        "maskable_ppo mlp (default)": {"env.masks.regime": False},
        "sentio_ppo transformer": {
            "agent.algo": "sentio_ppo",
            "agent.extractor": "transformer",
            "agent.quantile_critic": True,
            "agent.regime_gating": False,
            "env.masks.regime": False,
            "env.window": 32,
        },
    }
    direct, batched = decisions._direct_actions, decisions.window_batched_actions
    off = {
        "predict": {
            "_direct_actions": lambda model: None,
            "window_batched_actions": lambda *a: None,
        },
        "per bar": {"window_batched_actions": lambda *a: None},
        "batched": {},
    }
    ok = True
    print(
        f"{'policy':<28}{'bars':>8}{'predict ms/bar':>16}{'per bar ms/bar':>16}"
        f"{'batched ms/bar':>16}{'ratio':>8}"
    )
    for name, overrides in variants.items():
        model, market, params, rows = _setup(overrides, args.sessions)
        best = dict.fromkeys(off, float("inf"))
        actions: dict[str, Any] = {}
        for _ in range(args.repeats):
            for mode, patches in off.items():
                decisions._direct_actions, decisions.window_batched_actions = direct, batched
                for attr, value in patches.items():
                    setattr(decisions, attr, value)
                start = time.perf_counter()
                res = bt.backtest(model, market, params, rows)
                best[mode] = min(best[mode], time.perf_counter() - start)
                actions[mode] = res.actions
        decisions._direct_actions, decisions.window_batched_actions = direct, batched
        same = all(np.array_equal(actions[m], actions["predict"]) for m in off)
        n = int(actions["batched"].size)
        ratio = best["predict"] / best["batched"]
        print(
            f"{name:<28}{n:>8,}"
            + "".join(f"{1000 * best[m] / n:>16.3f}" for m in off)
            + f"{ratio:>7.1f}x"
            + ("" if same else "  ACTIONS DIFFER")
        )
        ok = ok and same and ratio >= TARGET
    print(
        f"target: batched at least {TARGET:.1f}x predict, identical actions -> "
        f"{'PASS' if ok else 'FAIL'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
