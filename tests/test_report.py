"""Tests of the report library (:mod:`sentio.report`)."""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from sentio.config import SentioConfig
from sentio.env.backtest import (
    backtest,
    flat_policy,
    long_etf_policy,
    trend_policy,
    underlying_buy_and_hold,
)
from sentio.evaluation import compute_metrics, deflated_sharpe_ratio, sharpe_moments
from sentio.report import build_report, stitch, verdict
from tests.env_helpers import MINUTE_PERIODS_PER_YEAR, make_params, random_market

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BARS_PER_SESSION = 390


def _cfg() -> SentioConfig:
    return SentioConfig.model_validate({"report": {"bootstrap_resamples": 200, "seed": 3}})


def _stamps(fold: int, n_sessions: int) -> np.ndarray:
    """Minute bars of ``n_sessions`` weekday sessions; fold k starts k x n_sessions days later."""
    out = []
    day = dt.datetime(2024, 1, 8, 14, 30) + dt.timedelta(days=7 * fold)
    for s in range(n_sessions):
        start = day + dt.timedelta(days=s)
        out.append(start + np.arange(BARS_PER_SESSION) * dt.timedelta(minutes=1))
    return np.concatenate(out).astype("datetime64[us]")


def _frame(returns: np.ndarray, stamps: np.ndarray, regime: np.ndarray) -> pl.DataFrame:
    """A frame with the columns of ``BacktestResult.bars_frame()``."""
    n = returns.size
    position = np.where(np.arange(n) % 7 < 5, 1.0, 0.0)
    return pl.DataFrame(
        {
            "timestamp": stamps,
            "rows": np.arange(n, dtype=np.int64),
            "block": np.zeros(n, dtype=np.int64),
            "returns": returns,
            "equity": 10_000.0 * np.cumprod(1.0 + returns),
            "exposure": position,
            "position": position,
            "costs": np.full(n, 1e-6),
            "costs_cash": np.full(n, 0.01),
            "action": np.where(position > 0, 4, 2).astype(np.int64),
            "target_exposure": position,
            "mask_blocked": np.zeros(n, dtype=np.uint8),
            "regime": regime,
        }
    )


