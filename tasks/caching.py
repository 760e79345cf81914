"""The options every stage task shares, and calling a content-cached stage task without
ever trusting a stale or damaged cache entry.

**Shared options.** :func:`stage_task_options` gives a stage task its content cache
(:func:`content_cache_policy`), persisted JSON results and :data:`STAGE_RETRIES` retries
on I/O failures only (:func:`retry_on_io_error`): an :class:`OSError` (a flaky network
share) is retried; a :class:`~sentio.errors.SentioError` (unreadable data, a contract
violation, a full disk or too little memory) fails at once, because retrying cannot change
the data or make room.

**Verified cache hits.**

Prefect's cache stores a stage's *summary* (paths and hashes); the files it names live in
the workdir and can be deleted, truncated or moved independently. Before a summary is
used, :func:`checked` rebases it onto the current working directory (a moved workdir
keeps its cache: the keys hold no absolute path) and verifies every recorded sha256; a
missing, unreadable or changed file logs one warning line naming it and re-runs the task
with ``refresh_cache=True``, which recomputes the outputs and overwrites the cache entry
under the same key.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from prefect import get_run_logger
from prefect.cache_policies import NO_CACHE, TASK_SOURCE, CacheKeyFnPolicy, CachePolicy
from prefect.client.schemas.objects import TaskRun
from prefect.context import TaskRunContext
from prefect.states import State
from prefect.tasks import Task

from sentio.errors import SentioError
from sentio.io import combine_hashes, is_disk_full
from sentio.stages import relocate_summary, summary_problems

P = ParamSpec("P")

STAGE_RETRIES = 2
"""Retries of a stage task after an I/O failure (:func:`retry_on_io_error`)."""
STAGE_RETRY_DELAYS: list[float] = [10.0, 60.0]
"""Seconds before the first and the second retry."""


def failure_exception(state: State[Any]) -> BaseException | None:
    """The exception carried by a failed task-run state, if any."""
    data = state.data
    if isinstance(data, BaseException):
        return data
    inner = getattr(data, "result", None)
    return inner if isinstance(inner, BaseException) else None


def retry_on_io_error(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Prefect ``retry_condition_fn``: retry :class:`OSError`, never a :class:`SentioError`.

    Prefect calls it as ``fn(task, task_run, state)`` with the ``Failed`` state of the
    attempt; returning ``False`` ends the task run as failed despite ``retries``.
    """
    exc = failure_exception(state)
    return isinstance(exc, OSError) and not isinstance(exc, SentioError) and not is_disk_full(exc)


def stage_task_options(cache_policy: CachePolicy) -> dict[str, Any]:
    """The options every stage task shares: its content cache, persisted JSON results,
    and retries on I/O failures only."""
    return {
        "cache_policy": cache_policy,
        "persist_result": True,
        "result_serializer": "json",
        "retries": STAGE_RETRIES,
        "retry_delay_seconds": STAGE_RETRY_DELAYS,
        "retry_condition_fn": retry_on_io_error,
    }


def uncached_task_options(
    retry_delay_seconds: float | list[float] = STAGE_RETRY_DELAYS,
) -> dict[str, Any]:
    """The options of a task that reads or writes mutable state (the registry, a ledger):
    never cached, its result not persisted, retried on I/O failures only."""
    return {
        "cache_policy": NO_CACHE,
        "persist_result": False,
        "retries": STAGE_RETRIES,
        "retry_delay_seconds": retry_delay_seconds,
        "retry_condition_fn": retry_on_io_error,
    }


def checked(
    stage: Task[..., dict[str, Any]], summary: dict[str, Any], workdir: str
) -> tuple[dict[str, Any], bool]:
    """``summary`` rebased onto ``workdir`` and whether its files verify (a warning if not)."""
    summary = relocate_summary(summary, workdir)
    problems = summary_problems(summary)
    if problems:
        get_run_logger().warning(
            "%s: cached output %s%s; recomputing the stage",
            stage.name,
            problems[0],
            f" (and {len(problems) - 1} more)" if len(problems) > 1 else "",
        )
    return summary, not problems


R = TypeVar("R")


def persisted(stage: Task[P, R], storage: Any) -> Task[P, R]:
    """``stage`` persisting its results (its cache) to ``storage`` (a folder, or a Prefect
    file-system block); None: Prefect's default."""
    if storage is None:
        return stage
    if isinstance(storage, str | Path):
        storage = Path(storage)
    return stage.with_options(result_storage=storage)


def run_stage(stage: Task[P, dict[str, Any]], *args: P.args, **kwargs: P.kwargs) -> dict[str, Any]:
    """Call ``stage`` (from inside a flow); recompute once if its outputs do not verify.

    The stage's parameters must include ``workdir`` (the last positional argument or a
    keyword), the folder its summary's paths are rebased onto.
    """
    workdir = str(kwargs.get("workdir", args[-1] if args else ""))
    summary, ok = checked(stage, stage(*args, **kwargs), workdir)
    if not ok:
        summary = stage.with_options(refresh_cache=True)(*args, **kwargs)
    return summary


def content_cache_policy(stage: str, key: Callable[[dict[str, Any]], str]) -> CachePolicy:
    """A cache policy keyed on a stage's content key and the task's source.

    ``key(parameters)`` is the stage's content key (e.g. :func:`sentio.stages.ingest_key`
    of the task's parameters). It holds no path: a working directory that moved keeps
    its cache, and :func:`run_stage` rebases the cached summary onto it. When the key
    cannot be computed (a missing file) a one-off key is used, so nothing is served from
    the cache and the task body reports the error; returning ``None`` instead would make
    Prefect fall back to a source-only key and hit wrongly.
    """

    def cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
        try:
            content = key(parameters)
        except (SentioError, OSError):
            return f"{stage}-uncacheable-{uuid.uuid4().hex}"
        return combine_hashes([f"sentio-{stage}", content])

    return CacheKeyFnPolicy(cache_key_fn=cache_key) + TASK_SOURCE
