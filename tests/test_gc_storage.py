"""``sentio gc --storage``: the shared storage of scale-out trainings cleaned by the same
kept set as the working directory, on a local ``file://`` root and on a real S3 API
(moto's server through s3fs).

The storage is laid out by hand as the scale-out path leaves it (:mod:`sentio.storage`):
published stage folders with their manifests, checkpoints of trainings, the training
task's Prefect results. The working directory holds one kept run whose record names some
of them and a registered version naming one more training.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from sentio.cli import app
from sentio.gc import apply_gc, describe, plan_gc
from sentio.storage import MANIFEST, SharedStorage

# the module's S3 server first: restore_environ then keeps its environment for every test
pytestmark = pytest.mark.usefixtures("s3_bucket", "restore_environ")

KEY = {
    name: f"{i + 1:032x}"
    for i, name in enumerate(
        ["kept_train", "old_train", "kept_features", "old_features", "running", "registered"]
    )
}


def _put(store: SharedStorage, *parts: str, data: str = "x" * 100) -> None:
    store.fs.makedirs(store._path(*parts[:-1]), exist_ok=True)
    store.fs.pipe_file(store._path(*parts), data.encode())


def _run(workdir: Path, name: str, started: str, status: str, url: str, **stages: Any) -> None:
    """A run folder as the nightly flow leaves it: its record and its configuration."""
    run = workdir / "runs" / name
    run.mkdir(parents=True)
    record = {"started": started, "status": status, "stages": stages}
    (run / "run.json").write_text(json.dumps(record))
    (run / "config.yaml").write_text(yaml.safe_dump({"paths": {"storage": url}}))


def _layout(store: SharedStorage, workdir: Path) -> None:
    for stage, key in (
        ("train", KEY["kept_train"]),
        ("train", KEY["old_train"]),
        ("train", KEY["registered"]),
        ("features", KEY["kept_features"]),
        ("features", KEY["old_features"]),
    ):
        _put(store, "stages", stage, key, "p1", "data.bin")
        _put(store, "stages", stage, key, MANIFEST, data="{}")
    _put(store, "stages", "train", "not-a-key", "note.txt")  # not ours: left alone
    _put(store, "checkpoints", KEY["kept_train"], "000000002048", "model.zip")  # published
    # a training of the night's run, killed: the record names no training yet
    _put(store, "checkpoints", KEY["running"], "000000001024", "model.zip")
    wd = f"{workdir}"
    _put(
        store,
        "prefect-results",
        "r-old",
        data=json.dumps({"m": f"{wd}/train/{KEY['old_train']}/m.zip"}),
    )
    _put(
        store,
        "prefect-results",
        "r-kept",
        data=json.dumps({"m": f"{wd}/train/{KEY['kept_train']}/m.zip"}),
    )
    _put(store, "prefect-results", "r-none", data=json.dumps({"status": "failed"}))  # recent
    if store.url.startswith("s3://"):  # a folder marker, as the AWS console writes them
        store.fs.pipe_file(store._path("prefect-results") + "/", b"")

    features = {"output": f"{wd}/features/{KEY['kept_features']}/f.feather"}
    _run(
        workdir,
        "before",
        "2026-11-30T07:00:00Z",
        "completed",
        store.url,
        features=features,
        train={"runs": [{"model": f"{wd}/train/{KEY['kept_train']}/m.zip"}]},
    )
    # killed during its trainings: its record stops at the features; the checkpoint of
    # KEY["running"] above was written after it started
    _run(workdir, "night", "2026-12-01T07:00:00Z", "failed", store.url, features=features)
    version = workdir / "registry" / "versions" / "v1"
    version.mkdir(parents=True)
    (version / "manifest.json").write_text(json.dumps({"extra": {"train_key": KEY["registered"]}}))


def test_storage_gc_removes_what_nothing_kept_references(
    storage: SharedStorage, tmp_path: Path
) -> None:
    workdir = tmp_path / "wd"
    _layout(storage, workdir)
    plan = plan_gc(
        workdir, keep_runs=1, registry=workdir / "registry", storage=storage, storage_grace=0
    )
    assert plan.kept_runs == ["night", "before"]
    removed = {(r.kind, r.parts) for r in plan.removals}
    assert removed == {
        ("storage stage folder", ("stages", "train", KEY["old_train"])),
        ("storage stage folder", ("stages", "features", KEY["old_features"])),
        ("storage checkpoint folder", ("checkpoints", KEY["kept_train"])),  # published
        ("storage Prefect result", ("prefect-results", "r-old")),
    }
    assert all(r.size > 0 and str(r.path).startswith(storage.url) for r in plan.removals)
    lines = describe(plan, dry_run=True)
    assert f"(and in the storage {storage.url})" in lines[0]
    assert "2 storage stage folders" in lines[1] and "1 storage Prefect result " in lines[1]

    apply_gc(plan)
    assert storage.entries("stages", "train") == sorted(
        [KEY["kept_train"], KEY["registered"], "not-a-key"]
    )
    assert storage.entries("stages", "features") == [KEY["kept_features"]]
    assert storage.entries("checkpoints") == [KEY["running"]]  # the killed training resumes
    assert storage.entries("prefect-results", files=True) == ["r-kept", "r-none"]
    assert storage.has_stage("train", KEY["kept_train"])
    again = plan_gc(
        workdir, keep_runs=1, registry=workdir / "registry", storage=storage, storage_grace=0
    )
    assert again.removals == []

    # a later completed run: the killed run is no longer kept, and what only it could
    # resume or only its time could explain (older than the oldest kept run) goes
    _run(workdir, "later", "2099-01-01T07:00:00Z", "completed", storage.url, features={})
    later = plan_gc(
        workdir, keep_runs=1, registry=workdir / "registry", storage=storage, storage_grace=0
    )
    assert later.kept_runs == ["later"]
    assert {r.parts for r in later.removals if r.parts} == {
        ("stages", "train", KEY["kept_train"]),
        ("stages", "features", KEY["kept_features"]),
        ("checkpoints", KEY["running"]),
        ("prefect-results", "r-kept"),
        ("prefect-results", "r-none"),
    }


def test_what_was_written_to_the_storage_within_the_grace_is_kept(
    storage: SharedStorage, tmp_path: Path
) -> None:
    """Another working directory sharing the storage may be running now: whatever was
    written in the last 48 hours stays, whatever references it; older entries go by the
    kept set (and the CLI's --grace-hours sets the window)."""
    import time

    workdir = tmp_path / "wd"
    _layout(storage, workdir)
    other = f"{0xABC:032x}"  # another working directory's run in progress
    _put(storage, "stages", "features", other, "p1", "data.bin")
    _put(storage, "stages", "features", other, MANIFEST, data="{}")
    _put(storage, "checkpoints", other, "000000001024", "model.zip")
    _put(storage, "prefect-results", "r-other", data=json.dumps({"m": f"/else/train/{other}/m"}))

    def plan(hours_later: float, grace: float | None = None) -> set[tuple[str, ...]]:
        extra = {} if grace is None else {"storage_grace": grace}
        p = plan_gc(
            workdir,
            keep_runs=1,
            registry=workdir / "registry",
            storage=storage,
            now=time.time() + hours_later * 3600.0,
            **extra,
        )
        return {r.parts for r in p.removals if r.parts}

    published = ("checkpoints", KEY["kept_train"])  # superseded by its folder: any time
    assert plan(0) == {published}
    assert plan(47) == {published}
    late = plan(49)
    assert {
        ("stages", "features", other),
        ("prefect-results", "r-other"),
        ("stages", "train", KEY["old_train"]),
        ("prefect-results", "r-old"),
    } <= late
    assert ("stages", "features", KEY["kept_features"]) not in late
    # written after the oldest kept run started: kept for a killed run to resume
    assert ("checkpoints", other) not in late
    assert plan(2, grace=3600.0) == late
    # a later completed run: only the grace keeps the other directory's checkpoints now
    _run(workdir, "later", "2099-01-01T07:00:00Z", "completed", storage.url, features={})
    assert ("checkpoints", other) not in plan(0)
    assert ("checkpoints", other) in plan(0, grace=0.0)


def test_publishing_a_folder_again_refreshes_its_time(
    storage: SharedStorage, tmp_path: Path
) -> None:
    """A run reusing inputs published long ago publishes them again: gc --storage then
    sees them as just used (the folder's files unchanged, its manifest too)."""
    import time

    from sentio.storage import USED

    folder = tmp_path / "features" / KEY["old_features"]
    folder.mkdir(parents=True)
    (folder / "f.feather").write_bytes(b"features")
    assert storage.put_stage(folder, "features", KEY["old_features"])
    first = storage.modified("stages", "features", KEY["old_features"])
    manifest = storage.read_text("stages", "features", KEY["old_features"], MANIFEST)
    time.sleep(1.1)  # object stores keep whole seconds
    assert not storage.put_stage(folder, "features", KEY["old_features"])
    assert storage.modified("stages", "features", KEY["old_features"]) > first
    assert storage.read_text("stages", "features", KEY["old_features"], MANIFEST) == manifest
    assert USED in storage.entries("stages", "features", KEY["old_features"], files=True)
    copy = tmp_path / "copy"
    assert storage.get_stage("features", KEY["old_features"], copy)
    assert sorted(p.name for p in (copy / "features" / KEY["old_features"]).iterdir()) == [
        "f.feather"
    ]


def test_cli_gc_storage_refusals_dry_run_and_removal(tmp_path: Path) -> None:
    store = SharedStorage((tmp_path / "shared").as_uri())
    workdir = tmp_path / "wd"
    _layout(store, workdir)
    cli = CliRunner()
    plain = cli.invoke(app, ["gc", "--workdir", str(workdir), "--dry-run", "--storage"])
    assert plain.exit_code == 2
    assert "gc --storage: paths.storage is not set" in plain.output
    config = tmp_path / "c.yaml"
    args = ["gc", "--workdir", str(workdir), "--config", str(config), "--keep-runs", "1"]
    args += ["--grace-hours", "0"]
    other = (tmp_path / "other").as_uri()
    config.write_text(yaml.safe_dump({"paths": {"storage": other}}))
    foreign = cli.invoke(app, [*args, "--storage"])  # none of the runs used it
    assert foreign.exit_code == 2 and "none of the last runs" in foreign.output
    assert other in foreign.output

    config.write_text(yaml.safe_dump({"paths": {"storage": store.url}}))
    # everything in the storage written half an hour ago: within 48 hours (the default)
    # and within one hour it stays; a quarter of an hour's grace lets it go
    import os
    import time

    then = time.time() - 1800.0
    for path in (tmp_path / "shared").rglob("*"):
        os.utime(path, (then, then))
    old_train = store.where("stages", "train", KEY["old_train"])
    young = cli.invoke(app, [*args[:-2], "--dry-run", "--storage"])
    assert young.exit_code == 0, young.output
    assert old_train not in young.output
    hour = cli.invoke(app, [*args[:-2], "--grace-hours", "1", "--dry-run", "--storage"])
    assert hour.exit_code == 0 and old_train not in hour.output
    quarter = cli.invoke(app, [*args[:-2], "--grace-hours", "0.25", "--dry-run", "--storage"])
    assert quarter.exit_code == 0 and old_train in quarter.output
    dry = cli.invoke(app, [*args, "--dry-run", "--storage"])
    assert dry.exit_code == 0, dry.output
    assert store.where("stages", "train", KEY["old_train"]) in dry.output
    assert store.entries("stages", "features") == sorted(
        [KEY["kept_features"], KEY["old_features"]]
    )
    local = cli.invoke(app, args)  # without --storage the storage is not read
    assert local.exit_code == 0 and "in the storage" not in local.output
    done = cli.invoke(app, [*args, "--storage"])
    assert done.exit_code == 0, done.output
    assert store.entries("stages", "features") == [KEY["kept_features"]]

    import shutil

    shutil.rmtree(tmp_path / "shared")  # the storage is gone (a mistyped bucket reads so)
    gone = cli.invoke(app, [*args, "--storage"])
    assert gone.exit_code == 10 and "not found (no such bucket or folder)" in gone.output
