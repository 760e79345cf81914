"""Causal features of the underlying: polars indicators, causal normalisation, exogenous data.

Public API:

* :func:`build_features` -- canonical bars -> ``timestamp`` + Float32 feature columns.
* :func:`fit_normaliser` / :func:`apply_normaliser` -- ``normalisation = "train_fit"``.
* :func:`feature_summary` -- per-column count, mean, std, min, max (artifact table).
"""

from __future__ import annotations

from sentio.features.build import build_features, feature_plan, feature_summary, warmup_rows
from sentio.features.normalise import (
    UNNORMALISED_COLUMNS,
    apply_normaliser,
    fit_normaliser,
    normalised_columns,
)

__all__ = [
    "UNNORMALISED_COLUMNS",
    "apply_normaliser",
    "build_features",
    "feature_plan",
    "feature_summary",
    "fit_normaliser",
    "normalised_columns",
    "warmup_rows",
]
