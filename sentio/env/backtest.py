"""Sequential backtests of a policy with the training simulator itself.

:func:`backtest` runs ONE account of :class:`~sentio.env.simulator.BatchSimulator` in
``backtest`` mode (the drawdown breaker keeps the account flat for the rest of the session
instead of ending the episode) over held-out test blocks, with the same fills, costs,
forced exits and masks as training. Nothing here re-implements the trading model: every
equity, exposure and cost figure is the simulator's; the trade ledger is read from the
simulator's state before and after each step.

Blocks. ``rows`` are half-open market-row ranges ``[a, b)`` in increasing time order, not
overlapping. Block ``[a, b)`` is one episode from row ``max(a, window - 1)`` (the first
row with a full observation window) to row ``b - 1``: the first decision is taken at the
close of the start row, the last fill bar is ``b - 1``, so every bar the block's returns
cover lies inside ``[a, b)``. A block that holds a data gap (sessions the data lacks,
:attr:`~sentio.env.market.MarketData.gap_before`) is run as one episode per piece between
gaps: the step from the last bar before a gap to the first bar after it is never taken
(by the agent, the references or :func:`underlying_buy_and_hold`), and a position open at
the last bar before the gap is sold at its close (exit reason ``"data_gap"``). A block (or
piece) too short for one step is skipped; if no block is left,
:class:`~sentio.errors.DataError`.

Equity is carried from block to block: the next episode starts flat with the equity the
previous one ended with. A position still open at the end of a block (possible when
``flat_at_close`` is off or the block does not end on a session's last bar) is sold at the
close of the block's last bar and charged the simulator's exit-cost formula
(``commission_per_share * shares + (half_spread + slippage_vol_mult * L * vol) *
notional`` with ``vol`` at that row); that cost is booked on the block's last bar (its
``returns``, ``equity`` and ``costs``) and the ledger records the exit as
``"end_of_block"``. So every block ends flat, every trade in the ledger is closed and
``equity[-1] = initial + sum(pnl) - sum(costs)`` exactly (up to float rounding). If
equity is wiped out (ruin, the simulator terminates the episode) the backtest stops there
and the last trade's exit reason is ``"ruin"``.

Per-bar series. Entry ``i`` describes one step: the decision at the close of row ``t``,
the fill at the open of ``t + 1`` and the mark at the close of ``t + 1``. Its timestamp is
the START of bar ``t + 1`` (the bar whose close-to-close move the return covers, the
convention of :func:`sentio.evaluation.compute_metrics`).

Policies. Any callable ``policy(obs, mask) -> action index`` where ``obs`` is one
account's observation (``{"window": (L, F), "state": (S,)}`` float32, see
:mod:`sentio.env.simulator`) and ``mask`` the ``(A,)`` bool allowed actions; or a
stable-baselines3 / sb3-contrib model (anything with ``predict``), called with the
observation batched as one environment (leading axis of 1), ``deterministic=True`` and,
when its ``predict`` accepts them (MaskablePPO), ``action_masks`` (:func:`model_actions`; a
model whose training stood aside, :data:`STAND_ASIDE`, stays flat). A policy that picks a
masked action is an error (:class:`MaskedActionError`, naming the row, the action and
the layers blocking it): the backtest never executes, nor silently replaces, a masked
action. The reference policies :func:`flat_policy`, :func:`long_etf_policy` and
:func:`trend_policy` are factories returning such callables (they need the action grid
of :class:`~sentio.env.simulator.EnvParams`); :func:`underlying_buy_and_hold` is a
benchmark series, not a policy (the simulator trades only the ETFs).

Deterministic: the same inputs give identical results (no randomness anywhere; an SB3
model is queried with ``deterministic=True``).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import polars as pl

from sentio.env.market import LONG, SHORT, MarketData
from sentio.env.simulator import (
    LAYER_BITS,
    MASK_LAYERS,
    STATE_FEATURES,
    BatchSimulator,
    EnvParams,
    layer_names,
)
from sentio.errors import DataError, SentioError

__all__ = [
    "EXIT_REASONS",
    "TRADE_SCHEMA",
    "BacktestResult",
    "BenchmarkResult",
    "MaskedActionError",
    "Policy",
    "PredictModel",
    "RowPolicy",
    "STAND_ASIDE",
    "backtest",
    "flat_policy",
    "held_sign",
    "largest_allowed",
    "long_etf_policy",
    "model_actions",
    "trend_policy",
    "underlying_buy_and_hold",
]

Policy = Callable[[dict[str, np.ndarray], np.ndarray], int]
"""``policy(obs, mask) -> action index``: ``obs`` of one account, ``mask`` ``(A,)`` bool."""
RowPolicy = Callable[[dict[str, np.ndarray], np.ndarray, int], int]
"""``policy(obs, mask, row) -> action index``, marked by a true attribute ``takes_row``
(references that read the market's arrays at the decision row)."""

EXIT_REASONS: dict[str, str] = {
    "signal": "the policy's action sold the position at the open of the fill bar "
    "(flat, or a switch to the other ETF)",
    "flat_at_close": "forced sale at the close of a session's last bar (env.flat_at_close)",
    "circuit_breaker": "forced sale at the close of the bar on which the session drawdown "
    "reached masks.drawdown_limit",
    "end_of_block": "sold at the close of the test block's last bar (the backtest carries "
    "equity, not positions, to the next block)",
    "data_gap": "sold at the close of the last bar before sessions the data lacks (no "
    "position is carried across a data gap)",
    "ruin": "equity reached zero; the backtest stops",
}
"""Every ``exit_reason`` of the trade ledger and its meaning."""

TRADE_SCHEMA: dict[str, Any] = {
    "trade_id": pl.Int64,
    "block": pl.Int64,
    "instrument": pl.Utf8,
    "side": pl.Utf8,
    "entry_time": pl.Datetime("us"),
    "exit_time": pl.Datetime("us"),
    "entry_row": pl.Int64,
    "exit_row": pl.Int64,
    "exit_fill": pl.Utf8,
    "shares": pl.Float64,
    "entry_price": pl.Float64,
    "exit_price": pl.Float64,
    "n_fills": pl.Int64,
    "pnl": pl.Float64,
    "costs": pl.Float64,
    "net_pnl": pl.Float64,
    "bars_held": pl.Int64,
    "exit_reason": pl.Utf8,
}
"""Columns of :attr:`BacktestResult.trades`.

* ``entry_time`` / ``exit_time``: START of the bar of the first purchase / of the final
  sale (naive UTC); ``entry_row`` / ``exit_row`` the market rows. Entries fill at the
  bar's open; ``exit_fill`` says whether the final sale was at the ``"open"`` (a policy
  action) or the ``"close"`` (forced exits, end of block, ruin) of the exit bar.
* ``instrument``: the ETF's symbol (``instruments`` given to :func:`backtest`, e.g.
  ``(cfg.universe.long, cfg.universe.short)``), else ``"long"`` / ``"short"``; ``side``
  is always ``"long"`` / ``"short"``.
* ``shares``: the largest number of shares held during the trade; a trade is one position
  in one ETF from its first purchase to the sale of its last share, and resizing the
  same ETF (``n_fills`` counts the fills, entry and exit included) keeps the trade open.
* ``entry_price`` / ``exit_price``: share-weighted average purchase / sale price.
* ``pnl``: sale proceeds minus purchase amounts (currency, before costs); ``costs`` every
  cost charged on the trade's fills (currency); ``net_pnl = pnl - costs``.
* ``bars_held``: bars the position was held over (entry bar included; a sale at a bar's
  open excludes that bar, a sale at its close includes it).
* ``exit_reason``: one of :data:`EXIT_REASONS`.
"""


class MaskedActionError(SentioError, ValueError):
    """A policy chose an action the environment's masks forbid at that row."""


@runtime_checkable
class PredictModel(Protocol):
    """An SB3 / sb3-contrib model: anything with ``predict(obs, ..., deterministic=...)``."""

    def predict(self, observation: Any, *args: Any, **kwargs: Any) -> Any:
        """The action(s) for batched observations."""


# --------------------------------------------------------------------------------------
# results


@dataclass
class BenchmarkResult:
    """Per-bar performance series (see the module docstring for the bar convention).

    Attributes:
        timestamps: ``datetime64[us]`` START of each bar (naive UTC).
        rows: market row of each bar (the fill bar ``t + 1``).
        block: index of the test block each bar belongs to.
        returns: simple return of equity over the bar, net of costs.
        equity: equity at the close of the bar (after forced exits and their costs).
        exposure: signed exposure (value of the position / equity) at the close of the bar,
            AFTER any forced exit at that close (0 on a bar that ended with a forced sale).
        position: signed exposure held over the bar (at its close, BEFORE any forced exit):
            the position that earned ``returns`` (``compute_metrics``' ``positions``).
        costs: costs paid in the bar as a fraction of the equity before the bar.
        costs_cash: the same costs in currency.
        initial_equity: equity before the first bar.
        periods_per_year: bars per year of the market (annualisation).
        entries: trades entered in the bar (0 or 1): a trade is a round trip from the
            purchase that opens a position to the sale that closes it, forced exits
            included, so ``entries.sum()`` is the number of rows of the trade ledger.
    """

    timestamps: np.ndarray
    rows: np.ndarray
    block: np.ndarray
    returns: np.ndarray
    equity: np.ndarray
    exposure: np.ndarray
    position: np.ndarray
    costs: np.ndarray
    costs_cash: np.ndarray
    initial_equity: float
    periods_per_year: float
    entries: np.ndarray

    @property
    def n_bars(self) -> int:
        """Number of bars."""
        return int(self.returns.shape[0])

    def metrics(self, **kwargs: Any) -> dict[str, float]:
        """:func:`sentio.evaluation.compute_metrics` of the series.

        ``returns``, ``positions=position`` (the exposure held over each bar, as
        ``compute_metrics`` defines it), ``costs`` as fractions of equity, the bar
        timestamps and the market's ``periods_per_year``; ``kwargs`` (``rf``,
        ``target``, ``periods_per_year``) are passed on.
        """
        from sentio.evaluation import compute_metrics

        kwargs.setdefault("periods_per_year", self.periods_per_year)
        return compute_metrics(
            self.returns,
            positions=self.position,
            costs=self.costs,
            timestamps=self.timestamps,
            entries=self.entries,
            **kwargs,
        )

    def bars_frame(self) -> pl.DataFrame:
        """The per-bar arrays as one polars frame (``timestamp`` first)."""
        names = ("rows", "block", "returns", "equity", "exposure", "position", "costs", "entries")
        cols: dict[str, Any] = {"timestamp": self.timestamps}
        cols.update({name: getattr(self, name) for name in names})
        cols["costs_cash"] = self.costs_cash
        return pl.DataFrame(cols)


@dataclass
class BacktestResult(BenchmarkResult):
    """The outcome of :func:`backtest`: per-bar series, trade ledger, block layout.

    Attributes (besides :class:`BenchmarkResult`'s):
        actions: action index chosen at the decision row of each bar.
        mask_blocked: uint8 bits (:data:`~sentio.env.simulator.LAYER_BITS`) of the mask
            layers that blocked at least one action at the decision row.
        regime: argmax of the regime probabilities at the decision row (the regime the
            policy saw); -1 without regimes.
        trades: the trade ledger (:data:`TRADE_SCHEMA`), in order of entry.
        blocks: per test block, the episode rows ``(start, end)`` actually run
            (``end`` inclusive); a block too short for one step is absent.
        grid: the action grid (exposure of each action index).
        ruined: equity was wiped out and the backtest stopped early.
    """

    actions: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    mask_blocked: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint8))
    regime: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    trades: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=TRADE_SCHEMA))
    blocks: list[tuple[int, int]] = field(default_factory=list)
    grid: np.ndarray = field(default_factory=lambda: np.zeros(0))
    ruined: bool = False

    def mask_layer_counts(self) -> dict[str, int]:
        """Per mask layer, the number of bars on which it blocked at least one action."""
        return {
            name: int(((self.mask_blocked & LAYER_BITS[name]) != 0).sum()) for name in MASK_LAYERS
        }

    def bars_frame(self) -> pl.DataFrame:
        """The per-bar arrays as one polars frame, with the chosen exposure."""
        return (
            super()
            .bars_frame()
            .with_columns(
                pl.Series("action", self.actions),
                pl.Series("target_exposure", self.grid[self.actions]),
                pl.Series("mask_blocked", self.mask_blocked),
                pl.Series("regime", self.regime),
            )
        )


