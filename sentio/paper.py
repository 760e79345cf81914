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
is given (resolved to the first bar at or after it). An existing ledger keeps its start:
``start`` may be omitted, and one that resolves to another bar is an error. A ledger
whose first bar is at or before ``train_end`` replays bars the model was trained on: the
summary's ``in_sample`` is true and ``sentio paper`` warns on stderr.

**Idempotence.** The path is recomputed from the start on every run (it is path
dependent: equity, the position and the masks depend on every earlier bar) and compared
with the rows already in the ledger: re-running over the same bars appends nothing and
leaves the file untouched; with more bars only the new rows are appended; bars that end
before the ledger's last row append nothing. If a recomputed row other than the ledger's
last disagrees with the ledger (the bar history was rewritten), :class:`PaperError` names
the timestamp and the column and the ledger is left as it was.

**The last row is provisional.** The ledger's last row was computed with the exchange
calendar's facts about the bar after it (:func:`sentio.live.with_next_bar`: does it open a
new session, how far is it from the close), because that bar did not exist yet. Its
:data:`PROVISIONAL` columns -- the forced exit, ``position`` / ``exposure`` / ``equity``,
``returns`` and costs after the bar, and the decision and masks at its close -- depend on
those facts, which are only known when that bar arrives. When it arrives as the calendar
said, the recomputed row is the same. If the data lacks it (e.g. the session's 15:59 bar
never arrives), the replay takes the facts from the bar that does follow and re-decides
that one bar: the ledger's last row is then replaced by the recomputed one (its
``appended_at`` is the time of the rewrite), every later row follows from it, and the
summary's ``revised`` names the row and the columns that changed (old -> new); ``sentio
paper`` prints a ``revised:`` line. The last row's own bar (timestamp, prices,
``instrument_held``, ``shares_held``, regime probabilities) is compared like every other
row: a change there is a rewritten history. Rows before the last are never revised.

**Tolerances.** Floats are compared with a relative tolerance of 1e-9 (absolute 1e-12);
the recomputation is deterministic, the tolerance only absorbs last-digit differences
between machines. The regime probabilities ``p_regime_<k>`` are float32 values (stored
as float64): a last-digit difference of the float64 filter upstream can move them by a
float32 unit in the last place (about 6e-8 relative), so they are compared with a
relative tolerance of 1e-6 (absolute 1e-7). Everything else is compared exactly.

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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from filelock import FileLock, Timeout

from sentio.env.market import MarketData
from sentio.errors import SentioError
from sentio.io import write_feather_atomic
from sentio.live import Bars, ModelBundle, load_bundle, replay
from sentio.registry import Registry
from sentio.times import Timestamp, as_utc, from_datetime64, iso_z, now_utc, to_datetime64

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
"""Tolerances of float64 columns (relative, absolute)."""
RTOL32, ATOL32 = 1e-6, 1e-7
"""Tolerances of the float32-origin columns (:data:`FLOAT32_PREFIXES`)."""
FLOAT32_PREFIXES = ("p_regime_",)
"""Ledger columns holding float32 values (compared with ``RTOL32`` / ``ATOL32``)."""
PROVISIONAL = (
    "position",
    "exposure",
    "equity",
    "returns",
    "costs",
    "costs_cash",
    "forced_exit",
    "action",
    "target_exposure",
    "target_instrument",
    "blocked_<i>",
    "mask_reasons",
)
"""Columns of the ledger's last row that the next bar's facts may revise (module docstring;
``blocked_<i>``: every mask column). Every other column is the bar's own and is compared
strictly on every row."""


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


def _provisional(col: str) -> bool:
    """Whether ``col`` of the last row depends on the bar after it (:data:`PROVISIONAL`)."""
    return col.startswith("blocked_") or col in PROVISIONAL


def _mismatch(a: pl.Series, b: pl.Series) -> np.ndarray:
    """Per row, whether ``a`` and ``b`` differ (floats within the column's tolerance)."""
    if a.dtype.is_float() and b.dtype.is_float():
        rtol, atol = (RTOL32, ATOL32) if a.name.startswith(FLOAT32_PREFIXES) else (RTOL, ATOL)
        x, y = a.to_numpy().astype(np.float64), b.to_numpy().astype(np.float64)
        return np.asarray(~np.isclose(x, y, rtol=rtol, atol=atol, equal_nan=True))
    both_null = (a.is_null() & b.is_null()).to_numpy()
    return np.asarray(~(a == b).fill_null(False).to_numpy() & ~both_null)


