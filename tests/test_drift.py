"""Live drift checks (sentio.drift): bands from the out-of-sample backtest, regime mixes."""

from __future__ import annotations

import datetime as dt
import io

import numpy as np
import polars as pl
import pytest

from sentio.config import DriftConfig
from sentio.drift import (
    REFERENCE_BACKTEST,
    TRAINING_REGIMES,
    DriftReference,
    DriftUnavailable,
    check_drift,
    load_reference,
    session_regime_counts,
)
from sentio.evaluation.bootstrap import stationary_bootstrap_indices

BARS = 390  # one-minute bars per session


def _stamps(sessions: int, first: dt.date = dt.date(2024, 1, 2)) -> list[dt.datetime]:
    """``sessions`` weekday sessions of 390 one-minute bars from 14:30 UTC (09:30 New York)."""
    out: list[dt.datetime] = []
    day = first
    while len(out) < sessions * BARS:
        if day.weekday() < 5:
            open_ = dt.datetime(day.year, day.month, day.day, 14, 30, tzinfo=dt.UTC)
            out += [open_ + dt.timedelta(minutes=i) for i in range(BARS)]
        day += dt.timedelta(days=1)
    return out


def _series(rng: np.random.Generator, n: int, shift: float = 0.0) -> dict[str, np.ndarray]:
    """Per-bar returns, costs and positions from one law: positions held for a few bars at
    a time, returns proportional to the position, costs when it changes."""
    changes = rng.random(n) < 0.05
    levels = rng.choice([-1.0, 0.0, 1.0], size=n)
    pos = np.zeros(n)
    cur = 0.0
    for i in range(n):
        if changes[i]:
            cur = levels[i]
        pos[i] = cur
    turn = np.abs(np.diff(pos, prepend=0.0))
    returns = pos * rng.normal(0.0, 1e-3, n) + shift * np.abs(pos) - 2e-4 * turn
    return {"returns": returns, "costs": 2e-4 * turn, "position": pos}


def _backtest(rng: np.random.Generator, sessions: int) -> pl.DataFrame:
    s = _series(rng, sessions * BARS)
    return pl.DataFrame({"block": np.zeros(sessions * BARS, dtype=np.int64), **s})


def _ledger(
    rng: np.random.Generator, sessions: int, shift: float = 0.0, regime: int | None = None
) -> pl.DataFrame:
    n = sessions * BARS
    s = _series(rng, n, shift)
    regimes = rng.integers(0, 3, n) if regime is None else np.full(n, regime)
    return pl.DataFrame({"timestamp": _stamps(sessions), **s, "regime": regimes})


def _reference(rng: np.random.Generator, sessions: int = 100) -> DriftReference:
    return DriftReference.from_frames("v1", _backtest(rng, sessions), None)


def test_a_ledger_from_the_backtests_own_law_stays_inside_at_the_nominal_rate() -> None:
    """Coverage: ledgers drawn from the reference's law leave each band about 1 - level of
    the time (the band is a real band, not a wide or a narrow one)."""
    rng = np.random.default_rng(7)
    ref = _reference(rng, sessions=120)
    cfg = DriftConfig(window_sessions=2, level=0.9, resamples=400)
    trials = 150
    out = {"return": 0, "costs": 0, "turnover": 0}
    for _ in range(trials):
        check = check_drift(_ledger(rng, 3), ref, cfg)
        assert check.bars == 2 * BARS and check.sessions == 2
        for name in check.outside:
            out[name] += 1
    for name, count in out.items():
        # nominal 10 % outside; 150 trials: a binomial sd of 2.4 %
        assert 0.02 <= count / trials <= 0.2, (name, count)


def test_a_losing_ledger_is_drift_below_the_return_band() -> None:
    rng = np.random.default_rng(1)
    ref = _reference(rng)
    check = check_drift(_ledger(rng, 5, shift=-2e-3), ref, DriftConfig(resamples=500))
    assert check.drifted and "return" in check.outside
    lo, _ = check.bands["return"]
    assert check.observed["return"] < lo
    assert any(r.startswith("return ") and "below the band" in r for r in check.reasons())
    d = check.to_dict()
    assert d["drifted"] is True and d["reasons"] == check.reasons()
    assert "**drift**" in check.markdown()


