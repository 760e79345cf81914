"""Feature extractors of the Sentio policies for the ``{"window", "state"}`` observation.

The trading environments (:func:`sentio.env.observation_space`) observe a
:class:`gymnasium.spaces.Dict` of two float32 boxes:

* ``"window"`` ``(L, F)``: the last ``L`` feature rows, one row per bar, oldest first and
  the current bar (the one whose close the agent has just seen) LAST;
* ``"state"`` ``(K + 5,)``: the ``K`` causally filtered regime probabilities (``K = 0``
  when regimes are off), then exposure, unrealised return, drawdown, time in position
  and time to the close.

Two extractors turn that into the flat feature vector that Stable-Baselines3's
``net_arch`` MLPs (policy and value) read:

* :class:`TransformerExtractor` -- each bar a token: a linear embedding plus learned
  positional embeddings, a pre-norm ``torch.nn.TransformerEncoder``, a final LayerNorm,
  pooled as ``[last token, mean over tokens]``; the state vector is joined AFTER the
  encoder, unchanged. Features: ``2 * d_model + K + 5``.
* :class:`DictMlpExtractor` -- the window flattened, then the state: ``L * F + K + 5``
  features (the MLP layers themselves come from ``net_arch``).

In both, the state occupies the LAST ``K + 5`` features, starting at ``state_offset``,
so the regime probabilities are ``features[:, state_offset : state_offset + K]``.

:func:`extractor_kwargs` maps the ``agent`` configuration section to the class and the
keyword arguments of ``policy_kwargs``::

    cls, kwargs = extractor_kwargs(cfg.agent)
    MaskablePPO(
        "MultiInputPolicy",
        env,
        policy_kwargs={"features_extractor_class": cls, "features_extractor_kwargs": kwargs},
    )
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import torch
from gymnasium import spaces
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn
from torch.nn import functional as F

from sentio.config import AgentConfig

__all__ = ["DictMlpExtractor", "TransformerExtractor", "extractor_kwargs"]

POSITION_INIT_STD = 0.02
"""Standard deviation of the (truncated normal) initial positional embeddings."""


def _window_and_state_dims(observation_space: gym.Space[Any]) -> tuple[int, int, int]:
    """``(L, F, S)`` of a ``Dict(window=Box(L, F), state=Box(S,))`` space; ValueError if not."""
    if not isinstance(observation_space, spaces.Dict):
        raise ValueError(
            "the observation space must be a gymnasium spaces.Dict with 'window' and 'state' "
            f"boxes, got {observation_space!r}"
        )
    keys = set(observation_space.spaces)
    if keys != {"window", "state"}:
        raise ValueError(
            f"the observation space must hold exactly the keys 'window' and 'state', got {sorted(keys)}"
        )
    window, state = observation_space["window"], observation_space["state"]
    if not isinstance(window, spaces.Box) or len(window.shape) != 2 or min(window.shape) < 1:
        raise ValueError(
            f"observation 'window' must be a non-empty Box of shape (L, F), got {window!r}"
        )
    if not isinstance(state, spaces.Box) or len(state.shape) != 1:
        raise ValueError(f"observation 'state' must be a Box of shape (K + 5,), got {state!r}")
    return int(window.shape[0]), int(window.shape[1]), int(state.shape[0])


def _gelu(x: torch.Tensor) -> torch.Tensor:
    """GELU as a plain function (see :class:`TransformerExtractor`, "One code path")."""
    return F.gelu(x)


class TransformerExtractor(BaseFeaturesExtractor):
    """A small pre-norm transformer over the bars of the window; the state joined after it.

    Architecture (``B`` observations, ``L`` bars, ``F`` features per bar, ``d = d_model``):

    1. tokens: ``Linear(F -> d)`` of each bar plus a learned positional embedding per
       position ``0 .. L-1`` (initialised small: truncated normal, std
       :data:`POSITION_INIT_STD`), then dropout;
    2. ``n_layers`` pre-norm encoder layers (``norm_first=True``, ``batch_first=True``,
       GELU, feed-forward width ``ff_mult * d``, ``dropout``), then a final LayerNorm;
    3. pooling: the concatenation of the LAST token (the current bar, whose
       representation has attended to the whole window) and the MEAN over all ``L``
       tokens (a summary of the window that does not depend on one bar) -- ``2 d``;
    4. the state vector ``(K + 5,)`` concatenated AFTER the encoder, unchanged: no
       projection, because the ``net_arch`` MLPs after the extractor already process the
       joined vector, and the regime probabilities and the position stay readable
       exactly (at ``state_offset``). The state entries are O(1) or smaller
       (probabilities, exposure in [-1, 1], returns, scaled times), comparable with the
       LayerNorm-ed pooled features.

    ``features_dim = 2 * d_model + K + 5``.

    Attention is over the whole window without a causal mask: every token is a bar at or
    before the decision time, so nothing in the window is from the future.

    One code path: the encoder is evaluated by the same operations in every mode, so
    with ``dropout = 0`` the features of a rollout (eval mode, ``torch.no_grad``) are
    bit-identical to those of the update (train mode, gradients on) for the same
    observations -- PyTorch's fused inference "fast path" (taken in eval mode without
    gradients) is numerically slightly different and would make the PPO ratio of the
    first minibatch differ from 1. It is switched off locally by passing GELU as a plain
    function (the encoder layer only fuses ``nn.GELU``/``F.gelu``) and an all-zero float
    attention mask (self-attention only fuses without a float mask). Neither changes the
    mathematics. In eval mode the module has no randomness at any ``dropout``; the
    behaviour log-probabilities of PPO must come from eval mode.

    Device- and dtype-agnostic: works on CPU and CUDA and under ``torch.autocast`` (e.g.
    bfloat16); the features come back in the promoted dtype of the pooled tokens and the
    state (float32 for float32 observations).

    Args:
        observation_space: ``Dict(window=Box(L, F), state=Box(K + 5,))`` with ``L >= 2``.
        d_model: token width; divisible by ``n_heads``.
        n_heads: attention heads.
        n_layers: encoder layers.
        dropout: dropout of the embeddings, attention weights and feed-forward blocks,
            in ``[0, 1)``; active in train mode only.
        ff_mult: feed-forward width as a multiple of ``d_model``.

    Raises:
        ValueError: a malformed observation space, a window of fewer than 2 bars (use the
            ``"mlp"`` extractor), ``d_model`` not divisible by ``n_heads``, or a
            hyper-parameter out of range.
    """

    def __init__(
        self,
        observation_space: spaces.Dict,
        d_model: int = 32,
        n_heads: int = 4,
        n_layers: int = 2,
        dropout: float = 0.0,
        ff_mult: int = 4,
    ) -> None:
        window, n_features, state_dim = _window_and_state_dims(observation_space)
        if window < 2:
            raise ValueError(
                f"the transformer extractor needs a window of at least 2 bars (env.window >= 2), "
                f"got {window}; use agent.extractor='mlp' for a one-bar window"
            )
        for name, value in (("d_model", d_model), ("n_heads", n_heads), ("n_layers", n_layers)):
            if value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value}")
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if ff_mult < 1:
            raise ValueError(f"ff_mult must be a positive integer, got {ff_mult}")
        super().__init__(observation_space, features_dim=2 * d_model + state_dim)
        self.window = window
        self.n_features = n_features
        self.state_dim = state_dim
        self.d_model = d_model
        self.state_offset = 2 * d_model
        """Index of the first state entry in the features (the regime probabilities)."""

        self.embed = nn.Linear(n_features, d_model)
        self.position = nn.Parameter(torch.empty(1, window, d_model))
        nn.init.trunc_normal_(
            self.position, std=POSITION_INIT_STD, a=-2 * POSITION_INIT_STD, b=2 * POSITION_INIT_STD
        )
        self.embed_dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(
            d_model,
            n_heads,
            dim_feedforward=ff_mult * d_model,
            dropout=dropout,
            activation=_gelu,
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(
            layer, n_layers, norm=nn.LayerNorm(d_model), enable_nested_tensor=False
        )
        # all-zero additive attention mask: keeps self-attention off the fused fast path
        self.attn_bias: torch.Tensor
        self.register_buffer("attn_bias", torch.zeros(window, window), persistent=False)

    def encode(self, window: torch.Tensor) -> torch.Tensor:
        """The encoded tokens ``(B, L, d_model)`` of a window batch ``(B, L, F)`` (final norm applied)."""
        tokens = self.embed_dropout(self.embed(window) + self.position)
        device = tokens.device.type
        mask_dtype = (
            torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else tokens.dtype
        )
        mask = self.attn_bias.to(dtype=mask_dtype)
        out: torch.Tensor = self.encoder(tokens, mask=mask, is_causal=False)
        return out

    def activation_elements(self) -> int:
        """Floats of the largest intermediate tensor of :meth:`pool` per observation: the
        attention scores (heads x L x L), the feed-forward block (L x width) or the window
        (L x F), whichever is largest (sizes batched inference)."""
        layer: Any = self.encoder.layers[0]
        heads, width = int(layer.self_attn.num_heads), int(layer.linear1.out_features)
        return self.window * max(heads * self.window, width, self.n_features, self.d_model)

    def pool(self, window: torch.Tensor) -> torch.Tensor:
        """The pooled window features ``(B, 2 d_model)``: ``[last token, mean over tokens]``."""
        h = self.encode(window)
        return torch.cat((h[:, -1], h.mean(dim=1)), dim=1)

    def forward(self, observations: dict[str, torch.Tensor]) -> torch.Tensor:
        """Features ``(B, 2 d_model + K + 5)``: pooled window, then the raw state."""
        pooled = self.pool(observations["window"])
        return torch.cat((pooled, observations["state"]), dim=1)


class DictMlpExtractor(BaseFeaturesExtractor):
    """The window flattened (bar by bar, oldest first), then the state: the ``"mlp"`` choice.

    No parameters: the hidden layers are the policy's ``net_arch``. SB3's
    ``CombinedExtractor`` would compute the same numbers for this space but orders the
    parts by key (``state`` before ``window``); this class fixes the order shared with
    :class:`TransformerExtractor` (state LAST, at ``state_offset``) and validates the
    space.

    ``features_dim = L * F + K + 5``.

    Args:
        observation_space: ``Dict(window=Box(L, F), state=Box(K + 5,))``; any ``L >= 1``.

    Raises:
        ValueError: a malformed observation space.
    """

    def __init__(self, observation_space: spaces.Dict) -> None:
        window, n_features, state_dim = _window_and_state_dims(observation_space)
        super().__init__(observation_space, features_dim=window * n_features + state_dim)
        self.window = window
        self.n_features = n_features
        self.state_dim = state_dim
        self.state_offset = window * n_features
        """Index of the first state entry in the features (the regime probabilities)."""

    def activation_elements(self) -> int:
        """Floats of the window per observation (L x F; sizes batched inference)."""
        return self.window * self.n_features

    def pool(self, window: torch.Tensor) -> torch.Tensor:
        """The window part of the features ``(B, L * F)``: the window flattened."""
        return window.reshape(window.shape[0], -1)

    def forward(self, observations: dict[str, torch.Tensor]) -> torch.Tensor:
        """Features ``(B, L * F + K + 5)``: the flattened window, then the state."""
        return torch.cat((self.pool(observations["window"]), observations["state"]), dim=1)


def extractor_kwargs(agent_cfg: AgentConfig) -> tuple[type[BaseFeaturesExtractor], dict[str, Any]]:
    """The extractor class and its keyword arguments for the ``agent`` configuration section.

    ``"transformer"``: :class:`TransformerExtractor` with ``d_model``, ``n_heads``,
    ``n_layers`` and ``dropout`` (``ff_mult`` keeps its default 4). ``"mlp"``:
    :class:`DictMlpExtractor` without arguments.

    Use as ``policy_kwargs={"features_extractor_class": cls, "features_extractor_kwargs":
    kwargs}``.
    """
    if agent_cfg.extractor == "transformer":
        return TransformerExtractor, {
            "d_model": agent_cfg.d_model,
            "n_heads": agent_cfg.n_heads,
            "n_layers": agent_cfg.n_layers,
            "dropout": agent_cfg.dropout,
        }
    if agent_cfg.extractor == "mlp":
        return DictMlpExtractor, {}
    raise ValueError(
        f"unknown agent.extractor {agent_cfg.extractor!r}; expected 'mlp' or 'transformer'"
    )
