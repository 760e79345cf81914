"""Purged, embargoed splitters: properties, a brute-force reference, hand-worked cases, errors."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import math
from typing import Any

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sentio.config import CVConfig, SentioConfig, resolve_for_bars
from sentio.cv import (
    CombinatorialPurgedCV,
    Fold,
    PurgedKFold,
    PurgedWalkForward,
    assemble_paths,
    contiguous_blocks,
    cpcv_paths,
    fold_paths,
    path_sources,
    purge_embargo,
    resolve_spans,
    splitter_from_config,
    unit_bounds,
)
from sentio.errors import ConfigError, DataError

Splitter = PurgedWalkForward | PurgedKFold | CombinatorialPurgedCV

# --------------------------------------------------------------------------- reference


def _reference_train(
    t0: np.ndarray,
    t1: np.ndarray,
    candidates: list[int],
    test_blocks: list[tuple[int, int]],
    embargo: int,
) -> tuple[list[int], int, int]:
    """Plain double loop: purge by span overlap with any test block, then embargo."""
    spans = [(int(t0[s:e].min()), int(t1[s:e].max())) for s, e in test_blocks]
    train, n_purged, n_embargoed = [], 0, 0
    for i in candidates:
        if any(t0[i] <= hi and t1[i] >= lo for lo, hi in spans):
            n_purged += 1
        elif any(hi < t0[i] <= hi + embargo for _lo, hi in spans):
            n_embargoed += 1
        else:
            train.append(i)
    return train, n_purged, n_embargoed


def _merged_blocks(bounds: np.ndarray, ids: tuple[int, ...]) -> list[tuple[int, int]]:
    blocks: list[tuple[int, int]] = []
    for g in sorted(ids):
        s, e = int(bounds[g]), int(bounds[g + 1])
        if blocks and blocks[-1][1] == s:
            blocks[-1] = (blocks[-1][0], e)
        else:
            blocks.append((s, e))
    return blocks


def _plan(splitter: Splitter) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """(test block ids, training-candidate block ids) per split, written out by hand."""
    if isinstance(splitter, PurgedWalkForward):
        return [
            ((j + 1,), tuple(range(j + 1)) if splitter.anchored else (j,))
            for j in range(splitter.n_splits)
        ]
    if isinstance(splitter, PurgedKFold):
        k = splitter.n_splits
        return [((j,), tuple(g for g in range(k) if g != j)) for j in range(k)]
    n = splitter.n_groups
    return [
        (c, tuple(g for g in range(n) if g not in c))
        for c in itertools.combinations(range(n), splitter.n_test_groups)
    ]


def _n_blocks(splitter: Splitter) -> int:
    if isinstance(splitter, PurgedWalkForward):
        return splitter.n_splits + 1
    if isinstance(splitter, PurgedKFold):
        return splitter.n_splits
    return splitter.n_groups


# --------------------------------------------------------------------------- strategies


@st.composite
def splitters(draw: st.DrawFn) -> Splitter:
    method = draw(st.sampled_from(["walk_forward", "kfold", "cpcv"]))
    label_bars = draw(st.integers(0, 3))
    embargo = draw(st.integers(0, 4))
    fraction = draw(st.none() | st.sampled_from([0.0, 0.02, 0.05, 0.1]))
    common: dict[str, Any] = {
        "embargo": embargo,
        "embargo_fraction": fraction,
        "label_bars": label_bars,
    }
    if method == "walk_forward":
        return PurgedWalkForward(draw(st.integers(1, 5)), anchored=draw(st.booleans()), **common)
    if method == "kfold":
        return PurgedKFold(draw(st.integers(2, 5)), **common)
    n_groups = draw(st.integers(2, 6))
    return CombinatorialPurgedCV(n_groups, draw(st.integers(1, n_groups - 1)), **common)


@st.composite
def samples(draw: st.DrawFn) -> tuple[int, np.ndarray | None, np.ndarray | None]:
    """(n, spans or None, groups or None)."""
    n = draw(st.integers(1, 70))
    spans = None
    if draw(st.booleans()):
        steps = draw(st.lists(st.integers(0, 2), min_size=n, max_size=n))
        lengths = draw(st.lists(st.integers(0, 5), min_size=n, max_size=n))
        t0 = np.cumsum(steps).astype(np.int64)
        spans = np.column_stack([t0, t0 + np.asarray(lengths, dtype=np.int64)])
    groups = None
    if draw(st.booleans()):
        runs = draw(st.lists(st.integers(1, 12), min_size=1, max_size=n))
        labels = np.repeat(np.arange(len(runs)), runs)
        if labels.size < n:
            labels = np.r_[labels, np.full(n - labels.size, len(runs))]
        groups = labels[:n] * 7 + 3  # arbitrary label values
    return n, spans, groups


# --------------------------------------------------------------------------- properties


def _expected_error(
    splitter: Splitter, n: int, t0: np.ndarray, t1: np.ndarray, groups: np.ndarray | None
) -> type[Exception] | None:
    """The error folds() must raise for this case (None: it must succeed)."""
    units = unit_bounds(n, groups).size - 1
    if units < _n_blocks(splitter):
        return DataError
    bounds = contiguous_blocks(n, _n_blocks(splitter), groups)
    shortest = min(int(t0[e - 1] - t0[s] + 1) for s, e in itertools.pairwise(bounds))
    if splitter.embargo_bars(n) > shortest:
        return ConfigError
    if int((t1 - t0).max()) > shortest:
        return DataError
    for test_ids, train_ids in _plan(splitter):
        cand = [i for g in train_ids for i in range(bounds[g], bounds[g + 1])]
        train, _, _ = _reference_train(
            t0, t1, cand, _merged_blocks(bounds, test_ids), splitter.embargo_bars(n)
        )
        if not train:
            return DataError
    return None


@settings(max_examples=300, deadline=None)
@given(splitter=splitters(), case=samples())
def test_folds_match_brute_force_and_properties(
    splitter: Splitter, case: tuple[int, np.ndarray | None, np.ndarray | None]
) -> None:
    n, spans, groups = case
    t0, t1 = resolve_spans(n, spans, label_bars=splitter.label_bars)
    expected_error = _expected_error(splitter, n, t0, t1, groups)
    if expected_error is not None:
        with pytest.raises(expected_error):
            splitter.folds(n, groups=groups, spans=spans)
        return
    folds = splitter.folds(n, groups=groups, spans=spans)
    embargo = splitter.embargo_bars(n)
    bounds = contiguous_blocks(n, _n_blocks(splitter), groups)
    unit_edges = set(unit_bounds(n, groups).tolist())
    assert len(folds) == splitter.get_n_splits() == len(_plan(splitter))
    tested = np.zeros(n, dtype=np.int64)
    for j, (fold, (test_ids, train_ids)) in enumerate(zip(folds, _plan(splitter), strict=True)):
        assert fold.index == j
        assert fold.train.dtype == np.int64 and fold.test.dtype == np.int64
        assert np.all(np.diff(fold.train) > 0) and np.all(np.diff(fold.test) > 0)
        assert not np.intersect1d(fold.train, fold.test).size
        # test blocks: exactly the promised blocks, edges on unit (session) boundaries
        assert fold.test_groups == tuple(sorted(test_ids))
        blocks = _merged_blocks(bounds, test_ids)
        assert list(fold.test_blocks) == blocks
        assert fold.test.tolist() == [i for s, e in blocks for i in range(s, e)]
        assert all(a in unit_edges and b in unit_edges for a, b in fold.test_group_ranges)
        tested[fold.test] += 1
        # purge / embargo against the double loop
        cand = [i for g in train_ids for i in range(bounds[g], bounds[g + 1])]
        ref, n_p, n_e = _reference_train(t0, t1, cand, blocks, embargo)
        assert fold.train.tolist() == ref
        assert (fold.n_purged, fold.n_embargoed) == (n_p, n_e)
        # the defining properties, stated directly
        for lo, hi in fold.test_spans:
            assert not np.any((t0[fold.train] <= hi) & (t1[fold.train] >= lo))
            assert not np.any((t0[fold.train] > hi) & (t0[fold.train] <= hi + embargo))
        assert [i for a, b in fold.train_ranges() for i in range(a, b)] == fold.train.tolist()
        json.dumps(fold.to_dict())
    if isinstance(splitter, PurgedWalkForward):
        assert tested.tolist() == [0] * int(bounds[1]) + [1] * (n - int(bounds[1]))
        assert [f.test_blocks[0] for f in folds] == list(itertools.pairwise(bounds.tolist()[1:]))
    elif isinstance(splitter, PurgedKFold):
        assert np.all(tested == 1)
    else:
        n_g, k = splitter.n_groups, splitter.n_test_groups
        assert np.all(tested == math.comb(n_g - 1, k - 1))
        paths = splitter.paths()
        assert len(paths) == math.comb(n_g, k) * k // n_g == splitter.n_paths
        assert paths == fold_paths(folds)
        for samples_, splits in path_sources(folds, paths):
            assert samples_.tolist() == list(range(n))
            assert all(i in folds[s].test for i, s in zip(samples_, splits, strict=True))
        tagged = [f.test * 1000 + f.index for f in folds]
        for p, assembled in enumerate(assemble_paths(folds, tagged, paths)):
            assert (assembled // 1000).tolist() == list(range(n))
            want = np.repeat([s for _g, s in paths[p]], np.diff(bounds))
            assert np.array_equal(assembled % 1000, want)


@settings(max_examples=300, deadline=None)
@given(case=samples(), n_blocks=st.integers(1, 8))
def test_blocks_balanced_on_unit_boundaries(
    case: tuple[int, np.ndarray | None, np.ndarray | None], n_blocks: int
) -> None:
    n, _spans, groups = case
    edges = unit_bounds(n, groups)
    if edges.size - 1 < n_blocks:
        with pytest.raises(DataError, match=f"{edges.size - 1} .* cannot make {n_blocks} blocks"):
            contiguous_blocks(n, n_blocks, groups)
        return
    bounds = contiguous_blocks(n, n_blocks, groups)
    assert bounds.size == n_blocks + 1 and bounds[0] == 0 and bounds[-1] == n
    assert np.all(np.diff(bounds) > 0)
    assert set(bounds.tolist()) <= set(edges.tolist())
    if groups is None:
        sizes = np.diff(bounds)
        assert sizes.max() - sizes.min() <= 1

    # nearest unit boundary to each quantile (ties to the earlier) when that is feasible
    def nearest_edge(b: int) -> int:
        return min(edges.tolist(), key=lambda e: (abs(e * n_blocks - b * n), e))

    nearest = [nearest_edge(b) for b in range(1, n_blocks)]
    cuts = [0, *nearest, n]
    if all(a < b for a, b in itertools.pairwise(cuts)):
        assert bounds.tolist() == cuts


@settings(max_examples=150, deadline=None)
@given(case=samples(), embargo=st.integers(0, 6), data=st.data())
def test_purge_embargo_function_matches_brute_force(
    case: tuple[int, np.ndarray | None, np.ndarray | None], embargo: int, data: st.DataObject
) -> None:
    n, spans, _groups = case
    t0, t1 = resolve_spans(n, spans, label_bars=2)
    cuts = sorted(data.draw(st.lists(st.integers(0, n), min_size=2, max_size=6)))
    ranges = [(a, b) for a, b in itertools.pairwise(cuts)][::2]
    cand_mask = np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    train, n_p, n_e = purge_embargo(t0, t1, ranges, embargo, candidates=cand_mask)
    blocks = [(a, b) for a, b in ranges if b > a]
    merged: list[tuple[int, int]] = []
    for a, b in blocks:
        if merged and merged[-1][1] == a:
            merged[-1] = (merged[-1][0], b)
        else:
            merged.append((a, b))
    in_test = {i for a, b in merged for i in range(a, b)}
    cand = [i for i in range(n) if cand_mask[i] and i not in in_test]
    ref, rp, re_ = _reference_train(t0, t1, cand, merged, embargo)
    assert train.tolist() == ref and (n_p, n_e) == (rp, re_)


# --------------------------------------------------------------------------- hand-worked


def test_kfold_hand_worked() -> None:
    # 10 samples, spans [i, i+1]; blocks 0..4 (span [0, 5]) and 5..9 (span [5, 10])
    f0, f1 = PurgedKFold(2, embargo=2, label_bars=1).folds(10)
    assert f0.test.tolist() == [0, 1, 2, 3, 4]
    assert f0.train.tolist() == [8, 9]  # 5 purged (t0 5 <= 5), 6 and 7 embargoed (5, 7]
    assert (f0.n_purged, f0.n_embargoed) == (1, 2)
    assert f0.test_spans == ((0, 5),)
    assert f1.test.tolist() == [5, 6, 7, 8, 9]
    assert f1.train.tolist() == [0, 1, 2, 3]  # 4 purged: its span [4, 5] reaches bar 5
    assert (f1.n_purged, f1.n_embargoed) == (1, 0)
    assert f0.train_ranges() == [(8, 10)] and f1.train_ranges() == [(0, 4)]


def test_walk_forward_hand_worked() -> None:
    folds = PurgedWalkForward(3, anchored=True, label_bars=1).folds(12)
    assert [f.test.tolist() for f in folds] == [[3, 4, 5], [6, 7, 8], [9, 10, 11]]
    assert [f.train.tolist() for f in folds] == [[0, 1], [0, 1, 2, 3, 4], list(range(8))]
    assert [f.test_groups for f in folds] == [(1,), (2,), (3,)]
    rolling = PurgedWalkForward(3, anchored=False, label_bars=1).folds(12)
    assert [f.train.tolist() for f in rolling] == [[0, 1], [3, 4], [6, 7]]
    assert [f.n_purged for f in rolling] == [1, 1, 1]


def test_cpcv_hand_worked() -> None:
    # 8 samples in 4 groups of 2, spans [i, i] (label_bars 0), embargo 1 bar
    cv = CombinatorialPurgedCV(4, 2, embargo=1, label_bars=0)
    folds = cv.folds(8)
    assert [f.test_groups for f in folds] == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    assert [f.train.tolist() for f in folds] == [
        [5, 6, 7],
        [3, 7],
        [3, 4, 5],
        [0, 1, 7],
        [0, 1, 5],
        [0, 1, 2, 3],
    ]
    assert [f.n_embargoed for f in folds] == [1, 2, 1, 1, 1, 0]
    assert [f.n_purged for f in folds] == [0] * 6
    assert folds[1].test_blocks == ((0, 2), (4, 6))
    assert folds[0].test_blocks == ((0, 4),) and folds[0].test_group_ranges == ((0, 2), (2, 4))
    assert cv.paths() == [
        [(0, 0), (1, 0), (2, 1), (3, 2)],
        [(0, 1), (1, 3), (2, 3), (3, 4)],
        [(0, 2), (1, 4), (2, 5), (3, 5)],
    ]
    results = [np.full(f.test.size, 10.0 * f.index) for f in folds]
    first = assemble_paths(folds, results, cv.paths())[0]
    assert first.tolist() == [0, 0, 0, 0, 10, 10, 20, 20]


def test_cpcv_paths_count() -> None:
    for n, k in [(6, 2), (10, 3), (5, 1), (7, 6)]:
        paths = cpcv_paths(n, k)
        assert len(paths) == math.comb(n, k) * k // n
        for path in paths:
            assert [g for g, _s in path] == list(range(n))
        combos = list(itertools.combinations(range(n), k))
        assert all(g in combos[s] for path in paths for g, s in path)
        used = [s for path in paths for _g, s in path]
        assert len(used) == len(set(zip([g for p in paths for g, _ in p], used, strict=True)))


def test_session_groups_and_custom_spans() -> None:
    # sessions of 3, 3, 3, 1 samples: the cut nearest 5 is the session edge at 6
    groups = np.array([1, 1, 1, 2, 2, 2, 3, 3, 3, 4])
    f0, f1 = PurgedKFold(2, label_bars=0).folds(10, groups=groups)
    assert f0.test_blocks == ((0, 6),) and f1.test_blocks == ((6, 10),)
    # session dates as a polars Series work as groups
    dates = pl.Series([dt.date(2024, 1, 2 + int(g)) for g in groups])
    assert PurgedKFold(2, label_bars=0).folds(10, groups=dates)[0].test_blocks == ((0, 6),)
    # a long label (sample 2 spans bars 2..6) is purged from the training of block 5..9
    t0 = np.arange(10)
    t1 = t0.copy()
    t1[2] = 6
    f0, f1 = PurgedKFold(2).folds(10, t0=t0, t1=t1)
    assert f1.train.tolist() == [0, 1, 3, 4]
    assert f1.n_purged == 1
    assert f0.test_spans == ((0, 6),)  # the test block's span ends at its longest label
    assert f0.train.tolist() == [7, 8, 9]
    assert PurgedKFold(2).folds(10, spans=np.column_stack([t0, t1]))[1].train.tolist() == [
        0,
        1,
        3,
        4,
    ]


def test_embargo_fraction_and_zero_embargo() -> None:
    cv = PurgedKFold(4, embargo=99, embargo_fraction=0.05, label_bars=0)
    assert cv.embargo_bars(100) == 5  # fraction replaces bars: ceil(0.05 * 100)
    assert cv.embargo_bars(101) == 6
    assert PurgedKFold(3, embargo_fraction=0.07).embargo_bars(100) == 7  # not 8 (float noise)
    assert PurgedKFold(3, embargo_fraction=0.29).embargo_bars(100) == 29
    assert PurgedKFold(3, embargo_fraction=0.0).embargo_bars(100) == 0
    folds = cv.folds(100)
    assert folds[0].train.tolist() == list(range(30, 100))
    assert folds[0].n_embargoed == 5 and folds[0].embargo == 5
    zero = PurgedKFold(4, embargo=0, label_bars=0).folds(100)
    assert zero[0].train.tolist() == list(range(25, 100))
    assert zero[0].n_purged == zero[0].n_embargoed == 0


# --------------------------------------------------------------------------- errors


def test_too_few_samples_or_sessions() -> None:
    groups = np.repeat(np.arange(12), 5)
    with pytest.raises(DataError, match=r"12 sessions \(groups\) cannot make 13 blocks"):
        PurgedWalkForward(12).folds(60, groups=groups)
    with pytest.raises(DataError, match="4 samples cannot make 5 blocks"):
        PurgedKFold(5).folds(4)
    with pytest.raises(DataError, match="0 samples cannot make 2 blocks"):
        PurgedKFold(2).folds(0)
    with pytest.raises(DataError, match="3 sessions .* cannot make 4 blocks"):
        CombinatorialPurgedCV(4, 1).folds(30, groups=np.repeat([5, 6, 7], 10))


def test_embargo_larger_than_block() -> None:
    with pytest.raises(
        ConfigError, match=r"embargo of 6 bars .*\(block 0 = samples 0..4, 5 bars\)"
    ):
        PurgedKFold(2, embargo=6).folds(10)
    with pytest.raises(ConfigError, match=r"embargo of 30 bars \(ceil\(0.3 x 100 samples\)\)"):
        PurgedKFold(4, embargo_fraction=0.3).folds(100)
    PurgedKFold(2, embargo=5, label_bars=0).folds(12)  # equal to a block: allowed


def test_purge_span_larger_than_block() -> None:
    with pytest.raises(DataError, match=r"purge span of 6 bars \(t1 - t0 of row 0\).* 5 bars"):
        PurgedKFold(2, label_bars=6).folds(10)
    t0 = np.arange(20)
    t1 = t0.copy()
    t1[7] = 20
    with pytest.raises(DataError, match=r"purge span of 13 bars \(t1 - t0 of row 7\)"):
        CombinatorialPurgedCV(4, 2).folds(20, t0=t0, t1=t1)


def test_empty_training_set() -> None:
    # blocks of 2; block 0 spans bars 0..3 and overlaps test block 1 (bars 2..5) entirely
    with pytest.raises(
        DataError, match=r"split 0: training set empty after purging 2 and embargoing 0 of 2"
    ):
        PurgedWalkForward(2, anchored=False, label_bars=2).folds(6)


def test_bad_spans_name_the_row() -> None:
    t0 = np.array([0, 1, 2, 3, 4])
    with pytest.raises(DataError, match="spans row 3: t1 1 < t0 3"):
        PurgedKFold(2).folds(5, t0=t0, t1=np.array([1, 2, 3, 1, 5]))
    with pytest.raises(DataError, match="spans row 4: t0 2 < t0 3 of row 3"):
        PurgedKFold(2).folds(5, t0=np.array([0, 1, 2, 3, 2]), t1=np.array([1, 2, 3, 4, 5]))
    with pytest.raises(DataError, match=r"spans must have shape \(5, 2\)"):
        PurgedKFold(2).folds(5, spans=np.zeros((5, 3), dtype=np.int64))
    with pytest.raises(DataError, match="must be integers"):
        PurgedKFold(2).folds(5, spans=np.zeros((5, 2)))
    with pytest.raises(DataError, match="t0 has 4 rows for 5 samples"):
        PurgedKFold(2).folds(5, t0=t0[:4], t1=t0[:4])
    with pytest.raises(DataError, match="groups must have one label per sample"):
        PurgedKFold(2).folds(5, groups=np.zeros(4))


def test_impossible_parameters() -> None:
    with pytest.raises(ConfigError, match="n_splits must be an integer >= 2, got 1"):
        PurgedKFold(1)
    with pytest.raises(ConfigError, match="n_splits must be an integer >= 1, got 0"):
        PurgedWalkForward(0)
    with pytest.raises(ConfigError, match="n_test_groups < n_groups, got 6 >= 6"):
        CombinatorialPurgedCV(6, 6)
    with pytest.raises(ConfigError, match="embargo must be an integer >= 0, got -1"):
        PurgedKFold(3, embargo=-1)
    with pytest.raises(ConfigError, match=r"embargo_fraction must lie in \[0, 1\), got 1.5"):
        PurgedKFold(3, embargo_fraction=1.5)
    with pytest.raises(ConfigError, match="label_bars must be an integer >= 0, got -2"):
        PurgedWalkForward(3, label_bars=-2)


# --------------------------------------------------------------------------- sklearn, config


@pytest.mark.parametrize(
    "splitter",
    [PurgedWalkForward(4, embargo=3), PurgedKFold(5, embargo=3), CombinatorialPurgedCV(6, 2, 3)],
)
def test_sklearn_protocol(splitter: Splitter) -> None:
    X = np.zeros((120, 3))
    splits = list(splitter.split(X))
    assert len(splits) == splitter.get_n_splits() == splitter.get_n_splits(X, None, None)
    for train, test in splits:
        assert isinstance(train, np.ndarray) and train.dtype == np.int64
        assert isinstance(test, np.ndarray) and test.dtype == np.int64
    assert type(splitter).__name__ in repr(splitter)


@pytest.mark.parametrize(
    "splitter",
    [PurgedWalkForward(4, embargo=3), PurgedKFold(5, embargo=3), CombinatorialPurgedCV(6, 2, 3)],
)
def test_sklearn_cross_val_score(splitter: Splitter) -> None:
    sklearn_ms = pytest.importorskip("sklearn.model_selection")
    from sklearn.dummy import DummyRegressor

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(200, 3)), rng.normal(size=200)
    scores = sklearn_ms.cross_val_score(DummyRegressor(), X, y, cv=splitter)
    assert scores.shape == (splitter.get_n_splits(),)
    assert np.all(np.isfinite(scores))


def test_fold_record() -> None:
    fold = PurgedKFold(2, embargo=2).folds(10)[0]
    assert isinstance(fold, Fold)
    with pytest.raises(ValueError):
        fold.train[0] = 3  # read-only
    record = json.loads(json.dumps(fold.to_dict()))
    assert record == {
        "index": 0,
        "n_train": 2,
        "n_test": 5,
        "test_blocks": [[0, 5]],
        "test_groups": [0],
        "test_group_ranges": [[0, 5]],
        "test_spans": [[0, 5]],
        "n_purged": 1,
        "n_embargoed": 2,
        "embargo_bars": 2,
        "train_ranges": [[8, 10]],
    }


def test_splitter_from_config() -> None:
    wf = splitter_from_config(
        CVConfig(method="walk_forward", n_splits=3, anchored=False, embargo_bars=7, label_bars=2)
    )
    assert isinstance(wf, PurgedWalkForward)
    assert (wf.n_splits, wf.anchored, wf.embargo, wf.label_bars) == (3, False, 7, 2)
    kf = splitter_from_config(CVConfig(method="kfold", n_splits=6, embargo_fraction=0.01))
    assert isinstance(kf, PurgedKFold)
    assert kf.n_splits == 6 and kf.embargo_fraction == 0.01 and kf.embargo_bars(1000) == 10
    minute = resolve_for_bars(SentioConfig(), 60).cv  # 'auto' embargo: one session of minutes
    cp = splitter_from_config(
        minute.model_copy(update={"method": "cpcv", "n_groups": 8, "n_test_groups": 3})
    )
    assert isinstance(cp, CombinatorialPurgedCV)
    assert (cp.n_groups, cp.n_test_groups, cp.embargo) == (8, 3, 390)
    assert cp.get_n_splits() == 56 and cp.n_paths == 21
    daily = resolve_for_bars(SentioConfig(), 86_400).cv
    assert splitter_from_config(daily).embargo == 5  # a week of daily bars
    with pytest.raises(ConfigError, match="cv.embargo_bars = 'auto'"):
        splitter_from_config(CVConfig())  # the bar length decides 'auto'
    folds = splitter_from_config(minute).folds(390 * 20, groups=np.repeat(np.arange(20), 390))
    assert len(folds) == 4
    assert all(a % 390 == 0 and b % 390 == 0 for f in folds for a, b in f.test_blocks)
