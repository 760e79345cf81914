"""The report of a nightly run: out-of-sample results of the trained agents, with honest inference.

:func:`build_report` reads the outputs of the train stage (one summary dict per fold and
seed, see :func:`sentio.stages.train_stage`) and writes into ``out_dir``:

* ``metrics.json`` -- every number of the report (strict JSON, NaN as ``null``), and
  everything the two pages are rendered from (``run``, ``registry``, ``data_quality``,
  ``labels``), so that :func:`add_registry_decision` rewrites the pages without
  recomputing anything;
* ``report.md`` -- the header, the verdict, the tables, with the plots as PNG files in
  ``out_dir/plots/``;
* ``report.html`` -- a self-contained page (plots embedded as base64 PNG data URIs, inline
  CSS only, no external resource).

Reading order: a header (run, date, data range and frequency, folds and seeds, model
version and registry decision, a warning when the ETF prices were derived), the verdict
said once beside the comparison with the references, plain-word flags for a near-flat or
an over-trading agent, then the tables (the agent beside the references, per fold, per
regime, Sharpe-ratio inference, per seed, model selection, data quality, profile) and
the plots (dates on every time axis, fold boundaries drawn, regimes named by volatility
rank, exposure as a daily mean and a histogram).

Inference: the test bars of each seed stitched across folds in time order, with
stationary-bootstrap confidence intervals; the dispersion across seeds; the headline
series (the seed ensemble: per bar, the mean return of the seeds over the bars they
share) with PSR and DSR on the per-bar Sharpe ratio (the number of trials is the number
of stitched strategies actually run, one configuration x the seeds, and their Sharpe
variance). The verdict claims an edge only when the bootstrap interval of the stitched
Sharpe ratio lies above zero AND the DSR reaches ``cfg.registry.min_dsr``.

Library code only: no orchestration imports.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from sentio.config import SentioConfig
from sentio.data.schema import NY_TZ
from sentio.evaluation import (
    EvaluationError,
    bootstrap_metrics,
    compute_metrics,
    deflated_sharpe_ratio,
    metrics_to_json,
    periods_per_year,
    probabilistic_sharpe_ratio,
    sharpe_moments,
)
from sentio.io import write_text_atomic

__all__ = [
    "CAUSAL_REFERENCES",
    "CI_STATISTICS",
    "NEAR_FLAT_EXPOSURE",
    "NEAR_FLAT_SESSIONS_PER_TRADE",
    "OVERTRADING_ANNUAL_TURNOVER",
    "OVERTRADING_MIN_COSTS",
    "OVERTRADING_TURNOVER_PER_BAR",
    "PLOT_MAX_POINTS",
    "REFERENCES",
    "REFERENCE_LABELS",
    "activity_flags",
    "add_registry_decision",
    "build_report",
    "load_bars",
    "markdown_table",
    "md_cell",
    "reference_labels",
    "regime_name",
    "stitch",
    "stitched_figures",
    "time_figures",
    "verdict",
]

REFERENCES: tuple[str, ...] = (
    "oracle",
    "regime_rule",
    "trend",
    "fast_trend",
    "long_etf",
    "underlying",
    "flat",
)
"""Reference policies of the train stage, in the report's order."""
CAUSAL_REFERENCES: tuple[str, ...] = (
    "regime_rule",
    "trend",
    "fast_trend",
    "long_etf",
    "underlying",
)
"""References a trader could have run at the time (the oracle reads the generator's truth)."""
CI_STATISTICS: tuple[str, ...] = ("sharpe", "total_return", "max_drawdown", "sortino")

NEAR_FLAT_EXPOSURE = 0.02
"""An agent (or a fold) whose mean |exposure| over its bars is below this is flagged near-flat."""
NEAR_FLAT_SESSIONS_PER_TRADE = 20
"""Fewer than one trade per this many sessions, while out of the market for most bars
(:data:`NEAR_FLAT_MAX_EXPOSURE_SHARE`), is flagged near-flat too (a buy-and-hold agent
with one long trade is not)."""
NEAR_FLAT_MAX_EXPOSURE_SHARE = 0.25
"""The share of bars in a position below which the trade-count rule applies."""
OVERTRADING_ANNUAL_TURNOVER = 1000.0
"""Annual turnover (sum of |position change| per year, in equity multiples) above which an
agent is flagged over-trading: on average more than two full round trips of equity per
session (an agent fully invested every session and flat at each close: about 504x)."""
OVERTRADING_TURNOVER_PER_BAR = 0.5
"""Mean |position change| per bar above which an agent is flagged over-trading whatever
the bar length: half of equity changing hands every bar (on daily bars, a full position
change every other session; daily bars cannot reach the annual limit above)."""
OVERTRADING_MIN_COSTS = 0.005
"""Costs paid (fraction of equity, simple sum) from which costs larger than the absolute
gross P&L (the P&L before costs) flag over-trading: costs, not the market, made the result."""
PLOT_MAX_POINTS = 5000
"""Above this many bars the time plots are drawn from one point per session (last equity,
deepest drawdown, dominant regime), so that 150,000 minute bars plot in a moment."""

_REGIME_NAMES: dict[int, tuple[str, ...]] = {
    2: ("calm", "volatile"),
    3: ("calm", "choppy", "volatile"),
}
# columns averaged across seeds for the ensemble series
_ENSEMBLE_COLUMNS = ("returns", "position", "exposure", "costs", "entries")
_REF_DESCRIPTIONS: dict[str, str] = {
    "oracle": "trades on the generator's true regime (synthetic data only) under the same "
    "costs and masks: what was attainable, not a strategy anyone could run",
    "regime_rule": "long in the calm regime, short in the volatile one, flat between, from "
    "the causally filtered regime probabilities",
    "trend": "60-bar momentum with hysteresis (enter when its z score passes 2, leave when "
    "its sign turns), sized by the risk budget",
    "fast_trend": "the sign of the move over the observation window (up to 15 bars), "
    "re-decided every bar",
    "underlying": "the underlying bought at the first bar and held, overnight included, no "
    "costs (a benchmark series; the agent trades only the ETFs)",
    "flat": "no position, no costs",
}


# --------------------------------------------------------------------------------------
# names for people


def reference_labels(
    cfg: SentioConfig | None = None, *, daily: bool | None = None
) -> dict[str, str]:
    """Plain names of the references, worded from the configuration.

    The +L ETF reference follows the agent's session rule: ``env.flat_at_close`` True
    (intraday data) sells at each close, False (daily data) holds overnight; an
    unresolved ``"auto"`` is resolved from ``daily`` (the data's frequency) when given,
    else named as the agent's session rule.
    """
    if cfg is None:
        cfg = SentioConfig()
    uni = cfg.universe
    rule = _session_rule(cfg, daily)
    hold = (
        "flat at each close"
        if rule is True
        else "held overnight"
        if rule is False
        else "the agent's session rule"
    )
    return {
        "oracle": "Oracle (knows the true regime; not tradeable)",
        "regime_rule": "Regime rule",
        "trend": "Trend rule",
        "fast_trend": "Fast trend rule",
        "long_etf": f"Buy +{uni.leverage:g}x ETF ({uni.long}), {hold} (agent's rules)",
        "underlying": f"Underlying buy-and-hold ({uni.underlying})",
        "flat": "Flat (no position)",
    }


def _session_rule(cfg: SentioConfig, daily: bool | None) -> Any:
    """``env.flat_at_close``; ``"auto"`` resolved as the pipeline does (off for daily bars)."""
    rule = getattr(cfg.env, "flat_at_close", True)
    if not isinstance(rule, bool) and daily is not None:
        return not daily
    return rule


def _reference_descriptions(cfg: SentioConfig, daily: bool | None = None) -> dict[str, str]:
    rule = _session_rule(cfg, daily)
    hold = (
        "sold at each session's close"
        if rule is True
        else "held overnight"
        if rule is False
        else "under the agent's session rule"
    )
    return {
        **_REF_DESCRIPTIONS,
        "long_etf": f"the +{cfg.universe.leverage:g}x ETF {cfg.universe.long} bought whenever "
        f"the agent's masks allow, {hold}, with the agent's costs",
    }


REFERENCE_LABELS: dict[str, str] = reference_labels(daily=False)
"""Plain names of the references under the default configuration on intraday bars."""


def regime_name(k: int, n_regimes: int) -> str:
    """The name of regime ``k`` of ``n_regimes`` (0 = lowest volatility; -1 = no regime)."""
    if k < 0:
        return "no regime"
    names = _REGIME_NAMES.get(n_regimes)
    if names is not None and k < len(names):
        return names[k]
    return f"regime {k} (vol rank {k})"


def _frequency_text(bar_seconds: Any, ppy: float) -> str:
    """'1-minute', '5-minute', '1-hour', 'daily' from the bar length (or bars per year)."""
    if isinstance(bar_seconds, int | float) and bar_seconds > 0:
        s = int(bar_seconds)
        if s >= 86_400:
            return "daily"
        if s % 3600 == 0:
            return f"{s // 3600}-hour"
        if s % 60 == 0:
            return f"{s // 60}-minute"
        return f"{s}-second"
    if ppy <= 252:
        return {252: "daily", 52: "weekly", 12: "monthly"}.get(round(ppy), "daily")
    minutes = 390.0 / (ppy / 252.0)
    return f"{minutes:g}-minute" if minutes >= 1 else f"{60 * minutes:.0f}-second"


# --------------------------------------------------------------------------------------
# inputs


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


