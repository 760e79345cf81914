"""Calling a content-cached stage task without ever trusting a stale cache entry.

Prefect's cache stores a stage's *summary* (paths and hashes); the files it names live in
the workdir and can be deleted independently (``rm -rf .sentio/ingest``). A cache hit
whose output file is gone is therefore re-run with ``refresh_cache=True``, which
recomputes the outputs and overwrites the cache entry under the same key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ParamSpec

from prefect import get_run_logger
from prefect.tasks import Task

P = ParamSpec("P")


def missing_outputs(summary: dict[str, Any], fields: tuple[str, ...] = ("output",)) -> list[str]:
    """The paths named by ``fields`` of a stage summary that do not exist."""
    return [str(summary[f]) for f in fields if summary.get(f) and not Path(summary[f]).exists()]


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
