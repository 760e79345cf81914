"""The report's pages, rendered from its document (``metrics.json``) alone: the header,
the flags, the tables (data quality included), and the markdown and HTML pages.

Library code only: no orchestration imports.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
from collections.abc import Sequence
from typing import Any

import polars as pl

from sentio.errors import DataError
from sentio.report.figures import _PLOT_TITLES
from sentio.report.formatting import (
    _ci_txt,
    _clean,
    _count,
    _pct,
    _Table,
    _times,
)
from sentio.report.labels import REFERENCE_LABELS, _frequency_text
from sentio.report.times import _ny_stamp
from sentio.text import format_number, warm_start_text

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
        format_number(m.get("sharpe"), 2),
        _ci_txt(ci.get("sharpe")),
        _pct(m.get("total_return"), sign=True),
        _pct(m.get("cagr"), 1, sign=True),
        _pct(m.get("max_drawdown")),
        _pct(m.get("costs_paid")),
        _times(m.get("annual_turnover")),
        format_number(m.get("mean_abs_exposure")),
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
        if isinstance(v, dict | list):
            text = json.dumps(_clean(v), default=str)
        else:
            text = v if isinstance(v, str) else format_number(v)
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
    except DataError:  # not ISO-8601: shown as it is
        return str(text)
    return str(local)[:10] if daily else str(local)[:16].replace("T", " ")


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
            f"stands aside (t {format_number(best.get('t'), 2)} < {format_number(val.get('min_t'), 2)}): flat"
            if val.get("stands_aside")
            else "trades"
        )
        rows.append(
            [
                str(f["fold"]),
                str(f["seed"]),
                str(val.get("episodes")),
                f"{int(val.get('best_steps', 0)):,}",
                format_number(best.get("sharpe"), 2),
                format_number(best.get("mean_abs_exposure")),
                decision,
            ]
        )
    return rows


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
    champion = registry.get("champion_after")
    return (
        f"version {cand}; registry: not promoted"
        + (f" ({reasons})" if reasons else "")
        + (f"; the champion stays {champion}" if champion else "; there is no champion")
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
    folds = doc["folds"]
    # why trainings started cold although warm starts were on: once per reason
    cold: dict[str, list[str]] = {}
    for f in folds:
        plan = f.get("warm_start") or {}
        if plan and not plan.get("applies") and plan.get("reason"):
            cold.setdefault(str(plan["reason"]), []).append(f"{f['fold']}/{f['seed']}")
    return _Table(
        "Per fold",
        ["fold", "seed", "test from", "test to", "model", *_METRIC_HEADER[1:], "flags"],
        [
            [
                str(f["fold"]),
                str(f["seed"]),
                f["start"][:10],
                f["end"][:10],
                warm_start_text(f.get("warm_start"), reason=False),
            ]
            + _metric_row("", f["metrics"], f["ci"])[1:]
            + [_flag_words(f.get("flags") or []) or "none"]
            for f in folds
        ],
        note=(
            "model: the training started from the champion's weights (from <version>, "
            "train.warm_start) or from scratch (cold)."
            if any(f.get("warm_start") for f in folds)
            else ""
        ),
        items=[f"cold (fold/seed {', '.join(which)}): {why}." for why, which in cold.items()],
    )


def _regime_rows(doc: dict[str, Any]) -> list[list[str]]:
    return [
        [
            str(r.get("name") or r["regime"]),
            str(r["n_bars"]),
            _pct(r["share"], 1),
            _pct(r["mean_return"], 4, sign=True),
            format_number(r["sharpe"], 2),
            _pct(r["total_return"], sign=True),
            format_number(r["mean_abs_exposure"]),
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
                format_number(pb.get("sharpe"), 5),
                format_number(pb.get("n_obs"), 0),
                format_number(pb.get("skew")),
                format_number(pb.get("kurtosis")),
                format_number(h["psr"]),
                format_number(h["dsr"]),
                str(h["n_trials"]),
                format_number(h["sharpe_variance"], 8),
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
                    format_number(st["sharpe_mean"], 2),
                    format_number(st["sharpe_std"], 2),
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
    "th{background:#f0f0f0;white-space:normal;vertical-align:bottom;min-width:3.5em}"
    ".verdict{font-size:1.1em;padding:.6em;border:2px solid #888}"
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
