"""The nightly re-training flow.

It reads like the pipeline diagram of ``DESIGN.md``; each stage is one task that returns
a small summary, collected in ``workdir/runs/<flow-run name>/run.json`` beside the
``config.yaml`` of the run::

    ingest -> features -> folds -> regimes (one model per fold)
        -> train + backtest (one task per fold and seed) -> report
        -> registry (register every model; gate the candidate against the champion
                     re-evaluated on a leakage-free window; promote or say why not)

The run holds the working directory's lock (:func:`sentio.orchestration.workdir_lock`) from
start to end: a second run on the same workdir waits or refuses (``paths.on_busy``). The
(fold, seed) trainings run on ``train.executor`` (:mod:`flows.trainings`): on this machine,
at most ``train.max_parallel`` at a time, or on a Dask cluster; each in a process of its
own.

Every stage but the report and the registry is cached on the content of its inputs; the
report is rewritten by every run (it holds the run's profile) and the registry stage reads
the mutable registry, so it is never cached but idempotent: on unchanged inputs it
registers no new version and leaves the champion as it is. Its decision is written to
``<run folder>/registry/decision.json`` and published as the ``registry-decision``
artifact.

To add a cached stage: give its artifact task an entry in ``ARTIFACTS`` and call
``summary = run.stage("<name>", <its task>, <its inputs as keywords>, cfg=cfg)``
(:meth:`_Run.stage`): it runs the task with the project's result storage, records the
summary in the run record
(:class:`sentio.orchestration.RunRecord`, which keeps ``run.json`` current after every
change, so a failed run still shows how far it got and its error), publishes the
artifacts and times the stage for the report's profile.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import deployment, flow_run
from prefect.tasks import Task

from flows.trainings import run_trainings
from sentio.config import (
    SentioConfig,
    load_config,
    resolve_for_bars,
    with_overrides,
    write_config,
)
from sentio.orchestration import (
    RunRecord,
    prepare_training_processes,
    run_dir,
    task_result_storage,
    workdir_lock,
)
from tasks.alerts import alert_on_failure
from tasks.artifacts import (
    publish_features_artifacts,
    publish_folds_artifacts,
    publish_ingest_artifacts,
    publish_regimes_artifacts,
    publish_registry_artifacts,
    publish_report_artifacts,
    publish_train_artifacts,
)
from tasks.caching import persisted, run_stage
from tasks.features import features_task
from tasks.folds import folds_task
from tasks.ingest import ingest_task, input_files
from tasks.regimes import regimes_task
from tasks.registry import registry_task
from tasks.report import registry_into_report_task, report_task
from tasks.warm import warm_task

FLOW_NAME = "nightly-retrain"
Publish = Callable[[dict[str, Any]], Mapping[str, str]]
"""An artifact task: publishes a stage summary's artifacts, returns their ids by key."""
ARTIFACTS: dict[str, Publish] = {
    "ingest": publish_ingest_artifacts,
    "features": publish_features_artifacts,
    "folds": publish_folds_artifacts,
    "regimes": publish_regimes_artifacts,
    "train": publish_train_artifacts,
    "registry": publish_registry_artifacts,
}
"""The artifact task of each stage (the report's is published once the registry decided)."""


@flow(
    name=FLOW_NAME,
    description="Ingest the bars and (re)train the agents; one run per night.",
    on_failure=[alert_on_failure],
    on_crashed=[alert_on_failure],
)
def nightly_flow(
    data_path: str, config_path: str | None = None, workdir: str | None = None
) -> dict[str, Any]:
    """Run the pipeline on ``data_path`` with the configuration at ``config_path``.

    Args:
        data_path: one bar file, a comma-separated list of files or a folder of
            ``.feather`` / ``.parquet`` / ``.csv`` files.
        config_path: a Sentio YAML configuration; ``None`` uses the defaults.
        workdir: overrides ``paths.workdir`` of the configuration (stage outputs, run
            folders and Prefect results); the run's ``config.yaml`` records it.

    Returns:
        The run record (also written to ``run.json``): the run folder, the inputs and
        ``stages``, the summary of each stage keyed by stage name (``"ingest"``).
    """
    logger = get_run_logger()
    cfg = with_overrides(load_config(config_path), {"paths.workdir": workdir})
    root = cfg.paths.workdir.expanduser().resolve()
    owner = str(flow_run.get_name() or flow_run.get_id() or "sentio")
    with workdir_lock(cfg, root, owner, notify=logger.warning):
        return _nightly(cfg, root, data_path, config_path)


