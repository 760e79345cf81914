"""Calling a content-cached stage task without ever trusting a stale cache entry.

Prefect's cache stores a stage's *summary* (paths and hashes); the files it names live in
the workdir and can be deleted independently (``rm -rf .sentio/ingest``). A cache hit
whose output file is gone is therefore re-run with ``refresh_cache=True``, which
recomputes the outputs and overwrites the cache entry under the same key.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec

from prefect import get_run_logger
from prefect.cache_policies import TASK_SOURCE, CacheKeyFnPolicy, CachePolicy
from prefect.context import TaskRunContext
from prefect.tasks import Task

from sentio.errors import SentioError
from sentio.io import combine_hashes

P = ParamSpec("P")


def missing_outputs(summary: dict[str, Any], fields: tuple[str, ...] = ("output",)) -> list[str]:
    """The paths named by ``fields`` (and the summary's ``files``) that do not exist."""
    named = [str(summary[f]) for f in fields if summary.get(f)]
    return [p for p in [*named, *summary.get("files", {})] if not Path(p).exists()]


def run_stage(stage: Task[P, dict[str, Any]], *args: P.args, **kwargs: P.kwargs) -> dict[str, Any]:
    """Call ``stage`` (from inside a flow); recompute once if its outputs have vanished."""
    summary = stage(*args, **kwargs)
    missing = missing_outputs(summary)
    if missing:
        get_run_logger().warning(
            "%s: cached result names missing outputs %s; recomputing",
            stage.name,
            ", ".join(missing),
        )
        summary = stage.with_options(refresh_cache=True)(*args, **kwargs)
    return summary


def content_cache_policy(stage: str, key: Callable[[dict[str, Any]], str]) -> CachePolicy:
    """A cache policy keyed on a stage's content key, the workdir and the task's source.

    ``key(parameters)`` is the stage's content key (e.g. :func:`sentio.stages.ingest_key`
    of the task's parameters). When it cannot be computed (a missing file) a one-off key
    is used, so nothing is served from the cache and the task body reports the error;
    returning ``None`` instead would make Prefect fall back to a source-only key and hit
    wrongly.
    """

    def cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
        try:
            content = key(parameters)
        except (SentioError, OSError):
            return f"{stage}-uncacheable-{uuid.uuid4().hex}"
        workdir = Path(parameters["workdir"]).expanduser().resolve()
        return combine_hashes([f"sentio-{stage}", content, str(workdir)])

    return CacheKeyFnPolicy(cache_key_fn=cache_key) + TASK_SOURCE
