"""The distributional critic's mathematics against independent, brute-force references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sentio.agents import (
    NonCrossingQuantileHead,
    cvar_from_quantiles,
    gae,
    quantile_huber_loss,
    quantile_lambda_targets,
    quantile_midpoints,
    risk_adjusted_value,
)

# ---------------------------------------------------------------- references (loops)


def episode_end(done: np.ndarray, t: int, n: int) -> int:
    """First step e >= t of environment n that is done, or the last step of the rollout."""
    e = t
    while e < done.shape[0] - 1 and not done[e, n]:
        e += 1
    return e


def brute_force_gae(r, v, nv, term, trunc, gamma, lam):
    """A_t = sum_{k=t}^{e} (gamma lam)^(k-t) delta_k, deltas written out one by one."""
    done = term | trunc
    T, N = r.shape
    adv = np.zeros((T, N))
    for n in range(N):
        for t in range(T):
            total = 0.0
            for k in range(t, episode_end(done, t, n) + 1):
                boot = 0.0 if term[k, n] else gamma * nv[k, n]
                delta = r[k, n] + boot - v[k, n]
                total += (gamma * lam) ** (k - t) * delta
            adv[t, n] = total
    return adv, adv + v


def forward_lambda_returns(r, next_q, term, trunc, gamma, lam):
    """Forward view: (1 - lam) sum_n lam^(n-1) G^(n) with the tail weight on the last G^(n).

    G^(n)_t = sum_{k<n} gamma^k r_{t+k} + gamma^n theta(s_{t+n}) (0 after a termination),
    n = 1..L where L is the number of steps to the episode end or the rollout end.
    """
    done = term | trunc
    T, N, Q = next_q.shape
    z = np.zeros((T, N, Q))
    for n_env in range(N):
        for t in range(T):
            length = episode_end(done, t, n_env) - t + 1
            for i in range(Q):
                value = 0.0
                for n in range(1, length + 1):
                    g = sum(gamma**k * r[t + k, n_env] for k in range(n))
                    last = t + n - 1
                    if not term[last, n_env]:
                        g += gamma**n * next_q[last, n_env, i]
                    weight = lam ** (n - 1) if n == length else (1 - lam) * lam ** (n - 1)
                    value += weight * g
                z[t, n_env, i] = value
    return z


def rollout(seed: int, T: int, N: int, Q: int, p_end: float = 0.25):
    """Random rollout whose next-state quantiles are the current ones of the same episode."""
    rng = np.random.default_rng(seed)
    r = rng.normal(size=(T, N))
    term = rng.random((T, N)) < p_end
    trunc = (rng.random((T, N)) < p_end) & ~term
    if T > 2:
        trunc[1, 0] = True  # at least one of each boundary
        term[1, 0] = False
        term[2, min(1, N - 1)] = True
    cur = np.sort(rng.normal(size=(T, N, Q)) * 2.0, axis=-1)
    next_q = np.sort(rng.normal(size=(T, N, Q)) * 2.0 + 3.0, axis=-1)  # final observations
    done = term | trunc
    for t in range(T - 1):
        keep = ~done[t]
        next_q[t, keep] = cur[t + 1, keep]
    return r, cur, next_q, term, trunc


def loop_huber_loss(pred, target, taus, kappa):
    B, N = pred.shape
    M = target.shape[1]
    total = 0.0
    for b in range(B):
        for j in range(M):
            for i in range(N):
                u = float(target[b, j] - pred[b, i])
                huber = 0.5 * u * u if abs(u) <= kappa else kappa * (abs(u) - 0.5 * kappa)
                total += abs(float(taus[i]) - (1.0 if u < 0 else 0.0)) * huber / kappa
    return total / (B * M)


def loop_cvar(values, alpha):
    """Walk up the sorted values, taking mass 1/N from each until alpha is covered."""
    remaining, total = alpha, 0.0
    for q in sorted(values):
        mass = min(1.0 / len(values), remaining)
        if mass <= 0:
            break
        total += mass * q
        remaining -= mass
    return total / alpha


# ---------------------------------------------------------------- midpoints and head


def test_quantile_midpoints():
    assert torch.allclose(quantile_midpoints(4), torch.tensor([0.125, 0.375, 0.625, 0.875]))
    assert quantile_midpoints(1).tolist() == [0.5]
    assert quantile_midpoints(3, dtype=torch.float64).dtype == torch.float64
    with pytest.raises(ValueError, match="n must be"):
        quantile_midpoints(0)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n_quantiles=st.integers(1, 16),
    in_features=st.integers(1, 8),
    weight_scale=st.sampled_from([1e-3, 1.0, 10.0, 1e3]),
    input_scale=st.sampled_from([1e-3, 1.0, 1e3, 1e6]),
    double=st.booleans(),
)
def test_head_outputs_sorted_for_any_input(
    seed, n_quantiles, in_features, weight_scale, input_scale, double
):
    torch.manual_seed(seed)
    head = NonCrossingQuantileHead(in_features, n_quantiles)
    dtype = torch.float64 if double else torch.float32
    head = head.to(dtype)
    with torch.no_grad():
        for p in head.parameters():
            p.copy_(torch.randn_like(p) * weight_scale)
        x = torch.randn(32, in_features, dtype=dtype) * input_scale
        theta = head(x)
    assert theta.shape == (32, n_quantiles)
    assert torch.isfinite(theta).all()
    assert (theta[:, 1:] >= theta[:, :-1]).all()


def test_head_init_is_narrow_and_differentiable():
    torch.manual_seed(0)
    head = NonCrossingQuantileHead(16, 8, init_spacing=0.01)
    assert torch.equal(head.taus, quantile_midpoints(8))
    x = torch.randn(5, 16)
    theta = head(x)
    gaps = theta[:, 1:] - theta[:, :-1]
    assert torch.allclose(gaps, torch.full_like(gaps, 0.01), rtol=0.5)
    theta.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in head.parameters())
    # leading batch dimensions pass through
    assert head(torch.randn(3, 4, 16)).shape == (3, 4, 8)
    with pytest.raises(ValueError, match="n_quantiles"):
        NonCrossingQuantileHead(4, 0)


# ---------------------------------------------------------------- quantile Huber loss


@pytest.mark.parametrize("kappa", [0.05, 0.5, 1.0, 3.0])
@pytest.mark.parametrize(("B", "N", "M"), [(1, 1, 1), (3, 4, 4), (5, 3, 7)])
def test_quantile_huber_loss_matches_loops(kappa, B, N, M):
    gen = torch.Generator().manual_seed(B * 100 + N * 10 + M)
    pred = torch.randn(B, N, generator=gen, dtype=torch.float64) * 2
    target = torch.randn(B, M, generator=gen, dtype=torch.float64) * 2
    taus = quantile_midpoints(N, dtype=torch.float64)
    loss = quantile_huber_loss(pred, target, taus, kappa=kappa)
    assert loss.shape == ()
    assert loss.item() == pytest.approx(loop_huber_loss(pred, target, taus, kappa), rel=1e-12)


def test_quantile_huber_loss_gradient():
    pred = torch.tensor([[0.0, 1.0, 5.0]], requires_grad=True)
    target = torch.tensor([[0.5, 4.0]], requires_grad=True)
    taus = quantile_midpoints(3)
    quantile_huber_loss(pred, target, taus, kappa=1.0).backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all()
    assert target.grad is None  # targets are detached
    # hand-derived: d loss / d pred_i = -(1/M) sum_j |tau_i - 1{u_ij < 0}| clip(u_ij, -1, 1)
    # taus = (1/6, 1/2, 5/6); u_0j = (0.5, 4); u_1j = (-0.5, 3); u_2j = (-4.5, -1)
    expected = torch.tensor(
        [
            -0.5 * (1 / 6 * 0.5 + 1 / 6 * 1.0),
            -0.5 * (0.5 * -0.5 + 0.5 * 1.0),
            -0.5 * (1 / 6 * -1.0 + 1 / 6 * -1.0),
        ]
    )
    assert torch.allclose(pred.grad, expected)
    with pytest.raises(ValueError, match="kappa"):
        quantile_huber_loss(pred, target, taus, kappa=0.0)


# ---------------------------------------------------------------- CVaR and risk-adjusted value


def test_cvar_fractional_boundary_by_hand():
    q = torch.tensor([3.0, -1.0, 10.0, 2.0], dtype=torch.float64)  # sorted: -1, 2, 3, 10
    assert cvar_from_quantiles(q, 0.3).item() == pytest.approx((0.25 * -1 + 0.05 * 2) / 0.3)
    assert cvar_from_quantiles(q, 0.25).item() == pytest.approx(-1.0)
    assert cvar_from_quantiles(q, 0.1).item() == pytest.approx(-1.0)
    assert cvar_from_quantiles(q, 0.6).item() == pytest.approx(
        (0.25 * -1 + 0.25 * 2 + 0.1 * 3) / 0.6
    )
    assert cvar_from_quantiles(q, 1.0).item() == pytest.approx(q.mean().item())
    batch = torch.stack([q, q + 1.0])
    assert torch.allclose(
        cvar_from_quantiles(batch, 0.3),
        cvar_from_quantiles(q, 0.3) + torch.tensor([0.0, 1.0], dtype=torch.float64),
    )
    for alpha in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="alpha"):
            cvar_from_quantiles(q, alpha)


vectors = st.lists(
    st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False), min_size=1, max_size=24
)
alphas = st.floats(1e-3, 1.0)


@settings(max_examples=150, deadline=None)
@given(values=vectors, a1=alphas, a2=alphas)
def test_cvar_properties(values, a1, a2):
    q = torch.tensor(values, dtype=torch.float64)
    tol = 1e-9 * (1.0 + max(abs(x) for x in values))
    lo, hi = sorted((a1, a2))
    c_lo, c_hi = cvar_from_quantiles(q, lo).item(), cvar_from_quantiles(q, hi).item()
    assert c_lo == pytest.approx(loop_cvar(values, lo), abs=tol)
    assert c_lo <= c_hi + tol  # non-decreasing in alpha
    assert c_hi <= q.mean().item() + tol  # below the mean
    assert cvar_from_quantiles(q, 1.0).item() == pytest.approx(q.mean().item(), abs=tol)
    assert min(values) - tol <= c_lo


def test_cvar_gradient_reaches_the_tail_only():
    q = torch.tensor([[4.0, 1.0, 3.0, 2.0]], requires_grad=True)
    cvar_from_quantiles(q, 0.3).sum().backward()
    assert q.grad is not None
    assert torch.allclose(q.grad, torch.tensor([[0.0, 0.25 / 0.3, 0.0, 0.05 / 0.3]]))


@settings(max_examples=50, deadline=None)
@given(values=vectors, alpha=alphas, beta=st.floats(0.0, 1.0))
def test_risk_adjusted_value(values, alpha, beta):
    q = torch.tensor([values, values[::-1]], dtype=torch.float32)
    assert torch.equal(risk_adjusted_value(q, alpha, 0.0), q.mean(-1))
    assert torch.equal(risk_adjusted_value(q, alpha, 1.0), cvar_from_quantiles(q, alpha))
    expected = (1 - beta) * q.mean(-1) + beta * cvar_from_quantiles(q, alpha)
    assert torch.allclose(risk_adjusted_value(q, alpha, beta), expected)
    with pytest.raises(ValueError, match="beta"):
        risk_adjusted_value(q, alpha, 1.5)


# ---------------------------------------------------------------- GAE


def test_gae_hand_worked():
    # step 0: running; step 1: truncated (V of its final observation = 4.0);
    # step 2: new episode, terminated (next value 2.0 ignored).
    r = np.array([[1.0], [2.0], [3.0]])
    v = np.array([[0.5], [1.0], [1.5]])
    nv = np.array([[1.0], [4.0], [2.0]])
    term = np.array([[0], [0], [1]], dtype=bool)
    trunc = np.array([[0], [1], [0]], dtype=bool)
    adv, ret = gae(r, v, nv, term, trunc, gamma=0.9, lam=0.8)
    # delta_2 = 3 - 1.5 = 1.5;  delta_1 = 2 + 0.9*4 - 1 = 4.6;  delta_0 = 1 + 0.9*1 - 0.5 = 1.4
    # A_2 = 1.5;  A_1 = 4.6 (episode boundary);  A_0 = 1.4 + 0.72*4.6 = 4.712
    np.testing.assert_allclose(adv[:, 0], [4.712, 4.6, 1.5])
    np.testing.assert_allclose(ret[:, 0], [5.212, 5.6, 3.0])
    # not terminated at the rollout end: bootstrap from next_values[T-1]
    adv2, _ = gae(r, v, nv, np.zeros_like(term), trunc, gamma=0.9, lam=0.8)
    assert adv2[2, 0] == pytest.approx(3.0 + 0.9 * 2.0 - 1.5)


@pytest.mark.parametrize("seed", range(6))
def test_gae_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    T, N = int(rng.integers(1, 12)), int(rng.integers(1, 4))
    r, v, nv = (rng.normal(size=(T, N)) for _ in range(3))
    term = rng.random((T, N)) < 0.2
    trunc = rng.random((T, N)) < 0.2  # may overlap termination: terminated wins
    gamma, lam = float(rng.uniform(0.5, 1.0)), float(rng.uniform(0.0, 1.0))
    adv, ret = gae(r, v, nv, term, trunc, gamma, lam)
    ref_adv, ref_ret = brute_force_gae(r, v, nv, term, trunc, gamma, lam)
    np.testing.assert_allclose(adv, ref_adv, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ret, ref_ret, rtol=1e-12, atol=1e-12)


def test_gae_dtype_and_validation():
    z32 = np.zeros((3, 2), dtype=np.float32)
    adv, ret = gae(z32, z32, z32, z32, z32, 0.99, 0.95)
    assert adv.dtype == np.float32 and ret.dtype == np.float32
    assert gae(z32.astype(np.float64), z32, z32, z32, z32, 0.99, 0.95)[0].dtype == np.float64
    with pytest.raises(ValueError, match="shape"):
        gae(z32, z32[:2], z32, z32, z32, 0.99, 0.95)
    with pytest.raises(ValueError, match="gamma"):
        gae(z32, z32, z32, z32, z32, 1.5, 0.95)


# ---------------------------------------------------------------- quantile lambda-targets


def test_lambda_targets_hand_worked():
    # T = 3, one environment, Q = 2; gamma = lam = 0.5.
    r = np.array([[1.0], [2.0], [3.0]])
    nq = np.array([[[0.0, 4.0]], [[10.0, 20.0]], [[8.0, 16.0]]])
    no = np.zeros((3, 1), dtype=bool)
    trunc = np.array([[0], [1], [0]], dtype=bool)
    z = quantile_lambda_targets(r, nq, no, trunc, gamma=0.5, lam=0.5)
    # z_2 = 3 + 0.5*[8, 16]            (rollout end: z_3 := theta(s_3))
    # z_1 = 2 + 0.5*[10, 20]           (truncated: final observation, z_2 unused)
    # z_0 = 1 + 0.5*(0.5*[0, 4] + 0.5*z_1)
    np.testing.assert_allclose(z[:, 0], [[2.75, 5.0], [7.0, 12.0], [7.0, 11.0]])
    # the same episode terminated at step 1 instead: nothing bootstrapped there
    z = quantile_lambda_targets(r, nq, trunc, no, gamma=0.5, lam=0.5)
    np.testing.assert_allclose(z[:, 0], [[1.5, 2.5], [2.0, 2.0], [7.0, 11.0]])
    # the mean identity on this example: values = means of the current quantiles
    v = np.array([[2.0], [2.0], [6.0]])  # V(s_1) = mean(0, 4) = next_values[0]
    nv = nq.mean(-1)
    _, ret = gae(r, v, nv, no, trunc, 0.5, 0.5)
    np.testing.assert_allclose(ret[:, 0], [3.875, 9.5, 9.0])


def test_lambda_targets_lam0_is_one_step():
    r, _, nq, term, trunc = rollout(1, 9, 3, 5)
    z = quantile_lambda_targets(r, nq, term, trunc, gamma=0.9, lam=0.0)
    expected = r[..., None] + 0.9 * (~term)[..., None] * nq
    np.testing.assert_allclose(z, expected, rtol=1e-12)


def test_lambda_targets_lam1_without_boundaries_is_monte_carlo():
    rng = np.random.default_rng(2)
    T, N, Q, gamma = 7, 2, 4, 0.8
    r = rng.normal(size=(T, N))
    nq = np.sort(rng.normal(size=(T, N, Q)), axis=-1)
    no = np.zeros((T, N), dtype=bool)
    z = quantile_lambda_targets(r, nq, no, no, gamma=gamma, lam=1.0)
    for t in range(T):
        discounted = sum(gamma ** (k - t) * r[k] for k in range(t, T))
        expected = discounted[:, None] + gamma ** (T - t) * nq[T - 1]
        np.testing.assert_allclose(z[t], expected, rtol=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_lambda_targets_match_forward_view(seed):
    rng = np.random.default_rng(100 + seed)
    T, N, Q = int(rng.integers(1, 10)), int(rng.integers(1, 4)), int(rng.integers(1, 5))
    r, _, nq, term, trunc = rollout(seed, T, N, Q)
    gamma, lam = float(rng.uniform(0.5, 1.0)), float(rng.uniform(0.0, 1.0))
    z = quantile_lambda_targets(r, nq, term, trunc, gamma, lam)
    np.testing.assert_allclose(
        z, forward_lambda_returns(r, nq, term, trunc, gamma, lam), rtol=1e-10, atol=1e-10
    )


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    T=st.integers(1, 12),
    N=st.integers(1, 4),
    Q=st.integers(1, 8),
    gamma=st.floats(0.0, 1.0),
    lam=st.floats(0.0, 1.0),
)
def test_mean_of_lambda_targets_is_gae_return(seed, T, N, Q, gamma, lam):
    r, cur, nq, term, trunc = rollout(seed, T, N, Q)
    z = quantile_lambda_targets(r, nq, term, trunc, gamma, lam)
    _, ret = gae(r, cur.mean(-1), nq.mean(-1), term, trunc, gamma, lam)
    np.testing.assert_allclose(z.mean(-1), ret, rtol=1e-9, atol=1e-9)


def test_lambda_targets_feed_the_loss():
    """End to end: targets from a rollout train the head's quantiles through the loss."""
    r, _, nq, term, trunc = rollout(3, 6, 2, 4)
    z = torch.as_tensor(quantile_lambda_targets(r, nq, term, trunc, 0.9, 0.95)).float()
    head = NonCrossingQuantileHead(3, 4)
    pred = head(torch.randn(12, 3))
    loss = quantile_huber_loss(pred, z.reshape(12, 4), head.taus)
    loss.backward()
    assert torch.isfinite(loss)
