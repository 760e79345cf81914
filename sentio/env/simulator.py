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
  (t+1) opens within ``no_new_exposure_minutes`` of its session's close, or less than
  ``opening_minutes`` after its session's first bar (intraday bars only).
* ``risk_budget``: ``|x| <= target_vol_annual / (L * vol[t] * sqrt(periods_per_year))``.
* ``regime``: ``|x| <= high_vol_regime_cap`` while the highest-volatility regime is the
  most likely one.
* ``drawdown``: no new exposure once the session drawdown reaches half the limit; only
  flat after the breaker tripped (backtest mode) until the session ends. A decision whose
  fill bar opens the next session is not blocked (drawdown and breaker start afresh).
* ``min_hold``: a non-flat position held fewer than ``min_hold_bars`` bars may only be
  kept or closed, not switched to another exposure.

Observation at row t (a dict of float32 arrays): ``window``, the last ``window`` feature
rows ``features[t-window+1 .. t]`` (``(window, F)``: one token per bar for sequence
models), and ``state``, the regime probabilities at t followed by the portfolio state: exposure (signed value of the position / equity, at the close of t),
unrealised return of the position (``E_t / E_entry - 1``, 0 when flat), session drawdown,
bars in the position / 390 (0 while flat), and ``min(minutes to the close, 390) / 390`` from the start of
bar t (1 on daily bars).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from sentio.config import SentioConfig, resolve_for_bars
from sentio.env.market import LONG, SHORT, UNDERLYING, MarketData
from sentio.errors import ConfigError

