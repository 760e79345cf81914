"""Sharpe-ratio inference: PSR, DSR and MinTRL against hand computations from the published
formulas and the published DSR example; PBO against a brute-force CSCV and its limit cases."""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np
import pytest
from scipy.stats import kurtosis as sp_kurtosis
from scipy.stats import norm, rankdata
from scipy.stats import skew as sp_skew

from sentio.evaluation import (
    EvaluationError,
    deflated_sharpe_ratio,
    expected_max_sharpe,
    min_track_record_length,
    probabilistic_sharpe_ratio,
    probability_of_backtest_overfitting,
    sharpe_moments,
)

EULER_GAMMA = 0.5772156649015329

# --------------------------------------------------------------------------------------
# PSR


def test_psr_worked_example():
    """SR = 0.1 per period, T = 250, skew -0.5, raw kurtosis 4, SR* = 0.

    denominator term: 1 - g3 SR + (g4 - 1)/4 SR^2 = 1 + 0.05 + 0.75 * 0.01 = 1.0575
    z = (0.1 - 0) * sqrt(249) / sqrt(1.0575) = 1.577973 / 1.028348 = 1.534473
    PSR = Phi(1.534473) = 0.937543
    """
    term = 1 - (-0.5) * 0.1 + (4 - 1) / 4 * 0.1**2
    assert term == pytest.approx(1.0575)
    z = 0.1 * math.sqrt(249) / math.sqrt(term)
    assert z == pytest.approx(1.534473, abs=1e-6)
    expected = norm.cdf(z)
    assert expected == pytest.approx(0.937543, abs=1e-6)
    got = probabilistic_sharpe_ratio(0.1, 250, skew=-0.5, kurtosis=4.0, benchmark=0.0)
    assert got == pytest.approx(expected, rel=1e-12)


def test_psr_against_a_benchmark_and_normal_defaults():
    # normal returns (skew 0, kurtosis 3): term = 1 + SR^2 / 2
    sr, t, bench = 0.08, 500, 0.03
    z = (sr - bench) * math.sqrt(t - 1) / math.sqrt(1 + sr**2 / 2)
    assert probabilistic_sharpe_ratio(sr, t, benchmark=bench) == pytest.approx(norm.cdf(z))
    # SR = SR*: a coin flip
    assert probabilistic_sharpe_ratio(0.05, 100, benchmark=0.05) == pytest.approx(0.5)
    # negative skew and fat tails lower the PSR of a positive Sharpe ratio
    base = probabilistic_sharpe_ratio(0.1, 250)
    assert probabilistic_sharpe_ratio(0.1, 250, skew=-1.0, kurtosis=8.0) < base


def test_sharpe_moments_from_returns():
    rng = np.random.default_rng(1)
    r = rng.standard_t(5, size=2000) * 0.01 + 0.001
    m = sharpe_moments(r)
    assert m.sharpe == pytest.approx(r.mean() / r.std(ddof=1))
    assert m.skew == pytest.approx(sp_skew(r))  # biased sample skewness g3
    assert m.kurtosis == pytest.approx(sp_kurtosis(r, fisher=False))  # raw g4, normal = 3
    assert m.n_obs == 2000
    with pytest.raises(EvaluationError, match="constant"):
        sharpe_moments(np.full(10, 0.01))


# --------------------------------------------------------------------------------------
# DSR


def test_dsr_published_example():
    """Bailey & López de Prado (2014), "The Deflated Sharpe Ratio", numerical example.

    N = 100 trials, variance of the trials' annualised Sharpe ratios 1/2, the selected
    strategy's annualised SR 2.5 over T = 1250 daily observations (250 a year), skew -3,
    raw kurtosis 10. The paper reports SR0 = 0.1132 (per day) and DSR = 0.9004.

    Per day: SR = 2.5 / sqrt(250) = 0.158114, V = 0.5 / 250 = 0.002.
    SR0 = sqrt(0.002) * (0.422784 * Phi^-1(0.99) + 0.577216 * Phi^-1(1 - 1/(100 e)))
        = 0.044721 * (0.422784 * 2.326348 + 0.577216 * 2.679849) = 0.044721 * 2.530557
        = 0.113170
    term = 1 + 3 * 0.158114 + 9/4 * 0.025 = 1.530592
    z = (0.158114 - 0.113170) * sqrt(1249) / sqrt(1.530592) = 1.283806;  Phi(z) = 0.9004
    """
    sr = 2.5 / math.sqrt(250)
    v = 0.5 / 250
    sr0_by_hand = math.sqrt(v) * (
        (1 - EULER_GAMMA) * norm.ppf(1 - 1 / 100) + EULER_GAMMA * norm.ppf(1 - 1 / (100 * math.e))
    )
    assert sr0_by_hand == pytest.approx(0.1132, abs=5e-5)
    assert expected_max_sharpe(v, 100) == pytest.approx(sr0_by_hand, rel=1e-12)
    term = 1 - (-3) * sr + (10 - 1) / 4 * sr**2
    dsr_by_hand = norm.cdf((sr - sr0_by_hand) * math.sqrt(1250 - 1) / math.sqrt(term))
    assert dsr_by_hand == pytest.approx(0.9004, abs=5e-5)
    got = deflated_sharpe_ratio(sr, 1250, n_trials=100, sharpe_variance=v, skew=-3.0, kurtosis=10.0)
    assert got == pytest.approx(dsr_by_hand, rel=1e-12)


