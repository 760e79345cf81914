"""The report of a nightly run: out-of-sample results of the trained agents, with honest inference.

:func:`build_report` reads the outputs of the train stage (one summary dict per fold and
seed, see :func:`sentio.stages.train_stage`) and writes into ``out_dir``:

* ``metrics.json`` -- every number of the report (strict JSON, NaN as ``null``), and
  everything the two pages are rendered from (``run``, ``registry``, ``data_quality``,
  ``labels``), so that :func:`add_registry_decision` rewrites the pages without
  recomputing anything;
* ``report.md`` -- the header, the verdict, the tables, with the plots as PNG files in
  ``out_dir/plots/``;
* ``report.html`` -- a self-contained page (plots embedded as base64 PNG data URIs, inline
  CSS only, no external resource).

Reading order: a header (run, date, data range and frequency, folds and seeds, model
version and registry decision, a warning when the ETF prices were derived), the verdict
said once beside the comparison with the references, plain-word flags for a near-flat or
an over-trading agent, then the tables (the agent beside the references, per fold, per
regime, Sharpe-ratio inference, per seed, model selection, data quality, profile) and
the plots (dates on every time axis, fold boundaries drawn, regimes named by volatility
rank, exposure as a daily mean and a histogram).

Inference: the test bars of each seed stitched across folds in time order, with
stationary-bootstrap confidence intervals; the dispersion across seeds; the headline
series (the seed ensemble: per bar, the mean return of the seeds over the bars they
share) with PSR and DSR on the per-bar Sharpe ratio (the number of trials is the number
of stitched strategies actually run, one configuration x the seeds, and their Sharpe
variance). Each seed's stitched series gets its own PSR and DSR with the same trials
(``seeds.<seed>.psr`` / ``dsr`` in ``metrics.json``): the registry's gate reads a
seed's DSR from there. The verdict claims an edge only when the bootstrap interval of
the stitched Sharpe ratio lies above zero AND the DSR reaches ``cfg.registry.min_dsr``.

The package, one concept a module: :mod:`~sentio.report.labels` (references, regimes and
bar frequency in words), :mod:`~sentio.report.times` (UTC and New York timestamps),
:mod:`~sentio.report.series` (loading and stitching per-bar frames),
:mod:`~sentio.report.numbers` (metrics, flags, verdict, comparison),
:mod:`~sentio.report.figures` (the plots), :mod:`~sentio.report.formatting` (cells and
tables), :mod:`~sentio.report.pages` (the markdown and HTML pages) and
:mod:`~sentio.report.build` (:func:`build_report`, :func:`add_registry_decision`).

Library code only: no orchestration imports.
"""

from __future__ import annotations

from sentio.report.build import (
    add_registry_decision,
    build_report,
)
from sentio.report.figures import (
    PLOT_MAX_POINTS,
    time_figures,
)
from sentio.report.formatting import (
    markdown_table,
    md_cell,
)
from sentio.report.labels import (
    CAUSAL_REFERENCES,
    REFERENCE_LABELS,
    REFERENCES,
    reference_labels,
    regime_name,
)
from sentio.report.numbers import (
    CI_STATISTICS,
    NEAR_FLAT_EXPOSURE,
    NEAR_FLAT_MAX_EXPOSURE_SHARE,
    NEAR_FLAT_SESSIONS_PER_TRADE,
    OVERTRADING_ANNUAL_TURNOVER,
    OVERTRADING_MIN_COSTS,
    OVERTRADING_TURNOVER_PER_BAR,
    activity_flags,
    comparison,
    stitched_figures,
    stood_aside,
    verdict,
    warm_started,
)
from sentio.report.pages import (
    TITLE,
    data_quality_rows,
    flag_lines,
    gap_text,
    header_lines,
    registry_text,
    validation_rows,
)
from sentio.report.series import (
    load_bars,
    stitch,
    trade_returns,
)

__all__ = [
    "CAUSAL_REFERENCES",
    "CI_STATISTICS",
    "NEAR_FLAT_EXPOSURE",
    "NEAR_FLAT_MAX_EXPOSURE_SHARE",
    "NEAR_FLAT_SESSIONS_PER_TRADE",
    "OVERTRADING_ANNUAL_TURNOVER",
    "OVERTRADING_MIN_COSTS",
    "OVERTRADING_TURNOVER_PER_BAR",
    "PLOT_MAX_POINTS",
    "REFERENCES",
    "REFERENCE_LABELS",
    "TITLE",
    "activity_flags",
    "add_registry_decision",
    "build_report",
    "comparison",
    "data_quality_rows",
    "flag_lines",
    "gap_text",
    "header_lines",
    "load_bars",
    "markdown_table",
    "md_cell",
    "reference_labels",
    "regime_name",
    "registry_text",
    "stitch",
    "stitched_figures",
    "stood_aside",
    "warm_started",
    "time_figures",
    "trade_returns",
    "validation_rows",
    "verdict",
]
