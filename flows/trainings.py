"""The training fan-out of a run: every (fold, seed) training, on the configured executor.

``train.executor`` chooses where the trainings run; nothing else in the flow changes:

* ``local`` (default): :func:`tasks.train.train_all` in the flow's own process, at most
  :func:`~sentio.orchestration.training_slots` trainings at once, each in a child process
  of its own (repeatable whatever else runs).
* ``dask``: the nested flow :func:`trainings_flow` with Prefect's ``DaskTaskRunner``
  (prefect-dask): every training is a task run on a Dask worker. A worker of one thread
  (as Sentio starts them) trains in its own process, one training at a time, its math
  libraries capped at ``train.torch_threads``; a worker of several threads starts a child
  process per training. Either way a model does not depend on the executor. With
  ``train.dask_address`` the runner connects to that scheduler; without, it starts a
  ``distributed.LocalCluster`` of :func:`training_slots` single-threaded worker processes
  for the run and stops it afterwards. ``train.dask_resources`` (e.g. ``{GPU: 1}``) are
  held by each training (Dask worker resources), so a worker started with ``--resources
  GPU=1`` runs one training at a time (each LocalCluster worker is given them).
* ``deployment``: each training is a flow run of the deployment ``train.deployment``
  (:func:`train_fold_flow`; ``deployments/prefect.yaml`` defines ``train-fold`` on the
  ``sentio-process`` pool), started with ``run_deployment`` as a nested run of the
  nightly run, so workers of that pool (on GPU machines, say) pick them up; the run waits
  for all of them and reads each training's summary from the shared working directory
  (:func:`tasks.train.summary_from_storage`), verified against its recorded hashes.

Workers of several threads start processes of their own, so they must not be daemonic
processes: the LocalCluster is started with ``distributed.worker.daemon`` off; such
workers of an existing cluster need ``DASK_DISTRIBUTED__WORKER__DAEMON=False`` (a daemonic
one fails the training with a message saying so). The working directory (inputs,
checkpoints, models, Prefect results) must be reachable at the same path from every
worker.

With ``paths.storage`` (a URL every machine reaches), the trainings go through that
storage instead of a shared working directory (:mod:`tasks.shared`, :mod:`sentio.storage`):
a training already here or published there is copied, not trained; the others run on the
executor (``dask`` and ``deployment`` workers copy the published inputs into their own
``paths.storage_cache``, train there, push checkpoints and publish the result, which the
run copies back, every file checked against its hash).

The training task's cache key is the content of its inputs, its settings and its code,
never the executor (:data:`sentio.config.PLACEMENT_SETTINGS`), so a training one executor
did is a cache hit for the other.
"""

from __future__ import annotations

import contextlib
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

from prefect import flow

from sentio import errors
from sentio.config import SentioConfig, config_from_dict
from sentio.errors import ConfigError, SentioError
from sentio.orchestration import training_slots
from tasks.caching import persisted
from tasks.shared import INPUTS, gather_from_storage, publish_inputs, result_storage, storage_plan
from tasks.train import (
    submit_all,
    summary_from_storage,
    train_all,
    train_shared_task,
    train_task,
    training_worker_env,
)

__all__ = ["run_trainings", "train_fold_flow", "trainings_flow"]

TRAININGS_FLOW = "sentio-trainings"
TRAIN_FOLD_FLOW = "sentio-train-fold"
POLL_SECONDS = 2.0
"""How often the run looks at the state of the training flow runs it started."""
TERMINAL = frozenset({"COMPLETED", "FAILED", "CRASHED", "CANCELLED"})


def run_trainings(
    jobs: list[tuple[int, int]],
    *,
    cfg: SentioConfig,
    workdir: str,
    params: dict[str, Any],
    storage: str | None,
) -> list[dict[str, Any]]:
    """Every ``(fold, seed)`` training of ``jobs`` on ``cfg.train.executor``; summaries in
    the order of ``jobs``.

    ``params`` are the training task's keyword arguments besides ``fold`` and ``seed``;
    ``storage`` is where the task persists its results (its cache), None for Prefect's
    default.
    """
    if cfg.paths.storage is not None:
        return _through_storage(jobs, cfg=cfg, workdir=workdir, params=params, storage=storage)
    if cfg.train.executor == "deployment":
        return _on_deployments(jobs, cfg=cfg, params=params, storage=storage)
    if cfg.train.executor == "dask":
        runner = _dask_runner(cfg)
        with _non_daemonic_workers():
            nested = trainings_flow.with_options(task_runner=runner)
            return nested(jobs, workdir=workdir, params=params, storage=storage, cfg=cfg)
    task = persisted(train_task, storage)
    return train_all(task, jobs, limit=training_slots(cfg), workdir=workdir, params=params)


