"""Performance evaluation: metrics, stationary-bootstrap intervals, Sharpe-ratio inference.

Library code only (no orchestration). Public API:

* metrics: :func:`compute_metrics` (keys and conventions in :data:`METRIC_KEYS`),
  :func:`periods_per_year`, :func:`to_daily`, :func:`drawdown_episodes`
  (:class:`DrawdownEpisodes`),
  :func:`metrics_to_json`;
* bootstrap: :func:`bootstrap_ci`, :func:`bootstrap_metrics`,
  :func:`bootstrap_distribution`, :class:`BootstrapResult`, :func:`optimal_block_length`,
  :func:`stationary_bootstrap_indices`;
* Sharpe inference: :func:`probabilistic_sharpe_ratio`, :func:`deflated_sharpe_ratio`,
  :func:`expected_max_sharpe`, :func:`min_track_record_length`, :func:`sharpe_moments`,
  :func:`probability_of_backtest_overfitting`, :class:`PBOResult`;
* errors: :class:`EvaluationError` (a :class:`sentio.errors.DataError` and a ValueError).
"""

from __future__ import annotations

from sentio.evaluation.bootstrap import (
    DEFAULT_STATISTICS,
    BootstrapResult,
    bootstrap_ci,
    bootstrap_distribution,
    bootstrap_metrics,
    optimal_block_length,
    stationary_bootstrap_indices,
)
from sentio.evaluation.errors import EvaluationError
from sentio.evaluation.metrics import (
    METRIC_KEYS,
    DrawdownEpisodes,
    compute_metrics,
    drawdown_episodes,
    metrics_to_json,
    periods_per_year,
    to_daily,
)
from sentio.evaluation.rowstats import STATISTICS
from sentio.evaluation.sharpe import (
    PBOResult,
    SharpeMoments,
    deflated_sharpe_ratio,
    expected_max_sharpe,
    min_track_record_length,
    probabilistic_sharpe_ratio,
    probability_of_backtest_overfitting,
    sharpe_moments,
)

__all__ = [
    "DEFAULT_STATISTICS",
    "METRIC_KEYS",
    "STATISTICS",
    "BootstrapResult",
    "DrawdownEpisodes",
    "EvaluationError",
    "PBOResult",
    "SharpeMoments",
    "bootstrap_ci",
    "bootstrap_distribution",
    "bootstrap_metrics",
    "compute_metrics",
    "deflated_sharpe_ratio",
    "drawdown_episodes",
    "expected_max_sharpe",
    "metrics_to_json",
    "min_track_record_length",
    "optimal_block_length",
    "periods_per_year",
    "probabilistic_sharpe_ratio",
    "probability_of_backtest_overfitting",
    "sharpe_moments",
    "stationary_bootstrap_indices",
    "to_daily",
]
