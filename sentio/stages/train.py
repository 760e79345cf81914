"""The training stage: one agent per (fold, seed), backtested with its references on the fold's test blocks."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl

from sentio.config import SentioConfig, training_settings_hash, with_overrides
from sentio.data.provenance import provenance_digest
from sentio.errors import DataError
from sentio.io import code_version, combine_hashes, sha256_file, write_feather_atomic
from sentio.stages.common import (
    cached_stage,
    config_for_data,
    index_file,
    load_folds,
    stage_modules,
)
from sentio.warm import WarmPlan, warm_plan


def _regime_fold_output(regimes_path: str | Path | None, fold: int) -> str | None:
    if regimes_path is None:
        return None
    index = json.loads(Path(regimes_path).read_text())
    for entry in index["folds"]:
        if int(entry["fold"]) == fold:
            return index_file(regimes_path, entry["output"])
    raise DataError(f"{regimes_path}: no regime model for fold {fold}")


def train_key(
    bars_path: str | Path,
    features_path: str | Path,
    folds_path: str | Path,
    regimes_path: str | Path | None,
    cfg: SentioConfig,
    fold: int,
    seed: int,
    *,
    warm_path: str | Path | None = None,
) -> str:
    """Cache key of one (fold, seed) training: every input's CONTENT, settings, code, fold,
    seed, and for a warm-started fold (:func:`sentio.warm.warm_plan`) the champion
    it starts from and the warm-start settings (a fold that starts cold keeps its key)."""
    regime_file = _regime_fold_output(regimes_path, fold)
    cfg = config_for_data(cfg, bars_path)
    plan = warm_plan(warm_path, cfg, folds_path=folds_path, features_path=features_path, fold=fold)
    warm = (
        [f"warm={plan.digest}", f"warm_fraction={cfg.train.warm_start_fraction!r}"]
        if plan is not None and plan.applies
        else []
    )
    return combine_hashes(
        [
            sha256_file(bars_path),
            provenance_digest(bars_path),  # the generator's truth of synthetic bars (oracle)
            sha256_file(features_path),
            sha256_file(folds_path),
            sha256_file(regime_file) if regime_file else "no-regimes",
            cfg.hash("features", "cv"),
            training_settings_hash(cfg),  # the seed is explicit; other seeds change nothing
            code_version(*stage_modules("train")),
            f"fold={fold}",
            f"seed={seed}",
            *warm,
        ]
    )[:32]


def fold_market(
    bars_path: str | Path,
    features_path: str | Path,
    folds_path: str | Path,
    regimes_path: str | Path | None,
    cfg: SentioConfig,
    fold: int,
    *,
    normaliser: str | Path | None = None,
) -> tuple[Any, list[tuple[int, int]], list[tuple[int, int]]]:
    """The market arrays of one fold, with its training ranges and test blocks as market rows.

    With ``features.normalisation = "train_fit"`` the fold's normaliser (fitted on its
    training rows by the folds stage), or ``normaliser`` when given (a warm start's), is
    applied first; regime probabilities are the fold's own model's.
    """
    from sentio.env import build_market, rows_from_ranges
    from sentio.features.normalise import apply_normaliser

    folds = load_folds(folds_path)
    entry = next((f for f in folds["folds"] if int(f["fold"]) == fold), None)
    if entry is None:
        raise DataError(f"{folds_path}: no fold {fold} (folds: {len(folds['folds'])})")
    features = pl.read_ipc(features_path)
    own = index_file(folds_path, entry.get("normaliser"))
    chosen = normaliser if normaliser is not None and own is not None else own
    if chosen is not None:
        features = apply_normaliser(features, json.loads(Path(chosen).read_text()))
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


def truth_of(bars_path: str | Path) -> dict[str, Any] | None:
    """The generator's truth recorded in the provenance of synthetic bars (else ``None``)."""
    from sentio.data.provenance import read_provenance

    record = read_provenance(bars_path, sha256_file(bars_path))
    truth = None if record is None else record.get("truth")
    return truth if isinstance(truth, dict) else None


def reference_backtests(
    market: Any, params: Any, test_rows: Sequence[tuple[int, int]], truth: dict[str, Any] | None
) -> dict[str, Any]:
    """The reference policies on a fold's test blocks, under the agent's costs and masks.

    Names (see :data:`sentio.report.REFERENCE_LABELS` for the report's words): ``flat``;
    ``long_etf`` (the +L ETF held intraday under the agent's rules); ``underlying`` (the
    underlying bought and held, overnight included; no costs); ``trend`` (60-bar momentum
    with hysteresis, sized by the risk budget: enter at |z| > 2, leave when its sign
    turns; the one-bar return summed over the window when ``log_ret_60`` is not a
    feature); ``fast_trend`` (the sign of the move over the observation window, up to 15
    bars, re-decided every bar);
    ``regime_rule`` (with regimes: long in the calm regime, short in the volatile one,
    flat between) and ``oracle`` (synthetic data: the generator's truth).
    """
    from sentio.env.backtest import (
        backtest,
        flat_policy,
        long_etf_policy,
        trend_policy,
        underlying_buy_and_hold,
    )
    from sentio.env.references import oracle_policy, regime_rule_policy

    names = market.feature_names
    if "log_ret_60" in names:
        slow = trend_policy(params, 1, feature_names=names, feature="log_ret_60", enter=2.0)
    else:
        slow = trend_policy(params, params.window, feature_names=names, enter=2.0)
    policies: dict[str, Any] = {
        "flat": flat_policy(params),
        "long_etf": long_etf_policy(params),
        "trend": slow,
        "fast_trend": trend_policy(params, min(15, params.window), feature_names=names),
    }
    if market.n_regimes >= 2:
        policies["regime_rule"] = regime_rule_policy(params, market.n_regimes)
    if truth is not None:
        policies["oracle"] = oracle_policy(params, market, truth)
    out: dict[str, Any] = {
        name: backtest(pol, market, params, test_rows) for name, pol in policies.items()
    }
    out["underlying"] = underlying_buy_and_hold(market, test_rows, params)
    return out


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
    warm_path: str | Path | None = None,
) -> dict[str, Any]:
    """Train one agent on a fold's training ranges and backtest it on the fold's test blocks.

    Outputs in ``workdir/train/<key>/``: ``model.zip`` (an SB3 model, loadable with its
    class's ``load``), ``config.yaml``, ``backtest.feather`` (per bar: out-of-sample
    returns, equity, exposure, costs, action, regime), ``trades.feather`` (the ledger) and
    the same bars of the reference policies (``reference_<name>.feather``: flat,
    buy-and-hold TQQQ, the trend rule, the underlying's buy-and-hold). A killed training
    resumes from its checkpoint when the stage is run again.

    ``warm_path``: the warm-start stage's ``warm.json`` (:mod:`sentio.stages.warm`); a fold
    it applies to starts from the champion's weights and normaliser (then also in the
    folder, ``normaliser.json``) and trains ``train.warm_start_fraction`` of the steps.
    The summary's ``warm_start`` says whether and why (None when warm starts are off).
    """
    cfg = config_for_data(cfg, bars_path)
    key = train_key(
        bars_path, features_path, folds_path, regimes_path, cfg, fold, seed, warm_path=warm_path
    )
    paths = (bars_path, features_path, folds_path, regimes_path)
    plan = warm_plan(warm_path, cfg, folds_path=folds_path, features_path=features_path, fold=fold)
    # A fixed staging name: a killed training's checkpoints are found by the next attempt.
    return cached_stage(
        "train",
        key,
        workdir,
        lambda tmp, _folder: _train_into(tmp, paths, cfg, fold, seed, progress, plan),
        staging=training_staging(key),
    )


