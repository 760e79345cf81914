"""The pure mathematics of Sentio PPO's distributional (quantile) critic.

Nothing here depends on Stable-Baselines3: these are the formulas of DESIGN.md,
"Reference mathematics", written once and tested against brute-force references.

* :func:`quantile_midpoints` -- the fractions ``tau_i = (i + 0.5) / N``.
* :class:`NonCrossingQuantileHead` -- latent ``(B, d)`` to ``N`` sorted quantiles ``(B, N)``.
* :func:`quantile_huber_loss` -- the pairwise quantile Huber loss of the critic.
* :func:`cvar_from_quantiles` and :func:`risk_adjusted_value` -- the lower-tail mean
  ``CVaR_alpha`` and ``V_beta = (1 - beta) mean + beta CVaR_alpha``.
* :func:`gae` -- generalised advantage estimation with separate termination and truncation.
* :func:`quantile_lambda_targets` -- per-quantile lambda-return targets.
* :func:`gae_torch`, :func:`quantile_lambda_targets_torch` -- the same two on tensors, on
  their device (the device-resident rollout, :mod:`sentio.agents.device_rollout`).

Conventions shared by :func:`gae` and :func:`quantile_lambda_targets` (rollouts are
time-major, ``(T, N)`` for ``T`` steps of ``N`` parallel environments):

* ``next_*[t]`` belongs to the state reached *after* step ``t``: the next observation of
  the same episode, or -- when step ``t`` ended the episode -- its final observation (the
  one a vectorised environment reports as ``terminal_observation`` before resetting).
* ``terminated[t]``: the episode ended in a true terminal state; nothing is bootstrapped.
* ``truncated[t]``: the episode was cut (time limit, end of data); the value of its final
  observation ``next_*[t]`` is bootstrapped. A step flagged both is treated as terminated.
* ``done[t] = terminated[t] or truncated[t]``: the recursion does not look past step ``t``.
* The last step of the rollout bootstraps from ``next_*[T - 1]`` unless terminated.

With these conventions, ``gae`` with ``values = mean_i theta_i(s_t)`` and
``next_values = mean_i next_quantiles`` returns exactly ``mean_i`` of the quantile
lambda-targets (both are linear recursions with the same coefficients), provided that for
every step that is not done ``next_values[t] == values[t + 1]`` (the same state).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "NonCrossingQuantileHead",
    "cvar_from_quantiles",
    "gae",
    "gae_torch",
    "quantile_huber_loss",
    "quantile_lambda_targets",
    "quantile_lambda_targets_torch",
    "quantile_midpoints",
    "risk_adjusted_value",
]

FloatArray = npt.NDArray[np.floating]


def quantile_midpoints(
    n: int, *, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> torch.Tensor:
    """Return the ``n`` quantile fractions at the midpoints of ``n`` equal-mass bins.

    ``tau_i = (i + 0.5) / n`` for ``i = 0, ..., n - 1``; each quantile carries mass ``1/n``.

    Args:
        n: number of quantiles, at least 1.
        dtype: dtype of the result (computed in float64, then cast).
        device: device of the result.

    Returns:
        Tensor of shape ``(n,)``, strictly increasing in ``(0, 1)``.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    taus = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    return taus.to(dtype=dtype, device=device)


def _inverse_softplus(y: float) -> float:
    """``x`` with ``softplus(x) = log(1 + exp(x)) = y`` for ``y > 0``: ``log(expm1(y))``."""
    return math.log(math.expm1(y))


