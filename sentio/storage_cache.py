"""A training machine's copies of the shared storage: ``paths.storage_cache``, kept bounded.

A machine that trains through ``paths.storage`` (:mod:`sentio.storage`) copies each
training's inputs (the ingest, features, folds, regimes and warm-start stage folders) into
its cache, trains there and publishes the result. Every night brings new data, so new
keys: without pruning the cache would hold one more copy of the whole feature frame
every night. Everything in it can be fetched again from the storage, so it is a cache in
the strict sense, and this module keeps it to what was used recently:

* a training holds the cache in use (:func:`cache_in_use`: a shared ``flock`` on
  ``<cache>/.sentio-cache.lock``) from its first copy to its publication, and marks every
  input folder it reads as used now (:func:`mark_used`, the folder's modification time);
* after a training, :func:`prune_cache` removes every entry ``<cache>/<stage>/<name>``
  (stage folders, a killed training's checkpoints, staging left by a crash) not used for
  ``paths.storage_cache_days``, but only when it gets the lock exclusively, i.e. when no
  other training on this machine (or on another sharing the folder over a filesystem that
  honours ``flock``) is using the cache; otherwise the last of them prunes.

A folder that is not a cache this module marked (``<cache>/.sentio-storage-cache``), or
that looks like a working directory (a run lock or ``runs/``), is never pruned.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["CACHE_LOCK", "CACHE_MARK", "cache_in_use", "mark_used", "prune_cache"]

CACHE_MARK = ".sentio-storage-cache"
"""Written into a cache folder when a training first uses it: only such folders are pruned."""
CACHE_LOCK = ".sentio-cache.lock"
"""The lock file trainings share while they use the cache (:func:`cache_in_use`)."""

_DAY = 86_400.0


@contextlib.contextmanager
def cache_in_use(cache: Path) -> Iterator[None]:
    """Hold ``cache`` in use for the block: :func:`prune_cache` elsewhere waits its turn.

    Creates the folder and its mark. Blocks while a pruning runs (it takes seconds).
    """
    cache.mkdir(parents=True, exist_ok=True)
    (cache / CACHE_MARK).touch()
    with open(cache / CACHE_LOCK, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def mark_used(folder: Path) -> None:
    """Record that ``folder`` (an entry of the cache) was used now."""
    os.utime(folder)


def _looks_like_a_workdir(cache: Path) -> bool:
    from sentio.workdir import LOCK_NAME

    return (cache / LOCK_NAME).exists() or (cache / "runs").is_dir()


def prune_cache(cache: Path, keep_days: float, *, now: float | None = None) -> list[Path] | None:
    """Remove the entries of ``cache`` not used for ``keep_days`` days.

    Returns what was removed, or None when nothing was looked at: the folder is not a
    marked cache, looks like a working directory, or is in use by another training.

    Raises:
        OSError: an entry cannot be removed (what was removed before it stays removed).
    """
    if not (cache / CACHE_MARK).is_file() or _looks_like_a_workdir(cache):
        return None
    horizon = (time.time() if now is None else now) - keep_days * _DAY
    with open(cache / CACHE_LOCK, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None
        try:
            removed: list[Path] = []
            for stage in sorted(cache.iterdir()):
                if stage.name.startswith(".") or stage.is_symlink() or not stage.is_dir():
                    continue
                for entry in sorted(stage.iterdir()):
                    if entry.lstat().st_mtime >= horizon:
                        continue
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.rmtree(entry)
                    else:
                        entry.unlink()
                    removed.append(entry)
            return removed
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
