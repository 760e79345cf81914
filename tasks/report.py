"""The report Prefect task: a thin wrapper around :func:`sentio.stages.report_stage`.

Never cached: every run's report includes that run's performance profile, so running the
flow twice with unchanged inputs recomputes the report and nothing else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from sentio import stages
from sentio.config import SentioConfig


@task(
    name="report",
    description="Out-of-sample report with bootstrap intervals, PSR/DSR and plots (never cached).",
    cache_policy=NO_CACHE,
    persist_result=False,
)
def report_task(
    runs: list[dict[str, Any]],
    cfg: SentioConfig,
    out_dir: str,
    ingest_summary: dict[str, Any] | None = None,
    profile: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run :func:`sentio.stages.report_stage`; return its summary."""
    summary = stages.report_stage(
        runs, cfg, Path(out_dir), ingest_summary=ingest_summary, profile=profile
    )
    get_run_logger().info("report: %s; %s", summary["verdict"], summary["paths"]["html"])
    return summary
