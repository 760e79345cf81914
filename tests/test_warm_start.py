"""Warm starts (train.warm_start = champion): leakage rule, architecture check, keys, weights."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from sentio import stages
from sentio.agents.training import _initialise_from, algorithm_class, make_model
from sentio.config import SentioConfig, config_from_dict, with_overrides
from sentio.errors import ConfigError
from sentio.registry import Registry
from sentio.stages.registry import VersionFiles
from sentio.stages.warm import warm_stage
from sentio.warm import ARCHITECTURE, NO_CHAMPION, WARM_FILE, architecture, warm_plan
from tests.conftest import SHORT_WINDOWS, minute_bars
from tests.test_live import register_fold

SESSIONS = ("2024-01-08", "2024-01-12")  # Mon-Fri: warm-up, then three walk-forward blocks


def _cfg(workdir: Path, **overrides: Any) -> SentioConfig:
    data = {
        **SHORT_WINDOWS,
        "features": {**SHORT_WINDOWS["features"], "normalisation": "train_fit"},
        "cv": {"method": "walk_forward", "n_splits": 2, "embargo_bars": 30},
        "regimes": {"enabled": False},
        "env": {**SHORT_WINDOWS["env"], "masks": {"regime": False}},
        "train": {**SHORT_WINDOWS["train"], "warm_start": "champion", "warm_start_fraction": 0.5},
        "paths": {"workdir": str(workdir)},
    }
    return with_overrides(config_from_dict(data), overrides)


class World:
    """A pipeline's stage outputs, fold 0 trained cold and promoted to champion."""

    def __init__(self, root: Path) -> None:
        self.workdir = root / "wd"
        raw = root / "bars.feather"
        minute_bars(*SESSIONS, seed=5, price=400.0).write_ipc(raw)
        self.cfg = _cfg(self.workdir)
        s: dict[str, Any] = {}
        s["ingest"] = stages.ingest_stage([raw], self.cfg, self.workdir)
        self.bars = s["ingest"]["output"]
        s["features"] = stages.features_stage(self.bars, self.cfg, self.workdir)
        s["folds"] = stages.folds_stage(s["features"]["output"], self.cfg, self.workdir)
        self.features, self.folds = s["features"]["output"], s["folds"]["output"]
        assert len(stages.load_folds(self.folds)["folds"]) == 2
        s["train"] = self.train(0, warm_path=None)
        self.summaries = s
        self.registry = Registry(self.workdir / "registry")
        self.champion = register_fold(self.registry, self.cfg, s, fold=0)
        self.registry.promote(self.champion, "test")
        warm = warm_stage(self.cfg, self.workdir, self.registry)
        assert warm is not None
        self.warm = warm

    def train(self, fold: int, warm_path: str | None, cfg: SentioConfig | None = None) -> Any:
        return stages.train_stage(
            self.bars,
            self.features,
            self.folds,
            None,
            cfg or self.cfg,
            self.workdir,
            fold=fold,
            seed=0,
            warm_path=warm_path,
        )

    def key(self, fold: int, warm_path: str | None, cfg: SentioConfig | None = None) -> str:
        return stages.train_key(
            self.bars,
            self.features,
            self.folds,
            None,
            cfg or self.cfg,
            fold,
            0,
            warm_path=warm_path,
        )

    def plan(self, fold: int, cfg: SentioConfig | None = None) -> Any:
        return warm_plan(
            self.warm["output"],
            cfg or self.cfg,
            folds_path=self.folds,
            features_path=self.features,
            fold=fold,
        )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return World(tmp_path_factory.mktemp("warm"))


def test_the_warm_stage_freezes_the_champions_verified_files(world: World) -> None:
    folder = Path(world.warm["output"]).parent
    info = json.loads((folder / WARM_FILE).read_text())
    version = world.registry.get(world.champion)
    assert info["version"] == world.champion == world.warm["version"]
    assert (folder / "model.zip").read_bytes() == version.model_path.read_bytes()
    assert (folder / "normaliser.json").read_bytes() == (
        version.path / "normaliser.json"
    ).read_bytes()
    assert info["architecture"] == architecture(world.cfg)
    assert set(ARCHITECTURE) - set(info["architecture"]) == {
        "agent.d_model",
        "agent.n_heads",
        "agent.n_layers",
        "agent.n_quantiles",
        "regimes.n_states",
    }
    assert info["window_end"] == version.manifest["extra"]["window_end"]
    # the same champion, the same folder
    assert warm_stage(world.cfg, world.workdir, world.registry) == world.warm


