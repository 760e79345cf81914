"""Paper trading: a registered model acts on bars as they arrive; an idempotent per-version ledger.

:func:`paper_trade` loads a version (the champion by default, hash-verified, see
:func:`sentio.live.load_bundle`) and replays the deterministic policy causally from the
ledger's start (:func:`sentio.live.replay`: the training simulator, fills at the next
bar's open, costs, masks, forced exits) over the version's market. It does not redo that
replay on every run: a state kept beside the ledger lets a run process only the bars that
arrived since the last one (**Incremental runs** below); the full recomputation from the
start stays, as the fallback and on request (``verify``). The ledger is
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

**Idempotence.** The path is path dependent (equity, the position and the masks depend on
every earlier bar); a run recomputes rows and compares them with the rows already in the
ledger: re-running over the same bars appends nothing and leaves the file untouched; with
more bars only the new rows are appended; bars that end before the ledger's last row
append nothing. If a recomputed row other than the ledger's last disagrees with the
ledger, or a bar given differs from the one processed before (the bar history was
rewritten), :class:`LedgerMismatch` (a :class:`PaperError`) names the timestamp and the
column and the ledger is left as it was.

**Incremental runs.** Beside the ledger, ``<root>/<version>/state/``
(:mod:`sentio.live_state`) keeps the canonical bars processed so far, the simulator's
account state at the close of the ledger's row ``n - 3`` (before its decision), the last
market rows computed and a guard of the ledger file. A run with a usable state:

* takes from the bars given only those after the last stored bar (the bars given may be
  the whole history, as before, or only the new bars); every bar given that the stored
  bars also have must agree with it (else :class:`LedgerMismatch`): the stored chunks the
  bars given cover entirely are compared by a content digest kept with each chunk, the
  others and those whose digests differ row by row; bars given before the first stored
  bar are not used (the ledger's bar history starts there); series the ingest derived
  from the underlying (a daily-reset ETF depends on every session since the first) are
  derived over the stored sessions' closes plus the new bars, as over the stored history
  extended by them, whatever the bars given start with;
* refuses new bars that start after one or more exchange sessions (the version's
  ``universe.calendar``) the stored bars lack, when the bars given do not reach back to
  the stored last bar (a run missed, the data file overwritten since): a
  :class:`PaperError` names the sessions and asks for the bars from the ledger's last
  session on, and nothing is written; with bars that reach back, a session missing from
  the data itself is accepted, as the full path accepts it;
* builds the market over a bounded tail of the stored bars plus the new ones
  (:func:`sentio.live_state.tail_start`: a fixed number of bars before the rows it reads,
  on the features' exact-recomputation period; ``tail_rows`` overrides the length), so
  its cost does not grow with the ledger;
* checks that tail against the market rows the previous run kept (the *convergence
  guard*: features, prices and calendar facts bit for bit, volatility and regime
  probabilities within the tolerances below); on a difference it logs a warning and
  recomputes from the start (from the stored bars plus the new ones);
* resumes the replay from the stored account state at the ledger's row ``n - 3``: the
  rows ``n - 2`` (final) and ``n - 1`` (provisional) are produced again and compared with
  the ledger exactly as a full recomputation's rows are, then the new rows follow;
* writes the state's files (the bars it processed among them), then the ledger to a
  temporary file, then the new state as ``next.json`` with the guard of that file (row
  count, size, sha256, first and last timestamp), then renames the ledger into place,
  then ``next.json`` onto ``state.json`` (:mod:`sentio.live_state`, "Writing"). A run
  stopped before the ledger's rename leaves the old ledger and its state; one stopped
  after it leaves a ``next.json`` that the next run adopts, since its guard matches the
  ledger, and continues from. A ledger whose guard does not match (edited, even with its
  size and modification time kept; replaced) makes the state stale.

The full recomputation runs instead -- and rewrites the state -- for a new ledger, with
``verify`` (recompute from the ledger's start and compare, and on agreement rewrite the
state), with ``end`` (a replay of history; the state is left alone), with a ``start``
that does not resolve to the ledger's first bar (the first bar at or after it in the
ledger's bar history: a date such as ``2024-03-01`` that resolves to the ledger's first
bar continues it), for a ledger of fewer than :data:`MIN_STATE_ROWS` rows or a ruined
one, when there is no state, when it is stale (the ledger was edited, replaced or
written without it) or of another model configuration, when the symbols derived from the
underlying changed, and when the convergence guard fails. The summary says which path ran
(``mode``: ``"incremental"``, ``"full"`` or ``"verify"``; ``reason``) and how much it did
(``replayed``, ``market_rows``). With a state of the version and configuration beside the
ledger (stale or not) the full path recomputes over the ledger's bar history: the bars
given from the first stored bar on, preceded by the stored bars when the bars given
start later (then ledger rows that are in neither -- a run stopped between its ledger and
its state, ``next.json`` lost -- are a :class:`PaperError` naming the rows and the
sessions to give, and new bars that skip a session are refused as above), with the series
derived from the underlying derived over the whole. Without a usable state the bars given
must hold the ledger's start. Delete ``state/`` (or pass ``verify``) to force a full
recomputation.

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

**Signals.** :func:`signal` is :func:`sentio.live.signal` through the same machinery: its
replay is kept as a ledger with a state under ``<paths.workdir>/signal/<version>/`` (a
cache: rebuilt from the bars given when they disagree with it), so a signal over a history
that grew by a day replays that day; its JSON is the stateless signal's. When that folder
cannot be written (a read-only working directory), the signal is the stateless one.

Writes are atomic (temporary file + rename) and a ``filelock`` on
``<root>/<version>/.lock`` serialises concurrent runs for one version (the state is read
and written under it); a run that waits longer than its timeout is a :class:`PaperError`
("locked by another paper-trading run", or "another signal").
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import errno
import logging
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
from sentio.io import atomic_path
from sentio.live import (
    Bars,
    CanonicalBars,
    ModelBundle,
    Replay,
    last_bar_given,
    load_bundle,
    replay,
    signal_of_row,
)
from sentio.live import signal as stateless_signal
from sentio.live_state import (
    GUARD_ROWS,
    LedgerGuard,
    Staged,
    State,
    bars_digest,
    default_tail_rows,
    guard_mismatch,
    ledger_guard,
    market_rows,
    resync_period,
    tail_start,
)
from sentio.registry import Registry
from sentio.times import Timestamp, as_utc, from_datetime64, iso_z, now_utc, to_datetime64

__all__ = [
    "LEDGER",
    "MIN_STATE_ROWS",
    "LedgerMismatch",
    "PaperError",
    "default_root",
    "ledger_path",
    "paper_trade",
    "read_ledger",
    "signal",
    "signal_root",
    "trade",
]

log = logging.getLogger(__name__)

LEDGER = "ledger.feather"
LOCK = ".lock"
SIGNAL_DIR = "signal"
"""Folder of :func:`signal`'s ledgers under ``paths.workdir`` (beside ``paper``)."""
MIN_STATE_ROWS = 4
"""A ledger continues from its state once it has this many rows (the resume point is its
row ``n - 3``; the row after it is compared as a final row)."""
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


