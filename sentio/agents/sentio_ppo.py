"""Sentio PPO: sb3-contrib's MaskablePPO with a quantile critic, CVaR advantages and regime gating.

:class:`SentioPPO` subclasses ``sb3_contrib.MaskablePPO``, so a trained model is a standard
SB3 model (``model.save(path)``, ``SentioPPO.load(path)``, ``model.predict(obs,
action_masks=...)``). Read top to bottom, one update is:

**Rollout** (:meth:`SentioPPO.collect_rollouts`), policy in eval mode (no dropout), masks
from ``env.action_masks()`` applied to the distribution before sampling. One forward pass
per step gives the action, its behaviour log-probability (the exact policy that acted: same
mask, eval mode, same precision), the quantiles ``theta(s_t)`` and ``V_beta(s_t)``. For an
episode cut by a time limit (``infos[n]["TimeLimit.truncated"]`` with a
``terminal_observation``), the quantiles and ``V_beta`` of the terminal observation are
computed (one batched pass) and stored with a *truncated* flag; any other end of episode is
*terminated*. This is SB3's own rule for what to bootstrap, kept as flags instead of SB3's
``reward += gamma V(terminal)`` (which would collapse the quantile targets to a scalar and,
combined with a bootstrap, count the terminal value twice).

**Targets** (:class:`~sentio.agents.buffers.QuantileMaskableDictRolloutBuffer`)::

    delta_t = r_t + gamma (1 - terminated_t) V_beta(s_{t+1}) - V_beta(s_t)
    A_t     = delta_t + gamma lambda (1 - done_t) A_{t+1}                      (GAE)
    z_i,t   = r_t + gamma (1 - terminated_t) [(1 - lambda) theta_i(s_{t+1}) + lambda z_i,t+1]

with :func:`~sentio.agents.distributional.gae` and
:func:`~sentio.agents.distributional.quantile_lambda_targets` (their boundary conventions:
``s_{t+1}`` of a truncated step is the terminal observation; the last step bootstraps from
the observation after the rollout). ``beta = 0`` gives exactly MaskablePPO's advantages on
the same values, and ``mean_i z_i,t`` equals the lambda-return. CVaR enters only through
``V_beta`` in the advantages (the policy); the critic learns the quantiles.

**Update** (:meth:`SentioPPO.train`), ``n_epochs`` passes over shuffled minibatches::

    ratio       = exp(log pi(a|s, mask) - log pi_old(a|s, mask))
    L_policy    = -mean(min(ratio A, clip(ratio, 1 - eps, 1 + eps) A))   (A normalised per minibatch)
    L_entropy   = -mean(entropy)
    L_critic    = quantile_huber_loss(theta(s), z, tau, kappa)            (targets detached)
    loss        = L_policy + ent_coef L_entropy + vf_coef L_critic

then gradient clipping at ``max_grad_norm`` and an Adam step; SB3's approximate-KL early
stop (``target_kl``) and logging. With ``value_clip = c`` each predicted quantile is also
clipped to ``old_theta_i +/- c`` (old = the rollout's quantiles; clipping a sorted vector
element-wise between sorted bounds keeps it sorted) and the per-sample loss is the maximum
of the clipped and unclipped losses (PPO2's value clipping, per quantile).

Importance ratio 1 on the first minibatch, also with dropout
    The policy that acts is the eval-mode network, so the update's log-probabilities are
    computed in eval mode too: on the first minibatch of an update the parameters are those
    that acted and ``ratio == 1`` (to float rounding). SB3 evaluates in train mode, where
    dropout would make the first ratio ``!= 1`` and optimise a policy that never acts. When
    the network has train-mode behaviour (dropout, batch norm; see
    :func:`~sentio.agents.policies.has_train_mode_behaviour`) the critic is evaluated in a
    second, train-mode pass, so dropout still regularises the critic (and through it a
    shared features extractor); otherwise one eval-mode pass serves both.

Precision
    On CUDA (``bf16_autocast=True``) the forward passes of the rollout *and* of the update
    run under ``torch.autocast("cuda", dtype=torch.bfloat16)`` -- the behaviour policy and
    the optimised policy are the same bf16 computation, so the first ratio stays 1 up to
    kernel rounding -- while the heads, log-probabilities, quantiles and every loss are
    float32. On the CPU it is a no-op. ``predict`` (backtests) runs in float32.

Scalar critic
    ``policy_kwargs={"quantile_critic": False}`` gives SB3's scalar value head; the rollout
    then follows MaskablePPO exactly (``reward += gamma V(terminal)`` on truncation, SB3's
    buffer) and the critic loss is MaskablePPO's MSE against the lambda-returns. Without
    dropout and regime gating the result equals MaskablePPO's for the same seed (tested);
    only the eval-mode log-probabilities, the bf16 autocast and ``value_clip`` (max of
    clipped/unclipped squared errors, instead of MaskablePPO's ``clip_range_vf``) differ.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from gymnasium import spaces
from sb3_contrib import MaskablePPO
from sb3_contrib.common.maskable.buffers import (
    MaskableDictRolloutBuffer,
    MaskableRolloutBuffer,
    MaskableRolloutBufferSamples,
)
from sb3_contrib.common.maskable.utils import get_action_masks, is_masking_supported
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, PyTorchObs, Schedule
from stable_baselines3.common.utils import FloatSchedule, explained_variance, obs_as_tensor
from stable_baselines3.common.vec_env import VecEnv
from torch.nn import functional as F

from sentio.agents.buffers import (
    QuantileMaskableDictRolloutBuffer,
    QuantileMaskableRolloutBuffer,
    QuantileRolloutBufferSamples,
    _QuantileStorage,
)
from sentio.agents.distributional import (
    cvar_from_quantiles,
    quantile_huber_loss,
    quantile_midpoints,
    risk_adjusted_value,
)
from sentio.agents.policies import SentioActorCriticPolicy, SentioMultiInputPolicy
from sentio.agents.ppo_update import stacked_mean
from sentio.config import AgentConfig
from sentio.errors import ConfigError

__all__ = [
    "SentioPPO",
    "quantile_huber_loss_per_sample",
    "sentio_algorithm_kwargs",
    "sentio_policy_kwargs",
]

SelfSentioPPO = TypeVar("SelfSentioPPO", bound="SentioPPO")


def sentio_policy_kwargs(agent: AgentConfig, n_regimes: int) -> dict[str, Any]:
    """The Sentio entries of ``policy_kwargs`` for the ``agent`` section and ``K = n_regimes``.

    Merge them with the extractor's (``features_extractor_class`` / ``_kwargs``) and any
    ``net_arch``. ``regime_gating`` needs regime probabilities in the observations (K >= 1).

    Raises:
        ConfigError: ``agent.regime_gating`` on a market without regime probabilities.
    """
    if agent.regime_gating and n_regimes < 1:
        raise ConfigError(
            "agent.regime_gating=true but the market has no regime probabilities (K = 0); "
            "enable regimes or set agent.regime_gating=false"
        )
    return {
        "quantile_critic": agent.quantile_critic,
        "n_quantiles": agent.n_quantiles,
        "cvar_alpha": agent.cvar_alpha,
        "cvar_beta": agent.cvar_beta,
        "regime_gating": agent.regime_gating,
        "n_regimes": n_regimes,
    }


def sentio_algorithm_kwargs(agent: AgentConfig) -> dict[str, Any]:
    """The keyword arguments of :class:`SentioPPO` beyond MaskablePPO's for ``agent``."""
    return {"huber_kappa": agent.huber_kappa, "value_clip": agent.value_clip}


