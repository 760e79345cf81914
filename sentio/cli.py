"""The ``sentio`` command.

Every error a user can cause prints one line on stderr (``error: ...``) and exits
non-zero; tracebacks are for bugs. The orchestration commands (``run`` and ``serve``)
import Prefect lazily, so the library and the data commands never load it.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
import typer.core

from sentio import __version__
from sentio.config import SentioConfig, dump_config, load_config, option_help, with_overrides
from sentio.errors import ConfigError, ResourceError, SentioError
from sentio.gc import STORAGE_GRACE


def _flags_take_no_value() -> None:
    """Keep ``--help`` free of a type placeholder (``<bool>``) on flags.

    Typer's rich help prints every option's type, flags included, although a flag takes
    no value; its plain help (``TyperOption.get_help_record``) already skips flags and
    counters. Give the rich help the same rule. Idempotent.
    """
    option = typer.core.TyperOption
    original = getattr(option, "display_type_rich", None)
    if original is None or getattr(original, "_sentio_flags", False):
        return

    def display_type_rich(self: typer.core.TyperOption, ctx: Any) -> str | None:
        if self.is_flag or self.count:
            return None
        result: str | None = original(self, ctx)
        return result

    display_type_rich._sentio_flags = True  # type: ignore[attr-defined]
    option.display_type_rich = display_type_rich  # type: ignore[method-assign]


_flags_take_no_value()

app = typer.Typer(
    name="sentio",
    help="Sentio: nightly-retrained PPO agents for TQQQ/SQQQ. Data, ingest and the nightly flow.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

F = TypeVar("F", bound=Callable[..., Any])


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"sentio {__version__}")
        raise typer.Exit(0)


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            help="Print the Sentio version and exit.",
            callback=_print_version,
            is_eager=True,
        ),
    ] = False,
) -> None:
    """The options of ``sentio`` itself (the group's help is the ``Typer`` one above)."""


ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="YAML configuration (defaults when omitted).", show_default=False
    ),
]


