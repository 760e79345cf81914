"""Paper trading: parity with the training pipeline's backtest, an idempotent ledger, the
``sentio paper`` command and the ``paper-trading`` Prefect flow.

The models are the ones ``tests/test_live.py`` trains through the real stages and
registers (shared for the test session by :func:`tests.test_live.trained`).
"""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import yaml
from filelock import FileLock
from typer.testing import CliRunner

from sentio.cli import app
from sentio.env import EnvParams
from sentio.env.backtest import BacktestResult, backtest
from sentio.env.market import MarketData
from sentio.live import load_bundle, signal
from sentio.paper import PaperError, ledger_path, paper_trade, read_ledger
from sentio.registry import Registry
from tests.conftest import temporary_prefect_api
from tests.test_live import Trained, trained

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tf(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    return trained(tmp_path_factory.getbasetemp() / "live-models", "train_fit")


def _registry(t: Trained, root: Path) -> Registry:
    """A copy of ``t``'s registry under ``root`` (a test's own paper root beside it)."""
    shutil.copytree(t.registry.root, root / "registry")
    return Registry(root / "registry")


def _utc(stamps: np.ndarray) -> list[dt.datetime]:
    return [s.astype("datetime64[us]").astype(dt.datetime).replace(tzinfo=dt.UTC) for s in stamps]


def _rows(ledger: pl.DataFrame) -> pl.DataFrame:
    """The ledger without the wall-clock column (what a recomputation must reproduce)."""
    return ledger.drop("appended_at")


# --------------------------------------------------------------------------- parity


@pytest.mark.parametrize("variant", ["train_fit", "plain"])
def test_paper_ledger_equals_the_training_backtest_on_the_test_block(
    variant: str, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The acceptance check: paper trading with the registered bundle over the fold's test
    block, on the full bar file, reproduces the train stage's backtest bar for bar.

    The backtest's rows are the fill bars t+1 of the decisions at t; the ledger has one more
    row in front (the start bar: flat, its decision). The one possible difference is the
    backtest's liquidation after its last bar (``end_of_block``), which the ledger must not
    have: the ledger keeps the position open until the next bar arrives.
    """
    t = trained(tmp_path_factory.getbasetemp() / "live-models", variant)
    reg = _registry(t, tmp_path)
    block = t.test_block
    summary = paper_trade(
        reg, t.raw, version=t.version, start=block["start"], end=block["end"], root=tmp_path
    )
    ledger = read_ledger(summary["ledger"])
    assert ledger is not None and summary["rows"] == ledger.height == summary["appended"]

    market, _, test_rows = t.fold_market()
    params = EnvParams.from_config(t.cfg)
    inst = (t.cfg.universe.long, t.cfg.universe.short)
    model = t.train_model()  # the train stage's file, not the registry's copy
    bt = backtest(model, market, params, test_rows, instruments=inst)

    assert ledger["timestamp"][0] == dt.datetime.fromisoformat(block["start"])
    assert ledger["timestamp"][-1] == dt.datetime.fromisoformat(block["end"])
    assert ledger["timestamp"].to_list()[1:] == _utc(bt.timestamps)
    assert ledger["position"][0] == 0.0 and ledger["equity"][0] == params.initial_cash
    np.testing.assert_array_equal(ledger["action"].to_numpy()[:-1], bt.actions)
    np.testing.assert_array_equal(ledger["position"].to_numpy()[1:], bt.position)
    np.testing.assert_array_equal(ledger["returns"].to_numpy()[1:-1], bt.returns[:-1])
    for col in ("exposure", "equity", "costs_cash"):
        np.testing.assert_array_equal(ledger[col].to_numpy()[1:-1], getattr(bt, col)[:-1], col)
    last = ledger.row(-1, named=True)
    exits = bt.trades.filter(pl.col("exit_reason") == "end_of_block")
    if variant == "train_fit":  # flat at every session's close: nothing left to liquidate
        assert last["forced_exit"] == "flat_at_close" or last["position"] == 0.0
        assert exits.height == 0
    if exits.height == 0:
        for col in ("exposure", "equity", "costs_cash"):
            assert last[col] == getattr(bt, col)[-1], col
    else:
        _assert_end_of_block_difference(last, bt, market, params)

    # the explicit end-of-block case: end the window on a bar where the model holds a
    # position (the ledger keeps it; a backtest over the same window sells it)
    held = ledger.filter((pl.col("exposure") != 0) & (pl.col("timestamp") > ledger["timestamp"][5]))
    assert held.height > 0, "the model never holds a position: the parity check is too weak"
    cut = held["timestamp"][0]
    a, b = test_rows[0]
    b_cut = int(np.searchsorted(market.timestamps, np.datetime64(cut.replace(tzinfo=None), "us")))
    bt_cut = backtest(model, market, params, [(a, b_cut + 1)], instruments=inst)
    part = ledger.filter(pl.col("timestamp") <= cut)
    assert bt_cut.trades["exit_reason"][-1] == "end_of_block"
    np.testing.assert_array_equal(part["position"].to_numpy()[1:], bt_cut.position)
    np.testing.assert_array_equal(part["equity"].to_numpy()[1:-1], bt_cut.equity[:-1])
    _assert_end_of_block_difference(part.row(-1, named=True), bt_cut, market, params)


def _assert_end_of_block_difference(
    last: dict[str, Any], bt: BacktestResult, market: MarketData, params: EnvParams
) -> None:
    """The backtest sold the ledger's open position at the last close, paying the exit cost."""
    row = int(bt.rows[-1])
    shares = float(last["shares_held"])
    inst = 1 if float(last["position"]) > 0 else 2
    px = market.close[row, inst]
    slip = params.slippage_vol_mult * params.leverage
    exit_cost = params.commission_per_share * shares + (
        params.half_spread + slip * market.vol[row]
    ) * (shares * px)
    assert shares > 0 and last["exposure"] != 0.0 and last["forced_exit"] == ""
    assert bt.exposure[-1] == 0.0
    assert bt.equity[-1] == pytest.approx(float(last["equity"]) - exit_cost, rel=1e-12)
    assert bt.position[-1] == last["position"]


# --------------------------------------------------------------------------- the ledger


def test_default_start_is_after_training_and_matches_the_signal(
    tf: Trained, tmp_path: Path
) -> None:
    reg = _registry(tf, tmp_path)
    reg.promote(tf.version, "test")
    s = paper_trade(reg, tf.frame())  # the champion, the default root
    path = ledger_path(tmp_path / "paper", tf.version)
    assert s["ledger"] == str(path) and path.is_file()
    train_end = dt.datetime.fromisoformat(tf.train_end)
    assert s["start"] == (train_end + dt.timedelta(minutes=1)).isoformat().replace("+00:00", "Z")
    assert s["rows"] == s["appended"] == 391 and s["last"] == "2024-01-10T20:59:00Z"
    ledger = read_ledger(path)
    assert ledger is not None
    assert ledger["appended_at"].dtype == pl.Datetime("us", "UTC")
    for col in ("timestamp", "position", "equity", "action", "p_regime_0", "blocked_0"):
        assert col in ledger.columns
    # the signal replays the same path: its account is the ledger's last row
    sig = signal(load_bundle(reg), tf.frame())
    last = ledger.row(-1, named=True)
    assert sig["account"]["equity"] == last["equity"] == s["equity"]
    assert sig["action"] == last["action"] and sig["account"]["since"] == s["start"]
    blocked = [m["blocked_by"] for m in sig["mask"]]
    assert last["mask_reasons"] == "; ".join(
        f"{m['target_exposure']:+g}: {','.join(b)}"
        for m, b in zip(sig["mask"], blocked, strict=True)
        if b
    )


def test_rerun_appends_nothing_and_a_prefix_run_then_the_rest_equals_one_run(
    tf: Trained, tmp_path: Path
) -> None:
    reg = _registry(tf, tmp_path)
    full = tf.frame()
    one = paper_trade(reg, full, version=tf.version, root=tmp_path / "one")
    path = Path(one["ledger"])
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    again = paper_trade(reg, full, version=tf.version, root=tmp_path / "one")
    assert again["appended"] == 0 and again["rows"] == one["rows"]
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before  # not even rewritten

    cut = dt.datetime(2024, 1, 10, 16, 0, tzinfo=dt.UTC)
    first = paper_trade(
        reg, full.filter(pl.col("timestamp") <= cut), version=tf.version, root=tmp_path / "two"
    )
    assert first["last"] == "2024-01-10T16:00:00Z"
    rest = paper_trade(reg, full, version=tf.version, root=tmp_path / "two")
    assert rest["appended"] == one["rows"] - first["rows"] > 0
    one_ledger, two_ledger = read_ledger(path), read_ledger(rest["ledger"])
    assert one_ledger is not None and two_ledger is not None
    assert _rows(two_ledger).equals(_rows(one_ledger))
    # the rows of the first run were kept as written (appended_at of both batches)
    assert two_ledger["appended_at"].n_unique() == 2
    # bars that end before the ledger's last row: nothing appended, nothing rewritten
    behind = paper_trade(
        reg, full.filter(pl.col("timestamp") <= cut), version=tf.version, root=tmp_path / "one"
    )
    assert behind["appended"] == 0 and behind["behind"] and path.read_bytes() == before[0]


@pytest.mark.parametrize(
    ("symbol", "column"), [("TQQQ", "close_long"), ("QQQ", "close_underlying")]
)
def test_rewritten_bar_history_is_refused_and_the_ledger_left_alone(
    tf: Trained, tmp_path: Path, symbol: str, column: str
) -> None:
    reg = _registry(tf, tmp_path)
    full = tf.frame()
    s = paper_trade(reg, full, version=tf.version, root=tmp_path)
    path = Path(s["ledger"])
    before = path.read_bytes()
    when = dt.datetime(2024, 1, 10, 15, 17, tzinfo=dt.UTC)
    hit = (pl.col("timestamp") == when) & (pl.col("symbol") == symbol)
    rewritten = full.with_columns(
        close=pl.when(hit).then(pl.col("close") * 1.001).otherwise(pl.col("close")),
        high=pl.when(hit).then(pl.col("high") * 1.001).otherwise(pl.col("high")),
    )
    with pytest.raises(PaperError) as err:
        paper_trade(reg, rewritten, version=tf.version, root=tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and f"'{column}' at 2024-01-10T15:17:00Z" in msg
    assert "rewritten" in msg and "left unchanged" in msg
    assert path.read_bytes() == before


def test_start_must_match_an_existing_ledger_and_the_lock_is_honoured(
    tf: Trained, tmp_path: Path
) -> None:
    reg = _registry(tf, tmp_path)
    full = tf.frame()
    s = paper_trade(reg, full, version=tf.version, start="2024-01-10T15:00:00Z", root=tmp_path)
    assert s["start"] == "2024-01-10T15:00:00Z" and s["rows"] == 360
    # continuing without --start keeps the ledger's start
    assert paper_trade(reg, full, version=tf.version, root=tmp_path)["appended"] == 0
    with pytest.raises(PaperError, match="starts at 2024-01-10T15:00:00Z, not at"):
        paper_trade(reg, full, version=tf.version, start="2024-01-10T15:01:00Z", root=tmp_path)
    lock = FileLock(str(Path(s["ledger"]).parent / ".lock"))
    with lock, pytest.raises(PaperError, match="locked by another paper-trading run"):
        paper_trade(reg, full, version=tf.version, root=tmp_path, lock_timeout=0.05)


def test_cli_paper_prints_a_summary_and_is_idempotent(tf: Trained, tmp_path: Path) -> None:
    reg = _registry(tf, tmp_path)
    runner = CliRunner()
    args = ["paper", "--bars", str(tf.raw), "--workdir", str(tmp_path)]
    res = runner.invoke(app, args)
    assert res.exit_code == 6 and "no champion" in res.stderr  # nothing promoted yet
    reg.promote(tf.version, "test")
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.stderr
    assert f"paper: version {tf.version}" in res.stdout
    assert "bars: 391 from" in res.stdout and "391 appended" in res.stdout
    assert "fills at the open of the next bar" in res.stdout
    res = runner.invoke(app, args)
    assert res.exit_code == 0 and "0 appended" in res.stdout
    res = runner.invoke(app, [*args, "--start", "2024-01-10T15:00:00Z"])
    assert res.exit_code == 7 and res.stderr.count("\n") == 1


def test_print_run_reports_the_registry_stage(capsys: pytest.CaptureFixture[str]) -> None:
    from sentio.cli import _print_run

    base = {"flow_run_name": "r", "status": "completed", "run_dir": "/x"}
    _print_run({**base, "stages": {}})
    assert "registry" not in capsys.readouterr().out
    promoted = {"candidate": "V1", "promoted": True, "champion_after": "V1", "reasons": []}
    _print_run({**base, "stages": {"registry": {**promoted, "output": "/x/decision.json"}}})
    out = capsys.readouterr().out
    assert "registry: candidate V1 promoted -> champion V1; decision: /x/decision.json" in out
    refused = {
        "candidate": "V2",
        "promoted": False,
        "champion_after": "V1",
        "reasons": ["DSR 0.1 < min_dsr 0.95", "max drawdown 0.3 > limit 0.25"],
    }
    _print_run({**base, "stages": {"registry": refused}})
    out = capsys.readouterr().out
    assert (
        "registry: candidate V2 not promoted (DSR 0.1 < min_dsr 0.95; max drawdown 0.3 > "
        "limit 0.25); champion V1"
    ) in out


# --------------------------------------------------------------------------- Prefect


@pytest.fixture
def prefect_api(tmp_path: Path) -> Iterator[None]:
    """A throw-away Prefect API, as tests/test_flow.py uses; restores the environment."""
    with temporary_prefect_api(tmp_path / "prefect-home"):
        yield


def test_paper_flow_runs_and_a_second_run_appends_nothing(
    tf: Trained, tmp_path: Path, prefect_api: None
) -> None:
    from flows.paper import FLOW_NAME, paper_flow

    reg = _registry(tf, tmp_path)
    reg.promote(tf.version, "test")
    config = tmp_path / "sentio.yaml"
    config.write_text(yaml.safe_dump({"paths": {"workdir": str(tmp_path)}}))
    first = paper_flow(data_path=str(tf.raw), config_path=str(config))
    assert paper_flow.name == FLOW_NAME == "paper-trading"
    assert first["version"] == tf.version and first["appended"] == first["rows"] == 391
    path = Path(first["ledger"])
    assert path == ledger_path(tmp_path / "paper", tf.version)
    data = path.read_bytes()
    second = paper_flow(data_path=str(tf.raw), config_path=str(config))
    assert second["appended"] == 0 and second["rows"] == 391 and path.read_bytes() == data


def test_paper_deployment_is_served_beside_the_nightly_ones() -> None:
    from flows.serve import (
        PAPER_CRON,
        PAPER_DEPLOYMENT,
        PAPER_TIMEZONE,
        build_deployments,
        build_paper_deployment,
    )

    dep = build_paper_deployment("data/x.feather", "cfg.yaml")
    assert dep.name == PAPER_DEPLOYMENT and dep.flow_name == "paper-trading"
    assert dep.entrypoint == "flows.paper.paper_flow"
    assert dep.parameters == {"data_path": "data/x.feather", "config_path": "cfg.yaml"}
    (schedule,) = dep.schedules or []
    cron = schedule.schedule
    assert (cron.cron, cron.timezone) == (PAPER_CRON, PAPER_TIMEZONE)  # type: ignore[union-attr]
    assert [d.name for d in build_deployments("data/x.feather")] == ["nightly", "manual"]
