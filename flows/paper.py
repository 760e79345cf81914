"""The paper-trading flow: the champion (or a named version) acts on the latest bars.

One task (:func:`tasks.paper.paper_task`) calls :func:`sentio.paper.paper_trade`, which
appends the bars that arrived since the last run to the version's ledger
(``<paths.workdir>/paper/<version>/ledger.feather``); a run over unchanged bars appends
nothing. A second task (:func:`tasks.drift.drift_task`) then compares the ledger's last
sessions with the version's out-of-sample backtest and alerts on drift. A failed or
crashed run sends the ``failed`` alert (:mod:`tasks.alerts`). ``flows/serve.py`` serves it
as the ``paper-trading/paper`` deployment.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from sentio.config import load_config, with_overrides
from tasks.alerts import alert_on_failure
from tasks.drift import drift_task
from tasks.paper import paper_task

FLOW_NAME = "paper-trading"


@flow(
    name=FLOW_NAME,
    description="Paper-trade the champion on the latest bars (idempotent ledger).",
    on_failure=[alert_on_failure],
    on_crashed=[alert_on_failure],
)
def paper_flow(
    data_path: str,
    config_path: str | None = None,
    version: str | None = None,
    start: str | None = None,
    workdir: str | None = None,
    verify: bool = False,
) -> dict[str, Any]:
    """Paper-trade ``version`` (default: the champion) on the bars at ``data_path``.

    Args:
        data_path: the bar history (a file, comma-separated files or a folder), ingested
            like the nightly flow's input.
        config_path: a Sentio configuration; ``paths.workdir`` (where the registry and
            the ledgers live), ``alerts`` and ``drift`` are read from it, the model brings
            its own.
        version: a version id; ``None`` uses the champion.
        start: first bar of a new ledger (ISO-8601); default: the first bar after the
            version's training range.
        workdir: overrides ``paths.workdir``.
        verify: recompute the ledger from its start (and compare) instead of continuing
            from its state.

    Returns:
        The summary of :func:`sentio.paper.paper_trade`, with ``drift``: the drift check
        of the ledger after the run (:func:`tasks.drift.drift_task`; on drift a
        ``sentio.drift.detected`` event and an alert).
    """
    cfg = with_overrides(load_config(config_path), {"paths.workdir": workdir})
    cfg = with_overrides(cfg, {"paths.workdir": str(cfg.paths.workdir.expanduser().resolve())})
    summary = paper_task(data_path, cfg, version, start, verify)
    return {**summary, "drift": drift_task(summary, cfg)}