# --------------------------------------------------------------------------------------
# policies


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


def _direct_actions(
    model: Any,
) -> Callable[[dict[str, np.ndarray], np.ndarray], np.ndarray] | None:
    """:func:`model_actions`' fast path, or None for a policy it does not know."""
    import torch
    from sb3_contrib.common.maskable.distributions import MaskableCategoricalDistribution
    from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy
    from stable_baselines3.common.distributions import CategoricalDistribution
    from stable_baselines3.common.policies import ActorCriticPolicy, BaseModel

    policy: Any = getattr(model, "policy", None)
    if not isinstance(policy, ActorCriticPolicy | MaskableActorCriticPolicy):
        return None
    logits_of: Callable[[Any], Any]
    if callable(getattr(policy, "actor_logits", None)):
        logits_of = policy.actor_logits  # type: ignore[assignment]
    else:
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

    try:
        takes_masks = "action_masks" in inspect.signature(model.predict).parameters
    except (TypeError, ValueError):
        return None
    device = policy.device
    huge_neg = torch.tensor(-1e8)

    def act(obs: dict[str, np.ndarray], masks: np.ndarray) -> np.ndarray:
        if policy.training:  # eval mode, as predict sets it (dropout off)
            policy.set_training_mode(False)
        with torch.no_grad():
            t = {k: torch.as_tensor(v, device=device) for k, v in obs.items()}
            z = logits_of(t)
            if not bool(torch.isfinite(z).all()):  # predict's Categorical refuses them too
                raise ValueError(
                    "the policy's action logits are not finite (NaN or infinite weights?)"
                )
            z = z - z.logsumexp(dim=-1, keepdim=True)  # torch.distributions.Categorical
            if takes_masks:  # sb3-contrib's MaskableCategorical.apply_masking
                m = torch.as_tensor(masks, dtype=torch.bool, device=device).reshape(z.shape)
                z = torch.where(m, z, huge_neg.to(dtype=z.dtype, device=device))
                z = z - z.logsumexp(dim=-1, keepdim=True)
            return torch.softmax(z, dim=-1).argmax(dim=1).cpu().numpy()

    return act


