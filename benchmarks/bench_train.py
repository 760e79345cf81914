"""Benchmark: end-to-end training throughput (env steps per second, PPO updates included).

Market: the one of ``bench_env.py``: one year of synthetic one-minute bars
(``sentio.data.synth.generate``, seed 11, QQQ and derived TQQQ/SQQQ), features of the
default ``SentioConfig()``, random regime probabilities (Dirichlet(1), seeded, one column
per ``regimes.n_states``), default trading model (window ``env.window``, 4 by default; every mask layer on, costs,
flat at the close). Episodes of the CPU runs: one session (the default), sampled from
the whole market.

CPU measurements: each configuration gets one model (seed 0, ``device="cpu"``), an
untimed warm-up, then ``--repeats`` (2) timed ``model.learn`` calls that continue it
(``time.perf_counter``); the rate is the environment steps a call added
(``model.num_timesteps``, whole rollouts) over its seconds, so rollouts (policy forward,
mask reads, environment steps, auto-resets) and PPO updates are both inside; the best
call counts and all are printed. The sentio MLP and baseline calls alternate, so a change
of machine load hits both. One process, torch's default intra-op thread count for every
run (printed with the CPU count and load average; ``--threads N`` sets it for all runs
alike). Other processes on a 2-core machine slow torch a lot (its threads wait on each
other): compare runs whose load averages are low.

* sentio ``maskable_ppo`` MLP: ``SentioConfig`` defaults with ``agent.algo =
  "maskable_ppo"``, ``extractor = "mlp"``, no quantile critic, no regime gating,
  ``cvar_beta = 0``: ``SentioVecEnv`` with ``train.n_envs`` (8) accounts and
  ``make_model`` (n_steps 256, batch 256, 4 epochs, ``DictMlpExtractor``, SB3's default
  ``net_arch``). Warm-up: one rollout (2,048 steps) and its update. Timed: ``--steps``
  (32,768 = 16 rollouts, 512 minibatch steps).
* baseline: 8 single ``sentio.env.single.TradingEnv`` (the same trading logic in Python
  scalars) in SB3's ``DummyVecEnv`` and ``sb3_contrib.MaskablePPO("MultiInputPolicy",
  venv, seed=0, device="cpu")`` with every hyperparameter at MaskablePPO's default
  (n_steps 2048, batch 64, 10 epochs, lr 3e-4; SB3's ``CombinedExtractor`` flattens the
  window like ``DictMlpExtractor``, the same ``net_arch``). One default rollout is
  2048 x 8 = 16,384 steps, so a timed call is ``--baseline-steps`` = 16,384: one rollout
  and its update (2,560 minibatch steps). Its warm-up, to keep it cheap, is a learn of 64
  steps on a throwaway model with n_steps 8 (same networks, same environments): it pays
  the first-call costs without a 16,384-step rollout.
* sentio ``sentio_ppo`` transformer: ``SentioConfig`` defaults (quantile critic, regime
  gating on the random regime probabilities, transformer d_model 32, 2 layers, the
  default window), ``train.device = "cpu"``. Warm-up: one rollout. Timed: ``--transformer-steps``
  (8,192 = 4 rollouts). Printed, no target.

Target: sentio MLP rate >= 3x the baseline rate, measured side by side.

GPU check (``--gpu``, or automatic when ``torch.cuda.is_available()``; skipped with a
line otherwise; ``--gpu-only`` skips the CPU part): the full ``sentio_ppo`` configuration
(defaults, ``train.device = "cuda"``, ``--gpu-envs`` accounts, default ``train.n_envs``
8) trains from scratch for ``--episodes`` (1,000) episodes of ``--episode-steps`` (1,000)
steps: one ``learn(episodes x episode_steps)`` = 1,000,000 env steps (rounded up to whole
rollouts), no warm-up, model construction not timed. Episodes of exactly 1,000 steps:
``env.episode_sessions = 3`` makes every candidate episode three sessions (about 1,170
bars; flat at each close, the overnight gaps inside), candidates shorter than 1,000 steps
are dropped and the others end 1,000 rows after their start (``SentioVecEnv.starts`` /
``ends``; an episode of rows ``[s, e]`` has ``e - s`` steps). Episodes the drawdown
circuit breaker ends early are counted and reported (the step count is what is timed).
Reports wall time, rollout and update seconds (a progress line every 100,000 steps) and
``torch.cuda.max_memory_allocated()`` (peak stats reset after model construction, the
weights still count). Targets: under 600 s and 8 GB. ``--gpu-device cpu`` runs the same
check on the CPU (a smoke test of the script with, e.g., ``--episodes 16``; no targets).

Prints figures and PASS / FAIL lines; exits 1 if a target is missed.

Usage: ``.venv/bin/python benchmarks/bench_train.py [--steps 32768] [--baseline-steps
16384] [--transformer-steps 8192] [--repeats 2] [--years 1] [--threads N] [--gpu |
--no-gpu] [--gpu-only] [--episodes 1000] [--episode-steps 1000] [--gpu-envs 8]
[--gpu-device cuda]``
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback

if TYPE_CHECKING:
    from stable_baselines3.common.base_class import BaseAlgorithm

    from sentio.config import SentioConfig
    from sentio.env import MarketData

TARGET_RATIO = 3.0
TARGET_GPU_SECONDS = 600.0
TARGET_GPU_BYTES = 8 * 1024**3
YEARS = 1.0
SYNTH_SEED = 11


class PhaseTimer(BaseCallback):
    """Seconds in rollouts vs updates, and the episodes that ended (by kind).

    With ``report_every > 0`` prints a progress line at the end of each rollout that
    crosses a multiple of ``report_every`` steps.
    """

    def __init__(self, report_every: int = 0) -> None:
        super().__init__()
        self.report_every = report_every
        self.rollout_s = 0.0
        self.update_s = 0.0
        self.episodes = 0
        self.truncated = 0
        self._mark = 0.0
        self._in_update = False
        self._reported = 0

    def _on_training_start(self) -> None:
        self._mark = time.perf_counter()
        self._in_update = False

    def _on_rollout_start(self) -> None:
        now = time.perf_counter()
        if self._in_update:
            self.update_s += now - self._mark
        self._mark = now

    def _on_rollout_end(self) -> None:
        now = time.perf_counter()
        self.rollout_s += now - self._mark
        self._mark = now
        self._in_update = True
        n = int(self.model.num_timesteps)
        if self.report_every > 0 and n // self.report_every > self._reported:
            self._reported = n // self.report_every
            print(
                f"    {n:,} steps: rollouts {self.rollout_s:.0f} s, updates {self.update_s:.0f} s, "
                f"{self.episodes} episode ends",
                flush=True,
            )

    def _on_training_end(self) -> None:
        if self._in_update:
            self.update_s += time.perf_counter() - self._mark

    def _on_step(self) -> bool:
        dones = self.locals["dones"]
        if dones.any():
            infos = self.locals["infos"]
            for i in np.flatnonzero(dones):
                self.episodes += 1
                self.truncated += int(bool(infos[i].get("TimeLimit.truncated", False)))
        return True


@dataclass
class Timed:
    """One timed ``learn``."""

    steps: int
    seconds: float
    rollout_s: float
    update_s: float
    episodes: int

    @property
    def rate(self) -> float:
        """Env steps per second, updates included."""
        return self.steps / self.seconds


def timed_learn(model: BaseAlgorithm, steps: int) -> Timed:
    """``model.learn(steps)`` continuing from the warm-up; steps actually added and seconds."""
    timer = PhaseTimer()
    before = int(model.num_timesteps)
    start = time.perf_counter()
    model.learn(steps, callback=timer, reset_num_timesteps=False, progress_bar=False)
    seconds = time.perf_counter() - start
    return Timed(
        int(model.num_timesteps) - before, seconds, timer.rollout_s, timer.update_s, timer.episodes
    )


def describe(name: str, t: Timed) -> str:
    """One result line."""
    return (
        f"{name}: {t.steps:,} env steps in {t.seconds:.1f} s = {t.rate:,.0f} env steps/s "
        f"(rollouts {t.rollout_s:.1f} s, updates {t.update_s:.1f} s; {t.episodes} episode ends)"
    )


def build_bench_market(years: float) -> tuple[MarketData, SentioConfig]:
    """The market of ``bench_env.py`` (synthetic bars, default features, random regimes)."""
    import polars as pl

    from sentio.config import SentioConfig
    from sentio.data.synth import generate
    from sentio.env import build_market
    from sentio.features import build_features

    cfg = SentioConfig.model_validate({"synth": {"years": years, "seed": SYNTH_SEED}})
    bars = generate(cfg).bars
    feats = build_features(bars, cfg)
    K = cfg.regimes.n_states
    probs = np.random.default_rng(0).dirichlet(np.ones(K), size=feats.height)
    regimes = pl.DataFrame(
        {"timestamp": feats["timestamp"]} | {f"p_regime_{k}": probs[:, k] for k in range(K)}
    )
    return build_market(bars, feats, regimes, cfg), cfg


def config(years: float, **overrides: dict[str, Any]) -> SentioConfig:
    """``SentioConfig`` defaults with the bench's synth section and section overrides."""
    from sentio.config import SentioConfig

    return SentioConfig.model_validate({"synth": {"years": years, "seed": SYNTH_SEED}} | overrides)


