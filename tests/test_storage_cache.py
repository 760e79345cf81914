"""A training machine's storage cache (``paths.storage_cache``, :mod:`sentio.storage_cache`):
what no training used for ``paths.storage_cache_days`` is removed, but only while no
training uses the cache, and never from a folder that is not a marked cache."""

from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path

import pytest

from sentio.config import config_from_dict
from sentio.errors import ConfigError
from sentio.storage_cache import CACHE_LOCK, CACHE_MARK, cache_in_use, prune_cache

DAY = 86_400.0
NOW = 1_800_000_000.0


def entry(path: Path, age_days: float, *, folder: bool = True) -> Path:
    """A cache entry last used ``age_days`` before NOW."""
    if folder:
        (path / "inner").mkdir(parents=True)
        (path / "inner" / "data.bin").write_bytes(b"x" * 100)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"y")
    stamp = NOW - age_days * DAY
    os.utime(path, (stamp, stamp), follow_symlinks=False)
    return path


def a_cache(root: Path) -> Path:
    with cache_in_use(root):
        pass
    return root


def test_entries_unused_for_longer_than_the_horizon_go_and_the_rest_stay(tmp_path: Path) -> None:
    cache = a_cache(tmp_path / "cache")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    old = [
        entry(cache / "features" / "old-key", 8),
        entry(cache / "train" / ".k.partial", 30),  # a killed training's checkpoints
        entry(cache / "train" / ".x.1234.tmp", 9, folder=False),
    ]
    link = cache / "ingest" / "link"
    link.parent.mkdir()
    link.symlink_to(outside)
    os.utime(link, (NOW - 10 * DAY, NOW - 10 * DAY), follow_symlinks=False)
    new = [entry(cache / "features" / "new-key", 6.9), entry(cache / "train" / "k", 0)]
    removed = prune_cache(cache, 7.0, now=NOW)
    assert removed is not None
    assert sorted(removed) == sorted([*old, link])
    assert not any(p.exists() or p.is_symlink() for p in [*old, link])
    assert all((p / "inner" / "data.bin").is_file() for p in new)
    assert (outside / "keep.txt").read_text() == "mine"  # the link went, not its target
    assert (cache / CACHE_MARK).is_file() and (cache / CACHE_LOCK).is_file()
    assert prune_cache(cache, 7.0, now=NOW) == []


def test_what_a_training_used_is_marked_when_it_starts_and_when_it_ends(tmp_path: Path) -> None:
    """Also after a failed attempt: its inputs and checkpoints are there for the retry,
    however long it ran and however short paths.storage_cache_days is."""
    cache = a_cache(tmp_path / "cache")
    inputs = entry(cache / "folds" / "k", 100)
    partial = cache / "train" / ".k.partial"
    other = entry(cache / "features" / "other", 100)
    with pytest.raises(RuntimeError), cache_in_use(cache) as use:
        assert use.held
        use.mark(inputs)
        use.mark(partial)  # created later by the training
        assert time.time() - inputs.stat().st_mtime < 60
        entry(partial, 100)
        os.utime(inputs, (0.0, 0.0))  # as if the training had run for a long time
        raise RuntimeError("the training failed")
    assert prune_cache(cache, 0.001) == [other]
    assert inputs.is_dir() and partial.is_dir()


def test_a_cache_in_use_is_not_pruned_until_the_last_user_leaves(tmp_path: Path) -> None:
    cache = a_cache(tmp_path / "cache")
    old = entry(cache / "features" / "old-key", 30)
    entered, leave = threading.Event(), threading.Event()

    def training() -> None:
        with cache_in_use(cache):
            entered.set()
            leave.wait(10.0)

    other = threading.Thread(target=training)
    other.start()
    assert entered.wait(10.0)
    try:
        assert prune_cache(cache, 7.0, now=NOW) is None  # another training uses it
        assert old.is_dir()
    finally:
        leave.set()
        other.join(10.0)
    assert prune_cache(cache, 7.0, now=NOW) == [old]


def test_a_training_waits_for_a_pruning_in_progress(tmp_path: Path) -> None:
    cache = a_cache(tmp_path / "cache")
    entered = threading.Event()

    def training() -> None:
        with cache_in_use(cache):
            entered.set()

    with open(cache / CACHE_LOCK, "a") as fh:  # what prune_cache holds while it removes
        fcntl.flock(fh, fcntl.LOCK_EX)
        other = threading.Thread(target=training)
        other.start()
        time.sleep(0.3)
        assert not entered.is_set()
        fcntl.flock(fh, fcntl.LOCK_UN)
    other.join(10.0)
    assert entered.is_set()


def test_only_sentio_s_stage_folders_of_a_folder_of_its_own_are_pruned(tmp_path: Path) -> None:
    """A cache configured onto a home folder by mistake is used, never marked or pruned;
    in a cache, only the stage folders' entries go; a cache of an earlier version (stage
    folders, no mark) is marked at its next use."""
    home = tmp_path / "home"
    mine = entry(home / "Documents" / "thesis", 30)
    deep = entry(home / "Documents" / "features" / "k", 30)
    staged = entry(home / "features" / "k", 30)
    with cache_in_use(home):
        pass
    assert not (home / CACHE_MARK).exists()
    assert prune_cache(home, 7.0, now=NOW) is None
    assert mine.is_dir() and deep.is_dir() and staged.is_dir()
    earlier = tmp_path / "earlier"
    old = entry(earlier / "features" / "k", 30)
    entry(earlier / "train" / "k", 30)
    assert prune_cache(earlier, 7.0, now=NOW) is None  # not marked yet
    with cache_in_use(earlier):
        pass
    assert (earlier / CACHE_MARK).is_file()
    stray = entry(earlier / "notes" / "k", 30)  # written later by something else
    assert len(prune_cache(earlier, 7.0, now=NOW) or []) == 2
    assert not old.exists() and stray.is_dir()