def _action_picker(
    policy: Policy | RowPolicy | PredictModel,
) -> Callable[[dict[str, np.ndarray], np.ndarray, int], Any]:
    """A function of (batched observation of one account, (A,) mask, row) -> raw action.

    A callable policy with a true attribute ``takes_row`` is called as
    ``policy(obs, mask, row)`` with the decision row (references that read the market's
    arrays by row, e.g. the oracle of :mod:`sentio.env.references`)."""
    if isinstance(policy, PredictModel) and not isinstance(policy, type):
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


def _as_action(raw: Any, n_actions: int, row: int) -> int:
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


def flat_policy(params: EnvParams) -> Policy:
    """A policy that always chooses exposure 0 (always allowed)."""
    flat = params.flat_action

    def policy(obs: dict[str, np.ndarray], mask: np.ndarray) -> int:
        return flat

    return policy


def held_sign(obs: dict[str, np.ndarray]) -> float:
    """The sign of the exposure held, from an observation's state (``exposure`` entry)."""
    state = obs["state"]
    return float(np.sign(state[state.shape[-1] - len(STATE_FEATURES)]))


def largest_allowed(grid: np.ndarray, mask: np.ndarray, sign: float, cap: float, flat: int) -> int:
    """The allowed action of sign ``sign`` with the largest ``|x| <= cap``; else flat."""
    ok = mask & (np.sign(grid) == sign) & (np.abs(grid) <= cap + 1e-12)
    if not ok.any():
        return flat
    return int(np.flatnonzero(ok)[np.argmax(np.abs(grid[ok]))])


