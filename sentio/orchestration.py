"""Orchestration helpers that do not need Prefect.

Prefect reads most of its settings once, when it is first imported, so the settings
Sentio relies on are applied as environment defaults by :func:`prefect_env_defaults`
*before* ``import prefect`` (the CLI calls it first thing; the flows call it again so
that flow-run subprocesses inherit it). Explicit values in the user's environment always
win: every default goes through ``os.environ.setdefault``.

The rest of this module is the plain-Python part of a flow run: its rules (the
workdir lock it holds, how many trainings it starts at once), the run folder
(``workdir/runs/<run name>/`` with ``config.yaml`` and ``run.json``) and the text of the
data-quality artifacts, so that ``tasks/`` and ``flows/`` stay a few lines long.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from sentio.config import PathsConfig, SentioConfig
from sentio.io import write_json_atomic
from sentio.processes import parallel_slots, start_fork_server
from sentio.text import warm_start_text
from sentio.times import now_utc, now_utc_text
from sentio.workdir import WorkdirLock

RESULTS_DIRNAME = "prefect-results"
"""Folder under the workdir where Prefect persists task results (and cache records)."""

RUNS_DIRNAME = "runs"
"""Folder under the workdir holding one folder per flow run."""

# Telemetry: DO_NOT_TRACK=1 switches off the client-side SDK analytics (checked at
# import and before every event); PREFECT_SERVER_ANALYTICS_ENABLED=false switches off
# the anonymous usage report a locally started Prefect server sends.
_TELEMETRY_DEFAULTS: dict[str, str] = {
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}
# Prefect 3 reads local result storage from PREFECT_RESULTS_LOCAL_STORAGE_PATH and, as a
# legacy alias, PREFECT_LOCAL_STORAGE_PATH (the first name wins when both are set).
LOCAL_STORAGE_ENV = "PREFECT_RESULTS_LOCAL_STORAGE_PATH"
_LOCAL_STORAGE_ALIASES = (LOCAL_STORAGE_ENV, "PREFECT_LOCAL_STORAGE_PATH")
# A configured storage block replaces local storage altogether (e.g. S3 for remote workers).
_STORAGE_BLOCK_ENV = (
    "PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK",
    "PREFECT_DEFAULT_RESULT_STORAGE_BLOCK",
)
# Remembers (also for child processes, which may get Prefect's import-time value of the
# storage path) every storage path Sentio itself defaulted, os.pathsep-separated, so that
# none of them is mistaken for an explicit user choice when a run uses another workdir.
DEFAULTS_MARKER_ENV = "SENTIO_DEFAULT_RESULTS_PATHS"

_ARTIFACT_KEY = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def default_workdir() -> Path:
    """The working directory of the default configuration, as an absolute path.

    It is ``paths.workdir`` of a default :class:`~sentio.config.SentioConfig`
    (``.sentio``) resolved against the current directory, for callers that must set
    things up before a configuration is loaded.
    """
    return Path(PathsConfig().workdir).expanduser().resolve()


def results_dir(workdir: str | os.PathLike[str]) -> Path:
    """Where Prefect task results of the project at ``workdir`` are persisted."""
    return Path(workdir).expanduser().resolve() / RESULTS_DIRNAME


def prefect_env_defaults(workdir: str | os.PathLike[str]) -> dict[str, str]:
    """Apply, and return, the Prefect settings Sentio needs, as environment defaults.

    Call it before ``import prefect`` for the settings to reach the importing process;
    processes started afterwards (flow-run subprocesses of ``serve``, a local server)
    inherit them either way. Values already in the environment are kept.

    Settings:

    - ``DO_NOT_TRACK=1`` and ``PREFECT_SERVER_ANALYTICS_ENABLED=false``: no telemetry;
    - ``PREFECT_RESULTS_LOCAL_STORAGE_PATH=<workdir>/prefect-results``: persisted results
      (the content-hash cache of every stage, failed-run records) live with the project,
      not in ``~/.prefect/storage``. Left alone when the legacy alias
      ``PREFECT_LOCAL_STORAGE_PATH`` is set.

    Returns:
        The value now in effect for each setting, keyed by environment variable.
    """
    effective = {
        name: os.environ.setdefault(name, value) for name, value in _TELEMETRY_DEFAULTS.items()
    }
    user_storage = _user_storage_path()
    if user_storage is None:
        ours = str(results_dir(workdir))
        os.environ[LOCAL_STORAGE_ENV] = ours
        known = _sentio_defaults()
        if ours not in known:
            os.environ[DEFAULTS_MARKER_ENV] = os.pathsep.join([*known, ours])
    effective[LOCAL_STORAGE_ENV] = os.environ.get(LOCAL_STORAGE_ENV) or str(user_storage)
    return effective


def _sentio_defaults() -> list[str]:
    return [p for p in os.environ.get(DEFAULTS_MARKER_ENV, "").split(os.pathsep) if p]


def _user_storage_path() -> str | None:
    """The local result storage path the user set, ignoring defaults Sentio set earlier."""
    ours = _sentio_defaults()
    for name in _LOCAL_STORAGE_ALIASES:
        value = os.environ.get(name)
        if value and value not in ours:
            return value
    return None


def task_result_storage(workdir: str | os.PathLike[str]) -> Path | None:
    """The folder a flow's tasks should persist results to, after applying the defaults.

    Prefect fixes its settings at import, so a flow passes this path to its tasks
    explicitly: ``<workdir>/prefect-results`` of the run's configuration, unless the user
    set a local storage path (then that one). ``None`` means a result storage *block* is
    configured in the environment and Prefect's own default should be used.
    """
    prefect_env_defaults(workdir)
    if any(os.environ.get(name) for name in _STORAGE_BLOCK_ENV):
        return None
    user = _user_storage_path()
    return Path(user).expanduser().resolve() if user else results_dir(workdir)


# --------------------------------------------------------------------------- run rules


def workdir_lock(
    cfg: SentioConfig, workdir: str | os.PathLike[str], owner: str, notify: Any = None
) -> WorkdirLock:
    """The lock a run holds on its working directory (``paths.on_busy``, ``busy_timeout``)."""
    return WorkdirLock(
        workdir,
        owner=owner,
        on_busy=cfg.paths.on_busy,
        timeout=cfg.paths.busy_timeout,
        notify=notify,
    )


def training_slots(cfg: SentioConfig) -> int:
    """How many trainings a run starts at once (``train.max_parallel``, default: the cores)."""
    return parallel_slots(cfg.train.max_parallel, cfg.train.torch_threads)


def prepare_training_processes(cfg: SentioConfig) -> None:
    """Where this process will start the trainings' processes (``train.executor: local``),
    start their fork server now (:func:`sentio.processes.start_fork_server`): it loads its
    libraries while the run's data stages go on."""
    if cfg.train.executor == "local":
        start_fork_server(cfg.train.torch_threads)


