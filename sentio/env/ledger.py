"""The trade ledger of a backtest, built from the simulator's step legs.

A trade is one position in one ETF from its first purchase to the sale of its last share
(a round trip): resizing the same ETF keeps it open, a switch to the other ETF closes it
and opens another. :class:`TradeLedger` reads each step's legs
(:class:`~sentio.env.simulator.StepResult`: the shares sold and bought at the open, their
prices and costs, a forced exit at the close and its costs) and never re-derives fills or
costs; :meth:`TradeLedger.close_out` books the sale of a position still open when an
episode ends (:meth:`~sentio.env.simulator.BatchSimulator.close_out`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from sentio.env.market import LONG, SHORT
from sentio.env.simulator import FORCED_EXITS, StepResult

__all__ = ["EXIT_REASONS", "TRADE_SCHEMA", "TradeLedger"]

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
"""Columns of :attr:`sentio.env.backtest.BacktestResult.trades`.

* ``entry_time`` / ``exit_time``: START of the bar of the first purchase / of the final
  sale (naive UTC); ``entry_row`` / ``exit_row`` the market rows. Entries fill at the
  bar's open; ``exit_fill`` says whether the final sale was at the ``"open"`` (a policy
  action) or the ``"close"`` (forced exits, end of block, ruin) of the exit bar.
* ``instrument``: the ETF's symbol (``instruments`` given to :func:`sentio.env.backtest.backtest`, e.g.
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


class TradeLedger:
    """The trades of one account, from the legs of its steps (account 0 of each result).

    Args:
        instruments: symbols of the long and short ETF (``instrument`` column).
    """

    def __init__(self, instruments: tuple[str, str] = ("long", "short")) -> None:
        self._inst_name = {LONG: instruments[0], SHORT: instruments[1]}
        self._side_name = {LONG: "long", SHORT: "short"}
        self.trades: list[dict[str, Any]] = []
        self.open: _Trade | None = None

    def record(self, res: StepResult, block: int, row: int) -> bool:
        """Book the legs of one step into bar ``row`` (the fill bar ``t + 1``); True when a
        trade was entered in it.

        A sale at the open that leaves the instrument (flat, or a switch) closes the trade
        (``"signal"``); a purchase with no trade open opens one; a forced exit at the close
        sells every share and closes the trade with the simulator's reason.
        """
        sold, bought = float(res.sold[0]), float(res.bought[0])
        inst_before, inst = int(res.sold_inst[0]), int(res.inst[0])
        entered = False
        if sold > 0 and self.open is not None:
            self.open.sell(sold, float(res.sold_price[0]), float(res.sold_costs[0]))
            if inst != inst_before:
                self._close(row, "open", "signal")
        if bought > 0:
            if self.open is None:
                self.open = _Trade(block, inst, row)
                entered = True
            price, costs = float(res.bought_price[0]), float(res.bought_costs[0])
            self.open.buy(bought, price, costs, float(res.shares[0]))
        forced = int(res.forced_exit[0])
        if forced and self.open is not None:
            price, costs = float(res.close_price[0]), float(res.exit_costs[0])
            self.open.sell(float(res.shares[0]), price, costs)
            self._close(row, "close", FORCED_EXITS[forced])
        return entered

    def close_out(self, row: int, shares: float, price: float, costs: float, reason: str) -> None:
        """Book the sale of the open trade's ``shares`` at the close of bar ``row``."""
        if self.open is None:
            return
        self.open.sell(shares, price, costs)
        self._close(row, "close", reason)

    def _close(self, row: int, fill: str, reason: str) -> None:
        tr = self.open
        assert tr is not None
        self.trades.append(
            {
                "trade_id": len(self.trades),
                "block": tr.block,
                "instrument": self._inst_name[tr.inst],
                "side": self._side_name[tr.inst],
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
        self.open = None

    def frame(self, stamps: np.ndarray) -> pl.DataFrame:
        """The closed trades as a frame of :data:`TRADE_SCHEMA` (times from the rows)."""
        if not self.trades:
            return pl.DataFrame(schema=TRADE_SCHEMA)
        schema = {k: v for k, v in TRADE_SCHEMA.items() if not k.endswith("_time")}
        frame = pl.DataFrame(self.trades, schema=schema)
        times = {
            f"{kind}_time": pl.Series(stamps[frame[f"{kind}_row"].to_numpy()]).cast(
                pl.Datetime("us")
            )
            for kind in ("entry", "exit")
        }
        return frame.with_columns(**times).select(list(TRADE_SCHEMA))
