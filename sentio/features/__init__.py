"""Causal features of the underlying: polars indicators, causal normalisation, exogenous data.

Public API:

* :func:`build_features` -- canonical bars -> ``timestamp`` + Float32 feature columns.
* :func:`fit_normaliser` / :func:`apply_normaliser` -- ``normalisation = "train_fit"``.
* :func:`feature_summary` -- per-column count, mean, std, min, max (artifact table).
* :func:`features_code_version` -- digest of this package's source (cache keys).
"""

from __future__ import annotations

from sentio.features.build import build_features, feature_plan, feature_summary, warmup_rows
from sentio.features.normalise import (
    UNNORMALISED_COLUMNS,
    apply_normaliser,
    fit_normaliser,
    normalised_columns,
)
from sentio.io import code_version, imported_modules

__all__ = [
    "UNNORMALISED_COLUMNS",
    "apply_normaliser",
    "build_features",
    "feature_plan",
    "feature_summary",
    "features_code_version",
    "fit_normaliser",
    "normalised_columns",
    "warmup_rows",
]


def features_code_version() -> str:
    """A digest of the feature code (this package and every module it imports: :func:`sentio.io.imported_modules`), part of the stage's cache key."""
    return code_version(*imported_modules("sentio.features"))