def test_a_fold_tested_on_the_champions_data_starts_cold_with_its_cold_key(world: World) -> None:
    """Leakage: fold 0's test block is the champion's own test window."""
    plan = world.plan(0)
    assert plan is not None and not plan.applies
    assert plan.reason.startswith("leakage: test block from ") and world.champion in plan.reason
    assert world.key(0, world.warm["output"]) == world.key(0, None)
    again = world.train(0, world.warm["output"])
    assert again == world.summaries["train"]  # the cold training, from the cache


def test_a_later_fold_starts_from_the_champion_for_a_fraction_of_the_steps(world: World) -> None:
    plan = world.plan(1)
    assert plan is not None and plan.applies and world.champion in plan.reason
    assert world.key(1, world.warm["output"]) != world.key(1, None)
    summary = world.train(1, world.warm["output"])
    assert summary["warm_start"] == {
        "version": world.champion,
        "applies": True,
        "reason": plan.reason,
    }
    steps = math.ceil(world.cfg.train.total_timesteps * world.cfg.train.warm_start_fraction)
    assert summary["train"]["total_timesteps"] == steps
    folder = Path(summary["model"]).parent
    champion = world.registry.get(world.champion)
    # the champion's normaliser scaled its inputs: it goes with the model into the registry
    assert (folder / "normaliser.json").read_bytes() == (
        champion.path / "normaliser.json"
    ).read_bytes()
    assert str(folder / "normaliser.json") in summary["files"]
    files = VersionFiles.read(
        world.cfg, folder.parent, world.folds, stages.load_folds(world.folds), None
    )
    assert files.extra(1, summary)["normaliser.json"] == str(folder / "normaliser.json")
    own = stages.index_file(world.folds, stages.load_folds(world.folds)["folds"][1]["normaliser"])
    assert files.extra(1)["normaliser.json"] == own != str(folder / "normaliser.json")
    # a cold training of the same fold is another training
    cold = world.train(1, None)
    assert cold["key"] != summary["key"]
    assert cold["warm_start"] == {"version": "", "applies": False, "reason": NO_CHAMPION}
    assert cold["train"]["total_timesteps"] == world.cfg.train.total_timesteps


def test_another_architecture_starts_cold_and_names_the_difference(world: World) -> None:
    other = with_overrides(world.cfg, {"agent.extractor": "transformer"})
    plan = world.plan(1, other)
    assert plan is not None and not plan.applies
    assert plan.reason.startswith(
        "architecture differs: agent.extractor is 'transformer' here, 'mlp' in the champion"
    )
    # a setting the champion's network does not use is not compared
    assert world.plan(1, with_overrides(world.cfg, {"agent.d_model": 64})).applies
    assert world.key(1, world.warm["output"], other) == world.key(1, None, other)
    # warm starts off: no plan, the cold key
    off = with_overrides(world.cfg, {"train.warm_start": "none"})
    assert world.plan(1, off) is None
    assert world.key(1, world.warm["output"], off) == world.key(1, None, off)
    # the fraction shapes only warm-started trainings
    half = with_overrides(world.cfg, {"train.warm_start_fraction": 0.3})
    assert world.key(0, world.warm["output"], half) == world.key(0, None)
    assert world.key(1, world.warm["output"], half) != world.key(1, world.warm["output"])


def test_initialising_copies_the_weights_and_refuses_another_network(
    world: World, tmp_path: Path
) -> None:
    from sentio.env import EnvParams, SentioVecEnv

    market, train_rows, _ = stages.fold_market(
        world.bars, world.features, world.folds, None, world.cfg, 1
    )
    params = EnvParams.from_config(world.cfg, market)
    env = SentioVecEnv(market, params, train_rows, 2, seed=0)
    champion = world.registry.get(world.champion).model_path
    model = make_model(world.cfg, env, seed=7, device=torch.device("cpu"))
    source = algorithm_class(world.cfg).load(champion, device="cpu").policy.state_dict()
    assert not all(torch.equal(v, source[k]) for k, v in model.policy.state_dict().items())
    _initialise_from(model, champion, world.cfg, torch.device("cpu"))
    assert all(torch.equal(v, source[k]) for k, v in model.policy.state_dict().items())
    bigger = with_overrides(world.cfg, {"agent.extractor": "transformer"})
    other = make_model(bigger, env, seed=7, device=torch.device("cpu"))
    with pytest.raises(ConfigError, match="cannot warm-start from it: its policy's .* is"):
        _initialise_from(other, champion, bigger, torch.device("cpu"))