MAX_MISSING_BARS = 5
"""Intraday bars that may lack between a ledger's stored bars and the new bars given
(a vendor without a session's last minute); more is refused (:meth:`_Run.check_sessions`)."""

STATE_READ_ERRORS: tuple[type[Exception], ...] = (
    pl.exceptions.PolarsError,
    OSError,
    KeyError,
    ValueError,
    TypeError,
    IndexError,
)
"""What reading a damaged state raises: the run goes on without it (the full path)."""


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
        raise LedgerMismatch(f"{p}: cannot read the ledger ({err})") from None


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
    return LedgerMismatch(
        f"{path}: recomputed {col!r} at {iso_z(when)} is {new!r} but the ledger has "
        f"{old!r}: the bar history was rewritten, or the ledger was written by a Sentio "
        "that computed it differently; the ledger is left unchanged (move it away to start "
        "a new one)"
    )


class LedgerMismatch(PaperError):
    """The ledger disagrees with the bars or the request: a rewritten bar history, another
    start, an unreadable ledger. (A signal's ledger is a cache: :func:`signal` rebuilds it.)"""


def _utc_stamp(frame: pl.DataFrame, which: str) -> dt.datetime:
    value = frame["timestamp"].min() if which == "first" else frame["timestamp"].max()
    assert isinstance(value, dt.datetime)
    return value


# --------------------------------------------------------------------------- one run


@dataclasses.dataclass(frozen=True)
class _Outcome:
    """What a run did to the ledger."""

    ledger: pl.DataFrame
    revised: dict[str, Any] | None
    appended: int
    behind: bool
    replayed: int
    market_rows: int
    derived: list[str]


