"""Daily-reset leveraged series: checked against a per-session loop and hand-worked numbers."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sentio.config import UniverseConfig
from sentio.data.leverage import derive_leveraged, derived_provenance, ensure_universe
from sentio.data.schema import CANONICAL_SCHEMA
from sentio.errors import DataError

NY = ZoneInfo("America/New_York")
UTC = ZoneInfo("UTC")


def ny(day: str, hh: int, mm: int) -> dt.datetime:
    """A New York wall-clock time as an aware UTC datetime."""
    d = dt.date.fromisoformat(day)
    return dt.datetime(d.year, d.month, d.day, hh, mm, tzinfo=NY).astimezone(UTC)


def frame(rows: list[tuple[dt.datetime, float, float, float, float, float]], symbol: str = "QQQ"):
    """Canonical bars from (timestamp, open, high, low, close, volume) rows."""
    ts, o, h, lo, c, v = zip(*rows, strict=True)
    return pl.DataFrame(
        {
            "timestamp": list(ts),
            "symbol": symbol,
            "open": o,
            "high": h,
            "low": lo,
            "close": c,
            "volume": v,
        },
        schema=CANONICAL_SCHEMA,
    )


def brute_force(rows, lev, er, fr, start=None):
    """Independent reference: an explicit loop over sessions and bars in plain Python."""
    rows = sorted(rows)
    out = []
    prev_close_u = prev_close_l = prev_day = None
    i = 0
    while i < len(rows):
        day = rows[i][0].astimezone(NY).date()
        j = i
        while j < len(rows) and rows[j][0].astimezone(NY).date() == day:
            j += 1
        session = rows[i:j]
        if prev_close_u is None:
            ref = session[0][1]
            base = session[0][1] if start is None else start
        else:
            # swap replication, one unit of NAV held from close to close: the cash earns
            # fr, the swaps on lev units pay lev (r_u - fr), the fund pays er
            days = (day - prev_day).days
            cash_interest = fr * days / 365
            swap_funding = lev * fr * days / 365
            expense = er * days / 365
            ref = prev_close_u
            base = prev_close_l * (1 + cash_interest - swap_funding - expense)

        def f(p, base=base, ref=ref):
            return base * (1 + lev * (p / ref - 1))

        for ts, o, h, lo, c, v in session:
            hi_l, lo_l = (f(h), f(lo)) if lev > 0 else (f(lo), f(h))
            out.append((ts, f(o), hi_l, lo_l, f(c), v))
        prev_close_u = session[-1][4]
        prev_close_l = f(session[-1][4])
        prev_day = day
        i = j
    return out


# Thursday 2021-01-07, Friday 01-08, Monday 01-11 (weekend), Tuesday 01-12; minute bars
HAND_ROWS = [
    (ny("2021-01-07", 9, 30), 100.0, 101.0, 99.5, 100.5, 1000.0),
    (ny("2021-01-07", 9, 31), 100.5, 102.0, 100.2, 101.0, 1200.0),
    (ny("2021-01-07", 15, 59), 101.0, 101.5, 100.0, 100.4, 900.0),
    (ny("2021-01-08", 9, 30), 102.0, 103.0, 101.0, 102.5, 1500.0),  # +1.6% gap
    (ny("2021-01-08", 15, 59), 102.5, 102.9, 98.0, 99.0, 800.0),
    (ny("2021-01-11", 9, 30), 99.0, 99.5, 97.0, 98.0, 700.0),
    (ny("2021-01-11", 15, 59), 98.0, 98.8, 97.5, 98.8, 600.0),
    (ny("2021-01-12", 9, 30), 97.0, 97.2, 95.0, 96.0, 1100.0),  # -1.8% gap
    (ny("2021-01-12", 9, 31), 96.0, 99.0, 95.5, 98.5, 1300.0),
]


def as_rows(df: pl.DataFrame):
    return list(df.select("timestamp", "open", "high", "low", "close", "volume").iter_rows())


def assert_rows_close(got, want, rtol=1e-12):
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g[0] == w[0]
        np.testing.assert_allclose(g[1:], w[1:], rtol=rtol)


@pytest.mark.parametrize("lev", [3.0, -3.0, 2.0, -1.0])
def test_matches_brute_force_on_hand_made_minutes(lev):
    got = derive_leveraged(frame(HAND_ROWS), lev, "X", 0.0095, 0.02, start_price=50.0)
    assert got.schema == pl.Schema(CANONICAL_SCHEMA)
    assert got["symbol"].unique().to_list() == ["X"]
    assert_rows_close(as_rows(got), brute_force(HAND_ROWS, lev, 0.0095, 0.02, start=50.0))


def test_input_order_does_not_matter_and_default_start_is_first_open():
    shuffled = frame(HAND_ROWS[::-1])
    got = derive_leveraged(shuffled, 3.0, "X", 0.01, 0.03)
    assert_rows_close(as_rows(got), brute_force(HAND_ROWS, 3.0, 0.01, 0.03))
    assert got["open"][0] == pytest.approx(100.0)


@st.composite
def sessions_strategy(draw):
    n_sess = draw(st.integers(1, 6))
    gaps = draw(st.lists(st.integers(1, 4), min_size=n_sess, max_size=n_sess))
    day = dt.date(2020, 3, 2)
    rows = []
    price = draw(st.floats(10.0, 500.0))
    ret = st.floats(-0.05, 0.05, allow_nan=False)
    for k in range(n_sess):
        day += dt.timedelta(days=gaps[k])
        price *= 1 + draw(ret)  # overnight gap
        for m in range(draw(st.integers(1, 4))):
            o = price
            c = o * (1 + draw(ret))
            h = max(o, c) * (1 + draw(st.floats(0, 0.01)))
            lo = min(o, c) * (1 - draw(st.floats(0, 0.01)))
            ts = dt.datetime(day.year, day.month, day.day, 15, m, tzinfo=UTC)
            rows.append((ts, o, h, lo, c, float(draw(st.integers(1, 10_000)))))
            price = c
    return rows


@settings(max_examples=60, deadline=None)
@given(
    rows=sessions_strategy(),
    lev=st.sampled_from([3.0, -3.0, 2.0, -2.0, 1.5, -1.0, 1.0]),
    er=st.floats(0.0, 0.05),
    fr=st.floats(0.0, 0.25),
)
def test_property_matches_brute_force_and_ohlc_consistent(rows, lev, er, fr):
    got = derive_leveraged(frame(rows), lev, "X", er, fr, volume_ratio=0.5)
    assert_rows_close(
        as_rows(got), [(*r[:5], r[5] * 0.5) for r in brute_force(rows, lev, er, fr)], rtol=1e-10
    )
    ok = got.select(
        (pl.col("high") >= pl.max_horizontal("open", "close") * (1 - 1e-12)).all(),
        (pl.col("low") <= pl.min_horizontal("open", "close") * (1 + 1e-12)).all(),
    )
    assert ok.row(0) == (True, True)


def test_unit_leverage_without_fees_reproduces_the_underlying():
    under = frame(HAND_ROWS)
    got = derive_leveraged(under, 1.0, "QQQ", 0.0, 0.0)
    for c in ("open", "high", "low", "close", "volume"):
        np.testing.assert_allclose(got[c].to_numpy(), under[c].to_numpy(), rtol=1e-13)


def test_carry_by_hand_three_calendar_days_over_a_weekend():
    # underlying flat at 100 every bar: the leveraged series only accrues its carry.
    # expense 0.0095, financing (cash rate) 0.02, base 100:
    #   L = +3: swaps cost 3 x 0.02, cash earns 0.02 -> pays 0.0095 + 0.04 = 0.0495 / yr
    #     1 day:  0.0495 / 365     = 0.000135616438356...  -> 99.98643835616438
    #     3 days: 0.0495 * 3 / 365 = 0.000406849315068...  -> 99.95931506849315
    #   L = -3: swaps earn 3 x 0.02, cash earns 0.02 -> earns 0.08 - 0.0095 = 0.0705 / yr
    #     1 day:  0.0705 / 365     = 0.000193150684931...  -> 100.01931506849315
    #     3 days: 0.0705 * 3 / 365 = 0.000579452054794...  -> 100.05794520547945
    days = ["2021-01-07", "2021-01-08", "2021-01-11", "2021-01-12"]  # Thu Fri Mon Tue
    rows = [(ny(d, 9, 30), 100.0, 100.0, 100.0, 100.0, 1.0) for d in days]
    expected = {
        3.0: (99.98643835616438, 99.95931506849315),
        -3.0: (100.01931506849315, 100.05794520547945),
    }
    for lev, (one_day, weekend) in expected.items():
        got = derive_leveraged(frame(rows), lev, "X", 0.0095, 0.02, start_price=100.0)
        close = got["close"].to_list()
        assert close[0] == pytest.approx(100.0, rel=1e-14)  # no carry on the first session
        assert 100.0 * close[1] / close[0] == pytest.approx(one_day, rel=1e-13)  # Thu -> Fri
        assert 100.0 * close[2] / close[1] == pytest.approx(weekend, rel=1e-13)  # Fri -> Mon
        assert 100.0 * close[3] / close[2] == pytest.approx(one_day, rel=1e-13)  # Mon -> Tue
    # the inverse fund's credit beats its expense: it drifts up on a flat underlying
    short = derive_leveraged(frame(rows), -3.0, "S", 0.0095, 0.02, start_price=100.0)
    assert short["close"][-1] > 100.0


def test_unit_leverage_pays_only_the_expense_ratio():
    # L = 1: the swaps' funding cancels the cash interest exactly
    rows = [(ny(d, 9, 30), 100.0, 100.0, 100.0, 100.0, 1.0) for d in ("2021-01-08", "2021-01-11")]
    got = derive_leveraged(frame(rows), 1.0, "X", 0.0095, 0.25, start_price=100.0)
    # 0.0095 * 3 / 365 = 0.0000780821917808... -> 99.99219178082192
    assert got["close"][1] == pytest.approx(99.99219178082192, rel=1e-13)


def test_negative_leverage_swaps_high_and_low():
    rows = [(ny("2021-01-07", 9, 30), 100.0, 110.0, 95.0, 100.0, 1.0)]
    got = derive_leveraged(frame(rows), -2.0, "S", 0.0, 0.0, start_price=100.0).row(0, named=True)
    assert got["high"] == pytest.approx(110.0)  # from the underlying's low: 100 (1 - 2 (-5%))
    assert got["low"] == pytest.approx(80.0)  # from the underlying's high: 100 (1 - 2 (10%))
    assert got["open"] == got["close"] == pytest.approx(100.0)


def test_overnight_gap_lands_in_the_leveraged_open():
    rows = [
        (ny("2021-01-07", 15, 59), 100.0, 100.0, 100.0, 100.0, 1.0),
        (ny("2021-01-08", 9, 30), 102.0, 102.0, 102.0, 102.0, 1.0),  # +2% gap
    ]
    for lev, expected in ((3.0, 1.06), (-3.0, 0.94)):
        got = derive_leveraged(frame(rows), lev, "X", 0.0, 0.0, start_price=100.0)
        assert got["close"][0] == pytest.approx(100.0)
        assert got["open"][1] == pytest.approx(100.0 * expected)


def test_non_positive_price_raises_naming_the_timestamp():
    bad_ts = ny("2021-01-08", 10, 0)
    rows = [
        (ny("2021-01-07", 15, 59), 100.0, 100.0, 100.0, 100.0, 1.0),
        (ny("2021-01-08", 9, 30), 100.0, 100.0, 90.0, 90.0, 1.0),
        (bad_ts, 90.0, 90.0, 60.0, 70.0, 1.0),  # low -40%: 3x is wiped out
    ]
    with pytest.raises(DataError, match="non-positive") as info:
        derive_leveraged(frame(rows), 3.0, "TQQQ", 0.0, 0.0)
    assert "2021-01-08 15:00:00" in str(info.value)  # 10:00 New York = 15:00 UTC
    assert "TQQQ" in str(info.value)
    # the short side gains and stays positive
    derive_leveraged(frame(rows), -3.0, "SQQQ", 0.0, 0.0)


def test_rejects_bad_input():
    with pytest.raises(DataError, match="one symbol"):
        derive_leveraged(pl.concat([frame(HAND_ROWS), frame(HAND_ROWS, "SPY")]), 3.0, "X", 0, 0)
    with pytest.raises(DataError, match="no bars"):
        derive_leveraged(frame(HAND_ROWS).head(0), 3.0, "X", 0, 0)
    with pytest.raises(DataError, match="duplicate"):
        derive_leveraged(frame(HAND_ROWS + HAND_ROWS[:1]), 3.0, "X", 0, 0)


UNI = UniverseConfig()


def test_ensure_universe_derives_both_when_missing():
    under = frame(HAND_ROWS, "QQQ")
    assert UNI.derived_volume_ratio == 0.5
    out, derived = ensure_universe(under, UNI)
    assert derived == ["TQQQ", "SQQQ"]
    assert out["symbol"].unique(maintain_order=True).to_list() == ["QQQ", "SQQQ", "TQQQ"]
    assert out.equals(out.sort("symbol", "timestamp"))
    assert out.schema == pl.Schema(CANONICAL_SCHEMA)
    tqqq = out.filter(pl.col("symbol") == "TQQQ")
    want = derive_leveraged(
        under, 3.0, "TQQQ", UNI.expense_ratio_annual, UNI.financing_rate_annual, volume_ratio=0.5
    )
    assert tqqq.equals(want)
    sqqq = out.filter(pl.col("symbol") == "SQQQ")
    assert_rows_close(
        as_rows(sqqq),
        [
            (*r[:5], r[5] * 0.5)
            for r in brute_force(
                HAND_ROWS, -3.0, UNI.expense_ratio_annual, UNI.financing_rate_annual
            )
        ],
    )


def test_ensure_universe_volume_ratio_from_the_universe_unless_overridden():
    under = frame(HAND_ROWS, "QQQ")
    uni = UniverseConfig(derived_volume_ratio=0.25)
    vol = under["volume"].to_numpy()
    out, _ = ensure_universe(under, uni)
    for sym in ("TQQQ", "SQQQ"):
        np.testing.assert_allclose(out.filter(pl.col("symbol") == sym)["volume"], vol * 0.25)
    out, _ = ensure_universe(under, uni, volume_ratio=2.0)
    for sym in ("TQQQ", "SQQQ"):
        np.testing.assert_allclose(out.filter(pl.col("symbol") == sym)["volume"], vol * 2.0)


def test_derived_provenance_names_the_legs():
    assert derived_provenance(UNI) == {
        "TQQQ": {
            "underlying": "QQQ",
            "leverage": 3.0,
            "expense_ratio_annual": 0.0095,
            "financing_rate_annual": 0.02,
        },
        "SQQQ": {
            "underlying": "QQQ",
            "leverage": -3.0,
            "expense_ratio_annual": 0.0095,
            "financing_rate_annual": 0.02,
        },
    }
    assert list(derived_provenance(UNI, ["SQQQ"])) == ["SQQQ"]


def test_ensure_universe_leaves_present_series_and_derives_only_the_missing_one():
    under = frame(HAND_ROWS, "QQQ")
    real_tqqq = frame([(r[0], 50.0, 51.0, 49.0, 50.5, 7.0) for r in HAND_ROWS], "TQQQ")
    out, derived = ensure_universe(pl.concat([real_tqqq, under]), UNI)
    assert derived == ["SQQQ"]
    assert out.filter(pl.col("symbol") == "TQQQ").equals(real_tqqq)
    assert out.filter(pl.col("symbol") == "QQQ").equals(under)

    real_sqqq = frame([(r[0], 20.0, 21.0, 19.0, 20.5, 3.0) for r in HAND_ROWS], "SQQQ")
    both = pl.concat([under, real_tqqq, real_sqqq])
    out, derived = ensure_universe(both, UNI)
    assert derived == []
    assert out.equals(both.sort("symbol", "timestamp"))


def test_ensure_universe_errors_when_the_underlying_is_missing():
    with pytest.raises(DataError, match="'QQQ'") as info:
        ensure_universe(frame(HAND_ROWS, "SPY"), UNI)
    assert "SPY" in str(info.value)
