"""The incremental state of a ledger: what one run keeps so that the next processes only new bars.

A paper-trading ledger (:mod:`sentio.paper`) is a causal replay from a fixed bar, so a run
could always recompute it from the whole bar history; this module holds what a run needs
to continue instead, in ``<ledger folder>/state/``:

* ``state.json``: schema, model version, a hash of the version's configuration, a guard of
  the ledger file (row count, size, sha256, first and last timestamp: a ledger edited,
  replaced or written by a run that did not update the state makes the state stale), the
  resume point (the timestamp of the ledger's row ``n - 3`` and the simulator's account
  state at its close, before its decision), the bar store's chunks, the tail rule and the
  names of the files below;
* ``bars-<id>.feather``: the canonical bars processed so far (every symbol), in chunks of
  consecutive time ranges of at most :data:`CHUNK_ROWS` bars of the underlying, each with a
  content digest of its bars (:func:`bars_digest`, without the series derived from the
  underlying here) that lets a run compare the bars it is given with the whole stored
  history without reading it; files are never modified: a run writes its new bars into a
  new file that replaces the last chunk while that is not full (so a write is bounded,
  whatever the history's length), or starts a new chunk;
* ``sessions-<id>.feather``: the underlying's first bar and every session's last bar (what a
  daily-reset leveraged series derived from the underlying depends on, see
  :func:`session_skeleton`);
* ``market-<id>.feather``: the last market rows the run computed (:func:`market_rows`),
  which the next run compares with its own (:func:`guard_mismatch`).

**Writing.** A run writes the new generation's files first (:meth:`State.stage`), then the
new ledger to a temporary file, then ``next.json`` (the new state, its guard that of the
temporary ledger: :meth:`Staged.prepare`), then renames the ledger into place (the commit
point: from then on ``next.json`` describes the ledger), then renames ``next.json`` onto
``state.json`` and removes the files of the older generation (:meth:`Staged.commit`). Every
bar a ledger row was computed from is on disk before that row is. A crash before the
ledger's rename leaves the old ledger and its state (plus files no state names, removed
next time); a crash after it leaves a ``next.json`` whose guard matches the ledger, which
the next run adopts (:meth:`State.recover`) and continues from.

**The tail.** The market arrays at a bar depend on where the bar history starts (EMAs,
Wilder averages, the rolling statistics' periodic exact recomputation at fixed row indices,
:data:`sentio.features.kernels.RESYNC_WINDOWS`; the rolling normalisation; the regime
filter; the volatility EWMA), but the dependence dies out: a market built from a tail of
the history that starts far enough back equals the whole history's on the rows that
matter. :func:`tail_start` picks the tail's first bar of the underlying: at least
``tail_rows`` bars (:func:`default_tail_rows`) before the first bar the resumed replay
reads, and on a multiple of :func:`resync_period` counted from the history's first bar,
so that every rolling statistic is recomputed exactly on the same rows as in the whole
history. Measured on the demo (two years of synthetic minute bars) and on real SPY minute
bars (January and March 2011, February missing): with the aligned start the features are
bit-identical to the whole history's from the first exact recomputation of the rolling
normalisation on (``warm-up + 4 x norm_window`` bars), the volatility EWMA from about
``60 x vol_halflife_bars`` bars, and the regime probabilities equal to a float32 unit in
the last place on a few scattered rows (as two whole-history runs over different lengths
already differ); a start off the period leaves float32 differences on most rows, some
beyond the ledger's tolerances (``benchmarks/README.md``, "Incremental paper trading").
With ``features.normalisation = "expanding"`` the values depend on the whole history: the
tail is the whole stored history.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import math
import os
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from sentio.config import SentioConfig
from sentio.data.schema import CANONICAL_COLUMNS, session_date
from sentio.env.market import MarketData
from sentio.io import fsync_dir, write_feather_atomic, write_json_atomic
from sentio.times import as_utc, iso_z, to_datetime64

__all__ = [
    "CHUNK_ROWS",
    "GUARD_ROWS",
    "SCHEMA",
    "STATE_DIR",
    "LedgerGuard",
    "Staged",
    "State",
    "bars_digest",
    "default_tail_rows",
    "file_sha256",
    "guard_mismatch",
    "ledger_guard",
    "market_rows",
    "resync_period",
    "tail_start",
]

STATE_DIR = "state"
STATE_FILE = "state.json"
NEXT_FILE = "next.json"
"""The state a run wrote before renaming its ledger into place (module docstring)."""
SCHEMA = 2
"""Version of the state's layout; a state of another schema is rebuilt by a full run."""
CHUNK_ROWS = 20_000
"""Bars of the underlying per chunk of the bar store (about 51 sessions of minute bars): a
run rewrites at most one chunk, and reads the few that hold its tail."""
GUARD_ROWS = 1024
"""Market rows kept for the convergence guard, before the resume point's window."""
_EMPTY = pl.DataFrame()


