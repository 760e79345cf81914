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
import itertools
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from filelock import FileLock
from typer.testing import CliRunner

import sentio.live_state as live_state
import sentio.paper as paper_module
from sentio.calendar import sessions
from sentio.cli import app
from sentio.config import with_overrides
from sentio.data.leverage import ensure_universe
from sentio.data.schema import session_date
from sentio.live import ModelBundle, load_bundle, replay
from sentio.live import signal as stateless_signal
from sentio.live_state import STATE_DIR, Staged, State
from sentio.paper import (
    LedgerMismatch,
    ledger_path,
    paper_trade,
    read_ledger,
    signal,
    trade,
)
from sentio.registry import Registry
from sentio.times import iso_z
from tests.conftest import minute_bars
from tests.test_live import Trained, trained

pytestmark = pytest.mark.slow

FIRST = dt.date(2024, 1, 12)  # the first run's history ends with this session
LAST = dt.date(2024, 2, 9)
GAP = dt.date(2024, 1, 18)  # a session the data lacks entirely
AFTER_GAP = dt.date(2024, 1, 19)
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


def _since(frame: pl.DataFrame, day: dt.date) -> pl.DataFrame:
    """The bars of ``day`` preceded by the last session before it that has data: what a
    run after a session the data lacks is given (the bars from the ledger's last session
    on)."""
    session = session_date(pl.col("timestamp"))
    last = frame.filter(session < day).select(session.max()).item()
    return frame.filter(session.is_between(last, day))


def _next_bars(frame: pl.DataFrame, day: dt.date) -> pl.DataFrame:
    """A daily run's bars: the session's, but from the ledger's last bar on after the
    session the data lacks (new bars that skip a calendar session are refused)."""
    return _since(frame, day) if day == AFTER_GAP else _on(frame, day)


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
        new = _next_bars(full, day)
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
        (_upto(raw, day) if i == 0 else _next_bars(raw, day)).write_ipc(only)
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
    tf: Trained, full: pl.DataFrame, tmp_path: Path
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

    # stale again: the full path continues the stored bars with the new ones, and refuses
    # new bars that skip a session the way the incremental path does (nothing written)
    ledger = read_ledger(path)
    assert ledger is not None
    ledger.write_ipc(path)
    data = path.read_bytes()
    with pytest.raises(paper_module.PaperError, match=r"lack \(2024-01-24\): give the bars"):
        _run(bundle, _on(full, days[6]), root)
    assert path.read_bytes() == data
    s = _run(bundle, _on(full, days[5]), root)
    assert s["mode"] == "full" and "the ledger changed" in s["reason"] and s["appended"] == 390
    assert _rows(read_ledger(path)).equals(_rows(read_ledger(ledger_path(reference, tf.version))))
    # new bars only, but no usable state (deleted): the stored bars are gone too, so the
    # bars given must hold the ledger's start
    shutil.rmtree(path.parent / STATE_DIR)
    with pytest.raises(paper_module.PaperError, match="give the whole bar history"):
        _run(bundle, _on(full, days[6]), root)


