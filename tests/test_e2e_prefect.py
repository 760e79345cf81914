"""End to end: a real local Prefect server, the served deployments, a CLI-triggered run.

What runs here is what a user runs: ``prefect server start`` (on 127.0.0.1, a free port,
a throw-away ``PREFECT_HOME``, analytics off), ``sentio serve`` (``flows.serve.serve_deployments``) in its own process,
``prefect deployment run 'nightly-retrain/manual' --param ...`` from the CLI, and
``prefect deploy --all --prefect-file deployments/prefect.yaml`` against the same server.
Every subprocess runs in its own process group and is terminated in a ``finally``;
temporary folders are removed. Nothing is written to the user's home.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
import yaml

from tests.conftest import SHORT_WINDOWS, minute_bars

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PREFECT = str(BIN / "prefect")
SERVER_START_TIMEOUT = 90.0
RUN_TIMEOUT = 180.0
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@dataclass
class Server:
    """A running local Prefect server and the environment that talks to it."""

    api_url: str
    env: dict[str, str]
    root: Path
    log: Path


def write_bars(path: Path) -> Path:
    """Three regular-hours sessions of canonical one-minute QQQ bars (winter, UTC-5)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    minute_bars("2024-01-08", "2024-01-10", price=400.0).write_ipc(path)
    return path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start ``args`` in a new process group (so the whole tree can be stopped)."""
    out = log.open("ab")
    try:
        return subprocess.Popen(
            args, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    finally:
        out.close()


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM the process group, then SIGKILL it if it has not exited in 15 s."""
    if proc is None or proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _tail(path: Path, n: int = 4000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else ""


def _base_env(home: Path, api_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "SENTIO_"))}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_API_URL=api_url,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        PREFECT_SERVER_UI_ENABLED="false",
        PREFECT_CLI_PROMPT="false",
        PREFECT_RUNNER_POLL_FREQUENCY="1",
        PYTHONUNBUFFERED="1",
    )
    return env


