"""Feature extractors of the ``{"window", "state"}`` observation (sentio.agents.extractors)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor

from sentio.agents.extractors import (
    DictMlpExtractor,
    TransformerExtractor,
    extractor_kwargs,
)
from sentio.config import AgentConfig
from sentio.env import STATE_FEATURES, SentioVecEnv
from tests.env_helpers import make_params, random_market

N_STATE = len(STATE_FEATURES)


def obs_space(window: int, n_features: int, n_regimes: int) -> spaces.Dict:
    """The environments' observation space for ``L`` bars, ``F`` features, ``K`` regimes."""
    return spaces.Dict(
        {
            "window": spaces.Box(-np.inf, np.inf, shape=(window, n_features), dtype=np.float32),
            "state": spaces.Box(-np.inf, np.inf, shape=(n_regimes + N_STATE,), dtype=np.float32),
        }
    )


def random_obs(space: spaces.Dict, batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        key: torch.randn((batch, *box.shape), generator=g)
        for key, box in space.spaces.items()
        if box.shape is not None
    }


def transformer(space: spaces.Dict, seed: int = 0, **kwargs: Any) -> TransformerExtractor:
    torch.manual_seed(seed)
    return TransformerExtractor(space, **kwargs)


# ---------------------------------------------------------------------------- shapes


@pytest.mark.parametrize(("L", "F", "K"), [(2, 1, 0), (8, 3, 3), (32, 5, 2), (5, 7, 0)])
@pytest.mark.parametrize("d_model", [8, 32])
def test_transformer_shapes_and_features_dim(L: int, F: int, K: int, d_model: int) -> None:
    space = obs_space(L, F, K)
    ext = transformer(space, d_model=d_model, n_heads=2 if d_model == 8 else 4).eval()
    assert ext.features_dim == 2 * d_model + K + N_STATE
    assert ext.state_offset == 2 * d_model
    for batch in (1, 6):
        with torch.no_grad():
            out = ext(random_obs(space, batch))
        assert out.shape == (batch, ext.features_dim)
        assert out.dtype == torch.float32
        assert torch.isfinite(out).all()


@pytest.mark.parametrize(("L", "F", "K"), [(1, 1, 0), (1, 4, 3), (8, 3, 3), (32, 5, 0)])
def test_dict_mlp_shapes_order_and_features_dim(L: int, F: int, K: int) -> None:
    space = obs_space(L, F, K)
    ext = DictMlpExtractor(space)
    assert ext.features_dim == L * F + K + N_STATE
    assert ext.state_offset == L * F
    assert not list(ext.parameters())
    obs = random_obs(space, 3)
    out = ext(obs)
    assert out.shape == (3, ext.features_dim)
    # bar by bar, oldest first, then the state
    torch.testing.assert_close(out[:, :F], obs["window"][:, 0], rtol=0, atol=0)
    torch.testing.assert_close(out[:, L * F - F : L * F], obs["window"][:, -1], rtol=0, atol=0)
    torch.testing.assert_close(out[:, ext.state_offset :], obs["state"], rtol=0, atol=0)


def test_transformer_rejects_a_one_bar_window_and_bad_hyperparameters() -> None:
    with pytest.raises(ValueError, match=r"at least 2 bars.*'mlp'"):
        TransformerExtractor(obs_space(1, 3, 2))
    with pytest.raises(ValueError, match=r"d_model \(30\) must be divisible by n_heads \(4\)"):
        TransformerExtractor(obs_space(4, 3, 2), d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="dropout"):
        TransformerExtractor(obs_space(4, 3, 2), dropout=1.0)
    with pytest.raises(ValueError, match="ff_mult"):
        TransformerExtractor(obs_space(4, 3, 2), ff_mult=0)
    with pytest.raises(ValueError, match="n_layers"):
        TransformerExtractor(obs_space(4, 3, 2), n_layers=0)


