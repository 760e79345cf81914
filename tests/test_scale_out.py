"""The training fan-out on a real Dask cluster (``train.executor: dask``).

A ``distributed.LocalCluster`` of two worker processes, started and stopped by Prefect's
``DaskTaskRunner`` around the nested trainings flow, runs the (fold, seed) trainings of a
small run: the models are bit-identical to the local executor's (the local executor
trains each in a child process; a single-threaded Dask worker trains in its own process,
one after another), and a training either executor did is a cache hit for the other (the
key never names the executor). A daemonic worker of several threads (Dask's default
worker, which cannot start a training's process) fails the training with a message that
says how to start it.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, cast
from uuid import UUID

import pytest

from sentio.config import SentioConfig, config_from_dict
from sentio.io import sha256_file
from tests.conftest import SHORT_WINDOWS, minute_bars
from tests.test_flow import TERMINAL, _wait_for

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("restore_environ")]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The stage outputs the trainings read, built once through the library stages."""
    from sentio import stages

    base = tmp_path_factory.mktemp("scale-out")
    raw = base / "bars.feather"
    minute_bars("2024-01-08", "2024-01-10", seed=4, price=400.0).write_ipc(raw)
    cfg = config_from_dict(SHORT_WINDOWS)
    wd = base / "inputs"
    ingest = stages.ingest_stage([raw], cfg, wd)
    features = stages.features_stage(ingest["output"], cfg, wd)
    folds = stages.folds_stage(features["output"], cfg, wd)
    regimes = stages.regimes_stage(ingest["output"], folds["output"], cfg, wd)
    return {
        "paths": {
            "bars_path": ingest["output"],
            "features_path": features["output"],
            "folds_path": folds["output"],
            "regimes_path": regimes["output"],
        },
        # two seeds: with two workers, at least one of them trains twice in a row
        "jobs": [(fold, seed) for fold in range(folds["n_folds"]) for seed in (0, 1)],
    }


def config(executor: str) -> SentioConfig:
    """The small trainings' settings on ``executor``: two at a time either way."""
    train: dict[str, Any] = {**cast(dict[str, Any], SHORT_WINDOWS["train"])}
    train.update(max_parallel=2, executor=executor)
    return config_from_dict({**SHORT_WINDOWS, "train": train})


def fan_out(inputs: dict[str, Any], workdir: Path, executor: str) -> tuple[str, list[dict]]:
    """The run's fan-out inside a flow of its own (as the nightly flow calls it): its
    flow run id and the training summaries."""
    from prefect import flow
    from prefect.runtime import flow_run

    from flows.trainings import run_trainings

    cfg = config(executor)

    @flow(name="scale-out-test")
    def run() -> tuple[str, list[dict[str, Any]]]:
        params = {**inputs["paths"], "cfg": cfg, "workdir": str(workdir)}
        runs = run_trainings(
            inputs["jobs"],
            cfg=cfg,
            workdir=str(workdir),
            params=params,
            storage=str(workdir / "prefect-results"),
        )
        return str(flow_run.get_id()), runs

    return run()


def train_states(flow_run_id: str, n: int) -> list[str]:
    """The state names of the ``n`` training task runs under a flow run, its nested
    flow runs included, once all are final (task runs reach the API through events)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterParentFlowRunId,
        TaskRunFilter,
        TaskRunFilterFlowRunId,
    )

    def fetch() -> list[Any]:
        with get_client(sync_client=True) as client:
            nested = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[UUID(flow_run_id)])
                )
            )
            ids = [UUID(flow_run_id), *(r.id for r in nested)]
            runs = client.read_task_runs(
                task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=ids))
            )
        return [r for r in runs if r.name.startswith("train")]

    def ready(runs: list[Any]) -> bool:
        return len(runs) >= n and all(r.state and r.state.type.value in TERMINAL for r in runs)

    runs = _wait_for(fetch, ready)
    assert len(runs) == n, [r.name for r in runs]
    return sorted(r.state.name for r in runs)


def stray_processes() -> list[str]:
    """Processes this test process started with multiprocessing's ``spawn`` (Dask workers,
    trainings) that are still alive a few seconds after a fan-out."""
    import psutil

    def alive() -> list[str]:
        out = []
        for child in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):
                line = " ".join(child.cmdline())
                if "spawn_main" in line:
                    out.append(line)
        return out

    return _wait_for(alive, lambda found: not found, timeout=15.0)


def models(runs: list[dict[str, Any]]) -> list[tuple[int, int, str]]:
    return [(r["fold"], r["seed"], sha256_file(r["model"])) for r in runs]


def test_dask_trainings_equal_the_local_ones_and_share_their_cache(
    prefect_api: Path, inputs: dict[str, Any], tmp_path: Path
) -> None:
    n = len(inputs["jobs"])
    assert n >= 2
    on_dask, dask_runs = fan_out(inputs, tmp_path / "a", "dask")
    assert train_states(on_dask, n) == ["Completed"] * n
    on_local, local_runs = fan_out(inputs, tmp_path / "b", "local")
    assert train_states(on_local, n) == ["Completed"] * n
    # the same models, bit for bit, whichever executor trained them
    assert models(dask_runs) == models(local_runs)
    assert [r["key"] for r in dask_runs] == [r["key"] for r in local_runs]
    # a training one executor did is a cache hit for the other, both ways
    again_local, cached = fan_out(inputs, tmp_path / "a", "local")
    assert train_states(again_local, n) == ["Cached"] * n
    assert models(cached) == models(dask_runs)
    again_dask, cached = fan_out(inputs, tmp_path / "b", "dask")
    assert train_states(again_dask, n) == ["Cached"] * n
    assert models(cached) == models(local_runs)
    assert stray_processes() == []  # the LocalCluster's workers are gone with the fan-out


def test_a_daemonic_dask_worker_of_several_threads_says_how_to_start_it(
    prefect_api: Path, inputs: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dask's default workers are daemonic, and a worker of two threads must start a
    process per training: the training says what to change (and the failure shows that
    the trainings ran in the Dask workers, not in the flow)."""
    from prefect_dask import DaskTaskRunner

    import flows.trainings

    def two_threads(cfg: SentioConfig) -> DaskTaskRunner:
        kwargs = {"n_workers": 1, "threads_per_worker": 2, "dashboard_address": None}
        return DaskTaskRunner(cluster_kwargs=kwargs)

    monkeypatch.setattr(flows.trainings, "_non_daemonic_workers", contextlib.nullcontext)
    monkeypatch.setattr(flows.trainings, "_dask_runner", two_threads)
    with pytest.raises(Exception, match="--nthreads 1 or with DASK_DISTRIBUTED__WORKER__DAEMON"):
        fan_out(inputs, tmp_path / "c", "dask")
    assert stray_processes() == []