class _Run:
    """One run on one ledger, under its lock: the mode, the incremental and the full path."""

    def __init__(
        self,
        bundle: ModelBundle,
        path: Path,
        got: CanonicalBars,
        start: Timestamp | None,
        end: Timestamp | None,
        tail_rows: int | None,
    ) -> None:
        self.bundle = bundle
        self.path = path
        self.got = got
        self.start = start
        self.end = end
        self.tail_rows = tail_rows
        self.existing = read_ledger(path)
        self._guard: LedgerGuard | None = None
        if self.existing is not None and self.existing.height:
            # a run that stopped after renaming its ledger into place left its state as
            # next.json (sentio.live_state, "Writing"): adopt it when it is this ledger's
            State.recover(path.parent, self.guard)
        self.state, self.no_state = State.load(path.parent)
        self.writing = False
        """Set when :meth:`write` starts: an error after it is not a damaged state's."""
        self.config_hash = bundle.cfg.hash()
        self.universe = bundle.cfg.universe
        self.window = bundle.params().window

    def guard(self) -> LedgerGuard:
        """The guard of the ledger as read at the start of the run (computed once)."""
        if self._guard is None:
            assert self.existing is not None
            self._guard = ledger_guard(self.path, self.existing)
        return self._guard

    # ------------------------------------------------------------------ the mode

    def incremental_refused(self, verify: bool) -> str | None:
        """Why this run must recompute from the ledger's start (None: it may continue)."""
        ex, st = self.existing, self.state
        if verify:
            return "verification requested"
        if ex is None or ex.height == 0:
            return "a new ledger"
        if self.end is not None:
            return "end given (a replay of history)"
        if ex.height < MIN_STATE_ROWS:
            return f"a ledger of fewer than {MIN_STATE_ROWS} rows"
        if ex["forced_exit"][-1] == "ruin":
            return "a ruined ledger"
        if st is None:
            return self.no_state
        stale = st.stale(self.bundle.version, self.config_hash, self.guard())
        if stale is not None:
            return stale
        if st.resume_at != ex["timestamp"][ex.height - 3]:
            return "the state's resume point is not the ledger's third row from the end"
        if sorted(self.got.derived_here) != st.derived_here:
            return (
                f"the symbols derived from the underlying changed ({st.derived_here} -> "
                f"{sorted(self.got.derived_here)})"
            )
        if self.start is not None and not _start_is_first(
            self.start, ex["timestamp"][0], st, self.got.frame, self.universe.underlying
        ):
            return "start given that is not the ledger's first bar (checked by the full path)"
        return None

    # ------------------------------------------------------------------ incremental

    def incremental(self) -> _Outcome | str:
        """Continue from the state: only the bars after the stored ones; the market over a
        tail of the stored bars; the replay from the ledger's row ``n - 3``. A string says
        why the full path must run instead (the convergence guard, a state that does not fit
        the ledger)."""
        b, st, ex = self.bundle, self.state, self.existing
        assert st is not None and ex is not None
        n = ex.height
        symbol = self.universe.underlying
        given = self.got.frame
        derived = sorted(set(st.derived) | set(self.got.derived))
        try:
            u_resume = st.underlying_row(st.resume_at, symbol)
        except KeyError as err:
            return f"the state's bars lack its resume point ({err})"
        _check_overlap(self.path, st, given, self.bundle)
        if _utc_stamp(given, "last") < ex["timestamp"][-1]:
            return _Outcome(ex, None, 0, True, 0, 0, derived)
        new = given.filter(pl.col("timestamp") > st.last)
        if new.height == 0:
            return _Outcome(ex, None, 0, False, 0, 0, derived)
        self.check_sessions(st.last, _utc_stamp(given, "first"), _utc_stamp(new, "first"))
        new = self.complete_new(new)
        rows = self.tail_rows if self.tail_rows is not None else st.tail_rows
        # the rows a resumed replay reads and the market rows the previous run kept (the
        # guard compares them) must lie past the tail's convergence
        first_read = u_resume - (self.window - 1) - GUARD_ROWS
        tail = st.read_from(tail_start(first_read, rows, st.period), symbol)
        frame = pl.concat([tail, new.select(tail.columns)])  # the market sorts it
        market = b.market(frame)
        kept = st.market()
        stamps = kept["timestamp"].to_numpy().astype("datetime64[us]")
        hit = np.flatnonzero(stamps == to_datetime64(st.resume_at))
        if not hit.size or hit[0] < self.window - 1:
            return "the state lacks the market rows of the resume point's window"
        must = from_datetime64(stamps[hit[0] - (self.window - 1)])
        why = guard_mismatch(
            market, kept, must, tolerance=(RTOL, ATOL), tolerance32=(RTOL32, ATOL32)
        )
        if why is not None:
            log.warning(
                "%s: the market of the last %d bars disagrees with the previous run's (%s); "
                "recomputing from the ledger's start",
                self.path,
                market.n_rows,
                why,
            )
            return f"convergence guard: {why}"
        r0 = int(np.searchsorted(market.timestamps, to_datetime64(st.resume_at)))
        end_row = market.n_rows - 1
        rep = replay(b, market, r0, end_row, resume=st.account, capture_row=end_row - 2)
        produced = rep.frame.slice(1)  # the resume row's own step was the previous run's
        ledger, revised, changed = _extend(self.path, ex, produced, offset=n - 2)
        self.write(ledger, changed, market, rep, end_row, new, replace=False, derived=derived)
        appended = max(n - 2 + produced.height - n, 0)
        behind = n - 2 + produced.height < n
        return _Outcome(ledger, revised, appended, behind, rep.frame.height, market.n_rows, derived)

    def complete_new(self, new: pl.DataFrame) -> pl.DataFrame:
        """``new`` with the series derived from the underlying continued from the stored
        history (a daily-reset series depends on every session since the first): derived
        over the stored sessions' closes plus the new bars, exactly as over the stored
        history extended by the new bars -- also when the bars given start earlier than the
        stored history (their derivation starts elsewhere: another base)."""
        st = self.state
        assert st is not None
        here = st.derived_here
        if not here:
            return new
        from sentio.data.leverage import ensure_universe

        sk = st.sessions()
        symbol = self.universe.underlying
        base = pl.concat([sk, new.filter(pl.col("symbol") == symbol).select(sk.columns)])
        complete, _ = ensure_universe(base, self.universe)
        rows = complete.filter(pl.col("symbol").is_in(here) & (pl.col("timestamp") > st.last))
        return pl.concat([new.filter(~pl.col("symbol").is_in(here)), rows.select(new.columns)])

    def check_sessions(
        self, stored_last: dt.datetime, given_first: dt.datetime, new_first: dt.datetime
    ) -> None:
        """Refuse new bars that do not continue the stored ones, unless the bars given reach
        back to the stored last bar (then the data itself lacks what is missing, which the
        full path accepts too): bars that start after one or more exchange sessions the
        stored bars lack, or, for intraday bars, more than :data:`MAX_MISSING_BARS` bars
        after the bar that follows the stored last one (the rest of its session, when a run
        came before the session's last bars arrived; the start of the next session)."""
        if given_first <= stored_last:
            return
        from sentio.calendar import sessions

        a, b = _ny_date(stored_last), _ny_date(new_first)
        table = sessions(a, max(b, a + dt.timedelta(days=7)), self.universe.calendar)
        days = [d for d in table["session"] if a < d < b]
        if not days:
            self.check_bars_missing(stored_last, new_first, table)
            return
        names = ", ".join(d.isoformat() for d in days[:5])
        if len(days) > 5:
            names += f", ... ({len(days)} sessions)"
        raise PaperError(
            f"{self.path}: the bars given start at {iso_z(given_first)}, but the ledger's bars "
            f"end at {iso_z(stored_last)} and the exchange calendar has sessions in between "
            f"that the bars given lack ({names}): give the bars from the ledger's last "
            f"session ({a}) on, or the whole history (a session the data itself lacks is "
            "then accepted); nothing was written"
        )

    def check_bars_missing(
        self, stored_last: dt.datetime, new_first: dt.datetime, table: pl.DataFrame
    ) -> None:
        """Refuse intraday bars that start more than :data:`MAX_MISSING_BARS` bars after
        the bar expected next (``table``: the calendar's sessions from the stored last
        bar's on)."""
        assert self.state is not None
        step = self.state.bar_step()
        if step is None or step >= dt.timedelta(hours=6):  # daily bars: sessions suffice
            return

        def session_of(when: dt.datetime) -> pl.DataFrame:
            return table.filter((pl.col("open") <= when) & (pl.col("close") > when))

        current = session_of(stored_last)
        later = table.filter(pl.col("open") > stored_last)
        if current.height and stored_last + step < current["close"][0]:
            expected = stored_last + step
        elif later.height:
            expected = later["open"][0]
        else:
            return
        there, here = session_of(expected), session_of(new_first)
        if not (there.height and here.height):
            return
        if there["session"][0] == here["session"][0]:
            missing = (new_first - expected) // step
        else:  # the rest of the expected bar's session, and the new session's first bars
            missing = (there["close"][0] - expected) // step + (new_first - here["open"][0]) // step
        if missing <= MAX_MISSING_BARS:
            return
        raise PaperError(
            f"{self.path}: the bars given start at {iso_z(new_first)}, but the ledger's bars "
            f"end at {iso_z(stored_last)} and {missing} bars from {iso_z(expected)} on are in "
            f"neither (a run before a session's last bars arrived, or bars given from the "
            f"middle of a session): give the bars from the ledger's last session "
            f"({_ny_date(stored_last)}) on, or the whole history (bars the data itself lacks "
            "are then accepted); nothing was written"
        )

    # ------------------------------------------------------------------ full

    def full_bars(self) -> tuple[pl.DataFrame, list[str], list[str]]:
        """The bars a full run recomputes from, the derived symbols and those derived from
        the underlying. With a state of this version and configuration beside an existing
        ledger, the ledger's bar history starts at the first stored bar: bars given before
        it are left out, and when the bars given start after it, the stored bars before
        them come first (series derived from the underlying re-derived over the whole);
        otherwise the bars given."""
        got, st, ex = self.got, self.state, self.existing
        usable = (
            st is not None
            and ex is not None
            and ex.height > 0
            and st.data.get("version") == self.bundle.version
            and st.data.get("config") == self.config_hash
        )
        if st is None or ex is None or not usable:
            return got.frame, got.derived, got.derived_here
        from sentio.data.leverage import ensure_universe
        from sentio.data.schema import to_canonical

        first = _utc_stamp(got.frame, "first")
        here = sorted(set(st.derived_here) | set(got.derived_here))
        derived = sorted(set(st.derived) | set(got.derived))
        ts = pl.col("timestamp")
        if first < st.first:  # the stored history starts later: so does the ledger's
            combined = got.frame.filter(ts >= st.first)
            if combined.height == 0:
                return got.frame, got.derived, got.derived_here
        elif first == st.first:
            return got.frame, got.derived, got.derived_here
        else:
            hole = ex.filter((ts > st.last) & (ts < first))["timestamp"]
            if hole.len():
                raise PaperError(
                    f"{self.path}: the ledger's rows from {iso_z(hole[0])} to {iso_z(hole[-1])} "
                    f"are neither in the bars kept beside it (they end at {iso_z(st.last)}: a "
                    "run stopped between writing the ledger and its state?) nor in the bars "
                    f"given (they start at {iso_z(first)}): give the bars from the session "
                    f"{_ny_date(hole[0])} on, or the whole history; nothing was written"
                )
            self.check_sessions(st.last, first, first)
            old = st.read_all().filter(ts < first)
            combined = pl.concat([old, got.frame.select(old.columns)])
        if here:
            combined, _ = ensure_universe(
                combined.filter(~pl.col("symbol").is_in(here)), self.universe
            )
        else:
            combined = to_canonical(combined)
        return combined, derived, here

    def forget_damaged_state(self, err: Exception) -> str:
        """Go on without the state beside the ledger, which cannot be read (a damaged
        file): the full path recomputes from the bars given alone. The reason, logged."""
        why = f"unreadable state ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
        log.warning("%s: %s; recomputing from the bars given", self.path, why)
        self.state, self.no_state = None, why
        return why

    def full(self) -> _Outcome:
        """Recompute the path from the ledger's start (or the start rule) and compare."""
        b, ex = self.bundle, self.existing
        try:
            frame, derived, here = self.full_bars()
        except SentioError:
            raise
        except STATE_READ_ERRORS as err:
            if self.state is None:
                raise
            self.forget_damaged_state(err)
            frame, derived, here = self.full_bars()
        if ex is not None and ex.height and _utc_stamp(frame, "first") > ex["timestamp"][0]:
            raise _no_start(self.path, ex["timestamp"][0])
        market = b.market(frame)
        start_row, end_row = _replay_rows(b, market, ex, self.path, self.start, self.end)
        capture = end_row - 2 if end_row - 2 >= start_row else None
        rep = replay(b, market, start_row, end_row, capture_row=capture)
        ledger, revised, changed = _extend(self.path, ex, rep.frame)
        n_old = 0 if ex is None else ex.height
        behind = rep.frame.height < n_old
        if not behind:
            self.write(
                ledger,
                changed,
                market,
                rep,
                end_row,
                frame,
                replace=True,
                derived=derived,
                here=here,
            )
        appended = max(rep.frame.height - n_old, 0)
        return _Outcome(ledger, revised, appended, behind, rep.frame.height, market.n_rows, derived)

    # ------------------------------------------------------------------ writing

    def write(
        self,
        ledger: pl.DataFrame,
        changed: bool,
        market: MarketData,
        rep: Replay,
        end_row: int,
        bars: pl.DataFrame,
        *,
        replace: bool,
        derived: list[str],
        here: list[str] | None = None,
    ) -> None:
        """Write the ledger (when ``changed``) and its state, in the order of
        :mod:`sentio.live_state` ("Writing": the state's files, the ledger to a temporary
        file, ``next.json``, the ledger's rename, ``state.json``); or, when the run cannot
        continue later (a ruin, an ``end`` before the last bar, a ledger shorter than
        :data:`MIN_STATE_ROWS` rows), write the ledger and forget a state it made stale."""
        self.writing = True
        folder = self.path.parent
        ok = (
            not rep.ruined
            and rep.captured is not None
            and end_row == market.n_rows - 1
            and ledger.height >= MIN_STATE_ROWS
            and ledger["timestamp"][-1] == from_datetime64(market.timestamps[end_row])
        )
        staged: Staged | None = None
        if ok:
            assert rep.captured is not None
            # the bars up to the market's last row only: a bar of a later timestamp that
            # is not a market row (another symbol's bar there is missing yet) comes again
            last_row = from_datetime64(market.timestamps[-1])
            bars = bars.filter(pl.col("timestamp") <= last_row)
            st = self.state
            if replace or st is None:
                period = resync_period(self.bundle.cfg, bars)
                rows = default_tail_rows(self.bundle.cfg, bars)
            else:
                period, rows = st.period, st.tail_rows
            if self.tail_rows is not None:
                rows = self.tail_rows
            capture = end_row - 2
            staged = State.stage(
                folder,
                previous=None if replace else st,
                new_bars=bars,
                replace_bars=replace,
                symbol=self.universe.underlying,
                version=self.bundle.version,
                config_hash=self.config_hash,
                resume_at=from_datetime64(market.timestamps[capture]),
                account=rep.captured,
                market=market_rows(market, capture - (self.window - 1) - GUARD_ROWS),
                derived=derived,
                derived_here=here if here is not None else (st.derived_here if st else []),
                period=period,
                tail_rows=rows,
            )
        if changed:
            with atomic_path(self.path) as tmp:
                ledger.write_ipc(tmp, compression="zstd")
                if staged is not None:
                    staged.prepare(ledger_guard(tmp, ledger))
        elif staged is not None:
            staged.prepare(ledger_guard(self.path, ledger))
        if staged is not None:
            staged.commit()
            return
        st = self.state
        if st is not None and st.stale(
            self.bundle.version, self.config_hash, ledger_guard(self.path, ledger)
        ):
            State.remove(folder)


