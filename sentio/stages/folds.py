"""The folds stage: the feature rows cut into purged, embargoed walk-forward or k-fold folds."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from sentio.calendar import session_gaps
from sentio.config import SentioConfig
from sentio.data.schema import session_date
from sentio.errors import SentioError
from sentio.io import code_version, combine_hashes, sha256_file, write_json_atomic
from sentio.stages.common import cached_stage, config_for_data, index_file, stage_modules

if TYPE_CHECKING:
    from sentio.cv.splitters import Fold


def folds_key(features_path: str | Path, cfg: SentioConfig) -> str:
    """Cache key of the folds stage: feature frame CONTENT, ``cv`` settings, code.

    With ``features.normalisation = "train_fit"`` the stage also fits the per-fold
    normalisers, so the feature settings are part of the key then.
    """
    cfg = config_for_data(cfg, features_path)
    parts = [
        sha256_file(features_path),
        cfg.hash("cv"),
        cfg.universe.calendar,  # the test blocks' data gaps
        code_version(*stage_modules("folds")),
    ]
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


def _fold_record(
    fold: Fold, ts: Sequence[dt.datetime], groups: np.ndarray, calendar: str
) -> dict[str, Any]:
    """The ``folds.json`` entry of one fold (its normaliser not yet fitted)."""
    return {
        "fold": int(fold.index),
        "train_rows": int(fold.train.size),
        "test_rows": int(fold.test.size),
        "purged": int(fold.n_purged),
        "embargoed": int(fold.n_embargoed),
        "test_groups": [int(g) for g in np.atleast_1d(fold.test_groups)],
        "train_ranges": _ranges(fold.train_ranges(), ts),
        "test_blocks": _ranges(fold.test_blocks, ts),
        # sessions the data lacks inside a test block: the backtest runs the
        # pieces between them as separate episodes (sentio.env.backtest)
        "test_gaps": [
            gap
            for a, b in fold.test_blocks
            for gap in session_gaps(pl.Series(groups[a:b]), calendar)
        ],
        "normaliser": None,
    }


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
    cfg = config_for_data(cfg, features_path)
    key = folds_key(features_path, cfg)
    return cached_stage(
        "folds", key, workdir, lambda tmp, _folder: _folds_into(tmp, features_path, cfg)
    )


def _folds_into(tmp: Path, features_path: str | Path, cfg: SentioConfig) -> dict[str, Any]:
    """Cut the folds and write ``folds.json`` into the staging folder ``tmp``; the summary."""
    from sentio.cv import CombinatorialPurgedCV, splitter_from_config
    from sentio.features.normalise import fit_normaliser

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
    files: dict[str, str] = {}
    records: list[dict[str, Any]] = []
    for fold in folds:
        record = _fold_record(fold, ts, groups, cfg.universe.calendar)
        if cfg.features.normalisation == "train_fit":
            params = fit_normaliser(frame, clip=cfg.features.norm_clip, rows=fold.train)
            rel = f"fold_{fold.index}/normaliser.json"
            path = write_json_atomic(tmp / rel, params)
            files[str(path)] = sha256_file(path)
            record["normaliser"] = rel  # relative to folds.json: the folder can move
        records.append(record)
    paths = None
    if isinstance(splitter, CombinatorialPurgedCV):
        paths = [[[int(g), int(j)] for g, j in path] for path in splitter.paths()]
    out = write_json_atomic(
        tmp / "folds.json",
        {
            "method": cfg.cv.method,
            "settings": cfg.cv.model_dump(mode="json"),
            "features_sha256": sha256_file(features_path),
            "samples": frame.height,
            "start": ts[0].isoformat(),
            "end": ts[-1].isoformat(),
            "folds": records,
            "paths": paths,
        },
    )
    return {
        "output": str(out),
        "output_sha256": sha256_file(out),
        "files": files,
        "method": cfg.cv.method,
        "samples": frame.height,
        "n_folds": len(records),
        "n_paths": None if paths is None else len(paths),
        "folds": [
            {k: v for k, v in r.items() if k not in ("train_ranges",)}
            | {
                "n_train_ranges": len(r["train_ranges"]),
                "normaliser": index_file(out, r["normaliser"]),
            }
            for r in records
        ],
    }