def test_a_run_stopped_between_its_ledger_and_its_state_is_continued(
    tf: Trained, full: pl.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bars a run processed are on disk before its ledger is: a run that stops after
    renaming its ledger into place (disk full, killed) leaves the new state as
    ``next.json``, which the next run, given only the next session's bars, adopts and
    continues from; one that stops before leaves the old ledger and its state. Without
    ``next.json`` either, the run says which bars to give instead of calling the history
    rewritten."""
    _, bundle = _bundle(tf, tmp_path)
    root = tmp_path / "p"
    days = _three_runs(bundle, full, root)
    path = ledger_path(root, tf.version)
    folder = path.parent / STATE_DIR

    def crash(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk gone")

    # stopped after the ledger's rename, before state.json
    monkeypatch.setattr(Staged, "commit", crash)
    with pytest.raises(OSError, match="disk gone"):
        _run(bundle, _next_bars(full, days[2]), root)
    monkeypatch.undo()
    assert (folder / "next.json").is_file()
    assert read_ledger(path)["timestamp"][-1].date() == days[2]  # type: ignore[index]
    s = _run(bundle, _on(full, days[3]), root)
    assert (s["mode"], s["appended"]) == ("incremental", 390)
    assert not (folder / "next.json").exists()

    # stopped before the ledger's rename (next.json could not be written): nothing changed
    monkeypatch.setattr(Staged, "prepare", crash)
    data, state = path.read_bytes(), (folder / "state.json").read_bytes()
    with pytest.raises(OSError, match="disk gone"):
        _run(bundle, _on(full, days[4]), root)
    monkeypatch.undo()
    assert (path.read_bytes(), (folder / "state.json").read_bytes()) == (data, state)
    s = _run(bundle, _on(full, days[4]), root)
    assert (s["mode"], s["appended"]) == ("incremental", 389)  # SHORT lacks its last bar

    # stopped after the rename and next.json lost as well: the state is stale and its bars
    # lack the last session; the run names the bars to give, and writes nothing
    monkeypatch.setattr(Staged, "commit", crash)
    with pytest.raises(OSError, match="disk gone"):
        _run(bundle, _on(full, days[5]), root)
    monkeypatch.undo()
    (folder / "next.json").unlink()
    data, state = path.read_bytes(), (folder / "state.json").read_bytes()
    with pytest.raises(paper_module.PaperError) as err:
        _run(bundle, _on(full, days[6]), root)
    msg = str(err.value)
    assert "\n" not in msg and "rewritten" not in msg
    assert "rows from 2024-01-24T14:30:00Z to 2024-01-24T20:59:00Z" in msg
    assert "give the bars from the session 2024-01-24 on" in msg
    assert (path.read_bytes(), (folder / "state.json").read_bytes()) == (data, state)
    since = full.filter(session_date(pl.col("timestamp")).is_between(days[5], days[6]))
    s = _run(bundle, since, root)
    assert s["mode"] == "full" and "the ledger changed" in s["reason"] and s["appended"] == 390
    reference = _run(bundle, _upto(full, days[6]), tmp_path / "ref")
    assert _rows(read_ledger(path)).equals(_rows(read_ledger(reference["ledger"])))
    assert _run(bundle, _on(full, days[7]), root)["mode"] == "incremental"


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
        s = _run(bundle, _next_bars(full, days[2]), root)
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


def test_bars_from_before_the_stored_history_keep_its_derived_etfs(
    tf: Trained, raw: pl.DataFrame, tmp_path: Path
) -> None:
    """A ledger begun on bars from 2024-01-09 (QQQ only: the ETFs derived, a daily-reset
    series whose level depends on where the derivation starts) is later given the whole
    archive from 2024-01-08: the new bars' ETF prices continue the stored history's, so the
    ledger is the one a single run over the history it was built on writes, and the
    verification over the archive agrees with it."""
    _, bundle = _bundle(tf, tmp_path)
    late = raw.filter(session_date(pl.col("timestamp")) >= dt.date(2024, 1, 9))
    days = [d for d in _days(raw) if d > FIRST][:2]
    root = tmp_path / "p"
    assert _run(bundle, _upto(late, FIRST), root, tail_rows=TAIL)["mode"] == "full"
    assert _run(bundle, _on(raw, days[0]), root)["mode"] == "incremental"
    archive = _upto(raw, days[1])
    s = _run(bundle, archive, root)
    assert (s["mode"], s["appended"]) == ("incremental", 390)
    reference = _run(bundle, _upto(late, days[1]), tmp_path / "ref")
    path = ledger_path(root, tf.version)
    ours = _rows(read_ledger(path))
    assert ours.equals(_rows(read_ledger(reference["ledger"])))
    # the archive's own derivation puts the ETFs on another base (what a run must not use)
    tqqq = ensure_universe(archive, tf.cfg.universe)[0].filter(pl.col("symbol") == "TQQQ")
    assert abs(tqqq["close"][-1] / ours["close_long"][-1] - 1) > 1e-3
    data = path.read_bytes()
    check = _run(bundle, archive, root, verify=True)
    assert (check["mode"], check["appended"], check["revised"]) == ("verify", 0, None)
    assert path.read_bytes() == data


def test_new_bars_after_a_missed_session_are_refused_unless_they_reach_back(
    tf: Trained, full: pl.DataFrame, tmp_path: Path
) -> None:
    """A data file overwritten every day and one run missed: the next run's bars start a
    session after the stored ones end; it is refused (one line naming the sessions, nothing
    written). Bars from the ledger's last bar on are accepted, also when the data itself
    lacks a session (``GAP``), and give the ledger one run over the history gives."""
    _, bundle = _bundle(tf, tmp_path)
    root = tmp_path / "p"
    days = _three_runs(bundle, full, root)  # the ledger ends with 2024-01-17
    path = ledger_path(root, tf.version)
    state = path.parent / STATE_DIR / "state.json"
    before = (path.read_bytes(), state.read_bytes())
    with pytest.raises(paper_module.PaperError) as err:
        _run(bundle, _on(full, days[3]), root)  # 2024-01-22: 01-18 and 01-19 skipped
    msg = str(err.value)
    assert not isinstance(err.value, LedgerMismatch) and "\n" not in msg
    assert "(2024-01-18, 2024-01-19)" in msg and "nothing was written" in msg
    assert "give the bars from the ledger's last session (2024-01-17) on" in msg
    assert (path.read_bytes(), state.read_bytes()) == before
    assert sorted(p.name for p in state.parent.iterdir() if p.name.startswith("next")) == []
    s = _run(bundle, _since(full, days[2]), root)  # 2024-01-17 on: 01-18 lacks data
    assert (s["mode"], s["appended"]) == ("incremental", 390)
    reference = _run(bundle, _upto(full, days[2]), tmp_path / "ref")
    assert _rows(read_ledger(path)).equals(_rows(read_ledger(reference["ledger"])))


def test_a_corrected_old_print_anywhere_in_the_stored_history_is_refused(
    tf: Trained, full: pl.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every bar given that the stored bars also have is compared, not only the market
    tail's: chunks the bars given cover entirely by their digest, the others row by row."""
    monkeypatch.setattr(live_state, "CHUNK_ROWS", 780)  # chunks of two sessions
    _, bundle = _bundle(tf, tmp_path)
    root = tmp_path / "p"
    # a short tail: the market of the later runs starts on 2024-01-11, after the bars below
    short = {"tail_rows": 240}
    _run(bundle, _upto(full, FIRST), root, **short)
    days = [d for d in _days(full) if d > FIRST]
    for day in days[:2]:
        _run(bundle, _on(full, day), root, **short)
    path = ledger_path(root, tf.version)
    st, _ = State.load(path.parent)
    assert st is not None and len(st.chunks) >= 3
    data = (path.read_bytes(), (path.parent / STATE_DIR / "state.json").read_bytes())
    history = _upto(full, days[1])  # no new bar: the old code compared nothing
    when = dt.datetime(2024, 1, 10, 15, 17, tzinfo=dt.UTC)  # a ledger row, the first chunk
    hit = (pl.col("timestamp") == when) & (pl.col("symbol") == "QQQ")
    corrected = history.with_columns(
        close=pl.when(hit).then(pl.col("close") * 1.001).otherwise(pl.col("close")),
        high=pl.when(hit).then(pl.col("high") * 1.001).otherwise(pl.col("high")),
    )
    with pytest.raises(LedgerMismatch, match="'close_underlying' at 2024-01-10T15:17:00Z"):
        _run(bundle, corrected, root, **short)
    # a part of the history, starting inside a chunk
    part = corrected.filter(pl.col("timestamp") >= dt.datetime(2024, 1, 10, 15, tzinfo=dt.UTC))
    with pytest.raises(LedgerMismatch, match="'close_underlying' at 2024-01-10T15:17:00Z"):
        _run(bundle, part, root, **short)
    # a bar missing in a later chunk
    gone = dt.datetime(2024, 1, 12, 16, 0, tzinfo=dt.UTC)
    missing = history.filter(~((pl.col("timestamp") == gone) & (pl.col("symbol") == "TQQQ")))
    with pytest.raises(LedgerMismatch, match="bar of TQQQ at 2024-01-12T16:00:00Z .* missing"):
        _run(bundle, missing, root, **short)
    assert (path.read_bytes(), (path.parent / STATE_DIR / "state.json").read_bytes()) == data
    # the history as processed: equal digests, nothing to do
    s = _run(bundle, history, root, **short)
    assert (s["mode"], s["appended"]) == ("incremental", 0)


def test_a_start_given_as_a_date_continues_the_ledger_it_resolves_to(
    tf: Trained, full: pl.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A start from a deployment parameter ("2024-01-11") is compared as the bar it
    resolves to (2024-01-11T14:30Z), for paper trading and for the signal's kept replay."""
    _, bundle = _bundle(tf, tmp_path)
    root = tmp_path / "p"
    days = [d for d in _days(full) if d > FIRST]
    s = _run(bundle, _upto(full, FIRST), root, start="2024-01-11", tail_rows=TAIL)
    assert s["start"] == "2024-01-11T14:30:00Z"
    s = _run(bundle, _on(full, days[0]), root, start="2024-01-11")
    assert (s["mode"], s["reason"], s["appended"]) == ("incremental", None, 390)
    # a start that resolves to another bar still goes to the full path, which refuses it
    with pytest.raises(LedgerMismatch, match="the ledger starts at 2024-01-11T14:30:00Z"):
        _run(bundle, _upto(full, days[1]), root, start="2024-01-11T14:31:00Z")

    wd = dataclasses.replace(bundle, workdir=tmp_path / "wd")
    replayed = _count_replays(monkeypatch)
    signal(wd, _upto(full, FIRST), tail_rows=TAIL)  # the kept replay: the default start
    kept = read_ledger(ledger_path(tmp_path / "wd" / "signal", tf.version))
    assert kept is not None and iso_z(kept["timestamp"][0]) == "2024-01-09T20:59:00Z"
    start = "2024-01-09T20:58:30Z"  # resolves to the kept replay's first bar
    history = _upto(full, days[0])
    n = len(replayed)
    assert signal(wd, history, start=start) == stateless_signal(wd, history, start=start)
    assert replayed[n:] == [_on(full, days[0]).filter(pl.col("symbol") == "QQQ").height + 3]


def _count_replays(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The rows of every replay paper trading runs from now on (a list that grows)."""
    replayed: list[int] = []
    real = paper_module.replay

    def counting(*args: Any, **kwargs: Any) -> Any:
        out = real(*args, **kwargs)
        replayed.append(out.frame.height)
        return out

    monkeypatch.setattr(paper_module, "replay", counting)
    return replayed


def test_an_edit_that_keeps_the_ledgers_size_and_mtime_makes_the_state_stale(
    tf: Trained, full: pl.DataFrame, tmp_path: Path
) -> None:
    """The state's guard holds the ledger's sha256: a value edited in place with the size
    and the modification time kept (``cp -p``) sends the run to the full path, which finds
    the edited row."""
    _, bundle = _bundle(tf, tmp_path)
    root = tmp_path / "p"
    days = _three_runs(bundle, full, root)
    path = ledger_path(root, tf.version)
    ledger = read_ledger(path)
    assert ledger is not None
    stat = path.stat()
    edited = tmp_path / "edited.feather"
    for row in range(100, 400):  # an edit whose compressed file has the same size
        equity = ledger["equity"].to_numpy().copy()
        equity[row] *= 1.001
        ledger.with_columns(pl.Series("equity", equity)).write_ipc(edited, compression="zstd")
        if edited.stat().st_size == stat.st_size:
            break
    else:
        pytest.fail("no same-size edit found")
    shutil.copyfile(edited, path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    when = iso_z(ledger["timestamp"][row])
    with pytest.raises(LedgerMismatch, match=f"'equity' at {when}"):
        _run(bundle, _next_bars(full, days[2]), root)


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
    replayed = _count_replays(monkeypatch)
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


def test_intraday_signals_from_files_of_the_bars_since_the_last_call(
    tf: Trained, raw: pl.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``sentio signal`` during a session, given the history at 10:30 New York, then the
    file of the bars since (10:30-10:59), then the rest of the session: each decides at
    its file's last bar, with the JSON of a replay from the start over every bar given so
    far, and the later calls replay only the new bars (a signal's ingest keeps a file's
    partial first session and the session in progress; the ETFs are derived from the
    underlying over the kept bars and the new ones)."""
    _, bundle = _bundle(tf, tmp_path)
    bundle = dataclasses.replace(bundle, workdir=tmp_path / "wd")
    replayed = _count_replays(monkeypatch)
    ts = pl.col("timestamp")
    history = _upto(raw, dt.date(2024, 1, 16))  # its last session: 14:30-20:59 UTC
    cuts = [
        None,
        dt.datetime(2024, 1, 16, 15, 29, tzinfo=dt.UTC),  # 10:29 New York
        dt.datetime(2024, 1, 16, 15, 59, tzinfo=dt.UTC),
        dt.datetime(2024, 1, 16, 20, 59, tzinfo=dt.UTC),  # the close
    ]
    for i, (before, cut) in enumerate(itertools.pairwise(cuts)):
        new = (
            history.filter(ts <= cut)
            if before is None
            else history.filter(ts.is_between(before, cut, "right"))
        )
        new.write_ipc(tmp_path / f"bars-{i}.feather")
        history.filter(ts <= cut).write_ipc(tmp_path / f"so-far-{i}.feather")
        got = signal(bundle, str(tmp_path / f"bars-{i}.feather"), tail_rows=TAIL)
        assert got == stateless_signal(bundle, str(tmp_path / f"so-far-{i}.feather")), cut
        assert got["timestamp"] == got["bars_end"] == iso_z(cut)
        if before is not None:
            assert replayed[-1] == new.height + 3, cut  # the new bars (and the resume rows)


def test_a_damaged_kept_replay_is_rebuilt_and_a_start_answered_from_the_start(
    tf: Trained, full: pl.DataFrame, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The signal's kept replay is a cache: a truncated ledger gives a ``--start`` signal
    a replay from the start (with a warning, the cache untouched), and the next signal
    without one rebuilds it (with a warning), as does ``--verify`` when a kept value was
    edited."""
    _, bundle = _bundle(tf, tmp_path)
    bundle = dataclasses.replace(bundle, workdir=tmp_path / "wd")
    history = _upto(full, FIRST)
    first = signal(bundle, history)
    kept = ledger_path(tmp_path / "wd" / "signal", tf.version)
    kept.write_bytes(kept.read_bytes()[:1000])  # a disk that filled up, say
    start = first["account"]["since"]
    with caplog.at_level(logging.WARNING, logger="sentio.paper"):
        assert signal(bundle, history, start=start) == stateless_signal(
            bundle, history, start=start
        )
    assert any("the kept replay cannot be read" in r.getMessage() for r in caplog.records)
    assert len(kept.read_bytes()) == 1000
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sentio.paper"):
        assert signal(bundle, history) == first
    assert any("rebuilding the kept replay" in r.getMessage() for r in caplog.records)
    assert pl.read_ipc(kept).height == first["account"]["bars"]
    # an edited value: --verify finds it and rebuilds
    ledger = pl.read_ipc(kept)
    ledger.with_columns(equity=pl.col("equity") * 1.5).write_ipc(kept)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sentio.paper"):
        assert signal(bundle, history, verify=True) == first
    assert any("rebuilding the kept replay" in r.getMessage() for r in caplog.records)
    assert pl.read_ipc(kept)["equity"].equals(ledger["equity"])
    # damaged bars kept beside it, read to resolve a start just before its first bar
    since = dt.datetime.fromisoformat(first["account"]["since"].replace("Z", "+00:00"))
    before = since - dt.timedelta(seconds=30)
    chunks = list((kept.parent / STATE_DIR).glob("bars-*.feather"))
    assert chunks
    for chunk in chunks:
        chunk.write_bytes(chunk.read_bytes()[:200])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sentio.paper"):
        got = signal(bundle, history, start=before)
    assert got == stateless_signal(bundle, history, start=before)
    assert any("the kept replay cannot be read" in r.getMessage() for r in caplog.records)


def test_signal_names_its_lock_and_answers_statelessly_on_a_read_only_root(
    tf: Trained, full: pl.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, bundle = _bundle(tf, tmp_path)
    bundle = dataclasses.replace(bundle, workdir=tmp_path / "wd")
    history = _upto(full, FIRST)
    kept = ledger_path(tmp_path / "wd" / "signal", tf.version)
    kept.parent.mkdir(parents=True)
    locked = pytest.raises(paper_module.PaperError, match="locked by another signal for")
    with FileLock(str(kept.parent / ".lock")), locked:
        signal(bundle, history, lock_timeout=0.05)
    # a working directory that cannot be written: the stateless signal, as before
    ro = tmp_path / "ro"
    real = Path.mkdir

    def denied(self: Path, *args: Any, **kwargs: Any) -> None:
        if self == ro or ro in self.parents:
            raise PermissionError(13, "Permission denied", str(self))
        real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", denied)
    assert signal(bundle, history, root=ro) == stateless_signal(bundle, history)
    assert not ro.exists()


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


def test_bars_missing_between_the_stored_ones_and_the_new_ones_are_refused(
    tf: Trained, full: pl.DataFrame, tmp_path: Path
) -> None:
    """A run before a session's last hour arrived, then a run given only the next
    session: the hour is in neither, and appending would leave it out for good (a full run
    over the history holds it). Refused, one line naming the span, nothing written; the
    bars from the ledger's last session on are accepted and give one full run's ledger. A
    session's lone missing last bar stays accepted (``SHORT``, the daily-appends test)."""
    _, bundle = _bundle(tf, tmp_path)
    root = tmp_path / "p"
    cut = dt.datetime(2024, 1, 12, 20, 0, tzinfo=dt.UTC)  # 15:00 New York
    nxt = dt.date(2024, 1, 16)
    first = _run(bundle, _upto(full, FIRST).filter(pl.col("timestamp") < cut), root)
    assert first["last"] == "2024-01-12T19:59:00Z"
    path = ledger_path(root, tf.version)
    state = path.parent / STATE_DIR / "state.json"
    before = (path.read_bytes(), state.read_bytes())
    with pytest.raises(paper_module.PaperError) as err:
        _run(bundle, _on(full, nxt), root)
    msg = str(err.value)
    assert "\n" not in msg and "60 bars from 2024-01-12T20:00:00Z on are in neither" in msg
    assert "give the bars from the ledger's last session (2024-01-12) on" in msg
    assert (path.read_bytes(), state.read_bytes()) == before
    # bars from the middle of the next session: its first 90 minutes missing too
    late = _on(full, nxt).filter(pl.col("timestamp") >= dt.datetime(2024, 1, 16, 16, tzinfo=dt.UTC))
    with pytest.raises(paper_module.PaperError, match="150 bars from 2024-01-12T20:00:00Z on"):
        _run(bundle, late, root)
    assert (path.read_bytes(), state.read_bytes()) == before
    s = _run(bundle, _since(full, nxt), root)  # 2024-01-12 (whole) and 2024-01-16
    assert s["mode"] == "incremental"
    reference = _run(bundle, _upto(full, nxt), tmp_path / "ref")
    assert _rows(read_ledger(path)).equals(_rows(read_ledger(reference["ledger"])))


def test_the_stored_bars_end_at_the_ledger_s_last_row(
    tf: Trained, full: pl.DataFrame, tmp_path: Path
) -> None:
    """The underlying's last bar came, a traded ETF's not yet: that bar is no market row,
    so it is not stored either; the next run, given the whole history with the late bar,
    appends that row too (as one full run does) instead of refusing the history."""
    _, bundle = _bundle(tf, tmp_path)
    root = tmp_path / "p"
    last = dt.datetime(2024, 1, 12, 20, 59, tzinfo=dt.UTC)
    late = (pl.col("symbol") == "TQQQ") & (pl.col("timestamp") == last)
    s = _run(bundle, _upto(full, FIRST).filter(~late), root)
    assert s["last"] == "2024-01-12T20:58:00Z"
    path = ledger_path(root, tf.version)
    stored, _ = State.load(path.parent)
    assert stored is not None and stored.last == dt.datetime(2024, 1, 12, 20, 58, tzinfo=dt.UTC)
    nxt = dt.date(2024, 1, 16)
    s = _run(bundle, _upto(full, nxt), root)
    assert s["mode"] == "incremental" and s["appended"] == 391
    reference = _run(bundle, _upto(full, nxt), tmp_path / "ref")
    assert _rows(read_ledger(path)).equals(_rows(read_ledger(reference["ledger"])))


def test_a_damaged_state_is_recomputed_from_the_bars_given_or_one_line(
    tf: Trained, full: pl.DataFrame, tmp_path: Path
) -> None:
    """A truncated file of the state: the run recomputes from the bars given (the whole
    history: the ledger it would have written), or, given only new bars, says in one line
    that it needs the whole history; never a traceback."""
    _, bundle = _bundle(tf, tmp_path)
    root = tmp_path / "p"
    days = _three_runs(bundle, full, root)
    path = ledger_path(root, tf.version)
    chunk = sorted((path.parent / STATE_DIR).glob("bars-*.feather"))[0]
    chunk.write_bytes(chunk.read_bytes()[:1000])
    leftover = path.parent / f".{path.name}.k1ll3d.tmp"  # a killed run's temporary ledger
    leftover.write_bytes(b"half a ledger")
    with pytest.raises(paper_module.PaperError, match="give the whole bar history"):
        _run(bundle, _on(full, days[3]), root)
    s = _run(bundle, _upto(full, days[3]), root)
    assert s["mode"] == "full" and s["reason"].startswith("unreadable state (")
    assert not leftover.exists()
    reference = _run(bundle, _upto(full, days[3]), tmp_path / "ref")
    assert _rows(read_ledger(path)).equals(_rows(read_ledger(reference["ledger"])))
    assert _run(bundle, _on(full, days[4]), root)["mode"] == "incremental"  # a new state