def long_etf_policy(params: EnvParams) -> Policy:
    """Buy-and-hold of the long ETF: the largest allowed long exposure at every bar.

    The masks are respected (flat when no long exposure is allowed, e.g. near the close
    or after the drawdown breaker; a smaller one when the risk budget caps it), so with
    ``flat_at_close`` the position is re-bought every session. With every mask layer off
    this is plain buy-and-hold of the grid's largest long exposure: the action never
    changes, so the simulator never trades after the first fill.
    """
    grid, flat = params.grid, params.flat_action
    cap = float(grid.max())

    def policy(obs: dict[str, np.ndarray], mask: np.ndarray) -> int:
        return largest_allowed(grid, mask, 1.0, cap, flat)

    return policy


def trend_policy(
    params: EnvParams,
    lookback: int = 15,
    *,
    feature_names: Sequence[str],
    feature: str = "log_ret_1",
    max_exposure: float = 1.0,
    enter: float = 0.0,
    exit: float = 0.0,
) -> Policy:
    """A volatility-targeted trend rule with hysteresis on the observation alone.

    At each decision the rule sums the last ``lookback`` rows of the feature ``feature``
    in the observation window (default ``log_ret_1``: one-bar log returns, as normalised
    by the features stage, so the sum is the recent move in units of its recent
    volatility, relative to its recent mean) and divides by ``sqrt(lookback)``: the
    signal ``s``. Hysteresis on the position held (the sign of the exposure in the
    observation's state): go or stay long when ``s > enter`` or when already long and
    ``s > exit``; short symmetrically (``s < -enter``, or short and ``s < -exit``);
    otherwise flat. With ``enter = exit = 0`` (the defaults): long when ``s > 0``, short
    when ``s < 0``, flat when exactly 0. The size is the largest ALLOWED exposure of that sign whose magnitude is
    ``<= max_exposure``; the volatility target is the mask's ``risk_budget`` layer, which
    allows ``|x| <= target_vol_annual / (L * vol_t * sqrt(periods_per_year))`` (the
    underlying's EWMA volatility at the decision row, from the environment's state), so
    the rule trades the largest size within the vol target. When no exposure of that sign
    is allowed (session end, regime cap below every grid size, drawdown, a young position
    of the other sign under ``min_hold``) it goes flat. It reads rows ``t - lookback + 1
    .. t`` of the window only: no future data.

    Args:
        params: the trading model (action grid and window).
        lookback: number of window rows summed, ``1 <= lookback <= params.window``.
        feature_names: the market's feature names (``MarketData.feature_names``).
        feature: the feature column whose sum gives the direction.
        max_exposure: the largest ``|x|`` the rule ever takes (a fraction of equity).

    Raises:
        ValueError: the feature is not in ``feature_names``, or ``lookback`` or
            ``max_exposure`` is out of range.
    """
    names = list(feature_names)
    if feature not in names:
        raise ValueError(f"trend_policy: feature {feature!r} is not among {names}")
    if not 1 <= lookback <= params.window:
        raise ValueError(
            f"trend_policy: lookback must be in [1, window={params.window}], got {lookback}"
        )
    if not max_exposure > 0:
        raise ValueError(f"trend_policy: max_exposure must be > 0, got {max_exposure}")
    if not 0 <= exit <= enter:
        raise ValueError(f"trend_policy: need 0 <= exit <= enter, got exit={exit}, enter={enter}")
    j = names.index(feature)
    grid, flat = params.grid, params.flat_action
    root = math.sqrt(lookback)

    def policy(obs: dict[str, np.ndarray], mask: np.ndarray) -> int:
        signal = float(obs["window"][-lookback:, j].sum(dtype=np.float64)) / root
        if not math.isfinite(signal):
            return flat
        held = held_sign(obs)
        if signal > enter or (held > 0 and signal > exit):
            return largest_allowed(grid, mask, 1.0, max_exposure, flat)
        if signal < -enter or (held < 0 and signal < -exit):
            return largest_allowed(grid, mask, -1.0, max_exposure, flat)
        return flat

    return policy


