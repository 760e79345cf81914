"""What every stage shares: input files, bar length, stage folders and their summaries.

A stage writes its outputs under ``workdir/<stage>/<key>/`` (:func:`cached_stage`): the
key hashes the content of the inputs, the configuration sections the stage reads and the
version of the code that does the work (the stage's own module, this one and the library
modules it calls). A folder is written in a staging folder beside it and renamed into
place whole, with a ``summary.json`` whose recorded file hashes are checked before the
folder is reused.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import polars as pl

from sentio.config import SentioConfig, resolve_for_bars, unresolved_settings
from sentio.data import readers
from sentio.errors import DataError
from sentio.io import (
    imported_modules,
    rebase_paths,
    sha256_file,
    staged_folder,
    write_json_atomic,
    write_text_atomic,
)

NOT_CODE_VERSIONED: tuple[str, ...] = (
    "sentio",  # the package: its version string is part of every code version already
    "sentio.stages",  # re-exports only; stage modules import what they use directly (tested)
    "sentio.config",  # settings enter the keys by value, resolved for the data
    "sentio.errors",  # exception classes and their messages
)
"""Modules a stage's code version leaves out (neither included nor followed): their
edits cannot change a stage's outputs, and including them would recompute every stage
and retrain every model for a help text or an error message."""


def stage_modules(stage: str) -> tuple[str, ...]:
    """The project modules stage ``stage`` runs (its module and everything it imports,
    :func:`sentio.io.imported_modules`), less :data:`NOT_CODE_VERSIONED`: the code its
    cache key covers.

    >>> "sentio.regimes.training_rows" in stage_modules("regimes")
    True
    """
    return imported_modules(f"sentio.stages.{stage}", stop=NOT_CODE_VERSIONED)


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


def stage_summary(stage: str, key: str, workdir: str | Path) -> dict[str, Any] | None:
    """The summary of the complete stage folder ``workdir/<stage>/<key>/`` whose files
    verify, or None (absent, incomplete or damaged): an output another machine wrote to
    shared storage, read without recomputing anything."""
    root = workdir_root(workdir)
    return _cached_summary(root / stage / key, root)


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


def cached_stage(
    stage: str,
    key: str,
    workdir: str | Path,
    compute: Callable[[Path, Path], dict[str, Any]],
    *,
    staging: str | None = None,
) -> dict[str, Any]:
    """The summary of the stage folder ``workdir/<stage>/<key>/``: reused, or computed now.

    A complete folder whose files verify is reused (:func:`_cached_summary`). Otherwise
    ``compute(tmp, folder)`` writes the outputs into a staging folder ``tmp`` (beside
    ``folder``; ``staging`` names it for work that resumes, see
    :func:`~sentio.io.staged_folder`) and returns their summary with paths under ``tmp``;
    the summary, headed by ``key``, is published with the final paths (:func:`_publish`)
    and the folder renamed into place.
    """
    root = workdir_root(workdir)
    folder = root / stage / key
    cached = _cached_summary(folder, root)
    if cached is not None:
        return cached
    with staged_folder(folder, staging=staging) as tmp:
        summary = _publish(tmp, folder, {"key": key, **compute(tmp, folder)}, root)
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
    """The ``folds.json`` written by :func:`sentio.stages.folds.folds_stage`."""
    try:
        return dict(json.loads(Path(folds_path).read_text()))
    except (OSError, ValueError) as exc:
        raise DataError(f"{folds_path}: cannot read the folds ({exc})") from None
