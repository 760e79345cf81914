"""Incremental live use: paper trading and ``sentio signal`` keep a state beside their
ledger and process only the new bars; the full recomputation stays as ``verify`` and as
the fallback, and gives the same ledger.

The models are the ones ``tests/test_live.py`` trains and registers (three sessions of
QQQ minute bars, 2024-01-08 to 2024-01-10); the history here continues them with
sessions up to 2024-02-09, among them a session that is missing entirely (a gap) and one
whose last bar never arrives (the ledger's provisional last row is revised).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

import sentio.paper as paper_module
from sentio.calendar import sessions
from sentio.cli import app
from sentio.config import with_overrides
from sentio.data.leverage import ensure_universe
from sentio.data.schema import session_date
from sentio.live import ModelBundle, load_bundle, replay
from sentio.live import signal as stateless_signal
from sentio.live_state import STATE_DIR, State
from sentio.paper import (
    LedgerMismatch,
    ledger_path,
    paper_trade,
    read_ledger,
    signal,
    trade,
)
from sentio.registry import Registry
from tests.conftest import minute_bars
from tests.test_live import Trained, trained

pytestmark = pytest.mark.slow

FIRST = dt.date(2024, 1, 12)  # the first run's history ends with this session
LAST = dt.date(2024, 2, 9)
GAP = dt.date(2024, 1, 18)  # a session the data lacks entirely
SHORT = dt.date(2024, 1, 23)  # a session whose last bar (20:59Z) never arrives
NEVER = dt.datetime(2024, 1, 23, 20, 59, tzinfo=dt.UTC)
TAIL = 4800
"""Bars of the underlying the tests' market tail holds before the resume window (the
default rule asks for more than this short history holds): the later runs build their
market from a tail that starts after the history's first bar."""


