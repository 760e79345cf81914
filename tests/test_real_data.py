"""The nightly flow on real market data that nobody here generated.

* The NASDAQ Composite daily sample (``sentio sample nasdaq-daily``, shipped with
  ``arch``), run with the configuration the sample writes and a small training budget:
  daily bars must be treated as daily bars (annualisation 252, settings sized in days,
  positions held overnight by the references that hold, a regime model fitted).
* Real SPY one-minute bars of January and March 2011 (``../shared/data``): February is
  missing, and nothing (fold, training episode, backtest or benchmark step) may treat
  the 19 missing sessions as one bar.

One temporary Prefect API serves the module.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import yaml

from tests.conftest import SHORT_WINDOWS

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("restore_environ")]

# a few hundred steps of a small network: the flow's plumbing, not learning, is tested
SMALL_TRAINING = {
    "agent": {"n_steps": 32, "batch_size": 64, "n_epochs": 1},
    "train": {"total_timesteps": 256, "n_envs": 4, "checkpoint_every": 128, "device": "cpu"},
    "report": {"bootstrap_resamples": 200},
}


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def _frames(run: dict[str, Any]) -> dict[str, pl.DataFrame]:
    """The agent's and every reference's out-of-sample bars of one training."""
    folder = Path(run["output"]).parent
    return {p.stem: pl.read_ipc(p) for p in sorted(folder.glob("*.feather")) if p.stem != "trades"}


# --------------------------------------------------------------------------- daily


@pytest.fixture(scope="module")
def nasdaq_run(prefect_api: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The flow on the NASDAQ daily sample with the configuration ``sentio sample`` wrote."""
    from flows.nightly import nightly_flow
    from sentio.config import SentioConfig
    from sentio.data.sample import write_sample

    root = tmp_path_factory.mktemp("nasdaq")
    paths = write_sample("nasdaq-daily", root / "bars.feather", SentioConfig())
    written = yaml.safe_load(paths["config"].read_text())
    config = root / "run.yaml"
    config.write_text(yaml.safe_dump(_merge(written, SMALL_TRAINING)))
    return nightly_flow(
        data_path=str(paths["bars"]), config_path=str(config), workdir=str(root / "wd")
    )


def test_daily_sample_config_leaves_bar_sizes_to_the_data(tmp_path: Path) -> None:
    from sentio.config import SentioConfig, load_config, resolve_for_bars
    from sentio.data.sample import write_sample

    paths = write_sample("nasdaq-daily", tmp_path / "bars.feather", SentioConfig())
    cfg = resolve_for_bars(load_config(paths["config"]), 86_400)
    assert cfg.env.flat_at_close is False
    assert cfg.env.episode_sessions == 21
    assert cfg.cv.embargo_bars == 5
    assert cfg.features.norm_window == 126
    assert cfg.registry.min_compare_bars == 63


def test_daily_flow_annualises_252_and_starts_features_in_the_first_year(
    nasdaq_run: dict[str, Any],
) -> None:
    stages = nasdaq_run["stages"]
    assert nasdaq_run["status"] == "completed"
    assert stages["ingest"]["frequency"] == "1d"
    first_bar = dt.datetime.fromisoformat(stages["ingest"]["start"])
    first_feature = dt.datetime.fromisoformat(stages["features"]["start"])
    assert first_feature - first_bar < dt.timedelta(days=365)
    for run in stages["train"]["runs"]:
        assert run["metrics"]["periods_per_year"] == 252.0
    metrics = json.loads(Path(stages["report"]["paths"]["metrics"]).read_text())
    assert metrics["bootstrap"]["periods_per_year"] == 252.0
    # the run's configuration records what 'auto' meant for these bars
    run_cfg = yaml.safe_load((Path(nasdaq_run["run_dir"]) / "config.yaml").read_text())
    assert run_cfg["env"]["flat_at_close"] is False
    assert run_cfg["cv"]["embargo_bars"] == 5


def test_daily_flow_fits_a_regime_model_per_fold(nasdaq_run: dict[str, Any]) -> None:
    regimes = nasdaq_run["stages"]["regimes"]
    assert [f["method"] for f in regimes["folds"]] == ["hmm"] * regimes["n_folds"]
    for fold in regimes["folds"]:
        assert fold["rows_train"] >= 500  # years of daily bars, not a few hundred
        train = json.loads(Path(fold["history"]).read_text())["train"]
        shares = [r["share"] for r in train["regimes"]]
        # every state of the fitted model describes a real share of the training days
        assert len(shares) == regimes["n_states"] and min(shares) >= 0.02, shares


def test_daily_references_hold_overnight(nasdaq_run: dict[str, Any]) -> None:
    runs = nasdaq_run["stages"]["train"]["runs"]
    for run in runs:
        frames = _frames(run)
        held = frames["reference_long_etf"]
        # bought and kept: a position still open at most closes, few round trips
        assert (held["exposure"] != 0).mean() > 0.5
        assert held["entries"].sum() < held.height / 5
        # every reference's trades are counted the same way as the ledger's
        agent = frames["backtest"]
        trades = pl.read_ipc(Path(run["output"]).parent / "trades.feather")
        assert agent["entries"].sum() == trades.height == run["n_trades"]
        assert run["metrics"]["n_trades"] == trades.height


