"""The pandera contract for canonical one-minute bars.

Canonical bars are long format, one row per (symbol, bar): ``timestamp`` is the bar's
START as ``Datetime("us", "UTC")``, ``symbol`` a non-empty string, ``open``, ``high``,
``low``, ``close`` and ``volume`` are ``Float64``; the frame is sorted by ``symbol``
then ``timestamp`` and a symbol never has two bars with the same timestamp.

Every check is a vectorised polars expression (no row-wise Python) with a stable name,
so callers and tests can key on it:

======================================  =================================================
check                                   rows that fail
======================================  =================================================
``column_missing``                      (structural) a canonical column is absent
``column_unexpected``                   (structural) a column outside the contract
``column_order``                        (structural) columns not in canonical order
``column_dtype``                        (structural) wrong dtype (e.g. naive timestamp)
``not_null``                            a null in any column
``price_finite``                        NaN or +-inf in ``open``/``high``/``low``/``close``
``price_positive``                      a price <= 0
``volume_finite``                       NaN or +-inf volume
``volume_non_negative``                 a negative volume
``symbol_non_empty``                    an empty or all-blank symbol
``ohlc_consistent``                     ``high < max(open, close)``, ``low > min(open,
                                        close)`` or ``high < low``
``sorted_by_symbol``                    a symbol smaller than the one on the row before
``timestamps_unique_per_symbol``        a (symbol, timestamp) pair that occurs twice
``timestamps_increasing_per_symbol``    a timestamp not after the previous bar's of the
                                        same symbol
======================================  =================================================

Rows with a non-finite price are reported by ``price_finite`` only, not again by
``ohlc_consistent``.

``data_contracts`` imports only pandera, great_expectations, polars and the standard
library; the dtypes here mirror ``sentio.data.schema.CANONICAL_SCHEMA`` (a test keeps the
two in step).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Annotated, Any

import pandera.polars as pa
import polars as pl
from pandera.config import ValidationDepth, config_context
from pandera.errors import SchemaError, SchemaErrorReason, SchemaErrors

from data_contracts.errors import ContractViolation

__all__ = [
    "BARS_CONTRACT",
    "BARS_DTYPES",
    "BAR_CHECKS",
    "BarsModel",
    "validate_bars",
]

BARS_CONTRACT = "canonical bars"
"""The human-readable name of the contract, used in messages."""

BARS_DTYPES: dict[str, pl.DataType] = {
    "timestamp": pl.Datetime("us", "UTC"),
    "symbol": pl.String(),
    "open": pl.Float64(),
    "high": pl.Float64(),
    "low": pl.Float64(),
    "close": pl.Float64(),
    "volume": pl.Float64(),
}
"""The canonical columns, in order, with their exact dtypes."""

PRICE_COLUMNS: tuple[str, ...] = ("open", "high", "low", "close")
MAX_EXAMPLES = 3
"""How many example rows each failure carries. pandera keeps no more failure cases than
this per check either: turning every failing row into a Python object costs seconds on a
million-row frame, and the counts are computed separately in one vectorised pass."""

# --------------------------------------------------------------------------------------
# The checks as plain polars expressions: True where a row passes. They are used both
# inside the pandera model and to locate the failing rows for the report.
# --------------------------------------------------------------------------------------


def _finite(column: str) -> pl.Expr:
    return pl.col(column).is_finite()


def _positive(column: str) -> pl.Expr:
    return pl.col(column) > 0


def _non_negative(column: str) -> pl.Expr:
    return pl.col(column) >= 0


def _non_empty(column: str) -> pl.Expr:
    return pl.col(column).str.strip_chars().str.len_bytes() > 0


def _ohlc_consistent() -> pl.Expr:
    o, h, low, c = (pl.col(name) for name in PRICE_COLUMNS)
    consistent = (h >= pl.max_horizontal(o, c)) & (low <= pl.min_horizontal(o, c)) & (h >= low)
    # Non-finite prices are price_finite's failures; do not report them twice.
    any_non_finite = pl.any_horizontal(*(~pl.col(name).is_finite() for name in PRICE_COLUMNS))
    return consistent | any_non_finite


def _sorted_by_symbol() -> pl.Expr:
    symbol = pl.col("symbol")
    return (symbol >= symbol.shift(1)).fill_null(True)


def _timestamps_unique() -> pl.Expr:
    return ~pl.col("timestamp").is_duplicated().over("symbol")


def _timestamps_increasing() -> pl.Expr:
    symbol, ts = pl.col("symbol"), pl.col("timestamp")
    return ((symbol != symbol.shift(1)) | (ts > ts.shift(1))).fill_null(True)


_COLUMN_CHECKS: dict[str, Callable[[str], pl.Expr]] = {
    "price_finite": _finite,
    "price_positive": _positive,
    "volume_finite": _finite,
    "volume_non_negative": _non_negative,
    "symbol_non_empty": _non_empty,
}
_FRAME_CHECKS: dict[str, tuple[Callable[[], pl.Expr], tuple[str, ...]]] = {
    "ohlc_consistent": (_ohlc_consistent, PRICE_COLUMNS),
    "sorted_by_symbol": (_sorted_by_symbol, ("symbol",)),
    "timestamps_unique_per_symbol": (_timestamps_unique, ("symbol", "timestamp")),
    "timestamps_increasing_per_symbol": (_timestamps_increasing, ("symbol", "timestamp")),
}
_STRUCTURAL_CHECKS = ("column_missing", "column_unexpected", "column_order", "column_dtype")

BAR_CHECKS: tuple[str, ...] = (
    *_STRUCTURAL_CHECKS,
    "not_null",
    *_COLUMN_CHECKS,
    *_FRAME_CHECKS,
)
"""Every check name the contract can report."""


def _column_check(data: pa.PolarsData, name: str) -> pl.LazyFrame:
    return data.lazyframe.select(_COLUMN_CHECKS[name](data.key).alias(data.key))


def _frame_check(data: pa.PolarsData, name: str) -> pl.LazyFrame:
    return data.lazyframe.select(_FRAME_CHECKS[name][0]().alias(name))


def _unique_check(data: pa.PolarsData, name: str) -> pl.LazyFrame:
    """Uniqueness of (symbol, timestamp), skipping the hashing on well-ordered frames.

    Symbols sorted and timestamps strictly increasing within each symbol (neither null)
    imply that no pair repeats; that test is a cheap shift-and-compare, while hashing a million pairs
    is the most expensive check of the contract.
    """
    frame = data.lazyframe
    no_nulls = pl.col("symbol").is_not_null() & pl.col("timestamp").is_not_null()
    ordered = frame.select(
        (no_nulls & _sorted_by_symbol() & _timestamps_increasing()).all()
    ).collect()
    if ordered.item() is True:
        return frame.select(pl.repeat(True, pl.len(), dtype=pl.Boolean).alias(name))
    return _frame_check(data, name)


class BarsModel(pa.DataFrameModel):
    """Canonical bars: exact dtypes, no nulls, strict and ordered columns."""

    timestamp: Annotated[pl.Datetime, "us", "UTC"] = pa.Field(
        description="Bar START, timezone-aware UTC."
    )
    symbol: str = pa.Field(description="Ticker, non-empty.")
    open: float = pa.Field(description="Opening price, finite and > 0.")
    high: float = pa.Field(description="High price, finite, > 0, >= open, close and low.")
    low: float = pa.Field(description="Low price, finite, > 0, <= open and close.")
    close: float = pa.Field(description="Closing price, finite and > 0.")
    volume: float = pa.Field(description="Traded volume, finite and >= 0.")

    @pa.check(*PRICE_COLUMNS, name="price_finite", n_failure_cases=MAX_EXAMPLES)
    def _price_finite(cls, data: pa.PolarsData) -> pl.LazyFrame:
        """Prices are neither NaN nor infinite."""
        return _column_check(data, "price_finite")

    @pa.check(*PRICE_COLUMNS, name="price_positive", n_failure_cases=MAX_EXAMPLES)
    def _price_positive(cls, data: pa.PolarsData) -> pl.LazyFrame:
        """Prices are strictly positive."""
        return _column_check(data, "price_positive")

    @pa.check("volume", name="volume_finite", n_failure_cases=MAX_EXAMPLES)
    def _volume_finite(cls, data: pa.PolarsData) -> pl.LazyFrame:
        """Volume is neither NaN nor infinite."""
        return _column_check(data, "volume_finite")

    @pa.check("volume", name="volume_non_negative", n_failure_cases=MAX_EXAMPLES)
    def _volume_non_negative(cls, data: pa.PolarsData) -> pl.LazyFrame:
        """Volume is zero or positive."""
        return _column_check(data, "volume_non_negative")

    @pa.check("symbol", name="symbol_non_empty", n_failure_cases=MAX_EXAMPLES)
    def _symbol_non_empty(cls, data: pa.PolarsData) -> pl.LazyFrame:
        """Symbols are not empty or blank."""
        return _column_check(data, "symbol_non_empty")

    @pa.dataframe_check(name="ohlc_consistent", n_failure_cases=MAX_EXAMPLES)
    def _ohlc_consistent(cls, data: pa.PolarsData) -> pl.LazyFrame:
        """high >= max(open, close), low <= min(open, close) and high >= low."""
        return _frame_check(data, "ohlc_consistent")

    @pa.dataframe_check(name="sorted_by_symbol", n_failure_cases=MAX_EXAMPLES)
    def _sorted_by_symbol(cls, data: pa.PolarsData) -> pl.LazyFrame:
        """Rows are sorted by symbol (each symbol's bars are contiguous)."""
        return _frame_check(data, "sorted_by_symbol")

    @pa.dataframe_check(name="timestamps_unique_per_symbol", n_failure_cases=MAX_EXAMPLES)
    def _timestamps_unique(cls, data: pa.PolarsData) -> pl.LazyFrame:
        """No (symbol, timestamp) pair occurs twice."""
        return _unique_check(data, "timestamps_unique_per_symbol")

    @pa.dataframe_check(name="timestamps_increasing_per_symbol", n_failure_cases=MAX_EXAMPLES)
    def _timestamps_increasing(cls, data: pa.PolarsData) -> pl.LazyFrame:
        """Within a symbol, each timestamp is strictly after the previous row's."""
        return _frame_check(data, "timestamps_increasing_per_symbol")

    class Config:
        """Strict, ordered, no coercion: the frame must already be canonical."""

        name = BARS_CONTRACT
        strict = True
        ordered = True
        coerce = False


# --------------------------------------------------------------------------------------
# Validation and reporting
# --------------------------------------------------------------------------------------


def validate_bars(frame: pl.DataFrame, source: str) -> pl.DataFrame:
    """Validate canonical bars against :class:`BarsModel`, collecting every failure.

    Args:
        frame: the bars to check (eager polars frame).
        source: where the frame came from; prefixes the error message.

    Returns:
        The frame itself, unchanged, when it satisfies the contract.

    Raises:
        ContractViolation: one entry in ``failures`` per failed check (and column);
            ``str()`` is one line naming every failure with a row count and examples.
        TypeError: ``frame`` is not a ``polars.DataFrame``.
    """
    if not isinstance(frame, pl.DataFrame):
        raise TypeError(f"validate_bars expects a polars.DataFrame, got {type(frame).__name__}")
    try:
        # Force full validation whatever PANDERA_VALIDATION_* says in the environment.
        with config_context(
            validation_enabled=True, validation_depth=ValidationDepth.SCHEMA_AND_DATA
        ):
            BarsModel.validate(frame, lazy=True)
    except SchemaErrors as exc:
        raise ContractViolation(
            source, BARS_CONTRACT, _failures(frame, exc.schema_errors)
        ) from None
    except SchemaError as exc:  # pragma: no cover - lazy=True collects into SchemaErrors
        raise ContractViolation(source, BARS_CONTRACT, _failures(frame, [exc])) from None
    return frame


def _check_name(error: SchemaError) -> str | None:
    check = error.check
    name = getattr(check, "name", None)
    return name if isinstance(name, str) else (check if isinstance(check, str) else None)


def _failures(frame: pl.DataFrame, errors: Iterable[SchemaError]) -> list[dict[str, Any]]:
    """Turn pandera's schema errors into the report of :class:`ContractViolation`."""
    structural: list[dict[str, Any]] = []
    data_checks: list[tuple[str, str | None]] = []
    null_columns: list[str] = []
    unexplained: list[dict[str, Any]] = []
    for error in errors:
        reason = error.reason_code
        column = getattr(error, "column_name", None)
        if reason is SchemaErrorReason.COLUMN_NOT_IN_DATAFRAME:
            for name in _failure_values(error):
                structural.append(_structural("column_missing", name, f"column '{name}' missing"))
        elif reason is SchemaErrorReason.COLUMN_NOT_IN_SCHEMA:
            for name in _failure_values(error):
                structural.append(
                    _structural("column_unexpected", name, f"unexpected column '{name}'")
                )
        elif reason is SchemaErrorReason.COLUMN_NOT_ORDERED:
            structural.append(_order_failure(frame))
        elif reason is SchemaErrorReason.WRONG_DATATYPE and isinstance(column, str):
            expected = BARS_DTYPES.get(column)
            actual = frame.schema.get(column)
            structural.append(
                _structural(
                    "column_dtype",
                    column,
                    f"column '{column}' wrong dtype {actual} (expected {expected})",
                )
            )
        elif reason is SchemaErrorReason.SERIES_CONTAINS_NULLS and isinstance(column, str):
            null_columns.append(column)
        elif reason in (
            SchemaErrorReason.DATAFRAME_CHECK,
            SchemaErrorReason.SCHEMA_COMPONENT_CHECK,
        ):
            check_name = _check_name(error)
            if check_name in _COLUMN_CHECKS:
                data_checks.append((check_name, column))
            elif check_name in _FRAME_CHECKS:
                data_checks.append((check_name, None))
            else:
                unexplained.append(_structural(str(check_name), column, _one_line(error)))
        elif reason is SchemaErrorReason.CHECK_ERROR:
            # A check could not run (e.g. is_finite on a String column); that is always
            # the consequence of a structural failure reported above, unless none was.
            unexplained.append(
                _structural("check_error", column, f"check {_check_name(error)} could not run")
            )
        else:
            unexplained.append(_structural(str(reason.value), column, _one_line(error)))
    if structural:
        unexplained = [f for f in unexplained if f["check"] != "check_error"]
    # Deduplicate while keeping pandera's order (an ordered frame may report twice).
    seen: set[tuple[str, Any]] = set()
    report: list[dict[str, Any]] = []
    for failure in [*structural, *_row_failures(frame, null_columns, data_checks), *unexplained]:
        key = (failure["check"], failure["column"])
        if key not in seen:
            seen.add(key)
            report.append(failure)
    return report


def _failure_values(error: SchemaError) -> list[str]:
    cases = error.failure_cases
    if isinstance(cases, pl.DataFrame | pl.LazyFrame):
        frame = cases.collect() if isinstance(cases, pl.LazyFrame) else cases
        return [str(v) for v in frame.to_series(0).to_list()]
    if isinstance(cases, list | tuple):
        return [str(v) for v in cases]
    return [str(cases)]


def _structural(check: str, column: str | None, message: str) -> dict[str, Any]:
    return {
        "check": check,
        "column": column,
        "failing_rows": None,
        "examples": [],
        "message": _squash(message),
    }


def _order_failure(frame: pl.DataFrame) -> dict[str, Any]:
    expected = [c for c in BARS_DTYPES if c in frame.columns]
    actual = [c for c in frame.columns if c in BARS_DTYPES]
    return _structural(
        "column_order",
        None,
        f"columns out of order ({', '.join(actual)}; expected {', '.join(expected)})",
    )


def _row_failures(
    frame: pl.DataFrame,
    null_columns: list[str],
    data_checks: list[tuple[str, str | None]],
) -> list[dict[str, Any]]:
    """Count the failing rows of each failed row-level check and pick a few examples."""
    specs: list[tuple[str, str | None, pl.Expr, tuple[str, ...]]] = []
    for null_column in null_columns:
        specs.append(("not_null", null_column, pl.col(null_column).is_not_null(), (null_column,)))
    for name, column in data_checks:
        if column is not None:
            expr = _COLUMN_CHECKS[name](column).fill_null(True)
            specs.append((name, column, expr, (column,)))
        else:
            build, columns = _FRAME_CHECKS[name]
            specs.append((name, None, build().fill_null(True), columns))
    if not specs:
        return []
    indexed = frame.with_row_index("__row__")
    # One pass for the counts, then a small filter per failed check for examples.
    counts = indexed.select(
        [(~expr).sum().alias(str(i)) for i, (_, _, expr, _) in enumerate(specs)]
    ).row(0)
    failures: list[dict[str, Any]] = []
    for (name, column, expr, columns), count in zip(specs, counts, strict=True):
        if name == "not_null" and count == 0:
            # pandera's nullable check also counts NaN as null; NaN is reported by the
            # column's *_finite check instead, so a column with NaN but no null is not
            # reported twice.
            continue
        rows = indexed.filter(~expr).head(MAX_EXAMPLES).select("__row__", *columns)
        examples = [
            {
                "row": int(r["__row__"]),
                "value": r[column] if column is not None else {c: r[c] for c in columns},
            }
            for r in rows.iter_rows(named=True)
        ]
        failures.append(
            {
                "check": name,
                "column": column,
                "failing_rows": int(count),
                "examples": examples,
                "message": _row_message(name, column, int(count), examples),
            }
        )
    return failures


def _row_message(name: str, column: str | None, count: int, examples: list[dict[str, Any]]) -> str:
    noun = "row" if count == 1 else "rows"
    where = f" of column '{column}'" if column is not None else ""
    if examples:
        shown = ", ".join(_example(e, column is not None and name != "not_null") for e in examples)
        label = "row" if len(examples) == 1 else "rows"
        more = ", ..." if count > len(examples) else ""
        return f"{name} failed on {count} {noun}{where} (e.g. {label} {shown}{more})"
    return f"{name} failed on {count} {noun}{where}"


def _example(example: dict[str, Any], with_value: bool) -> str:
    if with_value:
        return f"{example['row']} = {example['value']!r}"
    return str(example["row"])


def _one_line(error: Exception) -> str:
    return _squash(str(error))[:200]


def _squash(text: str) -> str:
    return " ".join(text.split())
