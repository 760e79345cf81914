"""A training's own process (sentio.processes): forked from a single-threaded fork server
that has the heavy libraries loaded, or spawned, with the same result either way."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from sentio import processes, stages
from sentio.config import config_from_dict
from sentio.errors import ConfigError
from sentio.io import sha256_file
from tests.conftest import SHORT_WINDOWS, data_stages, minute_bars

REPO = Path(__file__).resolve().parents[1]

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
    threads = 1
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
    assert "libtorch" in Path(f"/proc/{server}/maps").read_text()
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

    # more than one thread: spawned (a fresh interpreter), capped alike
    other = 2
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
    args = data_stages(bars, cfg, tmp_path / "inputs")

    summaries = {}
    for method in ("forkserver", "spawn"):
        monkeypatch.setenv(processes.START_ENV, method)
        assert processes.start_fork_server(1) == (method == "forkserver")
        summaries[method] = processes.call_in_process(
            stages.train_stage, *args, cfg, tmp_path / method, fold=0, seed=0, threads=1
        )
    forked, spawned = summaries["forkserver"], summaries["spawn"]
    assert forked["key"] == spawned["key"]
    assert forked["metrics"] == spawned["metrics"]
    for name in ("model.zip", "backtest.feather", "trades.feather"):
        assert sha256_file(Path(forked["output"]).parent / name) == sha256_file(
            Path(spawned["output"]).parent / name
        ), name


def _report_and_wait(path: str) -> None:
    """Write this process's pid and its parent's, then wait to be killed."""
    Path(path).write_text(f"{os.getpid()} {os.getppid()}")
    time.sleep(600)


def _state(pid: int) -> str | None:
    """The process's state letter (``Z``: a zombie), or None when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


@needs_fork_server
def test_a_killed_caller_that_nobody_reaps_takes_its_forked_child_and_the_server_along(
    tmp_path: Path,
) -> None:
    """The caller SIGKILLed and left a zombie (its parent, this test, does not wait for it
    yet): the child forked for it and the fork server still end within seconds."""
    pids = tmp_path / "pids"
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})
        from sentio.processes import call_in_process
        from tests.test_processes import _report_and_wait

        if __name__ == "__main__":
            call_in_process(_report_and_wait, {str(pids)!r}, threads=1)
        """
    )
    env = {k: v for k, v in os.environ.items() if k != processes.START_ENV}
    caller = subprocess.Popen([sys.executable, "-c", script], env=env)
    try:
        deadline = time.monotonic() + 120
        while not (pids.is_file() and pids.read_text()):
            assert caller.poll() is None, "the caller ended before its child reported"
            assert time.monotonic() < deadline, "the child never reported"
            time.sleep(0.2)
        child, server = (int(x) for x in pids.read_text().split())
        assert server != caller.pid  # forked by the fork server, not by the caller
        os.kill(caller.pid, signal.SIGKILL)
        time.sleep(0.5)
        assert _state(caller.pid) == "Z"  # dead, not reaped
        ended = (None, "Z")  # gone, or dead and waiting for whoever reaps orphans
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not (
            _state(child) in ended and _state(server) in ended
        ):
            time.sleep(0.2)
        assert _state(child) in ended, "the forked child outlived its caller"
        assert _state(server) in ended, "the fork server outlived its caller"
    finally:
        if caller.poll() is None:
            caller.kill()
        caller.wait()
