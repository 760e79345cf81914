"""Regime history statistics for reports: shares, returns, runs, dwell times, transitions."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl

__all__ = ["regime_history", "run_lengths"]


def _num(x: float) -> float | None:
    """A JSON-able float (None for NaN / inf)."""
    return float(x) if math.isfinite(x) else None


def run_lengths(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Label and length of each maximal run of equal consecutive labels."""
    labels = np.asarray(labels)
    if labels.size == 0:
        return labels[:0], np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, labels[1:] != labels[:-1]])
    lengths = np.diff(np.r_[starts, labels.size])
    return labels[starts], lengths


def regime_history(
    labels: np.ndarray,
    timestamps: pl.Series | Sequence[Any] | None = None,
    returns: np.ndarray | None = None,
    *,
    n_states: int | None = None,
    names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Per-regime statistics of a label path, JSON-able.

    Args:
        labels: regime label of each bar (``0..K-1``), in time order.
        timestamps: bar timestamps (same length) for the covered span; optional.
        returns: per-bar returns aligned with ``labels`` (e.g. simple one-bar returns) for
            the mean return and volatility (standard deviation) per regime; optional.
        n_states: ``K``; default ``max(labels) + 1``.
        names: optional regime names (length ``K``).

    Returns:
        ``{"n_bars", "n_states", "start", "end", "regimes": [...], "transition_matrix",
        "transition_counts"}``; each regime entry holds ``label``, ``name``, ``n_bars``,
        ``share``, ``mean_return``, ``volatility``, ``n_runs``, ``mean_dwell_bars``,
        ``median_dwell_bars``, ``max_dwell_bars``. Runs are maximal stretches of equal
        consecutive labels (they may span sessions). The transition matrix is the empirical
        ``P(label_{t+1} = j | label_t = i)`` including staying (rows with no bars are None).
    """
    lab = np.asarray(labels).astype(np.int64).ravel()
    n = lab.size
    k = int(n_states if n_states is not None else (lab.max() + 1 if n else 0))
    if n and (lab.min() < 0 or lab.max() >= k):
        raise ValueError(f"labels must lie in 0..{k - 1}, got {lab.min()}..{lab.max()}")
    if returns is not None:
        ret = np.asarray(returns, dtype=np.float64).ravel()
        if ret.size != n:
            raise ValueError(f"returns has {ret.size} rows, labels {n}")
    if names is not None and len(names) != k:
        raise ValueError(f"names has {len(names)} entries for {k} regimes")
    run_label, run_len = run_lengths(lab)
    regimes: list[dict[str, Any]] = []
    for s in range(k):
        mask = lab == s
        count = int(mask.sum())
        runs = run_len[run_label == s]
        entry: dict[str, Any] = {
            "label": s,
            "name": names[s] if names is not None else None,
            "n_bars": count,
            "share": _num(count / n) if n else None,
            "mean_return": None,
            "volatility": None,
            "n_runs": int(runs.size),
            "mean_dwell_bars": _num(float(runs.mean())) if runs.size else None,
            "median_dwell_bars": _num(float(np.median(runs))) if runs.size else None,
            "max_dwell_bars": int(runs.max()) if runs.size else None,
        }
        if returns is not None and count:
            r = ret[mask]
            entry["mean_return"] = _num(float(np.mean(r)))
            entry["volatility"] = _num(float(np.std(r, ddof=1))) if count > 1 else None
        regimes.append(entry)
    counts = np.zeros((k, k), dtype=np.int64)
    if n > 1:
        np.add.at(counts, (lab[:-1], lab[1:]), 1)
    rows = counts.sum(axis=1)
    matrix = [[float(c / rows[i]) for c in counts[i]] if rows[i] else None for i in range(k)]
    start = end = None
    if timestamps is not None and n:
        ts = list(timestamps)
        if len(ts) != n:
            raise ValueError(f"timestamps has {len(ts)} rows, labels {n}")
        start, end = str(ts[0]), str(ts[-1])
    return {
        "n_bars": n,
        "n_states": k,
        "start": start,
        "end": end,
        "regimes": regimes,
        "transition_matrix": matrix,
        "transition_counts": counts.tolist(),
    }
