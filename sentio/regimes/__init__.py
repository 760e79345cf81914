"""Market regimes: causal inputs, HMM fit with a volatility-quantile fallback, causal filter.

Public API: :func:`regime_observations`, :func:`fit_regimes`, :class:`RegimeModel`,
:func:`filter_probs`, :class:`OnlineFilter`, :func:`regime_history`,
:func:`regime_training_rows` (the rows a fold's model may be fitted on).
"""

from __future__ import annotations

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
    "train_rows",
]
