"""Run one call in a child process of its own: repeatable, bounded in threads, no orphans.

Stable-Baselines3 draws from the process-wide random generators of torch, numpy and
Python, and torch's thread count is process-wide too. Two trainings that share a process
therefore share those states; the flow runs each training through :func:`call_in_process`
instead, so that a training's result never depends on what else runs or in which order.

The child:

- is a fresh process of its own: on Linux, for a one-thread call (the flow's default
  ``train.torch_threads``), forked from a *fork server* (multiprocessing's
  ``forkserver``), a single-threaded process this process starts once, capped at one
  thread, that has imported the heavy third-party libraries a training needs (torch,
  Stable-Baselines3, scipy ...: :data:`FORK_SERVER_PRELOAD`) and nothing else. A child
  so starts in about a second instead of the ~5 s of a fresh interpreter's imports, with
  random state, threads and locks of its own all the same. Sentio's own modules are
  imported by each child, so a child always runs the code on disk. Otherwise (macOS,
  where forking after some system frameworks are loaded is unsafe; Windows; more than
  one thread, where the capped libraries would start thread pools in the server;
  ``SENTIO_CHILD_START=spawn``) it is started with the ``spawn`` method (a fresh
  interpreter);
- runs with this process's environment at the call, its math libraries capped at
  ``threads`` threads (``OMP``, ``MKL``, ``OPENBLAS``, polars, numba) before the call's
  modules are imported. A forked child differs from a spawned one only in what the
  preloaded libraries read from the environment when they were imported (for example
  ``OMP_PROC_BIND``, ``TORCH_*`` import-time switches): the fork server's first start
  set those; and its standard output and error are those the fork server started with;
- dies with its caller: a watchdog thread exits it within a second once the caller is
  gone (even while it is an unreaped zombie), and on Linux the kernel sends it
  ``SIGKILL`` when the process that forked it dies; so killing the flow (even with
  ``SIGKILL``) leaves no training running, and the fork server ends once the caller and
  its children have;
- reports progress to the parent through a pipe, and returns the call's value or
  re-raises its exception in the parent (a :class:`~sentio.errors.SentioError` keeps
  its type and message).

This module imports only the standard library at import time: a spawned child imports
it before it has capped its threads.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from multiprocessing.connection import Connection
from typing import Any

__all__ = [
    "FORK_SERVER_PRELOAD",
    "ChildProcessFailed",
    "available_cores",
    "call_in_process",
    "call_in_this_process",
    "environment",
    "parallel_slots",
    "start_fork_server",
    "thread_caps",
]

_THREAD_ENV = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "POLARS_MAX_THREADS",
    "NUMBA_NUM_THREADS",
)
_PR_SET_PDEATHSIG = 1

# What the fork server imports once for every child: the heavy third-party libraries of
# a training (a missing one is skipped). Each of them, capped at one thread, starts no
# thread at import and leaves CUDA alone, so the server stays a single-threaded process
# that is safe to fork (tests/test_processes.py checks it; with caps of 2, OpenBLAS would
# start a pool, which is why only one-thread children are forked). Left to each child:
# polars, pyarrow and pandas (they start allocator and clean-up threads at import, and
# polars is not fork-safe), hmmlearn (through scikit-learn it imports pandas) and
# Sentio's own modules (a child runs the code on disk).
FORK_SERVER_PRELOAD = (
    "numpy",
    "scipy.stats",
    "numba",
    "torch",
    "torch._dynamo",
    "gymnasium",
    "stable_baselines3",
    "sb3_contrib",
)
START_ENV = "SENTIO_CHILD_START"
# Held while a child is started: the environment snapshot a child gets, the thread caps
# set around a (re)start of the fork server, and the start itself do not interleave.
_start_lock = threading.Lock()


class ChildProcessFailed(RuntimeError):
    """The child process ended without a result (killed by a signal, out of memory, crash).

    Not a :class:`~sentio.errors.SentioError`: a retry may succeed (a training resumes
    from its last checkpoint).
    """


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the platform has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return max(1, os.cpu_count() or 1)


def parallel_slots(max_parallel: int, threads: int) -> int:
    """How many calls of ``threads`` threads each to run at once.

    ``max_parallel`` when set (> 0), else as many as the cores available hold
    (``cores // threads``, at least one): together they use the machine without
    oversubscribing it.
    """
    if max_parallel > 0:
        return max_parallel
    return max(1, available_cores() // max(1, threads))


def thread_caps(threads: int) -> dict[str, str]:
    """The environment that caps a process's math libraries at ``threads`` threads (set
    before they are imported: OpenMP, MKL, OpenBLAS, polars, numba)."""
    return {name: str(int(threads)) for name in _THREAD_ENV}


def call_in_this_process(
    fn: Callable[..., Any],
    *args: Any,
    threads: int = 1,
    progress: Callable[..., None] | None = None,
    progress_arg: str | None = "progress",
    **kwargs: Any,
) -> Any:
    """Call ``fn(*args, **kwargs)`` here, as :func:`call_in_process` would in a child.

    For a process that runs nothing else meanwhile (a single-threaded Dask worker started
    with :func:`thread_caps` in its environment): torch's thread count is set to
    ``threads`` for the call, and the caller saves the start of a fresh interpreter and
    its imports. ``fn`` must not rely on the process's random state (a training seeds it
    under its own lock).
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        if progress_arg is not None and progress is not None:
            kwargs = {**kwargs, progress_arg: progress}
        return fn(*args, **kwargs)
    finally:
        torch.set_num_threads(before)