@pytest.mark.parametrize("cls", [TransformerExtractor, DictMlpExtractor])
def test_malformed_observation_spaces_are_rejected(cls: type[BaseFeaturesExtractor]) -> None:
    box = spaces.Box(-1.0, 1.0, shape=(4, 3), dtype=np.float32)
    state = spaces.Box(-1.0, 1.0, shape=(N_STATE,), dtype=np.float32)
    with pytest.raises(ValueError, match="spaces.Dict"):
        cls(box)
    with pytest.raises(ValueError, match="exactly the keys"):
        cls(spaces.Dict({"window": box}))
    with pytest.raises(ValueError, match=r"'window' must be a non-empty Box of shape \(L, F\)"):
        cls(spaces.Dict({"window": state, "state": state}))
    with pytest.raises(ValueError, match="'state' must be a Box"):
        cls(spaces.Dict({"window": box, "state": box}))


def test_default_transformer_is_small() -> None:
    """The default transformer settings (d_model 32, 4 heads, 2 layers) on a window of 32
    bars of 24 features with 3 regimes."""
    cfg = AgentConfig(extractor="transformer")
    cls, kwargs = extractor_kwargs(cfg)
    ext = cls(obs_space(32, 24, 3), **kwargs)
    n_params = sum(p.numel() for p in ext.parameters())
    print(f"default transformer extractor: {n_params} parameters, {ext.features_dim} features")
    assert n_params < 100_000
    assert ext.features_dim == 2 * 32 + 3 + N_STATE


# ---------------------------------------------------------------------------- what the features depend on


def test_pooled_features_depend_on_token_order_through_the_positions() -> None:
    space = obs_space(8, 3, 2)
    ext = transformer(space).eval()
    obs = random_obs(space, 4)
    perm = torch.tensor([3, 0, 6, 1, 5, 2, 4, 7])  # keeps the last bar in place
    shuffled = {"window": obs["window"][:, perm], "state": obs["state"]}
    d = ext.d_model
    with torch.no_grad():
        out, out_perm = ext(obs), ext(shuffled)
        assert not torch.allclose(out[:, :d], out_perm[:, :d], atol=1e-4)  # last token
        assert not torch.allclose(out[:, d : 2 * d], out_perm[:, d : 2 * d], atol=1e-4)  # mean
        # without positional embeddings the encoder is permutation-equivariant: the mean
        # is then order-invariant, so the learned positions are what carries the order
        ext.position.zero_()
        out0, out0_perm = ext(obs), ext(shuffled)
    torch.testing.assert_close(out0[:, d : 2 * d], out0_perm[:, d : 2 * d], atol=1e-5, rtol=1e-5)


def test_the_last_bar_and_earlier_bars_matter() -> None:
    space = obs_space(8, 3, 0)
    ext = transformer(space).eval()
    obs = random_obs(space, 4)
    d = ext.d_model
    with torch.no_grad():
        out = ext(obs)
        for bar in (-1, 0):
            changed = obs["window"].clone()
            changed[:, bar] += 1.0
            new = ext({"window": changed, "state": obs["state"]})
            # the last token attends to every bar of the window
            assert (new[:, :d] - out[:, :d]).abs().amax(dim=1).min() > 1e-3
            assert (new[:, d : 2 * d] - out[:, d : 2 * d]).abs().amax(dim=1).min() > 1e-3
            torch.testing.assert_close(new[:, 2 * d :], out[:, 2 * d :], rtol=0, atol=0)


def test_state_is_joined_after_the_encoder() -> None:
    space = obs_space(6, 3, 3)
    ext = transformer(space).eval()
    seen: list[torch.Tensor] = []
    ext.encoder.register_forward_hook(lambda _m, _i, out: seen.append(out.detach().clone()))
    obs = random_obs(space, 5)
    other = {"window": obs["window"], "state": obs["state"] + 0.5}
    with torch.no_grad():
        out, out_other = ext(obs), ext(other)
    # the encoder saw the same tokens; only the state part of the features moved
    torch.testing.assert_close(seen[0], seen[1], rtol=0, atol=0)
    off = ext.state_offset
    torch.testing.assert_close(out[:, :off], out_other[:, :off], rtol=0, atol=0)
    torch.testing.assert_close(out[:, off:], obs["state"], rtol=0, atol=0)
    torch.testing.assert_close(out_other[:, off:], other["state"], rtol=0, atol=0)

    # gradients: the state reaches the features directly and never enters the encoder
    ext.train()
    state = obs["state"].clone().requires_grad_(True)
    window = obs["window"].clone().requires_grad_(True)
    feats = ext({"window": window, "state": state})
    (g_pooled,) = torch.autograd.grad(feats[:, :off].sum(), state, retain_graph=True)
    assert torch.count_nonzero(g_pooled) == 0
    g_state, g_window = torch.autograd.grad(feats.sum(), (state, window))
    torch.testing.assert_close(g_state, torch.ones_like(state))
    assert g_window.abs().sum() > 0


