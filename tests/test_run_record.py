"""The run record of a flow run (:class:`sentio.orchestration.RunRecord`), without Prefect."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sentio.orchestration import RunRecord


def read(folder: Path) -> dict:
    return json.loads((folder / "run.json").read_text())


def test_the_record_is_on_disk_after_every_change(tmp_path: Path) -> None:
    run = RunRecord(tmp_path, {"flow": "f", "started": "2026-01-01T00:00:00+00:00"})
    assert read(tmp_path) == {
        "flow": "f",
        "started": "2026-01-01T00:00:00+00:00",
        "finished": None,
        "status": "running",
        "stages": {},
        "artifacts": {},
    }
    run.update(inputs=["a.csv"])
    assert read(tmp_path)["inputs"] == ["a.csv"]
    summary = {"output": "bars.feather"}
    assert run.stage("ingest", summary) is summary
    assert read(tmp_path)["stages"] == {"ingest": summary}
    run.published({"ingest-summary": "id-1"})
    run.published({"report": "id-2"})
    assert read(tmp_path)["artifacts"] == {"ingest-summary": "id-1", "report": "id-2"}
    run.lap("ingest")
    run.lap("features")
    assert list(run.timings) == ["ingest", "features"]
    assert all(t >= 0 for t in run.timings.values())
    record = run.completed()
    on_disk = read(tmp_path)
    assert on_disk == record and record["status"] == "completed" and record["finished"]


def test_a_failed_run_keeps_how_far_it_got_and_its_error(tmp_path: Path) -> None:
    run = RunRecord(tmp_path, {"flow": "f"})
    run.stage("ingest", {"output": "x"})
    with pytest.raises(ValueError):
        try:
            raise ValueError("bad bars")
        except ValueError as exc:
            run.failed(exc)
            raise
    on_disk = read(tmp_path)
    assert on_disk["status"] == "failed" and on_disk["error"] == "ValueError: bad bars"
    assert on_disk["stages"] == {"ingest": {"output": "x"}} and on_disk["finished"]