class NonCrossingQuantileHead(nn.Module):
    """Map a latent vector to ``N`` quantiles that are sorted ascending by construction.

    For a latent ``h`` of shape ``(B, d)``::

        base    = w_0 . h + b_0                      (B,)
        delta_j = w_j . h + b_j,  j = 1, ..., N - 1  (B, N - 1)
        theta_0 = base
        theta_i = base + sum_{j=1..i} softplus(delta_j),   i = 1, ..., N - 1

    ``softplus(x) = log(1 + exp(x)) >= 0``, so ``theta_0 <= theta_1 <= ... <= theta_{N-1}``
    for every input (floating-point rounding is monotone, so this survives large
    magnitudes; increments that underflow give ties, never crossings). The quantile
    fractions ``tau_i = (i + 0.5) / N`` are kept in the buffer :attr:`taus`.

    Initialisation: the base row is orthogonal with gain ``base_gain`` (1.0, SB3's gain for
    value heads) and bias 0. The increment rows are orthogonal with the small gain
    ``increment_gain`` (0.01) and bias ``softplus^{-1}(init_spacing)``, so at the start
    every gap ``theta_i - theta_{i-1}`` is close to ``init_spacing`` whatever the latent:
    a narrow, nearly state-independent spread around the base, i.e. the critic starts out
    as a scalar critic and learns the width of the return distribution from the targets.
    Choose ``init_spacing`` small relative to the scale of the returns.

    Args:
        in_features: size ``d`` of the latent vector.
        n_quantiles: number ``N`` of quantiles, at least 1.
        init_spacing: initial gap between adjacent quantiles, positive.
        base_gain: orthogonal-init gain of the base row.
        increment_gain: orthogonal-init gain of the increment rows.
    """

    taus: torch.Tensor

    def __init__(
        self,
        in_features: int,
        n_quantiles: int,
        *,
        init_spacing: float = 1e-3,
        base_gain: float = 1.0,
        increment_gain: float = 0.01,
    ) -> None:
        super().__init__()
        if in_features < 1:
            raise ValueError(f"in_features must be at least 1, got {in_features}")
        if n_quantiles < 1:
            raise ValueError(f"n_quantiles must be at least 1, got {n_quantiles}")
        if not init_spacing > 0.0:
            raise ValueError(f"init_spacing must be positive, got {init_spacing}")
        self.in_features = in_features
        self.n_quantiles = n_quantiles
        self.base = nn.Linear(in_features, 1)
        nn.init.orthogonal_(self.base.weight, gain=base_gain)
        nn.init.zeros_(self.base.bias)
        self.increments: nn.Linear | None = None
        if n_quantiles > 1:
            self.increments = nn.Linear(in_features, n_quantiles - 1)
            nn.init.orthogonal_(self.increments.weight, gain=increment_gain)
            nn.init.constant_(self.increments.bias, _inverse_softplus(init_spacing))
        self.register_buffer("taus", quantile_midpoints(n_quantiles), persistent=False)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        """Return the quantiles ``theta`` of shape ``(B, N)``, ascending along the last axis.

        Args:
            latent: tensor of shape ``(B, d)`` (any leading batch shape ``(..., d)`` works).
        """
        base = self.base(latent)  # (..., 1)
        if self.increments is None:
            return base
        steps = F.softplus(self.increments(latent))  # (..., N - 1), all >= 0
        return torch.cat([base, base + torch.cumsum(steps, dim=-1)], dim=-1)

    def extra_repr(self) -> str:
        """Shown by ``repr(module)``."""
        return f"in_features={self.in_features}, n_quantiles={self.n_quantiles}"


def quantile_huber_loss(
    pred: torch.Tensor, target: torch.Tensor, taus: torch.Tensor, kappa: float = 1.0
) -> torch.Tensor:
    """Pairwise quantile Huber loss of predicted quantiles against target samples.

    For every batch row ``b``, predicted quantile ``i`` and target ``j``::

        u_bij   = target_bj - pred_bi
        L_k(u)  = 0.5 u^2                  if |u| <= kappa
                  kappa (|u| - 0.5 kappa)  otherwise
        rho_bij = |tau_i - 1{u_bij < 0}| * L_k(u_bij) / kappa

        loss = (1 / B) sum_b (1 / M) sum_j sum_i rho_bij

    i.e. summed over the predicted quantiles ``i``, averaged over the targets ``j`` and the
    batch. ``L_k / kappa`` tends to ``|u|`` (the pinball loss) as ``kappa -> 0``.

    The targets are treated as constants: callers pass detached targets (e.g. the
    quantile lambda-targets of a rollout), and the function detaches them again, so no
    gradient ever flows into the target. Gradients flow into ``pred`` only.

    Args:
        pred: predicted quantiles ``theta``, shape ``(B, N)``.
        target: target samples, shape ``(B, M)`` (``M`` need not equal ``N``).
        taus: quantile fractions of ``pred``, shape ``(N,)``.
        kappa: Huber threshold, positive.

    Returns:
        Scalar tensor.
    """
    if not kappa > 0.0:
        raise ValueError(f"kappa must be positive, got {kappa}")
    if pred.ndim != 2 or target.ndim != 2 or pred.shape[0] != target.shape[0]:
        raise ValueError(
            f"pred must be (B, N) and target (B, M) with the same B, got {tuple(pred.shape)} and {tuple(target.shape)}"
        )
    if taus.shape != (pred.shape[1],):
        raise ValueError(f"taus must have shape ({pred.shape[1]},), got {tuple(taus.shape)}")
    u = target.detach().unsqueeze(-2) - pred.unsqueeze(-1)  # (B, N, M)
    abs_u = u.abs()
    huber = torch.where(abs_u <= kappa, 0.5 * u.pow(2), kappa * (abs_u - 0.5 * kappa))
    weight = (taus.to(pred).unsqueeze(-1) - (u.detach() < 0).to(pred)).abs()  # (B, N, M)
    rho = weight * huber / kappa
    return rho.sum(dim=-2).mean()


