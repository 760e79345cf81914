"""One account deciding bar by bar: policies, their inference, and the decision loop.

The one loop of the trading model outside training (:func:`decide_and_step`): at each
row ``t`` of an episode, observe the account (the simulator's observation), read the mask
layers, ask the policy for an action, refuse a masked one (:class:`MaskedActionError`)
and step the simulator (fill at the open of ``t + 1``, mark at its close). The
backtest (:func:`sentio.env.backtest.backtest`) and live replay (:func:`sentio.live.replay`)
both run it; what they record from each step (ledger, per-bar columns) is built on top,
from the step's legs (:class:`~sentio.env.simulator.StepResult`).

Policies. Any callable ``policy(obs, mask) -> action index`` where ``obs`` is one
account's observation (``{"window": (L, F), "state": (S,)}`` float32) and ``mask`` the
``(A,)`` bool allowed actions (a callable with a true attribute ``takes_row`` is called as
``policy(obs, mask, row)``); or a stable-baselines3 / sb3-contrib model (anything with
``predict``), queried deterministically (:func:`model_actions`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np

from sentio.env.simulator import BatchSimulator, StepResult, layer_names
from sentio.errors import SentioError

__all__ = [
    "STAND_ASIDE",
    "Decision",
    "MaskedActionError",
    "Policy",
    "PredictModel",
    "RowPolicy",
    "WINDOW_CHUNK",
    "action_picker",
    "as_action",
    "decide_and_step",
    "model_actions",
    "one_torch_thread",
    "window_batched_actions",
]

Policy = Callable[[dict[str, np.ndarray], np.ndarray], int]
"""``policy(obs, mask) -> action index``: ``obs`` of one account, ``mask`` ``(A,)`` bool."""
RowPolicy = Callable[[dict[str, np.ndarray], np.ndarray, int], int]
"""``policy(obs, mask, row) -> action index``, marked by a true attribute ``takes_row``
(references that read the market's arrays at the decision row)."""


class MaskedActionError(SentioError, ValueError):
    """A policy chose an action the environment's masks forbid at that row."""


@runtime_checkable
class PredictModel(Protocol):
    """An SB3 / sb3-contrib model: anything with ``predict(obs, ..., deterministic=...)``."""

    def predict(self, observation: Any, *args: Any, **kwargs: Any) -> Any:
        """The action(s) for batched observations."""


STAND_ASIDE = "stand_aside_action"
"""Model attribute (saved in its zip): when an integer, the model's every decision is that
action (flat): training's validation found no edge (:mod:`sentio.agents.selection`)."""


def model_actions(
    model: PredictModel, *, fast: bool = True
) -> Callable[[dict[str, np.ndarray], np.ndarray], np.ndarray]:
    """A function of (batched observations ``(n, ...)``, ``(n, A)`` masks) -> ``(n,)`` actions.

    The deterministic actions of ``model.predict(obs, action_masks=masks,
    deterministic=True)`` (without the masks when ``predict`` does not take them: plain
    PPO). For the SB3 / sb3-contrib actor-critic policies with a categorical head, and
    policies with an ``actor_logits(obs)`` method (Sentio PPO), ``fast`` computes the same
    actions from the actor's logits with the same float operations as the masked
    categorical distribution's mode (normalise, mask with -1e8, normalise, softmax,
    argmax), without building distribution objects, converting observations through SB3
    or switching the policy's mode on every call: the default MLP's backtest takes half
    the time per bar (``benchmarks/bench_backtest.py``). A model whose
    :data:`STAND_ASIDE` attribute is an action index returns that action everywhere
    without being queried.
    """
    aside = getattr(model, STAND_ASIDE, None)
    if aside is not None:
        flat = int(aside)

        def stand_aside(obs: dict[str, np.ndarray], masks: np.ndarray) -> np.ndarray:
            return np.full(masks.shape[0], flat, dtype=np.int64)

        return stand_aside
    predict = model.predict
    if fast:
        direct = _direct_actions(model)
        if direct is not None:
            return direct
    try:
        takes_masks = "action_masks" in inspect.signature(predict).parameters
    except (TypeError, ValueError):  # no signature: try with masks, then without
        takes_masks = True

    def act(obs: dict[str, np.ndarray], masks: np.ndarray) -> np.ndarray:
        nonlocal takes_masks
        if takes_masks:
            try:
                action, _ = predict(obs, action_masks=masks, deterministic=True)
                return np.asarray(action)
            except TypeError as err:
                if "action_masks" not in str(err):
                    raise
                takes_masks = False
        action, _ = predict(obs, deterministic=True)
        return np.asarray(action)

    return act


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run torch with one intra-op thread inside the block, then restore the setting.

    A policy queried one observation at a time (the backtest, live use) computes on tiny
    tensors that gain nothing from intra-op parallelism, and on a busy machine the extra
    threads make each query 10x slower (they spin, waiting for cores). The setting is
    process-wide; restored on exit.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _actor_logits(policy: Any) -> Callable[[Any], Any] | None:
    """``obs -> (B, A)`` actor logits of a policy the fast paths know, or None.

    Policies with an ``actor_logits(obs)`` method (Sentio PPO), and SB3 / sb3-contrib
    actor-critic policies whose distribution is the standard categorical one."""
    from sb3_contrib.common.maskable.distributions import MaskableCategoricalDistribution
    from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy
    from stable_baselines3.common.distributions import CategoricalDistribution
    from stable_baselines3.common.policies import ActorCriticPolicy, BaseModel

    if not isinstance(policy, ActorCriticPolicy | MaskableActorCriticPolicy):
        return None
    if callable(getattr(policy, "actor_logits", None)):
        actor_logits: Any = policy.actor_logits
        return actor_logits
    cls = type(policy)
    standard = (
        cls.get_distribution
        in (ActorCriticPolicy.get_distribution, MaskableActorCriticPolicy.get_distribution)
        and cls._get_action_dist_from_latent
        in (
            ActorCriticPolicy._get_action_dist_from_latent,
            MaskableActorCriticPolicy._get_action_dist_from_latent,
        )
        and isinstance(
            policy.action_dist, CategoricalDistribution | MaskableCategoricalDistribution
        )
    )
    if not standard:
        return None

    def logits_of(obs: Any) -> Any:
        features = BaseModel.extract_features(policy, obs, policy.pi_features_extractor)
        return policy.action_net(policy.mlp_extractor.forward_actor(features))

    return logits_of


def _masked_mode(z: Any, masks: np.ndarray | None) -> np.ndarray:
    """The mode of the (masked) categorical distribution of the logits ``z`` ``(B, A)``.

    The float operations of ``torch.distributions.Categorical`` and sb3-contrib's
    ``MaskableCategorical.apply_masking`` (normalise, mask with -1e8, normalise, softmax,
    argmax); ``masks`` None: unmasked (plain PPO's ``predict``).

    Raises:
        ValueError: a logit is not finite (``predict``'s Categorical refuses them too).
    """
    import torch

    if not bool(torch.isfinite(z).all()):
        raise ValueError("the policy's action logits are not finite (NaN or infinite weights?)")
    z = z - z.logsumexp(dim=-1, keepdim=True)
    if masks is not None:
        m = torch.as_tensor(masks, dtype=torch.bool, device=z.device).reshape(z.shape)
        z = z.masked_fill(~m, -1e8)  # where(m, z, -1e8) without a new tensor per call
        z = z - z.logsumexp(dim=-1, keepdim=True)
    out: np.ndarray = torch.softmax(z, dim=-1).argmax(dim=1).cpu().numpy()
    return out


def _takes_masks(model: Any) -> bool | None:
    """Whether ``model.predict`` takes ``action_masks`` (None: no signature to read)."""
    try:
        return "action_masks" in inspect.signature(model.predict).parameters
    except (TypeError, ValueError):
        return None


def _direct_actions(
    model: Any,
) -> Callable[[dict[str, np.ndarray], np.ndarray], np.ndarray] | None:
    """:func:`model_actions`' fast path, or None for a policy it does not know."""
    import torch

    policy: Any = getattr(model, "policy", None)
    logits_of = _actor_logits(policy)
    takes_masks = _takes_masks(model)
    if logits_of is None or takes_masks is None:
        return None
    device = policy.device

    def act(obs: dict[str, np.ndarray], masks: np.ndarray) -> np.ndarray:
        if policy.training:  # eval mode, as predict sets it (dropout off)
            policy.set_training_mode(False)
        with torch.no_grad():
            t = {k: torch.as_tensor(v, device=device) for k, v in obs.items()}
            return _masked_mode(logits_of(t), masks if takes_masks else None)

    return act


WINDOW_CHUNK = 512
"""Market rows whose window part :func:`window_batched_actions` computes at once.

Chunks are aligned to multiples of this many rows of the market and always this size
(rows clipped at the market's ends), computed in sub-batches of a fixed power of two rows
(:data:`WINDOW_BATCH_ELEMENTS`). A row's result does not depend on the other rows of its
batch (every operation of the window part is per row); that it does not depend on its
position in the batch either is a property of the matrix kernels (held on the CPU for
every offset tested, ``tests/test_inference.py``), on which a replay over a shorter market
(incremental paper trading) relies to reproduce a full one bit for bit."""

WINDOW_BATCH_ELEMENTS = 1 << 23
"""Largest intermediate tensor (floats) of one sub-batch of the window part: rows per
sub-batch = the largest power of two up to :data:`WINDOW_CHUNK` whose rows times the
extractor's ``activation_elements`` stays within it (at least one row). Bounds the
memory of long windows (the attention scores grow with the window's square)."""


class _WindowSplit(NamedTuple):
    """A policy's actor cut where its observation's two parts meet.

    ``pre(windows (n, L, F)) -> (n, H)`` depends on the feature windows only (batched over
    rows, ``rows`` at a time); ``head(pre (1, H), state (1, S)) -> (1, A)`` logits adds
    the account's state."""

    pre: Callable[[Any], Any]
    head: Callable[[Any, Any], Any]
    rows: int


def _window_split(policy: Any) -> _WindowSplit | None:
    """The :class:`_WindowSplit` of a policy whose actor is ``extractor -> Linear -> ...``.

    Taken only where the actor is known to be exactly that: the actor's features
    extractor is one of Sentio's (:class:`~sentio.agents.extractors.TransformerExtractor`,
    :class:`~sentio.agents.extractors.DictMlpExtractor`, their ``forward`` not
    overridden: the ``pool`` of the window, then the state at ``state_offset``); the
    actor's MLP is SB3's ``MlpExtractor.forward_actor`` = ``policy_net``, a
    ``Sequential`` starting with a ``Linear`` over those features; the head is SB3's
    standard categorical ``action_net``, or Sentio PPO's own ``actor_logits`` and
    ``action_logits`` (the regime probabilities read from the state). The first layer's
    window columns go into ``pre`` (with the bias), its state columns into ``head``: the
    logits are those of the policy's actor up to float rounding (the same products summed
    in another order). Anything else (a subclass overriding one of these, another
    extractor, an MLP without a first ``Linear``): None, and the per-bar path runs.
    """
    import torch
    from stable_baselines3.common.torch_layers import MlpExtractor
    from torch import nn
    from torch.nn import functional as F

    from sentio.agents.extractors import DictMlpExtractor, TransformerExtractor
    from sentio.agents.policies import SentioActorCriticPolicy

    if _actor_logits(policy) is None:
        return None
    extractor: Any = getattr(policy, "pi_features_extractor", None)
    known = (TransformerExtractor, DictMlpExtractor)
    if not isinstance(extractor, known) or type(extractor).forward not in [
        k.forward for k in known
    ]:
        return None
    mlp = getattr(policy, "mlp_extractor", None)
    if (
        not isinstance(mlp, MlpExtractor)
        or type(mlp).forward_actor is not MlpExtractor.forward_actor
    ):
        return None
    sentio = isinstance(policy, SentioActorCriticPolicy)
    if sentio and not (
        all(
            getattr(type(policy), name) is getattr(SentioActorCriticPolicy, name)
            for name in ("actor_logits", "_features", "action_logits", "regime_probabilities")
        )
        and policy.regime_key == "state"
    ):
        return None
    net, offset = mlp.policy_net, int(extractor.state_offset)
    if not (isinstance(net, nn.Sequential) and len(net) and isinstance(net[0], nn.Linear)):
        return None
    first: nn.Linear = net[0]
    if first.in_features != extractor.features_dim or not 0 < offset < first.in_features:
        return None
    rest = net[1:]
    per_row = max(1, int(extractor.activation_elements()))
    rows = 1
    while rows < WINDOW_CHUNK and 2 * rows * per_row <= WINDOW_BATCH_ELEMENTS:
        rows *= 2

    def pre(windows: Any) -> Any:
        return F.linear(extractor.pool(windows), first.weight[:, :offset], first.bias)

    def head(part: Any, state: Any) -> Any:
        latent = rest(torch.addmm(part, state, first.weight[:, offset:].T))
        if sentio:
            return policy.action_logits(latent, policy.regime_probabilities({"state": state}))
        return policy.action_net(latent)

    return _WindowSplit(pre, head, rows)


def window_batched_actions(
    model: PredictModel, sim: BatchSimulator
) -> Callable[[dict[str, np.ndarray], np.ndarray, int], np.ndarray] | None:
    """Deterministic actions bar by bar with the window part of the policy batched over rows.

    An account's observation at row ``t`` is the feature window of ``t`` (known for every
    row in advance) and its state (sequential: it depends on the previous decisions). For
    a policy :func:`_window_split` can cut, the window part of :data:`WINDOW_CHUNK` rows is
    computed in one batch when the first of them is asked for (from ``sim``'s market:
    :meth:`~sentio.env.simulator.BatchSimulator.windows`), and each
    decision runs only the rest of the actor on its own window part and state: for the
    transformer the whole encoder moves out of the per-bar loop
    (``benchmarks/bench_backtest.py``). Every row's action still comes from its own window
    and state only (no later row enters it). The logits are those of :func:`model_actions`
    up to float rounding (about 1e-6): the actions are the same except where two actions'
    logits tie to that precision (tested equal on varied policies; a ledger written before
    this path existed could differ at such a bar). Replaying a few bars still encodes a
    whole chunk (tens of milliseconds for the transformer).

    Returns a function ``(batched observation of one account, (A,) mask, row) -> (1,)``,
    or None for a model this does not apply to (a stand-aside model, an unknown policy).
    """
    import torch

    policy: Any = getattr(model, "policy", None)
    takes_masks = _takes_masks(model)
    if getattr(model, STAND_ASIDE, None) is not None or takes_masks is None:
        return None
    split = _window_split(policy)
    if split is None:
        return None
    device = policy.device
    chunks: dict[int, Any] = {}

    first, last = sim.p.window - 1, sim.market.n_rows - 1

    def part(row: int) -> Any:
        c = row // WINDOW_CHUNK
        if c not in chunks:
            rows = np.clip(np.arange(c * WINDOW_CHUNK, (c + 1) * WINDOW_CHUNK), first, last)
            parts = [
                split.pre(torch.as_tensor(sim.windows(rows[i : i + split.rows]), device=device))
                for i in range(0, WINDOW_CHUNK, split.rows)
            ]
            if len(chunks) >= 2:  # episodes move forward in time: keep the last two
                chunks.pop(next(iter(chunks)))
            chunks[c] = torch.cat(parts) if len(parts) > 1 else parts[0]
        return chunks[c][row - c * WINDOW_CHUNK].unsqueeze(0)

    def act(obs: dict[str, np.ndarray], mask: np.ndarray, row: int) -> np.ndarray:
        if policy.training:  # eval mode, as predict sets it (dropout off)
            policy.set_training_mode(False)
        with torch.no_grad():
            state = torch.as_tensor(obs["state"], device=device).reshape(1, -1)
            z = split.head(part(row), state)
            return _masked_mode(z, mask[None, :] if takes_masks else None)

    return act


def action_picker(
    policy: Policy | RowPolicy | PredictModel, sim: BatchSimulator | None = None
) -> Callable[[dict[str, np.ndarray], np.ndarray, int], Any]:
    """A function of (batched observation of one account, (A,) mask, row) -> raw action.

    A callable policy with a true attribute ``takes_row`` is called as
    ``policy(obs, mask, row)`` with the decision row (references that read the market's
    arrays by row, e.g. the oracle of :mod:`sentio.env.references`). A model is queried
    deterministically (:func:`model_actions`); with the simulator ``sim`` whose rows it
    will decide, with its window part batched over rows where its policy allows it
    (:func:`window_batched_actions`)."""
    if isinstance(policy, PredictModel) and not isinstance(policy, type):
        batched = None if sim is None else window_batched_actions(policy, sim)
        if batched is not None:
            return batched
        act = model_actions(policy)

        def pick_model(obs: dict[str, np.ndarray], mask: np.ndarray, row: int) -> Any:
            return act(obs, mask[None, :])

        return pick_model
    if not callable(policy):
        raise TypeError(
            f"policy must be a callable (obs, mask) -> action or a model with .predict, "
            f"got {type(policy).__name__}"
        )
    call: Any = policy
    takes_row = bool(getattr(policy, "takes_row", False))

    def pick_callable(obs: dict[str, np.ndarray], mask: np.ndarray, row: int) -> Any:
        one = {k: v[0] for k, v in obs.items()}
        return call(one, mask, row) if takes_row else call(one, mask)

    return pick_callable


def as_action(raw: Any, n_actions: int, row: int) -> int:
    """``raw`` (what a policy returned at ``row``) as one action index in ``[0, n_actions)``.

    Raises:
        ValueError: not exactly one integral value, or out of range (names the row).
    """
    arr = np.asarray(raw)
    if arr.size != 1 or not (
        np.issubdtype(arr.dtype, np.integer)
        or (np.issubdtype(arr.dtype, np.floating) and float(arr.reshape(-1)[0]).is_integer())
    ):
        raise ValueError(f"the policy must return one action index at row {row}, got {raw!r}")
    a = int(arr.reshape(-1)[0])
    if not 0 <= a < n_actions:
        raise ValueError(f"the policy returned action {a} at row {row}; valid: 0..{n_actions - 1}")
    return a


@dataclass(frozen=True)
class Decision:
    """One decision of :func:`decide_and_step` and the step it caused.

    Attributes:
        row: the decision row ``t`` (the close the policy saw).
        blocked: ``(A,)`` uint8, the bits of the mask layers blocking each action at ``t``
            (:data:`~sentio.env.simulator.LAYER_BITS`; 0 = allowed).
        action: the action chosen (grid index).
        equity_before: equity at the close of ``t``, before the step.
        result: the step to ``t + 1`` (account 0 of the simulator); None for the last
            decision at ``stop_row``, which is not stepped.
    """

    row: int
    blocked: np.ndarray
    action: int
    equity_before: float
    result: StepResult | None


def decide_and_step(
    sim: BatchSimulator,
    pick: Callable[[dict[str, np.ndarray], np.ndarray, int], Any],
    *,
    masked: Callable[[int, int, np.ndarray], str],
    stop_row: int | None = None,
) -> Iterator[Decision]:
    """Observe -> mask -> act -> step account 0 of ``sim`` until its episode ends.

    Runs from the account's current row until a step ends the episode (truncated at its
    last row, or terminated: ruin, or the breaker in training mode) and yields each
    :class:`Decision` with its step. With ``stop_row``, the decision at ``stop_row`` is
    yielded without a step (``result`` None) and the loop ends there (live use: the
    decision at the close of the last bar, whose fill bar has not happened).

    Args:
        sim: a simulator whose account 0 was :meth:`~BatchSimulator.reset`.
        pick: ``(batched observation of one account, (A,) mask, row) -> raw action``
            (:func:`action_picker`).
        masked: ``(row, action, blocked bits) -> message`` for a masked action; the
            message is completed with the layers blocking it and the allowed actions.
        stop_row: the last decision row, not stepped (None: step until the episode ends).

    Raises:
        MaskedActionError: the policy chose a masked action.
        ValueError: the policy returned something that is not an action index.
    """
    grid = sim.grid
    n_actions = sim.p.n_actions
    step_action = np.zeros(1, dtype=np.int64)
    while True:
        t = int(sim.t[0])
        bits = sim.blocked_layers()[0].copy()
        allowed = bits == 0
        a = as_action(pick(sim.observe(), allowed.copy(), t), n_actions, t)
        if bits[a]:
            raise MaskedActionError(
                f"{masked(t, a, bits)}: action {a} (exposure {grid[a]:+g}) is blocked by "
                f"{layer_names(int(bits[a]))}; allowed actions {np.flatnonzero(allowed).tolist()}"
            )
        equity = float(sim.equity[0])
        if stop_row is not None and t >= stop_row:
            yield Decision(t, bits, a, equity, None)
            return
        step_action[0] = a
        res = sim.step(step_action)
        yield Decision(t, bits, a, equity, res)
        if bool(res.terminated[0] or res.truncated[0]):
            return
