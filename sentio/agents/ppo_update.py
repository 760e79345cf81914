"""PPO's clipped update for SB3's ``PPO`` and sb3-contrib's ``MaskablePPO``, without host reads.

:func:`ppo_update` is the ``train()`` of both classes -- the same loss, the same order of
operations, the same optimiser steps, so on identical minibatches it gives the same
parameters, bit for bit (tested) -- with two differences that matter on a GPU and for small networks on the
CPU:

* the categorical distribution is computed directly from the logits (the masked logits
  ``where(mask, logits, -1e8)`` normalised by their log-sum-exp, as
  ``MaskableCategorical`` and ``torch.distributions.Categorical`` do) instead of through
  distribution objects built and re-built per minibatch;
* the per-minibatch statistics (losses, clip fraction, approximate KL) stay tensors and are
  read once, after the update (SB3 reads each back with ``.item()``, a synchronisation per
  minibatch on a GPU); the KL early stop reads the KL per minibatch only when
  ``target_kl`` is set.

The device rollout (:mod:`sentio.agents.device_rollout`) calls it for ``ppo`` and
``maskable_ppo``; :class:`~sentio.agents.sentio_ppo.SentioPPO` has its own ``train``.
"""

from __future__ import annotations

from typing import Any

import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.utils import explained_variance
from torch.nn import functional as F

__all__ = ["evaluate_actions", "ppo_update", "stacked_mean"]

HUGE_NEG = -1e8
"""The logit of a masked action (sb3-contrib's ``MaskableCategorical``)."""


def stacked_mean(values: list[torch.Tensor]) -> float:
    """The mean of per-minibatch scalar tensors, read back once (NaN for none)."""
    return float(torch.stack(values).float().mean().item()) if values else float("nan")


def evaluate_actions(
    policy: Any,
    obs: dict[str, torch.Tensor] | torch.Tensor,
    actions: torch.Tensor,
    action_masks: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(values, log_prob, entropy)`` of an SB3 actor-critic policy with a categorical head.

    Equal to ``policy.evaluate_actions(obs, actions[, action_masks=...])``: the same layers
    in the same order, the distribution's arithmetic written out.
    """
    features = policy.extract_features(obs)
    if policy.share_features_extractor:
        latent_pi, latent_vf = policy.mlp_extractor(features)
    else:
        pi_features, vf_features = features
        latent_pi = policy.mlp_extractor.forward_actor(pi_features)
        latent_vf = policy.mlp_extractor.forward_critic(vf_features)
    logits = policy.action_net(latent_pi)
    if action_masks is not None:
        masks = action_masks.to(torch.bool)
        logits = torch.where(
            masks, logits, torch.tensor(HUGE_NEG, dtype=logits.dtype, device=logits.device)
        )
    logits = logits - logits.logsumexp(dim=-1, keepdim=True)
    probs = F.softmax(logits, dim=-1)
    log_prob = logits.gather(-1, actions.long().reshape(-1, 1)).squeeze(-1)
    if action_masks is not None:
        p_log_p = torch.where(masks, logits * probs, torch.tensor(0.0, device=logits.device))
    else:
        p_log_p = torch.clamp(logits, min=torch.finfo(logits.dtype).min) * probs
    entropy = -p_log_p.sum(-1)
    values = policy.value_net(latent_vf)
    return values, log_prob, entropy


def ppo_update(model: BaseAlgorithm, *, masked: bool) -> None:
    """One PPO update of ``model`` (``PPO`` or ``MaskablePPO``) on ``model.rollout_buffer``.

    ``masked``: MaskablePPO's rules (the masks applied, the advantages normalised even in
    a minibatch of one); otherwise PPO's.
    """
    m: Any = model
    policy = m.policy
    policy.set_training_mode(True)
    m._update_learning_rate(policy.optimizer)
    clip_range = m.clip_range(m._current_progress_remaining)
    clip_range_vf = None
    if m.clip_range_vf is not None:
        clip_range_vf = m.clip_range_vf(m._current_progress_remaining)
    entropy_losses: list[torch.Tensor] = []
    pg_losses: list[torch.Tensor] = []
    value_losses: list[torch.Tensor] = []
    clip_fractions: list[torch.Tensor] = []
    approx_kl_divs: list[torch.Tensor] = []
    continue_training = True
    loss = torch.zeros(())
    for _epoch in range(m.n_epochs):
        approx_kl_divs = []
        for data in m.rollout_buffer.get(m.batch_size):
            actions = data.actions.long().flatten()
            masks = getattr(data, "action_masks", None) if masked else None
            values, log_prob, entropy = evaluate_actions(policy, data.observations, actions, masks)
            values = values.flatten()
            advantages = data.advantages
            if m.normalize_advantage and (masked or len(advantages) > 1):
                advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
            ratio = torch.exp(log_prob - data.old_log_prob)
            policy_loss_1 = advantages * ratio
            policy_loss_2 = advantages * torch.clamp(ratio, 1 - clip_range, 1 + clip_range)
            policy_loss = -torch.min(policy_loss_1, policy_loss_2).mean()
            pg_losses.append(policy_loss.detach())
            clip_fractions.append(torch.mean((torch.abs(ratio - 1) > clip_range).float()))
            if clip_range_vf is None:
                values_pred = values
            else:
                values_pred = data.old_values + torch.clamp(
                    values - data.old_values, -clip_range_vf, clip_range_vf
                )
            value_loss = F.mse_loss(data.returns, values_pred)
            value_losses.append(value_loss.detach())
            entropy_loss = -torch.mean(entropy)
            entropy_losses.append(entropy_loss.detach())
            loss = policy_loss + m.ent_coef * entropy_loss + m.vf_coef * value_loss
            with torch.no_grad():
                log_ratio = log_prob - data.old_log_prob
                approx_kl_div = torch.mean((torch.exp(log_ratio) - 1) - log_ratio)
                approx_kl_divs.append(approx_kl_div)
            if m.target_kl is not None and approx_kl_div.item() > 1.5 * m.target_kl:
                continue_training = False
                break
            policy.optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), m.max_grad_norm)
            policy.optimizer.step()
        m._n_updates += 1
        if not continue_training:
            break

    mean = stacked_mean
    buffer = m.rollout_buffer
    m.logger.record("train/entropy_loss", mean(entropy_losses))
    m.logger.record("train/policy_gradient_loss", mean(pg_losses))
    m.logger.record("train/value_loss", mean(value_losses))
    m.logger.record("train/approx_kl", mean(approx_kl_divs))
    m.logger.record("train/clip_fraction", mean(clip_fractions))
    m.logger.record("train/loss", float(loss.item()))
    m.logger.record(
        "train/explained_variance",
        explained_variance(buffer.values.flatten(), buffer.returns.flatten()),
    )
    m.logger.record("train/n_updates", m._n_updates, exclude="tensorboard")
    m.logger.record("train/clip_range", clip_range)
    if clip_range_vf is not None:
        m.logger.record("train/clip_range_vf", clip_range_vf)
