"""Warm starts (``train.warm_start = champion``): which folds may start from the champion.

The warm-start stage (:mod:`sentio.stages.warm`) freezes the champion into a stage folder
with ``warm.json``: its version, training range and test window, feature columns and
:func:`architecture`. :func:`warm_plan` decides, per fold, whether the fold's trainings
start from it:

* **leakage**: every test block of the fold must begin after the champion's last bar: the
  end of the test window it was evaluated (and promoted) on, or of its training range when
  that is later (a ``kfold``/``cpcv`` version): its weights then carry nothing of the
  fold's test data or of anything later, and neither did its selection. Walk-forward
  folds whose test block is newer than the champion qualify; every older fold, and any
  fold of ``kfold``/``cpcv`` with a test block before the champion's data, starts cold.
  In the nightly cycle that is the newest fold once the champion's test window ended
  before the newest test block begins: when the champion is older than one test block
  (the gate kept it while candidates failed), not the night after it was promoted (its
  test window then overlaps tonight's newest test block, and a warm start from a model
  chosen on that window would flatter the fold's out-of-sample figures);
* **architecture**: the settings that shape the networks and their inputs
  (:data:`ARCHITECTURE`, those that apply) and the feature columns must equal the
  champion's; otherwise the fold starts cold and the reason names the first difference.

A warm-started fold uses the champion's feature normaliser (the weights were trained on
inputs scaled by it) instead of its own, trains ``train.warm_start_fraction`` of
``train.total_timesteps``, and records the plan in its summary (``warm_start``); its
version in the registry carries that normaliser. A fold that starts cold keeps the key it
would have had without warm starts (:func:`sentio.stages.train.train_key`). This module
reads no registry: the training's cache key covers its code, not the registry's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from sentio.config import SentioConfig
from sentio.errors import DataError
from sentio.io import sha256_file
from sentio.stages.common import load_folds
from sentio.times import utc64

__all__ = [
    "ARCHITECTURE",
    "MODEL_FILE",
    "NORMALISER_FILE",
    "NO_CHAMPION",
    "WARM_FILE",
    "WarmPlan",
    "architecture",
    "warm_plan",
]

WARM_FILE = "warm.json"
MODEL_FILE = "model.zip"
NORMALISER_FILE = "normaliser.json"
"""The name of a version's normaliser in the registry (as :mod:`sentio.live` reads it)."""
ARCHITECTURE = (
    "agent.algo",
    "agent.extractor",
    "agent.d_model",
    "agent.n_heads",
    "agent.n_layers",
    "agent.quantile_critic",
    "agent.n_quantiles",
    "agent.regime_gating",
    "env.action_grid",
    "env.window",
    "features.normalisation",
    "regimes.enabled",
    "regimes.n_states",
)
"""Settings that shape the networks or their inputs: a warm start needs them equal (the
transformer's sizes only with ``agent.extractor = transformer``, ``agent.n_quantiles``
only with the quantile critic, ``regimes.n_states`` only with regimes)."""
_ONLY_WITH = {
    "agent.d_model": ("agent.extractor", "transformer"),
    "agent.n_heads": ("agent.extractor", "transformer"),
    "agent.n_layers": ("agent.extractor", "transformer"),
    "agent.n_quantiles": ("agent.quantile_critic", True),
    "regimes.n_states": ("regimes.enabled", True),
}


def architecture(cfg: SentioConfig) -> dict[str, Any]:
    """The :data:`ARCHITECTURE` settings that apply to ``cfg`` (JSON values)."""
    dump = cfg.model_dump(mode="json")

    def value(dotted: str) -> Any:
        section, name = dotted.split(".")
        return dump[section][name]

    return {
        dotted: value(dotted)
        for dotted in ARCHITECTURE
        if dotted not in _ONLY_WITH or value(_ONLY_WITH[dotted][0]) == _ONLY_WITH[dotted][1]
    }


NO_CHAMPION = "no champion to start from yet"
"""The reason a fold starts cold when warm starts are on and the registry has no champion."""


@dataclass(frozen=True)
class WarmPlan:
    """Whether one fold starts from the champion, and why (not)."""

    version: str
    applies: bool
    reason: str
    model: str | None = None
    normaliser: str | None = None
    digest: str | None = None
    """sha256 of ``warm.json`` (which names the model's and normaliser's content)."""

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "applies": self.applies, "reason": self.reason}


def _read(warm_path: str | Path) -> dict[str, Any]:
    try:
        return dict(json.loads(Path(warm_path).read_text()))
    except (OSError, ValueError) as err:
        raise DataError(f"{warm_path}: not a warm-start file ({err})") from None


def warm_plan(
    warm_path: str | Path | None,
    cfg: SentioConfig,
    *,
    folds_path: str | Path,
    features_path: str | Path,
    fold: int,
) -> WarmPlan | None:
    """The warm start of ``fold`` (module docstring); None when warm starts are off
    (``train.warm_start = "none"``); cold, saying so, when there is no champion
    (``warm_path`` None)."""
    if cfg.train.warm_start != "champion":
        return None
    if warm_path is None:
        return WarmPlan("", False, NO_CHAMPION)
    info = _read(warm_path)
    version = str(info["version"])

    def cold(reason: str) -> WarmPlan:
        return WarmPlan(version, False, reason)

    ours = architecture(cfg)
    theirs = dict(info.get("architecture") or {})
    for name in ARCHITECTURE:
        if ours.get(name) != theirs.get(name):
            return cold(
                f"architecture differs: {name} is {ours.get(name)!r} here, "
                f"{theirs.get(name)!r} in the champion {version}"
            )
    columns = [c for c in pl.read_ipc_schema(features_path) if c != "timestamp"]
    if columns != list(info.get("feature_columns") or []):
        return cold(f"the features differ from the champion {version}'s feature_columns")
    ends = [info.get("train_end"), info.get("window_end")]
    if not all(ends):
        return cold(f"the champion {version} records no training end or test window end")
    # its last bar: the end of its test window, or of its training when that came later
    # (a k-fold or CPCV version trains after its test block)
    last = max(utc64(str(e)) for e in ends)
    last_text = max(ends, key=lambda e: utc64(str(e)))
    entry = next((f for f in load_folds(folds_path)["folds"] if int(f["fold"]) == fold), None)
    if entry is None:
        raise DataError(f"{folds_path}: no fold {fold}")
    early = [b for b in entry["test_blocks"] if utc64(str(b["start"])) <= last]
    if early:
        return cold(
            f"leakage: test block from {early[0]['start']} begins before the champion "
            f"{version}'s data ends ({last_text})"
        )
    folder = Path(warm_path).parent
    normaliser = info.get("normaliser")
    return WarmPlan(
        version,
        True,
        f"starts from the champion {version} (its data ends {last_text})",
        model=str(folder / str(info["model"])),
        normaliser=None if normaliser is None else str(folder / str(normaliser)),
        digest=sha256_file(warm_path),
    )
