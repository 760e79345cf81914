"""The report's numbers and judgements on them.

Metrics of a per-bar series with stationary-bootstrap intervals, the near-flat and
over-trading flags (:func:`activity_flags`), the verdict (:func:`verdict`), the agent
beside the references (:func:`comparison`), per-regime figures, the sentence on
trainings that stood aside (:func:`stood_aside`) and the headline figures of one seed's
runs (:func:`stitched_figures`).

Library code only: no orchestration imports.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl

from sentio.config import SentioConfig
from sentio.evaluation import (
    EvaluationError,
    bootstrap_metrics,
    compute_metrics,
    sharpe_moments,
)
from sentio.report.labels import CAUSAL_REFERENCES, REFERENCE_LABELS, REFERENCES, regime_name
from sentio.report.series import _n_sessions, _ppy, load_bars, stitch

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


def warm_started(folds: Sequence[dict[str, Any]], fraction: float) -> str:
    """A sentence on the trainings that started from the champion's model ('' when none);
    ``fraction``: ``train.warm_start_fraction``, the share of the steps they trained."""
    warm = [f["warm_start"] for f in folds if (f.get("warm_start") or {}).get("applies")]
    if not warm:
        return ""
    versions = ", ".join(sorted({str(w["version"]) for w in warm}))
    return (
        f"{len(warm)} of {len(folds)} trainings started from the champion ({versions}) and "
        f"trained {fraction:.0%} of the steps (train.warm_start; Per fold table)."
    )


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
