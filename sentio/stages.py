"""Pipeline stages as plain functions: paths and small summaries in, paths and summaries out.

Each stage writes content-addressed outputs under ``workdir/<stage>/<key>/`` where the
key hashes the content of the inputs, the configuration sections the stage reads and
the version of the code that does the work. The Prefect tasks in ``tasks/`` call these
functions and use the same keys as their cache keys; without Prefect, a stage whose
outputs already exist and verify is not recomputed either.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from sentio.config import SentioConfig
from sentio.data import readers
from sentio.data.ingest import check_contracts, ingest_files
from sentio.data.leverage import ensure_universe
from sentio.data.provenance import provenance_digest
from sentio.data.schema import training_cutoff
from sentio.errors import ContractError, DataError
from sentio.io import (
    code_version,
    combine_hashes,
    sha256_file,
    write_feather_atomic,
    write_json_atomic,
)

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
    if cfg.features.normalisation == "train_fit":
        parts.append(str(cfg.regimes.train_fraction))
    if cfg.features.exogenous_path is not None:
        parts.append(sha256_file(cfg.features.exogenous_path))
    return combine_hashes(parts)[:32]


def features_stage(bars_path: str | Path, cfg: SentioConfig, workdir: str | Path) -> dict[str, Any]:
    """Build the causal feature frame of the underlying; content-addressed and validated.

    Output ``workdir/features/<key>/features.feather``: ``timestamp`` plus Float32
    features, warm-up rows dropped, normalised causally (or with statistics fitted on the
    training range when ``features.normalisation = "train_fit"``).
    """
    from data_contracts import ContractViolation
    from data_contracts.features import validate_features
    from sentio.features import apply_normaliser, build_features, feature_summary, fit_normaliser

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
    normaliser = None
    if cfg.features.normalisation == "train_fit":
        cutoff = training_cutoff(frame["timestamp"], cfg.regimes.train_fraction)
        normaliser = fit_normaliser(frame, cutoff, clip=cfg.features.norm_clip)
        frame = apply_normaliser(frame, normaliser)
        write_json_atomic(
            folder / "normaliser.json", {"train_end": cutoff.isoformat(), **normaliser}
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
        "normaliser": str(folder / "normaliser.json") if normaliser is not None else None,
        "table": feature_summary(frame),
    }
    write_json_atomic(folder / STAGE_SUMMARY, summary)
    return summary


# --------------------------------------------------------------------------- regimes


def regimes_key(bars_path: str | Path, cfg: SentioConfig) -> str:
    """Cache key of the regime stage: bars CONTENT, regimes/universe settings, code."""
    from sentio.regimes import regimes_code_version

    return combine_hashes(
        [sha256_file(bars_path), cfg.hash("regimes", "universe"), regimes_code_version()]
    )[:32]


def regimes_stage(bars_path: str | Path, cfg: SentioConfig, workdir: str | Path) -> dict[str, Any]:
    """Fit the regime model on the training range only and filter every bar causally.

    Outputs in ``workdir/regimes/<key>/``: ``model.json`` (plain parameters),
    ``regimes.feather`` (timestamp, filtered probability of each regime, most likely
    regime) and ``history.json`` (share, return, volatility, dwell times, transitions).
    The model is fitted on the leading ``regimes.train_fraction`` of sessions; the
    probabilities at every bar use data up to that bar only (forward filter).
    """
    from sentio.regimes import filter_probs, fit_regimes, regime_history, regime_observations

    key = regimes_key(bars_path, cfg)
    folder = Path(workdir) / "regimes" / key
    cached = _cached_summary(folder)
    if cached is not None:
        return cached
    bars = pl.read_ipc(bars_path)
    obs = regime_observations(bars, cfg)
    if obs.X.shape[0] == 0:
        raise DataError(
            f"{bars_path}: too few bars of {cfg.universe.underlying} for the regime inputs' "
            f"warm-up of {obs.warmup} bars (regimes.vol_window = {cfg.regimes.vol_window}); give more "
            "data or a shorter window"
        )
    stamps = obs.timestamps
    cutoff = training_cutoff(stamps, cfg.regimes.train_fraction)
    train = (stamps < cutoff).to_numpy()
    model = fit_regimes(obs.X[train], cfg.regimes)
    probs = filter_probs(model, obs.X)
    labels = probs.argmax(axis=1)
    k = probs.shape[1]
    model.save(folder / "model.json")
    frame = pl.DataFrame(
        {"timestamp": stamps, **{f"p_regime_{i}": probs[:, i].astype("float32") for i in range(k)}}
    ).with_columns(regime=pl.Series(labels).cast(pl.Int8))
    out = write_feather_atomic(folder / "regimes.feather", frame)
    returns = (
        bars.filter(pl.col("symbol") == cfg.universe.underlying)
        .sort("timestamp")
        .select("timestamp", r=pl.col("close").log().diff())
        .join(frame.select("timestamp"), on="timestamp", how="right")["r"]
        .to_numpy()
    )

    def history(mask: np.ndarray) -> dict[str, Any]:
        return regime_history(
            labels[mask], stamps.filter(pl.Series(mask)), returns[mask], n_states=k
        )

    histories = {
        "train": history(train),
        "test": history(~train),
        "all": history(np.ones_like(train)),
    }
    write_json_atomic(folder / "history.json", histories)
    summary: dict[str, Any] = {
        "key": key,
        "output": str(out),
        "output_sha256": sha256_file(out),
        "model": str(folder / "model.json"),
        "history": str(folder / "history.json"),
        "method": model.method,
        "reason": model.reason,
        "n_states": k,
        "observations": list(obs.columns),
        "warmup_bars": obs.warmup,
        "train_end": cutoff.isoformat(),
        "rows": frame.height,
        "rows_train": int(train.sum()),
        "regimes": histories["all"],
    }
    write_json_atomic(folder / STAGE_SUMMARY, summary)
    return summary
