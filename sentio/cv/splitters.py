"""Purged and embargoed cross-validation splitters for time-ordered samples.

Three scikit-learn-compatible splitters cut the samples (rows in time order) into
contiguous blocks and hold blocks out as test sets:

* :class:`PurgedWalkForward`: ``n_splits + 1`` blocks; split ``j`` tests block ``j + 1``
  and trains on blocks ``0..j`` (anchored) or on block ``j`` alone.
* :class:`PurgedKFold`: ``n_splits`` blocks, each tested once; training is every other
  block.
* :class:`CombinatorialPurgedCV`: ``N`` groups; every combination of ``k`` test groups is
  one split (``C(N, k)`` splits in :func:`itertools.combinations` order), and the test
  results recombine into ``C(N, k) * k / N`` backtest paths (:func:`cpcv_paths`,
  :func:`assemble_paths`).

Spans, purging and embargo
--------------------------
Every sample ``i`` has a span ``[t0_i, t1_i]`` (inclusive integers in one time unit, e.g.
bar positions): the bars its label or training episode touches. By default sample ``i``
spans ``[i, i + label_bars]`` (``label_bars = 1``: the order decided at the close of bar
``i`` fills at the open of bar ``i + 1``). Spans must have ``t0`` non-decreasing and
``t1 >= t0``.

A test block (a maximal run of adjacent test samples) spans ``[min t0, max t1]`` of its
samples. A training candidate is **purged** when its span overlaps the span of any test
block, and **embargoed** when its ``t0`` lies in ``(end, end + embargo]`` after the end of
a test block's span. The embargo is in the units of the spans (bars by default); with
``embargo_fraction`` it is ``ceil(embargo_fraction * n_samples)`` instead.

Fold edges
----------
With ``groups`` (one label per sample, e.g. its session date; consecutive equal labels form
one unit) blocks consist of whole units: a block boundary never splits a session. Blocks
are balanced by sample count as far as the units allow: the ``b``-th cut is the unit
boundary nearest to ``b * n / n_blocks`` (ties to the earlier one), moved only as far as
needed to keep every block non-empty. Without groups every sample is its own unit.

Errors
------
:class:`~sentio.errors.DataError` when the data cannot carry the folds (fewer samples or
sessions than blocks, a span longer than the shortest block, an empty training set after
purging and embargo, malformed spans or groups); :class:`~sentio.errors.ConfigError` for
impossible parameters (bad split counts, negative embargo, an embargo longer than the
shortest block). Every message is one line with the numbers involved.
"""

from __future__ import annotations

import abc
import itertools
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from sentio.errors import ConfigError, DataError

__all__ = [
    "CombinatorialPurgedCV",
    "Fold",
    "PurgedKFold",
    "PurgedWalkForward",
    "assemble_paths",
    "contiguous_blocks",
    "cpcv_paths",
    "fold_paths",
    "path_sources",
    "purge_embargo",
    "resolve_spans",
    "unit_bounds",
]

IntArray = NDArray[np.int64]

# status codes of a sample inside one split
_TRAIN = 0  # training candidate, kept
_TEST = 1
_PURGED = 2
_EMBARGOED = 3
_OUTSIDE = 4  # neither test nor training candidate (walk-forward: blocks after the test)


# --------------------------------------------------------------------------- the fold


def _frozen(a: IntArray) -> IntArray:
    a.setflags(write=False)
    return a


