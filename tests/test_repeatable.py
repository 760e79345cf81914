"""Repeatable, concurrency-safe, self-checking runs (issue 13's acceptance tests).

(a) the flow with trainings concurrent and one at a time gives identical models,
backtests and report numbers; (b) a training stage killed after a checkpoint and resumed
equals the uninterrupted one; (c) two ``sentio run`` on one workdir both end cleanly
and every registry version's metrics are those of its own model file; (d) each stage's
cached output truncated in turn is detected, recomputed and matches; (g) ``SIGKILL`` of
``sentio run`` leaves no process behind. (e) and (f) live in tests/test_registry.py and
tests/test_disk_full.py.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from sentio import stages
from sentio.config import SentioConfig, config_from_dict, resolve_for_bars
from sentio.io import sha256_file
from tests.conftest import SHORT_WINDOWS, data_stages, minute_bars

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("restore_environ")]

REPO = Path(__file__).resolve().parents[1]
SESSIONS = ("2024-01-08", "2024-01-10")
TWO_SEEDS = {**SHORT_WINDOWS, "train": {**SHORT_WINDOWS["train"], "seeds": [0, 1]}}


def _write_config(path: Path, workdir: Path, **sections: Any) -> Path:
    doc: dict[str, Any] = {**TWO_SEEDS, "paths": {"workdir": str(workdir)}}
    for name, values in sections.items():
        doc[name] = {**doc.get(name, {}), **values}
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture(scope="module")
def bars(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bars") / "bars.feather"
    minute_bars(*SESSIONS, seed=3, price=400.0).write_ipc(path)
    return path


def _fingerprint(record: dict[str, Any]) -> dict[str, Any]:
    """What must not depend on how the trainings were scheduled: every model's and
    backtest's bytes and the report's numbers (its profile and paths left out)."""
    runs = {
        (r["fold"], r["seed"]): {
            "key": r["key"],
            "model": r["files"][r["model"]],
            "backtest": r["output_sha256"],
            "metrics": r["metrics"],
        }
        for r in record["stages"]["train"]["runs"]
    }
    report = json.loads(Path(record["stages"]["report"]["paths"]["metrics"]).read_text())
    # the header names the run (its name, start, configuration with max_parallel)
    skip = ("profile", "ingest", "folds", "run", "registry")
    numbers = {k: v for k, v in report.items() if k not in skip}
    numbers["folds"] = [
        {k: f[k] for k in ("fold", "seed", "metrics", "ci")} for f in report["folds"]
    ]
    return {"runs": runs, "report": numbers, "verdict": record["stages"]["report"]["verdict"]}


# --------------------------------------------------------------------------- (a)


def test_concurrent_and_serial_trainings_give_identical_results(
    prefect_api: Path, bars: Path, tmp_path: Path
) -> None:
    """Four (fold, seed) trainings two at a time, then one at a time, on fresh workdirs."""
    from flows.nightly import nightly_flow

    records = {}
    for mode, slots in (("concurrent", 2), ("serial", 1)):
        config = _write_config(
            tmp_path / f"{mode}.yaml", tmp_path / mode, train={"max_parallel": slots}
        )
        records[mode] = nightly_flow(data_path=str(bars), config_path=str(config))
    a, b = (_fingerprint(records[m]) for m in ("concurrent", "serial"))
    assert len(a["runs"]) == 4
    assert a == b


# --------------------------------------------------------------------------- (b)


@pytest.fixture(scope="module")
def stage_inputs(bars: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Ingest, features, folds and regimes of the bars (no Prefect), shared by (b)."""
    wd = tmp_path_factory.mktemp("inputs")
    cfg = config_from_dict(
        {**SHORT_WINDOWS, "train": {**SHORT_WINDOWS["train"], "total_timesteps": 512}}
    )
    return {"cfg": cfg, "args": data_stages(bars, cfg, wd)}


