"""The training fan-out of a run: every (fold, seed) training, on the configured executor.

``train.executor`` chooses where the trainings run; nothing else in the flow changes:

* ``local`` (default): :func:`tasks.train.train_all` in the flow's own process, at most
  :func:`~sentio.orchestration.training_slots` trainings at once, each in a child process
  of its own (repeatable whatever else runs).
* ``dask``: the nested flow :func:`trainings_flow` with Prefect's ``DaskTaskRunner``
  (prefect-dask): every training is a task run on a Dask worker, each still in a child
  process of its own, so a model does not depend on the executor. With
  ``train.dask_address`` the runner connects to that scheduler; without, it starts a
  ``distributed.LocalCluster`` of :func:`training_slots` single-threaded worker processes
  for the run and stops it afterwards. ``train.dask_resources`` (e.g. ``{GPU: 1}``) are
  held by each training (Dask worker resources), so a worker started with ``--resources
  GPU=1`` runs one training at a time (each LocalCluster worker is given them).

Dask workers run Prefect tasks that start processes of their own, so they must not be
daemonic processes: the LocalCluster is started with ``distributed.worker.daemon`` off;
workers of an existing cluster need ``DASK_DISTRIBUTED__WORKER__DAEMON=False`` (a daemonic
worker fails the training with a message saying so). The working directory (inputs,
checkpoints, models, Prefect results) must be reachable at the same path from every
worker.

The training task's cache key is the content of its inputs, its settings and its code,
never the executor (:data:`sentio.config.PLACEMENT_SETTINGS`), so a training one executor
did is a cache hit for the other.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prefect import flow

from sentio.config import SentioConfig
from sentio.orchestration import training_slots
from tasks.train import train_all, train_task

__all__ = ["run_trainings", "trainings_flow"]

TRAININGS_FLOW = "sentio-trainings"


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
    if cfg.train.executor == "dask":
        runner = _dask_runner(cfg)
        with _non_daemonic_workers():
            nested = trainings_flow.with_options(task_runner=runner)
            return nested(jobs, workdir=workdir, params=params, storage=storage, cfg=cfg)
    task = _persisted(storage)
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
    storage: str | None,
    cfg: SentioConfig,
) -> list[dict[str, Any]]:
    """Submit every training to the flow's task runner at once (the Dask scheduler places
    them on workers as they free up) holding ``train.dask_resources``; gather, verify."""
    import dask

    resources = dict(cfg.train.dask_resources)
    annotate = dask.annotate(resources=resources) if resources else contextlib.nullcontext()
    with annotate:
        return train_all(_persisted(storage), jobs, limit=len(jobs), workdir=workdir, params=params)


def _persisted(storage: str | None) -> Any:
    """The training task persisting its results to ``storage`` (None: Prefect's default)."""
    return train_task if storage is None else train_task.with_options(result_storage=Path(storage))


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
        }
    )


@contextlib.contextmanager
def _non_daemonic_workers() -> Iterator[None]:
    """Worker processes a LocalCluster starts inside the block may start processes."""
    import dask

    with dask.config.set({"distributed.worker.daemon": False}):
        yield
