"""The drift check after a paper-trading run: a thin task around :mod:`sentio.drift`.

It compares the version's ledger with the version's own out-of-sample backtest
(:func:`sentio.drift.check_version`), publishes the result as a markdown artifact
(``drift-<version>``), and on drift emits the ``sentio.drift.detected`` event (the numbers
in its payload) and sends the ``drift`` alert unless the server's automation does
(:func:`tasks.alerts.send_unless_automated`). A version registered before drift checks
existed is not checked (a warning says so); nor is a check that fails for any other
reason (logged as an error): the paper run's outcome never depends on it. A run that
appended nothing (a rerun over the same bars) publishes the check but does not emit the
event or alert again.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event

from sentio.config import SentioConfig
from sentio.drift import EVENT, DriftUnavailable, check_version
from sentio.orchestration import check_artifact_key
from sentio.paper import read_ledger
from sentio.registry import Registry, default_root
from tasks.alerts import render, send_unless_automated


@task(
    name="drift-check",
    description="Compare the paper ledger with the version's out-of-sample bands; alert on drift.",
    cache_policy=NO_CACHE,
    persist_result=False,
)
def drift_task(summary: dict[str, Any], cfg: SentioConfig) -> dict[str, Any]:
    """Check the ledger of a paper run's ``summary`` (:func:`sentio.paper.paper_trade`).

    Returns :meth:`sentio.drift.DriftCheck.to_dict` plus ``alert`` (what
    :func:`~tasks.alerts.send_unless_automated` did; ``"none"`` without drift), or
    ``{"checked": False, "reason": ...}`` when the version cannot be checked.
    """
    log = get_run_logger()
    version = str(summary["version"])
    try:
        ledger = read_ledger(summary["ledger"])
        if ledger is None:
            return {"checked": False, "reason": f"{summary['ledger']}: no ledger"}
        check = check_version(Registry(default_root(cfg)), version, ledger, cfg.drift)
    except DriftUnavailable as err:
        log.warning("drift: %s", err)
        return {"checked": False, "reason": str(err)}
    except Exception as err:  # noqa: BLE001 - the paper run stands whatever happens here
        log.error("drift: the check of version %s failed: %s", version, err)
        return {"checked": False, "reason": f"the check failed: {err}"}
    result = check.to_dict()
    create_markdown_artifact(
        key=check_artifact_key(f"drift-{version.lower()}"),
        markdown=check.markdown(),
        description=f"Drift check of paper-trading version {version}",
    )
    if not check.drifted:
        log.info("drift: version %s inside its bands over %d bars", version, check.bars)
        return {**result, "checked": True, "alert": "none"}
    if not summary.get("appended") and not summary.get("revised"):
        log.warning("drift (no new bars, not alerted again): %s", "; ".join(check.reasons()))
        return {**result, "checked": True, "alert": "repeat"}
    emit_event(
        event=EVENT,
        resource={
            "prefect.resource.id": f"sentio.model-version.{version}",
            "prefect.resource.name": version,
        },
        payload=result,
    )
    event = SimpleNamespace(resource=SimpleNamespace(name=version), payload=result)
    subject, body = render("drift", event=event)
    outcome = send_unless_automated(cfg.alerts, "drift", subject, body)
    log.warning("drift: %s (alert: %s)", "; ".join(check.reasons()), outcome)
    return {**result, "checked": True, "alert": outcome}
