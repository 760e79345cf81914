"""The registry stage of the nightly flow: register every trained model, gate one candidate.

The stage is never cached (it reads the mutable registry); it is idempotent instead. Its
source is in no other stage's cache key, so a change to how models are promoted does not
invalidate trained models (``tests/test_stage_keys.py``).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from sentio.config import SentioConfig, sized
from sentio.errors import DataError, SentioError
from sentio.io import code_version, sha256_file, write_json_atomic
from sentio.stages import TRAIN_MODULES, _utc64, config_for_data, index_file, load_folds

if TYPE_CHECKING:
    from sentio.registry import Registry

DECISION_FILE = "decision.json"

Backtester = Callable[["Registry", str, str, str], dict[str, Any]]
"""``(registry, version_id, start, end) -> metrics``: a registered version backtested on
one block of this run's bars with timestamps in ``[start, end]`` (ISO-8601 UTC); the
metrics are :func:`sentio.evaluation.metrics_to_json` of the result plus ``n_bars``."""


def _iso64(t: np.datetime64) -> str:
    """A naive-UTC ``datetime64`` as an ISO-8601 UTC string (the form folds.json uses)."""
    stamp = dt.datetime.fromisoformat(str(t.astype("datetime64[us]")))
    return stamp.replace(tzinfo=dt.UTC).isoformat()


def _iso_utc(iso: str) -> str:
    """Any timezone-aware ISO timestamp as ISO-8601 UTC (``+00:00``)."""
    return dt.datetime.fromisoformat(iso).astimezone(dt.UTC).isoformat()


def fold_windows(folds: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """Per fold of a ``folds.json``: its training span and its out-of-sample window.

    ``train_start`` / ``train_end``: first / last bar of the training ranges;
    ``window_start`` / ``window_end``: first bar of the first test block / last bar of the
    last one (the window the fold's metrics cover); ``last_block``: ``(start, end)`` of
    its last test block (all ISO-8601 UTC).
    """
    out: dict[int, dict[str, Any]] = {}
    for entry in folds["folds"]:
        train, test = entry["train_ranges"], entry["test_blocks"]
        if not test:
            continue
        out[int(entry["fold"])] = {
            "train_start": _iso_utc(train[0]["start"]) if train else None,
            "train_end": _iso_utc(train[-1]["end"]) if train else None,
            "window_start": _iso_utc(test[0]["start"]),
            "window_end": _iso_utc(test[-1]["end"]),
            "last_block": (_iso_utc(test[-1]["start"]), _iso_utc(test[-1]["end"])),
        }
    return out


def choose_candidate(
    runs: Sequence[dict[str, Any]],
    seed_sharpe: dict[int, float | None],
    windows: dict[int, dict[str, Any]],
) -> dict[str, Any] | None:
    """The run to gate against the champion, or None when no run has a test window.

    The fold: the one whose out-of-sample window ends last (walk-forward: the model
    trained on the most recent data); ties (``cpcv``) go to the latest training end, then
    to the lowest fold index. Among that fold's runs, the seed with the highest stitched
    out-of-sample Sharpe across all folds (``seed_sharpe``: the report's per-seed figure;
    a missing one ranks last); ties go to the lowest seed.
    """
    folds = {int(r["fold"]) for r in runs if int(r["fold"]) in windows}
    if not folds:
        return None

    def fold_rank(f: int) -> tuple[dt.datetime, dt.datetime, int]:
        w = windows[f]
        end = dt.datetime.fromisoformat(w["window_end"])
        trained = dt.datetime.fromisoformat(w["train_end"]) if w["train_end"] else end.min
        return (end, trained.replace(tzinfo=dt.UTC), -f)

    fold = max(folds, key=fold_rank)

    def seed_rank(run: dict[str, Any]) -> tuple[float, int]:
        s = seed_sharpe.get(int(run["seed"]))
        value = float(s) if s is not None and np.isfinite(s) else -np.inf
        return (value, -int(run["seed"]))

    return max((r for r in runs if int(r["fold"]) == fold), key=seed_rank)


def seed_gate_metrics(report_metrics: dict[str, Any], seed: int) -> dict[str, Any]:
    """A seed's stitched out-of-sample figures from the report's ``metrics.json``.

    ``dsr``: the deflated Sharpe ratio of the seed's stitched returns, computed exactly
    as the report computes the headline's (:func:`sentio.evaluation.deflated_sharpe_ratio`
    on the per-bar Sharpe, skewness and raw kurtosis of the seed's stitched bars, the
    report's ``n_trials`` = the seeds actually run and the variance of their Sharpe
    ratios); ``max_drawdown`` and ``sharpe``: the stitched series'; ``n_trials``.
    """
    from sentio.evaluation import EvaluationError, deflated_sharpe_ratio

    entry = (report_metrics.get("seeds") or {}).get(str(seed)) or {}
    head = report_metrics.get("headline") or {}
    metrics = entry.get("metrics") or {}
    per_bar = entry.get("per_bar")
    n_trials = int(head.get("n_trials") or 1)
    dsr: float | None = None
    if per_bar:
        variance = head.get("sharpe_variance")
        try:
            dsr = deflated_sharpe_ratio(
                float(per_bar["sharpe"]),
                int(per_bar["n_obs"]),
                n_trials=n_trials,
                sharpe_variance=None if n_trials == 1 or variance is None else float(variance),
                skew=float(per_bar["skew"]),
                kurtosis=float(per_bar["kurtosis"]),
            )
        except (EvaluationError, TypeError, ValueError):
            dsr = None
        if dsr is not None and not np.isfinite(dsr):
            dsr = None
    return {
        "dsr": dsr,
        "max_drawdown": metrics.get("max_drawdown"),
        "sharpe_stitched": metrics.get("sharpe"),
        "n_bars_stitched": metrics.get("n_bars"),
        "n_trials": n_trials,
    }


@dataclass(frozen=True)
class CompareWindow:
    """The leakage-free window on which a candidate and the champion are compared.

    ``start`` / ``end``: first and last clean bar (ISO-8601 UTC), None when there is none;
    ``n_bars``: clean bars in it; ``clean_from``: the first bar after the champion's
    training end and the embargo (None: the data ends before); ``reason``: why no
    comparison is possible (fewer than ``min_bars`` clean bars), with the numbers.
    """

    start: str | None
    end: str | None
    n_bars: int
    clean_from: str | None
    reason: str | None


def comparison_window(
    stamps: np.ndarray,
    window: tuple[str, str],
    champion_train_end: str,
    *,
    embargo_bars: int,
    min_bars: int,
) -> CompareWindow:
    """The candidate's window restricted to bars the champion never saw, with an embargo.

    Args:
        stamps: sorted ``datetime64[us]`` (naive UTC) bar starts of this run's bars.
        window: the candidate's out-of-sample window ``(start, end)`` (ISO, inclusive).
        champion_train_end: the champion's last training bar (ISO).
        embargo_bars: bars skipped after ``champion_train_end``: the clean bars start at
            the ``embargo_bars + 1``-th bar strictly after it.
        min_bars: fewest clean bars for a comparison.
    """
    ws, we, te = (_utc64(x) for x in (*window, champion_train_end))
    after = stamps[stamps > te]
    clean_from = after[embargo_bars] if after.size > embargo_bars else None
    if clean_from is None:
        clean = stamps[:0]
    else:
        clean = stamps[(stamps >= ws) & (stamps <= we) & (stamps >= clean_from)]
    n = int(clean.size)
    start = _iso64(clean[0]) if n else None
    end = _iso64(clean[-1]) if n else None
    reason = None
    if n < min_bars:
        reason = (
            f"only {n} leakage-free bars to compare on: the candidate's window "
            f"{_iso_utc(window[0])}..{_iso_utc(window[1])} after the champion's training end "
            f"{_iso_utc(champion_train_end)} plus an embargo of {embargo_bars} bars (clean from "
            f"{_iso64(clean_from) if clean_from is not None else 'beyond the data'}); "
            f"registry.min_compare_bars = {min_bars}"
        )
    return CompareWindow(
        start,
        end,
        n,
        _iso64(clean_from) if clean_from is not None else None,
        reason,
    )


def live_backtester(bars_path: str | Path) -> Backtester:
    """A :data:`Backtester` that rebuilds a version's market from this run's canonical bars
    with :func:`sentio.live.load_bundle` (every file hash-verified; the version's own
    configuration, normaliser and regime model, exactly as its training pipeline built
    it) and backtests the deterministic policy on one block over ``[start, end]``
    (:meth:`sentio.live.ModelBundle.backtest`). The bars are read once and handed over as
    a frame (already canonical: nothing is ingested again)."""
    frames: list[pl.DataFrame] = []

    def run(registry: Registry, version_id: str, start: str, end: str) -> dict[str, Any]:
        from sentio.evaluation import metrics_to_json
        from sentio.live import load_bundle

        if not frames:
            frames.append(pl.read_ipc(bars_path))
        bundle = load_bundle(registry, version_id)
        result = bundle.backtest(frames[0], start=start, end=end)
        return {**metrics_to_json(result.metrics()), "n_bars": int(result.n_bars)}

    return run


def _underlying_stamps(bars_path: str | Path, cfg: SentioConfig) -> np.ndarray:
    under = (
        pl.scan_ipc(bars_path)
        .filter(pl.col("symbol") == cfg.universe.underlying)
        .select("timestamp")
        .sort("timestamp")
        .collect()
    )
    return under["timestamp"].dt.replace_time_zone(None).to_numpy().astype("datetime64[us]")


def _check_model_file(run: dict[str, Any]) -> None:
    """The model file of a training summary is the one its metrics were measured on.

    A version is registered from the immutable training folder its summary names; the
    model's bytes must still hash to what the training recorded, or the version would
    pair one model with another model's metrics.
    """
    model = str(run["model"])
    recorded = (run.get("files") or {}).get(model)
    actual = sha256_file(model) if Path(model).is_file() else None
    if recorded is None or actual != recorded:
        raise DataError(
            f"{model}: the model file is {'missing' if actual is None else 'not the one'} its "
            f"training (key {run.get('key')}) recorded and backtested; nothing was registered "
            "from it (run again to retrain)"
        )


def registry_stage(
    runs: Sequence[dict[str, Any]],
    report: dict[str, Any],
    cfg: SentioConfig,
    out_dir: str | Path,
    *,
    bars_path: str | Path,
    folds_path: str | Path,
    regimes_path: str | Path | None,
    feature_columns: Sequence[str],
    data_hashes: dict[str, str],
    run_name: str,
    registry: Registry | None = None,
    backtester: Backtester | None = None,
) -> dict[str, Any]:
    """Register every trained model, choose a candidate, gate it, promote it or say why not.

    **Registration** (idempotent). Every (fold, seed) run becomes a version through
    :meth:`sentio.registry.Registry.register_once`: a version with the same
    ``extra.train_key`` and model sha256 is reused, so a second run with unchanged inputs
    creates no version. A version holds ``model.zip``, ``config.yaml`` (the full
    configuration the model was trained with, from its train folder),
    ``normaliser.json`` (the fold's normaliser, with ``features.normalisation =
    "train_fit"``) and ``regime_model.json`` (the fold's regime model, with regimes
    enabled). ``extra``: ``fold``, ``seed``, ``train_key``, ``run``, ``train_start`` /
    ``train_end`` (first / last bar of the fold's training ranges), ``window_start`` /
    ``window_end`` (the fold's out-of-sample window) and ``feature_columns``. Metrics: the
    run's out-of-sample metrics, ``window_start`` / ``window_end`` and ``dsr`` (the DSR
    of the seed's stitched returns, see :func:`seed_gate_metrics`).

    **Candidate**: :func:`choose_candidate` (the fold whose test window ends last, the
    seed with the best stitched Sharpe). Its gate metrics: ``dsr`` and ``max_drawdown``
    of the seed's stitched out-of-sample returns; ``sharpe`` on the comparison window.

    **Comparison without leakage.** Without a champion (or with
    ``registry.must_beat_champion = false``) the gate checks DSR and drawdown only (the
    recorded ``sharpe`` is the candidate's own over its fold's window). Otherwise the
    window is the last test block of the candidate's fold restricted to bars strictly after the
    champion's ``extra.train_end`` plus the folds' embargo (``cv.embargo_bars``, or
    ``ceil(cv.embargo_fraction x samples)``) -- see :func:`comparison_window`. With fewer
    than ``registry.min_compare_bars`` clean bars (or a champion without ``train_end``,
    or one that cannot be rebuilt on this run's bars) the candidate is not promoted and
    the reason gives the numbers. Otherwise the candidate AND the champion are backtested
    on that window of this run's bars by ``backtester`` (default
    :func:`live_backtester`) and :func:`sentio.registry.gate` compares their Sharpe
    ratios on the same ``window_start`` / ``window_end``. The champion is read, gated and
    replaced within one registry lock (:meth:`~sentio.registry.Registry.promote_if_passes`,
    compare-and-swap): the comparison is prepared outside the lock for the champion of
    the moment and reused under the lock if that is still the champion; if another
    process changed it meanwhile, the new champion is re-evaluated under the lock.

    Writes ``out_dir/decision.json`` (the returned summary) and returns the summary:
    ``candidate``, ``registered``, ``new_versions``, ``champion_before``,
    ``champion_after``, ``promoted``, ``reasons``, ``checks``, ``candidate_metrics``,
    ``champion_metrics``, ``compare_window``, ``output`` and details (``versions``,
    ``candidate_fold``, ``candidate_seed``, ``registry``).

    Not cached: it reads the mutable registry; it is idempotent instead.
    """
    from sentio.config import write_config
    from sentio.cv import splitter_from_config
    from sentio.registry import Comparison, Registry, Version, default_root

    cfg = config_for_data(cfg, bars_path)  # 'auto' bar counts sized by the data
    reg = registry if registry is not None else Registry(default_root(cfg).expanduser().resolve())
    out = Path(out_dir)
    folds = load_folds(folds_path)
    windows = fold_windows(folds)
    entries = {int(f["fold"]): f for f in folds["folds"]}
    regime_models: dict[int, str] = {}
    if regimes_path is not None:
        for e in json.loads(Path(regimes_path).read_text())["folds"]:
            regime_models[int(e["fold"])] = str(index_file(regimes_path, e["model"]))
    report_metrics = json.loads(Path(report["paths"]["metrics"]).read_text())
    seeds = sorted({int(r["seed"]) for r in runs})
    per_seed = {s: seed_gate_metrics(report_metrics, s) for s in seeds}
    code = code_version(*TRAIN_MODULES)

    fallback_config: Path | None = None
    versions: list[dict[str, Any]] = []
    by_run: dict[tuple[int, int], str] = {}
    for run in runs:  # every model first: a mismatch registers nothing
        _check_model_file(run)
    for run in sorted(runs, key=lambda r: (int(r["fold"]), int(r["seed"]))):
        fold, seed = int(run["fold"]), int(run["seed"])
        w = windows.get(fold)
        if w is None:
            raise DataError(f"{folds_path}: no test window for fold {fold}")
        config_file = Path(run["output"]).parent / "config.yaml"
        if not config_file.is_file():
            if fallback_config is None:
                fallback_config = write_config(out / "config.yaml", cfg)
            config_file = fallback_config
        extra_files: dict[str, str] = {}
        normaliser = index_file(folds_path, entries[fold].get("normaliser"))
        if cfg.features.normalisation == "train_fit" and normaliser:
            extra_files["normaliser.json"] = str(normaliser)
        if cfg.regimes.enabled and fold in regime_models:
            extra_files["regime_model.json"] = regime_models[fold]
        metrics = {
            **(run.get("metrics") or {}),
            "window_start": w["window_start"],
            "window_end": w["window_end"],
        }
        if per_seed[seed]["dsr"] is not None:
            metrics["dsr"] = per_seed[seed]["dsr"]
        version, created = reg.register_once(
            run["model"],
            config_file,
            metrics,
            data_hashes=data_hashes,
            code_version=code,
            algo=cfg.agent.algo,
            extra={
                "fold": fold,
                "seed": seed,
                "train_key": run["key"],
                "run": run_name,
                "train_start": w["train_start"],
                "train_end": w["train_end"],
                "window_start": w["window_start"],
                "window_end": w["window_end"],
                "feature_columns": list(feature_columns),
            },
            extra_files=extra_files,
        )
        by_run[(fold, seed)] = version.version
        versions.append({"fold": fold, "seed": seed, "version": version.version, "new": created})

    seed_sharpe = {s: per_seed[s]["sharpe_stitched"] for s in seeds}
    chosen = choose_candidate(runs, seed_sharpe, windows)
    pointer = reg.champion()
    summary: dict[str, Any] = {
        "registry": str(reg.root),
        "candidate": None,
        "candidate_fold": None,
        "candidate_seed": None,
        "registered": [v["version"] for v in versions],
        "new_versions": sum(1 for v in versions if v["new"]),
        "versions": versions,
        "champion_before": pointer["version"] if pointer else None,
        "champion_after": pointer["version"] if pointer else None,
        "promoted": False,
        "reasons": ["no trained model with an out-of-sample window"],
        "checks": [],
        "candidate_metrics": None,
        "champion_metrics": None,
        "compare_window": None,
        "compare_bars": None,
    }
    if chosen is not None:
        fold, seed = int(chosen["fold"]), int(chosen["seed"])
        candidate_id = by_run[(fold, seed)]
        w = windows[fold]
        own = chosen.get("metrics") or {}
        base: dict[str, Any] = {
            **per_seed[seed],
            "sharpe": own.get("sharpe"),
            "n_bars": own.get("n_bars"),
            "window_start": w["window_start"],
            "window_end": w["window_end"],
        }
        embargo = splitter_from_config(cfg.cv).embargo_bars(int(folds.get("samples") or 0))
        run_backtest = backtester if backtester is not None else live_backtester(bars_path)

        def compare_with(champ: Version | None) -> tuple[Comparison, int | None]:
            if champ is None or not cfg.registry.must_beat_champion:
                return Comparison(candidate=base), None
            train_end = (champ.manifest.get("extra") or {}).get("train_end")
            if not train_end:
                return Comparison(
                    candidate=base,
                    refusal=f"cannot compare with champion {champ.version}: its manifest has "
                    "no extra.train_end, so no window free of its training data can be placed",
                ), None
            cw = comparison_window(
                _underlying_stamps(bars_path, cfg),
                w["last_block"],
                str(train_end),
                embargo_bars=embargo,
                min_bars=sized(cfg.registry.min_compare_bars, "registry.min_compare_bars"),
            )
            if cw.reason is not None or cw.start is None or cw.end is None:
                return Comparison(
                    candidate=base,
                    refusal=f"cannot compare with champion {champ.version}: {cw.reason}",
                ), cw.n_bars
            window = {"window_start": cw.start, "window_end": cw.end}
            try:
                cand_m = run_backtest(reg, candidate_id, cw.start, cw.end)
                champ_m = run_backtest(reg, champ.version, cw.start, cw.end)
            except SentioError as err:
                return Comparison(
                    candidate=base,
                    refusal=f"cannot re-evaluate on {cw.start}..{cw.end}: {err}",
                    window=(cw.start, cw.end),
                ), cw.n_bars
            candidate = {
                **base,
                "sharpe": cand_m.get("sharpe"),
                "sharpe_own_window": own.get("sharpe"),
                "n_bars": cand_m.get("n_bars"),
                **window,
            }
            return Comparison(
                candidate=candidate,
                champion={**champ_m, **window},
                window=(cw.start, cw.end),
            ), cw.n_bars

        # The gate runs under the registry lock against the champion read there. The
        # backtests are done once per champion: first outside the lock for the champion
        # read now (so that the lock is not held through them), again under the lock only
        # if another process changed the champion in between.
        memo: dict[str | None, tuple[Comparison, int | None]] = {}

        def evaluate(champ: Version | None) -> Comparison:
            key = champ.version if champ is not None else None
            if key not in memo:
                memo[key] = compare_with(champ)
            return memo[key][0]

        current = reg.champion_version()
        if current is not None and current.version != candidate_id:
            evaluate(current)
        decision = reg.promote_if_passes(
            candidate_id, cfg.registry, reason=f"nightly run {run_name}", evaluate=evaluate
        )
        after = reg.champion()
        comp = decision.comparison
        summary.update(
            candidate=candidate_id,
            candidate_fold=fold,
            candidate_seed=seed,
            champion_before=decision.champion,
            champion_after=after["version"] if after else None,
            promoted=decision.promote,
            reasons=list(decision.reasons),
            checks=list(decision.checks),
            candidate_metrics=comp.candidate if comp is not None else base,
            champion_metrics=comp.champion if comp is not None else None,
            compare_window=list(comp.window) if comp is not None and comp.window else None,
            compare_bars=memo[decision.champion][1] if decision.champion in memo else None,
        )
    path = out / DECISION_FILE
    summary["output"] = str(path)
    write_json_atomic(path, summary)
    return summary