@dataclass(frozen=True, eq=False)
class Fold:
    """One split: training and test indices plus what purging and embargo removed.

    Attributes:
        index: split number (0-based), the order of ``split``.
        train: sorted int64 indices of the training samples (after purge and embargo).
        test: sorted int64 indices of the test samples.
        test_blocks: half-open ``(start, stop)`` index ranges of the test set; adjacent
            test groups form one block.
        test_groups: ids of the tested groups (cpcv) or of the tested block
            (walk-forward, k-fold).
        n_purged: training candidates removed because their span overlaps a test span.
        n_embargoed: training candidates removed by the embargo and not already purged.
        test_group_ranges: ``(start, stop)`` of each tested group, aligned with
            ``test_groups`` (equal to ``test_blocks`` unless adjacent groups merged).
        test_spans: ``(t0, t1)`` span of each test block, aligned with ``test_blocks``.
        embargo: the embargo applied, in span units (bars).
    """

    index: int
    train: IntArray
    test: IntArray
    test_blocks: tuple[tuple[int, int], ...]
    test_groups: tuple[int, ...]
    n_purged: int
    n_embargoed: int
    test_group_ranges: tuple[tuple[int, int], ...] = ()
    test_spans: tuple[tuple[int, int], ...] = ()
    embargo: int = 0

    def train_ranges(self) -> list[tuple[int, int]]:
        """Half-open ``(start, stop)`` runs of contiguous training indices, in order.

        These are the stretches where training episodes may be sampled without crossing
        a test block, a purge or an embargo.
        """
        train = self.train
        if train.size == 0:
            return []
        breaks = np.flatnonzero(np.diff(train) != 1)
        starts = train[np.r_[0, breaks + 1]]
        stops = train[np.r_[breaks, train.size - 1]] + 1
        return [(int(a), int(b)) for a, b in zip(starts, stops, strict=True)]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary (sizes, ranges, counts; no index arrays)."""
        return {
            "index": int(self.index),
            "n_train": int(self.train.size),
            "n_test": int(self.test.size),
            "test_blocks": [[int(a), int(b)] for a, b in self.test_blocks],
            "test_groups": [int(g) for g in self.test_groups],
            "test_group_ranges": [[int(a), int(b)] for a, b in self.test_group_ranges],
            "test_spans": [[int(a), int(b)] for a, b in self.test_spans],
            "n_purged": int(self.n_purged),
            "n_embargoed": int(self.n_embargoed),
            "embargo_bars": int(self.embargo),
            "train_ranges": [[a, b] for a, b in self.train_ranges()],
        }


# --------------------------------------------------------------------------- inputs


def _n_samples(X: Any) -> int:
    """Number of samples of ``X``: an int itself, ``X.shape[0]`` or ``len(X)``."""
    if isinstance(X, int | np.integer):
        n = int(X)
    elif hasattr(X, "shape") and len(X.shape) > 0:
        n = int(X.shape[0])
    else:
        n = len(X)
    if n < 0:
        raise DataError(f"number of samples must be >= 0, got {n}")
    return n


def resolve_spans(
    n_samples: int,
    spans: ArrayLike | None = None,
    *,
    t0: ArrayLike | None = None,
    t1: ArrayLike | None = None,
    label_bars: int = 1,
) -> tuple[IntArray, IntArray]:
    """Validated int64 ``(t0, t1)`` span arrays of ``n_samples`` samples.

    Args:
        n_samples: number of samples.
        spans: ``(n_samples, 2)`` integer array of inclusive ``[t0, t1]`` per sample.
        t0: span starts (alternative to ``spans``; needs ``t1`` too).
        t1: span ends.
        label_bars: when no spans are given, sample ``i`` spans ``[i, i + label_bars]``.

    Raises:
        DataError: wrong shape or dtype, ``t1 < t0`` or ``t0`` decreasing (the message
            names the first bad row).
    """
    if spans is not None and (t0 is not None or t1 is not None):
        raise DataError("give spans= or t0=/t1=, not both")
    if spans is None and t0 is None and t1 is None:
        start = np.arange(n_samples, dtype=np.int64)
        return start, start + int(label_bars)
    if spans is not None:
        arr = np.asarray(spans)
        if arr.ndim != 2 or arr.shape[1] != 2:
            raise DataError(f"spans must have shape ({n_samples}, 2), got {arr.shape}")
        a, b = arr[:, 0], arr[:, 1]
    else:
        if t0 is None or t1 is None:
            raise DataError("t0= and t1= must be given together")
        a, b = np.asarray(t0).ravel(), np.asarray(t1).ravel()
    for name, v in (("t0", a), ("t1", b)):
        if v.shape[0] != n_samples:
            raise DataError(f"spans: {name} has {v.shape[0]} rows for {n_samples} samples")
        if not (np.issubdtype(v.dtype, np.integer) and v.dtype != np.bool_):
            raise DataError(f"spans: {name} must be integers (bar positions), got {v.dtype}")
    a = a.astype(np.int64, copy=False)
    b = b.astype(np.int64, copy=False)
    bad_len = np.flatnonzero(b < a)
    bad_ord = np.flatnonzero(a[1:] < a[:-1]) + 1
    first_len = int(bad_len[0]) if bad_len.size else n_samples
    first_ord = int(bad_ord[0]) if bad_ord.size else n_samples
    if first_len < n_samples and first_len <= first_ord:
        i = first_len
        raise DataError(
            f"spans row {i}: t1 {b[i]} < t0 {a[i]} (a span must end at or after its start)"
        )
    if first_ord < n_samples:
        i = first_ord
        raise DataError(
            f"spans row {i}: t0 {a[i]} < t0 {a[i - 1]} of row {i - 1} "
            "(samples must be in time order, t0 non-decreasing)"
        )
    return a, b


def unit_bounds(n_samples: int, groups: ArrayLike | None = None) -> IntArray:
    """Boundaries ``[0, ..., n_samples]`` of the units (runs of equal consecutive groups).

    Without ``groups`` every sample is its own unit (``arange(n_samples + 1)``).
    """
    if groups is None:
        return np.arange(n_samples + 1, dtype=np.int64)
    g = np.asarray(groups)
    if g.ndim != 1 or g.shape[0] != n_samples:
        raise DataError(f"groups must have one label per sample: {g.shape} for {n_samples} samples")
    if n_samples == 0:
        return np.zeros(1, dtype=np.int64)
    starts = np.flatnonzero(g[1:] != g[:-1]) + 1
    return np.r_[0, starts, n_samples].astype(np.int64)


def contiguous_blocks(n_samples: int, n_blocks: int, groups: ArrayLike | None = None) -> IntArray:
    """Boundaries (length ``n_blocks + 1``) of ``n_blocks`` contiguous, non-empty blocks.

    Cut ``b`` is the unit boundary nearest to ``b * n_samples / n_blocks`` (ties to the
    earlier boundary), then moved forward only where a block would otherwise be empty.

    Raises:
        DataError: fewer samples (or sessions, with ``groups``) than blocks.
    """
    if n_blocks < 1:
        raise ConfigError(f"need at least 1 block, got {n_blocks}")
    bnd = unit_bounds(n_samples, groups)
    n_units = bnd.size - 1
    if n_units < n_blocks:
        what = "sessions (groups)" if groups is not None else "samples"
        raise DataError(
            f"{n_units} {what} cannot make {n_blocks} blocks; need at least one per block"
        )
    b = np.arange(1, n_blocks, dtype=np.int64)
    target = b * n_samples  # compared with n_blocks * boundary: exact integer arithmetic
    scaled = bnd * n_blocks
    hi = np.searchsorted(scaled, target, side="left")  # in [1, n_units]
    lo = hi - 1
    pick = np.where(target - scaled[lo] <= scaled[hi] - target, lo, hi)
    # every block non-empty: cut b at unit index >= b and <= n_units - n_blocks + b,
    # strictly increasing (non-decreasing after subtracting b)
    c = np.clip(pick - b, 0, n_units - n_blocks)
    idx = np.maximum.accumulate(c) + b if c.size else c
    return np.r_[0, bnd[idx], n_samples].astype(np.int64)


# --------------------------------------------------------------------------- purge / embargo


def _merge_ranges(ranges: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted ranges with touching or overlapping ones merged; empty ones dropped."""
    out: list[tuple[int, int]] = []
    for a, b in sorted((int(a), int(b)) for a, b in ranges if b > a):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _purge_status(
    status: NDArray[np.int8],
    t0: IntArray,
    t1: IntArray,
    cummax_t1: IntArray,
    blocks: Sequence[tuple[int, int]],
    block_hi: Sequence[int],
    embargo: int,
) -> tuple[int, int, list[tuple[int, int]]]:
    """Mark purged and embargoed training candidates in ``status`` (in place).

    ``status`` holds ``_TRAIN`` for candidates and ``_TEST`` on ``blocks`` (merged,
    sorted). Returns ``(n_purged, n_embargoed, test spans)``.
    """
    n_purged = 0
    spans: list[tuple[int, int]] = []
    ends: list[int] = []
    for (start, _stop), hi in zip(blocks, block_hi, strict=True):
        lo = int(t0[start])
        spans.append((lo, int(hi)))
        # candidates overlapping [lo, hi]: t0 <= hi and t1 >= lo. Samples with t0 in
        # [lo, hi] all overlap; before that only those with t1 >= lo, none before the
        # first index where the running max of t1 reaches lo.
        p_end = int(np.searchsorted(t0, hi, side="right"))
        mid = int(np.searchsorted(t0, lo, side="left"))
        first = int(np.searchsorted(cummax_t1, lo, side="left"))
        seg = status[first:p_end]
        hit = seg == _TRAIN
        if mid > first:
            hit[: mid - first] &= t1[first:mid] >= lo
        n_purged += int(np.count_nonzero(hit))
        seg[hit] = _PURGED
        ends.append(p_end)
    n_embargoed = 0
    if embargo > 0:
        for p_end, (_lo, hi) in zip(ends, spans, strict=True):
            e_end = int(np.searchsorted(t0, hi + embargo, side="right"))
            if e_end > p_end:
                seg = status[p_end:e_end]
                hit = seg == _TRAIN
                n_embargoed += int(np.count_nonzero(hit))
                seg[hit] = _EMBARGOED
    return n_purged, n_embargoed, spans


