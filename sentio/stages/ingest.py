"""The ingest stage: bar files in, one validated bars file with the complete universe out."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl

from sentio.config import SentioConfig
from sentio.data.ingest import check_contracts, ingest_files
from sentio.data.leverage import ensure_universe
from sentio.data.provenance import provenance_digest
from sentio.errors import DataError
from sentio.io import code_version, combine_hashes, sha256_file, write_feather_atomic
from sentio.stages.common import _seal, cached_stage, resolve_inputs, stage_modules


def ingest_code_version() -> str:
    """Version of every module whose change would change an ingest output."""
    return code_version(*stage_modules("ingest"))


def ingest_key(inputs: Sequence[str | Path], cfg: SentioConfig) -> str:
    """Cache key of the ingest stage: input CONTENT, ingest/universe settings, code version."""
    files = resolve_inputs(inputs)
    return _ingest_key(files, [sha256_file(f) for f in files], cfg)


def _ingest_key(
    files: Sequence[Path], hashes: Sequence[str], cfg: SentioConfig, ongoing: bool = False
) -> str:
    # Every file in order (a file given twice counts twice), its provenance sidecar (which
    # decides what the report says about derived prices), the settings, the code, and
    # whether the last session may be in progress (a live signal's ingest).
    return combine_hashes(
        [
            *hashes,
            *(provenance_digest(f) for f in files),
            cfg.hash("ingest", "universe"),
            ingest_code_version(),
            *(["ongoing"] if ongoing else []),
        ]
    )[:32]


def ingest_stage(
    inputs: Sequence[str | Path], cfg: SentioConfig, workdir: str | Path, *, ongoing: bool = False
) -> dict[str, Any]:
    """Ingest the input files and complete the universe; return a small JSON-able summary.

    Outputs in ``workdir/ingest/<key>/``: ``ingested.feather`` with the ingest report
    (``ingested.ingest.json``), quarantine file, GX results and configuration beside it.
    When the input lacks the universe's leveraged ETFs they are derived from the
    underlying with a daily reset into ``bars.feather``, which passes the same pandera and
    GX contracts (``bars.gx.*``). The summary's ``output`` names the file later stages
    read, and ``derived_symbols`` every symbol whose prices are derived (here, or upstream
    by ``sentio synth`` / ``sentio sample`` according to their provenance sidecar).
    ``ongoing``: a live signal's bars, whose last session may be in progress
    (:func:`sentio.data.ingest.ingest_files`); its own cache key.
    """
    files = resolve_inputs(inputs)
    hashes = [sha256_file(f) for f in files]
    key = _ingest_key(files, hashes, cfg, ongoing)
    return cached_stage(
        "ingest",
        key,
        workdir,
        lambda tmp, folder: _ingest_into(tmp, folder, files, hashes, cfg, ongoing),
    )


def _ingest_into(
    tmp: Path,
    folder: Path,
    files: Sequence[Path],
    hashes: Sequence[str],
    cfg: SentioConfig,
    ongoing: bool,
) -> dict[str, Any]:
    """Ingest into the staging folder ``tmp`` of ``folder``; the summary (staging paths)."""
    result = ingest_files(
        files,
        tmp / "ingested.feather",
        cfg,
        input_sha256=dict(zip(files, hashes, strict=True)),
        ongoing=ongoing,
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
        "partial_sessions": report["partial_sessions"],
        "sessions_absent": sum(g["sessions_missing"] for g in report["gaps"]),
        "sessions_with_missing_bars": sum(
            s["sessions_with_missing_bars"] for s in report["symbols"].values()
        ),
    }
