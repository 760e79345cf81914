"""The Great Expectations suite for canonical bars, and a runner that saves its report.

The suite states the same contract as :mod:`data_contracts.bars` in GX's vocabulary so
that every ingest leaves a human-readable record beside its output:

* ``<out_dir>/<name>.gx.json``: the validation result (GX's own JSON dict);
* ``<out_dir>/<name>.gx.html``: the validation page rendered by GX's Data Docs.

How the report is produced: an *ephemeral* GX context (in-memory stores, analytics and
progress bars off) with a single local Data Docs site whose filesystem backend lives in a
hidden temporary folder inside ``out_dir``. A Checkpoint with an
:class:`~great_expectations.checkpoint.UpdateDataDocsAction` validates the frame and
renders the site; the one validation page is copied out (its relative links to the rest
of the site are neutralised: GX already inlines its own styles), and the temporary site
is deleted. Nothing is written to the working directory or to the home directory.

The pandera contract remains the gate (it also checks per-symbol ordering and exact
polars dtypes); this suite is the audit record.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import great_expectations as gx
import great_expectations.expectations as gxe
import polars as pl
from great_expectations.checkpoint import UpdateDataDocsAction
from great_expectations.core.run_identifier import RunIdentifier
from great_expectations.data_context.types.base import (
    DataContextConfig,
    InMemoryStoreBackendDefaults,
    ProgressBarsConfig,
)

__all__ = ["BARS_SUITE_NAME", "GXReport", "bars_suite", "run_gx_validation"]

BARS_SUITE_NAME = "canonical_bars"
"""The name of the expectation suite (shown in Data Docs)."""

_COLUMNS: tuple[str, ...] = ("timestamp", "symbol", "open", "high", "low", "close", "volume")
_PRICES: tuple[str, ...] = ("open", "high", "low", "close")
_FLOAT_MAX = sys.float_info.max
_SITE = "local_site"
_FINITE_NOTE = "The upper bound is the largest float64: values must be finite."


@dataclass(frozen=True)
class GXReport:
    """The outcome of :func:`run_gx_validation`.

    Attributes:
        success: every expectation passed.
        json_path: the saved validation result (GX JSON).
        html_path: the saved Data Docs validation page (one HTML file).
        evaluated: number of expectations evaluated.
        successful: number of expectations that passed.
        failed: one label per failed expectation, its type plus the columns it looked
            at, e.g. ``"expect_column_pair_values_a_to_be_greater_than_b(high, low)"``.
    """

    success: bool
    json_path: Path
    html_path: Path
    evaluated: int
    successful: int
    failed: list[str]


def bars_suite(
    symbols: Sequence[str] | None = None, name: str = BARS_SUITE_NAME
) -> gx.ExpectationSuite:
    """Build the expectation suite for canonical bars.

    Args:
        symbols: when given, ``symbol`` must take values in this set.
        name: the suite's name.

    Returns:
        A new, unsaved suite: canonical columns in order, at least one row, no nulls,
        float64 prices that are finite and > 0, finite volume >= 0, ``high`` >= ``open``,
        ``close`` and ``low``, ``low`` <= ``open`` and ``close``, non-empty symbols,
        (symbol, timestamp) unique, and symbols in ``symbols`` if passed.
    """
    expectations: list[gxe.Expectation] = [
        gxe.ExpectTableColumnsToMatchOrderedList(column_list=list(_COLUMNS)),
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
    ]
    expectations += [gxe.ExpectColumnValuesToNotBeNull(column=c) for c in _COLUMNS]
    expectations += [
        gxe.ExpectColumnValuesToBeOfType(column=c, type_="float64") for c in (*_PRICES, "volume")
    ]
    expectations += [
        gxe.ExpectColumnValuesToBeBetween(
            column=c, min_value=0, strict_min=True, max_value=_FLOAT_MAX, notes=_FINITE_NOTE
        )
        for c in _PRICES
    ]
    expectations.append(
        gxe.ExpectColumnValuesToBeBetween(
            column="volume", min_value=0, max_value=_FLOAT_MAX, notes=_FINITE_NOTE
        )
    )
    expectations += [
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A=a, column_B=b, or_equal=True)
        for a, b in (("high", "low"), ("high", "open"), ("high", "close"))
    ]
    expectations += [
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A=a, column_B="low", or_equal=True)
        for a in ("open", "close")
    ]
    expectations.append(gxe.ExpectColumnValueLengthsToBeBetween(column="symbol", min_value=1))
    expectations.append(gxe.ExpectCompoundColumnsToBeUnique(column_list=["symbol", "timestamp"]))
    if symbols is not None:
        expectations.append(
            gxe.ExpectColumnValuesToBeInSet(column="symbol", value_set=sorted(set(symbols)))
        )
    return gx.ExpectationSuite(name=name, expectations=expectations)


def run_gx_validation(
    frame: pl.DataFrame,
    out_dir: Path,
    name: str,
    symbols: list[str] | None = None,
) -> GXReport:
    """Validate ``frame`` with :func:`bars_suite` and save the JSON result and Data Docs page.

    Args:
        frame: the bars (converted to pandas for GX).
        out_dir: where the report goes; created if missing.
        name: the report's base name: ``<name>.gx.json`` and ``<name>.gx.html``.
        symbols: the allowed symbols, if the suite should check them.

    Returns:
        A :class:`GXReport`; a failed validation is reported, not raised.
    """
    if not name or Path(name).name != name:
        raise ValueError(f"report name must be a plain file name, got {name!r}")
    out_dir = Path(out_dir).expanduser().resolve()  # GX's Data Docs site needs an absolute root
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{name}.gx.json"
    html_path = out_dir / f"{name}.gx.html"

    with tempfile.TemporaryDirectory(prefix=f".{name}.gx-site-", dir=out_dir) as site_dir:
        context = _ephemeral_context(Path(site_dir))
        suite = context.suites.add(bars_suite(symbols))
        asset = context.data_sources.add_pandas("sentio").add_dataframe_asset(name)
        batch_definition = asset.add_batch_definition_whole_dataframe("whole_frame")
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=name, data=batch_definition, suite=suite)
        )
        checkpoint = context.checkpoints.add(
            gx.Checkpoint(
                name=name,
                validation_definitions=[definition],
                actions=[UpdateDataDocsAction(name="update_data_docs", site_names=[_SITE])],
                result_format="SUMMARY",
            )
        )
        result = checkpoint.run(
            batch_parameters={"dataframe": frame.to_pandas()},
            run_id=RunIdentifier(run_name=name),
        )
        (validation,) = result.run_results.values()
        html = _neutralise_site_links(_rendered_page(Path(site_dir)))
        payload = json.dumps(
            _strict_json(validation.to_json_dict()), indent=2, allow_nan=False, default=str
        )
        _write_atomic(json_path, payload)
        _write_atomic(html_path, html)

    stats = validation.statistics
    return GXReport(
        success=bool(validation.success),
        json_path=json_path,
        html_path=html_path,
        evaluated=int(stats["evaluated_expectations"]),
        successful=int(stats["successful_expectations"]),
        failed=[_label(r.expectation_config) for r in validation.results if not r.success],
    )


def _ephemeral_context(site_dir: Path) -> Any:
    """An in-memory GX context whose only file output is a Data Docs site in ``site_dir``."""
    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
        data_docs_sites={
            _SITE: {
                "class_name": "SiteBuilder",
                "show_how_to_buttons": False,
                "store_backend": {
                    "class_name": "TupleFilesystemStoreBackend",
                    "base_directory": str(site_dir),
                },
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
                # Only the validation page is kept; skip rendering the suite's page.
                "site_section_builders": {"expectations": "False", "profiling": "False"},
            }
        },
    )
    return gx.get_context(project_config=config, mode="ephemeral")


def _rendered_page(site_dir: Path) -> str:
    """The HTML of the single validation page GX rendered into ``site_dir``."""
    pages = sorted((site_dir / "validations").rglob("*.html"))
    if len(pages) != 1:
        raise RuntimeError(
            f"expected one rendered validation page in the Data Docs site, found {len(pages)}"
        )
    return pages[0].read_text(encoding="utf-8")


_RELATIVE_LINK = re.compile(r'(href|src)="(?:\.\./)+[^"]*"')


def _neutralise_site_links(html: str) -> str:
    """Drop links into the rest of the temporary site (index, suite page, favicon)."""
    return _RELATIVE_LINK.sub(r'\1="#"', html)


def _label(config: Any) -> str:
    """``expectation_type(columns)`` for a failed expectation."""
    kwargs = config.kwargs
    columns: list[str] = []
    for key in ("column", "column_A", "column_B"):
        if key in kwargs:
            columns.append(str(kwargs[key]))
    if str(config.type).startswith("expect_compound_columns"):
        columns.extend(str(c) for c in kwargs.get("column_list", []))
    return f"{config.type}({', '.join(columns)})" if columns else str(config.type)


def _strict_json(value: Any) -> Any:
    """Replace non-finite floats (inf, NaN among unexpected values) by strings, so the
    file is standard JSON that any parser reads."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _strict_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_strict_json(v) for v in value]
    return value


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same folder and a rename."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp made it 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
