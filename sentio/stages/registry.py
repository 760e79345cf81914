"""The registry stage: register every trained model, gate one candidate, say why.

Not cached (it reads the mutable registry), so it has no key: an edit here changes no
other stage's output and invalidates no trained model (``tests/test_stage_keys.py``). It
is idempotent instead. The steps, in the order :func:`registry_stage` runs them:

**Registration** (:func:`register_runs`). Every (fold, seed) run becomes a version
through :meth:`sentio.registry.Registry.register_once`: a version with the same
``extra.train_key`` and model sha256 is reused, so a second run with unchanged inputs
creates no version. A version holds ``model.zip``, ``config.yaml`` (the full
configuration the model was trained with, from its train folder), ``normaliser.json``
(the fold's normaliser, with ``features.normalisation = "train_fit"``) and
``regime_model.json`` (the fold's regime model, with regimes enabled). ``extra``:
``fold``, ``seed``, ``train_key``, ``run``, ``train_start`` / ``train_end`` (first / last
bar of the fold's training ranges), ``window_start`` / ``window_end`` (the fold's
out-of-sample window) and ``feature_columns``. Metrics: the run's out-of-sample metrics,
``window_start`` / ``window_end`` and ``dsr`` (the DSR of the seed's stitched returns,
as the report stored it: :func:`seed_gate_metrics`). The recorded ``code_version`` is
the training's (``stage_modules("train")``): the code that made the model.

**The candidate** (:func:`choose_candidate`): the fold whose test window ends last, the
seed with the best stitched Sharpe. Its gate metrics (:func:`candidate_metrics`): ``dsr``
and ``max_drawdown`` of the seed's stitched out-of-sample returns; ``sharpe`` on the
comparison window.

**The comparison without leakage** (:class:`ChampionComparison`). Without a champion (or
with ``registry.must_beat_champion = false``) the gate checks DSR and drawdown only (the
recorded ``sharpe`` is the candidate's own over its fold's window). Otherwise the window
is the last test block of the candidate's fold restricted to bars strictly after the
champion's ``extra.train_end`` plus the folds' embargo (``cv.embargo_bars``, or
``ceil(cv.embargo_fraction x samples)``): :func:`comparison_window`. With fewer than
``registry.min_compare_bars`` clean bars (or a champion without ``train_end``, or one
that cannot be rebuilt on this run's bars) the candidate is not promoted and the reason
gives the numbers. Otherwise the candidate AND the champion are backtested on that window
of this run's bars by a :data:`Backtester` (default :func:`live_backtester`) and
:func:`sentio.registry.gate` compares their Sharpe ratios on the same ``window_start`` /
``window_end``. The champion is read, gated and replaced within one registry lock
(:meth:`~sentio.registry.Registry.promote_if_passes`, compare-and-swap): the comparison
is prepared outside the lock for the champion of the moment and reused under the lock if
that is still the champion; if another process changed it meanwhile, the new champion is
compared under the lock.

**The decision** (:func:`decision_summary`), written to ``decision.json``.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from sentio.config import SentioConfig, sized, write_config
from sentio.drift import REFERENCE_BACKTEST, TRAINING_REGIMES, session_regime_counts
from sentio.errors import DataError, SentioError
from sentio.io import code_version, sha256_file, write_feather_atomic, write_json_atomic
from sentio.registry import Comparison, Registry, default_root
from sentio.stages.common import config_for_data, index_file, load_folds, stage_modules
from sentio.times import iso_offset, utc64

if TYPE_CHECKING:
    from sentio.registry import GateDecision, Version

DECISION_FILE = "decision.json"

Backtester = Callable[["Registry", str, str, str], dict[str, Any]]
"""``(registry, version_id, start, end) -> metrics``: a registered version backtested on
one block of this run's bars with timestamps in ``[start, end]`` (ISO-8601 UTC); the
metrics are :func:`sentio.evaluation.metrics_to_json` of the result plus ``n_bars``."""


# --------------------------------------------------------------------------------------
# the report's figures and the folds' windows


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
            "train_start": iso_offset(train[0]["start"]) if train else None,
            "train_end": iso_offset(train[-1]["end"]) if train else None,
            "window_start": iso_offset(test[0]["start"]),
            "window_end": iso_offset(test[-1]["end"]),
            "last_block": (iso_offset(test[-1]["start"]), iso_offset(test[-1]["end"])),
        }
    return out


def _finite(value: Any) -> float | None:
    """``value`` as a float when it is a finite number, else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def seed_gate_metrics(report_metrics: dict[str, Any], seed: int) -> dict[str, Any]:
    """A seed's stitched out-of-sample figures from the report's ``metrics.json``.

    ``dsr``: the deflated Sharpe ratio the report stored for the seed
    (``seeds.<seed>.dsr``, computed once by :func:`sentio.report.build_report` from the
    seed's stitched per-bar Sharpe, skewness and raw kurtosis, with the report's
    ``n_trials`` and Sharpe variance; nothing is recomputed here), None when missing or
    not finite; ``max_drawdown``, ``sharpe_stitched`` and ``n_bars_stitched``: the
    stitched series'; ``n_trials``: the report's.
    """
    entry = (report_metrics.get("seeds") or {}).get(str(seed)) or {}
    head = report_metrics.get("headline") or {}
    metrics = entry.get("metrics") or {}
    return {
        "dsr": _finite(entry.get("dsr")),
        "max_drawdown": metrics.get("max_drawdown"),
        "sharpe_stitched": metrics.get("sharpe"),
        "n_bars_stitched": metrics.get("n_bars"),
        "n_trials": int(head.get("n_trials") or 1),
    }


