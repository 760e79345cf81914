"""Library stages: content-addressed outputs, cache reuse, training-range fitting."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from sentio.config import SentioConfig, with_overrides
from sentio.data.schema import training_cutoff
from sentio.stages import (
    features_key,
    features_stage,
    folds_key,
    folds_stage,
    index_file,
    load_folds,
    regime_training_rows,
    regimes_key,
    regimes_stage,
)
from tests.conftest import minute_bars


@pytest.fixture(scope="module")
def bars_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bars") / "bars.feather"
    minute_bars("2024-01-02", "2024-01-31", price=400.0).write_ipc(path)
    return path


def test_training_cutoff_is_the_first_bar_of_the_first_test_session() -> None:
    stamps = minute_bars("2024-01-02", "2024-01-05")["timestamp"]  # 4 sessions
    cutoff = training_cutoff(stamps, 0.5)
    assert cutoff == dt.datetime(2024, 1, 4, 14, 30, tzinfo=dt.UTC)
    assert training_cutoff(stamps, 0.01) == dt.datetime(
        2024, 1, 3, 14, 30, tzinfo=dt.UTC
    )  # >= 1 train session
    assert training_cutoff(stamps, 0.99) == dt.datetime(
        2024, 1, 5, 14, 30, tzinfo=dt.UTC
    )  # >= 1 test session


def test_features_stage_is_content_addressed_and_reused(bars_path: Path, tmp_path: Path) -> None:
    cfg = SentioConfig()
    first = features_stage(bars_path, cfg, tmp_path)
    out = Path(first["output"])
    assert out.parent.name == first["key"] == features_key(bars_path, cfg)
    frame = pl.read_ipc(out)
    assert frame.height == first["rows"] and frame.columns[1:] == first["columns"]
    assert all(frame.schema[c] == pl.Float32 for c in first["columns"])
    mtime = out.stat().st_mtime_ns
    assert features_stage(bars_path, cfg, tmp_path) == first
    assert out.stat().st_mtime_ns == mtime  # read from the cache, not rewritten
    other = with_overrides(cfg, {"features.rsi_window": 10})
    assert features_key(bars_path, other) != first["key"]
    assert with_overrides(cfg, {"train.total_timesteps": 5}).hash(
        "features", "universe"
    ) == cfg.hash("features", "universe")


def _folds(bars_path: Path, cfg: SentioConfig, tmp_path: Path) -> tuple[dict, dict, pl.DataFrame]:
    features = features_stage(bars_path, cfg, tmp_path)
    summary = folds_stage(features["output"], cfg, tmp_path)
    return features, summary, pl.read_ipc(features["output"])


def _in_ranges(stamps: pl.Series, ranges: list[dict]) -> pl.Series:
    mask = pl.Series([False] * stamps.len())
    for r in ranges:
        lo, hi = dt.datetime.fromisoformat(r["start"]), dt.datetime.fromisoformat(r["end"])
        mask = mask | ((stamps >= lo) & (stamps <= hi))
    return mask


def test_folds_stage_writes_purged_session_aligned_folds(bars_path: Path, tmp_path: Path) -> None:
    cfg = with_overrides(SentioConfig(), {"cv.n_splits": 3, "cv.embargo_bars": 60})
    features, first, frame = _folds(bars_path, cfg, tmp_path)
    assert Path(first["output"]).parent.name == first["key"] == folds_key(features["output"], cfg)
    assert folds_stage(features["output"], cfg, tmp_path) == first  # cached
    data = load_folds(first["output"])
    assert data["samples"] == frame.height and len(data["folds"]) == first["n_folds"] == 3
    stamps = frame["timestamp"]
    ny = stamps.dt.convert_time_zone("America/New_York")
    opens = set(stamps.filter(ny.dt.date() != ny.dt.date().shift(1)).to_list())
    for fold in data["folds"]:
        train = _in_ranges(stamps, fold["train_ranges"])
        test = _in_ranges(stamps, fold["test_blocks"])
        assert int(train.sum()) == fold["train_rows"] and int(test.sum()) == fold["test_rows"]
        assert not (train & test).any()
        # walk-forward: all training rows precede the test block, and the last training
        # row before it is purged (its order would fill on the test block's first bar)
        block = fold["test_blocks"][0]
        assert stamps.filter(train).max() < dt.datetime.fromisoformat(block["start"])
        assert fold["purged"] == cfg.cv.label_bars and fold["embargoed"] == 0
        # test blocks start on a session's first bar
        assert dt.datetime.fromisoformat(block["start"]) in opens
    # the folds of a different cv setting live under a different key
    other = with_overrides(cfg, {"cv.n_splits": 2})
    assert folds_key(features["output"], other) != first["key"]


def test_train_fit_normaliser_is_fitted_per_fold_on_training_rows(
    bars_path: Path, tmp_path: Path
) -> None:
    cfg = with_overrides(
        SentioConfig(),
        {"features.normalisation": "train_fit", "cv.method": "kfold", "cv.n_splits": 3},
    )
    _, summary, raw = _folds(bars_path, cfg, tmp_path)
    data = load_folds(summary["output"])
    means = []
    for fold in data["folds"]:
        # folds.json names its normalisers relative to its own folder
        assert not Path(fold["normaliser"]).is_absolute()
        params = json.loads(
            Path(str(index_file(summary["output"], fold["normaliser"]))).read_text()
        )
        train = raw.filter(_in_ranges(raw["timestamp"], fold["train_ranges"]))
        assert params["rows"] == train.height == fold["train_rows"]
        col = params["columns"]["log_ret_1"]
        assert col["mean"] == pytest.approx(train["log_ret_1"].cast(pl.Float64).mean(), rel=1e-9)
        assert col["std"] == pytest.approx(train["log_ret_1"].cast(pl.Float64).std(), rel=1e-9)
        means.append(col["mean"])
        # the statistics of the test rows would differ: the fit did not see them
        test = raw.filter(_in_ranges(raw["timestamp"], fold["test_blocks"]))
        assert test["log_ret_1"].cast(pl.Float64).mean() != pytest.approx(col["mean"], rel=1e-9)
    assert len(set(means)) == 3


def test_regime_training_rows_purge_look_back_into_test_blocks() -> None:
    t = np.arange(20).astype("datetime64[m]").astype("datetime64[us]")
    iso = [dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(minutes=i) for i in range(20)]
    fold = {
        "train_ranges": [
            {"start": iso[0].isoformat(), "end": iso[6].isoformat()},
            {"start": iso[12].isoformat(), "end": iso[19].isoformat()},
        ],
        "test_blocks": [{"start": iso[8].isoformat(), "end": iso[10].isoformat()}],
    }
    warmup = 3  # each row's inputs cover its own bar and the 3 before
    stamps, window_start = t[warmup:], t[:-warmup]
    rows, dropped = regime_training_rows(stamps, window_start, fold)
    kept = stamps[rows].astype("datetime64[m]").astype(int).tolist()
    # bars 3..6 before the block; bars 12, 13 read bars 9..10 of the test block: purged
    assert kept == [3, 4, 5, 6, 14, 15, 16, 17, 18, 19]
    assert dropped == 2


def test_regimes_stage_fits_one_model_per_fold_on_its_training_rows(
    bars_path: Path, tmp_path: Path
) -> None:
    cfg = with_overrides(SentioConfig(), {"cv.n_splits": 2})
    features, folds, _ = _folds(bars_path, cfg, tmp_path)
    first = regimes_stage(bars_path, folds["output"], cfg, tmp_path)
    assert Path(first["output"]).parent.name == first["key"]
    assert first["key"] == regimes_key(bars_path, folds["output"], cfg)
    assert first["n_folds"] == 2 and [f["fold"] for f in first["folds"]] == [0, 1]
    for fold in first["folds"]:
        assert fold["method"] in {"hmm", "vol_quantile"} and fold["reason"]
        frame = pl.read_ipc(fold["output"])
        probs = frame.select(pl.sum_horizontal(pl.selectors.starts_with("p_regime_")))
        assert ((probs.to_series() - 1).abs() < 1e-5).all()
        assert frame["regime"].max() < first["n_states"]
    assert first["folds"][0]["rows_train"] < first["folds"][1]["rows_train"]
    assert regimes_stage(bars_path, folds["output"], cfg, tmp_path) == first  # cached
    # Bars from fold 0's test block on change neither fold 0's model nor its earlier
    # probabilities; fold 1 (trained on that block) is refitted.
    test_start = dt.datetime.fromisoformat(
        load_folds(folds["output"])["folds"][0]["test_blocks"][0]["start"]
    )
    bars = pl.read_ipc(bars_path)
    late = pl.col("timestamp") >= test_start
    # triple every bar's open-to-close move from there on (the regime inputs change)
    wild = pl.col("open") + 3 * (pl.col("close") - pl.col("open"))
    bumped = bars.with_columns(
        close=pl.when(late).then(wild).otherwise(pl.col("close")),
        high=pl.when(late).then(pl.max_horizontal("high", wild)).otherwise(pl.col("high")),
        low=pl.when(late).then(pl.min_horizontal("low", wild)).otherwise(pl.col("low")),
    )
    path2 = tmp_path / "bumped.feather"
    bumped.write_ipc(path2)
    second = regimes_stage(path2, folds["output"], cfg, tmp_path)
    m0 = [Path(s["folds"][0]["model"]).read_text() for s in (first, second)]
    m1 = [Path(s["folds"][1]["model"]).read_text() for s in (first, second)]
    assert m0[0] == m0[1] and m1[0] != m1[1]
    early = pl.col("timestamp") < test_start
    a, b = (pl.read_ipc(s["folds"][0]["output"]).filter(early) for s in (first, second))
    assert a.height > 0 and a.equals(b)
    # a deleted per-fold file is noticed: the stage recomputes instead of serving the cache
    Path(first["folds"][1]["output"]).unlink()
    assert regimes_stage(bars_path, folds["output"], cfg, tmp_path) == first
    assert Path(first["folds"][1]["output"]).is_file()
