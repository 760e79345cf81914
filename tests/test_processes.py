"""A training's own process (sentio.processes): forked from a single-threaded fork server
that has the heavy libraries loaded, or spawned, with the same result either way."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

from sentio import processes, stages
from sentio.config import config_from_dict
from sentio.errors import ConfigError
from sentio.io import sha256_file
from tests.conftest import SHORT_WINDOWS, minute_bars

needs_fork_server = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the fork server is used on Linux only"
)


def _child_view(progress: Any = None) -> dict[str, Any]:
    """What a child sees: who forked it, its environment and torch's threads."""
    import torch

    if progress is not None:
        progress(1, 2)
    return {
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "mark": os.environ.get("SENTIO_TEST_MARK"),
        "omp": os.environ.get("OMP_NUM_THREADS"),
        "torch_threads": torch.get_num_threads(),
    }


def _server_pid() -> int:
    from multiprocessing import forkserver

    pid = forkserver._forkserver._forkserver_pid  # type: ignore[attr-defined]
    assert pid is not None
    return int(pid)


@needs_fork_server
def test_children_fork_from_a_single_threaded_server_with_the_caller_s_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(processes.START_ENV, raising=False)
    threads = processes._server_threads or 1
    assert processes.start_fork_server(threads)
    server = _server_pid()
    # set after the server started: a child must still see it, as a spawned one would
    monkeypatch.setenv("SENTIO_TEST_MARK", "after-the-server")
    seen: list[tuple[int, int]] = []
    view = processes.call_in_process(
        _child_view, threads=threads, progress=lambda done, total: seen.append((done, total))
    )
    assert view["ppid"] == server and view["pid"] != os.getpid()
    assert view["mark"] == "after-the-server"
    assert view["omp"] == str(threads) and view["torch_threads"] == threads
    assert seen == [(1, 2)]
    # the server: one thread (safe to fork), capped, torch loaded but none of Sentio's code
    assert len(os.listdir(f"/proc/{server}/task")) == 1
    env = dict(
        item.split("=", 1)
        for item in Path(f"/proc/{server}/environ").read_text().split("\0")
        if "=" in item
    )
    assert all(env.get(name) == str(threads) for name in processes._THREAD_ENV)
    assert "SENTIO_TEST_MARK" not in env
    # nothing that is not fork-safe or that must be read fresh from disk is preloaded
    unsafe = {"sentio", "polars", "pyarrow", "pandas"}
    assert not {name.split(".")[0] for name in processes.FORK_SERVER_PRELOAD} & unsafe

    # another thread count than the server's: spawned (a fresh interpreter), capped alike
    other = threads + 1
    assert not processes.start_fork_server(other)
    spawned = processes.call_in_process(_child_view, threads=other)
    assert spawned["ppid"] == os.getpid()
    assert spawned["omp"] == str(other) and spawned["torch_threads"] == other
    assert spawned["mark"] == "after-the-server"


def test_an_unknown_start_method_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(processes.START_ENV, "fork")
    with pytest.raises(ConfigError, match="SENTIO_CHILD_START='fork'"):
        processes.call_in_process(_child_view)


@needs_fork_server
def test_a_forked_training_equals_a_spawned_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The fork server changes how fast a training starts, never what it computes."""
    bars = tmp_path / "bars.feather"
    minute_bars("2024-01-08", "2024-01-10", seed=5, price=300.0).write_ipc(bars)
    cfg = config_from_dict(SHORT_WINDOWS)
    wd = tmp_path / "inputs"
    ingest = stages.ingest_stage([bars], cfg, wd)
    features = stages.features_stage(ingest["output"], cfg, wd)
    folds = stages.folds_stage(features["output"], cfg, wd)
    regimes = stages.regimes_stage(ingest["output"], folds["output"], cfg, wd)
    args = (ingest["output"], features["output"], folds["output"], regimes["output"])
    threads = processes._server_threads or 1

    summaries = {}
    for method in ("forkserver", "spawn"):
        monkeypatch.setenv(processes.START_ENV, method)
        summaries[method] = processes.call_in_process(
            stages.train_stage, *args, cfg, tmp_path / method, fold=0, seed=0, threads=threads
        )
    forked, spawned = summaries["forkserver"], summaries["spawn"]
    assert forked["key"] == spawned["key"]
    assert forked["metrics"] == spawned["metrics"]
    for name in ("model.zip", "backtest.feather", "trades.feather"):
        assert sha256_file(Path(forked["output"]).parent / name) == sha256_file(
            Path(spawned["output"]).parent / name
        ), name
