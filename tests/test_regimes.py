"""Regime model: causal filter against hmmlearn, truncation, recovery, fallback, round trip."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from hmmlearn.hmm import GaussianHMM

from sentio.config import RegimesConfig, SentioConfig
from sentio.data.synth import generate, regime_vols
from sentio.regimes import (
    OnlineFilter,
    RegimeModel,
    filter_probs,
    fit_regimes,
    regime_history,
    regime_observations,
    train_rows,
)


def _random_model(rng: np.random.Generator, k: int, d: int, cov: str) -> GaussianHMM:
    hmm = GaussianHMM(n_components=k, covariance_type=cov)
    hmm.startprob_ = rng.dirichlet(np.ones(k))
    hmm.transmat_ = rng.dirichlet(np.ones(k), size=k) * 0.3 + 0.7 * np.eye(k)
    hmm.means_ = rng.normal(0, 1.5, (k, d))
    if cov == "diag":
        hmm.covars_ = rng.uniform(0.3, 2.0, (k, d))
    else:
        a = rng.normal(size=(k, d, d))
        hmm.covars_ = a @ a.transpose(0, 2, 1) + 0.5 * np.eye(d)
    return hmm


def _as_model(hmm: GaussianHMM, cov: str) -> RegimeModel:
    k, d = hmm.means_.shape
    return RegimeModel(
        method="hmm",
        reason="oracle",
        n_states=k,
        covariance_type=cov,  # type: ignore[arg-type]
        startprob=hmm.startprob_.copy(),
        transmat=hmm.transmat_.copy(),
        means=hmm.means_.copy(),
        covars=np.asarray(hmm._covars_).copy(),
        mean=np.zeros(d),
        std=np.ones(d),
        vol_thresholds=np.zeros(k - 1),
    )


@pytest.mark.parametrize("cov", ["diag", "full"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_filter_matches_hmmlearn_oracle(cov: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    k, d = [(2, 1), (3, 2), (4, 3)][seed]
    hmm = _random_model(rng, k, d, cov)
    X, _ = hmm.sample(3000, random_state=seed)
    X[rng.integers(0, 3000, 5)] += 25.0  # a few outliers: tiny emission likelihoods
    model = _as_model(hmm, cov)
    probs = filter_probs(model, X)
    assert probs.shape == (3000, k)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-12)
    for t in [0, 1, 2, 17, 500, 1234, 2999, *rng.integers(0, 3000, 5).tolist()]:
        oracle = hmm.predict_proba(X[: t + 1])[-1]  # smoothed at the last row = filtered
        np.testing.assert_allclose(probs[t], oracle, atol=1e-8, rtol=0)


def test_online_filter_equals_batch() -> None:
    rng = np.random.default_rng(5)
    hmm = _random_model(rng, 3, 2, "full")
    X, _ = hmm.sample(2000, random_state=5)
    model = _as_model(hmm, "full")
    batch = filter_probs(model, X)
    online = OnlineFilter(model)
    steps = np.stack([online.step(x) for x in X])
    np.testing.assert_allclose(steps, batch, atol=1e-12, rtol=0)


def test_filter_truncation_and_long_series() -> None:
    """Prefixes agree with the whole series, also across internal chunk boundaries."""
    rng = np.random.default_rng(9)
    hmm = _random_model(rng, 3, 2, "diag")
    X = rng.normal(0, 1.5, (600_000, 2)) + np.repeat(rng.normal(0, 2, (600, 2)), 1000, axis=0)
    model = _as_model(hmm, "diag")
    full = filter_probs(model, X)
    for n in [1, 2, 999, 233_017, 250_000, 599_999]:
        np.testing.assert_allclose(filter_probs(model, X[:n]), full[:n], atol=1e-10, rtol=0)
    online = OnlineFilter(model)
    tail = np.stack([online.step(x) for x in X[:3000]])
    np.testing.assert_allclose(tail, full[:3000], atol=1e-12, rtol=0)


@pytest.fixture(scope="module")
def synth() -> tuple[SentioConfig, pl.DataFrame, pl.DataFrame]:
    cfg = SentioConfig.model_validate({"synth": {"years": 2, "seed": 3}})
    data = generate(cfg)
    return cfg, data.bars, data.regimes


def test_observations_truncation_exact(synth) -> None:
    cfg, bars, _ = synth
    under = bars.filter(pl.col("symbol") == cfg.universe.underlying)
    full = regime_observations(bars, cfg)
    assert full.X.dtype == np.float64 and full.X.shape[1] == 2
    assert np.all(np.isfinite(full.X))
    assert full.timestamps.len() == under.height - full.warmup
    for n in [full.warmup + 1, full.warmup + 5000, under.height - 17]:
        part = regime_observations(under.head(n), cfg)
        rows = part.X.shape[0]
        assert rows == n - full.warmup
        np.testing.assert_array_equal(part.X, full.X[:rows])
        assert part.timestamps.equals(full.timestamps.head(rows))


def _balanced_accuracy(pred: np.ndarray, true: np.ndarray) -> float:
    return float(np.mean([np.mean(pred[true == c] == c) for c in np.unique(true)]))


def test_recovers_true_regimes_out_of_sample(synth) -> None:
    cfg, bars, regimes = synth
    inputs = regime_observations(bars, cfg)
    n_train = train_rows(inputs.timestamps, 0.5)
    model = fit_regimes(inputs.X[:n_train], cfg.regimes)
    assert model.method == "hmm", model.reason
    labels = filter_probs(model, inputs.X).argmax(axis=1)
    _, _, vols, _ = regime_vols(cfg.synth)
    rank = np.argsort(np.argsort(vols))  # true regime -> 0 = calmest .. 2 = most volatile
    true = rank[regimes["regime"].to_numpy()[inputs.warmup :]]
    test_acc = _balanced_accuracy(labels[n_train:], true[n_train:])
    train_acc = _balanced_accuracy(labels[:n_train], true[:n_train])
    print(f"\nregime recovery balanced accuracy: unseen {test_acc:.3f}, training {train_acc:.3f}")
    assert test_acc >= 0.7
    # relabelling: states in ascending variance of the return input
    assert np.all(np.diff(model.covars[:, 0]) > 0)


def test_save_load_round_trip(synth, tmp_path) -> None:
    cfg, bars, _ = synth
    inputs = regime_observations(bars, cfg)
    small = RegimesConfig(n_init=2)
    model = fit_regimes(inputs.X[:60_000], small)
    path = model.save(tmp_path / "regimes.json")
    json.loads(path.read_text())  # plain JSON
    loaded = RegimeModel.load(path)
    np.testing.assert_array_equal(filter_probs(loaded, inputs.X), filter_probs(model, inputs.X))
    assert loaded.method == model.method and loaded.reason == model.reason
    fb = fit_regimes(np.zeros((50, 2)), small)
    fb_loaded = RegimeModel.load(fb.save(tmp_path / "fb.json"))
    np.testing.assert_array_equal(
        filter_probs(fb_loaded, inputs.X[:100]), filter_probs(fb, inputs.X[:100])
    )


def _check_fallback(model: RegimeModel, words: str, X: np.ndarray) -> None:
    assert model.method == "vol_quantile"
    assert words in model.reason, model.reason
    probs = filter_probs(model, X)
    assert probs.shape == (X.shape[0], model.n_states)
    np.testing.assert_array_equal(probs.sum(1), 1.0)
    online = OnlineFilter(model)
    np.testing.assert_array_equal(np.stack([online.step(x) for x in X[:50]]), probs[:50])


def test_fallbacks_never_raise() -> None:
    cfg = RegimesConfig(n_init=2)
    rng = np.random.default_rng(0)
    const = np.ones((5000, 2))
    _check_fallback(fit_regimes(const, cfg), "constant input", const)
    short = rng.normal(size=(30, 2))
    _check_fallback(fit_regimes(short, cfg), "too few rows", short)
    two = rng.integers(0, 2, (5000, 2)).astype(float)
    _check_fallback(fit_regimes(two, cfg), "distinct values", two)
    outlier = rng.normal(size=(5000, 2))
    outlier[1234] = 1e7
    model = fit_regimes(outlier, cfg)
    _check_fallback(model, "no HMM initialisation", outlier)
    assert "collapsed" in model.reason or "occupancy" in model.reason
    # fallback labels follow the volatility quantiles of the training rows
    vol = outlier[:, 1]
    labels = filter_probs(model, outlier).argmax(1)
    assert np.all(labels[vol <= model.vol_thresholds[0]] == 0)
    assert np.all(labels[vol > model.vol_thresholds[-1]] == model.n_states - 1)


def test_non_convergence_falls_back(synth) -> None:
    cfg, bars, _ = synth
    X = regime_observations(bars, cfg).X[:40_000]
    model = fit_regimes(X, RegimesConfig(n_init=2, n_iter=10, tol=1e-12))
    _check_fallback(model, "iterations", X)
    assert "did not converge" in model.reason


def test_regime_history() -> None:
    labels = np.array([0, 0, 1, 1, 1, 0, 2, 2])
    returns = np.array([0.1, 0.3, -0.1, 0.0, 0.1, 0.2, -1.0, 1.0])
    ts = pl.Series(range(8))
    hist = regime_history(labels, ts, returns, names=["calm", "mid", "wild"])
    json.dumps(hist)
    r0, r1, r2 = hist["regimes"]
    assert (r0["n_bars"], r0["n_runs"], r0["mean_dwell_bars"], r0["median_dwell_bars"]) == (
        3,
        2,
        1.5,
        1.5,
    )
    assert r1["share"] == 3 / 8 and r1["mean_dwell_bars"] == 3.0
    assert r0["mean_return"] == pytest.approx(0.2)
    assert r2["volatility"] == pytest.approx(np.std([-1.0, 1.0], ddof=1))
    assert hist["transition_counts"] == [[1, 1, 1], [1, 2, 0], [0, 0, 1]]
    assert hist["transition_matrix"][1] == [1 / 3, 2 / 3, 0.0]
    assert hist["start"] == "0" and hist["end"] == "7"


def test_filter_structural_zeros_and_extreme_emissions() -> None:
    """Underflow in the scaled pass (zeros in A, far-apart states) falls back to log space."""
    hmm = GaussianHMM(n_components=3, covariance_type="diag")
    hmm.startprob_ = np.array([1.0, 0.0, 0.0])
    hmm.transmat_ = np.array([[0.9, 0.1, 0.0], [0.0, 0.9, 0.1], [0.1, 0.0, 0.9]])
    hmm.means_ = np.array([[0.0], [60.0], [120.0]])
    hmm.covars_ = np.ones((3, 1))
    rng = np.random.default_rng(3)
    # stays near state 0's mean although the chain must move 0 -> 1 -> 2
    X = rng.normal(0.0, 1.0, (400, 1))
    X[200:] += 120.0
    model = _as_model(hmm, "diag")
    probs = filter_probs(model, X)
    assert np.all(np.isfinite(probs))
    for t in [0, 5, 150, 199, 200, 201, 399]:
        np.testing.assert_allclose(probs[t], hmm.predict_proba(X[: t + 1])[-1], atol=1e-8)
    online = OnlineFilter(model)
    np.testing.assert_allclose(np.stack([online.step(x) for x in X]), probs, atol=1e-12)


def test_full_covariance_fit_is_relabelled(synth) -> None:
    cfg, bars, _ = synth
    X = regime_observations(bars, cfg).X[:60_000]
    model = fit_regimes(X, RegimesConfig(n_init=2, covariance_type="full"))
    assert model.method == "hmm", model.reason
    assert model.covars.shape == (3, 2, 2)
    assert np.all(np.diff(model.covars[:, 0, 0]) > 0)
    probs = filter_probs(model, X)
    online = OnlineFilter(model)
    np.testing.assert_allclose(np.stack([online.step(x) for x in X[:500]]), probs[:500], atol=1e-12)
