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

To add a stage: call ``run_stage(_persisted(<its task>, storage), ...)`` with the previous
summaries' paths, store its summary in ``record["stages"][<name>]``, ``_save`` and publish
its artifacts; ``run.json`` is kept current after every stage, so a failed run still
shows how far it got (and its error).
"""

from __future__ import annotations

import time
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
    run_dir,
    task_result_storage,
    training_slots,
    utc_now,
    workdir_lock,
    write_run_record,
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


def _save(folder: Path, record: dict[str, Any]) -> None:
    write_run_record(folder, record)


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
    logger = get_run_logger()
    storage = task_result_storage(root)
    folder = run_dir(root, flow_run.get_name())
    write_config(folder / "config.yaml", cfg)
    record: dict[str, Any] = {
        "flow": FLOW_NAME,
        "flow_run_id": flow_run.get_id(),
        "flow_run_name": flow_run.get_name(),
        "deployment": deployment.get_name(),
        "started": utc_now(),
        "finished": None,
        "status": "running",
        "data_path": data_path,
        "config_path": config_path,
        "config_hash": cfg.hash(),
        "workdir": str(root),
        "run_dir": str(folder),
        "result_storage": None if storage is None else str(storage),
        "inputs": [],
        "stages": {},
        "artifacts": {},
    }
    timings: dict[str, float] = {}  # seconds per stage, for the report's profile
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[stage] = now - clock
        clock = now

    try:
        inputs = input_files(data_path)
        record["inputs"] = inputs
        _save(folder, record)
        logger.info(
            "run folder %s; %d input file(s); task results in %s", folder, len(inputs), storage
        )

        record["stages"]["ingest"] = run_stage(
            _persisted(ingest_task, storage), inputs, cfg, str(root)
        )
        # settings left 'auto' take their values for the bar length of these data
        cfg = resolve_for_bars(cfg, int(record["stages"]["ingest"]["bar_seconds"]))
        write_config(folder / "config.yaml", cfg)
        record["config_hash"] = cfg.hash()
        _save(folder, record)
        record["artifacts"].update(publish_ingest_artifacts(record["stages"]["ingest"]))
        lap("ingest")

        bars = record["stages"]["ingest"]["output"]
        record["stages"]["features"] = run_stage(
            _persisted(features_task, storage), bars, cfg, str(root)
        )
        _save(folder, record)
        record["artifacts"].update(publish_features_artifacts(record["stages"]["features"]))
        lap("features")

        features = record["stages"]["features"]["output"]
        record["stages"]["folds"] = run_stage(
            _persisted(folds_task, storage), features, cfg, str(root)
        )
        _save(folder, record)
        record["artifacts"].update(publish_folds_artifacts(record["stages"]["folds"]))
        lap("folds")

        folds = record["stages"]["folds"]["output"]
        if cfg.regimes.enabled:
            record["stages"]["regimes"] = run_stage(
                _persisted(regimes_task, storage), bars, folds, cfg, str(root)
            )
            _save(folder, record)
            record["artifacts"].update(publish_regimes_artifacts(record["stages"]["regimes"]))
            lap("regimes")

        regimes = record["stages"]["regimes"]["output"] if cfg.regimes.enabled else None
        jobs = [
            (fold, seed)
            for fold in range(record["stages"]["folds"]["n_folds"])
            for seed in cfg.train.seeds
        ]
        slots = training_slots(cfg)
        logger.info(
            "training %d (fold, seed) pair(s), %d at a time, %d torch thread(s) each",
            len(jobs),
            slots,
            cfg.train.torch_threads,
        )
        runs = train_all(
            _persisted(train_task, storage),
            jobs,
            (bars, features, folds, regimes, cfg, str(root)),
            slots,
            str(root),
        )
        record["stages"]["train"] = {"runs": runs}
        _save(folder, record)
        record["artifacts"].update(publish_train_artifacts(record["stages"]["train"]))
        lap("train")

        run_info = {
            "name": str(record["flow_run_name"] or folder.name),
            "started": record["started"],
            "config_hash": record["config_hash"],
        }
        record["stages"]["report"] = report_task(
            runs, cfg, str(folder / "report"), record["stages"]["ingest"], timings, run_info
        )
        _save(folder, record)

        st = record["stages"]
        data_hashes = {  # what the models were trained on, by content
            label: str(st[name]["output_sha256"])
            for label, name in (
                ("bars", "ingest"),
                ("features", "features"),
                ("folds", "folds"),
                ("regimes", "regimes"),
            )
            if name in st
        }
        record["stages"]["registry"] = registry_task(
            runs,
            st["report"],
            cfg,
            str(folder / "registry"),
            bars,
            folds,
            regimes,
            list(st["features"]["columns"]),
            data_hashes,
            str(record["flow_run_name"] or folder.name),
        )
        _save(folder, record)
        record["artifacts"].update(publish_registry_artifacts(record["stages"]["registry"]))
        # the report's header names the model version and the registry's decision; the
        # report's artifacts are published once, with it
        registry_into_report_task(st["report"], record["stages"]["registry"])
        record["artifacts"].update(publish_report_artifacts(st["report"]))
    except Exception as exc:
        record.update(status="failed", finished=utc_now(), error=f"{type(exc).__name__}: {exc}")
        _save(folder, record)
        raise

    record.update(status="completed", finished=utc_now())
    _save(folder, record)
    return record