@pytest.fixture(scope="module")
def tf(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    return trained(tmp_path_factory.getbasetemp() / "live-models", "train_fit")


@pytest.fixture(scope="module")
def raw(tf: Trained) -> pl.DataFrame:
    """QQQ minute bars from 2024-01-08 to 2024-02-02 (the training file's three sessions
    first), without the session ``GAP`` and the bar ``NEVER``."""
    frames = [pl.read_ipc(tf.raw)]
    table = sessions(dt.date(2024, 1, 11), LAST)
    for i, day in enumerate(table["session"].to_list()):
        price = float(frames[-1]["close"][-1])
        frames.append(minute_bars(day.isoformat(), day.isoformat(), seed=100 + i, price=price))
    out = pl.concat(frames)
    return out.filter((session_date(pl.col("timestamp")) != GAP) & (pl.col("timestamp") != NEVER))


@pytest.fixture(scope="module")
def full(raw: pl.DataFrame, tf: Trained) -> pl.DataFrame:
    """The canonical universe of ``raw`` (the ETFs derived over the whole history)."""
    return ensure_universe(raw, tf.cfg.universe)[0]


def _days(frame: pl.DataFrame) -> list[dt.date]:
    return frame.select(session_date(pl.col("timestamp")).unique().sort()).to_series().to_list()


def _on(frame: pl.DataFrame, day: dt.date) -> pl.DataFrame:
    return frame.filter(session_date(pl.col("timestamp")) == day)


def _upto(frame: pl.DataFrame, day: dt.date) -> pl.DataFrame:
    return frame.filter(session_date(pl.col("timestamp")) <= day)


def _rows(ledger: pl.DataFrame | None) -> pl.DataFrame:
    assert ledger is not None
    return ledger.drop("appended_at")


def _bundle(t: Trained, root: Path) -> tuple[Registry, ModelBundle]:
    """A registry copy under ``root`` and its bundle with the session layer reduced to its
    closing rule (``env.masks.opening_minutes: 0``: a 20:59Z bar that never arrives then
    changes the last row's mask, see ``tests/test_paper.py``)."""
    shutil.copytree(t.registry.root, root / "registry")
    reg = Registry(root / "registry")
    bundle = load_bundle(reg, t.version)
    cfg = with_overrides(bundle.cfg, {"env.masks.opening_minutes": 0})
    return reg, dataclasses.replace(bundle, cfg=cfg)


def _run(bundle: ModelBundle, bars: Any, root: Path, **kw: Any) -> dict[str, Any]:
    return trade(bundle, bars, folder=root, **kw)[0]


def _market_rows(bundle: ModelBundle, bars: pl.DataFrame) -> int:
    return bundle.market(bars).n_rows


# --------------------------------------------------------------------------- the replay


def test_a_resumed_replay_steps_exactly_as_the_replay_from_the_start(
    tf: Trained, full: pl.DataFrame
) -> None:
    """The one loop: the account state captured at a row's close, handed to a replay that
    starts there, gives the same rows from the next one on (the first, whose step into it
    the earlier replay made, is the caller's to drop)."""
    bundle = load_bundle(tf.registry, tf.version)
    market = bundle.market(_upto(full, dt.date(2024, 1, 16)))
    start = bundle.start_row(market)
    end = market.n_rows - 1
    c = end - 500
    whole = replay(bundle, market, start, end, capture_row=c)
    assert whole.captured is not None and set(whole.captured) >= {"cash", "equity", "held"}
    resumed = replay(bundle, market, c, end, resume=whole.captured, capture_row=end - 2)
    tail = whole.frame.slice(c - start)
    assert resumed.frame.slice(1).equals(tail.slice(1))
    # the decision at the resume row itself is the same (its held columns are not known)
    assert resumed.frame["action"][0] == tail["action"][0]
    # a capture at the end of the resumed replay equals the one from the start
    again = replay(bundle, market, start, end, capture_row=end - 2)
    assert again.captured is not None and resumed.captured is not None
    for k, v in again.captured.items():
        np.testing.assert_array_equal(resumed.captured[k], v, k)


# --------------------------------------------------------------------------- paper


def test_daily_appends_continue_from_the_state_and_equal_one_full_run(
    tf: Trained, full: pl.DataFrame, tmp_path: Path
) -> None:
    """The acceptance check: a ledger fed one session at a time (only the new bars) through
    the incremental path -- across a session the data lacks and a session whose last bar
    never arrives -- is, row for row, the ledger of one run over the whole history, and
    ``verify`` (the full recomputation) agrees with it. Every daily run replays only the
    new bars plus the three it resumes with, over a market built from a bounded tail."""
    _, bundle = _bundle(tf, tmp_path)
    inc = tmp_path / "inc"
    first = _run(bundle, _upto(full, FIRST), inc, tail_rows=TAIL)
    assert first["mode"] == "full" and first["reason"] == "a new ledger"
    assert (inc / tf.version / STATE_DIR / "state.json").is_file()
    days = [d for d in _days(full) if d > FIRST]
    assert GAP not in days and SHORT in days
    revisions, tails = [], []
    for day in days:
        new = _on(full, day)
        rows_before = read_ledger(ledger_path(inc, tf.version))
        assert rows_before is not None
        s = _run(bundle, new, inc)
        assert s["mode"] == "incremental", (day, s["reason"])
        assert s["reason"] is None
        n_new = _on(full, day).filter(pl.col("symbol") == "QQQ").height
        # only the new bars, plus the ledger's last three rows it resumes with
        assert s["replayed"] == n_new + 3, day
        assert s["appended"] == n_new and s["rows"] == rows_before.height + n_new
        tails.append(s["market_rows"] < _market_rows(bundle, _upto(full, day)))
        if s["revised"] is not None:
            revisions.append((day, s["revised"]))
        after = read_ledger(ledger_path(inc, tf.version))
        assert after is not None
        keep = rows_before.height - (1 if s["revised"] else 0)
        assert after.head(keep).equals(rows_before.head(keep))  # kept as written
    # the session after SHORT revised its last row (20:58Z turned out to be the last)
    ((day, revised),) = revisions
    assert day > SHORT and revised["timestamp"] == "2024-01-23T20:58:00Z"
    assert "mask_reasons" in revised["columns"]
    assert tails[-1] and sum(tails) >= 3, "the later runs build their market from a tail"

    one = _run(bundle, full, tmp_path / "one")
    assert one["mode"] == "full"
    ours = read_ledger(ledger_path(inc, tf.version))
    assert _rows(ours).equals(_rows(read_ledger(one["ledger"])))
    path = ledger_path(inc, tf.version)
    data = path.read_bytes()
    check = _run(bundle, full, inc, verify=True)
    assert check["mode"] == "verify" and check["appended"] == 0 and check["revised"] is None
    assert path.read_bytes() == data  # the verification agreed: the ledger is untouched
    # ... and refreshed the state: the next run continues incrementally
    again = _run(bundle, full, inc)
    assert again["mode"] == "incremental" and again["appended"] == 0


def test_new_bars_only_equal_the_whole_history_also_with_derived_etfs(
    tf: Trained, raw: pl.DataFrame, tmp_path: Path
) -> None:
    """Bars of QQQ only (the ETFs derived from it, a daily-reset series that depends on
    every session since the first): feeding each session's new bars gives the ledger that
    feeding the whole history every time gives, through bar files and ``paper_trade``."""
    reg, _ = _bundle(tf, tmp_path)
    files = tmp_path / "files"
    files.mkdir()
    days = [d for d in _days(raw) if d > FIRST][:4]
    whole_root, new_root = tmp_path / "whole", tmp_path / "new"
    for i, day in enumerate([FIRST, *days]):
        upto, only = files / f"upto-{i}.feather", files / f"only-{i}.feather"
        _upto(raw, day).write_ipc(upto)
        (_upto(raw, day) if i == 0 else _on(raw, day)).write_ipc(only)
        a = paper_trade(reg, str(upto), version=tf.version, root=whole_root, tail_rows=TAIL)
        b = paper_trade(reg, str(only), version=tf.version, root=new_root, tail_rows=TAIL)
        assert (a["mode"], b["mode"]) == (("full", "full") if i == 0 else ("incremental",) * 2)
        assert a["derived_symbols"] == b["derived_symbols"] == ["SQQQ", "TQQQ"]
        assert a["rows"] == b["rows"] and a["equity"] == b["equity"]
    la, lb = (
        read_ledger(ledger_path(whole_root, tf.version)),
        read_ledger(ledger_path(new_root, tf.version)),
    )
    assert _rows(la).equals(_rows(lb))
    # ... and both equal one run over the whole history
    one = paper_trade(
        reg, str(files / f"upto-{len(days)}.feather"), version=tf.version, root=tmp_path / "one"
    )
    assert _rows(la).equals(_rows(read_ledger(one["ledger"])))


def _three_runs(bundle: ModelBundle, full: pl.DataFrame, root: Path) -> list[dt.date]:
    days = [d for d in _days(full) if d > FIRST]
    _run(bundle, _upto(full, FIRST), root, tail_rows=TAIL)
    for day in days[:2]:
        assert _run(bundle, _on(full, day), root)["mode"] == "incremental"
    return days


def test_a_missing_or_stale_state_falls_back_to_the_full_path_and_agrees(
    tf: Trained, full: pl.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, bundle = _bundle(tf, tmp_path)
    root = tmp_path / "p"
    days = _three_runs(bundle, full, root)
    path = ledger_path(root, tf.version)
    reference = tmp_path / "ref"
    _run(bundle, _upto(full, days[5]), reference)

    # the state deleted: the next run recomputes from the start (from the whole history)
    shutil.rmtree(path.parent / STATE_DIR)
    s = _run(bundle, _upto(full, days[2]), root)
    assert (s["mode"], s["reason"]) == ("full", "no state yet") and s["appended"] == 390
    # ... and wrote a new state: the next one continues
    assert _run(bundle, _on(full, days[3]), root)["mode"] == "incremental"

    # the ledger rewritten by hand (same rows, a new file): the state is stale
    ledger = read_ledger(path)
    assert ledger is not None
    ledger.write_ipc(path)
    s = _run(bundle, _upto(full, days[4]), root)
    assert s["mode"] == "full" and "the ledger changed" in s["reason"]

    # a crash between the ledger's write and the state's: the state is stale, not wrong
    def crash(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(State, "write", staticmethod(crash))
    with pytest.raises(OSError, match="disk gone"):
        _run(bundle, _on(full, days[5]), root)
    monkeypatch.undo()
    s = _run(bundle, _upto(full, days[5]), root)
    assert s["mode"] == "full" and "the ledger changed" in s["reason"]
    assert s["appended"] == 0  # the crashed run had appended the session already
    assert _rows(read_ledger(path)).equals(_rows(read_ledger(ledger_path(reference, tf.version))))
    # new bars only, but no usable state (deleted): the stored bars are gone too, so the
    # bars given must hold the ledger's start
    shutil.rmtree(path.parent / STATE_DIR)
    with pytest.raises(paper_module.PaperError, match="give the whole bar history"):
        _run(bundle, _on(full, days[6]), root)


def test_a_rewritten_or_missing_old_bar_is_refused_and_nothing_is_written(
    tf: Trained, full: pl.DataFrame, tmp_path: Path
) -> None:
    _, bundle = _bundle(tf, tmp_path)
    root = tmp_path / "p"
    days = _three_runs(bundle, full, root)
    path = ledger_path(root, tf.version)
    state = path.parent / STATE_DIR / "state.json"
    before = (path.read_bytes(), state.read_bytes())
    history = _upto(full, days[2])
    when = dt.datetime(2024, 1, 16, 15, 17, tzinfo=dt.UTC)  # a bar processed before
    hit = (pl.col("timestamp") == when) & (pl.col("symbol") == "QQQ")
    rewritten = history.with_columns(
        close=pl.when(hit).then(pl.col("close") * 1.001).otherwise(pl.col("close")),
        high=pl.when(hit).then(pl.col("high") * 1.001).otherwise(pl.col("high")),
    )
    with pytest.raises(LedgerMismatch) as err:
        _run(bundle, rewritten, root)
    msg = str(err.value)
    assert "\n" not in msg and "'close_underlying' at 2024-01-16T15:17:00Z" in msg
    assert "rewritten" in msg and "left unchanged" in msg
    missing = history.filter(~((pl.col("timestamp") == when) & (pl.col("symbol") == "TQQQ")))
    with pytest.raises(LedgerMismatch, match="bar of TQQQ at 2024-01-16T15:17:00Z .* missing"):
        _run(bundle, missing, root)
    assert (path.read_bytes(), state.read_bytes()) == before
    # the same history unchanged goes on
    assert _run(bundle, history, root)["mode"] == "incremental"
    # bars that end before the ledger's last row: nothing appended or written
    data = path.read_bytes()
    behind = _run(bundle, _upto(full, days[0]), root)
    assert behind["behind"] and behind["appended"] == 0 and path.read_bytes() == data


def test_the_convergence_guard_falls_back_when_the_kept_rows_disagree(
    tf: Trained, full: pl.DataFrame, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The market rows the previous run computed, kept with the state, are compared with
    this run's tail: corrupt one and the run warns and recomputes from the start (and the
    ledger is still the one a single run writes)."""
    _, bundle = _bundle(tf, tmp_path)
    root = tmp_path / "p"
    days = _three_runs(bundle, full, root)
    folder = ledger_path(root, tf.version).parent / STATE_DIR
    data = json.loads((folder / "state.json").read_text())
    kept = pl.read_ipc(folder / data["market"])
    values = kept["f_0"].to_numpy().copy()
    values[-10] = np.nextafter(values[-10], np.float32(np.inf))  # one float32 unit
    kept.with_columns(pl.Series("f_0", values)).write_ipc(folder / data["market"])
    with caplog.at_level(logging.WARNING, logger="sentio.paper"):
        s = _run(bundle, _on(full, days[2]), root)
    assert s["mode"] == "full" and s["reason"].startswith("convergence guard: market column f_0")
    assert any("disagrees with the previous run" in r.getMessage() for r in caplog.records)
    reference = _run(bundle, _upto(full, days[2]), tmp_path / "ref")
    assert _rows(read_ledger(ledger_path(root, tf.version))).equals(
        _rows(read_ledger(reference["ledger"]))
    )
    # the fallback rebuilt the state: the next run continues
    assert _run(bundle, _on(full, days[3]), root)["mode"] == "incremental"


def test_ledgers_too_short_or_ruined_or_replays_with_an_end_take_the_full_path(
    tf: Trained, full: pl.DataFrame, tmp_path: Path
) -> None:
    _, bundle = _bundle(tf, tmp_path)
    root = tmp_path / "p"
    start = "2024-01-12T20:57:00Z"  # three rows on the first run
    s = _run(bundle, _upto(full, FIRST), root, start=start)
    assert s["rows"] == 3 and not (ledger_path(root, tf.version).parent / STATE_DIR).exists()
    days = [d for d in _days(full) if d > FIRST]
    s = _run(bundle, _upto(full, days[0]), root, start=start)
    assert s["mode"] == "full" and "fewer than 4 rows" in s["reason"]
    assert s["appended"] == 390
    s = _run(bundle, _on(full, days[1]), root)
    assert s["mode"] == "incremental"
    end = _run(bundle, _upto(full, days[2]), root, end="2024-01-17T15:00:00Z")
    assert end["mode"] == "full" and end["reason"].startswith("end given")


# --------------------------------------------------------------------------- signal


def test_signal_with_a_state_equals_the_stateless_signal(
    tf: Trained, full: pl.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``sentio signal`` over a history that grows a session at a time replays only the
    new session, and its JSON is the stateless signal's, key for key; a history rewritten
    before the kept ledger's end rebuilds the kept ledger; ``--start`` elsewhere and bars
    behind it are answered statelessly (the kept ledger untouched)."""
    reg, bundle = _bundle(tf, tmp_path)
    bundle = dataclasses.replace(bundle, workdir=tmp_path / "wd")
    replayed: list[int] = []
    real = paper_module.replay

    def counting(*args: Any, **kwargs: Any) -> Any:
        out = real(*args, **kwargs)
        replayed.append(out.frame.height)
        return out

    monkeypatch.setattr(paper_module, "replay", counting)
    days = [d for d in _days(full) if d >= FIRST][:4]
    for i, day in enumerate(days):
        history = _upto(full, day)
        got = signal(bundle, history, tail_rows=TAIL)
        assert got == stateless_signal(bundle, history), day
        if i:
            assert replayed[-1] == _on(full, day).filter(pl.col("symbol") == "QQQ").height + 3
    kept = ledger_path(tmp_path / "wd" / "signal", tf.version)
    assert kept.is_file() and (kept.parent / STATE_DIR / "state.json").is_file()
    data = kept.read_bytes()
    history = _upto(full, days[-1])
    other = signal(bundle, history, start="2024-01-11T15:00:00Z")
    assert other == stateless_signal(bundle, history, start="2024-01-11T15:00:00Z")
    early = _upto(full, days[1])
    assert signal(bundle, early) == stateless_signal(bundle, early)
    assert kept.read_bytes() == data
    # a rewritten bar: the kept ledger is a cache, rebuilt from the bars given
    hit = (pl.col("timestamp") == dt.datetime(2024, 1, 16, 15, 0, tzinfo=dt.UTC)) & (
        pl.col("symbol") == "QQQ"
    )
    rewritten = history.with_columns(
        close=pl.when(hit).then(pl.col("close") * 1.01).otherwise(pl.col("close"))
    )
    assert signal(bundle, rewritten) == stateless_signal(bundle, rewritten)
    assert signal(bundle, rewritten, verify=True) == stateless_signal(bundle, rewritten)


def test_cli_paper_and_signal_say_how_they_ran(
    tf: Trained, raw: pl.DataFrame, tmp_path: Path
) -> None:
    reg, _ = _bundle(tf, tmp_path)
    reg.promote(tf.version, "test")
    days = [d for d in _days(raw) if d > FIRST]
    first, second = tmp_path / "first.feather", tmp_path / "second.feather"
    _upto(raw, FIRST).write_ipc(first)
    _on(raw, days[0]).write_ipc(second)
    runner = CliRunner()
    args = ["paper", "--workdir", str(tmp_path), "--bars"]
    res = runner.invoke(app, [*args, str(first)])
    assert res.exit_code == 0, res.stderr
    assert "mode: full, recomputed from the start (a new ledger;" in res.stdout
    res = runner.invoke(app, [*args, str(second)])
    assert res.exit_code == 0, res.stderr
    assert "mode: incremental (393 bars replayed over a market of" in res.stdout
    res = runner.invoke(app, [*args, str(second)])
    assert res.exit_code == 0 and "mode: incremental (no new bar)" in res.stdout
    res = runner.invoke(app, [*args, str(second), "--verify"])
    assert res.exit_code == 0 and "0 appended" in res.stdout
    assert "mode: verify, recomputed from the start (verification requested;" in res.stdout
    sig = ["signal", "--workdir", str(tmp_path), "--bars"]
    res = runner.invoke(app, [*sig, str(first)])
    assert res.exit_code == 0 and res.stderr == ""
    res2 = runner.invoke(app, [*sig, str(first), "--verify"])
    assert res2.exit_code == 0 and json.loads(res2.stdout) == json.loads(res.stdout)
    assert (tmp_path / "signal" / tf.version / "ledger.feather").is_file()
