"""The folds Prefect task: a thin wrapper around :func:`sentio.stages.folds_stage`.

Cached on the CONTENT of the feature frame, the ``cv`` settings and the code version.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from sentio import stages
from sentio.config import SentioConfig
from tasks.caching import content_cache_policy, stage_task_options


@task(
    name="folds",
    description="Purged, embargoed cross-validation folds over the feature rows (content-cached).",
    **stage_task_options(
        content_cache_policy("folds", lambda p: stages.folds_key(p["features_path"], p["cfg"]))
    ),
)
def folds_task(features_path: str, cfg: SentioConfig, workdir: str) -> dict[str, Any]:
    """Run :func:`sentio.stages.folds_stage`; return its summary."""
    summary = stages.folds_stage(features_path, cfg, Path(workdir))
    get_run_logger().info(
        "folds %s: %s, %d fold(s) over %d rows; purged %s, embargoed %s; %s",
        summary["key"],
        summary["method"],
        summary["n_folds"],
        summary["samples"],
        [f["purged"] for f in summary["folds"]],
        [f["embargoed"] for f in summary["folds"]],
        summary["output"],
    )
    return summary
