"""A full disk (ENOSPC) during training and during registration: no partial files, the
champion intact (issue 13, acceptance point f).

Every scenario runs twice where it can:

* ``tmpfs``: on a real, small tmpfs mounted for the test and filled by a filler file, so
  the kernel itself refuses the writes (short writes, then ``ENOSPC``; polars' own
  ``OSError`` text). Skipped where mounting is impossible (not root, no
  ``CAP_SYS_ADMIN``).
* ``injected``: always. The writers Sentio uses (``os.write``, ``Path.write_bytes`` /
  ``write_text``, ``os.fsync`` and polars' ``DataFrame.write_ipc``) are wrapped so that
  files under the disk's folder are charged against a budget of 4 KiB blocks, as a tmpfs
  charges pages; a write past the budget writes what fits and fails with ``ENOSPC`` (or
  with polars' errno-less message for ``write_ipc``). Space freed by deleting files is not
  given back, which only makes the emulated disk fuller.

The disk is filled at a precise moment (from the training's progress callback, or before a
registry operation) and leaves a chosen number of free blocks, so each scenario fails at
the write it names.
"""

from __future__ import annotations

import abc
import errno
import math
import os
import pathlib
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any, cast

import polars as pl
import pytest

from sentio import stages
from sentio.config import RegistryConfig, SentioConfig, config_from_dict
from sentio.errors import ResourceError
from sentio.io import atomic_write, is_disk_full, write_text_atomic
from sentio.registry import Registry
from tests.conftest import SHORT_WINDOWS, minute_bars

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/fd").is_dir(), reason="the injected disk finds files through /proc"
)

BLOCK = 4096
DISK_KIB = 2048  # holds a training (model and checkpoint ~300 KiB each) with room to spare
ENOSPC_TEXT = "No space left on device"


def _blocks(size: int) -> int:
    return math.ceil(size / BLOCK)


def _under(path: str | os.PathLike[str], root: Path) -> bool:
    try:
        return Path(path).resolve().is_relative_to(root)
    except (OSError, ValueError):
        return False


def _fd_path(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


def _mount_tmpfs(where: Path, size_kib: int) -> bool:
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(where)],
        capture_output=True,
        check=False,
    )
    return done.returncode == 0


def _unmount(where: Path) -> None:
    if subprocess.run(["umount", str(where)], capture_output=True, check=False).returncode:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


@cache
def _tmpfs_available() -> bool:
    """Whether this process may mount a tmpfs (root with CAP_SYS_ADMIN, ``mount`` on PATH)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    probe = Path(tempfile.mkdtemp(prefix="sentio-tmpfs-probe-"))
    try:
        if not _mount_tmpfs(probe, 64):
            return False
        _unmount(probe)
        return True
    finally:
        probe.rmdir()


class Disk(abc.ABC):
    """A folder on a disk that can be made full: ``fill(leave)`` then ``free()``."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    @abc.abstractmethod
    def fill(self, leave: int = 0) -> None:
        """Use up the free space, leaving ``leave`` blocks of 4 KiB."""

    def free(self) -> None:
        """Give the space back."""
        shutil.rmtree(self.root / ".pinned", ignore_errors=True)

    def pin(self, folder: Path) -> None:
        """Keep the space of ``folder``'s files in use after they are deleted (hard links)."""
        pinned = self.root / ".pinned"
        for f in folder.rglob("*"):
            if f.is_file():
                target = pinned / f.relative_to(folder)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.link(f, target)


class TmpfsDisk(Disk):
    """A real tmpfs filled by a filler file."""

    @property
    def filler(self) -> Path:
        return self.root / ".filler"

    def fill(self, leave: int = 0) -> None:
        st = os.statvfs(self.root)
        assert st.f_frsize == BLOCK
        extra = max(st.f_bavail - leave, 0) * BLOCK
        with open(self.filler, "ab") as fh:
            fh.write(b"\0" * extra)
        assert os.statvfs(self.root).f_bavail == leave

    def free(self) -> None:
        super().free()
        self.filler.unlink(missing_ok=True)