def _cli(server: Server, *args: str, timeout: float = 120.0) -> str:
    """Run a ``prefect`` CLI command against the server; return its output."""
    done = subprocess.run(
        [PREFECT, *args],
        cwd=REPO,
        env=server.env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"prefect {' '.join(args)} failed:\n{output[-4000:]}"
    return output


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    """``prefect server start`` on a free port with a temporary PREFECT_HOME."""
    root = Path(tempfile.mkdtemp(prefix="sentio-e2e-"))
    port = _free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = _base_env(root / "prefect-home", api_url)
    log = root / "server.log"
    proc = None
    saved_env = dict(os.environ)
    # should this process import Prefect first (for its client), it must not touch ~/.prefect
    os.environ.update(PREFECT_HOME=env["PREFECT_HOME"], DO_NOT_TRACK="1")
    try:
        proc = _spawn(
            [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env, log
        )
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"prefect server exited with {proc.returncode}:\n{_tail(log)}")
            try:
                with urllib.request.urlopen(f"{api_url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    f"prefect server not healthy after {SERVER_START_TIMEOUT:.0f} s:\n{_tail(log)}"
                )
            time.sleep(0.5)
        yield Server(api_url=api_url, env=env, root=root, log=log)
    finally:
        _stop(proc)
        os.environ.clear()
        os.environ.update(saved_env)
        shutil.rmtree(root, ignore_errors=True)


def _client_call(server: Server, fn: Any) -> Any:
    """Call ``fn(client)`` with a synchronous Prefect client bound to the server."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with (
        temporary_settings(updates={PREFECT_API_URL: server.api_url}),
        get_client(sync_client=True) as client,
    ):
        return fn(client)


def _wait(server: Server, fn: Any, ready: Any, timeout: float, what: str, logs: list[Path]) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = _client_call(server, fn)
        except Exception:  # not there yet (404) or a transient error under load
            value = None
        if value is not None and ready(value):
            return value
        if time.monotonic() > deadline:
            pytest.fail(
                f"timed out after {timeout:.0f} s waiting for {what}:\n"
                + "\n".join(map(_tail, logs))
            )
        time.sleep(0.5)


def test_served_manual_deployment_runs_from_the_cli(server: Server) -> None:
    work = server.root / "project"
    data = write_bars(work / "data" / "bars.feather")
    config = work / "sentio.yaml"
    config.write_text(yaml.safe_dump({"paths": {"workdir": str(work / "wd")}, **SHORT_WINDOWS}))
    serve_log = server.root / "serve.log"
    # `sentio serve` applies the Prefect defaults of the config, then calls serve_deployments
    command = [str(BIN / "sentio"), "serve", "--data", str(data), "--config", str(config)]
    serve = None
    try:
        serve = _spawn(command, server.env, serve_log)
        _wait(
            server,
            lambda c: c.read_deployment_by_name("nightly-retrain/manual"),
            lambda d: d is not None,
            90.0,
            "the served deployments",
            [serve_log],
        )
        output = _cli(
            server,
            "deployment",
            "run",
            "nightly-retrain/manual",
            "--param",
            f"data_path={data}",
            "--param",
            f"config_path={config}",
        )
        match = re.search(r"UUID:\s*([0-9a-f-]{36})", output)
        assert match, output
        run_id = UUID(match.group(1))

        flow_run = _wait(
            server,
            lambda c: c.read_flow_run(run_id),
            lambda r: r.state is not None and r.state.type.value in TERMINAL,
            RUN_TIMEOUT,
            "the flow run to finish",
            [serve_log, server.log],
        )
        assert flow_run.state.type.value == "COMPLETED", f"{flow_run.state}\n{_tail(serve_log)}"

        # the nightly deployment is served too, with its schedule
        nightly = _client_call(
            server, lambda c: c.read_deployment_by_name("nightly-retrain/nightly")
        )
        (schedule,) = nightly.schedules
        assert (schedule.schedule.cron, schedule.schedule.timezone) == (
            "0 2 * * 1-5",
            "America/New_York",
        )

        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

        flt = ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
        artifacts = {
            a.key: a for a in _client_call(server, lambda c: c.read_artifacts(artifact_filter=flt))
        }
        assert {"data-quality", "ingest-summary"} <= set(artifacts)
        rows = {r["metric"]: r["value"] for r in json.loads(artifacts["ingest-summary"].data)}
        assert rows["rows read"] == 3 * 390 and rows["rows quarantined"] == 0
        assert rows["symbols"] == "QQQ, SQQQ, TQQQ" and rows["gx success"] == "true"
        assert "Data quality" in artifacts["data-quality"].data

        # outputs and persisted results live in the project's workdir
        (run_dir,) = (work / "wd" / "runs").iterdir()
        assert json.loads((run_dir / "run.json").read_text())["status"] == "completed"
        assert any((work / "wd" / "prefect-results").iterdir())
    finally:
        _stop(serve)


def test_prefect_yaml_deploys_to_a_process_pool(server: Server) -> None:
    _cli(server, "work-pool", "create", "sentio-process", "--type", "process")
    _cli(server, "deploy", "--all", "--prefect-file", "deployments/prefect.yaml")

    nightly, manual = (
        _client_call(server, lambda c, n=name: c.read_deployment_by_name(f"nightly-retrain/{n}"))
        for name in ("nightly", "manual")
    )
    (schedule,) = nightly.schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone) == (
        "0 2 * * 1-5",
        "America/New_York",
    )
    assert not manual.schedules
    for dep in (nightly, manual):
        assert dep.work_pool_name == "sentio-process"
        assert dep.entrypoint == "flows/nightly.py:nightly_flow"
        assert set(dep.parameters) == {"data_path", "config_path"}
        assert dep.pull_steps == [
            {"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}
        ]
        env = dep.job_variables["env"]
        assert env["DO_NOT_TRACK"] == "1" and env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
        assert env["PREFECT_RESULTS_LOCAL_STORAGE_PATH"] == f"{REPO}/.sentio/prefect-results"
