"""Performance metrics: annualisation from real NYSE timestamps, every metric against an
independent brute-force computation, flat strategies, NaN rules and input errors."""

from __future__ import annotations

import datetime as dt
import json
import math
import statistics

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sentio.calendar import sessions
from sentio.errors import DataError
from sentio.evaluation import (
    METRIC_KEYS,
    EvaluationError,
    compute_metrics,
    drawdown_episodes,
    metrics_to_json,
    periods_per_year,
    to_daily,
)
from tests.conftest import minute_bars

# --------------------------------------------------------------------------------------
# brute-force references: plain Python loops, written from the definitions


def bf_equity(r):
    """[E_0 = 1, E_1, ..., E_n] by repeated multiplication."""
    eq = [1.0]
    for x in r:
        eq.append(eq[-1] * (1.0 + x))
    return eq


def bf_drawdowns(r):
    """(max depth, bars of the deepest episode from peak to recovery/end, longest episode)."""
    eq = bf_equity(r)
    n = len(r)
    best_depth, best_dur, longest = 0.0, 0, 0
    peak_i = 0
    i = 1
    while i <= n:
        if eq[i] >= eq[peak_i]:
            peak_i = i
            i += 1
            continue
        # under water from peak_i: walk to the recovery (or the end)
        depth = 0.0
        j = i
        while j <= n and eq[j] < eq[peak_i]:
            depth = max(depth, 1.0 - eq[j] / eq[peak_i])
            j += 1
        end = j if j <= n else n
        dur = end - peak_i
        if depth > best_depth:
            best_depth, best_dur = depth, dur
        longest = max(longest, dur)
        peak_i = j if j <= n else peak_i
        i = j + 1
    return best_depth, best_dur, longest


def bf_episodes(r):
    """(peak, first trough, end, depth) of every drawdown, walking the equity points."""
    eq = bf_equity(r)
    n = len(r)
    out = []
    peak_i, k = 0, 1
    while k <= n:
        if eq[k] >= eq[peak_i]:
            peak_i = k
            k += 1
            continue
        trough = k
        j = k
        while j <= n and eq[j] < eq[peak_i]:
            if eq[j] < eq[trough]:
                trough = j
            j += 1
        out.append((peak_i, trough, min(j, n), 1 - eq[trough] / eq[peak_i]))
        peak_i, k = (j, j + 1) if j <= n else (peak_i, j)
    return out


def bf_quantile(values, p):
    """numpy's default (linear) quantile, by hand: h = (n - 1) p between order statistics."""
    xs = sorted(values)
    h = (len(xs) - 1) * p
    lo = math.floor(h)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (h - lo) * (xs[hi] - xs[lo])


def bf_trades(pos):
    """Lengths of maximal runs of same-sign nonzero positions."""
    runs = []
    current_sign, length = 0, 0
    for p in pos:
        s = (p > 0) - (p < 0)
        if s != 0 and s == current_sign:
            length += 1
        else:
            if current_sign != 0:
                runs.append(length)
            current_sign, length = s, (1 if s != 0 else 0)
    if current_sign != 0:
        runs.append(length)
    return runs


def bf_metrics(r, pos, costs, ppy):
    n = len(r)
    eq = bf_equity(r)
    total = eq[-1] - 1.0
    years = n / ppy
    cagr = (1.0 + total) ** (1.0 / years) - 1.0
    mean = sum(r) / n
    sd = statistics.stdev(r)
    down = math.sqrt(sum(min(x, 0.0) ** 2 for x in r) / n)
    depth, dd_bars, longest = bf_drawdowns(r)
    q = bf_quantile(r, 0.05)
    tail = [x for x in r if x <= q]
    held = [x for x, p in zip(r, pos, strict=True) if p != 0]
    prev, turn = 0.0, 0.0
    for p in pos:
        turn += abs(p - prev)
        prev = p
    trades = bf_trades(pos)
    return {
        "total_return": total,
        "cagr": cagr,
        "volatility": sd * math.sqrt(ppy),
        "sharpe": mean / sd * math.sqrt(ppy),
        "sortino": mean / down * math.sqrt(ppy),
        "max_drawdown": depth,
        "max_drawdown_duration_bars": dd_bars,
        "longest_drawdown_bars": longest,
        "calmar": cagr / depth,
        "var_95": -q,
        "cvar_95": -sum(tail) / len(tail),
        "hit_rate": sum(1 for x in held if x > 0) / len(held),
        "turnover_per_bar": turn / n,
        "annual_turnover": turn / n * ppy,
        "exposure_share": sum(1 for p in pos if p != 0) / n,
        "mean_abs_exposure": sum(abs(p) for p in pos) / n,
        "mean_net_exposure": sum(pos) / n,
        "n_trades": len(trades),
        "avg_holding_bars": sum(trades) / len(trades),
        "costs_paid": sum(costs),
        "annual_costs": sum(costs) / years,
    }