class InjectedDisk(Disk):
    """An ordinary folder whose writers are wrapped to charge a block budget (see above)."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        super().__init__(root)
        self.budget: int | None = None  # None: not full, nothing is charged
        self.charged: dict[int, int] = {}  # inode -> blocks paid for
        self._install(monkeypatch)

    def fill(self, leave: int = 0) -> None:
        self.charged = {
            f.stat().st_ino: _blocks(f.stat().st_size) for f in self.root.rglob("*") if f.is_file()
        }
        self.budget = leave

    def free(self) -> None:
        super().free()
        self.budget = None

    def _room(self, ino: int) -> int:
        """Bytes an inode may hold: what it paid for plus the budget."""
        assert self.budget is not None
        return (self.charged.get(ino, 0) + self.budget) * BLOCK

    def _charge(self, ino: int, size: int) -> bool:
        """Pay for ``size`` bytes of ``ino``; False (nothing paid) when the budget is short."""
        assert self.budget is not None
        need = _blocks(size) - self.charged.get(ino, 0)
        if need > self.budget:
            return False
        if need > 0:
            self.budget -= need
            self.charged[ino] = _blocks(size)
        return True

    def _enospc(self, where: str | os.PathLike[str]) -> OSError:
        return OSError(errno.ENOSPC, ENOSPC_TEXT, str(where))

    def _install(self, mp: pytest.MonkeyPatch) -> None:
        real_write, real_fsync = os.write, os.fsync
        real_write_bytes, real_write_text = pathlib.Path.write_bytes, pathlib.Path.write_text
        real_write_ipc = pl.DataFrame.write_ipc

        def watched(fd: int) -> bool:
            return self.budget is not None and _under(_fd_path(fd), self.root)

        def write(fd: int, data: Any) -> int:
            if not watched(fd):
                return real_write(fd, data)
            st = os.fstat(fd)
            end = max(st.st_size, os.lseek(fd, 0, os.SEEK_CUR)) + len(data)
            if self._charge(st.st_ino, end):
                return real_write(fd, data)
            fits = self._room(st.st_ino) - (end - len(data))
            if fits <= 0:
                raise self._enospc(_fd_path(fd))
            written = real_write(fd, memoryview(data)[:fits])  # a short write, as the kernel's
            self._charge(st.st_ino, end - len(data) + written)
            return written

        def fsync(fd: int) -> None:
            if watched(fd):
                st = os.fstat(fd)
                if not self._charge(st.st_ino, st.st_size):  # flushed late: a delayed ENOSPC
                    raise self._enospc(_fd_path(fd))
            real_fsync(fd)

        def after_path_write(path: pathlib.Path) -> None:
            if self.budget is None or not _under(path, self.root):
                return
            st = path.stat()
            if not self._charge(st.st_ino, st.st_size):
                keep = min(self._room(st.st_ino), st.st_size)
                os.truncate(path, keep)  # what fitted stays, as after a short write
                self._charge(st.st_ino, keep)
                raise self._enospc(path)

        def write_bytes(path: pathlib.Path, data: Any) -> int:
            n = real_write_bytes(path, data)
            after_path_write(path)
            return n

        def write_text(path: pathlib.Path, data: str, *args: Any, **kwargs: Any) -> int:
            n = real_write_text(path, data, *args, **kwargs)
            after_path_write(path)
            return n

        def write_ipc(frame: pl.DataFrame, file: Any, *args: Any, **kwargs: Any) -> Any:
            out = real_write_ipc(frame, file, *args, **kwargs)
            path = file if isinstance(file, str | os.PathLike) else None
            if self.budget is not None and path is not None and _under(path, self.root):
                st = Path(path).stat()
                if not self._charge(st.st_ino, st.st_size):
                    # polars' form: a plain OSError, no errno, the file left behind
                    raise OSError(f"{ENOSPC_TEXT} (os error 28)")
            return out

        mp.setattr(os, "write", write)
        mp.setattr(os, "fsync", fsync)
        mp.setattr(pathlib.Path, "write_bytes", write_bytes)
        mp.setattr(pathlib.Path, "write_text", write_text)
        mp.setattr(pl.DataFrame, "write_ipc", write_ipc)


@pytest.fixture(params=["tmpfs", "injected"])
def disk(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Disk]:
    """A small disk that a test can fill: a real tmpfs (where mountable) or the injected one."""
    root = tmp_path / "disk"
    root.mkdir()
    if request.param == "injected":
        yield InjectedDisk(root, monkeypatch)
        return
    if not _tmpfs_available() or not _mount_tmpfs(root, DISK_KIB):
        pytest.skip("cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN)")
    try:
        yield TmpfsDisk(root)
    finally:
        _unmount(root)


def _tree(root: Path, *, skip: tuple[str, ...] = (".filler", ".pinned")) -> dict[str, bytes | None]:
    """Everything under ``root``: relative name -> bytes (a file) or None (a folder), the
    test's own filler and pinned files left out."""
    return {
        str(f.relative_to(root)): f.read_bytes() if f.is_file() else None
        for f in sorted(root.rglob("*"))
        if f.relative_to(root).parts[0] not in skip
    }