# --------------------------------------------------------------------------- run folder


def run_dir(workdir: str | os.PathLike[str], run_name: str | None = None) -> Path:
    """Create and return a new folder ``workdir/runs/<run name>`` for one flow run.

    ``run_name`` is the flow-run name (made file-system safe); without one, a UTC
    timestamp is used. An existing folder is never reused: a numeric suffix is added.
    """
    name = _UNSAFE_NAME.sub("-", run_name or "").strip("-.")
    if not name:
        name = now_utc().strftime("%Y%m%dT%H%M%S.%fZ")
    base = Path(workdir).expanduser().resolve() / RUNS_DIRNAME
    base.mkdir(parents=True, exist_ok=True)
    for n in range(1, 10_000):
        candidate = base / (name if n == 1 else f"{name}-{n}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(f"{base}: no free run folder name for {name!r}")  # pragma: no cover


def write_run_record(folder: str | os.PathLike[str], record: Mapping[str, Any]) -> Path:
    """Atomically write ``run.json`` (the run's parameters and stage summaries) into ``folder``."""
    return write_json_atomic(Path(folder) / "run.json", dict(record))


class RunRecord:
    """A flow run's record, kept current in ``<run folder>/run.json`` after every change.

    ``fields`` are the run's parameters (name, inputs, configuration hash ...); the record
    adds ``started`` (now, unless ``fields`` has it), ``status`` (running, then completed
    or failed with its ``error``), ``finished``, ``stages`` (each stage's summary by
    name), ``artifacts`` (the ids of the artifacts published, by key) and, in
    :attr:`timings`, the seconds between laps (the report's profile). A failed run's
    record still shows how far it got.

    Used as a context manager, an exception raised inside the block marks the run failed
    (:meth:`failed`) and propagates::

        with RunRecord(folder, fields) as run:
            run.stage("ingest", ingest(...), publish=publish_ingest, lap=True)
        record = run.completed()
    """

    def __init__(self, folder: str | os.PathLike[str], fields: Mapping[str, Any]) -> None:
        self.folder = Path(folder)
        self.data: dict[str, Any] = dict(fields)
        self.data.setdefault("started", now_utc_text())
        self.data.update(finished=None, status="running", stages={}, artifacts={})
        self.timings: dict[str, float] = {}
        self._clock = time.perf_counter()
        self.save()

    def __enter__(self) -> RunRecord:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Record an :class:`Exception` that ends the block as the run's failure; it propagates."""
        if isinstance(exc, Exception):
            self.failed(exc)

    def save(self) -> None:
        """Write ``run.json``."""
        write_run_record(self.folder, self.data)

    def update(self, **fields: Any) -> None:
        """Set top-level fields and save."""
        self.data.update(fields)
        self.save()

    def stage(
        self,
        name: str,
        summary: dict[str, Any],
        *,
        publish: Callable[[dict[str, Any]], Mapping[str, str]] | None = None,
        lap: bool = False,
    ) -> dict[str, Any]:
        """Record stage ``name``'s summary, save, return the summary.

        ``publish(summary)``, when given, publishes the stage's artifacts and returns their
        ids (:meth:`published`); ``lap`` closes the stage's time (:meth:`lap`).
        """
        self.data["stages"][name] = summary
        self.save()
        if publish is not None:
            self.published(publish(summary))
        if lap:
            self.lap(name)
        return summary

    def published(self, ids: Mapping[str, str]) -> None:
        """Record the ids of published artifacts (by key) and save."""
        self.data["artifacts"].update(ids)
        self.save()

    def lap(self, name: str) -> None:
        """Seconds since the previous lap (or the start) as the time of stage ``name``."""
        now = time.perf_counter()
        self.timings[name] = now - self._clock
        self._clock = now

    def failed(self, exc: BaseException) -> None:
        """The run failed with ``exc``: say so and save."""
        self.update(status="failed", finished=now_utc_text(), error=f"{type(exc).__name__}: {exc}")

    def completed(self) -> dict[str, Any]:
        """The run completed: say so, save and return the record."""
        self.update(status="completed", finished=now_utc_text())
        return self.data


# --------------------------------------------------------------------------- artifacts


def check_artifact_key(key: str) -> str:
    """Return ``key`` if it is a valid Prefect artifact key (lowercase-dash form)."""
    if not _ARTIFACT_KEY.match(key):
        raise ValueError(
            f"artifact key {key!r} must be lowercase letters, digits and single dashes"
        )
    return key


def _label(column: str) -> str:
    return column.removeprefix("rows_").replace("_", " ")


def _dropped_columns(summary: Mapping[str, Any]) -> list[str]:
    return sorted(k for k in summary if k.startswith("rows_dropped_"))


def _n(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)


def ingest_summary_table(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Rows ``{"metric", "value"}`` of the ingest-summary table artifact.

    Counts stay integers; everything else is text. Quarantine reasons appear as
    ``quarantined: <reason>`` and input files as ``input sha256: <path>``.
    """
    rows: list[dict[str, Any]] = []

    def add(metric: str, value: Any) -> None:
        if isinstance(value, bool) or value is None:
            value = str(value).lower() if isinstance(value, bool) else "-"
        elif not isinstance(value, int | float):
            value = str(value)
        rows.append({"metric": metric, "value": value})

    add("rows read", summary.get("rows_read"))
    add("rows kept", summary.get("rows_kept"))
    for col in _dropped_columns(summary):
        add(f"rows {_label(col)}", summary[col])
    add("rows quarantined", summary.get("rows_quarantined"))
    for reason, n in sorted((summary.get("quarantined_by_reason") or {}).items()):
        add(f"quarantined: {reason}", n)
    add("symbols", ", ".join(summary.get("symbols") or []))
    add("derived symbols", ", ".join(summary.get("derived_symbols") or []) or "none")
    add("frequency", summary.get("frequency"))
    add("bar seconds", summary.get("bar_seconds"))
    add("start", summary.get("start"))
    add("end", summary.get("end"))
    add("sessions", summary.get("sessions"))
    add("incomplete sessions", summary.get("incomplete_sessions"))
    gaps = gap_lines(summary)
    add(
        "missing sessions",
        sum(int(g.get("sessions_missing") or 0) for g in summary.get("gaps") or []),
    )
    for i, text in enumerate(gaps):
        add(f"gap {i + 1}", text)
    add("gx success", summary.get("gx_success"))
    add("output", summary.get("output"))
    add("output sha256", summary.get("output_sha256"))
    for path, digest in sorted((summary.get("inputs") or {}).items()):
        add(f"input sha256: {path}", digest)
    add("report", summary.get("report"))
    add("quarantine file", summary.get("quarantine"))
    add("gx html", summary.get("gx_html"))
    add("cache key", summary.get("key"))
    return rows


def _md_table(header: list[str], rows: list[list[Any]]) -> list[str]:
    """Lines of a markdown table, every cell escaped (``|`` and newlines)."""
    from sentio.report import markdown_table

    return markdown_table(header, rows).splitlines()


def _code(value: Any) -> str:
    return f"`{value}`" if value not in (None, "") else "none"


def gap_lines(summary: Mapping[str, Any]) -> list[str]:
    """The data gaps of an ingest summary (``gaps``, absent = none), one line each."""
    from sentio.report import gap_text

    return [gap_text(dict(g)) for g in summary.get("gaps") or []]


def ingest_quality_markdown(summary: Mapping[str, Any]) -> str:
    """The data-quality markdown artifact of an ingest summary (tables escaped)."""
    gx = summary.get("gx_success")
    verdict = "passed" if gx else ("failed" if gx is not None else "not run")
    counts = [
        ["read", _n(summary.get("rows_read"))],
        ["kept", _n(summary.get("rows_kept"))],
        *([_label(c), _n(summary[c])] for c in _dropped_columns(summary)),
        ["quarantined", _n(summary.get("rows_quarantined"))],
    ]
    lines = [
        "# Data quality: ingest",
        "",
        f"Great Expectations suite: **{verdict}**",
        "",
        *_md_table(["rows", "count"], counts),
        "",
    ]
    reasons = summary.get("quarantined_by_reason") or {}
    if any(reasons.values()):
        lines += ["## Quarantined rows by reason", ""]
        lines += _md_table(
            ["reason", "rows"], [[r, _n(n)] for r, n in sorted(reasons.items()) if n]
        )
        lines.append("")
    derived = summary.get("derived_symbols") or []
    gaps = gap_lines(summary)
    lines += [
        "## Data",
        "",
        f"- symbols: {', '.join(summary.get('symbols') or []) or '-'}",
        f"- derived symbols: {', '.join(derived) if derived else 'none'}"
        + (" (prices derived from the underlying with a daily leverage reset)" if derived else ""),
        f"- frequency: {summary.get('frequency')} ({summary.get('bar_seconds')} s bars)",
        f"- range: {summary.get('start')} to {summary.get('end')}",
        f"- sessions: {summary.get('sessions')} (incomplete sessions rejected: "
        f"{summary.get('incomplete_sessions')})",
        "- missing sessions: "
        + (
            f"{sum(int(g.get('sessions_missing') or 0) for g in summary['gaps'])} "
            f"in {len(gaps)} gap(s):"
            if gaps
            else "none"
        ),
        *(f"  - {g}" for g in gaps),
        "",
        "## Files",
        "",
        *_md_table(
            ["file", "sha256"],
            [[_code(p), _code(h)] for p, h in sorted((summary.get("inputs") or {}).items())]
            + [[f"output {_code(summary.get('output'))}", _code(summary.get("output_sha256"))]],
        ),
        "",
        f"- ingest report: {_code(summary.get('report'))}",
        f"- quarantine: {_code(summary.get('quarantine'))}",
        f"- GX data docs: {_code(summary.get('gx_html'))}",
        "",
    ]
    return "\n".join(lines)


def report_artifact_markdown(report_md: str) -> str:
    """The report's markdown for the Prefect UI: ``report.md`` with its plot images (files
    beside it, which the UI cannot show) replaced by a pointer to the HTML page."""
    head, sep, _ = report_md.partition("\n## Plots\n")
    if not sep:
        return report_md
    return (
        head + "\n## Plots\n\nThe plots are embedded in report.html (the report-html artifact).\n"
    )


def _round(value: Any, digits: int = 6) -> Any:
    return round(value, digits) if isinstance(value, float) else value


def feature_summary_table(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Rows of the feature-summary table artifact: one per feature column."""
    return [{k: _round(v) for k, v in row.items()} for row in summary.get("table") or []]


def regime_summary_table(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Rows of the regime-summary table artifact: one per fold and regime.

    Each fold's model is fitted on that fold's training rows; the statistics are over the
    fold's TEST rows (out of sample): share of bars, mean return and volatility per bar,
    mean dwell time in bars, and the method used (``hmm`` or the ``vol_quantile``
    fallback) with the rows it was fitted on.
    """
    rows: list[dict[str, Any]] = []
    for fold in summary.get("folds") or []:
        for row in (fold.get("regimes_test") or {}).get("regimes") or []:
            rows.append(
                {
                    "fold": fold.get("fold"),
                    "regime": row.get("label"),
                    "share of test bars": _round(row.get("share")),
                    "mean return": _round(row.get("mean_return"), 8),
                    "volatility": _round(row.get("volatility"), 8),
                    "mean dwell (bars)": _round(row.get("mean_dwell_bars"), 2),
                    "runs": row.get("n_runs"),
                    "method": fold.get("method"),
                    "fitted on rows": fold.get("rows_train"),
                }
            )
    return rows


def fold_table(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Rows of the folds table artifact: boundaries, sizes, purged and embargoed counts."""
    rows: list[dict[str, Any]] = []
    for fold in summary.get("folds") or []:
        blocks = fold.get("test_blocks") or []
        rows.append(
            {
                "fold": fold.get("fold"),
                "test from": blocks[0]["start"] if blocks else None,
                "test to": blocks[-1]["end"] if blocks else None,
                "test blocks": len(blocks),
                "test rows": fold.get("test_rows"),
                "train rows": fold.get("train_rows"),
                "train ranges": fold.get("n_train_ranges"),
                "purged": fold.get("purged"),
                "embargoed": fold.get("embargoed"),
            }
        )
    return rows


def train_table(train: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Rows of the training table artifact: one per fold and seed.

    Training steps and throughput, then the out-of-sample backtest of the deterministic
    policy on the fold's test blocks beside the reference policies' Sharpe ratios (point
    estimates; the report stage adds confidence intervals), and how the training started
    (``warm start``: from the champion's weights, or cold and why).
    """
    rows: list[dict[str, Any]] = []
    for run in train.get("runs") or []:
        m = run.get("metrics") or {}
        refs = run.get("references") or {}
        t = run.get("train") or {}
        rows.append(
            {
                "fold": run.get("fold"),
                "seed": run.get("seed"),
                "steps": t.get("num_timesteps"),
                "steps/s": _round(t.get("steps_per_second"), 1),
                "device": t.get("device"),
                "rollout": t.get("rollout"),
                "envs": t.get("n_envs"),
                "test bars": run.get("test_bars"),
                "sharpe": _round(m.get("sharpe"), 3),
                "total return": _round(m.get("total_return"), 5),
                "max drawdown": _round(m.get("max_drawdown"), 5),
                "trades": run.get("n_trades"),
                "sharpe buy-and-hold TQQQ": _round((refs.get("long_etf") or {}).get("sharpe"), 3),
                "sharpe trend rule": _round((refs.get("trend") or {}).get("sharpe"), 3),
                "sharpe underlying": _round((refs.get("underlying") or {}).get("sharpe"), 3),
                "warm start": warm_start_text(run.get("warm_start")),
            }
        )
    return rows
