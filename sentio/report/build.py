"""Building the report: :func:`build_report` computes the document from the train
stage's runs and writes ``metrics.json``, the pages and the plots;
:func:`add_registry_decision` renders the pages again with the registry's decision.

Library code only: no orchestration imports.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from sentio.config import SentioConfig
from sentio.evaluation import (
    EvaluationError,
    deflated_sharpe_ratio,
    metrics_to_json,
    probabilistic_sharpe_ratio,
)
from sentio.io import write_text_atomic
from sentio.report.figures import _PLOT_TITLES, _plots
from sentio.report.formatting import _clean
from sentio.report.labels import (
    REFERENCES,
    _frequency_text,
    _reference_descriptions,
    _session_rule,
    reference_labels,
)
from sentio.report.numbers import (
    _intervals,
    _metrics,
    _moments,
    _n_regimes,
    _regime_table,
    activity_flags,
    comparison,
    stood_aside,
    verdict,
    warm_started,
)
from sentio.report.pages import _html, _markdown, _tables, data_quality_rows
from sentio.report.series import _first_stamp, _ppy, load_bars, stitch, trade_returns
from sentio.report.times import _naive_utc
from sentio.times import now_utc_text

# columns averaged across seeds for the ensemble series
_ENSEMBLE_COLUMNS = ("returns", "position", "exposure", "costs", "entries")


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
        "written": now_utc_text(),
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
                "warm_start": run.get("warm_start"),
            }
        )
    return folds


def _pooled(trades: Sequence[np.ndarray | None]) -> np.ndarray | None:
    parts = [t for t in trades if t is not None]
    return np.concatenate(parts) if parts else None


def _seed_series(
    loaded: list[tuple[dict[str, Any], pl.DataFrame]], ledgers: list[np.ndarray | None]
) -> tuple[dict[int, pl.DataFrame], dict[int, np.ndarray | None]]:
    """Per seed (ascending): its runs' bars stitched across folds, its pooled trade ledger."""
    seeds = sorted({int(run["seed"]) for run, _ in loaded})
    frames = {s: stitch([f for run, f in loaded if int(run["seed"]) == s]) for s in seeds}
    pooled = {
        s: _pooled(
            [t for (run, _), t in zip(loaded, ledgers, strict=True) if int(run["seed"]) == s]
        )
        for s in seeds
    }
    return frames, pooled


def _seed_entries(
    per_seed: dict[int, pl.DataFrame],
    ledgers: dict[int, np.ndarray | None],
    ppy: float,
    cfg: SentioConfig,
) -> tuple[dict[str, Any], list[float]]:
    """Per seed stitched results and the per-bar Sharpe of each (the trials).

    A seed's entry: ``metrics``, ``ci``, ``per_bar`` (the moments of its stitched
    returns) and ``psr`` / ``dsr`` of them (:func:`_sharpe_inference`, with the trials
    and the Sharpe variance of the headline): the registry gate reads the seed's DSR
    from here.
    """
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
    n_trials, variance = _trials(trial_sharpes)
    for entry in results.values():
        entry.update(_sharpe_inference(entry["per_bar"], n_trials, variance))
    return results, trial_sharpes


def _stability(seed_results: dict[str, Any]) -> dict[str, Any]:
    """The dispersion of the seeds' stitched Sharpe ratios and total returns."""
    metrics = [v["metrics"] for v in seed_results.values()]
    sh = [m["sharpe"] for m in metrics if m["sharpe"] is not None]
    tr = [m["total_return"] for m in metrics if m["total_return"] is not None]
    return {
        "n_seeds": len(seed_results),
        "sharpe_mean": float(np.mean(sh)) if sh else None,
        "sharpe_std": float(np.std(sh, ddof=1)) if len(sh) > 1 else None,
        "total_return_mean": float(np.mean(tr)) if tr else None,
        "total_return_std": float(np.std(tr, ddof=1)) if len(tr) > 1 else None,
    }


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


def _trials(trial_sharpes: list[float]) -> tuple[int, float | None]:
    """The number of trials (at least one) and the variance of their per-bar Sharpe
    ratios (``ddof = 1``; None with fewer than two)."""
    variance = float(np.var(trial_sharpes, ddof=1)) if len(trial_sharpes) > 1 else None
    return max(len(trial_sharpes), 1), variance


def _sharpe_inference(
    mom: dict[str, float] | None, n_trials: int, variance: float | None
) -> dict[str, float | None]:
    """``psr`` (PSR(0)) and ``dsr`` of a series from its per-bar moments, given the trials.

    ``variance``: the variance of the trials' per-bar Sharpe ratios, used with more than
    one trial. Both None when the moments are missing or the statistics undefined.
    """
    if mom is None:
        return {"psr": None, "dsr": None}
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
        return {"psr": None, "dsr": None}
    return {"psr": psr, "dsr": dsr}