# --------------------------------------------------------------------------------------
# annualisation


def _minute_stamps(start: str, end: str) -> pl.Series:
    return minute_bars(start, end)["timestamp"]


def test_periods_per_year_minute_bars_with_an_early_close():
    # 2023-11-24 closes at 13:00 New York (210 one-minute bars); the other sessions have 390
    ts = _minute_stamps("2023-11-20", "2023-11-30")
    counts = ts.dt.convert_time_zone("America/New_York").dt.date().value_counts()["count"]
    assert sorted(set(counts.to_list())) == [210, 390]
    assert periods_per_year(ts) == 252 * 390 == 98_280


def test_periods_per_year_five_minute_and_daily_bars():
    ts = _minute_stamps("2023-07-03", "2023-07-12")  # includes the July 3 early close
    assert periods_per_year(ts.gather_every(5)) == 252 * 78
    table = sessions(dt.date(2023, 1, 1), dt.date(2023, 12, 31))
    assert periods_per_year(table["open"]) == 252
    assert periods_per_year(table["close"].to_numpy()) == 252  # numpy datetime64 input
    assert periods_per_year(table["session"]) == 252  # plain dates
    # two sessions, the second cut short: the full session sets the frequency
    two = _minute_stamps("2024-03-04", "2024-03-05").head(390 + 100)
    assert periods_per_year(two) == 98_280


def test_sharpe_annualisation_minute_and_daily_bars():
    rng = np.random.default_rng(3)
    ts = _minute_stamps("2024-03-04", "2024-03-08")
    r = rng.normal(2e-5, 4e-4, ts.len())
    per_bar = r.mean() / r.std(ddof=1)
    m = compute_metrics(r, timestamps=ts)
    assert m["periods_per_year"] == 98_280
    assert m["sharpe"] == pytest.approx(per_bar * math.sqrt(98_280), rel=1e-12)
    assert m["volatility"] == pytest.approx(r.std(ddof=1) * math.sqrt(98_280), rel=1e-12)
    # never sqrt(252) on minute bars
    assert m["sharpe"] != pytest.approx(per_bar * math.sqrt(252), rel=0.5)

    days = sessions(dt.date(2022, 1, 1), dt.date(2023, 12, 31))["open"]
    d = rng.normal(5e-4, 1e-2, days.len())
    md = compute_metrics(d, timestamps=days)
    assert md["periods_per_year"] == 252
    assert md["sharpe"] == pytest.approx(d.mean() / d.std(ddof=1) * math.sqrt(252), rel=1e-12)
    # an explicit periods_per_year wins over the detected frequency
    assert compute_metrics(d, timestamps=days, periods_per_year=12)["periods_per_year"] == 12


