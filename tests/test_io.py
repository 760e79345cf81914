"""Atomic writes and content hashes."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from sentio.io import (
    atomic_write,
    code_version,
    combine_hashes,
    hash_json,
    sha256_file,
    sidecar,
    staged_folder,
    write_text_atomic,
)


def test_atomic_write_replaces_or_leaves_untouched(tmp_path: Path) -> None:
    target = tmp_path / "f.txt"
    write_text_atomic(target, "old")

    def boom(tmp: Path) -> None:
        tmp.write_text("half")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        atomic_write(target, boom)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]  # no temp file left
    write_text_atomic(target, "new")
    assert target.read_text() == "new"


def _record_syncs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, ...]]:
    """Every fsync and rename from now on, in order: ("fsync", path) / ("replace", src, dst)."""
    events: list[tuple[str, ...]] = []
    fsync, replace = os.fsync, os.replace

    def syncing(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    def replacing(src: str, dst: str) -> None:
        events.append(("replace", str(src), str(dst)))
        replace(src, dst)

    monkeypatch.setattr(os, "fsync", syncing)
    monkeypatch.setattr(os, "replace", replacing)
    return events


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name an fd")
def test_atomic_writes_sync_the_file_then_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash after the write returns must leave the new content: the temporary file is
    synced before the rename, and the folder (which holds the rename) after it."""
    events = _record_syncs(monkeypatch)
    target = tmp_path / "f.txt"
    write_text_atomic(target, "new")
    (tmp_name,) = {e[1] for e in events if e[0] == "replace"}
    assert events == [
        ("fsync", tmp_name),
        ("replace", tmp_name, str(target)),
        ("fsync", str(tmp_path)),
    ]
    events.clear()
    final = tmp_path / "out"
    for _ in range(2):  # a new folder, then one that replaces it
        with staged_folder(final) as stage:
            (stage / "sub").mkdir()
            (stage / "a.bin").write_bytes(b"a")
            (stage / "sub" / "b.bin").write_bytes(b"b")
        synced = [e[1] for e in events if e[0] == "fsync"]
        renamed = next(i for i, e in enumerate(events) if e[0] == "replace" and e[2] == str(final))
        before = {e[1] for e in events[:renamed] if e[0] == "fsync"}
        assert {
            str(stage / "a.bin"),
            str(stage / "sub" / "b.bin"),
            str(stage / "sub"),
            str(stage),
        } <= before
        assert synced[-1] == str(tmp_path) and events[-1] == ("fsync", str(tmp_path))
        assert (final / "sub" / "b.bin").read_bytes() == b"b"
        events.clear()


def test_hashes() -> None:
    assert hash_json({"b": 1, "a": [1, 2]}) == hash_json({"a": [1, 2], "b": 1})
    assert hash_json({"a": 1}) != hash_json({"a": 2})
    assert combine_hashes(["ab", "c"]) != combine_hashes(["a", "bc"])


def test_sha256_file_matches_hashlib(tmp_path: Path) -> None:
    data = bytes(range(256)) * 10_000
    (tmp_path / "x").write_bytes(data)
    assert sha256_file(tmp_path / "x") == hashlib.sha256(data).hexdigest()


def test_code_version_follows_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "modx.py").write_text("A = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    before = code_version("modx")
    (tmp_path / "modx.py").write_text("A = 2\n")
    assert code_version("modx") != before
    with pytest.raises(ValueError, match="cannot find the source of module 'no_such_mod'"):
        code_version("no_such_mod")


def test_sidecar_names() -> None:
    assert sidecar(Path("/d/bars.feather"), "ingest.json") == Path("/d/bars.ingest.json")


def test_ingest_key_counts_a_file_given_twice(tmp_path: Path) -> None:
    from sentio.config import SentioConfig
    from sentio.stages import ingest_key

    (tmp_path / "a.csv").write_text("x\n")
    cfg = SentioConfig()
    once = ingest_key([tmp_path / "a.csv"], cfg)
    assert ingest_key([tmp_path / "a.csv", tmp_path / "a.csv"], cfg) != once
    (tmp_path / "a.provenance.json").write_text("{}")
    assert ingest_key([tmp_path / "a.csv"], cfg) != once  # the sidecar decides the report
