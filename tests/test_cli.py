"""The sentio command: help for every command; user errors are one line on stderr, never a traceback."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml
from typer.testing import CliRunner

from sentio.cli import app
from tests.conftest import SHORT_WINDOWS, minute_bars

runner = CliRunner()
COMMANDS = ["synth", "sample", "ingest", "run", "serve", "config"]
ALL_COMMANDS = [
    [],
    *([c] for c in [*COMMANDS, "signal", "paper", "models"]),
    *(["models", c] for c in ("list", "show", "promote", "rollback")),
]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str) -> None:
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


@pytest.mark.parametrize("command", ALL_COMMANDS, ids=lambda c: " ".join(c) or "sentio")
def test_help_shows_no_type_placeholder_on_flags(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    assert "--help" in result.output
    assert "<bool>" not in result.output and "BOOLEAN" not in result.output, result.output


def test_help_keeps_the_type_of_options_that_take_a_value() -> None:
    result = runner.invoke(app, ["synth", "--help"], env={"COLUMNS": "120"})
    assert "<float>" in result.output and "<path>" in result.output
    assert "--random-walk" in result.output and "--regimes" in result.output


def test_version_prints_the_package_version() -> None:
    from sentio import __version__

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.stdout == f"sentio {__version__}\n"


@pytest.mark.parametrize("command", ["signal", "paper"])
def test_subcommand_version_option_still_names_a_model_version(
    command: str, tmp_path: Path
) -> None:
    minute_bars("2024-01-02", "2024-01-02").write_ipc(tmp_path / "b.feather")
    args = [command, "--bars", str(tmp_path / "b.feather"), "--workdir", str(tmp_path)]
    result = runner.invoke(app, [*args, "--version", "20240101T000000000000Z-00000000"])
    _one_line_error(result, 6, "unknown model version '20240101T000000000000Z-00000000'")
    assert "sentio 0" not in result.output


def _one_line_error(result, code: int, pattern: str) -> None:
    assert result.exit_code == code, (result.exit_code, result.output)
    err = result.stderr.strip()
    assert err.count("\n") == 0, err
    assert err.startswith("error: ")
    assert "Traceback" not in result.output
    assert pattern in err, err


def test_ingest_missing_file(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["ingest", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "o.feather")]
    )
    _one_line_error(result, 3, "nope.csv: file not found")


def test_ingest_bad_option_value_names_the_field(tmp_path: Path) -> None:
    minute_bars("2024-01-02", "2024-01-02").write_ipc(tmp_path / "i.feather")
    result = runner.invoke(
        app,
        [
            "ingest",
            str(tmp_path / "i.feather"),
            "--out",
            str(tmp_path / "o.feather"),
            "--bar-timestamp",
            "mid",
        ],
    )
    _one_line_error(result, 2, "ingest.bar_timestamp: Input should be 'start' or 'end'")


def test_ingest_bad_config_file(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("ingest:\n  tzz: UTC\n")
    minute_bars("2024-01-02", "2024-01-02").write_ipc(tmp_path / "i.feather")
    result = runner.invoke(
        app,
        [
            "ingest",
            str(tmp_path / "i.feather"),
            "--out",
            str(tmp_path / "o.feather"),
            "-c",
            str(tmp_path / "c.yaml"),
        ],
    )
    _one_line_error(result, 2, "ingest.tzz: unknown setting")


def test_ingest_quarantine_limit_exit_code(tmp_path: Path) -> None:
    bars = minute_bars("2024-01-02", "2024-01-02").with_columns(
        close=pl.when(pl.int_range(pl.len()) < 50).then(-1.0).otherwise(pl.col("close"))
    )
    bars.write_ipc(tmp_path / "i.feather")
    result = runner.invoke(
        app, ["ingest", str(tmp_path / "i.feather"), "--out", str(tmp_path / "o.feather")]
    )
    _one_line_error(result, 5, "50 of 390 rows rejected")


def test_ingest_success_prints_where_outputs_are(tmp_path: Path) -> None:
    minute_bars("2024-01-02", "2024-01-02").write_ipc(tmp_path / "i.feather")
    result = runner.invoke(
        app, ["ingest", str(tmp_path / "i.feather"), "--out", str(tmp_path / "o.feather")]
    )
    assert result.exit_code == 0, result.output
    assert "kept 390" in result.stdout
    assert f"report: {tmp_path / 'o.ingest.json'}" in result.stdout
    assert "partial session" not in result.stdout
    # data begun at 15:00 New York: its first session is kept and named
    bars = minute_bars("2024-01-02", "2024-01-03")
    bars.filter(pl.col("timestamp") >= pl.datetime(2024, 1, 2, 20, 0, time_zone="UTC")).write_ipc(
        tmp_path / "late.feather"
    )
    result = runner.invoke(
        app, ["ingest", str(tmp_path / "late.feather"), "--out", str(tmp_path / "e.feather")]
    )
    assert result.exit_code == 0, result.output
    assert "kept 450" in result.stdout
    assert (
        "partial session: QQQ 2024-01-02 from 2024-01-02T20:00:00+00:00 to "
        "2024-01-02T20:59:00+00:00, 60 of 390 bars (the data starts or ends inside it)"
    ) in result.stdout


def _bars_files(folder: Path) -> list[Path]:
    """Three one-session files of the same symbol: two feather, one CSV."""
    folder.mkdir(parents=True, exist_ok=True)
    days = ["2024-01-02", "2024-01-03", "2024-01-04"]
    paths = [folder / "a.feather", folder / "b.csv", folder / "c.feather"]
    for day, path in zip(days, paths, strict=True):
        bars = minute_bars(day, day, seed=int(day[-1]))
        if path.suffix == ".csv":
            bars.with_columns(pl.col("timestamp").dt.strftime("%Y-%m-%dT%H:%M:%S%z")).write_csv(
                path
            )
        else:
            bars.write_ipc(path)
    return paths


def test_ingest_a_folder_and_a_mix_of_folders_and_files(tmp_path: Path) -> None:
    import json

    paths = _bars_files(tmp_path / "raw")
    (tmp_path / "raw" / "notes.md").write_text("not bars")
    out = tmp_path / "raw" / "bars.feather"  # written into the folder it reads
    for _ in range(2):  # again: the folder now holds this ingest's outputs, skipped
        result = runner.invoke(app, ["ingest", str(tmp_path / "raw"), "--out", str(out)])
        assert result.exit_code == 0, result.output
        assert "kept 1170" in result.stdout
        report = json.loads((tmp_path / "raw" / "bars.ingest.json").read_text())
        assert [Path(i["path"]).name for i in report["inputs"]] == [p.name for p in paths]

    extra = tmp_path / "d.feather"
    minute_bars("2024-01-05", "2024-01-05").write_ipc(extra)
    result = runner.invoke(
        app, ["ingest", str(extra), str(tmp_path / "raw"), "--out", str(tmp_path / "o.feather")]
    )
    assert result.exit_code == 0, result.output
    assert "kept 1560" in result.stdout
    report = json.loads((tmp_path / "o.ingest.json").read_text())
    assert [Path(i["path"]).name for i in report["inputs"]][0] == "d.feather"


def test_ingest_an_empty_folder_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = runner.invoke(
        app, ["ingest", str(tmp_path / "empty"), "--out", str(tmp_path / "o.feather")]
    )
    _one_line_error(result, 3, "empty: folder holds no bar files")


def test_serve_passes_its_workdir_to_the_deployments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import flows.serve
    import sentio.orchestration

    minute_bars("2024-01-02", "2024-01-02").write_ipc(tmp_path / "b.feather")
    calls: dict[str, object] = {}
    monkeypatch.setattr(
        sentio.orchestration, "prefect_env_defaults", lambda wd: calls.setdefault("env", wd)
    )
    monkeypatch.setattr(
        flows.serve, "serve_deployments", lambda *a, **k: calls.setdefault("serve", (a, k))
    )
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["serve", "--data", "b.feather", "--workdir", "wd", "--no-paper"])
    assert result.exit_code == 0, result.output
    wd = str(tmp_path / "wd")
    assert calls["env"] == Path(wd)
    assert calls["serve"] == (
        (str(tmp_path / "b.feather"), None),
        {"paper": False, "workdir": wd},
    )

    calls.clear()
    result = runner.invoke(app, ["serve", "--data", "b.feather"])
    assert result.exit_code == 0, result.output
    assert calls["serve"][1]["workdir"] is None

    # the deployments carry the workdir as a default parameter only when one is given
    nightly, manual = flows.serve.build_deployments("b.feather", None, wd)
    paper = flows.serve.build_paper_deployment("b.feather", None, wd)
    for dep in (nightly, manual, paper):
        assert dep.parameters == {"data_path": "b.feather", "config_path": None, "workdir": wd}
    (plain, _) = flows.serve.build_deployments("b.feather")
    assert "workdir" not in plain.parameters


def test_run_with_missing_data_fails_before_prefect(tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", "--data", str(tmp_path / "none.feather")])
    _one_line_error(result, 3, "none.feather: file not found")


def test_config_prints_defaults() -> None:
    result = runner.invoke(app, ["config"])
    assert result.exit_code == 0
    assert "underlying: QQQ" in result.stdout


def test_console_script_error_has_no_traceback(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("sentio")
    (tmp_path / "x.xlsx").write_bytes(b"PK")
    proc = subprocess.run(
        [str(exe), "ingest", str(tmp_path / "x.xlsx"), "--out", str(tmp_path / "o.feather")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 3
    assert "x.xlsx: unsupported file type '.xlsx'" in proc.stderr
    assert proc.stderr.strip().startswith("error: ") and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0


@pytest.mark.slow
def test_sentio_run_reports_user_errors_without_traceback_then_succeeds(tmp_path: Path) -> None:
    """`sentio run` through a temporary Prefect API: a data error is one line, no traceback."""
    import os

    minute_bars("2024-01-02", "2024-01-04").with_columns(  # New York wall-clock times
        pl.col("timestamp")
        .dt.convert_time_zone("America/New_York")
        .dt.replace_time_zone(None)
        .dt.strftime("%Y-%m-%d %H:%M:%S")
    ).write_csv(tmp_path / "naive.csv")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "SENTIO_"))}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    exe = str(Path(sys.executable).with_name("sentio"))
    failed = subprocess.run(
        [exe, "run", "--data", "naive.csv"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert failed.returncode == 3, failed.stderr[-2000:]
    assert "Traceback" not in failed.stderr
    errors = [ln for ln in failed.stderr.splitlines() if ln.startswith("error: ")]
    assert errors == [
        f"error: {tmp_path / 'naive.csv'}: timestamps have no time zone; give their zone with --tz or the ingest.tz setting (for example America/New_York or UTC)"
    ]

    (tmp_path / "c.yaml").write_text(
        yaml.safe_dump({"ingest": {"tz": "America/New_York"}, **SHORT_WINDOWS})
    )
    ok = subprocess.run(
        [exe, "run", "--data", "naive.csv", "--config", "c.yaml"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert ": completed" in ok.stdout
    bars_line = next(ln for ln in ok.stdout.splitlines() if ln.startswith("bars: "))
    bars = pl.read_ipc(bars_line.removeprefix("bars: "))
    assert set(bars["symbol"].unique()) == {"QQQ", "TQQQ", "SQQQ"}  # leveraged ETFs derived
    assert "(derived: SQQQ, TQQQ)" in ok.stdout
    assert any(ln.startswith("features: ") for ln in ok.stdout.splitlines())
    assert any(ln.startswith("folds: 2 kfold fold(s)") for ln in ok.stdout.splitlines())
    assert any(ln.startswith("regimes: fold 0 ") for ln in ok.stdout.splitlines())
    trained = [ln for ln in ok.stdout.splitlines() if ln.startswith("train: ")]
    assert [ln.split(":")[1] for ln in trained] == [" fold 0 seed 0", " fold 1 seed 0"]
    assert all(ln.endswith("model.zip") for ln in trained)
    assert str(tmp_path / ".sentio" / "runs") in ok.stdout  # outputs under the project, not ~

    # one trade count: the CLI's line, the ledger, the report and the registry's manifest
    report_line = next(ln for ln in ok.stdout.splitlines() if ln.startswith("report html: "))
    report = json.loads(
        (Path(report_line.removeprefix("report html: ")).parent / "metrics.json").read_text()
    )
    manifests = [
        json.loads(p.read_text())
        for p in (tmp_path / ".sentio" / "registry" / "versions").glob("*/manifest.json")
    ]
    for line in trained:
        fold = int(line.split("fold ")[1].split()[0])
        printed = int(re.search(r", (\d+) trades:", line).group(1))  # type: ignore[union-attr]
        model = Path(line.rsplit(": ", 1)[1])
        ledger = pl.read_ipc(model.parent / "trades.feather")
        (in_report,) = [f for f in report["folds"] if f["fold"] == fold]
        (manifest,) = [m for m in manifests if m["extra"]["fold"] == fold]
        assert printed == ledger.height == in_report["metrics"]["n_trades"]
        assert manifest["metrics"]["n_trades"] == ledger.height


def test_serve_with_missing_data_fails_at_start(tmp_path: Path) -> None:
    result = runner.invoke(app, ["serve", "--data", str(tmp_path / "none.feather")])
    _one_line_error(result, 3, "none.feather: file not found")


def test_synth_and_sample_refuse_non_feather_outputs(tmp_path: Path) -> None:
    result = runner.invoke(app, ["synth", "--years", "0.01", "--out", str(tmp_path / "x.csv")])
    _one_line_error(result, 3, "x.csv: the output is a feather file")
    result = runner.invoke(app, ["sample", "nasdaq-daily", "--out", str(tmp_path / "y.parquet")])
    _one_line_error(result, 3, "y.parquet: the output is a feather file")
    assert list(tmp_path.iterdir()) == []


def test_printed_numbers_are_rounded() -> None:
    import math

    from sentio.cli import _rounded, _shown

    got = _rounded({"a": 0.1 + 0.2, "b": [1 / 3, float("nan")], "c": 5, "d": True, "e": "x"})
    assert got["a"] == 0.3 and got["b"][0] == 0.333333 and math.isnan(got["b"][1])
    assert (got["c"], got["d"], got["e"]) == (5, True, "x")
    assert (
        _shown(100234.12345678901) == "100234.123457" and _shown("-1: session") == "'-1: session'"
    )