def _first_difference(
    old: pl.DataFrame, new: pl.DataFrame, n: int, columns: list[str] | None = None
) -> tuple[int, str, Any, Any] | None:
    """The earliest (row, column, ledger value, recomputed value) that differ in rows < n.

    Only ``columns`` (default: all of ``new``'s) are compared.
    """
    best: tuple[int, str, Any, Any] | None = None
    for col in new.columns if columns is None else columns:
        if col not in old.columns:
            return (0, col, "(absent)", new[col][0])
        a, b = old[col].head(n), new[col].head(n)
        idx = np.flatnonzero(_mismatch(a, b))
        if idx.size and (best is None or idx[0] < best[0]):
            i = int(idx[0])
            best = (i, col, a[i], b[i])
            if i == 0:
                break
    return best


def _json(value: Any) -> Any:
    """A ledger cell as a JSON-able value."""
    if isinstance(value, dt.datetime):
        return iso_z(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _revision(old: pl.DataFrame, new: pl.DataFrame, row: int) -> dict[str, Any] | None:
    """The provisional columns of ``row`` that changed: ``{"timestamp", "columns": {col:
    [old, new]}}``, or None when none did (within the tolerances)."""
    changed: dict[str, list[Any]] = {}
    for col in new.columns:
        if not _provisional(col):
            continue
        a, b = old[col].slice(row, 1), new[col].slice(row, 1)
        if _mismatch(a, b)[0]:
            changed[col] = [_json(a[0]), _json(b[0])]
    if not changed:
        return None
    return {"timestamp": iso_z(new["timestamp"][row]), "columns": changed}


def _rewritten(path: Path, col: str, when: dt.datetime, old: Any, new: Any) -> PaperError:
    return PaperError(
        f"{path}: recomputed {col!r} at {iso_z(when)} is {new!r} but the ledger has "
        f"{old!r}: the bar history was rewritten; the ledger is left unchanged "
        "(move it away to start a new one)"
    )


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
        ``instrument``), ``ruined``, ``behind`` (true when the bars end before the
        ledger's last row), ``in_sample`` (true when the ledger's first bar is at or
        before the version's ``train_end``), ``derived_symbols`` (symbols whose prices are
        derived from the underlying, not traded prices) and ``revised``: None, or the ledger's
        previous last row when this run replaced it (module docstring: the last row is
        provisional) as ``{"timestamp": ..., "columns": {column: [old, new], ...}}``.

    Raises:
        PaperError: a recomputed row other than the ledger's last, or the last row's own
            bar, differs from the ledger (names the timestamp and column; the ledger is
            untouched), the start resolves to another bar than the ledger's first, or the
            ledger is locked for longer than ``lock_timeout``.
        RegistryError, DataError: no champion, a tampered version, bad bars.
    """
    bundle = load_bundle(registry, version)
    folder = Path(root) if root is not None else default_root(registry)
    path = ledger_path(folder, bundle.version)
    frame, derived = bundle.canonical_bars(bars)
    market = bundle.market(frame)  # the slow part, outside the lock
    path.parent.mkdir(parents=True, exist_ok=True)
    with _ledger_lock(path, lock_timeout):
        existing = read_ledger(path)
        start_row, end_row = _replay_rows(bundle, market, existing, path, start, end)
        frame = replay(bundle, market, start_row, end_row).frame
        ledger, revised = _extend(path, existing, frame)
    n_old = 0 if existing is None else existing.height
    last = ledger.row(-1, named=True)
    initial = float(bundle.cfg.env.initial_cash)
    equity = float(last["equity"])
    return {
        "version": bundle.version,
        "ledger": str(path),
        "start": iso_z(ledger["timestamp"][0]),
        "last": iso_z(last["timestamp"]),
        "rows": int(ledger.height),
        "appended": max(frame.height - n_old, 0),
        "initial_equity": initial,
        "equity": equity,
        "total_return": equity / initial - 1.0 if math.isfinite(equity) else None,
        "exposure": float(last["exposure"]),
        "position": float(last["position"]),
        "action": int(last["action"]),
        "target_exposure": float(last["target_exposure"]),
        "instrument": str(last["target_instrument"]),
        "ruined": last["forced_exit"] == "ruin",
        "behind": frame.height < n_old,
        "in_sample": bundle.in_sample(ledger["timestamp"][0]),
        "derived_symbols": derived,
        "revised": revised,
    }


@contextmanager
def _ledger_lock(path: Path, timeout: float) -> Iterator[None]:
    """Hold the lock of the ledger folder (one paper-trading run at a time)."""
    lock = FileLock(str(path.parent / LOCK), timeout=timeout)
    try:
        lock.acquire()
    except Timeout:
        raise PaperError(
            f"{path}: locked by another paper-trading run for more than {timeout:g} s"
        ) from None
    try:
        yield
    finally:
        lock.release()


def _replay_rows(
    bundle: ModelBundle,
    market: MarketData,
    existing: pl.DataFrame | None,
    path: Path,
    start: Timestamp | None,
    end: Timestamp | None,
) -> tuple[int, int]:
    """The market rows the replay runs: from the ledger's first bar (or the start rule for
    a new ledger) to the last bar at or before ``end``."""
    ts = market.timestamps
    if existing is not None and existing.height:
        first: dt.datetime = existing["timestamp"][0]
        row = int(np.searchsorted(ts, to_datetime64(first)))
        if row >= market.n_rows or ts[row] != to_datetime64(first):
            raise PaperError(
                f"{path}: the bars have no bar at the ledger's start {iso_z(first)}; paper "
                "trading recomputes the path from its start: give the whole bar history"
            )
        if start is not None:  # compare the bar it resolves to, not the raw argument
            asked = ts[bundle.start_row(market, start)]
            if asked != ts[row]:
                raise PaperError(
                    f"{path}: the ledger starts at {iso_z(first)}, not at "
                    f"{iso_z(from_datetime64(asked))} (the first bar at or after start "
                    f"{start}); omit --start to continue it, or move the ledger away to "
                    "start a new one"
                )
        start_row = bundle.start_row(market, first)
    else:
        start_row = bundle.start_row(market, start)
    end_row = market.n_rows - 1
    if end is not None:
        end_row = int(np.searchsorted(ts, to_datetime64(as_utc(end, "end")), "right")) - 1
        if end_row < start_row:
            raise PaperError(f"end {end}: before the ledger's start row")
    return start_row, end_row


def _extend(
    path: Path, existing: pl.DataFrame | None, frame: pl.DataFrame
) -> tuple[pl.DataFrame, dict[str, Any] | None]:
    """Check the recomputed rows against the ledger and write what is new.

    Returns the ledger after the run and the revision of its last row (None when it was
    not replaced).
    """
    n_old = 0 if existing is None else existing.height
    revised: dict[str, Any] | None = None
    if existing is not None and n_old:
        # rows both have; the last of them is provisional in one of the two (the
        # ledger's last row, or the recomputation's when the bars are behind): its own
        # bar is compared, its provisional columns are not (module docstring)
        n = min(n_old, frame.height)
        bar_cols = [c for c in frame.columns if not _provisional(c)]
        diff = _first_difference(existing, frame, n - 1)
        if diff is None:
            own = _first_difference(existing.slice(n - 1), frame.slice(n - 1), 1, bar_cols)
            diff = None if own is None else (n - 1, *own[1:])
        if diff is not None:
            i, col, old, new = diff
            when = existing["timestamp"][i] if col == "timestamp" else frame["timestamp"][i]
            raise _rewritten(path, col, when, old, new)
        if frame.height >= n_old:
            revised = _revision(existing, frame, n_old - 1)
    keep = n_old - 1 if revised is not None else n_old
    written = frame.slice(keep)
    if not written.height:
        return (existing if existing is not None else frame), revised
    now = pl.lit(now_utc(), dtype=pl.Datetime("us", "UTC"))
    written = written.with_columns(appended_at=now)
    ledger = pl.concat([existing.head(keep), written]) if existing is not None and keep else written
    write_feather_atomic(path, ledger)
    return ledger, revised
