"""Prefect artifacts published by the nightly flow.

The text of every artifact is built by plain functions in :mod:`sentio.orchestration`;
the tasks here only hand it to Prefect under stable keys (lowercase-dash form), so that
the UI's Artifacts page shows one versioned history per key.
"""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_table_artifact,
)
from prefect.cache_policies import NO_CACHE

from sentio.orchestration import (
    check_artifact_key,
    feature_summary_table,
    fold_table,
    ingest_quality_markdown,
    ingest_summary_table,
    regime_summary_table,
    report_artifact_markdown,
    train_table,
)
from sentio.registry import decision_markdown, versions_table

DATA_QUALITY_KEY = check_artifact_key("data-quality")
INGEST_SUMMARY_KEY = check_artifact_key("ingest-summary")
FEATURE_SUMMARY_KEY = check_artifact_key("feature-summary")
REGIME_SUMMARY_KEY = check_artifact_key("regime-summary")
FOLDS_KEY = check_artifact_key("folds")
TRAIN_KEY = check_artifact_key("training")
REPORT_KEY = check_artifact_key("report")
REPORT_HTML_KEY = check_artifact_key("report-html")
REGISTRY_DECISION_KEY = check_artifact_key("registry-decision")
REGISTRY_VERSIONS_KEY = check_artifact_key("registry-versions")


@task(name="publish-ingest-artifacts", cache_policy=NO_CACHE, persist_result=False)
def publish_ingest_artifacts(summary: dict[str, Any]) -> dict[str, str]:
    """Publish the data-quality markdown and the ingest-summary table of an ingest summary.

    Returns:
        The id of each artifact created, keyed by artifact key.
    """
    period = f"{summary.get('start')} to {summary.get('end')}"
    markdown_id = create_markdown_artifact(
        markdown=ingest_quality_markdown(summary),
        key=DATA_QUALITY_KEY,
        description=f"Ingest data quality, {period}",
    )
    table_id = create_table_artifact(
        table=ingest_summary_table(summary),
        key=INGEST_SUMMARY_KEY,
        description=f"Ingest counts, files and hashes, {period}",
    )
    return {DATA_QUALITY_KEY: str(markdown_id), INGEST_SUMMARY_KEY: str(table_id)}


@task(name="publish-features-artifacts", cache_policy=NO_CACHE, persist_result=False)
def publish_features_artifacts(summary: dict[str, Any]) -> dict[str, str]:
    """Publish the feature-summary table (count, mean, std, min, max of every feature)."""
    table_id = create_table_artifact(
        table=feature_summary_table(summary),
        key=FEATURE_SUMMARY_KEY,
        description=(
            f"{summary.get('n_features')} features x {summary.get('rows')} rows, "
            f"{summary.get('normalisation')} normalisation, {summary.get('start')} to {summary.get('end')}"
        ),
    )
    return {FEATURE_SUMMARY_KEY: str(table_id)}


@task(name="publish-regimes-artifacts", cache_policy=NO_CACHE, persist_result=False)
def publish_regimes_artifacts(summary: dict[str, Any]) -> dict[str, str]:
    """Publish the regime-summary table (per fold: share, return, volatility, dwell, method)."""
    table_id = create_table_artifact(
        table=regime_summary_table(summary),
        key=REGIME_SUMMARY_KEY,
        description=(
            f"Regimes ({summary.get('method')}): one model per fold fitted on its training "
            f"rows, filtered causally over {summary.get('rows')} bars; statistics over each "
            "fold's test rows"
        ),
    )
    return {REGIME_SUMMARY_KEY: str(table_id)}


@task(name="publish-folds-artifacts", cache_policy=NO_CACHE, persist_result=False)
def publish_folds_artifacts(summary: dict[str, Any]) -> dict[str, str]:
    """Publish the folds table (test boundaries, sizes, purged and embargoed counts)."""
    paths = summary.get("n_paths")
    table_id = create_table_artifact(
        table=fold_table(summary),
        key=FOLDS_KEY,
        description=(
            f"{summary.get('n_folds')} {summary.get('method')} fold(s) over "
            f"{summary.get('samples')} feature rows"
            + (f", {paths} backtest paths" if paths else "")
        ),
    )
    return {FOLDS_KEY: str(table_id)}


@task(name="publish-train-artifacts", cache_policy=NO_CACHE, persist_result=False)
def publish_train_artifacts(train: dict[str, Any]) -> dict[str, str]:
    """Publish the training table (per fold and seed: steps, throughput, out-of-sample results)."""
    runs = train.get("runs") or []
    table_id = create_table_artifact(
        table=train_table(train),
        key=TRAIN_KEY,
        description=(
            f"{len(runs)} training run(s): out-of-sample backtests of the deterministic policy "
            "on each fold's test blocks, beside the reference policies"
        ),
    )
    return {TRAIN_KEY: str(table_id)}


@task(name="publish-report-artifacts", cache_policy=NO_CACHE, persist_result=False)
def publish_report_artifacts(report: dict[str, Any]) -> dict[str, str]:
    """Publish the report: its markdown (header, then the verdict once) and a link to the
    HTML page. Publish again after :func:`tasks.report.registry_into_report_task` for the
    header to show the registry decision (one more version under the same key)."""
    from pathlib import Path

    md = report_artifact_markdown(Path(report["paths"]["markdown"]).read_text(encoding="utf-8"))
    markdown_id = create_markdown_artifact(
        markdown=md,
        key=REPORT_KEY,
        description=report["verdict"],
    )
    html = Path(report["paths"]["html"]).resolve()
    link_id = create_link_artifact(
        link=html.as_uri(),
        link_text="report.html",
        key=REPORT_HTML_KEY,
        description="The self-contained HTML report of this run (plots embedded)",
    )
    return {REPORT_KEY: str(markdown_id), REPORT_HTML_KEY: str(link_id)}


@task(name="publish-registry-artifacts", cache_policy=NO_CACHE, persist_result=False)
def publish_registry_artifacts(decision: dict[str, Any]) -> dict[str, str]:
    """Publish the registry decision (markdown) and the registered versions (table)."""
    verdict = (
        f"promoted {decision['candidate']}"
        if decision.get("promoted")
        else f"not promoted; champion {decision.get('champion_after') or 'none'}"
    )
    markdown_id = create_markdown_artifact(
        markdown=decision_markdown(decision),
        key=REGISTRY_DECISION_KEY,
        description=f"Registry decision: {verdict}",
    )
    table_id = create_table_artifact(
        table=versions_table(decision),
        key=REGISTRY_VERSIONS_KEY,
        description=(
            f"{len(decision.get('registered') or [])} version(s) registered by this run, "
            f"{decision.get('new_versions', 0)} new"
        ),
    )
    return {REGISTRY_DECISION_KEY: str(markdown_id), REGISTRY_VERSIONS_KEY: str(table_id)}
