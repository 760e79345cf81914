"""The report of a nightly run: out-of-sample results of the trained agents, with honest inference.

:func:`build_report` reads the outputs of the train stage (one summary dict per fold and
seed, see :func:`sentio.stages.train_stage`) and writes into ``out_dir``:

* ``metrics.json`` -- every number of the report (strict JSON, NaN as ``null``);
* ``report.md`` -- the tables, with the plots as PNG files in ``out_dir/plots/``;
* ``report.html`` -- a self-contained page (plots embedded as base64 PNG data URIs, inline
  CSS only, no external resource).

Contents: per-fold metrics of each (fold, seed) run; the test bars of each seed stitched
across folds in time order, with stationary-bootstrap confidence intervals; the
dispersion across seeds (convergence stability); the headline series (the seed ensemble:
per bar, the mean return of the seeds over the bars they share) with PSR and DSR on the
per-bar Sharpe ratio (skewness, raw kurtosis; the number of trials is the number of
stitched strategies actually run, one configuration x the seeds, and their Sharpe
variance); the reference policies side by side; a per-regime breakdown; plots; a verdict
that claims an edge only when the bootstrap interval of the stitched Sharpe ratio lies
above zero AND the DSR reaches ``cfg.registry.min_dsr``.

Library code only: no orchestration imports.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from sentio.config import SentioConfig
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
    "CI_STATISTICS",
    "CAUSAL_REFERENCES",
    "REFERENCES",
    "REFERENCE_LABELS",
    "build_report",
    "load_bars",
    "stitch",
    "stitched_figures",
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
REFERENCE_LABELS: dict[str, str] = {
    "oracle": "oracle (generator's truth, costs and masks on)",
    "regime_rule": "regime rule (filtered HMM: long calm, short volatile)",
    "trend": "trend rule (60-bar momentum, hysteresis, vol target)",
    "fast_trend": "fast trend (sign of the move over the window, up to 15 bars; every bar)",
    "long_etf": "+3x ETF held intraday (agent's rules)",
    "underlying": "underlying bought and held (overnight too, no costs)",
    "flat": "flat (no position)",
}
"""Plain names of the references for people."""
CAUSAL_REFERENCES: tuple[str, ...] = (
    "regime_rule",
    "trend",
    "fast_trend",
    "long_etf",
    "underlying",
)
"""References a trader could have run at the time (the oracle reads the generator's truth)."""
CI_STATISTICS: tuple[str, ...] = ("sharpe", "total_return", "max_drawdown", "sortino")
# columns averaged across seeds for the ensemble series
_ENSEMBLE_COLUMNS = ("returns", "position", "exposure", "costs", "entries")


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


def _metrics(frame: pl.DataFrame, ppy: float) -> dict[str, float]:
    return compute_metrics(
        frame["returns"].to_numpy(),
        positions=frame["position"].to_numpy() if "position" in frame.columns else None,
        costs=frame["costs"].to_numpy() if "costs" in frame.columns else None,
        timestamps=frame["timestamp"],
        periods_per_year=ppy,
        entries=frame["entries"].to_numpy() if "entries" in frame.columns else None,
    )


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


def comparison(agent_sharpe: float | None, refs: dict[str, Any]) -> dict[str, Any]:
    """The agent beside what was attainable and what a trader could have run.

    ``oracle_sharpe`` and ``captured`` (the agent's Sharpe over the oracle's, when the
    oracle exists and made a positive Sharpe), ``best_causal`` (the causal reference
    with the highest Sharpe, :data:`CAUSAL_REFERENCES`) and its Sharpe, and
    ``sentence``, the same in words.
    """

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
            f"Best causal reference: {REFERENCE_LABELS.get(best, best)}, Sharpe "
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


def _regime_table(frame: pl.DataFrame, ppy: float) -> list[dict[str, Any]]:
    """Per regime at the decision row: bars, share, mean return, Sharpe, total return, exposure."""
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


# --------------------------------------------------------------------------------------
# plots


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def _shade_regimes(ax: Any, regime: np.ndarray) -> None:
    import matplotlib.pyplot as plt

    values = [int(v) for v in np.unique(regime) if v >= 0]
    cmap = plt.get_cmap("Pastel1")
    x = np.arange(regime.size)
    for i, k in enumerate(values):
        ax.fill_between(
            x,
            0,
            1,
            where=regime == k,
            transform=ax.get_xaxis_transform(),
            color=cmap(i % 9),
            alpha=0.5,
            step="post",
            linewidth=0,
            label=f"regime {k}",
        )


def _plots(
    head: pl.DataFrame,
    refs: dict[str, pl.DataFrame],
    folds: list[dict[str, Any]],
) -> dict[str, bytes]:
    """The PNG plots: equity vs references, drawdown, exposure, per-fold Sharpe intervals."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    out: dict[str, bytes] = {}
    r = head["returns"].to_numpy()
    eq = np.cumprod(1.0 + r)
    x = np.arange(r.size)

    fig, ax = plt.subplots(figsize=(10, 4))
    if "regime" in head.columns:
        _shade_regimes(ax, head["regime"].to_numpy())
    ax.plot(x, eq, label="agent", color="black", linewidth=1.4)
    ts = head.select("timestamp")
    for name, ref in refs.items():
        joined = ts.join(ref.select("timestamp", "returns"), on="timestamp", how="left")
        rr = joined["returns"].fill_null(0.0).to_numpy()
        ax.plot(x, np.cumprod(1.0 + rr), label=REFERENCE_LABELS.get(name, name), linewidth=0.9)
    ax.set_yscale("log")
    ax.set_title("Out-of-sample equity (stitched test bars) vs references, log scale")
    ax.set_xlabel("test bar")
    ax.set_ylabel("equity (start = 1)")
    ax.legend(loc="best", fontsize=7)
    out["equity"] = _png(fig)

    fig, ax = plt.subplots(figsize=(10, 2.8))
    dd = 1.0 - eq / np.maximum.accumulate(np.maximum(eq, 1.0))
    ax.fill_between(x, -dd, 0, color="firebrick", alpha=0.6, step="post")
    ax.set_title("Drawdown")
    ax.set_xlabel("test bar")
    ax.set_ylabel("drawdown")
    out["drawdown"] = _png(fig)

    fig, ax = plt.subplots(figsize=(10, 2.8))
    col = "position" if "position" in head.columns else "exposure"
    ax.step(x, head[col].to_numpy(), where="post", color="navy", linewidth=0.8)
    ax.axhline(0.0, color="grey", linewidth=0.5)
    ax.set_title("Exposure held over each bar")
    ax.set_xlabel("test bar")
    ax.set_ylabel("exposure")
    out["exposure"] = _png(fig)

    fig, ax = plt.subplots(figsize=(8, 3.2))
    labels, est, lo, hi = [], [], [], []
    for row in folds:
        ci = row["ci"].get("sharpe") or {}
        s = row["metrics"].get("sharpe")
        labels.append(f"f{row['fold']}/s{row['seed']}")
        est.append(np.nan if s is None else s)
        lo.append(np.nan if ci.get("lower") is None else ci["lower"])
        hi.append(np.nan if ci.get("upper") is None else ci["upper"])
    pos = np.arange(len(labels))
    e = np.asarray(est, dtype=float)
    err = np.vstack([e - np.asarray(lo, dtype=float), np.asarray(hi, dtype=float) - e])
    ax.errorbar(pos, e, yerr=np.nan_to_num(err), fmt="o", capsize=3)
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xticks(pos, labels, rotation=45, fontsize=7)
    ax.set_title("Per-fold annualised Sharpe ratio with bootstrap intervals")
    out["fold_sharpe"] = _png(fig)

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
    out["learning_curve"] = _png(fig)

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
    out["validation_curve"] = _png(fig)
    return out


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


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "n/a"
        return f"{value:.{digits}f}"
    return str(value)


def _ci_txt(ci: dict[str, Any] | None) -> str:
    if not ci or ci.get("lower") is None or ci.get("upper") is None:
        return "n/a"
    return f"[{ci['lower']:.3f}, {ci['upper']:.3f}]"


@dataclass
class _Table:
    title: str
    header: list[str]
    rows: list[list[str]]

    def markdown(self) -> str:
        lines = [f"### {self.title}", "", "| " + " | ".join(self.header) + " |"]
        lines.append("|" + "|".join("---" for _ in self.header) + "|")
        lines += ["| " + " | ".join(r) + " |" for r in self.rows]
        return "\n".join(lines) + "\n"

    def html(self) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.header)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in self.rows
        )
        return (
            f"<h3>{html.escape(self.title)}</h3>"
            f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        )


def _metric_row(label: str, m: dict[str, Any], ci: dict[str, Any]) -> list[str]:
    return [
        label,
        _fmt(m.get("n_bars"), 0),
        _fmt(m.get("sharpe")),
        _ci_txt(ci.get("sharpe")),
        _fmt(m.get("total_return"), 4),
        _ci_txt(ci.get("total_return")),
        _fmt(m.get("max_drawdown"), 4),
        _fmt(m.get("mean_abs_exposure")),
        _fmt(m.get("n_trades"), 0),
    ]


_METRIC_HEADER = [
    "series",
    "bars",
    "Sharpe",
    "Sharpe CI",
    "total return",
    "total return CI",
    "max DD",
    "mean |exposure|",
    "trades",
]


def _kv_table(title: str, data: dict[str, Any]) -> _Table:
    rows = []
    for k, v in data.items():
        text = json.dumps(_clean(v), default=str) if isinstance(v, dict | list) else _fmt(v)
        rows.append([str(k), text])
    return _Table(title, ["key", "value"], rows)


# --------------------------------------------------------------------------------------
# the report


def build_report(
    runs: list[dict[str, Any]],
    out_dir: str | Path,
    *,
    cfg: SentioConfig,
    ingest_summary: dict[str, Any] | None = None,
    profile: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``report.md``, ``report.html`` and ``metrics.json`` of the train stage's runs.

    Args:
        runs: summaries of :func:`sentio.stages.train_stage` (``fold``, ``seed``,
            ``output`` = the run's ``backtest.feather``, the ``reference_<name>.feather``
            files beside it; ``metrics.periods_per_year`` used when present).
        out_dir: the folder to write into (created).
        cfg: the configuration (``report`` bootstrap settings, ``registry.min_dsr``).
        ingest_summary: optional ingest / data-quality summary shown as a section.
        profile: optional performance profile (time per stage, steps per second, memory).

    Returns:
        ``paths`` (md, html, json, plots), ``edge`` (bool), ``verdict`` (the sentence),
        ``comparison`` (the agent beside the oracle and the best causal reference),
        ``sharpe``, ``sharpe_ci``, ``total_return``, ``psr``, ``dsr``, ``n_trials``,
        ``n_runs`` and ``n_seeds``.

    Raises:
        ValueError: no runs, or runs without test bars.
    """
    if not runs:
        raise ValueError("build_report needs at least one run")
    out = Path(out_dir)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    level = cfg.report.ci_level

    loaded: list[tuple[dict[str, Any], pl.DataFrame]] = []
    for run in runs:
        frame = load_bars(run)
        if frame is None or frame.height == 0:
            continue
        loaded.append((run, frame))
    if not loaded:
        raise ValueError("no run has out-of-sample bars (backtest.feather)")
    loaded.sort(key=lambda rf: (int(rf[0]["seed"]), _first_stamp(rf[1])))
    hint = (loaded[0][0].get("metrics") or {}).get("periods_per_year")
    ppy = _ppy(stitch([f for _, f in loaded]), hint)

    # per fold
    folds: list[dict[str, Any]] = []
    for run, frame in loaded:
        m = _metrics(frame, ppy)
        folds.append(
            {
                "fold": int(run["fold"]),
                "seed": int(run["seed"]),
                "start": str(frame["timestamp"].min()),
                "end": str(frame["timestamp"].max()),
                "metrics": metrics_to_json(m),
                "ci": _intervals(frame["returns"].to_numpy(), ppy, cfg),
                "train": _clean(run.get("train", {})),
            }
        )

    # stitched per seed
    seeds = sorted({int(run["seed"]) for run, _ in loaded})
    per_seed: dict[int, pl.DataFrame] = {
        s: stitch([f for run, f in loaded if int(run["seed"]) == s]) for s in seeds
    }
    seed_results: dict[str, Any] = {}
    trial_sharpes: list[float] = []
    for s, frame in per_seed.items():
        r = frame["returns"].to_numpy()
        mom = _moments(r)
        if mom is not None:
            trial_sharpes.append(mom["sharpe"])
        seed_results[str(s)] = {
            "metrics": metrics_to_json(_metrics(frame, ppy)),
            "ci": _intervals(r, ppy, cfg),
            "per_bar": mom,
        }
    sh = [
        v["metrics"]["sharpe"] for v in seed_results.values() if v["metrics"]["sharpe"] is not None
    ]
    tr = [
        v["metrics"]["total_return"]
        for v in seed_results.values()
        if v["metrics"]["total_return"] is not None
    ]
    stability = {
        "n_seeds": len(seeds),
        "sharpe_mean": float(np.mean(sh)) if sh else None,
        "sharpe_std": float(np.std(sh, ddof=1)) if len(sh) > 1 else None,
        "total_return_mean": float(np.mean(tr)) if tr else None,
        "total_return_std": float(np.std(tr, ddof=1)) if len(tr) > 1 else None,
    }

    # headline: the seed ensemble (one seed: that seed's stitched bars)
    if len(seeds) == 1:
        head = per_seed[seeds[0]]
    else:
        both = pl.concat(
            [
                f.select(
                    "timestamp", *[c for c in (*_ENSEMBLE_COLUMNS, "regime") if c in f.columns]
                )
                for f in per_seed.values()
            ],
            how="vertical_relaxed",
        )
        aggs = [pl.col(c).mean() for c in _ENSEMBLE_COLUMNS if c in both.columns]
        if "regime" in both.columns:
            aggs.append(pl.col("regime").first())
        head = both.group_by("timestamp").agg(aggs).sort("timestamp")
    hr = head["returns"].to_numpy()
    head_metrics = _metrics(head, ppy)
    head_ci = _intervals(hr, ppy, cfg)
    mom = _moments(hr)
    n_trials = max(len(trial_sharpes), 1)
    psr = dsr = None
    sharpe_variance = float(np.var(trial_sharpes, ddof=1)) if len(trial_sharpes) > 1 else None
    if mom is not None:
        try:
            psr = probabilistic_sharpe_ratio(
                mom["sharpe"], int(mom["n_obs"]), skew=mom["skew"], kurtosis=mom["kurtosis"]
            )
            dsr = deflated_sharpe_ratio(
                mom["sharpe"],
                int(mom["n_obs"]),
                n_trials=n_trials,
                sharpe_variance=sharpe_variance if n_trials > 1 else None,
                skew=mom["skew"],
                kurtosis=mom["kurtosis"],
            )
        except EvaluationError:
            psr = dsr = None
    edge, sentence = verdict(head_ci.get("sharpe"), dsr, level=level, min_dsr=cfg.registry.min_dsr)

    # references: one per fold (they do not depend on the seed), stitched
    refs: dict[str, pl.DataFrame] = {}
    ref_results: dict[str, Any] = {}
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
        refs[name] = frame
        ref_results[name] = {
            "metrics": metrics_to_json(_metrics(frame, ppy)),
            "ci": _intervals(frame["returns"].to_numpy(), ppy, cfg),
        }

    regimes = _regime_table(head, ppy)
    plots = _plots(head, refs, folds)
    plot_paths: dict[str, str] = {}
    for name, png in plots.items():
        path = out / "plots" / f"{name}.png"
        path.write_bytes(png)
        plot_paths[name] = str(path)

    compared = comparison(head_metrics.get("sharpe"), ref_results)
    aside = stood_aside(folds)
    if aside:
        compared["sentence"] += " " + aside
    headline = {
        "series": "seed ensemble" if len(seeds) > 1 else f"seed {seeds[0]}",
        "metrics": metrics_to_json(head_metrics),
        "ci": head_ci,
        "per_bar": mom,
        "psr": psr,
        "dsr": dsr,
        "n_trials": n_trials,
        "sharpe_variance": sharpe_variance,
        "min_dsr": cfg.registry.min_dsr,
        "ci_level": level,
        "edge": edge,
        "verdict": sentence,
        "comparison": compared,
    }
    doc = _clean(
        {
            "headline": headline,
            "seeds": seed_results,
            "stability": stability,
            "folds": folds,
            "references": ref_results,
            "regimes": regimes,
            "bootstrap": {
                "resamples": cfg.report.bootstrap_resamples,
                "ci_level": level,
                "seed": cfg.report.seed,
                "periods_per_year": ppy,
            },
            "ingest": ingest_summary,
            "profile": profile,
        }
    )
    json_path = out / "metrics.json"
    write_text_atomic(json_path, json.dumps(doc, indent=2, allow_nan=False) + "\n")

    tables = _tables(doc)
    md_path = write_text_atomic(out / "report.md", _markdown(doc, tables))
    html_path = write_text_atomic(out / "report.html", _html(doc, tables, plots))
    summary: dict[str, Any] = {
        "paths": {
            "markdown": str(md_path),
            "html": str(html_path),
            "metrics": str(json_path),
            "plots": plot_paths,
        },
        "edge": edge,
        "verdict": sentence,
        "comparison": doc["headline"]["comparison"]["sentence"],
        "sharpe": doc["headline"]["metrics"]["sharpe"],
        "sharpe_ci": [
            (head_ci.get("sharpe") or {}).get("lower"),
            (head_ci.get("sharpe") or {}).get("upper"),
        ],
        "total_return": doc["headline"]["metrics"]["total_return"],
        "psr": doc["headline"]["psr"],
        "dsr": doc["headline"]["dsr"],
        "n_trials": n_trials,
        "n_runs": len(loaded),
        "n_seeds": len(seeds),
    }
    cleaned: dict[str, Any] = _clean(summary)
    return cleaned


def _tables(doc: dict[str, Any]) -> list[_Table]:
    h = doc["headline"]
    tables = [
        _Table(
            f"Stitched out-of-sample results ({h['series']}) and references",
            _METRIC_HEADER,
            [_metric_row("agent", h["metrics"], h["ci"])]
            + [
                _metric_row(REFERENCE_LABELS.get(name, name), v["metrics"], v["ci"])
                for name, v in doc["references"].items()
            ],
        ),
        _Table(
            "Sharpe-ratio inference (per-bar Sharpe)",
            [
                "per-bar Sharpe",
                "bars",
                "skew",
                "raw kurtosis",
                "PSR(0)",
                "DSR",
                "trials",
                "var(SR)",
            ],
            [
                [
                    _fmt((h["per_bar"] or {}).get("sharpe"), 5),
                    _fmt((h["per_bar"] or {}).get("n_obs"), 0),
                    _fmt((h["per_bar"] or {}).get("skew")),
                    _fmt((h["per_bar"] or {}).get("kurtosis")),
                    _fmt(h["psr"]),
                    _fmt(h["dsr"]),
                    str(h["n_trials"]),
                    _fmt(h["sharpe_variance"], 8),
                ]
            ],
        ),
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
                    str(doc["stability"]["n_seeds"]),
                    _fmt(doc["stability"]["sharpe_mean"]),
                    _fmt(doc["stability"]["sharpe_std"]),
                    _fmt(doc["stability"]["total_return_mean"], 4),
                    _fmt(doc["stability"]["total_return_std"], 4),
                ]
            ],
        ),
        _Table(
            "Per fold",
            ["fold", "seed", "start", "end", *_METRIC_HEADER[1:]],
            [
                [str(f["fold"]), str(f["seed"]), f["start"], f["end"]]
                + _metric_row("", f["metrics"], f["ci"])[1:]
                for f in doc["folds"]
            ],
        ),
        _Table(
            "Per regime (regime at the decision row; -1 = no regimes)",
            [
                "regime",
                "bars",
                "share",
                "mean return",
                "Sharpe",
                "total return",
                "mean |exposure|",
                "hit rate",
            ],
            [
                [
                    str(r["regime"]),
                    str(r["n_bars"]),
                    _fmt(r["share"]),
                    _fmt(r["mean_return"], 6),
                    _fmt(r["sharpe"]),
                    _fmt(r["total_return"], 4),
                    _fmt(r["mean_abs_exposure"]),
                    _fmt(r["hit_rate"]),
                ]
                for r in doc["regimes"]
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
    if doc.get("ingest"):
        tables.append(_kv_table("Ingest / data quality", doc["ingest"]))
    if doc.get("profile"):
        tables.append(_kv_table("Performance profile", doc["profile"]))
    return tables


_PLOT_TITLES = {
    "equity": "Equity vs references (regimes shaded)",
    "drawdown": "Drawdown",
    "exposure": "Exposure",
    "fold_sharpe": "Per-fold Sharpe intervals",
    "learning_curve": "Learning curve (training episodes)",
    "validation_curve": "Validation (held-out training episodes)",
}


def _markdown(doc: dict[str, Any], tables: list[_Table]) -> str:
    b = doc["bootstrap"]
    parts = [
        "# Sentio out-of-sample report",
        "",
        f"**Verdict:** {doc['headline']['verdict']}",
        "",
        doc["headline"]["comparison"]["sentence"],
        "",
        f"Intervals: stationary bootstrap, {b['resamples']} resamples, level {b['ci_level']:g}, "
        f"seed {b['seed']}; annualisation {b['periods_per_year']:g} bars per year.",
        "",
    ]
    parts += [t.markdown() for t in tables]
    parts.append("## Plots\n")
    parts += [f"![{title}](plots/{name}.png)\n" for name, title in _PLOT_TITLES.items()]
    return "\n".join(parts)


_CSS = (
    "body{font-family:sans-serif;margin:2em;max-width:1100px}"
    "table{border-collapse:collapse;margin-bottom:1.5em;font-size:13px}"
    "th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}"
    "th{background:#f0f0f0}.verdict{font-size:1.1em;padding:.6em;border:2px solid #888}"
    "img{max-width:100%}"
)


def _html(doc: dict[str, Any], tables: list[_Table], plots: dict[str, bytes]) -> str:
    b = doc["bootstrap"]
    body = [
        "<h1>Sentio out-of-sample report</h1>",
        f'<p class="verdict"><b>Verdict:</b> {html.escape(doc["headline"]["verdict"])}</p>',
        f"<p>{html.escape(doc['headline']['comparison']['sentence'])}</p>",
        f"<p>Intervals: stationary bootstrap, {b['resamples']} resamples, level "
        f"{b['ci_level']:g}, seed {b['seed']}; annualisation {b['periods_per_year']:g} bars "
        "per year.</p>",
    ]
    body += [t.html() for t in tables]
    body.append("<h2>Plots</h2>")
    for name, title in _PLOT_TITLES.items():
        if name in plots:
            data = base64.b64encode(plots[name]).decode("ascii")
            body.append(
                f"<h3>{html.escape(title)}</h3>"
                f'<img alt="{html.escape(title)}" src="data:image/png;base64,{data}">'
            )
    return (
        '<!DOCTYPE html><html><head><meta charset="utf-8">'
        f"<title>Sentio report</title><style>{_CSS}</style></head><body>"
        + "\n".join(body)
        + "</body></html>\n"
    )