def test_folders_that_are_not_a_marked_cache_are_never_pruned(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    old = entry(plain / "features" / "k", 30)
    assert prune_cache(plain, 7.0, now=NOW) is None
    workdir = a_cache(tmp_path / "workdir")  # marked, but a run's working directory
    (workdir / "runs").mkdir()
    old_too = entry(workdir / "features" / "k", 30)
    assert prune_cache(workdir, 7.0, now=NOW) is None
    locked = a_cache(tmp_path / "locked")
    (locked / ".sentio.lock").touch()
    assert prune_cache(locked, 7.0, now=NOW) is None
    assert old.is_dir() and old_too.is_dir()


@pytest.mark.parametrize(
    ("workdir", "storage", "cache", "ok"),
    [
        ("w", "s", "w", False),
        ("w/inner", "s", "w", False),
        ("w", "s", "s", False),
        ("w", "s", "s/stages", False),
        ("w", "s/deep", "s", False),
        ("w", "s", "w/cache", True),
        ("w", "s", "c", True),
    ],
)
def test_the_cache_lies_apart_from_the_workdir_and_a_local_storage(
    tmp_path: Path, workdir: str, storage: str, cache: str, ok: bool
) -> None:
    paths = {
        "workdir": str(tmp_path / workdir),
        "storage": (tmp_path / storage).as_uri(),
        "storage_cache": str(tmp_path / cache),
    }
    if ok:
        assert config_from_dict({"paths": paths}).paths.storage_cache_days == 7.0
    else:
        with pytest.raises(ConfigError, match=r"paths.storage_cache .* must be a folder "):
            config_from_dict({"paths": paths})
    del paths["storage"]  # without a storage, the cache is not used
    config_from_dict({"paths": paths})
    # a storage elsewhere (s3://) is never the cache
    if not ok and cache != workdir and not Path(workdir).is_relative_to(cache):
        config_from_dict({"paths": {**paths, "storage": "s3://bucket/prefix"}})


def test_a_filesystem_without_flock_is_used_but_never_pruned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sentio.storage_cache as sc

    cache = a_cache(tmp_path / "cache")
    old = entry(cache / "features" / "k", 30)

    def no_flock(fh: object, op: int) -> None:
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(sc.fcntl, "flock", no_flock)
    with cache_in_use(cache) as use:
        assert not use.held
    assert prune_cache(cache, 7.0, now=NOW) is None
    assert old.is_dir()


def test_a_shared_training_holds_the_cache_and_prunes_it_after_whatever_its_outcome(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tasks.train.train_shared_task: no pruning while it trains (the lock is its own), the
    pruning after it even when it fails, its error or result unchanged by a pruning that
    fails, and no pruning where the cache could not be locked."""
    import sentio.storage_cache as sc
    import tasks.train as tt

    cache = tmp_path / "cache"
    cfg = config_from_dict(
        {"paths": {"storage": (tmp_path / "bucket").as_uri(), "storage_cache": str(cache)}}
    )

    def stale(name: str) -> Path:
        folder = cache / "features" / name
        folder.mkdir(parents=True)
        then = time.time() - 30 * DAY
        os.utime(folder, (then, then))
        return folder

    seen: list[object] = []

    def failing(store: object, use: sc.CacheUse, *args: object) -> dict[str, object]:
        seen.append(prune_cache(cache, 7.0))  # None: this training holds the cache
        use.mark(used)
        raise ConfigError("this worker computes another key")

    old, used = stale("old"), stale("used")
    monkeypatch.setattr(tt, "_train_in_cache", failing)
    with pytest.raises(ConfigError, match="another key"):
        tt.train_shared_task.fn("key", {}, cfg, 0, 0)
    assert seen == [None]
    assert not old.exists() and used.is_dir()  # pruned after the failure; the used kept

    def broken_prune(*args: object) -> None:
        raise OSError(13, "Permission denied")

    monkeypatch.setattr(tt, "_train_in_cache", lambda *args: {"trained": True})
    monkeypatch.setattr(tt, "prune_cache", broken_prune)
    assert tt.train_shared_task.fn("key", {}, cfg, 0, 0) == {"trained": True}

    calls: list[object] = []
    monkeypatch.setattr(tt, "prune_cache", lambda *args: calls.append(args))

    def no_flock(fh: object, op: int) -> None:
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(sc.fcntl, "flock", no_flock)
    assert tt.train_shared_task.fn("key", {}, cfg, 0, 0) == {"trained": True}
    assert calls == []


def test_a_cache_of_a_user_unknown_here_is_left_to_the_machine_that_uses_it() -> None:
    cfg = config_from_dict(
        {"paths": {"storage": "s3://bucket/p", "storage_cache": "~no-such-user-here/cache"}}
    )
    assert str(cfg.paths.storage_cache) == "~no-such-user-here/cache"
