"""Real sample data shipped with installed packages, in canonical form.

``nasdaq-daily``: the NASDAQ Composite (``IXIC``) daily bars 1999-01-04 .. 2018-12-31 that
``arch`` ships (``arch.data.nasdaq``), with daily-reset +L / -L series derived from it
(``IXIC3L`` / ``IXIC3S`` for the default L = 3). A daily bar starts at its session's open,
so its timestamp is the session's open in UTC from the exchange calendar. The raw
Open/High/Low/Close are used (``Adj Close`` equals ``Close`` for an index). Dates that
are not sessions of the calendar are dropped and counted (there are none in the shipped
file); two sessions carry a vendor volume of 0 and are kept as they are. The derived
series' volume is the index volume times the universe's ``derived_volume_ratio``.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any

import polars as pl

from sentio.calendar import sessions
from sentio.config import SentioConfig, UniverseConfig, write_config
from sentio.data.leverage import derived_provenance, ensure_universe
from sentio.data.provenance import write_provenance
from sentio.data.schema import to_canonical
from sentio.errors import DataError
from sentio.io import feather_output, sidecar, write_feather_atomic, write_json_atomic

__all__ = ["SAMPLES", "nasdaq_daily", "nasdaq_daily_report", "nasdaq_universe", "write_sample"]

log = logging.getLogger(__name__)

NASDAQ_SYMBOL = "IXIC"
SAMPLES: dict[str, str] = {
    "nasdaq-daily": "NASDAQ Composite daily bars 1999-2018 (arch.data.nasdaq) with derived "
    "daily-reset +L / -L series",
}


def nasdaq_universe(universe: UniverseConfig | None = None) -> UniverseConfig:
    """The universe of the ``nasdaq-daily`` sample.

    Leverage, costs and calendar come from ``universe`` (default: the defaults); the
    symbols are ``IXIC`` and ``IXIC{L}L`` / ``IXIC{L}S`` (``IXIC3L`` / ``IXIC3S`` for L = 3).
    """
    base = universe or UniverseConfig.model_validate({})
    lev = f"{base.leverage:g}"
    data = base.model_dump()
    data.update(
        underlying=NASDAQ_SYMBOL, long=f"{NASDAQ_SYMBOL}{lev}L", short=f"{NASDAQ_SYMBOL}{lev}S"
    )
    return UniverseConfig.model_validate(data)


def _load_raw(calendar: str) -> tuple[pl.DataFrame, dict[str, Any]]:
    """IXIC canonical daily bars and a report of what was dropped or odd."""
    try:
        from arch.data import nasdaq
    except ImportError as err:  # pragma: no cover - arch is a dependency
        raise DataError(f"sample nasdaq-daily needs the 'arch' package: {err}") from None
    raw = nasdaq.load()
    expected = {"Open", "High", "Low", "Close", "Volume"}
    if not expected <= set(raw.columns):
        raise DataError(
            f"arch.data.nasdaq: expected columns {sorted(expected)}, got {list(raw.columns)}"
        )
    frame = pl.DataFrame(
        {
            "session": [d.date() for d in raw.index],
            "open": raw["Open"].to_numpy(dtype=float),
            "high": raw["High"].to_numpy(dtype=float),
            "low": raw["Low"].to_numpy(dtype=float),
            "close": raw["Close"].to_numpy(dtype=float),
            "volume": raw["Volume"].to_numpy(dtype=float),
        }
    )
    first, last = frame["session"].min(), frame["session"].max()
    assert isinstance(first, dt.date) and isinstance(last, dt.date)
    table = sessions(first, last, calendar).select("session", "open")
    joined = frame.join(table.rename({"open": "timestamp"}), on="session", how="left")
    non_session = joined.filter(pl.col("timestamp").is_null())["session"]
    if non_session.len():
        log.warning(
            "nasdaq-daily: dropped %d rows on dates that are not %s sessions: %s",
            non_session.len(),
            calendar,
            non_session.to_list(),
        )
    kept = joined.filter(pl.col("timestamp").is_not_null())
    missing_sessions = table.join(frame, on="session", how="anti")["session"]
    report: dict[str, Any] = {
        "source": "arch.data.nasdaq (NASDAQ Composite, raw OHLC, not Adj Close)",
        "rows_raw": frame.height,
        "rows": kept.height,
        "first_session": str(first),
        "last_session": str(last),
        "dropped_non_session_rows": non_session.len(),
        "dropped_non_session_dates": [str(d) for d in non_session.to_list()],
        "calendar_sessions_missing": [str(d) for d in missing_sessions.to_list()],
        "zero_volume_sessions": [str(d) for d in kept.filter(pl.col("volume") <= 0)["session"]],
    }
    bars = to_canonical(kept.with_columns(pl.lit(NASDAQ_SYMBOL).alias("symbol")))
    return bars, report


def nasdaq_daily_report(
    universe: UniverseConfig | None = None,
) -> tuple[pl.DataFrame, UniverseConfig, dict[str, Any]]:
    """Bars, universe and load report of the ``nasdaq-daily`` sample.

    The report counts the rows dropped because their date is not a session, lists
    calendar sessions the file lacks and sessions with zero volume, and names the derived
    symbols.
    """
    uni = nasdaq_universe(universe)
    under, report = _load_raw(uni.calendar)
    bars, derived = ensure_universe(under, uni)
    report["derived_symbols"] = derived
    report["universe"] = uni.model_dump(mode="json")
    return bars, uni, report


def nasdaq_daily(universe: UniverseConfig | None = None) -> pl.DataFrame:
    """Canonical daily bars of IXIC and its derived +L / -L series (see module docstring).

    ``universe`` supplies leverage, costs and calendar; the symbols are those of
    :func:`nasdaq_universe`.
    """
    bars, _, _ = nasdaq_daily_report(universe)
    return bars


def write_sample(name: str, out: str | Path, cfg: SentioConfig) -> dict[str, Path]:
    """Write the sample ``name`` to ``out`` (Feather) with configuration, report, provenance.

    ``sidecar(out, "config.yaml")`` is ``cfg`` with the sample's universe (so a run on
    ``out`` with that configuration finds its symbols); ``sidecar(out, "sample.json")``
    is the load report; ``sidecar(out, "provenance.json")`` says the data are real and
    which series are derived (underlying, leverage, costs). Returns the paths under
    ``bars``, ``config``, ``report``, ``provenance``.

    Raises:
        DataError: unknown sample name (the message lists the available ones).
    """
    if name not in SAMPLES:
        raise DataError(f"unknown sample {name!r}; available: {', '.join(sorted(SAMPLES))}")
    out = feather_output(out)
    bars, uni, report = nasdaq_daily_report(cfg.universe)
    data = cfg.model_dump()
    data["universe"] = uni.model_dump()
    sample_cfg = SentioConfig.model_validate(data)
    report["sample"] = name
    provenance = {
        "source": f"sentio sample {name}",
        "synthetic": False,
        "derived_symbols": derived_provenance(uni, report["derived_symbols"]),
    }
    return {
        "bars": write_feather_atomic(out, bars),
        "config": write_config(sidecar(out, "config.yaml"), sample_cfg),
        "report": write_json_atomic(sidecar(out, "sample.json"), report),
        "provenance": write_provenance(out, provenance),
    }
