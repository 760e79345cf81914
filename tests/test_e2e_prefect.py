"""End to end: a real local Prefect server, the served deployments, a CLI-triggered run.

What runs here is what a user runs: ``prefect server start`` (on 127.0.0.1, a free port,
a throw-away ``PREFECT_HOME``, analytics off), ``sentio serve`` (``flows.serve.serve_deployments``) in its own process,
``prefect deployment run 'nightly-retrain/manual' --param ...`` from the CLI, and
``prefect deploy --all --prefect-file deployments/prefect.yaml`` against the same server.

The CLI-triggered run (one module fixture, SHORT_WINDOWS: two folds, one seed, 128
training steps) is then checked through the Prefect API: every stage's artifact under its
stable key (tasks/artifacts.py), with its contents checked against run.json, the files of
the run folder and the registry; the report-html link points at the run's report.html,
which passes the structural checks of tests/test_report_render.py and, where a Chromium
binary is found, renders with all its plots.
Every subprocess runs in its own process group and is terminated in a ``finally``;
temporary folders are removed. Nothing is written to the user's home.
"""

from __future__ import annotations

import html as html_lib
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlparse
from urllib.request import url2pathname
from uuid import UUID

import pytest
import yaml

from tests.conftest import SHORT_WINDOWS, minute_bars
from tests.test_report_render import assert_report_renders, assert_report_structure, needs_chromium

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PREFECT = str(BIN / "prefect")
SERVER_START_TIMEOUT = 90.0
RUN_TIMEOUT = 180.0
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
STAGES = ("ingest", "features", "folds", "regimes", "train", "report", "registry")
# the keyed artifacts of one run (tasks/artifacts.py) and their Prefect artifact types
ARTIFACT_TYPES = {
    "data-quality": "markdown",
    "ingest-summary": "table",
    "feature-summary": "table",
    "folds": "table",
    "regime-summary": "table",
    "training": "table",
    "report": "markdown",
    "report-html": "markdown",  # a link artifact: Prefect stores it as markdown "[text](url)"
    "registry-decision": "markdown",
    "registry-versions": "table",
}


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
def server(migrated_prefect_home: Callable[[Path], Path]) -> Iterator[Server]:
    """``prefect server start`` on a free port with a temporary PREFECT_HOME (its database
    already migrated: a first start spends ~9 s on the migrations, which
    tests/test_cli.py's ``sentio run`` in a fresh home covers)."""
    root = Path(tempfile.mkdtemp(prefix="sentio-e2e-"))
    port = _free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = _base_env(migrated_prefect_home(root / "prefect-home"), api_url)
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


@dataclass
class NightlyRun:
    """A finished run of ``nightly-retrain/manual`` triggered from the CLI."""

    run_id: UUID
    flow_run: Any
    work: Path
    run_dir: Path
    record: dict[str, Any]
    artifacts: dict[str, Any]  # the run's keyed artifacts (Prefect API objects) by key
    keyless: list[Any]  # the rest (the train tasks' progress artifacts)
    nightly: Any  # the served nightly deployment


@pytest.fixture(scope="module")
def nightly_run(server: Server) -> NightlyRun:
    """Serve the deployments, run the manual one from the CLI, read its artifacts."""
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
        nightly = _client_call(
            server, lambda c: c.read_deployment_by_name("nightly-retrain/nightly")
        )
    finally:
        _stop(serve)

    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    flt = ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
    found = _client_call(server, lambda c: c.read_artifacts(artifact_filter=flt))
    (run_dir,) = (work / "wd" / "runs").iterdir()
    record = json.loads((run_dir / "run.json").read_text())
    keyed = [a for a in found if a.key]
    return NightlyRun(
        run_id=run_id,
        flow_run=flow_run,
        work=work,
        run_dir=run_dir,
        record=record,
        artifacts={a.key: a for a in keyed},
        keyless=[a for a in found if not a.key],
        nightly=nightly,
    )


def test_served_manual_deployment_runs_from_the_cli(nightly_run: NightlyRun) -> None:
    run = nightly_run
    assert run.flow_run.deployment_id is not None
    # the nightly deployment is served too, with its schedule
    (schedule,) = run.nightly.schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone) == (
        "0 2 * * 1-5",
        "America/New_York",
    )
    # outputs and persisted results live in the project's workdir
    assert run.record["status"] == "completed" and run.record["flow_run_id"] == str(run.run_id)
    assert run.record["deployment"] == "manual"
    assert list(run.record["stages"]) == [*STAGES]
    assert any((run.work / "wd" / "prefect-results").iterdir())