# ------------------------------------------------------------------------------ the tail


def _bar_minutes(frame: pl.DataFrame, cfg: SentioConfig) -> tuple[SentioConfig, int]:
    """``cfg`` with its ``auto`` windows sized for the bars, and the bar length in minutes."""
    from sentio.features.build import inspect_bars, sized_for_bars

    cfg = sized_for_bars(cfg, frame)
    _, info = inspect_bars(frame, cfg.universe.underlying)
    return cfg, max(1, round(info.bar.total_seconds() / 60))


def resync_period(cfg: SentioConfig, frame: pl.DataFrame) -> int | None:
    """Bars of the underlying between the rows where every rolling statistic of the
    features is recomputed exactly (``RESYNC_WINDOWS`` x the lcm of the rolling windows:
    volatility, Bollinger, volume z-score, rolling normalisation); a tail starting on a
    multiple of it, counted from the history's first bar, recomputes them on the same rows
    as the whole history. None with ``features.normalisation = "expanding"`` (no tail: the
    values depend on every bar since the first)."""
    from sentio.config import sized
    from sentio.features.kernels import RESYNC_WINDOWS

    cfg, _ = _bar_minutes(frame, cfg)
    f = cfg.features
    if f.normalisation == "expanding":
        return None
    windows = [*f.vol_windows, f.bollinger_window, sized(f.volume_z_window, "volume_z_window")]
    if f.normalisation == "rolling":
        windows.append(sized(f.norm_window, "features.norm_window"))
    return RESYNC_WINDOWS * math.lcm(*(max(1, int(w)) for w in windows))


