"""Training one agent: device choice, checkpoints, resume after a kill, seeds, errors."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from sentio.agents.training import (
    CPU_ROLLOUT,
    GPU_ROLLOUT,
    RolloutShape,
    algorithm_class,
    resolve_device,
    rollout_shape,
    train_agent,
)
from sentio.config import SentioConfig, resolve_for_bars, with_overrides
from sentio.errors import ConfigError, ResourceError
from tests.env_helpers import random_market

SMALL = {
    "agent.algo": "maskable_ppo",
    "agent.quantile_critic": False,
    "agent.regime_gating": False,
    "agent.extractor": "mlp",
    "agent.n_steps": 32,
    "agent.batch_size": 64,
    "train.n_envs": 4,
    "train.total_timesteps": 1000,
    "train.checkpoint_every": 256,
    "train.device": "cpu",
    "env.window": 4,
}


def small_cfg(**overrides: Any) -> SentioConfig:
    return with_overrides(SentioConfig(), {**SMALL, **overrides})


@pytest.fixture(scope="module")
def market() -> Any:
    return random_market(n_sessions=6, session_len=60, seed=1, bar_vol=2e-3)


def test_device_resolution() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device is available"):
            resolve_device("cuda")


def test_training_writes_a_loadable_model_and_checkpoints(market: Any, tmp_path: Path) -> None:
    cfg = small_cfg()
    seen: list[tuple[int, int]] = []
    result = train_agent(
        cfg,
        market,
        [(0, market.n_rows)],
        seed=0,
        out_dir=tmp_path,
        progress=lambda d, t, *_: seen.append((d, t)),
    )
    rollout = cfg.agent.n_steps * cfg.train.n_envs
    # SB3 trains whole rollouts: the first multiple of the rollout size at or past the total
    assert result.num_timesteps == -(-cfg.train.total_timesteps // rollout) * rollout
    assert result.resumed_from == 0 and result.device == "cpu"
    assert seen[-1] == (result.num_timesteps, cfg.train.total_timesteps)
    assert [d for d, _ in seen[:-1]] == list(range(rollout, result.num_timesteps + 1, rollout))
    model = algorithm_class(cfg).load(result.model_path, device="cpu")
    assert model.num_timesteps == result.num_timesteps
    meta = json.loads((tmp_path / "checkpoints" / "checkpoint.json").read_text())
    assert meta["num_timesteps"] % cfg.train.checkpoint_every < rollout
    assert meta["num_timesteps"] >= cfg.train.checkpoint_every


def test_same_seed_same_model_on_cpu(market: Any, tmp_path: Path) -> None:
    cfg = small_cfg(**{"train.total_timesteps": 256})
    a = train_agent(cfg, market, [(0, market.n_rows)], seed=3, out_dir=tmp_path / "a")
    b = train_agent(cfg, market, [(0, market.n_rows)], seed=3, out_dir=tmp_path / "b")
    c = train_agent(cfg, market, [(0, market.n_rows)], seed=4, out_dir=tmp_path / "c")
    cls = algorithm_class(cfg)
    pa, pb, pc = (cls.load(r.model_path, device="cpu").policy.state_dict() for r in (a, b, c))
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert not all(torch.equal(pa[k], pc[k]) for k in pa)
    # the saved file itself is repeatable (no wall-clock time, no paths, fixed zip stamps)
    assert Path(a.model_path).read_bytes() == Path(b.model_path).read_bytes()


def test_concurrent_trainings_in_one_process_equal_serial_ones(market: Any, tmp_path: Path) -> None:
    """Threads of one process share torch's and numpy's generators: trainings take turns."""
    from concurrent.futures import ThreadPoolExecutor

    cfg = small_cfg(**{"train.total_timesteps": 256})
    ranges = [(0, market.n_rows)]
    serial = [train_agent(cfg, market, ranges, seed=s, out_dir=tmp_path / f"s{s}") for s in (5, 6)]
    with ThreadPoolExecutor(2) as pool:
        futures = [
            pool.submit(train_agent, cfg, market, ranges, seed=s, out_dir=tmp_path / f"c{s}")
            for s in (5, 6)
        ]
        concurrent = [f.result() for f in futures]
    for a, b in zip(serial, concurrent, strict=True):
        assert Path(a.model_path).read_bytes() == Path(b.model_path).read_bytes()


@pytest.mark.parametrize(
    ("sessions", "rollout"),
    [(6, "device"), (30, "device"), (30, "sb3")],
    ids=["no-holdout", "validated", "validated-sb3-loop"],
)
def test_killed_training_resumes_to_the_configured_total(
    sessions: int, rollout: str, tmp_path: Path
) -> None:
    """A training killed mid-way (os._exit, no cleanup) continues from its checkpoint.

    With 30 sessions six are held out and the policy is validated every 512 steps: the
    checkpoint carries the validation record, and the resumed training saves the same
    best checkpoint as the uninterrupted one. Both rollout paths (the device's, SB3's).
    """
    market = random_market(n_sessions=sessions, session_len=60, seed=1, bar_vol=2e-3)
    overrides = {"train.validation_every": 512, "train.rollout": rollout}
    out = tmp_path / "run"
    script = textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
        from tests.test_training import small_cfg
        from tests.env_helpers import random_market
        from sentio.agents.training import train_agent
        market = random_market(n_sessions={sessions}, session_len=60, seed=1, bar_vol=2e-3)

        def progress(done, total, *_):
            if done >= 700:  # past the checkpoint at 512: die without any cleanup
                os._exit(17)

        train_agent(small_cfg(**{overrides!r}), market, [(0, market.n_rows)], seed=0,
                    out_dir={str(out)!r}, progress=progress)
        """
    )
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert killed.returncode == 17, killed.stderr[-2000:]
    assert not (out / "model.zip").exists()
    meta = json.loads((out / "checkpoints" / "checkpoint.json").read_text())
    assert 256 <= meta["num_timesteps"] < 700
    if sessions == 30:
        assert [h["steps"] for h in meta["selection"]["history"]] == [512]
    else:
        assert meta["selection"] is None
    cfg = small_cfg(**overrides)
    result = train_agent(cfg, market, [(0, market.n_rows)], seed=0, out_dir=out)
    assert result.resumed_from == meta["num_timesteps"]
    rollout = cfg.agent.n_steps * cfg.train.n_envs
    assert result.num_timesteps == -(-cfg.train.total_timesteps // rollout) * rollout
    saved = result.validation["best_steps"] if sessions == 30 else result.num_timesteps
    assert algorithm_class(cfg).load(result.model_path).num_timesteps == saved
    # ... and ends exactly where the uninterrupted training ends: same weights, same bytes
    whole = train_agent(cfg, market, [(0, market.n_rows)], seed=0, out_dir=tmp_path / "whole")
    assert whole.resumed_from == 0
    cls = algorithm_class(cfg)
    resumed_w = cls.load(result.model_path, device="cpu").policy.state_dict()
    whole_w = cls.load(whole.model_path, device="cpu").policy.state_dict()
    assert all(torch.equal(resumed_w[k], whole_w[k]) for k in whole_w)
    assert Path(result.model_path).read_bytes() == Path(whole.model_path).read_bytes()
    # another configuration does not pick up this checkpoint
    other = small_cfg(**{"agent.learning_rate": 1e-4, "train.total_timesteps": 256})
    fresh = train_agent(other, market, [(0, market.n_rows)], seed=0, out_dir=out)
    assert fresh.resumed_from == 0


def test_out_of_memory_names_the_batch_size(
    market: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sentio.agents.device_rollout as device_rollout

    def boom(*args: Any, **kwargs: Any) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(device_rollout, "ppo_update", boom)  # the device path's update
    with pytest.raises(ResourceError, match=r"agent.batch_size = 64.*lower agent.batch_size"):
        train_agent(small_cfg(), market, [(0, market.n_rows)], seed=0, out_dir=tmp_path)


def test_episodes_come_from_the_training_ranges_only(market: Any, tmp_path: Path) -> None:
    """The vector environment of a training samples episodes inside the given ranges."""
    from sentio.env import EnvParams, SentioVecEnv

    cfg = small_cfg()
    ranges = [(0, 120), (240, 360)]
    env = SentioVecEnv(market, EnvParams.from_config(resolve_for_bars(cfg, 60)), ranges, 8, seed=0)
    env.reset()
    rows = np.stack([env.sim.t, env.sim.end], axis=1)
    for s, e in rows:
        assert any(a + cfg.env.window - 1 <= s and e < b for a, b in ranges)


def test_tensorboard_logging_through_sb3(market: Any, tmp_path: Path) -> None:
    cfg = small_cfg(**{"train.tensorboard": True, "train.total_timesteps": 256})
    train_agent(cfg, market, [(0, market.n_rows)], seed=0, out_dir=tmp_path)
    events = list((tmp_path / "tensorboard").rglob("events.out.tfevents.*"))
    assert events and all(e.stat().st_size > 0 for e in events)


def test_rollout_shape_sizes_auto_to_the_device() -> None:
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    auto = {"train.n_envs": "auto", "agent.n_steps": "auto", "agent.batch_size": "auto"}
    assert rollout_shape(small_cfg(**auto), cpu) == CPU_ROLLOUT
    assert rollout_shape(small_cfg(**auto), gpu) == GPU_ROLLOUT
    # auto steps keep the device's rollout size beside a given number of environments
    shape = rollout_shape(small_cfg(**{**auto, "train.n_envs": 16}), cpu)
    assert (shape.n_envs, shape.n_steps, shape.batch_size) == (16, 128, 256)
    shape = rollout_shape(small_cfg(**{**auto, "train.n_envs": 1024}), gpu)
    assert (shape.n_envs, shape.n_steps, shape.batch_size) == (1024, 64, 16_384)
    assert rollout_shape(small_cfg(**{**auto, "train.n_envs": 4096}), cpu).n_steps == 8
    # given values are kept; a batch larger than the rollout is a clear error
    assert rollout_shape(small_cfg(), cpu) == RolloutShape(n_envs=4, n_steps=32, batch_size=64)
    with pytest.raises(ConfigError, match=r"batch_size \(4096\) exceeds the rollout size"):
        rollout_shape(small_cfg(**{**auto, "agent.batch_size": 4096}), cpu)


def test_a_training_leaves_nothing_in_the_temporary_folder(
    market: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SB3's default logger creates /tmp/SB3-<time> for every training; nightly runs would
    pile them up (hundreds a week)."""
    import tempfile

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    cfg = small_cfg(**{"train.total_timesteps": 256})
    train_agent(cfg, market, [(0, market.n_rows)], seed=0, out_dir=tmp_path / "out")
    assert list(scratch.iterdir()) == []
