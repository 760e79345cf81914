"""The regimes stage: one regime model per fold, fitted on its training rows, filtered causally."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from sentio.config import SentioConfig
from sentio.errors import DataError
from sentio.io import (
    code_version,
    combine_hashes,
    sha256_file,
    write_feather_atomic,
    write_json_atomic,
)
from sentio.stages.common import cached_stage, config_for_data, load_folds, stage_modules

if TYPE_CHECKING:
    from sentio.regimes import RegimeInputs


def regimes_key(bars_path: str | Path, folds_path: str | Path, cfg: SentioConfig) -> str:
    """Cache key of the regime stage: bars and folds CONTENT, regimes/universe settings, code
    (:func:`~sentio.stages.common.stage_modules`: this stage and the modules it runs)."""
    cfg = config_for_data(cfg, bars_path)
    return combine_hashes(
        [
            sha256_file(bars_path),
            sha256_file(folds_path),
            cfg.hash("regimes", "universe"),
            code_version(*stage_modules("regimes")),
        ]
    )[:32]


def regimes_stage(
    bars_path: str | Path, folds_path: str | Path, cfg: SentioConfig, workdir: str | Path
) -> dict[str, Any]:
    """Fit one regime model per fold on that fold's training ranges; filter every bar causally.

    Outputs in ``workdir/regimes/<key>/``: ``regimes.json`` (the per-fold index) and per
    fold ``fold_<j>/model.json`` (plain parameters), ``fold_<j>/regimes.feather``
    (timestamp, filtered probability of each regime, most likely regime) and
    ``fold_<j>/history.json`` (share, return, volatility, dwell times, transitions over
    the fold's training rows, its test rows and all rows). Each model sees the inputs of
    its fold's training rows only (see :func:`sentio.regimes.regime_training_rows`); the
    probabilities at every bar use data up to that bar only (forward filter).
    """
    cfg = config_for_data(cfg, bars_path)
    key = regimes_key(bars_path, folds_path, cfg)
    return cached_stage(
        "regimes",
        key,
        workdir,
        lambda tmp, _folder: _regimes_into(tmp, bars_path, folds_path, cfg),
    )


@dataclass(frozen=True)
class _Inputs:
    """The regime inputs of the underlying with the bars they stand on."""

    obs: RegimeInputs
    stamps: np.ndarray  # datetime64[us] (naive UTC) bar start of each input row
    window_start: np.ndarray  # start of the first bar of each row's input window
    returns: np.ndarray  # the log return of each row's bar


def _inputs(bars_path: str | Path, cfg: SentioConfig) -> _Inputs:
    from sentio.regimes import regime_observations

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
    returns = (
        under.select(r=pl.col("close").log().diff())["r"].to_numpy()[obs.warmup :].astype(float)
    )
    return _Inputs(obs, stamps, bar_stamps[: stamps.size], returns)


def _regimes_into(
    tmp: Path, bars_path: str | Path, folds_path: str | Path, cfg: SentioConfig
) -> dict[str, Any]:
    """Fit, filter and write every fold's regimes into the staging folder ``tmp``; the summary."""
    folds = load_folds(folds_path)
    data = _inputs(bars_path, cfg)
    files: dict[str, str] = {}
    entries = [_fold_regimes(tmp, data, fold, cfg, files) for fold in folds["folds"]]
    index = write_json_atomic(
        tmp / "regimes.json", {"folds": entries, "observations": list(data.obs.columns)}
    )
    methods = sorted({e["method"] for e in entries})
    return {
        "output": str(index),
        "output_sha256": sha256_file(index),
        "files": files,
        "folds_file": str(folds_path),
        "method": methods[0] if len(methods) == 1 else "mixed",
        "n_states": cfg.regimes.n_states,
        "n_folds": len(entries),
        "observations": list(data.obs.columns),
        "warmup_bars": data.obs.warmup,
        "rows": int(data.stamps.size),
        "folds": [
            e | {f: str(tmp / e[f]) for f in ("model", "output", "history")} for e in entries
        ],
    }


def _fold_regimes(
    tmp: Path, data: _Inputs, fold: dict[str, Any], cfg: SentioConfig, files: dict[str, str]
) -> dict[str, Any]:
    """Fit fold ``fold``'s model, filter every bar and write its files (hashes into ``files``).

    Returns the fold's ``regimes.json`` entry: its files relative to ``tmp``.
    """
    from sentio.regimes import filter_probs, fit_regimes, regime_history
    from sentio.regimes.training_rows import regime_training_rows
    from sentio.times import utc64

    obs, stamps, k = data.obs, data.stamps, cfg.regimes.n_states
    j = int(fold["fold"])
    train, dropped = regime_training_rows(stamps, data.window_start, fold)
    if not train.any():
        raise DataError(
            f"fold {j}: no regime-input rows inside its training ranges (the regime "
            f"inputs start {obs.warmup} bars after the first bar); give more data or a "
            "shorter regimes.vol_window"
        )
    test = np.zeros_like(train)
    for b in fold["test_blocks"]:
        test |= (stamps >= utc64(b["start"])) & (stamps <= utc64(b["end"]))
    model = fit_regimes(obs.X[train], cfg.regimes)
    probs = filter_probs(model, obs.X)
    labels = probs.argmax(axis=1)
    names = {n: f"fold_{j}/{n}" for n in ("model.json", "regimes.feather", "history.json")}
    model.save(tmp / names["model.json"])
    frame = pl.DataFrame(
        {
            "timestamp": obs.timestamps,
            **{f"p_regime_{i}": probs[:, i].astype("float32") for i in range(k)},
        }
    ).with_columns(regime=pl.Series(labels).cast(pl.Int8))
    write_feather_atomic(tmp / names["regimes.feather"], frame)
    histories = {
        name: regime_history(
            labels[mask], obs.timestamps.filter(pl.Series(mask)), data.returns[mask], n_states=k
        )
        for name, mask in (("train", train), ("test", test), ("all", np.ones_like(train)))
    }
    write_json_atomic(tmp / names["history.json"], histories)
    for rel in names.values():
        files[str(tmp / rel)] = sha256_file(tmp / rel)
    return {
        "fold": j,
        "method": model.method,
        "reason": model.reason,
        "rows_train": int(train.sum()),
        "rows_purged_lookback": dropped,
        "rows_test": int(test.sum()),
        "model": names["model.json"],
        "output": names["regimes.feather"],
        "history": names["history.json"],
        "regimes_test": histories["test"],
    }
