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
(fold, seed) trainings run at most ``train.max_parallel`` at a time, each in a process of
its own (:func:`tasks.train.train_all`).

Every stage but the report and the registry is cached on the content of its inputs; the
report is rewritten by every run (it holds the run's profile) and the registry stage reads
the mutable registry, so it is never cached but idempotent: on unchanged inputs it
registers no new version and leaves the champion as it is. Its decision is written to
``<run folder>/registry/decision.json`` and published as the ``registry-decision``
artifact.

To add a cached stage: ``summary = stage("<name>", <its task>, <previous outputs>, cfg,
publish=<its artifact task>)``: it runs the task with the project's result storage,
records the summary in the run record (:class:`sentio.orchestration.RunRecord`, which
keeps ``run.json`` current after every change, so a failed run still shows how far it
got and its error), publishes the artifacts and times the stage for the report's profile.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from prefect import flow, get_run_logger
from prefect.runtime import deployment, flow_run
from prefect.tasks import Task

from sentio.config import (
    SentioConfig,
    load_config,
    resolve_for_bars,
    with_overrides,
    write_config,
)
from sentio.orchestration import (
    RunRecord,
    run_dir,
    task_result_storage,
    training_slots,
    utc_now,
    workdir_lock,
)
from tasks.artifacts import (
    publish_features_artifacts,
    publish_folds_artifacts,
    publish_ingest_artifacts,
    publish_regimes_artifacts,
    publish_registry_artifacts,
    publish_report_artifacts,
    publish_train_artifacts,
)
from tasks.caching import run_stage
from tasks.features import features_task
from tasks.folds import folds_task
from tasks.ingest import ingest_task, input_files
from tasks.regimes import regimes_task
from tasks.registry import registry_task
from tasks.report import registry_into_report_task, report_task
from tasks.train import train_all, train_task

FLOW_NAME = "nightly-retrain"
P = ParamSpec("P")
R = TypeVar("R")


def _persisted(stage: Task[P, R], storage: Path | None) -> Task[P, R]:
    """``stage`` persisting its results (its cache) to ``storage``; ``None``: Prefect's default."""
    return stage if storage is None else stage.with_options(result_storage=storage)


@flow(name=FLOW_NAME, description="Ingest the bars and (re)train the agents; one run per night.")
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
    storage = task_result_storage(root)
    folder = run_dir(root, flow_run.get_name())
    name = str(flow_run.get_name() or folder.name)
    write_config(folder / "config.yaml", cfg)
    run = RunRecord(folder, _run_fields(cfg, root, folder, storage, data_path, config_path))

    def stage(key: str, task: Task[..., dict[str, Any]], *args: Any, publish: Any) -> Any:
        summary = run.stage(key, run_stage(_persisted(task, storage), *args, str(root)))
        run.published(publish(summary))
        run.lap(key)
        return summary

    try:
        inputs = input_files(data_path)
        run.update(inputs=inputs)
        get_run_logger().info("run folder %s; %d input file(s)", folder, len(inputs))
        ingest = stage("ingest", ingest_task, inputs, cfg, publish=publish_ingest_artifacts)
        cfg = resolve_for_bars(cfg, int(ingest["bar_seconds"]))  # 'auto' sized for these bars
        write_config(folder / "config.yaml", cfg)
        run.update(config_hash=cfg.hash())
        bars = ingest["output"]
        features = stage("features", features_task, bars, cfg, publish=publish_features_artifacts)
        folds = stage("folds", folds_task, features["output"], cfg, publish=publish_folds_artifacts)
        regimes = (
            stage(
                "regimes",
                regimes_task,
                bars,
                folds["output"],
                cfg,
                publish=publish_regimes_artifacts,
            )
            if cfg.regimes.enabled
            else None
        )
        paths = (bars, features["output"], folds["output"], regimes and regimes["output"])
        runs = train_all(
            _persisted(train_task, storage),
            [(f, seed) for f in range(folds["n_folds"]) for seed in cfg.train.seeds],
            (*paths, cfg, str(root)),
            training_slots(cfg),
            str(root),
        )
        run.published(publish_train_artifacts(run.stage("train", {"runs": runs})))
        run.lap("train")
        info = {"name": name, "started": run.data["started"], "config_hash": cfg.hash()}
        report = run.stage(
            "report",
            report_task(runs, cfg, str(folder / "report"), ingest, run.timings, info),
        )
        decision = run.stage(
            "registry",
            registry_task(
                runs=runs,
                report=report,
                cfg=cfg,
                out_dir=str(folder / "registry"),
                bars_path=paths[0],
                folds_path=paths[2],
                regimes_path=paths[3],
                feature_columns=list(features["columns"]),
                data_hashes=_data_hashes(run.data["stages"]),
                run_name=name,
            ),
        )
        run.published(publish_registry_artifacts(decision))
        registry_into_report_task(report, decision)  # the header names the decision
        run.published(publish_report_artifacts(report))  # once, with the decision
    except Exception as exc:
        run.failed(exc)
        raise
    return run.completed()


def _run_fields(
    cfg: SentioConfig,
    root: Path,
    folder: Path,
    storage: Path | None,
    data_path: str,
    config_path: str | None,
) -> dict[str, Any]:
    """The parameters a run's record starts with."""
    return {
        "flow": FLOW_NAME,
        "flow_run_id": flow_run.get_id(),
        "flow_run_name": flow_run.get_name(),
        "deployment": deployment.get_name(),
        "started": utc_now(),
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
