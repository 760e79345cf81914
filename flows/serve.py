"""Serve the nightly flow's deployments from one long-running process.

``serve_deployments`` is what ``sentio serve`` runs: no work pool or worker is needed,
the process polls the Prefect API and executes runs of both deployments itself:

- ``nightly-retrain/nightly``: weekdays at 02:00 New York time (before the open, after
  the previous session's data has landed);
- ``nightly-retrain/manual``: no schedule; trigger it with
  ``prefect deployment run 'nightly-retrain/manual' --param data_path=...``.

``deployments/prefect.yaml`` describes the same two deployments for a process work pool;
the schedule constants below are the single source the tests compare it with.
"""

from __future__ import annotations

from typing import Any

from prefect import serve
from prefect.deployments.runner import EntrypointType, RunnerDeployment
from prefect.schedules import Cron

from flows.nightly import nightly_flow
from sentio.config import load_config
from sentio.orchestration import prefect_env_defaults

NIGHTLY_CRON = "0 2 * * 1-5"
NIGHTLY_TIMEZONE = "America/New_York"
NIGHTLY_DEPLOYMENT = "nightly"
MANUAL_DEPLOYMENT = "manual"


def build_deployments(data_path: str, config_path: str | None = None) -> list[RunnerDeployment]:
    """The ``nightly`` (scheduled) and ``manual`` (unscheduled) deployments of the flow.

    Both default to ``data_path`` / ``config_path``; a run may override them with
    ``--param``. Nothing is sent to the Prefect API until they are served.
    """
    common: dict[str, Any] = {
        "parameters": {"data_path": data_path, "config_path": config_path},
        "tags": ["sentio"],
        # "flows.nightly.nightly_flow": imported by name in the flow-run subprocess, so it
        # does not depend on the directory the serving process was started from
        "entrypoint_type": EntrypointType.MODULE_PATH,
    }
    # RunnerDeployment.from_flow is what Flow.to_deployment calls, minus its async dispatch
    nightly = RunnerDeployment.from_flow(
        nightly_flow,
        name=NIGHTLY_DEPLOYMENT,
        schedules=[Cron(NIGHTLY_CRON, timezone=NIGHTLY_TIMEZONE)],
        description="Nightly retrain, weekdays 02:00 America/New_York.",
        **common,
    )
    manual = RunnerDeployment.from_flow(
        nightly_flow,
        name=MANUAL_DEPLOYMENT,
        description="On-demand retrain (no schedule).",
        **common,
    )
    return [nightly, manual]


def serve_deployments(data_path: str, config_path: str | None = None) -> None:
    """Serve both deployments from this process until it is interrupted.

    The configuration is loaded first (an invalid one fails here, not at 02:00), then the
    Prefect environment defaults (no telemetry, results under its workdir) are applied.
    Prefect hands its *import-time* settings to the flow-run subprocesses, so a caller
    should apply :func:`sentio.orchestration.prefect_env_defaults` before importing
    Prefect as well (the ``sentio serve`` command is meant to). Relative paths in the
    parameters are relative to the directory this process runs in.
    """
    cfg = load_config(config_path)
    prefect_env_defaults(cfg.paths.workdir.expanduser().resolve())
    serve(*build_deployments(data_path, config_path))