def _ny_date(when: dt.datetime) -> dt.date:
    """The New York date of a UTC timestamp (the session of a regular-hours bar)."""
    from zoneinfo import ZoneInfo

    from sentio.data.schema import NY_TZ

    return when.astimezone(ZoneInfo(NY_TZ)).date()


def _start_is_first(
    start: Timestamp, first: dt.datetime, state: State | None, given: pl.DataFrame, symbol: str
) -> bool:
    """Whether ``start`` resolves to ``first`` (a ledger's first bar): the first bar at or
    after it, in the ledger's bar history (the stored bars, the bars given)."""
    s = as_utc(start, "start")
    if s > first:
        return False
    if s == first:
        return True
    before: list[dt.datetime] = []
    if state is not None:
        stored = state.underlying_before(first, symbol)
        if stored is None:
            return False
        before.append(stored)
    ts = pl.col("timestamp")
    g = given.filter((pl.col("symbol") == symbol) & (ts < first))["timestamp"].max()
    if isinstance(g, dt.datetime):
        before.append(g)
    return bool(before) and max(before) < s


def _check_overlap(path: Path, st: State, given: pl.DataFrame, bundle: ModelBundle) -> None:
    """Raise :class:`LedgerMismatch` at the earliest bar where the bars given and the stored
    bars differ, over the whole time range both cover (not the series derived from the
    underlying here). A stored chunk whose range the bars given cover entirely is compared
    by its digest (:func:`sentio.live_state.bars_digest`, no read of the chunk), row by row
    only when the digests differ; a chunk the bars given cover in part is read and compared
    on that part."""
    skip = st.derived_here
    lo = max(st.first, _utc_stamp(given, "first"))
    hi = min(st.last, _utc_stamp(given, "last"))
    if lo > hi:
        return
    chunks = st.chunks
    ts = pl.col("timestamp")
    for k, c in enumerate(chunks):
        # chunk k holds every stored bar from its first one to the next chunk's first
        c_first = as_utc(c.first)
        nxt = as_utc(chunks[k + 1].first) if k + 1 < len(chunks) else None
        if (nxt is not None and nxt <= lo) or c_first > hi:
            continue
        inside = (ts >= max(lo, c_first)) & (ts <= hi)
        if nxt is not None:
            inside = inside & (ts < nxt)
        part = given.filter(inside)
        whole = lo <= c_first and (hi == st.last if nxt is None else hi >= nxt)
        if whole and bars_digest(part, skip) == c.digest:
            continue
        _check_bars(path, st.read_chunk(c).filter(inside), part, set(skip), bundle)