def _naive_utc(ts: pl.Series) -> pl.Series:
    """Timestamps as naive UTC microseconds (tz-aware ones converted)."""
    if isinstance(ts.dtype, pl.Datetime) and ts.dtype.time_zone is not None:
        ts = ts.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
    return ts.cast(pl.Datetime("us"))


def _new_york(ts: pl.Series) -> pl.Series:
    """Naive New York wall-clock times of UTC timestamps (for axes and tables)."""
    return (
        _naive_utc(ts)
        .dt.replace_time_zone("UTC")
        .dt.convert_time_zone(NY_TZ)
        .dt.replace_time_zone(None)
    )


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


def _metrics(frame: pl.DataFrame, ppy: float, trades: np.ndarray | None = None) -> dict[str, float]:
    """compute_metrics of a per-bar frame, plus ``sessions``, ``gross_pnl`` and
    ``avg_trade_return``.

    ``gross_pnl``: the simple sum of the returns plus the costs paid (P&L before costs, as
    a fraction of equity). ``avg_trade_return``: the mean net P&L per trade as a fraction
    of the equity at entry, from the trade ledger when ``trades`` is given, otherwise the
    sum of the bar returns over the number of trades.
    """
    m = compute_metrics(
        frame["returns"].to_numpy(),
        positions=frame["position"].to_numpy() if "position" in frame.columns else None,
        costs=frame["costs"].to_numpy() if "costs" in frame.columns else None,
        timestamps=frame["timestamp"],
        periods_per_year=ppy,
        entries=frame["entries"].to_numpy() if "entries" in frame.columns else None,
    )
    r = frame["returns"].to_numpy()
    m["sessions"] = float(_n_sessions(frame))
    costs = m.get("costs_paid", math.nan)
    m["gross_pnl"] = float(r.sum() + costs) if math.isfinite(costs) else math.nan
    n = m.get("n_trades", math.nan)
    if trades is not None and trades.size:
        m["avg_trade_return"] = float(trades.mean())
    elif math.isfinite(n) and n > 0:
        m["avg_trade_return"] = float(r.sum() / n)
    else:
        m["avg_trade_return"] = math.nan
    return m


def _intervals(returns: np.ndarray, ppy: float, cfg: SentioConfig) -> dict[str, dict[str, Any]]:
    """Stationary-bootstrap intervals of :data:`CI_STATISTICS` (empty for < 2 bars)."""
    if returns.size < 2:
        return {}
    res = bootstrap_metrics(
        returns,
        statistics=CI_STATISTICS,
        resamples=cfg.report.bootstrap_resamples,
        level=cfg.report.ci_level,
        seed=cfg.report.seed,
        periods_per_year=ppy,
    )
    return {name: r.to_dict() for name, r in res.items()}


def _moments(returns: np.ndarray) -> dict[str, float] | None:
    try:
        m = sharpe_moments(returns)
    except EvaluationError:
        return None
    return {"sharpe": m.sharpe, "n_obs": float(m.n_obs), "skew": m.skew, "kurtosis": m.kurtosis}


# --------------------------------------------------------------------------------------
# flags


def activity_flags(m: dict[str, Any]) -> list[str]:
    """Plain-word flags of a near-flat or an over-trading series (empty when neither).

    Near-flat: mean |exposure| below :data:`NEAR_FLAT_EXPOSURE`, or fewer than one trade
    per :data:`NEAR_FLAT_SESSIONS_PER_TRADE` sessions while in a position on fewer than
    :data:`NEAR_FLAT_MAX_EXPOSURE_SHARE` of the bars. Over-trading: annual turnover above
    :data:`OVERTRADING_ANNUAL_TURNOVER` or turnover per bar above
    :data:`OVERTRADING_TURNOVER_PER_BAR`, or costs paid of at least
    :data:`OVERTRADING_MIN_COSTS` that exceed the absolute gross P&L. ``m`` holds the
    keys of :func:`_metrics` (``None`` for undefined values).
    """

    def num(key: str) -> float | None:
        v = m.get(key)
        return float(v) if isinstance(v, int | float) and math.isfinite(v) else None

    flags: list[str] = []
    exposure, trades, sessions = num("mean_abs_exposure"), num("n_trades"), num("sessions")
    share = num("exposure_share")
    activity = (
        f"{trades:g} trades in {sessions:g} sessions"
        if trades is not None and sessions is not None
        else ""
    )
    if exposure is not None and exposure < NEAR_FLAT_EXPOSURE:
        flags.append(
            f"near-flat: mean abs. exposure {exposure:.3f} (below {NEAR_FLAT_EXPOSURE:g})"
            + (f", {activity}" if activity else "")
        )
    elif (
        trades is not None
        and sessions
        and trades * NEAR_FLAT_SESSIONS_PER_TRADE < sessions
        and (share is None or share < NEAR_FLAT_MAX_EXPOSURE_SHARE)
    ):
        flags.append(
            f"near-flat: {activity} (fewer than 1 per {NEAR_FLAT_SESSIONS_PER_TRADE})"
            + (f", in a position on {share:.0%} of bars" if share is not None else "")
        )
    reasons = []
    turnover, per_bar = num("annual_turnover"), num("turnover_per_bar")
    costs, gross = num("costs_paid"), num("gross_pnl")
    if turnover is not None and turnover > OVERTRADING_ANNUAL_TURNOVER:
        reasons.append(
            f"annual turnover {turnover:,.0f}x equity (above {OVERTRADING_ANNUAL_TURNOVER:,.0f}x)"
        )
    elif per_bar is not None and per_bar > OVERTRADING_TURNOVER_PER_BAR:
        reasons.append(
            f"{per_bar:.2f} of equity traded per bar on average "
            f"(above {OVERTRADING_TURNOVER_PER_BAR:g})"
        )
    if (
        costs is not None
        and gross is not None
        and costs >= OVERTRADING_MIN_COSTS
        and costs > abs(gross)
    ):
        reasons.append(
            f"costs paid {costs:.2%} of equity exceed the gross P&L before costs ({gross:+.2%})"
        )
    if reasons:
        flags.append("over-trading: " + "; ".join(reasons))
    return flags


def stitched_figures(runs: Sequence[dict[str, Any]], cfg: SentioConfig) -> dict[str, Any]:
    """The headline figures of one seed's runs, stitched over the folds (benchmarks).

    ``agent``: annualised Sharpe with its stationary-bootstrap interval
    (``report`` settings), total return, trades, mean |exposure held| over the bars;
    ``references``: each reference policy's stitched Sharpe and total return, and for the
    oracle its Sharpe interval too (whether the market's edge is detectable at all on
    this many bars after costs).
    """
    frames = [f for f in (load_bars(r) for r in runs) if f is not None and f.height]
    if not frames:
        raise ValueError("no run has out-of-sample bars (backtest.feather)")
    agent = stitch(frames)
    hint = (runs[0].get("metrics") or {}).get("periods_per_year")
    ppy = _ppy(agent, hint)
    r = agent["returns"].to_numpy()
    m = _metrics(agent, ppy)
    ci = _intervals(r, ppy, cfg).get("sharpe") or {}
    refs: dict[str, Any] = {}
    for name in REFERENCES:
        parts = [f for f in (load_bars(run, f"reference_{name}") for run in runs) if f is not None]
        if parts:
            ref = stitch(parts)
            rm = _metrics(ref, ppy)
            refs[name] = {
                "sharpe": _finite(rm.get("sharpe")),
                "total_return": rm.get("total_return"),
            }
            if name == "oracle":
                rci = _intervals(ref["returns"].to_numpy(), ppy, cfg).get("sharpe") or {}
                refs[name].update(lower=rci.get("lower"), upper=rci.get("upper"))
    return {
        "agent": {
            "sharpe": _finite(m.get("sharpe")),
            "lower": ci.get("lower"),
            "upper": ci.get("upper"),
            "total_return": m.get("total_return"),
            "trades": int(sum(int(run.get("n_trades", 0)) for run in runs)),
            "mean_abs_exposure": float(np.abs(agent["position"].to_numpy()).mean()),
        },
        "references": refs,
        "bars": int(agent.height),
    }


def _finite(x: Any) -> float | None:
    return float(x) if x is not None and math.isfinite(float(x)) else None


# --------------------------------------------------------------------------------------
# verdict


def verdict(
    ci: dict[str, Any] | None, dsr: float | None, *, level: float, min_dsr: float
) -> tuple[bool, str]:
    """Whether the stitched results show an edge, and the sentence saying so.

    An edge needs the bootstrap interval of the Sharpe ratio strictly above 0 AND the DSR
    at least ``min_dsr``; an interval containing 0 (or missing) never reads as an edge.
    """
    pct = f"{100 * level:g}%"
    dsr_txt = "DSR n/a" if dsr is None else f"DSR {dsr:.2f}"
    lo = None if ci is None else ci.get("lower")
    hi = None if ci is None else ci.get("upper")
    if lo is None or hi is None:
        return False, f"No evidence of an edge: the Sharpe interval is undefined ({dsr_txt})."
    span = f"[{lo:.2f}, {hi:.2f}]"
    if lo <= 0.0 <= hi:
        cmp = "" if dsr is None else (" < " if dsr < min_dsr else " >= ") + f"{min_dsr:g}"
        return False, (
            f"No evidence of an edge: the {pct} interval of the stitched Sharpe {span} "
            f"contains 0 ({dsr_txt}{cmp})."
        )
    if hi < 0.0:
        return False, (
            f"Negative edge: the {pct} interval of the stitched Sharpe {span} lies below 0 "
            f"({dsr_txt})."
        )
    if dsr is None or dsr < min_dsr:
        return False, (
            f"No evidence of an edge after deflation: the {pct} interval of the stitched "
            f"Sharpe {span} excludes 0 but {dsr_txt} < {min_dsr:g}."
        )
    return True, (
        f"Out-of-sample edge: the {pct} interval of the stitched Sharpe {span} excludes 0 "
        f"and {dsr_txt} >= {min_dsr:g}."
    )


