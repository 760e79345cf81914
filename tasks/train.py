"""The training Prefect task: one (fold, seed) through :func:`sentio.stages.train_stage`.

Cached on the CONTENT of every input (bars, features, folds, the fold's regime model),
the settings and the code version, plus the fold and the seed. The training runs in a
child process of its own (:func:`sentio.processes.call_in_process`): its random state
and thread count are its own, so its result does not depend on what else runs, and it
dies with the flow. On a single-threaded Dask worker, which runs one task at a time, it
runs in the worker itself (:func:`sentio.processes.call_in_this_process`): the same
model, without a fresh interpreter per training. :func:`train_all` runs the (fold, seed) trainings of a run at most
``train.max_parallel`` at a time. Training reports its progress to a Prefect progress
artifact. A retry resumes from the training's last checkpoint instead of starting over,
so the task retries any failure that is not a :class:`~sentio.errors.SentioError` (a
user error, a full disk or too little memory would fail the same way again).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import socket
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast
from uuid import UUID

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.client.schemas.objects import State, TaskRun
from prefect.futures import PrefectFuture, as_completed
from prefect.tasks import Task

from sentio import stages
from sentio.config import SentioConfig
from sentio.errors import ConfigError, SentioError, StorageError
from sentio.io import is_disk_full
from sentio.processes import call_in_process, call_in_this_process, thread_caps
from sentio.progress import format_progress
from sentio.storage import SharedStorage, checkpoint_steps
from sentio.storage_cache import CacheUse, cache_in_use, prune_cache
from tasks.caching import checked, content_cache_policy, failure_exception, stage_task_options

TRAIN_RETRIES = 2
PROGRESS_EVERY = 0.1
"""A progress line on the terminal at least every tenth of the steps..."""
PROGRESS_SECONDS = 30.0
"""...or every 30 seconds."""


def retry_unless_user_error(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Prefect ``retry_condition_fn``: retry anything but a :class:`SentioError` or a full
    disk (a retry would fail the same way; a killed or crashed training resumes)."""
    exc = failure_exception(state)
    return not isinstance(exc, SentioError) and not (exc is not None and is_disk_full(exc))


def training_key(params: Mapping[str, Any], fold: int, seed: int) -> str:
    """The training key of ``(fold, seed)`` on the training task's inputs and settings
    ``params`` (:func:`sentio.stages.train_key`)."""
    return stages.train_key(
        params["bars_path"],
        params["features_path"],
        params["folds_path"],
        params["regimes_path"],
        params["cfg"],
        fold,
        seed,
        warm_path=params.get("warm_path"),
    )


def _options() -> dict[str, Any]:
    options = stage_task_options(
        content_cache_policy(
            "train",
            lambda p: training_key(p, p["fold"], p["seed"]),
        )
    )
    options.update(retries=TRAIN_RETRIES, retry_condition_fn=retry_unless_user_error)
    return options


@task(
    name="train",
    description="Train one agent on a fold's training ranges and backtest it on the fold's test "
    "blocks (content-cached; retries resume from the last checkpoint).",
    **_options(),
)
def train_task(
    bars_path: str,
    features_path: str,
    folds_path: str,
    regimes_path: str | None,
    cfg: SentioConfig,
    workdir: str,
    fold: int,
    seed: int,
    warm_path: str | None = None,
) -> dict[str, Any]:
    """Run :func:`sentio.stages.train_stage` for one fold and seed; return its summary
    (``warm_path``: the warm-start stage's file, :mod:`sentio.stages.warm`)."""
    paths = (bars_path, features_path, folds_path, regimes_path)
    return _run_training(paths, cfg, Path(workdir), fold, seed, warm_path=warm_path)


def _shared_options() -> dict[str, Any]:
    options = stage_task_options(content_cache_policy("train", lambda p: p["key"]))
    # the storage is this task's cache (a published training returns at once); a Prefect
    # cache hit would return a summary whose folder may be gone from the storage
    options.update(
        retries=TRAIN_RETRIES, retry_condition_fn=retry_unless_user_error, refresh_cache=True
    )
    return options


@task(
    name="train",
    description="Train one agent through the shared storage (paths.storage): copy the inputs "
    "in, resume from the storage's last checkpoint, push checkpoints, publish the result.",
    **_shared_options(),
)
def train_shared_task(
    key: str,
    inputs: dict[str, str | None],
    cfg: SentioConfig,
    fold: int,
    seed: int,
) -> dict[str, Any]:
    """Train ``(fold, seed)`` (whose training key on the flow's machine is ``key``) on the
    inputs published in ``paths.storage`` (``inputs``: the training task's input names to
    ``<stage>/<key>/<file>`` under the storage's ``stages/``; see
    :func:`flows.trainings.run_trainings`), in this machine's ``paths.storage_cache``.

    The training's folder is published to the storage; the summary returned names this
    machine's files (the flow copies the folder and reads its own copy). The cache is held
    in use meanwhile and pruned afterwards (:mod:`sentio.storage_cache`).

    Raises:
        StorageError: the storage cannot be reached, or an input is missing or damaged.
        ConfigError: this machine computes another key (its code or packages differ).
    """
    store = SharedStorage(str(cfg.paths.storage))
    cache = stages.workdir_root(cfg.paths.storage_cache)
    held = False
    try:
        with cache_in_use(cache) as use:
            held = use.held
            return _train_in_cache(store, use, key, inputs, cfg, fold, seed)
    finally:
        if held:
            _prune(cache, cfg.paths.storage_cache_days)