def test_dsr_with_one_trial_is_psr_of_zero():
    for sr, t, g3, g4 in [(0.1, 250, -0.5, 4.0), (0.03, 5000, 0.2, 6.0), (-0.02, 100, 0.0, 3.0)]:
        psr0 = probabilistic_sharpe_ratio(sr, t, skew=g3, kurtosis=g4, benchmark=0.0)
        assert deflated_sharpe_ratio(sr, t, n_trials=1, skew=g3, kurtosis=g4) == psr0
        assert (
            deflated_sharpe_ratio(sr, t, n_trials=1, sharpe_variance=0.3, skew=g3, kurtosis=g4)
            == psr0
        )
    assert expected_max_sharpe(0.01, 1) == 0.0


def test_dsr_from_trial_sharpes_and_monotone_in_trials():
    trials = np.array([0.02, 0.05, -0.01, 0.04, 0.03, 0.06])
    v = float(np.var(trials, ddof=1))
    a = deflated_sharpe_ratio(0.06, 1000, n_trials=6, trial_sharpes=trials)
    b = deflated_sharpe_ratio(0.06, 1000, n_trials=6, sharpe_variance=v)
    assert a == pytest.approx(b)
    # more trials, a higher bar: the DSR falls
    dsrs = [deflated_sharpe_ratio(0.06, 1000, n_trials=k, sharpe_variance=v) for k in (2, 10, 100)]
    assert dsrs[0] > dsrs[1] > dsrs[2]
    assert all(d < probabilistic_sharpe_ratio(0.06, 1000) for d in dsrs)


# --------------------------------------------------------------------------------------
# MinTRL


def test_min_track_record_length_worked_example():
    """SR = 0.1, skew -0.5, raw kurtosis 4, SR* = 0, 95% confidence.

    MinTRL = 1 + 1.0575 * (Phi^-1(0.95) / 0.1)^2 = 1 + 1.0575 * (1.644854 / 0.1)^2
           = 1 + 1.0575 * 270.554 = 287.111 observations
    """
    by_hand = 1 + 1.0575 * (norm.ppf(0.95) / 0.1) ** 2
    assert by_hand == pytest.approx(287.111, abs=1e-3)
    got = min_track_record_length(0.1, skew=-0.5, kurtosis=4.0, benchmark=0.0, confidence=0.95)
    assert got == pytest.approx(by_hand, rel=1e-12)
    # at exactly MinTRL observations the PSR equals the confidence (real-valued T)
    term = 1.0575
    z = 0.1 * math.sqrt(got - 1) / math.sqrt(term)
    assert norm.cdf(z) == pytest.approx(0.95, abs=1e-12)


def test_min_track_record_length_infinite_without_edge():
    assert min_track_record_length(0.05, benchmark=0.05) == math.inf
    assert min_track_record_length(-0.1) == math.inf
    # normal returns: 1 + (1 + SR^2/2) (1.644854 / SR)^2
    sr = 0.2
    assert min_track_record_length(sr) == pytest.approx(
        1 + (1 + sr**2 / 2) * (norm.ppf(0.95) / sr) ** 2
    )


def test_sharpe_inference_errors():
    with pytest.raises(EvaluationError, match="n_obs >= 2"):
        probabilistic_sharpe_ratio(0.1, 1)
    with pytest.raises(EvaluationError, match="kurtosis must be >= 1"):
        probabilistic_sharpe_ratio(0.1, 100, kurtosis=0.5)
    with pytest.raises(EvaluationError, match="finite"):
        probabilistic_sharpe_ratio(float("nan"), 100)
    with pytest.raises(EvaluationError, match="at least one trial"):
        deflated_sharpe_ratio(0.1, 100, n_trials=0)
    with pytest.raises(EvaluationError, match="needs sharpe_variance or trial_sharpes"):
        deflated_sharpe_ratio(0.1, 100, n_trials=5)
    with pytest.raises(EvaluationError, match="not both"):
        deflated_sharpe_ratio(0.1, 100, n_trials=5, sharpe_variance=0.1, trial_sharpes=[0.1, 0.2])
    with pytest.raises(EvaluationError, match=">= 0"):
        expected_max_sharpe(-1.0, 5)
    with pytest.raises(EvaluationError, match="confidence"):
        min_track_record_length(0.1, confidence=1.0)
    with pytest.raises(EvaluationError, match="at least 2 returns"):
        sharpe_moments([0.1])
    with pytest.raises(ValueError):  # EvaluationError is also a ValueError
        probabilistic_sharpe_ratio(0.1, 0)