def quantile_huber_loss_per_sample(
    pred: torch.Tensor, target: torch.Tensor, taus: torch.Tensor, kappa: float = 1.0
) -> torch.Tensor:
    """Per-row quantile Huber loss ``(B,)``; its mean is exactly
    :func:`~sentio.agents.distributional.quantile_huber_loss`.

    ``rho_bij = |tau_i - 1{u_bij < 0}| L_kappa(u_bij) / kappa`` with ``u = target_j - pred_i``,
    summed over the predicted quantiles ``i`` and averaged over the targets ``j`` (targets
    detached). Used where a per-sample loss is needed (value clipping takes a per-sample max).
    """
    if not kappa > 0.0:
        raise ValueError(f"kappa must be positive, got {kappa}")
    u = target.detach().unsqueeze(-2) - pred.unsqueeze(-1)  # (B, N, M)
    abs_u = u.abs()
    huber = torch.where(abs_u <= kappa, 0.5 * u.pow(2), kappa * (abs_u - 0.5 * kappa))
    weight = (taus.to(pred).unsqueeze(-1) - (u.detach() < 0).to(pred)).abs()
    return (weight * huber / kappa).sum(dim=-2).mean(dim=-1)


@dataclass
class _UpdateStats:
    """Per-minibatch statistics of one update, kept as device tensors until it is logged."""

    entropy_losses: list[torch.Tensor] = field(default_factory=list)
    pg_losses: list[torch.Tensor] = field(default_factory=list)
    critic_losses: list[torch.Tensor] = field(default_factory=list)
    clip_fractions: list[torch.Tensor] = field(default_factory=list)
    value_clip_fractions: list[torch.Tensor] = field(default_factory=list)
    approx_kl_divs: list[torch.Tensor] = field(default_factory=list)  # of the last epoch


