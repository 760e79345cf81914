"""The nightly flow under Prefect: content-hash caching, retries, artifacts, deployments.

One temporary Prefect API (``prefect_test_harness``: a SQLite database and a server
subprocess, a few seconds to start) is shared by the whole module; every test has its
own workdir, so cached results of one test never leak into another. The inputs are a
few hand-written regular-hours sessions of QQQ: nothing depends on the synthetic
market generator.
"""

from __future__ import annotations

import errno
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import UUID

import polars as pl
import pytest
import yaml

from sentio.errors import ConfigError, ContractError, ResourceError, SentioError
from tests.conftest import SHORT_WINDOWS, STORAGE_ENV, minute_bars

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("restore_environ")]

REPO = Path(__file__).resolve().parents[1]
SESSIONS = ("2024-01-08", "2024-01-09", "2024-01-10")  # Mon-Wed, no holiday, winter (UTC-5)
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def write_bars(path: Path, seed: int = 0, *, broken_ohlc: bool = False) -> Path:
    """Canonical one-minute QQQ bars of three sessions (tests.conftest.minute_bars).

    ``broken_ohlc`` puts the high below the low in every 10th bar: 10% bad rows, far
    past the default quarantine limit (1%), a data-contract violation.
    """
    frame = minute_bars(SESSIONS[0], SESSIONS[-1], seed=seed, price=400.0)
    if broken_ohlc:
        bad = pl.int_range(pl.len()) % 10 == 0
        frame = frame.with_columns(high=pl.when(bad).then(pl.col("low") * 0.99).otherwise("high"))
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.write_ipc(path)
    return path


@pytest.fixture
def project(tmp_path: Path) -> dict[str, Path]:
    """A workdir, a config that points at it and one small input file."""
    workdir = tmp_path / "wd"
    config = tmp_path / "sentio.yaml"
    # a gate any model with a defined DSR passes, so that the first run sets a champion,
    # and a comparison window short enough for one session
    registry = {"min_dsr": 0.0, "max_drawdown": 1.0, "min_compare_bars": 60}
    config.write_text(
        yaml.safe_dump({"paths": {"workdir": str(workdir)}, **SHORT_WINDOWS, "registry": registry})
    )
    return {
        "workdir": workdir,
        "config": config,
        "bars": write_bars(tmp_path / "in" / "bars.feather"),
    }