def test_to_daily_compounds_within_new_york_sessions():
    ts = _minute_stamps("2023-11-22", "2023-11-27")
    rng = np.random.default_rng(4)
    r = rng.normal(0, 1e-3, ts.len())
    daily, dates = to_daily(r, ts)
    ny_dates = [t.astimezone(dt.timezone(dt.timedelta(hours=-5))).date() for t in ts.to_list()]
    expected: dict[dt.date, float] = {}
    for day, x in zip(ny_dates, r, strict=True):
        expected[day] = expected.get(day, 1.0) * (1.0 + x)
    assert [d.astype(object) for d in dates] == sorted(expected)
    assert np.allclose(daily, [expected[k] - 1.0 for k in sorted(expected)], rtol=0, atol=1e-14)
    assert len(daily) == 3  # Nov 22, the Nov 24 early close, Nov 27
    # daily bars given as dates keep their dates
    days = sessions(dt.date(2024, 1, 2), dt.date(2024, 1, 5))["session"]
    same, same_dates = to_daily([0.01, 0.02, -0.01, 0.0], days)
    assert same == pytest.approx([0.01, 0.02, -0.01, 0.0], abs=1e-15)
    assert [d.astype(object) for d in same_dates] == days.to_list()
    assert to_daily([0.01], days.to_numpy()[:1])[1][0] == np.datetime64("2024-01-02")


# --------------------------------------------------------------------------------------
# every metric against brute force


R_SMALL = [0.01, -0.02, 0.03, -0.05, 0.02, 0.0, 0.04, -0.01, 0.06, -0.03, 0.015, -0.004]
P_SMALL = [0.0, 1.0, 1.0, -0.5, -0.5, 0.0, 0.5, 1.0, 1.0, 0.0, -1.0, 1.0]
C_SMALL = [0.0, 1e-4, 0.0, 2e-4, 0.0, 1e-4, 1e-4, 1e-4, 0.0, 1e-4, 2e-4, 2e-4]


@pytest.mark.parametrize("seed", [None, 0, 1, 2])
def test_metrics_match_brute_force(seed):
    if seed is None:
        r, pos, costs = R_SMALL, P_SMALL, C_SMALL
    else:
        rng = np.random.default_rng(seed)
        n = 300
        r = [float(v) for v in rng.normal(5e-4, 1e-2, n)]
        pos = [
            float(v)
            for v in rng.choice([-1.0, -0.5, 0.0, 0.5, 1.0], size=n, p=[0.1, 0.1, 0.3, 0.2, 0.3])
        ]
        costs = [float(v) for v in rng.uniform(0, 1e-4, n)]
    ppy = 252.0
    got = compute_metrics(
        np.array(r), positions=np.array(pos), costs=np.array(costs), periods_per_year=ppy
    )
    want = bf_metrics(r, pos, costs, ppy)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-10, abs=1e-14), key
    assert got["n_bars"] == len(r)
    assert got["years"] == pytest.approx(len(r) / ppy)
    assert got["mean_return"] == pytest.approx(sum(r) / len(r))


def test_small_example_by_hand():
    """Drawdown, trades and turnover of a five-bar series, worked out by hand."""
    r = [0.1, -0.5, 0.2, 1.0, -0.1]
    # equity 1, 1.1, 0.55, 0.66, 1.32, 1.188: from the peak 1.1 (point 1) down to 0.55
    # (-50%), recovered at point 4 (1.32 >= 1.1): 3 bars; then 1.32 -> 1.188 (-10%),
    # unrecovered: 1 bar to the end
    ep = drawdown_episodes(r)
    assert ep.peak.tolist() == [1, 4]
    assert ep.trough.tolist() == [2, 5]
    assert ep.end.tolist() == [4, 5]
    assert ep.depth == pytest.approx([0.5, 0.1])
    pos = [1.0, 1.0, -1.0, 0.5, 0.0]
    # |1-0| + |1-1| + |-1-1| + |0.5+1| + |0-0.5| = 1 + 0 + 2 + 1.5 + 0.5 = 5 over 5 bars
    # trades: [+1, +1] (2 bars), [-1] (1 bar), [+0.5] (1 bar): 3 trades, 4/3 bars each
    # positions held: bars 0-3, returns 0.1, -0.5, 0.2, 1.0: 3 winners of 4
    days = sessions(dt.date(2024, 1, 2), dt.date(2024, 1, 31))["open"].head(5)
    m = compute_metrics(r, positions=pos, timestamps=days, periods_per_year=252)
    assert m["max_drawdown"] == pytest.approx(0.5)
    assert m["max_drawdown_duration_bars"] == 3
    assert m["longest_drawdown_bars"] == 3
    # point 1 is stamped with bar 1's start (Jan 3), point 4 with bar 4's (Jan 8)
    assert m["max_drawdown_duration_days"] == pytest.approx(5.0)
    assert m["turnover_per_bar"] == pytest.approx(1.0)
    assert m["annual_turnover"] == pytest.approx(252.0)
    assert m["n_trades"] == 3
    assert m["avg_holding_bars"] == pytest.approx(4 / 3)
    assert m["hit_rate"] == pytest.approx(0.75)
    assert m["exposure_share"] == pytest.approx(0.8)
    assert m["mean_abs_exposure"] == pytest.approx(3.5 / 5)
    assert m["total_return"] == pytest.approx(0.188)


