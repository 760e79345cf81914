"""One trading account as a ``gymnasium.Env``: the trading model of :mod:`.simulator` in scalars.

:class:`TradingEnv` is a second, independent implementation of exactly the trading model
that :class:`~sentio.env.simulator.BatchSimulator` runs for N accounts with array
operations (the simulator's module docstring is the specification). It keeps one account
in plain Python floats and spells every step out in order, so that it reads like the
specification and can serve as the reference the batched simulator is checked against:

1. mark at the open of bar t+1, 2. trade when the action changes (per-leg costs),
3. mark at the close of bar t+1, 4. forced exits at that close (``flat_at_close`` on the
session's last bar, the drawdown circuit breaker), 5. reward, 6. flags.

It is also a regular single environment for stable-baselines3 (``DummyVecEnv``) and
sb3-contrib's ``MaskablePPO``, which reads :meth:`TradingEnv.action_masks`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.utils import seeding

from sentio.env.episodes import candidate_episodes, sample_episodes
from sentio.env.market import LONG, SHORT, UNDERLYING, MarketData
from sentio.env.simulator import EnvParams
from sentio.env.vec_env import observation_space

__all__ = ["Account", "TradingEnv"]

FLAT = UNDERLYING
"""Instrument code of "no position" (the underlying column is never traded)."""
BARS_SCALE = 390.0
"""Bars in a regular session: scale of ``bars_in_position`` and ``time_to_close``."""
EPS = 1e-12
"""Tolerance of the exposure comparisons of the masks."""

Obs = dict[str, np.ndarray]


@dataclass
class Account:
    """The state of one account at the close of its current row ``t``.

    Attributes:
        t: current row (the agent has seen the close of bar t).
        end: last row of the episode (the time limit).
        cash: cash, negative when costs exceed the cash left after a full purchase.
        shares: shares of ``instrument`` held (never negative: both ETFs are bought).
        instrument: ``0`` flat, ``1`` long ETF, ``2`` short ETF (columns of the prices).
        action: grid index of the position held (the flat index after a forced exit).
        equity: ``cash + shares * close[t, instrument]``.
        peak: highest close equity of the session so far (from the previous close on).
        drawdown: session drawdown ``1 - equity / peak``.
        entry_equity: equity at the open where the position was last entered or resized.
        bars_held: bars since the position last changed (see the simulator).
        tripped: the circuit breaker tripped in this session.
    """

    t: int
    end: int
    cash: float
    shares: float
    instrument: int
    action: int
    equity: float
    peak: float
    drawdown: float
    entry_equity: float
    bars_held: int
    tripped: bool


class TradingEnv(gym.Env[dict[str, Any], np.int64]):
    """One account trading the long / short leveraged ETF on the rows of a :class:`MarketData`.

    Args:
        market: the aligned arrays of one fold.
        params: the trading model (:meth:`EnvParams.from_config`).
        ranges: the fold's training ranges as half-open market-row ranges ``[a, b)``;
            :meth:`reset` samples episodes uniformly from
            :func:`~sentio.env.episodes.candidate_episodes` of these ranges.
        seed: seed of the episode sampler (``numpy.random.default_rng(seed)``, the same
            stream as :class:`~sentio.env.vec_env.SentioVecEnv` with one account).
        backtest: the circuit breaker keeps the episode alive (flat for the rest of the
            session) instead of terminating it.

    Observations are ``{"window": (L, F), "state": (K + 5,)}`` float32, the values of
    :meth:`BatchSimulator.observe`. Actions are indices into ``params.grid``. The ``info``
    of :meth:`step` holds ``equity``, ``exposure`` (at the close), ``costs``,
    ``traded_notional``, ``termination`` (``None``, ``"circuit_breaker"`` or ``"ruin"``),
    ``forced_exit`` (``None``, ``"close"`` or ``"circuit_breaker"``), ``action`` (the
    grid index executed at the open), ``fill_exposure`` (signed exposure right after the
    fill, before any forced exit), ``cash``, ``shares``, ``instrument`` and ``row``.
    """

    metadata: dict[str, Any] = {"render_modes": []}
    render_mode = None

    def __init__(
        self,
        market: MarketData,
        params: EnvParams,
        ranges: Sequence[tuple[int, int]],
        seed: int | None = None,
        backtest: bool = False,
    ) -> None:
        super().__init__()
        self.market = market
        self.params = params
        self.backtest = backtest
        self.grid: list[float] = [float(x) for x in params.grid]
        self.flat = params.flat_action
        self.starts, self.ends = candidate_episodes(
            market, ranges, window=params.window, episode_sessions=params.episode_sessions
        )
        self.observation_space = observation_space(market, params)
        self.action_space = spaces.Discrete(params.n_actions)
        if seed is not None:
            self._np_random, self._np_random_seed = seeding.np_random(seed)
        # intraday bars carry minutes to the close; daily bars have 0 everywhere
        self._daily = not bool((market.minutes_to_close > 0).any())
        self._since_open = market.minutes_since_open()
        self.account: Account | None = None
        self._done = False

    # ------------------------------------------------------------------ episodes

    def reset(
        self, *, seed: int | None = None, options: Mapping[str, Any] | None = None
    ) -> tuple[Obs, dict[str, Any]]:
        """Start a new episode, flat, and return its first observation.

        Args:
            seed: reseeds the episode sampler.
            options: ``{"start": row, "end": row}`` forces the episode's rows
                (``window - 1 <= start < end < T``) instead of sampling one;
                ``{"equity": x}`` starts with ``x`` instead of ``params.initial_cash``.
        """
        super().reset(seed=seed)
        options = dict(options or {})
        if ("start" in options) != ("end" in options):
            raise ValueError("options must give both 'start' and 'end' (or neither)")
        if "start" in options:
            start, end = int(options["start"]), int(options["end"])
        else:
            s, e = sample_episodes(self.starts, self.ends, 1, self.np_random)
            start, end = int(s[0]), int(e[0])
        if not (self.params.window - 1 <= start < end < self.market.n_rows):
            raise ValueError(
                f"episode rows must satisfy window-1 <= start < end < {self.market.n_rows}, "
                f"got start={start}, end={end}"
            )
        equity = float(options.get("equity", self.params.initial_cash))
        if not equity > 0:
            raise ValueError(f"initial equity must be positive, got {equity}")
        self.account = Account(
            t=start,
            end=end,
            cash=equity,
            shares=0.0,
            instrument=FLAT,
            action=self.flat,
            equity=equity,
            peak=equity,
            drawdown=0.0,
            entry_equity=equity,
            bars_held=0,
            tripped=False,
        )
        self._done = False
        return self.observe(), {"row": start, "end": end, "equity": equity}

    def _acct(self) -> Account:
        if self.account is None:
            raise RuntimeError("call reset() before using the environment")
        return self.account

    # ------------------------------------------------------------------ masks

    def _risk_cap(self, t: int) -> float:
        """Largest ``|x|`` the risk budget allows at row t (inf when the volatility is 0)."""
        p = self.params
        vol = float(self.market.vol[t])
        if vol <= 0.0:
            return math.inf
        return p.target_vol_annual / (p.leverage * vol * math.sqrt(self.market.periods_per_year))

    def _high_vol(self, t: int) -> bool:
        """The highest-volatility regime is the most likely one at row t."""
        k = self.market.n_regimes
        return k > 0 and int(np.argmax(self.market.regime_probs[t])) == k - 1

    def _fill_bar_is_late(self, t: int) -> bool:
        """The fill bar t+1 opens within ``no_new_exposure_minutes`` of its session's close
        or less than ``opening_minutes`` after its session's first bar."""
        if self._daily:
            return False
        row = min(t + 1, self.market.n_rows - 1)
        p = self.params
        return (
            float(self.market.minutes_to_close[row]) <= p.no_new_exposure_minutes
            or float(self._since_open[row]) < p.opening_minutes
        )

    def _next_session(self, t: int) -> bool:
        """Whether the fill bar of a decision at row ``t`` starts a new session."""
        row = min(t + 1, self.market.n_rows - 1)
        return bool(self.market.session[row] != self.market.session[t])

    def blocking_layers(self, action: int) -> list[str]:
        """The mask layers that block ``action`` at the current row (empty: allowed)."""
        acct = self._acct()
        p = self.params
        x = self.grid[action]
        if action == self.flat:
            return []  # flat is always allowed
        cur = self.grid[acct.action]
        new_exposure = (
            math.copysign(1.0, x) != (math.copysign(1.0, cur) if cur != 0 else 0.0)
            or abs(x) > abs(cur) + EPS
        )
        layers: list[str] = []
        if p.mask_session and new_exposure and self._fill_bar_is_late(acct.t):
            layers.append("session")
        if p.mask_risk_budget and abs(x) > self._risk_cap(acct.t) + EPS:
            layers.append("risk_budget")
        if p.mask_regime and self._high_vol(acct.t) and abs(x) > p.high_vol_regime_cap + EPS:
            layers.append("regime")
        # the fill bar of a session's last decision opens the next session, where the
        # drawdown and the breaker start afresh
        fresh = self._next_session(acct.t)
        if (
            p.mask_drawdown
            and not fresh
            and (acct.tripped or (new_exposure and acct.drawdown >= 0.5 * p.drawdown_limit))
        ):
            layers.append("drawdown")
        if p.min_hold_bars > 0 and cur != 0 and acct.bars_held < p.min_hold_bars and x != cur:
            layers.append("min_hold")
        return layers

    def action_masks(self) -> np.ndarray:
        """``(A,)`` bool: the actions allowed at the current row (flat always is)."""
        return np.array([not self.blocking_layers(a) for a in range(len(self.grid))], dtype=bool)

    def mask_reasons(self) -> dict[float, list[str]]:
        """Each blocked action's exposure and the names of the layers that block it."""
        out: dict[float, list[str]] = {}
        for a, x in enumerate(self.grid):
            layers = self.blocking_layers(a)
            if layers:
                out[x] = layers
        return out

    # ------------------------------------------------------------------ observation

    def observe(self) -> Obs:
        """The observation at the current row: the feature window and the portfolio state."""
        acct = self._acct()
        m, t, L = self.market, acct.t, self.params.window
        window = np.array(m.features[t - L + 1 : t + 1], dtype=np.float32)
        if acct.instrument == FLAT:
            exposure, unrealised = 0.0, 0.0
        else:
            value = acct.shares * float(m.close[t, acct.instrument])
            sign = -1.0 if acct.instrument == SHORT else 1.0
            exposure = sign * value / acct.equity
            unrealised = acct.equity / acct.entry_equity - 1.0
        if self._daily:
            time_to_close = 1.0
        else:
            time_to_close = min(float(m.minutes_to_close[t]), BARS_SCALE) / BARS_SCALE
        portfolio = [exposure, unrealised, acct.drawdown, acct.bars_held / BARS_SCALE]
        state = np.array([*m.regime_probs[t].tolist(), *portfolio, time_to_close], dtype=np.float32)
        return {"window": window, "state": state}

    # ------------------------------------------------------------------ step

    def _leg_cost(self, shares: float, price: float, vol: float) -> float:
        """Cost of trading ``shares`` at ``price``: commission, half spread and slippage."""
        p = self.params
        rate = p.half_spread + p.slippage_vol_mult * p.leverage * vol
        return p.commission_per_share * shares + rate * shares * price

    def _fill_at_open(self, acct: Account, a: int) -> tuple[float, float, float, int, float, float]:
        """Steps 1-2: mark at the open of bar t+1 and, when the action changes, trade there.

        Returns the equity at the open, then cash, shares and instrument after the fill,
        and the costs and traded notional of its legs (every leg pays costs).
        """
        m, t1 = self.market, acct.t + 1
        vol_t = float(m.vol[acct.t])

        def open_px(inst: int) -> float:
            return float(m.open[t1, inst])

        cash, shares, inst = acct.cash, acct.shares, acct.instrument
        e_open = cash + (shares * open_px(inst) if inst != FLAT else 0.0)
        costs = 0.0
        notional = 0.0
        if a != acct.action:
            x = self.grid[a]
            new_inst = LONG if x > 0 else SHORT if x < 0 else FLAT
            new_shares = abs(x) * e_open / open_px(new_inst) if new_inst != FLAT else 0.0
            legs: list[tuple[int, float]] = []  # (instrument, signed shares bought)
            if new_inst == inst:
                legs.append((inst, new_shares - shares))  # resize the same ETF
            else:
                if inst != FLAT and shares > 0:
                    legs.append((inst, -shares))  # sell all of the old ETF
                if new_inst != FLAT:
                    legs.append((new_inst, new_shares))  # buy the new one
            for leg_inst, qty in legs:
                if qty == 0:
                    continue
                px = open_px(leg_inst)
                cost = self._leg_cost(abs(qty), px, vol_t)
                cash += -qty * px - cost
                costs += cost
                notional += abs(qty) * px
            shares, inst = new_shares, new_inst
        return e_open, cash, shares, inst, costs, notional

    def _forced_exit(
        self, t1: int, shares: float, equity: float, peak: float, tripped: bool
    ) -> tuple[bool, str | None]:
        """Step 4: whether the circuit breaker trips at the close of ``t1`` and the reason
        of a forced exit there (breaker, flat at the session's close), if any."""
        p = self.params
        trip = False
        if p.mask_drawdown and not tripped:
            trip = 1.0 - equity / max(peak, equity) >= p.drawdown_limit
        if shares > 0 and trip:
            return trip, "circuit_breaker"
        if shares > 0 and p.flat_at_close and bool(self.market.last_bar[t1]):
            return trip, "close"
        return trip, None

    def _termination(self, equity: float, trip: bool) -> str | None:
        """Why the episode terminates after this step (ruin, circuit breaker), if it does."""
        if equity <= 0.0:
            return "ruin"
        if trip and not self.backtest:
            return "circuit_breaker"
        return None

    def _step_info(
        self,
        new: Account,
        costs: float,
        notional: float,
        termination: str | None,
        forced_exit: str | None,
        action: int,
        fill_exposure: float,
    ) -> dict[str, Any]:
        """The ``info`` of a step that ended in account ``new`` (see the class docstring)."""
        inst, shares, equity = new.instrument, new.shares, new.equity
        exposure = 0.0
        if inst != FLAT and equity > 0:
            price = float(self.market.close[new.t, inst])
            exposure = (-1.0 if inst == SHORT else 1.0) * shares * price / equity
        return {
            "equity": equity,
            "exposure": exposure,
            "costs": costs,
            "traded_notional": notional,
            "termination": termination,
            "forced_exit": forced_exit,
            "action": action,
            "fill_exposure": fill_exposure,
            "cash": new.cash,
            "shares": shares,
            "instrument": inst,
            "row": new.t,
        }

    def step(self, action: Any) -> tuple[Obs, SupportsFloat, bool, bool, dict[str, Any]]:
        """Decide at the close of bar t, fill at the open of t+1, end at the close of t+1."""
        acct = self._acct()
        if self._done:
            raise RuntimeError("the episode has ended; call reset()")
        a = int(np.asarray(action).item())
        if not 0 <= a < len(self.grid):
            raise ValueError(f"action must be in [0, {len(self.grid)}), got {action!r}")
        m, p = self.market, self.params
        t = acct.t
        t1 = t + 1
        e_prev = acct.equity

        def close_px(inst: int) -> float:
            return float(m.close[t1, inst])

        # 1.-2. mark at the open of bar t+1; trade only when the action changes
        changed = a != acct.action
        e_open, cash, shares, inst, costs, notional = self._fill_at_open(acct, a)
        fill_value = shares * float(m.open[t1, inst]) if inst != FLAT else 0.0
        fill_exposure = (-1.0 if inst == SHORT else 1.0) * fill_value / e_open

        # 3. mark at the close of bar t+1
        equity = cash + (shares * close_px(inst) if inst != FLAT else 0.0)

        # session bookkeeping: a new session restarts the peak from the previous close
        if m.session[t1] != m.session[t]:
            peak, tripped, dd_prev = e_prev, False, 0.0
        else:
            peak, tripped, dd_prev = acct.peak, acct.tripped, acct.drawdown

        # 4. forced exits at the close: circuit breaker, flat at the session's close
        trip, forced_exit = self._forced_exit(t1, shares, equity, peak, tripped)
        held = a
        if forced_exit is not None:
            px = close_px(inst)
            cost = self._leg_cost(shares, px, float(m.vol[t1]))
            cash += shares * px - cost
            costs += cost
            notional += shares * px
            shares, inst, held = 0.0, FLAT, self.flat
            equity = cash
        peak = max(peak, equity)
        drawdown = 1.0 - equity / peak

        # 5. reward: log return of equity net of costs, minus the drawdown penalty
        reward = math.log(max(equity, 1e-300) / e_prev)
        if p.drawdown_penalty > 0:
            reward -= p.drawdown_penalty * max(drawdown - dd_prev, 0.0)

        # position bookkeeping
        if changed or forced_exit is not None:
            bars_held = 0 if inst == FLAT else 1
        else:
            bars_held = 0 if inst == FLAT else acct.bars_held + 1
        entry_equity = e_open if changed and inst != FLAT else acct.entry_equity
        self.account = Account(
            t=t1,
            end=acct.end,
            cash=cash,
            shares=shares,
            instrument=inst,
            action=held,
            equity=equity,
            peak=peak,
            drawdown=drawdown,
            entry_equity=entry_equity,
            bars_held=bars_held,
            tripped=tripped or trip,
        )

        # 6. flags
        termination = self._termination(equity, trip)
        terminated = termination is not None
        truncated = t1 >= acct.end and not terminated
        self._done = terminated or truncated
        info = self._step_info(
            self.account, costs, notional, termination, forced_exit, a, fill_exposure
        )
        return self.observe(), reward, terminated, truncated, info
