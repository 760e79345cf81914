"""The report as a trader reads it (issue 16, part 4): header, one verdict, plain names,
flags, per-trade P&L from the ledgers, the data-quality summary, date axes, the registry
decision added after the fact.

The fixture is a realistic daily run written the way the train stage writes it: three
folds x two seeds of ``backtest.feather`` (with ``entries`` and ``equity``), their trade
ledgers ``trades.feather``, the reference policies (oracle included), three regimes, a
data gap of ten sessions and derived leveraged prices. Fold 0 of seed 0 barely trades
(near-flat) and fold 2 of seed 1 flips its position every bar (over-trading).
"""

from __future__ import annotations

import html
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from sentio.config import SentioConfig
from sentio.report import (
    NEAR_FLAT_EXPOSURE,
    OVERTRADING_ANNUAL_TURNOVER,
    activity_flags,
    add_registry_decision,
    build_report,
    reference_labels,
    regime_name,
    time_figures,
)

SESSIONS_PER_FOLD = 160
FOLDS = 3
SEEDS = (0, 1)
GAP = (200, 210)  # business days 200..209 from the start are absent (a data gap)
START = np.datetime64("2016-01-04")
COST = 5e-4  # fraction of the traded notional
VOL = (0.006, 0.012, 0.025)  # per-regime daily volatility of the underlying
INITIAL = 100_000.0


def cfg() -> SentioConfig:
    return SentioConfig.model_validate(
        {"report": {"bootstrap_resamples": 200, "seed": 3}, "env": {"flat_at_close": False}}
    )


def _days() -> np.ndarray:
    """Business days (bar starts 14:30 UTC) with the gap removed."""
    n = FOLDS * SESSIONS_PER_FOLD + (GAP[1] - GAP[0])
    days = np.busday_offset(START, np.arange(n), roll="forward")
    days = np.delete(days, np.arange(*GAP))
    return days.astype("datetime64[us]") + np.timedelta64(14 * 60 + 30, "m")