def _check_alpha(alpha: float) -> None:
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")


def cvar_from_quantiles(quantiles: torch.Tensor, alpha: float) -> torch.Tensor:
    """Lower-tail conditional value at risk ``CVaR_alpha`` of an equal-mass quantile vector.

    The ``N`` quantiles along the last axis each carry mass ``1/N``. They are sorted
    ascending first (a no-op for :class:`NonCrossingQuantileHead` outputs, kept for
    safety), ``q_(0) <= ... <= q_(N-1)``, and the lowest ones are averaged until mass
    ``alpha`` is covered, the boundary quantile with a fractional weight::

        w_k = clip(alpha - k / N, 0, 1 / N)        k = 0, ..., N - 1   (sum_k w_k = alpha)
        CVaR_alpha = (1 / alpha) sum_k w_k q_(k)

    For example ``N = 4, alpha = 0.3``: ``(0.25 q_(0) + 0.05 q_(1)) / 0.3``. ``alpha = 1``
    gives the mean; ``CVaR_alpha <= mean`` and it is non-decreasing in ``alpha``.
    Gradients flow through the sort to the selected quantiles.

    Args:
        quantiles: tensor of shape ``(..., N)``.
        alpha: tail mass in ``(0, 1]``.

    Returns:
        Tensor of shape ``(...)``.
    """
    _check_alpha(alpha)
    n = quantiles.shape[-1]
    if n < 1:
        raise ValueError("quantiles must have at least one entry along the last axis")
    k = np.arange(n, dtype=np.float64)
    w = np.clip(alpha - k / n, 0.0, 1.0 / n) / alpha  # float64, then cast
    weights = torch.as_tensor(w, dtype=quantiles.dtype, device=quantiles.device)
    sorted_q = torch.sort(quantiles, dim=-1).values
    return (sorted_q * weights).sum(dim=-1)


