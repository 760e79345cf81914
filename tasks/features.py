"""The features Prefect task: a thin wrapper around :func:`sentio.stages.features_stage`.

Cached on the CONTENT of the bars file, the ``features``/``universe`` settings and the
code version (the library's own content key), so a nightly run with unchanged bars skips
it. I/O failures are retried; data and contract errors are not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from sentio import stages
from sentio.config import SentioConfig
from tasks.caching import content_cache_policy, stage_task_options


@task(
    name="features",
    description="Causal indicator features of the underlying (polars, content-cached).",
    **stage_task_options(
        content_cache_policy("features", lambda p: stages.features_key(p["bars_path"], p["cfg"]))
    ),
)
def features_task(bars_path: str, cfg: SentioConfig, workdir: str) -> dict[str, Any]:
    """Run :func:`sentio.stages.features_stage`; return its summary."""
    summary = stages.features_stage(bars_path, cfg, Path(workdir))
    get_run_logger().info(
        "features %s: %d rows x %d features (%s normalisation), %s to %s; %s",
        summary["key"],
        summary["rows"],
        summary["n_features"],
        summary["normalisation"],
        summary["start"],
        summary["end"],
        summary["output"],
    )
    return summary