def test_killed_training_stage_resumes_to_the_uninterrupted_result(
    stage_inputs: dict[str, Any], tmp_path: Path
) -> None:
    cfg: SentioConfig = stage_inputs["cfg"]
    args = stage_inputs["args"]
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    killed_wd = tmp_path / "killed"
    script = textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {str(REPO)!r})
        from sentio import stages
        from sentio.config import load_config

        def progress(done, total, *_):
            if done >= 320:  # past the checkpoint at 256 (rollouts of 64 steps)
                os._exit(17)

        stages.train_stage(*{args!r}, load_config({str(config)!r}), {str(killed_wd)!r},
                           fold=0, seed=0, progress=progress)
        """
    )
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert killed.returncode == 17, killed.stderr[-3000:]
    partial = list((killed_wd / "train").glob(".*.partial"))
    assert len(partial) == 1 and (partial[0] / "checkpoints" / "checkpoint.zip").is_file()
    assert not [p for p in (killed_wd / "train").iterdir() if not p.name.startswith(".")]

    resumed = stages.train_stage(*args, cfg, killed_wd, fold=0, seed=0)
    assert resumed["train"]["resumed_from"] >= 256
    whole = stages.train_stage(*args, cfg, tmp_path / "whole", fold=0, seed=0)
    assert whole["train"]["resumed_from"] == 0
    assert resumed["key"] == whole["key"]
    for name in ("model.zip", "backtest.feather", "trades.feather"):
        assert sha256_file(Path(resumed["output"]).parent / name) == sha256_file(
            Path(whole["output"]).parent / name
        ), name
    assert resumed["metrics"] == whole["metrics"]
    # the staging folder was renamed into place whole; its checkpoints are gone
    assert not list((killed_wd / "train").glob(".*"))
    assert not (Path(resumed["output"]).parent / "checkpoints").exists()


# --------------------------------------------------------------------------- (d)


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_truncated_cache_files_are_detected_recomputed_and_match(
    prefect_api: Path, bars: Path, tmp_path: Path
) -> None:
    from flows.nightly import nightly_flow

    workdir = tmp_path / "wd"
    config = _write_config(tmp_path / "cfg.yaml", workdir, train={"seeds": [0]})
    args = {"data_path": str(bars), "config_path": str(config)}
    first = nightly_flow(**args)
    reference = _fingerprint(first)
    st = first["stages"]
    targets = {
        "ingest": Path(st["ingest"]["output"]),
        "features": Path(st["features"]["output"]),
        "folds": Path(st["folds"]["output"]),
        "regimes": Path(st["regimes"]["folds"][0]["output"]),
        "train (backtest)": Path(st["train"]["runs"][0]["output"]),
        "train (model)": Path(st["train"]["runs"][1]["model"]),
    }
    handler = _Lines()
    logger = logging.getLogger("prefect.flow_runs")
    logger.addHandler(handler)
    try:
        for name, path in targets.items():
            original = path.read_bytes()
            _truncate(path)
            handler.lines.clear()
            again = nightly_flow(**args)
            warnings = [line for line in handler.lines if str(path) in line]
            assert len(warnings) == 1, (name, handler.lines)
            assert "recomputing" in warnings[0] and "sha256" in warnings[0]
            assert path.read_bytes() == original, name
            assert _fingerprint(again) == reference, name
    finally:
        logger.removeHandler(handler)


def test_a_moved_workdir_keeps_its_cache(prefect_api: Path, bars: Path, tmp_path: Path) -> None:
    from flows.nightly import nightly_flow

    old, new = tmp_path / "old", tmp_path / "new"
    first = nightly_flow(
        data_path=str(bars),
        config_path=str(_write_config(tmp_path / "a.yaml", old, train={"seeds": [0]})),
    )
    before = _fingerprint(first)["runs"]
    old.rename(new)
    second = nightly_flow(
        data_path=str(bars),
        config_path=str(_write_config(tmp_path / "b.yaml", new, train={"seeds": [0]})),
    )
    for run in second["stages"]["train"]["runs"]:
        assert run["model"].startswith(str(new)) and Path(run["model"]).is_file()
        assert run["train"]["resumed_from"] == 0
    # nothing was trained again: the summaries are the first run's, moved
    assert [r["train"]["seconds"] for r in second["stages"]["train"]["runs"]] == [
        r["train"]["seconds"] for r in first["stages"]["train"]["runs"]
    ]
    assert _fingerprint(second)["runs"] == before


# --------------------------------------------------------------------------- (c), (g)


def _cli_env(home: Path) -> dict[str, str]:
    """The environment of a ``sentio`` command with its own Prefect home, no API set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), DO_NOT_TRACK="1", PREFECT_SERVER_ANALYTICS_ENABLED="false")
    return env