__all__ = [
    "LAYER_BITS",
    "MASK_LAYERS",
    "STATE_FEATURES",
    "FLAT",
    "FORCED_EXITS",
    "BatchSimulator",
    "EnvParams",
    "StepLegs",
    "StepResult",
    "layer_names",
    "leg_costs",
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

FLAT = UNDERLYING
"""Instrument code of a flat account (holding 0 shares; instrument codes are the columns of
:attr:`MarketData.open` / ``close``: :data:`~sentio.env.market.LONG`, ``SHORT``)."""
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
    opening_minutes: float
    mask_risk_budget: bool
    target_vol_annual: float
    mask_regime: bool
    high_vol_regime_cap: float
    mask_drawdown: bool
    drawdown_limit: float
    min_hold_bars: int
    episode_sessions: int

    @classmethod
    def from_config(cls, cfg: SentioConfig, market: MarketData | None = None) -> EnvParams:
        """The parameters of ``cfg.env`` (and the ETFs' leverage of ``cfg.universe``).

        Settings left ``'auto'`` are sized by the bar length of ``market``
        (:func:`sentio.config.resolve_for_bars`); without a market they must be resolved
        already.

        Raises:
            ConfigError: an ``'auto'`` setting and no market to size it by.
        """
        if market is not None:
            cfg = resolve_for_bars(cfg, market.bar_seconds)
        e, m, c = cfg.env, cfg.env.masks, cfg.env.costs
        auto = [
            f"env.{name}"
            for name, value in (
                ("flat_at_close", e.flat_at_close),
                ("episode_sessions", e.episode_sessions),
                ("costs.slippage_vol_mult", c.slippage_vol_mult),
            )
            if value == "auto"
        ]
        if auto:
            raise ConfigError(
                f"{', '.join(auto)} = 'auto' depends on the bar length of the data: resolve "
                "the configuration for it first (sentio.config.resolve_for_bars) or give the "
                "market"
            )
        assert not isinstance(e.flat_at_close, str) and not isinstance(e.episode_sessions, str)
        assert not isinstance(c.slippage_vol_mult, str)
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
            opening_minutes=float(m.opening_minutes),
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


FORCED_EXITS: tuple[str, ...] = ("", "flat_at_close", "circuit_breaker")
"""Names of :attr:`StepResult.forced_exit` codes (0: no forced exit at the close)."""


def leg_costs(commission_per_share: float, shares: Any, notional: Any, rate: Any) -> Any:
    """Costs of trading ``shares`` shares worth ``notional``: ``commission_per_share *
    shares + rate * notional``, where ``rate = half_spread + slippage_vol_mult * L *
    vol[row]`` (``row`` = t for fills at the open of t+1, t+1 for exits at its close).
    The one cost formula of the model, for numpy arrays and torch tensors alike."""
    return commission_per_share * shares + rate * notional


class StepLegs:
    """The legs of a step derived on demand from what the step stored (numpy or torch):
    :attr:`sold_costs` / :attr:`bought_costs` (:func:`leg_costs` of each leg at the open)
    and :attr:`position` (the signed value of the position over the bar at its close over
    the equity there, before any forced exit: ``compute_metrics``' ``positions``). Derived
    rather than stored, so training's steps do not pay for them."""

    sold: Any
    sold_price: Any
    bought: Any
    bought_price: Any
    inst: Any
    shares: Any
    close_price: Any
    equity_pre_exit: Any
    cost_rate: Any
    exit_at_close: Any
    breaker_tripped: Any
    commission_per_share: float

    @property
    def forced_exit(self) -> Any:
        """Code into :data:`FORCED_EXITS` of the sale at the close: 0 none, 1 the
        session's last bar (``flat_at_close``), 2 the drawdown breaker."""
        return self.exit_at_close * (1 + self.breaker_tripped)

    @property
    def sold_costs(self) -> Any:
        """Costs of the sale at the open."""
        notional = self.sold * self.sold_price
        return leg_costs(self.commission_per_share, self.sold, notional, self.cost_rate)

    @property
    def bought_costs(self) -> Any:
        """Costs of the purchase at the open."""
        notional = self.bought * self.bought_price
        return leg_costs(self.commission_per_share, self.bought, notional, self.cost_rate)

    @property
    def position(self) -> Any:
        """Signed value of the position over the bar / equity at its close, before exits
        (0 where that equity is not positive)."""
        signed = self.shares * self.close_price * (1 - 2 * (self.inst == SHORT))
        positive = self.equity_pre_exit > 0
        return signed * positive / (self.equity_pre_exit * positive + ~positive)


@dataclass
class StepResult(StepLegs):
    """Per-account outcome of one :meth:`BatchSimulator.step` (arrays of length N).

    Besides the outcome (reward, flags, equity, exposure, costs, traded notional), the
    step's legs as the simulator computed them, so that ledgers and replays read them
    instead of re-deriving the trading model:

    * at the open of ``t + 1``: ``sold`` shares of ``sold_inst`` (the instrument held
      before the step) at ``sold_price``; ``bought`` shares of ``inst`` at
      ``bought_price`` (0 shares: no such leg); their costs :attr:`sold_costs` and
      :attr:`bought_costs` (:func:`leg_costs` at ``cost_rate``, the rate of row t);
    * over the bar: ``shares`` of ``inst`` (0 / ``FLAT`` when flat), marked at
      ``close_price`` (the close of ``inst`` at ``t + 1``), where equity is
      ``equity_pre_exit``; :attr:`position` its signed value over that equity;
    * at the close: ``exit_at_close`` (all ``shares`` sold at ``close_price``, costing
      ``exit_costs``; ``breaker_tripped``: the drawdown breaker tripped at that close),
      :attr:`forced_exit` the reason's code into :data:`FORCED_EXITS`.

    ``costs = sold_costs + bought_costs + exit_costs`` up to rounding (the step charges
    the two legs at the open in one :func:`leg_costs`).

    Some arrays are the simulator's own state (``equity``, ``shares``, ``inst`` where no
    account exited): read them, and the legs derived from them, before the next
    :meth:`~BatchSimulator.reset` or :meth:`~BatchSimulator.step`, or copy them.
    """

    reward: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    equity: np.ndarray
    exposure: np.ndarray
    costs: np.ndarray
    traded_notional: np.ndarray
    termination: np.ndarray  # 0 none, 1 circuit breaker, 2 ruin (see TERMINATION)
    sold: np.ndarray
    sold_inst: np.ndarray
    sold_price: np.ndarray
    bought: np.ndarray
    bought_price: np.ndarray
    inst: np.ndarray
    shares: np.ndarray
    close_price: np.ndarray
    equity_pre_exit: np.ndarray
    cost_rate: np.ndarray
    exit_at_close: np.ndarray
    breaker_tripped: np.ndarray
    exit_costs: np.ndarray
    commission_per_share: float


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
        self._observation_tables(market, params.window)
        self._price_tables(market, params)
        self._mask_tables(market, params)
        self._accounts(n)

    def _observation_tables(self, market: MarketData, L: int) -> None:
        """The zero-copy feature windows the observations gather."""
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

    def _price_tables(self, market: MarketData, params: EnvParams) -> None:
        """Flattened prices and the per-row cost rate the steps gather."""
        self._open_flat = np.ascontiguousarray(market.open).ravel()
        self._close_flat = np.ascontiguousarray(market.close).ravel()
        self._cost_rate = (
            params.half_spread + params.slippage_vol_mult * params.leverage * market.vol
        )

    def _mask_tables(self, market: MarketData, params: EnvParams) -> None:
        """Per-row mask inputs, per-(held, action) tables and the layers' lookup table."""
        T = market.n_rows
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
            since_open = np.full(T, np.inf)
        else:
            self._session_minutes = market.minutes_to_close
            since_open = market.minutes_since_open()
        g, ag = self.grid, self.abs_grid
        # per-(held action, action) tables and per-row arrays the masks and steps gather
        self._new_exposure = (ag[None, :] > 0) & (
            (self.sign_grid[None, :] != np.sign(g)[:, None]) | (ag[None, :] > ag[:, None] + 1e-12)
        )
        self._switch = (ag[None, :] > 0) & (g[None, :] != g[:, None]) & (g[:, None] != 0)
        self._regime_over = ag > params.high_vol_regime_cap + 1e-12
        self._nonflat = ag > 0
        nxt = np.minimum(np.arange(T) + 1, max(T - 1, 0))
        # the session layer's hours: the fill bar opens near the close or near the open
        self._late = (self._session_minutes[nxt] <= params.no_new_exposure_minutes) | (
            since_open[nxt] < params.opening_minutes
        )
        self._new_session = np.zeros(T, dtype=bool)
        self._new_session[1:] = market.session[1:] != market.session[:-1]
        self._fresh_fill = self._new_session[nxt]  # the fill bar of row t opens a session
        self._target_inst = np.where(g > 0, LONG, np.where(g < 0, SHORT, FLAT))
        self._bits = {k: np.uint8(v) for k, v in LAYER_BITS.items()}
        # risk budget as a level: actions whose |x| ranks at or above level[t] among the
        # grid's magnitudes are over the cap (|x| > cap + 1e-12)
        mags = np.unique(ag)
        self._rank = np.searchsorted(mags, ag)
        self._n_levels = mags.size + 1
        self._risk_level = np.searchsorted(mags, self._risk_cap + 1e-12, side="right")
        # every mask input is discrete, so the layers are a lookup table: row code (late,
        # high-vol, fresh session, risk level) x account code (held, warn, tripped, young)
        self._row_code = (
            (self._late.astype(np.int64) * 2 + self._high_vol) * 2 + self._fresh_fill
        ) * self._n_levels + self._risk_level
        n_rows, n_acct = 8 * self._n_levels, 8 * params.n_actions
        self._lut: np.ndarray | None = None
        if n_rows * n_acct * params.n_actions <= 4_000_000:
            self._lut = self.mask_table()

    def _accounts(self, n: int) -> None:
        """The per-account state arrays (:data:`ACCOUNT_STATE`), all accounts flat."""
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
        self._no_exit_costs = np.zeros(n)
        self._no_exit_costs.flags.writeable = False

    # ------------------------------------------------------------------ state

    ACCOUNT_STATE = (
        "t",
        "end",
        "cash",
        "shares",
        "inst",
        "held",
        "equity",
        "peak",
        "dd",
        "entry_equity",
        "bars_held",
        "tripped",
    )
    """The per-account arrays that are the simulator's whole mutable state."""

    def get_state(self) -> dict[str, np.ndarray]:
        """A copy of every account's state (for checkpoints)."""
        return {name: getattr(self, name).copy() for name in self.ACCOUNT_STATE}

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        """Restore :meth:`get_state` of a simulator with the same number of accounts."""
        for name in self.ACCOUNT_STATE:
            current = getattr(self, name)
            value = np.asarray(state[name])
            if value.shape != current.shape:
                raise ValueError(
                    f"simulator state {name!r} has shape {value.shape}, expected {current.shape}"
                )
            setattr(self, name, value.astype(current.dtype, copy=True))

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

    def _rule_bits(
        self,
        *,
        late: np.ndarray,
        high_vol: np.ndarray,
        fresh: np.ndarray,
        level: np.ndarray,
        held: np.ndarray,
        warn: np.ndarray,
        tripped: np.ndarray,
        young: np.ndarray,
    ) -> np.ndarray:
        """The mask layers as rules over their discrete inputs, ``(M, A)`` uint8 bits.

        ``late``: the fill bar opens within ``no_new_exposure_minutes`` of the close or
        less than ``opening_minutes`` after the session's first bar;
        ``high_vol``: the highest-volatility regime is the most likely; ``fresh``: the fill
        bar opens the next session; ``level``: the risk-budget level of the row; ``held``:
        the action held; ``warn``: session drawdown >= half the limit; ``tripped``: the
        breaker tripped this session; ``young``: fewer than ``min_hold_bars`` bars held.
        """
        p = self.p
        b = self._bits
        out = np.zeros((held.shape[0], p.n_actions), dtype=np.uint8)
        new_exposure = self._new_exposure[held]
        if p.mask_session:
            out |= (late[:, None] & new_exposure) * b["session"]
        if p.mask_risk_budget:
            out |= (self._rank[None, :] >= level[:, None]) * b["risk_budget"]
        if p.mask_regime:
            out |= (high_vol[:, None] & self._regime_over[None, :]) * b["regime"]
        if p.mask_drawdown:
            # a fill at the next session's open starts a fresh drawdown and breaker
            live = ~fresh
            blocked = ((live & warn)[:, None] & new_exposure) | (
                (live & tripped)[:, None] & self._nonflat[None, :]
            )
            out |= blocked * b["drawdown"]
        if p.min_hold_bars > 0:
            out |= (young[:, None] & self._switch[held]) * b["min_hold"]
        out[:, self.flat] = 0  # flat is always allowed
        return out

    def mask_table(self) -> np.ndarray:
        """The mask layers as a lookup table ``(8 L, 8 A, A)`` uint8 (``L`` risk levels).

        Row code ``((late * 2 + high_vol) * 2 + fresh) * L + level`` (per market row:
        ``row_code``), account code ``((held * 2 + warn) * 2 + tripped) * 2 + young``; the
        entry is :meth:`_rule_bits` of those inputs. :meth:`blocked_layers` reads it when
        it is small enough; the device simulator always does.
        """
        n_rows, n_acct = 8 * self._n_levels, 8 * self.p.n_actions
        r = np.repeat(np.arange(n_rows), n_acct)
        c = np.tile(np.arange(n_acct), n_rows)
        level, rest = r % self._n_levels, r // self._n_levels
        bits = self._rule_bits(
            late=(rest // 4).astype(bool),
            high_vol=((rest // 2) % 2).astype(bool),
            fresh=(rest % 2).astype(bool),
            level=level,
            held=c // 8,
            warn=((c // 4) % 2).astype(bool),
            tripped=((c // 2) % 2).astype(bool),
            young=(c % 2).astype(bool),
        )
        return bits.reshape(n_rows, n_acct, self.p.n_actions)

    def step_arrays(self) -> dict[str, np.ndarray]:
        """The read-only arrays :meth:`step`, :meth:`observe` and the masks gather from.

        Per market row: ``open`` / ``close`` (flattened ``(T * 3,)``, index ``t * 3 +
        instrument``), ``cost_rate``, ``new_session``, ``last_bar``, ``time_to_close`` and
        ``row_code`` (the row's code in :meth:`mask_table`); per grid action:
        ``target_inst`` and ``abs_grid``. For another implementation of the same model
        (:mod:`sentio.env.torch_simulator`), so that both read identical numbers.
        """
        return {
            "open": self._open_flat,
            "close": self._close_flat,
            "cost_rate": self._cost_rate,
            "new_session": self._new_session,
            "last_bar": self.market.last_bar,
            "time_to_close": self._tclose,
            "row_code": self._row_code,
            "target_inst": self._target_inst,
            "abs_grid": self.abs_grid,
        }

    def blocked_layers(self) -> np.ndarray:
        """``(N, A)`` uint8: for each account and action, the bits of the layers blocking it."""
        p = self.p
        t = self.t
        warn = self.dd >= 0.5 * p.drawdown_limit
        young = self.bars_held < p.min_hold_bars
        if self._lut is not None:
            acct = ((self.held * 2 + warn) * 2 + self.tripped) * 2 + young
            return self._lut[self._row_code[t], acct]
        return self._rule_bits(
            late=self._late[t],
            high_vol=self._high_vol[t],
            fresh=self._fresh_fill[t],
            level=self._risk_level[t],
            held=self.held,
            warn=warn,
            tripped=self.tripped,
            young=young,
        )

    def action_masks(self) -> np.ndarray:
        """``(N, A)`` bool: the allowed actions (at least flat) at each account's row."""
        return self.blocked_layers() == 0

    # ------------------------------------------------------------------ observation

    def windows(self, rows: np.ndarray) -> np.ndarray:
        """The feature windows ``features[t-L+1 .. t]`` of the market rows ``rows``: ``(n, L, F)``
        float32, what :meth:`observe` shows an account at row ``t`` (rows from ``L - 1``)."""
        rows = np.asarray(rows, dtype=np.int64)
        L = self.p.window
        return self._windows[rows - (L - 1)].reshape(rows.shape[0], L, self.market.n_features)

    def observe(self, which: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Observations at the accounts' current rows: ``{"window": (n, L, F), "state": (n, S)}``.

        ``window`` holds ``features[t-L+1 .. t]``; ``state`` the regime probabilities at t
        followed by :data:`STATE_FEATURES`. Both float32. ``which`` selects accounts (all by
        default).
        """
        if which is None:
            t, inst, shares, eq = self.t, self.inst, self.shares, self.equity
            entry, dd, held = self.entry_equity, self.dd, self.bars_held
        else:
            t, inst, shares, eq = (
                self.t[which],
                self.inst[which],
                self.shares[which],
                self.equity[which],
            )
            entry, dd, held = self.entry_equity[which], self.dd[which], self.bars_held[which]
        n = t.shape[0]
        K = self.market.n_regimes
        window = self.windows(t)
        state = np.empty((n, K + len(STATE_FEATURES)), dtype=np.float32)
        if K:
            state[:, :K] = self.market.regime_probs[t]
        value = shares * self._close_flat[t * 3 + inst]
        state[:, K] = np.where(inst == SHORT, -value, value) / eq
        state[:, K + 1] = np.where(inst != FLAT, eq / entry - 1.0, 0.0)
        state[:, K + 2] = dd
        state[:, K + 3] = held / BARS_SCALE
        state[:, K + 4] = self._tclose[t]
        return {"window": window, "state": state}

    # ------------------------------------------------------------------ step

    def close_out(self, *, charge: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sell every account's position at the close of its current row ``t``.

        For an episode that ends with a position open (the end of a backtest block, a
        data gap): the shares are sold at ``close[t]`` with the exit-cost formula of
        :meth:`leg_costs` at row ``t`` (no costs when ``charge`` is false: equity already
        wiped out). The accounts end flat; equity, peak and drawdown are updated.

        Returns:
            ``(shares, price, costs)`` per account: the shares sold (0 when flat), the
            close they were sold at and the costs charged.
        """
        t = self.t
        price = self._close_flat[t * 3 + self.inst]
        shares = self.shares
        value = shares * price
        rate = self._cost_rate[t]
        costs = leg_costs(self.p.commission_per_share, shares, value, rate) if charge else 0.0
        costs = np.where(shares > 0, costs, 0.0)
        self.cash = self.cash + value - costs
        self.shares = np.zeros(self.n)
        self.inst = np.full(self.n, FLAT, dtype=np.int64)
        self.held = np.full(self.n, self.flat, dtype=np.int64)
        self.bars_held = np.zeros(self.n, dtype=np.int64)
        self.equity = self.cash.copy()
        self.peak = np.maximum(self.peak, self.equity)
        self.dd = 1.0 - self.equity / self.peak
        return shares, price, costs

    def step(self, actions: np.ndarray) -> StepResult:
        """Apply one action per account (grid indices) and advance every account one bar."""
        # One function on purpose (over 80 lines): it is the model's specification, steps
        # 1-7 of the module docstring in order, repeated operation for operation by the
        # other simulator; split up, the two could no longer be read side by side.
        p = self.p
        # a copy: the held actions become simulator state, never an alias of the caller's
        a = np.array(actions, dtype=np.int64).reshape(self.n)
        if a.min(initial=0) < 0 or a.max(initial=0) >= p.n_actions:
            raise ValueError(f"actions must be in [0, {p.n_actions}), got {a}")
        t = self.t
        t1 = t + 1
        base = t1 * 3  # flat index of (t+1, instrument 0) in the (T, 3) price arrays
        inst = self.inst
        shares = self.shares
        e_prev = self.equity
        change = a != self.held
        # 1. mark at the open of t+1
        old_open = self._open_flat[base + inst]
        e_open = self.cash + shares * old_open
        # 2. trade only when the action changes
        new_inst = np.where(change, self._target_inst[a], inst)
        new_open = self._open_flat[base + new_inst]
        new_shares = np.where(change, self.abs_grid[a] * e_open / new_open, shares)
        same = new_inst == inst
        diff = new_shares - shares
        sell = np.where(change, np.where(same, np.maximum(-diff, 0.0), shares), 0.0)
        buy = np.where(change, np.where(same, np.maximum(diff, 0.0), new_shares), 0.0)
        sell_value = sell * old_open
        buy_value = buy * new_open
        notional = sell_value + buy_value
        # 3. costs per leg (both legs at the open in one formula)
        rate = self._cost_rate[t]
        costs = leg_costs(p.commission_per_share, sell + buy, notional, rate)
        cash = self.cash + sell_value - buy_value - costs
        # 4. mark at the close of t+1
        close_px = self._close_flat[base + new_inst]
        value = new_shares * close_px
        e_pre = cash + value
        new_session = self._new_session[t1]
        peak = np.where(new_session, e_prev, self.peak)
        tripped = self.tripped & ~new_session
        dd_prev = np.where(new_session, 0.0, self.dd)
        # 5. forced exits at the close: breaker, flat at the close
        if p.mask_drawdown:
            trip = ~tripped & (1.0 - e_pre / np.maximum(peak, e_pre) >= p.drawdown_limit)
        else:
            trip = np.zeros(self.n, dtype=bool)
        forced = (trip | self.market.last_bar[t1]) if p.flat_at_close else trip
        exit_now = forced & (new_shares > 0)
        held_inst, held_shares = new_inst, new_shares
        held = a
        if exit_now.any():
            exit_rate = self._cost_rate[t1]
            exit_costs = np.where(
                exit_now, leg_costs(p.commission_per_share, new_shares, value, exit_rate), 0.0
            )
            cash = np.where(exit_now, cash + value - exit_costs, cash)
            notional = notional + np.where(exit_now, value, 0.0)
            costs = costs + exit_costs
            new_shares = np.where(exit_now, 0.0, new_shares)
            new_inst = np.where(exit_now, FLAT, new_inst)
            held = np.where(exit_now, self.flat, a)
        else:  # read-only zeros, shared by the steps without exits
            exit_costs = self._no_exit_costs
        equity = cash + new_shares * close_px
        peak = np.maximum(peak, equity)
        dd = 1.0 - equity / peak
        ruin = equity <= 0.0
        # 6. reward
        with np.errstate(divide="ignore", invalid="ignore"):
            reward = np.log(np.maximum(equity, 1e-300) / e_prev)
        if p.drawdown_penalty > 0:
            reward = reward - p.drawdown_penalty * np.maximum(dd - dd_prev, 0.0)
        # position bookkeeping (bars in the position: 0 while flat)
        flat_now = new_inst == FLAT
        self.bars_held = np.where(flat_now, 0, np.where(change | exit_now, 1, self.bars_held + 1))
        self.entry_equity = np.where(change & ~flat_now, e_open, self.entry_equity)
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
        if self.backtest:
            terminated = ruin
            termination = np.where(ruin, 2, 0)
        else:
            terminated = ruin | trip
            termination = np.where(ruin, 2, np.where(trip, 1, 0))
        truncated = (t1 >= self.end) & ~terminated
        sign = np.where(new_inst == SHORT, -1.0, 1.0)
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