def _fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def user_errors(func: F) -> F:
    """Turn errors a user can cause into one line on stderr and a non-zero exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except SentioError as err:
            raise _fail(str(err), err.exit_code) from None
        except FileNotFoundError as err:
            raise _fail(f"{err.filename}: file not found", 3) from None
        except PermissionError as err:
            raise _fail(f"{err.filename}: permission denied", 3) from None
        except MemoryError:
            raise _fail(
                "out of memory; lower train.n_envs, agent.batch_size or train.max_parallel, "
                "or give the command less data",
                ResourceError.exit_code,
            ) from None
        except OSError as err:
            from sentio.io import is_disk_full

            if is_disk_full(err):
                where = err.filename or "the working directory's disk"
                raise _fail(
                    f"{where}: no space left on the device; free space there (or point "
                    "paths.workdir at a larger disk) and run again",
                    ResourceError.exit_code,
                ) from None
            raise _fail(f"{err.filename or ''}: {err.strerror or err}", 3) from None
        except KeyboardInterrupt:
            raise _fail("interrupted", 130) from None

    return wrapper  # type: ignore[return-value]


def _config(path: Path | None, overrides: dict[str, Any] | None = None) -> SentioConfig:
    cfg = load_config(path)
    return with_overrides(cfg, overrides) if overrides else cfg


@app.command()
@user_errors
def synth(
    out: Annotated[Path, typer.Option("--out", "-o", help="Bars file to write (.feather).")] = Path(
        "data/demo/bars.feather"
    ),
    config: ConfigOpt = None,
    years: Annotated[float | None, typer.Option(help=option_help("synth.years"))] = None,
    start: Annotated[str | None, typer.Option(help=option_help("synth.start"))] = None,
    seed: Annotated[int | None, typer.Option(help=option_help("synth.seed"))] = None,
    random_walk: Annotated[
        bool | None,
        typer.Option("--random-walk/--regimes", help=option_help("synth.random_walk")),
    ] = None,
    edge: Annotated[float | None, typer.Option(help=option_help("synth.edge_strength"))] = None,
) -> None:
    """Generate synthetic one-minute QQQ/TQQQ/SQQQ bars on the NYSE calendar, with true regimes."""
    from sentio.data.synth import write_synth

    cfg = _config(
        config,
        {
            "synth.years": years,
            "synth.start": start,
            "synth.seed": seed,
            "synth.random_walk": random_walk,
            "synth.edge_strength": edge,
        },
    )
    paths = write_synth(out, cfg)
    for what, path in paths.items():
        typer.echo(f"{what}: {path}")


@app.command()
@user_errors
def sample(
    name: Annotated[str, typer.Argument(help="Sample to write: nasdaq-daily.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Bars file to write (.feather).")] = Path(
        "data/nasdaq-daily/bars.feather"
    ),
    config: ConfigOpt = None,
) -> None:
    """Write a real market data sample in the canonical format (NASDAQ Composite daily 1999-2018)."""
    from sentio.data.sample import write_sample

    paths = write_sample(name, out, _config(config))
    for what, path in paths.items():
        typer.echo(f"{what}: {path}")


@app.command()
@user_errors
def ingest(
    inputs: Annotated[
        list[Path],
        typer.Argument(
            help="Bar files or folders (every bar file in a folder, sorted by name): "
            ".feather/.arrow/.ipc, .parquet, .csv/.txt/.tsv, any of them gzip-compressed (.gz).",
            show_default=False,
        ),
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Canonical bars file to write (.feather).")
    ],
    config: ConfigOpt = None,
    symbol: Annotated[str | None, typer.Option(help=option_help("ingest.symbol"))] = None,
    tz: Annotated[str | None, typer.Option(help=option_help("ingest.tz"))] = None,
    bar_timestamp: Annotated[
        str | None, typer.Option(help=option_help("ingest.bar_timestamp"))
    ] = None,
    columns: Annotated[
        str | None,
        typer.Option(help=option_help("ingest.columns") + " Comma-separated."),
    ] = None,
    on_bad_rows: Annotated[
        str | None,
        typer.Option(help=option_help("ingest.on_bad_rows")),
    ] = None,
    max_quarantine_fraction: Annotated[
        float | None, typer.Option(help=option_help("ingest.max_quarantine_fraction"))
    ] = None,
) -> None:
    """Validate vendor bars into canonical, regular-hours, UTC bar-start bars with a data-quality report."""
    from sentio.data.ingest import ingest_files

    cfg = _config(
        config,
        {
            "ingest.symbol": symbol,
            "ingest.tz": tz,
            "ingest.bar_timestamp": bar_timestamp,
            "ingest.columns": [c.strip() for c in columns.split(",")] if columns else None,
            "ingest.on_bad_rows": on_bad_rows,
            "ingest.max_quarantine_fraction": max_quarantine_fraction,
        },
    )
    result = ingest_files(_ingest_inputs(inputs, out), out, cfg)
    r = result.report
    typer.echo(
        f"read {r['rows_read']} rows: kept {r['rows_kept']}, dropped "
        f"{r['rows_dropped_outside_regular_hours']} outside regular hours and "
        f"{r['rows_dropped_duplicates']} exact duplicates, quarantined {r['rows_quarantined']}"
        + (
            f" ({', '.join(f'{k} {v}' for k, v in r['quarantined_by_reason'].items())})"
            if r["rows_quarantined"]
            else ""
        )
    )
    typer.echo(
        f"bars: {result.outputs.bars} ({r['frequency']} bars, symbols {', '.join(r['symbols'])})"
    )
    if r.get("gaps"):
        typer.echo(_gaps_line(r["gaps"]))
    for line in _partial_lines(r.get("partial_sessions")):
        typer.echo(line)
    typer.echo(f"report: {result.outputs.report}")
    if r["quarantine"]:
        typer.echo(f"quarantine: {r['quarantine']}")
    typer.echo(f"great expectations: {r['contract']['gx_html']}")


PARTIAL_LINES = 5
"""Partial sessions named one per line by ``sentio ingest`` / ``sentio run``; the rest counted."""


def _partial_lines(parts: list[dict[str, Any]] | None) -> list[str]:
    """A line per session the bars cover only in part (``partial_sessions`` of ingest)."""
    parts = parts or []
    lines = [
        f"partial session: {p['symbol']} {p['session']} from {p['first']} to {p['last']}, "
        f"{p['present']} of {p['of']} bars (the data starts or ends inside it)"
        for p in parts[:PARTIAL_LINES]
    ]
    if len(parts) > PARTIAL_LINES:
        lines.append(
            f"partial sessions: {len(parts) - PARTIAL_LINES} more (partial_sessions in the "
            "ingest report)"
        )
    return lines


def _gaps_line(gaps: list[dict[str, Any]]) -> str:
    """One line on the sessions the data lacks (``gaps`` of the ingest report)."""
    shown = ", ".join(f"{g['after']} .. {g['before']}" for g in gaps[:5])
    return (
        f"data gaps: {sum(int(g['sessions_missing']) for g in gaps)} session(s) missing in "
        f"{len(gaps)} gap(s) between {shown}{', ...' if len(gaps) > 5 else ''}; no episode, "
        "test block or benchmark step spans them"
    )


def _ingest_inputs(inputs: list[Path], out: Path) -> list[Path]:
    """The files to ingest: files as given, folders expanded like ``sentio run`` does.

    A folder stands for every supported bar file in it, sorted by name
    (:func:`sentio.stages.resolve_inputs`), less the files this ingest writes (so that
    ingesting a folder into itself can be repeated); a file named explicitly is kept.
    """
    from sentio.data.ingest import IngestOutputs
    from sentio.errors import DataError
    from sentio.stages import resolve_inputs

    ours = {p.resolve() for p in IngestOutputs.for_output(out).all()}
    files: list[Path] = []
    for item in inputs:
        found = resolve_inputs([item])
        if item.is_dir():
            found = [f for f in found if f.resolve() not in ours]
            if not found:
                raise DataError(f"{item}: folder holds no bar files besides this ingest's output")
        files.extend(found)
    return files


def _workdir(cfg: SentioConfig, workdir: Path | None) -> Path:
    return (workdir or cfg.paths.workdir).resolve()


@app.command()
@user_errors
def run(
    data: Annotated[
        str, typer.Option("--data", "-d", help="Bar file, comma-separated files or a folder.")
    ] = ("data/demo/bars.feather"),
    config: ConfigOpt = None,
    workdir: Annotated[
        Path | None,
        typer.Option(help="Where stage outputs and Prefect results go (paths.workdir)."),
    ] = None,
) -> None:
    """Run the nightly flow locally through Prefect (a temporary local API when none is configured)."""
    cfg = _config(config, {"paths.workdir": str(workdir) if workdir else None})
    from sentio.stages import resolve_inputs

    resolve_inputs(data)  # fail fast, before Prefect starts, on a missing data path
    wd = _workdir(cfg, None)
    from sentio.orchestration import prefect_env_defaults

    prefect_env_defaults(wd)
    from flows.local_server import temporary_api
    from flows.nightly import nightly_flow

    _quiet_user_error_tracebacks()
    with temporary_api():  # a local API that dies with this command, unless one is set
        record = nightly_flow(
            data_path=data,
            config_path=str(config.resolve()) if config else None,
            workdir=str(wd),
        )
    _print_run(record)


class _NoUserErrorTracebacks(logging.Filter):
    """Drop the traceback from log records about errors a user caused (a SentioError).

    Prefect logs a task or flow failure with its traceback; for bad input that is noise
    around the one line that says what is wrong.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, SentioError):
            record.exc_info = None
            record.exc_text = None
        return True