def purge_embargo(
    t0: ArrayLike,
    t1: ArrayLike,
    test_blocks: Sequence[tuple[int, int]],
    embargo: int = 0,
    candidates: ArrayLike | None = None,
) -> tuple[IntArray, int, int]:
    """Training indices left after purging and embargo around given test blocks.

    The general routine behind every splitter, for custom folds.

    Args:
        t0: span starts, non-decreasing (see :func:`resolve_spans`).
        t1: span ends, ``>= t0``.
        test_blocks: half-open ``(start, stop)`` index ranges of the test samples;
            touching ranges are merged into one block.
        embargo: span units (bars) after the end of each test block's span in which
            training samples may not start.
        candidates: boolean mask of the training candidates (default: every sample not
            in a test block).

    Returns:
        ``(train, n_purged, n_embargoed)``: sorted int64 training indices, candidates
        removed by purging, and candidates removed by the embargo and not purged.
    """
    a, b = resolve_spans(np.asarray(t0).shape[0], t0=t0, t1=t1)
    if embargo < 0:
        raise ConfigError(f"embargo must be >= 0 bars, got {embargo}")
    n = a.size
    if candidates is None:
        status = np.zeros(n, dtype=np.int8)
    else:
        mask = np.asarray(candidates, dtype=bool)
        if mask.shape != (n,):
            raise DataError(f"candidates must be a mask of {n} samples, got shape {mask.shape}")
        status = np.where(mask, _TRAIN, _OUTSIDE).astype(np.int8)
    blocks = _merge_ranges(test_blocks)
    for s, e in blocks:
        if s < 0 or e > n:
            raise DataError(f"test block ({s}, {e}) outside 0..{n}")
        status[s:e] = _TEST
    hi = [int(b[s:e].max()) for s, e in blocks]
    n_p, n_e, _ = _purge_status(status, a, b, np.maximum.accumulate(b), blocks, hi, int(embargo))
    train = np.flatnonzero(status == _TRAIN).astype(np.int64, copy=False)
    return train, n_p, n_e


