"""The warm-start stage: the champion frozen for tonight's trainings (``train.warm_start``).

:func:`warm_stage` copies the champion's verified model and feature normaliser into a
content-addressed stage folder ``workdir/warm/<key>/`` with ``warm.json`` (the version,
its training range and test window, its feature columns and its architecture). Being a
stage folder, it travels to other machines like every training input (``paths.storage``),
and a training's key covers its content. Which folds start from it: :mod:`sentio.warm`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from sentio.config import SentioConfig, config_from_dict
from sentio.io import code_version, combine_hashes, sha256_file, write_json_atomic
from sentio.registry import Registry, default_root
from sentio.stages.common import cached_stage, stage_modules
from sentio.warm import MODEL_FILE, NORMALISER_FILE, WARM_FILE, architecture

__all__ = ["warm_stage"]


def warm_stage(
    cfg: SentioConfig, workdir: str | Path, registry: Registry | None = None
) -> dict[str, Any] | None:
    """The champion frozen for warm starts (module docstring); None without a champion.

    Raises:
        RegistryError: the champion's files do not verify.
    """
    reg = registry if registry is not None else Registry(default_root(cfg).expanduser())
    champion = reg.champion_version()
    if champion is None:
        return None
    files = reg.verify(champion.version, purpose="warm-start from")
    manifest = champion.manifest
    extra = dict(manifest.get("extra") or {})
    config_name = str(manifest.get("config") or "config.yaml")
    champion_cfg = config_from_dict(yaml.safe_load(files[config_name].decode("utf-8")))
    hashes = dict(manifest.get("files") or {})
    key = combine_hashes(
        [
            champion.version,
            *(f"{name}={hashes[name]}" for name in sorted(hashes)),
            code_version(*stage_modules("warm")),
        ]
    )[:32]
    model_name = str(manifest.get("model") or MODEL_FILE)

    def compute(tmp: Path, _folder: Path) -> dict[str, Any]:
        written = [tmp / MODEL_FILE]
        written[0].write_bytes(files[model_name])
        if NORMALISER_FILE in files:
            (tmp / NORMALISER_FILE).write_bytes(files[NORMALISER_FILE])
            written.append(tmp / NORMALISER_FILE)
        info = {
            "version": champion.version,
            "algo": champion.algo,
            "train_start": extra.get("train_start"),
            "train_end": extra.get("train_end"),
            "window_start": extra.get("window_start"),
            "window_end": extra.get("window_end"),
            "feature_columns": list(extra.get("feature_columns") or []),
            "architecture": architecture(champion_cfg),
            "model": MODEL_FILE,
            "normaliser": NORMALISER_FILE if NORMALISER_FILE in files else None,
        }
        out = write_json_atomic(tmp / WARM_FILE, info)
        return {
            "output": str(out),
            "output_sha256": sha256_file(out),
            "files": {str(p): sha256_file(p) for p in written},
            "version": champion.version,
        }

    return cached_stage("warm", key, workdir, compute)