def _market(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Underlying daily returns and a Markov regime path (0 calm .. 2 volatile)."""
    regime = np.zeros(n, dtype=np.int64)
    for t in range(1, n):
        regime[t] = regime[t - 1] if rng.random() < 0.95 else rng.integers(0, 3)
    drift = np.array([6e-4, 0.0, -8e-4])[regime]
    return drift + rng.normal(0.0, 1.0, n) * np.array(VOL)[regime], regime


def _positions(rng: np.random.Generator, n: int, style: str) -> np.ndarray:
    grid = np.array([-1.0, -0.5, 0.0, 0.5, 1.0])
    if style == "flat":  # two short trades in the whole fold
        pos = np.zeros(n)
        pos[10:13], pos[90:92] = 0.5, -0.5
        return pos
    if style == "churn":  # flips every bar
        return np.where(np.arange(n) % 2 == 0, 1.0, -1.0)
    pos, t = np.zeros(n), 0
    while t < n:
        hold = int(rng.geometric(1 / 6))
        pos[t : t + hold] = rng.choice(grid, p=[0.15, 0.15, 0.3, 0.2, 0.2])
        t += hold
    return pos


def _series(u: np.ndarray, pos: np.ndarray, leverage: float = 3.0) -> dict[str, np.ndarray]:
    """Per-bar returns, costs, entries and equity of holding ``pos`` x the +/-3x ETF."""
    prev = np.concatenate([[0.0], pos[:-1]])
    costs = COST * np.abs(pos - prev)
    returns = pos * leverage * u - costs
    entries = ((pos != 0) & (np.sign(pos) != np.sign(prev))).astype(np.int64)
    return {
        "returns": returns,
        "position": pos,
        "exposure": pos,
        "costs": costs,
        "entries": entries,
        "equity": INITIAL * np.cumprod(1.0 + returns),
    }


def _momentum_sign(u: np.ndarray, window: int = 20) -> np.ndarray:
    """Causal: the sign of the move over the ``window`` bars before each bar."""
    past = np.convolve(u, np.ones(window))[: u.size - 1]
    return np.sign(np.concatenate([[0.0], past]))


def _frame(stamps: np.ndarray, s: dict[str, np.ndarray], regime: np.ndarray) -> pl.DataFrame:
    n = stamps.size
    return pl.DataFrame(
        {
            "timestamp": stamps,
            "rows": np.arange(n, dtype=np.int64),
            "block": np.zeros(n, dtype=np.int64),
            **s,
            "costs_cash": s["costs"] * INITIAL,
            "regime": regime,
        }
    )


def _ledger(stamps: np.ndarray, s: dict[str, np.ndarray]) -> pl.DataFrame:
    """One row per trade (entry to exit): entry time and net P&L in currency."""
    pos, eq, r = s["position"], s["equity"], s["returns"]
    before = eq / (1.0 + r)
    starts = np.flatnonzero(s["entries"])
    entry, pnl = [], []
    for i, a in enumerate(starts):
        stop = starts[i + 1] if i + 1 < starts.size else pos.size
        held = np.flatnonzero(pos[a:stop] == 0)
        b = a + (int(held[0]) if held.size else stop - a)  # first flat bar or next entry
        net = eq[b - 1] - before[a]
        entry.append(stamps[a])
        pnl.append(float(net))
    return pl.DataFrame(
        {
            "entry_time": np.asarray(entry, dtype="datetime64[us]"),
            "net_pnl": np.asarray(pnl, dtype=float),
        }
    )


def write_daily_runs(root: Path) -> list[dict[str, Any]]:
    """Train-stage-like summaries of a realistic daily run (see the module docstring)."""
    stamps = _days()
    rng = np.random.default_rng(7)
    u, regime = _market(rng, stamps.size)
    runs = []
    for seed in SEEDS:
        for fold in range(FOLDS):
            sl = slice(fold * SESSIONS_PER_FOLD, (fold + 1) * SESSIONS_PER_FOLD)
            ts, uf, rf = stamps[sl], u[sl], regime[sl]
            style = "flat" if (fold, seed) == (0, 0) else "churn" if (fold, seed) == (2, 1) else ""
            prng = np.random.default_rng(100 * seed + fold)
            agent = _series(uf, _positions(prng, ts.size, style))
            folder = root / f"run_{seed}_{fold}"
            folder.mkdir(parents=True)
            _frame(ts, agent, rf).write_ipc(folder / "backtest.feather")
            _ledger(ts, agent).write_ipc(folder / "trades.feather")
            refs = {
                "flat": _series(uf, np.zeros(ts.size)),
                "long_etf": _series(uf, np.ones(ts.size)),
                "underlying": _series(uf, np.ones(ts.size), leverage=1.0),
                "trend": _series(uf, _momentum_sign(uf)),
                "regime_rule": _series(uf, np.array([1.0, 0.0, -1.0])[rf]),
                "oracle": _series(uf, np.array([1.0, 0.0, -0.5])[rf]),
            }
            for name, s in refs.items():
                _frame(ts, s, rf).write_ipc(folder / f"reference_{name}.feather")
            runs.append(
                {
                    "fold": fold,
                    "seed": seed,
                    "output": str(folder / "backtest.feather"),
                    "metrics": {"periods_per_year": 252.0},
                    "n_trades": int(agent["entries"].sum()),
                    "train": {
                        "curve": [
                            {"steps": 1000 * i, "mean_episode_log_return": 1e-3 * (i - 2)}
                            for i in range(1, 6)
                        ]
                    },
                }
            )
    return runs


def ingest_summary() -> dict[str, Any]:
    """An ingest summary with the keys of the ingest stage (paths and hashes included)."""
    days = _days()
    return {
        "output": "/work/.sentio/ingest/abc/bars.feather",
        "output_sha256": "f" * 64,
        "report": "/work/.sentio/ingest/abc/ingest.json",
        "quarantine": None,
        "gx_html": "/work/.sentio/ingest/abc/gx.html",
        "gx_success": True,
        "inputs": {"/data/qqq | daily.csv": "a" * 64},
        "rows_read": 1500,
        "rows_kept": 1490,
        "rows_dropped_outside_regular_hours": 0,
        "rows_dropped_duplicates": 10,
        "rows_quarantined": 0,
        "quarantined_by_reason": {},
        "symbols": ["QQQ", "SQQQ", "TQQQ"],
        "derived_symbols": ["SQQQ", "TQQQ"],
        "bar_seconds": 86_400,
        "frequency": "1d",
        "start": f"{days[0]}+00:00",
        "end": f"{days[-1]}+00:00",
        "sessions": int(days.size),
        "incomplete_sessions": 0,
        "sessions_with_missing_bars": 0,
        "gaps": [{"after": "2016-10-07", "before": "2016-10-24", "sessions_missing": 10}],
    }


RUN_INFO = {"name": "nightly-2024-05-02", "started": "2024-05-02T06:00:05+00:00"}


@pytest.fixture(scope="module")
def daily(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, list[dict[str, Any]], dict[str, Any]]:
    root = tmp_path_factory.mktemp("daily")
    runs = write_daily_runs(root / "runs")
    summary = build_report(
        runs,
        root / "report",
        cfg=cfg(),
        ingest_summary=ingest_summary(),
        profile={"train (s)": 41.5},
        run_info=RUN_INFO,
    )
    return root, runs, summary


def _md(summary: dict[str, Any]) -> str:
    return Path(summary["paths"]["markdown"]).read_text(encoding="utf-8")


def _doc(summary: dict[str, Any]) -> dict[str, Any]:
    return json.loads(Path(summary["paths"]["metrics"]).read_text(encoding="utf-8"))


# --------------------------------------------------------------------------------------
# the header and the verdict


def test_header_says_run_date_data_range_folds_and_registry(daily: Any) -> None:
    _, _, summary = daily
    md = _md(summary)
    top = md.split("**Verdict:**")[0]
    assert top.startswith("# Sentio out-of-sample report\n")
    assert "- **Run:** nightly-2024-05-02, started 2024-05-02 06:00 UTC; configuration " in top
    assert "- **Data:** daily bars, 2016-01-04 .. 2017-11-17; QQQ, SQQQ, TQQQ" in top
    assert "3 folds x 2 seeds (6 trainings), 480 test bars" in top
    assert "- **Model:** registry: pending" in top
    assert (
        "> **Warning:** SQQQ and TQQQ prices are derived from QQQ with the daily-reset "
        "identity, not traded prices." in top
    )
    doc = _doc(summary)
    assert doc["registry"] is None and doc["run"]["name"] == RUN_INFO["name"]


def test_verdict_said_once_beside_the_comparison_and_the_flags(daily: Any) -> None:
    _, _, summary = daily
    md = _md(summary)
    assert md.count(summary["verdict"]) == 1 and md.count("**Verdict:**") == 1
    page = Path(summary["paths"]["html"]).read_text(encoding="utf-8")
    assert page.count(html.escape(summary["verdict"])) == 1 and page.count("Verdict:") == 1
    # near the top: the comparison and the flags follow it, before the first table
    after = md.split(f"**Verdict:** {summary['verdict']}")[1].split("\n### ")[0]
    assert summary["comparison"] in after and "**Flags:**" in after


def test_no_run_info_and_no_ingest_still_give_a_header(tmp_path: Path) -> None:
    runs = write_daily_runs(tmp_path / "runs")[:3]
    summary = build_report(runs, tmp_path / "report", cfg=cfg())
    top = _md(summary).split("**Verdict:**")[0]
    assert "- **Run:** unnamed run, report written " in top
    assert "- **Data:** daily bars, 2016-01-04 .. 2017-11-17" in top
    assert "Warning" not in top and "Ingest / data quality" not in _md(summary)


# --------------------------------------------------------------------------------------
# names


def test_reference_names_follow_the_session_rule(daily: Any) -> None:
    _, _, summary = daily
    md = _md(summary)
    for label in (
        "Oracle (knows the true regime; not tradeable)",
        "Regime rule",
        "Trend rule",
        "Buy +3x ETF (TQQQ), held overnight (agent's rules)",
        "Underlying buy-and-hold (QQQ)",
        "Flat (no position)",
    ):
        assert f"| {label} |" in md, label
    for internal in ("long_etf", "underlying |", "| oracle", "regime_rule"):
        assert internal not in md, internal
    doc = _doc(summary)
    assert doc["references"]["long_etf"]["label"].startswith("Buy +3x ETF")
    intraday = SentioConfig.model_validate({"env": {"flat_at_close": True}})
    assert reference_labels(intraday)["long_etf"] == (
        "Buy +3x ETF (TQQQ), flat at each close (agent's rules)"
    )
    auto = SentioConfig.model_validate({"env": {"flat_at_close": "auto"}})
    assert "held overnight" in reference_labels(auto, daily=True)["long_etf"]
    assert "flat at each close" in reference_labels(auto, daily=False)["long_etf"]


def test_regimes_named_by_volatility_rank(daily: Any) -> None:
    _, _, summary = daily
    assert [regime_name(k, 2) for k in (0, 1)] == ["calm", "volatile"]
    assert [regime_name(k, 3) for k in (0, 1, 2)] == ["calm", "choppy", "volatile"]
    assert regime_name(3, 5) == "regime 3 (vol rank 3)" and regime_name(-1, 3) == "no regime"
    doc = _doc(summary)
    assert [r["name"] for r in doc["regimes"]] == ["calm", "choppy", "volatile"]
    md = _md(summary)
    assert "| calm |" in md and "| volatile |" in md


# --------------------------------------------------------------------------------------
# numbers a trader asks for


def test_tables_carry_cagr_costs_turnover_hit_rate_and_pnl_per_trade(daily: Any) -> None:
    _, _, summary = daily
    md = _md(summary)
    header = (
        "| series | Sharpe | Sharpe CI | total return | CAGR | max drawdown | costs paid | "
        "annual turnover | mean abs. exposure | hit rate | trades | avg net P&L per trade |"
    )
    assert header in md
    assert "| fold | seed | test from | test to | model | Sharpe |" in md and "| flags |" in md
    for fold in _doc(summary)["folds"]:
        m = fold["metrics"]
        for key in ("cagr", "costs_paid", "annual_turnover", "hit_rate", "n_trades"):
            assert key in m, key


def test_pnl_per_trade_from_the_ledgers(daily: Any) -> None:
    """The agent's: mean of net P&L / equity at entry over the ledger rows; a reference's:
    the sum of its bar returns over its trades."""
    _, runs, summary = daily
    doc = _doc(summary)
    for fold, run in zip(
        doc["folds"], sorted(runs, key=lambda r: (r["seed"], r["fold"])), strict=True
    ):
        folder = Path(run["output"]).parent
        bars = pl.read_ipc(folder / "backtest.feather")
        ledger = pl.read_ipc(folder / "trades.feather")
        idx = np.searchsorted(bars["timestamp"].to_numpy(), ledger["entry_time"].to_numpy())
        before = bars["equity"].to_numpy()[idx] / (1 + bars["returns"].to_numpy()[idx])
        expected = float(np.mean(ledger["net_pnl"].to_numpy() / before))
        assert fold["metrics"]["avg_trade_return"] == pytest.approx(expected, rel=1e-9)
        assert fold["metrics"]["n_trades"] == ledger.height
    # a reference: stitched over the folds (seed 0's runs; references do not depend on it)
    refs = [
        pl.read_ipc(Path(r["output"]).parent / "reference_trend.feather")
        for r in runs
        if r["seed"] == 0
    ]
    both = pl.concat(refs)
    assert doc["references"]["trend"]["metrics"]["avg_trade_return"] == pytest.approx(
        both["returns"].sum() / both["entries"].sum()
    )


def test_flags_near_flat_and_over_trading(daily: Any) -> None:
    _, _, summary = daily
    doc = _doc(summary)
    by_run = {(f["fold"], f["seed"]): f["flags"] for f in doc["folds"]}
    assert by_run[(0, 0)] and by_run[(0, 0)][0].startswith("near-flat: mean abs. exposure")
    assert by_run[(2, 1)] and by_run[(2, 1)][0].startswith("over-trading: 1.99 of equity")
    assert not by_run[(1, 0)]
    md = _md(summary)
    assert "- Fold 0 (seed 0): near-flat: mean abs. exposure 0.016 (below 0.02), 2 trades" in md
    assert "- Fold 2 (seed 1): over-trading:" in md
    assert summary["flags"]["folds"] == [
        {"fold": f, "seed": s, "flags": by_run[(f, s)]} for f, s in ((0, 0), (2, 1))
    ]


def test_activity_flag_rules() -> None:
    base = {"mean_abs_exposure": 0.5, "n_trades": 40, "sessions": 100, "exposure_share": 0.6}
    assert activity_flags(base) == []
    assert activity_flags({**base, "mean_abs_exposure": 0.001})[0].startswith("near-flat")
    rare = {**base, "n_trades": 3, "exposure_share": 0.1}
    assert "3 trades in 100 sessions (fewer than 1 per 20)" in activity_flags(rare)[0]
    held = {**base, "n_trades": 1, "exposure_share": 1.0}  # bought and held: not near-flat
    assert activity_flags(held) == []
    churn = {**base, "annual_turnover": OVERTRADING_ANNUAL_TURNOVER + 1}
    assert activity_flags(churn)[0].startswith("over-trading: annual turnover")
    costly = {**base, "costs_paid": 0.03, "gross_pnl": 0.01}
    assert (
        "costs paid 3.00% of equity exceed the gross P&L before costs (+1.00%)"
        in (activity_flags(costly)[0])
    )
    small = {**base, "costs_paid": 0.001, "gross_pnl": 0.0}  # below OVERTRADING_MIN_COSTS
    assert activity_flags(small) == []
    assert activity_flags({"mean_abs_exposure": None, "n_trades": None}) == []
    assert NEAR_FLAT_EXPOSURE == 0.02


# --------------------------------------------------------------------------------------
# data quality


def test_data_quality_table_is_compact_and_lists_the_gap(daily: Any) -> None:
    _, _, summary = daily
    md = _md(summary)
    section = md.split("### Ingest / data quality")[1].split("\n### ")[0]
    assert (
        "| gap 1 | 10 sessions missing: 2016-10-10 .. 2016-10-21 (between 2016-10-07 and "
        "2016-10-24) |" in section
    )
    assert "| missing sessions | 10 in 1 gap |" in section
    assert "| rows read | 1,500 |" in section and "| derived symbols | SQQQ, TQQQ |" in section
    assert "/work/" not in section and "f" * 64 not in section and "a" * 64 not in section
    doc = _doc(summary)  # paths and hashes stay in metrics.json
    assert doc["ingest"]["output_sha256"] == "f" * 64
    assert doc["ingest"]["output"].endswith("bars.feather")


# --------------------------------------------------------------------------------------
# the registry decision, after the fact


def test_add_registry_decision_rewrites_without_recomputing(
    daily: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    import sentio.report.numbers as report

    _, _, summary = daily
    folder = tmp_path / "report"
    shutil.copytree(Path(summary["paths"]["metrics"]).parent, folder)
    before = json.loads((folder / "metrics.json").read_text())

    def boom(*_: Any, **__: Any) -> Any:
        raise AssertionError("the bootstrap was recomputed")

    monkeypatch.setattr(report, "bootstrap_metrics", boom)
    monkeypatch.setattr(report, "compute_metrics", boom)
    add_registry_decision(
        folder,
        {
            "candidate": "v0007",
            "promoted": True,
            "champion_before": "v0004",
            "champion_after": "v0007",
            "reasons": [],
        },
    )
    after = json.loads((folder / "metrics.json").read_text())
    assert after["registry"]["candidate"] == "v0007" and after["registry"]["promoted"] is True
    assert {k: v for k, v in after.items() if k != "registry"} == {
        k: v for k, v in before.items() if k != "registry"
    }
    md = (folder / "report.md").read_text()
    assert "- **Model:** version v0007; registry: promoted to champion (was v0004)" in md
    assert "pending" not in md and md.count(summary["verdict"]) == 1
    page = (folder / "report.html").read_text()
    assert "version v0007; registry: promoted to champion" in page
    assert page.count('src="data:image/png;base64,') == 6
    # not promoted, with and without a champion: the header says which
    add_registry_decision(
        folder,
        {"candidate": "v0008", "promoted": False, "champion_after": None, "reasons": ["DSR low"]},
    )
    md = (folder / "report.md").read_text()
    assert "version v0008; registry: not promoted (DSR low); there is no champion" in md
    add_registry_decision(
        folder, {"candidate": "v0009", "promoted": False, "champion_after": "v0007"}
    )
    assert "not promoted; the champion stays v0007" in (folder / "report.md").read_text()


# --------------------------------------------------------------------------------------
# plots


def test_time_plots_have_date_axes_and_fold_boundaries(daily: Any) -> None:
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    _, runs, summary = daily
    doc = _doc(summary)
    seed0 = [r for r in runs if r["seed"] == 0]
    head = pl.concat([pl.read_ipc(r["output"]) for r in seed0]).sort("timestamp")
    refs = {
        "trend": pl.concat(
            [pl.read_ipc(Path(r["output"]).parent / "reference_trend.feather") for r in seed0]
        ).sort("timestamp")
    }
    figs = time_figures(head, refs, doc["folds"], n_regimes=3, gaps=ingest_summary()["gaps"])
    try:
        assert set(figs) == {"equity", "drawdown", "exposure"}
        for name, fig in figs.items():
            ax = fig.axes[0]
            assert isinstance(ax.xaxis.get_major_formatter(), mdates.ConciseDateFormatter), name
            lo, hi = (mdates.num2date(v).date().isoformat() for v in ax.get_xlim())
            assert lo <= "2016-01-04" and hi >= "2017-11-17", (name, lo, hi)
            dashed = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
            assert len(dashed) == FOLDS + 1, name  # each fold's start and the last end
        legend = [t.get_text() for t in figs["equity"].axes[0].get_legend().get_texts()]
        assert "regime: calm" in legend and "regime: volatile" in legend
        assert "data gap (no bars)" in legend
    finally:
        for fig in figs.values():
            plt.close(fig)


def test_plots_of_150k_minute_bars_are_aggregated_and_fast() -> None:
    import matplotlib.pyplot as plt

    from sentio.report.figures import _png

    n_sessions, per = 385, 390
    day0 = np.datetime64("2023-01-02T14:30", "us")
    days = np.busday_offset(np.datetime64("2023-01-02"), np.arange(n_sessions), roll="forward")
    stamps = (
        days.astype("datetime64[us]")[:, None]
        + (np.timedelta64(14 * 60 + 30, "m") + np.arange(per) * np.timedelta64(1, "m"))[None, :]
    ).ravel()
    assert stamps[0] == day0 and stamps.size >= 150_000
    rng = np.random.default_rng(1)
    u = rng.normal(0, 3e-4, stamps.size)
    regime = (np.arange(stamps.size) // 37 % 3).astype(np.int64)  # thousands of switches
    pos = np.where(rng.random(stamps.size) < 0.5, 0.5, -0.5)
    head = _frame(stamps, _series(u, pos), regime)
    folds = [
        {"fold": k, "seed": 0, "start": str(stamps[k * 50_000]), "end": str(stamps[-1])}
        for k in range(3)
    ]
    started = time.perf_counter()
    figs = time_figures(
        head, {"flat": head.with_columns(pl.lit(0.0).alias("returns"))}, folds, n_regimes=3
    )
    pngs = {name: _png(fig) for name, fig in figs.items()}
    elapsed = time.perf_counter() - started
    assert elapsed < 20.0, f"plots of {stamps.size} bars took {elapsed:.1f} s"
    assert all(p.startswith(b"\x89PNG") for p in pngs.values())
    figs = time_figures(head, {}, folds, n_regimes=3)
    try:
        (agent,) = [ln for ln in figs["equity"].axes[0].get_lines() if ln.get_label() == "Agent"]
        assert len(agent.get_xdata()) == n_sessions  # one point per session
        assert "week" in figs["exposure"].axes[0].get_title()
    finally:
        for fig in figs.values():
            plt.close(fig)