def test_unrecovered_drawdown_runs_to_the_end():
    r = [0.05, -0.1, -0.1, 0.02, 0.01]
    # peak 1.05 at point 1, never regained: duration from point 1 to the end (point 5) = 4
    m = compute_metrics(r, periods_per_year=252)
    assert m["max_drawdown_duration_bars"] == 4
    assert m["max_drawdown"] == pytest.approx(1 - 1.05 * 0.9 * 0.9 / 1.05)
    assert bf_drawdowns(r)[1] == 4


def test_hit_rate_without_positions_uses_nonzero_bars():
    r = [0.01, 0.0, -0.02, 0.03, 0.0, 0.01]
    # nonzero bars: 0.01, -0.02, 0.03, 0.01 -> 3 of 4 positive
    m = compute_metrics(r, periods_per_year=252)
    assert m["hit_rate"] == pytest.approx(0.75)
    for key in ("turnover_per_bar", "exposure_share", "n_trades", "avg_holding_bars", "costs_paid"):
        assert math.isnan(m[key])


def test_var_cvar_convention_positive_losses():
    r = np.arange(-10, 10) / 100.0  # -0.10 ... 0.09
    m = compute_metrics(r, periods_per_year=252)
    q = np.quantile(r, 0.05)  # (20 - 1) * 0.05 = 0.95: -0.10 + 0.95 * 0.01 = -0.0905
    assert q == pytest.approx(-0.0905)
    assert m["var_95"] == pytest.approx(0.0905)
    assert m["cvar_95"] == pytest.approx(0.10)  # only -0.10 is at or below the quantile


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.floats(min_value=-0.5, max_value=0.5, allow_nan=False, allow_subnormal=False),
        min_size=2,
        max_size=40,
    ),
    st.lists(st.sampled_from([-1.0, -0.5, 0.0, 0.5, 1.0]), min_size=40, max_size=40),
)
def test_drawdown_and_trades_property(r, pos_pool):
    pos = pos_pool[: len(r)]
    m = compute_metrics(np.array(r), positions=np.array(pos), periods_per_year=252)
    depth, dd_bars, longest = bf_drawdowns(r)
    assert m["max_drawdown"] == pytest.approx(depth, abs=1e-12)
    assert 0.0 <= m["max_drawdown"] <= 1.0
    if depth > 1e-9:  # ties between equal-depth episodes aside, the deepest episode's span
        assert m["max_drawdown_duration_bars"] == dd_bars
    assert m["longest_drawdown_bars"] == longest
    ep = drawdown_episodes(r)
    assert ep.peak.size == len(bf_episodes(r))
    for k, (peak, trough, end, d) in enumerate(bf_episodes(r)):
        assert (ep.peak[k], ep.trough[k], ep.end[k]) == (peak, trough, end)
        assert ep.depth[k] == pytest.approx(d, abs=1e-12)
    trades = bf_trades(pos)
    assert m["n_trades"] == len(trades)
    if trades:
        assert m["avg_holding_bars"] == pytest.approx(sum(trades) / len(trades))