def test_every_stage_publishes_its_artifacts(nightly_run: NightlyRun) -> None:
    """The keyed artifacts of the run, read back through the API, are the ones run.json lists."""
    found = {key: a.type for key, a in nightly_run.artifacts.items()}
    assert found == ARTIFACT_TYPES
    # run.json records the id of every artifact the flow created: the same objects
    assert nightly_run.record["artifacts"] == {
        key: str(a.id) for key, a in nightly_run.artifacts.items()
    }
    for a in nightly_run.artifacts.values():
        assert a.flow_run_id == nightly_run.run_id and a.description, a.key
    # the train tasks' progress bars (no key): one per fold and seed, finished
    runs = nightly_run.record["stages"]["train"]["runs"]
    assert sorted((a.type, a.data) for a in nightly_run.keyless) == [("progress", 100.0)] * len(
        runs
    )


def _table(run: NightlyRun, key: str) -> list[dict[str, Any]]:
    rows = json.loads(run.artifacts[key].data)
    assert isinstance(rows, list) and rows, key
    return rows


def test_ingest_artifacts(nightly_run: NightlyRun) -> None:
    rows = {r["metric"]: r["value"] for r in _table(nightly_run, "ingest-summary")}
    assert rows["rows read"] == 3 * 390 and rows["rows quarantined"] == 0
    assert rows["symbols"] == "QQQ, SQQQ, TQQQ" and rows["gx success"] == "true"
    assert rows["sessions"] == 3
    ingest = nightly_run.record["stages"]["ingest"]
    assert rows["output sha256"] == ingest["output_sha256"]
    md = nightly_run.artifacts["data-quality"].data
    assert md.startswith("# Data quality: ingest")
    assert "Great Expectations suite: **passed**" in md and "| read | 1,170 |" in md
    assert ingest["output_sha256"] in md


def test_feature_and_fold_artifacts(nightly_run: NightlyRun) -> None:
    stages = nightly_run.record["stages"]
    features = _table(nightly_run, "feature-summary")
    assert [r["column"] for r in features] == stages["features"]["columns"]
    for r in features:
        assert r["count"] == stages["features"]["rows"] and r["min"] <= r["mean"] <= r["max"]

    folds = _table(nightly_run, "folds")
    assert [r["fold"] for r in folds] == list(range(stages["folds"]["n_folds"])) == [0, 1]
    for r in folds:
        assert r["test from"] < r["test to"] and r["test rows"] > 0 and r["train rows"] > 0
    # k-fold over the two post-warm-up sessions: the test sets partition the feature rows
    # (but the purged row of each boundary)
    total = sum(r["test rows"] for r in folds)
    assert stages["features"]["rows"] - len(folds) <= total <= stages["features"]["rows"]
    assert folds[0]["test to"] < folds[1]["test from"]


def test_regime_artifact(nightly_run: NightlyRun) -> None:
    rows = _table(nightly_run, "regime-summary")
    assert {r["fold"] for r in rows} == {0, 1}
    for fold in (0, 1):
        mine = [r for r in rows if r["fold"] == fold]
        assert sum(r["share of test bars"] for r in mine) == pytest.approx(1.0, abs=1e-4)
        assert {r["method"] for r in mine} <= {"hmm", "vol_quantile"}
        assert all(r["volatility"] > 0 and r["fitted on rows"] > 0 for r in mine)


def test_training_artifact(nightly_run: NightlyRun) -> None:
    rows = _table(nightly_run, "training")
    runs = nightly_run.record["stages"]["train"]["runs"]
    assert sorted((r["fold"], r["seed"]) for r in rows) == sorted(
        (r["fold"], r["seed"]) for r in runs
    )
    assert len(rows) == 2  # two folds x the one default seed
    # the run's config.yaml records the short training budget of SHORT_WINDOWS
    config = yaml.safe_load((nightly_run.run_dir / "config.yaml").read_text())
    total = config["train"]["total_timesteps"]
    assert total == 128
    for r in rows:
        assert r["steps"] >= total and r["device"] == "cpu" and r["test bars"] > 0
        for col in ("sharpe", "max drawdown", "sharpe trend rule", "sharpe underlying"):
            assert isinstance(r[col], int | float), (col, r[col])