# ---------------------------------------------------------------------------- modes and numerics


def test_eval_mode_is_deterministic_with_dropout_and_train_mode_is_not() -> None:
    space = obs_space(8, 3, 2)
    ext = transformer(space, dropout=0.5)
    obs = random_obs(space, 16)
    ext.eval()
    with torch.no_grad():
        a, b = ext(obs), ext(obs)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert torch.equal(ext(obs), a)  # with gradients on, same numbers
    ext.train()
    c, d = ext(obs), ext(obs)
    assert not torch.allclose(c, d)
    assert not torch.allclose(c, a)


def test_rollout_and_update_features_are_bit_identical_without_dropout() -> None:
    """Eval mode without gradients (rollout) == train mode with gradients (PPO update)."""
    space = obs_space(16, 5, 3)
    ext = transformer(space, dropout=0.0)
    obs = random_obs(space, 64)
    ext.eval()
    with torch.no_grad():
        rollout = ext(obs)
    ext.train()
    update = ext(obs)
    assert update.requires_grad
    assert torch.equal(rollout, update.detach())


def _cpu_bf16_autocast_supported() -> bool:
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = torch.nn.functional.linear(torch.ones(2, 3), torch.ones(4, 3))
        return bool(y.dtype == torch.bfloat16)
    except (RuntimeError, TypeError):
        return False