# --------------------------------------------------------------------------------------
# flat and degenerate strategies, NaN rules, JSON


def test_flat_strategy_does_not_raise():
    n = 50
    m = compute_metrics(
        np.zeros(n), positions=np.zeros(n), costs=np.zeros(n), periods_per_year=98_280
    )
    assert list(m) == list(METRIC_KEYS)
    assert m["sharpe"] == 0.0
    assert m["sortino"] == 0.0
    assert m["turnover_per_bar"] == 0.0 and m["annual_turnover"] == 0.0
    assert m["n_trades"] == 0 and math.isnan(m["avg_holding_bars"])
    assert m["max_drawdown"] == 0.0 and math.isnan(m["calmar"])
    assert math.isnan(m["hit_rate"])
    assert m["var_95"] == 0.0 and not math.copysign(1.0, m["var_95"]) < 0
    assert m["costs_paid"] == 0.0
    text = json.dumps(metrics_to_json(m), allow_nan=False)
    assert '"calmar": null' in text


def test_constant_nonzero_returns_give_nan_sharpe():
    m = compute_metrics(np.full(100, 1e-4), periods_per_year=252)
    assert math.isnan(m["sharpe"])  # zero variance, nonzero mean: infinite, reported NaN
    assert math.isnan(m["sortino"])  # no bar below the target
    assert m["total_return"] == pytest.approx(1.0001**100 - 1)
    one = compute_metrics([0.01], periods_per_year=252)  # a single bar
    assert math.isnan(one["sharpe"]) and math.isnan(one["volatility"])


def test_risk_free_rate_scalar_and_per_bar():
    rng = np.random.default_rng(5)
    r = rng.normal(1e-3, 1e-2, 200)
    rf = np.full(200, 2e-4)
    a = compute_metrics(r, periods_per_year=252, rf=2e-4)["sharpe"]
    b = compute_metrics(r, periods_per_year=252, rf=rf)["sharpe"]
    ex = r - 2e-4
    assert a == pytest.approx(ex.mean() / ex.std(ddof=1) * math.sqrt(252))
    assert b == pytest.approx(a)
    target = compute_metrics(r, periods_per_year=252, target=1e-3)["sortino"]
    down = np.sqrt(np.mean(np.minimum(r - 1e-3, 0.0) ** 2))
    assert target == pytest.approx((r.mean() - 1e-3) / down * math.sqrt(252))


# --------------------------------------------------------------------------------------
# errors


def test_input_errors_are_clear():
    r = np.zeros(10)
    with pytest.raises(EvaluationError, match="positions has 9 entries but returns has 10"):
        compute_metrics(r, positions=np.zeros(9), periods_per_year=252)
    with pytest.raises(EvaluationError, match="costs has 11 entries"):
        compute_metrics(r, costs=np.zeros(11), periods_per_year=252)
    with pytest.raises(EvaluationError, match="rf has 3 entries"):
        compute_metrics(r, rf=np.zeros(3), periods_per_year=252)
    ts = _minute_stamps("2024-03-04", "2024-03-04")
    with pytest.raises(EvaluationError, match="timestamps has 390 entries but returns has 10"):
        compute_metrics(r, timestamps=ts)
    with pytest.raises(EvaluationError, match="give timestamps"):
        compute_metrics(r)
    with pytest.raises(EvaluationError, match="non-finite value at position 2"):
        compute_metrics([0.0, 0.1, float("nan")], periods_per_year=252)
    with pytest.raises(EvaluationError, match="empty"):
        compute_metrics([], periods_per_year=252)
    with pytest.raises(EvaluationError, match="strictly increasing"):
        periods_per_year(ts.reverse())
    with pytest.raises(EvaluationError, match="at least two timestamps"):
        periods_per_year(ts.head(1))
    with pytest.raises(EvaluationError, match="positive"):
        compute_metrics(r, periods_per_year=0)
    # both a SentioError (one line in the CLI) and a ValueError
    with pytest.raises(DataError):
        compute_metrics(r)
    with pytest.raises(ValueError):
        compute_metrics(r)
