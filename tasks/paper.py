"""The paper-trading Prefect task: a thin wrapper around :func:`sentio.paper.paper_trade`.

Never cached: the ledger is mutable state, and the library itself makes a re-run over the
same bars append nothing. I/O failures are retried; errors a user can cause (a rewritten
bar history, a tampered model, no champion) are not.
"""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task

from sentio.config import SentioConfig
from sentio.paper import paper_trade
from sentio.registry import Registry, default_root
from tasks.caching import uncached_task_options


@task(
    name="paper-trade",
    description="Feed the bars through the model and append the new bars to its ledger.",
    **uncached_task_options(retry_delay_seconds=5),
)
def paper_task(
    data_path: str,
    cfg: SentioConfig,
    version: str | None = None,
    start: str | None = None,
    verify: bool = False,
) -> dict[str, Any]:
    """Run :func:`sentio.paper.paper_trade` on the registry of ``cfg``; return its summary.

    ``verify``: recompute the ledger from its start instead of continuing from its state.
    """
    summary = paper_trade(
        Registry(default_root(cfg)), data_path, version=version, start=start, verify=verify
    )
    get_run_logger().info(
        "paper %s: %d rows (%d appended) to %s; equity %.2f; decision %+g (%s)",
        summary["version"],
        summary["rows"],
        summary["appended"],
        summary["last"],
        summary["equity"],
        summary["target_exposure"],
        summary["instrument"],
    )
    get_run_logger().info(
        "paper %s: %s (%s); %d bars replayed over a market of %d rows",
        summary["version"],
        summary["mode"],
        summary["reason"] or "continued from the kept state",
        summary["replayed"],
        summary["market_rows"],
    )
    if summary.get("revised"):
        rev = summary["revised"]
        get_run_logger().warning(
            "paper %s: the ledger's last row %s was decided with the calendar's next bar, "
            "which never arrived; recomputed (changed: %s)",
            summary["version"],
            rev["timestamp"],
            ", ".join(sorted(rev["columns"])),
        )
    if summary.get("in_sample"):
        get_run_logger().warning(
            "paper %s: the ledger starts at or before the version's training end (in-sample)",
            summary["version"],
        )
    return summary