# -- the helpers of sentio.io ---------------------------------------------------------------


def test_is_disk_full_knows_the_errno_and_the_polars_forms() -> None:
    """Both forms of a full disk are recognised, and nothing else is."""
    assert is_disk_full(OSError(errno.ENOSPC, ENOSPC_TEXT))
    assert is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert is_disk_full(OSError(f"{ENOSPC_TEXT} (os error 28)"))  # polars / Arrow: no errno
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not is_disk_full(FileNotFoundError(errno.ENOENT, "No such file or directory"))
    assert not is_disk_full(ValueError(ENOSPC_TEXT))
    assert ResourceError.exit_code == 8  # what the CLI exits with


def test_atomic_write_on_a_full_disk_keeps_the_old_file(disk: Disk) -> None:
    """An atomic write that runs out of space raises ResourceError naming the file, leaves
    the previous content byte for byte and no temporary file; with space, it succeeds."""
    target = disk.root / "data" / "state.json"
    write_text_atomic(target, "old\n")
    disk.fill(leave=1)
    with pytest.raises(ResourceError, match=f"^{re.escape(str(target))}: no space left"):
        write_text_atomic(target, "x" * (3 * BLOCK))  # 3 blocks, 1 free
    with pytest.raises(ResourceError, match=f"^{re.escape(str(target))}: no space left"):
        atomic_write(target, lambda tmp: pl.DataFrame({"a": range(5000)}).write_ipc(tmp))
    assert _tree(disk.root) == {"data": None, "data/state.json": b"old\n"}
    disk.free()
    write_text_atomic(target, "new\n")
    assert _tree(disk.root) == {"data": None, "data/state.json": b"new\n"}


# -- (f1) training ----------------------------------------------------------------------------