# --------------------------------------------------------------------------------------
# registration


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


@dataclass
class VersionFiles:
    """Where the files of a run's version come from, besides its model.

    ``folds`` is the ``folds.json`` at ``folds_path`` (its entries name the normalisers);
    ``regime_models``: fold -> the regime model file; ``regime_probs``: fold -> its filtered
    probabilities (the regimes stage's ``regimes.feather``). A run whose train folder holds
    no ``config.yaml`` gets ``out/config.yaml``, written once from ``cfg``.
    """

    cfg: SentioConfig
    out: Path
    folds_path: Path
    folds: dict[str, Any]
    regime_models: dict[int, str]
    regime_probs: dict[int, str] = field(default_factory=dict)
    _fallback: Path | None = field(default=None, init=False)

    @classmethod
    def read(
        cls,
        cfg: SentioConfig,
        out: Path,
        folds_path: str | Path,
        folds: dict[str, Any],
        regimes_path: str | Path | None,
    ) -> VersionFiles:
        """The files of a run's folds and regimes (``regimes_path`` None: no regime models)."""
        regime_models: dict[int, str] = {}
        regime_probs: dict[int, str] = {}
        if regimes_path is not None:
            for e in json.loads(Path(regimes_path).read_text())["folds"]:
                regime_models[int(e["fold"])] = str(index_file(regimes_path, e["model"]))
                if e.get("output"):
                    regime_probs[int(e["fold"])] = str(index_file(regimes_path, e["output"]))
        return cls(cfg, out, Path(folds_path), folds, regime_models, regime_probs)

    def config(self, run: dict[str, Any]) -> Path:
        """The configuration the run was trained with (its train folder's ``config.yaml``)."""
        config_file = Path(run["output"]).parent / "config.yaml"
        if config_file.is_file():
            return config_file
        if self._fallback is None:
            self._fallback = write_config(self.out / "config.yaml", self.cfg)
        return self._fallback

    def extra(self, fold: int, run: dict[str, Any] | None = None) -> dict[str, str]:
        """``normaliser.json`` and ``regime_model.json`` of the fold, where they are used
        (the normaliser of ``run``'s training folder when it has one: a warm start's)."""
        entry = {int(f["fold"]): f for f in self.folds["folds"]}[fold]
        files: dict[str, str] = {}
        own = None if run is None else Path(run["output"]).parent / "normaliser.json"
        normaliser = (
            str(own)
            if own is not None and own.is_file()
            else index_file(self.folds_path, entry.get("normaliser"))
        )
        if self.cfg.features.normalisation == "train_fit" and normaliser:
            files["normaliser.json"] = str(normaliser)
        if self.cfg.regimes.enabled and fold in self.regime_models:
            files["regime_model.json"] = self.regime_models[fold]
        return files

    def drift_reference(self, run: dict[str, Any]) -> dict[str, str]:
        """The files live drift checks compare with (:mod:`sentio.drift`): the run's
        out-of-sample backtest and, with regimes, the per-session regime counts of the
        fold's training ranges (written under ``out``)."""
        fold = int(run["fold"])
        files = {REFERENCE_BACKTEST: str(run["output"])}
        probs = self.regime_probs.get(fold) if self.cfg.regimes.enabled else None
        if probs is not None:
            frame = pl.read_ipc(probs, columns=["timestamp", "regime"])
            entry = {int(f["fold"]): f for f in self.folds["folds"]}[fold]
            ts = frame["timestamp"].dt.replace_time_zone(None).to_numpy()
            keep = np.zeros(ts.shape[0], dtype=bool)
            for r in entry["train_ranges"]:  # not the test blocks between them (k-fold)
                keep |= (ts >= utc64(r["start"])) & (ts <= utc64(r["end"]))
            inside = frame.filter(pl.Series(keep))
            k = sum(1 for c in pl.read_ipc_schema(probs) if c.startswith("p_regime_"))
            counts = session_regime_counts(inside["timestamp"], inside["regime"], k)
            path = self.out / f"fold_{fold}_{TRAINING_REGIMES}"
            files[TRAINING_REGIMES] = str(write_feather_atomic(path, counts))
        return files