# --------------------------------------------------------------------------- splitters


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class _Layout:
    """Spans, blocks and embargo of one call, shared by its splits."""

    n: int
    t0: IntArray
    t1: IntArray
    cummax_t1: IntArray
    bounds: IntArray  # block boundaries, length n_blocks + 1
    block_hi: IntArray  # max t1 per block
    embargo: int


class _PurgedSplitter(abc.ABC):
    """Shared machinery: block layout, purge/embargo, ``split``/``folds``."""

    def __init__(
        self, *, embargo: int = 0, embargo_fraction: float | None = None, label_bars: int = 1
    ) -> None:
        self.embargo = _check_int("embargo", embargo, 0)
        if embargo_fraction is not None and not (
            isinstance(embargo_fraction, float | int)
            and not isinstance(embargo_fraction, bool)
            and 0.0 <= float(embargo_fraction) < 1.0
        ):
            raise ConfigError(f"embargo_fraction must lie in [0, 1), got {embargo_fraction!r}")
        self.embargo_fraction = None if embargo_fraction is None else float(embargo_fraction)
        self.label_bars = _check_int("label_bars", label_bars, 0)

    # subclasses --------------------------------------------------------------
    name = "purged"

    @property
    @abc.abstractmethod
    def n_blocks(self) -> int:
        """Number of contiguous blocks the samples are cut into."""

    @abc.abstractmethod
    def _plan(self) -> Iterator[tuple[tuple[int, ...], tuple[int, ...]]]:
        """Per split: (tested block ids, training-candidate block ids)."""

    @abc.abstractmethod
    def get_n_splits(self, X: Any = None, y: Any = None, groups: Any = None) -> int:
        """Number of splits (independent of the data)."""

    # shared ------------------------------------------------------------------
    def embargo_bars(self, n_samples: int) -> int:
        """The embargo in span units: ``ceil(embargo_fraction * n)`` if set, else ``embargo``.

        A product within a relative ``1e-9`` of an integer counts as that integer, so that
        float noise does not add a bar (``0.07 * 100`` is 7, not 8).
        """
        if self.embargo_fraction is not None:
            x = self.embargo_fraction * n_samples
            r = round(x)
            return int(r) if abs(x - r) <= 1e-9 * max(1.0, x) else math.ceil(x)
        return self.embargo

    def _layout(
        self,
        X: Any,
        groups: ArrayLike | None,
        spans: ArrayLike | None,
        t0: ArrayLike | None,
        t1: ArrayLike | None,
    ) -> _Layout:
        n = _n_samples(X)
        a, b = resolve_spans(n, spans, t0=t0, t1=t1, label_bars=self.label_bars)
        bounds = contiguous_blocks(n, self.n_blocks, groups)
        starts, stops = bounds[:-1], bounds[1:]
        extent = a[stops - 1] - a[starts] + 1
        k = int(np.argmin(extent))
        shortest = int(extent[k])
        where = f"block {k} = samples {starts[k]}..{stops[k] - 1}, {shortest} bars"
        embargo = self.embargo_bars(n)
        if embargo > shortest:
            src = (
                f" (ceil({self.embargo_fraction} x {n} samples))"
                if self.embargo_fraction is not None
                else ""
            )
            raise ConfigError(
                f"embargo of {embargo} bars{src} is larger than the shortest block "
                f"({where}); lower the embargo or use fewer splits"
            )
        length = b - a
        r = int(np.argmax(length))
        if int(length[r]) > shortest:
            raise DataError(
                f"purge span of {int(length[r])} bars (t1 - t0 of row {r}) is larger than the "
                f"shortest block ({where}); use shorter labels or fewer splits"
            )
        return _Layout(
            n=n,
            t0=a,
            t1=b,
            cummax_t1=np.maximum.accumulate(b),
            bounds=bounds,
            block_hi=np.maximum.reduceat(b, starts),
            embargo=embargo,
        )

    def _fold(
        self, lay: _Layout, index: int, test_ids: Sequence[int], train_ids: Sequence[int]
    ) -> Fold:
        bounds = lay.bounds
        status = np.full(lay.n, _OUTSIDE, dtype=np.int8)
        for g in train_ids:
            status[bounds[g] : bounds[g + 1]] = _TRAIN
        n_candidates = int(sum(bounds[g + 1] - bounds[g] for g in train_ids))
        ids = sorted(int(g) for g in test_ids)
        # runs of adjacent test groups form one block
        runs: list[list[int]] = []
        for g in ids:
            if runs and g == runs[-1][-1] + 1:
                runs[-1].append(g)
            else:
                runs.append([g])
        blocks = [(int(bounds[r[0]]), int(bounds[r[-1] + 1])) for r in runs]
        block_hi = [int(lay.block_hi[r[0] : r[-1] + 1].max()) for r in runs]
        for s, e in blocks:
            status[s:e] = _TEST
        n_p, n_e, spans = _purge_status(
            status, lay.t0, lay.t1, lay.cummax_t1, blocks, block_hi, lay.embargo
        )
        # training lies within the hull of the candidate blocks
        a = int(bounds[min(train_ids)]) if train_ids else 0
        b = int(bounds[max(train_ids) + 1]) if train_ids else 0
        train = np.flatnonzero(status[a:b] == _TRAIN).astype(np.int64, copy=False)
        train += a
        if train.size == 0:
            raise DataError(
                f"split {index}: training set empty after purging {n_p} and embargoing {n_e} "
                f"of {n_candidates} candidate samples (test blocks {blocks}, spans {spans}, "
                f"embargo {lay.embargo} bars); use fewer splits, a smaller embargo or shorter spans"
            )
        test = np.concatenate([np.arange(s, e, dtype=np.int64) for s, e in blocks])
        return Fold(
            index=index,
            train=_frozen(train),
            test=_frozen(test),
            test_blocks=tuple(blocks),
            test_groups=tuple(ids),
            n_purged=n_p,
            n_embargoed=n_e,
            test_group_ranges=tuple((int(bounds[g]), int(bounds[g + 1])) for g in ids),
            test_spans=tuple(spans),
            embargo=lay.embargo,
        )

    def iter_folds(
        self,
        X: Any,
        groups: ArrayLike | None = None,
        spans: ArrayLike | None = None,
        *,
        t0: ArrayLike | None = None,
        t1: ArrayLike | None = None,
    ) -> Iterator[Fold]:
        """Lazily yield the :class:`Fold` of each split (see :meth:`folds`)."""
        lay = self._layout(X, groups, spans, t0, t1)
        for j, (test_ids, train_ids) in enumerate(self._plan()):
            yield self._fold(lay, j, test_ids, train_ids)

    def folds(
        self,
        X: Any,
        groups: ArrayLike | None = None,
        spans: ArrayLike | None = None,
        *,
        t0: ArrayLike | None = None,
        t1: ArrayLike | None = None,
    ) -> list[Fold]:
        """Every split as a :class:`Fold`.

        Args:
            X: the number of samples, or anything with ``shape[0]`` / ``len``.
            groups: one label per sample (e.g. its session date); consecutive equal
                labels form a unit that block boundaries never split.
            spans: ``(n, 2)`` integer ``[t0, t1]`` per sample (inclusive, non-decreasing
                ``t0``); default ``[i, i + label_bars]``.
            t0: span starts, instead of ``spans`` (with ``t1``).
            t1: span ends.

        Raises:
            DataError: too few samples or sessions for the blocks, a span longer than
                the shortest block, malformed spans, or an empty training set.
            ConfigError: an embargo longer than the shortest block.
        """
        return list(self.iter_folds(X, groups, spans, t0=t0, t1=t1))

    def split(
        self,
        X: Any,
        y: Any = None,
        groups: ArrayLike | None = None,
        *,
        spans: ArrayLike | None = None,
        t0: ArrayLike | None = None,
        t1: ArrayLike | None = None,
    ) -> Iterator[tuple[IntArray, IntArray]]:
        """Yield ``(train, test)`` int64 index arrays (scikit-learn's splitter protocol).

        ``y`` is ignored; ``groups`` are session labels that fold edges respect (not
        scikit-learn's group-exclusion semantics). See :meth:`folds`.
        """
        for fold in self.iter_folds(X, groups, spans, t0=t0, t1=t1):
            yield fold.train, fold.test

    def _params(self) -> dict[str, Any]:
        return {
            "embargo": self.embargo,
            "embargo_fraction": self.embargo_fraction,
            "label_bars": self.label_bars,
        }

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._params().items())
        return f"{type(self).__name__}({args})"


