"""The per-bar frames of the train stage's runs: loading them (:func:`load_bars`,
:func:`trade_returns`), stitching the folds in time order (:func:`stitch`), their
sessions and bars per year.

Library code only: no orchestration imports.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from sentio.evaluation import periods_per_year
from sentio.report.times import _naive_utc, _new_york


def load_bars(run: dict[str, Any], name: str = "backtest") -> pl.DataFrame | None:
    """The per-bar frame ``name`` (``backtest`` or ``reference_<policy>``) of one run.

    The files lie next to the run's ``output`` (``backtest.feather``); None when absent.
    """
    folder = Path(run["output"]).parent
    path = folder / f"{name}.feather"
    if not path.exists():
        return None
    return pl.read_ipc(path)


def trade_returns(run: dict[str, Any], frame: pl.DataFrame) -> np.ndarray | None:
    """Net P&L of each trade of the run's ledger as a fraction of the equity at its entry.

    The ledger is ``trades.feather`` beside the run's ``output``; the equity at entry is
    the equity before the entry bar (``equity / (1 + returns)`` of that bar). None when
    there is no ledger (or no equity column).
    """
    path = Path(run["output"]).parent / "trades.feather"
    if not path.exists() or "equity" not in frame.columns or frame.height == 0:
        return None
    ledger = pl.read_ipc(path, columns=["entry_time", "net_pnl"])
    if ledger.height == 0:
        return np.zeros(0)
    stamps = _naive_utc(frame["timestamp"]).to_numpy()
    entry = _naive_utc(ledger["entry_time"]).to_numpy()
    idx = np.clip(np.searchsorted(stamps, entry), 0, frame.height - 1)
    before = frame["equity"].to_numpy()[idx] / (1.0 + frame["returns"].to_numpy()[idx])
    with np.errstate(divide="ignore", invalid="ignore"):
        out = ledger["net_pnl"].to_numpy() / before
    return np.asarray(out[np.isfinite(out)], dtype=float)


def _first_stamp(frame: pl.DataFrame) -> int:
    """The first bar's timestamp as an integer (for ordering; empty frames first)."""
    if frame.height == 0:
        return -(2**62)
    return int(frame["timestamp"].cast(pl.Int64).min())  # type: ignore[arg-type]


def stitch(frames: Sequence[pl.DataFrame]) -> pl.DataFrame:
    """Concatenate test bars of several folds in time order.

    Bars stamped at a time already covered by an earlier frame (overlapping test ranges)
    are dropped, keeping the first, so that timestamps are strictly increasing.
    """
    if not frames:
        raise ValueError("nothing to stitch")
    common = [c for c in frames[0].columns if all(c in f.columns for f in frames)]
    ordered = sorted(frames, key=_first_stamp)
    out = pl.concat([f.select(common) for f in ordered], how="vertical_relaxed")
    return out.unique(subset="timestamp", keep="first", maintain_order=True).sort("timestamp")


def _ppy(frame: pl.DataFrame, hint: float | None) -> float:
    if hint is not None and math.isfinite(hint) and hint > 0:
        return float(hint)
    return float(periods_per_year(frame["timestamp"]))


def _n_sessions(frame: pl.DataFrame) -> int:
    """Number of New York session dates with bars in ``frame``."""
    if frame.height == 0:
        return 0
    return int(_new_york(frame["timestamp"]).dt.date().n_unique())