def _check_bars(
    path: Path, stored: pl.DataFrame, given: pl.DataFrame, skip: set[str], bundle: ModelBundle
) -> None:
    """Raise :class:`LedgerMismatch` at the earliest bar where ``given`` and ``stored`` (the
    bars processed before, over the same time range) differ -- a bar missing, added or
    changed beyond the ledger's float tolerance -- except the symbols ``skip`` (derived
    from the underlying)."""
    from sentio.data.schema import CANONICAL_COLUMNS

    def part(frame: pl.DataFrame) -> pl.DataFrame:
        inside = ~pl.col("symbol").is_in(sorted(skip))
        return frame.filter(inside).select(CANONICAL_COLUMNS).sort(["symbol", "timestamp"])

    a, b = part(stored), part(given)
    if a.height == b.height and a.equals(b):
        return
    fields = [c for c in ("open", "close", "high", "low", "volume") if c in CANONICAL_COLUMNS]
    j = a.with_columns(_old=pl.lit(True)).join(
        b.with_columns(_new=pl.lit(True)), on=["symbol", "timestamp"], how="full", coalesce=True
    )
    u = bundle.cfg.universe
    roles = {u.underlying: "underlying", u.long: "long", u.short: "short"}
    order = {s: i for i, s in enumerate(roles)}
    worst: tuple[dt.datetime, int, int, int] | None = None
    old_here, new_here = j["_old"].fill_null(False), j["_new"].fill_null(False)
    for k, f in enumerate([None, *fields]):
        if f is None:
            bad = (old_here != new_here).to_numpy()
        else:
            x = j[f].cast(pl.Float64).to_numpy()
            y = j[f"{f}_right"].cast(pl.Float64).to_numpy()
            bad = (old_here & new_here).to_numpy() & ~np.isclose(
                x, y, rtol=RTOL, atol=ATOL, equal_nan=True
            )
        for hit in np.flatnonzero(bad).tolist():
            when, sym = j["timestamp"][hit], str(j["symbol"][hit])
            key = (when, order.get(sym, len(order)), k, hit)
            if worst is None or key < worst:
                worst = key
    if worst is None:  # every difference within the tolerances
        return
    i = worst[3]
    when, sym = j["timestamp"][i], str(j["symbol"][i])
    tail = (
        "the bar history was rewritten; the ledger is left unchanged (move it away to start "
        "a new one)"
    )
    if not bool(old_here[i]):
        raise LedgerMismatch(
            f"{path}: the bars given hold a bar of {sym} at {iso_z(when)} that was absent when "
            f"this ledger's bars were processed: {tail}"
        )
    if not bool(new_here[i]):
        raise LedgerMismatch(
            f"{path}: the bar of {sym} at {iso_z(when)} processed before is missing from the "
            f"bars given: {tail}"
        )
    f = fields[worst[2] - 1]
    name = f"{f}_{roles[sym]}" if sym in roles else f"{f} of {sym}"
    raise LedgerMismatch(
        f"{path}: {name!r} at {iso_z(when)} is {j[f'{f}_right'][i]!r} in the bars given but "
        f"was {j[f][i]!r} when processed before: {tail}"
    )