def sentio_model(cfg: SentioConfig, market: MarketData, device: str) -> BaseAlgorithm:
    """``make_model`` on a ``SentioVecEnv``, warmed up by one untimed rollout and update."""
    from sentio.agents.training import make_model
    from sentio.env import EnvParams, SentioVecEnv

    torch.manual_seed(0)
    env = SentioVecEnv(
        market, EnvParams.from_config(cfg), [(0, market.n_rows)], cfg.train.n_envs, seed=0
    )
    model = make_model(cfg, env, seed=0, device=torch.device(device))
    model.learn(cfg.agent.n_steps * cfg.train.n_envs, progress_bar=False)  # warm-up
    return model


def baseline_model(cfg: SentioConfig, market: MarketData, n_envs: int) -> BaseAlgorithm:
    """MaskablePPO with its default hyperparameters on ``n_envs`` TradingEnv in DummyVecEnv.

    Warmed up by a throwaway model with ``n_steps=8`` (same networks and environments).
    """
    from sb3_contrib import MaskablePPO
    from stable_baselines3.common.vec_env import DummyVecEnv

    from sentio.env import EnvParams
    from sentio.env.single import TradingEnv

    params = EnvParams.from_config(cfg)
    ranges = [(0, market.n_rows)]

    def make(i: int) -> Callable[[], TradingEnv]:
        return lambda: TradingEnv(market, params, ranges, seed=i)

    # warm-up: a throwaway model with the same networks on the same environments
    torch.manual_seed(0)
    warm = MaskablePPO(
        "MultiInputPolicy", DummyVecEnv([make(i) for i in range(n_envs)]), n_steps=8, seed=0
    )
    warm.learn(8 * n_envs, progress_bar=False)
    del warm

    torch.manual_seed(0)
    venv = DummyVecEnv([make(i) for i in range(n_envs)])
    return MaskablePPO("MultiInputPolicy", venv, seed=0, device="cpu")