# --------------------------------------------------------------------------------------
# the backtest


def _episodes(
    market: MarketData, rows: Sequence[tuple[int, int]], window: int
) -> list[tuple[int, int, int]]:
    """``(block index, start, end)`` of every block with at least one step."""
    out: list[tuple[int, int, int]] = []
    prev_b = 0
    for i, (a_, b_) in enumerate(rows):
        a, b = int(a_), int(b_)
        if not 0 <= a < b <= market.n_rows:
            raise ValueError(
                f"test block {i} = [{a}, {b}) must satisfy 0 <= a < b <= {market.n_rows} "
                "(half-open market rows)"
            )
        if a < prev_b:
            raise ValueError(
                f"test block {i} = [{a}, {b}) starts before the previous block ends ({prev_b}): "
                "blocks must be in time order and must not overlap"
            )
        prev_b = b
        for lo, hi in market.split_at_gaps(a, b):  # a data gap ends an episode
            start, end = max(lo, window - 1), hi - 1
            if end > start:
                out.append((i, start, end))
    if not out:
        raise DataError(
            f"no test block holds a step: blocks {list(rows)[:5]} with an observation window "
            f"of {window} rows need b - 1 > max(a, {window - 1})"
        )
    return out


def _before_gap(market: MarketData, row: int) -> bool:
    """Row ``row`` is the last bar before a data gap."""
    gaps = market.gap_before
    return gaps is not None and row + 1 < market.n_rows and bool(gaps[row + 1])