def call_in_process(
    fn: Callable[..., Any],
    *args: Any,
    threads: int = 1,
    progress: Callable[..., None] | None = None,
    progress_arg: str | None = "progress",
    **kwargs: Any,
) -> Any:
    """Call ``fn(*args, **kwargs)`` in a fresh child process and return its value.

    Args:
        fn: a module-level function (it is pickled by reference).
        threads: threads the child's math libraries may use.
        progress: called in the parent as ``progress(done, total, *extra)`` whenever the
            child calls the function it was handed as ``kwargs[progress_arg]`` with
            those (picklable) arguments.
        progress_arg: the keyword under which ``fn`` takes its progress callback
            (``None``: ``fn`` takes none).

    Raises:
        Whatever ``fn`` raised (re-raised here); :class:`ChildProcessFailed` when the
        child ended without a result.
    """
    payload = pickle.dumps((fn, args, kwargs, progress_arg if progress else None))
    with _start_lock:
        forked = _forks(int(threads))
        ctx: Any = multiprocessing.get_context("forkserver" if forked else "spawn")
        parent_end, child_end = ctx.Pipe(duplex=False)
        proc = ctx.Process(
            target=_child_main,
            args=(child_end, int(threads), dict(os.environ), payload),
            name=f"sentio-{getattr(fn, '__name__', 'call')}",
            daemon=False,
        )
        # starting a forked child (re)starts the fork server when it is not running:
        # with the caps in the environment it inherits
        with _capped(forked):
            proc.start()
    child_end.close()
    try:
        while True:
            if parent_end.poll(0.2):
                try:
                    kind, *body = parent_end.recv()
                except EOFError:
                    break
                if kind == "progress" and progress is not None:
                    progress(int(body[0]), int(body[1]), *body[2:])
                elif kind == "result":
                    proc.join()
                    return body[0]
                elif kind == "error":
                    proc.join()
                    raise _rebuild(*body)
            elif not proc.is_alive() and not parent_end.poll(0):
                break
        proc.join()
        raise ChildProcessFailed(
            f"{proc.name} (pid {proc.pid}) ended without a result: "
            f"{_exit_text(proc.exitcode, forked)}"
        )
    finally:
        parent_end.close()
        if proc.is_alive():  # the parent was interrupted: take the child down with it
            proc.terminate()
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join()


def start_fork_server(threads: int = 1) -> bool:
    """Start the fork server, if it is not running, where children of ``threads`` threads
    are forked from it, and return whether they are (else they are spawned).

    Children are forked on Linux when ``threads`` is 1 (the flow's default,
    ``train.torch_threads``) and ``SENTIO_CHILD_START`` is not ``spawn``. It returns at
    once; the server imports its libraries meanwhile, so a flow that calls this before
    its data stages has the server ready by the time it trains.
    """
    with _start_lock:
        if not _forks(threads):
            return False
        from multiprocessing import forkserver

        with _capped(True):
            forkserver.ensure_running()
    return True