class PurgedWalkForward(_PurgedSplitter):
    """Purged walk-forward: test blocks in time order, training before each.

    The samples are cut into ``n_splits + 1`` contiguous blocks; split ``j`` tests block
    ``j + 1`` and trains on blocks ``0..j`` (``anchored``) or on block ``j`` only. Training
    samples whose span reaches into the test block are purged; the embargo (after the
    test block) removes nothing here since no training follows a test block, but the
    same purge/embargo routine as the other splitters is applied.

    Args:
        n_splits: number of test blocks (>= 1).
        anchored: train from the first block (True) or on the previous block only.
        embargo: bars after each test block's span in which training may not start.
        embargo_fraction: embargo as ``ceil(fraction * n_samples)``; replaces ``embargo``.
        label_bars: default span length past a sample's own bar.
    """

    name = "walk_forward"

    def __init__(
        self,
        n_splits: int = 4,
        anchored: bool = True,
        embargo: int = 0,
        *,
        embargo_fraction: float | None = None,
        label_bars: int = 1,
    ) -> None:
        super().__init__(embargo=embargo, embargo_fraction=embargo_fraction, label_bars=label_bars)
        self.n_splits = _check_int("n_splits", n_splits, 1)
        self.anchored = bool(anchored)

    @property
    def n_blocks(self) -> int:
        """``n_splits + 1``."""
        return self.n_splits + 1

    def get_n_splits(self, X: Any = None, y: Any = None, groups: Any = None) -> int:
        """``n_splits``."""
        return self.n_splits

    def _plan(self) -> Iterator[tuple[tuple[int, ...], tuple[int, ...]]]:
        for j in range(self.n_splits):
            train = tuple(range(j + 1)) if self.anchored else (j,)
            yield (j + 1,), train

    def _params(self) -> dict[str, Any]:
        return {"n_splits": self.n_splits, "anchored": self.anchored} | super()._params()


