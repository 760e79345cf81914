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
import os
import time
from pathlib import Path
from typing import Any, cast
from uuid import UUID

import pytest

from sentio.config import SentioConfig, config_from_dict
from sentio.io import sha256_file
from tests.conftest import SHORT_WINDOWS, data_stages, minute_bars
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
    paths = data_stages(raw, cfg, base / "inputs")
    n_folds = len(stages.load_folds(paths[2])["folds"])
    names = ("bars_path", "features_path", "folds_path", "regimes_path")
    return {
        "paths": dict(zip(names, paths, strict=True)),
        # two seeds: with two workers, at least one of them trains twice in a row
        "jobs": [(fold, seed) for fold in range(n_folds) for seed in (0, 1)],
    }


def config(executor: str, storage: tuple[str, Path] | None = None) -> SentioConfig:
    """The small trainings' settings on ``executor``: two at a time either way; with
    ``storage`` = (URL, cache folder), through that shared storage."""
    train: dict[str, Any] = {**cast(dict[str, Any], SHORT_WINDOWS["train"])}
    train.update(max_parallel=2, executor=executor)
    paths = {} if storage is None else {"storage": storage[0], "storage_cache": str(storage[1])}
    return config_from_dict({**SHORT_WINDOWS, "train": train, "paths": paths})


