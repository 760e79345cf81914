"""Tests of the canonical-bars data contracts (pandera model and GX suite)."""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data_contracts import (
    BAR_CHECKS,
    BARS_DTYPES,
    ContractViolation,
    bars_suite,
    run_gx_validation,
    validate_bars,
)
from sentio.data.schema import CANONICAL_SCHEMA

START = datetime(2024, 3, 4, 14, 30, tzinfo=UTC)


def make_bars(symbols: tuple[str, ...] = ("QQQ", "TQQQ"), n: int = 8) -> pl.DataFrame:
    """A small valid canonical frame; every symbol has the same timestamps."""
    rows = []
    for s, symbol in enumerate(symbols):
        for i in range(n):
            o = 100.0 + s * 10 + i
            c = o + (0.5 if i % 2 else -0.5)
            rows.append(
                {
                    "timestamp": START + timedelta(minutes=i),
                    "symbol": symbol,
                    "open": o,
                    "high": max(o, c) + 0.25,
                    "low": min(o, c) - 0.25,
                    "close": c,
                    "volume": 1000.0 + i,
                }
            )
    return pl.DataFrame(rows, schema=CANONICAL_SCHEMA)


def set_value(frame: pl.DataFrame, row: int, column: str, value: object) -> pl.DataFrame:
    """``frame`` with one cell replaced, dtype kept."""
    dtype = frame.schema[column]
    return frame.with_columns(
        pl.when(pl.int_range(pl.len()) == row)
        .then(pl.lit(value, dtype=dtype))
        .otherwise(pl.col(column))
        .alias(column)
    )


def violation(frame: pl.DataFrame) -> ContractViolation:
    """The violation ``validate_bars`` raises for ``frame`` (failing if it raises none)."""
    with pytest.raises(ContractViolation) as info:
        validate_bars(frame, "bars.feather")
    return info.value


# --------------------------------------------------------------------------------------
# pandera
# --------------------------------------------------------------------------------------


def test_contract_dtypes_are_the_canonical_bar_format() -> None:
    # Written out independently of both modules: the format later stages rely on.
    assert {
        "timestamp": pl.Datetime("us", "UTC"),
        "symbol": pl.String(),
        "open": pl.Float64(),
        "high": pl.Float64(),
        "low": pl.Float64(),
        "close": pl.Float64(),
        "volume": pl.Float64(),
    } == BARS_DTYPES


def test_valid_frame_passes_and_is_returned() -> None:
    bars = make_bars()
    assert validate_bars(bars, "bars.feather") is bars


def test_same_timestamp_for_two_symbols_is_fine() -> None:
    bars = make_bars(("QQQ", "SQQQ", "TQQQ"), n=3)
    assert bars.filter(pl.col("timestamp") == START).height == 3
    validate_bars(bars, "x")


def test_empty_canonical_frame_passes() -> None:
    validate_bars(pl.DataFrame(schema=CANONICAL_SCHEMA), "empty")


Case = Callable[[pl.DataFrame], pl.DataFrame]

