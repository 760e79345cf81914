"""The registry Prefect task: a thin wrapper around :func:`sentio.stages.registry_stage`.

Not content-cached: the stage reads the registry's mutable state (the versions, the
champion pointer), so a cached result could name a champion that has since changed. It
is idempotent instead: run again on unchanged inputs it registers no new version and
leaves the champion pointer alone. I/O failures are retried (safe, being idempotent);
a :class:`~sentio.errors.SentioError` (a locked or tampered registry) is not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from sentio import stages
from sentio.config import SentioConfig
from tasks.caching import uncached_task_options


@task(
    name="registry",
    description="Register the trained models, gate the candidate against the champion "
    "re-evaluated on a leakage-free window, promote or record why not (never cached).",
    **uncached_task_options(),
)
def registry_task(
    runs: list[dict[str, Any]],
    report: dict[str, Any],
    cfg: SentioConfig,
    out_dir: str,
    bars_path: str,
    folds_path: str,
    regimes_path: str | None,
    feature_columns: list[str],
    data_hashes: dict[str, str],
    run_name: str,
) -> dict[str, Any]:
    """Run :func:`sentio.stages.registry_stage`; return its summary."""
    summary = stages.registry_stage(
        runs,
        report,
        cfg,
        Path(out_dir),
        bars_path=bars_path,
        folds_path=folds_path,
        regimes_path=regimes_path,
        feature_columns=feature_columns,
        data_hashes=data_hashes,
        run_name=run_name,
    )
    logger = get_run_logger()
    logger.info(
        "registry %s: %d version(s) registered (%d new); candidate %s; champion %s -> %s",
        summary["registry"],
        len(summary["registered"]),
        summary["new_versions"],
        summary["candidate"],
        summary["champion_before"],
        summary["champion_after"],
    )
    logger.info(
        "registry: %s",
        "promoted" if summary["promoted"] else "not promoted: " + "; ".join(summary["reasons"]),
    )
    return summary
