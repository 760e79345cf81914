"""The report Prefect tasks: thin wrappers around :func:`sentio.stages.report_stage` and
:func:`sentio.report.add_registry_decision`.

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
from sentio.report import add_registry_decision, registry_text


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
    timings: dict[str, float] | None = None,
    run_info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run :func:`sentio.stages.report_stage`; return its summary.

    ``timings`` (seconds per stage so far) become the report's performance profile with
    the trainings' throughput and the peak memory (:func:`sentio.stages.run_profile`);
    ``run_info`` (``name``, ``started``, ``config_hash`` of the flow run) goes to the
    report's header.
    """
    profile = stages.run_profile(timings or {}, runs)
    summary = stages.report_stage(
        runs, cfg, Path(out_dir), ingest_summary=ingest_summary, profile=profile, run_info=run_info
    )
    get_run_logger().info("report: %s; %s", summary["verdict"], summary["paths"]["html"])
    return summary


@task(
    name="report-registry-decision",
    description="Write the registry decision into the report's header (never cached).",
    cache_policy=NO_CACHE,
    persist_result=False,
)
def registry_into_report_task(report: dict[str, Any], decision: dict[str, Any]) -> dict[str, Any]:
    """Rewrite the report (``report.md``, ``report.html``, ``metrics.json``) with the
    registry stage's ``decision``; return the report summary, unchanged."""
    add_registry_decision(Path(report["paths"]["metrics"]).parent, decision)
    get_run_logger().info("report: model %s", registry_text(decision))
    return report
