"""Library stages: content-addressed outputs, cache reuse, training-range fitting."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl
import pytest

from sentio.config import SentioConfig, with_overrides
from sentio.data.schema import training_cutoff
from sentio.stages import features_key, features_stage, regimes_key, regimes_stage
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


def test_features_train_fit_uses_training_rows_only(bars_path: Path, tmp_path: Path) -> None:
    cfg = with_overrides(
        SentioConfig(), {"features.normalisation": "train_fit", "regimes.train_fraction": 0.5}
    )
    summary = features_stage(bars_path, cfg, tmp_path)
    frame = pl.read_ipc(summary["output"])
    cutoff = training_cutoff(frame["timestamp"], 0.5)
    train = frame.filter(pl.col("timestamp") < cutoff)
    # Standardised with training statistics: mean ~0 and sd ~1 on the training rows.
    assert abs(train["log_ret_1"].mean()) < 0.05  # type: ignore[arg-type]
    assert abs(train["log_ret_1"].std() - 1) < 0.05  # type: ignore[operator]
    # Changing only test-range bars leaves the training rows (and statistics) unchanged.
    bars = pl.read_ipc(bars_path)
    late = pl.col("timestamp") >= cutoff + dt.timedelta(days=3)
    bumped = bars.with_columns(
        [
            pl.when(late).then(pl.col(c) * 1.5).otherwise(pl.col(c))
            for c in ("open", "high", "low", "close")
        ]
    )
    path2 = tmp_path / "bumped.feather"
    bumped.write_ipc(path2)
    frame2 = pl.read_ipc(features_stage(path2, cfg, tmp_path)["output"])
    assert frame2.filter(pl.col("timestamp") < cutoff).equals(train)


def test_regimes_stage_fits_on_training_rows_and_filters_causally(
    bars_path: Path, tmp_path: Path
) -> None:
    cfg = with_overrides(SentioConfig(), {"regimes.train_fraction": 0.5})
    first = regimes_stage(bars_path, cfg, tmp_path)
    assert Path(first["output"]).parent.name == first["key"] == regimes_key(bars_path, cfg)
    assert first["method"] in {"hmm", "vol_quantile"} and first["reason"]
    frame = pl.read_ipc(first["output"])
    probs = frame.select(pl.sum_horizontal(pl.selectors.starts_with("p_regime_")))
    assert ((probs.to_series() - 1).abs() < 1e-5).all()
    assert frame["regime"].max() < first["n_states"]
    assert regimes_stage(bars_path, cfg, tmp_path) == first  # cached
    # Bars after the training range change neither the model nor earlier probabilities.
    cutoff = dt.datetime.fromisoformat(first["train_end"])
    bars = pl.read_ipc(bars_path)
    late = pl.col("timestamp") >= cutoff + dt.timedelta(days=2)
    bumped = bars.with_columns(
        [
            pl.when(late).then(pl.col(c) * 1.3).otherwise(pl.col(c))
            for c in ("open", "high", "low", "close")
        ]
    )
    path2 = tmp_path / "bumped.feather"
    bumped.write_ipc(path2)
    second = regimes_stage(path2, cfg, tmp_path)
    assert Path(second["model"]).read_text() == Path(first["model"]).read_text()
    early = pl.col("timestamp") < cutoff + dt.timedelta(days=2)
    assert pl.read_ipc(second["output"]).filter(early).equals(frame.filter(early))