FOLD = 1  # k-fold over two sessions: fold 1 trains on one session and tests on the other
SW = cast(dict[str, dict[str, Any]], SHORT_WINDOWS)
PLAIN: dict[str, Any] = {
    **SW,
    "regimes": {**SW["regimes"], "enabled": False},
    "agent": {
        **SW["agent"],
        "algo": "maskable_ppo",
        "extractor": "mlp",
        "quantile_critic": False,
        "regime_gating": False,
    },
    "env": {**SW["env"], "masks": {"regime": False}},
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[SentioConfig, dict[str, str]]:
    """Bars, features and folds on an ordinary disk: only training's outputs go to the full one."""
    base = tmp_path_factory.mktemp("inputs")
    raw = base / "raw" / "bars.feather"
    raw.parent.mkdir()
    minute_bars("2024-01-08", "2024-01-10", seed=3, price=400.0).write_ipc(raw)
    workdir = base / "wd"
    cfg = config_from_dict({**PLAIN, "paths": {"workdir": str(workdir)}})
    bars = stages.ingest_stage([raw], cfg, workdir)["output"]
    features = stages.features_stage(bars, cfg, workdir)["output"]
    folds = stages.folds_stage(features, cfg, workdir)["output"]
    return cfg, {"bars": bars, "features": features, "folds": folds}


# progress calls of this training (2 rollouts of 64 steps): after rollout 1 (the checkpoint
# is written when rollout 2 starts), after rollout 2 (model.zip follows), after model.zip
# (the backtest feathers follow)
PHASES = {"checkpoint": 1, "model": 2, "backtest": 3}


@pytest.mark.parametrize("phase", list(PHASES))
def test_training_on_a_full_disk_leaves_nothing(
    disk: Disk, inputs: tuple[SentioConfig, dict[str, str]], phase: str
) -> None:
    """The disk fills up while a training writes its checkpoint, its model or its backtest:
    train_stage raises ResourceError (exit code 8) naming a path under the working
    directory, and nothing of the training is left under ``workdir/train`` (no
    ``.partial`` staging folder, no checkpoints, no temporary files, no stage folder).
    Once space is free again the stage runs from scratch and succeeds."""
    cfg, paths = inputs
    workdir = disk.root / "wd"
    calls: list[tuple[int, int]] = []

    def progress(done: int, total: int, *_: Any) -> None:
        calls.append((done, total))
        if len(calls) == PHASES[phase]:
            # removing the checkpoints before the backtest must not make room again
            disk.pin(workdir / "train")
            disk.fill(leave=0)

    def train(progress: Callable[..., None] | None) -> dict[str, Any]:
        return stages.train_stage(
            paths["bars"],
            paths["features"],
            paths["folds"],
            None,
            cfg,
            workdir,
            fold=FOLD,
            seed=0,
            progress=progress,
        )

    with pytest.raises(ResourceError) as info:
        train(progress)
    message = str(info.value)
    assert message.startswith(f"{workdir}{os.sep}") and "no space left" in message
    assert "\n" not in message and info.value.exit_code == 8
    expected = {"checkpoint": "checkpoint.zip", "model": "model.zip", "backtest": ".feather"}
    assert message.split(":")[0].endswith(expected[phase])  # it failed where meant to
    assert len(calls) == PHASES[phase]
    # no .partial staging folder, no checkpoints, no temporary file, no stage folder
    assert _tree(workdir) == {"train": None}

    disk.free()
    summary = train(None)
    assert summary["train"]["resumed_from"] == 0
    assert Path(summary["model"]).parent.parent == workdir / "train"
    assert not [p for p in (workdir / "train").rglob("*") if p.name.endswith((".tmp", ".partial"))]


# -- (f2) registration ------------------------------------------------------------------------

WINDOW = {"window_start": "2024-01-02", "window_end": "2024-03-28"}
GOOD = {"sharpe": 1.5, "dsr": 0.97, "max_drawdown": 0.12, **WINDOW}
GATE = RegistryConfig(min_dsr=0.95, max_drawdown=0.25, must_beat_champion=True)
MODEL_BLOCKS = 4


def _sources(folder: Path, tag: str) -> tuple[Path, Path]:
    """A model of exactly MODEL_BLOCKS blocks and a one-block configuration."""
    folder.mkdir(parents=True, exist_ok=True)
    model = folder / f"model-{tag}.zip"
    model.write_bytes(tag.encode().ljust(MODEL_BLOCKS * BLOCK, b"."))
    config = folder / f"config-{tag}.yaml"
    config.write_text(f"agent:\n  algo: maskable_ppo  # {tag}\n")
    return model, config


def _register(reg: Registry, sources: Path, tag: str, once: bool = False, **metrics: Any) -> str:
    model, config = _sources(sources, tag)
    kwargs: dict[str, Any] = {
        "data_hashes": {"bars": "b" * 64},
        "code_version": "0123456789abcdef",
        "algo": "maskable_ppo",
        "extra": {"train_key": f"key-{tag}"},
    }
    if once:
        return reg.register_once(model, config, {**GOOD, **metrics}, **kwargs)[0].version
    return reg.register(model, config, {**GOOD, **metrics}, **kwargs).version


def _until_next_line_crosses_a_block(reg: Registry, op: Callable[[], object]) -> None:
    """Repeat ``op`` (one history line each) until the same line again would start a new
    4 KiB block of ``history.jsonl``: on a tmpfs, that append needs a free page."""
    for _ in range(100):
        before = reg.history_path.stat().st_size
        op()
        size = reg.history_path.stat().st_size
        if size % BLOCK + (size - before) > BLOCK:
            return
    raise AssertionError("history lines of zero length?")


SCENARIOS = [
    "register: the model copy",
    "register_once: the manifest",
    "promote: the pointer",
    "promote: the history line",
    "promote_if_passes: the rejection line",
]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_registration_on_a_full_disk_changes_nothing(
    disk: Disk, tmp_path: Path, scenario: str
) -> None:
    """A registration or a change of champion that runs out of space mid-way raises
    ResourceError naming a path in the registry and changes nothing: ``champion.json`` and
    ``history.jsonl`` stay byte-identical, no partial version folder or temporary file is
    left, :meth:`Registry.list` is unchanged and the champion still verifies. The same
    operation succeeds once space is free (the lock was released)."""
    reg = Registry(disk.root / "registry")
    sources = tmp_path / "sources"
    champ = _register(reg, sources, "champ", sharpe=1.0)
    reg.promote(champ, "first")
    other = _register(reg, sources, "other", sharpe=1.2)
    worse = _register(reg, sources, "worse", sharpe=0.5)
    toggle = [other, champ]

    def promote_next() -> None:
        reg.promote(toggle[0], "again")
        toggle.reverse()

    op: Callable[[], object]
    leave, names = 0, ""
    if scenario == "register: the model copy":
        leave, names = MODEL_BLOCKS - 1, "versions"
        op = lambda: _register(reg, sources, "new")  # noqa: E731
    elif scenario == "register_once: the manifest":
        leave, names = MODEL_BLOCKS + 1, "versions"  # the model and the config fit
        op = lambda: _register(reg, sources, "new", once=True)  # noqa: E731
    elif scenario == "promote: the pointer":
        leave, names = 0, "champion.json"
        op = promote_next
    elif scenario == "promote: the history line":
        _until_next_line_crosses_a_block(reg, promote_next)
        leave, names = 1, "history.jsonl"  # the new pointer fits, the history line does not
        op = promote_next
    else:
        _until_next_line_crosses_a_block(reg, lambda: reg.promote_if_passes(worse, GATE))
        leave, names = 0, "history.jsonl"
        op = lambda: reg.promote_if_passes(worse, GATE)  # noqa: E731

    pointer = reg.champion()
    assert pointer is not None
    before = _tree(reg.root)
    listed = [v.version for v in reg.list()]
    disk.fill(leave=leave)
    with pytest.raises(ResourceError) as info:
        op()
    message = str(info.value)
    assert message.startswith(f"{reg.root / names}:") and "no space left" in message
    assert "\n" not in message

    # pointer, history, versions byte for byte; no temporary file or folder
    assert _tree(reg.root) == before
    assert [v.version for v in reg.list()] == listed
    assert reg.champion() == pointer
    assert reg.integrity(pointer["version"]).ok
    reg.verify(pointer["version"])

    disk.free()
    op()
    assert _tree(reg.root) != before
    assert not [p for p in reg.versions_dir.iterdir() if p.name.startswith(".")]