def _synthetic_runs(
    root: Path, *, mean: float, seeds: tuple[int, ...] = (0,), folds: int = 2
) -> list[dict[str, Any]]:
    """Train-stage-like summaries with feather files of i.i.d. returns of a given mean."""
    runs = []
    for seed in seeds:
        for fold in range(folds):
            rng = np.random.default_rng(100 * seed + fold)
            stamps = _stamps(fold, 3)
            noise = rng.normal(0.0, 1e-3, stamps.size)
            r = noise - noise.mean() + mean  # exactly the given sample mean
            regime = (np.arange(stamps.size) // 200 % 2).astype(np.int64)
            folder = root / f"run_{seed}_{fold}"
            folder.mkdir(parents=True)
            _frame(r, stamps, regime).write_ipc(folder / "backtest.feather")
            ref_rng = np.random.default_rng(999 + fold)
            for name in ("flat", "long_etf", "trend", "underlying"):
                rr = (
                    np.zeros(stamps.size)
                    if name == "flat"
                    else ref_rng.normal(0, 1e-3, stamps.size)
                )
                ref = _frame(rr, stamps, regime)
                if name == "underlying":
                    ref = ref.drop("action", "target_exposure", "mask_blocked", "regime")
                ref.write_ipc(folder / f"reference_{name}.feather")
            runs.append(
                {
                    "fold": fold,
                    "seed": seed,
                    "output": str(folder / "backtest.feather"),
                    "metrics": {"periods_per_year": MINUTE_PERIODS_PER_YEAR},
                    "train": {
                        "total_timesteps": 1000,
                        "curve": [
                            {
                                "steps": 200 * i,
                                "episodes": 8,
                                "mean_episode_log_return": 1e-3 * (i - 3) + 1e-4 * fold,
                            }
                            for i in range(1, 6)
                        ],
                        "validation": _validation_record(fold),
                    },
                }
            )
    return runs


def _validation_record(fold: int) -> dict[str, Any]:
    """Fold 0 stood aside on its held-out episodes, fold 1 had too few to validate."""
    if fold == 1:
        return {"skipped": "2 of the fold's 12 training episodes would be held out"}
    history = [
        {"steps": 400, "t": 0.5, "mean_log_return": 1e-4, "sharpe": 1.3, "mean_abs_exposure": 0.02},
        {
            "steps": 800,
            "t": -0.2,
            "mean_log_return": -1e-5,
            "sharpe": -0.4,
            "mean_abs_exposure": 0.1,
        },
    ]
    return {
        "skipped": None,
        "min_t": 2.0,
        "episodes": 7,
        "periods_per_year": 252.0,
        "history": history,
        "best_steps": 400,
        "best_score": 0.5,
        "stands_aside": True,
    }


@pytest.fixture(scope="module")
def noise_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    root = tmp_path_factory.mktemp("noise")
    runs = _synthetic_runs(root / "runs", mean=0.0)
    summary = build_report(
        runs,
        root / "report",
        cfg=_cfg(),
        ingest_summary={"rows": 1234, "quarantined": 0},
        profile={"train_seconds": 12.5, "steps_per_second": 800.0, "peak_rss_mb": 900.0},
    )
    return root, summary


def test_files_exist_and_summary(noise_report: tuple[Path, dict[str, Any]]) -> None:
    root, summary = noise_report
    for key in ("markdown", "html", "metrics"):
        assert Path(summary["paths"][key]).is_file()
    assert set(summary["paths"]["plots"]) == {
        "equity",
        "drawdown",
        "exposure",
        "fold_sharpe",
        "learning_curve",
        "validation_curve",
    }
    for path in summary["paths"]["plots"].values():
        assert Path(path).read_bytes().startswith(PNG_MAGIC)
    assert summary["n_runs"] == 2 and summary["n_seeds"] == 1 and summary["n_trials"] == 1


def test_model_selection_is_reported(noise_report: tuple[Path, dict[str, Any]]) -> None:
    root, summary = noise_report
    md = Path(summary["paths"]["markdown"]).read_text()
    assert "### Model selection on held-out training episodes" in md
    assert "| 0 | 0 | 7 | 400 | 1.30 | 0.020 | stands aside (t 0.50 < 2.00): flat |" in md
    assert "| 1 | 0 |  |  |  |  | skipped: 2 of the fold's 12 training episodes" in md
    # the line under the verdict says it too (and so the CLI and the Prefect artifact)
    assert summary["comparison"].endswith(
        "The agent stood aside (stayed flat) in 1 of 2 trainings: no checkpoint reached a t "
        "statistic of 2 on the held-out end of their training rows (Model selection table)."
    )


def test_warm_started_trainings_are_reported(tmp_path: Path) -> None:
    """The Per fold table says which training started from the champion; why the others
    did not is listed once per reason; the line under the verdict counts them."""
    runs = _synthetic_runs(tmp_path / "runs", mean=0.0, seeds=(0, 1))
    why = "the champion v2's test window ends after this fold's first test block begins"
    for run in runs:
        run["warm_start"] = (
            {"version": "v2", "applies": True, "reason": "every test block is later"}
            if run["fold"] == 1
            else {"version": "v2", "applies": False, "reason": why}
        )
    summary = build_report(runs, tmp_path / "report", cfg=_cfg())
    md = Path(summary["paths"]["markdown"]).read_text()
    table = md[md.index("### Per fold") :].split("\n\n")[1].splitlines()
    assert "| model |" in table[0]
    cells = {
        (r.split("|")[1].strip(), r.split("|")[2].strip()): r.split("|")[5].strip()
        for r in table[2:]
    }
    assert cells == {
        ("0", "0"): "cold",
        ("1", "0"): "from v2",
        ("0", "1"): "cold",
        ("1", "1"): "from v2",
    }
    assert f"- cold (fold/seed 0/0, 0/1): {why}." in md
    assert (
        "2 of 4 trainings started from the champion (v2) and trained 25% of the steps"
        in summary["comparison"]
    )
    # without warm starts (the summaries carry none): every training cold, no note, no line
    plain = build_report(
        _synthetic_runs(tmp_path / "plain", mean=0.0), tmp_path / "report2", cfg=_cfg()
    )
    md2 = Path(plain["paths"]["markdown"]).read_text()
    assert "from the champion's weights" not in md2 and "started from the champion" not in md2
    assert "| model |" in md2


def test_metrics_equal_independent_computation(noise_report: tuple[Path, dict[str, Any]]) -> None:
    root, summary = noise_report
    doc = json.loads(Path(summary["paths"]["metrics"]).read_text())
    frames = [pl.read_ipc(root / "runs" / f"run_0_{k}" / "backtest.feather") for k in (1, 0)]
    stitched = pl.concat(frames).sort("timestamp")
    assert stitch(frames).equals(stitched)
    expected = compute_metrics(
        stitched["returns"].to_numpy(),
        positions=stitched["position"].to_numpy(),
        costs=stitched["costs"].to_numpy(),
        timestamps=stitched["timestamp"],
        periods_per_year=MINUTE_PERIODS_PER_YEAR,
    )
    got = doc["headline"]["metrics"]
    for key in ("sharpe", "total_return", "max_drawdown", "n_bars", "mean_abs_exposure"):
        assert got[key] == pytest.approx(expected[key], rel=1e-12, abs=1e-15), key
    m = sharpe_moments(stitched["returns"].to_numpy())
    assert doc["headline"]["per_bar"]["kurtosis"] == pytest.approx(m.kurtosis)
    assert doc["headline"]["dsr"] == pytest.approx(
        deflated_sharpe_ratio(m.sharpe, m.n_obs, n_trials=1, skew=m.skew, kurtosis=m.kurtosis)
    )
    ci = doc["headline"]["ci"]["sharpe"]
    assert ci["resamples"] == 200 and ci["level"] == 0.95 and ci["seed"] == 3
    assert len(doc["folds"]) == 2
    for fold in doc["folds"]:
        assert (
            fold["ci"]["sharpe"]["lower"]
            <= fold["metrics"]["sharpe"]
            <= fold["ci"]["sharpe"]["upper"]
        )
    assert set(doc["references"]) == {"flat", "long_etf", "trend", "underlying"}
    assert doc["references"]["flat"]["metrics"]["sharpe"] == 0.0


def test_no_edge_on_zero_mean_noise(noise_report: tuple[Path, dict[str, Any]]) -> None:
    _, summary = noise_report
    assert summary["edge"] is False
    assert summary["verdict"].startswith("No evidence of an edge")
    lo, hi = summary["sharpe_ci"]
    assert lo < 0 < hi
    md = Path(summary["paths"]["markdown"]).read_text()
    assert summary["verdict"] in md and "Out-of-sample edge" not in md


def test_edge_on_strongly_positive_returns(tmp_path: Path) -> None:
    runs = _synthetic_runs(tmp_path / "runs", mean=5e-4, seeds=(0, 1, 2))
    summary = build_report(runs, tmp_path / "report", cfg=_cfg())
    assert summary["edge"] is True, summary["verdict"]
    assert summary["verdict"].startswith("Out-of-sample edge")
    assert summary["n_trials"] == 3 and summary["n_runs"] == 6
    doc = json.loads(Path(summary["paths"]["metrics"]).read_text())
    stab = doc["stability"]
    sharpes = [doc["seeds"][s]["metrics"]["sharpe"] for s in ("0", "1", "2")]
    assert stab["sharpe_mean"] == pytest.approx(np.mean(sharpes))
    assert stab["sharpe_std"] == pytest.approx(np.std(sharpes, ddof=1))
    assert doc["headline"]["dsr"] >= 0.95


def test_html_is_self_contained(noise_report: tuple[Path, dict[str, Any]]) -> None:
    _, summary = noise_report
    text = Path(summary["paths"]["html"]).read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text)
    assert "<script" not in text and "<link" not in text
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(images) == 6
    for data in images:
        assert base64.b64decode(data).startswith(PNG_MAGIC)
    assert "Ingest / data quality" in text and "Performance profile" in text


