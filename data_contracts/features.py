"""The pandera contract for the feature frame (output of the features stage).

``timestamp`` is ``Datetime("us", "UTC")``, unique and strictly increasing (bar START of
the underlying); every other column is ``Float32``, non-null and finite. Check names:

==============================  ==========================================================
check                           fails when
==============================  ==========================================================
``column_missing``              (structural) no ``timestamp`` column
``column_dtype``                (structural) ``timestamp`` not UTC microseconds, or a
                                feature column not Float32
``no_features``                 (structural) no column besides ``timestamp``
``not_null``                    a null in any column
``value_finite``                NaN or +-inf in a feature column
``timestamps_unique``           a timestamp occurs twice
``timestamps_increasing``       a timestamp not after the previous row's
==============================  ==========================================================
"""

from __future__ import annotations

from typing import Any

import pandera.polars as pa
import polars as pl
from pandera.config import ValidationDepth, config_context
from pandera.errors import SchemaError, SchemaErrors

from data_contracts.errors import ContractViolation

__all__ = ["FEATURES_CONTRACT", "FEATURE_CHECKS", "features_schema", "validate_features"]

FEATURES_CONTRACT = "feature frame"
TIMESTAMP_DTYPE = pl.Datetime("us", "UTC")
FEATURE_DTYPE = pl.Float32()
MAX_EXAMPLES = 3

FEATURE_CHECKS: tuple[str, ...] = (
    "column_missing",
    "column_dtype",
    "no_features",
    "not_null",
    "value_finite",
    "timestamps_unique",
    "timestamps_increasing",
)


def _finite(data: pa.PolarsData) -> pl.LazyFrame:
    return data.lazyframe.select(pl.col(data.key).is_finite())


def _unique(data: pa.PolarsData) -> pl.LazyFrame:
    return data.lazyframe.select(~pl.col("timestamp").is_duplicated())


def _increasing(data: pa.PolarsData) -> pl.LazyFrame:
    ts = pl.col("timestamp")
    return data.lazyframe.select((ts > ts.shift(1)).fill_null(True))


def features_schema(columns: list[str]) -> pa.DataFrameSchema:
    """The pandera schema of a feature frame with these feature ``columns``."""
    features = {
        c: pa.Column(
            FEATURE_DTYPE,
            nullable=False,
            checks=pa.Check(_finite, name="value_finite", n_failure_cases=MAX_EXAMPLES),
        )
        for c in columns
        if c != "timestamp"
    }
    return pa.DataFrameSchema(
        {"timestamp": pa.Column(TIMESTAMP_DTYPE, nullable=False), **features},
        checks=[
            pa.Check(_unique, name="timestamps_unique", n_failure_cases=MAX_EXAMPLES),
            pa.Check(_increasing, name="timestamps_increasing", n_failure_cases=MAX_EXAMPLES),
        ],
        name=FEATURES_CONTRACT,
        coerce=False,
    )


def _failure(check: str, column: str | None, message: str, rows: int | None) -> dict[str, Any]:
    return {
        "check": check,
        "column": column,
        "failing_rows": rows,
        "examples": [],
        "message": " ".join(message.split()),
    }


def _rows(frame: pl.DataFrame, check: str, column: str | None) -> dict[str, Any]:
    if check == "value_finite" and column is not None:
        ok = pl.col(column).is_finite().fill_null(True)
    elif check == "not_null" and column is not None:
        ok = pl.col(column).is_not_null()
    elif check == "timestamps_unique":
        ok = ~pl.col("timestamp").is_duplicated()
    else:
        ts = pl.col("timestamp")
        ok = (ts > ts.shift(1)).fill_null(True)
    indexed = frame.with_row_index("__row__")
    bad = indexed.filter(~ok)
    rows = [int(r) for r in bad["__row__"].head(MAX_EXAMPLES)]
    where = f" of column '{column}'" if column else ""
    failure = _failure(
        check,
        column,
        f"{check} failed on {bad.height} rows{where} (e.g. rows {', '.join(map(str, rows))})",
        bad.height,
    )
    failure["examples"] = [{"row": r} for r in rows]
    return failure


def validate_features(frame: pl.DataFrame, source: str) -> pl.DataFrame:
    """Validate a feature frame; return it unchanged or raise :class:`ContractViolation`.

    Every failed check is reported (``violation.checks``), with row counts and a few
    example rows for row-level checks.
    """
    if not isinstance(frame, pl.DataFrame):
        raise TypeError(f"validate_features expects a polars.DataFrame, got {type(frame).__name__}")
    failures: list[dict[str, Any]] = []
    if "timestamp" not in frame.columns:
        failures.append(_failure("column_missing", "timestamp", "column 'timestamp' missing", None))
        raise ContractViolation(source, FEATURES_CONTRACT, failures)
    if len(frame.columns) < 2:
        failures.append(_failure("no_features", None, "no feature column", None))
    for c, dtype in frame.schema.items():
        expected = TIMESTAMP_DTYPE if c == "timestamp" else FEATURE_DTYPE
        if dtype != expected:
            failures.append(
                _failure(
                    "column_dtype",
                    c,
                    f"column '{c}' wrong dtype {dtype} (expected {expected})",
                    None,
                )
            )
    if failures:  # data checks on wrong dtypes would only add noise
        raise ContractViolation(source, FEATURES_CONTRACT, failures)
    try:
        with config_context(
            validation_enabled=True, validation_depth=ValidationDepth.SCHEMA_AND_DATA
        ):
            features_schema(frame.columns).validate(frame, lazy=True)
    except SchemaErrors as exc:
        seen: set[tuple[str, str | None]] = set()
        for err in exc.schema_errors:
            key = _classify(err, frame)
            if key is not None and key not in seen:
                seen.add(key)
                failures.append(_rows(frame, *key))
        if not failures:
            failures.append(_failure("unexplained", None, str(exc)[:200], None))
        raise ContractViolation(source, FEATURES_CONTRACT, failures) from None
    return frame


def _classify(err: SchemaError, frame: pl.DataFrame) -> tuple[str, str | None] | None:
    column = getattr(err.schema, "name", None) if err.schema is not None else None
    check = err.check
    name = getattr(check, "name", None) if check is not None else None
    if name in ("value_finite", "timestamps_unique", "timestamps_increasing"):
        col = column if name == "value_finite" and column in frame.columns else None
        return (str(name), col)
    if isinstance(column, str) and column in frame.columns and frame[column].null_count():
        return ("not_null", column)
    return None
