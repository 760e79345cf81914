"""Each stage's cache key covers its own code and the library code it uses, and no other.

The inputs of every stage are built once (ingest -> features -> folds -> regimes on three
sessions of minute bars); then an edit of one module is simulated by changing the digest
:func:`sentio.io.code_version` reads for that module's source file, and every stage's key
is computed again. The keys of exactly the stages that use the module change: a fix in the
regimes stage or in the regime leakage guard cannot reuse stale cached regimes, and an edit
of the report stage (or of another stage) invalidates no trained model.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import pytest

import sentio.io
from sentio import stages
from sentio.config import SentioConfig, config_from_dict
from tests.conftest import SHORT_WINDOWS, minute_bars

STAGES = ("ingest", "features", "folds", "regimes", "train")

# module edited -> the stages whose key must change (every other key must stay equal)
USED_BY: dict[str, set[str]] = {
    # the stage modules: each its own stage only; the shared one every cached stage
    "sentio.stages.common": set(STAGES),
    "sentio.stages.ingest": {"ingest"},
    "sentio.stages.features": {"features"},
    "sentio.stages.folds": {"folds"},
    "sentio.stages.regimes": {"regimes"},
    "sentio.stages.train": {"train"},
    "sentio.stages.report": set(),  # not cached: a report edit keeps every trained model
    "sentio.stages.registry": set(),  # not cached either: promotion rules keep the models
    "sentio.stages": set(),  # the package only re-exports
    # the library modules of each stage
    "sentio.data.readers": set(STAGES),  # every stage reads its inputs through it
    "data_contracts.bars": set(STAGES),  # the reader validates bars on reading
    "sentio.features.build": {"features"},
    "sentio.cv.splitters": {"folds"},
    "sentio.regimes.model": {"regimes"},
    "sentio.regimes.training_rows": {"regimes"},  # the leakage guard of the regime fits
    "sentio.env.simulator": {"train"},
    "sentio.agents.training": {"train"},
    "sentio.warm": {"train"},  # which folds start from the champion (not the registry)
    "sentio.evaluation.metrics": {"train"},  # the train summary's metrics
    "sentio.agents.buffers": {"train"},  # rollout buffers (missed by the hand-kept lists)
    "sentio.env.ledger": {"train"},  # reached through the backtest only
    "sentio.times": {"ingest", "regimes", "train"},  # fold windows; the ingest report stamp
    "sentio.config": set(),  # settings enter the keys by value, not by code
    "sentio.errors": set(),  # messages only
    # library modules several stages use
    "sentio.calendar": {"ingest", "features", "folds", "train"},
    "sentio.features.normalise": {"features", "folds", "train"},
    # code of later, uncached steps
    "sentio.report.build": set(),
    "sentio.registry": set(),
}


class Inputs:
    """The files every stage's key reads, built once through the real stages."""

    def __init__(self, base: Path) -> None:
        self.raw = base / "in" / "bars.feather"
        self.raw.parent.mkdir(parents=True)
        minute_bars("2024-01-08", "2024-01-10", seed=3, price=400.0).write_ipc(self.raw)
        self.workdir = base / "wd"
        self.cfg: SentioConfig = config_from_dict(
            {**SHORT_WINDOWS, "paths": {"workdir": str(self.workdir)}}
        )
        self.summaries: dict[str, dict[str, Any]] = {}
        s = self.summaries
        s["ingest"] = stages.ingest_stage([self.raw], self.cfg, self.workdir)
        self.bars = s["ingest"]["output"]
        s["features"] = stages.features_stage(self.bars, self.cfg, self.workdir)
        self.features = s["features"]["output"]
        s["folds"] = stages.folds_stage(self.features, self.cfg, self.workdir)
        self.folds = s["folds"]["output"]
        s["regimes"] = stages.regimes_stage(self.bars, self.folds, self.cfg, self.workdir)
        self.regimes = s["regimes"]["output"]

    def keys(self) -> dict[str, str]:
        """Every cached stage's key; the training's for fold 0, seed 0."""
        cfg = self.cfg
        return {
            "ingest": stages.ingest_key([self.raw], cfg),
            "features": stages.features_key(self.bars, cfg),
            "folds": stages.folds_key(self.features, cfg),
            "regimes": stages.regimes_key(self.bars, self.folds, cfg),
            "train": stages.train_key(
                self.bars, self.features, self.folds, self.regimes, cfg, fold=0, seed=0
            ),
        }


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Inputs:
    return Inputs(tmp_path_factory.mktemp("stage_keys"))


