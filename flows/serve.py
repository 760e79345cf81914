"""Serve the nightly flow's deployments from one long-running process.

``serve_deployments`` is what ``sentio serve`` runs: no work pool or worker is needed,
the process polls the Prefect API and executes runs of both deployments itself:

- ``nightly-retrain/nightly``: weekdays at 02:00 New York time (before the open, after
  the previous session's data has landed);
- ``nightly-retrain/manual``: no schedule; trigger it with
  ``prefect deployment run 'nightly-retrain/manual' --param data_path=...``;
- ``paper-trading/paper``: weekdays at 16:15 New York time (after the close), the
  champion paper-trades the day's bars (``flows/paper.py``; a run over unchanged bars
  appends nothing, so it may also be triggered by hand at any time).

``deployments/prefect.yaml`` describes the two nightly-retrain deployments for a process
work pool; the schedule constants below are the single source the tests compare it with.
"""

from __future__ import annotations

from typing import Any

from prefect import serve
from prefect.deployments.runner import EntrypointType, RunnerDeployment
from prefect.schedules import Cron

from flows.nightly import nightly_flow
from flows.paper import paper_flow
from sentio.config import load_config, with_overrides
from sentio.orchestration import prefect_env_defaults

NIGHTLY_CRON = "0 2 * * 1-5"
NIGHTLY_TIMEZONE = "America/New_York"
NIGHTLY_DEPLOYMENT = "nightly"
MANUAL_DEPLOYMENT = "manual"
PAPER_CRON = "15 16 * * 1-5"
PAPER_TIMEZONE = "America/New_York"
PAPER_DEPLOYMENT = "paper"


def _parameters(data_path: str, config_path: str | None, workdir: str | None) -> dict[str, Any]:
    """The deployments' default parameters; ``workdir`` only when one is given."""
    params: dict[str, Any] = {"data_path": data_path, "config_path": config_path}
    if workdir is not None:
        params["workdir"] = workdir
    return params


def build_deployments(
    data_path: str, config_path: str | None = None, workdir: str | None = None
) -> list[RunnerDeployment]:
    """The ``nightly`` (scheduled) and ``manual`` (unscheduled) deployments of the flow.

    Both default to ``data_path`` / ``config_path`` (and ``workdir``, overriding
    ``paths.workdir``, when given); a run may override them with ``--param``. Nothing is
    sent to the Prefect API until they are served.
    """
    common: dict[str, Any] = {
        "parameters": _parameters(data_path, config_path, workdir),
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


def build_paper_deployment(
    data_path: str, config_path: str | None = None, workdir: str | None = None
) -> RunnerDeployment:
    """The ``paper`` deployment of the ``paper-trading`` flow (weekdays after the close).

    It paper-trades the champion on ``data_path`` (the growing bar history) with the
    registry and ledgers under ``workdir`` when given; a run may name a version or a
    start with ``--param version=... --param start=...``.
    """
    return RunnerDeployment.from_flow(
        paper_flow,
        name=PAPER_DEPLOYMENT,
        schedules=[Cron(PAPER_CRON, timezone=PAPER_TIMEZONE)],
        description="Paper-trade the champion on the day's bars, weekdays 16:15 America/New_York.",
        parameters=_parameters(data_path, config_path, workdir),
        tags=["sentio"],
        entrypoint_type=EntrypointType.MODULE_PATH,
    )


def serve_deployments(
    data_path: str,
    config_path: str | None = None,
    *,
    paper: bool = True,
    workdir: str | None = None,
) -> None:
    """Serve the deployments from this process until it is interrupted.

    ``nightly`` and ``manual`` always; ``paper`` (:func:`build_paper_deployment`, on the
    same bars) unless ``paper`` is false. ``workdir`` (``sentio serve --workdir``)
    overrides ``paths.workdir`` here and is the ``workdir`` parameter default of every
    deployment, so the served runs write where this process points.

    The configuration is loaded first (an invalid one fails here, not at 02:00), then the
    Prefect environment defaults (no telemetry, results under its workdir) are applied.
    Prefect hands its *import-time* settings to the flow-run subprocesses, so a caller
    should apply :func:`sentio.orchestration.prefect_env_defaults` before importing
    Prefect as well (the ``sentio serve`` command is meant to). Relative paths in the
    parameters are relative to the directory this process runs in.
    """
    cfg = with_overrides(load_config(config_path), {"paths.workdir": workdir})
    prefect_env_defaults(cfg.paths.workdir.expanduser().resolve())
    deployments = build_deployments(data_path, config_path, workdir)
    if paper:
        deployments.append(build_paper_deployment(data_path, config_path, workdir))
    serve(*deployments)
