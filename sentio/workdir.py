"""One writer per working directory: the lock a nightly run holds on its workdir.

Two runs on one working directory would train the same keys into the same folders and
register one run's model with the other's metrics. :class:`WorkdirLock` makes a second
run wait for the first (``paths.on_busy = "wait"``, saying so once, for at most
``paths.busy_timeout`` seconds) or refuse at once (``"refuse"``) with a
:class:`~sentio.errors.WorkdirBusyError` naming the run that holds it.

The lock is an advisory ``flock`` on ``<workdir>/.sentio.lock``: the kernel releases it
when its holder's process ends in any way, ``SIGKILL`` included, so a killed run never
blocks the next one. The file also records its holder (process id, host, run name, start
time); a holder that ended without releasing leaves that record behind, and the next run
recognises it, says which run it takes the lock over from, and goes on. The filesystem
must honour ``flock`` (local disks do; NFSv4 does).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal

from sentio.errors import WorkdirBusyError
from sentio.times import now_utc_text

__all__ = ["LOCK_NAME", "WorkdirLock"]

LOCK_NAME = ".sentio.lock"
"""The lock file's name inside the working directory."""

_POLL_SECONDS = 1.0


def _holder_text(holder: dict[str, Any]) -> str:
    if not holder:
        return "another process"
    return (
        f"run {holder.get('run') or '?'} (pid {holder.get('pid')} on {holder.get('host')}, "
        f"since {holder.get('since')})"
    )


class WorkdirLock:
    """Exclusive use of a working directory by one run, as a context manager.

    Args:
        workdir: the working directory (created when missing).
        owner: the name of the run taking the lock (recorded for the messages of others).
        on_busy: ``"wait"`` for the holder to finish, or ``"refuse"`` at once.
        timeout: seconds to wait at most with ``"wait"``.
        notify: called with one line when the run has to wait and when it takes over the
            lock of a run that ended without releasing it (a logger's ``warning``).
    """

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        *,
        owner: str,
        on_busy: Literal["wait", "refuse"] = "wait",
        timeout: float = 21_600.0,
        notify: Callable[[str], None] | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.path = self.workdir / LOCK_NAME
        self.owner = owner
        self.on_busy = on_busy
        self.timeout = timeout
        self.notify = notify or (lambda message: None)
        self._fh: IO[str] | None = None
        self.took_over: dict[str, Any] | None = None
        """The record of a run that had ended without releasing the lock, if any."""

    def _read(self, fh: IO[str]) -> dict[str, Any]:
        fh.seek(0)
        try:
            data = json.loads(fh.read() or "{}")
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    def acquire(self) -> WorkdirLock:
        """Take the lock (waiting or refusing as configured); see the class docstring."""
        if self._fh is not None:
            raise RuntimeError(f"{self.path}: this lock is held already")
        self.workdir.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held until release
        deadline = time.monotonic() + self.timeout
        said = False
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = self._read(fh)
                if self.on_busy == "refuse":
                    fh.close()
                    raise WorkdirBusyError(
                        f"{self.workdir}: in use by {_holder_text(holder)}; wait for it to "
                        "finish, use another paths.workdir, or set paths.on_busy: wait"
                    ) from None
                if time.monotonic() >= deadline:
                    fh.close()
                    raise WorkdirBusyError(
                        f"{self.workdir}: still in use by {_holder_text(holder)} after "
                        f"waiting {self.timeout:g} s (paths.busy_timeout)"
                    ) from None
                if not said:
                    self.notify(
                        f"{self.workdir} is in use by {_holder_text(holder)}; waiting for it "
                        f"to finish (at most {self.timeout:g} s, paths.busy_timeout)"
                    )
                    said = True
                time.sleep(_POLL_SECONDS)
        previous = self._read(fh)
        if previous:  # released locks are emptied: its holder ended without releasing it
            self.took_over = previous
            self.notify(
                f"{self.workdir}: {_holder_text(previous)} ended without releasing the "
                "working directory (killed?); taking it over"
            )
        fh.seek(0)
        fh.truncate()
        fh.write(
            json.dumps(
                {
                    "run": self.owner,
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "since": now_utc_text(),
                }
            )
        )
        fh.flush()
        self._fh = fh
        return self

    def release(self) -> None:
        """Empty the holder record and release the lock."""
        fh, self._fh = self._fh, None
        if fh is None:
            return
        try:
            fh.seek(0)
            fh.truncate()
            fh.flush()
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
            fh.close()

    def __enter__(self) -> WorkdirLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
