"""The trading model of :mod:`sentio.env.simulator` with its accounts as torch tensors on a device.

:class:`TorchSimulator` is the same model as :class:`~sentio.env.simulator.BatchSimulator`
(fills at the next open, costs per leg, forced exits at the close, the drawdown breaker,
the reward, the mask layers, the observation) for ``N`` accounts whose state lives on the
training device as ``(N,)`` tensors, so that a rollout never leaves the device
(:mod:`sentio.agents.device_rollout`). The numpy simulator stays the reference: this one
reads the very tables the numpy one builds (:meth:`BatchSimulator.step_arrays`,
:meth:`BatchSimulator.mask_table`) and repeats its arithmetic operation for operation.

Precision: prices, cash, shares and equity are float64 on every device, as in numpy, and
every operation is an IEEE-754 one of the same operands in the same order, so the account
state, the masks, the flags and the observations are bit for bit those of numpy (tested,
N = 1 and N = 1,024). The one exception is the logarithm of the reward: torch and numpy
use different ``log`` implementations, which may differ in the last bit (relative 1e-16).

No step reads a value back to the host: where numpy branches on "any account exits", the
torch version computes both sides and selects (``torch.where``), so a step is a fixed
sequence of kernels (CUDA graphs and ``torch.compile`` can capture it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from sentio.env.market import SHORT, MarketData
from sentio.env.simulator import (
    BARS_SCALE,
    FLAT,
    STATE_FEATURES,
    BatchSimulator,
    EnvParams,
    StepLegs,
    leg_costs,
)

__all__ = ["TorchSimulator", "TorchStepResult"]


@dataclass
class TorchStepResult(StepLegs):
    """Per-account outcome of one :meth:`TorchSimulator.step` (tensors of length N, on the
    device): the fields of :class:`~sentio.env.simulator.StepResult`, with the same
    meaning (the outcome and the step's legs)."""

    reward: torch.Tensor
    terminated: torch.Tensor
    truncated: torch.Tensor
    equity: torch.Tensor
    exposure: torch.Tensor
    costs: torch.Tensor
    traded_notional: torch.Tensor
    termination: torch.Tensor  # 0 none, 1 circuit breaker, 2 ruin
    sold: torch.Tensor
    sold_inst: torch.Tensor
    sold_price: torch.Tensor
    bought: torch.Tensor
    bought_price: torch.Tensor
    inst: torch.Tensor
    shares: torch.Tensor
    close_price: torch.Tensor
    equity_pre_exit: torch.Tensor
    cost_rate: torch.Tensor
    exit_at_close: torch.Tensor
    breaker_tripped: torch.Tensor
    exit_costs: torch.Tensor
    commission_per_share: float


class TorchSimulator:
    """N accounts of the trading model, stepped on ``device`` (see the module docstring).

    Args:
        market: the aligned arrays (copied to the device once).
        params: the trading model.
        n: number of accounts.
        device: where the accounts and the market live.
        backtest: as :class:`~sentio.env.simulator.BatchSimulator`'s.
    """

    ACCOUNT_STATE = BatchSimulator.ACCOUNT_STATE

    # the accounts, (N,) tensors (the numpy simulator's ACCOUNT_STATE)
    t: torch.Tensor
    end: torch.Tensor
    cash: torch.Tensor
    shares: torch.Tensor
    inst: torch.Tensor
    held: torch.Tensor
    equity: torch.Tensor
    peak: torch.Tensor
    dd: torch.Tensor
    entry_equity: torch.Tensor
    bars_held: torch.Tensor
    tripped: torch.Tensor

    def __init__(
        self,
        market: MarketData,
        params: EnvParams,
        n: int,
        *,
        device: torch.device | str = "cpu",
        backtest: bool = False,
    ) -> None:
        reference = BatchSimulator(market, params, n, backtest=backtest)
        self.device = torch.device(device)
        self.market = market
        self.p = params
        self.n = n
        self.backtest = backtest
        self.flat = params.flat_action
        self.state_dim = reference.state_dim
        dev = self.device

        def put(a: np.ndarray, dtype: torch.dtype | None = None) -> torch.Tensor:
            return torch.as_tensor(np.ascontiguousarray(a), dtype=dtype, device=dev)

        arrays = reference.step_arrays()
        self._open = put(arrays["open"], torch.float64)
        self._close = put(arrays["close"], torch.float64)
        self._cost_rate = put(arrays["cost_rate"], torch.float64)
        self._new_session = put(arrays["new_session"], torch.bool)
        self._last_bar = put(arrays["last_bar"], torch.bool)
        self._tclose = put(arrays["time_to_close"], torch.float64)
        self._row_code = put(arrays["row_code"], torch.int64)
        self._target_inst = put(arrays["target_inst"], torch.int64)
        self._abs_grid = put(arrays["abs_grid"], torch.float64)
        self._lut = put(reference.mask_table(), torch.uint8)
        self._features = put(market.features, torch.float32)
        self._regimes = put(market.regime_probs, torch.float32)
        self._offsets = torch.arange(params.window, device=dev) - (params.window - 1)
        self._zero = torch.zeros((), dtype=torch.float64, device=dev)
        self._tiny = torch.full((), 1e-300, dtype=torch.float64, device=dev)
        # the accounts: the numpy reference's initial state, on the device
        for name in self.ACCOUNT_STATE:
            setattr(self, name, put(getattr(reference, name)))

    # ------------------------------------------------------------------ state

    def get_state(self) -> dict[str, np.ndarray]:
        """Every account's state as numpy arrays (the numpy simulator's format)."""
        return {name: getattr(self, name).cpu().numpy().copy() for name in self.ACCOUNT_STATE}

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        """Restore :meth:`get_state` (of this or of a numpy simulator with as many accounts)."""
        for name in self.ACCOUNT_STATE:
            current = getattr(self, name)
            value = torch.as_tensor(np.asarray(state[name]))
            if tuple(value.shape) != tuple(current.shape):
                raise ValueError(
                    f"simulator state {name!r} has shape {tuple(value.shape)}, "
                    f"expected {tuple(current.shape)}"
                )
            setattr(self, name, value.to(device=self.device, dtype=current.dtype).clone())

    # ------------------------------------------------------------------ episodes

    def reset(
        self,
        start: torch.Tensor,
        end: torch.Tensor,
        where: torch.Tensor | None = None,
        equity: float | None = None,
    ) -> None:
        """Start new episodes, flat, at rows ``start`` until ``end`` (both ``(N,)``).

        ``where`` (``(N,)`` bool) restricts the reset to those accounts; the others keep
        their state. ``equity``: the starting equity (``initial_cash`` by default). The rows
        are not checked here (that would read them back to the host): the callers draw
        them from :func:`~sentio.env.episodes.candidate_episodes`.
        """
        cash = self.p.initial_cash if equity is None else float(equity)
        eq = torch.full((self.n,), cash, dtype=torch.float64, device=self.device)
        dev = self.device
        if where is not None:
            where = where.to(device=dev, dtype=torch.bool)
        fresh = {
            "t": start.to(device=dev, dtype=torch.int64),
            "end": end.to(device=dev, dtype=torch.int64),
            "cash": eq,
            "shares": torch.zeros_like(eq),
            "inst": torch.full_like(self.inst, FLAT),
            "held": torch.full_like(self.held, self.flat),
            "equity": eq,
            "peak": eq,
            "dd": torch.zeros_like(eq),
            "entry_equity": eq,
            "bars_held": torch.zeros_like(self.bars_held),
            "tripped": torch.zeros_like(self.tripped),
        }
        for name, value in fresh.items():
            kept = getattr(self, name)
            setattr(self, name, value.clone() if where is None else torch.where(where, value, kept))

    # ------------------------------------------------------------------ masks

    def blocked_layers(self) -> torch.Tensor:
        """``(N, A)`` uint8: the bits of the layers blocking each action (0: allowed)."""
        p = self.p
        warn = self.dd >= 0.5 * p.drawdown_limit
        young = self.bars_held < p.min_hold_bars
        acct = ((self.held * 2 + warn) * 2 + self.tripped) * 2 + young
        return self._lut[self._row_code[self.t], acct]

    def action_masks(self) -> torch.Tensor:
        """``(N, A)`` bool: the allowed actions (at least flat)."""
        return self.blocked_layers() == 0

    # ------------------------------------------------------------------ observation

    def observe(self) -> dict[str, torch.Tensor]:
        """``{"window": (N, L, F), "state": (N, K + 5)}`` float32 at the accounts' rows."""
        t = self.t
        window = self._features[t[:, None] + self._offsets]
        K = self.market.n_regimes
        value = self.shares * self._close[t * 3 + self.inst]
        eq = self.equity
        parts = [
            torch.where(self.inst == SHORT, -value, value) / eq,
            torch.where(self.inst != FLAT, eq / self.entry_equity - 1.0, self._zero),
            self.dd,
            self.bars_held.to(torch.float64) / BARS_SCALE,
            self._tclose[t],
        ]
        account = torch.stack(parts, dim=1).to(torch.float32)
        state = torch.cat([self._regimes[t], account], dim=1) if K else account
        assert state.shape[1] == K + len(STATE_FEATURES)
        return {"window": window, "state": state}

    # ------------------------------------------------------------------ step

    def step(self, actions: torch.Tensor) -> TorchStepResult:
        """Apply one action per account (grid indices, ``(N,)``) and advance every account."""
        # One function on purpose (over 80 lines): it is the model's specification, steps
        # 1-7 of the module docstring in order, repeated operation for operation by the
        # other simulator; split up, the two could no longer be read side by side.
        p = self.p
        a = actions.to(device=self.device, dtype=torch.int64).reshape(self.n)
        if self.device.type == "cpu" and a.numel() and (a.min() < 0 or a.max() >= p.n_actions):
            raise ValueError(f"actions must be in [0, {p.n_actions}), got {a.tolist()}")
        t = self.t
        t1 = t + 1
        base = t1 * 3
        inst, shares, e_prev = self.inst, self.shares, self.equity
        change = a != self.held
        # 1. mark at the open of t+1
        old_open = self._open[base + inst]
        e_open = self.cash + shares * old_open
        # 2. trade only when the action changes
        new_inst = torch.where(change, self._target_inst[a], inst)
        new_open = self._open[base + new_inst]
        new_shares = torch.where(change, self._abs_grid[a] * e_open / new_open, shares)
        same = new_inst == inst
        diff = new_shares - shares
        zero = self._zero
        sell = torch.where(change, torch.where(same, torch.clamp(-diff, min=0.0), shares), zero)
        buy = torch.where(change, torch.where(same, torch.clamp(diff, min=0.0), new_shares), zero)
        sell_value = sell * old_open
        buy_value = buy * new_open
        notional = sell_value + buy_value
        # 3. costs per leg (both legs at the open in one formula)
        rate = self._cost_rate[t]
        costs = leg_costs(p.commission_per_share, sell + buy, notional, rate)
        cash = self.cash + sell_value - buy_value - costs
        # 4. mark at the close of t+1
        close_px = self._close[base + new_inst]
        value = new_shares * close_px
        e_pre = cash + value
        new_session = self._new_session[t1]
        peak = torch.where(new_session, e_prev, self.peak)
        tripped = self.tripped & ~new_session
        dd_prev = torch.where(new_session, zero, self.dd)
        # 5. forced exits at the close (both sides computed; no host round trip)
        if p.mask_drawdown:
            trip = ~tripped & (1.0 - e_pre / torch.maximum(peak, e_pre) >= p.drawdown_limit)
        else:
            trip = torch.zeros_like(tripped)
        forced = (trip | self._last_bar[t1]) if p.flat_at_close else trip
        exit_now = forced & (new_shares > 0)
        held_inst, held_shares = new_inst, new_shares
        exit_costs = torch.where(
            exit_now,
            leg_costs(p.commission_per_share, new_shares, value, self._cost_rate[t1]),
            zero,
        )
        cash = torch.where(exit_now, cash + value - exit_costs, cash)
        notional = notional + torch.where(exit_now, value, zero)
        costs = costs + exit_costs
        new_shares = torch.where(exit_now, zero, new_shares)
        new_inst = torch.where(exit_now, torch.full_like(new_inst, FLAT), new_inst)
        held = torch.where(exit_now, torch.full_like(a, self.flat), a)
        equity = cash + new_shares * close_px
        peak = torch.maximum(peak, equity)
        dd = 1.0 - equity / peak
        ruin = equity <= 0.0
        # 6. reward
        reward = torch.log(torch.maximum(equity, self._tiny) / e_prev)
        if p.drawdown_penalty > 0:
            reward = reward - p.drawdown_penalty * torch.clamp(dd - dd_prev, min=0.0)
        flat_now = new_inst == FLAT
        self.bars_held = torch.where(
            flat_now,
            torch.zeros_like(self.bars_held),
            torch.where(change | exit_now, torch.ones_like(self.bars_held), self.bars_held + 1),
        )
        self.entry_equity = torch.where(change & ~flat_now, e_open, self.entry_equity)
        self.cash = cash
        self.shares = new_shares
        self.inst = new_inst
        self.held = held
        self.equity = equity
        self.peak = peak
        self.dd = dd
        self.tripped = tripped | trip
        self.t = t1
        # 7. flags
        two, one, none = (torch.full_like(a, v) for v in (2, 1, 0))
        if self.backtest:
            terminated = ruin
            termination = torch.where(ruin, two, none)
        else:
            terminated = ruin | trip
            termination = torch.where(ruin, two, torch.where(trip, one, none))
        truncated = (t1 >= self.end) & ~terminated
        sign = torch.where(new_inst == SHORT, -1.0, 1.0).to(torch.float64)
        positive = torch.where(equity > 0, equity, torch.ones_like(equity))
        exposure = sign * new_shares * close_px / positive
        return TorchStepResult(
            reward=reward,
            terminated=terminated,
            truncated=truncated,
            equity=equity,
            exposure=exposure,
            costs=costs,
            traded_notional=notional,
            termination=termination,
            sold=sell,
            sold_inst=inst,
            sold_price=old_open,
            bought=buy,
            bought_price=new_open,
            inst=held_inst,
            shares=held_shares,
            close_price=close_px,
            equity_pre_exit=e_pre,
            cost_rate=rate,
            exit_at_close=exit_now,
            breaker_tripped=trip,
            exit_costs=exit_costs,
            commission_per_share=p.commission_per_share,
        )
