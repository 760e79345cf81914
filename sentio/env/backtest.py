"""Sequential backtests of a policy with the training simulator itself.

:func:`backtest` runs ONE account of :class:`~sentio.env.simulator.BatchSimulator` in
``backtest`` mode (the drawdown breaker keeps the account flat for the rest of the session
instead of ending the episode) over held-out test blocks, with the same fills, costs,
forced exits and masks as training. Nothing here re-implements the trading model: the
decision loop is :func:`sentio.env.decisions.decide_and_step` (shared with live replay),
every equity, exposure and cost figure is the simulator's, and the trade ledger
(:class:`sentio.env.ledger.TradeLedger`) is built from the legs each step reports.

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
close of the block's last bar by the simulator
(:meth:`~sentio.env.simulator.BatchSimulator.close_out`, the exit-cost formula
``commission_per_share * shares + (half_spread + slippage_vol_mult * L * vol) *
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

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from sentio.env.decisions import (
    STAND_ASIDE,
    Decision,
    MaskedActionError,
    Policy,
    PredictModel,
    RowPolicy,
    action_picker,
    decide_and_step,
    model_actions,
    one_torch_thread,
)
from sentio.env.ledger import EXIT_REASONS, TRADE_SCHEMA, TradeLedger
from sentio.env.market import MarketData
from sentio.env.simulator import (
    LAYER_BITS,
    MASK_LAYERS,
    STATE_FEATURES,
    BatchSimulator,
    EnvParams,
    StepResult,
)
from sentio.errors import DataError

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
    "one_torch_thread",
    "trend_policy",
    "underlying_buy_and_hold",
]

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
    episodes = _episodes(market, rows, params.window)
    initial = float(params.initial_cash if equity is None else equity)
    if not (initial > 0 and math.isfinite(initial)):
        raise ValueError(f"backtest: starting equity must be positive, got {equity}")
    names = ("long", "short") if instruments is None else (str(instruments[0]), str(instruments[1]))
    ledger = TradeLedger(names)
    bars = _BarLog(sum(end - start for _, start, end in episodes))
    sim = BatchSimulator(market, params, 1, backtest=True)
    pick = action_picker(policy, sim)
    stamps = market.timestamps
    ran: list[tuple[int, int]] = []
    eq = initial
    ruined = False
    for block, start, end in episodes:
        sim.reset(np.zeros(1, dtype=np.int64), np.array([start]), np.array([end]), equity=eq)
        ran.append((start, end))

        def masked(t: int, a: int, bits: np.ndarray, block: int = block) -> str:
            return f"the policy chose a masked action at row {t} ({stamps[t]} UTC, block {block})"

        for d in decide_and_step(sim, pick, masked=masked):
            res = d.result
            assert res is not None
            t1 = d.row + 1
            entered = ledger.record(res, block, t1)
            done = bool(res.terminated[0] or res.truncated[0])
            end_costs = _end_episode(sim, ledger, market, t1, res) if done else None
            bars.add(d, block, t1, entered, end_costs, float(sim.equity[0]))
            ruined = ruined or bool(res.terminated[0])
        eq = float(sim.equity[0])
        if ruined:
            break
    return bars.result(
        market,
        initial,
        trades=ledger.frame(stamps),
        blocks=ran,
        grid=params.grid.copy(),
        ruined=ruined,
    )


def _end_episode(
    sim: BatchSimulator, ledger: TradeLedger, market: MarketData, row: int, res: StepResult
) -> float | None:
    """Sell a position still open when an episode ends at the close of bar ``row``; the
    costs charged (none on ruin: equity is gone and the backtest stops), None when no
    position was open."""
    if ledger.open is None:
        return None
    ruin = bool(res.terminated[0])
    shares, price, costs = sim.close_out(charge=not ruin)
    reason = "ruin" if ruin else "data_gap" if _before_gap(market, row) else "end_of_block"
    ledger.close_out(row, float(shares[0]), float(price[0]), float(costs[0]), reason)
    return float(costs[0])


class _BarLog:
    """The per-bar series of a backtest, one entry per step (see :class:`BacktestResult`)."""

    def __init__(self, n: int) -> None:
        self.i = 0
        self.rows = np.zeros(n, dtype=np.int64)
        self.block = np.zeros(n, dtype=np.int64)
        self.prev_eq = np.zeros(n)
        self.equity = np.zeros(n)
        self.exposure = np.zeros(n)
        self.position = np.zeros(n)
        self.costs_cash = np.zeros(n)
        self.actions = np.zeros(n, dtype=np.int64)
        self.entries = np.zeros(n, dtype=np.int64)
        self.blocked_any = np.zeros(n, dtype=np.uint8)

    def add(
        self,
        d: Decision,
        block: int,
        row: int,
        entered: bool,
        end_costs: float | None,
        equity: float,
    ) -> None:
        """One step: decision ``d`` into fill bar ``row``; ``end_costs`` of a liquidation at
        its close (None: none; else the account ends flat: exposure 0) and the equity after
        it."""
        res = d.result
        assert res is not None
        i = self.i
        self.rows[i], self.block[i], self.actions[i] = row, block, d.action
        self.entries[i] = entered
        self.blocked_any[i] = np.bitwise_or.reduce(d.blocked)
        self.prev_eq[i], self.equity[i] = d.equity_before, equity
        self.costs_cash[i] = float(res.costs[0]) + (end_costs or 0.0)
        self.exposure[i] = 0.0 if end_costs is not None else float(res.exposure[0])
        self.position[i] = float(res.position[0])
        self.i += 1

    def result(self, market: MarketData, initial: float, **extra: Any) -> BacktestResult:
        """The :class:`BacktestResult` of the steps logged."""
        sl = slice(0, self.i)
        rows, prev_eq, eq = self.rows[sl], self.prev_eq[sl], self.equity[sl]
        with np.errstate(divide="ignore", invalid="ignore"):
            returns = np.where(prev_eq > 0, eq / prev_eq - 1.0, -1.0)
            cost_frac = np.where(prev_eq > 0, self.costs_cash[sl] / prev_eq, 0.0)
        K = market.n_regimes
        decision = rows - 1
        regime = (
            market.regime_probs[decision].argmax(axis=1).astype(np.int64)
            if K
            else np.full(rows.size, -1, dtype=np.int64)
        )
        return BacktestResult(
            timestamps=market.timestamps[rows],
            rows=rows,
            block=self.block[sl],
            returns=returns,
            equity=eq,
            exposure=self.exposure[sl],
            position=self.position[sl],
            costs=cost_frac,
            costs_cash=self.costs_cash[sl],
            initial_equity=initial,
            periods_per_year=market.periods_per_year,
            entries=self.entries[sl],
            actions=self.actions[sl],
            mask_blocked=self.blocked_any[sl],
            regime=regime,
            **extra,
        )


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