def comparison(
    agent_sharpe: float | None, refs: dict[str, Any], labels: dict[str, str] | None = None
) -> dict[str, Any]:
    """The agent beside what was attainable and what a trader could have run.

    ``oracle_sharpe`` and ``captured`` (the agent's Sharpe over the oracle's, when the
    oracle exists and made a positive Sharpe), ``best_causal`` (the causal reference
    with the highest Sharpe, :data:`CAUSAL_REFERENCES`) and its Sharpe, and
    ``sentence``, the same in words (references named by ``labels``, default
    :data:`REFERENCE_LABELS`).
    """
    names = labels or REFERENCE_LABELS

    def sharpe(name: str) -> float | None:
        v = ((refs.get(name) or {}).get("metrics") or {}).get("sharpe")
        return _finite(v)

    a = _finite(agent_sharpe)
    oracle = sharpe("oracle")
    captured = a / oracle if a is not None and oracle is not None and oracle > 0 else None
    causal = {n: sharpe(n) for n in CAUSAL_REFERENCES if sharpe(n) is not None}
    best = max(causal, key=lambda n: causal[n] or 0.0) if causal else None
    parts = []
    if oracle is not None:
        parts.append(
            f"The oracle (the generator's truth, same costs and masks) made Sharpe {oracle:.2f}"
            + (
                f"; the agent's {a:.2f} is {captured:.0%} of it."
                if captured is not None
                else "; no share of it can be stated (the oracle made no positive Sharpe)."
            )
        )
    if best is not None:
        diff = "above" if a is not None and a > (causal[best] or 0.0) else "not above"
        parts.append(
            f"Best causal reference: {names.get(best, best)}, Sharpe "
            f"{causal[best]:.2f}; the agent is {diff} it."
        )
    return {
        "oracle_sharpe": oracle,
        "captured": captured,
        "best_causal": best,
        "best_causal_sharpe": causal.get(best) if best else None,
        "sentence": " ".join(parts),
    }


# --------------------------------------------------------------------------------------
# regimes


def _regime_table(frame: pl.DataFrame, ppy: float, n_regimes: int) -> list[dict[str, Any]]:
    """Per regime at the decision row: name, bars, share, mean return, Sharpe, total return,
    mean |exposure| and hit rate."""
    if "regime" not in frame.columns or frame.height == 0:
        return []
    rows: list[dict[str, Any]] = []
    n = frame.height
    for regime in sorted(frame["regime"].unique().to_list()):
        part = frame.filter(pl.col("regime") == regime)
        r = part["returns"].to_numpy()
        std = float(r.std(ddof=1)) if r.size > 1 else math.nan
        sharpe = float(r.mean()) / std * math.sqrt(ppy) if std > 0 else math.nan
        pos = part["position"].to_numpy() if "position" in part.columns else np.zeros(r.size)
        active = pos != 0
        rows.append(
            {
                "regime": int(regime),
                "name": regime_name(int(regime), n_regimes),
                "n_bars": int(r.size),
                "share": r.size / n,
                "mean_return": float(r.mean()),
                "sharpe": sharpe,
                "total_return": float(np.prod(1.0 + r) - 1.0),
                "mean_abs_exposure": float(np.abs(pos).mean()),
                "hit_rate": float((r[active] > 0).mean()) if active.any() else math.nan,
            }
        )
    return rows


def _n_regimes(cfg: SentioConfig, frame: pl.DataFrame) -> int:
    """Regimes of the run: ``regimes.n_states`` (at least the highest index seen + 1)."""
    seen = int(frame["regime"].max()) + 1 if "regime" in frame.columns and frame.height else 0  # type: ignore[arg-type]
    configured = cfg.regimes.n_states if cfg.regimes.enabled else 0
    return max(configured, seen)


# --------------------------------------------------------------------------------------
# plots


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _plot_frame(head: pl.DataFrame, refs: dict[str, pl.DataFrame]) -> pl.DataFrame:
    """The time plots' data: New York ``time``, equity of the agent (``agent``) and of each
    reference (``ref:<name>``, its returns on the agent's bars), ``drawdown`` and
    ``regime``; one row per bar, or per session above :data:`PLOT_MAX_POINTS` bars (last
    equity, deepest drawdown, dominant regime)."""
    r = head["returns"].to_numpy()
    eq = np.cumprod(1.0 + r)
    cols: dict[str, Any] = {
        "time": _new_york(head["timestamp"]),
        "agent": eq,
        "drawdown": 1.0 - eq / np.maximum.accumulate(np.maximum(eq, 1.0)),
    }
    if "regime" in head.columns:
        cols["regime"] = head["regime"].cast(pl.Int64)
    keys = head.select(_naive_utc(head["timestamp"]).alias("timestamp"))
    for name, ref in refs.items():
        part = ref.select(_naive_utc(ref["timestamp"]).alias("timestamp"), "returns")
        joined = keys.join(part, on="timestamp", how="left", maintain_order="left")
        cols[f"ref:{name}"] = np.cumprod(1.0 + joined["returns"].fill_null(0.0).to_numpy())
    frame = pl.DataFrame(cols)
    if frame.height <= PLOT_MAX_POINTS:
        return frame
    aggs = [pl.col("time").last(), pl.col("drawdown").max()]
    aggs += [pl.col(c).last() for c in frame.columns if c == "agent" or c.startswith("ref:")]
    if "regime" in frame.columns:
        aggs.append(pl.col("regime").mode().first())
    return (
        frame.group_by(pl.col("time").dt.date().alias("session"), maintain_order=True)
        .agg(aggs)
        .drop("session")
    )


def _fold_bounds(folds: Sequence[dict[str, Any]]) -> list[tuple[int, np.datetime64]]:
    """(fold, New York start of its test bars) per fold, then (-1, end of the last fold)."""
    starts: dict[int, str] = {}
    end = ""
    for f in folds:
        k = int(f["fold"])
        starts[k] = min(starts.get(k, f["start"]), f["start"])
        end = max(end, f["end"])
    out = [(k, _ny_stamp(s)) for k, s in sorted(starts.items(), key=lambda kv: kv[1])]
    if end:
        out.append((-1, _ny_stamp(end)))
    return out


def _ny_stamp(text: str) -> np.datetime64:
    """An ISO time (naive = UTC) as a naive New York ``datetime64``."""
    import zoneinfo

    t = dt.datetime.fromisoformat(text)
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return np.datetime64(t.astimezone(zoneinfo.ZoneInfo(NY_TZ)).replace(tzinfo=None), "us")


def _time_axes(
    ax: Any,
    bounds: Sequence[tuple[int, np.datetime64]],
    gaps: Sequence[tuple[str, str]] = (),
    *,
    label: bool,
) -> None:
    """A date axis (New York time) with the fold boundaries as dashed vertical lines and
    the data gaps (``(after, before)`` session dates) as hatched grey spans."""
    import matplotlib.dates as mdates

    for k, at in bounds:
        ax.axvline(at, color="0.3", linestyle="--", linewidth=0.8, zorder=1)
        if label and k >= 0:
            ax.text(
                at,
                0.99,
                f" fold {k}",
                transform=ax.get_xaxis_transform(),
                va="top",
                fontsize=7,
                color="0.25",
            )
    for i, (after, before) in enumerate(gaps):
        ax.axvspan(
            np.datetime64(after) + np.timedelta64(1, "D"),
            np.datetime64(before),
            facecolor="none",
            edgecolor="0.55",
            hatch="///",
            linewidth=0,
            label="data gap (no bars)" if i == 0 else None,
        )
    ax.xaxis_date()
    locator = mdates.AutoDateLocator(minticks=4, maxticks=10)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    ax.set_xlabel(
        "date (New York; dashed lines: fold boundaries"
        + ("; hatched: data gaps" if gaps else "")
        + ")",
        fontsize=8,
    )


def _shade_regimes(ax: Any, x: np.ndarray, regime: np.ndarray, n_regimes: int) -> None:
    """Light bands behind the lines, green (calm) to red (volatile) by volatility rank.

    One band per run of a regime; a band reaches the next bar unless a night (intraday
    bars) or a data gap lies between (a step over 4 x the median step).
    """
    import matplotlib.dates as mdates
    from matplotlib.colors import LinearSegmentedColormap

    if x.size == 0:
        return
    cmap = LinearSegmentedColormap.from_list("vol_rank", ["#4daf4a", "#ff7f00", "#e41a1c"])
    num = np.asarray(mdates.date2num(x), dtype=float)
    step = np.diff(num)
    typical = float(np.median(step)) if step.size else 1.0
    joined = step <= 4 * typical
    cuts = np.flatnonzero((regime[1:] != regime[:-1]) | ~joined) + 1
    starts = np.concatenate([[0], cuts])
    ends = np.concatenate([cuts, [x.size]])  # exclusive
    last = ends - 1
    reach = np.zeros(last.size, dtype=bool)
    inner = ends < x.size
    reach[inner] = joined[last[inner]]
    right = np.where(reach, num[np.minimum(ends, x.size - 1)], num[last] + typical)
    widths = right - num[starts]
    kinds = regime[starts]
    for k in (int(v) for v in np.unique(kinds) if v >= 0):
        sel = kinds == k
        ax.broken_barh(
            list(zip(num[starts][sel], widths[sel], strict=True)),
            (0, 1),
            transform=ax.get_xaxis_transform(),
            facecolors=cmap(k / max(n_regimes - 1, 1)),
            alpha=0.2,
            linewidth=0,
            label=f"regime: {regime_name(k, n_regimes)}",
        )


