"""``sentio gc`` on a working directory of several real nightly runs.

Three runs of the nightly flow on three different bar files leave three sets of stage
folders, run folders, registered versions and Prefect results. Keeping the last two
runs removes the first run's data stages, run folder (unless a version came from it) and
the Prefect results naming them, and nothing else: the registry, the paper ledgers and
every training a registered version came from stay, and a run on the last data is still
all cache hits. ``--dry-run`` lists exactly that and removes nothing.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from sentio.cli import app
from sentio.gc import CACHED_STAGES
from sentio.io import sha256_file
from tests.conftest import SHORT_WINDOWS
from tests.test_flow import task_runs, write_bars

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("restore_environ")]

DATA_STAGES = ("ingest", "features", "folds", "regimes")


def tree(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with its hash."""
    return {
        str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()
    }


def folder_of(record: dict[str, Any], stage: str) -> Path:
    return Path(record["stages"][stage]["output"]).parent


def test_gc_keeps_what_the_last_runs_and_the_registry_reference(
    prefect_api: Path, tmp_path: Path
) -> None:
    from flows.nightly import nightly_flow

    workdir = tmp_path / "wd"
    config = tmp_path / "sentio.yaml"
    config.write_text(yaml.safe_dump({"paths": {"workdir": str(workdir)}, **SHORT_WINDOWS}))
    bars = [write_bars(tmp_path / f"in-{seed}" / "bars.feather", seed=seed) for seed in range(3)]
    records = [nightly_flow(data_path=str(b), config_path=str(config)) for b in bars]
    for stage in DATA_STAGES:  # three data sets: three folders per data stage
        assert len({folder_of(r, stage) for r in records}) == 3
    (workdir / "paper" / "v1").mkdir(parents=True)  # a paper ledger gc must never touch
    (workdir / "paper" / "v1" / "ledger.feather").write_bytes(b"ledger")
    failed = workdir / "runs" / "failed-long-ago"  # a run of 2020 that failed at once
    failed.mkdir()
    (failed / "run.json").write_text('{"started": "2020-01-06T07:00:00Z", "status": "failed"}')
    killed = workdir / "train" / f".{'0' * 32}.partial"  # a killed training of other data
    (killed / "checkpoints").mkdir(parents=True)
    (killed / "checkpoints" / "checkpoint.zip").write_bytes(b"weights")
    untouched = {name: tree(workdir / name) for name in ("registry", "paper")}

    cli = CliRunner()
    args = ["gc", "--config", str(config), "--keep-runs", "2"]
    before = tree(workdir)
    dry = cli.invoke(app, [*args, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "would remove" in dry.output
    assert tree(workdir) == before  # nothing removed
    listed = {Path(line.split()[-1]) for line in dry.output.splitlines() if line.startswith("  ")}

    done = cli.invoke(app, args)
    assert done.exit_code == 0, done.output
    assert "removed" in done.output
    assert not any(p.exists() for p in listed)  # what the dry run listed is what went
    assert {failed, killed} <= listed
    first, *last = records
    for stage in DATA_STAGES:
        assert not folder_of(first, stage).exists(), stage
        assert all(folder_of(r, stage).is_dir() for r in last), stage
    # every training folder stays: each was registered as a version
    versions = [
        json.loads(m.read_text())
        for m in (workdir / "registry" / "versions").glob("*/manifest.json")
    ]
    registered = {v["extra"]["train_key"] for v in versions}
    for record in records:
        for run in record["stages"]["train"]["runs"]:
            assert run["key"] in registered
            assert Path(run["model"]).is_file()
    assert {name: tree(workdir / name) for name in ("registry", "paper")} == untouched
    # no Prefect result is left naming a folder that is gone
    pattern = re.compile(r"/(" + "|".join(CACHED_STAGES) + r")/([0-9a-f]{16,64})")
    for result in (workdir / "prefect-results").iterdir():
        for stage, key in pattern.findall(result.read_text(errors="replace")):
            assert (workdir / stage / key).is_dir(), (result.name, stage, key)
    assert listed and all(
        p.is_relative_to(workdir.resolve()) and p.parts[len(workdir.resolve().parts)] != "registry"
        for p in listed
    )
    # run folders: the last two runs', and those a registered version came from
    from_versions = {v["extra"]["run"] for v in versions}
    for i, record in enumerate(records):
        folder = Path(record["run_dir"])
        assert folder.is_dir() == (i > 0 or folder.name in from_versions), folder.name
    # nothing the kept runs need is gone: the last run's data is all cache hits again
    again = nightly_flow(data_path=str(bars[-1]), config_path=str(config))
    for stage in (*DATA_STAGES, "train"):
        states = {r.state.name for r in task_runs(again["flow_run_id"], stage)}
        assert states == {"Cached"}, (stage, states)
    # a second collection keeping two runs finds the first kept run's data gone now
    second = cli.invoke(app, args)
    assert second.exit_code == 0, second.output
    assert not folder_of(last[0], "ingest").exists()
    assert folder_of(last[1], "ingest").is_dir()


def test_gc_refuses_what_it_cannot_collect(tmp_path: Path) -> None:
    cli = CliRunner()
    missing = cli.invoke(app, ["gc", "--workdir", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2
    assert "is not a working directory" in missing.output
    (tmp_path / "wd").mkdir()
    zero = cli.invoke(app, ["gc", "--workdir", str(tmp_path / "wd"), "--keep-runs", "0"])
    assert zero.exit_code == 2
    assert "--keep-runs must be at least 1" in zero.output
    empty = cli.invoke(app, ["gc", "--workdir", str(tmp_path / "wd")])
    assert empty.exit_code == 0 and "nothing to remove" in empty.output


def test_gc_keeps_runs_down_to_the_last_completed_ones_and_reads_only_its_run_names(
    tmp_path: Path,
) -> None:
    """Failed nights do not push out the last good run; a working directory that itself
    lives under a folder named ``runs`` does not make every Prefect result look stale."""
    from sentio.gc import apply_gc, plan_gc

    workdir = tmp_path / "runs" / "wd"  # its path holds '/runs/wd/'
    key = {name: f"{i:032x}" for i, name in enumerate(["good", "older", "failed1", "failed2"])}
    for name, started, status in (
        ("older", "2026-01-05T07:00:00Z", "completed"),
        ("good", "2026-01-06T07:00:00Z", "completed"),
        ("failed1", "2026-01-07T07:00:00Z", "failed"),
        ("failed2", "2026-01-08T07:00:00Z", "failed"),
    ):
        (workdir / "ingest" / key[name]).mkdir(parents=True)
        run = workdir / "runs" / name
        run.mkdir(parents=True)
        record = {
            "started": started,
            "status": status,
            "stages": {"ingest": {"output": str(workdir / "ingest" / key[name] / "bars.feather")}},
        }
        (run / "run.json").write_text(json.dumps(record))
    results = workdir / "prefect-results"
    results.mkdir()
    (results / "a").write_text(json.dumps({"output": str(workdir / "ingest" / key["good"] / "x")}))
    (results / "b").write_text(json.dumps({"output": str(workdir / "ingest" / key["older"] / "x")}))
    plan = plan_gc(workdir, keep_runs=1, registry=workdir / "registry")
    assert plan.kept_runs == ["failed2", "failed1", "good"]
    assert {r.path.name for r in plan.removals} == {"older", key["older"], "b"}
    apply_gc(plan)
    assert (results / "a").is_file() and not (results / "b").exists()
    assert (workdir / "ingest" / key["good"]).is_dir()
