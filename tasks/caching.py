"""Calling a content-cached stage task without ever trusting a stale or damaged cache entry.

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
from typing import Any, ParamSpec

from prefect import get_run_logger
from prefect.cache_policies import TASK_SOURCE, CacheKeyFnPolicy, CachePolicy
from prefect.context import TaskRunContext
from prefect.tasks import Task

from sentio.errors import SentioError
from sentio.io import combine_hashes
from sentio.stages import relocate_summary, summary_problems

P = ParamSpec("P")


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
