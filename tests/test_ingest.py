"""Ingest: real-format files in, canonical bars out; every bad-input kind ends in an error or quarantine."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sentio.config import SentioConfig, with_overrides
from sentio.data.ingest import REASONS, ingest_files
from sentio.data.provenance import write_provenance
from sentio.errors import DataError, QuarantineLimitError
from sentio.io import sha256_file
from tests.conftest import minute_bars


def cfg(**ingest) -> SentioConfig:
    return with_overrides(SentioConfig(), {f"ingest.{k}": v for k, v in ingest.items()})


def accounting(report: dict) -> int:
    return (
        report["rows_kept"]
        + report["rows_dropped_outside_regular_hours"]
        + report["rows_dropped_duplicates"]
        + report["rows_quarantined"]
    )


def write_csv(path: Path, frame: pl.DataFrame, **kw) -> Path:
    frame.write_csv(path, **kw)
    return path


def as_vendor(frame: pl.DataFrame) -> pl.DataFrame:
    """Timestamps as ISO strings with offset, like a typical CSV export."""
    return frame.with_columns(pl.col("timestamp").dt.strftime("%Y-%m-%dT%H:%M:%S%z"))


# --------------------------------------------------------------------------- real data


def test_real_spy_minute_files_across_dst(spy_dir: Path, tmp_path: Path) -> None:
    files = [spy_dir / "spy-2011-01.csv", spy_dir / "spy-2011-03.csv"]
    hashes = [sha256_file(f) for f in files]
    result = ingest_files(
        files, tmp_path / "spy.feather", cfg(symbol="SPY", tz="UTC", bar_timestamp="end")
    )
    rep = result.report
    bars = pl.read_ipc(result.output)
    # Complete regular sessions: 20 in January, 23 in March, 390 one-minute bars each.
    per_session = bars.group_by(
        pl.col("timestamp").dt.convert_time_zone("America/New_York").dt.date()
    ).len()
    assert per_session.height == 43
    assert per_session["len"].unique().to_list() == [390]
    assert rep["rows_read"] == 14_180 + 17_577
    assert rep["rows_kept"] == 43 * 390
    assert rep["rows_quarantined"] == 0
    assert accounting(rep) == rep["rows_read"]
    assert rep["frequency"] == "1min"
    # UTC bar starts: 09:30 New York is 14:30 UTC before the DST change and 13:30 after it.
    firsts = bars.group_by(pl.col("timestamp").dt.date().alias("d")).agg(
        pl.col("timestamp").min(), pl.col("timestamp").max().alias("last")
    )
    first = {
        r["d"]: (r["timestamp"].time(), r["last"].time()) for r in firsts.iter_rows(named=True)
    }
    assert first[dt.date(2011, 1, 3)] == (dt.time(14, 30), dt.time(20, 59))
    assert first[dt.date(2011, 3, 11)] == (dt.time(14, 30), dt.time(20, 59))
    assert first[dt.date(2011, 3, 14)] == (dt.time(13, 30), dt.time(19, 59))
    # The bar that starts at 09:30 New York was stamped 09:31 (its end) in the file.
    raw = pl.read_csv(
        files[0], separator=";", has_header=False, new_columns=["t", "o", "h", "l", "c", "v"]
    )
    opening = raw.filter(pl.col("t") == "20110103 143100").row(0, named=True)
    got = bars.row(0, named=True)
    assert (got["open"], got["close"], got["volume"]) == (opening["o"], opening["c"], opening["v"])
    # The inputs were only read.
    assert [sha256_file(f) for f in files] == hashes


# --------------------------------------------------------------------------- formats and vendor names


def test_feather_parquet_and_csv_give_identical_bars(tmp_path: Path) -> None:
    bars = minute_bars("2024-03-08", "2024-03-12")
    bars.write_ipc(tmp_path / "b.feather")
    bars.write_parquet(tmp_path / "b.parquet")
    write_csv(tmp_path / "b.csv", as_vendor(bars))
    outs = [
        pl.read_ipc(ingest_files([tmp_path / f"b.{ext}"], tmp_path / f"out_{ext}.feather").output)
        for ext in ("feather", "parquet", "csv")
    ]
    for out in outs:
        assert out.equals(bars.sort("symbol", "timestamp"))


def test_polygon_style_columns_epoch_ms(tmp_path: Path) -> None:
    bars = minute_bars("2024-01-02", "2024-01-03")
    poly = bars.select(
        t=pl.col("timestamp").dt.epoch("ms"),
        o="open",
        h="high",
        l="low",
        c="close",
        v="volume",
        vw="close",
        n=pl.lit(5),
    )
    poly.write_parquet(tmp_path / "poly.parquet")
    res = ingest_files([tmp_path / "poly.parquet"], tmp_path / "out.feather", cfg(symbol="QQQ"))
    assert pl.read_ipc(res.output).equals(bars)
    assert res.report["inputs"][0]["ignored_columns"] == ["vw", "n"]
    assert res.report["inputs"][0]["timestamp_format"] == "epoch-ms"


def test_polygon_ticker_column_capital_t(tmp_path: Path) -> None:
    bars = minute_bars("2024-01-02", "2024-01-02", symbol="TQQQ")
    poly = bars.select(
        T="symbol",
        t=pl.col("timestamp").dt.epoch("ms"),
        o="open",
        h="high",
        l="low",
        c="close",
        v="volume",
    )
    poly.write_ipc(tmp_path / "poly.feather")
    res = ingest_files([tmp_path / "poly.feather"], tmp_path / "out.feather")
    assert pl.read_ipc(res.output)["symbol"].unique().to_list() == ["TQQQ"]


def test_yahoo_daily_csv_any_case_adj_close_ignored(tmp_path: Path) -> None:
    text = (
        "DATE,OPEN,HIGH,LOW,CLOSE,ADJ CLOSE,VOLUME\n"
        "2024-01-02,10,11,9,10.5,5.0,1000\n"
        "2024-01-03,10.5,12,10,11.5,5.5,2000\n"
        "2024-01-04,11.5,12,11,11.8,5.9,1500\n"
    )
    (tmp_path / "y.csv").write_text(text)
    res = ingest_files([tmp_path / "y.csv"], tmp_path / "o.feather", cfg(symbol="QQQ"))
    out = pl.read_ipc(res.output)
    assert res.report["frequency"] == "1d"
    assert out["close"].to_list() == [10.5, 11.5, 11.8]  # Close, not Adj Close
    # A daily bar starts at the session open: 09:30 New York = 14:30 UTC in January.
    assert out["timestamp"].dt.time().unique().to_list() == [dt.time(14, 30)]
    assert res.report["inputs"][0]["ignored_columns"] == ["ADJ CLOSE"]


def test_daily_bar_on_a_holiday_is_quarantined(tmp_path: Path) -> None:
    text = "date;open;high;low;close;volume\n2024-07-03;1;1;1;1;1\n2024-07-04;1;1;1;1;1\n2024-07-05;1;1;1;1;1\n"
    (tmp_path / "d.csv").write_text(text)
    res = ingest_files(
        [tmp_path / "d.csv"], tmp_path / "o.feather", cfg(symbol="X", max_quarantine_fraction=0.5)
    )
    assert res.report["quarantined_by_reason"] == {"not_a_session": 1}
    q = pl.read_csv(res.outputs.quarantine)
    assert q["source_row"].to_list() == [2] and q["date"].to_list() == ["2024-07-04"]  # as given


def test_headerless_csv_needs_columns_when_not_six(tmp_path: Path) -> None:
    bars = minute_bars("2024-01-02", "2024-01-02").select(
        "timestamp", "symbol", "open", "high", "low", "close", "volume"
    )
    write_csv(tmp_path / "h.csv", as_vendor(bars), include_header=False)
    with pytest.raises(
        DataError, match=r"h\.csv: no header row and 7 columns; name them with --columns"
    ):
        ingest_files([tmp_path / "h.csv"], tmp_path / "o.feather")
    names = ["timestamp", "symbol", "open", "high", "low", "close", "volume"]
    res = ingest_files([tmp_path / "h.csv"], tmp_path / "o.feather", cfg(columns=names))
    assert res.report["rows_kept"] == 390


def test_naive_new_york_timestamps_with_tz_across_dst(tmp_path: Path) -> None:
    bars = minute_bars("2024-03-08", "2024-03-11")
    local = bars.with_columns(
        pl.col("timestamp")
        .dt.convert_time_zone("America/New_York")
        .dt.replace_time_zone(None)
        .dt.strftime("%Y-%m-%d %H:%M:%S")
    )
    write_csv(tmp_path / "ny.csv", local)
    with pytest.raises(
        DataError,
        match=r"ny\.csv: timestamps have no time zone; give their zone with --tz or the ingest\.tz setting",
    ):
        ingest_files([tmp_path / "ny.csv"], tmp_path / "o.feather")
    res = ingest_files([tmp_path / "ny.csv"], tmp_path / "o.feather", cfg(tz="America/New_York"))
    assert pl.read_ipc(res.output).equals(bars)


def test_end_stamped_bars_are_shifted_to_their_start(tmp_path: Path) -> None:
    bars = minute_bars("2024-01-02", "2024-01-02")
    shifted = bars.with_columns(pl.col("timestamp") + pl.duration(minutes=1))
    shifted.write_ipc(tmp_path / "e.feather")
    res = ingest_files([tmp_path / "e.feather"], tmp_path / "o.feather", cfg(bar_timestamp="end"))
    assert pl.read_ipc(res.output).equals(bars)
    # Read as bar starts, the last bar (stamped 16:00) falls outside regular hours.
    res2 = ingest_files(
        [tmp_path / "e.feather"], tmp_path / "o2.feather", cfg(min_session_coverage=0.0)
    )
    assert res2.report["rows_dropped_outside_regular_hours"] == 1


def test_extended_hours_are_dropped_and_counted(tmp_path: Path) -> None:
    bars = minute_bars("2024-01-02", "2024-01-02")
    pre = bars.head(30).with_columns(pl.col("timestamp") - pl.duration(hours=1))
    post = bars.tail(20).with_columns(pl.col("timestamp") + pl.duration(hours=2))
    weekend = bars.head(5).with_columns(pl.col("timestamp") + pl.duration(days=5))  # a Sunday
    pl.concat([pre, bars, post, weekend]).write_ipc(tmp_path / "x.feather")
    res = ingest_files([tmp_path / "x.feather"], tmp_path / "o.feather")
    assert res.report["rows_dropped_outside_regular_hours"] == 55
    assert res.report["rows_kept"] == 390
    assert accounting(res.report) == res.report["rows_read"] == 445


def test_early_close_session_expects_210_bars(tmp_path: Path) -> None:
    bars = minute_bars("2024-11-29", "2024-11-29")  # day after Thanksgiving, 13:00 close
    assert bars.height == 210
    bars.write_ipc(tmp_path / "x.feather")
    res = ingest_files([tmp_path / "x.feather"], tmp_path / "o.feather")
    assert res.report["missing_bars_by_session"] == []
    assert res.report["rows_kept"] == 210


# --------------------------------------------------------------------------- bad input: clear errors


@pytest.mark.parametrize(
    ("name", "content", "pattern"),
    [
        ("empty.csv", b"", r"empty\.csv: file is empty"),
        (
            "header.csv",
            b"timestamp,symbol,open,high,low,close,volume\n",
            r"header\.csv: file holds no data rows",
        ),
        ("blank.csv", b"\n\n  \n", r"blank\.csv: file holds no data rows"),
        ("bars.xlsx", b"PK\x03\x04", r"bars\.xlsx: unsupported file type '\.xlsx'"),
        ("noext", b"a,b\n1,2\n", r"noext: unsupported file type '\(no extension\)'"),
        (
            "corrupt.feather",
            b"ARROW1\x00\x00garbage-not-arrow",
            r"corrupt\.feather: cannot read as feather",
        ),
        ("corrupt.parquet", b"PAR1garbagePAR1", r"corrupt\.parquet: cannot read as parquet"),
    ],
)
def test_unreadable_files_fail_with_one_line_naming_the_file(
    tmp_path: Path, name: str, content: bytes, pattern: str
) -> None:
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError, match=pattern) as info:
        ingest_files([tmp_path / name], tmp_path / "o.feather")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "o.feather").exists()


def test_truncated_feather_is_a_clear_error(tmp_path: Path) -> None:
    minute_bars("2024-01-02", "2024-01-05").write_ipc(tmp_path / "t.feather")
    data = (tmp_path / "t.feather").read_bytes()
    (tmp_path / "t.feather").write_bytes(data[: len(data) // 2])
    with pytest.raises(
        DataError, match=r"t\.feather: cannot read as feather/Arrow IPC \(truncated or corrupt"
    ):
        ingest_files([tmp_path / "t.feather"], tmp_path / "o.feather")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.csv: file not found"):
        ingest_files([tmp_path / "nope.csv"], tmp_path / "o.feather")


def test_misspelled_column_is_named_with_a_hint(tmp_path: Path) -> None:
    bars = as_vendor(minute_bars("2024-01-02", "2024-01-02")).rename({"close": "Clse"})
    write_csv(tmp_path / "m.csv", bars)
    with pytest.raises(
        DataError,
        match=r"m\.csv: missing column 'close' \(did you mean 'clse'\?\); columns found: .*Clse",
    ):
        ingest_files([tmp_path / "m.csv"], tmp_path / "o.feather")


def test_missing_symbol_without_option(tmp_path: Path) -> None:
    as_vendor(minute_bars("2024-01-02", "2024-01-02")).drop("symbol").write_csv(tmp_path / "s.csv")
    with pytest.raises(DataError, match=r"s\.csv: no symbol column; pass --symbol"):
        ingest_files([tmp_path / "s.csv"], tmp_path / "o.feather")


def test_ambiguous_column_mapping(tmp_path: Path) -> None:
    bars = as_vendor(minute_bars("2024-01-02", "2024-01-02")).with_columns(c=pl.col("close"))
    bars.write_csv(tmp_path / "a.csv")
    with pytest.raises(DataError, match=r"a\.csv: columns 'close', 'c' all map to 'close'"):
        ingest_files([tmp_path / "a.csv"], tmp_path / "o.feather")


def test_unparseable_timestamp_column(tmp_path: Path) -> None:
    bars = as_vendor(minute_bars("2024-01-02", "2024-01-02")).with_columns(
        timestamp=pl.lit("yesterday")
    )
    bars.write_csv(tmp_path / "u.csv")
    with pytest.raises(
        DataError, match=r"u\.csv: cannot parse column 'timestamp' \(e\.g\. 'yesterday'\)"
    ):
        ingest_files([tmp_path / "u.csv"], tmp_path / "o.feather")


def test_wrong_column_type_is_an_error(tmp_path: Path) -> None:
    bars = minute_bars("2024-01-02", "2024-01-02").with_columns(
        volume=pl.col("timestamp").dt.date()
    )
    bars.write_parquet(tmp_path / "w.parquet")
    with pytest.raises(
        DataError, match=r"w\.parquet: column 'volume' has type Date; expected numbers"
    ):
        ingest_files([tmp_path / "w.parquet"], tmp_path / "o.feather")


# --------------------------------------------------------------------------- bad rows: quarantine


def _corrupt(frame: pl.DataFrame, row: int, **values) -> pl.DataFrame:
    exprs = [
        pl.when(pl.int_range(pl.len()) == row)
        .then(pl.lit(v))
        .otherwise(pl.col(c).cast(pl.String))
        .alias(c)
        for c, v in values.items()
    ]
    return frame.with_columns(exprs)


BAD_ROWS = {
    "non_numeric_value": {"close": "abc"},
    "missing_value": {"open": None},
    "non_finite_value": {"high": "inf"},
    "non_positive_price": {"low": "0", "open": "0.0001"},
    "negative_volume": {"volume": "-5"},
    "high_below_low": {"high": "1", "low": "2", "open": "1.5", "close": "1.5"},
    "ohlc_inconsistent": {"close": "1000000"},
    "bad_timestamp": {"timestamp": "2024-01-02Tnot-a-time+0000"},
}


@pytest.mark.parametrize("reason", sorted(BAD_ROWS))
def test_each_bad_row_kind_is_quarantined_with_its_reason(tmp_path: Path, reason: str) -> None:
    frame = as_vendor(minute_bars("2024-01-02", "2024-01-02")).with_columns(
        pl.all().cast(pl.String)
    )
    bad = _corrupt(frame, 100, **BAD_ROWS[reason])
    bad.write_csv(tmp_path / "b.csv")
    res = ingest_files(
        [tmp_path / "b.csv"], tmp_path / "o.feather", cfg(max_quarantine_fraction=0.01)
    )
    assert res.report["quarantined_by_reason"] == {reason: 1}
    assert res.report["rows_kept"] == 389
    q = pl.read_csv(res.outputs.quarantine, infer_schema=False)
    assert q.height == 1
    row = q.row(0, named=True)
    assert row["source_file"] == str(tmp_path / "b.csv")
    assert row["source_row"] == "101"  # 1-based data row (header excluded)
    assert row["reason"] == reason
    for col, value in BAD_ROWS[reason].items():  # values as the user gave them
        assert row[col] == value


def test_truncated_csv_last_line_is_quarantined(tmp_path: Path) -> None:
    as_vendor(minute_bars("2024-01-02", "2024-01-02")).write_csv(tmp_path / "t.csv")
    text = (tmp_path / "t.csv").read_text()
    (tmp_path / "t.csv").write_text(
        text[: text.rstrip().rfind(",") - 3]
    )  # cut inside the last line
    res = ingest_files(
        [tmp_path / "t.csv"], tmp_path / "o.feather", cfg(max_quarantine_fraction=0.01)
    )
    assert res.report["rows_quarantined"] == 1
    assert set(res.report["quarantined_by_reason"]) <= {"missing_value", "ohlc_inconsistent"}


def test_duplicates_identical_dropped_conflicting_quarantined(tmp_path: Path) -> None:
    bars = minute_bars("2024-01-02", "2024-01-02")
    same = bars.slice(10, 3)
    conflicting = bars.slice(50, 2).with_columns(pl.col("volume") + 1)
    pl.concat([bars, same, conflicting]).write_ipc(tmp_path / "d.feather")
    res = ingest_files(
        [tmp_path / "d.feather"], tmp_path / "o.feather", cfg(max_quarantine_fraction=0.05)
    )
    rep = res.report
    assert rep["rows_dropped_duplicates"] == 3
    assert rep["quarantined_by_reason"] == {"duplicate_timestamp_conflict": 4}
    out = pl.read_ipc(res.output)
    assert out.height == 388 and out["timestamp"].is_unique().all()
    assert accounting(rep) == rep["rows_read"] == 395


def test_unsorted_rows_are_sorted_and_counted(tmp_path: Path) -> None:
    bars = pl.concat(
        [
            minute_bars("2024-01-02", "2024-01-02"),
            minute_bars("2024-01-02", "2024-01-02", "SQQQ", seed=1),
        ]
    )
    shuffled = bars.sample(fraction=1.0, shuffle=True, seed=3)
    shuffled.write_ipc(tmp_path / "s.feather")
    res = ingest_files([tmp_path / "s.feather"], tmp_path / "o.feather")
    assert pl.read_ipc(res.output).equals(bars.sort("symbol", "timestamp"))
    assert res.report["rows_out_of_order"] > 100


def test_off_grid_timestamps_are_quarantined(tmp_path: Path) -> None:
    bars = minute_bars("2024-01-02", "2024-01-02")
    odd = bars.slice(200, 1).with_columns(pl.col("timestamp") + pl.duration(seconds=30))
    pl.concat([bars, odd]).write_ipc(tmp_path / "g.feather")
    res = ingest_files(
        [tmp_path / "g.feather"], tmp_path / "o.feather", cfg(max_quarantine_fraction=0.01)
    )
    assert res.report["quarantined_by_reason"] == {"off_grid_timestamp": 1}


def test_sessions_with_most_bars_missing(tmp_path: Path) -> None:
    bars = minute_bars("2024-01-02", "2024-01-04")
    day2 = pl.col("timestamp").dt.date() == dt.date(2024, 1, 3)
    sparse = bars.filter(~day2 | (pl.int_range(pl.len()) % 10 == 0))  # day 2 keeps 39 of 390 bars
    sparse.write_ipc(tmp_path / "p.feather")
    with pytest.raises(
        QuarantineLimitError, match=r"39 of 819 rows rejected .*incomplete_session 39"
    ):
        ingest_files([tmp_path / "p.feather"], tmp_path / "o.feather")
    assert not (tmp_path / "o.feather").exists()
    report = json.loads((tmp_path / "o.ingest.json").read_text())
    assert report["status"] == "failed"
    res = ingest_files(
        [tmp_path / "p.feather"], tmp_path / "o.feather", cfg(max_quarantine_fraction=0.1)
    )
    assert res.report["sessions_rejected_incomplete"] == 1
    assert res.report["rows_kept"] == 780
    # Sessions that are merely thin are reported, not rejected.
    thin = bars.filter(~(day2 & (pl.int_range(pl.len()) % 10 == 0)))
    thin.write_ipc(tmp_path / "t.feather")
    res = ingest_files([tmp_path / "t.feather"], tmp_path / "t_out.feather")
    missing = res.report["missing_bars_by_session"]
    assert missing == [
        {"symbol": "QQQ", "session": "2024-01-03", "expected": 390, "present": 351, "missing": 39}
    ]


def test_a_file_may_start_and_a_live_signal_s_end_inside_a_session(tmp_path: Path) -> None:
    """A symbol's first session is expected from its first bar on (data begun at 15:00, the
    rest of a session delivered the next morning); with ``ongoing`` (a live signal) its last
    session only up to its last bar (the session in progress). Interior sessions, and
    without ``ongoing`` the last one, are still expected whole."""
    bars = minute_bars("2024-01-02", "2024-01-04")  # 390 bars a session; opens 14:30 UTC
    ts = pl.col("timestamp")
    first_from = dt.datetime(2024, 1, 2, 20, 0, tzinfo=dt.UTC)  # 15:00 New York: 60 bars left
    last_to = dt.datetime(2024, 1, 4, 15, 29, tzinfo=dt.UTC)  # 10:29: the first 60 bars
    edges = bars.filter((ts >= first_from) & (ts <= last_to))
    hole = dt.datetime(2024, 1, 4, 15, 0, tzinfo=dt.UTC)  # 10 bars missing inside the span
    edges = edges.filter((ts < hole) | (ts >= hole + dt.timedelta(minutes=10)))
    edges.write_ipc(tmp_path / "e.feather")
    res = ingest_files([tmp_path / "e.feather"], tmp_path / "o.feather", ongoing=True)
    assert res.report["rows_quarantined"] == 0 and res.report["sessions_rejected_incomplete"] == 0
    assert res.report["rows_kept"] == 60 + 390 + 50 and res.report["ongoing"] is True
    out = pl.read_ipc(tmp_path / "o.feather").filter(pl.col("symbol") == "QQQ")
    assert out["timestamp"].min() == first_from and out["timestamp"].max() == last_to
    assert res.report["missing_bars_by_session"] == [
        {"symbol": "QQQ", "session": "2024-01-04", "expected": 60, "present": 50, "missing": 10}
    ]
    first_partial = {
        "symbol": "QQQ",
        "session": "2024-01-02",
        "first": "2024-01-02T20:00:00+00:00",
        "last": "2024-01-02T20:59:00+00:00",
        "present": 60,
        "of": 390,
    }
    assert res.report["partial_sessions"] == [
        first_partial,
        {
            "symbol": "QQQ",
            "session": "2024-01-04",
            "first": "2024-01-04T14:30:00+00:00",
            "last": "2024-01-04T15:29:00+00:00",
            "present": 50,
            "of": 390,
        },
    ]
    # not a live signal: the last session is expected whole (a nightly file cut at 10:30
    # is incomplete, and a session kept once is not quarantined on a later night)
    res = ingest_files(
        [tmp_path / "e.feather"], tmp_path / "n.feather", cfg(max_quarantine_fraction=0.2)
    )
    assert res.report["quarantined_by_reason"] == {"incomplete_session": 50}
    assert res.report["partial_sessions"] == [first_partial]
    assert res.report["ongoing"] is False
    # an edge session with most of its span missing is still incomplete
    sparse = edges.filter((ts < dt.datetime(2024, 1, 4, tzinfo=dt.UTC)) | (ts >= hole))
    sparse.write_ipc(tmp_path / "s.feather")
    res = ingest_files(
        [tmp_path / "s.feather"],
        tmp_path / "s_out.feather",
        cfg(max_quarantine_fraction=0.1),
        ongoing=True,
    )
    assert res.report["sessions_rejected_incomplete"] == 1
    assert res.report["quarantined_by_reason"] == {"incomplete_session": 20}  # 20 of 60 expected
    # the same 60 bars in the middle of the file are an incomplete session
    middle = bars.filter(
        (ts.dt.date() != dt.date(2024, 1, 3))
        | (ts < dt.datetime(2024, 1, 3, 15, 30, tzinfo=dt.UTC))
    )
    middle.write_ipc(tmp_path / "m.feather")
    res = ingest_files(
        [tmp_path / "m.feather"],
        tmp_path / "m_out.feather",
        cfg(max_quarantine_fraction=0.1),
        ongoing=True,
    )
    assert res.report["quarantined_by_reason"] == {"incomplete_session": 60}


def test_a_rejected_last_session_leaves_the_one_before_it_expected_whole(tmp_path: Path) -> None:
    """The coverage after a rejection keeps the first pass's last session: the session
    before a rejected one is not taken for a partial last session (its missing bars are
    reported, it is not named partial)."""
    bars = minute_bars("2024-01-02", "2024-01-05")
    ts = pl.col("timestamp")
    short_end = dt.datetime(2024, 1, 4, 20, 30, tzinfo=dt.UTC)  # the 4th lacks its last 30 bars
    day4 = ts.dt.date() == dt.date(2024, 1, 4)
    day5 = ts.dt.date() == dt.date(2024, 1, 5)
    data = bars.filter(~(day4 & (ts >= short_end)) & (~day5 | (pl.int_range(pl.len()) % 10 == 0)))
    data.write_ipc(tmp_path / "d.feather")
    for ongoing in (False, True):
        res = ingest_files(
            [tmp_path / "d.feather"],
            tmp_path / f"o-{ongoing}.feather",
            cfg(max_quarantine_fraction=0.1),
            ongoing=ongoing,
        )
        assert res.report["sessions_rejected_incomplete"] == 1, ongoing  # the sparse 5th
        missing = [
            (m["session"], m["present"], m["missing"])
            for m in res.report["missing_bars_by_session"]
        ]
        # the rejected 5th's bars are missing from the output, as an interior session's
        assert missing == [("2024-01-04", 360, 30), ("2024-01-05", 0, 390)], ongoing
        assert res.report["partial_sessions"] == [], ongoing


def test_on_bad_rows_error_names_file_and_row(tmp_path: Path) -> None:
    frame = as_vendor(minute_bars("2024-01-02", "2024-01-02")).with_columns(
        pl.all().cast(pl.String)
    )
    _corrupt(frame, 6, close="-1").write_csv(tmp_path / "e.csv")
    with pytest.raises(DataError, match=r"e\.csv row 7: non_positive_price \(1 bad rows"):
        ingest_files([tmp_path / "e.csv"], tmp_path / "o.feather", cfg(on_bad_rows="error"))
    assert not (tmp_path / "o.feather").exists()


def test_output_may_not_overwrite_any_input(tmp_path: Path) -> None:
    minute_bars("2024-01-02", "2024-01-02").write_ipc(tmp_path / "i.feather")
    with pytest.raises(DataError, match=r"i\.feather: ingest would overwrite this input file"):
        ingest_files([tmp_path / "i.feather"], tmp_path / "i.feather")
    # A sidecar of the output (here the quarantine file) is an output too.
    as_vendor(minute_bars("2024-01-02", "2024-01-02")).write_csv(tmp_path / "o.quarantine.csv")
    with pytest.raises(DataError, match=r"o\.quarantine\.csv: ingest would overwrite this input"):
        ingest_files([tmp_path / "o.quarantine.csv"], tmp_path / "o.feather")


def test_output_must_be_a_feather_file(tmp_path: Path) -> None:
    minute_bars("2024-01-02", "2024-01-02").write_ipc(tmp_path / "i.feather")
    with pytest.raises(DataError, match=r"out\.csv: the output is a feather file"):
        ingest_files([tmp_path / "i.feather"], tmp_path / "out.csv")


def test_relative_output_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    minute_bars("2024-01-02", "2024-01-02").write_ipc(tmp_path / "i.feather")
    monkeypatch.chdir(tmp_path)
    res = ingest_files(["i.feather"], "spy/bars.feather")
    assert res.output == tmp_path / "spy" / "bars.feather"
    assert (tmp_path / "spy" / "bars.gx.html").is_file()


def test_stale_outputs_of_an_earlier_run_are_removed(tmp_path: Path) -> None:
    frame = as_vendor(minute_bars("2024-01-02", "2024-01-02")).with_columns(
        pl.all().cast(pl.String)
    )
    _corrupt(frame, 3, close="abc").write_csv(tmp_path / "a.csv")
    out = tmp_path / "o.feather"
    ingest_files([tmp_path / "a.csv"], out, cfg(max_quarantine_fraction=0.05))
    assert (tmp_path / "o.quarantine.csv").is_file()
    frame.write_csv(tmp_path / "a.csv")  # fixed at the source
    res = ingest_files([tmp_path / "a.csv"], out)
    assert res.report["quarantine"] is None
    assert not (tmp_path / "o.quarantine.csv").exists()
    # A failing run leaves no bars of an earlier run beside its failed report.
    _corrupt(frame, 3, close="-1").write_csv(tmp_path / "a.csv")
    with pytest.raises(QuarantineLimitError):
        ingest_files([tmp_path / "a.csv"], out, cfg(max_quarantine_fraction=0.0))
    assert not out.exists() and not (tmp_path / "o.gx.html").exists()
    assert json.loads((tmp_path / "o.ingest.json").read_text())["status"] == "failed"


def test_outputs_are_readable_by_others(tmp_path: Path) -> None:
    minute_bars("2024-01-02", "2024-01-02").write_ipc(tmp_path / "i.feather")
    res = ingest_files([tmp_path / "i.feather"], tmp_path / "o.feather")
    for path in (res.output, res.outputs.report, res.outputs.gx_html, res.outputs.config):
        assert path.stat().st_mode & 0o044 == 0o044, path  # not mkstemp's 0600


def test_quarantine_keeps_every_column_as_given(tmp_path: Path) -> None:
    bars = (
        minute_bars("2024-01-02", "2024-01-02")
        .select(
            Time=pl.col("timestamp").dt.epoch("ms"),
            Open="open",
            High="high",
            Low="low",
            Close="close",
            Volume="volume",
            Note=pl.lit("vendor-x"),
        )
        .with_columns(
            pl.when(pl.int_range(pl.len()) == 5)
            .then(-1.0)
            .otherwise(pl.col("Close"))
            .alias("Close")
        )
    )
    bars.write_parquet(tmp_path / "n.parquet")
    res = ingest_files([tmp_path / "n.parquet"], tmp_path / "o.feather", cfg(symbol="QQQ"))
    q = pl.read_csv(res.outputs.quarantine, infer_schema=False)
    assert q.columns == [
        "source_file",
        "source_row",
        "reason",
        "Time",
        "Open",
        "High",
        "Low",
        "Close",
        "Volume",
        "Note",
    ]
    assert q.row(0, named=True)["Note"] == "vendor-x" and q.row(0, named=True)["Close"] == "-1.0"


def test_compact_timestamps_are_not_mistaken_for_epochs(tmp_path: Path) -> None:
    bars = minute_bars("2024-01-02", "2024-01-02")
    compact = bars.with_columns(pl.col("timestamp").dt.strftime("%Y%m%d%H%M%S"))
    compact.write_csv(tmp_path / "c.csv")
    res = ingest_files([tmp_path / "c.csv"], tmp_path / "o.feather", cfg(tz="UTC"))
    assert pl.read_ipc(res.output).equals(bars)
    as_int = bars.with_columns(pl.col("timestamp").dt.strftime("%Y%m%d%H%M%S").cast(pl.Int64))
    as_int.write_parquet(tmp_path / "c.parquet")
    with pytest.raises(
        DataError,
        match=r"c\.parquet: column 'timestamp' holds integers read as epoch ms outside 1970-2100",
    ):
        ingest_files([tmp_path / "c.parquet"], tmp_path / "o2.feather")


def test_dst_gap_hours_are_dropped_not_quarantined(tmp_path: Path) -> None:
    # Naive New York minutes around the clock over the spring-forward night: 02:00-02:59
    # on 2024-03-10 does not exist. Those rows are night hours, not bad data.
    stamps = pl.datetime_range(
        pl.datetime(2024, 3, 9), pl.datetime(2024, 3, 12), "1m", closed="left", eager=True
    )
    frame = pl.DataFrame(
        {
            "timestamp": stamps.dt.strftime("%Y-%m-%d %H:%M:%S"),
            "symbol": "QQQ",
            "open": 1.0,
            "high": 1.0,
            "low": 1.0,
            "close": 1.0,
            "volume": 1.0,
        }
    )
    frame.write_csv(tmp_path / "n.csv")
    res = ingest_files(
        [tmp_path / "n.csv"],
        tmp_path / "o.feather",
        cfg(tz="America/New_York", max_quarantine_fraction=0.0),
    )
    assert res.report["rows_quarantined"] == 0
    assert res.report["rows_kept"] == 390  # the one session, Monday 2024-03-11
    assert accounting(res.report) == frame.height


def test_provenance_sidecar_reports_derived_symbols(tmp_path: Path) -> None:
    bars = pl.concat(
        [minute_bars("2024-01-02", "2024-01-02"), minute_bars("2024-01-02", "2024-01-02", "TQQQ")]
    )
    bars.write_ipc(tmp_path / "b.feather")
    derived = {"TQQQ": {"underlying": "QQQ"}, "SQQQ": {}}
    write_provenance(tmp_path / "b.feather", {"source": "test", "derived_symbols": derived})
    res = ingest_files([tmp_path / "b.feather"], tmp_path / "o.feather")
    assert res.report["derived_symbols"] == ["TQQQ"]  # SQQQ is not in the data
    assert res.report["inputs"][0]["provenance"]["source"] == "test"
    # The output carries it on, bound to the output's bytes ...
    out_prov = json.loads((tmp_path / "o.provenance.json").read_text())
    assert out_prov["derived_symbols"] == {"TQQQ": {"underlying": "QQQ"}}
    assert out_prov["bars_sha256"] == sha256_file(tmp_path / "o.feather")
    # ... and a sidecar left beside bytes it does not describe is ignored (and not carried).
    minute_bars("2024-01-02", "2024-01-02", "TQQQ", seed=5).write_ipc(tmp_path / "b.feather")
    res = ingest_files([tmp_path / "b.feather"], tmp_path / "o.feather")
    assert res.report["derived_symbols"] == []
    assert res.report["inputs"][0]["provenance"]["stale"] is True
    assert not (tmp_path / "o.provenance.json").exists()


def test_outputs_beside_the_bars_and_no_temp_files(tmp_path: Path) -> None:
    minute_bars("2024-01-02", "2024-01-03").write_ipc(tmp_path / "in.feather")
    res = ingest_files([tmp_path / "in.feather"], tmp_path / "out" / "bars.feather")
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == [
        "bars.config.yaml",
        "bars.feather",
        "bars.gx.html",
        "bars.gx.json",
        "bars.ingest.json",
    ]
    gx = json.loads((tmp_path / "out" / "bars.gx.json").read_text())
    assert gx["success"] is True
    assert res.report["output_sha256"] == sha256_file(tmp_path / "out" / "bars.feather")
    assert res.report["contract"]["pandera"] == "passed"


# --------------------------------------------------------------------------- accounting property


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    n_ext=st.integers(0, 40),
    bad=st.dictionaries(st.integers(0, 389), st.sampled_from(sorted(BAD_ROWS)), max_size=8),
    bad_ext=st.integers(0, 5),
    n_dup=st.integers(0, 10),
    overlap=st.integers(1, 60),
    seed=st.integers(0, 1000),
)
# found in CI: a two-row file with one bad timestamp (half of it) failed as unparseable
@example(n_ext=0, bad={388: "bad_timestamp"}, bad_ext=0, n_dup=0, overlap=2, seed=0)
# found in CI: the second file's one row has a bad timestamp (no format parses half of it)
@example(n_ext=0, bad={389: "bad_timestamp"}, bad_ext=0, n_dup=0, overlap=1, seed=0)
def test_every_row_lands_in_exactly_one_bucket(
    tmp_path: Path,
    n_ext: int,
    bad: dict[int, str],
    bad_ext: int,
    n_dup: int,
    overlap: int,
    seed: int,
) -> None:
    """Bad rows anywhere, bad extended-hours rows, duplicates inside a file and across two files."""
    base = minute_bars("2024-01-02", "2024-01-02", seed=seed)
    ext = base.head(n_ext).with_columns(pl.col("timestamp") - pl.duration(hours=2))
    dups = base.slice(300, n_dup)
    frame = as_vendor(pl.concat([base, ext, dups])).with_columns(pl.all().cast(pl.String))
    for row, reason in bad.items():
        frame = _corrupt(frame, row, **BAD_ROWS[reason])
    # A bad value in an extended-hours row is dropped with the row, not quarantined.
    for k in range(min(bad_ext, n_ext)):
        frame = _corrupt(frame, 390 + k, close="1e9")
    path = tmp_path / f"a{seed}.csv"
    frame.write_csv(path)
    # A second file repeating the last `overlap` regular bars (as vendors' monthly files do).
    second = tmp_path / f"b{seed}.csv"
    frame.slice(390 - overlap, overlap).write_csv(second)
    in_second = range(390 - overlap, 390)
    bad_times = sum(1 for r in in_second if bad.get(r) == "bad_timestamp")
    if 2 * (overlap - bad_times) < overlap:
        # a file whose timestamps mostly parse in no format has no format to quarantine
        # against: the file is refused, naming it (sentio.data.timestamps._pick_format)
        with pytest.raises(DataError, match=rf"b{seed}\.csv: cannot parse column 'timestamp'"):
            ingest_files([path, second], tmp_path / f"o{seed}.feather", cfg())
        return
    res = ingest_files(
        [path, second], tmp_path / f"o{seed}.feather", cfg(max_quarantine_fraction=1.0)
    )
    rep = res.report
    assert accounting(rep) == rep["rows_read"] == frame.height + overlap
    assert rep["rows_dropped_outside_regular_hours"] == n_ext
    # Rows 300.. are repeated within the first file from the CLEAN bars: where the original
    # is bad, its clean copy is kept in its place, else the copy is an exact duplicate.
    # Rows 390-overlap.. are repeated in the second file AFTER corruption: a bad row's
    # copy is quarantined too, a good row's copy is an exact duplicate.
    in_file = range(300, 300 + n_dup)
    expected_q = len(bad) + sum(1 for r in in_second if r in bad)
    expected_dups = sum(1 for r in in_file if r not in bad) + sum(
        1 for r in in_second if r not in bad
    )
    assert rep["rows_quarantined"] == sum(rep["quarantined_by_reason"].values()) == expected_q
    assert set(rep["quarantined_by_reason"]) <= set(REASONS)
    assert rep["rows_dropped_duplicates"] == expected_dups
    assert rep["rows_kept"] == 390 - len(bad) + sum(1 for r in in_file if r in bad)
    if expected_q:
        assert pl.read_csv(res.outputs.quarantine).height == expected_q


def test_every_row_bad_is_a_quarantine_error_not_a_crash(tmp_path: Path) -> None:
    frame = as_vendor(minute_bars("2024-01-02", "2024-01-02")).with_columns(close=pl.lit("n/a"))
    frame.write_csv(tmp_path / "all.csv")
    with pytest.raises(
        QuarantineLimitError,
        match=r"all\.csv: 390 of 390 rows rejected, too few valid bars left to read: non_numeric_value 390; e\.g\. .*all\.csv row 1",
    ):
        ingest_files([tmp_path / "all.csv"], tmp_path / "o.feather")


def test_duplicate_header_names_are_an_error(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text(
        "timestamp,open,high,low,close,close,volume\n2024-01-02T14:30:00+00:00,1,1,1,1,2,5\n"
    )
    with pytest.raises(DataError, match=r"d\.csv: the header names column 'close' more than once"):
        ingest_files([tmp_path / "d.csv"], tmp_path / "o.feather", cfg(symbol="X"))


def test_daily_and_intraday_files_are_not_mixed(tmp_path: Path) -> None:
    minute_bars("2024-01-02", "2024-01-02").write_ipc(tmp_path / "m.feather")
    (tmp_path / "d.csv").write_text(
        "date,symbol,open,high,low,close,volume\n2024-01-03,QQQ,1,1,1,1,1\n2024-01-04,QQQ,1,1,1,1,1\n"
    )
    with pytest.raises(
        DataError, match=r"d\.csv: daily bars \(dates only\) mixed with intraday files"
    ):
        ingest_files([tmp_path / "m.feather", tmp_path / "d.csv"], tmp_path / "o.feather")


def test_symbols_are_one_series_whatever_their_case_or_padding(tmp_path: Path) -> None:
    bars = minute_bars("2024-01-02", "2024-01-03")
    messy = bars.with_columns(
        symbol=pl.when(pl.col("timestamp").dt.day() == 2)
        .then(pl.lit("qqq"))
        .otherwise(pl.lit(" QQQ "))
    )
    messy.write_ipc(tmp_path / "m.feather")
    res = ingest_files([tmp_path / "m.feather"], tmp_path / "o.feather")
    assert list(res.report["symbols"]) == ["QQQ"]
    assert res.report["inputs"][0]["symbols_normalised"] == 780
    assert pl.read_ipc(res.output).equals(bars)


def test_headerless_single_letter_ticker_with_columns(tmp_path: Path) -> None:
    bars = minute_bars("2024-01-02", "2024-01-02", symbol="C")
    as_vendor(bars).write_csv(tmp_path / "c.csv", include_header=False)
    names = ["timestamp", "symbol", "open", "high", "low", "close", "volume"]
    res = ingest_files([tmp_path / "c.csv"], tmp_path / "o.feather", cfg(columns=names))
    assert pl.read_ipc(res.output).equals(bars)


def test_gzip_compressed_tab_separated_csv(tmp_path: Path) -> None:
    import gzip

    bars = minute_bars("2024-01-02", "2024-01-02")
    text = as_vendor(bars).write_csv(separator="\t")
    (tmp_path / "g.csv").write_bytes(gzip.compress(text.encode()))
    res = ingest_files([tmp_path / "g.csv"], tmp_path / "o.feather")
    assert pl.read_ipc(res.output).equals(bars)
    assert res.report["inputs"][0]["delimiter"] == "\t"


@pytest.mark.parametrize(
    ("name", "separator"),
    [("g.csv.gz", ","), ("g.tsv.gz", "\t"), ("g.txt.gz", ";"), ("g.gz", ","), ("G.CSV.GZ", ",")],
)
def test_gzip_files_named_gz_read_their_inner_format(
    tmp_path: Path, name: str, separator: str
) -> None:
    import gzip

    bars = minute_bars("2024-01-02", "2024-01-02")
    text = as_vendor(bars).write_csv(separator=separator)
    (tmp_path / name).write_bytes(gzip.compress(text.encode()))
    res = ingest_files([tmp_path / name], tmp_path / "o.feather")
    assert pl.read_ipc(res.output).equals(bars)
    info = res.report["inputs"][0]
    assert info["format"] == "csv" and info["delimiter"] == separator


def test_gzip_feather_and_parquet_by_name_or_by_content(tmp_path: Path) -> None:
    import gzip

    bars = minute_bars("2024-01-02", "2024-01-02")
    bars.write_ipc(tmp_path / "plain.feather")
    bars.write_parquet(tmp_path / "plain.parquet")
    (tmp_path / "b.feather.gz").write_bytes(
        gzip.compress((tmp_path / "plain.feather").read_bytes())
    )
    # gzip content behind a name that does not say so
    (tmp_path / "c.parquet").write_bytes(gzip.compress((tmp_path / "plain.parquet").read_bytes()))
    for name in ("b.feather.gz", "c.parquet"):
        res = ingest_files([tmp_path / name], tmp_path / f"o-{name}.feather")
        assert pl.read_ipc(res.output).equals(bars), name


def test_truncated_or_unsupported_gzip_is_a_clear_error(tmp_path: Path) -> None:
    import gzip

    text = as_vendor(minute_bars("2024-01-02", "2024-01-02")).write_csv()
    data = gzip.compress(text.encode())
    (tmp_path / "t.csv.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"t\.csv\.gz: cannot read as gzip-compressed CSV"):
        ingest_files([tmp_path / "t.csv.gz"], tmp_path / "o.feather")
    (tmp_path / "n.json.gz").write_bytes(data)
    with pytest.raises(DataError, match=r"n\.json\.gz: unsupported file type '\.json\.gz'"):
        ingest_files([tmp_path / "n.json.gz"], tmp_path / "o.feather")


def test_is_supported_and_folder_listing_see_gzip_csv(tmp_path: Path) -> None:
    import gzip

    from sentio.data.readers import format_suffix, is_supported
    from sentio.stages import resolve_inputs

    assert format_suffix("a.csv.gz") == (".csv", True)
    assert format_suffix("a.gz") == (".csv", True)
    assert format_suffix("a.CSV") == (".csv", False)
    assert [is_supported(n) for n in ("a.csv.gz", "a.tsv.gz", "a.gz", "a.feather")] == [True] * 4
    assert [is_supported(n) for n in ("a.json.gz", "a.tar.gz", ".gz", "a.xlsx")] == [False] * 4

    day1 = minute_bars("2024-01-02", "2024-01-02")
    day2 = minute_bars("2024-01-03", "2024-01-03", seed=1)
    (tmp_path / "1.csv.gz").write_bytes(gzip.compress(as_vendor(day1).write_csv().encode()))
    day2.write_ipc(tmp_path / "2.feather")
    (tmp_path / "notes.json.gz").write_bytes(b"{}")
    files = resolve_inputs(tmp_path)
    assert [f.name for f in files] == ["1.csv.gz", "2.feather"]
    res = ingest_files(files, tmp_path / "out" / "o.feather")
    assert pl.read_ipc(res.output).equals(pl.concat([day1, day2]))


def test_one_bad_epoch_value_is_quarantined_not_the_whole_column(tmp_path: Path) -> None:
    bars = minute_bars("2024-01-02", "2024-01-02")
    t = bars["timestamp"].dt.epoch("ms").to_list()
    t[7] *= 10**6  # one value in nanoseconds by mistake
    bars.with_columns(timestamp=pl.Series(t)).write_parquet(tmp_path / "e.parquet")
    res = ingest_files(
        [tmp_path / "e.parquet"], tmp_path / "o.feather", cfg(max_quarantine_fraction=0.01)
    )
    assert res.report["quarantined_by_reason"] == {"bad_timestamp": 1}
    assert res.report["rows_kept"] == 389


def test_all_rows_bad_writes_quarantine_and_failed_report(tmp_path: Path) -> None:
    minute_bars("2024-01-02", "2024-01-02").write_ipc(tmp_path / "good.feather")
    out = tmp_path / "o.feather"
    ingest_files([tmp_path / "good.feather"], out)
    bad = as_vendor(minute_bars("2024-01-02", "2024-01-02")).with_columns(close=pl.lit("1.234,5"))
    bad.write_csv(tmp_path / "eu.csv")
    with pytest.raises(QuarantineLimitError, match="390 of 390 rows rejected"):
        ingest_files([tmp_path / "eu.csv"], out)
    assert not out.exists()
    assert json.loads((tmp_path / "o.ingest.json").read_text())["status"] == "failed"
    q = pl.read_csv(tmp_path / "o.quarantine.csv", infer_schema=False)
    assert q.height == 390 and q["close"].unique().to_list() == ["1.234,5"]


def test_output_that_is_a_folder(tmp_path: Path) -> None:
    minute_bars("2024-01-02", "2024-01-02").write_ipc(tmp_path / "i.feather")
    (tmp_path / "d.feather").mkdir()
    with pytest.raises(DataError, match=r"d\.feather: is a folder"):
        ingest_files([tmp_path / "i.feather"], tmp_path / "d.feather")