def test_daily_flow_reaches_a_verdict(nasdaq_run: dict[str, Any]) -> None:
    report = nasdaq_run["stages"]["report"]
    assert report["verdict"]
    text = Path(report["paths"]["markdown"]).read_text()
    assert text.count(report["verdict"]) == 1


# --------------------------------------------------------------------------- gaps

GAP_AFTER, GAP_BEFORE = dt.date(2011, 1, 31), dt.date(2011, 3, 1)
FIRST_BAR_AFTER_GAP = np.datetime64("2011-03-01T14:30:00", "us")  # 09:30 New York, UTC-5


@pytest.fixture(scope="module")
def spy_run(
    prefect_api: Path, tmp_path_factory: pytest.TempPathFactory, spy_dir_module: Path
) -> dict[str, Any]:
    """The flow on the real SPY files: January and March 2011, February absent."""
    from flows.nightly import nightly_flow

    root = tmp_path_factory.mktemp("spy")
    settings = _merge(
        {
            "ingest": {"symbol": "SPY", "tz": "UTC", "bar_timestamp": "end"},
            "universe": {"underlying": "SPY", "long": "SPY3L", "short": "SPY3S"},
            "features": SHORT_WINDOWS["features"],  # two months of minutes
            "regimes": SHORT_WINDOWS["regimes"],
            # five chunks of about nine sessions: the second test block spans February
            "cv": {"method": "walk_forward", "n_splits": 4},
        },
        SMALL_TRAINING,
    )
    config = root / "spy.yaml"
    config.write_text(yaml.safe_dump(settings))
    files = ",".join(str(spy_dir_module / f) for f in ("spy-2011-01.csv", "spy-2011-03.csv"))
    return nightly_flow(data_path=files, config_path=str(config), workdir=str(root / "wd"))


@pytest.fixture(scope="module")
def spy_dir_module() -> Path:
    from tests.conftest import SPY_DIR

    if not (SPY_DIR / "spy-2011-01.csv").is_file():
        pytest.skip(f"real SPY sample data not found at {SPY_DIR} (../shared/data beside the repo)")
    return SPY_DIR


def test_ingest_finds_the_february_gap(spy_run: dict[str, Any]) -> None:
    ingest = spy_run["stages"]["ingest"]
    assert ingest["gaps"] == [
        {"after": str(GAP_AFTER), "before": str(GAP_BEFORE), "sessions_missing": 19}
    ]
    assert ingest["sessions_absent"] == 19


def test_no_fold_series_spans_the_gap(spy_run: dict[str, Any]) -> None:
    folds = json.loads(Path(spy_run["stages"]["folds"]["output"]).read_text())["folds"]
    spanning = [f for f in folds if f["test_gaps"]]
    assert len(spanning) == 1, "one test block runs across February"
    assert spanning[0]["test_gaps"][0]["after"] == str(GAP_AFTER)
    runs = spy_run["stages"]["train"]["runs"]
    crossing = [r for r in runs if r["fold"] == spanning[0]["fold"]]
    assert crossing
    for run in crossing:
        for name, frame in _frames(run).items():
            stamps = frame["timestamp"].cast(pl.Datetime("us")).to_numpy()
            days = frame["timestamp"].dt.date()
            # the block has bars on both sides of the gap ...
            assert (days <= GAP_AFTER).any() and (days >= GAP_BEFORE).any(), name
            # ... but no step from the last bar of January 31 to the first of March 1
            assert FIRST_BAR_AFTER_GAP not in stamps, name
            assert np.datetime64("2011-03-01T14:31:00", "us") in stamps, name
            if "exposure" in frame.columns and name != "reference_underlying":
                last_before = frame.filter(pl.col("timestamp").dt.date() == GAP_AFTER)
                assert last_before["exposure"][-1] == 0.0, name  # nothing carried across


def test_no_training_episode_spans_the_gap(spy_run: dict[str, Any]) -> None:
    from sentio import stages
    from sentio.config import load_config
    from sentio.env.episodes import candidate_episodes

    s = spy_run["stages"]
    cfg = load_config(Path(spy_run["run_dir"]) / "config.yaml")
    for fold in range(s["folds"]["n_folds"]):
        market, train_rows, test_rows = stages.fold_market(
            s["ingest"]["output"],
            s["features"]["output"],
            s["folds"]["output"],
            s["regimes"]["output"],
            cfg,
            fold,
        )
        gaps = market.gap_rows()
        assert gaps.size == 1
        assert market.timestamps[gaps[0]] == FIRST_BAR_AFTER_GAP
        starts, ends = candidate_episodes(
            market, train_rows + test_rows, window=cfg.env.window, episode_sessions=3
        )
        assert not ((starts < gaps[0]) & (ends >= gaps[0])).any()


def test_report_lists_the_gap(spy_run: dict[str, Any]) -> None:
    text = Path(spy_run["stages"]["report"]["paths"]["markdown"]).read_text()
    assert str(GAP_AFTER) in text and str(GAP_BEFORE) in text
    assert "19" in text
