"""Training one agent on one fold: device, model construction, checkpoints, resume.

``train_agent`` builds the configured algorithm (``agent.algo``: ``ppo``, ``maskable_ppo``
or ``sentio_ppo``) on a :class:`~sentio.env.SentioVecEnv` over the fold's training
ranges and trains it to ``train.total_timesteps``. Every ``train.checkpoint_every``
environment steps (at the end of the rollout that crosses the mark) it writes a
checkpoint holding everything needed to continue: the SB3 zip (weights, optimizer state,
step count, schedules) and the random states (Python, numpy, torch, the episode sampler).
A run that finds a checkpoint of the same configuration in its folder continues from it
instead of starting over, so a killed training (or a Prefect retry of the training task)
ends at the same total number of steps.
"""

from __future__ import annotations

import io
import json
import pickle
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback

from sentio.config import SentioConfig
from sentio.env import EnvParams, MarketData, SentioVecEnv
from sentio.errors import ConfigError, SentioError
from sentio.io import atomic_path, write_json_atomic

__all__ = [
    "CHECKPOINT_NAME",
    "ProgressFn",
    "TrainResult",
    "TrainingError",
    "algorithm_class",
    "make_model",
    "resolve_device",
    "save_model",
    "train_agent",
]

CHECKPOINT_NAME = "checkpoint"
ProgressFn = Callable[[int, int], None]
"""``progress(steps_done, total_steps)``, called after every rollout."""


class TrainingError(SentioError):
    """Training cannot run as configured (device, memory)."""

    exit_code = 2


def resolve_device(requested: str) -> torch.device:
    """``auto``: CUDA when present, else CPU; ``cuda`` without a GPU is a clear error."""
    if requested == "cpu":
        return torch.device("cpu")
    if requested == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                "train.device = 'cuda' but no CUDA device is available "
                "(torch.cuda.is_available() is False); use 'auto' or 'cpu'"
            )
        return torch.device("cuda")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    raise ConfigError(f"train.device must be auto, cpu or cuda, got {requested!r}")


def algorithm_class(cfg: SentioConfig) -> type[BaseAlgorithm]:
    """The SB3 class of ``agent.algo``."""
    algo = cfg.agent.algo
    if algo == "ppo":
        from stable_baselines3 import PPO

        return PPO
    if algo == "maskable_ppo":
        from sb3_contrib import MaskablePPO

        return MaskablePPO
    from sentio.agents.sentio_ppo import SentioPPO

    return SentioPPO


def _policy_kwargs(cfg: SentioConfig, n_regimes: int) -> dict[str, Any]:
    from sentio.agents.extractors import extractor_kwargs

    cls, kwargs = extractor_kwargs(cfg.agent)
    policy_kwargs: dict[str, Any] = {
        "features_extractor_class": cls,
        "features_extractor_kwargs": kwargs,
        # SB3's orthogonal init would overwrite the transformer's own initialisation
        # (small learned positions, PyTorch's attention init) with gain sqrt(2)
        "ortho_init": cfg.agent.extractor != "transformer",
    }
    algo = algorithm_class(cfg)
    if algo.__name__ == "SentioPPO":
        from sentio.agents.sentio_ppo import sentio_policy_kwargs

        policy_kwargs.update(sentio_policy_kwargs(cfg.agent, n_regimes))
    return policy_kwargs


def make_model(
    cfg: SentioConfig,
    env: SentioVecEnv,
    *,
    seed: int,
    device: torch.device,
    tensorboard_log: str | None = None,
) -> BaseAlgorithm:
    """A fresh model of ``agent.algo`` on ``env`` with the configured hyperparameters."""
    a = cfg.agent
    algo: Any = algorithm_class(cfg)  # PPO, MaskablePPO or SentioPPO: the same keywords
    extra: dict[str, Any] = {}
    if algo.__name__ == "SentioPPO":
        from sentio.agents.sentio_ppo import sentio_algorithm_kwargs

        extra = sentio_algorithm_kwargs(a)
    return algo(
        "MultiInputPolicy",
        env,
        learning_rate=a.learning_rate,
        n_steps=a.n_steps,
        batch_size=a.batch_size,
        n_epochs=a.n_epochs,
        gamma=a.gamma,
        gae_lambda=a.gae_lambda,
        clip_range=a.clip_range,
        ent_coef=a.ent_coef,
        vf_coef=a.vf_coef,
        max_grad_norm=a.max_grad_norm,
        policy_kwargs=_policy_kwargs(cfg, env.sim.market.n_regimes),
        tensorboard_log=tensorboard_log,
        seed=seed,
        device=device,
        verbose=0,
        **extra,
    )


# ---------------------------------------------------------------------------- checkpoints


def save_model(model: BaseAlgorithm, path: str | Path) -> Path:
    """Save an SB3 model zip atomically (readers never see half a file)."""
    buffer = io.BytesIO()
    model.save(buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())
    return Path(path)


