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
from sentio.io import code_version

__all__ = [
    "FEATURE_MODULES",
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

FEATURE_MODULES: tuple[str, ...] = (
    "sentio.features",
    "sentio.features.build",
    "sentio.features.indicators",
    "sentio.features.normalise",
    "sentio.features.kernels",
    "sentio.features.exogenous",
    "sentio.calendar",
)
"""The modules whose source decides the feature values."""


def features_code_version() -> str:
    """A digest of the feature code (:data:`FEATURE_MODULES`), part of the stage's cache key."""
    return code_version(*FEATURE_MODULES)
