"""Features: causality (truncation), indicator values against textbook loops, contract, exogenous."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from data_contracts import ContractViolation, validate_features
from sentio.config import SentioConfig, resolve_for_bars
from sentio.errors import DataError
from sentio.features import (
    apply_normaliser,
    build_features,
    feature_summary,
    fit_normaliser,
)
from tests.conftest import minute_bars
from tests.textbook import ema, wilder

UTC = dt.UTC


def cfg_with(**features: object) -> SentioConfig:
    """The default configuration with some ``features`` settings replaced."""
    return SentioConfig.model_validate({"features": features})


@pytest.fixture(scope="module")
def week() -> pl.DataFrame:
    """Thanksgiving week 2024 (early close on 2024-11-29) plus the next Monday and Tuesday."""
    return minute_bars("2024-11-22", "2024-12-03", seed=3)


def at(hh: int, mm: int, day: str) -> dt.datetime:
    """A UTC timestamp given in New York winter time (UTC-5)."""
    return dt.datetime.fromisoformat(day).replace(hour=hh + 5, minute=mm, tzinfo=UTC)


# ------------------------------------------------------------------------- causality


@pytest.mark.parametrize("normalisation", ["rolling", "expanding", "train_fit"])
def test_truncated_series_gives_identical_rows(week: pl.DataFrame, normalisation: str) -> None:
    cfg = cfg_with(normalisation=normalisation, norm_window=300)
    full = build_features(week, cfg)
    assert full.height > 1000
    cuts = [
        at(11, 7, "2024-12-02"),  # mid-session
        at(9, 34, "2024-12-02"),  # last minute of a 5- and 15-minute bar
        at(9, 35, "2024-12-02"),  # right after a coarse-bar boundary
        at(9, 33, "2024-12-02"),  # one minute before a coarse bar completes
        at(10, 43, "2024-12-02"),  # ditto for a 15-minute bar
        at(12, 59, "2024-11-29"),  # last bar of the early close
        at(9, 30, "2024-12-03"),  # first bar of a session (new gap, VWAP reset)
    ]
    for cut in cuts:
        prefix = build_features(week.filter(pl.col("timestamp") <= cut), cfg)
        shared = full.filter(pl.col("timestamp") <= cut)
        assert prefix["timestamp"].max() == cut
        assert_frame_equal(prefix, shared, check_exact=True)


def test_future_bars_do_not_change_past_rows(week: pl.DataFrame) -> None:
    """Changing every bar after t leaves the rows up to t bit-identical."""
    cfg = cfg_with(norm_window=300)
    cut = at(10, 2, "2024-12-02")
    later = pl.col("timestamp") > cut
    shocked = week.with_columns(
        [
            pl.when(later).then(pl.col(c) * 1.5).otherwise(pl.col(c)).alias(c)
            for c in ("open", "high", "low", "close", "volume")
        ]
    )
    a = build_features(week, cfg).filter(~later)
    b = build_features(shocked, cfg).filter(~later)
    assert_frame_equal(a, b, check_exact=True)


# ------------------------------------------------------------------ reference values


def _raw(bars: pl.DataFrame, **features: object) -> pl.DataFrame:
    out = build_features(bars, cfg_with(normalisation="train_fit", **features))
    return bars.join(out, on="timestamp", how="inner")


def _check(got: pl.Series, want: list[float | None], offset: int, rel: float = 2e-5) -> None:
    """Compare output rows (aligned to input rows from ``offset``) with a reference list."""
    g = got.to_list()
    w = want[offset : offset + len(g)]
    assert len(g) == len(w) and len(g) > 0
    for x, y in zip(g, w, strict=True):
        assert y is not None
        assert x == pytest.approx(y, rel=rel, abs=1e-6)


@pytest.fixture(scope="module")
def one_day() -> pl.DataFrame:
    return minute_bars("2024-12-02", "2024-12-03", seed=11)


def _offset(bars: pl.DataFrame, out: pl.DataFrame) -> int:
    first = out["timestamp"][0]
    return int(bars.with_row_index().filter(pl.col("timestamp") == first)["index"][0])


def test_rsi_and_atr_match_wilder_textbook(one_day: pl.DataFrame) -> None:
    out = _raw(one_day, indicators=["rsi", "atr"], rsi_window=14, atr_window=10)
    off = _offset(one_day, out)
    c, h, lo = (one_day[k].to_list() for k in ("close", "high", "low"))
    gains = [0.0] + [max(c[i] - c[i - 1], 0.0) for i in range(1, len(c))]
    losses = [0.0] + [max(c[i - 1] - c[i], 0.0) for i in range(1, len(c))]
    ag, al = wilder(gains, 14, 1), wilder(losses, 14, 1)
    rsi = [
        None if g is None or lo_ is None else 100 - 100 / (1 + g / lo_)
        for g, lo_ in zip(ag, al, strict=True)
    ]
    _check(out["rsi_14"], rsi, off)
    tr = [h[0] - lo[0]] + [
        max(h[i] - lo[i], abs(h[i] - c[i - 1]), abs(lo[i] - c[i - 1])) for i in range(1, len(c))
    ]
    atr = wilder(tr, 10, 0)
    _check(out["atr_rel_10"], [None if a is None else a / c[i] for i, a in enumerate(atr)], off)


def test_macd_bollinger_and_range_vols_match_loops(one_day: pl.DataFrame) -> None:
    out = _raw(
        one_day,
        indicators=["macd", "bollinger", "range_vol", "realized_vol", "returns"],
        macd=(5, 13, 4),
        bollinger_window=20,
        bollinger_k=2.0,
        vol_windows=[15],
        return_horizons=[1, 7],
    )
    off = _offset(one_day, out)
    o, h, lo, c = (one_day[k].to_list() for k in ("open", "high", "low", "close"))
    line = [f - s for f, s in zip(ema(c, 5), ema(c, 13), strict=True)]
    sig = ema(line, 4)
    _check(out["macd_line"], [v / c[i] for i, v in enumerate(line)], off)
    _check(out["macd_signal"], [v / c[i] for i, v in enumerate(sig)], off)
    _check(out["macd_hist"], [(line[i] - sig[i]) / c[i] for i in range(len(c))], off, rel=1e-4)
    pctb: list[float | None] = [None] * len(c)
    width: list[float | None] = [None] * len(c)
    park: list[float | None] = [None] * len(c)
    gk: list[float | None] = [None] * len(c)
    rv: list[float | None] = [None] * len(c)
    for i in range(len(c)):
        if i >= 19:
            win = c[i - 19 : i + 1]
            m = sum(win) / 20
            sd = math.sqrt(sum((x - m) ** 2 for x in win) / 20)
            pctb[i] = (c[i] - (m - 2 * sd)) / (4 * sd)
            width[i] = 4 * sd / m
        if i >= 14:
            r = range(i - 14, i + 1)
            park[i] = math.sqrt(
                sum(math.log(h[j] / lo[j]) ** 2 for j in r) / 15 / (4 * math.log(2))
            )
            gk[i] = math.sqrt(
                sum(
                    0.5 * math.log(h[j] / lo[j]) ** 2
                    - (2 * math.log(2) - 1) * math.log(c[j] / o[j]) ** 2
                    for j in r
                )
                / 15
            )
        if i >= 15:
            rets = [math.log(c[j] / c[j - 1]) for j in range(i - 14, i + 1)]
            mr = sum(rets) / 15
            rv[i] = math.sqrt(sum((x - mr) ** 2 for x in rets) / 14)
    _check(out["bb_pctb_20"], pctb, off)
    _check(out["bb_width_20"], width, off)
    _check(out["rv_park_15"], park, off)
    _check(out["rv_gk_15"], gk, off)
    _check(out["rv_cc_15"], rv, off)
    _check(
        out["log_ret_7"], [None] * 7 + [math.log(c[i] / c[i - 7]) for i in range(7, len(c))], off
    )


def test_vwap_gap_session_range_and_clock(week: pl.DataFrame) -> None:
    out = _raw(week, indicators=["vwap", "gap", "session_range", "session_clock"])
    day = pl.col("timestamp").dt.convert_time_zone("America/New_York").dt.date()
    rows = week.with_columns(day.alias("d")).to_dicts()
    vwap: dict[dt.datetime, float] = {}
    gap: dict[dt.datetime, float] = {}
    hi: dict[dt.datetime, float] = {}
    lo: dict[dt.datetime, float] = {}
    pv = vol = 0.0
    top = bottom = 0.0
    g = 0.0
    for i, r in enumerate(rows):
        if i == 0 or r["d"] != rows[i - 1]["d"]:
            pv = vol = 0.0
            top, bottom = r["high"], r["low"]
            g = math.log(r["open"] / rows[i - 1]["close"]) if i else float("nan")
        pv += (r["high"] + r["low"] + r["close"]) / 3 * r["volume"]
        vol += r["volume"]
        top, bottom = max(top, r["high"]), min(bottom, r["low"])
        vwap[r["timestamp"]] = math.log(r["close"] / (pv / vol))
        gap[r["timestamp"]] = g
        hi[r["timestamp"]] = math.log(r["close"] / top)
        lo[r["timestamp"]] = math.log(r["close"] / bottom)
    for r in out.iter_rows(named=True):
        t = r["timestamp"]
        assert r["vwap_dist"] == pytest.approx(vwap[t], rel=1e-5, abs=1e-7)
        assert r["gap"] == pytest.approx(gap[t], rel=1e-5, abs=1e-7)
        assert r["dist_session_high"] == pytest.approx(hi[t], rel=1e-5, abs=1e-7)
        assert r["dist_session_low"] == pytest.approx(lo[t], rel=1e-5, abs=1e-7)
    # The first session has no previous close: it lies inside the warm-up.
    assert out["timestamp"].min() >= at(9, 30, "2024-11-25")
    early = out.filter(day == dt.date(2024, 11, 29))
    assert early.height == 210
    assert early["minutes_to_close"].to_list() == [float(x) for x in range(209, -1, -1)]
    assert early["minutes_since_open"].to_list() == [float(x) for x in range(1, 211)]
    normal = out.filter(day == dt.date(2024, 12, 2))
    assert normal["minutes_to_close"].min() == 0.0 and normal["minutes_to_close"].max() == 389.0


def test_coarse_bar_first_visible_on_its_last_minute(week: pl.DataFrame) -> None:
    out = _raw(week, indicators=["coarse"], coarse_minutes=[5, 15])
    close = dict(zip(week["timestamp"], week["close"], strict=True))
    day, prev = "2024-12-02", "2024-11-29"
    value = dict(zip(out["timestamp"], out["c5_log_ret_1"], strict=True))
    # Coarse bar 09:30-09:34 (close of 09:34) against the previous one (12:55-12:59 of the
    # early close): visible from the 09:34 row on, never before.
    new = math.log(close[at(9, 34, day)] / close[at(12, 59, prev)])
    old = math.log(close[at(12, 59, prev)] / close[at(12, 54, prev)])
    for mm in range(30, 34):
        assert value[at(9, mm, day)] == pytest.approx(old, rel=1e-5)
    for mm in range(34, 39):
        assert value[at(9, mm, day)] == pytest.approx(new, rel=1e-5)
    v15 = dict(zip(out["timestamp"], out["c15_log_ret_1"], strict=True))
    new15 = math.log(close[at(9, 44, day)] / close[at(12, 59, prev)])
    assert v15[at(9, 43, day)] != pytest.approx(new15, rel=1e-5)
    assert v15[at(9, 44, day)] == pytest.approx(new15, rel=1e-5)


# ------------------------------------------------------------------ daily, API, errors


def _daily_bars(n: int) -> pl.DataFrame:
    from sentio.calendar import sessions

    table = sessions(dt.date(2023, 1, 1), dt.date(2024, 12, 31)).head(n)
    rng = np.random.default_rng(5)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    open_ = close * np.exp(rng.normal(0, 0.003, n))
    return pl.DataFrame(
        {
            "timestamp": table["open"],
            "symbol": "QQQ",
            "open": open_,
            "high": np.maximum(open_, close) * 1.004,
            "low": np.minimum(open_, close) * 0.996,
            "close": close,
            "volume": rng.integers(1_000_000, 5_000_000, n).astype(float),
        }
    )


def test_daily_bars_get_the_daily_subset() -> None:
    bars = _daily_bars(300)
    out = build_features(bars, cfg_with(volume_z_window=20, norm_window=50))
    validate_features(out, "daily")
    assert not any(c.startswith(("c5_", "vwap", "minutes_", "dist_session")) for c in out.columns)
    assert {"gap", "rsi_14", "macd_line", "atr_rel_14", "bb_pctb_20"} <= set(out.columns)
    raw = _raw(bars, indicators=["gap"])
    want = (bars["open"] / bars["close"].shift(1)).log()
    got = bars.with_columns(want.alias("w")).join(raw.select("timestamp", "gap"), on="timestamp")
    assert np.allclose(got["gap"], got["w"], rtol=1e-6)


def test_default_output_passes_contract_and_summary(week: pl.DataFrame) -> None:
    out = build_features(week, SentioConfig())  # 'auto' windows sized by the bar length
    cfg = resolve_for_bars(SentioConfig(), 60)
    assert build_features(week, cfg).equals(out)
    validate_features(out, "default")
    # Warm-up: 390 rows (volume z-score window; also the first session, which has no gap),
    # then norm_window - 1 rows before the first full normalisation window.
    assert out.height == week.height - 390 - (cfg.features.norm_window - 1)
    summary = feature_summary(out)
    assert [s["column"] for s in summary] == out.columns[1:]
    assert all(s["count"] == out.height for s in summary)


def test_switched_off_indicator_disappears(one_day: pl.DataFrame) -> None:
    out = build_features(one_day, cfg_with(indicators=["returns"], norm_window=10))
    assert out.columns == ["timestamp", "log_ret_1", "log_ret_5", "log_ret_15", "log_ret_60"]


def test_missing_underlying_is_a_data_error(one_day: pl.DataFrame) -> None:
    with pytest.raises(DataError, match="no bars of the underlying 'QQQ'"):
        build_features(one_day.with_columns(symbol=pl.lit("SPY")), SentioConfig())


def test_train_fit_uses_training_rows_only(week: pl.DataFrame) -> None:
    raw = build_features(week, cfg_with(normalisation="train_fit"))
    cut = at(9, 30, "2024-12-02")
    params = fit_normaliser(raw, cut)
    shocked = raw.with_columns(
        pl.when(pl.col("timestamp") >= cut)
        .then(pl.col("log_ret_1") * 100)
        .otherwise(pl.col("log_ret_1"))
    )
    assert fit_normaliser(shocked, cut) == params
    train = raw.filter(pl.col("timestamp") < cut)["log_ret_1"].cast(pl.Float64)
    assert params["columns"]["log_ret_1"]["mean"] == pytest.approx(train.mean())
    assert "minutes_to_close" not in params["columns"]
    normed = apply_normaliser(raw, params)
    validate_features(normed, "train_fit")
    assert normed["minutes_to_close"].equals(raw["minutes_to_close"])


# --------------------------------------------------------------------------- contract


def _frame() -> pl.DataFrame:
    ts = pl.datetime_range(
        dt.datetime(2024, 1, 2, 14, 30),
        dt.datetime(2024, 1, 2, 14, 39),
        "1m",
        eager=True,
        time_zone="UTC",
    )
    return pl.DataFrame({"timestamp": ts, "a": pl.Series(np.arange(10.0), dtype=pl.Float32)})


@pytest.mark.parametrize(
    ("mutate", "check"),
    [
        (
            lambda f: f.with_columns(
                pl.when(pl.int_range(10) == 3)
                .then(float("nan"))
                .otherwise(pl.col("a"))
                .cast(pl.Float32)
            ),
            "value_finite",
        ),
        (lambda f: f.with_columns(pl.lit(float("inf"), pl.Float32).alias("a")), "value_finite"),
        (lambda f: f.with_columns(pl.col("a").cast(pl.Float64)), "column_dtype"),
        (lambda f: pl.concat([f, f.tail(1)]), "timestamps_unique"),
        (lambda f: f.reverse(), "timestamps_increasing"),
        (
            lambda f: f.with_columns(
                pl.when(pl.int_range(10) == 3).then(None).otherwise(pl.col("a"))
            ),
            "not_null",
        ),
        (lambda f: f.with_columns(pl.col("timestamp").dt.replace_time_zone(None)), "column_dtype"),
    ],
)
def test_contract_rejects_malformed_frames(mutate, check: str) -> None:  # type: ignore[no-untyped-def]
    validate_features(_frame(), "good")
    with pytest.raises(ContractViolation) as info:
        validate_features(mutate(_frame()), "bad")
    assert check in info.value.checks


# ------------------------------------------------------------------------- exogenous


def _write_exo(path: Path, stamps: list[dt.datetime], values: list[float]) -> Path:
    pl.DataFrame({"timestamp": stamps, "Sentiment Score": values}).with_columns(
        pl.col("timestamp").dt.replace_time_zone("UTC")
        if stamps[0].tzinfo is None
        else pl.col("timestamp")
    ).write_parquet(path)
    return path


def test_exogenous_visible_from_bar_close_with_staleness(tmp_path: Path, one_day) -> None:  # type: ignore[no-untyped-def]
    day = "2024-12-03"  # the second session: past the warm-up
    t0 = at(10, 0, day) + dt.timedelta(seconds=30)  # 10:00:30, inside the 10:00 bar
    path = _write_exo(tmp_path / "exo.parquet", [at(9, 0, day), t0], [1.0, 2.0])
    cfg = cfg_with(
        indicators=["returns"],
        normalisation="train_fit",
        exogenous_path=str(path),
        exogenous_max_staleness_minutes=5,
    )
    out = build_features(one_day, cfg)
    validate_features(out, "exo")
    val = dict(zip(out["timestamp"], out["exo_sentiment_score"], strict=True))
    stale = dict(zip(out["timestamp"], out["exo_sentiment_score_stale"], strict=True))
    # The 09:59 bar closes at 10:00 (record not yet stamped); the 10:00 bar closes at 10:01.
    assert (val[at(9, 59, day)], stale[at(9, 59, day)]) == (0.0, 1.0)  # 09:00 record is stale
    assert (val[at(10, 0, day)], stale[at(10, 0, day)]) == (2.0, 0.0)
    # Fresh until the bar whose close is 5 minutes after 10:00:30 at most: 10:04 closes 10:05.
    assert (val[at(10, 4, day)], stale[at(10, 4, day)]) == (2.0, 0.0)
    assert (val[at(10, 5, day)], stale[at(10, 5, day)]) == (0.0, 1.0)


def test_exogenous_has_no_look_ahead(tmp_path: Path, week: pl.DataFrame) -> None:
    rng = np.random.default_rng(0)
    start = at(9, 30, "2024-11-22")
    stamps = [start + dt.timedelta(minutes=int(m), seconds=17) for m in range(0, 12 * 24 * 60, 7)]
    values = rng.normal(size=len(stamps)).tolist()
    full = _write_exo(tmp_path / "full.parquet", stamps, values)
    cut = at(11, 0, "2024-12-02")
    keep = [i for i, s in enumerate(stamps) if s <= cut + dt.timedelta(minutes=1)]
    part = _write_exo(
        tmp_path / "part.parquet", [stamps[i] for i in keep], [values[i] for i in keep]
    )
    a = build_features(week, cfg_with(norm_window=300, exogenous_path=str(full)))
    b = build_features(week, cfg_with(norm_window=300, exogenous_path=str(part)))
    validate_features(a, "exo")
    assert a["exo_sentiment_score_stale"].sum() < a.height
    before = pl.col("timestamp") <= cut
    assert_frame_equal(a.filter(before), b.filter(before), check_exact=True)
    assert not a.filter(~before).equals(b.filter(~before))


def test_exogenous_naive_timestamps_rejected(tmp_path: Path, one_day) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "exo.csv"
    path.write_text("timestamp,x\n2024-12-02 15:00:00,1.0\n")
    with pytest.raises(DataError, match="timezone-aware"):
        build_features(one_day, cfg_with(exogenous_path=str(path)))


@pytest.mark.parametrize("normalisation", ["rolling", "expanding"])
def test_normalisation_matches_past_window_zscores(
    one_day: pl.DataFrame, normalisation: str
) -> None:
    features = {"indicators": ["returns", "rsi", "session_clock"], "norm_window": 50}
    raw = build_features(one_day, cfg_with(normalisation="train_fit", **features))
    out = build_features(one_day, cfg_with(normalisation=normalisation, **features))
    assert out["timestamp"].to_list() == raw["timestamp"].to_list()[49:]
    assert out["minutes_to_close"].equals(raw["minutes_to_close"][49:])  # not normalised
    for col in ("log_ret_5", "rsi_14"):
        x = raw[col].cast(pl.Float64).to_numpy()
        want = []
        for i in range(49, len(x)):
            win = x[i - 49 : i + 1] if normalisation == "rolling" else x[: i + 1]
            want.append(np.clip((x[i] - win.mean()) / win.std(ddof=1), -10, 10))
        np.testing.assert_allclose(out[col].to_numpy(), want, rtol=1e-4, atol=1e-4)


def test_flat_window_normalises_to_zero(one_day: pl.DataFrame) -> None:
    flat = one_day.with_columns([pl.lit(100.0).alias(c) for c in ("open", "high", "low", "close")])
    out = build_features(flat, cfg_with(indicators=["returns", "rsi", "bollinger"], norm_window=20))
    validate_features(out, "flat")
    assert out.select(pl.all().exclude("timestamp").abs().max()).row(0) == (0.0,) * (out.width - 1)


def test_other_symbols_are_ignored(one_day: pl.DataFrame) -> None:
    cfg = cfg_with(norm_window=50)
    other = minute_bars("2024-12-02", "2024-12-03", symbol="TQQQ", seed=9)
    mixed = pl.concat([one_day, other]).sort("symbol", "timestamp")
    assert_frame_equal(build_features(mixed, cfg), build_features(one_day, cfg), check_exact=True)


def test_exogenous_csv_with_offsets(tmp_path: Path, one_day: pl.DataFrame) -> None:
    path = tmp_path / "macro.csv"
    # 10:00:30 New York written with its -05:00 offset; visible from the 10:00 bar (closes 10:01).
    path.write_text("timestamp,vix\n2024-12-03T10:00:30-05:00,17.5\n")
    cfg = cfg_with(indicators=["returns"], normalisation="train_fit", exogenous_path=str(path))
    out = build_features(one_day, cfg)
    val = dict(zip(out["timestamp"], out["exo_vix"], strict=True))
    assert val[at(9, 59, "2024-12-03")] == 0.0 and val[at(10, 0, "2024-12-03")] == 17.5
