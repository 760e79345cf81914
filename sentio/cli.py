"""The ``sentio`` command.

Every error a user can cause prints one line on stderr (``error: ...``) and exits
non-zero; tracebacks are for bugs. The orchestration commands (``run`` and ``serve``)
import Prefect lazily, so the library and the data commands never load it.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from sentio.config import SentioConfig, dump_config, load_config, with_overrides
from sentio.errors import SentioError

app = typer.Typer(
    name="sentio",
    help="Sentio: nightly-retrained PPO agents for TQQQ/SQQQ. Data, ingest and the nightly flow.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

F = TypeVar("F", bound=Callable[..., Any])

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
        except OSError as err:
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
    years: Annotated[float | None, typer.Option(help="Length in years (synth.years).")] = None,
    start: Annotated[str | None, typer.Option(help="First day, YYYY-MM-DD (synth.start).")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (synth.seed).")] = None,
    random_walk: Annotated[
        bool | None,
        typer.Option(
            "--random-walk/--regimes", help="Pure random walk (no edge) or regime-switching market."
        ),
    ] = None,
    edge: Annotated[
        float | None,
        typer.Option(help="Planted lag-1 autocorrelation of standardised returns, 0-0.5."),
    ] = None,
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
        typer.Argument(help="Bar files: .feather/.arrow/.ipc, .parquet, .csv/.txt/.tsv."),
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Canonical bars file to write (.feather).")
    ],
    config: ConfigOpt = None,
    symbol: Annotated[
        str | None, typer.Option(help="Symbol for files without a symbol column.")
    ] = None,
    tz: Annotated[
        str | None, typer.Option(help="Time zone of naive timestamps, e.g. America/New_York.")
    ] = None,
    bar_timestamp: Annotated[
        str | None, typer.Option(help="Whether the source stamps bars at their 'start' or 'end'.")
    ] = None,
    columns: Annotated[
        str | None,
        typer.Option(help="Comma-separated names for the columns of a CSV without header."),
    ] = None,
    on_bad_rows: Annotated[
        str | None, typer.Option(help="'quarantine' bad rows (default) or fail with an 'error'.")
    ] = None,
    max_quarantine_fraction: Annotated[
        float | None, typer.Option(help="Fail when more than this fraction of rows is quarantined.")
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
    result = ingest_files(inputs, out, cfg)
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
    typer.echo(f"report: {result.outputs.report}")
    if r["quarantine"]:
        typer.echo(f"quarantine: {r['quarantine']}")
    typer.echo(f"great expectations: {r['contract']['gx_html']}")


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
    from flows.nightly import nightly_flow

    _quiet_user_error_tracebacks()
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
        typer.echo(
            f"train: fold {run['fold']} seed {run['seed']}: {run['train']['num_timesteps']} steps; "
            f"out of sample {run['test_bars']} bars, Sharpe "
            f"{'n/a' if sharpe is None else f'{sharpe:.2f}'}, {run['n_trades']} trades: "
            f"{run['model']}"
        )
    report = record["stages"].get("report")
    if report:
        typer.echo(f"report: {report['verdict']}")
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
) -> None:
    """Serve the 'nightly' (02:00 New York, weekdays), 'manual' and 'paper' deployments from this process."""
    cfg = _config(config)
    from sentio.stages import resolve_inputs

    resolve_inputs(data)  # a wrong path fails now, not at 02:00
    from sentio.orchestration import prefect_env_defaults

    prefect_env_defaults(_workdir(cfg, None))
    from flows.serve import serve_deployments

    serve_deployments(
        str(Path(data).resolve()) if "," not in data else data,
        str(config.resolve()) if config else None,
        paper=paper,
    )


@app.command("config")
@user_errors
def show_config(config: ConfigOpt = None) -> None:
    """Validate a configuration and print it with every default filled in."""
    typer.echo(dump_config(_config(config)), nl=False)


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


def _fmt(value: Any) -> str:
    try:
        return f"{float(value):.3f}"
    except (TypeError, ValueError):
        return "-"


@models_app.command("list")
@user_errors
def models_list(config: ConfigOpt = None, workdir: WorkdirOpt = None) -> None:
    """List the registered model versions, oldest first; '*' marks the champion."""
    from sentio.registry import RegistryError

    reg = _registry(config, workdir)
    versions = reg.list()
    if not versions:
        raise RegistryError(f"no model versions in {reg.root}")
    pointer = reg.champion()
    champ = pointer["version"] if pointer else None
    typer.echo(f"  {'version':<32} {'created':<28} {'algo':<13} {'sharpe':>8} {'dsr':>7}")
    for v in versions:
        m = v.metrics
        mark = "*" if v.version == champ else " "
        typer.echo(
            f"{mark} {v.version:<32} {v.created_at:<28} {v.algo:<13} "
            f"{_fmt(m.get('sharpe')):>8} {_fmt(m.get('dsr')):>7}"
        )


@models_app.command("show")
@user_errors
def models_show(
    version: Annotated[str, typer.Argument(help="Version id (or 'champion').")],
    config: ConfigOpt = None,
    workdir: WorkdirOpt = None,
) -> None:
    """Print a version's manifest as JSON."""
    import json

    from sentio.registry import RegistryError

    reg = _registry(config, workdir)
    if version == "champion":
        pointer = reg.champion()
        if pointer is None:
            raise RegistryError(f"no champion in {reg.root}")
        version = str(pointer["version"])
    typer.echo(json.dumps(reg.get(version).manifest, indent=2, default=str))


@models_app.command("promote")
@user_errors
def models_promote(
    version: Annotated[str, typer.Argument(help="Version id to make the champion.")],
    reason: Annotated[str, typer.Option(help="Why (recorded in the history).")] = "manual",
    config: ConfigOpt = None,
    workdir: WorkdirOpt = None,
) -> None:
    """Make a version the champion by hand (bypasses the gate; recorded as manual)."""
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


def _warn_in_sample(first: str, train_end: Any) -> None:
    """One line on stderr: the replay starts inside the version's training range."""
    end = str(train_end).replace("+00:00", "Z")
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
) -> None:
    """Print (as JSON) the model's decision at the close of the last bar; it fills at the next open."""
    import json

    from sentio.io import write_json_atomic
    from sentio.live import load_bundle, signal

    reg = _registry(config, workdir)
    bundle = load_bundle(reg, version)
    result = signal(bundle, bars, start=start)
    if result["in_sample"]:
        _warn_in_sample(result["account"]["since"], bundle.extra.get("train_end"))
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
) -> None:
    """Paper-trade a model on the bar history; append the new bars to its ledger (idempotent)."""
    from sentio.paper import paper_trade

    reg = _registry(config, workdir)
    s = paper_trade(reg, bars, version=version, start=start)
    if s["in_sample"]:
        _warn_in_sample(
            s["start"], reg.get(s["version"]).manifest.get("extra", {}).get("train_end")
        )
    typer.echo(f"paper: version {s['version']}, ledger {s['ledger']}")
    typer.echo(
        f"bars: {s['rows']} from {s['start']} to {s['last']}, {s['appended']} appended"
        + (" (the bars end before the ledger's last row)" if s["behind"] else "")
    )
    if s["revised"] is not None:
        rev = s["revised"]
        changes = ", ".join(f"{c} {old!r} -> {new!r}" for c, (old, new) in rev["columns"].items())
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


def main() -> None:
    """Entry point of the ``sentio`` console script."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
