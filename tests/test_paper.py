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
from sentio.config import resolve_for_bars
from sentio.env import EnvParams
from sentio.env.backtest import BacktestResult, backtest
from sentio.env.market import MarketData
from sentio.live import load_bundle, signal
from sentio.paper import PaperError, ledger_path, paper_trade, read_ledger
from sentio.registry import Registry
from tests.conftest import minute_bars, temporary_prefect_api
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
    params = EnvParams.from_config(resolve_for_bars(t.cfg, 60))
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
    assert res.stderr == ""  # out-of-sample: no warning
    assert f"paper: version {tf.version}" in res.stdout
    assert "bars: 391 from" in res.stdout and "391 appended" in res.stdout
    assert "fills at the open of the next bar" in res.stdout
    # the input holds QQQ only: both ETFs are derived, and the summary says so
    assert "prices of SQQQ, TQQQ are derived from the underlying" in res.stdout
    # a version registered without its out-of-sample backtest: drift is not checked
    assert f"drift: not checked (version {tf.version}: no backtest.feather" in res.stdout
    res = runner.invoke(app, args)
    assert res.exit_code == 0 and "0 appended" in res.stdout
    res = runner.invoke(app, [*args, "--start", "2024-01-10T15:00:00Z"])
    assert res.exit_code == 7 and res.stderr.count("\n") == 1
    # the same model registered with it (as the registry stage does now): checked
    v = reg.get(tf.version)
    files = {
        n: str(v.path / n) for n in v.manifest["files"] if n not in ("model.zip", "config.yaml")
    }
    files["backtest.feather"] = str(tf.train_dir / "backtest.feather")
    again = reg.register(
        v.model_path,
        v.config_path,
        v.metrics,
        data_hashes={},
        code_version="test",
        algo=v.algo,
        extra=v.manifest["extra"],
        extra_files=files,
    )
    reg.promote(again.version, "test")
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.stderr
    line = next(x for x in res.stdout.splitlines() if x.startswith("drift: "))
    assert "not checked" not in line, line


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


# --------------------------------------------------------------------------- the last row


GAP = dt.datetime(2024, 1, 10, 20, 59, tzinfo=dt.UTC)  # 15:59 New York: the session's last bar


def _gap_bars(t: Trained) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The reviewer's scenario: the session's last bar (20:59Z) never arrives.

    ``short`` is what exists at 16:15 New York (bars up to 20:58Z); ``full`` adds the next
    session (2024-01-11), still without 20:59Z.
    """
    raw = pl.read_ipc(t.raw)
    nxt = minute_bars("2024-01-11", "2024-01-11", seed=11, price=float(raw["close"][-1]))
    full = pl.concat([raw, nxt]).filter(pl.col("timestamp") != GAP)
    return full.filter(pl.col("timestamp") < GAP), full


def _closing_rule_only(t: Trained, reg: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    """Paper trading with the bundle's session layer reduced to its closing rule
    (``env.masks.opening_minutes: 0``): then the session layer blocks the placeholder's
    late fill at 20:59Z but not a fill at the next session's open, so a 20:59Z that never
    arrives changes the last row's masks (with the opening rule both fills are blocked)."""
    import dataclasses

    import sentio.paper as paper_module
    from sentio.config import with_overrides

    bundle = load_bundle(reg, t.version)
    patched = dataclasses.replace(
        bundle, cfg=with_overrides(bundle.cfg, {"env.masks.opening_minutes": 0})
    )
    monkeypatch.setattr(paper_module, "load_bundle", lambda *a, **k: patched)


