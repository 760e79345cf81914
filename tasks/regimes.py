"""The regimes Prefect task: a thin wrapper around :func:`sentio.stages.regimes_stage`.

Cached on the CONTENT of the bars and folds files, the ``regimes``/``universe`` settings
and the code version (the library's own content key); I/O failures are retried, data errors not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from sentio import stages
from sentio.config import SentioConfig
from tasks.caching import content_cache_policy, stage_task_options


@task(
    name="regimes",
    description="HMM regimes fitted per fold on its training ranges, filtered causally "
    "(content-cached).",
    **stage_task_options(
        content_cache_policy(
            "regimes",
            lambda p: stages.regimes_key(p["bars_path"], p["folds_path"], p["cfg"]),
        )
    ),
)
def regimes_task(
    bars_path: str, folds_path: str, cfg: SentioConfig, workdir: str
) -> dict[str, Any]:
    """Run :func:`sentio.stages.regimes_stage`; return its summary."""
    summary = stages.regimes_stage(bars_path, folds_path, cfg, Path(workdir))
    logger = get_run_logger()
    for fold in summary["folds"]:
        logger.info(
            "regimes %s fold %d: %s (%s); fitted on %d training rows (%d more purged for "
            "look-back into a test block); %s",
            summary["key"],
            fold["fold"],
            fold["method"],
            fold["reason"],
            fold["rows_train"],
            fold["rows_purged_lookback"],
            fold["output"],
        )
    return summary
