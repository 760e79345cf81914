"""The real NASDAQ Composite daily sample (shipped with arch) in canonical form."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import polars as pl
import pytest

from sentio.calendar import sessions
from sentio.config import SentioConfig, UniverseConfig, load_config
from sentio.data.sample import nasdaq_daily, nasdaq_daily_report, nasdaq_universe, write_sample
from sentio.data.schema import CANONICAL_SCHEMA, session_date
from sentio.errors import DataError

N_SESSIONS = 5031  # NYSE sessions 1999-01-04 .. 2018-12-31, all present in the file


@pytest.fixture(scope="module")
def sample():
    return nasdaq_daily_report()


def test_universe():
    uni = nasdaq_universe()
    assert (uni.underlying, uni.long, uni.short) == ("IXIC", "IXIC3L", "IXIC3S")
    two = nasdaq_universe(UniverseConfig(leverage=2.0, expense_ratio_annual=0.01))
    assert (two.long, two.short, two.leverage, two.expense_ratio_annual) == (
        "IXIC2L",
        "IXIC2S",
        2.0,
        0.01,
    )


def test_rows_range_and_schema(sample):
    bars, uni, report = sample
    assert bars.schema == pl.Schema(CANONICAL_SCHEMA)
    assert bars.equals(bars.sort("symbol", "timestamp"))
    assert dict(bars.group_by("symbol").len().iter_rows()) == {
        "IXIC": N_SESSIONS,
        "IXIC3L": N_SESSIONS,
        "IXIC3S": N_SESSIONS,
    }
    days = bars.select(session_date(pl.col("timestamp")))["timestamp"]
    assert days.min() == dt.date(1999, 1, 4)
    assert days.max() == dt.date(2018, 12, 31)
    assert report["rows_raw"] == report["rows"] == N_SESSIONS
    assert report["dropped_non_session_rows"] == 0
    assert report["calendar_sessions_missing"] == []
    assert report["zero_volume_sessions"] == ["2015-05-12", "2018-01-09"]
    assert report["derived_symbols"] == ["IXIC3L", "IXIC3S"]
    assert bars.select(pl.all().null_count()).sum_horizontal().item() == 0


def test_raw_prices_not_adjusted(sample):
    bars = sample[0].filter(pl.col("symbol") == "IXIC")
    first = bars.row(0, named=True)
    # 1999-01-04 in the arch file: Open 2207.540039, Close 2208.050049
    assert first["open"] == pytest.approx(2207.540039)
    assert first["close"] == pytest.approx(2208.050049)
    assert bars["close"][-1] == pytest.approx(6635.279785)  # 2018-12-31
    checks = bars.select(
        (pl.col("high") >= pl.max_horizontal("open", "close")).all().alias("hi"),
        (pl.col("low") <= pl.min_horizontal("open", "close")).all().alias("lo"),
    )
    assert checks.row(0) == (True, True)


def test_timestamps_are_session_opens(sample):
    bars = sample[0]
    table = sessions(dt.date(1999, 1, 1), dt.date(2018, 12, 31))
    for sym in ("IXIC", "IXIC3L", "IXIC3S"):
        ts = bars.filter(pl.col("symbol") == sym)["timestamp"]
        assert ts.to_list() == table["open"].to_list()
    ny = bars["timestamp"].dt.convert_time_zone("America/New_York")
    assert (ny.dt.hour() == 9).all() and (ny.dt.minute() == 30).all()
    # 14:30 UTC in winter, 13:30 UTC in summer
    assert set(bars["timestamp"].dt.hour().unique().to_list()) == {13, 14}


def test_derived_identity(sample):
    bars, uni, _ = sample
    wide = bars.pivot(on="symbol", index="timestamp", values=["open", "high", "low", "close"]).sort(
        "timestamp"
    )
    days = wide.select(session_date(pl.col("timestamp")))["timestamp"]
    gap_days = np.array([(b - a).days for a, b in zip(days[:-1], days[1:], strict=True)])
    prev_u = wide["close_IXIC"].to_numpy()[:-1]
    er, fr = uni.expense_ratio_annual, uni.financing_rate_annual
    assert uni.leverage == 3.0
    # daily charge per calendar day: +3x pays er + 2 fr; -3x pays er and earns 4 fr
    charge = {"IXIC3L": (er + 2 * fr) / 365, "IXIC3S": (er - 4 * fr) / 365}
    for sym, lev in (("IXIC3L", 3.0), ("IXIC3S", -3.0)):
        fee = charge[sym]
        base = wide[f"close_{sym}"].to_numpy()[:-1] * (1 - fee * gap_days)
        hi_src, lo_src = ("high", "low") if lev > 0 else ("low", "high")
        for col, src in (("open", "open"), ("close", "close"), ("high", hi_src), ("low", lo_src)):
            want = base * (1 + lev * (wide[f"{src}_IXIC"].to_numpy()[1:] / prev_u - 1))
            np.testing.assert_allclose(wide[f"{col}_{sym}"].to_numpy()[1:], want, rtol=1e-9)
        # first session: reference = the first open, base = the first open
        o0 = wide["open_IXIC"][0]
        assert wide[f"close_{sym}"][0] == pytest.approx(
            o0 * (1 + lev * (wide["close_IXIC"][0] / o0 - 1))
        )
    vol = bars.pivot(on="symbol", index="timestamp", values="volume")
    ratio = uni.derived_volume_ratio
    assert ratio == 0.5  # the default, not 1
    for sym in ("IXIC3L", "IXIC3S"):
        np.testing.assert_allclose(vol[sym].to_numpy(), vol["IXIC"].to_numpy() * ratio)


def test_nasdaq_daily_matches_report_frame(sample):
    assert nasdaq_daily().equals(sample[0])


def test_write_sample(tmp_path, sample):
    cfg = SentioConfig.model_validate({"universe": {"leverage": 3.0}, "synth": {"years": 1.0}})
    paths = write_sample("nasdaq-daily", tmp_path / "nasdaq" / "bars.feather", cfg)
    assert set(paths) == {"bars", "config", "report", "provenance"}
    assert paths["provenance"].name == "bars.provenance.json" and paths["provenance"].is_file()
    prov = json.loads(paths["provenance"].read_text())
    assert prov["source"] == "sentio sample nasdaq-daily" and prov["synthetic"] is False
    assert set(prov["derived_symbols"]) == {"IXIC3L", "IXIC3S"}
    assert prov["derived_symbols"]["IXIC3S"]["underlying"] == "IXIC"
    assert prov["derived_symbols"]["IXIC3S"]["leverage"] == -3.0
    assert prov["derived_symbols"]["IXIC3L"]["leverage"] == 3.0
    assert pl.read_ipc(paths["bars"]).equals(sample[0])
    written = load_config(paths["config"])
    assert written.universe == nasdaq_universe(cfg.universe)
    assert written.synth == cfg.synth  # everything else kept
    report = json.loads(paths["report"].read_text())
    assert report["sample"] == "nasdaq-daily" and report["rows"] == N_SESSIONS


def test_unknown_sample_lists_the_available_ones(tmp_path):
    with pytest.raises(DataError, match="nasdaq-daily"):
        write_sample("sp500-minute", tmp_path / "x.feather", SentioConfig())
    assert not (tmp_path / "x.feather").exists()