# --------------------------------------------------------------------------------------
# PBO


def pbo_brute_force(M: np.ndarray, n_blocks: int) -> tuple[float, list[float]]:
    """CSCV written out with loops: every half of the blocks in-sample, Sharpe ranking."""
    t, n = M.shape
    bounds = np.linspace(0, t, n_blocks + 1).round().astype(int)
    blocks = [M[bounds[i] : bounds[i + 1]] for i in range(n_blocks)]
    logits = []
    for chosen in combinations(range(n_blocks), n_blocks // 2):
        ins = np.vstack([blocks[i] for i in chosen])
        outs = np.vstack([blocks[i] for i in range(n_blocks) if i not in chosen])
        sr_in = [ins[:, j].mean() / ins[:, j].std(ddof=1) for j in range(n)]
        sr_out = [outs[:, j].mean() / outs[:, j].std(ddof=1) for j in range(n)]
        best = int(np.argmax(sr_in))
        w = rankdata(sr_out)[best] / (n + 1)
        logits.append(math.log(w / (1 - w)))
    return float(np.mean([lg <= 0 for lg in logits])), logits


def test_pbo_matches_brute_force_cscv():
    rng = np.random.default_rng(11)
    M = rng.normal(0.0, 1.0, (203, 6))  # 203 rows: blocks of unequal size
    M[:, 2] += 0.05
    got = probability_of_backtest_overfitting(M, n_blocks=6)
    pbo, logits = pbo_brute_force(M, 6)
    assert got.n_splits == math.comb(6, 3) == len(logits)
    assert np.allclose(got.logits, logits, rtol=0, atol=1e-9)
    assert got.pbo == pytest.approx(pbo)
    assert (got.n_blocks, got.n_trials, got.metric) == (6, 6, "sharpe")


def test_pbo_of_iid_noise_is_about_one_half():
    """No trial has an edge: the in-sample winner's out-of-sample rank is uniform.

    With an even number of trials (10) P(logit <= 0) = P(rank <= 5) = 1/2 exactly; one
    matrix's PBO is noisy (sd ~0.18 here), so average 100 matrices (se ~0.02).
    """
    rng = np.random.default_rng(12)
    values = [
        probability_of_backtest_overfitting(rng.normal(size=(400, 10)), n_blocks=8).pbo
        for _ in range(100)
    ]
    assert np.mean(values) == pytest.approx(0.5, abs=0.07)


def test_pbo_of_a_dominant_trial_is_zero():
    rng = np.random.default_rng(13)
    M = rng.normal(0.0, 1.0, (800, 12))
    M[:, 7] += 0.6  # wins in every block, in and out of sample
    res = probability_of_backtest_overfitting(M, n_blocks=16)
    assert res.n_splits == 12_870
    assert res.pbo == 0.0
    assert np.allclose(res.logits, math.log(12 / 1))  # rank 12 of 12: w = 12/13
    assert probability_of_backtest_overfitting(M, n_blocks=16, metric="mean").pbo == 0.0


def test_pbo_handles_flat_trials():
    rng = np.random.default_rng(14)
    M = np.zeros((100, 4))
    M[:, 1] = rng.normal(0.01, 0.01, 100)
    res = probability_of_backtest_overfitting(M, n_blocks=4)  # three flat trials: Sharpe 0
    assert np.all(np.isfinite(res.logits))
    assert res.pbo == 0.0


def test_pbo_errors():
    M = np.zeros((100, 5))
    with pytest.raises(EvaluationError, match="even"):
        probability_of_backtest_overfitting(M, n_blocks=5)
    with pytest.raises(EvaluationError, match="even and >= 2"):
        probability_of_backtest_overfitting(M, n_blocks=0)
    with pytest.raises(EvaluationError, match="at least n_blocks=16 rows"):
        probability_of_backtest_overfitting(M[:10], n_blocks=16)
    with pytest.raises(EvaluationError, match="at least 2 trials"):
        probability_of_backtest_overfitting(M[:, :1])
    with pytest.raises(EvaluationError, match=r"\(T, N\) matrix"):
        probability_of_backtest_overfitting(np.zeros(100))
    with pytest.raises(EvaluationError, match="metric"):
        probability_of_backtest_overfitting(M, metric="sortino")
    bad = M.copy()
    bad[3, 2] = np.nan
    with pytest.raises(EvaluationError, match="non-finite"):
        probability_of_backtest_overfitting(bad)