class _Trade:
    """A trade being built while the backtest steps."""

    __slots__ = (
        "block",
        "buy_shares",
        "buy_value",
        "costs",
        "entry_row",
        "inst",
        "max_shares",
        "n_fills",
        "sell_shares",
        "sell_value",
    )

    def __init__(self, block: int, inst: int, row: int) -> None:
        self.block, self.inst, self.entry_row = block, inst, row
        self.buy_shares = self.buy_value = self.sell_shares = self.sell_value = 0.0
        self.costs = self.max_shares = 0.0
        self.n_fills = 0

    def buy(self, shares: float, price: float, cost: float, held: float) -> None:
        self.buy_shares += shares
        self.buy_value += shares * price
        self.costs += cost
        self.max_shares = max(self.max_shares, held)
        self.n_fills += 1

    def sell(self, shares: float, price: float, cost: float) -> None:
        self.sell_shares += shares
        self.sell_value += shares * price
        self.costs += cost
        self.n_fills += 1


def backtest(
    policy: Policy | RowPolicy | PredictModel,
    market: MarketData,
    params: EnvParams,
    rows: Sequence[tuple[int, int]],
    *,
    equity: float | None = None,
    instruments: tuple[str, str] | None = None,
) -> BacktestResult:
    """Run ``policy`` over the test blocks ``rows`` with the training simulator.

    Args:
        policy: a callable ``(obs, mask) -> action index`` or an SB3 model (see the module
            docstring).
        market: the market arrays.
        params: the trading model (costs, masks, grid, window), as in training.
        rows: half-open market-row test blocks ``[a, b)`` in time order, not overlapping;
            block ``[a, b)`` runs one episode from ``max(a, window - 1)`` to ``b - 1``.
        equity: starting equity (default ``params.initial_cash``); carried from block to
            block.
        instruments: symbols of the long and short ETF for the ledger, e.g.
            ``(cfg.universe.long, cfg.universe.short)``; default ``("long", "short")``.

    Returns:
        A :class:`BacktestResult`.

    Raises:
        MaskedActionError: the policy chose a masked action (message: row, timestamp,
            action, exposure and blocking layers).
        ValueError: bad blocks, or the policy returned something that is not an action.
        DataError: no block holds a step.

    The policy runs with one torch thread (:func:`one_torch_thread`).
    """
    with one_torch_thread():
        return _backtest(policy, market, params, rows, equity, instruments)