def _quiet_user_error_tracebacks() -> None:
    """Install :class:`_NoUserErrorTracebacks` on every handler Prefect's logging set up."""
    flt = _NoUserErrorTracebacks()
    loggers = [logging.getLogger()] + [
        logging.getLogger(name)
        for name in list(logging.Logger.manager.loggerDict)
        if name.startswith("prefect")
    ]
    for logger in loggers:
        for handler in logger.handlers:
            if not any(isinstance(f, _NoUserErrorTracebacks) for f in handler.filters):
                handler.addFilter(flt)


def _print_run(record: dict[str, Any]) -> None:
    """Say where a flow run's outputs are."""
    typer.echo(f"run {record['flow_run_name']}: {record['status']}")
    typer.echo(f"run record: {Path(record['run_dir']) / 'run.json'}")
    typer.echo(f"run config: {Path(record['run_dir']) / 'config.yaml'}")
    ingest = record["stages"].get("ingest")
    if ingest:
        typer.echo(
            f"ingest: {ingest['rows_kept']} of {ingest['rows_read']} rows kept, "
            f"{ingest['rows_quarantined']} quarantined; {ingest['frequency']} bars of "
            f"{', '.join(ingest['symbols'])}"
            + (
                f" (derived: {', '.join(ingest['derived_symbols'])})"
                if ingest["derived_symbols"]
                else ""
            )
        )
        if ingest.get("gaps"):
            typer.echo(_gaps_line(ingest["gaps"]))
        for line in _partial_lines(ingest.get("partial_sessions")):
            typer.echo(line)
        typer.echo(f"bars: {ingest['output']}")
        typer.echo(f"ingest report: {ingest['report']}")
        typer.echo(f"data docs: {ingest['gx_html']}")
        if ingest["quarantine"]:
            typer.echo(f"quarantine: {ingest['quarantine']}")
    features = record["stages"].get("features")
    if features:
        typer.echo(
            f"features: {features['rows']} rows x {features['n_features']} "
            f"({features['normalisation']} normalisation): {features['output']}"
        )
    folds = record["stages"].get("folds")
    if folds:
        typer.echo(
            f"folds: {folds['n_folds']} {folds['method']} fold(s) over {folds['samples']} rows: "
            f"{folds['output']}"
        )
    regimes = record["stages"].get("regimes")
    if regimes:
        methods = ", ".join(f"fold {f['fold']} {f['method']}" for f in regimes["folds"])
        typer.echo(f"regimes: {methods}: {regimes['output']}")
    for run in (record["stages"].get("train") or {}).get("runs") or []:
        m = run["metrics"]
        sharpe = m.get("sharpe")
        aside = (run["train"].get("validation") or {}).get("stands_aside")
        warm = run.get("warm_start") or {}
        started = f" warm-started from {warm['version']}" if warm.get("applies") else ""
        typer.echo(
            f"train: fold {run['fold']} seed {run['seed']}: {run['train']['num_timesteps']} steps"
            f"{started}{' (stood aside: no edge on its held-out episodes)' if aside else ''}; "
            f"out of sample {run['test_bars']} bars, Sharpe "
            f"{'n/a' if sharpe is None else f'{sharpe:.2f}'}, {run['n_trades']} trades: "
            f"{run['model']}"
        )
    report = record["stages"].get("report")
    if report:
        typer.echo(f"report: {report['verdict']}")
        if report.get("comparison"):
            typer.echo(f"report: {report['comparison']}")
        typer.echo(f"report html: {report['paths']['html']}")
    registry = record["stages"].get("registry")
    if registry:
        typer.echo(_registry_line(registry))


