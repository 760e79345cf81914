"""The trading model, vectorised over N independent accounts (numpy only, no polars/pandas).

Time semantics (``DESIGN.md``): at row ``t`` the agent has seen everything up to the
CLOSE of bar t and picks an action, a target exposure ``x`` from the grid (``+x``: a
fraction x of equity in the long ETF, ``-x``: in the short ETF, 0: flat). The order fills
at the OPEN of bar t+1; the step ends at the close of bar t+1.

One step of one account, in order:

1. **Mark at the open.** ``E_open = cash + shares * open[t+1, held instrument]``.
2. **Trade only when the action changes.** If the action equals the one held, nothing
   trades (the exposure drifts with prices). Otherwise the target is
   ``shares' = |x| E_open / open[t+1, instrument']``. Resizing the same ETF trades the
   difference; switching ETF sells every share of the old one and buys the new one (both
   legs pay costs); going flat sells everything.
3. **Costs per leg**, on the traded notional ``n = shares_traded * open``:
   ``commission_per_share * shares_traded + (half_spread_bps / 1e4 + slippage_vol_mult * L *
   vol[t]) * n``, where ``vol[t]`` is the underlying's per-bar EWMA volatility known at the
   close of t, so ``L * vol[t]`` is the ETF's. Cash changes by sales minus purchases minus
   costs.
4. **Mark at the close.** ``E = cash + shares' * close[t+1, instrument']``.
5. **Forced exits at the close of bar t+1** (sold at that close, same cost formula with
   ``vol[t+1]``): with ``flat_at_close``, on the session's last bar; and when the
   drawdown circuit breaker trips (``masks.drawdown``): the session drawdown
   ``1 - E / peak`` reaches ``masks.drawdown_limit``.
6. **Reward** ``log(E_{t+1} / E_t) - drawdown_penalty * max(0, DD_{t+1} - DD_t)``: the log
   return of equity over the step, net of every cost, minus an optional penalty on the
   increase of the session drawdown ``DD = 1 - E / peak`` (``peak`` = highest close equity
   of the session so far, starting from the previous close; ``DD_t`` counts as 0 on the
   first step of a session).
7. **Flags.** ``terminated`` when the breaker trips (training mode) or equity is gone
   (ruin, ``E <= 0``); ``truncated`` when the episode's last row is reached (time limit:
   bootstrap from the last observation). In ``backtest`` mode the breaker does not end the
   episode: the account stays flat for the rest of the session (the ``drawdown`` mask).

Masks (which actions are allowed at row t; flat is always allowed) come in named layers,
each switched by ``env.masks``:

* ``session``: no new exposure (a larger ``|x|`` or another sign) when the fill bar
  (t+1) opens within ``no_new_exposure_minutes`` of its session's close.
* ``risk_budget``: ``|x| <= target_vol_annual / (L * vol[t] * sqrt(periods_per_year))``.
* ``regime``: ``|x| <= high_vol_regime_cap`` while the highest-volatility regime is the
  most likely one.
* ``drawdown``: no new exposure once the session drawdown reaches half the limit; only
  flat after the breaker tripped (backtest mode) until the session ends.
* ``min_hold``: a non-flat position held fewer than ``min_hold_bars`` bars may only be
  kept or closed, not switched to another exposure.

Observation at row t (a dict of float32 arrays): ``window``, the last ``window`` feature
rows ``features[t-window+1 .. t]`` (``(window, F)``: one token per bar for sequence
models), and ``state``, the regime probabilities at t followed by the portfolio state: exposure (signed value of the position / equity, at the close of t),
unrealised return of the position (``E_t / E_entry - 1``, 0 when flat), session drawdown,
bars in the position / 390, and ``min(minutes to the close, 390) / 390`` from the start of
bar t (1 on daily bars).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sentio.config import SentioConfig
from sentio.env.market import MarketData

__all__ = [
    "LAYER_BITS",
    "MASK_LAYERS",
    "STATE_FEATURES",
    "BatchSimulator",
    "EnvParams",
    "StepResult",
    "layer_names",
]

MASK_LAYERS: tuple[str, ...] = ("session", "risk_budget", "regime", "drawdown", "min_hold")
"""Mask layer names, in bit order."""
LAYER_BITS: dict[str, int] = {name: 1 << i for i, name in enumerate(MASK_LAYERS)}
STATE_FEATURES: tuple[str, ...] = (
    "exposure",
    "unrealised_return",
    "drawdown",
    "bars_in_position",
    "time_to_close",
)
"""Portfolio-state entries at the end of every observation."""

FLAT, LONG_ETF, SHORT_ETF = 0, 1, 2  # instrument held; columns of MarketData.open/close
BARS_SCALE = 390.0
TERMINATION = {0: None, 1: "circuit_breaker", 2: "ruin"}


def layer_names(bits: int) -> list[str]:
    """The layer names in a bitmask of :data:`LAYER_BITS`."""
    return [name for name, bit in LAYER_BITS.items() if bits & bit]


@dataclass(frozen=True)
class EnvParams:
    """The numbers of the trading model, taken from the configuration once."""

    grid: np.ndarray
    window: int
    flat_at_close: bool
    initial_cash: float
    drawdown_penalty: float
    leverage: float
    commission_per_share: float
    half_spread: float
    slippage_vol_mult: float
    mask_session: bool
    no_new_exposure_minutes: float
    mask_risk_budget: bool
    target_vol_annual: float
    mask_regime: bool
    high_vol_regime_cap: float
    mask_drawdown: bool
    drawdown_limit: float
    min_hold_bars: int
    episode_sessions: int

    @classmethod
    def from_config(cls, cfg: SentioConfig) -> EnvParams:
        """The parameters of ``cfg.env`` (and the ETFs' leverage of ``cfg.universe``)."""
        e, m, c = cfg.env, cfg.env.masks, cfg.env.costs
        return cls(
            grid=np.asarray(sorted(e.action_grid), dtype=np.float64),
            window=e.window,
            flat_at_close=e.flat_at_close,
            initial_cash=e.initial_cash,
            drawdown_penalty=e.drawdown_penalty,
            leverage=cfg.universe.leverage,
            commission_per_share=c.commission_per_share,
            half_spread=c.half_spread_bps / 1e4,
            slippage_vol_mult=c.slippage_vol_mult,
            mask_session=m.session,
            no_new_exposure_minutes=float(m.no_new_exposure_minutes),
            mask_risk_budget=m.risk_budget,
            target_vol_annual=m.target_vol_annual,
            mask_regime=m.regime,
            high_vol_regime_cap=m.high_vol_regime_cap,
            mask_drawdown=m.drawdown,
            drawdown_limit=m.drawdown_limit,
            min_hold_bars=m.min_hold_bars,
            episode_sessions=e.episode_sessions,
        )

    @property
    def n_actions(self) -> int:
        """Size of the action grid."""
        return int(self.grid.size)

    @property
    def flat_action(self) -> int:
        """Index of exposure 0 in the grid."""
        return int(np.flatnonzero(self.grid == 0.0)[0])


@dataclass
class StepResult:
    """Per-account outcome of one :meth:`BatchSimulator.step` (arrays of length N)."""

    reward: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    equity: np.ndarray
    exposure: np.ndarray
    costs: np.ndarray
    traded_notional: np.ndarray
    termination: np.ndarray  # 0 none, 1 circuit breaker, 2 ruin (see TERMINATION)


class BatchSimulator:
    """N accounts stepping through one :class:`MarketData` with array operations.

    Each account has its own current row ``t`` and last row ``end``; :meth:`reset` places
    accounts at episode starts, :meth:`step` advances every account by one bar. The
    caller (the vector environment, the backtester) decides which rows episodes use.

    Args:
        market: the aligned arrays.
        params: the trading model.
        n: number of accounts.
        backtest: breaker keeps the episode alive (flat until the session ends) instead
            of terminating it.
    """

    def __init__(
        self, market: MarketData, params: EnvParams, n: int, *, backtest: bool = False
    ) -> None:
        if n < 1:
            raise ValueError(f"need at least one account, got {n}")
        self.market = market
        self.p = params
        self.n = n
        self.backtest = backtest
        self.grid = params.grid
        self.abs_grid = np.abs(params.grid)
        self.sign_grid = np.sign(params.grid)
        self.flat = params.flat_action
        L = params.window
        F = market.n_features
        self.state_dim = market.n_regimes + len(STATE_FEATURES)
        # windows of features as a zero-copy view: row r = features[r .. r+L-1] flattened
        feats = np.ascontiguousarray(market.features, dtype=np.float32)
        T = feats.shape[0]
        self._windows = np.lib.stride_tricks.as_strided(
            feats,
            shape=(max(T - L + 1, 0), L * F),
            # from the item size: numpy may give a length-1 axis any stride (F = 1: 0)
            strides=(F * feats.itemsize, feats.itemsize),
            writeable=False,
        )
        self._high_vol = market.high_vol_regime()
        # volatility cap of the risk budget per row (inf where vol is 0)
        with np.errstate(divide="ignore"):
            self._risk_cap = params.target_vol_annual / (
                params.leverage * market.vol * np.sqrt(market.periods_per_year)
            )
        self._tclose = np.minimum(market.minutes_to_close, BARS_SCALE) / BARS_SCALE
        if market.minutes_to_close.max(initial=0.0) <= 0.0:  # daily bars
            self._tclose = np.ones_like(self._tclose)
            self._session_minutes = np.full(T, np.inf)
        else:
            self._session_minutes = market.minutes_to_close
        self.t = np.zeros(n, dtype=np.int64)
        self.end = np.zeros(n, dtype=np.int64)
        self.cash = np.zeros(n)
        self.shares = np.zeros(n)
        self.inst = np.zeros(n, dtype=np.int64)
        self.held = np.full(n, self.flat, dtype=np.int64)
        self.equity = np.zeros(n)
        self.peak = np.zeros(n)
        self.dd = np.zeros(n)
        self.entry_equity = np.zeros(n)
        self.bars_held = np.zeros(n, dtype=np.int64)
        self.tripped = np.zeros(n, dtype=bool)
        self._idx = np.arange(n)

    # ------------------------------------------------------------------ episodes

    def reset(
        self,
        which: np.ndarray,
        start: np.ndarray,
        end: np.ndarray,
        equity: np.ndarray | float | None = None,
    ) -> None:
        """Start new episodes for the accounts ``which``: flat, at row ``start``, until ``end``.

        ``start`` must leave room for the observation window (``start >= window - 1``) and
        ``end > start``.
        """
        which = np.asarray(which, dtype=np.int64)
        start = np.asarray(start, dtype=np.int64)
        end = np.asarray(end, dtype=np.int64)
        if start.size and (
            start.min() < self.p.window - 1
            or (end <= start).any()
            or end.max() >= self.market.n_rows
        ):
            raise ValueError(
                f"episode rows must satisfy window-1 <= start < end < {self.market.n_rows}"
            )
        eq = self.p.initial_cash if equity is None else equity
        self.t[which] = start
        self.end[which] = end
        self.cash[which] = eq
        self.shares[which] = 0.0
        self.inst[which] = FLAT
        self.held[which] = self.flat
        self.equity[which] = eq
        self.peak[which] = eq
        self.dd[which] = 0.0
        self.entry_equity[which] = eq
        self.bars_held[which] = 0
        self.tripped[which] = False

    # ------------------------------------------------------------------ masks

    def blocked_layers(self) -> np.ndarray:
        """``(N, A)`` uint8: for each account and action, the bits of the layers blocking it."""
        p = self.p
        t = self.t
        out = np.zeros((self.n, p.n_actions), dtype=np.uint8)
        ax = self.abs_grid[None, :]
        cur = self.grid[self.held]
        new_exposure = (ax > 0) & (
            (self.sign_grid[None, :] != np.sign(cur)[:, None]) | (ax > np.abs(cur)[:, None] + 1e-12)
        )
        if p.mask_session:
            late = self._session_minutes[np.minimum(t + 1, self.market.n_rows - 1)] <= (
                p.no_new_exposure_minutes
            )
            out |= np.where(late[:, None] & new_exposure, LAYER_BITS["session"], 0).astype(np.uint8)
        if p.mask_risk_budget:
            over = ax > self._risk_cap[t][:, None] + 1e-12
            out |= np.where(over, LAYER_BITS["risk_budget"], 0).astype(np.uint8)
        if p.mask_regime:
            over = self._high_vol[t][:, None] & (ax > p.high_vol_regime_cap + 1e-12)
            out |= np.where(over, LAYER_BITS["regime"], 0).astype(np.uint8)
        if p.mask_drawdown:
            warn = (self.dd >= 0.5 * p.drawdown_limit)[:, None] & new_exposure
            stop = self.tripped[:, None] & (ax > 0)
            out |= np.where(warn | stop, LAYER_BITS["drawdown"], 0).astype(np.uint8)
        if p.min_hold_bars > 0:
            young = (cur != 0) & (self.bars_held < p.min_hold_bars)
            change = (ax > 0) & (self.grid[None, :] != cur[:, None])
            out |= np.where(young[:, None] & change, LAYER_BITS["min_hold"], 0).astype(np.uint8)
        out[:, self.flat] = 0  # flat is always allowed
        return out

    def action_masks(self) -> np.ndarray:
        """``(N, A)`` bool: the allowed actions (at least flat) at each account's row."""
        return self.blocked_layers() == 0

    # ------------------------------------------------------------------ observation

    def observe(self) -> dict[str, np.ndarray]:
        """Observations at each account's current row: ``{"window": (N, L, F), "state": (N, S)}``.

        ``window`` holds ``features[t-L+1 .. t]``; ``state`` the regime probabilities at t
        followed by :data:`STATE_FEATURES`. Both float32.
        """
        L = self.p.window
        t = self.t
        K = self.market.n_regimes
        window = self._windows[t - (L - 1)].reshape(self.n, L, self.market.n_features)
        state = np.empty((self.n, K + len(STATE_FEATURES)), dtype=np.float32)
        if K:
            state[:, :K] = self.market.regime_probs[t]
        close_now = self.market.close[t, self.inst]
        eq = self.equity
        sign = np.where(self.inst == SHORT_ETF, -1.0, 1.0)
        state[:, K] = sign * self.shares * close_now / eq
        state[:, K + 1] = np.where(self.inst != FLAT, eq / self.entry_equity - 1.0, 0.0)
        state[:, K + 2] = self.dd
        state[:, K + 3] = self.bars_held / BARS_SCALE
        state[:, K + 4] = self._tclose[t]
        return {"window": window, "state": state}

    # ------------------------------------------------------------------ step

    def _exit_costs(self, shares: np.ndarray, price: np.ndarray, vol: np.ndarray) -> np.ndarray:
        p = self.p
        notional = shares * price
        return (
            p.commission_per_share * shares
            + (p.half_spread + p.slippage_vol_mult * p.leverage * vol) * notional
        )

    def step(self, actions: np.ndarray) -> StepResult:
        """Apply one action per account (grid indices) and advance every account one bar."""
        m = self.market
        p = self.p
        a = np.asarray(actions, dtype=np.int64).reshape(self.n)
        if a.min(initial=0) < 0 or a.max(initial=0) >= p.n_actions:
            raise ValueError(f"actions must be in [0, {p.n_actions}), got {a}")
        t = self.t
        t1 = t + 1
        idx = self._idx
        open1 = m.open[t1]  # (N, 3)
        close1 = m.close[t1]
        e_prev = self.equity
        x = self.grid[a]
        change = a != self.held
        e_open = self.cash + self.shares * open1[idx, self.inst]
        new_inst = np.where(x > 0, LONG_ETF, np.where(x < 0, SHORT_ETF, FLAT))
        new_inst = np.where(change, new_inst, self.inst)
        target = np.abs(x) * e_open / open1[idx, new_inst]
        new_shares = np.where(change, np.where(x == 0, 0.0, target), self.shares)
        same = new_inst == self.inst
        sell = np.where(
            change, np.where(same, np.maximum(self.shares - new_shares, 0.0), self.shares), 0.0
        )
        buy = np.where(
            change, np.where(same, np.maximum(new_shares - self.shares, 0.0), new_shares), 0.0
        )
        sell_px = open1[idx, self.inst]
        buy_px = open1[idx, new_inst]
        notional = sell * sell_px + buy * buy_px
        vol_t = m.vol[t]
        costs = (
            p.commission_per_share * (sell + buy)
            + (p.half_spread + p.slippage_vol_mult * p.leverage * vol_t) * notional
        )
        cash = self.cash + sell * sell_px - buy * buy_px - costs
        close_px = close1[idx, new_inst]
        e_pre = cash + new_shares * close_px
        # session bookkeeping: a new session restarts the peak from the previous close
        new_session = m.session[t1] != m.session[t]
        peak = np.where(new_session, e_prev, self.peak)
        tripped = np.where(new_session, False, self.tripped)
        dd_prev = np.where(new_session, 0.0, self.dd)
        peak_pre = np.maximum(peak, e_pre)
        trip = np.zeros(self.n, dtype=bool)
        if p.mask_drawdown:
            trip = (~tripped) & (1.0 - e_pre / peak_pre >= p.drawdown_limit)
        exit_now = trip.copy()
        if p.flat_at_close:
            exit_now |= m.last_bar[t1]
        exit_now &= new_shares > 0
        exit_costs = np.where(exit_now, self._exit_costs(new_shares, close_px, m.vol[t1]), 0.0)
        cash = np.where(exit_now, cash + new_shares * close_px - exit_costs, cash)
        notional = notional + np.where(exit_now, new_shares * close_px, 0.0)
        costs = costs + exit_costs
        new_shares = np.where(exit_now, 0.0, new_shares)
        new_inst = np.where(exit_now, FLAT, new_inst)
        held = np.where(exit_now, self.flat, a)
        equity = cash + new_shares * close_px
        peak = np.maximum(peak, equity)
        dd = 1.0 - equity / peak
        ruin = equity <= 0.0
        with np.errstate(divide="ignore", invalid="ignore"):
            reward = np.log(np.maximum(equity, 1e-300) / e_prev)
        if p.drawdown_penalty > 0:
            reward = reward - p.drawdown_penalty * np.maximum(dd - dd_prev, 0.0)
        # bookkeeping of the position
        moved = change | exit_now
        self.bars_held = np.where(moved, np.where(new_inst == FLAT, 0, 1), self.bars_held + 1)
        self.entry_equity = np.where(change & (new_inst != FLAT), e_open, self.entry_equity)
        self.cash = cash
        self.shares = new_shares
        self.inst = new_inst
        self.held = held
        self.equity = equity
        self.peak = peak
        self.dd = dd
        self.tripped = tripped | trip
        self.t = t1
        terminated = ruin | (trip & (not self.backtest))
        truncated = (t1 >= self.end) & ~terminated
        termination = np.where(ruin, 2, np.where(trip & (not self.backtest), 1, 0))
        sign = np.where(new_inst == SHORT_ETF, -1.0, 1.0)
        exposure = sign * new_shares * close_px / np.where(equity > 0, equity, 1.0)
        return StepResult(
            reward=reward,
            terminated=terminated,
            truncated=truncated,
            equity=equity,
            exposure=exposure,
            costs=costs,
            traded_notional=notional,
            termination=termination,
        )