def _equity_figure(
    frame: pl.DataFrame, bounds: Any, gaps: Any, labels: dict[str, str], n_regimes: int
) -> Any:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 4.2))
    x = frame["time"].to_numpy()
    if "regime" in frame.columns:
        _shade_regimes(ax, x, frame["regime"].to_numpy(), n_regimes)
    ax.plot(x, frame["agent"].to_numpy(), label="Agent", color="black", linewidth=1.5, zorder=3)
    curves = [c for c in frame.columns if c.startswith("ref:")]
    for c in curves:
        name = c.removeprefix("ref:")
        ax.plot(x, frame[c].to_numpy(), label=labels.get(name, name), linewidth=0.9, zorder=2)
    values = np.concatenate([frame[c].to_numpy() for c in ["agent", *curves]])
    positive = values[values > 0]
    if positive.size and positive.max() / positive.min() > 20:
        ax.set_yscale("log")
    ax.axhline(1.0, color="grey", linewidth=0.5)
    ax.set_title("Equity of the agent and the references (start = 1; regimes shaded)")
    ax.set_ylabel("equity")
    _time_axes(ax, bounds, gaps, label=True)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False)
    return fig


def _drawdown_figure(frame: pl.DataFrame, bounds: Any, gaps: Any) -> Any:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 2.8))
    x = frame["time"].to_numpy()
    ax.fill_between(
        x, -100.0 * frame["drawdown"].to_numpy(), 0, color="firebrick", alpha=0.6, step="post"
    )
    ax.set_title("Drawdown of the agent from its running peak")
    ax.set_ylabel("drawdown (%)")
    _time_axes(ax, bounds, gaps, label=False)
    return fig


_EXPOSURE_PERIODS = (("1d", "session"), ("1w", "week"), ("1mo", "month"))
_EXPOSURE_MAX_PERIODS = 260


def _exposure_periods(head: pl.DataFrame, col: str) -> tuple[pl.DataFrame, str]:
    """Mean signed and mean absolute exposure per session, or per week / month when there
    are more than :data:`_EXPOSURE_MAX_PERIODS` sessions (weeks)."""
    frame = pl.DataFrame(
        {"day": _new_york(head["timestamp"]).dt.date(), "p": head[col].cast(pl.Float64)}
    )
    out, name = frame, ""
    for every, name in _EXPOSURE_PERIODS:  # noqa: B007 - the period used is returned
        out = (
            frame.group_by_dynamic("day", every=every)
            .agg(pl.col("p").mean().alias("mean"), pl.col("p").abs().mean().alias("abs"))
            .with_columns(pl.col("day").cast(pl.Datetime("us")))
        )
        if out.height <= _EXPOSURE_MAX_PERIODS:
            break
    return out, name


def _exposure_figure(head: pl.DataFrame, bounds: Any, gaps: Any) -> Any:
    """Mean exposure per session (week, month) beside a histogram of per-bar exposure."""
    plt = _pyplot()
    col = "position" if "position" in head.columns else "exposure"
    pos = head[col].to_numpy().astype(float)
    periods, name = _exposure_periods(head.sort("timestamp"), col)
    fig, (ax, hx) = plt.subplots(
        1, 2, figsize=(10, 3.0), gridspec_kw={"width_ratios": [3, 1]}, layout="constrained"
    )
    x = periods["day"].to_numpy()
    ax.fill_between(
        x,
        periods["mean"].to_numpy(),
        0,
        step="post",
        color="navy",
        alpha=0.45,
        linewidth=0,
        label="mean exposure (+ long, - short)",
    )
    ax.step(
        x,
        periods["abs"].to_numpy(),
        where="post",
        color="darkorange",
        linewidth=0.9,
        label="mean abs. exposure",
    )
    ax.axhline(0.0, color="grey", linewidth=0.5)
    ax.set_title(f"Exposure held, mean per {name}", fontsize=10)
    ax.set_ylabel("exposure (of equity)")
    _time_axes(ax, bounds, gaps, label=False)
    ax.legend(loc="best", fontsize=7)
    lim = max(1.0, float(np.abs(pos).max(initial=0.0)))
    edges = np.arange(-lim - 0.05, lim + 0.0501, 0.1)
    counts, _ = np.histogram(np.clip(pos, edges[0], edges[-1]), bins=edges)
    share = 100.0 * counts / max(pos.size, 1)
    hx.bar(0.5 * (edges[:-1] + edges[1:]), share, width=0.09, color="navy")
    flat = 100.0 * float((pos == 0).mean()) if pos.size else math.nan
    hx.set_title(f"Per bar (flat on {flat:.0f}% of bars)", fontsize=10)
    hx.set_xlabel("exposure held over a bar")
    hx.set_ylabel("% of bars")
    return fig


def time_figures(
    head: pl.DataFrame,
    refs: dict[str, pl.DataFrame],
    folds: Sequence[dict[str, Any]],
    *,
    labels: dict[str, str] | None = None,
    n_regimes: int = 0,
    gaps: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """The matplotlib figures over time (``equity``, ``drawdown``, ``exposure``).

    Dates (New York) on the x axis, fold boundaries from the ``start`` / ``end`` of
    ``folds``, the data ``gaps`` of the ingest summary (``after`` / ``before``) hatched;
    long series are aggregated per session first (:data:`PLOT_MAX_POINTS`), the exposure
    per session, week or month. The caller closes the figures (``_png`` does).
    """
    frame = _plot_frame(head, refs)
    bounds = _fold_bounds(folds)
    spans = [
        (str(g["after"]), str(g["before"])) for g in gaps if g.get("after") and g.get("before")
    ]
    return {
        "equity": _equity_figure(frame, bounds, spans, labels or REFERENCE_LABELS, n_regimes),
        "drawdown": _drawdown_figure(frame, bounds, spans),
        "exposure": _exposure_figure(head, bounds, spans),
    }


def _fold_sharpe_figure(folds: Sequence[dict[str, Any]]) -> Any:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.4))
    labels, est, lo, hi = [], [], [], []
    for row in folds:
        ci = row["ci"].get("sharpe") or {}
        s = row["metrics"].get("sharpe")
        labels.append(f"fold {row['fold']} seed {row['seed']}\n{row['start'][:10]}")
        est.append(np.nan if s is None else s)
        lo.append(np.nan if ci.get("lower") is None else ci["lower"])
        hi.append(np.nan if ci.get("upper") is None else ci["upper"])
    pos = np.arange(len(labels))
    e = np.asarray(est, dtype=float)
    err = np.vstack([e - np.asarray(lo, dtype=float), np.asarray(hi, dtype=float) - e])
    ax.errorbar(pos, e, yerr=np.nan_to_num(err), fmt="o", capsize=3)
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xticks(pos, labels, rotation=45, fontsize=7, ha="right")
    ax.set_ylabel("annualised Sharpe")
    ax.set_title("Per-fold annualised Sharpe ratio with bootstrap intervals (fold start below)")
    return fig


def _learning_figure(folds: Sequence[dict[str, Any]]) -> Any:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 3.2))
    drawn = 0
    for row in folds:
        curve = (row.get("train") or {}).get("curve") or []
        pts = [(c["steps"], c["mean_episode_log_return"]) for c in curve]
        pts = [(st, v) for st, v in pts if v is not None]
        if pts:
            st, v = zip(*pts, strict=True)
            ax.plot(
                st,
                np.expm1(np.asarray(v, dtype=float)),
                linewidth=0.9,
                label=f"fold {row['fold']} seed {row['seed']}",
            )
            drawn += 1
    _steps_axes(
        ax,
        "Learning curve: mean return of the training episodes ended in each rollout"
        + ("" if drawn else " (no curve recorded)"),
        "episode return (raw)",
        legend=drawn > 0,
    )
    return fig


def _validation_figure(folds: Sequence[dict[str, Any]]) -> Any:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 3.2))
    drawn = 0
    for row in folds:
        val = (row.get("train") or {}).get("validation") or {}
        hist = val.get("history") or []
        if not hist:
            continue
        (line,) = ax.plot(
            [h["steps"] for h in hist],
            [h["sharpe"] for h in hist],
            marker=".",
            linewidth=0.9,
            label=f"fold {row['fold']} seed {row['seed']}"
            + (" (stood aside)" if val.get("stands_aside") else ""),
        )
        best = [h["sharpe"] for h in hist if h["steps"] == val.get("best_steps")]
        if best:
            ax.plot([val["best_steps"]], best, marker="*", markersize=11, color=line.get_color())
        drawn += 1
    _steps_axes(
        ax,
        "Validation: annualised Sharpe on held-out training episodes (star: the saved model)"
        + ("" if drawn else " (no validation run)"),
        "Sharpe (held out)",
        legend=drawn > 0,
    )
    return fig


def _plots(
    head: pl.DataFrame,
    refs: dict[str, pl.DataFrame],
    folds: list[dict[str, Any]],
    labels: dict[str, str],
    n_regimes: int,
    gaps: Sequence[dict[str, Any]] = (),
) -> dict[str, bytes]:
    """The PNG plots, keyed as :data:`_PLOT_TITLES`."""
    figs = time_figures(head, refs, folds, labels=labels, n_regimes=n_regimes, gaps=gaps)
    figs["fold_sharpe"] = _fold_sharpe_figure(folds)
    figs["learning_curve"] = _learning_figure(folds)
    figs["validation_curve"] = _validation_figure(folds)
    return {name: _png(figs[name]) for name in _PLOT_TITLES}


