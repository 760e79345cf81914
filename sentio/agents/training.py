"""Training one agent on one fold: device, model construction, checkpoints, resume.

``train_agent`` builds the configured algorithm (``agent.algo``: ``ppo``, ``maskable_ppo``
or ``sentio_ppo``) on a :class:`~sentio.env.SentioVecEnv` over the fold's training
ranges and trains it to ``train.total_timesteps``: by default (``train.rollout = device``)
with the accounts, rollouts and updates on the training device
(:func:`~sentio.agents.device_rollout.learn_on_device`), or with SB3's own loop over that
numpy environment (``sb3``). The rollout shape (environments,
steps, minibatch) is :func:`rollout_shape`'s. Every ``train.checkpoint_every``
environment steps (at the end of the rollout that crosses the mark) it writes a
checkpoint holding everything needed to continue: the SB3 zip (weights, optimizer state,
step count, schedules) and the random states (Python, numpy, torch, the episode sampler).
A run that finds a checkpoint of the same configuration in its folder continues from it
instead of starting over, so a killed training (or a Prefect retry of the training task)
ends at the same total number of steps.

**Repeatable by construction.** SB3 draws from the process-wide random generators
(torch's for the initial weights, action sampling and dropout; numpy's for the minibatch
order), so a training owns its process while it runs: ``train_agent`` holds a
process-wide lock from seeding to the saved model, so two trainings in one process never
interleave their draws, and the flow runs each training in a process of its own
(:mod:`sentio.agents.isolation`). A training also fixes torch's intra-op thread count
(``train.torch_threads``): floating-point reductions split over a different number of
threads may round differently. A checkpoint holds the random states, the episode
sampler and the accounts of the vector environment mid-episode, so a resumed training
continues exactly where the killed one stopped: on the CPU the resumed model equals the
uninterrupted one bit for bit. ``model.zip`` itself is byte-for-byte repeatable: SB3's
wall-clock fields (``start_time``) and machine paths (``tensorboard_log``) are left
out and the archive's entries carry a fixed timestamp.
"""

from __future__ import annotations

import io
import json
import pickle
import random
import re
import threading
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Logger

from sentio.agents.device_rollout import learn_on_device
from sentio.agents.selection import Holdout, Selection, split_validation, validation_returns
from sentio.config import SentioConfig, resolve_for_bars, training_settings_hash
from sentio.env import EnvParams, MarketData, SentioVecEnv
from sentio.env.backtest import STAND_ASIDE
from sentio.env.device_env import DeviceVecEnv
from sentio.errors import ConfigError, ResourceError
from sentio.io import atomic_path, sha256_file, write_json_atomic

__all__ = [
    "CHECKPOINTS_DIR",
    "reward_scale",
    "CHECKPOINT_NAME",
    "CPU_ROLLOUT",
    "GPU_ROLLOUT",
    "ProgressFn",
    "RolloutShape",
    "TrainResult",
    "algorithm_class",
    "make_model",
    "resolve_device",
    "rollout_shape",
    "save_model",
    "train_agent",
]

CHECKPOINT_NAME = "checkpoint"
CHECKPOINTS_DIR = "checkpoints"
"""Folder under a training's output folder holding its last checkpoint."""
CHECKPOINT_FORMAT = 4
"""Bumped when a checkpoint's content changes (2: the environment's accounts are saved;
3: the validation record and the best checkpoints, :mod:`sentio.agents.selection`;
4: the episode sampler inside the environment's state, the device environment's)."""
BEST_NAME = "best-{steps}.zip"
"""The policy at ``steps`` when it scored best on validation so far (in ``checkpoints/``)."""

_TRAINING_LOCK = threading.Lock()
"""Held by a training from seeding to its saved model: the process's random state is its own."""