def run_long(
    market: MarketData,
    years: float,
    *,
    device: str,
    n_envs: int,
    episodes: int,
    episode_steps: int,
) -> tuple[Timed, int, float]:
    """The full ``sentio_ppo`` configuration for ``episodes`` x ``episode_steps`` env steps.

    Returns the timing (phase split, episode ends), the episodes that ran their whole
    length and the peak CUDA memory in bytes (0 on the CPU).
    """
    from sentio.agents.training import make_model
    from sentio.env import EnvParams, SentioVecEnv

    cfg = config(
        years,
        env={"episode_sessions": 3},
        train={"device": device, "n_envs": n_envs},
    )
    env = SentioVecEnv(
        market, EnvParams.from_config(cfg), [(0, market.n_rows)], cfg.train.n_envs, seed=0
    )
    keep = env.ends - env.starts >= episode_steps
    if not keep.any():
        raise SystemExit(f"no three-session episode has {episode_steps} steps in this market")
    env.starts = env.starts[keep]
    env.ends = env.starts + episode_steps
    print(
        f"  {int(keep.sum())} candidate episodes of {episode_steps} steps; "
        f"{cfg.train.n_envs} envs, n_steps {cfg.agent.n_steps}, batch {cfg.agent.batch_size}, "
        f"{cfg.agent.n_epochs} epochs"
    )
    torch.manual_seed(0)
    model = make_model(cfg, env, seed=0, device=torch.device(device))
    cuda = device == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    timer = PhaseTimer(report_every=100_000)
    start = time.perf_counter()
    model.learn(episodes * episode_steps, callback=timer, progress_bar=False)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = float(torch.cuda.max_memory_allocated()) if cuda else 0.0
    timed = Timed(
        int(model.num_timesteps), seconds, timer.rollout_s, timer.update_s, timer.episodes
    )
    return timed, timer.truncated, peak


