"""Sentio's Prefect automations, defined here and applied by ``sentio automations apply``.

:func:`automations` builds the three automations of :data:`tasks.alerts.AUTOMATION_NAMES`,
each sending its alert's message (:data:`tasks.alerts.MESSAGES`) to one notification
block:

* ``failed`` (reactive): a ``prefect.flow-run.Failed``, ``prefect.flow-run.Crashed`` or
  ``prefect.flow-run.Late`` (a scheduled run that did not start on time: no serving
  process or worker) event of a ``nightly-retrain`` or ``paper-trading`` flow run;
* ``stale`` (proactive): fewer than one ``prefect.flow-run.Completed`` event of a
  ``nightly-retrain`` flow run within ``alerts.stale_after_hours`` (it also fires when the
  serving process, the worker or the schedule stopped: nothing runs at all);
* ``drift`` (reactive): a ``sentio.drift.detected`` event (``tasks/paper.py``).

:func:`apply_automations` is idempotent: an automation is found by its name and updated in
place (created when absent), so applying twice leaves three automations. The block is
``alerts.block`` (a saved block, found by ``<type slug>/<name>``) or, from
``alerts.webhook_url``, the Custom Webhook block ``sentio-alerts`` (saved, overwritten on
every apply).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, cast
from uuid import UUID

import httpx
from prefect.automations import AutomationCore
from prefect.client.orchestration import get_client
from prefect.events.actions import SendNotification
from prefect.events.schemas.automations import EventTrigger, Posture
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL

from sentio.config import AlertsConfig
from sentio.errors import ConfigError, SentioError
from tasks.alerts import (
    AUTOMATION_NAMES,
    MESSAGES,
    NIGHTLY_FLOW,
    WATCHED_FLOWS,
    WEBHOOK_BLOCK,
    webhook_block,
)

__all__ = ["apply_automations", "automations"]

DRIFT_EVENT = "sentio.drift.detected"
"""The drift event (the value of :data:`sentio.drift.EVENT`; flows do not import sentio.drift)."""


def _block_id(cfg: AlertsConfig) -> UUID:
    """The notification block's document id on the current API (saving the webhook one)."""
    if cfg.block is not None:
        slug, name = cfg.block.split("/")
        with get_client(sync_client=True) as client:
            try:
                doc = client.read_block_document_by_name(name, slug)
            except ObjectNotFound:
                raise ConfigError(
                    f"alerts.block: no block {cfg.block!r} on {PREFECT_API_URL.value()}; create "
                    "it in the UI (Blocks) or with its Python class's .save(), or set "
                    "alerts.webhook_url instead"
                ) from None
        if doc.id is None:  # pragma: no cover - a saved document has an id
            raise ConfigError(f"alerts.block: {cfg.block!r} has no id")
        return doc.id
    if cfg.webhook_url is not None:
        saved = webhook_block(cfg.webhook_url).save(WEBHOOK_BLOCK, overwrite=True)
        return cast(UUID, saved)  # sync here: not in an event loop
    raise ConfigError(
        "alerts: set alerts.webhook_url (a URL receiving a JSON POST per alert) or "
        "alerts.block (a saved Prefect notification block, '<type slug>/<name>') in the "
        "configuration; nothing would receive the alerts"
    )


def automations(
    cfg: AlertsConfig, block_id: UUID, *, stale_within: timedelta | None = None
) -> dict[str, AutomationCore]:
    """The automations by alert (``stale_within`` replaces ``alerts.stale_after_hours``:
    tests use seconds)."""
    within = stale_within or timedelta(hours=cfg.stale_after_hours)
    hours = f"{within.total_seconds() / 3600:g}"

    def notify(kind: str) -> list[Any]:
        subject, body = MESSAGES[kind]
        if kind == "stale":  # not in the automation's context: fixed when applied
            subject, body = (t.replace("{{ hours }}", hours) for t in (subject, body))
        return [SendNotification(block_document_id=block_id, subject=subject, body=body)]

    triggers = {
        "failed": EventTrigger(
            posture=Posture.Reactive,
            expect={"prefect.flow-run.Failed", "prefect.flow-run.Crashed", "prefect.flow-run.Late"},
            match_related={
                "prefect.resource.role": "flow",
                "prefect.resource.name": list(WATCHED_FLOWS),
            },
            threshold=1,
            within=timedelta(0),
        ),
        "stale": EventTrigger(
            posture=Posture.Proactive,
            expect={"prefect.flow-run.Completed"},
            match_related={"prefect.resource.role": "flow", "prefect.resource.name": NIGHTLY_FLOW},
            threshold=1,
            within=within,
        ),
        "drift": EventTrigger(
            posture=Posture.Reactive,
            expect={DRIFT_EVENT},
            threshold=1,
            within=timedelta(0),
        ),
    }
    descriptions = {
        "failed": "A nightly-retrain or paper-trading flow run failed, crashed or is late.",
        "stale": f"No nightly-retrain flow run completed within {hours} hours.",
        "drift": "Paper trading left the champion's out-of-sample bands (sentio.drift).",
    }
    return {
        kind: AutomationCore(
            name=AUTOMATION_NAMES[kind],
            description=f"{descriptions[kind]} Applied by `sentio automations apply`.",
            enabled=True,
            trigger=triggers[kind],
            actions=notify(kind),
        )
        for kind in AUTOMATION_NAMES
    }


def apply_automations(
    cfg: AlertsConfig, *, stale_within: timedelta | None = None
) -> dict[str, Any]:
    """Create or update Sentio's automations on the configured Prefect API.

    Returns ``{"api": url, "block_id": id, "automations": {name: "created" | "updated"}}``.

    Raises:
        ConfigError: no PREFECT_API_URL (automations need a server that keeps running),
            no alert target, or an ``alerts.block`` the server does not have.
    """
    url = PREFECT_API_URL.value()
    if not url:
        raise ConfigError(
            "PREFECT_API_URL is not set: automations live on a Prefect server that keeps "
            "running (prefect server start, or Prefect Cloud); point PREFECT_API_URL at it"
        )
    try:
        block_id = _block_id(cfg)
        done: dict[str, str] = {}
        with get_client(sync_client=True) as client:
            for automation in automations(cfg, block_id, stale_within=stale_within).values():
                found = client.read_automations_by_name(automation.name)
                if found:
                    client.update_automation(found[0].id, automation)
                    for extra in found[1:]:  # duplicates made by hand: one of each name
                        client.delete_automation(extra.id)
                    done[automation.name] = "updated"
                else:
                    client.create_automation(automation)
                    done[automation.name] = "created"
    except httpx.HTTPError as err:  # Prefect's own HTTP errors derive from it
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SentioError(f"{url}: the Prefect API refused or did not answer ({first})") from None
    return {"api": url, "block_id": str(block_id), "automations": done}