class PurgedKFold(_PurgedSplitter):
    """Purged k-fold: ``n_splits`` contiguous blocks, each tested once.

    Training is every other sample, minus those whose span overlaps the test block's
    span (purge) and those starting within ``embargo`` bars after it (embargo).

    Args:
        n_splits: number of folds (>= 2).
        embargo: bars after each test block's span in which training may not start.
        embargo_fraction: embargo as ``ceil(fraction * n_samples)``; replaces ``embargo``.
        label_bars: default span length past a sample's own bar.
    """

    name = "kfold"

    def __init__(
        self,
        n_splits: int = 5,
        embargo: int = 0,
        *,
        embargo_fraction: float | None = None,
        label_bars: int = 1,
    ) -> None:
        super().__init__(embargo=embargo, embargo_fraction=embargo_fraction, label_bars=label_bars)
        self.n_splits = _check_int("n_splits", n_splits, 2)

    @property
    def n_blocks(self) -> int:
        """``n_splits``."""
        return self.n_splits

    def get_n_splits(self, X: Any = None, y: Any = None, groups: Any = None) -> int:
        """``n_splits``."""
        return self.n_splits

    def _plan(self) -> Iterator[tuple[tuple[int, ...], tuple[int, ...]]]:
        for j in range(self.n_splits):
            yield (j,), tuple(g for g in range(self.n_splits) if g != j)

    def _params(self) -> dict[str, Any]:
        return {"n_splits": self.n_splits} | super()._params()


