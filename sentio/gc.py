"""What a working directory no longer needs, and removing it (``sentio gc``).

Every nightly run adds content-addressed stage folders (``<workdir>/<stage>/<key>/``), a
run folder (``runs/<name>/``: its record and report) and Prefect results
(``prefect-results/``, the tasks' cache records). :func:`plan_gc` keeps

* the run folders of the newest runs down to the ``keep_runs``-th completed one (by their
  start time; the failed ones between them too) and of every run a registered model
  version came from;
* every stage folder one of those run records names, or a registered version names
  (its training's folder, by key);
* every Prefect result that names only kept folders; a result naming no folder at all
  (a failure, a non-stage task) only while it is younger than the oldest kept run;

and marks the rest for removal, with the unfinished staging folders of removed keys (a
killed training's checkpoints). It never touches the model registry, the paper-trading
ledgers, the lock file or anything it does not recognise. :func:`apply_gc` removes what a
plan lists; :class:`~sentio.workdir.WorkdirLock` keeps runs out meanwhile (the CLI takes it).

With the shared storage of scale-out trainings (``paths.storage``, :mod:`sentio.storage`;
``sentio gc --storage``) the same kept set applies there: its stage folders
(``stages/<stage>/<key>``) that nothing kept references; the checkpoints
(``checkpoints/<key>``) of trainings published whole (superseded by their folder), or
that nothing kept references and that are older than the oldest kept run (a run killed
during its trainings names none of them: it resumes from those written since it
started); the Prefect results (``prefect-results/``) naming a folder that is not kept,
and those naming none older than the oldest kept run. Nothing written to the storage in
the last ``storage_grace`` seconds (48 hours; ``--grace-hours``) is removed, whatever
references it: other working directories may share the storage (a training published
there is a cache hit for each of them), and their runs are not read here, so a run of
theirs in progress keeps what it has published or published again (a run publishing its
inputs refreshes those already there); what they used before the grace is removed unless
this working directory keeps it (their next runs copy or train it again). Checkpoints of
trainings published whole go at any time. The CLI refuses a storage that none of the kept
runs used.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sentio.errors import ConfigError, SentioError

if TYPE_CHECKING:
    from sentio.storage import SharedStorage

__all__ = ["CACHED_STAGES", "GcPlan", "Removal", "apply_gc", "describe", "plan_gc"]

CACHED_STAGES = ("ingest", "features", "folds", "regimes", "warm", "train")
"""The stages whose outputs are content-addressed folders ``<workdir>/<stage>/<key>/``."""
STORAGE_GRACE = 48 * 3600.0
"""Seconds during which what was written to the shared storage (or published there again:
:meth:`~sentio.storage.SharedStorage.put_stage` refreshes a folder it finds) is kept
whatever references it (``sentio gc --storage --grace-hours``)."""
RUNS = "runs"
RESULTS = "prefect-results"
_REFERENCE = re.compile(
    r"[/\\](" + "|".join(CACHED_STAGES) + r")[/\\]([0-9a-f]{16,64})(?![0-9a-f])"
)
_RUN_REFERENCE = re.compile(r"[/\\]" + RUNS + r"[/\\]([^/\\\"']+)")
_STAGING = re.compile(r"^\.([0-9a-f]{16,64})(?:\.partial|\..+\.tmp)$")
_KEY = re.compile(r"^[0-9a-f]{16,64}$")


@dataclass(frozen=True)
class Removal:
    """One thing a plan removes."""

    path: Path | str
    """A local path, or the URL of an entry of the shared storage."""
    kind: str
    """``stage folder``, ``staging folder``, ``run folder``, ``Prefect result``, or in the
    shared storage ``storage stage folder``, ``storage checkpoints``, ``storage Prefect
    result``."""
    size: int
    """Bytes on disk (the files' sizes)."""
    parts: tuple[str, ...] = ()
    """An entry of the shared storage: its parts under the storage's root."""


@dataclass
class GcPlan:
    """What :func:`plan_gc` keeps and removes."""

    workdir: Path
    kept_runs: list[str]
    versions: int
    """Registered model versions whose references were kept."""
    removals: list[Removal] = field(default_factory=list)
    storage: SharedStorage | None = None
    """The shared storage cleaned too (``None``: only the working directory)."""

    @property
    def size(self) -> int:
        return sum(r.size for r in self.removals)

    def counts(self) -> dict[str, tuple[int, int]]:
        """``{kind: (count, bytes)}`` of the removals."""
        out: dict[str, tuple[int, int]] = {}
        for r in self.removals:
            n, b = out.get(r.kind, (0, 0))
            out[r.kind] = (n + 1, b + r.size)
        return out


def plan_gc(
    workdir: str | os.PathLike[str],
    *,
    keep_runs: int,
    registry: Path,
    storage: SharedStorage | None = None,
    storage_grace: float = STORAGE_GRACE,
    now: float | None = None,
) -> GcPlan:
    """What to remove from ``workdir`` (and from the shared ``storage`` when given) keeping
    the last ``keep_runs`` runs and whatever the registered versions under ``registry``
    reference; in the storage, also whatever was written there in the last
    ``storage_grace`` seconds before ``now`` (default: the time of the call).

    Raises:
        ConfigError: ``keep_runs`` below 1, ``workdir`` is not a folder, or none of the
            kept runs used ``storage``.
        StorageError: the storage is not there or cannot be listed or read.
    """
    if keep_runs < 1:
        raise ConfigError(f"gc: --keep-runs must be at least 1 (got {keep_runs})")
    root = Path(workdir).expanduser().resolve()
    if not root.is_dir():
        raise ConfigError(f"gc: {root} is not a working directory (no such folder)")
    runs = _runs_newest_first(root / RUNS)
    kept = _last_completed(runs, keep_runs)
    stages: set[tuple[str, str]] = set()
    run_names = {name for name, _, _ in kept}
    for _, _, record in kept:
        stages |= _stage_references(record)
    versions = 0
    for manifest in sorted((Path(registry) / "versions").glob("*/manifest.json")):
        text = _read(manifest)
        versions += 1
        stages |= _stage_references(text)
        try:
            data = json.loads(text)
        except ValueError:
            data = {}
        extra = data.get("extra") if isinstance(data, dict) else None
        if isinstance(extra, dict):
            if isinstance(extra.get("train_key"), str):
                stages.add(("train", extra["train_key"]))
            if isinstance(extra.get("run"), str):
                run_names.add(extra["run"])
    oldest = min((started for _, started, _ in kept), default=None)
    plan = GcPlan(root, [name for name, _, _ in kept], versions)
    plan.removals += _stage_removals(root, stages)
    plan.removals += [
        Removal(root / RUNS / name, "run folder", _size(root / RUNS / name))
        for name, _, _ in runs
        if name not in run_names
    ]
    every_run = {name for name, _, _ in runs}
    plan.removals += _result_removals(root / RESULTS, stages, run_names, every_run, oldest)
    if storage is not None:
        if not _used_storage(root, [name for name, _, _ in kept], storage.url):
            raise ConfigError(
                f"gc --storage: none of the last runs of {root} used the storage {storage.url} "
                "(paths.storage in their config.yaml); not cleaning a storage this working "
                "directory may not own"
            )
        plan.storage = storage
        written_since = (time.time() if now is None else now) - storage_grace
        plan.removals += _storage_removals(storage, stages, oldest, written_since)
    return plan


def apply_gc(plan: GcPlan) -> None:
    """Remove everything ``plan`` lists (already gone: nothing to do).

    Raises:
        StorageError: an entry of the shared storage cannot be removed.
    """
    for removal in plan.removals:
        if removal.parts:
            assert plan.storage is not None
            plan.storage.remove(*removal.parts)
            continue
        path = Path(removal.path)
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def _used_storage(root: Path, runs: list[str], url: str) -> bool:
    """Whether one of the run folders ``runs`` ran with ``paths.storage`` = ``url``."""
    import yaml

    for name in runs:
        try:
            data = yaml.safe_load(_read(root / RUNS / name / "config.yaml")) or {}
            used = (data.get("paths") or {}).get("storage")
        except (yaml.YAMLError, AttributeError):
            continue
        if isinstance(used, str) and used.rstrip("/") == url.rstrip("/"):
            return True
    return False


def _storage_removals(
    storage: SharedStorage,
    kept: set[tuple[str, str]],
    oldest: float | None,
    written_since: float,
) -> list[Removal]:
    """What the shared storage holds that the kept set does not need (see the module
    docstring); entries whose names are not stage keys are left alone. ``oldest``: the
    start of the oldest kept run (a run killed in the middle of its trainings names no
    training yet, so checkpoints written since then are kept for it to resume).
    ``written_since``: entries with a file written at or after it are kept whatever
    references them (a run of another working directory sharing the storage may be using
    them now).

    Raises:
        StorageError: the storage's root is not there (a mistyped bucket or folder).
    """
    from sentio.errors import StorageError

    if not storage.exists():
        raise StorageError(
            f"storage {storage.url}: not found (no such bucket or folder); nothing cleaned"
        )

    def removal(kind: str, *parts: str) -> Removal:
        return Removal(storage.where(*parts), kind, storage.size(*parts), parts)

    def fresh(*parts: str, by_run: bool = False) -> bool:
        """Written within the grace (or, ``by_run``, since the oldest kept run started)."""
        when = storage.modified(*parts)  # 0: no file yet (being written)
        return (
            when == 0.0
            or when >= written_since
            or (by_run and oldest is not None and when >= oldest)
        )

    out = [
        removal("storage stage folder", "stages", stage, key)
        for stage in CACHED_STAGES
        for key in storage.entries("stages", stage)
        if _KEY.match(key) and (stage, key) not in kept and not fresh("stages", stage, key)
    ]
    for key in storage.entries("checkpoints"):
        if not _KEY.match(key):
            continue
        published = storage.has_stage("train", key)  # the whole folder supersedes them
        if published or (("train", key) not in kept and not fresh("checkpoints", key, by_run=True)):
            out.append(removal("storage checkpoint folder", "checkpoints", key))
    for name in storage.entries(RESULTS, files=True):
        named = _stage_references(storage.read_text(RESULTS, name))
        if named:
            needed = named <= kept or fresh(RESULTS, name)
        else:
            needed = fresh(RESULTS, name, by_run=True)
        if not needed:
            out.append(removal("storage Prefect result", RESULTS, name))
    return out


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _runs_newest_first(folder: Path) -> list[tuple[str, float, str]]:
    """``(name, start time, record text)`` of every run folder, newest first (its record's
    ``started``, else the folder's modification time)."""
    from sentio.times import as_utc

    runs = []
    for run in folder.iterdir() if folder.is_dir() else []:
        if not run.is_dir():
            continue
        text = _read(run / "run.json")
        started = run.stat().st_mtime
        try:
            stamp = json.loads(text).get("started")
            started = as_utc(stamp, "started").timestamp() if stamp else started
        except (ValueError, AttributeError, TypeError, SentioError):
            pass  # no readable start time: the folder's modification time stands
        runs.append((run.name, started, text))
    return sorted(runs, key=lambda r: (r[1], r[0]), reverse=True)


def _last_completed(runs: list[tuple[str, float, str]], keep: int) -> list[tuple[str, float, str]]:
    """The newest runs down to the ``keep``-th completed one (the failed ones between
    included): a week of failed nights does not push out the last good run."""
    kept, completed = [], 0
    for run in runs:
        if completed >= keep:
            break
        kept.append(run)
        with contextlib.suppress(ValueError, AttributeError):
            completed += json.loads(run[2]).get("status") == "completed"
    return kept


def _stage_references(text: str) -> set[tuple[str, str]]:
    return {(m.group(1), m.group(2)) for m in _REFERENCE.finditer(text)}


def _stage_removals(root: Path, kept: set[tuple[str, str]]) -> list[Removal]:
    out = []
    for stage in CACHED_STAGES:
        folder = root / stage
        for entry in sorted(folder.iterdir()) if folder.is_dir() else []:
            if not entry.is_dir():
                continue
            staging = _STAGING.match(entry.name)
            key = staging.group(1) if staging else entry.name
            if (stage, key) in kept:
                continue
            kind = "staging folder" if staging else "stage folder"
            out.append(Removal(entry, kind, _size(entry)))
    return out


def _result_removals(
    folder: Path,
    kept: set[tuple[str, str]],
    runs: set[str],
    every_run: set[str],
    oldest: float | None,
) -> list[Removal]:
    """The Prefect results naming a folder that is not kept (a run folder: one of
    ``every_run``, this working directory's), and those naming none that are older than
    the oldest kept run."""
    out = []
    for result in sorted(folder.iterdir()) if folder.is_dir() else []:
        if not result.is_file():
            continue
        text = _read(result)
        stages = _stage_references(text)
        named_runs = set(_RUN_REFERENCE.findall(text)) & every_run
        if stages or named_runs:
            if stages <= kept and named_runs <= runs:
                continue
        elif oldest is not None and result.stat().st_mtime >= oldest:
            continue
        out.append(Removal(result, "Prefect result", result.stat().st_size))
    return out


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def describe(plan: GcPlan, *, dry_run: bool) -> list[str]:
    """The lines ``sentio gc`` prints about ``plan``."""
    from sentio.text import format_bytes

    verb = "would remove" if dry_run else "removed"
    also = f" (and in the storage {plan.storage.url})" if plan.storage is not None else ""
    lines = [
        f"{plan.workdir}{also}: keeping the last {len(plan.kept_runs)} runs and what "
        f"{plan.versions} registered versions reference"
    ]
    if not plan.removals:
        return [*lines, "nothing to remove"]
    parts = [
        f"{n} {kind}{'' if n == 1 else 's'} ({format_bytes(b)})"
        for kind, (n, b) in sorted(plan.counts().items())
    ]
    lines.append(f"{verb} {', '.join(parts)}: {format_bytes(plan.size)} in all")
    if dry_run:
        width = max(len(r.kind) for r in plan.removals)
        lines += [
            f"  {r.kind:<{width}} {format_bytes(r.size):>10}  {r.path}" for r in plan.removals
        ]
    return lines