def test_report_artifacts(nightly_run: NightlyRun) -> None:
    report = nightly_run.record["stages"]["report"]
    verdict = report["verdict"]
    # an edge is claimed only with the interval above 0 and the DSR gate passed
    assert verdict and verdict.startswith("Out-of-sample edge") == report["edge"]
    md = nightly_run.artifacts["report"]
    assert md.description == verdict
    assert md.data.startswith("# Sentio out-of-sample report")
    assert md.data.count(verdict) == 1  # said once
    assert "registry:" in md.data  # the header names the registry's decision
    assert f"**Verdict:** {verdict}" in md.data
    for section in ("Per fold", "Per regime", "Ingest / data quality", "Performance profile"):
        assert section in md.data, section

    link = nightly_run.artifacts["report-html"].data
    match = re.fullmatch(r"\[report\.html\]\((file://[^)]+)\)", link)
    assert match, link
    html = Path(url2pathname(urlparse(match.group(1)).path))
    assert html == nightly_run.run_dir.resolve() / "report" / "report.html"
    assert html.is_file() and str(html) == str(Path(report["paths"]["html"]).resolve())
    text = html.read_text(encoding="utf-8")
    assert html_lib.escape(verdict) in text


def test_registry_artifacts(nightly_run: NightlyRun) -> None:
    decision = nightly_run.record["stages"]["registry"]
    assert json.loads(Path(decision["output"]).read_text()) == decision
    assert Path(decision["output"]).parent == nightly_run.run_dir.resolve() / "registry"
    runs = nightly_run.record["stages"]["train"]["runs"]
    # a fresh registry: every (fold, seed) model is a new version; no champion before
    assert decision["new_versions"] == len(decision["registered"]) == len(runs)
    assert decision["champion_before"] is None

    md = nightly_run.artifacts["registry-decision"]
    assert md.data.startswith("# Registry decision")
    cand = decision["candidate"]
    if decision["promoted"]:
        assert f"**Promoted** `{cand}` to champion" in md.data
        assert decision["champion_after"] == cand and not decision["reasons"]
        assert md.description == f"Registry decision: promoted {cand}"
    else:
        assert f"**Not promoted**: `{cand}`; the champion stays `none`." in md.data
        assert decision["reasons"] and decision["champion_after"] is None
        assert md.description == "Registry decision: not promoted; champion none"
        for reason in decision["reasons"]:
            assert f"- {reason}" in md.data
    assert f"Registered {len(runs)} version(s), {len(runs)} new" in md.data

    rows = _table(nightly_run, "registry-versions")
    assert [r["version"] for r in rows] == decision["registered"]
    assert all(r["new"] for r in rows)
    assert [r["version"] for r in rows if r["candidate"]] == [cand]
    registry = Path(decision["registry"])
    assert registry == (nightly_run.work / "wd" / "registry").resolve()
    for version in decision["registered"]:  # on disk, with their manifests
        manifest = json.loads((registry / "versions" / version / "manifest.json").read_text())
        assert manifest["version"] == version
    assert (registry / "champion.json").exists() == decision["promoted"]


def test_run_report_html_is_self_contained(nightly_run: NightlyRun) -> None:
    """The structural checks of tests/test_report_render.py on the flow's own report."""
    html = Path(nightly_run.record["stages"]["report"]["paths"]["html"])
    # a briefly trained agent may stay flat: its drawdown plot then has axes only
    assert_report_structure(html, drawn_data=False)


@needs_chromium
def test_run_report_html_renders_in_headless_chromium(
    nightly_run: NightlyRun, tmp_path: Path
) -> None:
    """The report.html of the run, opened in Chromium, shows its four plots."""
    html = Path(nightly_run.record["stages"]["report"]["paths"]["html"])
    assert_report_renders(html, tmp_path / "run-report.png")


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

    paper = _client_call(server, lambda c: c.read_deployment_by_name("paper-trading/paper"))
    (pschedule,) = paper.schedules
    assert (pschedule.schedule.cron, pschedule.schedule.timezone) == (
        "15 16 * * 1-5",
        "America/New_York",
    )
    assert paper.work_pool_name == "sentio-process"
    assert paper.entrypoint == "flows/paper.py:paper_flow"


