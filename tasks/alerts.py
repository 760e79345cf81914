"""Alerts: their messages, where they go, and who sends them.

Three alerts, each with a subject and a body written as Jinja templates over Prefect's
automation context (:data:`MESSAGES`):

* ``failed``: a nightly-retrain or paper-trading flow run ended Failed or Crashed, or (on
  a server with the automations) a scheduled one is Late: it did not start on time;
* ``stale``: no nightly-retrain run has completed for ``alerts.stale_after_hours``;
* ``drift``: a paper-trading run's drift check found the ledger outside the champion's
  bands (the ``sentio.drift.detected`` event, :mod:`sentio.drift`).

On a Prefect server where ``sentio automations apply`` has run (``flows/automations.py``),
the server's automations send them to the notification block of ``alerts.block`` or
``alerts.webhook_url``. Without them (a ``sentio run`` on its temporary server, or a server
whose automations were never applied or were disabled) the flows' failure hooks and the
paper flow's drift check send the same message themselves (:func:`send_unless_automated`),
rendered from the same templates, so a failure is reported exactly once either way.
Nothing here raises: an alert that cannot be sent is logged, and the run's own outcome
stands.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any, cast

from jinja2 import ChainableUndefined
from jinja2.sandbox import ImmutableSandboxedEnvironment
from prefect.blocks.core import Block
from prefect.blocks.notifications import CustomWebhookNotificationBlock
from prefect.client.orchestration import get_client

from sentio.config import AlertsConfig, load_config, with_overrides

__all__ = [
    "AUTOMATION_NAMES",
    "MESSAGES",
    "WEBHOOK_BLOCK",
    "alert_on_failure",
    "automation_active",
    "notification_block",
    "render",
    "send_unless_automated",
]

log = logging.getLogger("sentio.alerts")

WATCHED_FLOWS = ("nightly-retrain", "paper-trading")
"""Flows whose failures are alerted (the nightly flow and the paper flow)."""
NIGHTLY_FLOW = "nightly-retrain"
WEBHOOK_BLOCK = "sentio-alerts"
"""Name of the Custom Webhook block saved from ``alerts.webhook_url``."""

AUTOMATION_NAMES = {
    "failed": "sentio: nightly or paper run failed",
    "stale": "sentio: no completed nightly run",
    "drift": "sentio: paper-trading drift",
}
"""The automations ``sentio automations apply`` creates, by alert (unique names)."""

MESSAGES: dict[str, tuple[str, str]] = {
    "failed": (
        "Sentio alert: {{ flow.name }} run {{ flow_run.name }} {{ flow_run.state.name }}",
        "The {{ flow.name }} flow run {{ flow_run.name }} ({{ flow_run.id }}) is "
        "{{ flow_run.state.name }}: {{ flow_run.state.message }}",
    ),
    "stale": (
        "Sentio alert: no completed nightly-retrain run for {{ hours }} hours",
        "No nightly-retrain flow run has completed in the last {{ hours }} hours. Check the "
        "Prefect server, the process serving the deployments (sentio serve) or its worker, "
        "and the data feed.",
    ),
    "drift": (
        "Sentio alert: paper-trading drift of version {{ event.resource.name }}",
        "Paper trading of version {{ event.resource.name }} left the bands of its "
        "out-of-sample backtest over the last {{ event.payload.sessions }} sessions "
        "({{ event.payload.bars }} bars, {{ event.payload.start }} .. {{ event.payload.end }}): "
        "{{ event.payload.reasons | join('; ') }}",
    ),
}
"""Subject and body of each alert (Jinja; the automation's context, or the same names
given by :func:`render`)."""

_JINJA = ImmutableSandboxedEnvironment(undefined=ChainableUndefined)
"""As Prefect renders automation templates: a missing attribute renders empty."""


def render(kind: str, **context: Any) -> tuple[str, str]:
    """The subject and body of alert ``kind`` rendered with ``context`` (objects with the
    attributes the templates read: ``flow``, ``flow_run``, ``event``, ``hours``)."""
    subject, body = MESSAGES[kind]
    return _JINJA.from_string(subject).render(**context), _JINJA.from_string(body).render(**context)


def webhook_block(url: str) -> CustomWebhookNotificationBlock:
    """The Custom Webhook block of ``alerts.webhook_url``: a JSON POST of subject and body."""
    return CustomWebhookNotificationBlock(
        name=WEBHOOK_BLOCK,
        url=url,
        json_data={"subject": "{{subject}}", "body": "{{body}}", "name": "{{name}}"},
    )


def notification_block(cfg: AlertsConfig) -> Block | None:
    """Where alerts go: the saved block ``alerts.block`` (loaded from the current Prefect
    API), else a webhook block for ``alerts.webhook_url``, else None (alerts are off)."""
    if cfg.block is not None:
        return cast(Block, Block.load(cfg.block))  # sync here: not in an event loop
    if cfg.webhook_url is not None:
        return webhook_block(cfg.webhook_url)
    return None


def automation_active(kind: str) -> bool:
    """Whether the current Prefect API holds the enabled automation of alert ``kind``
    (False when the API cannot be reached: the caller then sends the alert itself)."""
    try:
        with get_client(sync_client=True) as client:
            found = client.read_automations_by_name(AUTOMATION_NAMES[kind])
    except Exception as err:  # noqa: BLE001 - no server, or an old one: send directly
        log.debug("automations unreadable (%s); alerts are sent directly", err)
        return False
    return any(a.enabled for a in found)


def send_unless_automated(cfg: AlertsConfig, kind: str, subject: str, body: str) -> str:
    """Send an alert unless the server's automation of ``kind`` sends it.

    Returns what happened: ``"automation"`` (the server sends it), ``"sent"``, ``"off"``
    (no alerts.block or alerts.webhook_url) or ``"failed: <why>"``.
    """
    if cfg.block is None and cfg.webhook_url is None:
        return "off"
    if automation_active(kind):
        return "automation"
    try:
        block = notification_block(cfg)
        assert block is not None
        block.notify(body=body, subject=subject)  # type: ignore[attr-defined]
    except Exception as err:  # noqa: BLE001 - an alert never changes the run's outcome
        log.error("could not send the %s alert %r: %s", kind, subject, err)
        return f"failed: {err}"
    return "sent"


def _alerts_config(parameters: Mapping[str, Any]) -> AlertsConfig:
    """The alerts section of the configuration a flow run was given (its parameters)."""
    cfg = load_config(parameters.get("config_path"))
    return with_overrides(cfg, {"paths.workdir": parameters.get("workdir")}).alerts


def alert_on_failure(flow: Any, flow_run: Any, state: Any) -> None:
    """A flow ``on_failure`` / ``on_crashed`` hook: the ``failed`` alert, sent directly
    unless the server's automation sends it."""
    try:
        cfg = _alerts_config(flow_run.parameters or {})
        run = SimpleNamespace(name=flow_run.name, id=flow_run.id, state=state)
        subject, body = render("failed", flow=flow, flow_run=run)
    except Exception as err:  # noqa: BLE001 - a bad configuration may be why it failed
        log.error("no alert for the failed run %s: %s", flow_run.name, err)
        return
    outcome = send_unless_automated(cfg, "failed", subject, body)
    log.info("failure alert for %s: %s", flow_run.name, outcome)