@pytest.mark.skipif(not _cpu_bf16_autocast_supported(), reason="no CPU bfloat16 autocast")
def test_bfloat16_autocast_gives_finite_features_and_gradients() -> None:
    space = obs_space(16, 5, 3)
    ext = transformer(space, dropout=0.1)
    obs = random_obs(space, 32)
    ext.eval()
    with torch.no_grad():
        ref = ext(obs)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = ext(obs)
    assert torch.isfinite(low).all()
    torch.testing.assert_close(low.float(), ref, atol=0.1, rtol=0.05)
    ext.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = ext(obs).float().square().mean()
    loss.backward()
    grads = [p.grad for p in ext.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


# ---------------------------------------------------------------------------- configuration


def test_extractor_kwargs_from_the_agent_section() -> None:
    cls, kwargs = extractor_kwargs(
        AgentConfig(extractor="transformer", d_model=16, n_heads=2, n_layers=3, dropout=0.1)
    )
    assert cls is TransformerExtractor
    assert kwargs == {"d_model": 16, "n_heads": 2, "n_layers": 3, "dropout": 0.1}
    ext = cls(obs_space(4, 3, 0), **kwargs)
    assert isinstance(ext, TransformerExtractor)
    assert len(ext.encoder.layers) == 3 and ext.features_dim == 2 * 16 + N_STATE

    cls, kwargs = extractor_kwargs(AgentConfig(extractor="mlp", algo="maskable_ppo"))
    assert cls is DictMlpExtractor and kwargs == {}
    assert cls(obs_space(1, 3, 0), **kwargs).features_dim == 3 + N_STATE


# ---------------------------------------------------------------------------- inside SB3


def small_env(n_regimes: int, *, masks: bool, window: int = 6) -> SentioVecEnv:
    market = random_market(
        n_sessions=4, session_len=30, seed=1, n_features=3, n_regimes=n_regimes, bar_vol=1e-3
    )
    params = make_params(window=window, mask_session=masks, min_hold_bars=2 if masks else 0)
    return SentioVecEnv(market, params, [(0, market.n_rows)], n_envs=2, seed=0)


SMALL_TRANSFORMER = {"d_model": 16, "n_heads": 2, "n_layers": 1, "dropout": 0.1, "ff_mult": 2}


@pytest.mark.parametrize(
    ("algo", "n_regimes", "extractor"),
    [
        ("ppo", 0, "transformer"),
        ("maskable_ppo", 3, "transformer"),
        ("maskable_ppo", 2, "mlp"),
    ],
)
def test_sb3_learns_saves_and_loads(
    algo: str, n_regimes: int, extractor: str, tmp_path: Path
) -> None:
    from sb3_contrib import MaskablePPO
    from stable_baselines3 import PPO

    masked = algo == "maskable_ppo"
    env = small_env(n_regimes, masks=masked)
    cls: type[BaseFeaturesExtractor]
    if extractor == "transformer":
        cls, kwargs = TransformerExtractor, SMALL_TRANSFORMER
    else:
        cls, kwargs = extractor_kwargs(AgentConfig(extractor="mlp", algo="maskable_ppo"))
    algo_cls: type[PPO] | type[MaskablePPO] = MaskablePPO if masked else PPO
    model = algo_cls(
        "MultiInputPolicy",
        env,
        policy_kwargs={"features_extractor_class": cls, "features_extractor_kwargs": kwargs},
        n_steps=32,
        batch_size=32,
        n_epochs=2,
        seed=0,
        device="cpu",
    )
    assert isinstance(model.policy.features_extractor, cls)
    before = [p.detach().clone() for p in model.policy.features_extractor.parameters()]
    model.learn(64)
    assert model.num_timesteps == 64
    after = list(model.policy.features_extractor.parameters())
    if extractor == "transformer":  # the updates reached the encoder
        assert any(not torch.equal(b, a) for b, a in zip(before, after, strict=True))
    else:
        assert not before and not after

    path = tmp_path / "model.zip"
    model.save(path)
    loaded = algo_cls.load(path, device="cpu")
    assert isinstance(loaded.policy.features_extractor, cls)
    obs = env.reset()
    assert isinstance(obs, dict)
    predict_kwargs: dict[str, Any] = {"action_masks": env.action_masks()} if masked else {}
    a1, _ = model.predict(obs, deterministic=True, **predict_kwargs)
    a2, _ = loaded.predict(obs, deterministic=True, **predict_kwargs)
    np.testing.assert_array_equal(a1, a2)
    obs_t, _ = model.policy.obs_to_tensor(obs)
    with torch.no_grad():
        p1 = model.policy.get_distribution(obs_t).distribution.probs  # type: ignore[union-attr]
        p2 = loaded.policy.get_distribution(obs_t).distribution.probs  # type: ignore[union-attr]
        v1, v2 = model.policy.predict_values(obs_t), loaded.policy.predict_values(obs_t)
    assert torch.equal(p1, p2) and torch.equal(v1, v2)


def test_ppo_ratio_is_one_between_rollout_and_update_without_dropout() -> None:
    """The policy's log-probabilities in eval mode (rollout) equal those of the update."""
    from stable_baselines3 import PPO

    env = small_env(2, masks=False)
    kwargs = {**SMALL_TRANSFORMER, "dropout": 0.0}
    model = PPO(
        "MultiInputPolicy",
        env,
        policy_kwargs={
            "features_extractor_class": TransformerExtractor,
            "features_extractor_kwargs": kwargs,
        },
        n_steps=32,
        batch_size=32,
        seed=0,
        device="cpu",
    )
    policy = model.policy
    obs_t, _ = policy.obs_to_tensor(env.reset())
    policy.set_training_mode(False)
    with torch.no_grad():
        actions, values_old, logp_old = policy(obs_t)
    policy.set_training_mode(True)
    values_new, logp_new, _ = policy.evaluate_actions(obs_t, actions)
    assert torch.equal(logp_old, logp_new.detach())
    assert torch.equal(values_old, values_new.detach())