def test_per_regime_rows(noise_report: tuple[Path, dict[str, Any]]) -> None:
    _, summary = noise_report
    doc = json.loads(Path(summary["paths"]["metrics"]).read_text())
    rows = doc["regimes"]
    assert [r["regime"] for r in rows] == [0, 1]
    assert sum(r["n_bars"] for r in rows) == doc["headline"]["metrics"]["n_bars"]
    assert sum(r["share"] for r in rows) == pytest.approx(1.0)
    md = Path(summary["paths"]["markdown"]).read_text()
    assert "Per regime" in md


def test_verdict_never_claims_an_edge_when_the_interval_contains_zero() -> None:
    ci = {"lower": -0.1, "upper": 2.0}
    edge, text = verdict(ci, 0.999, level=0.95, min_dsr=0.95)
    assert not edge and "contains 0" in text
    edge, text = verdict({"lower": 0.5, "upper": 2.0}, 0.41, level=0.95, min_dsr=0.95)
    assert not edge and "DSR 0.41 < 0.95" in text
    edge, _ = verdict({"lower": 0.5, "upper": 2.0}, 0.99, level=0.95, min_dsr=0.95)
    assert edge
    assert not verdict(None, None, level=0.95, min_dsr=0.95)[0]


def test_report_of_real_backtests(tmp_path: Path) -> None:
    """Backtest files produced for real by the simulator (trend rule as the agent)."""
    market = random_market(n_sessions=6, session_len=60, seed=5)
    params = make_params()
    runs = []
    for fold, rows in enumerate([[(60, 180)], [(180, 300)]]):
        folder = tmp_path / f"fold{fold}"
        folder.mkdir()
        agent = trend_policy(params, 1, feature_names=market.feature_names, feature="f0")
        backtest(agent, market, params, rows).bars_frame().write_ipc(folder / "backtest.feather")
        refs = {
            "flat": backtest(flat_policy(params), market, params, rows),
            "long_etf": backtest(long_etf_policy(params), market, params, rows),
            "underlying": underlying_buy_and_hold(market, rows, params),
        }
        for name, ref in refs.items():
            ref.bars_frame().write_ipc(folder / f"reference_{name}.feather")
        runs.append({"fold": fold, "seed": 0, "output": str(folder / "backtest.feather")})
    summary = build_report(runs, tmp_path / "report", cfg=_cfg())
    doc = json.loads(Path(summary["paths"]["metrics"]).read_text())
    assert doc["headline"]["metrics"]["n_bars"] == sum(
        pl.read_ipc(tmp_path / f"fold{k}" / "backtest.feather").height for k in (0, 1)
    )
    assert set(doc["references"]) == {"flat", "long_etf", "underlying"}
    assert doc["regimes"] and isinstance(summary["edge"], bool)


