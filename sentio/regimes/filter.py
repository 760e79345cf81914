"""Causal regime probabilities: the HMM forward algorithm in log space.

``alpha_t ∝ b(x_t) * (A^T alpha_{t-1})``, ``alpha_0 ∝ b(x_0) * pi``: the distribution of the
regime at bar ``t`` given inputs up to ``t`` only (never the smoothed posterior).

Speed without a per-bar Python loop: the recursion is a product of ``K x K`` maps, which is
associative. :func:`filter_probs` cuts each chunk of rows into ``B`` blocks of ``L`` rows
(``L ~ sqrt(rows)``) and runs the recursion for all blocks at once (one numpy step per row
*within* a block, vectorised over blocks), carrying a ``K x K`` log transfer matrix per
block (column ``j`` = the block started in state ``j``), rescaling each column by its maximum at every step and
accumulating the log scales (the scaled forward algorithm, in log terms); this fast pass is
used when every transition probability is at least :data:`SCALED_MIN_TRANSITION`. A short
sequential pass over the blocks then supplies each block's incoming distribution, and
every row's filtered distribution follows from one vectorised log-sum-exp. With (near)
structural zeros in ``A``, or should a whole column underflow, the chunk is computed with
an exact log-sum-exp at every step instead (slower), so no path is lost to underflow. :class:`OnlineFilter` runs the same recursion
one bar at a time; both agree to float rounding (about 1e-12).

For a ``vol_quantile`` model the probabilities are the one-hot quantile labels.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.linalg import solve_triangular

from sentio.regimes.model import RegimeModel

__all__ = ["OnlineFilter", "filter_probs", "filter_labels", "log_emissions"]

_LOG_2PI = math.log(2.0 * math.pi)
# the scaled pass drops paths below ~1e-308 of a column's largest entry; with every
# transition probability >= this bound such a path is always dominated by one through the
# largest entry, so the error stays below ~1e-200; otherwise the exact log pass is used
SCALED_MIN_TRANSITION = 1e-100
_CHUNK_ELEMENTS = 2**21  # rows x K x K per chunk: bounds the memory of the transfer matrices


def _as_2d(X: np.ndarray, d: int) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim == 1:
        X = X[:, None] if d == 1 else X[None, :]
    if X.ndim != 2 or X.shape[1] != d:
        raise ValueError(f"inputs must have shape (T, {d}), got {np.shape(X)}")
    return X


def log_emissions(model: RegimeModel, X: np.ndarray) -> np.ndarray:
    """``log b_k(x_t)``: Gaussian log-densities ``(T, K)`` of the standardised raw inputs."""
    Z = (_as_2d(X, model.n_features) - model.mean) / model.std
    k, d = model.n_states, model.n_features
    if model.covariance_type == "diag":
        var = model.covars
        const = -0.5 * (d * _LOG_2PI + np.log(var).sum(1) + (model.means**2 / var).sum(1))
        # -0.5 sum_j (z_j - mu_kj)^2 / var_kj expanded into two matrix products
        out = (Z**2) @ (-0.5 / var).T
        out += Z @ (model.means / var).T
        out += const
        return out
    # full: (z - mu)^T S^-1 (z - mu) = |L^-1 (z - mu)|^2 with S = L L^T
    inv = np.stack(
        [solve_triangular(np.linalg.cholesky(c), np.eye(d), lower=True) for c in model.covars]
    )
    logdet = np.array(
        [2.0 * np.log(np.diagonal(np.linalg.cholesky(c))).sum() for c in model.covars]
    )
    w = inv.transpose(2, 0, 1).reshape(d, k * d)  # columns: rows of each L^-1
    proj = (Z @ w).reshape(-1, k, d) - np.einsum("kij,kj->ki", inv, model.means)[None]
    return -0.5 * (d * _LOG_2PI + logdet + (proj**2).sum(2))


def _log(x: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(x)


def _normalise(la: np.ndarray) -> np.ndarray:
    """Subtract the log-sum-exp over the last axis."""
    m = la.max(axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    return la - (m + np.log(np.exp(la - m).sum(axis=-1, keepdims=True)))


def _forward_chunk(log_b: np.ndarray, carry: np.ndarray, trans: np.ndarray) -> np.ndarray:
    """Normalised log alphas of the rows of ``log_b`` given the normalised log alpha before."""
    n, k = log_b.shape
    length = max(1, int(math.ceil(math.sqrt(n))))
    blocks = -(-n // length)
    padded = np.zeros((blocks * length, k))
    padded[:n] = log_b
    lb = padded.reshape(blocks, length, k)
    scaled = _transfer_scaled(lb, trans) if trans.min() >= SCALED_MIN_TRANSITION else None
    if scaled is None:  # a column underflowed entirely: redo this chunk fully in log space
        return _combine(_transfer_log(lb, trans), carry, n)
    E, S = scaled
    # incoming distribution of each block: a short sequential pass over the blocks, in
    # probabilities (the same underflow argument as for the scaled pass holds)
    last_e = E[:, -1]
    last_w = np.exp(S[:, -1, 0] - S[:, -1, 0].max(axis=1, keepdims=True))
    incoming_p = np.empty((blocks, k))
    cur = np.exp(carry)
    for b in range(blocks):
        incoming_p[b] = cur
        v = last_e[b] @ (last_w[b] * cur)
        cur = v / v.sum()
    with np.errstate(divide="ignore"):
        incoming = np.log(incoming_p)
    # every row: alpha[i] ∝ sum_j E[i, j] exp(S[j] + incoming[j]) (max-shifted per row)
    w = S + incoming[:, None, None, :]
    w -= w.max(axis=3, keepdims=True)
    np.exp(w, out=w)
    alpha = np.matmul(E, w.transpose(0, 1, 3, 2))[..., 0].reshape(blocks * length, k)[:n]
    with np.errstate(divide="ignore"):
        return _normalise(np.log(alpha))


def _transfer_scaled(lb: np.ndarray, trans: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Transfer matrices with linear arithmetic and per-column scaling.

    Returns ``(E, S)`` with ``P[b, l, i, j] = log E[b, l, i, j] + S[b, l, 0, j]`` the log
    weight of state ``i`` at row ``l`` of block ``b`` given state ``j`` before the block.

    Each step multiplies by ``diag(b_t) A^T`` (with ``b_t`` divided by its row maximum, a
    factor common to the whole row that cancels in the normalisation). A column's maximum
    shrinks by at most ``min(A)`` per step and grows by at most ``K``, so columns are
    divided by their maximum only every ``interval`` steps, chosen to keep every maximum
    within ``[1e-290, 1e100]``; the logs of the divisors accumulate in ``S``. Returns None
    when a column underflows to zero anyway (then the exact log pass is used).
    """
    blocks, length, k = lb.shape
    eb = np.exp(lb - lb.max(axis=2, keepdims=True))
    at = trans.T
    shrink = max(-math.log10(float(trans.min())), 1e-3)
    interval = int(min(64, max(1, 290 // shrink), max(1, 100 // math.log10(k))))
    E = np.empty((blocks, length, k, k))
    S = np.empty((blocks, length, 1, k))
    with np.errstate(divide="ignore", invalid="ignore"):
        m = eb[:, 0, :, None] * at[None]
        c = m.max(axis=1, keepdims=True)
        E[:, 0] = m / c
        S[:, 0] = np.log(c)
        for step in range(1, length):
            cur = E[:, step]
            np.matmul(at, E[:, step - 1], out=cur)
            cur *= eb[:, step, :, None]
            if step % interval == 0:
                c = cur.max(axis=1, keepdims=True)
                cur /= c
                np.add(S[:, step - 1], np.log(c), out=S[:, step])
            else:
                S[:, step] = S[:, step - 1]
        if not (np.all(np.isfinite(S)) and np.all(np.isfinite(E[:, -1]))):
            return None
        if np.any(E.max(axis=2) <= 0.0):
            return None
    return E, S


def _transfer_log(lb: np.ndarray, trans: np.ndarray) -> np.ndarray:
    """Log transfer matrices ``P[b, l, i, j]`` with an exact log-sum-exp at every step.

    ``P_l[i, j] = log b_l(i) + logsumexp_m (log A[m, i] + P_{l-1}[m, j])``, the maximum taken
    per ``(i, j)``, so no path is lost to underflow whatever ``A`` and the emissions are.
    """
    blocks, length, k = lb.shape
    log_a = _log(trans)  # [m, i]
    P = np.empty((blocks, length, k, k))
    P[:, 0] = lb[:, 0, :, None] + log_a.T[None]
    for step in range(1, length):
        # terms[b, m, i, j] = log A[m, i] + P[b, step - 1, m, j]
        terms = log_a[None, :, :, None] + P[:, step - 1][:, :, None, :]
        m = terms.max(axis=1)
        m = np.where(np.isfinite(m), m, 0.0)
        with np.errstate(divide="ignore"):
            new = m + np.log(np.exp(terms - m[:, None]).sum(axis=1))
        new += lb[:, step, :, None]
        # a common shift of a block's matrix cancels in the normalisation of every row
        shift = new.max(axis=(1, 2), keepdims=True)
        new -= np.where(np.isfinite(shift), shift, 0.0)
        P[:, step] = new
    return P


def _combine(P: np.ndarray, carry: np.ndarray, n: int) -> np.ndarray:
    """Filtered log alphas of every row from the blocks' transfer matrices."""
    blocks, length, k, _ = P.shape
    # incoming distribution of each block: a short sequential pass over the blocks
    incoming = np.empty((blocks, k))
    cur = carry
    for b in range(blocks):
        incoming[b] = cur
        if b + 1 < blocks:
            cur = _normalise(_logsumexp_cols(P[b, length - 1], cur))
    # every row at once: log alpha[i] = logsumexp_j (P[i, j] + incoming[j])
    terms = P + incoming[:, None, None, :]
    m = terms.max(axis=3, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        la = (m + np.log(np.exp(terms - m).sum(axis=3, keepdims=True)))[..., 0]
    return _normalise(la.reshape(blocks * length, k)[:n])


def _logsumexp_cols(P: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``log sum_j exp(P[i, j] + v[j])`` for each ``i``."""
    t = P + v[None, :]
    m = t.max(axis=1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        return (m + np.log(np.exp(t - m).sum(axis=1, keepdims=True)))[:, 0]


def _quantile_labels(model: RegimeModel, X: np.ndarray) -> np.ndarray:
    X = _as_2d(X, model.n_features)
    vol = X[:, model.vol_column] if X.shape[1] > model.vol_column else np.abs(X[:, 0])
    return np.searchsorted(model.vol_thresholds, vol, side="left").astype(np.int64)


def filter_probs(model: RegimeModel, X: np.ndarray) -> np.ndarray:
    """Causal regime probabilities ``(T, K)`` of raw inputs ``X`` (rows in time order).

    Row ``t`` uses rows ``0..t`` only, starting from the model's ``startprob`` at row 0:
    it equals ``P(regime_t | x_0..x_t)``. Fallback models give one-hot quantile labels.
    """
    k = model.n_states
    if model.method == "vol_quantile":
        labels = _quantile_labels(model, X)
        return np.eye(k)[labels]
    log_b = log_emissions(model, X)
    t = log_b.shape[0]
    out = np.empty((t, k))
    if t == 0:
        return out
    carry = _normalise(_log(model.startprob) + log_b[0])
    out[0] = carry
    chunk = max(1024, _CHUNK_ELEMENTS // (k * k))
    for s in range(1, t, chunk):
        e = min(t, s + chunk)
        out[s:e] = _forward_chunk(log_b[s:e], carry, model.transmat)
        carry = out[e - 1]
    return np.exp(out)


def filter_labels(model: RegimeModel, X: np.ndarray) -> np.ndarray:
    """Most probable causal regime of each row (argmax of :func:`filter_probs`)."""
    return np.argmax(filter_probs(model, X), axis=1)


class OnlineFilter:
    """One-bar-at-a-time causal filter for live use, equal to :func:`filter_probs`.

    ``step(x)`` takes the raw inputs of the next bar and returns its regime probabilities.
    """

    def __init__(self, model: RegimeModel) -> None:
        self.model = model
        self._log_a = _log(model.transmat)
        self._log_pi = _log(model.startprob)
        self._log_alpha: np.ndarray | None = None
        self.n_steps = 0

    def reset(self) -> None:
        """Forget the past: the next step starts from ``startprob`` again."""
        self._log_alpha = None
        self.n_steps = 0

    def step(self, x: np.ndarray) -> np.ndarray:
        """Regime probabilities ``(K,)`` of the next bar with raw inputs ``x`` ``(d,)``."""
        row = _as_2d(np.asarray(x, dtype=np.float64).reshape(1, -1), self.model.n_features)
        self.n_steps += 1
        if self.model.method == "vol_quantile":
            return np.eye(self.model.n_states)[_quantile_labels(self.model, row)[0]]
        lb = log_emissions(self.model, row)[0]
        if self._log_alpha is None:
            la = self._log_pi + lb
        else:
            la = lb + _logsumexp_cols(self._log_a.T, self._log_alpha)
        self._log_alpha = _normalise(la)
        return np.exp(self._log_alpha)