def _backtest(
    policy: Policy | RowPolicy | PredictModel,
    market: MarketData,
    params: EnvParams,
    rows: Sequence[tuple[int, int]],
    equity: float | None,
    instruments: tuple[str, str] | None,
) -> BacktestResult:
    p = params
    episodes = _episodes(market, rows, p.window)
    names = ("long", "short") if instruments is None else (str(instruments[0]), str(instruments[1]))
    inst_name = {LONG: names[0], SHORT: names[1]}
    side_name = {LONG: "long", SHORT: "short"}
    pick = _action_picker(policy)
    sim = BatchSimulator(market, p, 1, backtest=True)
    grid = p.grid
    n_actions = p.n_actions
    opens, closes, vol = market.open, market.close, market.vol
    stamps = market.timestamps
    K = market.n_regimes
    regime_argmax = (
        market.regime_probs.argmax(axis=1).astype(np.int64)
        if K
        else np.full(market.n_rows, -1, dtype=np.int64)
    )
    slip = p.slippage_vol_mult * p.leverage

    def cost(shares: float, price: float, row: int) -> float:
        """The simulator's cost formula for one leg."""
        return p.commission_per_share * shares + (p.half_spread + slip * vol[row]) * (
            shares * price
        )

    n_total = sum(end - start for _, start, end in episodes)
    out_rows = np.zeros(n_total, dtype=np.int64)
    out_block = np.zeros(n_total, dtype=np.int64)
    eq_arr = np.zeros(n_total)
    exposure = np.zeros(n_total)
    position = np.zeros(n_total)
    costs_cash = np.zeros(n_total)
    prev_eq = np.zeros(n_total)
    actions = np.zeros(n_total, dtype=np.int64)
    entries = np.zeros(n_total, dtype=np.int64)
    blocked_any = np.zeros(n_total, dtype=np.uint8)
    trades: list[dict[str, Any]] = []
    ran: list[tuple[int, int]] = []
    initial = float(p.initial_cash if equity is None else equity)
    if not (initial > 0 and math.isfinite(initial)):
        raise ValueError(f"backtest: starting equity must be positive, got {equity}")
    eq = initial
    i = 0
    ruined = False
    open_trade: _Trade | None = None

    def close_trade(tr: _Trade, row: int, fill: str, reason: str) -> None:
        trades.append(
            {
                "trade_id": len(trades),
                "block": tr.block,
                "instrument": inst_name[tr.inst],
                "side": side_name[tr.inst],
                "entry_row": tr.entry_row,
                "exit_row": row,
                "exit_fill": fill,
                "shares": tr.max_shares,
                "entry_price": tr.buy_value / tr.buy_shares,
                "exit_price": tr.sell_value / tr.sell_shares,
                "n_fills": tr.n_fills,
                "pnl": tr.sell_value - tr.buy_value,
                "costs": tr.costs,
                "net_pnl": tr.sell_value - tr.buy_value - tr.costs,
                "bars_held": row - tr.entry_row + (1 if fill == "close" else 0),
                "exit_reason": reason,
            }
        )

    for block, start, end in episodes:
        sim.reset(np.zeros(1, dtype=np.int64), np.array([start]), np.array([end]), equity=eq)
        ran.append((start, end))
        done = False
        while not done:
            t = int(sim.t[0])
            t1 = t + 1
            inst0, shares0, cash0 = int(sim.inst[0]), float(sim.shares[0]), float(sim.cash[0])
            held0 = int(sim.held[0])
            same_session = market.session[t1] == market.session[t]
            tripped0 = bool(sim.tripped[0]) and same_session
            e_prev = float(sim.equity[0])
            bits = sim.blocked_layers()[0]
            mask = bits == 0
            a = _as_action(pick(sim.observe(), mask.copy(), t), n_actions, t)
            if bits[a]:
                raise MaskedActionError(
                    f"the policy chose a masked action at row {t} ({stamps[t]} UTC, block "
                    f"{block}): action {a} (exposure {grid[a]:+g}) is blocked by "
                    f"{layer_names(int(bits[a]))}; allowed actions {np.flatnonzero(mask).tolist()}"
                )
            res = sim.step(np.array([a], dtype=np.int64))

            # the legs of this step, read from the state before and after it
            x = float(grid[a])
            o, c = opens[t1], closes[t1]
            if a != held0:
                new_inst = LONG if x > 0 else SHORT if x < 0 else 0
                if x == 0.0:
                    s1 = 0.0
                else:
                    e_open = cash0 + shares0 * o[inst0]
                    s1 = abs(x) * e_open / o[new_inst]
                if new_inst == inst0:
                    sell, buy = max(shares0 - s1, 0.0), max(s1 - shares0, 0.0)
                else:
                    sell, buy = shares0, s1
            else:
                new_inst, s1, sell, buy = inst0, shares0, 0.0, 0.0
            exit_now = s1 > 0 and int(sim.inst[0]) == 0
            if sell > 0 and open_trade is not None:
                open_trade.sell(sell, float(o[inst0]), cost(sell, float(o[inst0]), t))
                if new_inst != inst0:
                    close_trade(open_trade, t1, "open", "signal")
                    open_trade = None
            if buy > 0:
                if open_trade is None:
                    open_trade = _Trade(block, new_inst, t1)
                    entries[i] = 1
                open_trade.buy(buy, float(o[new_inst]), cost(buy, float(o[new_inst]), t), s1)
            step_costs = float(res.costs[0])
            eq_new = float(res.equity[0])
            if exit_now and open_trade is not None:
                px = float(c[new_inst])
                exit_cost = cost(s1, px, t1)
                open_trade.sell(s1, px, exit_cost)
                trip = bool(sim.tripped[0]) and not tripped0
                close_trade(open_trade, t1, "close", "circuit_breaker" if trip else "flat_at_close")
                open_trade = None
                sign = -1.0 if new_inst == SHORT else 1.0
                position[i] = sign * s1 * px / (eq_new + exit_cost)
            else:
                position[i] = float(res.exposure[0])
            done = bool(res.terminated[0] or res.truncated[0])
            if done and open_trade is not None:  # end of block (or ruin): sell at the close
                inst1, s_end = int(sim.inst[0]), float(sim.shares[0])
                px = float(c[inst1])
                ruin = bool(res.terminated[0])
                end_cost = 0.0 if ruin else cost(s_end, px, t1)
                open_trade.sell(s_end, px, end_cost)
                reason = (
                    "ruin" if ruin else "data_gap" if _before_gap(market, t1) else "end_of_block"
                )
                close_trade(open_trade, t1, "close", reason)
                open_trade = None
                step_costs += end_cost
                eq_new -= end_cost
                exposure[i] = 0.0
            else:
                exposure[i] = float(res.exposure[0])
            out_rows[i], out_block[i], actions[i] = t1, block, a
            blocked_any[i] = np.bitwise_or.reduce(bits)
            prev_eq[i], eq_arr[i], costs_cash[i] = e_prev, eq_new, step_costs
            eq = eq_new
            i += 1
            if bool(res.terminated[0]):
                ruined = True
        if ruined:
            break

    sl = slice(0, i)
    out_rows, prev_eq, eq_arr = out_rows[sl], prev_eq[sl], eq_arr[sl]
    with np.errstate(divide="ignore", invalid="ignore"):
        returns = np.where(prev_eq > 0, eq_arr / prev_eq - 1.0, -1.0)
        cost_frac = np.where(prev_eq > 0, costs_cash[sl] / prev_eq, 0.0)
    decision = out_rows - 1
    return BacktestResult(
        timestamps=stamps[out_rows],
        rows=out_rows,
        block=out_block[sl],
        returns=returns,
        equity=eq_arr,
        exposure=exposure[sl],
        position=position[sl],
        costs=cost_frac,
        costs_cash=costs_cash[sl],
        initial_equity=initial,
        periods_per_year=market.periods_per_year,
        entries=entries[sl],
        actions=actions[sl],
        mask_blocked=blocked_any[sl],
        regime=regime_argmax[decision],
        trades=_ledger(trades, stamps),
        blocks=ran,
        grid=grid.copy(),
        ruined=ruined,
    )