MALFORMED: dict[str, tuple[Case, str, str | None]] = {
    "string close": (
        lambda f: f.with_columns(pl.col("close").cast(pl.String)),
        "column_dtype",
        "close",
    ),
    "naive timestamp": (
        lambda f: f.with_columns(pl.col("timestamp").dt.replace_time_zone(None)),
        "column_dtype",
        "timestamp",
    ),
    "new york timestamp": (
        lambda f: f.with_columns(pl.col("timestamp").dt.convert_time_zone("America/New_York")),
        "column_dtype",
        "timestamp",
    ),
    "nanosecond timestamp": (
        lambda f: f.with_columns(pl.col("timestamp").dt.cast_time_unit("ns")),
        "column_dtype",
        "timestamp",
    ),
    "float32 volume": (
        lambda f: f.with_columns(pl.col("volume").cast(pl.Float32)),
        "column_dtype",
        "volume",
    ),
    "missing column": (lambda f: f.drop("volume"), "column_missing", "volume"),
    "extra column": (lambda f: f.with_columns(vwap=pl.col("close")), "column_unexpected", "vwap"),
    "columns out of order": (
        lambda f: f.select("symbol", "timestamp", "open", "high", "low", "close", "volume"),
        "column_order",
        None,
    ),
    "null close": (lambda f: set_value(f, 3, "close", None), "not_null", "close"),
    "NaN low": (lambda f: set_value(f, 3, "low", float("nan")), "price_finite", "low"),
    "inf high": (lambda f: set_value(f, 3, "high", float("inf")), "price_finite", "high"),
    "NaN volume": (lambda f: set_value(f, 3, "volume", float("nan")), "volume_finite", "volume"),
    "zero low": (lambda f: set_value(f, 3, "low", 0.0), "price_positive", "low"),
    "negative low": (lambda f: set_value(f, 3, "low", -1.0), "price_positive", "low"),
    "negative volume": (
        lambda f: set_value(f, 3, "volume", -5.0),
        "volume_non_negative",
        "volume",
    ),
    "high below low": (
        lambda f: f.with_columns(
            pl.when(pl.int_range(pl.len()) == 3)
            .then(pl.col("low") - 1.0)
            .otherwise(pl.col("high"))
            .alias("high")
        ),
        "ohlc_consistent",
        None,
    ),
    "close above high": (
        lambda f: f.with_columns(
            pl.when(pl.int_range(pl.len()) == 3)
            .then(pl.col("high") + 1.0)
            .otherwise(pl.col("close"))
            .alias("close")
        ),
        "ohlc_consistent",
        None,
    ),
    "open below low": (
        lambda f: f.with_columns(
            pl.when(pl.int_range(pl.len()) == 3)
            .then(pl.col("low") - 0.01)
            .otherwise(pl.col("open"))
            .alias("open")
        ),
        "ohlc_consistent",
        None,
    ),
    "duplicate timestamp": (
        lambda f: set_value(f, 3, "timestamp", START + timedelta(minutes=2)),
        "timestamps_unique_per_symbol",
        None,
    ),
    "unsorted timestamps": (
        lambda f: pl.concat([f[:2], f[3:4], f[2:3], f[4:]]),
        "timestamps_increasing_per_symbol",
        None,
    ),
    "unsorted symbols": (
        lambda f: f.sort("symbol", "timestamp", descending=[True, False]),
        "sorted_by_symbol",
        None,
    ),
    "empty symbol": (lambda f: set_value(f, 3, "symbol", ""), "symbol_non_empty", "symbol"),
    "blank symbol": (lambda f: set_value(f, 3, "symbol", "  "), "symbol_non_empty", "symbol"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_frame_is_caught_by_the_named_check(case: str) -> None:
    mutate, check, column = MALFORMED[case]
    error = violation(mutate(make_bars()))
    assert check in BAR_CHECKS
    assert (check, column) in [(f["check"], f["column"]) for f in error.failures], error.failures
    message = str(error)
    assert "\n" not in message
    assert message.startswith("bars.feather: contract 'canonical bars' violated: ")


def test_nan_is_not_reported_as_null_or_ohlc() -> None:
    error = violation(set_value(make_bars(), 3, "close", float("nan")))
    assert error.checks == ["price_finite"]
    (failure,) = error.failures
    assert failure["failing_rows"] == 1
    assert failure["examples"][0]["row"] == 3


def test_unsorted_timestamps_are_not_duplicates() -> None:
    bars = make_bars()
    error = violation(pl.concat([bars[:2], bars[3:4], bars[2:3], bars[4:]]))
    assert error.checks == ["timestamps_increasing_per_symbol"]
    assert error.failures[0]["examples"][0]["row"] == 3


def test_null_timestamp_does_not_hide_a_duplicate() -> None:
    bars = make_bars(("QQQ",), n=3)
    bad = set_value(set_value(bars, 1, "timestamp", None), 2, "timestamp", START)
    error = violation(bad)
    assert {"not_null", "timestamps_unique_per_symbol"} <= set(error.checks)
    unique = next(f for f in error.failures if f["check"] == "timestamps_unique_per_symbol")
    assert [e["row"] for e in unique["examples"]] == [0, 2]


def test_failure_carries_counts_rows_and_values() -> None:
    bars = make_bars()
    bad = set_value(set_value(bars, 2, "close", -1.0), 9, "close", 0.0)
    error = violation(bad)
    positive = next(f for f in error.failures if f["check"] == "price_positive")
    assert positive["column"] == "close"
    assert positive["failing_rows"] == 2
    assert positive["examples"] == [{"row": 2, "value": -1.0}, {"row": 9, "value": 0.0}]
    assert "price_positive failed on 2 rows of column 'close' (e.g. rows 2 = -1.0" in str(error)


def test_dtype_message_names_the_column_and_both_dtypes() -> None:
    error = violation(make_bars().with_columns(pl.col("close").cast(pl.String)))
    assert "column 'close' wrong dtype String (expected Float64)" in str(error)
    # is_finite cannot run on a string column: that consequence is not reported again.
    assert "check_error" not in error.checks


def test_all_failures_are_collected() -> None:
    bars = make_bars()
    bad = (
        set_value(set_value(bars, 1, "volume", -1.0), 4, "open", 0.0)
        .with_columns(pl.col("close").cast(pl.String))
        .drop("symbol")
    )
    error = violation(bad)
    assert {"column_missing", "column_dtype", "volume_non_negative", "price_positive"} <= set(
        error.checks
    )
    message = str(error)
    assert "column 'symbol' missing" in message
    assert "volume_non_negative failed on 1 row of column 'volume' (e.g. row 1 = -1.0)" in message


def test_violation_survives_pickling() -> None:
    error = violation(set_value(make_bars(), 0, "volume", -1.0))
    clone = pickle.loads(pickle.dumps(error))
    assert str(clone) == str(error)
    assert clone.failures == error.failures
    assert clone.source == "bars.feather"


def test_non_polars_input_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="polars.DataFrame"):
        validate_bars(make_bars().lazy(), "x")  # type: ignore[arg-type]


@st.composite
def valid_bars(draw: st.DrawFn) -> pl.DataFrame:
    """Random valid canonical bars: 1-3 symbols, strictly increasing timestamps each."""
    symbols = sorted(draw(st.sets(st.sampled_from(["QQQ", "SQQQ", "TQQQ"]), min_size=1)))
    price = st.floats(min_value=0.01, max_value=1e5, allow_nan=False, allow_infinity=False)
    frac = st.floats(min_value=0.0, max_value=0.9)
    rows = []
    for symbol in symbols:
        minutes = sorted(draw(st.sets(st.integers(0, 10_000), min_size=1, max_size=12)))
        for minute in minutes:
            o, c = draw(price), draw(price)
            rows.append(
                {
                    "timestamp": START + timedelta(minutes=minute),
                    "symbol": symbol,
                    "open": o,
                    "high": max(o, c) * (1.0 + draw(frac)),
                    "low": min(o, c) * (1.0 - draw(frac)),
                    "close": c,
                    "volume": draw(st.floats(min_value=0.0, max_value=1e9)),
                }
            )
    return pl.DataFrame(rows, schema=CANONICAL_SCHEMA)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bars=valid_bars(), data=st.data())