def _steps_axes(ax: Any, title: str, ylabel: str, *, legend: bool) -> None:
    """Title, labels, the zero line and the legend of a plot over training steps."""
    ax.axhline(0.0, color="grey", linewidth=0.6)
    ax.set_title(title)
    ax.set_xlabel("environment steps")
    ax.set_ylabel(ylabel)
    if legend:
        ax.legend(loc="best", fontsize=7)


def stood_aside(folds: Sequence[dict[str, Any]]) -> str:
    """A sentence on the trainings whose model selection kept them flat ('' when none)."""
    vals = [(f.get("train") or {}).get("validation") or {} for f in folds]
    aside = [v for v in vals if v.get("stands_aside")]
    if not aside:
        return ""
    return (
        f"The agent stood aside (stayed flat) in {len(aside)} of {len(folds)} trainings: "
        f"no checkpoint reached a t statistic of {aside[0].get('min_t', 0):g} on the "
        "held-out end of their training rows (Model selection table)."
    )


def validation_rows(folds: Sequence[dict[str, Any]]) -> list[list[str]]:
    """Per fold and seed: the model selection on the held-out tail of its training rows."""
    rows: list[list[str]] = []
    for f in folds:
        val = (f.get("train") or {}).get("validation") or {}
        if not val:
            continue
        if val.get("skipped"):
            rows.append(
                [str(f["fold"]), str(f["seed"]), "", "", "", "", f"skipped: {val['skipped']}"]
            )
            continue
        best: dict[str, Any] = next(
            (h for h in val.get("history", []) if h["steps"] == val.get("best_steps")), {}
        )
        decision = (
            f"stands aside (t {_fmt(best.get('t'), 2)} < {_fmt(val.get('min_t'), 2)}): flat"
            if val.get("stands_aside")
            else "trades"
        )
        rows.append(
            [
                str(f["fold"]),
                str(f["seed"]),
                str(val.get("episodes")),
                f"{int(val.get('best_steps', 0)):,}",
                _fmt(best.get("sharpe"), 2),
                _fmt(best.get("mean_abs_exposure")),
                decision,
            ]
        )
    return rows


# --------------------------------------------------------------------------------------
# formatting


def _clean(obj: Any) -> Any:
    """Recursively: NaN / infinities to None, numpy scalars to Python (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "n/a"
        return f"{value:.{digits}f}"
    return str(value)


def _pct(value: Any, digits: int = 2, *, sign: bool = False) -> str:
    v = _num(value)
    if v is None:
        return "n/a"
    return f"{100 * v:{'+' if sign else ''}.{digits}f}%"


def _times(value: Any) -> str:
    v = _num(value)
    if v is None:
        return "n/a"
    return f"{v:,.0f}x" if v >= 10 else f"{v:.1f}x"


def _count(value: Any) -> str:
    v = _num(value)
    if v is None:
        return "n/a" if value is None else str(value)
    return f"{v:,.0f}" if v == int(v) else f"{v:,.1f}"


def _ci_txt(ci: dict[str, Any] | None, digits: int = 2) -> str:
    if not ci or ci.get("lower") is None or ci.get("upper") is None:
        return "n/a"
    return f"[{ci['lower']:.{digits}f}, {ci['upper']:.{digits}f}]"


def md_cell(value: Any) -> str:
    """Text safe inside a markdown table cell: newlines to spaces, ``|`` escaped as ``\\|``."""
    text = " ".join(str(value).split())
    return text.replace("\\", "\\\\").replace("|", "\\|")


def markdown_table(header: Sequence[Any], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table; every cell passes through :func:`md_cell`.

    Raises:
        ValueError: a row with another number of cells than the header.
    """
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"table row has {len(row)} cells, its header {len(header)}")
    lines = ["| " + " | ".join(md_cell(h) for h in header) + " |"]
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines += ["| " + " | ".join(md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


@dataclass
class _Table:
    title: str
    header: list[str]
    rows: list[list[str]]
    note: str = ""
    items: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        parts = [f"### {self.title}", "", markdown_table(self.header, self.rows)]
        if self.note:
            parts += ["", self.note]
        if self.items:
            parts += ["", *(f"- {item}" for item in self.items)]
        return "\n".join(parts) + "\n"

    def html(self) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.header)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in self.rows
        )
        note = f'<p class="note">{html.escape(self.note)}</p>' if self.note else ""
        if self.items:
            note += (
                '<ul class="note">'
                + "".join(f"<li>{html.escape(i)}</li>" for i in self.items)
                + "</ul>"
            )
        return (
            f"<h3>{html.escape(self.title)}</h3>"
            f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{note}"
        )


_METRIC_HEADER = [
    "series",
    "Sharpe",
    "Sharpe CI",
    "total return",
    "CAGR",
    "max drawdown",
    "costs paid",
    "annual turnover",
    "mean abs. exposure",
    "hit rate",
    "trades",
    "avg net P&L per trade",
]
_METRIC_NOTE = (
    "Returns, drawdown, costs and P&L per trade in % of equity; costs paid and turnover "
    "summed over the test bars (turnover per year, in multiples of equity); hit rate: share "
    "of bars in a position that gained; P&L per trade: the agent's from its trade ledgers, "
    "the references' as the sum of their bar returns over their trades."
)


def _metric_row(label: str, m: dict[str, Any], ci: dict[str, Any]) -> list[str]:
    return [
        label,
        _fmt(m.get("sharpe"), 2),
        _ci_txt(ci.get("sharpe")),
        _pct(m.get("total_return"), sign=True),
        _pct(m.get("cagr"), 1, sign=True),
        _pct(m.get("max_drawdown")),
        _pct(m.get("costs_paid")),
        _times(m.get("annual_turnover")),
        _fmt(m.get("mean_abs_exposure")),
        _pct(m.get("hit_rate"), 1),
        _count(m.get("n_trades")),
        _pct(m.get("avg_trade_return"), 3, sign=True),
    ]


def _flag_words(flags: Sequence[str]) -> str:
    """The short names of flags ('near-flat', 'over-trading') for a table cell."""
    return ", ".join(f.split(":", 1)[0] for f in flags)


def _kv_table(title: str, data: dict[str, Any]) -> _Table:
    rows = []
    for k, v in data.items():
        text = json.dumps(_clean(v), default=str) if isinstance(v, dict | list) else _fmt(v)
        rows.append([str(k), text])
    return _Table(title, ["key", "value"], rows)


# --------------------------------------------------------------------------------------
# data quality and the header


_MAX_GAPS_LISTED = 10


def gap_text(gap: dict[str, Any], calendar: str = "XNYS") -> str:
    """A data gap in words: '19 sessions missing: 2011-02-01 .. 2011-02-28 (between
    2011-01-31 and 2011-03-01)'; the missing dates come from the exchange calendar."""
    from sentio.calendar import sessions
    from sentio.errors import DataError

    n = int(gap.get("sessions_missing") or 0)
    after, before = str(gap.get("after")), str(gap.get("before"))
    head = f"{n} session{'s' if n != 1 else ''} missing"
    try:
        days = sessions(
            dt.date.fromisoformat(after) + dt.timedelta(days=1),
            dt.date.fromisoformat(before) - dt.timedelta(days=1),
            calendar,
        )["session"]
    except (DataError, ValueError):
        days = pl.Series([], dtype=pl.Date)
    if days.len():
        first, last = str(days[0]), str(days[-1])
        head += f": {first}" + (f" .. {last}" if last != first else "")
    return f"{head} (between {after} and {before})"


def data_quality_rows(ingest: dict[str, Any], calendar: str = "XNYS") -> list[list[str]]:
    """The compact data-quality table of an ingest summary: counts, sessions, the gaps
    (``gaps``: ``after`` / ``before`` / ``sessions_missing``; absent = none), frequency
    and symbols. No paths or hashes (those stay in ``metrics.json``)."""
    rows: list[list[str]] = []

    def add(label: str, key: str) -> None:
        if key in ingest:
            rows.append([label, _count(ingest[key])])

    add("rows read", "rows_read")
    add("rows kept", "rows_kept")
    for key in sorted(k for k in ingest if k.startswith("rows_dropped_")):
        rows.append([key.removeprefix("rows_").replace("_", " "), _count(ingest[key])])
    if "rows_quarantined" in ingest:
        reasons = {r: n for r, n in (ingest.get("quarantined_by_reason") or {}).items() if n}
        detail = ", ".join(f"{r} {_count(n)}" for r, n in sorted(reasons.items()))
        rows.append(
            [
                "rows quarantined",
                _count(ingest["rows_quarantined"]) + (f" ({detail})" if detail else ""),
            ]
        )
    if "bar_seconds" in ingest or "frequency" in ingest:
        rows.append(["frequency", _frequency_text(ingest.get("bar_seconds"), 0.0) + " bars"])
    if "symbols" in ingest:
        rows.append(["symbols", ", ".join(ingest.get("symbols") or []) or "none"])
        rows.append(["derived symbols", ", ".join(ingest.get("derived_symbols") or []) or "none"])
    daily = (ingest.get("bar_seconds") or 0) >= 86_400
    for label, key in (("first bar", "start"), ("last bar", "end")):
        if ingest.get(key):
            rows.append([label, _when(str(ingest[key]), daily=daily)])
    add("sessions", "sessions")
    gaps = list(ingest.get("gaps") or [])
    missing = sum(int(g.get("sessions_missing") or 0) for g in gaps)
    rows.append(
        [
            "missing sessions",
            f"{missing} in {len(gaps)} gap{'s' if len(gaps) != 1 else ''}" if gaps else "none",
        ]
    )
    for i, gap in enumerate(gaps[:_MAX_GAPS_LISTED]):
        rows.append([f"gap {i + 1}", gap_text(gap, calendar)])
    if len(gaps) > _MAX_GAPS_LISTED:
        rows.append(["more gaps", f"{len(gaps) - _MAX_GAPS_LISTED} more (listed in metrics.json)"])
    add("incomplete sessions rejected", "incomplete_sessions")
    add("sessions with missing bars", "sessions_with_missing_bars")
    if "gx_success" in ingest:
        gx = ingest["gx_success"]
        rows.append(
            ["data contract (GX)", "passed" if gx else "failed" if gx is not None else "not run"]
        )
    return rows