def _nightly(
    cfg: SentioConfig, root: Path, data_path: str, config_path: str | None
) -> dict[str, Any]:
    """The body of :func:`nightly_flow`, run while it holds the working directory."""
    run = _Run.start(cfg, root, data_path, config_path)
    with run.record:  # an error is recorded in run.json (status, error) and raised
        prepare_training_processes(cfg)
        inputs = run.inputs(data_path)
        ingest = run.stage("ingest", ingest_task, inputs=inputs, cfg=cfg)
        cfg = run.sized_for_bars(cfg, int(ingest["bar_seconds"]))  # 'auto' for these bars
        bars = ingest["output"]
        features = run.stage("features", features_task, bars_path=bars, cfg=cfg)
        folds = run.stage("folds", folds_task, features_path=features["output"], cfg=cfg)
        regimes = (
            run.stage("regimes", regimes_task, bars_path=bars, folds_path=folds["output"], cfg=cfg)
            if cfg.regimes.enabled
            else None
        )
        data = {
            "bars_path": bars,
            "features_path": features["output"],
            "folds_path": folds["output"],
            "regimes_path": regimes and regimes["output"],
            "warm_path": None,
        }
        if cfg.train.warm_start == "champion":
            warm = warm_task(cfg=cfg, workdir=str(run.root))
            if warm is not None:
                data["warm_path"] = run.record.stage("warm", warm, lap=True)["output"]
        runs = run.train(cfg, n_folds=folds["n_folds"], data=data)
        report = run.record.stage(
            "report",
            report_task(
                runs=runs,
                cfg=cfg,
                out_dir=str(run.folder / "report"),
                ingest_summary=ingest,
                timings=run.record.timings,
                run_info=run.info(cfg),
            ),
        )
        decision = run.record.stage(
            "registry",
            registry_task(
                runs=runs,
                report=report,
                cfg=cfg,
                out_dir=str(run.folder / "registry"),
                bars_path=bars,
                folds_path=data["folds_path"],
                regimes_path=data["regimes_path"],
                feature_columns=list(features["columns"]),
                data_hashes=_data_hashes(run.record.data["stages"]),
                run_name=run.name,
            ),
            publish=ARTIFACTS["registry"],
        )
        registry_into_report_task(report, decision)  # the header names the decision
        run.record.published(publish_report_artifacts(report))  # once, with the decision
    return run.record.completed()


@dataclass(frozen=True)
class _Run:
    """One flow run's bookkeeping: its record, folder, working directory and result storage."""

    record: RunRecord
    folder: Path
    root: Path
    storage: Path | None

    @classmethod
    def start(cls, cfg: SentioConfig, root: Path, data_path: str, config_path: str | None) -> _Run:
        """A new run folder with the run's ``config.yaml`` and its record (``run.json``)."""
        storage = task_result_storage(root)
        folder = run_dir(root, flow_run.get_name())
        write_config(folder / "config.yaml", cfg)
        fields = _run_fields(cfg, root, folder, storage, data_path, config_path)
        return cls(RunRecord(folder, fields), folder, root, storage)

    @property
    def name(self) -> str:
        """The flow run's name (the run folder's name when it has none)."""
        return str(flow_run.get_name() or self.folder.name)

    def info(self, cfg: SentioConfig) -> dict[str, Any]:
        """What the report's header says about the run."""
        return {
            "name": self.name,
            "started": self.record.data["started"],
            "config_hash": cfg.hash(),
        }

    def inputs(self, data_path: str) -> list[str]:
        """The bar files ``data_path`` names, recorded and logged."""
        inputs = input_files(data_path)
        self.record.update(inputs=inputs)
        get_run_logger().info("run folder %s; %d input file(s)", self.folder, len(inputs))
        return inputs

    def stage(self, name: str, task: Task[..., dict[str, Any]], **params: Any) -> dict[str, Any]:
        """Run the cached stage task ``task`` on ``params`` (its output verified, recomputed
        when it does not verify), record its summary as stage ``name``, publish its
        artifacts (``ARTIFACTS[name]``) and time it."""
        summary = run_stage(persisted(task, self.storage), **params, workdir=str(self.root))
        return self.record.stage(name, summary, publish=ARTIFACTS[name], lap=True)

    def sized_for_bars(self, cfg: SentioConfig, bar_seconds: int) -> SentioConfig:
        """``cfg`` with every ``'auto'`` sized for these bars, saved as the run's
        ``config.yaml`` and hash."""
        cfg = resolve_for_bars(cfg, bar_seconds)
        write_config(self.folder / "config.yaml", cfg)
        self.record.update(config_hash=cfg.hash())
        return cfg

    def train(
        self, cfg: SentioConfig, n_folds: int, data: Mapping[str, Any]
    ) -> list[dict[str, Any]]:
        """The fan-out: one training task per fold and seed on ``train.executor``
        (:func:`flows.trainings.run_trainings`); their summaries in order."""
        jobs = [(fold, seed) for fold in range(n_folds) for seed in cfg.train.seeds]
        params = {**data, "cfg": cfg, "workdir": str(self.root)}
        storage = None if self.storage is None else str(self.storage)
        runs = run_trainings(jobs, cfg=cfg, workdir=str(self.root), params=params, storage=storage)
        return self.record.stage("train", {"runs": runs}, publish=ARTIFACTS["train"], lap=True)[
            "runs"
        ]


def _run_fields(
    cfg: SentioConfig,
    root: Path,
    folder: Path,
    storage: Path | None,
    data_path: str,
    config_path: str | None,
) -> dict[str, Any]:
    """The parameters a run's record starts with (:class:`RunRecord` adds ``started``)."""
    return {
        "flow": FLOW_NAME,
        "flow_run_id": flow_run.get_id(),
        "flow_run_name": flow_run.get_name(),
        "deployment": deployment.get_name(),
        "data_path": data_path,
        "config_path": config_path,
        "config_hash": cfg.hash(),
        "workdir": str(root),
        "run_dir": str(folder),
        "result_storage": None if storage is None else str(storage),
        "inputs": [],
    }


def _data_hashes(summaries: dict[str, Any]) -> dict[str, str]:
    """What the models were trained on, by content: the sha256 of each stage's output."""
    return {
        label: str(summaries[stage]["output_sha256"])
        for label, stage in (
            ("bars", "ingest"),
            ("features", "features"),
            ("folds", "folds"),
            ("regimes", "regimes"),
        )
        if stage in summaries
    }
