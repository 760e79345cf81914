"""Pipeline stages as plain functions: paths and small summaries in, paths and summaries out.

Each stage writes content-addressed outputs under ``workdir/<stage>/<key>/`` where the
key hashes the content of the inputs, the configuration sections the stage reads and
the version of the code that does the work. The Prefect tasks in ``tasks/`` call these
functions and use the same keys as their cache keys; without Prefect, a stage whose
outputs already exist and verify is not recomputed either.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from sentio.calendar import session_gaps
from sentio.config import (
    SentioConfig,
    resolve_for_bars,
    training_settings_hash,
    unresolved_settings,
)
from sentio.data import readers
from sentio.data.ingest import check_contracts, ingest_files
from sentio.data.leverage import ensure_universe
from sentio.data.provenance import provenance_digest
from sentio.data.schema import session_date
from sentio.errors import ContractError, DataError, SentioError
from sentio.io import (
    code_version,
    combine_hashes,
    rebase_paths,
    sha256_file,
    staged_folder,
    write_feather_atomic,
    write_json_atomic,
    write_text_atomic,
)

if TYPE_CHECKING:
    pass

STAGE_SUMMARY = "summary.json"
# Files Sentio writes beside bar files; a folder given as input skips them.
SIDECAR_SUFFIXES = (".quarantine.csv", ".regimes.feather")


def bar_seconds_of(path: str | Path) -> int:
    """The bar length of a bars or features file (feather), from its timestamps."""
    from sentio.data.timestamps import infer_bar_seconds

    names = list(pl.read_ipc_schema(path))
    columns: list[str] = [c for c in ("symbol", "timestamp") if c in names]
    frame = pl.read_ipc(path, columns=columns)
    if "symbol" not in frame.columns:
        frame = frame.with_columns(symbol=pl.lit("_"))
    return infer_bar_seconds(frame)


def config_for_data(cfg: SentioConfig, path: str | Path) -> SentioConfig:
    """``cfg`` with its ``'auto'`` settings sized by the bar length of the data at ``path``
    (:func:`sentio.config.resolve_for_bars`; unchanged when nothing is ``'auto'``)."""
    if not unresolved_settings(cfg):
        return cfg
    return resolve_for_bars(cfg, bar_seconds_of(path))


def resolve_inputs(data_path: str | Path | Sequence[str | Path]) -> list[Path]:
    """Expand a data path into input files.

    Accepts one file, a comma-separated list of files, a folder (every supported bar
    file in it, sorted by name) or a sequence of those.
    """
    if isinstance(data_path, str | Path):
        items: list[str | Path] = [s.strip() for s in str(data_path).split(",") if s.strip()]
    else:
        items = list(data_path)
    files: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(
                f
                for f in p.iterdir()
                if f.is_file() and readers.is_supported(f) and not f.name.endswith(SIDECAR_SUFFIXES)
            )
            if not found:
                raise DataError(f"{p}: folder holds no bar files ({', '.join(readers.SUPPORTED)})")
            files.extend(found)
        elif not p.exists():
            raise DataError(f"{p}: file not found")
        else:
            files.append(p)
    if not files:
        raise DataError("no input files given")
    return files


INGEST_MODULES = (
    "sentio.stages",
    "sentio.data.ingest",
    "sentio.data.readers",
    "sentio.data.timestamps",
    "sentio.data.schema",
    "sentio.data.leverage",
    "sentio.data.provenance",
    "sentio.calendar",
    "data_contracts.bars",
    "data_contracts.gx_bars",
)


def ingest_code_version() -> str:
    """Version of every module whose change would change an ingest output."""
    return code_version(*INGEST_MODULES)


def ingest_key(inputs: Sequence[str | Path], cfg: SentioConfig) -> str:
    """Cache key of the ingest stage: input CONTENT, ingest/universe settings, code version."""
    files = resolve_inputs(inputs)
    return _ingest_key(files, [sha256_file(f) for f in files], cfg)


def _ingest_key(files: Sequence[Path], hashes: Sequence[str], cfg: SentioConfig) -> str:
    # Every file in order (a file given twice counts twice), its provenance sidecar (which
    # decides what the report says about derived prices), the settings and the code.
    return combine_hashes(
        [
            *hashes,
            *(provenance_digest(f) for f in files),
            cfg.hash("ingest", "universe"),
            ingest_code_version(),
        ]
    )[:32]


def workdir_root(workdir: str | Path) -> Path:
    """The absolute working directory every stage summary is written against."""
    return Path(workdir).expanduser().resolve()


def relocate_summary(summary: dict[str, Any], workdir: str | Path) -> dict[str, Any]:
    """``summary`` with its paths under ``workdir`` when it was written under another one.

    A stage summary records the working directory it was written in (``workdir``); after
    the folder was moved or copied, the paths inside it are rebased onto the new place,
    so a moved working directory keeps its cache. Paths outside the old working
    directory (the user's input files) are left as they are.
    """
    old = summary.get("workdir")
    new = str(workdir_root(workdir))
    if not old or old == new:
        return summary
    return dict(rebase_paths(summary, old, new)) | {"workdir": new}


def summary_problems(summary: dict[str, Any]) -> list[str]:
    """What is wrong with the files a stage summary names, one phrase per file.

    Every file with a recorded sha256 (``output``/``output_sha256`` and ``files``) is
    hashed again: a missing file, an unreadable one or one whose bytes changed (a
    truncated write, a disk error, an edit) is a problem. An empty list: all verified.
    """
    recorded: dict[str, str] = {}
    if summary.get("output") and summary.get("output_sha256"):
        recorded[str(summary["output"])] = str(summary["output_sha256"])
    recorded.update({str(k): str(v) for k, v in (summary.get("files") or {}).items()})
    problems: list[str] = []
    for path, digest in recorded.items():
        try:
            actual = sha256_file(path)
        except FileNotFoundError:
            problems.append(f"{path} is missing")
            continue
        except OSError as exc:
            problems.append(f"{path} is unreadable ({exc.strerror or exc})")
            continue
        if actual != digest:
            problems.append(f"{path} does not match its recorded sha256 (truncated or changed)")
    return problems


def _cached_summary(folder: Path, workdir: str | Path) -> dict[str, Any] | None:
    """The summary of a complete, verified stage folder, or None (absent or damaged)."""
    path = folder / STAGE_SUMMARY
    if not path.is_file():
        return None
    try:
        summary = relocate_summary(dict(json.loads(path.read_text())), workdir)
    except (OSError, ValueError):
        return None
    return None if summary_problems(summary) else summary


def _seal(staging: Path, folder: Path) -> None:
    """Point the text files of a staged folder at the folder's final place.

    Writers that record their own output paths (the ingest report, the GX results) see
    the staging folder; before the folder is renamed, those paths are rewritten.
    """
    old, new = str(staging), str(folder)
    for f in sorted(staging.rglob("*")):
        if f.is_file() and f.suffix in (".json", ".html", ".yaml", ".md"):
            text = f.read_text(encoding="utf-8")
            if old in text:
                write_text_atomic(f, text.replace(old, new))


def _publish(staging: Path, folder: Path, summary: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Finish a staged stage folder: its summary with final paths, as ``summary.json``.

    Call :func:`_seal` first and hash the files after it; leaving the
    :func:`~sentio.io.staged_folder` block then renames the folder into place.
    """
    final = dict(rebase_paths(summary, staging, folder)) | {"workdir": str(workdir)}
    write_json_atomic(staging / STAGE_SUMMARY, final)
    return final


def ingest_stage(
    inputs: Sequence[str | Path], cfg: SentioConfig, workdir: str | Path
) -> dict[str, Any]:
    """Ingest the input files and complete the universe; return a small JSON-able summary.

    Outputs in ``workdir/ingest/<key>/``: ``ingested.feather`` with the ingest report
    (``ingested.ingest.json``), quarantine file, GX results and configuration beside it.
    When the input lacks the universe's leveraged ETFs they are derived from the
    underlying with a daily reset into ``bars.feather``, which passes the same pandera and
    GX contracts (``bars.gx.*``). The summary's ``output`` names the file later stages
    read, and ``derived_symbols`` every symbol whose prices are derived (here, or upstream
    by ``sentio synth`` / ``sentio sample`` according to their provenance sidecar).
    """
    files = resolve_inputs(inputs)
    hashes = [sha256_file(f) for f in files]
    key = _ingest_key(files, hashes, cfg)
    root = workdir_root(workdir)
    folder = root / "ingest" / key
    cached = _cached_summary(folder, root)
    if cached is not None:
        return cached
    with staged_folder(folder) as tmp:
        summary = _ingest_into(tmp, folder, files, hashes, cfg)
        summary = _publish(tmp, folder, {"key": key, **summary}, root)
    return summary


def _ingest_into(
    tmp: Path, folder: Path, files: Sequence[Path], hashes: Sequence[str], cfg: SentioConfig
) -> dict[str, Any]:
    """Ingest into the staging folder ``tmp`` of ``folder``; the summary (staging paths)."""
    result = ingest_files(
        files, tmp / "ingested.feather", cfg, input_sha256=dict(zip(files, hashes, strict=True))
    )
    bars = pl.read_ipc(result.output)
    try:
        complete, derived = ensure_universe(bars, cfg.universe)
    except DataError as err:
        raise DataError(f"{', '.join(map(str, files))}: {err}") from None
    contract = result.report["contract"]
    out = result.output
    if derived:
        # The completed universe is a new frame: it passes the same contracts.
        out = tmp / "bars.feather"
        contract = check_contracts(complete, out, sorted(complete["symbol"].unique().to_list()))
        write_feather_atomic(out, complete)
    _seal(tmp, folder)
    report = result.report
    return {
        "output": str(out),
        "output_sha256": sha256_file(out),
        "report": str(result.outputs.report),
        "quarantine": report["quarantine"],
        "gx_json": contract["gx_json"],
        "gx_html": contract["gx_html"],
        "gx_success": contract["gx_success"],
        "config": str(result.outputs.config),
        "inputs": {info["path"]: info["sha256"] for info in report["inputs"]},
        "rows_read": report["rows_read"],
        "rows_kept": report["rows_kept"],
        "rows_dropped_outside_regular_hours": report["rows_dropped_outside_regular_hours"],
        "rows_dropped_duplicates": report["rows_dropped_duplicates"],
        "rows_quarantined": report["rows_quarantined"],
        "quarantined_by_reason": report["quarantined_by_reason"],
        "symbols": sorted(complete["symbol"].unique().to_list()),
        # Derived here from the underlying, or upstream (a provenance sidecar, e.g. synth).
        "derived_symbols": sorted(set(derived) | set(report["derived_symbols"])),
        "bar_seconds": report["bar_seconds"],
        "frequency": report["frequency"],
        "start": min(s["start"] for s in report["symbols"].values()),
        "end": max(s["end"] for s in report["symbols"].values()),
        "sessions": max(s["sessions"] for s in report["symbols"].values()),
        "incomplete_sessions": report["sessions_rejected_incomplete"],
        "gaps": report["gaps"],
        "sessions_absent": sum(g["sessions_missing"] for g in report["gaps"]),
        "sessions_with_missing_bars": sum(
            s["sessions_with_missing_bars"] for s in report["symbols"].values()
        ),
    }


# --------------------------------------------------------------------------- features


def features_key(bars_path: str | Path, cfg: SentioConfig) -> str:
    """Cache key of the features stage: bars CONTENT, features/universe settings, code."""
    from sentio.features import features_code_version

    cfg = config_for_data(cfg, bars_path)
    parts = [sha256_file(bars_path), cfg.hash("features", "universe"), features_code_version()]
    if cfg.features.exogenous_path is not None:
        parts.append(sha256_file(cfg.features.exogenous_path))
    return combine_hashes(parts)[:32]


def features_stage(bars_path: str | Path, cfg: SentioConfig, workdir: str | Path) -> dict[str, Any]:
    """Build the causal feature frame of the underlying; content-addressed and validated.

    Output ``workdir/features/<key>/features.feather``: ``timestamp`` plus Float32
    features, warm-up rows dropped, normalised causally (``rolling``/``expanding``). With
    ``features.normalisation = "train_fit"`` the values are left raw here: the folds stage
    fits one normaliser per fold on that fold's (purged) training rows only.
    """
    from data_contracts import ContractViolation
    from data_contracts.features import validate_features
    from sentio.features import build_features

    cfg = config_for_data(cfg, bars_path)
    key = features_key(bars_path, cfg)
    root = workdir_root(workdir)
    folder = root / "features" / key
    cached = _cached_summary(folder, root)
    if cached is not None:
        return cached
    frame = build_features(pl.read_ipc(bars_path), cfg)
    if frame.height == 0:
        raise DataError(
            f"{bars_path}: too few bars for the feature warm-up (the longest indicator window "
            f"plus features.norm_window = {cfg.features.norm_window}); give more data or shorter windows"
        )
    try:
        validate_features(frame, str(folder / "features.feather"))
    except ContractViolation as err:
        raise ContractError(str(err)) from None
    with staged_folder(folder) as tmp:
        out = write_feather_atomic(tmp / "features.feather", frame)
        summary = _publish(tmp, folder, _features_summary(key, out, bars_path, frame, cfg), root)
    return summary


def _features_summary(
    key: str, out: Path, bars_path: str | Path, frame: pl.DataFrame, cfg: SentioConfig
) -> dict[str, Any]:
    from sentio.features import feature_summary

    columns = [c for c in frame.columns if c != "timestamp"]
    return {
        "key": key,
        "output": str(out),
        "output_sha256": sha256_file(out),
        "bars": str(bars_path),
        "rows": frame.height,
        "columns": columns,
        "n_features": len(columns),
        "start": frame["timestamp"].min().isoformat() if frame.height else None,  # type: ignore[union-attr]
        "end": frame["timestamp"].max().isoformat() if frame.height else None,  # type: ignore[union-attr]
        "normalisation": cfg.features.normalisation,
        "table": feature_summary(frame),
    }


# --------------------------------------------------------------------------- folds

FOLDS_MODULES = (
    "sentio.stages",
    "sentio.cv",
    "sentio.cv.splitters",
    "sentio.features.normalise",
    "sentio.calendar",
)


def folds_key(features_path: str | Path, cfg: SentioConfig) -> str:
    """Cache key of the folds stage: feature frame CONTENT, ``cv`` settings, code.

    With ``features.normalisation = "train_fit"`` the stage also fits the per-fold
    normalisers, so the feature settings are part of the key then.
    """
    cfg = config_for_data(cfg, features_path)
    parts = [
        sha256_file(features_path),
        cfg.hash("cv"),
        cfg.universe.calendar,  # the test blocks' data gaps
        code_version(*FOLDS_MODULES),
    ]
    if cfg.features.normalisation == "train_fit":
        parts.append(cfg.hash("features"))
    return combine_hashes(parts)[:32]


def _ranges(runs: Sequence[tuple[int, int]], stamps: Sequence[dt.datetime]) -> list[dict[str, Any]]:
    """Half-open row runs with the timestamps of their first and last rows."""
    return [
        {
            "start_row": int(a),
            "stop_row": int(b),
            "start": stamps[a].isoformat(),
            "end": stamps[b - 1].isoformat(),
        }
        for a, b in runs
    ]


def folds_stage(
    features_path: str | Path, cfg: SentioConfig, workdir: str | Path
) -> dict[str, Any]:
    """Cut the feature rows into purged, embargoed folds (``cv`` settings).

    Samples are the rows of the feature frame, grouped by New York session so that fold
    edges fall on session boundaries; a sample's span is its own bar plus ``cv.label_bars``
    bars (the fill of the order decided at its close). Output ``workdir/folds/<key>/``:
    ``folds.json`` (method, settings, per fold its training ranges and test blocks as row
    ranges and timestamps, purged and embargoed counts; for ``cpcv`` the backtest paths)
    and, with ``features.normalisation = "train_fit"``, ``fold_<j>/normaliser.json``
    fitted on fold j's training rows only.
    """
    from sentio.cv import CombinatorialPurgedCV, splitter_from_config
    from sentio.features import fit_normaliser

    cfg = config_for_data(cfg, features_path)
    key = folds_key(features_path, cfg)
    root = workdir_root(workdir)
    folder = root / "folds" / key
    cached = _cached_summary(folder, root)
    if cached is not None:
        return cached
    frame = pl.read_ipc(features_path)
    stamps = frame["timestamp"]
    groups = stamps.to_frame("t").select(session_date(pl.col("t"))).to_series().to_numpy()
    splitter = splitter_from_config(cfg.cv)
    try:
        folds = splitter.folds(frame.height, groups=groups)
    except SentioError as exc:
        raise type(exc)(
            f"folds over {frame.height} feature rows ({features_path}), cv.method = "
            f"{cfg.cv.method}: {exc}"
        ) from None
    ts = stamps.to_list()
    with staged_folder(folder) as tmp:
        files: dict[str, str] = {}
        records: list[dict[str, Any]] = []
        for fold in folds:
            record: dict[str, Any] = {
                "fold": int(fold.index),
                "train_rows": int(fold.train.size),
                "test_rows": int(fold.test.size),
                "purged": int(fold.n_purged),
                "embargoed": int(fold.n_embargoed),
                "test_groups": [int(g) for g in np.atleast_1d(fold.test_groups)],
                "train_ranges": _ranges(fold.train_ranges(), ts),
                "test_blocks": _ranges(fold.test_blocks, ts),
                # sessions the data lacks inside a test block: the backtest runs the
                # pieces between them as separate episodes (sentio.env.backtest)
                "test_gaps": [
                    gap
                    for a, b in fold.test_blocks
                    for gap in session_gaps(pl.Series(groups[a:b]), cfg.universe.calendar)
                ],
                "normaliser": None,
            }
            if cfg.features.normalisation == "train_fit":
                params = fit_normaliser(frame, clip=cfg.features.norm_clip, rows=fold.train)
                rel = f"fold_{fold.index}/normaliser.json"
                path = write_json_atomic(tmp / rel, params)
                files[str(path)] = sha256_file(path)
                record["normaliser"] = rel  # relative to folds.json: the folder can move
            records.append(record)
        paths = None
        if isinstance(splitter, CombinatorialPurgedCV):
            paths = [[[int(g), int(j)] for g, j in path] for path in splitter.paths()]
        out = write_json_atomic(
            tmp / "folds.json",
            {
                "method": cfg.cv.method,
                "settings": cfg.cv.model_dump(mode="json"),
                "features_sha256": sha256_file(features_path),
                "samples": frame.height,
                "start": ts[0].isoformat(),
                "end": ts[-1].isoformat(),
                "folds": records,
                "paths": paths,
            },
        )
        summary: dict[str, Any] = {
            "key": key,
            "output": str(out),
            "output_sha256": sha256_file(out),
            "files": files,
            "method": cfg.cv.method,
            "samples": frame.height,
            "n_folds": len(records),
            "n_paths": None if paths is None else len(paths),
            "folds": [
                {k: v for k, v in r.items() if k not in ("train_ranges",)}
                | {
                    "n_train_ranges": len(r["train_ranges"]),
                    "normaliser": index_file(out, r["normaliser"]),
                }
                for r in records
            ],
        }
        summary = _publish(tmp, folder, summary, root)
    return summary


def index_file(index_path: str | Path, entry: str | None) -> str | None:
    """A file named in a stage's index (``folds.json``, ``regimes.json``) as an absolute path.

    Index files name their companions relative to their own folder, so a stage folder
    (or the whole working directory) can move without changing its content hash.
    """
    if entry is None:
        return None
    return str(Path(index_path).parent / entry)


def load_folds(folds_path: str | Path) -> dict[str, Any]:
    """The ``folds.json`` written by :func:`folds_stage`."""
    try:
        return dict(json.loads(Path(folds_path).read_text()))
    except (OSError, ValueError) as exc:
        raise DataError(f"{folds_path}: cannot read the folds ({exc})") from None


# --------------------------------------------------------------------------- regimes


def regimes_key(bars_path: str | Path, folds_path: str | Path, cfg: SentioConfig) -> str:
    """Cache key of the regime stage: bars and folds CONTENT, regimes/universe settings, code."""
    from sentio.regimes import regimes_code_version

    cfg = config_for_data(cfg, bars_path)
    return combine_hashes(
        [
            sha256_file(bars_path),
            sha256_file(folds_path),
            cfg.hash("regimes", "universe"),
            regimes_code_version(),
        ]
    )[:32]


def _utc64(iso: str) -> np.datetime64:
    """An ISO timestamp (timezone-aware) as a naive-UTC ``datetime64[us]``."""
    t = dt.datetime.fromisoformat(iso).astimezone(dt.UTC).replace(tzinfo=None)
    return np.datetime64(t, "us")


def regime_training_rows(
    stamps: np.ndarray, window_start: np.ndarray, fold: dict[str, Any]
) -> tuple[np.ndarray, int]:
    """Rows of the regime inputs a fold's model may be fitted on, and how many were purged.

    A row qualifies when its bar lies in one of the fold's training ranges and the bars
    its inputs are computed from (``window_start`` to its own bar) do not reach into any
    of the fold's test blocks: the first rows after a test block summarise bars of that
    block, and fitting on them would let the test period shape the model.

    Args:
        stamps: ``datetime64[us]`` (naive UTC) bar start of each regime-input row.
        window_start: start of the first bar in each row's input window, same dtype.
        fold: one entry of ``folds.json``'s ``folds``.
    """
    in_train = np.zeros(stamps.shape, dtype=bool)
    for r in fold["train_ranges"]:
        lo, hi = np.searchsorted(stamps, [_utc64(r["start"]), _utc64(r["end"])], side="left")
        hi += int(hi < stamps.size and stamps[hi] == _utc64(r["end"]))
        in_train[lo:hi] = True
    clean = in_train.copy()
    for b in fold["test_blocks"]:
        clean &= ~((window_start <= _utc64(b["end"])) & (stamps >= _utc64(b["start"])))
    return clean, int(in_train.sum() - clean.sum())


def regimes_stage(
    bars_path: str | Path, folds_path: str | Path, cfg: SentioConfig, workdir: str | Path
) -> dict[str, Any]:
    """Fit one regime model per fold on that fold's training ranges; filter every bar causally.

    Outputs in ``workdir/regimes/<key>/``: ``regimes.json`` (the per-fold index) and per
    fold ``fold_<j>/model.json`` (plain parameters), ``fold_<j>/regimes.feather``
    (timestamp, filtered probability of each regime, most likely regime) and
    ``fold_<j>/history.json`` (share, return, volatility, dwell times, transitions over
    the fold's training rows, its test rows and all rows). Each model sees the inputs of
    its fold's training rows only (see :func:`regime_training_rows`); the probabilities
    at every bar use data up to that bar only (forward filter).
    """
    from sentio.regimes import filter_probs, fit_regimes, regime_history, regime_observations

    cfg = config_for_data(cfg, bars_path)
    key = regimes_key(bars_path, folds_path, cfg)
    root = workdir_root(workdir)
    folder = root / "regimes" / key
    cached = _cached_summary(folder, root)
    if cached is not None:
        return cached
    folds = load_folds(folds_path)
    bars = pl.read_ipc(bars_path)
    obs = regime_observations(bars, cfg)
    if obs.X.shape[0] == 0:
        raise DataError(
            f"{bars_path}: too few bars of {cfg.universe.underlying} for the regime inputs' "
            f"warm-up of {obs.warmup} bars (regimes.vol_window = {cfg.regimes.vol_window}); give more "
            "data or a shorter window"
        )
    under = bars.filter(pl.col("symbol") == cfg.universe.underlying).sort("timestamp")
    bar_stamps = under["timestamp"].dt.replace_time_zone(None).to_numpy().astype("datetime64[us]")
    stamps = bar_stamps[obs.warmup :]
    window_start = bar_stamps[: stamps.size]
    returns = (
        under.select(r=pl.col("close").log().diff())["r"].to_numpy()[obs.warmup :].astype(float)
    )
    k = cfg.regimes.n_states
    files: dict[str, str] = {}
    entries: list[dict[str, Any]] = []  # regimes.json: files relative to its folder
    with staged_folder(folder) as tmp:
        for fold in folds["folds"]:
            j = int(fold["fold"])
            train, dropped = regime_training_rows(stamps, window_start, fold)
            if not train.any():
                raise DataError(
                    f"fold {j}: no regime-input rows inside its training ranges (the regime "
                    f"inputs start {obs.warmup} bars after the first bar); give more data or a "
                    "shorter regimes.vol_window"
                )
            test = np.zeros_like(train)
            for b in fold["test_blocks"]:
                test |= (stamps >= _utc64(b["start"])) & (stamps <= _utc64(b["end"]))
            model = fit_regimes(obs.X[train], cfg.regimes)
            probs = filter_probs(model, obs.X)
            labels = probs.argmax(axis=1)
            names = {n: f"fold_{j}/{n}" for n in ("model.json", "regimes.feather", "history.json")}
            model.save(tmp / names["model.json"])
            frame = pl.DataFrame(
                {
                    "timestamp": obs.timestamps,
                    **{f"p_regime_{i}": probs[:, i].astype("float32") for i in range(k)},
                }
            ).with_columns(regime=pl.Series(labels).cast(pl.Int8))
            write_feather_atomic(tmp / names["regimes.feather"], frame)
            histories = {
                name: regime_history(
                    labels[mask], obs.timestamps.filter(pl.Series(mask)), returns[mask], n_states=k
                )
                for name, mask in (("train", train), ("test", test), ("all", np.ones_like(train)))
            }
            write_json_atomic(tmp / names["history.json"], histories)
            for rel in names.values():
                files[str(tmp / rel)] = sha256_file(tmp / rel)
            entries.append(
                {
                    "fold": j,
                    "method": model.method,
                    "reason": model.reason,
                    "rows_train": int(train.sum()),
                    "rows_purged_lookback": dropped,
                    "rows_test": int(test.sum()),
                    "model": names["model.json"],
                    "output": names["regimes.feather"],
                    "history": names["history.json"],
                    "regimes_test": histories["test"],
                }
            )
        index = write_json_atomic(
            tmp / "regimes.json", {"folds": entries, "observations": list(obs.columns)}
        )
        methods = sorted({e["method"] for e in entries})
        summary: dict[str, Any] = {
            "key": key,
            "output": str(index),
            "output_sha256": sha256_file(index),
            "files": files,
            "folds_file": str(folds_path),
            "method": methods[0] if len(methods) == 1 else "mixed",
            "n_states": k,
            "n_folds": len(entries),
            "observations": list(obs.columns),
            "warmup_bars": obs.warmup,
            "rows": int(stamps.size),
            "folds": [
                e | {f: str(tmp / e[f]) for f in ("model", "output", "history")} for e in entries
            ],
        }
        summary = _publish(tmp, folder, summary, root)
    return summary


# --------------------------------------------------------------------------- train + backtest

TRAIN_MODULES = (
    "sentio.stages",
    "sentio.agents",
    "sentio.agents.training",
    "sentio.agents.selection",
    "sentio.agents.extractors",
    "sentio.agents.policies",
    "sentio.agents.sentio_ppo",
    "sentio.agents.distributional",
    "sentio.env",
    "sentio.env.market",
    "sentio.env.simulator",
    "sentio.env.vec_env",
    "sentio.env.episodes",
    "sentio.env.backtest",
    "sentio.env.references",
    "sentio.env.device_env",
    "sentio.env.torch_simulator",
    "sentio.agents.device_rollout",
    "sentio.agents.ppo_update",
    "sentio.evaluation.metrics",
    "sentio.calendar",
    "sentio.data.synth",
)


def _regime_fold_output(regimes_path: str | Path | None, fold: int) -> str | None:
    if regimes_path is None:
        return None
    index = json.loads(Path(regimes_path).read_text())
    for entry in index["folds"]:
        if int(entry["fold"]) == fold:
            return index_file(regimes_path, entry["output"])
    raise DataError(f"{regimes_path}: no regime model for fold {fold}")


def train_key(
    bars_path: str | Path,
    features_path: str | Path,
    folds_path: str | Path,
    regimes_path: str | Path | None,
    cfg: SentioConfig,
    fold: int,
    seed: int,
) -> str:
    """Cache key of one (fold, seed) training: every input's CONTENT, settings, code, fold, seed."""
    regime_file = _regime_fold_output(regimes_path, fold)
    cfg = config_for_data(cfg, bars_path)
    return combine_hashes(
        [
            sha256_file(bars_path),
            provenance_digest(bars_path),  # the generator's truth of synthetic bars (oracle)
            sha256_file(features_path),
            sha256_file(folds_path),
            sha256_file(regime_file) if regime_file else "no-regimes",
            cfg.hash("features", "cv"),
            training_settings_hash(cfg),  # the seed is explicit; other seeds change nothing
            code_version(*TRAIN_MODULES),
            f"fold={fold}",
            f"seed={seed}",
        ]
    )[:32]


def fold_market(
    bars_path: str | Path,
    features_path: str | Path,
    folds_path: str | Path,
    regimes_path: str | Path | None,
    cfg: SentioConfig,
    fold: int,
) -> tuple[Any, list[tuple[int, int]], list[tuple[int, int]]]:
    """The market arrays of one fold, with its training ranges and test blocks as market rows.

    With ``features.normalisation = "train_fit"`` the fold's normaliser (fitted on its
    training rows by the folds stage) is applied first; regime probabilities are the
    fold's own model's.
    """
    from sentio.env import build_market, rows_from_ranges
    from sentio.features import apply_normaliser

    folds = load_folds(folds_path)
    entry = next((f for f in folds["folds"] if int(f["fold"]) == fold), None)
    if entry is None:
        raise DataError(f"{folds_path}: no fold {fold} (folds: {len(folds['folds'])})")
    features = pl.read_ipc(features_path)
    normaliser = index_file(folds_path, entry.get("normaliser"))
    if normaliser is not None:
        features = apply_normaliser(features, json.loads(Path(normaliser).read_text()))
    regime_file = _regime_fold_output(regimes_path, fold)
    regimes = pl.read_ipc(regime_file) if regime_file else None
    market = build_market(pl.read_ipc(bars_path), features, regimes, cfg)
    return (
        market,
        rows_from_ranges(market, entry["train_ranges"]),
        rows_from_ranges(market, entry["test_blocks"]),
    )


def _bars_file(result: Any, path: Path) -> Path:
    return write_feather_atomic(path, result.bars_frame())


def truth_of(bars_path: str | Path) -> dict[str, Any] | None:
    """The generator's truth recorded in the provenance of synthetic bars (else ``None``)."""
    from sentio.data.provenance import read_provenance

    record = read_provenance(bars_path, sha256_file(bars_path))
    truth = None if record is None else record.get("truth")
    return truth if isinstance(truth, dict) else None


def reference_backtests(
    market: Any, params: Any, test_rows: Sequence[tuple[int, int]], truth: dict[str, Any] | None
) -> dict[str, Any]:
    """The reference policies on a fold's test blocks, under the agent's costs and masks.

    Names (see :data:`sentio.report.REFERENCE_LABELS` for the report's words): ``flat``;
    ``long_etf`` (the +L ETF held intraday under the agent's rules); ``underlying`` (the
    underlying bought and held, overnight included; no costs); ``trend`` (60-bar momentum
    with hysteresis, sized by the risk budget: enter at |z| > 2, leave when its sign
    turns; the one-bar return summed over the window when ``log_ret_60`` is not a
    feature); ``fast_trend`` (the sign of the move over the observation window, up to 15
    bars, re-decided every bar);
    ``regime_rule`` (with regimes: long in the calm regime, short in the volatile one,
    flat between) and ``oracle`` (synthetic data: the generator's truth).
    """
    from sentio.env.backtest import (
        backtest,
        flat_policy,
        long_etf_policy,
        trend_policy,
        underlying_buy_and_hold,
    )
    from sentio.env.references import oracle_policy, regime_rule_policy

    names = market.feature_names
    if "log_ret_60" in names:
        slow = trend_policy(params, 1, feature_names=names, feature="log_ret_60", enter=2.0)
    else:
        slow = trend_policy(params, params.window, feature_names=names, enter=2.0)
    policies: dict[str, Any] = {
        "flat": flat_policy(params),
        "long_etf": long_etf_policy(params),
        "trend": slow,
        "fast_trend": trend_policy(params, min(15, params.window), feature_names=names),
    }
    if market.n_regimes >= 2:
        policies["regime_rule"] = regime_rule_policy(params, market.n_regimes)
    if truth is not None:
        policies["oracle"] = oracle_policy(params, market, truth)
    out: dict[str, Any] = {
        name: backtest(pol, market, params, test_rows) for name, pol in policies.items()
    }
    out["underlying"] = underlying_buy_and_hold(market, test_rows, params)
    return out


def train_stage(
    bars_path: str | Path,
    features_path: str | Path,
    folds_path: str | Path,
    regimes_path: str | Path | None,
    cfg: SentioConfig,
    workdir: str | Path,
    *,
    fold: int,
    seed: int,
    progress: Any = None,
) -> dict[str, Any]:
    """Train one agent on a fold's training ranges and backtest it on the fold's test blocks.

    Outputs in ``workdir/train/<key>/``: ``model.zip`` (an SB3 model, loadable with its
    class's ``load``), ``config.yaml``, ``backtest.feather`` (per bar: out-of-sample
    returns, equity, exposure, costs, action, regime), ``trades.feather`` (the ledger) and
    the same bars of the reference policies (``reference_<name>.feather``: flat,
    buy-and-hold TQQQ, the trend rule, the underlying's buy-and-hold). A killed training
    resumes from its checkpoint when the stage is run again.
    """
    from sentio.agents.training import CHECKPOINTS_DIR, algorithm_class, train_agent
    from sentio.config import write_config
    from sentio.env import EnvParams
    from sentio.env.backtest import backtest
    from sentio.evaluation import metrics_to_json

    cfg = config_for_data(cfg, bars_path)
    key = train_key(bars_path, features_path, folds_path, regimes_path, cfg, fold, seed)
    root = workdir_root(workdir)
    folder = root / "train" / key
    cached = _cached_summary(folder, root)
    if cached is not None:
        return cached
    market, train_rows, test_rows = fold_market(
        bars_path, features_path, folds_path, regimes_path, cfg, fold
    )
    # A fixed staging name: a killed training's checkpoints are found by the next attempt.
    with staged_folder(folder, staging=f".{key}.partial") as tmp:
        config = write_config(tmp / "config.yaml", cfg)
        result = train_agent(cfg, market, train_rows, seed=seed, out_dir=tmp, progress=progress)
        shutil.rmtree(tmp / CHECKPOINTS_DIR, ignore_errors=True)  # only needed to resume
        model = algorithm_class(cfg).load(result.model_path, device="cpu")
        params = EnvParams.from_config(cfg, market)
        instruments = (cfg.universe.long, cfg.universe.short)
        bt = backtest(model, market, params, test_rows, instruments=instruments)
        files: dict[str, Path] = {
            "backtest": _bars_file(bt, tmp / "backtest.feather"),
            "trades": write_feather_atomic(tmp / "trades.feather", bt.trades),
        }
        references = reference_backtests(market, params, test_rows, truth_of(bars_path))
        for name, ref in references.items():
            files[f"reference_{name}"] = _bars_file(ref, tmp / f"reference_{name}.feather")
        hashed = [Path(result.model_path), Path(config), *files.values()]
        summary: dict[str, Any] = {
            "key": key,
            "output": str(files["backtest"]),
            "output_sha256": sha256_file(files["backtest"]),
            "files": {str(p): sha256_file(p) for p in hashed},
            "fold": fold,
            "seed": seed,
            "model": result.model_path,
            "train": result.to_dict(),
            "test_bars": bt.n_bars,
            "metrics": metrics_to_json(bt.metrics()),
            "references": {
                name: metrics_to_json(ref.metrics()) for name, ref in references.items()
            },
            "n_trades": int(bt.trades.height),
        }
        summary = _publish(tmp, folder, summary, root)
    return summary


# --------------------------------------------------------------------------- report


def run_profile(timings: dict[str, float], runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The performance profile of a run: seconds per stage, training throughput, memory.

    Peak memory is the flow process's peak resident set (the tasks run in its threads)
    and, beside it, the largest peak of a finished child process (each training runs in
    one); GPU memory is torch's peak allocation when CUDA was used in this process.
    """
    import resource

    profile: dict[str, Any] = {f"{k} (s)": round(v, 2) for k, v in timings.items()}
    rates = [r["train"]["steps_per_second"] for r in runs if r.get("train")]
    if rates:
        profile["training steps per second (mean over runs)"] = round(float(np.mean(rates)), 1)
        profile["training steps (total)"] = int(sum(r["train"]["num_timesteps"] for r in runs))
        profile["devices"] = ", ".join(sorted({str(r["train"]["device"]) for r in runs}))
    profile["peak memory (MiB)"] = round(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
    )
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if child > 0:
        profile["peak memory of a training process (MiB)"] = round(child / 1024, 1)
    try:
        import torch

        if torch.cuda.is_available() and torch.cuda.max_memory_allocated() > 0:
            profile["peak GPU memory (MiB)"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return profile


def report_stage(
    runs: Sequence[dict[str, Any]],
    cfg: SentioConfig,
    out_dir: str | Path,
    *,
    ingest_summary: dict[str, Any] | None = None,
    profile: dict[str, Any] | None = None,
    run_info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the run's report (``report.md``, ``report.html``, ``metrics.json``) to ``out_dir``.

    ``run_info`` (``name``, ``started``, ``config_hash``) heads the report. Not cached: the
    report of every run includes that run's performance profile.
    """
    from sentio.report import build_report

    if ingest_summary is not None and ingest_summary.get("bar_seconds"):
        cfg = resolve_for_bars(cfg, int(ingest_summary["bar_seconds"]))
    summary = build_report(
        list(runs),
        out_dir,
        cfg=cfg,
        ingest_summary=ingest_summary,
        profile=profile,
        run_info=run_info,
    )
    summary["output"] = summary["paths"]["html"]
    return summary
