"""Where bars came from: the provenance sidecar written beside generated or derived bars.

``<stem>.provenance.json`` names the symbols whose prices are derived (with their
underlying, leverage and costs) and the sha256 of the bars file it describes. A reader
trusts it only while that hash matches, so a sidecar left beside a file that was later
overwritten says nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sentio.errors import DataError
from sentio.io import sha256_file, sidecar, write_json_atomic

SUFFIX = "provenance.json"


def provenance_path(bars: str | Path) -> Path:
    """The provenance sidecar of a bars file."""
    return sidecar(bars, SUFFIX)


def write_provenance(bars: str | Path, record: dict[str, Any]) -> Path:
    """Write ``record`` (with ``derived_symbols``) beside ``bars``, bound to its current bytes."""
    return write_json_atomic(provenance_path(bars), {**record, "bars_sha256": sha256_file(bars)})


def read_provenance(bars: str | Path, bars_sha256: str) -> dict[str, Any] | None:
    """The provenance of ``bars`` if a sidecar exists and describes these exact bytes.

    Returns ``None`` without a sidecar; a sidecar for other bytes (stale) is returned as
    ``{"stale": True, ...}`` with no derived symbols, so callers can say it was ignored.
    """
    path = provenance_path(bars)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: unreadable provenance file: {err}") from None
    if not isinstance(data, dict) or not isinstance(data.get("derived_symbols", {}), dict):
        raise DataError(f"{path}: provenance must be an object with a 'derived_symbols' mapping")
    if data.get("bars_sha256") != bars_sha256:
        return {"stale": True, "path": str(path), "derived_symbols": {}}
    return data


def provenance_digest(bars: str | Path) -> str:
    """A digest of the sidecar's bytes for cache keys ("" when there is none)."""
    path = provenance_path(bars)
    return sha256_file(path) if path.is_file() else ""
