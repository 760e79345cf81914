"""A training machine's copies of the shared storage: ``paths.storage_cache``, kept bounded.

A machine that trains through ``paths.storage`` (:mod:`sentio.storage`) copies each
training's inputs (the ingest, features, folds, regimes and warm-start stage folders) into
its cache, trains there and publishes the result. Every night brings new data, so new
keys: without pruning the cache would hold one more copy of the whole feature frame
every night. This module keeps it to what was used recently:

* a training holds the cache in use (:func:`cache_in_use`: a shared ``flock`` on
  ``<cache>/.sentio-cache.lock``) from its first copy to its publication, and marks what
  it uses (its inputs, its checkpoints' staging folder, its output) as used when it
  starts using them and again when it ends, however it ends (:meth:`CacheUse.mark`, the
  entry's modification time): a failed attempt's inputs and checkpoints are there for
  its retry;
* after a training, :func:`prune_cache` removes every entry ``<cache>/<stage>/<name>`` of
  Sentio's stage folders (:data:`~sentio.gc.CACHED_STAGES`: stage folders, a killed
  training's checkpoints, staging left by a crash) not used for ``paths.storage_cache_days``,
  but only when it gets the lock exclusively, i.e. when no other training on this machine
  (or on another sharing the folder over a filesystem that honours ``flock``) is using
  the cache; otherwise the last of them prunes.

Only a folder marked as a cache (``<cache>/.sentio-storage-cache``) is pruned, and a folder
is marked only when it holds nothing but Sentio's stage folders (new, empty, or a cache of
an earlier version) at a training's start: a ``paths.storage_cache`` pointed at a home or
project folder by mistake is used, never pruned. Once marked, the folder is Sentio's: what
else is put into its stage folders later is pruned by the same rule. A stage folder that is a symlink is not entered. On a
filesystem without ``flock`` the cache is used without pruning.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from sentio.gc import CACHED_STAGES
from sentio.workdir import LOCK_NAME

__all__ = ["CACHE_LOCK", "CACHE_MARK", "CacheUse", "cache_in_use", "prune_cache"]

CACHE_MARK = ".sentio-storage-cache"
"""Written into a cache folder that holds only Sentio's stage folders: only such folders
are pruned."""
CACHE_LOCK = ".sentio-cache.lock"
"""The lock file trainings share while they use the cache (:func:`cache_in_use`)."""

_DAY = 86_400.0
_OWN = {CACHE_MARK, CACHE_LOCK, *CACHED_STAGES}


class CacheUse:
    """A training's use of the cache (see :func:`cache_in_use`)."""

    def __init__(self, cache: Path, held: bool) -> None:
        self.cache = cache
        self.held = held
        """Whether the cache is locked in use (False where the filesystem has no ``flock``:
        then it must not be pruned)."""
        self._used: list[Path] = []

    def mark(self, entry: Path) -> None:
        """Mark ``entry`` (``<cache>/<stage>/<name>``) used now, and again when the use ends
        (an entry that does not exist yet is marked then, if it exists by then)."""
        self._used.append(entry)
        _touch(entry)

    def _mark_all(self) -> None:
        for entry in self._used:
            _touch(entry)


def _touch(entry: Path) -> None:
    # best effort: an entry that is gone or not ours to touch is only pruned sooner
    with contextlib.suppress(OSError):
        os.utime(entry, follow_symlinks=False)


def _mark_if_ours(cache: Path) -> None:
    """Mark ``cache`` as a cache when it holds nothing but what this module writes."""
    if (cache / CACHE_MARK).is_file():
        return
    if all(p.name in _OWN for p in cache.iterdir()):
        (cache / CACHE_MARK).touch()


@contextlib.contextmanager
def cache_in_use(cache: Path) -> Iterator[CacheUse]:
    """Hold ``cache`` in use for the block: :func:`prune_cache` waits for the block's end,
    and the block waits for a pruning in progress (it takes seconds). Creates the folder,
    and marks it as a cache when it holds only Sentio's stage folders.

    Yields the :class:`CacheUse` whose :meth:`~CacheUse.mark` records what the block used.
    """
    cache.mkdir(parents=True, exist_ok=True)
    _mark_if_ours(cache)
    with open(cache / CACHE_LOCK, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_SH)
        except OSError:  # no flock on this filesystem: used, never pruned
            use = CacheUse(cache, held=False)
        else:
            use = CacheUse(cache, held=True)
        try:
            yield use
        finally:
            use._mark_all()
            if use.held:
                fcntl.flock(fh, fcntl.LOCK_UN)


def _looks_like_a_workdir(cache: Path) -> bool:
    return (cache / LOCK_NAME).exists() or (cache / "runs").is_dir()


def prune_cache(cache: Path, keep_days: float, *, now: float | None = None) -> list[Path] | None:
    """Remove the entries of ``cache``'s stage folders not used for ``keep_days`` days.

    Returns what was removed, or None when nothing was looked at: the folder is not a
    marked cache, looks like a working directory, is in use by another training, or its
    filesystem has no ``flock``.

    Raises:
        OSError: an entry cannot be removed (what was removed before it stays removed).
    """
    if not (cache / CACHE_MARK).is_file() or _looks_like_a_workdir(cache):
        return None
    horizon = (time.time() if now is None else now) - keep_days * _DAY
    with open(cache / CACHE_LOCK, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held by another training (or no flock here)
            return None
        try:
            removed: list[Path] = []
            for name in CACHED_STAGES:
                stage = cache / name
                if stage.is_symlink() or not stage.is_dir():
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
