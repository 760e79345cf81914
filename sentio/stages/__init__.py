"""Pipeline stages as plain functions: paths and small summaries in, paths and summaries out.

One module per stage, in the order of the pipeline: :mod:`~sentio.stages.ingest`,
:mod:`~sentio.stages.features`, :mod:`~sentio.stages.folds`,
:mod:`~sentio.stages.regimes`, :mod:`~sentio.stages.train` (training and backtest with
the references), :mod:`~sentio.stages.report` and :mod:`~sentio.stages.registry`
(registration and the promotion gate); what they share (input files, stage
folders and their verified summaries, :func:`cached_stage`) is in
:mod:`~sentio.stages.common`.

Each stage writes content-addressed outputs under ``workdir/<stage>/<key>/`` where the
key hashes the content of the inputs, the configuration sections the stage reads and
the version of the code that does the work: the stage's own module,
:mod:`~sentio.stages.common` and the library modules it calls, never another stage's
module. The Prefect tasks in ``tasks/`` call these functions and use the same keys as
their cache keys; without Prefect, a stage whose outputs already exist and verify is not
recomputed either. The report and registry stages are never cached and have no key.
"""

from __future__ import annotations

from sentio.regimes.training_rows import regime_training_rows
from sentio.stages.common import (
    SIDECAR_SUFFIXES,
    STAGE_SUMMARY,
    bar_seconds_of,
    cached_stage,
    config_for_data,
    index_file,
    load_folds,
    relocate_summary,
    resolve_inputs,
    stage_modules,
    stage_summary,
    summary_problems,
    workdir_root,
)
from sentio.stages.features import features_key, features_stage
from sentio.stages.folds import folds_key, folds_stage
from sentio.stages.ingest import ingest_code_version, ingest_key, ingest_stage
from sentio.stages.regimes import regimes_key, regimes_stage
from sentio.stages.registry import registry_stage
from sentio.stages.report import report_stage, run_profile
from sentio.stages.train import (
    fold_market,
    reference_backtests,
    train_key,
    train_stage,
    training_staging,
    truth_of,
)

__all__ = [
    "SIDECAR_SUFFIXES",
    "STAGE_SUMMARY",
    "bar_seconds_of",
    "cached_stage",
    "config_for_data",
    "features_key",
    "features_stage",
    "fold_market",
    "folds_key",
    "folds_stage",
    "index_file",
    "ingest_code_version",
    "ingest_key",
    "ingest_stage",
    "load_folds",
    "reference_backtests",
    "regime_training_rows",
    "regimes_key",
    "regimes_stage",
    "registry_stage",
    "relocate_summary",
    "report_stage",
    "resolve_inputs",
    "run_profile",
    "stage_modules",
    "stage_summary",
    "summary_problems",
    "train_key",
    "train_stage",
    "training_staging",
    "truth_of",
    "workdir_root",
]
