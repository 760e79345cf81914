"""The report's plots: matplotlib figures over time (equity, drawdown, exposure) and
per training (Sharpe per fold, learning and validation curves), rendered as PNG.

matplotlib is imported on first use (Agg backend).

Library code only: no orchestration imports.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl

from sentio.report.labels import REFERENCE_LABELS, regime_name
from sentio.report.times import _naive_utc, _new_york, _ny_stamp

PLOT_MAX_POINTS = 5000
"""Above this many bars the time plots are drawn from one point per session (last equity,
deepest drawdown, dominant regime), so that 150,000 minute bars plot in a moment."""


_PLOT_TITLES = {
    "equity": "Equity vs references (regimes shaded)",
    "drawdown": "Drawdown",
    "exposure": "Exposure: mean per session and distribution",
    "fold_sharpe": "Per-fold Sharpe intervals",
    "learning_curve": "Learning curve (training episodes)",
    "validation_curve": "Validation (held-out training episodes)",
}


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