def _wait_for(fetch: Callable[[], Any], ready: Callable[[Any], bool], timeout: float = 30.0) -> Any:
    """Poll ``fetch()`` until ``ready(value)``: task runs reach the API through events."""
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if ready(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


def task_runs(flow_run_id: str | UUID, name_prefix: str, count: int = 1) -> list[Any]:
    """The ``count`` task runs of a flow run named ``name_prefix...``, once all are final."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterFlowRunId

    flt = TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[UUID(str(flow_run_id))]))

    def fetch() -> list[Any]:
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(task_run_filter=flt)
        return [r for r in runs if r.name.startswith(name_prefix)]

    def ready(runs: list[Any]) -> bool:
        return len(runs) >= count and all(r.state and r.state.type.value in TERMINAL for r in runs)

    return _wait_for(fetch, ready)


def artifacts_of(flow_run_id: str | UUID) -> dict[str, Any]:
    """The artifacts of a flow run, keyed by artifact key."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    flt = ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[UUID(str(flow_run_id))]))
    with get_client(sync_client=True) as client:
        return {str(a.key): a for a in client.read_artifacts(artifact_filter=flt)}


# --------------------------------------------------------------------------- cache


def test_cache_hits_on_unchanged_content_and_misses_on_new_content(
    prefect_api: Path, project: dict[str, Path]
) -> None:
    from flows.nightly import nightly_flow

    args = {"data_path": str(project["bars"]), "config_path": str(project["config"])}
    first = nightly_flow(**args)
    second = nightly_flow(**args)

    (run1,) = task_runs(first["flow_run_id"], "ingest")
    (run2,) = task_runs(second["flow_run_id"], "ingest")
    assert run1.state.name == "Completed"
    assert run2.state.name == "Cached"
    assert second["stages"]["ingest"] == first["stages"]["ingest"]
    # the features and regime stages are cached on the content of the bars too
    for stage in ("features", "folds", "regimes"):
        (a,) = task_runs(first["flow_run_id"], stage)
        (b,) = task_runs(second["flow_run_id"], stage)
        assert (a.state.name, b.state.name) == ("Completed", "Cached"), stage
        assert second["stages"][stage] == first["stages"][stage]
        assert Path(first["stages"][stage]["output"]).is_file()
    # one training per fold and seed, cached on the content of everything it reads
    a_runs = task_runs(first["flow_run_id"], "train")
    b_runs = task_runs(second["flow_run_id"], "train")
    assert sorted(r.state.name for r in a_runs) == ["Completed", "Completed"]
    assert sorted(r.state.name for r in b_runs) == ["Cached", "Cached"]
    runs = first["stages"]["train"]["runs"]
    assert [(r["fold"], r["seed"]) for r in runs] == [(0, 0), (1, 0)]
    assert second["stages"]["train"] == first["stages"]["train"]
    for run in runs:
        assert Path(run["model"]).is_file() and run["test_bars"] > 0
        assert run["train"]["num_timesteps"] >= 128
        # regimes on, real-looking bars (no generator truth): every causal reference, no oracle
        assert set(run["references"]) == {
            "flat",
            "long_etf",
            "trend",
            "fast_trend",
            "regime_rule",
            "underlying",
        }
        assert run["references"]["flat"]["total_return"] == 0.0
    # the report is recomputed by every run (it holds the run's profile), in the run folder
    for record in (first, second):
        reports = task_runs(record["flow_run_id"], "report", count=2)
        (rep,) = [r for r in reports if not r.name.startswith("report-registry-decision")]
        (decision,) = [r for r in reports if r.name.startswith("report-registry-decision")]
        assert decision.state.name == "Completed"
        assert rep.state.name == "Completed"
        report = record["stages"]["report"]
        html = Path(report["paths"]["html"])
        assert html.is_file() and html.parent.parent == Path(record["run_dir"])
        assert report["n_runs"] == 2 and report["verdict"]
        metrics = json.loads(Path(report["paths"]["metrics"]).read_text())
        assert metrics["profile"]["training steps (total)"] >= 256
        assert metrics["profile"]["report (s)"] > 0  # the report's own time is in it
    out = Path(first["stages"]["ingest"]["output"])
    assert out.is_file() and out.is_relative_to(project["workdir"])

    # the run ends with the registry stage: every model a version, the candidate gated
    from sentio.registry import Registry

    registry = Registry(project["workdir"] / "registry")
    reg1, reg2 = first["stages"]["registry"], second["stages"]["registry"]
    assert list(first["stages"])[-1] == "registry"
    assert reg1["new_versions"] == 2 and len(registry.list()) == 2
    by_run = {(v["fold"], v["seed"]): v["version"] for v in reg1["versions"]}
    for run in runs:
        v = registry.get(by_run[(run["fold"], run["seed"])])
        assert v.manifest["extra"]["train_key"] == run["key"]
        assert v.manifest["extra"]["run"] == first["flow_run_name"]
        assert {"model.zip", "config.yaml", "regime_model.json"} <= set(v.manifest["files"])
        registry.verify(v.version)
    # k-fold over two blocks: fold 1 tests the later block, so it is the candidate
    assert reg1["candidate"] == by_run[(1, 0)] and reg1["champion_before"] is None
    assert reg1["candidate_metrics"]["dsr"] is not None, reg1["reasons"]
    assert reg1["promoted"] and reg1["champion_after"] == reg1["candidate"], reg1["reasons"]
    assert Path(reg1["output"]) == Path(first["run_dir"]) / "registry" / "decision.json"
    assert json.loads(Path(reg1["output"]).read_text()) == reg1
    # unchanged inputs: no new version, the same champion, nothing written to the registry
    assert reg2["new_versions"] == 0 and reg2["registered"] == reg1["registered"]
    assert reg2["champion_before"] == reg2["champion_after"] == reg1["champion_after"]
    assert not reg2["promoted"] and "already the champion" in reg2["reasons"][0]
    assert [h["action"] for h in registry.history()] == ["promote"]
    for record in (first, second):  # never cached: it reads the mutable registry
        (task_run,) = task_runs(record["flow_run_id"], "registry")
        assert task_run.state.name == "Completed"

    # results and cache records are persisted under the project's workdir, not ~/.prefect
    results = project["workdir"] / "prefect-results"
    assert results.is_dir() and any(results.iterdir())

    # each run has its own folder with the run's config and the stage summaries
    for record in (first, second):
        folder = Path(record["run_dir"])
        assert folder.parent == project["workdir"] / "runs"
        assert (folder / "config.yaml").is_file()
        saved = yaml.safe_load((folder / "run.json").read_text())  # JSON is YAML
        assert saved["status"] == "completed"
        assert saved["stages"]["ingest"]["key"] == first["stages"]["ingest"]["key"]
    assert first["run_dir"] != second["run_dir"]

    # the artifacts of every run, cached or not
    for record in (first, second):
        arts = artifacts_of(record["flow_run_id"])
        assert {"data-quality", "ingest-summary"} <= set(arts)
        assert "Data quality" in arts["data-quality"].data
        rows = {r["metric"]: r["value"] for r in json.loads(arts["ingest-summary"].data)}
        assert rows["rows read"] == 3 * 390 and rows["rows kept"] == 3 * 390
        assert rows["symbols"] == "QQQ, SQQQ, TQQQ"
        features = json.loads(arts["feature-summary"].data)
        assert [r["column"] for r in features] == first["stages"]["features"]["columns"]
        regimes = json.loads(arts["regime-summary"].data)
        n_states, n_folds = (first["stages"]["regimes"][k] for k in ("n_states", "n_folds"))
        assert n_folds == first["stages"]["folds"]["n_folds"] == 2
        assert [(r["fold"], r["regime"]) for r in regimes] == [
            (f, k) for f in range(n_folds) for k in range(n_states)
        ]
        for f in range(n_folds):
            share = sum(r["share of test bars"] for r in regimes if r["fold"] == f)
            assert abs(share - 1) < 1e-4
        assert {r["method"] for r in regimes} == {
            f["method"] for f in first["stages"]["regimes"]["folds"]
        }
        assert record["stages"]["report"]["verdict"] in arts["report"].data
        assert "(file://" in arts["report-html"].data and "report.html" in arts["report-html"].data
        training = json.loads(arts["training"].data)
        assert [(r["fold"], r["seed"]) for r in training] == [(0, 0), (1, 0)]
        assert all(r["test bars"] > 0 and r["steps"] >= 128 for r in training)
        folds = json.loads(arts["folds"].data)
        assert [r["fold"] for r in folds] == [0, 1]
        assert all(r["train rows"] > 0 and r["test rows"] > 0 for r in folds)
        assert folds[0]["test to"] < folds[1]["test from"]
        decision = record["stages"]["registry"]
        assert decision["candidate"] in arts["registry-decision"].data
        versions = json.loads(arts["registry-versions"].data)
        assert [r["version"] for r in versions] == decision["registered"]

    # same path, new content: the key changes and the task recomputes
    write_bars(project["bars"], seed=1)
    third = nightly_flow(**args)
    (run3,) = task_runs(third["flow_run_id"], "ingest")
    assert run3.state.name == "Completed"
    for stage in ("features", "folds", "regimes"):
        (c,) = task_runs(third["flow_run_id"], stage)
        assert c.state.name == "Completed", stage
    assert third["stages"]["ingest"]["key"] != first["stages"]["ingest"]["key"]
    assert third["stages"]["ingest"]["output_sha256"] != first["stages"]["ingest"]["output_sha256"]
    # new data, new models: two new versions, gated against the first run's champion
    # re-evaluated (sentio.live) on the new candidate's test block after its own training
    # end (20:58 on the 9th; the 20:59 bar is purged) plus the 30-bar embargo: the
    # 20:59 bar of the 9th and 29 bars of the 10th are skipped
    from sentio.evaluation import metrics_to_json
    from sentio.live import load_bundle

    reg3 = third["stages"]["registry"]
    champion = reg1["champion_after"]
    assert reg3["new_versions"] == 2 and len(registry.list()) == 4
    assert reg3["champion_before"] == champion
    assert registry.get(champion).manifest["extra"]["train_end"] == "2024-01-09T20:58:00+00:00"
    window = ["2024-01-10T14:59:00+00:00", "2024-01-10T20:59:00+00:00"]
    assert reg3["compare_window"] == window and reg3["compare_bars"] == 361
    bars3 = pl.read_ipc(third["stages"]["ingest"]["output"])
    for version, metrics in (
        (reg3["candidate"], reg3["candidate_metrics"]),
        (champion, reg3["champion_metrics"]),
    ):
        assert [metrics["window_start"], metrics["window_end"]] == window
        again = metrics_to_json(load_bundle(registry, version).backtest(bars3, *window).metrics())
        assert metrics["sharpe"] == pytest.approx(again["sharpe"]), version
    cand_s, champ_s = reg3["candidate_metrics"]["sharpe"], reg3["champion_metrics"]["sharpe"]
    assert reg3["promoted"] == (cand_s > champ_s), reg3["reasons"]
    assert reg3["champion_after"] == (reg3["candidate"] if reg3["promoted"] else champion)
    last = registry.history()[-1]
    assert last["action"] == ("promote" if reg3["promoted"] else "reject")
    assert last["window"] == window


def test_removed_outputs_are_rebuilt_not_served_from_cache(
    prefect_api: Path, project: dict[str, Path]
) -> None:
    import shutil

    from flows.nightly import nightly_flow

    args = {"data_path": str(project["bars"]), "config_path": str(project["config"])}
    first = nightly_flow(**args)
    shutil.rmtree(project["workdir"] / "ingest")
    second = nightly_flow(**args)
    # the cache hit names a deleted file, so the task is run again with refresh_cache
    runs = task_runs(second["flow_run_id"], "ingest", count=2)
    assert sorted(r.state.name for r in runs) == ["Cached", "Completed"]
    assert Path(second["stages"]["ingest"]["output"]).is_file()
    assert second["stages"]["ingest"]["output_sha256"] == first["stages"]["ingest"]["output_sha256"]


# --------------------------------------------------------------------------- retries


@pytest.fixture
def no_retry_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the retry policy but drop its delays."""
    import flows.nightly
    from tasks.ingest import ingest_task

    monkeypatch.setattr(
        flows.nightly, "ingest_task", ingest_task.with_options(retry_delay_seconds=0)
    )


def test_contract_violation_is_not_retried(
    prefect_api: Path, project: dict[str, Path], no_retry_delay: None
) -> None:
    from flows.nightly import nightly_flow

    write_bars(project["bars"], broken_ohlc=True)

    state = nightly_flow(
        data_path=str(project["bars"]), config_path=str(project["config"]), return_state=True
    )
    assert state.is_failed()
    with pytest.raises(ContractError):
        state.result()
    assert state.state_details.flow_run_id is not None
    (run,) = task_runs(state.state_details.flow_run_id, "ingest")
    assert run.state.type.value == "FAILED"
    assert run.run_count == 1

    (folder,) = (project["workdir"] / "runs").iterdir()
    saved = yaml.safe_load((folder / "run.json").read_text())
    assert saved["status"] == "failed"
    assert saved["error"].startswith("QuarantineLimitError") and "high_below_low" in saved["error"]


def test_missing_input_fails_the_run_with_a_record(
    prefect_api: Path, project: dict[str, Path]
) -> None:
    from flows.nightly import nightly_flow

    missing = project["bars"].with_name("nope.feather")
    # no config file: the defaults, with the workdir given as a flow parameter
    state = nightly_flow(data_path=str(missing), workdir=str(project["workdir"]), return_state=True)
    assert state.is_failed()
    (folder,) = (project["workdir"] / "runs").iterdir()
    saved = yaml.safe_load((folder / "run.json").read_text())
    assert saved["status"] == "failed" and saved["error"] == f"DataError: {missing}: file not found"
    config = yaml.safe_load((folder / "config.yaml").read_text())
    assert config["paths"]["workdir"] == str(project["workdir"])


def test_io_error_is_retried(
    prefect_api: Path,
    project: dict[str, Path],
    no_retry_delay: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from flows.nightly import nightly_flow
    from sentio import stages

    real = stages.ingest_stage
    calls: list[int] = []

    def flaky(*args: Any, **kwargs: Any) -> dict[str, Any]:
        calls.append(1)
        if len(calls) == 1:
            raise OSError(5, "Input/output error (simulated network share hiccup)")
        return real(*args, **kwargs)

    monkeypatch.setattr(stages, "ingest_stage", flaky)
    record = nightly_flow(data_path=str(project["bars"]), config_path=str(project["config"]))
    (run,) = task_runs(record["flow_run_id"], "ingest")
    assert run.state.name == "Completed"
    assert run.run_count == 2 and len(calls) == 2
    assert Path(record["stages"]["ingest"]["output"]).is_file()


def test_retry_condition_separates_io_from_data_errors() -> None:
    from prefect.states import Failed

    from tasks.caching import retry_on_io_error
    from tasks.ingest import ingest_task

    def retried(exc: BaseException) -> bool:
        return retry_on_io_error(ingest_task, None, Failed(data=exc))  # type: ignore[arg-type]

    assert retried(OSError("disk"))
    assert retried(FileNotFoundError("gone"))
    assert not retried(ContractError("x: high < low"))
    assert not retried(SentioError("bad data"))
    assert not retried(ValueError("bug"))
    assert ingest_task.retries >= 1 and ingest_task.retry_condition_fn is retry_on_io_error
    # a full disk is never retried, in whatever form it comes
    assert not retried(OSError(errno.ENOSPC, "No space left on device"))
    assert not retried(OSError("No space left on device (os error 28)"))
    assert not retried(ResourceError("x: no space left on the device"))


def test_training_retries_crashes_but_not_user_errors_or_a_full_disk() -> None:
    from prefect.states import Failed

    from sentio.processes import ChildProcessFailed
    from tasks.train import retry_unless_user_error, train_task

    def retried(exc: BaseException) -> bool:
        return retry_unless_user_error(train_task, None, Failed(data=exc))  # type: ignore[arg-type]

    assert retried(ChildProcessFailed("sentio-train_stage ended without a result: killed"))
    assert retried(RuntimeError("a bug or a crash: resume from the checkpoint"))
    assert not retried(ResourceError("the machine ran out of memory"))
    assert not retried(OSError(errno.ENOSPC, "No space left on device"))
    assert not retried(ConfigError("agent.batch_size"))
    assert train_task.retries >= 1 and train_task.retry_condition_fn is retry_unless_user_error


# --------------------------------------------------------------------------- settings


def test_prefect_env_defaults_keep_explicit_values(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from sentio.orchestration import prefect_env_defaults, task_result_storage

    for name in (*STORAGE_ENV, "DO_NOT_TRACK", "PREFECT_SERVER_ANALYTICS_ENABLED"):
        monkeypatch.setenv(name, "placeholder")  # recorded, so the test restores them
        monkeypatch.delenv(name)
    ours = str((tmp_path / "wd" / "prefect-results").resolve())
    env = prefect_env_defaults(tmp_path / "wd")
    assert env == {
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_RESULTS_LOCAL_STORAGE_PATH": ours,
    }
    assert all(os.environ[k] == v for k, v in env.items())
    # a default Sentio set follows the workdir of the next run; it is not a user choice
    assert task_result_storage(tmp_path / "b") == (tmp_path / "b" / "prefect-results").resolve()
    assert os.environ["PREFECT_RESULTS_LOCAL_STORAGE_PATH"] == str(
        (tmp_path / "b" / "prefect-results").resolve()
    )

    # explicit user values win, including the legacy alias of the storage path
    monkeypatch.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "true")
    monkeypatch.delenv("PREFECT_RESULTS_LOCAL_STORAGE_PATH")
    monkeypatch.setenv("PREFECT_LOCAL_STORAGE_PATH", str(tmp_path / "mine"))
    env = prefect_env_defaults(tmp_path / "other")
    assert env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "true"
    assert env["PREFECT_RESULTS_LOCAL_STORAGE_PATH"] == str(tmp_path / "mine")
    assert "PREFECT_RESULTS_LOCAL_STORAGE_PATH" not in os.environ  # would shadow the alias
    assert task_result_storage(tmp_path / "other") == (tmp_path / "mine").resolve()
    monkeypatch.setenv("PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK", "s3-bucket/results")
    assert task_result_storage(tmp_path / "other") is None


# --------------------------------------------------------------------------- deployments


def test_served_deployments_and_prefect_yaml_agree() -> None:
    from flows.serve import (
        MANUAL_DEPLOYMENT,
        NIGHTLY_CRON,
        NIGHTLY_DEPLOYMENT,
        NIGHTLY_TIMEZONE,
        PAPER_CRON,
        PAPER_DEPLOYMENT,
        PAPER_TIMEZONE,
        build_deployments,
        build_paper_deployment,
    )

    nightly, manual = build_deployments("data/x.feather", "cfg.yaml")
    assert (nightly.name, manual.name) == (NIGHTLY_DEPLOYMENT, MANUAL_DEPLOYMENT)
    (schedule,) = nightly.schedules or []
    cron: Any = schedule.schedule
    assert (cron.cron, cron.timezone) == (NIGHTLY_CRON, NIGHTLY_TIMEZONE)
    assert not manual.schedules
    for dep in (nightly, manual):
        assert dep.flow_name == "nightly-retrain"
        assert dep.parameters == {"data_path": "data/x.feather", "config_path": "cfg.yaml"}
        assert dep.entrypoint == "flows.nightly.nightly_flow"

    paper = build_paper_deployment("data/x.feather", "cfg.yaml")
    (pschedule,) = paper.schedules or []
    pcron: Any = pschedule.schedule
    assert (pcron.cron, pcron.timezone) == (PAPER_CRON, PAPER_TIMEZONE)
    assert (paper.name, paper.flow_name) == (PAPER_DEPLOYMENT, "paper-trading")
    assert paper.entrypoint == "flows.paper.paper_flow"

    spec = yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text())
    deps = {d["name"]: d for d in spec["deployments"]}
    assert set(deps) == {NIGHTLY_DEPLOYMENT, MANUAL_DEPLOYMENT, PAPER_DEPLOYMENT, "train-fold"}
    (yschedule,) = deps[NIGHTLY_DEPLOYMENT]["schedules"]
    assert (yschedule["cron"], yschedule["timezone"]) == (NIGHTLY_CRON, NIGHTLY_TIMEZONE)
    assert not deps[MANUAL_DEPLOYMENT].get("schedules")
    (ypaper,) = deps[PAPER_DEPLOYMENT]["schedules"]
    assert (ypaper["cron"], ypaper["timezone"]) == (PAPER_CRON, PAPER_TIMEZONE)
    entry = {
        NIGHTLY_DEPLOYMENT: "flows/nightly.py:nightly_flow",
        MANUAL_DEPLOYMENT: "flows/nightly.py:nightly_flow",
        PAPER_DEPLOYMENT: "flows/paper.py:paper_flow",
        "train-fold": "flows/trainings.py:train_fold_flow",
    }
    for name, dep in deps.items():
        assert dep["entrypoint"] == entry[name]
        assert dep["work_pool"]["name"] == "sentio-process"
        if name != "train-fold":  # started by a run with its own parameters
            assert set(dep["parameters"]) == {"data_path", "config_path"}
    # the deployment executor's default names this deployment
    from flows.trainings import TRAIN_FOLD_FLOW
    from sentio.config import SentioConfig

    assert SentioConfig().train.deployment == f"{TRAIN_FOLD_FLOW}/train-fold"
    (pull,) = spec["pull"]
    assert "prefect.deployments.steps.set_working_directory" in pull


def test_training_table_names_the_device_the_rollout_path_and_the_environments() -> None:
    from sentio.orchestration import train_table

    run = {
        "fold": 0,
        "seed": 1,
        "train": {
            "num_timesteps": 4096,
            "steps_per_second": 1234.56,
            "device": "cpu",
            "rollout": "device",
            "n_envs": 64,
        },
        "metrics": {"sharpe": 0.5},
        "references": {},
    }
    (row,) = train_table({"runs": [run]})
    assert (row["device"], row["rollout"], row["envs"], row["steps/s"]) == (
        "cpu",
        "device",
        64,
        1234.6,
    )
    assert row["warm start"] == "cold"
    warm = {"version": "v1", "applies": True, "reason": "starts from the champion v1"}
    cold = {"version": "v1", "applies": False, "reason": "leakage: test block from x"}
    rows = train_table({"runs": [{**run, "warm_start": warm}, {**run, "warm_start": cold}]})
    assert [r["warm start"] for r in rows] == ["from v1", "cold: leakage: test block from x"]