_UNSAVED = ("start_time", "tensorboard_log", "_num_timesteps_at_start")
"""SB3 attributes left out of saved models: a wall-clock time, a machine path and where
the last ``learn`` call started (set again by every ``learn``)."""
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
_ADDRESS = re.compile(rb" at 0x[0-9a-fA-F]+>")
ProgressFn = Callable[[int, int, "float | None"], None]
"""``progress(steps_done, total_steps, episode_return)``, called after every rollout;
``episode_return`` is the mean raw log return of the training episodes that ended in that
rollout (``None`` when none ended)."""


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


@dataclass(frozen=True)
class RolloutShape:
    """How many environments step at once, for how long, and the minibatch size."""

    n_envs: int
    n_steps: int
    batch_size: int


CPU_ROLLOUT = RolloutShape(n_envs=64, n_steps=32, batch_size=256)
"""``auto`` on the CPU: 2,048 env steps per update (as 8 x 256 before the device path),
stepped by 64 accounts at once (fewer Python steps per env step)."""
GPU_ROLLOUT = RolloutShape(n_envs=4096, n_steps=16, batch_size=16_384)
"""``auto`` on a GPU: 4,096 accounts x 16 steps (the Isaac Gym / CleanRL shape), four
minibatches per epoch."""


def rollout_shape(cfg: SentioConfig, device: torch.device) -> RolloutShape:
    """``train.n_envs``, ``agent.n_steps`` and ``agent.batch_size`` with ``auto`` resolved for ``device``.

    ``auto`` values come from :data:`CPU_ROLLOUT` / :data:`GPU_ROLLOUT`; an ``auto``
    ``n_steps`` beside a given ``n_envs`` keeps the device's rollout size (at least 8
    steps), an ``auto`` batch size is the device's (at most the rollout).

    Raises:
        ConfigError: the batch size exceeds the rollout.
    """
    base = GPU_ROLLOUT if device.type == "cuda" else CPU_ROLLOUT
    a, t = cfg.agent, cfg.train
    n_envs = base.n_envs if t.n_envs == "auto" else int(t.n_envs)
    if a.n_steps == "auto":
        n_steps = max(8, (base.n_envs * base.n_steps) // n_envs)
    else:
        n_steps = int(a.n_steps)
    rollout = n_envs * n_steps
    if a.batch_size == "auto":
        batch = min(base.batch_size if device.type != "cuda" else max(rollout // 4, 2), rollout)
    else:
        batch = int(a.batch_size)
    if batch > rollout:
        raise ConfigError(
            f"agent.batch_size ({batch}) exceeds the rollout size agent.n_steps x "
            f"train.n_envs = {n_steps} x {n_envs} = {rollout}"
        )
    return RolloutShape(n_envs=n_envs, n_steps=n_steps, batch_size=batch)


def reward_scale(cfg: SentioConfig, market: MarketData, ranges: Sequence[tuple[int, int]]) -> float:
    """The factor the learner's rewards are multiplied by (``agent.reward_scale``).

    ``"auto"``: ``1 / sd`` of the long ETF's one-bar log returns (close to close, within
    sessions) over the training rows ``ranges``, rounded to three significant digits, so
    a one-sd bar is a reward of about 1 and ``agent.huber_kappa`` = 1 sits at the scale
    of the quantile errors. Training rows only: nothing after the fold's training end is
    read. A number is used as given.
    """
    scale = cfg.agent.reward_scale
    if scale != "auto":
        return float(scale)
    from sentio.env.market import LONG

    parts = []
    for a, b in ranges:
        close = market.close[a:b, LONG]
        same = market.session[a + 1 : b] == market.session[a : b - 1]
        parts.append(np.diff(np.log(close))[same])
    r = np.concatenate(parts) if parts else np.zeros(0)
    sd = float(r.std(ddof=1)) if r.size > 1 else 0.0
    if not sd > 0:
        return 1.0
    return float(f"{1.0 / sd:.3g}")


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
        # SB3's Adam (eps 1e-5) as one fused kernel per step instead of a Python loop over
        # the parameters (torch >= 2.4 on the CPU): the same update rule
        "optimizer_kwargs": {"eps": 1e-5, "fused": True},
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
    """A fresh model of ``agent.algo`` on ``env`` with the configured hyperparameters.

    ``env`` gives the spaces and the number of environments; ``agent.n_steps`` and
    ``agent.batch_size`` are :func:`rollout_shape`'s for ``device``.
    """
    a = cfg.agent
    shape = rollout_shape(cfg, device)
    algo: Any = algorithm_class(cfg)  # PPO, MaskablePPO or SentioPPO: the same keywords
    extra: dict[str, Any] = {}
    if algo.__name__ == "SentioPPO":
        from sentio.agents.sentio_ppo import sentio_algorithm_kwargs

        extra = sentio_algorithm_kwargs(a)
    model = algo(
        "MultiInputPolicy",
        env,
        learning_rate=a.learning_rate,
        n_steps=shape.n_steps,
        batch_size=shape.batch_size,
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
    if a.flat_prior > 0:
        set_flat_prior(model, env.params.flat_action, a.flat_prior)
    return model


def set_flat_prior(model: BaseAlgorithm, flat: int, prior: float) -> None:
    """Add ``prior`` to the flat action's logit bias of a fresh policy (``agent.flat_prior``).

    The action head starts near zero (SB3 initialises it with gain 0.01), so the initial
    policy chooses flat with probability ``e^prior / (e^prior + A - 1)``. For the regime
    gated head every expert gets the prior.
    """
    head: Any = model.policy.action_net
    linear = getattr(head, "experts", head)
    with torch.no_grad():
        bias = linear.bias.view(-1, int(getattr(model.action_space, "n")))  # noqa: B009
        bias[:, flat] += prior


# ---------------------------------------------------------------------------- checkpoints


def _repeatable_zip(raw: bytes) -> bytes:
    """The same zip archive with every entry stamped at one fixed time, in the same order.

    SB3's ``data`` entry also describes classes for people, with the ``repr`` of their
    functions, which holds memory addresses (``<function f at 0x7f...>``); those
    addresses are dropped (loading reads only the ``:serialized:`` fields).
    """
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(raw)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            entry = zipfile.ZipInfo(info.filename, date_time=_ZIP_TIME)
            entry.compress_type = info.compress_type
            entry.external_attr = info.external_attr
            data = src.read(info)
            if info.filename == "data":
                data = _ADDRESS.sub(b">", data)
            dst.writestr(entry, data)
    return out.getvalue()


def _unseed(space: Any) -> None:
    """Drop a gymnasium space's own sampling generator (PPO never samples from spaces;
    its state would depend on when the space was last seeded)."""
    if hasattr(space, "_np_random"):
        space._np_random = None
    subspaces = getattr(space, "spaces", None)
    for sub in subspaces.values() if isinstance(subspaces, dict) else subspaces or ():
        _unseed(sub)


def save_model(model: BaseAlgorithm, path: str | Path) -> Path:
    """Save an SB3 model zip atomically (readers never see half a file), byte-for-byte
    repeatable: the same weights and state give the same file."""
    for name in ("observation_space", "action_space"):
        # an unpickled space shares fewer objects than a fresh one, and pickle's output
        # depends on that sharing: save a round-tripped (canonical) copy
        space = pickle.loads(pickle.dumps(getattr(model, name)))
        _unseed(space)
        setattr(model, name, space)
    buffer = io.BytesIO()
    model.save(buffer, exclude=list(_UNSAVED))
    data = _repeatable_zip(buffer.getvalue())
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


TrainingEnv = SentioVecEnv | DeviceVecEnv
"""The environment a training steps: SB3's loop (``train.rollout = sb3``) or the device's."""


def _rng_state(env: TrainingEnv) -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "env": env.get_state(),  # the accounts and the episode sampler
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(env: TrainingEnv, state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    env.set_state(state["env"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save_checkpoint(
    folder: Path,
    model: BaseAlgorithm,
    env: TrainingEnv,
    fingerprint: str,
    selection: Selection | None,
) -> None:
    """Write ``checkpoint.zip`` + ``checkpoint.rng`` + ``checkpoint.json`` (the last one last)."""
    save_model(model, folder / f"{CHECKPOINT_NAME}.zip")
    with atomic_path(folder / f"{CHECKPOINT_NAME}.rng") as tmp:
        tmp.write_bytes(pickle.dumps(_rng_state(env)))
    meta = folder / f"{CHECKPOINT_NAME}.json"
    write_json_atomic(
        meta,
        {
            "num_timesteps": int(model.num_timesteps),
            "fingerprint": fingerprint,
            "selection": None if selection is None else selection.to_dict(),
            # what belongs to this checkpoint (a copy elsewhere is checked against it)
            "files": {
                p.name: sha256_file(p)
                for p in sorted(folder.iterdir())
                if p.is_file() and p != meta and not p.name.startswith(".")
            },
        },
    )


def _load_checkpoint(
    folder: Path,
    cfg: SentioConfig,
    env: SentioVecEnv,
    state_env: TrainingEnv,
    fingerprint: str,
    device: torch.device,
) -> tuple[BaseAlgorithm, Selection | None] | None:
    """The checkpointed model (on ``env``; the accounts and the sampler restored into
    ``state_env``) and its validation record, or None (no usable checkpoint)."""
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
    # force_reset=False: continue the accounts mid-episode (their state is in the .rng file)
    model = algo.load(folder / f"{CHECKPOINT_NAME}.zip", env=env, device=device, force_reset=False)
    _set_rng_state(state_env, pickle.loads((folder / f"{CHECKPOINT_NAME}.rng").read_bytes()))
    record = meta.get("selection")
    return model, None if record is None else Selection.from_dict(record)


@dataclass
class _Validator:
    """Validation runs of one training's policy on its held-out episodes."""

    folder: Path
    market: MarketData
    params: EnvParams
    holdout: Holdout
    selection: Selection
    every: int

    def run(self, model: BaseAlgorithm) -> None:
        """Score the policy at its step count (once); keep it when it is the best so far."""
        steps = int(model.num_timesteps)
        if self.selection.evaluated(steps):
            return
        h = self.holdout
        returns, exposure = validation_returns(model, self.market, self.params, h.starts, h.ends)
        if self.selection.record(steps, returns, exposure):
            # kept under its step count: a resumed training never confuses two bests
            save_model(model, self.folder / BEST_NAME.format(steps=steps))


class _Checkpoints(BaseCallback):
    """Checkpoint every ``every`` steps (at rollout ends) and report progress."""

    def __init__(
        self,
        folder: Path,
        env: TrainingEnv,
        every: int,
        total: int,
        fingerprint: str,
        progress: ProgressFn | None,
        validator: _Validator | None = None,
    ) -> None:
        super().__init__()
        self.folder = folder
        self.venv = env
        self.every = every
        self.total = total
        self.fingerprint = fingerprint
        self.progress = progress
        self.validator = validator
        self.last = 0
        self.last_validation = 0
        self.ended = 0
        self.ended_sum = 0.0
        self.curve: list[dict[str, Any]] = []

    def _on_training_start(self) -> None:
        self.last = self.model.num_timesteps // self.every
        if self.validator is not None:
            self.last_validation = self.model.num_timesteps // self.validator.every

    def _on_step(self) -> bool:  # SB3's loop: the infos of every step
        for info in self.locals.get("infos", ()):
            if "episode_log_return" in info:
                self.ended += 1
                self.ended_sum += info["episode_log_return"]
        return True

    def episodes_ended(self, count: int, mean: float | None) -> None:
        """The device loop's per-rollout summary of the training episodes that ended."""
        self.ended += count
        self.ended_sum += 0.0 if mean is None else mean * count

    def _on_rollout_end(self) -> None:
        mean = self.ended_sum / self.ended if self.ended else None
        self.curve.append(
            {
                "steps": int(self.model.num_timesteps),
                "episodes": self.ended,
                "mean_episode_log_return": mean,
            }
        )
        self.ended, self.ended_sum = 0, 0.0
        if self.progress is not None:
            self.progress(int(self.model.num_timesteps), self.total, mean)

    def _on_rollout_start(self) -> None:
        # called before each rollout: the previous update is complete here; validation
        # first, so that the checkpoint holds its record
        v = self.validator
        if v is not None and self.model.num_timesteps // v.every > self.last_validation:
            v.run(self.model)
            self.last_validation = self.model.num_timesteps // v.every
        mark = self.model.num_timesteps // self.every
        if mark > self.last:
            selection = None if v is None else v.selection
            _save_checkpoint(self.folder, self.model, self.venv, self.fingerprint, selection)
            self.last = mark


@dataclass
class TrainResult:
    """What one training produced."""

    model_path: str
    algo: str
    seed: int
    device: str
    rollout: str
    """``train.rollout``: ``device`` or ``sb3``."""
    n_envs: int
    n_steps: int
    batch_size: int
    total_timesteps: int
    num_timesteps: int
    resumed_from: int
    seconds: float
    steps_per_second: float
    reward_scale: float
    curve: list[dict[str, Any]]
    """Per rollout: steps so far, training episodes that ended in it and their mean raw
    log return (the learning curve; since the resume point for a resumed training)."""
    validation: dict[str, Any]
    """The model selection (:mod:`sentio.agents.selection`): ``skipped`` (the reason, or
    None), and when it ran the held-out ``episodes``, the ``history`` of scores per
    evaluated step, ``best_steps`` (the saved model's step count), ``best_score`` and
    ``stands_aside``."""

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
    init_from: str | Path | None = None,
) -> TrainResult:
    """Train ``agent.algo`` on the fold's training ranges; resume from a checkpoint if any.

    Writes ``out_dir/model.zip`` (the final SB3 model, loadable with the class's
    ``load``) and keeps ``out_dir/checkpoints/`` while training. The training holds the
    process's random state and torch's thread count (``train.torch_threads``) until it
    returns (see the module docstring); concurrent callers in one process wait.
    ``init_from``: a model of the same class and architecture (a warm start,
    :mod:`sentio.stages.warm`) whose policy weights the new model starts from; a resumed
    checkpoint already holds them.

    Raises:
        ConfigError: ``train.device = cuda`` without a GPU, or an ``init_from`` model whose
            network does not fit this configuration's.
        ResourceError: out of memory (names the settings to lower) or a full disk.
    """
    with _TRAINING_LOCK:
        threads = torch.get_num_threads()
        torch.set_num_threads(cfg.train.torch_threads)
        # the policies build valid distributions; checking their arguments on every forward
        # pass costs about a tenth of an update (restored below)
        validate = torch.distributions.Distribution._validate_args
        torch.distributions.Distribution.set_default_validate_args(False)
        try:
            return _train(
                cfg,
                market,
                ranges,
                seed=seed,
                out=Path(out_dir),
                progress=progress,
                init_from=None if init_from is None else Path(init_from),
            )
        except (torch.OutOfMemoryError, MemoryError) as exc:
            where = "the GPU" if isinstance(exc, torch.OutOfMemoryError) else "the machine"
            raise ResourceError(
                f"{where} ran out of memory training {cfg.agent.algo} (agent.batch_size = "
                f"{cfg.agent.batch_size}, agent.n_steps = {cfg.agent.n_steps}, train.n_envs = "
                f"{cfg.train.n_envs}, train.max_parallel = {cfg.train.max_parallel or 'auto'}; "
                "'auto' sizes the rollout to the device); "
                "lower agent.batch_size, train.n_envs or train.max_parallel"
            ) from None
        finally:
            torch.set_num_threads(threads)
            torch.distributions.Distribution.set_default_validate_args(validate)


def _train(
    cfg: SentioConfig,
    market: MarketData,
    ranges: Sequence[tuple[int, int]],
    *,
    seed: int,
    out: Path,
    progress: ProgressFn | None,
    init_from: Path | None = None,
) -> TrainResult:
    """:func:`train_agent` inside its lock: seed, build, resume or start, learn, select, save."""
    cfg = resolve_for_bars(cfg, market.bar_seconds)
    device = resolve_device(cfg.train.device)
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    params = EnvParams.from_config(cfg, market)
    holdout = split_validation(
        market,
        ranges,
        window=params.window,
        episode_sessions=params.episode_sessions,
        fraction=cfg.train.validation_fraction,
    )
    train_ranges = holdout.train_ranges if isinstance(holdout, Holdout) else list(ranges)
    scale = reward_scale(cfg, market, train_ranges)
    shape = rollout_shape(cfg, device)
    env, device_env = _training_envs(cfg, market, params, train_ranges, shape, device, seed, scale)
    state_env: TrainingEnv = env if device_env is None else device_env
    fingerprint = _fingerprint(cfg, shape, seed, market, ranges, init_from)
    ckpt_dir = out / CHECKPOINTS_DIR
    model, selection, resumed_from = _start_or_resume(
        cfg, env, state_env, fingerprint, device, seed, out, init_from
    )
    validator = None
    if isinstance(holdout, Holdout):
        if selection is None:
            selection = Selection(
                min_t=cfg.train.validation_min_t,
                episodes=holdout.n_episodes,
                periods_per_year=252.0 / params.episode_sessions,
            )
        validator = _Validator(
            ckpt_dir, market, params, holdout, selection, cfg.train.validation_every
        )
    total = cfg.train.total_timesteps
    remaining = max(total - int(model.num_timesteps), 0)
    callback = _Checkpoints(
        ckpt_dir, state_env, cfg.train.checkpoint_every, total, fingerprint, progress, validator
    )
    start = time.perf_counter()
    _learn(model, device_env, remaining, callback, resumed_from)
    done = int(model.num_timesteps)
    model, validation = _select(model, validator, holdout, cfg, params, device, done)
    seconds = time.perf_counter() - start
    model.reward_scale = scale  # type: ignore[attr-defined]  # saved in the zip's data
    model.validation = validation  # type: ignore[attr-defined]
    path = save_model(model, out / "model.zip")
    if progress is not None:
        progress(done, total, None)
    return TrainResult(
        model_path=str(path),
        algo=cfg.agent.algo,
        seed=seed,
        device=str(device),
        rollout=cfg.train.rollout,
        n_envs=shape.n_envs,
        n_steps=shape.n_steps,
        batch_size=shape.batch_size,
        total_timesteps=total,
        num_timesteps=done,
        resumed_from=resumed_from,
        seconds=seconds,
        steps_per_second=(done - resumed_from) / seconds if seconds > 0 else 0.0,
        reward_scale=scale,
        curve=callback.curve,
        validation=validation,
    )


def _training_envs(
    cfg: SentioConfig,
    market: MarketData,
    params: EnvParams,
    train_ranges: list[tuple[int, int]],
    shape: RolloutShape,
    device: torch.device,
    seed: int,
    scale: float,
) -> tuple[SentioVecEnv, DeviceVecEnv | None]:
    """The SB3 environment and, with ``train.rollout = device``, the device's one."""
    # the SB3 environment gives the model its spaces and size (and steps it on the sb3 path)
    env = SentioVecEnv(market, params, train_ranges, shape.n_envs, seed=seed, reward_scale=scale)
    device_env = None
    if cfg.train.rollout == "device":
        device_env = DeviceVecEnv(
            market, params, train_ranges, shape.n_envs, device=device, seed=seed, reward_scale=scale
        )
    return env, device_env


def _fingerprint(
    cfg: SentioConfig,
    shape: RolloutShape,
    seed: int,
    market: MarketData,
    ranges: Sequence[tuple[int, int]],
    init_from: Path | None = None,
) -> str:
    """What a checkpoint must match to be resumed: settings, shape, seed, data and the
    warm start's initial weights."""
    return json.dumps(
        [
            CHECKPOINT_FORMAT,
            training_settings_hash(cfg),
            asdict(shape),  # train.rollout is in the settings hash; the shape resolves auto
            seed,
            market.n_rows,
            list(ranges),
            None if init_from is None else sha256_file(init_from),
        ]
    )


def _start_or_resume(
    cfg: SentioConfig,
    env: SentioVecEnv,
    state_env: TrainingEnv,
    fingerprint: str,
    device: torch.device,
    seed: int,
    out: Path,
    init_from: Path | None = None,
) -> tuple[BaseAlgorithm, Selection | None, int]:
    """The checkpointed model, its validation record and its step count, or a new model
    (with ``init_from``'s policy weights)."""
    tb = str(out / "tensorboard") if cfg.train.tensorboard else None
    loaded = _load_checkpoint(out / CHECKPOINTS_DIR, cfg, env, state_env, fingerprint, device)
    if loaded is None:
        model = make_model(cfg, env, seed=seed, device=device, tensorboard_log=tb)
        if init_from is not None:
            _initialise_from(model, init_from, cfg, device)
        return model, None, 0
    model, selection = loaded
    model.tensorboard_log = tb
    return model, selection, int(model.num_timesteps)


def _initialise_from(
    model: BaseAlgorithm, path: Path, cfg: SentioConfig, device: torch.device
) -> None:
    """Copy the policy weights of the model at ``path`` into ``model`` (same shapes)."""
    source = algorithm_class(cfg).load(path, device=device)
    theirs, ours = source.policy.state_dict(), model.policy.state_dict()
    for name, tensor in ours.items():
        other = theirs.get(name)
        if other is None or other.shape != tensor.shape:
            found = "absent" if other is None else tuple(other.shape)
            raise ConfigError(
                f"{path}: cannot warm-start from it: its policy's {name} is {found}, this "
                f"configuration's is {tuple(tensor.shape)}"
            )
    extra = sorted(set(theirs) - set(ours))
    if extra:
        raise ConfigError(f"{path}: cannot warm-start from it: its policy has {extra[0]} too")
    model.policy.load_state_dict(theirs)


def _learn(
    model: BaseAlgorithm,
    device_env: DeviceVecEnv | None,
    remaining: int,
    callback: _Checkpoints,
    resumed_from: int,
) -> None:
    """Run the ``remaining`` steps: on the device's rollout loop, or SB3's ``learn``."""
    if model.tensorboard_log is None:
        # without it SB3 configures a logger whose folder, /tmp/SB3-<time>, every training
        # creates and leaves behind; this one keeps the values (callbacks read them) only
        model.set_logger(Logger(folder=None, output_formats=[]))
    if remaining > 0 and device_env is not None:
        learn_on_device(
            model,
            device_env,
            remaining,
            callback=callback,
            reset_num_timesteps=resumed_from == 0,
            tb_log_name=type(model).__name__,
            on_rollout=callback.episodes_ended,
        )
    elif remaining > 0:
        model.learn(
            total_timesteps=remaining,
            callback=callback,
            reset_num_timesteps=resumed_from == 0,
            progress_bar=False,
        )


def _select(
    model: BaseAlgorithm,
    validator: _Validator | None,
    holdout: Holdout | str,
    cfg: SentioConfig,
    params: EnvParams,
    device: torch.device,
    done: int,
) -> tuple[BaseAlgorithm, dict[str, Any]]:
    """The model to save (the final policy or the validation's best) and the validation record."""
    if validator is None:
        return model, {"skipped": holdout if isinstance(holdout, str) else "no holdout"}
    validator.run(model)  # the final policy
    chosen = validator.selection
    if chosen.best_steps != done:
        best = validator.folder / BEST_NAME.format(steps=chosen.best_steps)
        model = algorithm_class(cfg).load(best, device=device)
    validation = {"skipped": None, **chosen.to_dict()}
    if chosen.stands_aside:
        setattr(model, STAND_ASIDE, params.flat_action)  # saved in the zip's data
    return model, validation