def _prune(cache: Path, keep_days: float | None) -> None:
    """Prune this machine's storage cache (:mod:`sentio.storage_cache`). Never raises: a
    failure is a warning (the training's outcome, result or error, is what counts)."""
    if keep_days is None:
        return
    try:
        removed = prune_cache(cache, keep_days)
        if removed:
            get_run_logger().info(
                "storage cache %s: removed %d entries unused for %g days",
                cache,
                len(removed),
                keep_days,
            )
    except Exception as exc:  # noqa: BLE001 - see the docstring
        with contextlib.suppress(Exception):
            get_run_logger().warning("storage cache %s: not pruned: %s", cache, exc)


def _train_in_cache(
    store: SharedStorage,
    use: CacheUse,
    key: str,
    inputs: dict[str, str | None],
    cfg: SentioConfig,
    fold: int,
    seed: int,
) -> dict[str, Any]:
    """:func:`train_shared_task`'s work, in the cache held in use (``use``)."""
    cache = use.cache
    paths: list[str | None] = []
    for name in ("bars_path", "features_path", "folds_path", "regimes_path", "warm_path"):
        rel = inputs.get(name)
        if rel is not None:
            stage, stage_key, _ = rel.split("/", 2)
            if not store.get_stage(stage, stage_key, cache):
                raise StorageError(
                    f"train fold {fold} seed {seed}: {name} is not in the storage "
                    f"({store.where('stages', stage, stage_key)} has no manifest)"
                )
            use.mark(cache / stage / stage_key)
        paths.append(None if rel is None else str(cache / rel))
    bars, features, folds, regimes, warm = paths
    assert bars is not None and features is not None and folds is not None
    here = stages.train_key(bars, features, folds, regimes, cfg, fold, seed, warm_path=warm)
    if here != key:
        raise ConfigError(
            f"train fold {fold} seed {seed}: this worker ({socket.gethostname()}) computes "
            f"the training key {here} where the flow computed {key}: its Sentio code or "
            "packages differ from the flow's; install the same version on every machine"
        )
    use.mark(cache / "train" / key)
    use.mark(cache / "train" / stages.training_staging(key))
    if store.get_stage("train", key, cache):  # trained elsewhere meanwhile
        done = stages.stage_summary("train", key, cache)
        if done is not None:
            return done
    from sentio.agents.training import CHECKPOINTS_DIR

    checkpoints = cache / "train" / stages.training_staging(key) / CHECKPOINTS_DIR
    store.get_checkpoint(key, checkpoints)
    pushed = [checkpoint_steps(checkpoints)]

    def push_checkpoint() -> None:
        steps = checkpoint_steps(checkpoints)
        if steps is None or steps == pushed[0]:
            return
        try:
            if store.put_checkpoint(key, checkpoints) is not None:
                pushed[0] = steps
        except StorageError as exc:  # the training goes on; the next checkpoint tries again
            get_run_logger().warning(
                "train fold %d seed %d: checkpoint not stored: %s", fold, seed, exc
            )

    summary = _run_training(
        (bars, features, folds, regimes),
        cfg,
        cache,
        fold,
        seed,
        on_progress=push_checkpoint,
        warm_path=warm,
    )
    store.put_stage(cache / "train" / key, "train", key)
    store.drop_checkpoints(key)
    return summary


