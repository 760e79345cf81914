"""Sharpe-ratio inference: probabilistic and deflated Sharpe ratios, minimum track record
length, and the probability of backtest overfitting.

Every Sharpe ratio here is PER PERIOD (per bar: mean / std of the bar returns, never
annualised), with the sample skewness ``g3`` and the RAW (non-excess, normal = 3) kurtosis
``g4`` of the same returns. References:

* Bailey, D. H. and López de Prado, M. (2012), "The Sharpe Ratio Efficient Frontier",
  Journal of Risk 15(2): the probabilistic Sharpe ratio and the minimum track record length.
* Bailey, D. H. and López de Prado, M. (2014), "The Deflated Sharpe Ratio: Correcting for
  Selection Bias, Backtest Overfitting and Non-Normality", Journal of Portfolio Management
  40(5).
* Bailey, D. H., Borwein, J., López de Prado, M. and Zhu, Q. J. (2017), "The Probability of
  Backtest Overfitting", Journal of Computational Finance 20(4): CSCV.

Formulas (``SR`` the observed per-period Sharpe ratio over ``T`` observations):

* ``PSR(SR*) = Phi((SR - SR*) sqrt(T - 1) / sqrt(1 - g3 SR + (g4 - 1) / 4 SR^2))``.
* ``SR0 = sqrt(V) ((1 - gamma) Phi^-1(1 - 1/N) + gamma Phi^-1(1 - 1/(N e)))``, the expected
  maximum Sharpe ratio of ``N`` independent trials whose Sharpe ratios have variance ``V``
  and zero mean (``gamma`` the Euler-Mascheroni constant); ``DSR = PSR(SR0)``. With one
  trial there is no selection: ``SR0 = 0`` and ``DSR = PSR(0)``.
* ``MinTRL = 1 + (1 - g3 SR + (g4 - 1) / 4 SR^2) (Phi^-1(p) / (SR - SR*))^2`` observations;
  infinite when ``SR <= SR*`` (no track record is long enough).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import numpy as np
from scipy.stats import norm

from sentio.evaluation.errors import EvaluationError
from sentio.evaluation.metrics import as_returns

__all__ = [
    "EULER_GAMMA",
    "PBOResult",
    "SharpeMoments",
    "deflated_sharpe_ratio",
    "expected_max_sharpe",
    "min_track_record_length",
    "probabilistic_sharpe_ratio",
    "probability_of_backtest_overfitting",
    "sharpe_moments",
]

EULER_GAMMA = 0.5772156649015329


@dataclass(frozen=True)
class SharpeMoments:
    """The per-period Sharpe ratio of a return series and the moments its inference needs.

    Attributes:
        sharpe: ``mean / std`` of the per-period returns (``std`` with ``ddof = 1``).
        n_obs: number of observations ``T``.
        skew: sample skewness ``g3 = m3 / m2^1.5`` (biased moments, as scipy's default).
        kurtosis: raw sample kurtosis ``g4 = m4 / m2^2`` (3 for a normal distribution).
    """

    sharpe: float
    n_obs: int
    skew: float
    kurtosis: float


def sharpe_moments(returns: Any) -> SharpeMoments:
    """Per-period Sharpe ratio, skewness and raw kurtosis of ``returns``.

    Raises:
        EvaluationError: fewer than 2 observations or a constant series (std = 0).
    """
    r = as_returns(returns)
    if r.size < 2:
        raise EvaluationError(f"need at least 2 returns for a Sharpe ratio, got {r.size}")
    dev = r - r.mean()
    m2 = float(np.mean(dev**2))
    if not m2 > 1e-20 * max(float(r.mean()) ** 2, 1e-300):
        raise EvaluationError("returns are constant: the Sharpe ratio is undefined")
    std = math.sqrt(m2 * r.size / (r.size - 1))
    return SharpeMoments(
        sharpe=float(r.mean()) / std,
        n_obs=int(r.size),
        skew=float(np.mean(dev**3)) / m2**1.5,
        kurtosis=float(np.mean(dev**4)) / m2**2,
    )


def _sr_variance_term(sharpe: float, skew: float, kurtosis: float) -> float:
    """``1 - g3 SR + (g4 - 1) / 4 SR^2``, checked positive."""
    if not kurtosis >= 1.0:
        raise EvaluationError(f"raw kurtosis must be >= 1 (3 for a normal), got {kurtosis}")
    term = 1.0 - skew * sharpe + (kurtosis - 1.0) / 4.0 * sharpe**2
    if not term > 0.0:
        raise EvaluationError(
            f"1 - skew*SR + (kurtosis-1)/4*SR^2 = {term} is not positive for SR={sharpe}, "
            f"skew={skew}, kurtosis={kurtosis} (impossible for moments of one sample)"
        )
    return term


def _check_finite(**values: float) -> None:
    for name, value in values.items():
        if not math.isfinite(value):
            raise EvaluationError(f"{name} must be finite, got {value}")


def probabilistic_sharpe_ratio(
    sharpe: float,
    n_obs: int,
    *,
    skew: float = 0.0,
    kurtosis: float = 3.0,
    benchmark: float = 0.0,
) -> float:
    """``PSR(SR*)``: the probability that the true per-period Sharpe ratio exceeds ``benchmark``.

    Args:
        sharpe: observed per-period (non-annualised) Sharpe ratio ``SR``.
        n_obs: number of return observations ``T`` (>= 2).
        skew: sample skewness ``g3`` of the returns.
        kurtosis: RAW sample kurtosis ``g4`` of the returns (3 for normal returns).
        benchmark: the per-period Sharpe ratio ``SR*`` to beat.

    Raises:
        EvaluationError: ``n_obs < 2``, non-finite inputs, kurtosis < 1.
    """
    _check_finite(sharpe=sharpe, skew=skew, kurtosis=kurtosis, benchmark=benchmark)
    if n_obs < 2:
        raise EvaluationError(f"PSR needs n_obs >= 2, got {n_obs}")
    term = _sr_variance_term(sharpe, skew, kurtosis)
    z = (sharpe - benchmark) * math.sqrt(n_obs - 1) / math.sqrt(term)
    return float(norm.cdf(z))


def expected_max_sharpe(sharpe_variance: float, n_trials: int) -> float:
    """``SR0``: the expected maximum of ``n_trials`` per-period Sharpe ratios under no skill.

    ``sqrt(V) ((1 - gamma) Phi^-1(1 - 1/N) + gamma Phi^-1(1 - 1/(N e)))``; 0 for one trial.

    Raises:
        EvaluationError: ``n_trials < 1`` or a negative / non-finite variance.
    """
    if n_trials < 1:
        raise EvaluationError(f"need at least one trial, got n_trials={n_trials}")
    if not (sharpe_variance >= 0.0 and math.isfinite(sharpe_variance)):
        raise EvaluationError(f"sharpe_variance must be finite and >= 0, got {sharpe_variance}")
    if n_trials == 1:
        return 0.0
    n = float(n_trials)
    z = (1.0 - EULER_GAMMA) * norm.ppf(1.0 - 1.0 / n) + EULER_GAMMA * norm.ppf(
        1.0 - 1.0 / (n * math.e)
    )
    return float(math.sqrt(sharpe_variance) * z)


def deflated_sharpe_ratio(
    sharpe: float,
    n_obs: int,
    *,
    n_trials: int,
    sharpe_variance: float | None = None,
    trial_sharpes: Any = None,
    skew: float = 0.0,
    kurtosis: float = 3.0,
) -> float:
    """``DSR = PSR(SR0)``: the PSR against the expected maximum Sharpe ratio of the trials.

    Args:
        sharpe: per-period Sharpe ratio of the selected strategy.
        n_obs: its number of return observations.
        n_trials: the number of trials actually run (configurations x seeds), ``N >= 1``.
        sharpe_variance: ``V``, the variance of the trials' PER-PERIOD Sharpe ratios.
        trial_sharpes: the trials' per-period Sharpe ratios instead of ``sharpe_variance``
            (``V`` = their sample variance, ``ddof = 1``); with one trial ``V`` is unused.
        skew: skewness ``g3`` of the selected strategy's returns.
        kurtosis: raw kurtosis ``g4`` of the selected strategy's returns.

    With ``n_trials = 1``, ``DSR = PSR(0)``.

    Raises:
        EvaluationError: invalid inputs, or both / neither of ``sharpe_variance`` and
            ``trial_sharpes`` with more than one trial.
    """
    if n_trials < 1:
        raise EvaluationError(f"need at least one trial, got n_trials={n_trials}")
    if sharpe_variance is not None and trial_sharpes is not None:
        raise EvaluationError("give sharpe_variance or trial_sharpes, not both")
    if trial_sharpes is not None:
        sr = as_returns(trial_sharpes, "trial_sharpes")
        if sr.size >= 2:
            sharpe_variance = float(np.var(sr, ddof=1))
        elif n_trials > 1:
            raise EvaluationError("trial_sharpes needs at least 2 values for their variance")
    if sharpe_variance is None:
        if n_trials > 1:
            raise EvaluationError(
                "the deflated Sharpe ratio of several trials needs sharpe_variance or trial_sharpes"
            )
        sharpe_variance = 0.0
    sr0 = expected_max_sharpe(sharpe_variance, n_trials)
    return probabilistic_sharpe_ratio(sharpe, n_obs, skew=skew, kurtosis=kurtosis, benchmark=sr0)


def min_track_record_length(
    sharpe: float,
    *,
    skew: float = 0.0,
    kurtosis: float = 3.0,
    benchmark: float = 0.0,
    confidence: float = 0.95,
) -> float:
    """Minimum number of observations for ``PSR(benchmark) >= confidence`` at this Sharpe ratio.

    ``1 + (1 - g3 SR + (g4 - 1) / 4 SR^2) (Phi^-1(confidence) / (SR - SR*))^2``, in
    observations of the return frequency; ``math.inf`` when ``SR <= SR*``.

    Raises:
        EvaluationError: non-finite inputs, kurtosis < 1 or confidence outside (0, 1).
    """
    _check_finite(sharpe=sharpe, skew=skew, kurtosis=kurtosis, benchmark=benchmark)
    if not 0.0 < confidence < 1.0:
        raise EvaluationError(f"confidence must be in (0, 1), got {confidence}")
    term = _sr_variance_term(sharpe, skew, kurtosis)
    if sharpe <= benchmark:
        return math.inf
    return float(1.0 + term * (norm.ppf(confidence) / (sharpe - benchmark)) ** 2)


# --------------------------------------------------------------------------------------
# probability of backtest overfitting


@dataclass(frozen=True)
class PBOResult:
    """The result of combinatorially symmetric cross-validation (CSCV).

    Attributes:
        pbo: share of splits whose in-sample best trial ranks at or below the
            out-of-sample median (logit <= 0).
        logits: ``log(w / (1 - w))`` per split, ``w`` = out-of-sample relative rank of the
            in-sample best trial, ``rank / (N + 1)`` (1 = worst, ``N`` = best).
        n_splits: number of splits, ``C(S, S/2)``.
        n_blocks: ``S``, the number of row blocks.
        n_trials: ``N``.
        metric: the performance measure ranking the trials.
    """

    pbo: float
    logits: np.ndarray
    n_splits: int
    n_blocks: int
    n_trials: int
    metric: str


def probability_of_backtest_overfitting(
    trial_returns: Any,
    *,
    n_blocks: int = 16,
    metric: str = "sharpe",
) -> PBOResult:
    """Probability of backtest overfitting by CSCV (Bailey, Borwein, López de Prado, Zhu).

    The ``T x N`` matrix of per-period returns of ``N`` trials (columns) is cut into
    ``n_blocks`` = ``S`` contiguous row blocks of (nearly) equal size. For each of the
    ``C(S, S/2)`` ways of choosing ``S/2`` blocks as the in-sample set (the rest is
    out-of-sample), the trial with the best in-sample performance is found, its
    out-of-sample rank among all trials taken (ties averaged) as ``w = rank / (N + 1)``,
    and ``logit = log(w / (1 - w))``. PBO is the share of logits ``<= 0``: how often the
    in-sample winner does no better than the out-of-sample median.

    Args:
        trial_returns: ``(T, N)`` per-period returns, one column per trial.
        n_blocks: ``S``, even, ``2 <= S <= T``. 16 gives 12,870 splits.
        metric: ``"sharpe"`` (mean / std of the returns in the set; a constant set scores
            0 when its mean is 0 and +-inf by the sign of its mean otherwise) or ``"mean"``.

    Raises:
        EvaluationError: not a 2-D matrix, non-finite values, fewer than 2 trials, odd or
            out-of-range ``n_blocks``, or an unknown metric.
    """
    M = _checked_trials(trial_returns, n_blocks, metric)
    n_rows, N = M.shape
    # per-block sufficient statistics: count, sum, sum of squared deviations from the
    # block mean (combined exactly across blocks below)
    bounds = np.linspace(0, n_rows, n_blocks + 1).round().astype(np.int64)
    counts = np.diff(bounds).astype(np.float64)
    sums = np.add.reduceat(M, bounds[:-1], axis=0)
    sq = np.add.reduceat(M * M, bounds[:-1], axis=0)

    splits = np.array(list(combinations(range(n_blocks), n_blocks // 2)), dtype=np.int64)
    in_mask = np.zeros((splits.shape[0], n_blocks), dtype=np.float64)
    np.put_along_axis(in_mask, splits, 1.0, axis=1)
    out_mask = 1.0 - in_mask

    perf_in = _cscv_score(in_mask, counts, sums, sq, metric)
    perf_out = _cscv_score(out_mask, counts, sums, sq, metric)
    best = np.argmax(perf_in, axis=1)
    chosen = perf_out[np.arange(best.size), best][:, None]
    below = (perf_out < chosen).sum(axis=1)
    ties = (perf_out == chosen).sum(axis=1)  # includes the chosen trial itself
    rank = below + (ties + 1) / 2.0  # average rank, 1 = worst
    w = rank / (N + 1.0)
    logits = np.log(w / (1.0 - w))
    return PBOResult(
        pbo=float(np.mean(logits <= 0.0)),
        logits=logits,
        n_splits=int(splits.shape[0]),
        n_blocks=n_blocks,
        n_trials=N,
        metric=metric,
    )


def _checked_trials(trial_returns: Any, n_blocks: int, metric: str) -> np.ndarray:
    """The ``(T, N)`` float64 matrix of :func:`probability_of_backtest_overfitting`, validated."""
    M = np.asarray(trial_returns, dtype=np.float64)
    if M.ndim != 2:
        raise EvaluationError(f"trial_returns must be a (T, N) matrix, got shape {M.shape}")
    n_rows, N = M.shape
    if N < 2:
        raise EvaluationError(f"PBO needs at least 2 trials (columns), got {N}")
    if not np.all(np.isfinite(M)):
        raise EvaluationError("trial_returns has non-finite values")
    if n_blocks < 2 or n_blocks % 2:
        raise EvaluationError(f"n_blocks must be even and >= 2, got {n_blocks}")
    if n_rows < n_blocks:
        raise EvaluationError(f"need at least n_blocks={n_blocks} rows, got T={n_rows}")
    if metric not in ("sharpe", "mean"):
        raise EvaluationError(f"metric must be 'sharpe' or 'mean', got {metric!r}")
    return M


def _cscv_score(
    mask: np.ndarray, counts: np.ndarray, sums: np.ndarray, sq: np.ndarray, metric: str
) -> np.ndarray:
    """``(splits, N)`` performance of every trial on the union of the blocks each mask row picks."""
    n = mask @ counts
    s = mask @ sums
    mean = s / n[:, None]
    if metric == "mean":
        return mean
    # sum of squared deviations about the set's mean, from raw sums; what is left of
    # a constant set after cancellation is rounding noise
    raw = mask @ sq
    ss = raw - s * mean
    ss = np.where(ss > 1e-12 * raw, ss, 0.0)
    std = np.sqrt(ss / np.maximum(n - 1, 1)[:, None])
    with np.errstate(divide="ignore", invalid="ignore"):
        sr = mean / std
    flat = std == 0
    sr[flat] = np.where(mean[flat] > 0, np.inf, np.where(mean[flat] < 0, -np.inf, 0.0))
    return sr
