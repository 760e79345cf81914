"""A temporary local Prefect API for ``sentio run`` that never outlives the command.

Without ``PREFECT_API_URL`` Prefect starts a temporary server of its own in a child
process and stops it at exit; a ``sentio run`` killed with ``SIGKILL`` skips that and
leaves the server running, reparented to init. :func:`temporary_api` starts the same
server (Prefect's own app, on a free loopback port, UI off) through a small launcher
that asks the Linux kernel to kill it when its parent dies (``PR_SET_PDEATHSIG``) and
that exits at once if the parent is already gone; the command then talks to it through
``PREFECT_API_URL`` for its whole duration.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import prefect
from prefect.settings import (
    PREFECT_API_URL,
    PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
    get_current_settings,
    temporary_settings,
)

__all__ = ["STARTUP_TIMEOUT", "temporary_api"]

STARTUP_TIMEOUT = 120.0
"""Seconds the temporary server may take to answer (at least; Prefect's setting if longer)."""

# Runs in the child before it becomes the server: die with the parent (Linux), and do not
# start at all when the parent died before the guard was set.
_LAUNCHER = """
import os, signal, sys
parent = int(sys.argv[1])
if sys.platform.startswith("linux"):
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)
if os.getppid() != parent:
    sys.exit(70)
os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
"""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def temporary_api() -> Iterator[str | None]:
    """Run the body against a temporary local Prefect API, unless one is configured.

    Yields the API URL it started, or ``None`` when ``PREFECT_API_URL`` is set (that
    server is used and nothing is started). The server is stopped when the body ends,
    and killed by the kernel if this process dies first.
    """
    if PREFECT_API_URL.value():
        yield None
        return
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    server_cmd = [
        "-m",
        "uvicorn",
        "--app-dir",
        str(prefect.__module_path__.parent),
        "--factory",
        "prefect.server.api.server:create_app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "error",
        "--lifespan",
        "on",
    ]
    env = {
        **os.environ,
        **get_current_settings().to_environment_variables(exclude_unset=True),
        "PREFECT_UI_ENABLED": "0",
        "PREFECT__SERVER_EPHEMERAL": "1",
        "PREFECT__SERVER_FINAL": "1",
    }
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-c", _LAUNCHER, str(os.getpid()), *server_cmd],
        env=env,
        stdin=subprocess.DEVNULL,
    )
    try:
        # a first start migrates a new database: give a busy machine more than Prefect's 20 s
        timeout = max(
            STARTUP_TIMEOUT, float(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value())
        )
        _wait_healthy(proc, url, timeout)
        with temporary_settings(updates={PREFECT_API_URL: url}):
            yield url
    finally:
        _drain_workers()  # send the last logs and events while the server still answers
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _drain_workers() -> None:
    """Flush Prefect's background log and event senders (they retry for a minute or more
    against a server that is gone)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        with contextlib.suppress(Exception):  # best effort: the run's outcome is decided
            worker.drain_all(timeout=15)


def _wait_healthy(proc: subprocess.Popen[bytes], url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client() as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"the temporary Prefect server exited with code {proc.returncode} at start"
                )
            try:
                if client.get(f"{url}/health", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
    raise RuntimeError(f"the temporary Prefect server at {url} did not answer within {timeout:g} s")