def _forks(threads: int) -> bool:
    """Whether a child of ``threads`` threads is forked from the fork server (which is
    then configured: its preload); call with ``_start_lock`` held."""
    method = os.environ.get(START_ENV, "forkserver")
    if method not in ("forkserver", "spawn"):
        from sentio.errors import ConfigError

        raise ConfigError(f"{START_ENV}={method!r}: expected forkserver or spawn")
    if method == "spawn" or threads != 1 or not sys.platform.startswith("linux"):
        return False
    multiprocessing.get_context("forkserver").set_forkserver_preload(list(FORK_SERVER_PRELOAD))
    return True


@contextlib.contextmanager
def environment(values: Mapping[str, str]) -> Iterator[None]:
    """``os.environ`` with ``values`` set for the block and restored after (a variable that
    was not set is removed again). Only the variables that differ are touched."""
    saved = {name: os.environ.get(name) for name in values if os.environ.get(name) != values[name]}
    os.environ.update({name: values[name] for name in saved})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _capped(on: bool) -> contextlib.AbstractContextManager[None]:
    """``os.environ`` with one-thread caps for the block (``on``), restored after: the
    environment a fork server (re)started inside it inherits, so that the libraries it
    preloads size their thread pools to one thread."""
    return environment(thread_caps(1) if on else {})


def _exit_text(code: int | None, forked: bool = False) -> str:
    if code is None:
        return "still running"
    if forked and code == 255:  # what multiprocessing reports when the server is gone
        return "exit code 255 (the fork server it was started from may have died)"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = ""
        hint = " (the system may have run out of memory)" if -code == signal.SIGKILL else ""
        return f"killed by signal {-code} {name}{hint}".rstrip()
    return f"exit code {code}"


def _rebuild(pickled: bytes | None, kind: str, message: str, trace: str) -> BaseException:
    """The child's exception, unpickled where possible, else a RuntimeError carrying it."""
    if pickled is not None:
        try:
            exc = pickle.loads(pickled)
            if isinstance(exc, BaseException):
                return exc
        except Exception:  # noqa: BLE001 - fall back to the text
            pass
    return RuntimeError(f"{kind}: {message}\n(in the child process)\n{trace}")


def _die_with_parent() -> None:
    """Make this process end when the process that started it (the caller) does.

    A watchdog thread waits on multiprocessing's parent sentinel: a pipe whose other end
    only the caller holds, so it reports the caller's death even while the caller is an
    unreaped zombie, whether this child was spawned by the caller or forked by the fork
    server. On Linux the kernel also kills this process when the process that forked it
    dies (the caller, or the fork server)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # pragma: no cover - no prctl
            pass
    from multiprocessing.connection import wait

    parent = multiprocessing.parent_process()
    sentinel = parent.sentinel if parent is not None else None
    forked_by = os.getppid()

    def gone(timeout: float) -> bool:
        if sentinel is not None:
            if wait([sentinel], timeout=timeout):
                return True
        elif timeout:  # pragma: no cover - multiprocessing always sets the parent
            time.sleep(timeout)
        return os.getppid() != forked_by

    def watch() -> None:
        while not gone(1.0):
            pass
        os._exit(70)

    if gone(0.0):  # the caller died before the guard was in place
        os._exit(70)
    threading.Thread(target=watch, name="sentio-parent-watchdog", daemon=True).start()


def _child_main(conn: Connection, threads: int, env: dict[str, str], payload: bytes) -> None:
    """Entry point of the child: the caller's environment (a forked child starts with the
    fork server's), thread caps, a guard against orphaning; run, send back."""
    _die_with_parent()
    os.environ.clear()
    os.environ.update(env)
    os.environ.update(thread_caps(threads))
    try:
        fn, args, kwargs, progress_arg = pickle.loads(payload)
        try:
            import torch

            torch.set_num_threads(threads)
        except ImportError:  # pragma: no cover - torch is a dependency
            pass
        if progress_arg is not None:
            kwargs = {
                **kwargs,
                progress_arg: lambda done, total, *extra: conn.send(
                    ("progress", done, total, *extra)
                ),
            }
        value = fn(*args, **kwargs)
    except BaseException as exc:  # noqa: BLE001 - everything goes back to the parent
        try:
            pickled: bytes | None = pickle.dumps(exc)
        except Exception:  # noqa: BLE001
            pickled = None
        conn.send(("error", pickled, type(exc).__name__, str(exc), traceback.format_exc()))
    else:
        conn.send(("result", value))
    finally:
        conn.close()
