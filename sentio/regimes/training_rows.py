"""The rows of the regime inputs a fold's model may be fitted on (the leakage guard).

A regime model of a fold sees the inputs of that fold's training rows only, less the rows
whose look-back window reaches into one of the fold's test blocks.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sentio.times import utc64

__all__ = ["regime_training_rows"]


def regime_training_rows(
    stamps: np.ndarray, window_start: np.ndarray, fold: dict[str, Any]
) -> tuple[np.ndarray, int]:
    """Rows of the regime inputs a fold's model may be fitted on, and how many were purged.

    A row qualifies when its bar lies in one of the fold's training ranges and the bars
    its inputs are computed from (``window_start`` to its own bar) do not reach into any
    of the fold's test blocks: the first rows after a test block summarise bars of that
    block, and fitting on them would let the test period shape the model.

    Args:
        stamps: ``datetime64[us]`` (naive UTC) bar start of each regime-input row.
        window_start: start of the first bar in each row's input window, same dtype.
        fold: one entry of ``folds.json``'s ``folds``.
    """
    in_train = np.zeros(stamps.shape, dtype=bool)
    for r in fold["train_ranges"]:
        lo, hi = np.searchsorted(stamps, [utc64(r["start"]), utc64(r["end"])], side="left")
        hi += int(hi < stamps.size and stamps[hi] == utc64(r["end"]))
        in_train[lo:hi] = True
    clean = in_train.copy()
    for b in fold["test_blocks"]:
        clean &= ~((window_start <= utc64(b["end"])) & (stamps >= utc64(b["start"])))
    return clean, int(in_train.sum() - clean.sum())
