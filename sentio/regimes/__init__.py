"""Market regimes: causal inputs, HMM fit with a volatility-quantile fallback, causal filter.

Public API: :func:`regime_observations`, :func:`fit_regimes`, :class:`RegimeModel`,
:func:`filter_probs`, :class:`OnlineFilter`, :func:`regime_history`,
:func:`regime_training_rows` (the rows a fold's model may be fitted on),
:func:`regimes_code_version` (of :data:`REGIME_MODULES`).
"""

from __future__ import annotations

from sentio.io import code_version
from sentio.regimes.filter import OnlineFilter, filter_labels, filter_probs, log_emissions
from sentio.regimes.history import regime_history
from sentio.regimes.model import RegimeModel, fit_regimes
from sentio.regimes.observations import (
    OBSERVATION_COLUMNS,
    RETURN_COLUMN,
    VOL_COLUMN,
    RegimeInputs,
    regime_observations,
    train_rows,
)
from sentio.regimes.training_rows import regime_training_rows

__all__ = [
    "OBSERVATION_COLUMNS",
    "REGIME_MODULES",
    "RETURN_COLUMN",
    "VOL_COLUMN",
    "OnlineFilter",
    "RegimeInputs",
    "RegimeModel",
    "filter_labels",
    "filter_probs",
    "fit_regimes",
    "log_emissions",
    "regime_history",
    "regime_observations",
    "regime_training_rows",
    "regimes_code_version",
    "train_rows",
]

REGIME_MODULES: tuple[str, ...] = (
    "sentio.regimes",
    "sentio.regimes.observations",
    "sentio.regimes.model",
    "sentio.regimes.filter",
    "sentio.regimes.history",
    "sentio.regimes.training_rows",
)
"""The modules whose source decides the regime models and probabilities."""


def regimes_code_version() -> str:
    """Digest of the regime modules' source (for cache keys and model metadata)."""
    return code_version(*REGIME_MODULES)