@pytest.mark.slow
@pytest.mark.usefixtures("restore_environ")
def test_the_nightly_flow_warm_starts_the_folds_after_the_champion(
    prefect_api: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two nightly runs: the first promotes a champion; the second, on more bars,
    freezes it (the ``warm`` stage) and warm-starts only the fold tested after its data."""
    from flows.nightly import nightly_flow

    workdir = tmp_path / "wd"
    cfg = _cfg(workdir)
    data = cfg.model_dump(mode="json")
    # a gate any model with a defined DSR passes, so that the first run sets a champion
    data["registry"] = {"min_dsr": 0.0, "max_drawdown": 1.0, "min_compare_bars": 60}
    config = tmp_path / "sentio.yaml"
    config.write_text(yaml.safe_dump(data))
    first = tmp_path / "first.feather"
    minute_bars("2024-01-08", "2024-01-11", seed=5, price=400.0).write_ipc(first)
    one = nightly_flow(data_path=str(first), config_path=str(config))
    assert "warm" not in one["stages"]  # no champion yet
    champion = Registry(workdir / "registry").champion()
    assert champion is not None
    window_end = (
        Registry(workdir / "registry").get(champion["version"]).manifest["extra"]["window_end"]
    )
    week = tmp_path / "week.feather"
    minute_bars("2024-01-08", "2024-01-17", seed=5, price=400.0).write_ipc(week)
    two = nightly_flow(data_path=str(week), config_path=str(config))
    assert two["stages"]["warm"]["version"] == champion["version"]
    runs = {r["fold"]: r for r in two["stages"]["train"]["runs"]}
    folds = stages.load_folds(two["stages"]["folds"]["output"])["folds"]
    for entry in folds:
        plan = runs[int(entry["fold"])]["warm_start"]
        after = all(b["start"] > window_end for b in entry["test_blocks"])
        assert plan["version"] == champion["version"] and plan["applies"] == after
    assert {r["warm_start"]["applies"] for r in runs.values()} == {True, False}
    # what `sentio run` prints and the training artifact's rows say it
    from sentio.cli import _print_run
    from sentio.orchestration import train_table

    capsys.readouterr()
    _print_run(two)
    printed = capsys.readouterr().out
    warm_folds = [f for f, r in runs.items() if r["warm_start"]["applies"]]
    for fold in runs:
        line = next(x for x in printed.splitlines() if x.startswith(f"train: fold {fold} "))
        assert (f"warm-started from {champion['version']}" in line) == (fold in warm_folds)
    cells = {r["fold"]: r["warm start"] for r in train_table(two["stages"]["train"])}
    assert all(
        cells[f] == (f"from {champion['version']}" if f in warm_folds else cells[f])
        and (f in warm_folds or cells[f].startswith("cold: leakage"))
        for f in runs
    )


def test_a_champion_trained_after_its_test_window_counts_its_training_end(
    world: World, tmp_path: Path
) -> None:
    """A k-fold champion trains after its test block: its data ends with its training."""
    info = json.loads(Path(world.warm["output"]).read_text())
    block = stages.load_folds(world.folds)["folds"][1]["test_blocks"][0]
    folder = tmp_path / "warm"
    folder.mkdir()
    for name in ("model.zip", "normaliser.json"):
        (folder / name).write_bytes((Path(world.warm["output"]).parent / name).read_bytes())
    later = {**info, "train_end": block["end"]}  # trained through fold 1's test block
    (folder / WARM_FILE).write_text(json.dumps(later))
    plan = warm_plan(
        folder / WARM_FILE,
        world.cfg,
        folds_path=world.folds,
        features_path=world.features,
        fold=1,
    )
    assert plan is not None and not plan.applies
    assert plan.reason.startswith("leakage: ") and block["end"] in plan.reason
    missing = {**info, "train_end": None}
    (folder / WARM_FILE).write_text(json.dumps(missing))
    plan = warm_plan(
        folder / WARM_FILE, world.cfg, folds_path=world.folds, features_path=world.features, fold=1
    )
    assert plan is not None and not plan.applies and "records no training end" in plan.reason