def register_runs(
    registry: Registry,
    runs: Sequence[dict[str, Any]],
    files: VersionFiles,
    windows: dict[int, dict[str, Any]],
    per_seed: dict[int, dict[str, Any]],
    *,
    feature_columns: Sequence[str],
    data_hashes: dict[str, str],
    run_name: str,
) -> list[dict[str, Any]]:
    """Register every run as a version (idempotent); ``fold``, ``seed``, ``version`` and
    ``new`` (created now) per run, by fold then seed.

    Every model file is checked first (:func:`_check_model_file`): a mismatch registers
    nothing. ``per_seed``: :func:`seed_gate_metrics` by seed (the ``dsr`` recorded).
    """
    for run in runs:
        _check_model_file(run)
    code = code_version(*stage_modules("train"))
    versions: list[dict[str, Any]] = []
    for run in sorted(runs, key=lambda r: (int(r["fold"]), int(r["seed"]))):
        fold, seed = int(run["fold"]), int(run["seed"])
        w = windows.get(fold)
        if w is None:
            raise DataError(f"{files.folds_path}: no test window for fold {fold}")
        span = {"window_start": w["window_start"], "window_end": w["window_end"]}
        metrics = {**(run.get("metrics") or {}), **span}
        if per_seed[seed]["dsr"] is not None:
            metrics["dsr"] = per_seed[seed]["dsr"]
        version, created = registry.register_once(
            run["model"],
            files.config(run),
            metrics,
            data_hashes=data_hashes,
            code_version=code,
            algo=files.cfg.agent.algo,
            extra={
                "fold": fold,
                "seed": seed,
                "train_key": run["key"],
                "run": run_name,
                "train_start": w["train_start"],
                "train_end": w["train_end"],
                **span,
                "feature_columns": list(feature_columns),
            },
            extra_files={**files.extra(fold, run), **files.drift_reference(run)},
        )
        versions.append({"fold": fold, "seed": seed, "version": version.version, "new": created})
    return versions


# --------------------------------------------------------------------------------------
# the candidate


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