def _rng_state(env: SentioVecEnv) -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "sampler": env.rng.bit_generator.state,
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(env: SentioVecEnv, state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    env.rng.bit_generator.state = state["sampler"]
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save_checkpoint(
    folder: Path, model: BaseAlgorithm, env: SentioVecEnv, fingerprint: str
) -> None:
    """Write ``checkpoint.zip`` + ``checkpoint.rng`` + ``checkpoint.json`` (the last one last)."""
    save_model(model, folder / f"{CHECKPOINT_NAME}.zip")
    with atomic_path(folder / f"{CHECKPOINT_NAME}.rng") as tmp:
        tmp.write_bytes(pickle.dumps(_rng_state(env)))
    write_json_atomic(
        folder / f"{CHECKPOINT_NAME}.json",
        {"num_timesteps": int(model.num_timesteps), "fingerprint": fingerprint},
    )


def _load_checkpoint(
    folder: Path, cfg: SentioConfig, env: SentioVecEnv, fingerprint: str, device: torch.device
) -> BaseAlgorithm | None:
    meta_path = folder / f"{CHECKPOINT_NAME}.json"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError:
        return None
    if meta.get("fingerprint") != fingerprint:
        return None
    algo = algorithm_class(cfg)
    model = algo.load(folder / f"{CHECKPOINT_NAME}.zip", env=env, device=device)
    _set_rng_state(env, pickle.loads((folder / f"{CHECKPOINT_NAME}.rng").read_bytes()))
    return model


class _Checkpoints(BaseCallback):
    """Checkpoint every ``every`` steps (at rollout ends) and report progress."""

    def __init__(
        self,
        folder: Path,
        env: SentioVecEnv,
        every: int,
        total: int,
        fingerprint: str,
        progress: ProgressFn | None,
    ) -> None:
        super().__init__()
        self.folder = folder
        self.venv = env
        self.every = every
        self.total = total
        self.fingerprint = fingerprint
        self.progress = progress
        self.last = 0

    def _on_training_start(self) -> None:
        self.last = self.model.num_timesteps // self.every

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        if self.progress is not None:
            self.progress(int(self.model.num_timesteps), self.total)

    def _on_rollout_start(self) -> None:
        # called before each rollout: the previous update is complete here
        mark = self.model.num_timesteps // self.every
        if mark > self.last:
            _save_checkpoint(self.folder, self.model, self.venv, self.fingerprint)
            self.last = mark


@dataclass
class TrainResult:
    """What one training produced."""

    model_path: str
    algo: str
    seed: int
    device: str
    total_timesteps: int
    num_timesteps: int
    resumed_from: int
    seconds: float
    steps_per_second: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable."""
        return asdict(self)


def train_agent(
    cfg: SentioConfig,
    market: MarketData,
    ranges: Sequence[tuple[int, int]],
    *,
    seed: int,
    out_dir: str | Path,
    progress: ProgressFn | None = None,
) -> TrainResult:
    """Train ``agent.algo`` on the fold's training ranges; resume from a checkpoint if any.

    Writes ``out_dir/model.zip`` (the final SB3 model, loadable with the class's
    ``load``) and keeps ``out_dir/checkpoints/`` while training.

    Raises:
        ConfigError: ``train.device = cuda`` without a GPU.
        TrainingError: the GPU ran out of memory (names the batch size to lower).
    """
    out = Path(out_dir)
    device = resolve_device(cfg.train.device)
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    params = EnvParams.from_config(cfg)
    env = SentioVecEnv(market, params, ranges, cfg.train.n_envs, seed=seed)
    fingerprint = json.dumps(
        [cfg.hash("agent", "env", "train", "universe"), seed, market.n_rows, list(ranges)]
    )
    ckpt_dir = out / "checkpoints"
    tb = str(out / "tensorboard") if cfg.train.tensorboard else None
    model = _load_checkpoint(ckpt_dir, cfg, env, fingerprint, device)
    resumed_from = 0
    if model is None:
        model = make_model(cfg, env, seed=seed, device=device, tensorboard_log=tb)
    else:
        resumed_from = int(model.num_timesteps)
        if tb is not None:
            model.tensorboard_log = tb
    total = cfg.train.total_timesteps
    remaining = max(total - int(model.num_timesteps), 0)
    callback = _Checkpoints(ckpt_dir, env, cfg.train.checkpoint_every, total, fingerprint, progress)
    start = time.perf_counter()
    try:
        if remaining > 0:
            model.learn(
                total_timesteps=remaining,
                callback=callback,
                reset_num_timesteps=resumed_from == 0,
                progress_bar=False,
            )
    except torch.OutOfMemoryError as exc:
        raise TrainingError(
            f"{device} ran out of memory training {cfg.agent.algo} (agent.batch_size = "
            f"{cfg.agent.batch_size}, train.n_envs = {cfg.train.n_envs}); lower agent.batch_size "
            f"or train.n_envs: {exc}"
        ) from None
    seconds = time.perf_counter() - start
    done = int(model.num_timesteps)
    path = save_model(model, out / "model.zip")
    if progress is not None:
        progress(done, total)
    return TrainResult(
        model_path=str(path),
        algo=cfg.agent.algo,
        seed=seed,
        device=str(device),
        total_timesteps=total,
        num_timesteps=done,
        resumed_from=resumed_from,
        seconds=seconds,
        steps_per_second=(done - resumed_from) / seconds if seconds > 0 else 0.0,
    )
