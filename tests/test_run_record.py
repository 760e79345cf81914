"""The run record of a flow run (:class:`sentio.orchestration.RunRecord`), without Prefect."""

from __future__ import annotations

import datetime as dt
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


def test_started_is_stamped_unless_given(tmp_path: Path) -> None:
    run = RunRecord(tmp_path, {"flow": "f"})
    started = dt.datetime.fromisoformat(read(tmp_path)["started"])
    assert started.tzinfo is not None and started.utcoffset() == dt.timedelta(0)
    assert run.data["started"] == read(tmp_path)["started"]


def test_a_stage_can_publish_its_artifacts_and_close_its_lap(tmp_path: Path) -> None:
    run = RunRecord(tmp_path, {"flow": "f"})
    seen: list[dict] = []

    def publish(summary: dict) -> dict[str, str]:
        seen.append(summary)
        # the summary is on disk before its artifacts are published
        assert read(tmp_path)["stages"]["folds"] == summary
        return {"folds": "id-3"}

    summary = {"n_folds": 2}
    assert run.stage("folds", summary, publish=publish, lap=True) is summary
    assert seen == [summary] and read(tmp_path)["artifacts"] == {"folds": "id-3"}
    assert list(run.timings) == ["folds"]
    run.stage("report", {"verdict": "x"})
    assert list(run.timings) == ["folds"]  # no lap unless asked


def test_the_record_as_a_context_records_a_failure_and_lets_it_through(tmp_path: Path) -> None:
    with pytest.raises(KeyError), RunRecord(tmp_path, {"flow": "f"}) as run:
        run.stage("ingest", {"output": "x"})
        raise KeyError("bars")
    on_disk = read(tmp_path)
    assert on_disk["status"] == "failed" and on_disk["error"] == "KeyError: 'bars'"
    assert on_disk["stages"] == {"ingest": {"output": "x"}}
    (tmp_path / "ok").mkdir()
    with RunRecord(tmp_path / "ok", {"flow": "f"}) as run:
        run.stage("ingest", {"output": "y"})
    assert read(tmp_path / "ok")["status"] == "running"  # completed() is the caller's word