@flow(
    name=TRAININGS_FLOW,
    description="The run's (fold, seed) trainings as task runs on a Dask cluster.",
    validate_parameters=False,
)
def trainings_flow(
    jobs: list[tuple[int, int]],
    *,
    workdir: str,
    params: dict[str, Any],
    storage: Any,
    cfg: SentioConfig,
    shared: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Submit every training to the flow's task runner at once (the Dask scheduler places
    them on workers as they free up) holding ``train.dask_resources``; gather, verify.

    With ``shared`` (``{"keys": {(fold, seed): key}, "inputs": ...}``), each training goes
    through the shared storage (:func:`tasks.train.train_shared_task`) and the raw
    summaries come back (the caller copies the trainings' folders from the storage).
    """
    import dask

    resources = dict(cfg.train.dask_resources)
    annotate = dask.annotate(resources=resources) if resources else contextlib.nullcontext()
    with annotate:
        if shared is not None:
            keys, inputs = shared["keys"], shared["inputs"]
            return submit_all(
                persisted(train_shared_task, storage),
                jobs,
                limit=len(jobs),
                kwargs_of=lambda fold, seed: {
                    "key": keys[(fold, seed)],
                    "inputs": inputs,
                    "cfg": cfg,
                    "fold": fold,
                    "seed": seed,
                },
            )
        return train_all(
            persisted(train_task, storage), jobs, limit=len(jobs), workdir=workdir, params=params
        )


def _dask_runner(cfg: SentioConfig) -> Any:
    """Prefect's DaskTaskRunner for ``cfg``: the scheduler at ``train.dask_address``, or a
    LocalCluster of single-threaded worker processes, one per training slot."""
    from prefect_dask import DaskTaskRunner

    if cfg.train.dask_address:
        return DaskTaskRunner(address=cfg.train.dask_address)
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": training_slots(cfg),
            "threads_per_worker": 1,
            "processes": True,
            "dashboard_address": None,
            # each local worker holds what one training asks for (it runs one at a time)
            "resources": dict(cfg.train.dask_resources) or None,
            # and trains in its own process with the threads a training child would have
            "env": training_worker_env(cfg),
        }
    )


@contextlib.contextmanager
def _non_daemonic_workers() -> Iterator[None]:
    """Worker processes a LocalCluster starts inside the block may start processes."""
    import dask
    import distributed  # noqa: F401 - its defaults must be in dask's config before the
    # block: leaving a dask.config.set removes the keys that were not there on entering

    with dask.config.set({"distributed.worker.daemon": False}):
        yield


@flow(
    name=TRAIN_FOLD_FLOW,
    description="One (fold, seed) training of a nightly run (train.executor: deployment).",
)
def train_fold_flow(
    fold: int,
    seed: int,
    inputs: dict[str, str | None],
    config: dict[str, Any],
    workdir: str,
    storage: str | None = None,
    key: str | None = None,
) -> dict[str, Any]:
    """Train fold ``fold`` with seed ``seed`` on the run's ``inputs`` (:data:`INPUTS`, paths
    on the shared working directory ``workdir``) with the run's resolved ``config``, as
    the nightly run would have done itself: the same task, cache and outputs.

    With ``paths.storage`` in ``config``, ``inputs`` name the published stage files and
    ``key`` is the training key the run computed: the training goes through the storage
    (:func:`tasks.train.train_shared_task`) and ``workdir`` is not used.

    Raises:
        ConfigError: an input is not reachable from this worker.
    """
    cfg = config_from_dict(config)
    if cfg.paths.storage is not None and key is not None:
        task = persisted(train_shared_task, result_storage(cfg.paths.storage))
        return task(key=key, inputs=inputs, cfg=cfg, fold=fold, seed=seed)
    for name, path in inputs.items():
        if path is not None and not Path(path).is_file():
            raise ConfigError(
                f"train fold {fold} seed {seed}: {name} {path} is not reachable from this "
                f"worker ({socket.gethostname()}): paths.workdir must be on storage every "
                "worker reaches at the same path"
            )
    params = {**inputs, "cfg": cfg, "workdir": workdir}
    (summary,) = train_all(
        persisted(train_task, storage), [(fold, seed)], limit=1, workdir=workdir, params=params
    )
    return summary


def _on_deployments(
    jobs: list[tuple[int, int]],
    *,
    cfg: SentioConfig,
    params: dict[str, Any],
    storage: str | None,
) -> list[dict[str, Any]]:
    """Start one flow run of ``train.deployment`` per job, wait for all, then read their
    summaries from the shared working directory (in the order of ``jobs``)."""
    inputs = {name: params.get(name) for name in INPUTS}
    finished = _deployment_runs(
        jobs, cfg=cfg, inputs=inputs, workdir=params["workdir"], storage=storage
    )
    return [
        summary_from_storage(params, fold, seed, where=f"flow run {run.name}")
        for (fold, seed), run in zip(jobs, finished, strict=True)
    ]


def _deployment_runs(
    jobs: list[tuple[int, int]],
    *,
    cfg: SentioConfig,
    inputs: dict[str, str | None],
    workdir: str,
    storage: str | None,
    keys: dict[tuple[int, int], str] | None = None,
) -> list[Any]:
    """Start one flow run of ``train.deployment`` per job and wait for all; the finished
    flow runs (in the order of ``jobs``).

    Raises:
        SentioError: a training flow run did not complete (:func:`training_runs_failed`).
    """
    from prefect.deployments import run_deployment

    config = cfg.model_dump(mode="json")
    started = [
        run_deployment(
            cfg.train.deployment,
            parameters={
                "fold": fold,
                "seed": seed,
                "inputs": inputs,
                "config": config,
                "workdir": workdir,
                "storage": storage,
                "key": None if keys is None else keys[(fold, seed)],
            },
            timeout=0,  # start them all, then wait
        )
        for fold, seed in jobs
    ]
    finished = _wait_for_flow_runs([cast(Any, run).id for run in started])
    failed = [run for run in finished if run.state is None or not run.state.is_completed()]
    if failed:
        raise training_runs_failed(failed, len(jobs), cfg.train.deployment)
    return finished


_ERROR_NAME = re.compile(r"\b([A-Z]\w*Error): ")


def training_runs_failed(failed: list[Any], n_jobs: int, deployment: str) -> SentioError:
    """The error of training flow runs (on pool workers) that did not complete: one line
    naming each run, its state and the cause its state reports (the worker's exception).
    Of the class of that cause when every failed run names the same error of
    :mod:`sentio.errors` (a ``StorageError`` on every worker: exit code 10, as in a local
    run); a :class:`~sentio.errors.SentioError` otherwise."""
    parts, kinds = [], set()
    for run in failed:
        state = run.state
        cause = " ".join(str(getattr(state, "message", None) or "").split())
        found = _ERROR_NAME.search(cause)
        kinds.add(found.group(1) if found else None)
        if len(cause) > 300:
            cause = cause[:297] + "..."
        parts.append(
            f"{run.name} ({state.name if state is not None else 'no state'}"
            + (f": {cause}" if cause else "")
            + ")"
        )
    cls: type[SentioError] = SentioError
    (kind,) = kinds if len(kinds) == 1 else (None,)
    found_cls = getattr(errors, kind, None) if kind else None
    if isinstance(found_cls, type) and issubclass(found_cls, SentioError):
        cls = found_cls
    return cls(
        f"train: {len(failed)} of {n_jobs} training flow runs of {deployment} did not "
        f"complete: {'; '.join(parts)}"
    )


def _through_storage(
    jobs: list[tuple[int, int]],
    *,
    cfg: SentioConfig,
    workdir: str,
    params: dict[str, Any],
    storage: str | None,
) -> list[dict[str, Any]]:
    """The fan-out through ``paths.storage``; summaries in the order of ``jobs``.

    A training already in the working directory, or published in the storage (by any
    run, any executor: it is copied here, every file checked), is not run again. The
    others run on ``train.executor``: ``local`` here as without storage, then published;
    ``dask`` and ``deployment`` through :func:`tasks.train.train_shared_task` on the
    stage folders this run publishes, then copied here from the storage
    (:mod:`tasks.shared`).
    """
    plan = storage_plan(jobs, cfg=cfg, workdir=workdir, params=params)
    if plan.pending and cfg.train.executor == "local":
        train_all(
            persisted(train_task, storage),
            plan.pending,
            limit=training_slots(cfg),
            workdir=workdir,
            params=params,
        )
    elif plan.pending:
        inputs = publish_inputs(plan, params)
        if cfg.train.executor == "dask":
            runner = _dask_runner(cfg)
            with _non_daemonic_workers():
                nested = trainings_flow.with_options(task_runner=runner)
                nested(
                    plan.pending,
                    workdir=workdir,
                    params=params,
                    storage=result_storage(plan.store.url),
                    cfg=cfg,
                    shared={"keys": plan.keys, "inputs": inputs},
                )
        else:
            _deployment_runs(
                plan.pending, cfg=cfg, inputs=inputs, workdir=workdir, storage=None, keys=plan.keys
            )
    return gather_from_storage(plan, jobs, workdir=workdir)


def _wait_for_flow_runs(ids: list[Any]) -> list[Any]:
    """The flow runs ``ids`` once every one of them is in a final state."""
    from prefect.client.orchestration import get_client

    while True:
        with get_client(sync_client=True) as client:
            runs = [client.read_flow_run(run_id) for run_id in ids]
        if all(run.state is not None and run.state.type.value in TERMINAL for run in runs):
            return runs
        time.sleep(POLL_SECONDS)