def test_a_bar_that_never_arrives_revises_only_the_ledgers_last_row(
    tf: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last row is provisional: it was decided with the calendar's next bar (20:59Z, one
    minute before the close); once the next session's bars show that 20:59Z never came, the
    replay re-decides 20:58Z as the session's last bar (flat_at_close, no session mask). The
    ledger takes the recomputed row, says so, and keeps every older row as written."""
    reg = _registry(tf, tmp_path)
    _closing_rule_only(tf, reg, monkeypatch)
    short, full = _gap_bars(tf)
    first = paper_trade(reg, short, version=tf.version, root=tmp_path)
    assert first["last"] == "2024-01-10T20:58:00Z" and first["revised"] is None
    path = Path(first["ledger"])
    before = read_ledger(path)
    assert before is not None
    n = before.height
    assert "session" in before["mask_reasons"][-1]  # the placeholder 20:59Z bar is late

    # the last row's own bar (its prices) may not change: that is a rewritten history
    bad = full.with_columns(
        close=pl.when(pl.col("timestamp") == GAP - dt.timedelta(minutes=1))
        .then(pl.col("close") * 1.001)
        .otherwise(pl.col("close"))
    )
    data = path.read_bytes()
    with pytest.raises(PaperError, match="'close_underlying' at 2024-01-10T20:58:00Z"):
        paper_trade(reg, bad, version=tf.version, root=tmp_path)
    assert path.read_bytes() == data

    s = paper_trade(reg, full, version=tf.version, root=tmp_path)
    after = read_ledger(path)
    assert after is not None
    assert s["appended"] == after.height - n == 390 and s["rows"] == after.height
    revised = s["revised"]
    assert revised is not None and revised["timestamp"] == "2024-01-10T20:58:00Z"
    changed = revised["columns"]
    assert "mask_reasons" in changed and after["mask_reasons"][n - 1] == ""
    for col, (old, new) in changed.items():
        assert before[col][n - 1] == old and after[col][n - 1] == new, col
    unchanged = [c for c in _rows(before).columns if c not in changed]
    assert _rows(after).select(unchanged).row(n - 1) == _rows(before).select(unchanged).row(-1)
    # every older row is kept as written (appended_at included)
    assert after.head(n - 1).equals(before.head(n - 1))
    # ... and the ledger is the one a single run over all the bars writes
    one = paper_trade(reg, full, version=tf.version, root=tmp_path / "one")
    one_ledger = read_ledger(one["ledger"])
    assert one_ledger is not None and _rows(after).equals(_rows(one_ledger))
    # a re-run revises nothing and leaves the file alone
    data = path.read_bytes()
    again = paper_trade(reg, full, version=tf.version, root=tmp_path)
    assert again["appended"] == 0 and again["revised"] is None and path.read_bytes() == data
    # bars that end at 20:58Z again: the recomputation's last row is the provisional one
    # now (the ledger's is final); nothing is compared there, revised or written
    behind = paper_trade(reg, short, version=tf.version, root=tmp_path)
    assert behind["behind"] and behind["appended"] == 0 and behind["revised"] is None
    assert path.read_bytes() == data

    # a rewritten bar before the last row is still refused, the ledger untouched
    hit = (pl.col("timestamp") == dt.datetime(2024, 1, 10, 20, 57, tzinfo=dt.UTC)) & (
        pl.col("symbol") == "QQQ"
    )
    rewritten = full.with_columns(
        close=pl.when(hit).then(pl.col("close") * 1.001).otherwise(pl.col("close")),
        high=pl.when(hit).then(pl.col("high") * 1.001).otherwise(pl.col("high")),
    )
    with pytest.raises(PaperError, match="at 2024-01-10T20:57:00Z .* rewritten"):
        paper_trade(reg, rewritten, version=tf.version, root=tmp_path)
    assert path.read_bytes() == data


def test_a_revised_last_row_takes_the_forced_exit_at_the_sessions_close(
    tf: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An always-long policy (flat_at_close, no risk-budget / regime masks) holds TQQQ over
    20:58Z; once the bars show 20:58Z was the session's last, the revision sells it at that
    close: forced_exit, exposure and equity change, and the next session starts flat."""
    import dataclasses

    import sentio.paper as paper_module
    from sentio.config import with_overrides

    reg = _registry(tf, tmp_path)
    bundle = load_bundle(reg, tf.version)
    cfg = with_overrides(bundle.cfg, {"env.masks.risk_budget": False, "env.masks.regime": False})
    grid = list(EnvParams.from_config(resolve_for_bars(cfg, 60)).grid)
    long_, flat = grid.index(1.0), grid.index(0.0)
    always_long = dataclasses.replace(
        bundle, cfg=cfg, model=lambda obs, mask: long_ if mask[long_] else flat
    )
    monkeypatch.setattr(paper_module, "load_bundle", lambda *a, **k: always_long)
    short, full = _gap_bars(tf)
    first = paper_trade(reg, short, version=tf.version, root=tmp_path)
    before = read_ledger(first["ledger"])
    assert before is not None
    held = before.row(-1, named=True)
    assert held["forced_exit"] == "" and held["exposure"] > 0.9  # long over the close
    s = paper_trade(reg, full, version=tf.version, root=tmp_path)
    revised = s["revised"]
    assert revised is not None and revised["timestamp"] == "2024-01-10T20:58:00Z"
    changes = revised["columns"]
    assert changes["forced_exit"] == ["", "flat_at_close"]
    assert changes["exposure"] == [held["exposure"], 0.0]
    assert changes["equity"][0] == held["equity"] and changes["equity"][1] < held["equity"]
    after = read_ledger(s["ledger"])
    assert after is not None
    n = before.height
    one = paper_trade(reg, full, version=tf.version, root=tmp_path / "one")
    one_ledger = read_ledger(one["ledger"])
    assert one_ledger is not None and _rows(after).equals(_rows(one_ledger))
    assert after.head(n - 1).equals(before.head(n - 1))