# --------------------------------------------------------------------------- entry points


def paper_trade(
    registry: Registry,
    bars: Bars,
    *,
    version: str | None = None,
    start: Timestamp | None = None,
    end: Timestamp | None = None,
    root: str | os.PathLike[str] | None = None,
    lock_timeout: float = 60.0,
    verify: bool = False,
    tail_rows: int | None = None,
) -> dict[str, Any]:
    """Feed ``bars`` through ``version`` (None: the champion) and extend its ledger.

    Args:
        registry: where the version lives (its files are hash-verified before use).
        bars: canonical bars (a frame) or bar file(s), ingested like ``sentio run``: the
            whole history (the ledger's start and everything since) or, once the ledger
            has a state, only the bars since the last run (module docstring).
        version: version id; None uses the champion.
        start: first bar of a new ledger (default: the first bar after the version's
            ``train_end``); must match an existing ledger's start.
        end: ignore bars after this time (replays of history; always a full run).
        root: the paper-trading root (default ``<paths.workdir>/paper``).
        lock_timeout: seconds to wait for another run on the same ledger.
        verify: recompute the whole path from the ledger's start (over the ledger's bar
            history: the bars given from the first stored bar on, preceded by the stored
            bars when they start later) and compare it with the ledger, instead of
            continuing from the state; the state is rewritten.
        tail_rows: bars of the underlying the market tail holds before the first bar the
            resumed replay reads (default: the state's rule, :func:`sentio.live_state.
            default_tail_rows`); stored with the state.

    Returns:
        A JSON-able summary: ``version``, ``ledger``, ``start``, ``last`` (timestamps),
        ``rows``, ``appended``, ``initial_equity``, ``equity``, ``total_return``,
        ``exposure``, ``position``, the last decision (``action``, ``target_exposure``,
        ``instrument``), ``ruined``, ``behind`` (true when the bars end before the
        ledger's last row), ``in_sample`` (true when the ledger's first bar is at or
        before the version's ``train_end``), ``derived_symbols`` (symbols whose prices are
        derived from the underlying, not traded prices), ``revised``: None, or the ledger's
        previous last row when this run replaced it (module docstring: the last row is
        provisional) as ``{"timestamp": ..., "columns": {column: [old, new], ...}}``;
        ``mode`` (``"incremental"``, ``"full"`` or ``"verify"``), ``reason`` (why not
        incremental; None when it was), ``replayed`` (bars the replay decided on: the new
        ones plus the three it resumes with, or every bar since the start) and
        ``market_rows`` (rows of the market built; 0 when nothing was new).

    Raises:
        PaperError: a recomputed row other than the ledger's last, or the last row's own
            bar, differs from the ledger, or a bar given differs from the one processed
            before (names the timestamp and column; the ledger is untouched)
            (:class:`LedgerMismatch`); the start resolves to another bar than the ledger's
            first; new bars skip exchange sessions the stored bars lack, or ledger rows
            are in neither the stored bars nor the bars given (the message names the bars
            to give; nothing is written); the ledger is locked for longer than
            ``lock_timeout``.
        RegistryError, DataError: no champion, a tampered version, bad bars.
    """
    bundle = load_bundle(registry, version)
    folder = Path(root) if root is not None else default_root(registry)
    summary, _ = trade(
        bundle,
        bars,
        folder=folder,
        start=start,
        end=end,
        lock_timeout=lock_timeout,
        verify=verify,
        tail_rows=tail_rows,
    )
    return summary