def _registry_line(summary: dict[str, Any]) -> str:
    """One line for the registry stage: the candidate and whether it became the champion."""
    candidate = summary.get("candidate")
    reasons = "; ".join(str(r) for r in summary.get("reasons") or [])
    if candidate is None:
        line = "registry: no candidate" + (f" ({reasons})" if reasons else "")
    elif summary.get("promoted"):
        line = (
            f"registry: candidate {candidate} promoted -> champion {summary.get('champion_after')}"
        )
    else:
        champion = summary.get("champion_after")
        line = f"registry: candidate {candidate} not promoted" + (
            f" ({reasons})" if reasons else ""
        )
        line += f"; champion {champion}" if champion else "; no champion"
    if summary.get("output"):
        line += f"; decision: {summary['output']}"
    return line


@app.command()
@user_errors
def serve(
    data: Annotated[
        str, typer.Option("--data", "-d", help="Default data path of the deployments.")
    ] = ("data/demo/bars.feather"),
    config: ConfigOpt = None,
    paper: Annotated[
        bool,
        typer.Option(
            "--paper/--no-paper",
            help="Also serve 'paper-trading/paper' (weekdays 16:15 New York) on the same bars.",
        ),
    ] = True,
    workdir: Annotated[
        Path | None,
        typer.Option(
            help="Where the served runs write stage outputs, the registry and Prefect results "
            "(paths.workdir; a default parameter of every deployment).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Serve the 'nightly' (02:00 New York, weekdays), 'manual' and 'paper' deployments from this process."""
    cfg = _config(config, {"paths.workdir": str(workdir) if workdir else None})
    from sentio.stages import resolve_inputs

    resolve_inputs(data)  # a wrong path fails now, not at 02:00
    wd = _workdir(cfg, None)
    from sentio.orchestration import prefect_env_defaults

    prefect_env_defaults(wd)
    from flows.serve import serve_deployments

    serve_deployments(
        str(Path(data).resolve()) if "," not in data else data,
        str(config.resolve()) if config else None,
        paper=paper,
        workdir=str(wd) if workdir else None,
    )


@app.command("gc")
@user_errors
def gc(
    config: ConfigOpt = None,
    workdir: Annotated[
        Path | None,
        typer.Option(help="The working directory to clean (paths.workdir).", show_default=False),
    ] = None,
    keep_runs: Annotated[
        int,
        typer.Option(
            "--keep-runs",
            help="Keep what the newest runs down to the N-th completed one reference.",
        ),
    ] = 7,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List what would go and its size; remove nothing.")
    ] = False,
    storage: Annotated[
        bool,
        typer.Option(
            "--storage",
            help="Also clean paths.storage (the scale-out trainings' shared storage) by the "
            "same rule, sparing what was written there in the last --grace-hours.",
        ),
    ] = False,
    grace_hours: Annotated[
        float,
        typer.Option(
            "--grace-hours",
            min=0.0,
            help="With --storage: keep what was written to the storage in the last N hours "
            "whatever references it (runs in progress of other working directories that "
            "share it).",
        ),
    ] = STORAGE_GRACE / 3600.0,
) -> None:
    """Remove stage outputs, run folders and Prefect results that no run among the last N
    and no registered model version references (never the registry or the paper ledgers)."""
    from sentio.gc import apply_gc, describe, plan_gc
    from sentio.registry import default_root
    from sentio.storage import SharedStorage
    from sentio.workdir import WorkdirLock

    cfg = _config(config, {"paths.workdir": str(workdir) if workdir else None})
    wd = Path(cfg.paths.workdir).expanduser()
    if not wd.is_dir():
        raise ConfigError(f"gc: {wd} is not a working directory (no such folder)")
    if storage and not cfg.paths.storage:
        raise ConfigError("gc --storage: paths.storage is not set (no shared storage to clean)")
    shared = SharedStorage(cfg.paths.storage) if storage and cfg.paths.storage else None
    with WorkdirLock(
        wd,
        owner="sentio gc",
        on_busy=cfg.paths.on_busy,
        timeout=cfg.paths.busy_timeout,
        notify=lambda line: typer.echo(line, err=True),
    ):
        plan = plan_gc(
            wd,
            keep_runs=keep_runs,
            registry=default_root(cfg).expanduser(),
            storage=shared,
            storage_grace=grace_hours * 3600.0,
        )
        if not dry_run:
            apply_gc(plan)
    for line in describe(plan, dry_run=dry_run):
        typer.echo(line)


@app.command("config")
@user_errors
def show_config(config: ConfigOpt = None) -> None:
    """Validate a configuration and print it with every default filled in."""
    typer.echo(dump_config(_config(config)), nl=False)


automations_app = typer.Typer(
    help="Prefect automations that send Sentio's alerts (failed, missing and drifting runs).",
    no_args_is_help=True,
)
app.add_typer(automations_app, name="automations")


@automations_app.command("apply")
@user_errors
def automations_apply(config: ConfigOpt = None) -> None:
    """Create or update the alert automations on the Prefect server of PREFECT_API_URL
    (idempotent): a failed or crashed nightly or paper run, no completed nightly run within
    alerts.stale_after_hours, a drift event; each sends to alerts.block or alerts.webhook_url."""
    cfg = _config(config)
    from flows.automations import apply_automations

    summary = apply_automations(cfg.alerts)
    typer.echo(f"automations on {summary['api']} (notification block {summary['block_id']}):")
    for name, what in summary["automations"].items():
        typer.echo(f"  {what:8s} {name}")


models_app = typer.Typer(
    help="The model registry: list, show, promote and roll back model versions.",
    no_args_is_help=True,
)
app.add_typer(models_app, name="models")

WorkdirOpt = Annotated[
    Path | None,
    typer.Option(help="Working directory holding registry/ (paths.workdir).", show_default=False),
]


def _registry(config: Path | None, workdir: Path | None) -> Any:
    from sentio.registry import Registry, default_root

    cfg = _config(config, {"paths.workdir": str(workdir) if workdir else None})
    return Registry(default_root(cfg))


def _rounded(value: Any, digits: int = 6) -> Any:
    """``value`` with every float rounded to ``digits`` decimals (dicts and lists walked)."""
    if isinstance(value, float):
        return round(value, digits) if math.isfinite(value) else value
    if isinstance(value, dict):
        return {k: _rounded(v, digits) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(v, digits) for v in value]
    return value


def _shown(value: Any) -> str:
    """A value for a message: floats rounded to 6 decimals, everything else as its repr."""
    return repr(_rounded(value))


def _fmt(value: Any) -> str:
    """A metric in ``models list``: :func:`sentio.text.format_number`, ``-`` when missing."""
    from sentio.text import format_number

    return format_number(value, missing="-")


@models_app.command("list")
@user_errors
def models_list(config: ConfigOpt = None, workdir: WorkdirOpt = None) -> None:
    """List the registered model versions, oldest first; '*' marks the champion.

    The integrity column hashes every file of each version against its manifest: 'ok',
    'damaged: FILE' (modified after registration) or 'missing: FILE'.
    """
    from sentio.registry import RegistryError

    reg = _registry(config, workdir)
    versions = reg.list()
    if not versions:
        raise RegistryError(f"no model versions in {reg.root}")
    pointer = reg.champion()
    champ = pointer["version"] if pointer else None
    typer.echo(
        f"  {'version':<32} {'created':<28} {'algo':<13} {'sharpe':>8} {'dsr':>7}  integrity"
    )
    for v in versions:
        m = v.metrics
        mark = "*" if v.version == champ else " "
        typer.echo(
            f"{mark} {v.version:<32} {v.created_at:<28} {v.algo:<13} "
            f"{_fmt(m.get('sharpe')):>8} {_fmt(m.get('dsr')):>7}  "
            f"{reg.integrity(v.version).label()}"
        )


@models_app.command("show")
@user_errors
def models_show(
    version: Annotated[str, typer.Argument(help="Version id (or 'champion').")],
    config: ConfigOpt = None,
    workdir: WorkdirOpt = None,
) -> None:
    """Print a version's manifest as JSON, with its integrity (every file's sha256 checked)."""
    import json

    from sentio.registry import RegistryError

    reg = _registry(config, workdir)
    if version == "champion":
        pointer = reg.champion()
        if pointer is None:
            raise RegistryError(f"no champion in {reg.root}")
        version = str(pointer["version"])
    shown = {**reg.get(version).manifest, "integrity": reg.integrity(version).to_json()}
    typer.echo(json.dumps(shown, indent=2, default=str))


@models_app.command("promote")
@user_errors
def models_promote(
    version: Annotated[str, typer.Argument(help="Version id to make the champion.")],
    reason: Annotated[str, typer.Option(help="Why (recorded in the history).")] = "manual",
    config: ConfigOpt = None,
    workdir: WorkdirOpt = None,
) -> None:
    """Make a version the champion by hand (no gate, files hash-checked; recorded as manual)."""
    pointer = _registry(config, workdir).promote(version, f"manual: {reason}", manual=True)
    typer.echo(f"champion: {pointer['version']} (was {pointer['previous'] or 'none'})")


@models_app.command("rollback")
@user_errors
def models_rollback(
    reason: Annotated[str, typer.Option(help="Why (recorded in the history).")] = "rollback",
    config: ConfigOpt = None,
    workdir: WorkdirOpt = None,
) -> None:
    """Restore the previous champion."""
    pointer = _registry(config, workdir).rollback(reason)
    typer.echo(f"champion: {pointer['version']} (was {pointer['previous'] or 'none'})")


# --------------------------------------------------------------------------- live use

BarsOpt = Annotated[
    str,
    typer.Option(
        "--bars",
        "-b",
        help="Bar file (or comma-separated files, or a folder), ingested like `sentio run`.",
    ),
]
VersionOpt = Annotated[
    str | None,
    typer.Option("--version", help="Model version id (default: the champion).", show_default=False),
]
StartOpt = Annotated[
    str | None,
    typer.Option(
        help="First bar of the replay, ISO-8601 (default: the first bar after the version's "
        "training end).",
        show_default=False,
    ),
]


VerifyOpt = Annotated[
    bool,
    typer.Option(
        "--verify",
        help="Recompute the whole replay from its first bar and compare it with the kept "
        "ledger, instead of continuing from the state (which is then rewritten).",
    ),
]


def _warn_in_sample(first: str, train_end: Any) -> None:
    """One line on stderr: the replay starts inside the version's training range."""
    from sentio.times import as_utc, iso_z

    end = iso_z(as_utc(train_end))
    typer.echo(
        f"warning: the replay starts at {first}, at or before the version's training end "
        f"{end}: in-sample, the account replays bars the model was trained on",
        err=True,
    )


@app.command("signal")
@user_errors
def signal_cmd(
    bars: BarsOpt,
    version: VersionOpt = None,
    config: ConfigOpt = None,
    workdir: WorkdirOpt = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Also write the JSON to this file.")
    ] = None,
    start: StartOpt = None,
    verify: VerifyOpt = False,
) -> None:
    """Print (as JSON) the model's decision at the close of the last bar; it fills at the next open."""
    import json

    from sentio.io import write_json_atomic
    from sentio.live import load_bundle
    from sentio.paper import signal

    reg = _registry(config, workdir)
    bundle = load_bundle(reg, version)
    result = _rounded(signal(bundle, bars, start=start, verify=verify))
    if result["in_sample"]:
        _warn_in_sample(result["account"]["since"], bundle.extra.get("train_end"))
    if result["bars_end"] != result["timestamp"]:
        typer.echo(
            f"warning: the decision is at the close of {result['timestamp']}, the last bar "
            f"every instrument has; the bars given run to {result['bars_end']} (a traded "
            "ETF's later bars have not arrived?); a next call given only new bars should "
            f"start after {result['timestamp']}",
            err=True,
        )
    if out is not None:
        write_json_atomic(out, result)
    typer.echo(json.dumps(result, indent=2))


@app.command("paper")
@user_errors
def paper_cmd(
    bars: BarsOpt,
    version: VersionOpt = None,
    start: StartOpt = None,
    config: ConfigOpt = None,
    workdir: WorkdirOpt = None,
    verify: VerifyOpt = False,
) -> None:
    """Paper-trade a model on new bars (or the whole history); append them to its ledger (idempotent)."""
    from sentio.paper import paper_trade

    reg = _registry(config, workdir)
    s = paper_trade(reg, bars, version=version, start=start, verify=verify)
    if s["in_sample"]:
        _warn_in_sample(
            s["start"], reg.get(s["version"]).manifest.get("extra", {}).get("train_end")
        )
    typer.echo(f"paper: version {s['version']}, ledger {s['ledger']}")
    typer.echo(
        f"bars: {s['rows']} from {s['start']} to {s['last']}, {s['appended']} appended"
        + (" (the bars end before the ledger's last row)" if s["behind"] else "")
    )
    typer.echo(_mode_line(s))
    if s["revised"] is not None:
        rev = s["revised"]
        changes = ", ".join(
            f"{c} {_shown(old)} -> {_shown(new)}" for c, (old, new) in rev["columns"].items()
        )
        typer.echo(
            f"revised: the ledger's last row {rev['timestamp']} was decided with the calendar's "
            f"next bar; recomputed with the bar that follows it in the data: {changes}"
        )
    ret = s["total_return"]
    typer.echo(
        f"equity: {s['equity']:.2f} ({'n/a' if ret is None else f'{ret:+.2%}'} since the start), "
        f"exposure {s['exposure']:+.3f}" + (" - ruined" if s["ruined"] else "")
    )
    typer.echo(
        f"decision at {s['last']}: target {s['target_exposure']:+g} ({s['instrument']}), "
        "fills at the open of the next bar"
    )
    if s.get("derived_symbols"):
        typer.echo(
            f"prices of {', '.join(s['derived_symbols'])} are derived from the underlying "
            "(daily reset), not traded prices"
        )
    typer.echo(_drift_line(reg, s, _config(config).drift))


def _drift_line(registry: Any, s: dict[str, Any], drift: Any) -> str:
    """The ledger's drift check (sentio.drift; the paper flow also alerts on it)."""
    from sentio.drift import DriftUnavailable, check_version
    from sentio.paper import read_ledger

    ledger = read_ledger(s["ledger"])
    if ledger is None:
        return "drift: not checked (no ledger)"
    try:
        check = check_version(registry, s["version"], ledger, drift)
    except DriftUnavailable as err:
        return f"drift: not checked ({err})"
    if check.drifted:
        return "drift: " + "; ".join(check.reasons())
    return (
        f"drift: none; the last {check.sessions} session(s) ({check.bars} bars) are inside "
        f"the out-of-sample backtest's {check.level:.0%} bands"
    )


def _mode_line(s: dict[str, Any]) -> str:
    """How the run computed: continued from the state, or recomputed from the start (why)."""
    work = (
        f"{s['replayed']} bars replayed over a market of {s['market_rows']} rows"
        if s["replayed"]
        else "no new bar"
    )
    if s["mode"] == "incremental":
        return f"mode: incremental ({work})"
    return f"mode: {s['mode']}, recomputed from the start ({s['reason']}; {work})"


def main() -> None:
    """Entry point of the ``sentio`` console script."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
