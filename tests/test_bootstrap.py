"""Stationary bootstrap: the index law against arch's, intervals against arch's conf_int,
coverage on autocorrelated returns, seeds, degenerate series and input errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from arch.bootstrap import StationaryBootstrap
from arch.bootstrap import optimal_block_length as arch_block_length
from scipy.signal import lfilter

from sentio.evaluation import (
    STATISTICS,
    EvaluationError,
    bootstrap_ci,
    bootstrap_distribution,
    bootstrap_metrics,
    compute_metrics,
    optimal_block_length,
    stationary_bootstrap_indices,
)
from sentio.evaluation.rowstats import RowStats


def ar1(rng: np.random.Generator, n: int, phi: float, mu: float, burn: int = 200) -> np.ndarray:
    """``mu + y_t`` with ``y_t = phi y_{t-1} + e_t``, ``e_t ~ N(0, 1)``, after a burn-in."""
    e = rng.normal(size=n + burn)
    return mu + lfilter([1.0], [1.0, -phi], e)[burn:]


def index_law(idx: np.ndarray) -> dict[str, float]:
    """Summary of a (resamples, n) index matrix: continuation share, wrap share, mean run."""
    n = idx.shape[1]
    prev, nxt = idx[:, :-1], idx[:, 1:]
    cont = nxt == (prev + 1) % n
    wraps = cont & (prev == n - 1)
    # lengths of complete runs (a run is a block; the last run of a row is cut by the end)
    runs = []
    for row in cont:
        breaks = np.flatnonzero(~row)
        if breaks.size >= 2:
            runs.append(np.diff(breaks))
    run = np.concatenate(runs) if runs else np.zeros(0)
    return {
        "continue": float(cont.mean()),
        "wrap": float(wraps.mean()),
        "mean_run": float(run.mean()),
        "first_mean": float(idx[:, 0].mean()),
    }


def arch_indices(n: int, resamples: int, block: float, seed: int) -> np.ndarray:
    # arch types block_size as int but uses only 1 / block_size: a real length works
    bs = StationaryBootstrap(block, np.arange(n, dtype=np.float64), seed=seed)  # type: ignore[arg-type]
    return np.stack([data[0][0] for data in bs.bootstrap(resamples)]).astype(np.int64)


# --------------------------------------------------------------------------------------
# the index law


@pytest.mark.parametrize("block", [1.5, 4.0, 12.0])  # uniform-draw and geometric-gap paths
def test_index_law_matches_arch(block):
    n, reps = 1000, 300
    mine = stationary_bootstrap_indices(n, reps, block, seed=1)
    theirs = arch_indices(n, reps, block, seed=1)
    assert mine.shape == theirs.shape == (reps, n)
    assert mine.min() >= 0 and mine.max() < n
    p = 1.0 / block
    # P(next = prev + 1 mod n) = (1 - p) + p / n: continue, or a new block that happens to
    # start there
    expected_continue = (1 - p) + p / n
    se = math.sqrt(expected_continue * (1 - expected_continue) / (reps * (n - 1)))
    expected_wrap = expected_continue / n  # prev = n - 1 (uniform marginal), then continue
    a, b = index_law(mine), index_law(theirs)
    for law in (a, b):
        assert law["continue"] == pytest.approx(expected_continue, abs=6 * se)
        assert law["wrap"] == pytest.approx(expected_wrap, rel=0.25)
        assert law["first_mean"] == pytest.approx((n - 1) / 2, abs=6 * n / math.sqrt(12 * reps))
    # complete runs: geometric with mean block / (1 - 1/n) (accidental continuations)
    assert a["mean_run"] == pytest.approx(b["mean_run"], rel=0.05)
    assert a["mean_run"] == pytest.approx(block, rel=0.05)
    # marginal: every index equally likely, with the same block clustering as arch's
    chi2 = []
    for idx in (mine, theirs):
        counts = np.bincount(idx.ravel(), minlength=n)
        chi2.append(float(((counts - counts.mean()) ** 2 / counts.mean()).sum()))
    assert chi2[0] == pytest.approx(chi2[1], rel=0.3)


def test_block_length_is_arch_stationary_column():
    rng = np.random.default_rng(2)
    x = ar1(rng, 800, 0.6, 0.0)
    assert optimal_block_length(x) == pytest.approx(arch_block_length(x)["stationary"].iloc[0])
    assert optimal_block_length(np.zeros(100)) == 1.0  # constant: no dependence, no NaN
    assert optimal_block_length([0.1, 0.2]) == 1.0
    white = rng.normal(size=5000)
    assert 1.0 <= optimal_block_length(white) < 5.0


def test_intervals_agree_with_arch_conf_int():
    rng = np.random.default_rng(3)
    x = ar1(rng, 300, 0.5, 0.2)
    b = optimal_block_length(x)
    reps = 4000

    def sharpe(v: np.ndarray) -> float:
        return float(v.mean() / v.std(ddof=1))

    def mdd(v: np.ndarray) -> float:
        eq = np.cumprod(1 + v)
        return float(np.max(1 - eq / np.maximum(np.maximum.accumulate(eq), 1.0)))

    small = x / 100.0  # returns of a plausible size for the drawdown
    cases = [("mean", x, np.mean), ("sharpe", x, sharpe), ("max_drawdown", small, mdd)]
    for name, data, func in cases:
        ours = bootstrap_ci(data, name, resamples=reps, seed=11, block_length=b)
        ci = StationaryBootstrap(b, data, seed=11).conf_int(
            func, reps=reps, method="percentile", size=0.95
        )
        dist = bootstrap_distribution(data, (name,), resamples=reps, seed=11, block_length=b)[1]
        spread = float(np.std(dist[name]))
        # each endpoint carries Monte Carlo error ~0.04 spread at 4000 resamples
        assert ours.lower == pytest.approx(ci[0, 0], abs=0.25 * spread), name
        assert ours.upper == pytest.approx(ci[1, 0], abs=0.25 * spread), name
        assert ours.estimate == pytest.approx(func(data))


def test_coverage_of_the_mean_on_ar1(capsys):
    """95% percentile intervals of the mean of AR(1) returns (phi = 0.5) cover the true mean.

    300 series of 2,000 bars, 500 resamples each, Politis-White block lengths. (At 500 bars
    the percentile interval under-covers, about 0.88-0.91 here, and arch's conf_int on the
    same series gives the same: the bootstrap variance is biased down at short lengths.)
    """
    rng = np.random.default_rng(2024)
    mu, n, series, reps = 0.1, 2000, 300, 500
    hits = 0
    blocks = []
    for s in range(series):
        x = ar1(rng, n, 0.5, mu)
        res = bootstrap_ci(x, "mean", resamples=reps, seed=s, level=0.95)
        hits += res.lower <= mu <= res.upper
        blocks.append(res.block_length)
    coverage = hits / series
    with capsys.disabled():
        print(
            f"\n[bootstrap coverage] AR(1) phi=0.5, n={n}, {series} series x {reps} resamples: "
            f"95% interval of the mean covers the truth in {coverage:.3f} "
            f"(mean block length {np.mean(blocks):.1f})"
        )
    assert 0.90 <= coverage <= 0.98


# --------------------------------------------------------------------------------------
# seeds, consistency with the metrics, shared resamples


def test_same_seed_same_interval_and_workers_do_not_matter():
    rng = np.random.default_rng(4)
    x = rng.normal(1e-4, 1e-2, 50_000)  # several chunks of resamples
    a = bootstrap_ci(x, "sharpe", resamples=300, seed=5, periods_per_year=252)
    b = bootstrap_ci(x, "sharpe", resamples=300, seed=5, periods_per_year=252, workers=1)
    c = bootstrap_ci(x, "sharpe", resamples=300, seed=6, periods_per_year=252)
    assert (a.lower, a.upper) == (b.lower, b.upper)
    assert (a.lower, a.upper) != (c.lower, c.upper)
    several = bootstrap_metrics(
        x, statistics=("mean", "sharpe"), resamples=300, seed=5, periods_per_year=252
    )
    assert (several["sharpe"].lower, several["sharpe"].upper) == (a.lower, a.upper)


def test_indices_are_the_resamples_used():
    rng = np.random.default_rng(6)
    x = rng.normal(size=700)

    def first_two(m: np.ndarray) -> np.ndarray:
        return m[:, 0] * 1000.0 + m[:, 1]

    idx = stationary_bootstrap_indices(x.size, 50, 3.0, seed=8)
    _, dist, _ = bootstrap_distribution(x, (first_two,), resamples=50, seed=8, block_length=3.0)
    assert np.array_equal(dist["first_two"], x[idx[:, 0]] * 1000.0 + x[idx[:, 1]])


def test_point_estimates_equal_compute_metrics():
    rng = np.random.default_rng(7)
    x = rng.normal(3e-4, 1e-2, 1000)
    metrics = compute_metrics(x, periods_per_year=252)
    results = bootstrap_metrics(x, statistics=tuple(STATISTICS), resamples=50, periods_per_year=252)
    for name, res in results.items():
        if name == "std":
            assert res.estimate == pytest.approx(x.std(ddof=1))
        elif name == "mean":
            assert res.estimate == pytest.approx(metrics["mean_return"])
        else:
            assert res.estimate == pytest.approx(metrics[name], rel=1e-12), name
        assert res.lower <= res.upper
        assert res.n_valid == 50 and res.resamples == 50 and res.n == 1000


def test_vectorised_drawdown_matches_a_loop_on_resamples():
    rng = np.random.default_rng(8)
    x = rng.normal(0, 0.02, 300)
    idx = stationary_bootstrap_indices(x.size, 20, 5.0, seed=3)
    rows = x[idx]
    got = RowStats(rows).max_drawdown()
    for k in range(rows.shape[0]):
        equity, peak, worst = 1.0, 1.0, 0.0
        for v in rows[k]:
            equity *= 1 + v
            peak = max(peak, equity)
            worst = max(worst, 1 - equity / peak)
        assert got[k] == pytest.approx(worst, abs=1e-12)


def test_basic_interval_reflects_the_percentile_interval():
    rng = np.random.default_rng(9)
    x = rng.normal(0.001, 0.01, 500)
    pct = bootstrap_ci(x, "mean", resamples=500, seed=1)
    basic = bootstrap_ci(x, "mean", resamples=500, seed=1, method="basic")
    assert basic.lower == pytest.approx(2 * pct.estimate - pct.upper)
    assert basic.upper == pytest.approx(2 * pct.estimate - pct.lower)
    wide = bootstrap_ci(x, "mean", resamples=500, seed=1, level=0.99)
    assert wide.lower < pct.lower and wide.upper > pct.upper


# --------------------------------------------------------------------------------------
# degenerate series and errors


def test_constant_and_tiny_series_do_not_crash():
    flat = bootstrap_metrics(np.zeros(100), statistics=("mean", "sharpe", "max_drawdown"))
    assert flat["sharpe"].estimate == 0.0 and flat["sharpe"].upper == 0.0
    assert flat["max_drawdown"].upper == 0.0 and flat["mean"].block_length == 1.0
    const = bootstrap_ci(np.full(100, 1e-3), "sharpe", resamples=100)
    assert math.isnan(const.estimate) and math.isnan(const.lower) and const.n_valid == 0
    assert const.to_dict()["lower"] is None
    one = bootstrap_ci([0.01], "mean", resamples=20)
    assert one.lower == one.upper == 0.01


def test_input_errors_are_clear():
    x = np.random.default_rng(0).normal(size=100)
    with pytest.raises(EvaluationError, match="unknown statistic 'shrape'"):
        bootstrap_ci(x, "shrape")
    with pytest.raises(EvaluationError, match="one value per row"):
        bootstrap_ci(x, np.mean, resamples=10)  # reduces over everything: a scalar
    assert bootstrap_ci(x, lambda m: m.mean(axis=1), resamples=10).statistic == "<lambda>"
    with pytest.raises(EvaluationError, match="level"):
        bootstrap_ci(x, "mean", level=1.5)
    with pytest.raises(EvaluationError, match="resamples"):
        bootstrap_ci(x, "mean", resamples=0)
    with pytest.raises(EvaluationError, match="block_length"):
        bootstrap_ci(x, "mean", block_length=0.5)
    with pytest.raises(EvaluationError, match="method"):
        bootstrap_ci(x, "mean", method="bca")
    with pytest.raises(EvaluationError, match="non-finite"):
        bootstrap_ci(np.array([0.1, np.inf]), "mean")
    with pytest.raises(EvaluationError, match="one-dimensional"):
        bootstrap_ci(np.zeros((3, 3)), "mean")


@pytest.mark.parametrize(
    ("block", "series"),
    [
        (1.0, "returns"),  # every position starts a block
        (3.0, "returns"),  # block starts drawn as uniforms
        (40.0, "returns"),  # block starts drawn as geometric gaps
        (3.0, "sparse"),  # mostly flat: many constant resamples
        (3.0, "flat"),  # never trades: every resample identically 0
    ],
)
def test_the_one_pass_kernel_equals_the_matrix_statistics_on_the_same_resamples(
    block: float, series: str
) -> None:
    """The report's statistics come from a kernel that walks each resample once; on the
    same resamples they equal the row statistics of the materialised (rows, n) matrix
    (summation order aside), undefined values included."""
    import sentio.evaluation.bootstrap as bootstrap_module

    rng = np.random.default_rng(11)
    n = 3000
    x = rng.normal(2e-4, 1e-2, n)
    if series == "sparse":
        x = x * (rng.random(n) < 0.02)
    elif series == "flat":
        x = np.zeros(n)
    stats = ("sharpe", "sortino", "total_return", "max_drawdown", "mean", "std", "cagr", "calmar")
    assert set(stats) <= bootstrap_module.FUSED_STATISTICS
    kwargs = {"resamples": 300, "block_length": block, "periods_per_year": 252.0, "seed": 5}
    _, fused, _ = bootstrap_distribution(x, stats, **kwargs)
    _, matrix, _ = bootstrap_distribution(x, (*stats, "hit_rate"), **kwargs)  # not fusable
    for name in stats:
        a, b = fused[name], matrix[name]
        assert np.array_equal(np.isnan(a), np.isnan(b)), name
        ok = ~np.isnan(a)
        assert np.allclose(a[ok], b[ok], rtol=1e-9, atol=1e-15), name
    if series == "flat":
        assert np.all(fused["sharpe"] == 0.0) and np.all(fused["max_drawdown"] == 0.0)


def test_row_stats_from_aggregates_refuse_what_needs_the_returns() -> None:
    from sentio.evaluation.rowstats import RowStats

    one = np.ones(1)
    stats = RowStats.from_aggregates(10, one, one, one, one + 1.0, one * 0.1, one < 0, one < 0)
    assert stats.total_return()[0] == 1.0 and stats.max_drawdown()[0] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="needs the returns"):
        stats.hit_rate()