@dataclass(frozen=True)
class Candidate:
    """The version gated: its ``fold`` and ``seed``, its own out-of-sample ``metrics``
    (the run's), its fold's ``window`` (:func:`fold_windows`) and its ``gate_metrics``
    (:func:`candidate_metrics`)."""

    version: str
    fold: int
    seed: int
    metrics: dict[str, Any]
    window: dict[str, Any]
    gate_metrics: dict[str, Any]

    @classmethod
    def of(
        cls,
        run: dict[str, Any],
        versions: list[dict[str, Any]],
        per_seed: dict[int, dict[str, Any]],
        windows: dict[int, dict[str, Any]],
    ) -> Candidate:
        """The candidate of a chosen run: its version among ``versions``
        (:func:`register_runs`), its seed's figures (:func:`seed_gate_metrics`)."""
        fold, seed = int(run["fold"]), int(run["seed"])
        own = run.get("metrics") or {}
        return cls(
            version=next(v["version"] for v in versions if (v["fold"], v["seed"]) == (fold, seed)),
            fold=fold,
            seed=seed,
            metrics=own,
            window=windows[fold],
            gate_metrics=candidate_metrics(own, per_seed[seed], windows[fold]),
        )


def candidate_metrics(
    own: dict[str, Any], seed_metrics: dict[str, Any], window: dict[str, Any]
) -> dict[str, Any]:
    """The candidate's gate metrics before any comparison: the seed's stitched figures
    (:func:`seed_gate_metrics`) with the run's own ``sharpe`` and ``n_bars`` on its fold's
    out-of-sample window."""
    return {
        **seed_metrics,
        "sharpe": own.get("sharpe"),
        "n_bars": own.get("n_bars"),
        "window_start": window["window_start"],
        "window_end": window["window_end"],
    }


# --------------------------------------------------------------------------------------
# the comparison with the champion


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
    ws, we, te = (utc64(x) for x in (*window, champion_train_end))
    after = stamps[stamps > te]
    clean_from = after[embargo_bars] if after.size > embargo_bars else None
    if clean_from is None:
        clean = stamps[:0]
    else:
        clean = stamps[(stamps >= ws) & (stamps <= we) & (stamps >= clean_from)]
    n = int(clean.size)
    start = iso_offset(clean[0]) if n else None
    end = iso_offset(clean[-1]) if n else None
    clean_text = iso_offset(clean_from) if clean_from is not None else None
    reason = None
    if n < min_bars:
        reason = (
            f"only {n} leakage-free bars to compare on: the candidate's window "
            f"{iso_offset(window[0])}..{iso_offset(window[1])} after the champion's training "
            f"end {iso_offset(champion_train_end)} plus an embargo of {embargo_bars} bars "
            f"(clean from {clean_text or 'beyond the data'}); "
            f"registry.min_compare_bars = {min_bars}"
        )
    return CompareWindow(start, end, n, clean_text, reason)


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