def _ledger(trades: list[dict[str, Any]], stamps: np.ndarray) -> pl.DataFrame:
    """The trade records as a frame of :data:`TRADE_SCHEMA` (times from the rows)."""
    if not trades:
        return pl.DataFrame(schema=TRADE_SCHEMA)
    schema = {k: v for k, v in TRADE_SCHEMA.items() if not k.endswith("_time")}
    frame = pl.DataFrame(trades, schema=schema)
    times = {
        f"{kind}_time": pl.Series(stamps[frame[f"{kind}_row"].to_numpy()]).cast(pl.Datetime("us"))
        for kind in ("entry", "exit")
    }
    return frame.with_columns(**times).select(list(TRADE_SCHEMA))


def underlying_buy_and_hold(
    market: MarketData,
    rows: Sequence[tuple[int, int]],
    params: EnvParams | None = None,
    *,
    equity: float | None = None,
) -> BenchmarkResult:
    """The underlying's close-to-close returns over the bars :func:`backtest` covers.

    A benchmark series, not a tradeable policy (the simulator trades only the ETFs): per
    block ``[a, b)``, the bars ``start + 1 .. b - 1`` with ``start = max(a, window - 1)``
    (``window`` from ``params``, 1 without), return ``close_u[r] / close_u[r - 1] - 1``,
    exposure 1, no costs. Equity compounds from ``equity`` (default
    ``params.initial_cash``, 1.0 without params) across blocks.
    """
    window = params.window if params is not None else 1
    episodes = _episodes(market, rows, window)
    initial = float(
        equity if equity is not None else (params.initial_cash if params is not None else 1.0)
    )
    idx = np.concatenate([np.arange(s + 1, e + 1) for _, s, e in episodes])
    blk = np.concatenate([np.full(e - s, b, dtype=np.int64) for b, s, e in episodes])
    cu = market.close[:, 0]
    r = cu[idx] / cu[idx - 1] - 1.0
    n = idx.size
    entries = np.zeros(n, dtype=np.int64)  # bought at the start of every episode
    entries[np.cumsum([0] + [e - s for _, s, e in episodes[:-1]])] = 1
    return BenchmarkResult(
        timestamps=market.timestamps[idx],
        rows=idx.astype(np.int64),
        block=blk,
        returns=r,
        equity=initial * np.cumprod(1.0 + r),
        exposure=np.ones(n),
        position=np.ones(n),
        costs=np.zeros(n),
        costs_cash=np.zeros(n),
        initial_equity=initial,
        periods_per_year=market.periods_per_year,
        entries=entries,
    )