def training_staging(key: str) -> str:
    """The name of training ``key``'s staging folder under ``workdir/train/`` (fixed, so a
    killed training's checkpoints, in its ``checkpoints/``, are found by the next attempt)."""
    return f".{key}.partial"


def _train_into(
    tmp: Path,
    paths: tuple[str | Path, str | Path, str | Path, str | Path | None],
    cfg: SentioConfig,
    fold: int,
    seed: int,
    progress: Any,
    plan: WarmPlan | None = None,
) -> dict[str, Any]:
    """Train, backtest and write one (fold, seed) into the staging folder ``tmp``; the summary.

    ``paths``: the bars, features, folds and regimes (or ``None``) files; ``plan``: the
    fold's warm start (:func:`sentio.warm.warm_plan`).
    """
    from sentio.agents.training import CHECKPOINTS_DIR, algorithm_class, train_agent
    from sentio.config import write_config
    from sentio.env import EnvParams
    from sentio.env.backtest import backtest
    from sentio.evaluation import metrics_to_json

    warm = plan is not None and plan.applies
    normaliser = plan.normaliser if plan is not None and warm else None
    market, train_rows, test_rows = fold_market(*paths, cfg, fold, normaliser=normaliser)
    hashed_extra: list[Path] = []
    if warm:
        assert plan is not None
        steps = max(1, math.ceil(cfg.train.total_timesteps * cfg.train.warm_start_fraction))
        cfg = with_overrides(cfg, {"train.total_timesteps": steps})
        if normaliser is not None:  # the version in the registry carries the one used
            hashed_extra.append(Path(shutil.copyfile(normaliser, tmp / "normaliser.json")))
    config = write_config(tmp / "config.yaml", cfg)
    result = train_agent(
        cfg,
        market,
        train_rows,
        seed=seed,
        out_dir=tmp,
        progress=progress,
        init_from=plan.model if plan is not None and warm else None,
    )
    shutil.rmtree(tmp / CHECKPOINTS_DIR, ignore_errors=True)  # only needed to resume
    model = algorithm_class(cfg).load(result.model_path, device="cpu")
    params = EnvParams.from_config(cfg, market)
    instruments = (cfg.universe.long, cfg.universe.short)
    bt = backtest(model, market, params, test_rows, instruments=instruments)
    files: dict[str, Path] = {
        "backtest": _bars_file(bt, tmp / "backtest.feather"),
        "trades": write_feather_atomic(tmp / "trades.feather", bt.trades),
    }
    references = reference_backtests(market, params, test_rows, truth_of(paths[0]))
    for name, ref in references.items():
        files[f"reference_{name}"] = _bars_file(ref, tmp / f"reference_{name}.feather")
    hashed = [Path(result.model_path), Path(config), *files.values(), *hashed_extra]
    return {
        "output": str(files["backtest"]),
        "output_sha256": sha256_file(files["backtest"]),
        "files": {str(p): sha256_file(p) for p in hashed},
        "fold": fold,
        "seed": seed,
        "model": result.model_path,
        "train": result.to_dict(),
        "test_bars": bt.n_bars,
        "metrics": metrics_to_json(bt.metrics()),
        "references": {name: metrics_to_json(ref.metrics()) for name, ref in references.items()},
        "n_trades": int(bt.trades.height),
        "warm_start": None if plan is None else plan.to_dict(),
    }