class SentioPPO(MaskablePPO):
    """MaskablePPO with a quantile critic (CVaR-adjusted advantages) and a regime-gated actor.

    Policies: ``"MultiInputPolicy"`` (:class:`~sentio.agents.policies.SentioMultiInputPolicy`,
    Dict observations) or ``"MlpPolicy"`` (:class:`~sentio.agents.policies.SentioActorCriticPolicy`),
    or any subclass of ``SentioActorCriticPolicy``. The critic and the actor head are policy
    options (``policy_kwargs``): ``quantile_critic``, ``n_quantiles``, ``cvar_alpha``,
    ``cvar_beta``, ``regime_gating``, ``n_regimes``, plus SB3's (``net_arch``,
    ``features_extractor_class``, ``features_extractor_kwargs``, ...).

    The arguments are MaskablePPO's, except ``clip_range_vf`` (replaced by ``value_clip``) and:

    Args:
        huber_kappa: threshold ``kappa > 0`` of the quantile Huber loss.
        value_clip: per-quantile value clipping range ``c > 0`` (None: off); see the module
            docstring. Depends on the reward scale.
        bf16_autocast: bf16 autocast of the forward passes on CUDA (no-op on the CPU).

    After each :meth:`train`, :attr:`first_minibatch_ratio` holds the importance ratios of
    the first minibatch of the first epoch (all 1 up to rounding; a diagnostic, not saved).
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpPolicy": SentioActorCriticPolicy,
        "MultiInputPolicy": SentioMultiInputPolicy,
    }
    policy: SentioActorCriticPolicy

    def __init__(
        self,
        policy: str | type[SentioActorCriticPolicy],
        env: GymEnv | str,
        learning_rate: float | Schedule = 3e-4,
        n_steps: int = 2048,
        batch_size: int | None = 64,
        n_epochs: int = 10,
        gamma: float = 0.99,
        gae_lambda: float = 0.95,
        clip_range: float | Schedule = 0.2,
        normalize_advantage: bool = True,
        ent_coef: float = 0.0,
        vf_coef: float = 0.5,
        max_grad_norm: float = 0.5,
        huber_kappa: float = 1.0,
        value_clip: float | None = None,
        bf16_autocast: bool = True,
        rollout_buffer_class: type[RolloutBuffer] | None = None,
        rollout_buffer_kwargs: dict[str, Any] | None = None,
        target_kl: float | None = None,
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: torch.device | str = "auto",
        _init_setup_model: bool = True,
    ) -> None:
        if not huber_kappa > 0.0:
            raise ValueError(f"huber_kappa must be positive, got {huber_kappa}")
        if value_clip is not None and not value_clip > 0.0:
            raise ValueError(f"value_clip must be positive or None, got {value_clip}")
        self.huber_kappa = float(huber_kappa)
        self.value_clip = None if value_clip is None else float(value_clip)
        self.bf16_autocast = bf16_autocast
        self.first_minibatch_ratio: torch.Tensor | None = None
        super().__init__(
            policy,
            env,
            learning_rate=learning_rate,
            n_steps=n_steps,
            batch_size=batch_size,
            n_epochs=n_epochs,
            gamma=gamma,
            gae_lambda=gae_lambda,
            clip_range=clip_range,
            clip_range_vf=None,
            normalize_advantage=normalize_advantage,
            ent_coef=ent_coef,
            vf_coef=vf_coef,
            max_grad_norm=max_grad_norm,
            rollout_buffer_class=rollout_buffer_class,
            rollout_buffer_kwargs=rollout_buffer_kwargs,
            target_kl=target_kl,
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            policy_kwargs=policy_kwargs,
            verbose=verbose,
            seed=seed,
            device=device,
            _init_setup_model=_init_setup_model,
        )

    # ------------------------------------------------------------------ setup

    def _setup_model(self) -> None:
        """MaskablePPO's setup (same order of random draws), with the quantile buffer."""
        self._setup_lr_schedule()
        self.set_random_seed(self.seed)
        policy = self.policy_class(
            self.observation_space,
            self.action_space,
            self.lr_schedule,
            **self.policy_kwargs,
        )
        if not isinstance(policy, SentioActorCriticPolicy):
            raise TypeError(
                f"SentioPPO needs a SentioActorCriticPolicy, got {type(policy).__name__}"
            )
        self.policy = policy.to(self.device)

        quantile = self.policy.quantile_critic
        dict_obs = isinstance(self.observation_space, spaces.Dict)
        if self.rollout_buffer_class is None:
            if quantile:
                self.rollout_buffer_class = (
                    QuantileMaskableDictRolloutBuffer if dict_obs else QuantileMaskableRolloutBuffer
                )
            else:
                self.rollout_buffer_class = (
                    MaskableDictRolloutBuffer if dict_obs else MaskableRolloutBuffer
                )
        if quantile != issubclass(self.rollout_buffer_class, _QuantileStorage):
            raise TypeError(
                f"rollout_buffer_class {self.rollout_buffer_class.__name__} does not match "
                f"quantile_critic={quantile}"
            )
        buffer_kwargs = dict(self.rollout_buffer_kwargs)
        if quantile:
            buffer_kwargs["n_quantiles"] = self.policy.n_quantiles
        self.rollout_buffer = self.rollout_buffer_class(  # type: ignore[assignment]
            self.n_steps,
            self.observation_space,
            self.action_space,
            self.device,
            gamma=self.gamma,
            gae_lambda=self.gae_lambda,
            n_envs=self.n_envs,
            **buffer_kwargs,
        )
        self.clip_range = FloatSchedule(self.clip_range)

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "first_minibatch_ratio"]

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        """bf16 autocast on CUDA when enabled; a no-op elsewhere."""
        if self.bf16_autocast and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ------------------------------------------------------------------ rollouts

    def _terminal_critic(
        self, infos: list[dict[str, Any]], which: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Critic output and values of the terminal observations of environments ``which``."""
        first = infos[int(which[0])]["terminal_observation"]
        stacked: np.ndarray | dict[str, np.ndarray]
        if isinstance(first, dict):
            stacked = {
                k: np.stack([infos[int(i)]["terminal_observation"][k] for i in which])
                for k in first
            }
        else:
            stacked = np.stack([infos[int(i)]["terminal_observation"] for i in which])
        obs_tensor = self.policy.obs_to_tensor(stacked)[0]
        with torch.no_grad(), self._autocast():
            critic = self.policy.predict_critic(obs_tensor)
        return critic, self.policy.values_from_critic(critic)

    def _start_rollout(
        self,
        env: VecEnv,
        callback: BaseCallback,
        rollout_buffer: RolloutBuffer,
        use_masking: bool,
    ) -> None:
        """Check the buffer's critic and the environment's masks, reset the buffer, start
        the callback."""
        if self.policy.quantile_critic != isinstance(rollout_buffer, _QuantileStorage):
            raise TypeError("the rollout buffer does not match the policy's critic")
        self.policy.set_training_mode(False)
        rollout_buffer.reset()
        if use_masking and not is_masking_supported(env):
            raise ValueError(
                "Environment does not support action masking. Consider using ActionMasker wrapper"
            )
        callback.on_rollout_start()

    def _store_step(
        self,
        rollout_buffer: MaskableRolloutBuffer | MaskableDictRolloutBuffer,
        last_obs: np.ndarray | dict[str, np.ndarray],
        episode_starts: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        dones: np.ndarray,
        infos: list[dict[str, Any]],
        values: torch.Tensor,
        log_probs: torch.Tensor,
        critic: torch.Tensor,
        action_masks: np.ndarray | None,
    ) -> np.ndarray:
        """Add the step from ``last_obs`` of every environment to the buffer, time-limit
        ends flagged as truncated with their terminal critic (see the module docstring).

        Returns ``dones`` as bools.
        """
        # SB3's rule (GitHub issue #633): bootstrap a time-limit end from its last observation.
        dones = np.asarray(dones, dtype=bool)
        n_envs, n_q = dones.shape[0], self.policy.n_quantiles
        truncated = np.array(
            [
                bool(done)
                and infos[i].get("terminal_observation") is not None
                and bool(infos[i].get("TimeLimit.truncated", False))
                for i, done in enumerate(dones)
            ],
            dtype=bool,
        )
        terminated = dones & ~truncated
        terminal_q = np.zeros((n_envs, n_q), dtype=np.float32)
        terminal_v = np.zeros(n_envs, dtype=np.float32)
        if truncated.any():
            which = np.flatnonzero(truncated)
            t_critic, t_values = self._terminal_critic(infos, which)
            terminal_q[which] = t_critic.cpu().numpy().reshape(which.size, n_q)
            terminal_v[which] = t_values.cpu().numpy().reshape(which.size)

        extra: dict[str, Any] = {}
        if isinstance(rollout_buffer, _QuantileStorage):
            extra = {
                "quantiles": critic,
                "terminated": terminated,
                "truncated": truncated,
                "terminal_quantiles": terminal_q,
                "terminal_values": terminal_v,
            }
        else:  # a scalar critic: bootstrap a time limit into the reward, as SB3 does
            rewards = rewards + np.where(truncated, self.gamma * terminal_v, 0.0).astype(
                rewards.dtype
            )
        rollout_buffer.add(
            last_obs,
            actions,
            rewards,
            episode_starts,
            values,
            log_probs,
            action_masks=action_masks,
            **extra,
        )
        return dones

    def collect_rollouts(
        self,
        env: VecEnv,
        callback: BaseCallback,
        rollout_buffer: RolloutBuffer,
        n_rollout_steps: int,
        use_masking: bool = True,
    ) -> bool:
        """Fill ``rollout_buffer`` with ``n_rollout_steps`` steps of every environment.

        See the module docstring. Returns False if a callback stopped the rollout.
        """
        assert isinstance(rollout_buffer, MaskableRolloutBuffer | MaskableDictRolloutBuffer), (
            "RolloutBuffer doesn't support action masking"
        )
        assert self._last_obs is not None, "No previous observation was provided"
        self._start_rollout(env, callback, rollout_buffer, use_masking)
        n_steps = 0
        action_masks = None
        while n_steps < n_rollout_steps:
            with torch.no_grad(), self._autocast():
                obs_tensor: PyTorchObs = obs_as_tensor(self._last_obs, self.device)  # type: ignore[arg-type]
                if use_masking:
                    action_masks = get_action_masks(env)
                actions_t, values, log_probs, critic = self.policy.forward_with_critic(
                    obs_tensor, action_masks=action_masks
                )
            actions = actions_t.cpu().numpy()
            new_obs, rewards, dones, infos = env.step(actions)
            self.num_timesteps += env.num_envs

            callback.update_locals(locals())
            if not callback.on_step():
                return False
            self._update_info_buffer(infos, dones)
            n_steps += 1
            if isinstance(self.action_space, spaces.Discrete):
                actions = actions.reshape(-1, 1)
            dones = self._store_step(
                rollout_buffer,
                self._last_obs,  # type: ignore[arg-type]  # set by SB3's learn / reset
                self._last_episode_starts,  # type: ignore[arg-type]
                actions,
                rewards,
                dones,
                infos,
                values,
                log_probs,
                critic,
                action_masks,
            )
            self._last_obs = new_obs  # type: ignore[assignment]
            self._last_episode_starts = dones

        with torch.no_grad(), self._autocast():
            last_critic = self.policy.predict_critic(obs_as_tensor(new_obs, self.device))  # type: ignore[arg-type]
        last_values = self.policy.values_from_critic(last_critic)
        if isinstance(rollout_buffer, _QuantileStorage):
            rollout_buffer.compute_targets_and_advantages(last_values, last_critic)
        else:
            rollout_buffer.compute_returns_and_advantage(last_values=last_values, dones=dones)
        callback.update_locals(locals())
        callback.on_rollout_end()
        return True

    # ------------------------------------------------------------------ update

    def _evaluate_minibatch(
        self, obs: PyTorchObs, actions: torch.Tensor, action_masks: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(critic, log_prob, entropy)``: the actor in eval mode, the critic in train mode.

        One eval-mode pass when the network behaves the same in both modes.
        """
        policy = self.policy
        with self._autocast():
            if policy.has_train_mode_behaviour:
                policy.set_training_mode(False)
                log_prob, entropy = policy.actor_log_prob(obs, actions, action_masks)
                policy.set_training_mode(True)
                critic = policy.predict_critic(obs)
                policy.set_training_mode(False)
            else:
                critic, log_prob, entropy = policy.evaluate_actions_critic(
                    obs, actions, action_masks
                )
        return critic.float(), log_prob.float(), None if entropy is None else entropy.float()

    def _quantile_critic_loss(
        self, pred: torch.Tensor, samples: QuantileRolloutBufferSamples, taus: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Quantile Huber loss against the detached lambda-targets (optionally value-clipped).

        Returns the loss and the fraction of quantiles that the clipping moved (a tensor:
        read once per update, not per minibatch).
        """
        target = samples.target_quantiles.detach()
        if self.value_clip is None:
            return quantile_huber_loss(pred, target, taus, self.huber_kappa), pred.new_zeros(())
        old = samples.old_quantiles
        clipped = old + torch.clamp(pred - old, -self.value_clip, self.value_clip)
        unclipped_loss = quantile_huber_loss_per_sample(pred, target, taus, self.huber_kappa)
        clipped_loss = quantile_huber_loss_per_sample(clipped, target, taus, self.huber_kappa)
        fraction = torch.mean(((pred - old).abs() > self.value_clip).float())
        return torch.maximum(unclipped_loss, clipped_loss).mean(), fraction

    def _scalar_critic_loss(
        self, values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """MaskablePPO's MSE to the lambda-returns (PPO2's max rule when ``value_clip`` is set)."""
        if self.value_clip is None:
            return F.mse_loss(returns, values), values.new_zeros(())
        clipped = old_values + torch.clamp(values - old_values, -self.value_clip, self.value_clip)
        loss = torch.maximum((returns - values).pow(2), (returns - clipped).pow(2)).mean()
        fraction = torch.mean(((values - old_values).abs() > self.value_clip).float())
        return loss, fraction

    def _log_rollout_distribution(self) -> None:
        """Log statistics of the rollout's quantiles (before the update)."""
        buffer: Any = self.rollout_buffer  # SB3's (numpy) or the device rollout's (tensors)
        q = torch.as_tensor(buffer.quantiles).reshape(-1, buffer.n_quantiles)
        z = torch.as_tensor(buffer.quantile_targets).reshape(-1, buffer.n_quantiles)
        alpha, beta = self.policy.cvar_alpha, self.policy.cvar_beta
        self.logger.record("train/quantile_mean", q.mean().item())
        self.logger.record("train/cvar", cvar_from_quantiles(q, alpha).mean().item())
        self.logger.record(
            "train/risk_adjusted_value", risk_adjusted_value(q, alpha, beta).mean().item()
        )
        self.logger.record("train/quantile_spread", (q[:, -1] - q[:, 0]).mean().item())
        self.logger.record("train/target_mean", z.mean().item())
        self.logger.record("train/target_cvar", cvar_from_quantiles(z, alpha).mean().item())

    def train(self) -> None:
        """One PPO update on the rollout buffer (see the module docstring)."""
        self.policy.set_training_mode(False)  # eval-mode actor; see _evaluate_minibatch
        self._update_learning_rate(self.policy.optimizer)
        clip_range = self.clip_range(self._current_progress_remaining)  # type: ignore[operator]
        quantile = self.policy.quantile_critic
        taus = quantile_midpoints(self.policy.n_quantiles, device=self.device)
        if quantile:
            self._log_rollout_distribution()

        stats = _UpdateStats()
        self.first_minibatch_ratio = None
        continue_training = True
        loss = torch.zeros(())

        for epoch in range(self.n_epochs):
            stats.approx_kl_divs = []
            for rollout_data in self.rollout_buffer.get(self.batch_size):
                loss, approx_kl_div = self._minibatch_loss(
                    rollout_data, clip_range, quantile, taus, stats
                )
                # the early stop reads the KL back per minibatch, only when it is enabled
                if self.target_kl is not None and approx_kl_div.item() > 1.5 * self.target_kl:
                    continue_training = False
                    if self.verbose >= 1:
                        print(
                            f"Early stopping at step {epoch} due to reaching max kl: {approx_kl_div:.2f}"
                        )
                    break

                self.policy.optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
                self.policy.optimizer.step()

            self._n_updates += 1
            if not continue_training:
                break

        self.policy.set_training_mode(False)
        self._record_update(stats, loss, clip_range, quantile)

    def _minibatch_loss(
        self,
        rollout_data: MaskableRolloutBufferSamples,
        clip_range: float,
        quantile: bool,
        taus: torch.Tensor,
        stats: _UpdateStats,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The PPO loss of one minibatch and its approximate KL; statistics into ``stats``."""
        actions = rollout_data.actions
        if isinstance(self.action_space, spaces.Discrete):
            actions = rollout_data.actions.long().flatten()

        critic, log_prob, entropy = self._evaluate_minibatch(
            rollout_data.observations, actions, rollout_data.action_masks
        )

        advantages = rollout_data.advantages
        if self.normalize_advantage and len(advantages) > 1:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)

        # ratio between the optimised and the behaviour policy: 1 on the first minibatch
        ratio = torch.exp(log_prob - rollout_data.old_log_prob)
        if self.first_minibatch_ratio is None:
            self.first_minibatch_ratio = ratio.detach().clone()

        policy_loss_1 = advantages * ratio
        policy_loss_2 = advantages * torch.clamp(ratio, 1 - clip_range, 1 + clip_range)
        policy_loss = -torch.min(policy_loss_1, policy_loss_2).mean()
        stats.pg_losses.append(policy_loss.detach())
        stats.clip_fractions.append(torch.mean((torch.abs(ratio - 1) > clip_range).float()))

        if quantile:
            assert isinstance(rollout_data, QuantileRolloutBufferSamples)
            critic_loss, vf_fraction = self._quantile_critic_loss(critic, rollout_data, taus)
        else:
            critic_loss, vf_fraction = self._scalar_critic_loss(
                critic.flatten(), rollout_data.old_values, rollout_data.returns
            )
        stats.critic_losses.append(critic_loss.detach())
        stats.value_clip_fractions.append(vf_fraction)

        # entropy bonus (SB3's approximation when there is no closed form)
        entropy_loss = -torch.mean(-log_prob) if entropy is None else -torch.mean(entropy)
        stats.entropy_losses.append(entropy_loss.detach())

        loss = policy_loss + self.ent_coef * entropy_loss + self.vf_coef * critic_loss

        # approximate reverse KL for early stopping (SB3 issue #417, Schulman's blog)
        with torch.no_grad():
            log_ratio = log_prob - rollout_data.old_log_prob
            approx_kl_div = torch.mean((torch.exp(log_ratio) - 1) - log_ratio)
            stats.approx_kl_divs.append(approx_kl_div)
        return loss, approx_kl_div

    def _record_update(
        self, stats: _UpdateStats, loss: torch.Tensor, clip_range: float, quantile: bool
    ) -> None:
        """Log the update's statistics (read back from the device once, here)."""
        explained_var = explained_variance(
            self.rollout_buffer.values.flatten(), self.rollout_buffer.returns.flatten()
        )

        mean = stacked_mean
        self.logger.record("train/entropy_loss", mean(stats.entropy_losses))
        self.logger.record("train/policy_gradient_loss", mean(stats.pg_losses))
        self.logger.record(
            "train/quantile_loss" if quantile else "train/value_loss", mean(stats.critic_losses)
        )
        if self.value_clip is not None:
            self.logger.record("train/value_clip_fraction", mean(stats.value_clip_fractions))
        self.logger.record("train/approx_kl", mean(stats.approx_kl_divs))
        self.logger.record("train/clip_fraction", mean(stats.clip_fractions))
        self.logger.record("train/loss", loss.item())
        self.logger.record("train/explained_variance", explained_var)
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/clip_range", clip_range)
        if self.first_minibatch_ratio is not None:
            deviation = (self.first_minibatch_ratio - 1).abs().max().item()
            self.logger.record("train/first_ratio_max_deviation", deviation)

    def learn(  # type: ignore[override]
        self: SelfSentioPPO,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 1,
        tb_log_name: str = "SentioPPO",
        reset_num_timesteps: bool = True,
        use_masking: bool = True,
        progress_bar: bool = False,
    ) -> SelfSentioPPO:
        """MaskablePPO's ``learn`` (default run name ``"SentioPPO"``)."""
        return super().learn(
            total_timesteps,
            callback=callback,
            log_interval=log_interval,
            tb_log_name=tb_log_name,
            reset_num_timesteps=reset_num_timesteps,
            use_masking=use_masking,
            progress_bar=progress_bar,
        )