def default_tail_rows(cfg: SentioConfig, frame: pl.DataFrame) -> int:
    """Bars of the underlying a tail holds before the first bar a resumed replay reads.

    Twice the longest of: the features' warm-up plus ``RESYNC_WINDOWS`` rolling
    normalisation windows (its first exact recomputation), the regime inputs' window plus
    one session (the filter forgets its start within tens of bars in the measurements),
    64 half-lives of the volatility EWMA (2^-64: below double precision), and 32 spans of
    the exponential and Wilder averages (MACD, RSI, ATR; the coarse RSI in minute bars).
    """
    from sentio.config import sized
    from sentio.features.build import inspect_bars, warmup_rows
    from sentio.features.kernels import RESYNC_WINDOWS

    cfg, minutes = _bar_minutes(frame, cfg)
    f = cfg.features
    _, info = inspect_bars(frame, cfg.universe.underlying)
    warm = warmup_rows(cfg, info)
    if f.normalisation == "rolling":
        warm += RESYNC_WINDOWS * sized(f.norm_window, "features.norm_window")
    needs = [warm, 64 * int(cfg.env.vol_halflife_bars), 32 * (f.macd[1] + f.macd[2])]
    needs += [32 * max(f.rsi_window, f.atr_window)]
    if f.coarse_minutes:
        needs.append(32 * f.rsi_window * max(1, max(f.coarse_minutes) // minutes))
    if cfg.regimes.enabled:
        session = 390 // minutes if minutes < 390 else 1
        agg = sized(cfg.regimes.aggregate_bars, "regimes.aggregate_bars")
        needs.append(max(agg, sized(cfg.regimes.vol_window, "regimes.vol_window")) + session)
    return 2 * max(needs)


def tail_start(first_read: int, tail_rows: int, period: int | None) -> int:
    """The tail's first bar of the underlying (a row index from the history's first bar):
    ``tail_rows`` before ``first_read`` (the first bar a resumed replay reads), down to a
    multiple of ``period``; 0 (the whole history) when there is no period or too few bars."""
    if period is None:
        return 0
    return max(0, (first_read - tail_rows) // period * period)


# ------------------------------------------------------------------------------ the guard


def market_rows(market: MarketData, first: int) -> pl.DataFrame:
    """Rows ``first..`` of ``market`` as a frame (what the convergence guard keeps)."""
    rows = slice(max(first, 0), market.n_rows)
    session = market.session
    new_session = np.ones(market.n_rows, dtype=bool)
    new_session[1:] = session[1:] != session[:-1]
    gap = market.gap_before if market.gap_before is not None else np.zeros(market.n_rows, bool)
    data: dict[str, Any] = {"timestamp": market.timestamps[rows]}
    for j in range(market.n_features):
        data[f"f_{j}"] = market.features[rows, j]
    for k in range(market.n_regimes):
        data[f"p_{k}"] = market.regime_probs[rows, k]
    for i in range(3):
        data[f"open_{i}"] = market.open[rows, i]
        data[f"close_{i}"] = market.close[rows, i]
    data |= {
        "vol": market.vol[rows],
        "minutes_to_close": market.minutes_to_close[rows],
        "last_bar": market.last_bar[rows],
        "new_session": new_session[rows],
        "gap": gap[rows],
        "periods_per_year": np.full(rows.stop - rows.start, market.periods_per_year),
    }
    return pl.DataFrame(data)


def guard_mismatch(
    market: MarketData,
    stored: pl.DataFrame,
    must_cover: dt.datetime,
    *,
    tolerance: tuple[float, float],
    tolerance32: tuple[float, float],
) -> str | None:
    """Why ``market`` disagrees with the rows a previous run kept (:func:`market_rows`), or
    None. The kept rows from ``must_cover`` on must all be rows of ``market``; every kept
    row that is compares: features, prices, calendar facts bit for bit, the volatility
    within the ledger's float tolerance, the (float32) regime probabilities within its
    float32 tolerance (``(rtol, atol)`` pairs). The kept last row's ``last_bar`` is not
    compared (it was the last bar then), nor the first row's session start."""
    ts = market.timestamps
    kept = stored["timestamp"].to_numpy().astype("datetime64[us]")
    pos = np.searchsorted(ts, kept)
    inside = (pos < ts.shape[0]) & (ts[np.minimum(pos, ts.shape[0] - 1)] == kept)
    need = kept >= to_datetime64(must_cover)
    if not inside[need].all() or not need.any():
        return "the market tail lacks rows the previous run computed (tail too short?)"
    if not inside.any():
        return "no row in common with the previous run"
    first = int(np.flatnonzero(inside)[0])
    if not inside[first:].all():
        return "the previous run's rows are not consecutive rows of this market"
    rows = pos[first:]
    old = stored.slice(first)
    new = market_rows(market, int(rows[0])).head(old.height)
    if not (new["timestamp"].to_numpy() == old["timestamp"].to_numpy()).all():
        return "the previous run's rows are not consecutive rows of this market"
    bitwise = [c for c in old.columns if c.startswith(("f_", "open_", "close_"))]
    bitwise += ["minutes_to_close", "new_session", "gap", "periods_per_year"]
    for col in [*bitwise, "vol", *(c for c in old.columns if c.startswith("p_"))]:
        if col not in new.columns:
            return f"column {col} absent"
        a, b = old[col].to_numpy(), new[col].to_numpy()
        if col in bitwise:
            same = (a == b) | (np.isnan(a) & np.isnan(b)) if a.dtype.kind == "f" else a == b
        else:
            rtol, atol = tolerance32 if col.startswith("p_") else tolerance
            same = np.isclose(a, b, rtol=rtol, atol=atol, equal_nan=True)
        if col == "new_session":  # a market's first row opens a session by construction
            same[0] = True
        if not same.all():
            i = int(np.flatnonzero(~same)[0])
            when = iso_z(old["timestamp"][i].replace(tzinfo=dt.UTC))
            return f"market column {col} at {when} is {b[i]!r}, the previous run had {a[i]!r}"
    last_bar_same = old["last_bar"].to_numpy()[:-1] == new["last_bar"].to_numpy()[:-1]
    if not last_bar_same.all():
        return "the session ends of the previous run's rows changed"
    return None


# ------------------------------------------------------------------------------ the ledger


@dataclasses.dataclass(frozen=True)
class LedgerGuard:
    """What identifies the ledger file a state was written with: its rows, size and
    content (sha256; an edit that keeps the size and the modification time, ``cp -p``, is
    caught too, and a copy of the folder with new modification times is not stale)."""

    rows: int
    size: int
    sha256: str
    first: str
    last: str

    def as_json(self) -> dict[str, Any]:
        """The guard as JSON."""
        return dataclasses.asdict(self)


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes (read in 4 MiB blocks)."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def ledger_guard(path: Path, ledger: pl.DataFrame) -> LedgerGuard:
    """The guard of the ledger ``ledger`` just read from (or written to) ``path``."""
    return LedgerGuard(
        rows=int(ledger.height),
        size=int(path.stat().st_size),
        sha256=file_sha256(path),
        first=iso_z(ledger["timestamp"][0]),
        last=iso_z(ledger["timestamp"][-1]),
    )


def bars_digest(frame: pl.DataFrame, skip: Iterable[str] = ()) -> str:
    """A content digest of canonical bars, whatever their row order: sha256 over the
    canonical columns' values sorted by symbol and time, without the symbols ``skip``.
    Two frames with the same digest hold the same bars bit for bit (a chunk's digest is
    stored with it: comparing bars with a chunk needs no read of the chunk)."""
    part = frame.filter(~pl.col("symbol").is_in(sorted(skip))).select(CANONICAL_COLUMNS)
    part = part.sort(["symbol", "timestamp"])
    h = hashlib.sha256()
    runs = part.group_by("symbol", maintain_order=True).len()
    h.update(json.dumps([runs["symbol"].to_list(), runs["len"].to_list()]).encode())
    for col in CANONICAL_COLUMNS:
        if col == "symbol":
            continue
        s = part[col]
        h.update(f"|{col}:{s.dtype}:{s.null_count()}|".encode())
        h.update(np.ascontiguousarray(s.to_physical().to_numpy()).tobytes())
    return h.hexdigest()


# ------------------------------------------------------------------------------ the state


def _utc(value: str) -> dt.datetime:
    return as_utc(value, "state timestamp")


def _underlying(frame: pl.DataFrame, symbol: str) -> pl.DataFrame:
    return frame.filter(pl.col("symbol") == symbol).sort("timestamp")


def session_skeleton(underlying: pl.DataFrame) -> pl.DataFrame:
    """The first bar and each session's last bar of the underlying's bars (time order)."""
    if underlying.height == 0:
        return underlying
    under = underlying.sort("timestamp")
    last = under.group_by(session_date(pl.col("timestamp")).alias("_d"), maintain_order=True).agg(
        pl.all().last()
    )
    return pl.concat([under.head(1), last.drop("_d").select(under.columns)]).unique(
        "timestamp", keep="first", maintain_order=True
    )


@dataclasses.dataclass(frozen=True)
class Chunk:
    """One file of the bar store: every bar with a timestamp in ``[first, last]``."""

    file: str
    first: str
    last: str
    u_first: int
    u_rows: int
    rows: int
    digest: str
    """:func:`bars_digest` of the chunk's bars without the symbols derived here."""


@dataclasses.dataclass(frozen=True)
class State:
    """A ledger's state as read from ``state.json`` (see the module docstring)."""

    folder: Path
    data: dict[str, Any]

    # ---------------------------------------------------------------- reading

    @staticmethod
    def load(ledger_folder: Path) -> tuple[State | None, str]:
        """The state beside a ledger, or None and why there is none."""
        folder = ledger_folder / STATE_DIR
        path = folder / STATE_FILE
        if not path.is_file():
            return None, "no state yet"
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            return None, f"unreadable state ({err})"
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            return None, f"state of another schema (expected {SCHEMA})"
        state = State(folder, data)
        try:
            state.chunks  # noqa: B018 - parse now: a malformed state is no state
            missing = [c.file for c in state.chunks if not (folder / c.file).is_file()]
            for key in ("sessions", "market"):
                if not (folder / str(data[key])).is_file():
                    missing.append(str(data[key]))
        except (KeyError, TypeError, ValueError) as err:
            return None, f"malformed state ({err})"
        if missing:
            return None, f"state files missing ({', '.join(missing)})"
        return state, ""

    @staticmethod
    def recover(ledger_folder: Path, guard: Callable[[], LedgerGuard]) -> bool:
        """Adopt the ``next.json`` a run left when it stopped between renaming its ledger
        into place and committing its state, when its guard is that of the ledger now
        (``guard``); remove it otherwise (a run that stopped before its ledger's rename).
        True when adopted. Call it under the ledger's lock."""
        folder = ledger_folder / STATE_DIR
        pending = folder / NEXT_FILE
        if not pending.is_file():
            return False
        try:
            data = json.loads(pending.read_text())
            ok = isinstance(data, dict) and data.get("ledger") == guard().as_json()
        except (OSError, ValueError):
            ok = False
        if ok:
            os.replace(pending, folder / STATE_FILE)
            fsync_dir(folder)
        else:
            pending.unlink(missing_ok=True)
        return ok

    def stale(self, version: str, config_hash: str, guard: LedgerGuard | None) -> str | None:
        """Why this state does not describe the ledger with ``guard`` (None: it does)."""
        if self.data.get("version") != version:
            return f"the state is of version {self.data.get('version')}"
        if self.data.get("config") != config_hash:
            return "the state was written with another configuration"
        if guard is None:
            return "no ledger"
        if self.data.get("ledger") != guard.as_json():
            return (
                "the ledger changed since the state was written (edited, replaced or not updated)"
            )
        return None

    @property
    def chunks(self) -> list[Chunk]:
        """The bar store's chunks in time order."""
        return [Chunk(**c) for c in self.data["bars"]["chunks"]]

    @property
    def first(self) -> dt.datetime:
        """The first stored bar's timestamp."""
        return _utc(self.data["bars"]["first"])

    @property
    def last(self) -> dt.datetime:
        """The last stored bar's timestamp (any symbol)."""
        return _utc(self.data["bars"]["last"])

    @property
    def u_rows(self) -> int:
        """Bars of the underlying stored."""
        return sum(c.u_rows for c in self.chunks)

    @property
    def derived_here(self) -> list[str]:
        """Symbols the stored bars derived from the underlying (not given)."""
        return list(self.data["bars"]["derived_here"])

    @property
    def derived(self) -> list[str]:
        """Symbols whose stored prices are derived (here or upstream)."""
        return list(self.data["bars"]["derived"])

    @property
    def resume_at(self) -> dt.datetime:
        """Timestamp of the ledger row the account state belongs to (its row ``n - 3``)."""
        return _utc(self.data["resume"]["timestamp"])

    @property
    def account(self) -> dict[str, np.ndarray]:
        """The simulator's account state at the close of :attr:`resume_at`."""
        return {k: np.asarray(v) for k, v in self.data["resume"]["account"].items()}

    @property
    def period(self) -> int | None:
        """The tail's alignment (:func:`resync_period`)."""
        p = self.data["tail"]["period"]
        return None if p is None else int(p)

    @property
    def tail_rows(self) -> int:
        """The tail's length rule (:func:`default_tail_rows`)."""
        return int(self.data["tail"]["rows"])

    def read_chunk(self, chunk: Chunk) -> pl.DataFrame:
        """The bars of one chunk."""
        return pl.read_ipc(self.folder / chunk.file)

    def read_all(self) -> pl.DataFrame:
        """Every stored bar."""
        return pl.concat([self.read_chunk(c) for c in self.chunks])

    def underlying_row(self, when: dt.datetime, symbol: str) -> int:
        """The index, from the history's first bar, of the underlying's bar at ``when``."""
        target = to_datetime64(when)
        for c in reversed(self.chunks):
            if _utc(c.first) <= when:
                ts = _underlying(self.read_chunk(c), symbol)["timestamp"]
                stamps = ts.dt.replace_time_zone(None).to_numpy().astype("datetime64[us]")
                i = int(np.searchsorted(stamps, target))
                if i >= stamps.shape[0] or stamps[i] != target:
                    break
                return c.u_first + i
        raise KeyError(f"no stored bar of {symbol} at {iso_z(when)}")

    def underlying_before(self, when: dt.datetime, symbol: str) -> dt.datetime | None:
        """The timestamp of the last stored bar of the underlying before ``when`` (None: none)."""
        for c in reversed(self.chunks):
            if _utc(c.first) < when:
                ts = _underlying(self.read_chunk(c), symbol)["timestamp"]
                before = ts.filter(ts < when)
                if before.len():
                    value = before[-1]
                    assert isinstance(value, dt.datetime)
                    return value
        return None

    def read_from(self, row: int, symbol: str) -> pl.DataFrame:
        """Every stored bar from the underlying's bar at index ``row`` on (all symbols)."""
        chunks = self.chunks
        k = next((i for i, c in enumerate(chunks) if c.u_first + c.u_rows > row), len(chunks) - 1)
        frames = [self.read_chunk(c) for c in chunks[k:]]
        if row > 0:
            under = _underlying(frames[0], symbol)["timestamp"]
            start = under[min(max(row - chunks[k].u_first, 0), under.len() - 1)]
            frames[0] = frames[0].filter(pl.col("timestamp") >= start)
        return pl.concat(frames) if len(frames) > 1 else frames[0]

    def sessions(self) -> pl.DataFrame:
        """The underlying's first bar and every session's last bar (:func:`session_skeleton`)."""
        return pl.read_ipc(self.folder / str(self.data["sessions"]))

    def market(self) -> pl.DataFrame:
        """The market rows the previous run kept (:func:`market_rows`)."""
        return pl.read_ipc(self.folder / str(self.data["market"]))

    def bar_step(self) -> dt.timedelta | None:
        """The bar length of the stored market rows (the median step inside a session);
        None when they hold no two bars of one session (daily bars)."""
        kept = self.market()
        ts = kept["timestamp"].to_numpy().astype("datetime64[us]")
        inside = ~kept["new_session"].to_numpy().astype(bool)[1:]
        steps = np.diff(ts)[inside]
        if not steps.size:
            return None
        return dt.timedelta(microseconds=int(np.median(steps.astype(np.int64))))

    # ---------------------------------------------------------------- writing

    @staticmethod
    def stage(
        ledger_folder: Path,
        *,
        previous: State | None,
        new_bars: pl.DataFrame,
        replace_bars: bool,
        symbol: str,
        version: str,
        config_hash: str,
        resume_at: dt.datetime,
        account: dict[str, np.ndarray],
        market: pl.DataFrame,
        derived: list[str],
        derived_here: list[str],
        period: int | None,
        tail_rows: int,
    ) -> Staged:
        """Write the files of the state after a run, all but the JSON (module docstring,
        **Writing**): the ledger is written next, then :meth:`Staged.prepare` and
        :meth:`Staged.commit`.

        ``new_bars``: with ``replace_bars`` every bar processed (a full run: the store is
        rewritten), else the bars after ``previous``'s last one (appended).
        """
        folder = ledger_folder / STATE_DIR
        folder.mkdir(parents=True, exist_ok=True)
        tag = uuid.uuid4().hex[:12]
        chunks: list[Chunk] = [] if replace_bars or previous is None else previous.chunks
        sessions = _EMPTY if replace_bars or previous is None else previous.sessions()
        if new_bars.height:
            under = _underlying(new_bars, symbol)
            sessions = session_skeleton(pl.concat([sessions, under]) if sessions.height else under)
            chunks = _store(folder, previous, chunks, new_bars, under, tag, derived_here)
        sessions_file = f"sessions-{tag}.feather"
        market_file = f"market-{tag}.feather"
        write_feather_atomic(folder / sessions_file, sessions)
        write_feather_atomic(folder / market_file, market)
        data = {
            "schema": SCHEMA,
            "version": version,
            "config": config_hash,
            "ledger": None,
            "resume": {
                "timestamp": iso_z(resume_at),
                "account": {k: np.asarray(v).tolist() for k, v in account.items()},
            },
            "bars": {
                "chunks": [dataclasses.asdict(c) for c in chunks],
                "first": chunks[0].first,
                "last": chunks[-1].last,
                "derived": sorted(derived),
                "derived_here": sorted(derived_here),
            },
            "sessions": sessions_file,
            "market": market_file,
            "tail": {"period": period, "rows": int(tail_rows)},
        }
        keep = {c.file for c in chunks} | {sessions_file, market_file}
        return Staged(folder, data, frozenset(keep))

    @staticmethod
    def remove(ledger_folder: Path) -> None:
        """Forget the state (the next run recomputes from the start)."""
        (ledger_folder / STATE_DIR / STATE_FILE).unlink(missing_ok=True)
        (ledger_folder / STATE_DIR / NEXT_FILE).unlink(missing_ok=True)


@dataclasses.dataclass(frozen=True)
class Staged:
    """A state whose files are written (:meth:`State.stage`), its JSON not yet."""

    folder: Path
    data: dict[str, Any]
    files: frozenset[str]

    def prepare(self, guard: LedgerGuard) -> None:
        """Write ``next.json``: the state of the ledger with ``guard`` (the ledger written to
        its temporary file, not yet renamed into place)."""
        data = {
            **self.data,
            "ledger": guard.as_json(),
            "written_at": iso_z(dt.datetime.now(dt.UTC)),
        }
        write_json_atomic(self.folder / NEXT_FILE, data)

    def commit(self) -> None:
        """``next.json`` becomes ``state.json`` (the ledger is in place); the files of the
        older generation and the leftovers of a crash are removed."""
        os.replace(self.folder / NEXT_FILE, self.folder / STATE_FILE)
        fsync_dir(self.folder)
        keep = self.files | {STATE_FILE}
        for p in self.folder.iterdir():
            if p.is_file() and p.name not in keep and not p.name.startswith(".lock"):
                p.unlink(missing_ok=True)


def _chunk(
    folder: Path, frame: pl.DataFrame, u_first: int, u_rows: int, tag: str, skip: list[str]
) -> Chunk:
    name = f"bars-{tag}-{u_first}.feather"
    write_feather_atomic(folder / name, frame)  # each symbol's bars in time order
    first, last = frame["timestamp"].min(), frame["timestamp"].max()
    assert isinstance(first, dt.datetime) and isinstance(last, dt.datetime)
    digest = bars_digest(frame, skip)
    return Chunk(name, iso_z(first), iso_z(last), u_first, u_rows, frame.height, digest)


def _store(
    folder: Path,
    previous: State | None,
    chunks: list[Chunk],
    new: pl.DataFrame,
    under: pl.DataFrame,
    tag: str,
    skip: list[str],
) -> list[Chunk]:
    """``chunks`` with the bars ``new`` (all later than theirs) stored: the last chunk is
    replaced by itself plus new bars while it holds fewer than :data:`CHUNK_ROWS` bars of
    the underlying; the rest go into new chunks of at most that many."""
    chunks = list(chunks)
    stamps = under["timestamp"]
    n_u, pos = stamps.len(), 0
    ts = pl.col("timestamp")
    if chunks and previous is not None and chunks[-1].u_rows < CHUNK_ROWS:
        last = chunks.pop()
        take = min(CHUNK_ROWS - last.u_rows, n_u)
        hi = stamps[take] if take < n_u else None
        part = new if hi is None else new.filter(ts < hi)
        merged = pl.concat([previous.read_chunk(last), part])
        chunks.append(_chunk(folder, merged, last.u_first, last.u_rows + take, tag, skip))
        if hi is None:
            return chunks
        new, pos = new.filter(ts >= hi), take
    u_first = chunks[-1].u_first + chunks[-1].u_rows if chunks else 0
    while True:
        take = min(CHUNK_ROWS, n_u - pos)
        hi = stamps[pos + take] if pos + take < n_u else None
        part = new if hi is None else new.filter(ts < hi)
        chunks.append(_chunk(folder, part, u_first, take, tag, skip))
        if hi is None:
            return chunks
        new, pos, u_first = new.filter(ts >= hi), pos + take, u_first + take
