"""Fitting of the regime model: Gaussian HMM with an honest volatility-quantile fallback.

:func:`fit_regimes` standardises the training rows with their own mean and standard
deviation (stored in the model, never full-sample), starts ``n_init`` hmmlearn
``GaussianHMM`` initialisations (the first with state means at the volatility-quantile
groups' means, the others from seeded k-means on a subsample), runs each for a few EM
iterations (screening), runs the one with the best log-likelihood on to convergence (the
next best if it proves unusable), and
relabels its states by ascending variance of the return input (label 0 = calmest). When
no initialisation is healthy, or the data cannot carry an HMM at all, the model falls back
to volatility-quantile regimes and says why in ``reason``.

A fit is healthy when:

* EM really converged: the last log-likelihood improvement is below the tolerance. The
  tolerance is ``cfg.tol`` per training row (``cfg.tol * n_rows`` on the total
  log-likelihood), so that the criterion does not depend on the window length; hmmlearn's
  own ``monitor_.converged`` also says True when iterations ran out, so it is not used.
* every parameter is finite;
* no state's variance (standardised units) is below :data:`COLLAPSE_VAR`;
* every state's occupancy (mean posterior on the training rows) is at least
  ``cfg.min_occupancy``.

hmmlearn's posteriors (smoothed) serve only as this training-time diagnostic; filtering
is :mod:`sentio.regimes.filter`.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from sentio.config import RegimesConfig
from sentio.errors import DataError
from sentio.io import write_json_atomic
from sentio.regimes.observations import RETURN_COLUMN, VOL_COLUMN

__all__ = [
    "COLLAPSE_VAR",
    "FORMAT_VERSION",
    "MIN_ROWS_PER_PARAMETER",
    "RegimeModel",
    "fit_regimes",
]

COLLAPSE_VAR = 1e-2  # a state variance below this (standardised units) has collapsed
MIN_ROWS_PER_PARAMETER = 10  # fewer training rows than this per free parameter: no HMM
FORMAT_VERSION = 1
SCREEN_ITER = 10  # EM iterations of each initialisation before ranking them
KMEANS_ROWS = 20_000  # rows of the k-means subsample that initialises the state means
_MIN_STD = 1e-12

Method = Literal["hmm", "vol_quantile"]


def _arr(x: Any) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


@dataclass(frozen=True, eq=False)
class RegimeModel:
    """A fitted regime model as plain parameters (standardised input units).

    Attributes:
        method: ``"hmm"`` (filter with the HMM) or ``"vol_quantile"`` (fallback labels).
        reason: one sentence saying why this method was used, with the numbers.
        n_states: number of regimes ``K``; label 0 is the calmest, ``K-1`` the most volatile.
        covariance_type: ``"diag"`` (covars ``(K, d)``) or ``"full"`` (covars ``(K, d, d)``).
        startprob: ``(K,)`` initial distribution.
        transmat: ``(K, K)`` transition matrix, rows sum to one.
        means: ``(K, d)`` state means of the standardised inputs.
        covars: state covariances of the standardised inputs (see ``covariance_type``).
        mean: ``(d,)`` training mean used to standardise inputs.
        std: ``(d,)`` training standard deviation used to standardise inputs.
        vol_thresholds: ``(K-1,)`` quantiles of the raw training volatility input at
            ``k / K``; the fallback labels a row by how many thresholds its value exceeds.
        vol_column: index of the volatility input in ``X`` (quantile fallback).
        log_likelihood: training log-likelihood of the kept HMM (None for the fallback).
        n_train: number of training rows.
        n_iter: EM iterations run by the kept fit (0 for the fallback).
        details: per-initialisation diagnostics (JSON-able).
    """

    method: Method
    reason: str
    n_states: int
    covariance_type: Literal["diag", "full"]
    startprob: np.ndarray
    transmat: np.ndarray
    means: np.ndarray
    covars: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    vol_thresholds: np.ndarray
    vol_column: int = VOL_COLUMN
    log_likelihood: float | None = None
    n_train: int = 0
    n_iter: int = 0
    details: list[dict[str, Any]] = field(default_factory=list)

    @property
    def n_features(self) -> int:
        """Number of input columns ``d``."""
        return int(self.mean.shape[0])

    def full_covars(self) -> np.ndarray:
        """Covariances as ``(K, d, d)`` matrices whatever the covariance type."""
        if self.covariance_type == "diag":
            return np.stack([np.diag(c) for c in self.covars])
        return self.covars

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able parameters (floats keep their exact value through JSON)."""
        return {
            "format_version": FORMAT_VERSION,
            "method": self.method,
            "reason": self.reason,
            "n_states": self.n_states,
            "covariance_type": self.covariance_type,
            "startprob": self.startprob.tolist(),
            "transmat": self.transmat.tolist(),
            "means": self.means.tolist(),
            "covars": self.covars.tolist(),
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "vol_thresholds": self.vol_thresholds.tolist(),
            "vol_column": self.vol_column,
            "log_likelihood": self.log_likelihood,
            "n_train": self.n_train,
            "n_iter": self.n_iter,
            "details": self.details,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RegimeModel:
        """Inverse of :meth:`to_dict`."""
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise DataError(
                f"regime model format_version {version!r} is not supported (expected {FORMAT_VERSION})"
            )
        return cls(
            method=data["method"],
            reason=data["reason"],
            n_states=int(data["n_states"]),
            covariance_type=data["covariance_type"],
            startprob=_arr(data["startprob"]),
            transmat=_arr(data["transmat"]),
            means=_arr(data["means"]),
            covars=_arr(data["covars"]),
            mean=_arr(data["mean"]),
            std=_arr(data["std"]),
            vol_thresholds=_arr(data["vol_thresholds"]),
            vol_column=int(data["vol_column"]),
            log_likelihood=data["log_likelihood"],
            n_train=int(data["n_train"]),
            n_iter=int(data["n_iter"]),
            details=list(data.get("details", [])),
        )

    def save(self, path: str | Path) -> Path:
        """Write the parameters as JSON (atomically); no pickle."""
        return Path(write_json_atomic(path, self.to_dict()))

    @classmethod
    def load(cls, path: str | Path) -> RegimeModel:
        """Read a model written by :meth:`save`."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"cannot read regime model {path}: {exc}") from exc
        return cls.from_dict(data)


def _n_free_parameters(k: int, d: int, covariance_type: str) -> int:
    cov = k * d if covariance_type == "diag" else k * d * (d + 1) // 2
    return (k - 1) + k * (k - 1) + k * d + cov


def _vol_input(X: np.ndarray, vol_column: int) -> np.ndarray:
    """The volatility input: column ``vol_column``, or ``|x_0|`` for one-column inputs."""
    if X.shape[1] > vol_column:
        return X[:, vol_column]
    return np.abs(X[:, 0])


def _fallback(
    reason: str,
    cfg: RegimesConfig,
    mean: np.ndarray,
    std: np.ndarray,
    thresholds: np.ndarray,
    vol_column: int,
    n_train: int,
    details: list[dict[str, Any]],
) -> RegimeModel:
    k, d = cfg.n_states, mean.shape[0]
    covars = np.ones((k, d)) if cfg.covariance_type == "diag" else np.stack([np.eye(d)] * k)
    return RegimeModel(
        method="vol_quantile",
        reason=reason,
        n_states=k,
        covariance_type=cfg.covariance_type,
        startprob=np.full(k, 1.0 / k),
        transmat=np.full((k, k), 1.0 / k),
        means=np.zeros((k, d)),
        covars=covars,
        mean=mean,
        std=std,
        vol_thresholds=thresholds,
        vol_column=vol_column,
        log_likelihood=None,
        n_train=n_train,
        n_iter=0,
        details=details,
    )


def _diagnose(
    hmm: Any,
    Z: np.ndarray,
    tol_total: float,
    cfg: RegimesConfig,
    history: list[float],
    iters: int,
) -> tuple[str | None, float, dict[str, Any]]:
    """Why a fitted hmmlearn model is unusable (None if healthy), its log-likelihood and info.

    ``history``: the EM log-likelihoods of all iterations run (screening + refinement).
    """
    n_iter = cfg.n_iter
    info: dict[str, Any] = {"iterations": iters}
    delta = history[-1] - history[-2] if len(history) >= 2 else math.inf
    info["last_improvement"] = delta if math.isfinite(delta) else None
    if not (len(history) >= 2 and delta < tol_total):
        return (
            f"EM did not converge: {iters} of n_iter={n_iter} iterations run, last "
            f"log-likelihood improvement {delta:.4g} >= tolerance {tol_total:.4g}",
            -math.inf,
            info,
        )
    params = [hmm.startprob_, hmm.transmat_, hmm.means_, hmm._covars_]
    if not all(np.all(np.isfinite(p)) for p in params):
        return "non-finite HMM parameters (NaN or inf)", -math.inf, info
    variances = (
        hmm._covars_
        if cfg.covariance_type == "diag"
        else np.diagonal(hmm._covars_, axis1=1, axis2=2)
    )
    vmin = float(np.min(variances))
    info["min_variance"] = vmin
    if vmin < COLLAPSE_VAR:
        state = int(np.argmin(np.min(variances, axis=1)))
        return (
            f"collapsed covariance: state {state} has variance {vmin:.3g} < {COLLAPSE_VAR} "
            "(standardised units)",
            -math.inf,
            info,
        )
    with np.errstate(all="ignore"):
        log_prob, posteriors = hmm.score_samples(Z)
    if not np.isfinite(log_prob) or not np.all(np.isfinite(posteriors)):
        return "non-finite log-likelihood or posteriors", -math.inf, info
    occupancy = posteriors.mean(axis=0)
    info["occupancy"] = [float(o) for o in occupancy]
    info["log_likelihood"] = float(log_prob)
    if float(occupancy.min()) < cfg.min_occupancy:
        state = int(np.argmin(occupancy))
        return (
            f"state {state} occupancy {occupancy.min():.4f} < min_occupancy {cfg.min_occupancy}",
            float(log_prob),
            info,
        )
    return None, float(log_prob), info


def _quiet_fit(hmm: Any, Z: np.ndarray) -> None:
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        hmm.fit(Z)


def _vol_quantile_means(Z: np.ndarray, k: int, vol_column: int) -> np.ndarray:
    """Initial state means: mean rows of the ``k`` volatility-quantile groups."""
    order = np.argsort(Z[:, vol_column], kind="stable")
    return np.stack([Z[g].mean(axis=0) for g in np.array_split(order, k)])


def _kmeans_means(Z: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Initial state means: k-means (one run) on a seeded subsample of the training rows."""
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(seed)
    rows = Z if Z.shape[0] <= KMEANS_ROWS else Z[rng.choice(Z.shape[0], KMEANS_ROWS, False)]
    km = KMeans(n_clusters=k, n_init=1, random_state=seed).fit(rows)
    return np.asarray(km.cluster_centers_, dtype=np.float64)


def fit_regimes(
    X_train: np.ndarray,
    cfg: RegimesConfig,
    *,
    vol_column: int = VOL_COLUMN,
    screen_iter: int = SCREEN_ITER,
) -> RegimeModel:
    """Fit the regime model on training rows only.

    Args:
        X_train: ``(T, d)`` raw (unstandardised) inputs of the training range, e.g.
            ``regime_observations(...).X[:n_train]``.
        cfg: regime settings (``n_states``, ``n_init``, ``n_iter``, ``tol`` per row,
            ``covariance_type``, ``min_occupancy``, ``seed``).
        vol_column: index of the volatility input used by the quantile fallback.
        screen_iter: EM iterations every initialisation runs before the initialisations
            are ranked by log-likelihood; only the best is run on to convergence (the next
            one if it turns out unusable). Counts towards ``cfg.n_iter``.

    Returns:
        A :class:`RegimeModel`; ``method == "vol_quantile"`` with a ``reason`` whenever the
        HMM cannot be fitted honestly. Data the HMM cannot fit never raises.

    Raises:
        DataError: for inputs that are not a finite 2-D array with at least one row.
    """
    X = _checked_inputs(X_train)
    t, d = X.shape
    k = cfg.n_states
    vol = _vol_input(X, vol_column)
    thresholds = np.quantile(vol, np.arange(1, k) / k)
    mean = X.mean(axis=0)
    raw_std = X.std(axis=0)
    std = np.where(raw_std > _MIN_STD, raw_std, 1.0)

    def fallback(reason: str, details: list[dict[str, Any]] | None = None) -> RegimeModel:
        return _fallback(reason, cfg, mean, std, thresholds, vol_column, t, details or [])

    reason = _input_problem(X, mean, raw_std, cfg)
    if reason is not None:
        return fallback(reason)
    Z = (X - mean) / std
    n_distinct = min(len(np.unique(Z[:, j])) for j in range(d))
    if n_distinct <= k:
        return fallback(
            f"degenerate input: a column has only {n_distinct} distinct values for {k} states"
        )

    tol_total = cfg.tol * t
    details, candidates = _screen(Z, cfg, tol_total, vol_column, screen_iter)
    best = _refine(candidates, details, Z, cfg, tol_total)
    if best is None:
        reasons = "; ".join(f"init {r['init']}: {r['rejected']}" for r in details)
        return fallback(f"no HMM initialisation of {cfg.n_init} was usable ({reasons})", details)
    log_prob, hmm = best
    return _hmm_model(hmm, log_prob, details, cfg, mean, std, thresholds, vol_column, t)


def _checked_inputs(X_train: np.ndarray) -> np.ndarray:
    """``X_train`` as a finite, non-empty ``(T, d)`` float64 array (a 1-D input is one column)."""
    X = np.asarray(X_train, dtype=np.float64)
    if X.ndim == 1:
        X = X[:, None]
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise DataError(f"fit_regimes needs a non-empty (T, d) array, got shape {X.shape}")
    if not np.all(np.isfinite(X)):
        raise DataError(f"fit_regimes: {int((~np.isfinite(X)).sum())} non-finite input values")
    return X


def _input_problem(
    X: np.ndarray, mean: np.ndarray, raw_std: np.ndarray, cfg: RegimesConfig
) -> str | None:
    """Why the training rows cannot carry an HMM (too few rows, a constant column), or None."""
    t, d = X.shape
    k = cfg.n_states
    n_params = _n_free_parameters(k, d, cfg.covariance_type)
    min_rows = MIN_ROWS_PER_PARAMETER * n_params
    if t < min_rows:
        return (
            f"too few rows: {t} training rows < {min_rows} ({MIN_ROWS_PER_PARAMETER} per free "
            f"parameter, {n_params} parameters for {k} states in {d} dimensions)"
        )
    scale = np.maximum(np.abs(mean), 1.0)
    flat = np.flatnonzero(raw_std <= 1e-9 * scale)
    if flat.size:
        return (
            f"constant input: column(s) {flat.tolist()} have standard deviation "
            f"{raw_std[flat].max():.3g} over {t} rows"
        )
    return None


def _screen(
    Z: np.ndarray, cfg: RegimesConfig, tol_total: float, vol_column: int, screen_iter: int
) -> tuple[list[dict[str, Any]], list[tuple[float, int, Any, list[float]]]]:
    """Screening: every initialisation runs a few EM iterations on all training rows.

    Returns one record per initialisation (``details``) and the fitted ones as
    ``(screening log-likelihood, init, hmm, log-likelihood history)``.
    """
    from hmmlearn.hmm import GaussianHMM

    k, d = cfg.n_states, Z.shape[1]
    seeds = np.random.SeedSequence(cfg.seed).generate_state(cfg.n_init)
    screen = min(cfg.n_iter, screen_iter)
    details: list[dict[str, Any]] = []
    candidates: list[tuple[float, int, Any, list[float]]] = []
    for i, seed in enumerate(seeds):
        entry: dict[str, Any] = {"init": i, "seed": int(seed)}
        details.append(entry)
        hmm = GaussianHMM(
            n_components=k,
            covariance_type=cfg.covariance_type,
            n_iter=screen,
            tol=tol_total,
            random_state=int(seed),
            init_params="stc",
            params="stmc",
        )
        try:
            if i == 0 and d > vol_column:
                hmm.means_ = _vol_quantile_means(Z, k, vol_column)
                entry["means_init"] = "volatility quantiles"
            else:
                hmm.means_ = _kmeans_means(Z, k, int(seed))
                entry["means_init"] = "k-means"
            _quiet_fit(hmm, Z)
        except (ValueError, np.linalg.LinAlgError, FloatingPointError) as exc:
            entry["rejected"] = f"fit failed: {exc}"
            continue
        history = [float(h) for h in hmm.monitor_.history]
        screen_ll = history[-1] if history and math.isfinite(history[-1]) else -math.inf
        entry["screen_log_likelihood"] = screen_ll if math.isfinite(screen_ll) else None
        entry["rejected"] = "not refined (lower screening log-likelihood)"
        candidates.append((screen_ll, i, hmm, history))
    return details, candidates


def _refine(
    candidates: list[tuple[float, int, Any, list[float]]],
    details: list[dict[str, Any]],
    Z: np.ndarray,
    cfg: RegimesConfig,
    tol_total: float,
) -> tuple[float, Any] | None:
    """Refinement: best screening log-likelihood first, run on until EM converges; the
    first healthy candidate's ``(log-likelihood, hmm)``, or None (``details`` updated)."""
    for _, i, hmm, history in sorted(candidates, key=lambda c: (-c[0], c[1])):
        entry = details[i]
        iters = len(history)
        converged = len(history) >= 2 and history[-1] - history[-2] < tol_total
        if not converged and iters < cfg.n_iter:
            hmm.init_params = ""
            hmm.n_iter = cfg.n_iter - iters
            hmm.monitor_.n_iter = hmm.n_iter  # the monitor keeps its own copy
            try:
                _quiet_fit(hmm, Z)
            except (ValueError, np.linalg.LinAlgError, FloatingPointError) as exc:
                entry["rejected"] = f"fit failed: {exc}"
                continue
            history = history + [float(h) for h in hmm.monitor_.history]
        why, log_prob, info = _diagnose(hmm, Z, tol_total, cfg, history, len(history))
        entry.update(info)
        entry["rejected"] = why
        if why is None:
            return log_prob, hmm
    return None


def _hmm_model(
    hmm: Any,
    log_prob: float,
    details: list[dict[str, Any]],
    cfg: RegimesConfig,
    mean: np.ndarray,
    std: np.ndarray,
    thresholds: np.ndarray,
    vol_column: int,
    t: int,
) -> RegimeModel:
    """The :class:`RegimeModel` of the kept HMM, states relabelled by ascending return variance."""
    d = mean.shape[0]
    variances = (
        hmm._covars_
        if cfg.covariance_type == "diag"
        else np.diagonal(hmm._covars_, axis1=1, axis2=2)
    )
    order = np.argsort(variances[:, min(RETURN_COLUMN, d - 1)], kind="stable")
    kept = next(r for r in details if r.get("log_likelihood") == log_prob)
    return RegimeModel(
        method="hmm",
        reason=(
            f"HMM converged: initialisation {kept['init']} of {cfg.n_init} (best screening "
            f"log-likelihood among the usable ones), log-likelihood {log_prob:.6g} after "
            f"{kept['iterations']} EM iterations, {t} training rows"
        ),
        n_states=cfg.n_states,
        covariance_type=cfg.covariance_type,
        startprob=np.asarray(hmm.startprob_)[order].copy(),
        transmat=np.asarray(hmm.transmat_)[np.ix_(order, order)].copy(),
        means=np.asarray(hmm.means_)[order].copy(),
        covars=np.asarray(hmm._covars_)[order].copy(),
        mean=mean,
        std=std,
        vol_thresholds=thresholds,
        vol_column=vol_column,
        log_likelihood=log_prob,
        n_train=t,
        n_iter=int(kept["iterations"]),
        details=details,
    )
