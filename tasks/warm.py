"""The warm-start Prefect task: a thin wrapper around :func:`sentio.stages.warm.warm_stage`.

Never cached by Prefect: it reads the registry's champion, which changes between runs;
its output is a content-addressed stage folder (the same champion gives the same folder).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from sentio.config import SentioConfig
from sentio.stages.warm import warm_stage
from tasks.caching import uncached_task_options


@task(
    name="warm-start",
    description="Freeze the champion's weights and normaliser for tonight's warm starts.",
    **uncached_task_options(retry_delay_seconds=5),
)
def warm_task(cfg: SentioConfig, workdir: str) -> dict[str, Any] | None:
    """Run :func:`sentio.stages.warm.warm_stage`; its summary, or None without a champion."""
    summary = warm_stage(cfg, Path(workdir))
    logger = get_run_logger()
    if summary is None:
        logger.info("warm start: no champion yet; every training starts from scratch")
    else:
        logger.info(
            "warm start: folds whose test blocks follow the champion %s's data start from it (%s)",
            summary["version"],
            summary["output"],
        )
    return summary