def fan_out(
    inputs: dict[str, Any],
    workdir: Path,
    executor: str,
    storage: tuple[str, Path] | None = None,
) -> tuple[str, list[dict]]:
    """The run's fan-out inside a flow of its own (as the nightly flow calls it): its
    flow run id and the training summaries."""
    from prefect import flow
    from prefect.runtime import flow_run

    from flows.trainings import run_trainings

    cfg = config(executor, storage)

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
    trainings) or forked from its fork server (trainings) that are still alive a few
    seconds after a fan-out (the fork server itself lives as long as this process)."""
    import psutil

    def alive() -> list[str]:
        out = []
        for child in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):
                line = " ".join(child.cmdline())
                parent = child.parent()
                forked = parent is not None and "forkserver" in " ".join(parent.cmdline())
                if "spawn_main" in line or forked:
                    out.append(line)
        return out

    return _wait_for(alive, lambda found: not found, timeout=15.0)


def kill_the_busy_worker() -> list[int]:
    """SIGKILL the busiest of this process's Dask workers (the one training, in its own
    process; the other one waits): its pid, or nothing when there is no worker yet."""
    import os
    import signal

    import psutil

    workers = []
    for proc in psutil.Process().children():
        with contextlib.suppress(psutil.Error):
            if "spawn_main" in " ".join(proc.cmdline()):
                workers.append((sum(proc.cpu_times()[:2]), proc.pid))
    if not workers:
        return []
    os.kill(max(workers)[1], signal.SIGKILL)
    return [max(workers)[1]]


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
    import threading

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
                killed.extend(kill_the_busy_worker())
                if killed:
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


def keys_of(inputs: dict[str, Any], cfg: SentioConfig) -> list[str]:
    from sentio import stages

    paths = inputs["paths"]
    return [
        stages.train_key(
            paths["bars_path"],
            paths["features_path"],
            paths["folds_path"],
            paths["regimes_path"],
            cfg,
            fold,
            seed,
        )
        for fold, seed in inputs["jobs"]
    ]


def test_trainings_through_s3_equal_the_local_ones_and_any_run_reuses_them(
    prefect_api: Path,
    inputs: dict[str, Any],
    tmp_path: Path,
    s3_bucket: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``paths.storage`` on a real S3 API: the Dask workers train in their own cache from
    the inputs the run published, the run copies the trainings back from S3, the models
    equal the local executor's, and a training published there (by a run on Dask, or a
    local run's) is taken from the storage by the next run, whatever its executor."""
    import uuid

    import flows.trainings
    from sentio.storage import SharedStorage
    from sentio.storage_cache import CACHE_MARK

    n = len(inputs["jobs"])
    url, cache = f"{s3_bucket}/{uuid.uuid4().hex}", tmp_path / "worker-cache"
    # last night's copies, unused for longer than paths.storage_cache_days
    stale = cache / "features" / "last-nights-key"
    stale.mkdir(parents=True)
    (stale / "features.feather").write_bytes(b"old")
    os.utime(stale, (time.time() - 8 * 86_400.0,) * 2)
    on_dask, dask_runs = fan_out(inputs, tmp_path / "a", "dask", storage=(url, cache))
    assert train_states(on_dask, n) == ["Completed"] * n
    assert not stale.exists(), "the worker did not prune its storage cache"
    assert (cache / CACHE_MARK).is_file()
    store = SharedStorage(url)
    keys = keys_of(inputs, config("dask"))
    assert [r["key"] for r in dask_runs] == keys
    for run in dask_runs:  # trained in the workers' cache, copied here through S3
        assert (cache / "train" / run["key"] / "model.zip").is_file()
        assert Path(run["model"]).is_relative_to((tmp_path / "a").resolve())
        assert store.has_stage("train", run["key"])
    for name in ("bars_path", "features_path", "folds_path", "regimes_path"):
        folder = Path(inputs["paths"][name]).parent
        assert store.has_stage(folder.parent.name, folder.name), name
        assert (cache / folder.parent.name / folder.name).is_dir(), name  # in use: kept
    assert store.fs.find(f"{store.root}/prefect-results"), "no Prefect results in the storage"
    assert store.fs.find(f"{store.root}/checkpoints") == []  # dropped once published
    on_local, local_runs = fan_out(inputs, tmp_path / "b", "local")
    assert train_states(on_local, n) == ["Completed"] * n
    assert models(dask_runs) == models(local_runs)

    def no_training(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a training ran although the storage or the workdir has it")

    monkeypatch.setattr(flows.trainings, "train_all", no_training)
    monkeypatch.setattr(flows.trainings, "trainings_flow", no_training)
    # a local run elsewhere takes every training from the storage
    _, reused = fan_out(inputs, tmp_path / "c", "local", storage=(url, tmp_path / "unused"))
    assert models(reused) == models(dask_runs)
    assert all(Path(r["model"]).is_relative_to((tmp_path / "c").resolve()) for r in reused)
    # a local run's trainings (workdir b) are published by its next run with storage...
    other = f"{s3_bucket}/{uuid.uuid4().hex}"
    fan_out(inputs, tmp_path / "b", "dask", storage=(other, tmp_path / "cache-2"))
    assert all(SharedStorage(other).has_stage("train", key) for key in keys)
    # ...and a Dask run on another workdir takes them from there
    _, reused = fan_out(inputs, tmp_path / "d", "dask", storage=(other, tmp_path / "cache-3"))
    assert models(reused) == models(local_runs)
    assert stray_processes() == []


def test_a_killed_worker_s_training_resumes_elsewhere_from_the_storage_checkpoint(
    prefect_api: Path, inputs: dict[str, Any], tmp_path: Path, s3_bucket: str
) -> None:
    """SIGKILL the Dask worker training through S3 once a checkpoint is in the storage and
    delete what it had locally (as if the retry ran on another machine): the training
    resumes from the storage's checkpoint, and the model is an uninterrupted training's."""
    import shutil
    import threading
    import uuid

    from prefect import flow

    from flows.trainings import run_trainings
    from sentio import stages
    from sentio.storage import SharedStorage

    url, cache = f"{s3_bucket}/{uuid.uuid4().hex}", tmp_path / "worker-cache"

    def settings(executor: str, storage: bool) -> SentioConfig:
        train: dict[str, Any] = {**cast(dict[str, Any], SHORT_WINDOWS["train"])}
        train.update(total_timesteps=4096, checkpoint_every=256, max_parallel=2)
        train["executor"] = executor
        paths = {"storage": url, "storage_cache": str(cache)} if storage else {}
        return config_from_dict({**SHORT_WINDOWS, "train": train, "paths": paths})

    (key,) = keys_of({**inputs, "jobs": [(0, 0)]}, settings("dask", True))
    killed: list[int] = []

    def kill_once_the_storage_has_a_checkpoint() -> None:
        store = SharedStorage(url)
        deadline = time.monotonic() + 180.0
        while time.monotonic() < deadline and not killed:
            if store.latest_checkpoint(key) is not None:
                killed.extend(kill_the_busy_worker())
                if killed:
                    # the machine is gone: nothing of its own checkpoints is left
                    shutil.rmtree(cache / "train" / stages.training_staging(key))
                    return
            time.sleep(0.05)

    @flow(name="scale-out-storage-kill")
    def run(cfg: SentioConfig, where: Path) -> list[dict[str, Any]]:
        params = {**inputs["paths"], "cfg": cfg, "workdir": str(where)}
        return run_trainings(
            [(0, 0)], cfg=cfg, workdir=str(where), params=params, storage=str(where / "results")
        )

    killer = threading.Thread(target=kill_once_the_storage_has_a_checkpoint, daemon=True)
    killer.start()
    (resumed,) = run(settings("dask", True), tmp_path / "killed")
    killer.join(timeout=1.0)
    assert killed, "no worker was killed: the training ended before a checkpoint was stored"
    assert resumed["train"]["resumed_from"] >= 256
    assert resumed["train"]["num_timesteps"] == 4096
    assert SharedStorage(url)._checkpoint_steps(key) == []
    assert stray_processes() == []
    (whole,) = run(settings("local", False), tmp_path / "whole")
    assert whole["train"]["resumed_from"] == 0
    assert sha256_file(resumed["model"]) == sha256_file(whole["model"])


def test_failed_training_flow_runs_are_one_line_with_their_cause() -> None:
    """Trainings on pool workers that fail: the parent's error names each run, its state
    and the worker's exception, of that exception's class when all share one of
    sentio.errors (so ``sentio run`` exits as it would locally)."""
    from types import SimpleNamespace

    from flows.trainings import training_runs_failed
    from sentio.errors import SentioError, StorageError

    def run(name: str, state: str, message: str | None) -> Any:
        return SimpleNamespace(name=name, state=SimpleNamespace(name=state, message=message))

    cause = "Flow run encountered an exception: StorageError: storage s3://b/p: cannot list"
    both = training_runs_failed(
        [run("a-1", "Failed", cause), run("b-2", "Failed", cause.replace("list", "copy"))],
        4,
        "train-fold/sentio-process",
    )
    assert type(both) is StorageError and both.exit_code == 10
    assert str(both) == (
        "train: 2 of 4 training flow runs of train-fold/sentio-process did not complete: "
        f"a-1 (Failed: {cause}); b-2 (Failed: {cause.replace('list', 'copy')})"
    )
    mixed = training_runs_failed(
        [
            run("a-1", "Failed", cause),
            run("c-3", "Crashed", "Flow run infrastructure exited with non-zero status code -9."),
            SimpleNamespace(name="d-4", state=None),
        ],
        4,
        "train-fold/sentio-process",
    )
    assert type(mixed) is SentioError and "\n" not in str(mixed)
    assert "c-3 (Crashed: Flow run infrastructure exited" in str(mixed)
    assert str(mixed).endswith("d-4 (no state)")
    foreign = training_runs_failed(
        [run("e-5", "Failed", "Flow run encountered an exception: ValueError: " + "x" * 400)],
        1,
        "t",
    )
    assert type(foreign) is SentioError and str(foreign).endswith("...)")
