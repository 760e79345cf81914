"""Storage every training machine reaches, addressed by a URL: ``paths.storage``.

With ``paths.storage`` set (``s3://bucket/prefix`` with ``s3fs`` installed, ``gs://...``
with ``gcsfs``, ``file:///mnt/shared/sentio``: any fsspec URL), a training that runs on
another machine needs nothing of the flow's working directory: the flow publishes the
stage folders the trainings read, a worker copies them into its own cache
(``paths.storage_cache``, kept bounded by :mod:`sentio.storage_cache`), trains there,
pushes every checkpoint and finally the training's folder, and the flow copies that
folder into its working directory.

Layout under the root::

    stages/<stage>/<key>/MANIFEST       a stage folder's record (prefix, sha256 of its files)
    stages/<stage>/<key>/<prefix>/...   the folder's files, one prefix per writer
    stages/<stage>/<key>/USED           rewritten when a run publishes the folder again
    checkpoints/<key>/<steps>/...       a training's last checkpoint, checkpoint.json last
    prefect-results/                    the training task's Prefect results

Hashes are checked on both sides: the writer records every file's sha256 in the folder's
manifest (a checkpoint's ``checkpoint.json`` lists its own files) after checking its local
copy, and the reader checks every file it copies against it. A folder without its manifest
is incomplete (its writer died) and is not there for a reader. Every failure to reach the
storage is a :class:`~sentio.errors.StorageError` naming the URL and the operation.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sentio.errors import SentioError, StorageError
from sentio.io import sha256_file, staged_folder
from sentio.times import now_utc_text

__all__ = [
    "CHECKPOINT_META",
    "MANIFEST",
    "USED",
    "DamagedCopyError",
    "SharedStorage",
    "checkpoint_steps",
]


class DamagedCopyError(StorageError):
    """A file in the storage does not match the sha256 its writer recorded."""


MANIFEST = ".sentio-manifest.json"
"""Written last into a published stage folder: ``{relative path: sha256}`` of its files."""
USED = ".sentio-used"
"""Rewritten in a published stage folder each time a run publishes it again (its time)."""
CHECKPOINT_META = "checkpoint.json"
"""A checkpoint's record (written last); its ``files`` are the checkpoint's other files."""


class SharedStorage:
    """The storage root at ``url`` (fsspec)."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        try:
            import fsspec

            # a fresh instance: credentials and endpoints are read now, not reused
            self.fs, root = fsspec.core.url_to_fs(self.url, skip_instance_cache=True)
        except ImportError as exc:
            raise StorageError(
                f"paths.storage {self.url}: {exc} (install the package of the URL's "
                "filesystem, e.g. pip install s3fs for s3://)"
            ) from None
        except ValueError as exc:
            raise StorageError(
                f"paths.storage {self.url}: not a storage URL fsspec knows: {exc}"
            ) from None
        self.root = str(root).rstrip("/")

    # ------------------------------------------------------------------ basics
    def _path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def where(self, *parts: str) -> str:
        """The URL of ``parts`` under the root (for messages)."""
        return "/".join([self.url, *parts])

    @contextlib.contextmanager
    def _reaching(self, what: str) -> Iterator[None]:
        """Turn any failure of the filesystem inside the block into one StorageError."""
        try:
            yield
        except SentioError:
            raise
        except Exception as exc:  # noqa: BLE001 - every backend raises its own kinds
            text = str(exc).splitlines()[0] if str(exc) else ""
            raise StorageError(
                f"storage {self.url}: cannot {what}: {type(exc).__name__}: {text}"
            ) from exc

    def _put(self, local: Path, remote: str) -> None:
        self.fs.makedirs(remote.rsplit("/", 1)[0], exist_ok=True)  # object stores: no-op
        self.fs.put_file(str(local), remote)

    def _pipe(self, remote: str, data: bytes) -> None:
        self.fs.makedirs(remote.rsplit("/", 1)[0], exist_ok=True)
        self.fs.pipe_file(remote, data)

    def _read_json(self, remote: str, what: str) -> dict[str, Any] | None:
        with self._reaching(f"read {what}"):
            if not self.fs.exists(remote):
                return None
            data = self.fs.cat_file(remote)
        try:
            value = json.loads(data)
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    def _get_checked(self, remote: str, local: Path, sha256: str, what: str) -> None:
        """Copy ``remote`` to ``local`` and check it against ``sha256``."""
        local.parent.mkdir(parents=True, exist_ok=True)
        with self._reaching(f"copy {what}"):
            self.fs.get_file(remote, str(local))
        got = sha256_file(local)
        if got != sha256:
            local.unlink(missing_ok=True)
            raise DamagedCopyError(
                f"storage {what}: sha256 {got[:12]} does not match the {sha256[:12]} its "
                "writer recorded (damaged or overwritten in the storage); delete that folder "
                "there and run again"
            )

    # ------------------------------------------------------------- stage folders
    def has_stage(self, stage: str, key: str) -> bool:
        """Whether the stage folder is published (its manifest is there)."""
        with self._reaching(f"look for {self.where('stages', stage, key)}"):
            return bool(self.fs.exists(self._path("stages", stage, key, MANIFEST)))

    def put_stage(self, folder: Path, stage: str, key: str) -> bool:
        """Publish the local stage folder ``folder`` as ``stages/<stage>/<key>`` unless it is
        there already (then its :data:`USED` file is rewritten: the folder's newest time is
        now); whether anything was copied.

        The files go under a prefix of this writer's own (``<token>/``) and the manifest,
        naming the prefix and every file's hash, goes last: two machines publishing the
        same key at once each write a consistent copy, and the last manifest wins.
        """
        if self.has_stage(stage, key):
            # used again: its time says so (sentio gc --storage spares recent entries)
            with self._reaching(f"write {self.where('stages', stage, key, USED)}"):
                self._pipe(self._path("stages", stage, key, USED), now_utc_text().encode())
            return False
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        hashes = {p.relative_to(folder).as_posix(): sha256_file(p) for p in files}
        token = uuid.uuid4().hex
        where = self.where("stages", stage, key)
        with self._reaching(f"write {where}"):
            for rel in hashes:
                self._put(folder / rel, self._path("stages", stage, key, token, rel))
            data = json.dumps({"prefix": token, "files": hashes}, indent=1, sort_keys=True)
            self._pipe(self._path("stages", stage, key, MANIFEST), data.encode())
        return True

    def get_stage(self, stage: str, key: str, root: Path) -> bool:
        """Copy ``stages/<stage>/<key>`` to ``root/<stage>/<key>``, every file checked
        against the manifest (a local copy whose files all match is kept as it is); False
        when it is not published."""
        manifest = self._read_json(
            self._path("stages", stage, key, MANIFEST), self.where("stages", stage, key)
        )
        if manifest is None:
            return False
        prefix, files = str(manifest.get("prefix", "")), dict(manifest.get("files") or {})
        final = root / stage / key
        if final.is_dir() and all(
            (final / rel).is_file() and sha256_file(final / rel) == sha
            for rel, sha in files.items()
        ):
            return True
        with staged_folder(final) as tmp:
            for rel, sha in files.items():
                self._get_checked(
                    self._path("stages", stage, key, prefix, rel),
                    tmp / rel,
                    str(sha),
                    self.where("stages", stage, key, prefix, rel),
                )
        return True

    # ---------------------------------------------------------------- checkpoints
    def put_checkpoint(self, key: str, folder: Path) -> int | None:
        """Publish the checkpoint in ``folder`` (a training's ``checkpoints/``) when it is
        complete and consistent, and drop the older ones; its step count, or None (nothing
        to publish yet, or the training was writing its next checkpoint).

        The files are first copied aside and checked against their ``checkpoint.json``, and
        the copies are uploaded: a training that goes on writing meanwhile (in a child
        process) cannot mix two checkpoints in the storage.
        """
        snapshot = folder.parent / f".{folder.name}.{uuid.uuid4().hex}.outgoing"
        try:
            try:
                snapshot.mkdir(parents=True)
                data = (folder / CHECKPOINT_META).read_bytes()
                meta = json.loads(data)
                steps, files = int(meta["num_timesteps"]), dict(meta["files"])
                for name, sha in files.items():
                    shutil.copyfile(folder / name, snapshot / name)
                    if sha256_file(snapshot / name) != sha:
                        return None  # the training is writing its next checkpoint
            except (OSError, ValueError, KeyError, TypeError):
                return None
            base = self._path("checkpoints", key)
            target = f"{base}/{steps:012d}"
            with self._reaching(f"write {self.where('checkpoints', key)}"):
                if not self.fs.exists(f"{target}/{CHECKPOINT_META}"):
                    for name in files:
                        self._put(snapshot / name, f"{target}/{name}")
                    self._pipe(f"{target}/{CHECKPOINT_META}", data)
                for older in self._checkpoint_steps(key):
                    if older < steps:
                        self.fs.rm(f"{base}/{older:012d}", recursive=True)
            return steps
        finally:
            shutil.rmtree(snapshot, ignore_errors=True)

    def _checkpoint_steps(self, key: str) -> list[int]:
        base = self._path("checkpoints", key)
        with self._reaching(f"list {self.where('checkpoints', key)}"):
            if not self.fs.exists(base):
                return []
            names = [str(p).rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(base, detail=False)]
        return sorted(int(n) for n in names if n.isdigit())

    def latest_checkpoint(self, key: str) -> int | None:
        """The step count of training ``key``'s latest complete checkpoint in the storage."""
        for steps in reversed(self._checkpoint_steps(key)):
            remote = self._path("checkpoints", key, f"{steps:012d}", CHECKPOINT_META)
            with self._reaching(f"look for {self.where('checkpoints', key)}"):
                if self.fs.exists(remote):
                    return steps
        return None

    def get_checkpoint(self, key: str, folder: Path) -> int | None:
        """Copy the latest usable checkpoint of training ``key`` in the storage into
        ``folder`` unless ``folder`` holds one at least as far along; its step count, or
        None. A checkpoint whose files do not match its record (damaged in the storage) is
        passed over for an older one: the training resumes from less, or starts over,
        rather than from a damaged state."""
        here = checkpoint_steps(folder)
        for steps in reversed(self._checkpoint_steps(key)):
            if here is not None and here >= steps:
                return None
            remote = self._path("checkpoints", key, f"{steps:012d}")
            where = self.where("checkpoints", key, f"{steps:012d}")
            meta = self._read_json(f"{remote}/{CHECKPOINT_META}", where)
            if meta is None:
                continue  # its writer died before finishing it
            tmp = folder.parent / f".{folder.name}.{uuid.uuid4().hex}.incoming"
            try:
                for name, sha in dict(meta["files"]).items():
                    self._get_checked(f"{remote}/{name}", tmp / name, str(sha), f"{where}/{name}")
                (tmp / CHECKPOINT_META).write_text(json.dumps(meta))
                shutil.rmtree(folder, ignore_errors=True)
                os.replace(tmp, folder)
            except DamagedCopyError:
                continue
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            return steps
        return None

    # ------------------------------------------------------------- housekeeping
    def exists(self) -> bool:
        """Whether the storage's root is there (a bucket or folder written to before)."""
        with self._reaching("reach the storage's root"):
            return bool(self.fs.exists(self.root))

    def entries(self, *parts: str, files: bool = False) -> list[str]:
        """The names directly under ``parts`` (none when it is not there); ``files``: only
        the files. An object store's marker of the folder itself is not an entry."""
        base = self._path(*parts).rstrip("/")
        with self._reaching(f"list {self.where(*parts)}"):
            if not self.fs.exists(base):
                return []
            listed = self.fs.ls(base, detail=True)
        names = [
            str(e["name"]).rstrip("/").rsplit("/", 1)[-1]
            for e in listed
            if str(e["name"]).rstrip("/") != base and (not files or e.get("type") == "file")
        ]
        return sorted(n for n in names if n)

    def modified(self, *parts: str) -> float:
        """The newest modification time (POSIX seconds) of the files under ``parts``."""
        path = self._path(*parts)
        with self._reaching(f"read the times of {self.where(*parts)}"):
            found = [path] if self.fs.isfile(path) else self.fs.find(path)
            times = []
            for f in found:
                with contextlib.suppress(FileNotFoundError):  # removed meanwhile
                    times.append(self.fs.modified(f).timestamp())
            return max(times, default=0.0)

    def size(self, *parts: str) -> int:
        """Bytes stored under ``parts`` (a file or a folder)."""
        with self._reaching(f"measure {self.where(*parts)}"):
            return int(self.fs.du(self._path(*parts)))

    def read_text(self, *parts: str) -> str:
        """The text of the file ``parts`` (undecodable bytes replaced)."""
        with self._reaching(f"read {self.where(*parts)}"):
            data: bytes = self.fs.cat_file(self._path(*parts))
        return data.decode("utf-8", errors="replace")

    def remove(self, *parts: str) -> None:
        """Remove the file or folder ``parts`` (already gone: nothing to do)."""
        path = self._path(*parts)
        with self._reaching(f"remove {self.where(*parts)}"):
            if self.fs.exists(path):
                self.fs.rm(path, recursive=True)

    def drop_checkpoints(self, key: str) -> None:
        """Remove training ``key``'s checkpoints (it is published whole)."""
        base = self._path("checkpoints", key)
        with self._reaching(f"remove {self.where('checkpoints', key)}"):
            if self.fs.exists(base):
                self.fs.rm(base, recursive=True)


def checkpoint_steps(folder: Path) -> int | None:
    """The step count of the checkpoint in ``folder`` (a training's ``checkpoints/``), or None."""
    try:
        return int(json.loads((folder / CHECKPOINT_META).read_text())["num_timesteps"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