def trade(
    bundle: ModelBundle,
    bars: Bars,
    *,
    folder: Path,
    start: Timestamp | None = None,
    end: Timestamp | None = None,
    lock_timeout: float = 60.0,
    verify: bool = False,
    tail_rows: int | None = None,
    reset: bool = False,
    what: str = "paper-trading run",
) -> tuple[dict[str, Any], pl.DataFrame]:
    """:func:`paper_trade` with a loaded bundle and a root folder; also returns the ledger.

    ``reset``: remove the ledger and its state first (under the lock): a cache's rebuild
    (:func:`signal`), never a paper ledger's. ``what``: what a run on this root is called
    (the lock's error says "locked by another <what>").
    """
    if tail_rows is not None and tail_rows < 0:
        raise PaperError(f"tail_rows must be >= 0, got {tail_rows}")
    path = ledger_path(folder, bundle.version)
    got = bundle.ingest(bars)  # content cached; outside the lock
    if got.frame.height == 0:
        raise PaperError("no bars given")
    path.parent.mkdir(parents=True, exist_ok=True)
    with _ledger_lock(path, lock_timeout, what):
        # a killed run's temporary ledger (never read: recovery reads the ledger and next.json)
        for stale in path.parent.glob(f".{path.name}.*.tmp"):
            stale.unlink(missing_ok=True)
        if reset:
            path.unlink(missing_ok=True)
            State.remove(path.parent)
        run = _Run(bundle, path, got, start, end, tail_rows)
        reason = run.incremental_refused(verify)
        mode = "verify" if verify else "full"
        outcome: _Outcome | None = None
        if reason is None:
            try:
                tried = run.incremental()
            except SentioError:
                raise
            except STATE_READ_ERRORS as err:
                if run.writing:  # not the state's reading: a failure of the writing
                    raise
                tried = run.forget_damaged_state(err)
            if isinstance(tried, str):
                reason = tried
            else:
                outcome, mode = tried, "incremental"
        if outcome is None:
            outcome = run.full()
    ledger = outcome.ledger
    last = ledger.row(-1, named=True)
    initial = float(bundle.cfg.env.initial_cash)
    equity = float(last["equity"])
    summary = {
        "version": bundle.version,
        "ledger": str(path),
        "start": iso_z(ledger["timestamp"][0]),
        "last": iso_z(last["timestamp"]),
        "rows": int(ledger.height),
        "appended": outcome.appended,
        "initial_equity": initial,
        "equity": equity,
        "total_return": equity / initial - 1.0 if math.isfinite(equity) else None,
        "exposure": float(last["exposure"]),
        "position": float(last["position"]),
        "action": int(last["action"]),
        "target_exposure": float(last["target_exposure"]),
        "instrument": str(last["target_instrument"]),
        "ruined": last["forced_exit"] == "ruin",
        "behind": outcome.behind,
        "in_sample": bundle.in_sample(ledger["timestamp"][0]),
        "derived_symbols": outcome.derived,
        "revised": outcome.revised,
        "mode": mode,
        "reason": reason,
        "replayed": outcome.replayed,
        "market_rows": outcome.market_rows,
    }
    return summary, ledger


def signal_root(bundle: ModelBundle) -> Path:
    """Where :func:`signal` keeps its ledgers: ``<paths.workdir>/signal``."""
    return bundle.workdir / SIGNAL_DIR