class CombinatorialPurgedCV(_PurgedSplitter):
    """Combinatorial purged cross-validation (de Prado): every choice of ``k`` of ``N`` groups.

    The samples are cut into ``n_groups`` contiguous groups; each combination of
    ``n_test_groups`` groups (in :func:`itertools.combinations` order) is one split's test
    set, the other groups its training candidates. Adjacent test groups form one test
    block; purge and embargo apply around each block. Each group is tested in
    ``C(N - 1, k - 1)`` splits, which recombine into that many backtest paths
    (:meth:`paths`, :func:`assemble_paths`).

    Args:
        n_groups: ``N`` (>= 2).
        n_test_groups: ``k`` (1 <= k < N).
        embargo: bars after each test block's span in which training may not start.
        embargo_fraction: embargo as ``ceil(fraction * n_samples)``; replaces ``embargo``.
        label_bars: default span length past a sample's own bar.
    """

    name = "cpcv"

    def __init__(
        self,
        n_groups: int = 6,
        n_test_groups: int = 2,
        embargo: int = 0,
        *,
        embargo_fraction: float | None = None,
        label_bars: int = 1,
    ) -> None:
        super().__init__(embargo=embargo, embargo_fraction=embargo_fraction, label_bars=label_bars)
        self.n_groups = _check_int("n_groups", n_groups, 2)
        self.n_test_groups = _check_int("n_test_groups", n_test_groups, 1)
        if self.n_test_groups >= self.n_groups:
            raise ConfigError(
                f"cpcv needs n_test_groups < n_groups, got {self.n_test_groups} >= {self.n_groups}"
            )

    @property
    def n_blocks(self) -> int:
        """``n_groups``."""
        return self.n_groups

    @property
    def n_paths(self) -> int:
        """Number of backtest paths, ``C(N, k) * k / N = C(N - 1, k - 1)``."""
        return math.comb(self.n_groups - 1, self.n_test_groups - 1)

    def get_n_splits(self, X: Any = None, y: Any = None, groups: Any = None) -> int:
        """``C(n_groups, n_test_groups)``."""
        return math.comb(self.n_groups, self.n_test_groups)

    def _plan(self) -> Iterator[tuple[tuple[int, ...], tuple[int, ...]]]:
        for test in itertools.combinations(range(self.n_groups), self.n_test_groups):
            yield test, tuple(g for g in range(self.n_groups) if g not in test)

    def paths(self) -> list[list[tuple[int, int]]]:
        """The backtest paths as ``(group, split index)`` pairs (see :func:`cpcv_paths`)."""
        return cpcv_paths(self.n_groups, self.n_test_groups)

    def _params(self) -> dict[str, Any]:
        return {"n_groups": self.n_groups, "n_test_groups": self.n_test_groups} | super()._params()


# --------------------------------------------------------------------------- paths