def risk_adjusted_value(quantiles: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """Risk-adjusted value ``V_beta = (1 - beta) mean + beta CVaR_alpha`` of quantiles.

    ``mean = (1 / N) sum_i theta_i`` over the last axis; ``CVaR_alpha`` as in
    :func:`cvar_from_quantiles`. ``beta = 0`` returns exactly ``quantiles.mean(-1)`` (no
    CVaR is computed, so risk-neutral advantages are bitwise those of a mean critic);
    ``beta = 1`` returns exactly ``cvar_from_quantiles(quantiles, alpha)``.

    Args:
        quantiles: tensor of shape ``(..., N)``.
        alpha: CVaR tail mass in ``(0, 1]``.
        beta: risk aversion in ``[0, 1]``.

    Returns:
        Tensor of shape ``(...)``.
    """
    _check_alpha(alpha)
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    if beta == 0.0:
        return quantiles.mean(dim=-1)
    cvar = cvar_from_quantiles(quantiles, alpha)
    if beta == 1.0:
        return cvar
    return (1.0 - beta) * quantiles.mean(dim=-1) + beta * cvar


def _check_discounts(gamma: float, lam: float) -> None:
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")


def _flags(
    terminated: npt.ArrayLike, truncated: npt.ArrayLike, shape: tuple[int, ...]
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    term = np.asarray(terminated).astype(bool)
    trunc = np.asarray(truncated).astype(bool)
    if term.shape != shape or trunc.shape != shape:
        raise ValueError(
            f"terminated and truncated must have shape {shape}, got {term.shape} and {trunc.shape}"
        )
    return term, term | trunc


def gae(
    rewards: npt.ArrayLike,
    values: npt.ArrayLike,
    next_values: npt.ArrayLike,
    terminated: npt.ArrayLike,
    truncated: npt.ArrayLike,
    gamma: float,
    lam: float,
) -> tuple[FloatArray, FloatArray]:
    """Generalised advantage estimation with termination and truncation kept apart.

    For ``t = T - 1, ..., 0`` (vectorised over the ``N`` environments)::

        done_t  = terminated_t or truncated_t
        delta_t = r_t + gamma (1 - terminated_t) V(s_{t+1}) - V(s_t)
        A_t     = delta_t + gamma lam (1 - done_t) A_{t+1},      A_T = 0
        R_t     = A_t + V(s_t)                                   (the lambda-return)

    with ``V(s_t) = values[t]`` and ``V(s_{t+1}) = next_values[t]``: the value of the
    state after step ``t``, which for a truncated step is the value of the episode's final
    observation (bootstrapped), and for a terminated step is ignored (not bootstrapped).
    ``A_T = 0`` makes the last step of the rollout bootstrap one step from
    ``next_values[T - 1]``. Equivalently ``A_t = sum_{k=t}^{e} (gamma lam)^{k-t} delta_k``
    where ``e`` is the first step ``>= t`` that is done, or ``T - 1``.

    Args:
        rewards: ``(T, N)``.
        values: ``V(s_t)``, ``(T, N)``.
        next_values: ``V(s_{t+1})`` as described above, ``(T, N)``.
        terminated: ``(T, N)`` booleans (or 0/1).
        truncated: ``(T, N)`` booleans (or 0/1).
        gamma: discount in ``[0, 1]``.
        lam: GAE lambda in ``[0, 1]``.

    Returns:
        ``(advantages, returns)``, both ``(T, N)`` in the floating dtype of the inputs
        (float32 if all are float32, otherwise float64).
    """
    _check_discounts(gamma, lam)
    r, v, nv = np.asarray(rewards), np.asarray(values), np.asarray(next_values)
    dtype = np.result_type(r, v, nv, np.float32)
    r, v, nv = (
        r.astype(dtype, copy=False),
        v.astype(dtype, copy=False),
        nv.astype(dtype, copy=False),
    )
    if r.ndim != 2 or v.shape != r.shape or nv.shape != r.shape:
        raise ValueError(
            f"rewards, values and next_values must share one (T, N) shape, got {r.shape}, {v.shape}, {nv.shape}"
        )
    term, done = _flags(terminated, truncated, r.shape)
    bootstrap = dtype.type(gamma) * (~term).astype(dtype)
    trace = dtype.type(gamma * lam) * (~done).astype(dtype)
    deltas = r + bootstrap * nv - v
    advantages = np.empty_like(r)
    running = np.zeros(r.shape[1], dtype=dtype)
    for t in range(r.shape[0] - 1, -1, -1):
        running = deltas[t] + trace[t] * running
        advantages[t] = running
    return advantages, advantages + v


def quantile_lambda_targets(
    rewards: npt.ArrayLike,
    next_quantiles: npt.ArrayLike,
    terminated: npt.ArrayLike,
    truncated: npt.ArrayLike,
    gamma: float,
    lam: float,
) -> FloatArray:
    """Per-quantile lambda-return targets for the quantile critic.

    For every quantile ``i`` and ``t = T - 1, ..., 0`` (vectorised over environments)::

        done_t  = terminated_t or truncated_t
        lam_t   = 0 if done_t or t = T - 1 else lam
        z_i,t   = r_t + gamma (1 - terminated_t) [(1 - lam_t) theta_i(s_{t+1}) + lam_t z_i,t+1]

    with ``theta_i(s_{t+1}) = next_quantiles[t, :, i]``. This is DESIGN.md's
    ``z_i,t = r_t + gamma (1 - terminated_t) [(1 - lambda) theta_i(s_{t+1}) + lambda z_i,t+1]``
    with its boundary rules spelled out:

    * terminated step: ``z_i,t = r_t`` (nothing is bootstrapped);
    * truncated step: ``z_i,t = r_t + gamma theta_i(s_{t+1})`` from the quantiles of the
      episode's final observation -- ``z_i,t+1`` belongs to the next episode and is never
      used;
    * last step of the rollout (not terminated): ``z_i,T := theta_i(s_T)``, hence
      ``z_i,T-1 = r_{T-1} + gamma theta_i(s_T)``.

    These are exactly the boundary rules of :func:`gae`, so ``mean_i z_i,t`` equals the
    ``returns`` of :func:`gae` called with ``values = mean_i theta_i(s_t)`` and
    ``next_values = mean_i next_quantiles``, provided ``next_values[t] == values[t + 1]``
    on steps that are not done. ``lam = 0`` gives one-step targets
    ``r_t + gamma (1 - terminated_t) theta_i(s_{t+1})``; ``lam = 1`` gives the discounted
    rewards to the episode or rollout end plus the discounted bootstrap quantiles there.

    Unlike "scalar return plus noise" targets, each quantile ``i`` keeps its own
    bootstrap ``theta_i``, so the spread of the targets is the spread the critic predicts
    for the next states. Pass the result (detached) to :func:`quantile_huber_loss`.

    Args:
        rewards: ``(T, N)``.
        next_quantiles: quantiles of the state after each step, ``(T, N, Q)`` (for a done
            step: of the episode's final observation).
        terminated: ``(T, N)`` booleans (or 0/1).
        truncated: ``(T, N)`` booleans (or 0/1).
        gamma: discount in ``[0, 1]``.
        lam: lambda in ``[0, 1]``.

    Returns:
        Targets ``z`` of shape ``(T, N, Q)`` in the floating dtype of the inputs.
    """
    _check_discounts(gamma, lam)
    r, nq = np.asarray(rewards), np.asarray(next_quantiles)
    dtype = np.result_type(r, nq, np.float32)
    r, nq = r.astype(dtype, copy=False), nq.astype(dtype, copy=False)
    if r.ndim != 2 or nq.ndim != 3 or nq.shape[:2] != r.shape:
        raise ValueError(
            f"rewards must be (T, N) and next_quantiles (T, N, Q), got {r.shape} and {nq.shape}"
        )
    term, done = _flags(terminated, truncated, r.shape)
    n_steps = r.shape[0]
    targets = np.empty_like(nq)
    z_next = np.zeros(nq.shape[1:], dtype=dtype)  # unused at t = T - 1 (lam_t = 0)
    for t in range(n_steps - 1, -1, -1):
        lam_t = np.where(done[t] | (t == n_steps - 1), 0.0, lam).astype(dtype)[:, None]
        boot = dtype.type(gamma) * (~term[t]).astype(dtype)[:, None]
        z_next = r[t][:, None] + boot * ((1 - lam_t) * nq[t] + lam_t * z_next)
        targets[t] = z_next
    return targets


def gae_torch(
    rewards: torch.Tensor,
    values: torch.Tensor,
    next_values: torch.Tensor,
    terminated: torch.Tensor,
    truncated: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`gae` on tensors, on their device (the same recursion, operation for operation).

    All inputs ``(T, N)``; the flags boolean. Returns ``(advantages, returns)`` in the
    dtype of ``rewards``.
    """
    _check_discounts(gamma, lam)
    r = rewards
    if values.shape != r.shape or next_values.shape != r.shape or r.ndim != 2:
        raise ValueError(
            f"rewards, values and next_values must share one (T, N) shape, got "
            f"{tuple(r.shape)}, {tuple(values.shape)}, {tuple(next_values.shape)}"
        )
    term = terminated.to(torch.bool)
    done = term | truncated.to(torch.bool)
    bootstrap = gamma * (~term).to(r.dtype)
    trace = (gamma * lam) * (~done).to(r.dtype)
    deltas = r + bootstrap * next_values.to(r.dtype) - values.to(r.dtype)
    advantages = torch.empty_like(r)
    running = torch.zeros_like(r[0])
    for t in range(r.shape[0] - 1, -1, -1):
        running = deltas[t] + trace[t] * running
        advantages[t] = running
    return advantages, advantages + values.to(r.dtype)


def quantile_lambda_targets_torch(
    rewards: torch.Tensor,
    next_quantiles: torch.Tensor,
    terminated: torch.Tensor,
    truncated: torch.Tensor,
    gamma: float,
    lam: float,
) -> torch.Tensor:
    """:func:`quantile_lambda_targets` on tensors, on their device: ``(T, N, Q)`` targets."""
    _check_discounts(gamma, lam)
    r, nq = rewards, next_quantiles.to(rewards.dtype)
    if r.ndim != 2 or nq.ndim != 3 or nq.shape[:2] != r.shape:
        raise ValueError(
            f"rewards must be (T, N) and next_quantiles (T, N, Q), got "
            f"{tuple(r.shape)} and {tuple(nq.shape)}"
        )
    term = terminated.to(torch.bool)
    done = term | truncated.to(torch.bool)
    n_steps = r.shape[0]
    lam_t = torch.where(done, 0.0, lam).to(r.dtype)
    lam_t[-1] = 0.0
    boot = gamma * (~term).to(r.dtype)
    targets = torch.empty_like(nq)
    z_next = torch.zeros_like(nq[0])
    for t in range(n_steps - 1, -1, -1):
        lt = lam_t[t][:, None]
        z_next = r[t][:, None] + boot[t][:, None] * ((1 - lt) * nq[t] + lt * z_next)
        targets[t] = z_next
    return targets