def test_property_random_valid_bars_pass_and_high_below_low_fails(
    bars: pl.DataFrame, data: st.DataObject
) -> None:
    validate_bars(bars, "random")
    row = data.draw(st.integers(0, bars.height - 1))
    bad = bars.with_columns(
        pl.when(pl.int_range(pl.len()) == row)
        .then(pl.col("low") * 0.5)
        .otherwise(pl.col("high"))
        .alias("high")
    )
    error = violation(bad)
    assert error.checks == ["ohlc_consistent"]
    assert error.failures[0]["failing_rows"] == 1
    assert error.failures[0]["examples"][0]["row"] == row


# --------------------------------------------------------------------------------------
# Great Expectations
# --------------------------------------------------------------------------------------


@pytest.fixture
def isolated_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory, to prove GX writes nothing there."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


def test_bars_suite_states_the_contract() -> None:
    types = {e.expectation_type for e in bars_suite().expectations}
    assert {
        "expect_table_columns_to_match_ordered_list",
        "expect_table_row_count_to_be_between",
        "expect_column_values_to_not_be_null",
        "expect_column_values_to_be_between",
        "expect_column_pair_values_a_to_be_greater_than_b",
        "expect_compound_columns_to_be_unique",
    } <= types
    assert "expect_column_values_to_be_in_set" not in types
    with_set = {e.expectation_type for e in bars_suite(["QQQ"]).expectations}
    assert "expect_column_values_to_be_in_set" in with_set


