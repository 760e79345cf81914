"""Agents: PPO variants and their building blocks.

* :mod:`sentio.agents.distributional` -- the quantile critic's mathematics (non-crossing
  quantile head, quantile Huber loss, CVaR, risk-adjusted value, GAE, quantile
  lambda-targets).
* :mod:`sentio.agents.extractors` -- the transformer and flat features extractors over the
  environments' dict observations.
* :mod:`sentio.agents.device_rollout` -- rollouts, GAE and quantile targets with the
  trading accounts on the training device (``train.rollout = device``).
* :mod:`sentio.agents.ppo_update` -- PPO's and MaskablePPO's update without per-minibatch
  host reads (the device path's update for those two).
* :mod:`sentio.agents.training` -- device, rollout shape, model construction,
  checkpoints and resume.
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
from sentio.agents.extractors import DictMlpExtractor, TransformerExtractor, extractor_kwargs

__all__ = [
    "DictMlpExtractor",
    "NonCrossingQuantileHead",
    "TransformerExtractor",
    "cvar_from_quantiles",
    "extractor_kwargs",
    "gae",
    "quantile_huber_loss",
    "quantile_lambda_targets",
    "quantile_midpoints",
    "risk_adjusted_value",
]
