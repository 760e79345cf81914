"""The regimes Prefect task: a thin wrapper around :func:`sentio.stages.regimes_stage`.

Cached on the CONTENT of the bars file, the ``regimes``/``universe`` settings and the
code version (the library's own content key); I/O failures are retried, data errors not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from sentio import stages
from sentio.config import SentioConfig
from tasks.caching import content_cache_policy
from tasks.ingest import stage_task_options


@task(
    name="regimes",
    description="HMM regimes fitted on the training range, filtered causally (content-cached).",
    **stage_task_options(
        content_cache_policy("regimes", lambda p: stages.regimes_key(p["bars_path"], p["cfg"]))
    ),
)
def regimes_task(bars_path: str, cfg: SentioConfig, workdir: str) -> dict[str, Any]:
    """Run :func:`sentio.stages.regimes_stage`; return its summary."""
    summary = stages.regimes_stage(bars_path, cfg, Path(workdir))
    get_run_logger().info(
        "regimes %s: method %s (%s); fitted on %d rows before %s; %s",
        summary["key"],
        summary["method"],
        summary["reason"],
        summary["rows_train"],
        summary["train_end"],
        summary["output"],
    )
    return summary
