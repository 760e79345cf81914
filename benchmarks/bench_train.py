"""Benchmark: training throughput (env steps per second, rollouts and PPO updates included),
the device-resident rollout path beside SB3's own loop.

Market: one year of synthetic one-minute bars (``sentio.data.synth.generate``, seed 11, QQQ
and derived TQQQ/SQQQ), features of the default ``SentioConfig()``, random regime
probabilities (Dirichlet(1), seeded, one column per ``regimes.n_states``), the default
trading model (window 4, every mask layer on, costs, flat at the close). Episodes: one
session, drawn from the whole market.

Two configurations:

* ``maskable_ppo`` MLP: the configuration defaults (``agent.algo = maskable_ppo``,
  ``extractor = mlp``, no quantile critic, no gating);
* the full ``sentio_ppo`` configuration: ``agent.algo = sentio_ppo``, transformer extractor
  (d_model 32, 2 layers), quantile critic (32 quantiles), regime gating.

Two paths, each given the same model construction (``sentio.agents.training.make_model``,
seed 0) and the same rollout shape: ``device`` (``train.rollout = device``: the torch
simulator, ``sentio.agents.device_rollout.learn_on_device``) and ``sb3`` (``SentioVecEnv``
and the algorithm's ``learn``). Each measurement: an untimed warm-up (one rollout and its
update), then ``--repeats`` timed calls continuing the model, each of at least
``--steps`` env steps (whole rollouts); the best call counts, all are printed, with the
split into rollouts and updates and the machine's CPU busy share during the call
(``/proc/stat``, all CPUs). One torch thread (the training default,
``train.torch_threads``) unless ``--threads``.

1. **Defaults** (``train.n_envs``, ``agent.n_steps``, ``agent.batch_size`` = ``auto``: on the
   CPU 64 accounts x 32 steps, batch 256): both configurations on both paths. Targets
   (CPU): the full configuration's device path at least 3x the SB3 path; ``maskable_ppo``
   MLP on the device path at least 35,000 env steps/s (5x the 7,000 of the SB3 path at
   its former default of 8 accounts, measured 2026-11-25).
2. **Sweep** over ``train.n_envs`` (``--sweep``, default 8, 64, 256, 1024, 4096; ``n_steps``
   ``auto``: 2,048 env steps per rollout, at least 8 steps) for the full configuration,
   both paths side by side. On CUDA the device path's sweep runs again on the GPU with its
   peak memory (``torch.cuda.max_memory_allocated``).
3. **GPU** (when ``torch.cuda.is_available()``, or ``--gpu-device cpu`` as a smoke test):
   the full configuration trains from scratch on the device path with the GPU's ``auto``
   shape (4,096 x 16, batch 16,384) for ``--episodes`` (1,000) episodes of
   ``--episode-steps`` (1,000) steps (three-session episodes cut to exactly 1,000 steps;
   model construction not timed). Targets: at least 200,000 env steps/s, under 30 s,
   under 8 GB.

Prints figures and PASS / FAIL lines; exits 1 if a target is missed.

Usage: ``.venv/bin/python benchmarks/bench_train.py [--steps 16384] [--repeats 2]
[--sweep 8,64,256,1024,4096] [--no-sweep] [--threads 1] [--years 1] [--episodes 1000]
[--episode-steps 1000] [--gpu-device cuda] [--no-gpu] [--gpu-only]`` (``--gpu-only``: the CUDA
sweep and the long run; ``benchmarks/gpu_check.sh`` runs it with the CUDA tests).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback

if TYPE_CHECKING:
    from sentio.config import SentioConfig
    from sentio.env import MarketData

SYNTH_SEED = 11
TARGET_FULL_RATIO = 3.0
TARGET_MLP_RATE = 35_000.0
TARGET_GPU_RATE = 200_000.0
TARGET_GPU_SECONDS = 30.0
TARGET_GPU_BYTES = 8 * 1024**3

MLP = {
    "algo": "maskable_ppo",
    "extractor": "mlp",
    "quantile_critic": False,
    "regime_gating": False,
    "cvar_beta": 0.0,
}
FULL = {
    "algo": "sentio_ppo",
    "extractor": "transformer",
    "quantile_critic": True,
    "regime_gating": True,
}


class PhaseTimer(BaseCallback):
    """Seconds in rollouts and in updates (both loops call the rollout callbacks)."""

    def __init__(self, report_every: int = 0) -> None:
        super().__init__()
        self.report_every = report_every
        self.rollout_s = self.update_s = 0.0
        self._mark = 0.0
        self._in_update = False
        self._reported = 0

    def _on_training_start(self) -> None:
        self._mark, self._in_update = time.perf_counter(), False

    def _on_rollout_start(self) -> None:
        now = time.perf_counter()
        if self._in_update:
            self.update_s += now - self._mark
        self._mark = now

    def _on_rollout_end(self) -> None:
        now = time.perf_counter()
        self.rollout_s += now - self._mark
        self._mark, self._in_update = now, True
        n = int(self.model.num_timesteps)
        if self.report_every and n // self.report_every > self._reported:
            self._reported = n // self.report_every
            print(
                f"    {n:,} steps: rollouts {self.rollout_s:.1f} s, updates {self.update_s:.1f} s",
                flush=True,
            )

    def _on_training_end(self) -> None:
        if self._in_update:
            self.update_s += time.perf_counter() - self._mark

    def _on_step(self) -> bool:
        return True


def cpu_times() -> tuple[float, float]:
    """``(busy, total)`` jiffies of all CPUs (``/proc/stat``; zeros where it does not exist)."""
    try:
        with open("/proc/stat") as f:
            values = [float(v) for v in f.readline().split()[1:]]
    except OSError:
        return 0.0, 0.0
    idle = values[3] + (values[4] if len(values) > 4 else 0.0)
    return sum(values) - idle, sum(values)


@dataclass
class Timed:
    steps: int
    seconds: float
    rollout_s: float
    update_s: float
    busy: float
    peak_bytes: float = 0.0

    @property
    def rate(self) -> float:
        return self.steps / self.seconds


class Run:
    """One model on one path, warmed up, ready for timed ``learn`` calls."""

    def __init__(self, cfg: SentioConfig, market: MarketData, path: str, device: str) -> None:
        from sentio.agents.training import make_model, rollout_shape
        from sentio.env import EnvParams, SentioVecEnv
        from sentio.env.device_env import DeviceVecEnv

        self.device = torch.device(device)
        self.shape = rollout_shape(cfg, self.device)
        self.path = path
        params = EnvParams.from_config(cfg, market)
        ranges = [(0, market.n_rows)]
        env = SentioVecEnv(market, params, ranges, self.shape.n_envs, seed=0)
        torch.manual_seed(0)
        np.random.seed(0)
        self.model = make_model(cfg, env, seed=0, device=self.device)
        self.denv = (
            DeviceVecEnv(market, params, ranges, self.shape.n_envs, device=self.device, seed=0)
            if path == "device"
            else None
        )
        self.learn(self.shape.n_envs * self.shape.n_steps, reset=True, timer=PhaseTimer())

    def learn(self, steps: int, *, reset: bool, timer: BaseCallback) -> None:
        from sentio.agents.device_rollout import learn_on_device

        if self.denv is not None:
            learn_on_device(self.model, self.denv, steps, callback=timer, reset_num_timesteps=reset)
        else:
            self.model.learn(steps, callback=timer, reset_num_timesteps=reset, progress_bar=False)

    def timed(self, steps: int) -> Timed:
        rollout = self.shape.n_envs * self.shape.n_steps
        steps = max(rollout, -(-steps // rollout) * rollout)
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        timer = PhaseTimer()
        before = int(self.model.num_timesteps)
        b0, t0 = cpu_times()
        start = time.perf_counter()
        self.learn(steps, reset=False, timer=timer)
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        b1, t1 = cpu_times()
        busy = (b1 - b0) / (t1 - t0) if t1 > t0 else float("nan")
        peak = float(torch.cuda.max_memory_allocated()) if cuda else 0.0
        return Timed(
            int(self.model.num_timesteps) - before,
            seconds,
            timer.rollout_s,
            timer.update_s,
            busy,
            peak,
        )


def measure(
    cfg: SentioConfig, market: MarketData, path: str, device: str, args: argparse.Namespace
) -> tuple[Timed, list[Timed], Any]:
    run = Run(cfg, market, path, device)
    runs = [run.timed(args.steps) for _ in range(max(args.repeats, 1))]
    return max(runs, key=lambda t: t.rate), runs, run.shape


def line(label: str, best: Timed, runs: list[Timed], shape: Any) -> str:
    mem = f", peak GPU memory {best.peak_bytes / 1024**3:.2f} GB" if best.peak_bytes else ""
    return (
        f"{label:<34} {shape.n_envs:>5} x {shape.n_steps:<3} batch {shape.batch_size:<6} "
        f"{best.rate:>9,.0f} env steps/s  (rollouts {best.rollout_s:5.2f} s, updates {best.update_s:5.2f} s "
        f"for {best.steps:,}; CPU busy {best.busy:4.0%}{mem}) [{', '.join(f'{t.rate:,.0f}' for t in runs)}]"
    )


def build_bench_market(years: float) -> tuple[MarketData, SentioConfig]:
    """Synthetic bars, default features, random regime probabilities."""
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


def config(years: float, agent: dict[str, Any], **train: Any) -> SentioConfig:
    from sentio.config import SentioConfig

    return SentioConfig.model_validate(
        {"synth": {"years": years, "seed": SYNTH_SEED}, "agent": agent, "train": train}
    )


def defaults(args: argparse.Namespace, market: MarketData) -> bool:
    ok = True
    print("1. defaults on the CPU (n_envs, n_steps, batch_size auto)")
    rates: dict[tuple[str, str], float] = {}
    for name, agent in (("maskable_ppo MLP", MLP), ("sentio_ppo full", FULL)):
        cfg = config(args.years, agent, device="cpu")
        for path in ("device", "sb3"):
            best, runs, shape = measure(cfg, market, path, "cpu", args)
            rates[(name, path)] = best.rate
            print(line(f"  {name}, {path} path", best, runs, shape), flush=True)
    ratio = rates[("sentio_ppo full", "device")] / rates[("sentio_ppo full", "sb3")]
    mlp = rates[("maskable_ppo MLP", "device")]
    mlp_ratio = mlp / rates[("maskable_ppo MLP", "sb3")]
    print(
        f"  maskable_ppo MLP: device / sb3 {mlp_ratio:.2f}x; load average {os.getloadavg()[0]:.2f}"
    )
    for passed, text in (
        (
            ratio >= TARGET_FULL_RATIO,
            f"sentio_ppo full: device path {ratio:.2f}x the SB3 path (target {TARGET_FULL_RATIO:.0f}x)",
        ),
        (
            mlp >= TARGET_MLP_RATE,
            f"maskable_ppo MLP: {mlp:,.0f} env steps/s on the device path (target {TARGET_MLP_RATE:,.0f})",
        ),
    ):
        print(("PASS: " if passed else "FAIL: ") + text)
        ok = ok and passed
    return ok


def sweep(args: argparse.Namespace, market: MarketData, *, cpu: bool = True) -> None:
    sizes = [int(s) for s in args.sweep.split(",") if s]
    print(
        "2. sweep over train.n_envs, sentio_ppo full (n_steps auto: 2,048 env steps per rollout, at least 8)"
    )
    for n in sizes if cpu else []:
        cfg = config(args.years, FULL, device="cpu", n_envs=n)
        for path in ("device", "sb3"):
            best, runs, shape = measure(cfg, market, path, "cpu", args)
            print(line(f"  cpu, {path} path", best, runs, shape), flush=True)
    if torch.cuda.is_available():
        for n in sizes:
            cfg = config(args.years, FULL, device="cuda", n_envs=n)
            best, runs, shape = measure(cfg, market, "device", "cuda", args)
            print(line("  cuda, device path", best, runs, shape), flush=True)


def gpu(args: argparse.Namespace, market: MarketData) -> bool:
    device = args.gpu_device
    if args.no_gpu or (device == "cuda" and not torch.cuda.is_available()):
        print(
            "3. GPU check skipped ("
            + ("--no-gpu" if args.no_gpu else "torch.cuda.is_available() is False")
            + ")"
        )
        return True
    from sentio.agents.device_rollout import learn_on_device
    from sentio.agents.training import make_model, rollout_shape
    from sentio.env import EnvParams, SentioVecEnv
    from sentio.env.device_env import DeviceVecEnv

    name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    cfg = long_run_config(args, device)
    dev = torch.device(device)
    shape = rollout_shape(cfg, dev)
    params = EnvParams.from_config(cfg, market)
    ranges = [(0, market.n_rows)]
    denv = DeviceVecEnv(market, params, ranges, shape.n_envs, device=dev, seed=0)
    keep = (denv.ends - denv.starts) >= args.episode_steps
    if not bool(keep.any()):
        raise SystemExit(f"no three-session episode has {args.episode_steps} steps in this market")
    denv.starts = denv.starts[keep]
    denv.ends = denv.starts + args.episode_steps
    total = args.episodes * args.episode_steps
    print(
        f"3. sentio_ppo full on {name}, device path: {args.episodes} episodes of {args.episode_steps} steps "
        f"({int(keep.sum())} candidates); {shape.n_envs} envs x {shape.n_steps} steps, batch {shape.batch_size}"
    )
    torch.manual_seed(0)
    model = make_model(
        cfg, SentioVecEnv(market, params, ranges, shape.n_envs, seed=0), seed=0, device=dev
    )
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    timer = PhaseTimer(report_every=max(total // 5, 1))
    start = time.perf_counter()
    learn_on_device(model, denv, total, callback=timer)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = float(torch.cuda.max_memory_allocated()) if dev.type == "cuda" else 0.0
    ended, _ = denv.pop_episode_returns()
    rate = model.num_timesteps / seconds
    print(
        f"  {model.num_timesteps:,} env steps in {seconds:.1f} s = {rate:,.0f} env steps/s (rollouts "
        f"{timer.rollout_s:.1f} s, updates {timer.update_s:.1f} s); {ended} episodes ended; "
        f"peak GPU memory {peak / 1024**3:.2f} GB"
    )
    if dev.type != "cuda":
        print("  (on the CPU: no targets)")
        return True
    ok = True
    for passed, text in (
        (rate >= TARGET_GPU_RATE, f"{rate:,.0f} env steps/s (target {TARGET_GPU_RATE:,.0f})"),
        (seconds < TARGET_GPU_SECONDS, f"{seconds:.1f} s (target {TARGET_GPU_SECONDS:.0f} s)"),
        (peak < TARGET_GPU_BYTES, f"peak GPU memory {peak / 1024**3:.2f} GB (target 8 GB)"),
    ):
        print(("PASS: " if passed else "FAIL: ") + text)
        ok = ok and passed
    return ok


def long_run_config(args: argparse.Namespace, device: str) -> SentioConfig:
    from sentio.config import SentioConfig

    return SentioConfig.model_validate(
        {
            "synth": {"years": args.years, "seed": SYNTH_SEED},
            "agent": FULL,
            "env": {"episode_sessions": 3},
            "train": {"device": device},
        }
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--steps", type=int, default=16_384, help="env steps per timed call (at least)"
    )
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--sweep", default="8,64,256,1024,4096")
    parser.add_argument("--no-sweep", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--years", type=float, default=1.0)
    parser.add_argument("--episodes", type=int, default=1_000)
    parser.add_argument("--episode-steps", type=int, default=1_000)
    parser.add_argument("--gpu-device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--no-gpu", action="store_true")
    parser.add_argument(
        "--gpu-only", action="store_true", help="only the GPU parts (the CUDA sweep, the long run)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.distributions.Distribution.set_default_validate_args(False)  # as train_agent does
    t0 = time.perf_counter()
    market, base = build_bench_market(args.years)
    print(
        f"market: {market.n_rows:,} one-minute rows, {market.n_features} features, {market.n_regimes} "
        f"regimes, window {base.env.window} (built in {time.perf_counter() - t0:.1f} s); torch "
        f"{torch.__version__}, {torch.get_num_threads()} thread(s), {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.2f}"
    )
    ok = True
    if not args.gpu_only:
        ok = defaults(args, market)
    if not args.no_sweep:
        sweep(args, market, cpu=not args.gpu_only)
    ok = gpu(args, market) and ok
    print("OK" if ok else "targets missed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
