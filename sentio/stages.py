"""Pipeline stages as plain functions: paths and small summaries in, paths and summaries out.

Each stage writes content-addressed outputs under ``workdir/<stage>/<key>/`` where the
key hashes the content of the inputs, the configuration sections the stage reads and
the version of the code that does the work. The Prefect tasks in ``tasks/`` call these
functions and use the same keys as their cache keys; without Prefect, a stage whose
outputs already exist and verify is not recomputed either.
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

from sentio.config import SentioConfig
from sentio.data import readers
from sentio.data.ingest import check_contracts, ingest_files
from sentio.data.leverage import ensure_universe
from sentio.data.provenance import provenance_digest
from sentio.data.schema import session_date
from sentio.errors import ContractError, DataError, SentioError
from sentio.io import (
    code_version,
    combine_hashes,
    hash_json,
    sha256_file,
    write_feather_atomic,
    write_json_atomic,
)

if TYPE_CHECKING:
    from sentio.registry import Registry

STAGE_SUMMARY = "summary.json"
# Files Sentio writes beside bar files; a folder given as input skips them.
SIDECAR_SUFFIXES = (".quarantine.csv", ".regimes.feather")


def resolve_inputs(data_path: str | Path | Sequence[str | Path]) -> list[Path]:
    """Expand a data path into input files.

    Accepts one file, a comma-separated list of files, a folder (every supported bar
    file in it, sorted by name) or a sequence of those.
    """
    if isinstance(data_path, str | Path):
        items: list[str | Path] = [s.strip() for s in str(data_path).split(",") if s.strip()]
    else:
        items = list(data_path)
    files: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(
                f
                for f in p.iterdir()
                if f.is_file()
                and f.suffix.lower() in readers.SUPPORTED
                and not f.name.endswith(SIDECAR_SUFFIXES)
            )
            if not found:
                raise DataError(f"{p}: folder holds no bar files ({', '.join(readers.SUPPORTED)})")
            files.extend(found)
        elif not p.exists():
            raise DataError(f"{p}: file not found")
        else:
            files.append(p)
    if not files:
        raise DataError("no input files given")
    return files


INGEST_MODULES = (
    "sentio.stages",
    "sentio.data.ingest",
    "sentio.data.readers",
    "sentio.data.timestamps",
    "sentio.data.schema",
    "sentio.data.leverage",
    "sentio.data.provenance",
    "sentio.calendar",
    "data_contracts.bars",
    "data_contracts.gx_bars",
)


def ingest_code_version() -> str:
    """Version of every module whose change would change an ingest output."""
    return code_version(*INGEST_MODULES)


def ingest_key(inputs: Sequence[str | Path], cfg: SentioConfig) -> str:
    """Cache key of the ingest stage: input CONTENT, ingest/universe settings, code version."""
    files = resolve_inputs(inputs)
    return _ingest_key(files, [sha256_file(f) for f in files], cfg)


def _ingest_key(files: Sequence[Path], hashes: Sequence[str], cfg: SentioConfig) -> str:
    # Every file in order (a file given twice counts twice), its provenance sidecar (which
    # decides what the report says about derived prices), the settings and the code.
    return combine_hashes(
        [
            *hashes,
            *(provenance_digest(f) for f in files),
            cfg.hash("ingest", "universe"),
            ingest_code_version(),
        ]
    )[:32]


def _cached_summary(folder: Path) -> dict[str, Any] | None:
    path = folder / STAGE_SUMMARY
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text())
        if sha256_file(summary["output"]) != summary["output_sha256"]:
            return None
        for path, digest in summary.get("files", {}).items():
            if sha256_file(path) != digest:
                return None
    except (OSError, ValueError, KeyError):
        return None
    return summary


def ingest_stage(
    inputs: Sequence[str | Path], cfg: SentioConfig, workdir: str | Path
) -> dict[str, Any]:
    """Ingest the input files and complete the universe; return a small JSON-able summary.

    Outputs in ``workdir/ingest/<key>/``: ``ingested.feather`` with the ingest report
    (``ingested.ingest.json``), quarantine file, GX results and configuration beside it.
    When the input lacks the universe's leveraged ETFs they are derived from the
    underlying with a daily reset into ``bars.feather``, which passes the same pandera and
    GX contracts (``bars.gx.*``). The summary's ``output`` names the file later stages
    read, and ``derived_symbols`` every symbol whose prices are derived (here, or upstream
    by ``sentio synth`` / ``sentio sample`` according to their provenance sidecar).
    """
    files = resolve_inputs(inputs)
    hashes = [sha256_file(f) for f in files]
    key = _ingest_key(files, hashes, cfg)
    folder = Path(workdir) / "ingest" / key
    cached = _cached_summary(folder)
    if cached is not None:
        return cached

    result = ingest_files(
        files, folder / "ingested.feather", cfg, input_sha256=dict(zip(files, hashes, strict=True))
    )
    bars = pl.read_ipc(result.output)
    try:
        complete, derived = ensure_universe(bars, cfg.universe)
    except DataError as err:
        raise DataError(f"{', '.join(map(str, files))}: {err}") from None
    contract = result.report["contract"]
    out = result.output
    if derived:
        # The completed universe is a new frame: it passes the same contracts.
        out = folder / "bars.feather"
        contract = check_contracts(complete, out, sorted(complete["symbol"].unique().to_list()))
        write_feather_atomic(out, complete)
    report = result.report
    summary: dict[str, Any] = {
        "key": key,
        "output": str(out),
        "output_sha256": sha256_file(out),
        "report": str(result.outputs.report),
        "quarantine": report["quarantine"],
        "gx_json": contract["gx_json"],
        "gx_html": contract["gx_html"],
        "gx_success": contract["gx_success"],
        "config": str(result.outputs.config),
        "inputs": {info["path"]: info["sha256"] for info in report["inputs"]},
        "rows_read": report["rows_read"],
        "rows_kept": report["rows_kept"],
        "rows_dropped_outside_regular_hours": report["rows_dropped_outside_regular_hours"],
        "rows_dropped_duplicates": report["rows_dropped_duplicates"],
        "rows_quarantined": report["rows_quarantined"],
        "quarantined_by_reason": report["quarantined_by_reason"],
        "symbols": sorted(complete["symbol"].unique().to_list()),
        # Derived here from the underlying, or upstream (a provenance sidecar, e.g. synth).
        "derived_symbols": sorted(set(derived) | set(report["derived_symbols"])),
        "bar_seconds": report["bar_seconds"],
        "frequency": report["frequency"],
        "start": min(s["start"] for s in report["symbols"].values()),
        "end": max(s["end"] for s in report["symbols"].values()),
        "sessions": max(s["sessions"] for s in report["symbols"].values()),
        "incomplete_sessions": report["sessions_rejected_incomplete"],
        "sessions_with_missing_bars": sum(
            s["sessions_with_missing_bars"] for s in report["symbols"].values()
        ),
    }
    write_json_atomic(folder / STAGE_SUMMARY, summary)
    return summary


# --------------------------------------------------------------------------- features


def features_key(bars_path: str | Path, cfg: SentioConfig) -> str:
    """Cache key of the features stage: bars CONTENT, features/universe settings, code."""
    from sentio.features import features_code_version

    parts = [sha256_file(bars_path), cfg.hash("features", "universe"), features_code_version()]
    if cfg.features.exogenous_path is not None:
        parts.append(sha256_file(cfg.features.exogenous_path))
    return combine_hashes(parts)[:32]


def features_stage(bars_path: str | Path, cfg: SentioConfig, workdir: str | Path) -> dict[str, Any]:
    """Build the causal feature frame of the underlying; content-addressed and validated.

    Output ``workdir/features/<key>/features.feather``: ``timestamp`` plus Float32
    features, warm-up rows dropped, normalised causally (``rolling``/``expanding``). With
    ``features.normalisation = "train_fit"`` the values are left raw here: the folds stage
    fits one normaliser per fold on that fold's (purged) training rows only.
    """
    from data_contracts import ContractViolation
    from data_contracts.features import validate_features
    from sentio.features import build_features, feature_summary

    key = features_key(bars_path, cfg)
    folder = Path(workdir) / "features" / key
    cached = _cached_summary(folder)
    if cached is not None:
        return cached
    frame = build_features(pl.read_ipc(bars_path), cfg)
    if frame.height == 0:
        raise DataError(
            f"{bars_path}: too few bars for the feature warm-up (the longest indicator window "
            f"plus features.norm_window = {cfg.features.norm_window}); give more data or shorter windows"
        )
    out = folder / "features.feather"
    try:
        validate_features(frame, str(out))
    except ContractViolation as err:
        raise ContractError(str(err)) from None
    write_feather_atomic(out, frame)
    columns = [c for c in frame.columns if c != "timestamp"]
    summary: dict[str, Any] = {
        "key": key,
        "output": str(out),
        "output_sha256": sha256_file(out),
        "bars": str(bars_path),
        "rows": frame.height,
        "columns": columns,
        "n_features": len(columns),
        "start": frame["timestamp"].min().isoformat() if frame.height else None,  # type: ignore[union-attr]
        "end": frame["timestamp"].max().isoformat() if frame.height else None,  # type: ignore[union-attr]
        "normalisation": cfg.features.normalisation,
        "table": feature_summary(frame),
    }
    write_json_atomic(folder / STAGE_SUMMARY, summary)
    return summary


# --------------------------------------------------------------------------- folds

FOLDS_MODULES = ("sentio.stages", "sentio.cv", "sentio.cv.splitters", "sentio.features.normalise")


def folds_key(features_path: str | Path, cfg: SentioConfig) -> str:
    """Cache key of the folds stage: feature frame CONTENT, ``cv`` settings, code.

    With ``features.normalisation = "train_fit"`` the stage also fits the per-fold
    normalisers, so the feature settings are part of the key then.
    """
    parts = [sha256_file(features_path), cfg.hash("cv"), code_version(*FOLDS_MODULES)]
    if cfg.features.normalisation == "train_fit":
        parts.append(cfg.hash("features"))
    return combine_hashes(parts)[:32]


def _ranges(runs: Sequence[tuple[int, int]], stamps: Sequence[dt.datetime]) -> list[dict[str, Any]]:
    """Half-open row runs with the timestamps of their first and last rows."""
    return [
        {
            "start_row": int(a),
            "stop_row": int(b),
            "start": stamps[a].isoformat(),
            "end": stamps[b - 1].isoformat(),
        }
        for a, b in runs
    ]


def folds_stage(
    features_path: str | Path, cfg: SentioConfig, workdir: str | Path
) -> dict[str, Any]:
    """Cut the feature rows into purged, embargoed folds (``cv`` settings).

    Samples are the rows of the feature frame, grouped by New York session so that fold
    edges fall on session boundaries; a sample's span is its own bar plus ``cv.label_bars``
    bars (the fill of the order decided at its close). Output ``workdir/folds/<key>/``:
    ``folds.json`` (method, settings, per fold its training ranges and test blocks as row
    ranges and timestamps, purged and embargoed counts; for ``cpcv`` the backtest paths)
    and, with ``features.normalisation = "train_fit"``, ``fold_<j>/normaliser.json``
    fitted on fold j's training rows only.
    """
    from sentio.cv import CombinatorialPurgedCV, splitter_from_config
    from sentio.features import fit_normaliser

    key = folds_key(features_path, cfg)
    folder = Path(workdir) / "folds" / key
    cached = _cached_summary(folder)
    if cached is not None:
        return cached
    frame = pl.read_ipc(features_path)
    stamps = frame["timestamp"]
    groups = stamps.to_frame("t").select(session_date(pl.col("t"))).to_series().to_numpy()
    splitter = splitter_from_config(cfg.cv)
    try:
        folds = splitter.folds(frame.height, groups=groups)
    except SentioError as exc:
        raise type(exc)(
            f"folds over {frame.height} feature rows ({features_path}), cv.method = "
            f"{cfg.cv.method}: {exc}"
        ) from None
    ts = stamps.to_list()
    records: list[dict[str, Any]] = []
    for fold in folds:
        record: dict[str, Any] = {
            "fold": int(fold.index),
            "train_rows": int(fold.train.size),
            "test_rows": int(fold.test.size),
            "purged": int(fold.n_purged),
            "embargoed": int(fold.n_embargoed),
            "test_groups": [int(g) for g in np.atleast_1d(fold.test_groups)],
            "train_ranges": _ranges(fold.train_ranges(), ts),
            "test_blocks": _ranges(fold.test_blocks, ts),
            "normaliser": None,
        }
        if cfg.features.normalisation == "train_fit":
            params = fit_normaliser(frame, clip=cfg.features.norm_clip, rows=fold.train)
            record["normaliser"] = str(
                write_json_atomic(folder / f"fold_{fold.index}" / "normaliser.json", params)
            )
        records.append(record)
    paths = None
    if isinstance(splitter, CombinatorialPurgedCV):
        paths = [[[int(g), int(j)] for g, j in path] for path in splitter.paths()]
    out = write_json_atomic(
        folder / "folds.json",
        {
            "method": cfg.cv.method,
            "settings": cfg.cv.model_dump(mode="json"),
            "features": str(features_path),
            "samples": frame.height,
            "start": ts[0].isoformat(),
            "end": ts[-1].isoformat(),
            "folds": records,
            "paths": paths,
        },
    )
    summary: dict[str, Any] = {
        "key": key,
        "output": str(out),
        "output_sha256": sha256_file(out),
        "method": cfg.cv.method,
        "samples": frame.height,
        "n_folds": len(records),
        "n_paths": None if paths is None else len(paths),
        "folds": [
            {k: v for k, v in r.items() if k not in ("train_ranges",)}
            | {"n_train_ranges": len(r["train_ranges"])}
            for r in records
        ],
    }
    write_json_atomic(folder / STAGE_SUMMARY, summary)
    return summary


def load_folds(folds_path: str | Path) -> dict[str, Any]:
    """The ``folds.json`` written by :func:`folds_stage`."""
    try:
        return dict(json.loads(Path(folds_path).read_text()))
    except (OSError, ValueError) as exc:
        raise DataError(f"{folds_path}: cannot read the folds ({exc})") from None


# --------------------------------------------------------------------------- regimes


def regimes_key(bars_path: str | Path, folds_path: str | Path, cfg: SentioConfig) -> str:
    """Cache key of the regime stage: bars and folds CONTENT, regimes/universe settings, code."""
    from sentio.regimes import regimes_code_version

    return combine_hashes(
        [
            sha256_file(bars_path),
            sha256_file(folds_path),
            cfg.hash("regimes", "universe"),
            regimes_code_version(),
        ]
    )[:32]


def _utc64(iso: str) -> np.datetime64:
    """An ISO timestamp (timezone-aware) as a naive-UTC ``datetime64[us]``."""
    t = dt.datetime.fromisoformat(iso).astimezone(dt.UTC).replace(tzinfo=None)
    return np.datetime64(t, "us")


def regime_training_rows(
    stamps: np.ndarray, window_start: np.ndarray, fold: dict[str, Any]
) -> tuple[np.ndarray, int]:
    """Rows of the regime inputs a fold's model may be fitted on, and how many were purged.

    A row qualifies when its bar lies in one of the fold's training ranges and the bars
    its inputs are computed from (``window_start`` to its own bar) do not reach into any
    of the fold's test blocks: the first rows after a test block summarise bars of that
    block, and fitting on them would let the test period shape the model.

    Args:
        stamps: ``datetime64[us]`` (naive UTC) bar start of each regime-input row.
        window_start: start of the first bar in each row's input window, same dtype.
        fold: one entry of ``folds.json``'s ``folds``.
    """
    in_train = np.zeros(stamps.shape, dtype=bool)
    for r in fold["train_ranges"]:
        lo, hi = np.searchsorted(stamps, [_utc64(r["start"]), _utc64(r["end"])], side="left")
        hi += int(hi < stamps.size and stamps[hi] == _utc64(r["end"]))
        in_train[lo:hi] = True
    clean = in_train.copy()
    for b in fold["test_blocks"]:
        clean &= ~((window_start <= _utc64(b["end"])) & (stamps >= _utc64(b["start"])))
    return clean, int(in_train.sum() - clean.sum())


def regimes_stage(
    bars_path: str | Path, folds_path: str | Path, cfg: SentioConfig, workdir: str | Path
) -> dict[str, Any]:
    """Fit one regime model per fold on that fold's training ranges; filter every bar causally.

    Outputs in ``workdir/regimes/<key>/``: ``regimes.json`` (the per-fold index) and per
    fold ``fold_<j>/model.json`` (plain parameters), ``fold_<j>/regimes.feather``
    (timestamp, filtered probability of each regime, most likely regime) and
    ``fold_<j>/history.json`` (share, return, volatility, dwell times, transitions over
    the fold's training rows, its test rows and all rows). Each model sees the inputs of
    its fold's training rows only (see :func:`regime_training_rows`); the probabilities
    at every bar use data up to that bar only (forward filter).
    """
    from sentio.regimes import filter_probs, fit_regimes, regime_history, regime_observations

    key = regimes_key(bars_path, folds_path, cfg)
    folder = Path(workdir) / "regimes" / key
    cached = _cached_summary(folder)
    if cached is not None:
        return cached
    folds = load_folds(folds_path)
    bars = pl.read_ipc(bars_path)
    obs = regime_observations(bars, cfg)
    if obs.X.shape[0] == 0:
        raise DataError(
            f"{bars_path}: too few bars of {cfg.universe.underlying} for the regime inputs' "
            f"warm-up of {obs.warmup} bars (regimes.vol_window = {cfg.regimes.vol_window}); give more "
            "data or a shorter window"
        )
    under = bars.filter(pl.col("symbol") == cfg.universe.underlying).sort("timestamp")
    bar_stamps = under["timestamp"].dt.replace_time_zone(None).to_numpy().astype("datetime64[us]")
    stamps = bar_stamps[obs.warmup :]
    window_start = bar_stamps[: stamps.size]
    returns = (
        under.select(r=pl.col("close").log().diff())["r"].to_numpy()[obs.warmup :].astype(float)
    )
    k = cfg.regimes.n_states
    files: dict[str, str] = {}
    entries: list[dict[str, Any]] = []
    for fold in folds["folds"]:
        j = int(fold["fold"])
        sub = folder / f"fold_{j}"
        train, dropped = regime_training_rows(stamps, window_start, fold)
        if not train.any():
            raise DataError(
                f"fold {j}: no regime-input rows inside its training ranges (the regime inputs "
                f"start {obs.warmup} bars after the first bar); give more data or a shorter "
                "regimes.vol_window"
            )
        test = np.zeros_like(train)
        for b in fold["test_blocks"]:
            test |= (stamps >= _utc64(b["start"])) & (stamps <= _utc64(b["end"]))
        model = fit_regimes(obs.X[train], cfg.regimes)
        probs = filter_probs(model, obs.X)
        labels = probs.argmax(axis=1)
        model_path = model.save(sub / "model.json")
        frame = pl.DataFrame(
            {
                "timestamp": obs.timestamps,
                **{f"p_regime_{i}": probs[:, i].astype("float32") for i in range(k)},
            }
        ).with_columns(regime=pl.Series(labels).cast(pl.Int8))
        out = write_feather_atomic(sub / "regimes.feather", frame)

        histories = {
            name: regime_history(
                labels[mask], obs.timestamps.filter(pl.Series(mask)), returns[mask], n_states=k
            )
            for name, mask in (("train", train), ("test", test), ("all", np.ones_like(train)))
        }
        hist_path = write_json_atomic(sub / "history.json", histories)
        for p in (model_path, out, hist_path):
            files[str(p)] = sha256_file(p)
        entries.append(
            {
                "fold": j,
                "method": model.method,
                "reason": model.reason,
                "rows_train": int(train.sum()),
                "rows_purged_lookback": dropped,
                "rows_test": int(test.sum()),
                "model": str(model_path),
                "output": str(out),
                "history": str(hist_path),
                "regimes_test": histories["test"],
            }
        )
    index = write_json_atomic(
        folder / "regimes.json", {"folds": entries, "observations": list(obs.columns)}
    )
    methods = sorted({e["method"] for e in entries})
    summary: dict[str, Any] = {
        "key": key,
        "output": str(index),
        "output_sha256": sha256_file(index),
        "files": files,
        "folds_file": str(folds_path),
        "method": methods[0] if len(methods) == 1 else "mixed",
        "n_states": k,
        "n_folds": len(entries),
        "observations": list(obs.columns),
        "warmup_bars": obs.warmup,
        "rows": int(stamps.size),
        "folds": entries,
    }
    write_json_atomic(folder / STAGE_SUMMARY, summary)
    return summary


# --------------------------------------------------------------------------- train + backtest

TRAIN_MODULES = (
    "sentio.stages",
    "sentio.agents",
    "sentio.agents.training",
    "sentio.agents.extractors",
    "sentio.agents.policies",
    "sentio.agents.sentio_ppo",
    "sentio.agents.distributional",
    "sentio.env",
    "sentio.env.market",
    "sentio.env.simulator",
    "sentio.env.vec_env",
    "sentio.env.episodes",
    "sentio.env.backtest",
)


def _regime_fold_output(regimes_path: str | Path | None, fold: int) -> str | None:
    if regimes_path is None:
        return None
    index = json.loads(Path(regimes_path).read_text())
    for entry in index["folds"]:
        if int(entry["fold"]) == fold:
            return str(entry["output"])
    raise DataError(f"{regimes_path}: no regime model for fold {fold}")


def train_key(
    bars_path: str | Path,
    features_path: str | Path,
    folds_path: str | Path,
    regimes_path: str | Path | None,
    cfg: SentioConfig,
    fold: int,
    seed: int,
) -> str:
    """Cache key of one (fold, seed) training: every input's CONTENT, settings, code, fold, seed."""
    regime_file = _regime_fold_output(regimes_path, fold)
    train_settings = cfg.model_dump(mode="json")["train"]
    train_settings.pop("seeds")  # the seed is explicit; other seeds do not change this run
    return combine_hashes(
        [
            sha256_file(bars_path),
            sha256_file(features_path),
            sha256_file(folds_path),
            sha256_file(regime_file) if regime_file else "no-regimes",
            cfg.hash("agent", "env", "universe", "features", "cv"),
            hash_json(train_settings),
            code_version(*TRAIN_MODULES),
            f"fold={fold}",
            f"seed={seed}",
        ]
    )[:32]


def fold_market(
    bars_path: str | Path,
    features_path: str | Path,
    folds_path: str | Path,
    regimes_path: str | Path | None,
    cfg: SentioConfig,
    fold: int,
) -> tuple[Any, list[tuple[int, int]], list[tuple[int, int]]]:
    """The market arrays of one fold, with its training ranges and test blocks as market rows.

    With ``features.normalisation = "train_fit"`` the fold's normaliser (fitted on its
    training rows by the folds stage) is applied first; regime probabilities are the
    fold's own model's.
    """
    from sentio.env import build_market, rows_from_ranges
    from sentio.features import apply_normaliser

    folds = load_folds(folds_path)
    entry = next((f for f in folds["folds"] if int(f["fold"]) == fold), None)
    if entry is None:
        raise DataError(f"{folds_path}: no fold {fold} (folds: {len(folds['folds'])})")
    features = pl.read_ipc(features_path)
    if entry.get("normaliser"):
        features = apply_normaliser(features, json.loads(Path(entry["normaliser"]).read_text()))
    regime_file = _regime_fold_output(regimes_path, fold)
    regimes = pl.read_ipc(regime_file) if regime_file else None
    market = build_market(pl.read_ipc(bars_path), features, regimes, cfg)
    return (
        market,
        rows_from_ranges(market, entry["train_ranges"]),
        rows_from_ranges(market, entry["test_blocks"]),
    )


def _bars_file(result: Any, path: Path) -> Path:
    return write_feather_atomic(path, result.bars_frame())


def train_stage(
    bars_path: str | Path,
    features_path: str | Path,
    folds_path: str | Path,
    regimes_path: str | Path | None,
    cfg: SentioConfig,
    workdir: str | Path,
    *,
    fold: int,
    seed: int,
    progress: Any = None,
) -> dict[str, Any]:
    """Train one agent on a fold's training ranges and backtest it on the fold's test blocks.

    Outputs in ``workdir/train/<key>/``: ``model.zip`` (an SB3 model, loadable with its
    class's ``load``), ``config.yaml``, ``backtest.feather`` (per bar: out-of-sample
    returns, equity, exposure, costs, action, regime), ``trades.feather`` (the ledger) and
    the same bars of the reference policies (``reference_<name>.feather``: flat,
    buy-and-hold TQQQ, the trend rule, the underlying's buy-and-hold). A killed training
    resumes from its checkpoint when the stage is run again.
    """
    from sentio.agents.training import algorithm_class, train_agent
    from sentio.config import write_config
    from sentio.env import EnvParams
    from sentio.env.backtest import (
        backtest,
        flat_policy,
        long_etf_policy,
        trend_policy,
        underlying_buy_and_hold,
    )
    from sentio.evaluation import metrics_to_json

    key = train_key(bars_path, features_path, folds_path, regimes_path, cfg, fold, seed)
    folder = Path(workdir) / "train" / key
    cached = _cached_summary(folder)
    if cached is not None:
        return cached
    market, train_rows, test_rows = fold_market(
        bars_path, features_path, folds_path, regimes_path, cfg, fold
    )
    write_config(folder / "config.yaml", cfg)
    result = train_agent(cfg, market, train_rows, seed=seed, out_dir=folder, progress=progress)
    model = algorithm_class(cfg).load(result.model_path, device="cpu")
    params = EnvParams.from_config(cfg)
    instruments = (cfg.universe.long, cfg.universe.short)
    bt = backtest(model, market, params, test_rows, instruments=instruments)
    files: dict[str, Path] = {
        "backtest": _bars_file(bt, folder / "backtest.feather"),
        "trades": write_feather_atomic(folder / "trades.feather", bt.trades),
    }
    references = {
        "flat": backtest(flat_policy(params), market, params, test_rows),
        "long_etf": backtest(long_etf_policy(params), market, params, test_rows),
        "trend": backtest(
            trend_policy(params, min(15, params.window), feature_names=market.feature_names),
            market,
            params,
            test_rows,
        ),
        "underlying": underlying_buy_and_hold(market, test_rows, params),
    }
    for name, ref in references.items():
        files[f"reference_{name}"] = _bars_file(ref, folder / f"reference_{name}.feather")
    summary: dict[str, Any] = {
        "key": key,
        "output": str(files["backtest"]),
        "output_sha256": sha256_file(files["backtest"]),
        "files": {str(p): sha256_file(p) for p in [Path(result.model_path), *files.values()]},
        "fold": fold,
        "seed": seed,
        "model": result.model_path,
        "train": result.to_dict(),
        "test_bars": bt.n_bars,
        "metrics": metrics_to_json(bt.metrics()),
        "references": {name: metrics_to_json(ref.metrics()) for name, ref in references.items()},
        "n_trades": int(bt.trades.height),
    }
    write_json_atomic(folder / STAGE_SUMMARY, summary)
    return summary


# --------------------------------------------------------------------------- report


def run_profile(timings: dict[str, float], runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The performance profile of a run: seconds per stage, training throughput, memory.

    Peak memory is the flow process's peak resident set (the tasks run in its threads);
    GPU memory is torch's peak allocation when CUDA was used.
    """
    import resource

    profile: dict[str, Any] = {f"{k} (s)": round(v, 2) for k, v in timings.items()}
    rates = [r["train"]["steps_per_second"] for r in runs if r.get("train")]
    if rates:
        profile["training steps per second (mean over runs)"] = round(float(np.mean(rates)), 1)
        profile["training steps (total)"] = int(sum(r["train"]["num_timesteps"] for r in runs))
        profile["devices"] = ", ".join(sorted({str(r["train"]["device"]) for r in runs}))
    profile["peak memory (MiB)"] = round(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
    )
    try:
        import torch

        if torch.cuda.is_available() and torch.cuda.max_memory_allocated() > 0:
            profile["peak GPU memory (MiB)"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return profile


def report_stage(
    runs: Sequence[dict[str, Any]],
    cfg: SentioConfig,
    out_dir: str | Path,
    *,
    ingest_summary: dict[str, Any] | None = None,
    profile: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the run's report (``report.md``, ``report.html``, ``metrics.json``) to ``out_dir``.

    Not cached: the report of every run includes that run's performance profile.
    """
    from sentio.report import build_report

    summary = build_report(
        list(runs), out_dir, cfg=cfg, ingest_summary=ingest_summary, profile=profile
    )
    summary["output"] = summary["paths"]["html"]
    return summary


# --------------------------------------------------------------------------- registry

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

    reg = registry if registry is not None else Registry(default_root(cfg).expanduser().resolve())
    out = Path(out_dir)
    folds = load_folds(folds_path)
    windows = fold_windows(folds)
    entries = {int(f["fold"]): f for f in folds["folds"]}
    regime_models: dict[int, str] = {}
    if regimes_path is not None:
        for e in json.loads(Path(regimes_path).read_text())["folds"]:
            regime_models[int(e["fold"])] = str(e["model"])
    report_metrics = json.loads(Path(report["paths"]["metrics"]).read_text())
    seeds = sorted({int(r["seed"]) for r in runs})
    per_seed = {s: seed_gate_metrics(report_metrics, s) for s in seeds}
    code = code_version(*TRAIN_MODULES)

    fallback_config: Path | None = None
    versions: list[dict[str, Any]] = []
    by_run: dict[tuple[int, int], str] = {}
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
        normaliser = entries[fold].get("normaliser")
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
                min_bars=cfg.registry.min_compare_bars,
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
