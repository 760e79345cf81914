"""Sentio PPO's actor-critic policies: a quantile critic and an optional regime-gated actor.

:class:`SentioActorCriticPolicy` is a sb3-contrib ``MaskableActorCriticPolicy`` (so every
model stays a standard SB3 / sb3-contrib model) with two changes, each switchable:

* **Quantile critic** (``quantile_critic=True``). The value head is a
  :class:`~sentio.agents.distributional.NonCrossingQuantileHead` with ``n_quantiles``
  outputs ``theta_i(s)`` at ``tau_i = (i + 0.5) / N``. Everything SB3 calls a *value*
  (:meth:`predict_values`, the second output of :meth:`forward` and of
  :meth:`evaluate_actions`) is the risk-adjusted value
  ``V_beta = (1 - beta) mean_i theta_i + beta CVaR_alpha(theta)``; ``beta = 0`` gives
  exactly ``mean_i theta_i``. The quantiles themselves come from :meth:`predict_quantiles`
  and :meth:`evaluate_actions_quantiles` (used by :class:`~sentio.agents.sentio_ppo.SentioPPO`).
  CVaR only reaches the *policy* (through the advantages of ``V_beta``); the critic is
  trained on the quantiles. Off: SB3's scalar ``nn.Linear`` value head.
* **Regime gating** (``regime_gating=True``, ``n_regimes = K >= 1``). The actor head is a
  mixture of ``K`` linear experts on ``latent_pi`` (:class:`RegimeGatedLogits`) weighted by
  the filtered regime probabilities ``obs[regime_key][:, :K]`` (the first ``K`` entries of
  Sentio's ``"state"`` vector). The regime probabilities are threaded through every path
  that builds the action distribution (:meth:`forward`, :meth:`evaluate_actions`,
  :meth:`get_distribution` -- and so ``predict`` -- and :meth:`actor_log_prob`). Off: SB3's
  plain linear head.

Mixture of probabilities, not of logits
    The gated policy is ``pi(a | s) = sum_k w_k(s) softmax(l_k(s))_a``: each regime has its
    own expert policy and the filtered probability of being in regime ``k`` weighs that
    expert's *probabilities*. It is a proper mixture policy (the action distribution of an
    agent that believes it is in regime ``k`` with probability ``w_k``), a one-hot ``w``
    gives exactly expert ``k``'s policy, and a split belief spreads probability over the
    experts' preferred actions instead of averaging logits into something no expert would
    do (a mixture of logits is a normalised product of experts). It is computed stably in
    log space, ``logits = logsumexp_k(log w_k + log_softmax(l_k))``, in float32.

Masks
    Masks are applied to the distribution built from these *final* logits before anything
    is sampled (sb3-contrib's ``MaskableCategorical`` sets masked logits to ``-1e8`` and
    renormalises), so a masked action has probability exactly 0 in float32 and is never
    sampled; the stored action is the executed one. For a gated policy this conditions the
    mixture on the allowed actions: ``pi(a | s, allowed) = pi(a | s) / pi(allowed | s)``.

Train-mode behaviour (dropout, batch norm)
    :attr:`has_train_mode_behaviour` tells whether some module computes differently in
    train and eval mode (``nn.Dropout*`` with ``p > 0``, batch norm, ``nn.MultiheadAttention``
    with dropout, or any module with a positive numeric ``dropout`` / ``dropout_p``
    attribute). SentioPPO acts in eval mode and computes the update's log-probabilities in
    eval mode too; with such modules it runs the critic in a second, train-mode pass (see
    :mod:`sentio.agents.sentio_ppo`).

Precision
    The two heads always run in float32, also inside a CUDA bf16 autocast region: the
    latents are cast up and autocast is disabled for the heads, so logits, log-probabilities
    and quantiles keep float32 precision while the features extractor and MLP run in bf16.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from functools import partial
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from sb3_contrib.common.maskable.distributions import MaskableDistribution
from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy
from stable_baselines3.common.preprocessing import preprocess_obs
from stable_baselines3.common.torch_layers import (
    BaseFeaturesExtractor,
    CombinedExtractor,
    FlattenExtractor,
)
from stable_baselines3.common.type_aliases import PyTorchObs, Schedule
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.dropout import _DropoutNd

from sentio.agents.distributional import NonCrossingQuantileHead, risk_adjusted_value

__all__ = [
    "RegimeGatedLogits",
    "SentioActorCriticPolicy",
    "SentioMultiInputPolicy",
    "has_train_mode_behaviour",
]

MaskLike = torch.Tensor | np.ndarray | None


@contextlib.contextmanager
def _float32_region(device: torch.device) -> Iterator[None]:
    """Disable autocast on ``device`` inside the block if it is enabled (a no-op otherwise)."""
    if torch.is_autocast_enabled(device.type):
        with torch.autocast(device_type=device.type, enabled=False):
            yield
    else:
        yield


def has_train_mode_behaviour(module: nn.Module) -> bool:
    """Whether ``module`` (or a submodule) may compute differently in train and eval mode.

    Detected: ``nn.Dropout*`` with ``p > 0``, batch-norm layers, ``nn.MultiheadAttention``
    with ``dropout > 0``, and any module with a positive numeric attribute ``dropout`` or
    ``dropout_p`` (the convention of hand-written attention blocks that call
    ``F.scaled_dot_product_attention(dropout_p=...)``). A module that depends on
    ``self.training`` in some other way is not detected; it is then simply never run in
    train mode by SentioPPO's update (safe for the importance ratio, no regularisation).
    """
    for m in module.modules():
        if isinstance(m, _DropoutNd) and m.p > 0:
            return True
        if isinstance(m, _BatchNorm):
            return True
        for name in ("dropout", "dropout_p"):
            value = getattr(m, name, None)
            if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
                return True
    return False


class RegimeGatedLogits(nn.Module):
    """``K`` linear expert heads mixed by regime probabilities (a mixture of probabilities).

    For a latent ``h`` ``(B, d)`` and regime probabilities ``w`` ``(B, K)``::

        l_k     = W_k h + b_k                                    (B, K, A), one expert per regime
        w'      = w / sum_k w_k   (uniform where the sum is 0; negative entries clipped to 0)
        logits  = log sum_k w'_k softmax(l_k)                    (B, A)
                = logsumexp_k(log w'_k + log_softmax(l_k))

    The result is normalised log-probabilities (float32). An expert with ``w'_k = 0``
    contributes nothing (``log 0 = -inf`` inside the logsumexp, with zero gradient), so a
    one-hot ``w`` returns exactly that expert's log-softmax.

    Args:
        latent_dim: size ``d`` of ``latent_pi``.
        n_actions: number ``A`` of discrete actions.
        n_regimes: number ``K`` of experts, at least 1.
    """

    def __init__(self, latent_dim: int, n_actions: int, n_regimes: int) -> None:
        super().__init__()
        if n_regimes < 1:
            raise ValueError(f"n_regimes must be at least 1, got {n_regimes}")
        self.latent_dim = latent_dim
        self.n_actions = n_actions
        self.n_regimes = n_regimes
        self.experts = nn.Linear(latent_dim, n_regimes * n_actions)

    def expert_logits(self, latent: torch.Tensor) -> torch.Tensor:
        """The experts' raw logits ``l_k``, shape ``(B, K, A)``."""
        return self.experts(latent).view(-1, self.n_regimes, self.n_actions)

    def forward(self, latent: torch.Tensor, regime_probs: torch.Tensor) -> torch.Tensor:
        """Mixture log-probabilities ``(B, A)`` from ``latent`` ``(B, d)`` and ``w`` ``(B, K)``."""
        w = regime_probs.to(torch.float32).reshape(-1, self.n_regimes).clamp_min(0.0)
        total = w.sum(dim=-1, keepdim=True)
        w = torch.where(
            total > 0, w / total.clamp_min(torch.finfo(w.dtype).tiny), 1.0 / self.n_regimes
        )
        log_experts = torch.log_softmax(self.expert_logits(latent).to(torch.float32), dim=-1)
        return torch.logsumexp(torch.log(w).unsqueeze(-1) + log_experts, dim=-2)

    def extra_repr(self) -> str:
        """Shown by ``repr(module)``."""
        return (
            f"latent_dim={self.latent_dim}, n_actions={self.n_actions}, n_regimes={self.n_regimes}"
        )


class SentioActorCriticPolicy(MaskableActorCriticPolicy):
    """MaskablePPO's actor-critic policy with a quantile critic and regime-gated actor.

    The first twelve arguments are those of sb3-contrib's ``MaskableActorCriticPolicy``
    (any SB3 features extractor works through ``features_extractor_class`` /
    ``features_extractor_kwargs``; ``ortho_init`` re-initialises it with gain ``sqrt(2)``
    exactly as SB3 does). The Sentio arguments are keyword-only:

    Args:
        quantile_critic: quantile value head (True) or SB3's scalar head (False).
        n_quantiles: number ``N`` of quantiles (quantile critic only), at least 1.
        cvar_alpha: CVaR tail mass in ``(0, 1]``.
        cvar_beta: risk aversion ``beta`` in ``[0, 1]`` of the values fed to GAE; must be 0
            without a quantile critic.
        quantile_init_spacing: initial gap between adjacent quantiles (see
            :class:`~sentio.agents.distributional.NonCrossingQuantileHead`); pick it small
            relative to the scale of the returns.
        regime_gating: mixture-of-experts actor head gated by the regime probabilities.
        n_regimes: number ``K`` of regimes; ``regime_gating`` needs ``K >= 1`` and a
            ``spaces.Discrete`` action space.
        regime_key: the Dict-observation key whose first ``K`` entries are the regime
            probabilities (Sentio: ``"state"``).
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        net_arch: list[int] | dict[str, list[int]] | None = None,
        activation_fn: type[nn.Module] = nn.Tanh,
        ortho_init: bool = True,
        features_extractor_class: type[BaseFeaturesExtractor] = FlattenExtractor,
        features_extractor_kwargs: dict[str, Any] | None = None,
        share_features_extractor: bool = True,
        normalize_images: bool = True,
        optimizer_class: type[torch.optim.Optimizer] = torch.optim.Adam,
        optimizer_kwargs: dict[str, Any] | None = None,
        *,
        quantile_critic: bool = True,
        n_quantiles: int = 32,
        cvar_alpha: float = 0.1,
        cvar_beta: float = 0.0,
        quantile_init_spacing: float = 1e-3,
        regime_gating: bool = False,
        n_regimes: int = 0,
        regime_key: str = "state",
    ) -> None:
        if n_quantiles < 1:
            raise ValueError(f"n_quantiles must be at least 1, got {n_quantiles}")
        if not 0.0 < cvar_alpha <= 1.0:
            raise ValueError(f"cvar_alpha must be in (0, 1], got {cvar_alpha}")
        if not 0.0 <= cvar_beta <= 1.0:
            raise ValueError(f"cvar_beta must be in [0, 1], got {cvar_beta}")
        if cvar_beta > 0.0 and not quantile_critic:
            raise ValueError(
                "cvar_beta > 0 needs quantile_critic=True (CVaR comes from the quantiles)"
            )
        if n_regimes < 0:
            raise ValueError(f"n_regimes must be non-negative, got {n_regimes}")
        if regime_gating:
            _check_gating(observation_space, action_space, n_regimes, regime_key)
        self.quantile_critic = quantile_critic
        self.n_quantiles = n_quantiles if quantile_critic else 1
        self.cvar_alpha = float(cvar_alpha)
        self.cvar_beta = float(cvar_beta)
        self.quantile_init_spacing = float(quantile_init_spacing)
        self.regime_gating = regime_gating
        self.n_regimes = n_regimes
        self.regime_key = regime_key
        super().__init__(
            observation_space,
            action_space,
            lr_schedule,
            net_arch=net_arch,
            activation_fn=activation_fn,
            ortho_init=ortho_init,
            features_extractor_class=features_extractor_class,
            features_extractor_kwargs=features_extractor_kwargs,
            share_features_extractor=share_features_extractor,
            normalize_images=normalize_images,
            optimizer_class=optimizer_class,
            optimizer_kwargs=optimizer_kwargs,
        )
        self._train_mode_behaviour = has_train_mode_behaviour(self)

    # ------------------------------------------------------------------ construction

    def _build(self, lr_schedule: Schedule) -> None:
        """Create the MLP extractor, the two heads, their initialisation and the optimizer.

        The order of construction and initialisation is SB3's (so with both Sentio options
        off the parameters equal MaskablePPO's for the same seed). The quantile head is not
        re-initialised by ``ortho_init``: it has its own initialisation (base row gain 1 as
        SB3's value head, small increments with a fixed initial spacing), which SB3's
        ``init_weights`` (bias 0) would destroy.
        """
        self._build_mlp_extractor()
        latent_pi = self.mlp_extractor.latent_dim_pi
        latent_vf = self.mlp_extractor.latent_dim_vf
        if self.regime_gating:
            assert isinstance(self.action_space, spaces.Discrete)
            self.action_net = RegimeGatedLogits(latent_pi, int(self.action_space.n), self.n_regimes)
        else:
            self.action_net = self.action_dist.proba_distribution_net(latent_dim=latent_pi)
        if self.quantile_critic:
            self.value_net = NonCrossingQuantileHead(  # type: ignore[assignment]
                latent_vf, self.n_quantiles, init_spacing=self.quantile_init_spacing
            )
        else:
            self.value_net = nn.Linear(latent_vf, 1)

        if self.ortho_init:
            module_gains: dict[nn.Module, float] = {
                self.features_extractor: float(np.sqrt(2)),
                self.mlp_extractor: float(np.sqrt(2)),
                self.action_net: 0.01,
            }
            if not self.quantile_critic:
                module_gains[self.value_net] = 1.0
            if not self.share_features_extractor:
                del module_gains[self.features_extractor]
                module_gains[self.pi_features_extractor] = float(np.sqrt(2))
                module_gains[self.vf_features_extractor] = float(np.sqrt(2))
            for module, gain in module_gains.items():
                module.apply(partial(self.init_weights, gain=gain))

        self.optimizer = self.optimizer_class(
            self.parameters(),
            lr=lr_schedule(1),  # type: ignore[call-arg]
            **self.optimizer_kwargs,
        )

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            quantile_critic=self.quantile_critic,
            n_quantiles=self.n_quantiles,
            cvar_alpha=self.cvar_alpha,
            cvar_beta=self.cvar_beta,
            quantile_init_spacing=self.quantile_init_spacing,
            regime_gating=self.regime_gating,
            n_regimes=self.n_regimes,
            regime_key=self.regime_key,
        )
        return data

    @property
    def has_train_mode_behaviour(self) -> bool:
        """Whether train and eval mode may differ (see :func:`has_train_mode_behaviour`)."""
        return self._train_mode_behaviour

    # ------------------------------------------------------------------ building blocks

    def _features(self, obs: PyTorchObs, extractor: BaseFeaturesExtractor) -> torch.Tensor:
        """Preprocess ``obs`` and run one features extractor (SB3's ``BaseModel.extract_features``)."""
        return extractor(
            preprocess_obs(obs, self.observation_space, normalize_images=self.normalize_images)
        )

    def _latents(self, obs: PyTorchObs) -> tuple[torch.Tensor, torch.Tensor]:
        """``(latent_pi, latent_vf)`` from one pass (two extractors when they are not shared)."""
        features = self.extract_features(obs)
        if self.share_features_extractor:
            assert isinstance(features, torch.Tensor)
            latent_pi, latent_vf = self.mlp_extractor(features)
            return latent_pi, latent_vf
        pi_features, vf_features = features
        return self.mlp_extractor.forward_actor(pi_features), self.mlp_extractor.forward_critic(
            vf_features
        )

    def regime_probabilities(self, obs: PyTorchObs) -> torch.Tensor | None:
        """The gating weights ``obs[regime_key][:, :K]`` ``(B, K)``; None when gating is off."""
        if not self.regime_gating:
            return None
        if not isinstance(obs, dict):
            raise TypeError("regime gating needs Dict observations")
        state = obs[self.regime_key]
        return state.reshape(-1, state.shape[-1])[:, : self.n_regimes].to(torch.float32)

    def action_logits(
        self, latent_pi: torch.Tensor, regime_probs: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Float32 logits of the actor head (the mixture log-probabilities when gated)."""
        with _float32_region(latent_pi.device):
            latent = latent_pi.to(torch.float32)
            if self.regime_gating:
                if regime_probs is None:
                    raise ValueError("this policy is regime-gated: pass the regime probabilities")
                return self.action_net(latent, regime_probs)
            return self.action_net(latent).to(torch.float32)

    def _get_action_dist_from_latent(
        self, latent_pi: torch.Tensor, regime_probs: torch.Tensor | None = None
    ) -> MaskableDistribution:
        """The (unmasked) action distribution of ``latent_pi`` (and the regime probabilities)."""
        return self.action_dist.proba_distribution(
            action_logits=self.action_logits(latent_pi, regime_probs)
        )

    def _masked_distribution(
        self, latent_pi: torch.Tensor, obs: PyTorchObs, action_masks: MaskLike
    ) -> MaskableDistribution:
        distribution = self._get_action_dist_from_latent(latent_pi, self.regime_probabilities(obs))
        if action_masks is not None:
            distribution.apply_masking(action_masks)
        return distribution

    def critic_from_latent(self, latent_vf: torch.Tensor) -> torch.Tensor:
        """Critic output in float32: quantiles ``(B, N)`` ascending, or values ``(B, 1)``."""
        with _float32_region(latent_vf.device):
            return self.value_net(latent_vf.to(torch.float32)).to(torch.float32)

    def values_from_critic(self, critic: torch.Tensor) -> torch.Tensor:
        """SB3's values ``(B, 1)``: ``V_beta`` of the quantiles, or the scalar values as they are."""
        if not self.quantile_critic:
            return critic
        return risk_adjusted_value(critic, self.cvar_alpha, self.cvar_beta).unsqueeze(-1)

    # ------------------------------------------------------------------ SB3 interface

    def forward_with_critic(
        self,
        obs: PyTorchObs,
        deterministic: bool = False,
        action_masks: MaskLike = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`forward` plus the raw critic output: ``(actions, values, log_prob, critic)``.

        ``critic`` is :meth:`critic_from_latent`'s output (the quantiles for a quantile
        critic). The mask is applied to the distribution before the action is drawn.
        """
        latent_pi, latent_vf = self._latents(obs)
        critic = self.critic_from_latent(latent_vf)
        distribution = self._masked_distribution(latent_pi, obs, action_masks)
        actions = distribution.get_actions(deterministic=deterministic)
        log_prob = distribution.log_prob(actions)
        actions = actions.reshape((-1, *self.action_space.shape))  # type: ignore[misc]
        return actions, self.values_from_critic(critic), log_prob, critic

    def forward(
        self,
        obs: PyTorchObs,
        deterministic: bool = False,
        action_masks: MaskLike = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Actions (drawn from the masked distribution), values ``V_beta`` ``(B, 1)``, log-probs."""
        actions, values, log_prob, _ = self.forward_with_critic(obs, deterministic, action_masks)
        return actions, values, log_prob

    def evaluate_actions_critic(
        self,
        obs: PyTorchObs,
        actions: torch.Tensor,
        action_masks: MaskLike = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(critic, log_prob, entropy)`` of ``actions`` in one pass; ``critic`` as in
        :meth:`critic_from_latent` (quantiles ``(B, N)`` or values ``(B, 1)``)."""
        latent_pi, latent_vf = self._latents(obs)
        distribution = self._masked_distribution(latent_pi, obs, action_masks)
        log_prob = distribution.log_prob(actions)
        return self.critic_from_latent(latent_vf), log_prob, distribution.entropy()

    def evaluate_actions_quantiles(
        self,
        obs: PyTorchObs,
        actions: torch.Tensor,
        action_masks: MaskLike = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(quantiles (B, N), log_prob (B,), entropy (B,))``; quantile critic only."""
        self._require_quantiles()
        return self.evaluate_actions_critic(obs, actions, action_masks)

    def evaluate_actions(
        self,
        obs: PyTorchObs,
        actions: torch.Tensor,
        action_masks: MaskLike = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """SB3's ``(values (B, 1), log_prob, entropy)`` with values ``V_beta``."""
        critic, log_prob, entropy = self.evaluate_actions_critic(obs, actions, action_masks)
        return self.values_from_critic(critic), log_prob, entropy

    def actor_log_prob(
        self,
        obs: PyTorchObs,
        actions: torch.Tensor,
        action_masks: MaskLike = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(log_prob, entropy)`` from the actor path alone (no critic computed)."""
        distribution = self.get_distribution(obs, action_masks)
        return distribution.log_prob(actions), distribution.entropy()

    def get_distribution(
        self, obs: PyTorchObs, action_masks: MaskLike = None
    ) -> MaskableDistribution:
        """The masked action distribution (``predict`` samples from it)."""
        distribution = self.action_dist.proba_distribution(action_logits=self.actor_logits(obs))
        if action_masks is not None:
            distribution.apply_masking(action_masks)
        return distribution

    def actor_logits(self, obs: PyTorchObs) -> torch.Tensor:
        """The actor's unmasked float32 logits ``(B, A)``: what :meth:`get_distribution`
        builds its distribution from (the backtest's fast path reads them directly)."""
        latent_pi = self.mlp_extractor.forward_actor(
            self._features(obs, self.pi_features_extractor)
        )
        return self.action_logits(latent_pi, self.regime_probabilities(obs))

    def predict_critic(self, obs: PyTorchObs) -> torch.Tensor:
        """Critic output of ``obs``: quantiles ``(B, N)`` or values ``(B, 1)`` (float32)."""
        latent_vf = self.mlp_extractor.forward_critic(
            self._features(obs, self.vf_features_extractor)
        )
        return self.critic_from_latent(latent_vf)

    def predict_quantiles(self, obs: PyTorchObs) -> torch.Tensor:
        """The quantiles ``theta_i(s)`` ``(B, N)``, ascending; quantile critic only."""
        self._require_quantiles()
        return self.predict_critic(obs)

    def predict_values(self, obs: PyTorchObs) -> torch.Tensor:
        """The values fed to GAE, ``(B, 1)``: ``V_beta`` of the quantiles (beta 0: their mean)."""
        return self.values_from_critic(self.predict_critic(obs))

    def _require_quantiles(self) -> None:
        if not self.quantile_critic:
            raise RuntimeError("this policy has a scalar critic (quantile_critic=False)")


class SentioMultiInputPolicy(SentioActorCriticPolicy):
    """:class:`SentioActorCriticPolicy` for Dict observations (default extractor: SB3's
    ``CombinedExtractor``; Sentio passes its transformer extractor through policy_kwargs)."""

    def __init__(
        self,
        observation_space: spaces.Dict,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        net_arch: list[int] | dict[str, list[int]] | None = None,
        activation_fn: type[nn.Module] = nn.Tanh,
        ortho_init: bool = True,
        features_extractor_class: type[BaseFeaturesExtractor] = CombinedExtractor,
        features_extractor_kwargs: dict[str, Any] | None = None,
        share_features_extractor: bool = True,
        normalize_images: bool = True,
        optimizer_class: type[torch.optim.Optimizer] = torch.optim.Adam,
        optimizer_kwargs: dict[str, Any] | None = None,
        **sentio_kwargs: Any,
    ) -> None:
        super().__init__(
            observation_space,
            action_space,
            lr_schedule,
            net_arch,
            activation_fn,
            ortho_init,
            features_extractor_class,
            features_extractor_kwargs,
            share_features_extractor,
            normalize_images,
            optimizer_class,
            optimizer_kwargs,
            **sentio_kwargs,
        )


def _check_gating(
    observation_space: spaces.Space, action_space: spaces.Space, n_regimes: int, regime_key: str
) -> None:
    """Reject regime gating that cannot work, naming what is missing."""
    if n_regimes < 1:
        raise ValueError(f"regime_gating=True needs n_regimes >= 1, got {n_regimes}")
    if not isinstance(action_space, spaces.Discrete):
        raise ValueError(f"regime gating needs a Discrete action space, got {action_space}")
    if not isinstance(observation_space, spaces.Dict) or regime_key not in observation_space.spaces:
        raise ValueError(f"regime gating needs a Dict observation space with key {regime_key!r}")
    sub = observation_space.spaces[regime_key]
    if not isinstance(sub, spaces.Box) or len(sub.shape) != 1 or sub.shape[0] < n_regimes:
        raise ValueError(
            f"observation {regime_key!r} must be a 1-d Box with at least n_regimes={n_regimes} "
            f"entries, got {sub}"
        )
