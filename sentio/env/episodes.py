"""Where episodes may run: windows inside a fold's training ranges, never across them.

A fold hands over its training ranges as half-open row ranges ``[a, b)`` of the market
arrays (already purged and embargoed). An episode is ``episode_sessions`` consecutive
sessions, cut to the part inside one range: it starts at the first row of its first
session inside the range, but no earlier than ``a + window - 1``, so that the observation
window of its first step lies inside the range too (a range that follows a test block
never shows the agent rows of that block), and ends at the last row of its last session
inside the range. Every row an episode reads or steps through, including the fill bar of
its last decision, lies inside the range. Nor does an episode span a data gap (sessions
the data lacks, :attr:`~sentio.env.market.MarketData.gap_before`): a range is cut there and
the part after the gap starts its own episodes (its first observation window may look
back across the gap: the past).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sentio.env.market import MarketData
from sentio.errors import DataError

__all__ = ["candidate_episodes", "rows_from_ranges", "sample_episodes"]


def candidate_episodes(
    market: MarketData,
    ranges: Sequence[tuple[int, int]],
    *,
    window: int,
    episode_sessions: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Every allowed episode as ``(starts, ends)`` (inclusive last rows), in time order.

    Raises:
        DataError: no range holds an episode of at least one step.
    """
    starts: list[int] = []
    ends: list[int] = []
    session = market.session
    pieces = []
    for a, b in ranges:
        a = max(int(a), 0) + window - 1  # the first observation window inside the range
        b = min(int(b), market.n_rows)
        if b > a:
            pieces.extend(market.split_at_gaps(a, b))  # no episode steps across a data gap
    for a, b in pieces:
        if b - a < 2:
            continue
        seg = session[a:b]
        cuts = np.flatnonzero(np.diff(seg)) + 1  # first row of each later session
        first = np.concatenate([[0], cuts]) + a
        last = np.concatenate([cuts, [b - a]]) + a - 1
        for i in range(0, first.size, episode_sessions):
            s, e = int(first[i]), int(last[min(i + episode_sessions, first.size) - 1])
            if e > s:
                starts.append(s)
                ends.append(e)
    if not starts:
        raise DataError(
            f"no episode of at least one step fits in the training ranges {list(ranges)[:5]} "
            f"(observation window {window} rows, {episode_sessions} session(s) per episode)"
        )
    return np.asarray(starts, dtype=np.int64), np.asarray(ends, dtype=np.int64)


def sample_episodes(
    starts: np.ndarray, ends: np.ndarray, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` episodes drawn uniformly (with replacement) from the candidates."""
    i = rng.integers(0, starts.size, size=n)
    return starts[i], ends[i]


def rows_from_ranges(market: MarketData, ranges: Sequence[dict[str, str]]) -> list[tuple[int, int]]:
    """Map ranges given by timestamps (``{"start", "end"}``, ISO, inclusive) to market rows.

    ``folds.json`` gives ranges of the feature frame; the market may lack some of those
    rows (no price or regime probability), so the mapping goes by time.
    """
    from sentio.times import utc64

    out: list[tuple[int, int]] = []
    ts = market.timestamps
    for r in ranges:
        lo, hi = utc64(r["start"]), utc64(r["end"])
        a = int(np.searchsorted(ts, lo, side="left"))
        b = int(np.searchsorted(ts, hi, side="right"))
        if b > a:
            out.append((a, b))
    return out
