"""The features stage: the causal feature frame of the underlying, validated and cached."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from sentio.config import SentioConfig
from sentio.errors import ContractError, DataError
from sentio.io import code_version, combine_hashes, sha256_file, write_feather_atomic
from sentio.stages.common import cached_stage, config_for_data, stage_modules


def features_key(bars_path: str | Path, cfg: SentioConfig) -> str:
    """Cache key of the features stage: bars CONTENT, features/universe settings, code
    (:func:`~sentio.stages.common.stage_modules`: this stage and the modules it runs)."""
    cfg = config_for_data(cfg, bars_path)
    code = code_version(*stage_modules("features"))
    parts = [sha256_file(bars_path), cfg.hash("features", "universe"), code]
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
    cfg = config_for_data(cfg, bars_path)
    key = features_key(bars_path, cfg)
    return cached_stage(
        "features", key, workdir, lambda tmp, folder: _features_into(tmp, folder, bars_path, cfg)
    )


def _features_into(
    tmp: Path, folder: Path, bars_path: str | Path, cfg: SentioConfig
) -> dict[str, Any]:
    """Build and validate the features into the staging folder ``tmp``; their summary."""
    from data_contracts import ContractViolation
    from data_contracts.features import validate_features
    from sentio.features import build_features, feature_summary

    frame = build_features(pl.read_ipc(bars_path), cfg)
    if frame.height == 0:
        raise DataError(
            f"{bars_path}: too few bars for the feature warm-up (the longest indicator window "
            f"plus features.norm_window = {cfg.features.norm_window}); give more data or shorter windows"
        )
    try:
        validate_features(frame, str(folder / "features.feather"))
    except ContractViolation as err:
        raise ContractError(str(err)) from None
    out = write_feather_atomic(tmp / "features.feather", frame)
    columns = [c for c in frame.columns if c != "timestamp"]
    return {
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
