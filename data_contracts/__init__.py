"""Data contracts for every frame that crosses a boundary.

* :func:`validate_bars` / :class:`BarsModel`: the pandera (polars) contract for canonical
  bars; raises :class:`ContractViolation` listing every failed check.
* :func:`bars_suite` / :func:`run_gx_validation` / :class:`GXReport`: the same contract as
  a Great Expectations suite, with the validation result saved as JSON and Data Docs HTML.

The Great Expectations names are imported lazily: ``import great_expectations`` takes
seconds, and most callers only need the pandera contract.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from data_contracts.bars import BAR_CHECKS, BARS_CONTRACT, BARS_DTYPES, BarsModel, validate_bars
from data_contracts.errors import ContractViolation

if TYPE_CHECKING:
    from data_contracts.gx_bars import BARS_SUITE_NAME, GXReport, bars_suite, run_gx_validation

__all__ = [
    "BARS_CONTRACT",
    "BARS_DTYPES",
    "BARS_SUITE_NAME",
    "BAR_CHECKS",
    "BarsModel",
    "ContractViolation",
    "GXReport",
    "bars_suite",
    "run_gx_validation",
    "validate_bars",
]

_LAZY_GX = frozenset({"BARS_SUITE_NAME", "GXReport", "bars_suite", "run_gx_validation"})


def __getattr__(name: str) -> Any:
    """Import the Great Expectations half on first use."""
    if name in _LAZY_GX:
        from data_contracts import gx_bars

        return getattr(gx_bars, name)
    raise AttributeError(f"module 'data_contracts' has no attribute {name!r}")


# The feature-frame contract (features stage).
from data_contracts.features import (  # noqa: E402
    FEATURE_CHECKS,
    FEATURES_CONTRACT,
    features_schema,
    validate_features,
)

__all__ += ["FEATURES_CONTRACT", "FEATURE_CHECKS", "features_schema", "validate_features"]