def best(runs: list[Timed]) -> Timed:
    """The fastest of repeated measurements."""
    return max(runs, key=lambda t: t.rate)


def load() -> str:
    """The 1-minute load average (other processes on the machine slow every rate)."""
    return f"load average {os.getloadavg()[0]:.2f}"


def cpu_side_by_side(args: argparse.Namespace, market: MarketData) -> bool:
    """Sentio MLP vs the baseline (ratio target), then the transformer rate; True if met."""
    ok = True
    mlp_cfg = config(
        args.years,
        agent={
            "algo": "maskable_ppo",
            "extractor": "mlp",
            "quantile_critic": False,
            "regime_gating": False,
            "cvar_beta": 0.0,
        },
        train={"device": "cpu"},
    )
    n_envs = mlp_cfg.train.n_envs
    a = mlp_cfg.agent
    mlp_model = sentio_model(mlp_cfg, market, "cpu")
    base_model = baseline_model(mlp_cfg, market, n_envs)
    mlp_runs: list[Timed] = []
    base_runs: list[Timed] = []
    for _ in range(max(args.repeats, 1)):  # alternate, so load changes hit both alike
        mlp_runs.append(timed_learn(mlp_model, args.steps))
        base_runs.append(timed_learn(base_model, args.baseline_steps))
    mlp, base = best(mlp_runs), best(base_runs)
    print(
        describe(
            f"sentio maskable_ppo MLP (SentioVecEnv x{n_envs}, n_steps {a.n_steps}, "
            f"batch {a.batch_size}, {a.n_epochs} epochs)",
            mlp,
        )
        + f" [best of {', '.join(f'{t.rate:,.0f}' for t in mlp_runs)}]"
    )
    print(
        describe(
            f"baseline MaskablePPO defaults (DummyVecEnv x{n_envs} TradingEnv, n_steps 2048, "
            "batch 64, 10 epochs)",
            base,
        )
        + f" [best of {', '.join(f'{t.rate:,.0f}' for t in base_runs)}]"
    )
    ratio = mlp.rate / base.rate
    print(f"ratio sentio / baseline: {ratio:.2f}x (target {TARGET_RATIO:.0f}x); {load()}")
    if ratio >= TARGET_RATIO:
        print(f"PASS: sentio MLP {ratio:.2f}x the baseline rate")
    else:
        print(f"FAIL: sentio MLP {ratio:.2f}x < {TARGET_RATIO:.0f}x the baseline rate")
        ok = False
    del mlp_model, base_model

    tf_cfg = config(args.years, train={"device": "cpu"})
    t = tf_cfg.agent
    tf_model = sentio_model(tf_cfg, market, "cpu")
    tf_runs = [timed_learn(tf_model, args.transformer_steps) for _ in range(max(args.repeats, 1))]
    print(
        describe(
            f"sentio sentio_ppo transformer (d_model {t.d_model}, {t.n_layers} layers, "
            f"window {tf_cfg.env.window}, {t.n_quantiles} quantiles, regime gating; "
            f"SentioVecEnv x{tf_cfg.train.n_envs}) on CPU",
            best(tf_runs),
        )
        + f" [best of {', '.join(f'{r.rate:,.0f}' for r in tf_runs)}]; {load()}"
    )
    del tf_model
    return ok


