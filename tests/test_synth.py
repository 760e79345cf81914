"""The synthetic market: calendar, stylised facts, modes, determinism, leveraged identity."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import kurtosis

from sentio.calendar import sessions
from sentio.config import RegimeSpec, SentioConfig, SynthConfig, load_config
from sentio.data.schema import CANONICAL_SCHEMA, session_date
from sentio.data.synth import (
    RANDOM_WALK_REGIME,
    generate,
    sample_regime_path,
    write_synth,
)

TWO_YEARS = SentioConfig(synth=SynthConfig(start=dt.date(2021, 1, 4), years=2.0, seed=7))


def acf(x: np.ndarray, lag: int = 1) -> float:
    x = x - x.mean()
    return float((x[lag:] * x[:-lag]).sum() / (x * x).sum())


def underlying(bars: pl.DataFrame, symbol: str = "QQQ") -> pl.DataFrame:
    """One symbol with its session, minute of session and intrabar log return."""
    return (
        bars.filter(pl.col("symbol") == symbol)
        .with_columns(session_date(pl.col("timestamp")).alias("session"))
        .with_columns(
            pl.int_range(pl.len()).over("session").alias("minute"),
            pl.len().over("session").alias("n"),
            (pl.col("close") / pl.col("open")).log().alias("r"),
        )
    )


@pytest.fixture(scope="module")
def two_years():
    return generate(TWO_YEARS)


@pytest.fixture(scope="module")
def qqq(two_years):
    return underlying(two_years.bars).join(two_years.regimes, on="timestamp", how="left")


# ---------------------------------------------------------------- calendar and shape


def test_frames_are_canonical_and_cover_the_three_symbols(two_years):
    bars, regimes = two_years.bars, two_years.regimes
    assert bars.schema == pl.Schema(CANONICAL_SCHEMA)
    assert bars.equals(bars.sort("symbol", "timestamp"))
    counts = dict(bars.group_by("symbol").len().iter_rows())
    assert set(counts) == {"QQQ", "TQQQ", "SQQQ"}
    assert len(set(counts.values())) == 1
    assert regimes.schema == pl.Schema(
        {"timestamp": CANONICAL_SCHEMA["timestamp"], "regime": pl.Int8, "regime_name": pl.String}
    )
    assert regimes.height == counts["QQQ"]
    assert regimes["timestamp"].equals(bars.filter(pl.col("symbol") == "QQQ")["timestamp"])
    assert bars.select(pl.all().null_count()).sum_horizontal().item() == 0


def test_sessions_follow_the_nyse_calendar(qqq):
    # years=2 from 2021-01-04: dates up to 2021-01-04 + 730.5 days
    table = sessions(dt.date(2021, 1, 4), dt.date(2023, 1, 4))
    assert table["session"].max() == dt.date(2023, 1, 4)
    per_session = qqq.group_by("session").agg(
        pl.len().alias("bars"),
        pl.col("timestamp").min().alias("first"),
        pl.col("timestamp").max().alias("last"),
    )
    joined = table.join(per_session, on="session", how="full", coalesce=True)
    assert joined["bars"].null_count() == 0, "a calendar session has no bars"
    assert joined["open"].null_count() == 0, "bars on a day that is not a session"
    assert (joined["bars"] == joined["minutes"]).all()
    assert (joined["first"] == joined["open"]).all()
    assert (joined["last"] == joined["close"] - dt.timedelta(minutes=1)).all()
    by_day = dict(zip(joined["session"], joined["bars"], strict=True))
    assert by_day[dt.date(2021, 11, 26)] == 210  # day after Thanksgiving: 13:00 close
    assert dt.date(2021, 11, 25) not in by_day  # Thanksgiving
    assert dt.date(2021, 12, 24) not in by_day  # Christmas observed
    assert by_day[dt.date(2021, 11, 24)] == 390
    assert set(joined.filter(pl.col("early_close"))["bars"].to_list()) == {210}
    assert set(joined.filter(~pl.col("early_close"))["bars"].to_list()) == {390}
    # every bar starts at a whole minute inside its session
    bounds = table.select(
        "session", pl.col("open").alias("s_open"), pl.col("close").alias("s_close")
    )
    inside = qqq.join(bounds, on="session").select(
        ((pl.col("timestamp") >= pl.col("s_open")) & (pl.col("timestamp") < pl.col("s_close")))
        .all()
        .alias("inside"),
        (pl.col("timestamp").dt.second() == 0).all().alias("whole_minute"),
        pl.len(),
    )
    assert inside.row(0) == (True, True, qqq.height)


def test_ohlc_consistent_and_open_equals_previous_close_within_a_session(two_years):
    for sym in ("QQQ", "TQQQ", "SQQQ"):
        df = underlying(two_years.bars, sym)
        checks = df.select(
            (pl.col("high") >= pl.max_horizontal("open", "close")).all().alias("hi"),
            (pl.col("low") <= pl.min_horizontal("open", "close")).all().alias("lo"),
            (pl.col("low") > 0).all().alias("pos"),
            (pl.col("volume") > 0).all().alias("vol"),
        )
        assert checks.row(0) == (True, True, True, True), sym
        inner = df.with_columns(pl.col("close").shift(1).alias("prev")).filter(pl.col("minute") > 0)
        assert inner.height > 0.99 * df.height
        assert float(((inner["open"] / inner["prev"]) - 1).abs().max()) < 1e-12, sym


# ---------------------------------------------------------------- stylised facts


def test_regime_statistics(qqq):
    names = ["calm_bull", "choppy", "bear_high_vol"]
    assert set(qqq["regime_name"].unique()) == set(names)
    # a regime holds for a whole session
    assert qqq.group_by("session").agg(pl.col("regime").n_unique())["regime"].max() == 1
    vol = dict(qqq.group_by("regime_name").agg(pl.col("r").std()).iter_rows())
    assert vol["calm_bull"] < vol["choppy"] < vol["bear_high_vol"]
    # annualised on the bar frequency present, the configured vols come out roughly
    ann = {k: v * np.sqrt(252 * 390 * (1 + 0.5**2)) for k, v in vol.items()}
    for spec in TWO_YEARS.synth.regimes:
        assert ann[spec.name] == pytest.approx(spec.vol_annual, rel=0.25), spec.name
    r = qqq["r"].to_numpy()
    assert kurtosis(r, fisher=False) > 3.0
    assert acf(np.abs(r), 1) > 0.1
    assert acf(np.abs(r), 30) > 0.05


def test_regime_chain_durations_and_switches():
    means = np.array([60.0, 25.0, 15.0])
    path = sample_regime_path(300_000, means, np.random.default_rng(0))
    assert path.dtype == np.int8 and len(path) == 300_000
    change = np.flatnonzero(np.diff(path)) + 1
    bounds = np.concatenate(([0], change, [len(path)]))
    lengths = np.diff(bounds)[1:-1]  # drop the censored first and last runs
    run_regime = path[bounds[1:-2]]
    for k, m in enumerate(means):
        assert lengths[run_regime == k].mean() == pytest.approx(m, rel=0.05)
    # occupancy is proportional to the mean durations
    occ = np.bincount(path, minlength=3) / len(path)
    np.testing.assert_allclose(occ, means / means.sum(), atol=0.02)
    # one regime: no switching at all
    assert (sample_regime_path(50, np.array([10.0]), np.random.default_rng(1)) == 0).all()


def _plain(**kw) -> SentioConfig:
    """One regime, no U-shape, no gaps: isolates one mechanism at a time."""
    base = {
        "years": 1.0,
        "seed": 21,
        "regimes": [RegimeSpec(name="only", drift_annual=0.0, vol_annual=0.2, mean_sessions=10)],
        "intraday_u_shape": 0.0,
        "overnight_vol_ratio": 0.0,
    }
    return SentioConfig(synth=SynthConfig(**{**base, **kw}))


def test_volatility_clustering_comes_from_the_log_vol_ar1():
    on = underlying(generate(_plain(vol_of_vol=0.05, tail_df=1000.0)).bars)["r"].abs().to_numpy()
    off = underlying(generate(_plain(vol_of_vol=0.0, tail_df=1000.0)).bars)["r"].abs().to_numpy()
    assert acf(on, 1) > 0.05 and acf(on, 100) > 0.03
    assert abs(acf(off, 1)) < 4 / np.sqrt(len(off))
    assert abs(acf(off, 100)) < 4 / np.sqrt(len(off))


def test_fat_tails_are_standardised_student_t():
    # excess kurtosis of a Student-t with df > 4 is 6 / (df - 4); its variance is 1
    r12 = underlying(generate(_plain(vol_of_vol=0.0, tail_df=12.0)).bars)["r"].to_numpy()
    r_norm = underlying(generate(_plain(vol_of_vol=0.0, tail_df=1000.0)).bars)["r"].to_numpy()
    assert kurtosis(r12, fisher=False) == pytest.approx(3.75, abs=0.3)
    assert kurtosis(r_norm, fisher=False) == pytest.approx(3.0, abs=0.1)
    bar_sd = 0.2 / np.sqrt(252 * 390)  # overnight_vol_ratio = 0: all variance intraday
    assert r12.std() == pytest.approx(bar_sd, rel=0.02)


def test_drift_follows_the_regime():
    # low vols so two years pin the drifts down: se of an annual drift ~ vol / sqrt(years)
    regimes = [
        RegimeSpec(name="bull", drift_annual=0.8, vol_annual=0.05, mean_sessions=40),
        RegimeSpec(name="bear", drift_annual=-0.8, vol_annual=0.05, mean_sessions=40),
    ]
    cfg = SentioConfig(synth=SynthConfig(years=2.0, seed=3, regimes=regimes, vol_of_vol=0.0))
    data = generate(cfg)
    df = underlying(data.bars).join(data.regimes, on="timestamp")
    est = dict(
        df.group_by("regime_name")
        .agg((pl.col("r").mean() + 0.5 * pl.col("r").var()) * 252 * 390)
        .iter_rows()
    )
    assert est["bull"] > est["bear"]
    assert est["bull"] == pytest.approx(0.8, abs=0.25)
    assert est["bear"] == pytest.approx(-0.8, abs=0.25)


def test_intraday_u_shape_of_volatility_and_volume(qqq):
    regular = qqq.filter(pl.col("n") == 390)
    edge = regular.filter((pl.col("minute") < 30) | (pl.col("minute") >= 360))
    mid = regular.filter(pl.col("minute").is_between(165, 224))
    assert edge["r"].abs().mean() > 1.5 * mid["r"].abs().mean()
    assert edge["volume"].mean() > 1.5 * mid["volume"].mean()
    # volume grows with |r|
    assert np.corrcoef(qqq["volume"].to_numpy(), qqq["r"].abs().to_numpy())[0, 1] > 0.3


def test_overnight_gaps(qqq):
    first = qqq.with_columns(pl.col("close").shift(1).alias("prev")).filter(
        (pl.col("minute") == 0) & pl.col("prev").is_not_null()
    )
    gap = np.log(first["open"] / first["prev"]).to_numpy()
    assert (gap != 0).all()
    # sd = overnight_vol_ratio x a session's sd (regimes mixed: compare orders of magnitude)
    session_sd = qqq.group_by("session").agg(pl.col("r").sum())["r"].std()
    ratio = gap.std() / session_sd
    assert 0.3 < ratio < 0.8


# ---------------------------------------------------------------- modes


def test_random_walk_has_no_edge():
    cfg = SentioConfig(synth=SynthConfig(years=1.0, random_walk=True, seed=11))
    data = generate(cfg)
    df = underlying(data.bars)
    r = df["r"].to_numpy()
    n = len(r)
    assert set(data.regimes["regime_name"].unique()) == {RANDOM_WALK_REGIME}
    assert (data.regimes["regime"] == 0).all()
    assert abs(acf(r, 1)) < 4 / np.sqrt(n)
    assert abs(acf(np.abs(r), 1)) < 4 / np.sqrt(n)  # no volatility clustering
    assert abs(acf(np.abs(r), 50)) < 4 / np.sqrt(n)
    # constant volatility through the day (no U-shape) and zero drift
    edge = df.filter(pl.col("minute") < 30)["r"].std()
    mid = df.filter(pl.col("minute").is_between(165, 194))["r"].std()
    assert edge / mid == pytest.approx(1.0, abs=0.05)
    t_stat = r.mean() / (r.std() / np.sqrt(n))
    assert abs(t_stat) < 4


@pytest.mark.parametrize("rho", [0.05, 0.2])
def test_edge_plants_lag_one_autocorrelation(rho):
    cfg = SentioConfig(synth=SynthConfig(years=1.0, edge_strength=rho, seed=5))
    df = underlying(generate(cfg).bars)
    # standardise by each session's sd (removes regime and most of the clustering)
    z = df.select(pl.col("r") / pl.col("r").std().over("session"))["r"].to_numpy()
    assert acf(z, 1) == pytest.approx(rho, abs=0.02)
    assert abs(acf(z, 2) - rho**2) < 0.02  # AR(1), not a longer memory


def test_no_edge_by_default(qqq):
    z = qqq.select(pl.col("r") / pl.col("r").std().over("session"))["r"].to_numpy()
    assert abs(acf(z, 1)) < 0.01


# ---------------------------------------------------------------- determinism and IO


def test_same_seed_same_frames_different_seed_different():
    cfg = SentioConfig(synth=SynthConfig(years=0.1, seed=1))
    a, b = generate(cfg), generate(cfg)
    assert a.bars.equals(b.bars) and a.regimes.equals(b.regimes)
    c = generate(SentioConfig(synth=SynthConfig(years=0.1, seed=2)))
    assert c.bars["timestamp"].equals(a.bars["timestamp"])
    assert not c.bars["close"].equals(a.bars["close"])


def test_write_synth_round_trip(tmp_path):
    cfg = SentioConfig(synth=SynthConfig(years=0.05, seed=4))
    paths = write_synth(tmp_path / "demo" / "bars.feather", cfg)
    assert set(paths) == {"bars", "regimes", "config", "provenance"}
    assert paths["regimes"].name == "bars.regimes.feather"
    assert paths["config"].name == "bars.config.yaml"
    assert paths["provenance"].name == "bars.provenance.json"
    assert paths["provenance"].is_file()
    prov = json.loads(paths["provenance"].read_text())
    assert prov["source"] == "sentio synth" and prov["synthetic"] is True
    assert set(prov["derived_symbols"]) == {"TQQQ", "SQQQ"}
    assert prov["derived_symbols"]["SQQQ"] == {
        "underlying": "QQQ",
        "leverage": -3.0,
        "expense_ratio_annual": cfg.universe.expense_ratio_annual,
        "financing_rate_annual": cfg.universe.financing_rate_annual,
    }
    assert prov["derived_symbols"]["TQQQ"]["leverage"] == 3.0
    data = generate(cfg)
    assert pl.read_ipc(paths["bars"]).equals(data.bars)
    assert pl.read_ipc(paths["regimes"]).equals(data.regimes)
    assert load_config(paths["config"]) == cfg
    assert not [p for p in paths["bars"].parent.iterdir() if p.name.endswith(".tmp")]


def test_custom_universe_symbols():
    cfg = SentioConfig.model_validate(
        {
            "universe": {"underlying": "SPY", "long": "UPRO", "short": "SPXU"},
            "synth": {"years": 0.05},
        }
    )
    assert set(generate(cfg).bars["symbol"].unique()) == {"SPY", "UPRO", "SPXU"}


# ---------------------------------------------------------------- leveraged identity


def test_leveraged_identity_holds_on_synth_output(two_years):
    uni = TWO_YEARS.universe
    wide = (
        two_years.bars.pivot(on="symbol", index="timestamp", values=["open", "close"])
        .sort("timestamp")
        .with_columns(session_date(pl.col("timestamp")).alias("session"))
    )
    last = (
        wide.group_by("session", maintain_order=True)
        .agg(pl.col("close_QQQ", "close_TQQQ", "close_SQQQ").last())
        .with_columns(
            pl.all().exclude("session").shift(1).name.prefix("prev_"),
            (pl.col("session") - pl.col("session").shift(1)).dt.total_days().alias("days"),
        )
        .select("session", "days", "prev_close_QQQ", "prev_close_TQQQ", "prev_close_SQQQ")
    )
    df = wide.join(last, on="session").filter(pl.col("days").is_not_null())
    assert df.height > 0.99 * wide.height
    er, fr = uni.expense_ratio_annual, uni.financing_rate_annual
    assert uni.leverage == 3.0
    # daily charge per calendar day: +3x pays er + 2 fr; -3x pays er and earns 4 fr
    charge = {"TQQQ": (er + 2 * fr) / 365, "SQQQ": (er - 4 * fr) / 365}
    for sym, lev in (("TQQQ", 3.0), ("SQQQ", -3.0)):
        fee = charge[sym]
        for col in ("open", "close"):
            want = (
                df[f"prev_close_{sym}"]
                * (1 - fee * df["days"])
                * (1 + lev * (df[f"{col}_QQQ"] / df["prev_close_QQQ"] - 1))
            )
            np.testing.assert_allclose(df[f"{col}_{sym}"].to_numpy(), want.to_numpy(), rtol=1e-9)
    vol = two_years.bars.pivot(on="symbol", index="timestamp", values="volume")
    np.testing.assert_allclose(vol["TQQQ"], vol["QQQ"] * TWO_YEARS.universe.derived_volume_ratio)


# ---------------------------------------------------------------- property


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    # a few calendar years only: each new year builds an exchange calendar (slow)
    start=st.dates(dt.date(2020, 1, 1), dt.date(2021, 12, 15)),
    tail_df=st.floats(2.5, 50.0),
    u_shape=st.floats(0.0, 5.0),
    overnight=st.floats(0.0, 2.0),
    edge=st.floats(0.0, 0.5),
)
def test_property_small_markets_are_consistent(seed, start, tail_df, u_shape, overnight, edge):
    cfg = SentioConfig(
        synth=SynthConfig(
            years=0.03,
            seed=seed,
            start=start,
            tail_df=tail_df,
            intraday_u_shape=u_shape,
            overnight_vol_ratio=overnight,
            edge_strength=edge,
        )
    )
    bars = generate(cfg).bars
    assert bars.height > 0
    ok = bars.select(
        (pl.col("high") >= pl.max_horizontal("open", "close")).all().alias("hi"),
        (pl.col("low") <= pl.min_horizontal("open", "close")).all().alias("lo"),
        (pl.col("low") > 0).all().alias("pos"),
        (pl.col("volume") > 0).all().alias("vol"),
        pl.col("open", "high", "low", "close").is_finite().all(),
    )
    assert all(ok.row(0))
    days = bars.select(session_date(pl.col("timestamp")).unique())["timestamp"]
    table = sessions(days.min(), days.max())
    assert days.sort().to_list() == table["session"].to_list()