def _fan_out(
    server: Server,
    inputs: dict[str, Any],
    jobs: list[tuple[int, int]],
    workdir: Path,
    executor: str,
    paths: dict[str, str] | None = None,
) -> tuple[str, list[dict[str, Any]]]:
    """The run's training fan-out on ``executor`` (with the ``paths`` settings) inside a
    flow of this process, against the server: the flow run's id and the training
    summaries."""
    from prefect import flow
    from prefect.runtime import flow_run
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.trainings import run_trainings
    from sentio.config import config_from_dict

    train: dict[str, Any] = {**cast(dict[str, Any], SHORT_WINDOWS["train"])}
    train["executor"] = executor
    cfg = config_from_dict({**SHORT_WINDOWS, "train": train, "paths": paths or {}})

    @flow(name=f"fan-out-{executor}")
    def parent() -> tuple[str, list[dict[str, Any]]]:
        params = {**inputs, "cfg": cfg, "workdir": str(workdir)}
        storage = str(workdir / "prefect-results")
        runs = run_trainings(jobs, cfg=cfg, workdir=str(workdir), params=params, storage=storage)
        return str(flow_run.get_id()), runs

    from prefect.logging.handlers import APILogHandler

    with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
        try:
            return parent()
        finally:
            APILogHandler().flush()  # the run's logs reach this server, not a later one


def test_deployment_executor_runs_every_training_as_a_flow_run_on_a_pool_worker(
    server: Server, tmp_path: Path
) -> None:
    """``train.executor: deployment``: the ``train-fold`` deployment of
    deployments/prefect.yaml on a process pool, one worker started here; every training
    is a flow run of its own (nested under the run, with its progress artifact), and the
    models are the local executor's, bit for bit."""
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterParentFlowRunId,
    )

    from sentio import stages
    from sentio.config import config_from_dict
    from sentio.io import sha256_file

    cfg = config_from_dict(SHORT_WINDOWS)
    wd = tmp_path / "shared"
    ingest = stages.ingest_stage([write_bars(tmp_path / "bars.feather")], cfg, wd)
    features = stages.features_stage(ingest["output"], cfg, wd)
    folds = stages.folds_stage(features["output"], cfg, wd)
    regimes = stages.regimes_stage(ingest["output"], folds["output"], cfg, wd)
    inputs = {
        "bars_path": ingest["output"],
        "features_path": features["output"],
        "folds_path": folds["output"],
        "regimes_path": regimes["output"],
    }
    jobs = [(fold, 0) for fold in range(folds["n_folds"])]

    _cli(server, "work-pool", "create", "sentio-process", "--type", "process", "--overwrite")
    _cli(server, "deploy", "--prefect-file", "deployments/prefect.yaml", "--name", "train-fold")
    log = tmp_path / "worker.log"
    env = {
        **server.env,
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_WORKER_PREFETCH_SECONDS": "1",
    }
    worker = _spawn([PREFECT, "worker", "start", "--pool", "sentio-process"], env, log)
    shared = {"storage": (tmp_path / "bucket").as_uri(), "storage_cache": str(tmp_path / "w")}
    try:
        parent_id, runs = _fan_out(server, inputs, jobs, wd, "deployment")
        # through storage by URL: the worker trains in its own cache, the run copies back
        _, via_url = _fan_out(server, inputs, jobs, tmp_path / "by-url", "deployment", shared)
    except Exception:
        print(_tail(log))
        raise
    finally:
        _stop(worker)

    children = _client_call(
        server,
        lambda c: c.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[UUID(parent_id)])
            )
        ),
    )
    assert len(children) == len(jobs)
    for child in children:
        assert child.state.is_completed(), (child.name, child.state)
        assert child.work_pool_name == "sentio-process"
        artifacts = _client_call(
            server,
            lambda c, i=child.id: c.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[i]))
            ),
        )
        assert any(a.type == "progress" for a in artifacts), [a.type for a in artifacts]
    assert sorted(c.parameters["fold"] for c in children) == [f for f, _ in jobs]
    # the models are those the local executor trains, and the summaries came from storage
    _, local = _fan_out(server, inputs, jobs, tmp_path / "local", "local")
    assert [sha256_file(r["model"]) for r in runs] == [sha256_file(r["model"]) for r in local]
    assert all(Path(r["model"]).is_relative_to(wd) for r in runs)
    assert [sha256_file(r["model"]) for r in via_url] == [sha256_file(r["model"]) for r in local]
    for run in via_url:
        assert Path(run["model"]).is_relative_to((tmp_path / "by-url").resolve())
        assert (tmp_path / "w" / "train" / run["key"] / "model.zip").is_file()
        assert (tmp_path / "bucket" / "stages" / "train" / run["key"]).is_dir()
    assert any((tmp_path / "bucket" / "prefect-results").iterdir())  # results follow the root