def cpcv_paths(n_groups: int, n_test_groups: int) -> list[list[tuple[int, int]]]:
    """Backtest paths of combinatorial purged CV.

    Path ``p`` takes, for each group ``g = 0..N-1``, the ``p``-th split (by split index)
    among those that test ``g``. There are ``C(N, k) * k / N`` paths; each covers every
    group exactly once.

    Returns:
        One list per path of ``(group, split_index)`` pairs in group order.
    """
    if not 1 <= n_test_groups < n_groups:
        raise ConfigError(
            f"cpcv needs 1 <= n_test_groups < n_groups, got {n_test_groups}, {n_groups}"
        )
    testers: list[list[int]] = [[] for _ in range(n_groups)]
    for s, combo in enumerate(itertools.combinations(range(n_groups), n_test_groups)):
        for g in combo:
            testers[g].append(s)
    n_paths = math.comb(n_groups - 1, n_test_groups - 1)
    return [[(g, testers[g][p]) for g in range(n_groups)] for p in range(n_paths)]


def fold_paths(folds: Sequence[Fold]) -> list[list[tuple[int, int]]]:
    """Backtest paths from any folds: path ``p`` takes each tested group's ``p``-th fold.

    Equal to :func:`cpcv_paths` for combinatorial folds; one path for k-fold (every
    block) and for walk-forward (blocks ``1..n``).

    Raises:
        DataError: the groups are tested unequally often (no consistent paths).
    """
    testers: dict[int, list[int]] = {}
    for fold in sorted(folds, key=lambda f: f.index):
        for g in fold.test_groups:
            testers.setdefault(int(g), []).append(int(fold.index))
    counts = {g: len(s) for g, s in testers.items()}
    if len(set(counts.values())) > 1:
        raise DataError(f"groups are tested unequally often ({counts}); no consistent paths")
    n_paths = next(iter(counts.values()), 0)
    groups = sorted(testers)
    return [[(g, testers[g][p]) for g in groups] for p in range(n_paths)]


def _fold_map(folds: Sequence[Fold]) -> dict[int, Fold]:
    return {int(f.index): f for f in folds}


def _group_range(fold: Fold, group: int) -> tuple[int, int]:
    try:
        return fold.test_group_ranges[fold.test_groups.index(group)]
    except ValueError:
        raise DataError(f"split {fold.index} does not test group {group}") from None


def path_sources(
    folds: Sequence[Fold], paths: Sequence[Sequence[tuple[int, int]]] | None = None
) -> list[tuple[IntArray, IntArray]]:
    """Per path: ``(samples, splits)``, the sample indices it covers in time order and the
    split whose test result supplies each.

    Args:
        folds: the folds of one splitter call.
        paths: ``(group, split)`` pairs per path; default :func:`fold_paths`.
    """
    by_index = _fold_map(folds)
    out: list[tuple[IntArray, IntArray]] = []
    for path in fold_paths(folds) if paths is None else paths:
        samples, splits = [], []
        for g, s in path:
            a, b = _group_range(by_index[int(s)], int(g))
            samples.append(np.arange(a, b, dtype=np.int64))
            splits.append(np.full(b - a, s, dtype=np.int64))
        out.append((np.concatenate(samples), np.concatenate(splits)))
    return out


def assemble_paths(
    folds: Sequence[Fold],
    results: Sequence[ArrayLike] | Mapping[int, ArrayLike],
    paths: Sequence[Sequence[tuple[int, int]]] | None = None,
) -> list[NDArray[Any]]:
    """Concatenate per-split test results along each backtest path.

    Args:
        folds: the folds of one splitter call.
        results: per split index, an array whose first axis is aligned with that fold's
            ``test`` indices (e.g. the backtest's per-bar returns on the test samples).
        paths: ``(group, split)`` pairs per path; default :func:`fold_paths`.

    Returns:
        One array per path: the results of its groups in group (time) order.

    Raises:
        DataError: a result's length differs from its fold's test size.
    """
    by_index = _fold_map(folds)
    out: list[NDArray[Any]] = []
    for path in fold_paths(folds) if paths is None else paths:
        pieces = []
        for g, s in path:
            fold = by_index[int(s)]
            res = np.asarray(results[int(s)])
            if res.shape[0] != fold.test.size:
                raise DataError(
                    f"split {s}: {res.shape[0]} results for {fold.test.size} test samples"
                )
            a, b = _group_range(fold, int(g))
            off = int(np.searchsorted(fold.test, a))
            pieces.append(res[off : off + (b - a)])
        out.append(np.concatenate(pieces))
    return out