class ChampionComparison:
    """The candidate compared with a champion on a leakage-free window, once per champion.

    Called with the champion of the moment (or None), it returns the
    :class:`~sentio.registry.Comparison` for :func:`sentio.registry.gate`: the
    ``evaluate`` callback of :meth:`~sentio.registry.Registry.promote_if_passes`. The
    backtests are done once per champion: call it first outside the lock for the champion
    read then (so that the lock is not held through them); under the lock the result is
    reused unless another process changed the champion in between.
    """

    def __init__(
        self,
        registry: Registry,
        candidate: Candidate,
        cfg: SentioConfig,
        *,
        bars_path: str | Path,
        embargo_bars: int,
        backtester: Backtester,
    ) -> None:
        self.registry = registry
        self.candidate = candidate
        self.cfg = cfg
        self.bars_path = bars_path
        self.embargo_bars = embargo_bars
        self.backtester = backtester
        self._done: dict[str | None, tuple[Comparison, int | None]] = {}

    def __call__(self, champion: Version | None) -> Comparison:
        """The comparison with ``champion`` (computed on the first call for it)."""
        key = champion.version if champion is not None else None
        if key not in self._done:
            self._done[key] = self._compare(champion)
        return self._done[key][0]

    def clean_bars(self, champion: str | None) -> int | None:
        """The leakage-free bars found for the comparison with ``champion`` (None: no
        window was placed, or it was never compared)."""
        done = self._done.get(champion)
        return done[1] if done is not None else None

    def _refusal(self, text: str, window: tuple[str, str] | None = None) -> Comparison:
        return Comparison(candidate=self.candidate.gate_metrics, refusal=text, window=window)

    def _compare(self, champ: Version | None) -> tuple[Comparison, int | None]:
        base = self.candidate.gate_metrics
        if champ is None or not self.cfg.registry.must_beat_champion:
            return Comparison(candidate=base), None
        train_end = (champ.manifest.get("extra") or {}).get("train_end")
        if not train_end:
            return self._refusal(
                f"cannot compare with champion {champ.version}: its manifest has "
                "no extra.train_end, so no window free of its training data can be placed"
            ), None
        cw = comparison_window(
            _underlying_stamps(self.bars_path, self.cfg),
            self.candidate.window["last_block"],
            str(train_end),
            embargo_bars=self.embargo_bars,
            min_bars=sized(self.cfg.registry.min_compare_bars, "registry.min_compare_bars"),
        )
        if cw.reason is not None or cw.start is None or cw.end is None:
            text = f"cannot compare with champion {champ.version}: {cw.reason}"
            return self._refusal(text), cw.n_bars
        return self._backtest(champ, cw.start, cw.end), cw.n_bars

    def _backtest(self, champ: Version, start: str, end: str) -> Comparison:
        """The candidate and the champion backtested on ``start..end``, side by side."""
        try:
            cand_m = self.backtester(self.registry, self.candidate.version, start, end)
            champ_m = self.backtester(self.registry, champ.version, start, end)
        except SentioError as err:
            return self._refusal(f"cannot re-evaluate on {start}..{end}: {err}", (start, end))
        window = {"window_start": start, "window_end": end}
        candidate = {
            **self.candidate.gate_metrics,
            "sharpe": cand_m.get("sharpe"),
            "sharpe_own_window": self.candidate.metrics.get("sharpe"),
            "n_bars": cand_m.get("n_bars"),
            **window,
        }
        return Comparison(candidate=candidate, champion={**champ_m, **window}, window=(start, end))


def gate_candidate(
    registry: Registry,
    candidate: Candidate,
    cfg: SentioConfig,
    *,
    samples: int,
    bars_path: str | Path,
    backtester: Backtester,
    run_name: str,
) -> tuple[GateDecision, int | None]:
    """Gate ``candidate`` against the champion and promote it if it passes.

    The comparison (:class:`ChampionComparison`, with the folds' embargo for ``samples``
    rows) is prepared for the champion of now outside the lock, then
    :meth:`~sentio.registry.Registry.promote_if_passes` gates it under the lock. Returns
    the decision and the leakage-free bars of the comparison made (None: none placed).
    """
    from sentio.cv import splitter_from_config

    compare = ChampionComparison(
        registry,
        candidate,
        cfg,
        bars_path=bars_path,
        embargo_bars=splitter_from_config(cfg.cv).embargo_bars(samples),
        backtester=backtester,
    )
    current = registry.champion_version()
    if current is not None and current.version != candidate.version:
        compare(current)  # the backtests outside the lock, for the champion of now
    decision = registry.promote_if_passes(
        candidate.version, cfg.registry, reason=f"nightly run {run_name}", evaluate=compare
    )
    return decision, compare.clean_bars(decision.champion)


# --------------------------------------------------------------------------------------
# the decision