def test_trading_every_bar_is_drift_above_the_turnover_and_costs_bands() -> None:
    rng = np.random.default_rng(2)
    ref = _reference(rng)
    ledger = _ledger(rng, 5)
    flip = np.where(np.arange(ledger.height) % 2 == 0, 1.0, -1.0)
    ledger = ledger.with_columns(
        position=pl.Series(flip), costs=pl.Series(np.full(ledger.height, 4e-4))
    )
    check = check_drift(ledger, ref, DriftConfig(resamples=500))
    assert {"turnover", "costs"} <= set(check.outside)
    assert check.observed["turnover"] > check.bands["turnover"][1]


def test_the_check_is_deterministic_and_uses_only_the_last_sessions() -> None:
    rng = np.random.default_rng(3)
    ref = _reference(rng)
    ledger = _ledger(rng, 8)
    cfg = DriftConfig(window_sessions=5, resamples=300)
    a, b = check_drift(ledger, ref, cfg), check_drift(ledger, ref, cfg)
    assert a.to_dict() == b.to_dict()
    # rewriting the sessions before the window changes nothing
    early = ledger.with_columns(
        returns=pl.when(pl.int_range(pl.len()) < 3 * BARS).then(-0.5).otherwise(pl.col("returns"))
    )
    assert check_drift(early, ref, cfg).to_dict() == a.to_dict()
    assert a.bars == 5 * BARS and a.start == "2024-01-05T14:30:00Z"


def test_a_regime_mix_never_seen_in_training_is_flagged() -> None:
    rng = np.random.default_rng(4)
    sessions = 60
    stamps = pl.Series(_stamps(sessions))
    # training: regime 2 never holds more than a tenth of a session
    regimes = np.where(rng.random(sessions * BARS) < 0.05, 2, rng.integers(0, 2, sessions * BARS))
    counts = session_regime_counts(stamps, pl.Series(regimes), 3)
    assert counts.height == sessions and counts["bars"].to_list() == [BARS] * sessions
    ref = DriftReference.from_frames("v1", _backtest(rng, sessions), counts)
    cfg = DriftConfig(window_sessions=2, resamples=300)
    calm = check_drift(_ledger(rng, 3, regime=None).with_columns(regime=pl.lit(0)), ref, cfg)
    assert "regime_0" in calm.unseen_regimes  # all regime 0: training never had that
    volatile = check_drift(_ledger(rng, 3, regime=2), ref, cfg)
    assert volatile.drifted and "regime_2" in volatile.unseen_regimes
    assert volatile.regime_shares is not None and volatile.regime_shares["regime_2"] == 1.0
    mixed = pl.Series(np.where(rng.random(3 * BARS) < 0.05, 2, rng.integers(0, 2, 3 * BARS)))
    usual = check_drift(_ledger(rng, 3).with_columns(regime=mixed), ref, cfg)
    assert usual.unseen_regimes == []
    assert any("share 1.000 outside what training saw" in r for r in volatile.reasons())


def test_a_version_without_a_reference_backtest_is_refused_with_its_name() -> None:
    with pytest.raises(DriftUnavailable, match="v9: no backtest.feather"):
        load_reference("v9", {})
    rng = np.random.default_rng(5)
    buf = io.BytesIO()
    _backtest(rng, 3).write_ipc(buf)
    ref = load_reference("v9", {REFERENCE_BACKTEST: buf.getvalue()})
    assert ref.regime_counts is None and ref.returns.size == 3 * BARS
    # a reference shorter than the window caps it: the ledger's last 3 sessions' bars
    capped = check_drift(_ledger(rng, 5), ref, DriftConfig(window_sessions=5, resamples=200))
    assert capped.bars == 3 * BARS and capped.sessions == 3
    assert TRAINING_REGIMES == "training_regimes.feather"


def test_bootstrap_indices_of_another_length_follow_the_stationary_law() -> None:
    full = stationary_bootstrap_indices(500, 50, 8.0, 11)
    assert np.array_equal(stationary_bootstrap_indices(500, 50, 8.0, 11, length=500), full)
    idx = stationary_bootstrap_indices(1000, 400, 10.0, 3, length=300)
    assert idx.shape == (400, 300) and idx.min() >= 0 and idx.max() < 1000
    cont = np.diff(idx, axis=1) % 1000 == 1
    # a new block starts with probability 1 / 10 (a continuation can also be a fresh
    # start landing on the next index: 1 / 1000, negligible)
    assert abs(1.0 - cont.mean() - 0.1) < 0.01
    # the first index is uniform
    assert abs(idx[:, 0].mean() - 499.5) < 3 * 289 / np.sqrt(400)
    longer = stationary_bootstrap_indices(100, 20, 5.0, 0, length=450)
    assert longer.shape == (20, 450) and longer.max() < 100