def test_cli_paper_prints_a_line_when_the_last_row_is_revised(
    tf: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg = _registry(tf, tmp_path)
    reg.promote(tf.version, "test")
    _closing_rule_only(tf, reg, monkeypatch)
    short, full = _gap_bars(tf)
    short.write_ipc(tmp_path / "short.feather")
    full.write_ipc(tmp_path / "full.feather")
    runner = CliRunner()
    args = ["paper", "--workdir", str(tmp_path), "--bars"]
    res = runner.invoke(app, [*args, str(tmp_path / "short.feather")])
    assert res.exit_code == 0, res.stderr
    assert "revised" not in res.stdout
    res = runner.invoke(app, [*args, str(tmp_path / "full.feather")])
    assert res.exit_code == 0, res.stderr
    (line,) = [x for x in res.stdout.splitlines() if x.startswith("revised:")]
    assert "2024-01-10T20:58:00Z" in line and "mask_reasons '-1: session" in line
    assert "390 appended" in res.stdout


def test_a_start_between_bars_is_resolved_before_it_is_compared(
    tf: Trained, tmp_path: Path
) -> None:
    reg = _registry(tf, tmp_path)
    full = tf.frame()
    s = paper_trade(reg, full, version=tf.version, start="2024-01-10", root=tmp_path)
    assert s["start"] == "2024-01-10T14:30:00Z"  # the first bar at or after the date
    again = paper_trade(reg, full, version=tf.version, start="2024-01-10", root=tmp_path)
    assert again["appended"] == 0 and again["start"] == s["start"]
    # a start that resolves to another bar is still refused
    with pytest.raises(PaperError, match="starts at 2024-01-10T14:30:00Z, not at 2024-01-10T14:31"):
        paper_trade(reg, full, version=tf.version, start="2024-01-10T14:30:30Z", root=tmp_path)


def test_float32_columns_are_compared_with_a_float32_tolerance(tf: Trained, tmp_path: Path) -> None:
    """p_regime_* are float32 values: one float32 ulp (what a last-digit difference of the
    float64 filter upstream can become) is accepted; float64 columns keep 1e-9."""
    reg = _registry(tf, tmp_path)
    full = tf.frame()
    s = paper_trade(reg, full, version=tf.version, root=tmp_path)
    path = Path(s["ledger"])
    ledger = read_ledger(path)
    assert ledger is not None
    row = 10

    def tamper(col: str, value: float) -> None:
        assert ledger is not None
        values = ledger[col].to_numpy().copy()
        values[row] = value
        ledger.with_columns(pl.Series(col, values)).write_ipc(path)

    p = np.float32(ledger["p_regime_0"][row])
    assert float(p) == ledger["p_regime_0"][row]  # stored float64, float32 values
    tamper("p_regime_0", float(np.nextafter(p, np.float32(1))))  # one float32 ulp
    assert paper_trade(reg, full, version=tf.version, root=tmp_path)["appended"] == 0
    tamper("p_regime_0", float(p) + 1e-5)
    with pytest.raises(PaperError, match="'p_regime_0' at"):
        paper_trade(reg, full, version=tf.version, root=tmp_path)
    tamper("p_regime_0", float(p))
    tamper("equity", ledger["equity"][row] * (1 + 1e-8))  # float64: 1e-9 relative
    with pytest.raises(PaperError, match="'equity' at"):
        paper_trade(reg, full, version=tf.version, root=tmp_path)


def test_an_in_sample_start_is_flagged_by_paper_trade_and_the_cli(
    tf: Trained, tmp_path: Path
) -> None:
    reg = _registry(tf, tmp_path)
    reg.promote(tf.version, "test")
    full = tf.frame()
    default = paper_trade(reg, full, root=tmp_path / "default")
    assert default["in_sample"] is False
    train_end = tf.train_end.replace("+00:00", "Z")
    at_end = paper_trade(reg, full, start=train_end, root=tmp_path / "at_end")
    assert at_end["start"] == train_end and at_end["in_sample"] is True
    runner = CliRunner()
    args = ["paper", "--bars", str(tf.raw), "--workdir", str(tmp_path)]
    res = runner.invoke(app, [*args, "--start", "2024-01-09T15:00:00Z"])
    assert res.exit_code == 0, res.stderr
    (warning,) = res.stderr.splitlines()
    assert warning.startswith("warning: ") and "in-sample" in warning
    assert tf.train_end.replace("+00:00", "Z") in warning
    # continuing the ledger without --start still warns: it started in-sample
    res = runner.invoke(app, args)
    assert res.exit_code == 0 and res.stderr.count("warning: ") == 1