def _sentio(*args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("sentio")), *args]


def test_two_runs_on_one_workdir_take_turns_and_register_consistent_versions(
    bars: Path, tmp_path: Path, migrated_prefect_home: Callable[[Path], Path]
) -> None:
    from sentio.agents.training import algorithm_class
    from sentio.env import EnvParams
    from sentio.env.backtest import backtest
    from sentio.registry import Registry
    from sentio.workdir import WorkdirLock

    workdir = tmp_path / "wd"
    config = _write_config(
        tmp_path / "cfg.yaml",
        workdir,
        registry={"min_dsr": 0.0, "max_drawdown": 1.0, "min_compare_bars": 60},
        train={"seeds": [0]},
    )
    # The test holds the workdir until both runs wait for it, so that they overlap
    # whatever their start-up times; released, one run takes it and the other waits on.
    holder = WorkdirLock(workdir, owner="test-holder").acquire()
    procs, logs = [], [tmp_path / f"run{i}.err" for i in range(2)]
    try:
        for i, log in enumerate(logs):
            with log.open("w") as err:
                procs.append(
                    subprocess.Popen(
                        _sentio("run", "--data", str(bars), "--config", str(config)),
                        env=_cli_env(migrated_prefect_home(tmp_path / f"home{i}")),
                        stdout=subprocess.PIPE,
                        stderr=err,
                        text=True,
                    )
                )
        deadline = time.monotonic() + 300
        while not all("is in use by run test-holder" in log.read_text() for log in logs):
            for proc, log in zip(procs, logs, strict=True):
                assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the runs never waited for the workdir"
            time.sleep(0.5)
    finally:
        holder.release()
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out, log in zip(procs, outs, logs, strict=True):
        assert p.returncode == 0, log.read_text()[-3000:]
        assert "completed" in out
    records = [
        json.loads(path.read_text()) for path in sorted((workdir / "runs").glob("*/run.json"))
    ]
    assert len(records) == 2 and all(r["status"] == "completed" for r in records)
    # they took turns: one run's record ends before the other's begins
    first, second = sorted(records, key=lambda r: r["started"])
    assert first["finished"] <= second["started"], (first["finished"], second["started"])

    # every version's recorded metrics are a fresh backtest of its own model file
    reg = Registry(workdir / "registry")
    versions = reg.list()
    assert versions
    st = records[0]["stages"]
    for v in versions:
        cfg = config_from_dict(yaml.safe_load((v.path / "config.yaml").read_text()))
        fold = int(v.manifest["extra"]["fold"])
        market, _, test_rows = stages.fold_market(
            st["ingest"]["output"],
            st["features"]["output"],
            st["folds"]["output"],
            st["regimes"]["output"],
            cfg,
            fold,
        )
        model = algorithm_class(cfg).load(v.path / "model.zip", device="cpu")
        fresh = backtest(
            model,
            market,
            EnvParams.from_config(resolve_for_bars(cfg, 60)),
            test_rows,
            instruments=(cfg.universe.long, cfg.universe.short),
        ).metrics()
        for key in ("sharpe", "total_return", "max_drawdown", "n_trades"):
            assert v.metrics[key] == pytest.approx(fresh[key], rel=1e-12, abs=1e-15), key