def test_gx_valid_frame_passes_and_writes_only_into_out_dir(
    tmp_path: Path, isolated_cwd: Path
) -> None:
    out = tmp_path / "out"
    report = run_gx_validation(make_bars(), out, "bars", symbols=["QQQ", "TQQQ"])
    assert report.success, report.failed
    assert report.failed == []
    assert report.evaluated == report.successful > 0
    assert sorted(os.listdir(out)) == ["bars.gx.html", "bars.gx.json"]
    assert report.json_path == out / "bars.gx.json"
    assert report.html_path == out / "bars.gx.html"
    assert json.loads(report.json_path.read_text())["success"] is True
    html = report.html_path.read_text()
    assert "<html" in html and "canonical_bars" in html
    assert 'href="../' not in html  # no links into the deleted temporary site
    assert Path.cwd() == isolated_cwd
    assert os.listdir(isolated_cwd) == []


def test_gx_reports_failures_by_expectation_and_column(tmp_path: Path, isolated_cwd: Path) -> None:
    bars = make_bars()
    bad = bars.with_columns(
        pl.when(pl.int_range(pl.len()) == 3)
        .then(pl.col("low") - 1.0)
        .otherwise(pl.col("high"))
        .alias("high"),
        pl.when(pl.int_range(pl.len()) == 5)
        .then(float("inf"))
        .otherwise(pl.col("volume"))
        .alias("volume"),
    )
    bad = pl.concat([bad, bad[:1]])
    report = run_gx_validation(bad, tmp_path, "bad", symbols=["QQQ"])
    assert not report.success
    assert "expect_column_pair_values_a_to_be_greater_than_b(high, low)" in report.failed
    assert "expect_compound_columns_to_be_unique(symbol, timestamp)" in report.failed
    assert "expect_column_values_to_be_in_set(symbol)" in report.failed
    assert "expect_column_values_to_be_between(volume)" in report.failed
    assert report.successful == report.evaluated - len(report.failed)
    # Standard JSON (no bare Infinity) with GX's own success flag.
    payload = json.loads(report.json_path.read_text(), parse_constant=pytest.fail)
    assert payload["success"] is False
    assert report.html_path.stat().st_size > 0
    assert os.listdir(isolated_cwd) == []


def test_gx_structural_problems_and_empty_frame(tmp_path: Path, isolated_cwd: Path) -> None:
    wrong = make_bars().drop("volume").with_columns(pl.col("close").cast(pl.String))
    report = run_gx_validation(wrong, tmp_path, "wrong")
    assert not report.success
    assert "expect_table_columns_to_match_ordered_list" in report.failed
    assert "expect_column_values_to_be_of_type(close)" in report.failed

    empty = run_gx_validation(pl.DataFrame(schema=CANONICAL_SCHEMA), tmp_path, "empty")
    assert not empty.success
    assert "expect_table_row_count_to_be_between" in empty.failed
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "cwd") == [
        "empty.gx.html",
        "empty.gx.json",
        "wrong.gx.html",
        "wrong.gx.json",
    ]
    assert os.listdir(isolated_cwd) == []


def test_gx_rejects_a_path_as_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="plain file name"):
        run_gx_validation(make_bars(), tmp_path, "../escape")