def signal(
    bundle: ModelBundle,
    bars: Bars,
    *,
    start: Timestamp | None = None,
    end: Timestamp | None = None,
    root: str | os.PathLike[str] | None = None,
    verify: bool = False,
    lock_timeout: float = 60.0,
    tail_rows: int | None = None,
) -> dict[str, Any]:
    """:func:`sentio.live.signal`, continued from a state instead of replayed from the start.

    The replay the signal reads its last row from is kept as a ledger under
    ``<root>/<version>/`` (default root: :func:`signal_root`) with its state, exactly as
    paper trading keeps one (module docstring), so a signal over a history that grew by a
    day replays that day only. The JSON is :func:`sentio.live.signal`'s, key for key.

    Stateless (:func:`sentio.live.signal`, the ledger untouched): with ``end``, with a
    ``start`` that does not resolve to the kept ledger's first bar (the first bar at or
    after it), for bars that end before the kept ledger's last row, and when the root
    cannot be written (a read-only working directory: a warning is logged). The kept
    ledger is a cache: when it disagrees with the bars (a rewritten history) it is rebuilt
    from the bars given. ``verify`` recomputes it from the start and compares.
    """
    got = bundle.ingest(bars, ongoing=True)
    if end is not None:
        return stateless_signal(bundle, got, start=start, end=end)
    folder = Path(root) if root is not None else signal_root(bundle)
    if start is not None:
        path = ledger_path(folder, bundle.version)
        try:
            kept = read_ledger(path)
            state = State.load(path.parent)[0] if kept is not None and kept.height else None
            first = (
                kept is not None
                and kept.height > 0
                and _start_is_first(
                    start, kept["timestamp"][0], state, got.frame, bundle.cfg.universe.underlying
                )
            )
        except STATE_READ_ERRORS + (LedgerMismatch,) as err:  # a damaged cache
            log.warning(
                "%s: the kept replay cannot be read (%s); this signal is replayed from the "
                "start (the next signal without --start rebuilds it)",
                path.parent,
                str(err).splitlines()[0] if str(err) else type(err).__name__,
            )
            return stateless_signal(bundle, got, start=start)
        if not first:
            return stateless_signal(bundle, got, start=start)
    kwargs: dict[str, Any] = {
        "folder": folder,
        "start": start,
        "lock_timeout": lock_timeout,
        "verify": verify,
        "tail_rows": tail_rows,
        "what": "signal",
    }
    try:
        try:
            summary, ledger = trade(bundle, got, **kwargs)
        except LedgerMismatch as err:
            log.warning("%s: rebuilding the kept replay from the bars given: %s", folder, err)
            summary, ledger = trade(bundle, got, reset=True, **kwargs)
    except OSError as err:
        if not _unwritable(err):
            raise
        log.warning(
            "%s: cannot be written (%s); the signal is replayed from the start without "
            "keeping the replay",
            folder,
            err,
        )
        return stateless_signal(bundle, got, start=start)
    if summary["behind"]:
        return stateless_signal(bundle, got, start=start)
    return signal_of_row(
        bundle,
        ledger.row(-1, named=True),
        since=ledger["timestamp"][0],
        bars=ledger.height,
        ruined=ledger["forced_exit"][-1] == "ruin",
        derived=got.derived,
        bars_end=last_bar_given(got.frame, bundle.instruments_and_underlying),
    )


@contextmanager
def _ledger_lock(path: Path, timeout: float, what: str) -> Iterator[None]:
    """Hold the lock of the ledger folder (one run at a time; ``what`` names the runs)."""
    lock = FileLock(str(path.parent / LOCK), timeout=timeout)
    try:
        lock.acquire()
    except Timeout:
        raise PaperError(f"{path}: locked by another {what} for more than {timeout:g} s") from None
    try:
        yield
    finally:
        lock.release()


def _unwritable(err: OSError) -> bool:
    """Whether ``err`` says a path cannot be written (permissions, a read-only file system)."""
    return isinstance(err, PermissionError) or err.errno in (errno.EACCES, errno.EPERM, errno.EROFS)


def _no_start(path: Path, first: dt.datetime) -> PaperError:
    return PaperError(
        f"{path}: the bars have no bar at the ledger's start {iso_z(first)}; this run "
        "recomputes the path from its start (verification, or no usable state beside the "
        "ledger): give the whole bar history"
    )


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
            raise _no_start(path, first)
        if start is not None:  # compare the bar it resolves to, not the raw argument
            asked = ts[bundle.start_row(market, start)]
            if asked != ts[row]:
                raise LedgerMismatch(
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
    path: Path, existing: pl.DataFrame | None, frame: pl.DataFrame, offset: int = 0
) -> tuple[pl.DataFrame, dict[str, Any] | None, bool]:
    """Check the recomputed rows against the ledger and add what is new (in memory: the
    caller writes it, :meth:`_Run.write`).

    ``frame``'s row ``i`` is the ledger's row ``offset + i`` (a resumed replay re-produces
    the ledger's last two rows, then the new ones). Returns the ledger after the run, the
    revision of its last row (None when it was not replaced) and whether it changed.
    """
    n_old = 0 if existing is None else existing.height
    revised: dict[str, Any] | None = None
    if existing is not None and n_old:
        old = existing.slice(offset)
        # rows both have; the last of them is provisional in one of the two (the
        # ledger's last row, or the recomputation's when the bars are behind): its own
        # bar is compared, its provisional columns are not (module docstring)
        n = min(old.height, frame.height)
        bar_cols = [c for c in frame.columns if not _provisional(c)]
        diff = _first_difference(old, frame, n - 1)
        if diff is None:
            own = _first_difference(old.slice(n - 1), frame.slice(n - 1), 1, bar_cols)
            diff = None if own is None else (n - 1, *own[1:])
        if diff is not None:
            i, col, was, new = diff
            when = old["timestamp"][i] if col == "timestamp" else frame["timestamp"][i]
            raise _rewritten(path, col, when, was, new)
        if frame.height >= old.height:
            revised = _revision(old, frame, old.height - 1)
    keep = n_old - 1 if revised is not None else n_old
    written = frame.slice(keep - offset)
    if not written.height:
        return (existing if existing is not None else frame), revised, False
    now = pl.lit(now_utc(), dtype=pl.Datetime("us", "UTC"))
    written = written.with_columns(appended_at=now)
    ledger = pl.concat([existing.head(keep), written]) if existing is not None and keep else written
    return ledger, revised, True