def test_the_runner_connects_to_the_scheduler_given_or_sizes_a_local_cluster() -> None:
    from flows.trainings import _dask_runner

    cfg = config("dask")
    local = _dask_runner(cfg)
    assert local.address is None
    kwargs = local.cluster_kwargs
    assert (kwargs["n_workers"], kwargs["threads_per_worker"], kwargs["processes"]) == (2, 1, True)
    assert kwargs["resources"] is None
    gpu = cfg.model_copy(
        update={"train": cfg.train.model_copy(update={"dask_resources": {"GPU": 1.0}})}
    )
    assert _dask_runner(gpu).cluster_kwargs["resources"] == {"GPU": 1.0}  # each worker one
    remote = cfg.model_copy(
        update={"train": cfg.train.model_copy(update={"dask_address": "tcp://10.0.0.5:8786"})}
    )
    assert _dask_runner(remote).address == "tcp://10.0.0.5:8786"


def test_storage_the_machines_do_not_share_is_a_clear_error(
    inputs: dict[str, Any], tmp_path: Path
) -> None:
    """Executor 'deployment': a worker that cannot see an input, and a run that cannot see
    what a worker trained, each fail with one message naming the path and the fix."""
    from flows.trainings import train_fold_flow
    from sentio.errors import ConfigError
    from tasks.train import summary_from_storage

    cfg = config("deployment")
    missing = {**inputs["paths"], "bars_path": str(tmp_path / "elsewhere" / "bars.feather")}
    with pytest.raises(ConfigError, match=r"bars_path .*elsewhere.* not reachable from this"):
        train_fold_flow.fn(0, 0, missing, cfg.model_dump(mode="json"), str(tmp_path))
    params = {**inputs["paths"], "cfg": cfg, "workdir": str(tmp_path / "empty")}
    with pytest.raises(ConfigError, match=r"flow run x completed, but its outputs are not in"):
        summary_from_storage(params, 0, 0, where="flow run x")


def test_a_worker_killed_mid_training_is_replaced_and_the_training_resumes(
    prefect_api: Path, inputs: dict[str, Any], tmp_path: Path
) -> None:
    """SIGKILL the Dask worker holding a training once it has checkpointed: Dask runs the
    task again on a worker, the training resumes from its checkpoint in the working
    directory, and the model is the one an uninterrupted training makes."""
    import os
    import signal
    import threading

    import psutil

    from flows.trainings import run_trainings

    def settings(executor: str) -> SentioConfig:
        train: dict[str, Any] = {**cast(dict[str, Any], SHORT_WINDOWS["train"])}
        train.update(total_timesteps=4096, checkpoint_every=256, max_parallel=2)
        train["executor"] = executor
        return config_from_dict({**SHORT_WINDOWS, "train": train})

    workdir = tmp_path / "killed"
    killed: list[int] = []

    def kill_the_worker_after_a_checkpoint() -> None:
        deadline = time.monotonic() + 120.0
        while time.monotonic() < deadline and not killed:
            staging = list((workdir / "train").glob(".*")) if (workdir / "train").is_dir() else []
            if any(p.name == "checkpoint.json" for d in staging for p in d.rglob("*")):
                workers = []
                for proc in psutil.Process().children():
                    with contextlib.suppress(psutil.Error):
                        if "spawn_main" in " ".join(proc.cmdline()):
                            workers.append((sum(proc.cpu_times()[:2]), proc.pid))
                if workers:
                    # the busy one trains (in its own process); the other one waits
                    os.kill(max(workers)[1], signal.SIGKILL)
                    killed.append(max(workers)[1])
                    return
            time.sleep(0.05)

    from prefect import flow

    @flow(name="scale-out-kill")
    def run(cfg: SentioConfig, where: Path) -> list[dict[str, Any]]:
        params = {**inputs["paths"], "cfg": cfg, "workdir": str(where)}
        return run_trainings(
            [(0, 0)], cfg=cfg, workdir=str(where), params=params, storage=str(where / "results")
        )

    killer = threading.Thread(target=kill_the_worker_after_a_checkpoint, daemon=True)
    killer.start()
    (resumed,) = run(settings("dask"), workdir)
    killer.join(timeout=1.0)
    assert killed, "no worker was killed: the training ended before its first checkpoint"
    assert resumed["train"]["resumed_from"] >= 256
    assert resumed["train"]["num_timesteps"] == 4096
    assert stray_processes() == []
    (whole,) = run(settings("local"), tmp_path / "whole")
    assert whole["train"]["resumed_from"] == 0
    assert sha256_file(resumed["model"]) == sha256_file(whole["model"])
