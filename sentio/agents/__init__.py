"""Agents: PPO variants and their building blocks.

* :mod:`sentio.agents.distributional` -- the quantile critic's mathematics (non-crossing
  quantile head, quantile Huber loss, CVaR, risk-adjusted value, GAE, quantile
  lambda-targets).
"""

from sentio.agents.distributional import (
    NonCrossingQuantileHead,
    cvar_from_quantiles,
    gae,
    quantile_huber_loss,
    quantile_lambda_targets,
    quantile_midpoints,
    risk_adjusted_value,
)

__all__ = [
    "NonCrossingQuantileHead",
    "cvar_from_quantiles",
    "gae",
    "quantile_huber_loss",
    "quantile_lambda_targets",
    "quantile_midpoints",
    "risk_adjusted_value",
]
