"""The trading simulator: market arrays, the batched simulator, SB3 environments, episodes.

* :mod:`sentio.env.market` -- :func:`build_market` aligns features, regime probabilities
  and prices into :class:`MarketData` arrays once; nothing later touches polars.
* :mod:`sentio.env.simulator` -- :class:`BatchSimulator`, the trading model (fills at the
  next open, costs, forced exits, reward, masks in named layers) for N accounts at once.
* :mod:`sentio.env.vec_env` -- :class:`SentioVecEnv`, an SB3 ``VecEnv`` with
  ``action_masks()`` for MaskablePPO.
* :mod:`sentio.env.single` -- :class:`TradingEnv`, one account as a ``gymnasium.Env``: an
  independent scalar implementation of the same trading model (the reference the
  batched simulator is checked against), usable with ``DummyVecEnv`` and MaskablePPO.
* :mod:`sentio.env.episodes` -- where episodes may run inside a fold's training ranges.
* :mod:`sentio.env.torch_simulator` -- :class:`~sentio.env.torch_simulator.TorchSimulator`,
  the same trading model with the accounts as tensors on a device (equal to the numpy one
  bit for bit); :mod:`sentio.env.device_env` -- its training environment.
"""

from sentio.env.episodes import candidate_episodes, rows_from_ranges, sample_episodes
from sentio.env.market import LONG, SHORT, UNDERLYING, MarketData, build_market, ewma_vol
from sentio.env.simulator import (
    LAYER_BITS,
    MASK_LAYERS,
    STATE_FEATURES,
    BatchSimulator,
    EnvParams,
    StepResult,
    layer_names,
)
from sentio.env.single import TradingEnv
from sentio.env.vec_env import SentioVecEnv, observation_space

__all__ = [
    "LAYER_BITS",
    "LONG",
    "MASK_LAYERS",
    "SHORT",
    "STATE_FEATURES",
    "UNDERLYING",
    "BatchSimulator",
    "EnvParams",
    "MarketData",
    "SentioVecEnv",
    "StepResult",
    "TradingEnv",
    "build_market",
    "candidate_episodes",
    "ewma_vol",
    "layer_names",
    "observation_space",
    "rows_from_ranges",
    "sample_episodes",
]