def _when(text: str | None, *, daily: bool) -> str:
    """An ISO time (naive = UTC) as a date (daily bars) or New York 'YYYY-MM-DD HH:MM'."""
    if not text:
        return "n/a"
    try:
        local = _ny_stamp(text)
    except ValueError:
        return str(text)
    return str(local)[:10] if daily else str(local)[:16].replace("T", " ")


def _is_daily(ingest: dict[str, Any] | None, ppy: float) -> bool:
    """Daily (or longer) bars: from the ingest's bar length, else from the bars per year."""
    seconds = (ingest or {}).get("bar_seconds")
    if isinstance(seconds, int | float) and seconds > 0:
        return seconds >= 86_400
    return ppy <= 252


def _derived_warning(ingest: dict[str, Any], underlying: str) -> str | None:
    derived = [s for s in (ingest.get("derived_symbols") or []) if s != underlying]
    if not derived:
        return None
    names = (
        " and ".join(derived)
        if len(derived) <= 2
        else ", ".join(derived[:-1]) + f" and {derived[-1]}"
    )
    text = (
        f"{names} prices are derived from {underlying} with the daily-reset identity, "
        "not traded prices."
    )
    if ingest.get("gaps"):
        text += " Across each data gap the derived series reset once over the missing sessions."
    return text


def _run_header(
    run_info: dict[str, Any] | None,
    ingest: dict[str, Any] | None,
    cfg: SentioConfig,
    folds: Sequence[dict[str, Any]],
    head: pl.DataFrame,
    ppy: float,
) -> dict[str, Any]:
    """What the header says: run, dates, data range and frequency, folds and seeds."""
    info, ing = run_info or {}, ingest or {}
    stamps = _naive_utc(head["timestamp"])
    return {
        "name": info.get("name"),
        "started": info.get("started"),
        "config_hash": info.get("config_hash") or cfg.hash(),
        "written": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
        "frequency": _frequency_text(ing.get("bar_seconds"), ppy),
        "daily": _is_daily(ing, ppy),
        "data_start": ing.get("start") or stamps.min().isoformat(),  # type: ignore[union-attr]
        "data_end": ing.get("end") or stamps.max().isoformat(),  # type: ignore[union-attr]
        "test_start": stamps.min().isoformat(),  # type: ignore[union-attr]
        "test_end": stamps.max().isoformat(),  # type: ignore[union-attr]
        "test_bars": int(head.height),
        "symbols": list(ing.get("symbols") or []),
        "derived_symbols": list(ing.get("derived_symbols") or []),
        "derived_warning": _derived_warning(ing, cfg.universe.underlying),
        "n_folds": len({int(f["fold"]) for f in folds}),
        "n_seeds": len({int(f["seed"]) for f in folds}),
        "n_runs": len(folds),
        "flat_at_close": _session_rule(cfg, _is_daily(ing, ppy)),
    }


# --------------------------------------------------------------------------------------
# the report


def _load(runs: list[dict[str, Any]]) -> tuple[list[tuple[dict[str, Any], pl.DataFrame]], float]:
    loaded: list[tuple[dict[str, Any], pl.DataFrame]] = []
    for run in runs:
        frame = load_bars(run)
        if frame is not None and frame.height:
            loaded.append((run, frame))
    if not loaded:
        raise ValueError("no run has out-of-sample bars (backtest.feather)")
    loaded.sort(key=lambda rf: (int(rf[0]["seed"]), _first_stamp(rf[1])))
    hint = (loaded[0][0].get("metrics") or {}).get("periods_per_year")
    return loaded, _ppy(stitch([f for _, f in loaded]), hint)


def _fold_entries(
    loaded: list[tuple[dict[str, Any], pl.DataFrame]],
    ledgers: list[np.ndarray | None],
    ppy: float,
    cfg: SentioConfig,
) -> list[dict[str, Any]]:
    folds = []
    for (run, frame), trades in zip(loaded, ledgers, strict=True):
        m = metrics_to_json(_metrics(frame, ppy, trades))
        folds.append(
            {
                "fold": int(run["fold"]),
                "seed": int(run["seed"]),
                "start": _naive_utc(frame["timestamp"]).min().isoformat(),  # type: ignore[union-attr]
                "end": _naive_utc(frame["timestamp"]).max().isoformat(),  # type: ignore[union-attr]
                "metrics": m,
                "ci": _intervals(frame["returns"].to_numpy(), ppy, cfg),
                "flags": activity_flags(m),
                "train": _clean(run.get("train", {})),
            }
        )
    return folds


def _pooled(trades: Sequence[np.ndarray | None]) -> np.ndarray | None:
    parts = [t for t in trades if t is not None]
    return np.concatenate(parts) if parts else None


def _seed_entries(
    per_seed: dict[int, pl.DataFrame],
    ledgers: dict[int, np.ndarray | None],
    ppy: float,
    cfg: SentioConfig,
) -> tuple[dict[str, Any], list[float], dict[str, Any]]:
    """Per seed stitched results, the per-bar Sharpe of each (the trials), the stability."""
    results: dict[str, Any] = {}
    trial_sharpes: list[float] = []
    for s, frame in per_seed.items():
        r = frame["returns"].to_numpy()
        mom = _moments(r)
        if mom is not None:
            trial_sharpes.append(mom["sharpe"])
        results[str(s)] = {
            "metrics": metrics_to_json(_metrics(frame, ppy, ledgers.get(s))),
            "ci": _intervals(r, ppy, cfg),
            "per_bar": mom,
        }
    sh = [v["metrics"]["sharpe"] for v in results.values() if v["metrics"]["sharpe"] is not None]
    tr = [
        v["metrics"]["total_return"]
        for v in results.values()
        if v["metrics"]["total_return"] is not None
    ]
    stability = {
        "n_seeds": len(per_seed),
        "sharpe_mean": float(np.mean(sh)) if sh else None,
        "sharpe_std": float(np.std(sh, ddof=1)) if len(sh) > 1 else None,
        "total_return_mean": float(np.mean(tr)) if tr else None,
        "total_return_std": float(np.std(tr, ddof=1)) if len(tr) > 1 else None,
    }
    return results, trial_sharpes, stability


def _ensemble(per_seed: dict[int, pl.DataFrame]) -> pl.DataFrame:
    """The headline series: one seed's stitched bars, or per bar the mean of the seeds'."""
    if len(per_seed) == 1:
        return next(iter(per_seed.values()))
    both = pl.concat(
        [
            f.select("timestamp", *[c for c in (*_ENSEMBLE_COLUMNS, "regime") if c in f.columns])
            for f in per_seed.values()
        ],
        how="vertical_relaxed",
    )
    aggs = [pl.col(c).mean() for c in _ENSEMBLE_COLUMNS if c in both.columns]
    if "regime" in both.columns:
        aggs.append(pl.col("regime").first())
    return both.group_by("timestamp").agg(aggs).sort("timestamp")


def _inference(hr: np.ndarray, trial_sharpes: list[float]) -> dict[str, Any]:
    """Per-bar moments, PSR and DSR of the headline returns given the trials run."""
    mom = _moments(hr)
    n_trials = max(len(trial_sharpes), 1)
    psr = dsr = None
    variance = float(np.var(trial_sharpes, ddof=1)) if len(trial_sharpes) > 1 else None
    if mom is not None:
        try:
            psr = probabilistic_sharpe_ratio(
                mom["sharpe"], int(mom["n_obs"]), skew=mom["skew"], kurtosis=mom["kurtosis"]
            )
            dsr = deflated_sharpe_ratio(
                mom["sharpe"],
                int(mom["n_obs"]),
                n_trials=n_trials,
                sharpe_variance=variance if n_trials > 1 else None,
                skew=mom["skew"],
                kurtosis=mom["kurtosis"],
            )
        except EvaluationError:
            psr = dsr = None
    return {
        "per_bar": mom,
        "psr": psr,
        "dsr": dsr,
        "n_trials": n_trials,
        "sharpe_variance": variance,
    }


def _references(
    loaded: list[tuple[dict[str, Any], pl.DataFrame]],
    ppy: float,
    cfg: SentioConfig,
    labels: dict[str, str],
) -> tuple[dict[str, pl.DataFrame], dict[str, Any]]:
    """The references, one per fold (they do not depend on the seed), stitched."""
    frames: dict[str, pl.DataFrame] = {}
    results: dict[str, Any] = {}
    for name in REFERENCES:
        by_fold: dict[int, pl.DataFrame] = {}
        for run, _ in loaded:
            fold = int(run["fold"])
            if fold not in by_fold:
                f = load_bars(run, f"reference_{name}")
                if f is not None and f.height:
                    by_fold[fold] = f
        if not by_fold:
            continue
        frame = stitch(list(by_fold.values()))
        frames[name] = frame
        m = metrics_to_json(_metrics(frame, ppy))
        results[name] = {
            "label": labels.get(name, name),
            "metrics": m,
            "ci": _intervals(frame["returns"].to_numpy(), ppy, cfg),
        }
    return frames, results


