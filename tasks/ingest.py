"""The ingest Prefect task: vendor bar files in, canonical content-addressed bars out.

The task is a thin wrapper around :func:`sentio.stages.ingest_stage`. What it adds:

- **Cache on content.** The cache key is :func:`sentio.stages.ingest_key` (sha256 of every
  input file's bytes, the ``ingest`` and ``universe`` settings and the ingest code
  version) plus the workdir, combined with Prefect's ``TASK_SOURCE`` policy (the source of
  this task). Rewriting a file in place with new content gives a new key; re-running on
  unchanged files gives a ``Cached`` task run. Prefect's default policy would hash the
  *path strings* and the flow-run id instead, and never hit across nightly runs.
- **Persisted results.** The summary is stored as JSON in the project's
  ``<workdir>/prefect-results`` (see :func:`sentio.orchestration.task_result_storage`).
- **Retries for I/O only** (the options every stage task shares,
  :func:`tasks.caching.stage_task_options`): an :class:`OSError` (a flaky network share)
  is retried; a :class:`~sentio.errors.SentioError` (unreadable data, a contract
  violation, a full disk or too little memory: :class:`~sentio.errors.ResourceError`)
  fails at once: retrying cannot change the data or make room.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import CachePolicy

from sentio import stages
from sentio.config import SentioConfig
from tasks.caching import content_cache_policy, stage_task_options


def input_files(data_path: str) -> list[str]:
    """The absolute paths of the bar files ``data_path`` names (a file, a comma-separated
    list, a folder: :func:`sentio.stages.resolve_inputs`); a missing one is a
    :class:`~sentio.errors.DataError`."""
    return [str(p.resolve()) for p in stages.resolve_inputs(data_path)]


INGEST_CACHE_POLICY: CachePolicy = content_cache_policy(
    "ingest", lambda p: stages.ingest_key(p["inputs"], p["cfg"])
)
"""Content of the inputs (:func:`sentio.stages.ingest_key`), the workdir and the task source."""


@task(
    name="ingest",
    description="Validate and canonicalise the bar files; derive missing leveraged symbols.",
    **stage_task_options(INGEST_CACHE_POLICY),
)
def ingest_task(inputs: list[str], cfg: SentioConfig, workdir: str) -> dict[str, Any]:
    """Run :func:`sentio.stages.ingest_stage` and return its small JSON-able summary."""
    logger = get_run_logger()
    summary = stages.ingest_stage(inputs, cfg, Path(workdir))
    logger.info(
        "ingest %s: %d rows read, %d kept, %d quarantined; symbols %s (derived: %s); %s",
        summary["key"],
        summary["rows_read"],
        summary["rows_kept"],
        summary["rows_quarantined"],
        ", ".join(summary["symbols"]),
        ", ".join(summary["derived_symbols"]) or "none",
        summary["output"],
    )
    return summary