def test_comparison_with_the_oracle_and_the_causal_references() -> None:
    from sentio.report import comparison

    refs = {
        "oracle": {"metrics": {"sharpe": 8.0}},
        "trend": {"metrics": {"sharpe": 1.0}},
        "long_etf": {"metrics": {"sharpe": 3.0}},
        "flat": {"metrics": {"sharpe": None}},
    }
    c = comparison(2.0, refs)
    assert c["oracle_sharpe"] == 8.0 and c["captured"] == pytest.approx(0.25)
    assert c["best_causal"] == "long_etf" and c["best_causal_sharpe"] == 3.0
    assert "25%" in c["sentence"] and "not above" in c["sentence"]
    c = comparison(4.0, {**refs, "oracle": {"metrics": {"sharpe": -1.0}}})
    assert c["captured"] is None and "no share" in c["sentence"]
    assert "the agent is above it" in c["sentence"]
    c = comparison(1.0, {"flat": {"metrics": {"sharpe": None}}})
    assert c == {
        "oracle_sharpe": None,
        "captured": None,
        "best_causal": None,
        "best_causal_sharpe": None,
        "sentence": "",
    }


def test_stitched_figures_give_the_oracle_its_interval(tmp_path: Path) -> None:
    from sentio.report import stitched_figures

    runs = _synthetic_runs(tmp_path, mean=0.0)
    for run in runs:  # an oracle that makes 5 bp a bar with 1 bp of noise: clearly above 0
        folder = Path(run["output"]).parent
        bars = pl.read_ipc(folder / "backtest.feather")
        rng = np.random.default_rng(run["fold"])
        r = 5e-4 + rng.normal(0.0, 1e-4, bars.height)
        _frame(r, bars["timestamp"].to_numpy(), bars["regime"].to_numpy()).write_ipc(
            folder / "reference_oracle.feather"
        )
    fig = stitched_figures(runs, _cfg())
    oracle = fig["references"]["oracle"]
    assert 0 < oracle["lower"] <= oracle["sharpe"] <= oracle["upper"]
    assert "lower" not in fig["references"]["trend"]
    agent = fig["agent"]  # zero-mean noise: no edge
    assert agent["lower"] <= 0 <= agent["upper"]
    assert fig["bars"] == sum(pl.read_ipc(r["output"]).height for r in runs)