def decision_summary(
    registry: Registry,
    versions: list[dict[str, Any]],
    candidate: Candidate | None = None,
    decision: GateDecision | None = None,
    compare_bars: int | None = None,
) -> dict[str, Any]:
    """The registry stage's summary (``decision.json`` without ``output``).

    ``registry``, ``candidate`` / ``candidate_fold`` / ``candidate_seed``, ``registered``,
    ``new_versions``, ``versions``, ``champion_before`` / ``champion_after``,
    ``promoted``, ``reasons``, ``checks``, ``candidate_metrics``, ``champion_metrics``,
    ``compare_window`` and ``compare_bars``. Without a candidate (or decision) the
    champion is the registry's current one and the reason says there was nothing to gate.
    """
    pointer = registry.champion()
    champion = pointer["version"] if pointer else None
    summary: dict[str, Any] = {
        "registry": str(registry.root),
        "candidate": None,
        "candidate_fold": None,
        "candidate_seed": None,
        "registered": [v["version"] for v in versions],
        "new_versions": sum(1 for v in versions if v["new"]),
        "versions": versions,
        "champion_before": champion,
        "champion_after": champion,
        "promoted": False,
        "reasons": ["no trained model with an out-of-sample window"],
        "checks": [],
        "candidate_metrics": None,
        "champion_metrics": None,
        "compare_window": None,
        "compare_bars": None,
    }
    if candidate is None or decision is None:
        return summary
    comp = decision.comparison
    summary.update(
        candidate=candidate.version,
        candidate_fold=candidate.fold,
        candidate_seed=candidate.seed,
        champion_before=decision.champion,
        promoted=decision.promote,
        reasons=list(decision.reasons),
        checks=list(decision.checks),
        candidate_metrics=comp.candidate if comp is not None else candidate.gate_metrics,
        champion_metrics=comp.champion if comp is not None else None,
        compare_window=list(comp.window) if comp is not None and comp.window else None,
        compare_bars=compare_bars,
    )
    return summary


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

    The steps are the module's: :func:`register_runs`, :func:`choose_candidate`,
    :func:`gate_candidate` (a :class:`ChampionComparison` under
    :meth:`~sentio.registry.Registry.promote_if_passes`), :func:`decision_summary`. ``report`` is the report stage's summary (its
    ``metrics.json`` holds each seed's stitched figures and DSR); ``registry`` defaults to
    the configuration's, ``backtester`` to :func:`live_backtester` on ``bars_path``.

    Writes ``out_dir/decision.json`` and returns it: :func:`decision_summary` with
    ``output`` (the file's path). Not cached: it reads the mutable registry; it is
    idempotent instead.
    """
    cfg = config_for_data(cfg, bars_path)  # 'auto' bar counts sized by the data
    reg = registry if registry is not None else Registry(default_root(cfg).expanduser().resolve())
    out = Path(out_dir)
    folds = load_folds(folds_path)
    windows = fold_windows(folds)
    report_metrics = json.loads(Path(report["paths"]["metrics"]).read_text())
    seeds = sorted({int(r["seed"]) for r in runs})
    per_seed = {s: seed_gate_metrics(report_metrics, s) for s in seeds}
    files = VersionFiles.read(cfg, out, folds_path, folds, regimes_path)
    versions = register_runs(
        reg,
        runs,
        files,
        windows,
        per_seed,
        feature_columns=feature_columns,
        data_hashes=data_hashes,
        run_name=run_name,
    )
    seed_sharpe = {s: m["sharpe_stitched"] for s, m in per_seed.items()}
    chosen = choose_candidate(runs, seed_sharpe, windows)
    if chosen is None:
        summary = decision_summary(reg, versions)
    else:
        candidate = Candidate.of(chosen, versions, per_seed, windows)
        decision, compare_bars = gate_candidate(
            reg,
            candidate,
            cfg,
            samples=int(folds.get("samples") or 0),
            bars_path=bars_path,
            backtester=backtester if backtester is not None else live_backtester(bars_path),
            run_name=run_name,
        )
        summary = decision_summary(reg, versions, candidate, decision, compare_bars)
    path = out / DECISION_FILE
    summary["output"] = str(path)
    write_json_atomic(path, summary)
    return summary