def _run_training(
    paths: tuple[str, str, str, str | None],
    cfg: SentioConfig,
    workdir: Path,
    fold: int,
    seed: int,
    on_progress: Callable[[], None] | None = None,
    warm_path: str | None = None,
) -> dict[str, Any]:
    """:func:`sentio.stages.train_stage` in this process or a child (see the module), its
    progress in a Prefect progress artifact and log lines (``on_progress`` called after
    each report), and one line of results."""
    logger = get_run_logger()
    artifact = cast(
        UUID,
        create_progress_artifact(
            0.0, description=f"training {cfg.agent.algo}, fold {fold}, seed {seed}"
        ),
    )

    start = time.monotonic()
    shown = [-1.0, -1.0]  # time and share of the last line printed

    def progress(done: int, total: int, episode_return: float | None = None) -> None:
        share = min(1.0, done / max(total, 1))
        update_progress_artifact(artifact, 100.0 * share)
        now = time.monotonic() - start
        # a line every PROGRESS_EVERY of the steps or PROGRESS_SECONDS, whichever first
        if share >= 1.0 or share - shown[1] >= PROGRESS_EVERY or now - shown[0] >= PROGRESS_SECONDS:
            if share < 1.0 or shown[1] < 1.0:
                logger.info(
                    format_progress(
                        f"train fold {fold} seed {seed}", done, total, now, episode_return
                    )
                )
            shown[:] = [now, share]
        if on_progress is not None:
            on_progress()

    if sole_task_of_dask_worker():
        # a single-threaded Dask worker runs nothing else meanwhile: train right here and
        # save the fresh interpreter (the training seeds the process under its own lock)
        run = call_in_this_process
    elif multiprocessing.current_process().daemon:  # e.g. a Dask worker started by default
        raise ConfigError(
            "train: this worker is a daemonic process with several threads, which cannot "
            "start the training's own process; start Dask workers with --nthreads 1 or "
            "with DASK_DISTRIBUTED__WORKER__DAEMON=False"
        )
    else:
        run = call_in_process
    summary: dict[str, Any] = run(
        stages.train_stage,
        *paths,
        cfg,
        workdir,
        fold=fold,
        seed=seed,
        threads=cfg.train.torch_threads,
        progress=progress,
        warm_path=warm_path,
    )
    update_progress_artifact(artifact, 100.0)
    m = summary["metrics"]
    sharpe, total = m.get("sharpe"), m.get("total_return")
    logger.info(
        "train %s fold %d seed %d: %d steps (resumed from %d) at %.0f steps/s on %s; "
        "out-of-sample %d bars, Sharpe %s, total return %s, %d trades",
        summary["key"],
        fold,
        seed,
        summary["train"]["num_timesteps"],
        summary["train"]["resumed_from"],
        summary["train"]["steps_per_second"],
        summary["train"]["device"],
        summary["test_bars"],
        "n/a" if sharpe is None else f"{sharpe:.2f}",
        "n/a" if total is None else f"{total:+.2%}",
        summary["n_trades"],
    )
    return summary


def training_worker_env(cfg: SentioConfig) -> dict[str, str]:
    """The environment of a single-threaded Dask worker that trains in its own process:
    the thread caps of a training's child process (:func:`sentio.processes.thread_caps`)."""
    return thread_caps(cfg.train.torch_threads)


def sole_task_of_dask_worker() -> bool:
    """Whether this task runs on a Dask worker of one thread (it runs one task at a time)."""
    try:
        from distributed import get_worker
    except ImportError:  # pragma: no cover - prefect-dask brings distributed
        return False
    try:
        return int(get_worker().state.nthreads) == 1
    except ValueError:  # not on a worker
        return False


def submit_all(
    train: Task[..., dict[str, Any]],
    jobs: list[tuple[int, int]],
    *,
    limit: int,
    kwargs_of: Callable[[int, int], Mapping[str, Any]],
) -> list[dict[str, Any]]:
    """Run ``train(**kwargs_of(fold, seed))`` for every ``(fold, seed)`` of ``jobs``, at
    most ``limit`` at a time (a task is submitted as soon as a slot frees up); the
    results in the order of ``jobs``."""
    futures: dict[PrefectFuture[dict[str, Any]], int] = {}
    done: dict[int, PrefectFuture[dict[str, Any]]] = {}
    queue = list(enumerate(jobs))
    while queue or futures:
        while queue and len(futures) < max(1, limit):
            i, (fold, seed) = queue.pop(0)
            futures[train.submit(**kwargs_of(fold, seed))] = i
        finished = next(iter(as_completed(list(futures))))
        done[futures.pop(finished)] = finished
    return [done[i].result() for i in range(len(jobs))]


def train_all(
    train: Task[..., dict[str, Any]],
    jobs: list[tuple[int, int]],
    *,
    limit: int,
    workdir: str,
    params: Mapping[str, Any],
) -> list[dict[str, Any]]:
    """Run ``train`` for every ``(fold, seed)`` of ``jobs``, at most ``limit`` at a time.

    Each call gets the keyword arguments ``params`` besides its ``fold`` and ``seed``. The
    summaries come back in the order of ``jobs``, rebased onto ``workdir`` and verified: a
    cached summary whose files are missing or damaged is recomputed (one warning line
    names the file).
    """
    kwargs = dict(params)
    results = submit_all(
        train,
        jobs,
        limit=limit,
        kwargs_of=lambda fold, seed: {**kwargs, "fold": fold, "seed": seed},
    )
    runs = []
    for (fold, seed), result in zip(jobs, results, strict=True):
        summary, ok = checked(train, result, workdir)
        if not ok:
            summary = train.with_options(refresh_cache=True)(**kwargs, fold=fold, seed=seed)
        runs.append(summary)
    return runs


def summary_from_storage(
    params: Mapping[str, Any], fold: int, seed: int, *, where: str
) -> dict[str, Any]:
    """The summary a training that ran elsewhere (``where``: its flow run) left in the
    shared working directory ``params["workdir"]``, verified, nothing recomputed.

    Raises:
        ConfigError: the training's folder is not there or does not verify on this
            machine: the working directory is not storage every worker shares.
    """
    key = training_key(params, fold, seed)
    summary = stages.stage_summary("train", key, params["workdir"])
    if summary is None:
        folder = stages.workdir_root(params["workdir"]) / "train" / key
        raise ConfigError(
            f"train fold {fold} seed {seed}: {where} completed, but its outputs are not in "
            f"{folder} on this machine (missing or not matching their hashes): "
            "paths.workdir must be on storage every worker reaches at the same path"
        )
    return summary
