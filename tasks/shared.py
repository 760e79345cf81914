"""The training fan-out's side of the shared storage (``paths.storage``, :mod:`sentio.storage`).

The flow asks :func:`storage_plan` which trainings must run (a training already in its
working directory, or published in the storage by any run on any machine, is copied here
instead), publishes the stage folders the remote trainings read (:func:`publish_inputs`),
and after the trainings gathers every folder from the storage, each file checked against
the hash its writer recorded, publishing what only it has (:func:`gather_from_storage`).
The training tasks persist their Prefect results under the same root
(:func:`result_storage`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sentio import stages
from sentio.config import SentioConfig
from sentio.errors import ConfigError, StorageError
from sentio.io import sha256_bytes
from sentio.storage import SharedStorage
from tasks.train import training_key

__all__ = ["StoragePlan", "gather_from_storage", "publish_inputs", "result_storage", "storage_plan"]

INPUTS = ("bars_path", "features_path", "folds_path", "regimes_path", "warm_path")
"""The training task's input files (the last two optional)."""


@dataclass(frozen=True)
class StoragePlan:
    """The trainings of a run against the shared storage."""

    store: SharedStorage
    root: Path
    """The run's working directory (absolute)."""
    keys: dict[tuple[int, int], str]
    """The training key of every ``(fold, seed)``, computed on this machine."""
    pending: list[tuple[int, int]]
    """The trainings neither in the working directory nor in the storage."""
    found: dict[tuple[int, int], dict[str, Any]]
    """The verified summaries of the others (in the working directory now)."""


def storage_plan(
    jobs: list[tuple[int, int]], *, cfg: SentioConfig, workdir: str, params: dict[str, Any]
) -> StoragePlan:
    """Which of ``jobs`` must run; the others are in ``workdir`` now (copied from the
    storage where they were only there).

    Raises:
        StorageError: the storage cannot be reached, or a file in it is damaged.
    """
    store = SharedStorage(str(cfg.paths.storage))
    root = stages.workdir_root(workdir)
    keys = {(fold, seed): training_key(params, fold, seed) for fold, seed in jobs}
    found: dict[tuple[int, int], dict[str, Any]] = {}
    pending = []
    for job in jobs:
        summary = stages.stage_summary("train", keys[job], workdir)
        if summary is None and store.get_stage("train", keys[job], root):
            summary = stages.stage_summary("train", keys[job], workdir)
        if summary is None:
            pending.append(job)
        else:
            found[job] = summary
    return StoragePlan(store, root, keys, pending, found)


def publish_inputs(plan: StoragePlan, params: dict[str, Any]) -> dict[str, str | None]:
    """Publish the stage folders holding the trainings' inputs; each input's name in the
    storage (``<stage>/<key>/<file>`` under its ``stages/``).

    Raises:
        ConfigError: an input is not a stage output (a file of a stage folder).
        StorageError: the storage cannot be reached.
    """
    inputs: dict[str, str | None] = {}
    for name in INPUTS:
        path = params.get(name)
        if path is None:
            inputs[name] = None
            continue
        folder = Path(path).parent  # <workdir>/<stage>/<key>/
        if not (folder / stages.STAGE_SUMMARY).is_file():
            raise ConfigError(
                f"train: {name} {path} is not in a stage folder (no "
                f"{stages.STAGE_SUMMARY} beside it), so it cannot be published to "
                f"{plan.store.url}"
            )
        rel = Path(folder.parent.name, folder.name)
        plan.store.put_stage(folder, *rel.parts)
        inputs[name] = f"{rel.as_posix()}/{Path(path).name}"
    return inputs


def gather_from_storage(
    plan: StoragePlan, jobs: list[tuple[int, int]], *, workdir: str
) -> list[dict[str, Any]]:
    """The summaries of ``jobs`` in the working directory (in their order), copying from
    the storage what is only there and publishing what is only here.

    Raises:
        StorageError: a training that ran is neither here nor complete in the storage,
            the storage cannot be reached, or a file in it is damaged.
    """
    summaries = []
    for fold, seed in jobs:
        key = plan.keys[(fold, seed)]
        summary = plan.found.get((fold, seed))  # verified by the plan already
        if summary is None:
            summary = stages.stage_summary("train", key, workdir)
        if summary is None and plan.store.get_stage("train", key, plan.root):
            summary = stages.stage_summary("train", key, workdir)
        if summary is None:
            raise StorageError(
                f"train fold {fold} seed {seed}: the training completed, but its folder "
                f"{plan.store.where('stages', 'train', key)} is not complete in the storage"
            )
        plan.store.put_stage(plan.root / "train" / key, "train", key)
        summaries.append(summary)
    return summaries


def result_storage(url: str) -> Any:
    """Prefect result storage under the storage's root (``prefect-results``): a remote
    file-system block, saved on the Prefect server under a name derived from the URL
    (Prefect requires a saved block for task results; saving again changes nothing)."""
    from prefect.filesystems import LocalFileSystem, RemoteFileSystem

    store = SharedStorage(url)
    where = store.where("prefect-results")
    protocols = store.fs.protocol if isinstance(store.fs.protocol, tuple) else (store.fs.protocol,)
    block: Any
    if "file" in protocols:  # a shared folder by file:// URL (a mount every machine has)
        block = LocalFileSystem(basepath=f"{store.root}/prefect-results")
    else:
        block = RemoteFileSystem(basepath=where)
    block.save(f"sentio-results-{sha256_bytes(where.encode())[:16]}", overwrite=True)
    return block