def _descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")
def test_sigkill_of_sentio_run_leaves_no_process_behind(
    bars: Path, tmp_path: Path, migrated_prefect_home: Callable[[Path], Path]
) -> None:
    workdir = tmp_path / "wd"
    config = _write_config(
        tmp_path / "cfg.yaml",
        workdir,
        train={"total_timesteps": 200_000, "checkpoint_every": 1_000_000},
    )
    proc = subprocess.Popen(
        _sentio("run", "--data", str(bars), "--config", str(config)),
        env=_cli_env(migrated_prefect_home(tmp_path / "home")),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        seen: set[int] = set()
        while time.monotonic() < deadline:  # wait for the trainings' processes
            seen |= _descendants(proc.pid)
            partial = list((workdir / "train").glob(".*.partial")) if workdir.exists() else []
            if partial and len(seen) >= 3:  # the server, its launcher's exec, trainings
                break
            assert proc.poll() is None, "sentio run ended before the test could kill it"
            time.sleep(0.5)
        else:
            pytest.fail("the trainings never started")
        seen |= _descendants(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(_alive(p) for p in seen):
            time.sleep(0.2)
        left = sorted(p for p in seen if _alive(p))
        assert not left, [Path(f"/proc/{p}/cmdline").read_bytes()[:200] for p in left]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_a_killed_runs_workdir_lock_is_taken_over_with_a_message(tmp_path: Path) -> None:
    from sentio.errors import WorkdirBusyError
    from sentio.workdir import WorkdirLock

    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys, time
                sys.path.insert(0, {str(REPO)!r})
                from sentio.workdir import WorkdirLock
                lock = WorkdirLock({str(tmp_path)!r}, owner="night-1").acquire()
                print("held", flush=True)
                time.sleep(60)
                """
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(WorkdirBusyError, match=r"in use by run night-1 \(pid \d+"):
            WorkdirLock(tmp_path, owner="night-2", on_busy="refuse").acquire()
        said: list[str] = []
        with pytest.raises(WorkdirBusyError, match="after waiting 1.5 s"):
            WorkdirLock(tmp_path, owner="night-2", timeout=1.5, notify=said.append).acquire()
        assert len(said) == 1 and "waiting for it to finish" in said[0]
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        said.clear()
        with WorkdirLock(tmp_path, owner="night-2", notify=said.append) as lock:
            assert lock.took_over is not None and lock.took_over["run"] == "night-1"
            assert len(said) == 1 and "night-1" in said[0] and "taking it over" in said[0]
        # released cleanly: the next one takes it without a message
        said.clear()
        with WorkdirLock(tmp_path, owner="night-3", notify=said.append) as lock:
            assert lock.took_over is None and said == []
    finally:
        if holder.poll() is None:
            holder.kill()


def test_parallel_slots_fill_the_cores_without_oversubscribing() -> None:
    from sentio.processes import available_cores, parallel_slots

    cores = available_cores()
    assert parallel_slots(0, 1) == cores
    assert parallel_slots(0, cores + 5) == 1
    assert parallel_slots(3, 1) == 3
    assert np.all([parallel_slots(0, t) * t <= max(cores, t) for t in range(1, 9)])


def _threads_seen(progress: Any) -> int:
    import torch

    progress(1, 2, "half")
    return int(torch.get_num_threads())


def test_a_call_in_this_process_has_the_child_threads_and_restores_them() -> None:
    """What a single-threaded Dask worker runs a training with: torch's thread count is the
    call's for the call only, the progress callback is handed through, and the thread
    caps a worker is started with name every math library a training child caps."""
    import torch

    from sentio.processes import _THREAD_ENV, call_in_this_process, thread_caps

    before = torch.get_num_threads()
    wanted = 2 if before != 2 else 1
    seen: list[tuple[Any, ...]] = []
    assert (
        call_in_this_process(_threads_seen, threads=wanted, progress=lambda *a: seen.append(a))
        == wanted
    )
    assert seen == [(1, 2, "half")]
    assert torch.get_num_threads() == before
    assert thread_caps(3) == dict.fromkeys(_THREAD_ENV, "3")
    assert {"OMP_NUM_THREADS", "POLARS_MAX_THREADS", "NUMBA_NUM_THREADS"} <= set(thread_caps(1))