def source_of(module: str) -> str:
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None, module
    return os.path.realpath(spec.origin)


def edit(monkeypatch: pytest.MonkeyPatch, module: str) -> None:
    """Make :func:`sentio.io.code_version` see ``module``'s source as edited."""
    target = source_of(module)
    real = sentio.io.sha256_file

    def digest(path: str | os.PathLike[str]) -> str:
        value = real(path)
        return "edited-" + value if os.path.realpath(path) == target else value

    monkeypatch.setattr(sentio.io, "sha256_file", digest)


def test_the_keys_are_the_keys_the_stages_use(inputs: Inputs) -> None:
    keys = inputs.keys()
    for stage in ("ingest", "features", "folds", "regimes"):
        assert inputs.summaries[stage]["key"] == keys[stage]
    assert keys == inputs.keys()  # deterministic
    assert len(set(keys.values())) == len(keys)


@pytest.mark.parametrize("module", sorted(USED_BY))
def test_editing_a_module_changes_the_keys_of_exactly_the_stages_using_it(
    inputs: Inputs, module: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = inputs.keys()
    edit(monkeypatch, module)
    after = inputs.keys()
    changed = {stage for stage in STAGES if after[stage] != before[stage]}
    assert changed == USED_BY[module]


def test_the_registry_code_version_follows_the_training_code(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the registry stage records the training code's version with every registered model:
    # the code that made the model, not the stage's own (a promotion-rule edit or a report
    # edit does not change the code version of a model)
    before = sentio.io.code_version(*stages.stage_modules("train"))
    edit(monkeypatch, "sentio.stages.report")
    assert sentio.io.code_version(*stages.stage_modules("train")) == before
    edit(monkeypatch, "sentio.stages.registry")
    assert sentio.io.code_version(*stages.stage_modules("train")) == before
    edit(monkeypatch, "sentio.evaluation.metrics")
    assert sentio.io.code_version(*stages.stage_modules("train")) != before


def test_a_stage_key_covers_every_project_module_the_stage_imports() -> None:
    """By construction (the imports are read, not listed): lazy imports inside functions
    and modules reached only through other modules count; re-export packages and the
    uncached stages' code do not."""
    train = stages.stage_modules("train")
    assert "sentio.env.backtest" in train  # imported inside a function of the stage
    assert "sentio.env.ledger" in train  # through sentio.env.backtest
    assert "sentio.stages.common" in train
    assert not {"sentio.stages", "sentio.stages.report", "sentio.stages.registry"} & set(train)
    assert not any(m.startswith(("sentio.report", "sentio.registry")) for m in train)
    regimes = stages.stage_modules("regimes")
    assert {"sentio.regimes.training_rows", "sentio.times"} <= set(regimes)
    assert not any(m.startswith("sentio.agents") for m in regimes)
    for stage in STAGES:
        assert stages.stage_modules(stage) == tuple(sorted(set(stages.stage_modules(stage))))
    with pytest.raises(ValueError, match="not a module"):
        sentio.io.imported_modules("numpy")


def test_stage_modules_import_what_they_use_from_its_own_module() -> None:
    """A name imported from the re-exporting package ``sentio.stages`` would hide its
    defining module from the code version (the package is not followed)."""
    import ast

    for path in sorted(Path(stages.__file__).parent.glob("*.py")):
        if path.name == "__init__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                assert node.level == 0 and node.module != "sentio.stages", (
                    f"{path.name}:{node.lineno} imports from the sentio.stages package"
                )