def gpu_check(args: argparse.Namespace, market: MarketData, n_envs: int) -> bool:
    """The long sentio_ppo run on CUDA (or skipped); True unless a target is missed."""
    ok = True
    cuda = torch.cuda.is_available()
    on_cpu = args.gpu_device == "cpu"
    if args.no_gpu or (not args.gpu and not cuda and not on_cpu):
        reason = "--no-gpu" if args.no_gpu else "torch.cuda.is_available() is False"
        print(f"GPU check skipped ({reason})")
    elif not on_cpu and not cuda:
        print("FAIL: --gpu but torch.cuda.is_available() is False")
        ok = False
    else:
        name = "cpu" if on_cpu else torch.cuda.get_device_name(0)
        print(
            f"long run: sentio_ppo (full configuration) on {name}, {args.episodes} episodes of "
            f"{args.episode_steps} steps"
        )
        long, full, peak = run_long(
            market,
            args.years,
            device=args.gpu_device,
            n_envs=args.gpu_envs or n_envs,
            episodes=args.episodes,
            episode_steps=args.episode_steps,
        )
        print(
            f"  {describe('trained', long)}; {full} ran their {args.episode_steps} steps; "
            f"peak GPU memory {peak / 1024**3:.2f} GB"
        )
        if on_cpu:
            print("  (on the CPU: no targets)")
        else:
            if long.seconds < TARGET_GPU_SECONDS:
                print(f"PASS: {long.seconds:.0f} s < {TARGET_GPU_SECONDS:.0f} s")
            else:
                print(f"FAIL: {long.seconds:.0f} s >= {TARGET_GPU_SECONDS:.0f} s")
                ok = False
            if peak < TARGET_GPU_BYTES:
                print(f"PASS: peak GPU memory {peak / 1024**3:.2f} GB < 8 GB")
            else:
                print(f"FAIL: peak GPU memory {peak / 1024**3:.2f} GB >= 8 GB")
                ok = False
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=32_768, help="timed steps, sentio MLP")
    parser.add_argument("--baseline-steps", type=int, default=16_384, help="timed, baseline")
    parser.add_argument("--transformer-steps", type=int, default=8_192, help="timed, sentio_ppo")
    parser.add_argument("--repeats", type=int, default=2, help="timed learns per configuration")
    parser.add_argument("--years", type=float, default=YEARS)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    gpu = parser.add_mutually_exclusive_group()
    gpu.add_argument("--gpu", action="store_true", help="run the GPU check (needs CUDA)")
    gpu.add_argument("--no-gpu", action="store_true", help="skip the GPU check")
    parser.add_argument("--episodes", type=int, default=1_000)
    parser.add_argument("--episode-steps", type=int, default=1_000)
    parser.add_argument("--gpu-envs", type=int, default=0, help="0: train.n_envs default")
    parser.add_argument("--gpu-device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--gpu-only", action="store_true", help="skip the CPU measurements")
    args = parser.parse_args()

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    market, base_cfg = build_bench_market(args.years)
    print(
        f"market: {market.n_rows:,} one-minute rows, {market.n_features} features, "
        f"{market.n_regimes} regimes, window {base_cfg.env.window} "
        f"(built in {time.perf_counter() - t0:.1f} s); torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs, {load()}"
    )
    ok = True
    if not args.gpu_only:
        ok = cpu_side_by_side(args, market)
    ok = gpu_check(args, market, base_cfg.train.n_envs) and ok

    print("OK" if ok else "targets missed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
