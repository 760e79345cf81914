"""Paper trading: a registered model acts on bars as they arrive; an idempotent per-version ledger.

:func:`paper_trade` loads a version (the champion by default, hash-verified, see
:func:`sentio.live.load_bundle`), builds the version's market from the bars given (the
whole bar history, extended as new bars land) and replays the deterministic policy
causally from the ledger's start (:func:`sentio.live.replay`: the training simulator,
fills at the next bar's open, costs, masks, forced exits). The ledger is
``<root>/<version>/ledger.feather`` (``root`` defaults to ``<paths.workdir>/paper``), one
row per bar, with the columns of :func:`sentio.live.replay_columns` plus ``appended_at``
(the UTC wall-clock time the row was written):

* ``timestamp``, the prices of the underlying and both ETFs (``open_*`` / ``close_*``);
* what was held over the bar (``instrument_held``, ``shares_held``, ``position``),
  ``exposure`` and ``equity`` at its close, ``returns``, ``costs`` / ``costs_cash``,
  ``forced_exit``;
* the decision at its close: ``action``, ``target_exposure``, ``target_instrument``, the
  regime probabilities ``p_regime_<k>`` and ``regime``, the mask bits ``blocked_<i>`` per
  action and ``mask_reasons``.

**Start.** A new ledger starts at the first bar after the version's ``train_end`` (never
in-sample; or the first bar with a full observation window if later), unless ``start``
is given. An existing ledger keeps its start: ``start`` may be omitted, and a different
one is an error.

**Idempotence.** The path is recomputed from the start on every run (it is path
dependent: equity, the position and the masks depend on every earlier bar) and compared
with the rows already in the ledger: re-running over the same bars appends nothing and
leaves the file untouched; with more bars only the new rows are appended; bars that end
before the ledger's last row append nothing. If a recomputed row disagrees with the
ledger (the bar history was rewritten), :class:`PaperError` names the timestamp and the
column and the ledger is left as it was. Floats are compared with a relative tolerance
of 1e-9 (the recomputation is deterministic; the tolerance only absorbs last-digit
differences between machines), everything else exactly.

**No end-of-block liquidation.** Unlike :func:`sentio.env.backtest.backtest`, the last row
holds the position the policy keeps: it stays open until the next bar arrives. Over the
same bars a backtest's per-bar ``position``, ``exposure``, ``equity`` and costs equal the
ledger's rows one for one, except on the block's last bar when the backtest had to sell
an open position there (``end_of_block``: exposure 0, equity less the exit cost).

Writes are atomic (temporary file + rename) and a ``filelock`` on
``<root>/<version>/.lock`` serialises concurrent runs for one version.
"""

from __future__ import annotations

import datetime as dt
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from filelock import FileLock, Timeout

from sentio.errors import SentioError
from sentio.io import write_feather_atomic
from sentio.live import Bars, Timestamp, as_utc, load_bundle, replay
from sentio.registry import Registry

__all__ = [
    "LEDGER",
    "PaperError",
    "default_root",
    "ledger_path",
    "paper_trade",
    "read_ledger",
]

LEDGER = "ledger.feather"
LOCK = ".lock"
RTOL, ATOL = 1e-9, 1e-12


class PaperError(SentioError):
    """Paper trading cannot go on: the ledger disagrees with the bars, or it is locked."""

    exit_code = 7


def default_root(registry: Registry) -> Path:
    """The paper-trading root beside the registry: ``<paths.workdir>/paper``."""
    return registry.root.parent / "paper"


def ledger_path(root: str | os.PathLike[str], version: str) -> Path:
    """The ledger of ``version`` under ``root``."""
    return Path(root) / version / LEDGER


def read_ledger(path: str | os.PathLike[str]) -> pl.DataFrame | None:
    """The ledger at ``path``, or None when there is none yet."""
    p = Path(path)
    if not p.is_file():
        return None
    try:
        return pl.read_ipc(p)
    except Exception as err:  # noqa: BLE001 - any read failure is a corrupt ledger
        raise PaperError(f"{p}: cannot read the ledger ({err})") from None


def _iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _first_difference(
    old: pl.DataFrame, new: pl.DataFrame, n: int
) -> tuple[int, str, Any, Any] | None:
    """The earliest (row, column, ledger value, recomputed value) that differ in rows < n."""
    best: tuple[int, str, Any, Any] | None = None
    for col in new.columns:
        if col not in old.columns:
            return (0, col, "(absent)", new[col][0])
        a, b = old[col].head(n), new[col].head(n)
        if a.dtype.is_float():
            x, y = a.to_numpy().astype(np.float64), b.to_numpy().astype(np.float64)
            bad = ~np.isclose(x, y, rtol=RTOL, atol=ATOL, equal_nan=True)
        else:
            bad = ~(a == b).fill_null(False).to_numpy() & ~(a.is_null() & b.is_null()).to_numpy()
        idx = np.flatnonzero(bad)
        if idx.size and (best is None or idx[0] < best[0]):
            i = int(idx[0])
            best = (i, col, a[i], b[i])
            if i == 0:
                break
    return best