def build_report(
    runs: list[dict[str, Any]],
    out_dir: str | Path,
    *,
    cfg: SentioConfig,
    ingest_summary: dict[str, Any] | None = None,
    profile: dict[str, Any] | None = None,
    run_info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``report.md``, ``report.html`` and ``metrics.json`` of the train stage's runs.

    Args:
        runs: summaries of :func:`sentio.stages.train_stage` (``fold``, ``seed``,
            ``output`` = the run's ``backtest.feather``, the ``reference_<name>.feather``
            files and the ledger ``trades.feather`` beside it; ``metrics.periods_per_year``
            used when present).
        out_dir: the folder to write into (created).
        cfg: the configuration (``report`` bootstrap settings, ``registry.min_dsr``,
            ``universe`` and ``env.flat_at_close`` for the references' names,
            ``regimes.n_states`` for the regimes' names).
        ingest_summary: the ingest stage's summary: the header's data range, frequency
            and derived-price warning, and the data-quality table (``gaps`` listed).
        profile: optional performance profile (time per stage, steps per second, memory).
        run_info: ``name`` (the flow run), ``started`` (ISO time) and ``config_hash`` for
            the header (the configuration's own hash when absent).

    Returns:
        ``paths`` (md, html, json, plots), ``edge`` (bool), ``verdict`` (the sentence),
        ``comparison`` (the agent beside the oracle and the best causal reference),
        ``flags`` (near-flat / over-trading, headline and per fold), ``sharpe``,
        ``sharpe_ci``, ``total_return``, ``psr``, ``dsr``, ``n_trials``, ``n_runs`` and
        ``n_seeds``.

    Raises:
        ValueError: no runs, or runs without test bars.
    """
    if not runs:
        raise ValueError("build_report needs at least one run")
    out = Path(out_dir)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    loaded, ppy = _load(runs)
    daily = _is_daily(ingest_summary, ppy)
    labels = reference_labels(cfg, daily=daily)
    ledgers = [trade_returns(run, frame) for run, frame in loaded]
    folds = _fold_entries(loaded, ledgers, ppy, cfg)
    seeds = sorted({int(run["seed"]) for run, _ in loaded})
    per_seed = {s: stitch([f for run, f in loaded if int(run["seed"]) == s]) for s in seeds}
    seed_ledgers = {
        s: _pooled(
            [t for (run, _), t in zip(loaded, ledgers, strict=True) if int(run["seed"]) == s]
        )
        for s in seeds
    }
    seed_results, trial_sharpes, stability = _seed_entries(per_seed, seed_ledgers, ppy, cfg)
    head = _ensemble(per_seed)
    head_metrics = metrics_to_json(_metrics(head, ppy, _pooled(ledgers)))
    head_ci = _intervals(head["returns"].to_numpy(), ppy, cfg)
    inference = _inference(head["returns"].to_numpy(), trial_sharpes)
    edge, sentence = verdict(
        head_ci.get("sharpe"),
        inference["dsr"],
        level=cfg.report.ci_level,
        min_dsr=cfg.registry.min_dsr,
    )
    ref_frames, ref_results = _references(loaded, ppy, cfg, labels)
    n_regimes = _n_regimes(cfg, head)
    gaps = (ingest_summary or {}).get("gaps") or []
    plots = _plots(head, ref_frames, folds, labels, n_regimes, gaps)
    plot_paths: dict[str, str] = {}
    for name, png in plots.items():
        path = out / "plots" / f"{name}.png"
        path.write_bytes(png)
        plot_paths[name] = str(path)

    compared = comparison(head_metrics.get("sharpe"), ref_results, labels)
    aside = stood_aside(folds)
    if aside:
        compared["sentence"] = (compared["sentence"] + " " + aside).strip()
    headline = {
        "series": "seed ensemble" if len(seeds) > 1 else f"seed {seeds[0]}",
        "metrics": head_metrics,
        "ci": head_ci,
        **inference,
        "min_dsr": cfg.registry.min_dsr,
        "ci_level": cfg.report.ci_level,
        "edge": edge,
        "verdict": sentence,
        "comparison": compared,
        "flags": activity_flags(head_metrics),
    }
    doc: dict[str, Any] = _clean(
        {
            "run": _run_header(run_info, ingest_summary, cfg, folds, head, ppy),
            "registry": None,
            "headline": headline,
            "seeds": seed_results,
            "stability": stability,
            "folds": folds,
            "references": ref_results,
            "labels": labels,
            "reference_descriptions": _reference_descriptions(cfg, daily),
            "regimes": _regime_table(head, ppy, n_regimes),
            "n_regimes": n_regimes,
            "bootstrap": {
                "resamples": cfg.report.bootstrap_resamples,
                "ci_level": cfg.report.ci_level,
                "seed": cfg.report.seed,
                "periods_per_year": ppy,
            },
            "data_quality": data_quality_rows(ingest_summary, cfg.universe.calendar)
            if ingest_summary
            else None,
            "ingest": ingest_summary,
            "profile": profile,
        }
    )
    paths = _write_pages(out, doc, plots)
    summary: dict[str, Any] = {
        "paths": {**paths, "plots": plot_paths},
        "edge": edge,
        "verdict": sentence,
        "comparison": compared["sentence"],
        "flags": {
            "headline": headline["flags"],
            "folds": [
                {"fold": f["fold"], "seed": f["seed"], "flags": f["flags"]}
                for f in folds
                if f["flags"]
            ],
        },
        "sharpe": head_metrics["sharpe"],
        "sharpe_ci": [
            (head_ci.get("sharpe") or {}).get("lower"),
            (head_ci.get("sharpe") or {}).get("upper"),
        ],
        "total_return": head_metrics["total_return"],
        "psr": inference["psr"],
        "dsr": inference["dsr"],
        "n_trials": inference["n_trials"],
        "n_runs": len(loaded),
        "n_seeds": len(seeds),
    }
    cleaned: dict[str, Any] = _clean(summary)
    return cleaned


def _write_pages(out: Path, doc: dict[str, Any], plots: dict[str, bytes]) -> dict[str, str]:
    """Write ``metrics.json``, ``report.md`` and ``report.html`` from the document."""
    json_path = write_text_atomic(
        out / "metrics.json", json.dumps(doc, indent=2, allow_nan=False) + "\n"
    )
    tables = _tables(doc)
    md_path = write_text_atomic(out / "report.md", _markdown(doc, tables))
    html_path = write_text_atomic(out / "report.html", _html(doc, tables, plots))
    return {"markdown": str(md_path), "html": str(html_path), "metrics": str(json_path)}


def add_registry_decision(report_dir: str | Path, decision: dict[str, Any]) -> None:
    """Put the registry stage's decision into a written report (header and ``metrics.json``).

    The registry runs after the report: until this is called the header says
    ``registry: pending``. ``decision`` is the registry stage's summary (``candidate``,
    ``promoted``, ``champion_before``, ``champion_after``, ``reasons``); the pages are
    rendered again from the saved ``metrics.json`` and plots (nothing is recomputed).

    Raises:
        FileNotFoundError: ``report_dir`` holds no ``metrics.json``.
    """
    out = Path(report_dir)
    doc = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    keys = ("candidate", "promoted", "champion_before", "champion_after", "reasons")
    doc["registry"] = _clean({k: decision.get(k) for k in keys})
    plots = {
        name: (out / "plots" / f"{name}.png").read_bytes()
        for name in _PLOT_TITLES
        if (out / "plots" / f"{name}.png").is_file()
    }
    _write_pages(out, doc, plots)


# --------------------------------------------------------------------------------------
# rendering (from the document alone)


def registry_text(registry: dict[str, Any] | None) -> str:
    """The header's model line from the registry decision (``None``: pending)."""
    if registry is None:
        return "registry: pending (the registry stage runs after the report)"
    cand = registry.get("candidate")
    if cand is None:
        return "registry: no candidate (nothing trained with an out-of-sample window)"
    if registry.get("promoted"):
        return (
            f"version {cand}; registry: promoted to champion "
            f"(was {registry.get('champion_before') or 'none'})"
        )
    reasons = "; ".join(str(r) for r in registry.get("reasons") or [])
    return (
        f"version {cand}; registry: not promoted"
        + (f" ({reasons})" if reasons else "")
        + f"; the champion stays {registry.get('champion_after') or 'none'}"
    )


def _utc_text(text: str | None) -> str:
    if not text:
        return "n/a"
    try:
        t = dt.datetime.fromisoformat(text)
    except ValueError:
        return str(text)
    if t.tzinfo is not None:
        t = t.astimezone(dt.UTC)
    return t.strftime("%Y-%m-%d %H:%M UTC")


def header_lines(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, text) lines of the report's header."""
    run = doc.get("run") or {}
    daily = bool(run.get("daily"))
    zone = "" if daily else " (New York time)"
    when = (
        f"started {_utc_text(run.get('started'))}"
        if run.get("started")
        else f"report written {_utc_text(run.get('written'))}"
    )
    symbols = ", ".join(run.get("symbols") or [])
    lines = [
        (
            "Run",
            f"{run.get('name') or 'unnamed run'}, {when}; configuration "
            f"{str(run.get('config_hash') or 'n/a')[:12]}",
        ),
        (
            "Data",
            f"{run.get('frequency')} bars, {_when(run.get('data_start'), daily=daily)} .. "
            f"{_when(run.get('data_end'), daily=daily)}{zone}"
            + (f"; {symbols}" if symbols else ""),
        ),
        (
            "Out of sample",
            f"{_when(run.get('test_start'), daily=daily)} .. "
            f"{_when(run.get('test_end'), daily=daily)}: {run.get('n_folds')} folds x "
            f"{run.get('n_seeds')} seeds ({run.get('n_runs')} trainings), "
            f"{_count(run.get('test_bars'))} test bars",
        ),
        ("Model", registry_text(doc.get("registry"))),
    ]
    if run.get("derived_warning"):
        lines.append(("Warning", str(run["derived_warning"])))
    return lines


def flag_lines(doc: dict[str, Any]) -> list[str]:
    """The flags of the headline and of each fold, in plain words."""
    lines = [f"Agent, all folds: {f}" for f in doc["headline"].get("flags") or []]
    for fold in doc["folds"]:
        lines += [
            f"Fold {fold['fold']} (seed {fold['seed']}): {f}" for f in fold.get("flags") or []
        ]
    return lines


def _intervals_text(doc: dict[str, Any]) -> str:
    b = doc["bootstrap"]
    return (
        f"Intervals: stationary bootstrap, {b['resamples']} resamples, level {b['ci_level']:g}, "
        f"seed {b['seed']}; annualisation {b['periods_per_year']:g} bars per year."
    )


def _results_table(doc: dict[str, Any]) -> _Table:
    h = doc["headline"]
    labels = doc.get("labels") or REFERENCE_LABELS
    descriptions = doc.get("reference_descriptions") or {}
    refs = doc["references"]
    return _Table(
        f"Out-of-sample results: the agent ({h['series']}) and the references",
        _METRIC_HEADER,
        [_metric_row("Agent", h["metrics"], h["ci"])]
        + [
            _metric_row(v.get("label") or labels.get(n, n), v["metrics"], v["ci"])
            for n, v in refs.items()
        ],
        note=_METRIC_NOTE,
        items=[f"{labels.get(n, n)}: {descriptions[n]}." for n in refs if n in descriptions],
    )


def _fold_table(doc: dict[str, Any]) -> _Table:
    return _Table(
        "Per fold",
        ["fold", "seed", "test from", "test to", *_METRIC_HEADER[1:], "flags"],
        [
            [str(f["fold"]), str(f["seed"]), f["start"][:10], f["end"][:10]]
            + _metric_row("", f["metrics"], f["ci"])[1:]
            + [_flag_words(f.get("flags") or []) or "none"]
            for f in doc["folds"]
        ],
    )


def _regime_rows(doc: dict[str, Any]) -> list[list[str]]:
    return [
        [
            str(r.get("name") or r["regime"]),
            str(r["n_bars"]),
            _pct(r["share"], 1),
            _pct(r["mean_return"], 4, sign=True),
            _fmt(r["sharpe"], 2),
            _pct(r["total_return"], sign=True),
            _fmt(r["mean_abs_exposure"]),
            _pct(r["hit_rate"], 1),
        ]
        for r in doc["regimes"]
    ]


def _inference_table(h: dict[str, Any]) -> _Table:
    pb = h.get("per_bar") or {}
    return _Table(
        "Sharpe-ratio inference (per-bar Sharpe)",
        ["per-bar Sharpe", "bars", "skew", "raw kurtosis", "PSR(0)", "DSR", "trials", "var(SR)"],
        [
            [
                _fmt(pb.get("sharpe"), 5),
                _fmt(pb.get("n_obs"), 0),
                _fmt(pb.get("skew")),
                _fmt(pb.get("kurtosis")),
                _fmt(h["psr"]),
                _fmt(h["dsr"]),
                str(h["n_trials"]),
                _fmt(h["sharpe_variance"], 8),
            ]
        ],
    )


def _tables(doc: dict[str, Any]) -> list[_Table]:
    st = doc["stability"]
    tables = [
        _results_table(doc),
        _fold_table(doc),
        _Table(
            "Per regime (the regime the agent saw at each decision, named by volatility rank)",
            [
                "regime",
                "bars",
                "share",
                "mean return per bar",
                "Sharpe",
                "total return",
                "mean abs. exposure",
                "hit rate",
            ],
            _regime_rows(doc),
        ),
        _inference_table(doc["headline"]),
        _Table(
            "Per seed, stitched across folds",
            _METRIC_HEADER,
            [_metric_row(f"seed {s}", v["metrics"], v["ci"]) for s, v in doc["seeds"].items()],
        ),
        _Table(
            "Convergence stability across seeds",
            ["seeds", "Sharpe mean", "Sharpe std", "total return mean", "total return std"],
            [
                [
                    str(st["n_seeds"]),
                    _fmt(st["sharpe_mean"], 2),
                    _fmt(st["sharpe_std"], 2),
                    _pct(st["total_return_mean"], sign=True),
                    _pct(st["total_return_std"]),
                ]
            ],
        ),
    ]
    selection = validation_rows(doc["folds"])
    if selection:
        tables.append(
            _Table(
                "Model selection on held-out training episodes (train.validation_fraction)",
                [
                    "fold",
                    "seed",
                    "held-out episodes",
                    "saved model's steps",
                    "held-out Sharpe",
                    "held-out mean abs. exposure",
                    "decision",
                ],
                selection,
            )
        )
    if doc.get("data_quality"):
        tables.append(
            _Table(
                "Ingest / data quality",
                ["item", "value"],
                doc["data_quality"],
                note="Input files, hashes and paths: metrics.json, key ingest.",
            )
        )
    if doc.get("profile"):
        tables.append(_kv_table("Performance profile", doc["profile"]))
    return tables


_PLOT_TITLES = {
    "equity": "Equity vs references (regimes shaded)",
    "drawdown": "Drawdown",
    "exposure": "Exposure: mean per session and distribution",
    "fold_sharpe": "Per-fold Sharpe intervals",
    "learning_curve": "Learning curve (training episodes)",
    "validation_curve": "Validation (held-out training episodes)",
}
TITLE = "Sentio out-of-sample report"


def _markdown(doc: dict[str, Any], tables: list[_Table]) -> str:
    h = doc["headline"]
    parts = [f"# {TITLE}", ""]
    parts += [f"- **{label}:** {text}" for label, text in header_lines(doc) if label != "Warning"]
    parts.append("")
    warning = (doc.get("run") or {}).get("derived_warning")
    if warning:
        parts += [f"> **Warning:** {warning}", ""]
    parts += [f"**Verdict:** {h['verdict']}", ""]
    if h["comparison"]["sentence"]:
        parts += [h["comparison"]["sentence"], ""]
    flags = flag_lines(doc)
    parts += (
        ["**Flags:**", "", *[f"- {f}" for f in flags], ""]
        if flags
        else ["**Flags:** none (no near-flat or over-trading series).", ""]
    )
    parts += [_intervals_text(doc), ""]
    parts += [t.markdown() for t in tables]
    parts.append("## Plots\n")
    parts += [f"![{title}](plots/{name}.png)\n" for name, title in _PLOT_TITLES.items()]
    return "\n".join(parts)


_CSS = (
    "body{font-family:sans-serif;margin:2em;max-width:1400px;color:#222}"
    "table{border-collapse:collapse;margin-bottom:.6em;font-size:12px}"
    "th,td{border:1px solid #ccc;padding:3px 7px;text-align:right;white-space:nowrap}"
    "td:first-child,th:first-child{text-align:left;white-space:normal}"
    "th{background:#f0f0f0}.verdict{font-size:1.1em;padding:.6em;border:2px solid #888}"
    ".header{list-style:none;padding:0;line-height:1.5}"
    ".warning{background:#fff3cd;border:1px solid #e0b000;padding:.5em}"
    ".flags{color:#8a3b00}.note{font-size:12px;color:#555;max-width:1100px;margin:.3em 0 1.2em}"
    "img{max-width:100%}"
)


def _html(doc: dict[str, Any], tables: list[_Table], plots: dict[str, bytes]) -> str:
    h = doc["headline"]
    esc = html.escape
    lines = [(label, text) for label, text in header_lines(doc) if label != "Warning"]
    body = [
        f"<h1>{esc(TITLE)}</h1>",
        '<ul class="header">'
        + "".join(f"<li><b>{esc(label)}:</b> {esc(text)}</li>" for label, text in lines)
        + "</ul>",
    ]
    warning = (doc.get("run") or {}).get("derived_warning")
    if warning:
        body.append(f'<p class="warning"><b>Warning:</b> {esc(warning)}</p>')
    body.append(f'<p class="verdict"><b>Verdict:</b> {esc(h["verdict"])}</p>')
    if h["comparison"]["sentence"]:
        body.append(f"<p>{esc(h['comparison']['sentence'])}</p>")
    flags = flag_lines(doc)
    body.append(
        '<div class="flags"><b>Flags:</b><ul>'
        + "".join(f"<li>{esc(f)}</li>" for f in flags)
        + "</ul></div>"
        if flags
        else '<p class="flags"><b>Flags:</b> none (no near-flat or over-trading series).</p>'
    )
    body.append(f"<p>{esc(_intervals_text(doc))}</p>")
    body += [t.html() for t in tables]
    body.append("<h2>Plots</h2>")
    for name, title in _PLOT_TITLES.items():
        if name in plots:
            data = base64.b64encode(plots[name]).decode("ascii")
            body.append(
                f'<h3>{esc(title)}</h3><img alt="{esc(title)}" src="data:image/png;base64,{data}">'
            )
    return (
        '<!DOCTYPE html><html><head><meta charset="utf-8">'
        f"<title>Sentio report</title><style>{_CSS}</style></head><body>"
        + "\n".join(body)
        + "</body></html>\n"
    )