def _inference(hr: np.ndarray, trial_sharpes: list[float]) -> dict[str, Any]:
    """Per-bar moments, PSR and DSR of the headline returns given the trials run."""
    mom = _moments(hr)
    n_trials, variance = _trials(trial_sharpes)
    return {
        "per_bar": mom,
        **_sharpe_inference(mom, n_trials, variance),
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


def _headline(
    head: pl.DataFrame,
    series: str,
    ledgers: list[np.ndarray | None],
    trial_sharpes: list[float],
    folds: list[dict[str, Any]],
    references: dict[str, Any],
    labels: dict[str, str],
    ppy: float,
    cfg: SentioConfig,
) -> dict[str, Any]:
    """The headline: the ensemble's metrics and intervals, its inference, the verdict and
    the comparison with the references."""
    metrics = metrics_to_json(_metrics(head, ppy, _pooled(ledgers)))
    ci = _intervals(head["returns"].to_numpy(), ppy, cfg)
    inference = _inference(head["returns"].to_numpy(), trial_sharpes)
    edge, sentence = verdict(
        ci.get("sharpe"),
        inference["dsr"],
        level=cfg.report.ci_level,
        min_dsr=cfg.registry.min_dsr,
    )
    compared = comparison(metrics.get("sharpe"), references, labels)
    for said in (stood_aside(folds), warm_started(folds, cfg.train.warm_start_fraction)):
        if said:
            compared["sentence"] = (compared["sentence"] + " " + said).strip()
    return {
        "series": series,
        "metrics": metrics,
        "ci": ci,
        **inference,
        "min_dsr": cfg.registry.min_dsr,
        "ci_level": cfg.report.ci_level,
        "edge": edge,
        "verdict": sentence,
        "comparison": compared,
        "flags": activity_flags(metrics),
    }


def _write_plots(out: Path, plots: dict[str, bytes]) -> dict[str, str]:
    """Write each plot as ``out/plots/<name>.png``; their paths by name."""
    paths: dict[str, str] = {}
    for name, png in plots.items():
        path = out / "plots" / f"{name}.png"
        path.write_bytes(png)
        paths[name] = str(path)
    return paths


def _summary(
    headline: dict[str, Any],
    folds: list[dict[str, Any]],
    paths: dict[str, Any],
    *,
    n_runs: int,
    n_seeds: int,
) -> dict[str, Any]:
    """What :func:`build_report` returns (strict JSON), from the headline and the folds."""
    ci = headline["ci"].get("sharpe") or {}
    summary: dict[str, Any] = {
        "paths": paths,
        "edge": headline["edge"],
        "verdict": headline["verdict"],
        "comparison": headline["comparison"]["sentence"],
        "flags": {
            "headline": headline["flags"],
            "folds": [
                {"fold": f["fold"], "seed": f["seed"], "flags": f["flags"]}
                for f in folds
                if f["flags"]
            ],
        },
        "sharpe": headline["metrics"]["sharpe"],
        "sharpe_ci": [ci.get("lower"), ci.get("upper")],
        "total_return": headline["metrics"]["total_return"],
        "psr": headline["psr"],
        "dsr": headline["dsr"],
        "n_trials": headline["n_trials"],
        "n_runs": n_runs,
        "n_seeds": n_seeds,
    }
    cleaned: dict[str, Any] = _clean(summary)
    return cleaned


def _document(
    run: dict[str, Any],
    headline: dict[str, Any],
    seeds: dict[str, Any],
    folds: list[dict[str, Any]],
    references: dict[str, Any],
    labels: dict[str, str],
    *,
    regimes: list[dict[str, Any]],
    n_regimes: int,
    ppy: float,
    daily: bool,
    cfg: SentioConfig,
    ingest_summary: dict[str, Any] | None,
    profile: dict[str, Any] | None,
) -> dict[str, Any]:
    """The report's document (``metrics.json``, strict JSON): every number of the report
    and everything its pages are rendered from; ``registry`` is None until
    :func:`add_registry_decision`."""
    doc: dict[str, Any] = _clean(
        {
            "run": run,
            "registry": None,
            "headline": headline,
            "seeds": seeds,
            "stability": _stability(seeds),
            "folds": folds,
            "references": references,
            "labels": labels,
            "reference_descriptions": _reference_descriptions(cfg, daily),
            "regimes": regimes,
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
    return doc


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

    The steps: per fold (:func:`_fold_entries`), per seed stitched across folds with
    each seed's PSR and DSR (:func:`_seed_entries`), the references
    (:func:`_references`), the headline with its inference and verdict
    (:func:`_headline`), then the outputs (plots, the document, the pages).

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
        profile: optional performance profile (time per stage, steps per second, memory);
            the report adds its own time (``report (s)``: everything but writing the pages).
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
    started = time.perf_counter()
    out = Path(out_dir)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    loaded, ppy = _load(runs)
    daily = _is_daily(ingest_summary, ppy)
    labels = reference_labels(cfg, daily=daily)
    ledgers = [trade_returns(run, frame) for run, frame in loaded]
    folds = _fold_entries(loaded, ledgers, ppy, cfg)
    per_seed, seed_ledgers = _seed_series(loaded, ledgers)
    seed_results, trial_sharpes = _seed_entries(per_seed, seed_ledgers, ppy, cfg)
    head = _ensemble(per_seed)
    ref_frames, ref_results = _references(loaded, ppy, cfg, labels)
    seeds = list(per_seed)
    series = "seed ensemble" if len(seeds) > 1 else f"seed {seeds[0]}"
    headline = _headline(head, series, ledgers, trial_sharpes, folds, ref_results, labels, ppy, cfg)
    n_regimes = _n_regimes(cfg, head)
    gaps = (ingest_summary or {}).get("gaps") or []
    plots = _plots(head, ref_frames, folds, labels, n_regimes, gaps)
    plot_paths = _write_plots(out, plots)
    if profile is not None:  # the report's own time, all but writing its pages (milliseconds)
        profile = {**profile, "report (s)": round(time.perf_counter() - started, 2)}
    doc = _document(
        _run_header(run_info, ingest_summary, cfg, folds, head, ppy),
        headline,
        seed_results,
        folds,
        ref_results,
        labels,
        regimes=_regime_table(head, ppy, n_regimes),
        n_regimes=n_regimes,
        ppy=ppy,
        daily=daily,
        cfg=cfg,
        ingest_summary=ingest_summary,
        profile=profile,
    )
    paths = _write_pages(out, doc, plots)
    return _summary(
        headline, folds, {**paths, "plots": plot_paths}, n_runs=len(loaded), n_seeds=len(seeds)
    )


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