def paper_trade(
    registry: Registry,
    bars: Bars,
    *,
    version: str | None = None,
    start: Timestamp | None = None,
    end: Timestamp | None = None,
    root: str | os.PathLike[str] | None = None,
    lock_timeout: float = 60.0,
) -> dict[str, Any]:
    """Feed ``bars`` through ``version`` (None: the champion) and extend its ledger.

    Args:
        registry: where the version lives (its files are hash-verified before use).
        bars: canonical bars (a frame) or bar file(s), ingested like ``sentio run``; the
            whole history (the ledger's start and everything since), not just new bars.
        version: version id; None uses the champion.
        start: first bar of a new ledger (default: the first bar after the version's
            ``train_end``); must match an existing ledger's start.
        end: ignore bars after this time (replays of history).
        root: the paper-trading root (default ``<paths.workdir>/paper``).
        lock_timeout: seconds to wait for another run on the same ledger.

    Returns:
        A JSON-able summary: ``version``, ``ledger``, ``start``, ``last`` (timestamps),
        ``rows``, ``appended``, ``initial_equity``, ``equity``, ``total_return``,
        ``exposure``, ``position``, the last decision (``action``, ``target_exposure``,
        ``instrument``), ``ruined`` and ``behind`` (true when the bars end before the
        ledger's last row).

    Raises:
        PaperError: a recomputed row differs from the ledger (names the timestamp and
            column; the ledger is untouched), the start differs from the ledger's, or the
            ledger is locked for longer than ``lock_timeout``.
        RegistryError, DataError: no champion, a tampered version, bad bars.
    """
    bundle = load_bundle(registry, version)
    folder = Path(root) if root is not None else default_root(registry)
    path = ledger_path(folder, bundle.version)
    market = bundle.market(bars)  # the slow part, outside the lock
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path.parent / LOCK), timeout=lock_timeout)
    try:
        lock.acquire()
    except Timeout:
        raise PaperError(
            f"{path}: locked by another paper-trading run for more than {lock_timeout:g} s"
        ) from None
    try:
        existing = read_ledger(path)
        ts = market.timestamps
        if existing is not None and existing.height:
            first: dt.datetime = existing["timestamp"][0]
            if start is not None and as_utc(start, "start") != first:
                raise PaperError(
                    f"{path}: the ledger starts at {_iso(first)}, not at "
                    f"{_iso(as_utc(start, 'start'))}; omit --start to continue it, or move the "
                    "ledger away to start a new one"
                )
            row = int(np.searchsorted(ts, np.datetime64(first.replace(tzinfo=None), "us")))
            if row >= market.n_rows or ts[row] != np.datetime64(first.replace(tzinfo=None), "us"):
                raise PaperError(
                    f"{path}: the bars have no bar at the ledger's start {_iso(first)}; paper "
                    "trading recomputes the path from its start: give the whole bar history"
                )
            start_row = bundle.start_row(market, first)
        else:
            start_row = bundle.start_row(market, start)
        end_row = market.n_rows - 1
        if end is not None:
            t_end = np.datetime64(as_utc(end, "end").replace(tzinfo=None), "us")
            end_row = int(np.searchsorted(ts, t_end, "right")) - 1
            if end_row < start_row:
                raise PaperError(f"end {end}: before the ledger's start row")
        frame = replay(bundle, market, start_row, end_row).frame
        ruined = bool(frame["forced_exit"][-1] == "ruin")
        n_old = 0 if existing is None else existing.height
        if existing is not None and n_old:
            n = min(n_old, frame.height)
            diff = _first_difference(existing, frame, n)
            if diff is not None:
                i, col, old, new = diff
                when = existing["timestamp"][i] if col == "timestamp" else frame["timestamp"][i]
                raise PaperError(
                    f"{path}: recomputed {col!r} at {_iso(when)} is {new!r} but the ledger has "
                    f"{old!r}: the bar history was rewritten; the ledger is left unchanged "
                    "(move it away to start a new one)"
                )
        fresh = frame.slice(n_old)
        if fresh.height:
            now = dt.datetime.now(dt.UTC)
            fresh = fresh.with_columns(appended_at=pl.lit(now, dtype=pl.Datetime("us", "UTC")))
            ledger = fresh if existing is None or not n_old else pl.concat([existing, fresh])
            write_feather_atomic(path, ledger)
        else:
            ledger = existing if existing is not None else frame
    finally:
        lock.release()

    last = ledger.row(-1, named=True)
    initial = float(bundle.cfg.env.initial_cash)
    equity = float(last["equity"])
    return {
        "version": bundle.version,
        "ledger": str(path),
        "start": _iso(ledger["timestamp"][0]),
        "last": _iso(last["timestamp"]),
        "rows": int(ledger.height),
        "appended": int(fresh.height),
        "initial_equity": initial,
        "equity": equity,
        "total_return": equity / initial - 1.0 if math.isfinite(equity) else None,
        "exposure": float(last["exposure"]),
        "position": float(last["position"]),
        "action": int(last["action"]),
        "target_exposure": float(last["target_exposure"]),
        "instrument": str(last["target_instrument"]),
        "ruined": ruined,
        "behind": frame.height < n_old,
    }
