"""The shared storage (``paths.storage``, :mod:`sentio.storage`) on a local folder by URL
and on a real S3 API (moto's server on 127.0.0.1, through s3fs).

Stage folders and checkpoints go up and come back byte for byte, every file checked
against the sha256 its writer recorded: a damaged copy in the storage, an unfinished
folder, a checkpoint caught mid-write or a storage that cannot be reached are each one
clear error (or nothing), never a silently different file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sentio.errors import StorageError
from sentio.io import sha256_file
from sentio.storage import CHECKPOINT_META, MANIFEST, SharedStorage, checkpoint_steps


def stage_folder(root: Path, stage: str = "folds", key: str = "k1") -> Path:
    folder = root / stage / key
    (folder / "fold_0").mkdir(parents=True)
    (folder / "folds.json").write_text('{"folds": [0]}')
    (folder / "fold_0" / "normaliser.json").write_bytes(os.urandom(4096))
    (folder / "summary.json").write_text('{"key": "k1"}')
    return folder


def files_of(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): sha256_file(p) for p in folder.rglob("*") if p.is_file()
    }


def test_a_stage_folder_goes_up_and_comes_back_byte_for_byte(
    storage: SharedStorage, tmp_path: Path
) -> None:
    folder = stage_folder(tmp_path / "a")
    assert not storage.has_stage("folds", "k1")
    assert not storage.get_stage("folds", "k1", tmp_path / "b")  # not published
    assert storage.put_stage(folder, "folds", "k1")
    assert storage.has_stage("folds", "k1")
    assert not storage.put_stage(folder, "folds", "k1")  # there already: nothing copied
    assert storage.get_stage("folds", "k1", tmp_path / "b")
    assert files_of(tmp_path / "b" / "folds" / "k1") == files_of(folder)
    # a local copy that matches is kept; one that differs is replaced by the storage's
    (tmp_path / "b" / "folds" / "k1" / "folds.json").write_text("edited")
    assert storage.get_stage("folds", "k1", tmp_path / "b")
    assert files_of(tmp_path / "b" / "folds" / "k1") == files_of(folder)


def test_a_damaged_file_in_the_storage_is_refused_with_its_url(
    storage: SharedStorage, tmp_path: Path
) -> None:
    folder = stage_folder(tmp_path / "a")
    storage.put_stage(folder, "folds", "k1")
    manifest = json.loads(storage.fs.cat_file(f"{storage.root}/stages/folds/k1/{MANIFEST}"))
    rel = f"stages/folds/k1/{manifest['prefix']}/fold_0/normaliser.json"
    storage.fs.pipe_file(f"{storage.root}/{rel}", b"not the bytes the writer recorded")
    with pytest.raises(StorageError) as err:
        storage.get_stage("folds", "k1", tmp_path / "b")
    assert f"{storage.url}/{rel}" in str(err.value)
    assert "does not match" in str(err.value)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "b" / "folds" / "k1").exists()  # no partial folder


def test_a_folder_whose_writer_died_before_its_manifest_is_not_there(
    storage: SharedStorage, tmp_path: Path
) -> None:
    folder = stage_folder(tmp_path / "a")
    storage.put_stage(folder, "folds", "k1")
    storage.fs.rm(f"{storage.root}/stages/folds/k1/{MANIFEST}")
    assert not storage.has_stage("folds", "k1")
    assert not storage.get_stage("folds", "k1", tmp_path / "b")
    assert storage.put_stage(folder, "folds", "k1")  # published again, whole


def checkpoint(folder: Path, steps: int) -> None:
    """A training's checkpoint as :func:`sentio.agents.training._save_checkpoint` writes it."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "checkpoint.zip").write_bytes(os.urandom(2048))
    (folder / "checkpoint.rng").write_bytes(os.urandom(64))
    (folder / f"best_{steps}.zip").write_bytes(os.urandom(512))
    names = sorted(p.name for p in folder.iterdir() if p.name != CHECKPOINT_META)
    meta = {"num_timesteps": steps, "files": {n: sha256_file(folder / n) for n in names}}
    (folder / CHECKPOINT_META).write_text(json.dumps(meta))


def test_the_latest_checkpoint_goes_up_and_replaces_the_older(
    storage: SharedStorage, tmp_path: Path
) -> None:
    here, there = tmp_path / "here" / "checkpoints", tmp_path / "there" / "checkpoints"
    assert storage.put_checkpoint("key", here) is None  # nothing written yet
    checkpoint(here, 256)
    assert storage.put_checkpoint("key", here) == 256
    checkpoint(here, 512)
    assert storage.put_checkpoint("key", here) == 512
    assert storage._checkpoint_steps("key") == [512]  # the older one is gone
    assert storage.latest_checkpoint("key") == 512
    assert storage.get_checkpoint("key", there) == 512
    assert checkpoint_steps(there) == 512
    assert files_of(there) == files_of(here)
    assert storage.get_checkpoint("key", there) is None  # as far along already
    storage.drop_checkpoints("key")
    assert storage._checkpoint_steps("key") == []


def test_a_checkpoint_caught_mid_write_is_not_published(
    storage: SharedStorage, tmp_path: Path
) -> None:
    """The training writes the next checkpoint's model before its record: a copy taken
    then would pair the new model with the old record, so none is taken."""
    here = tmp_path / "checkpoints"
    checkpoint(here, 256)
    (here / "checkpoint.zip").write_bytes(os.urandom(2048))  # the next one, half written
    assert storage.put_checkpoint("key", here) is None
    assert storage._checkpoint_steps("key") == []
    assert storage.latest_checkpoint("key") is None


def test_a_damaged_checkpoint_in_the_storage_is_passed_over(
    storage: SharedStorage, tmp_path: Path
) -> None:
    """A training never resumes from a checkpoint whose files do not match its record: it
    starts over (or from its own local checkpoint) instead."""
    here = tmp_path / "here"
    checkpoint(here, 256)
    storage.put_checkpoint("key", here)
    storage.fs.pipe_file(f"{storage.root}/checkpoints/key/{256:012d}/checkpoint.rng", b"x")
    assert storage.get_checkpoint("key", tmp_path / "there") is None
    assert not (tmp_path / "there").exists()
    assert not list(tmp_path.glob(".there.*"))  # no partial copy left


def test_two_writers_of_one_folder_each_publish_a_consistent_copy(
    storage: SharedStorage, tmp_path: Path
) -> None:
    """Two machines publishing the same key at once (their files differ: a summary names
    its own paths) write under prefixes of their own; the last manifest wins whole."""
    a, b = stage_folder(tmp_path / "a"), stage_folder(tmp_path / "b")
    (b / "summary.json").write_text('{"key": "k1", "workdir": "elsewhere"}')
    storage.put_stage(a, "folds", "k1")
    storage.fs.rm(f"{storage.root}/stages/folds/k1/{MANIFEST}")  # b started before a finished
    storage.put_stage(b, "folds", "k1")
    assert storage.get_stage("folds", "k1", tmp_path / "c")
    assert files_of(tmp_path / "c" / "folds" / "k1") == files_of(b)


def test_storage_that_cannot_be_reached_or_read_is_one_clear_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    with pytest.raises(StorageError) as err:
        SharedStorage("s3://nowhere/sentio").has_stage("train", "k")
    text = str(err.value)
    assert text.startswith("storage s3://nowhere/sentio: cannot look for ")
    assert "Could not connect" in text and "\n" not in text
    with pytest.raises(StorageError, match=r"nope://x: not a storage URL fsspec knows"):
        SharedStorage("nope://x")
