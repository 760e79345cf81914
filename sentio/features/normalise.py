"""Causal normalisation of feature columns.

Three modes (``features.normalisation``):

* ``"rolling"``: ``z_t = (x_t - mean(x_{t-W+1..t})) / std(x_{t-W+1..t})`` over the last
  ``norm_window`` rows, the current row included (ddof 1). Rows before the window is full
  are dropped by :func:`sentio.features.build_features` (normalisation warm-up).
* ``"expanding"``: the same with the mean and std of every row so far (first row of the
  frame to t); the first ``norm_window`` rows are its warm-up.
* ``"train_fit"``: :func:`fit_normaliser` takes the mean and std of each column over the
  rows stamped before ``train_end`` only, :func:`apply_normaliser` applies them anywhere.

Never full-sample. A zero std gives 0 (for ``rolling``/``expanding``: a variance at most
``1e-12`` of the mean of squares, i.e. a flat window up to rounding). Normalised values
are clipped to ``+-clip``. ``rolling`` and ``expanding`` run in one compiled pass per
column (:mod:`sentio.features.kernels`).

Which columns are normalised (:func:`normalised_columns`): every feature except the
session clock (``minutes_since_open``, ``minutes_to_close``: bounded, meaningful in
minutes) and the exogenous missing-value flags (``exo_*_stale``, 0/1). Exogenous value
columns (``exo_<name>``) are normalised over their non-missing values only; a missing
value (stale flag 1) is 0 after normalisation (the mean), and rows where fewer than two
values have been seen are 0 too.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import polars as pl

from sentio.errors import DataError
from sentio.features.kernels import column_values, zscores

__all__ = [
    "DEFAULT_CLIP",
    "UNNORMALISED_COLUMNS",
    "apply_normaliser",
    "causal_normalise",
    "fit_normaliser",
    "normalised_columns",
]

UNNORMALISED_COLUMNS: tuple[str, ...] = ("minutes_since_open", "minutes_to_close")
"""Feature columns left in their natural units."""

DEFAULT_CLIP = 10.0
"""Clip of :func:`fit_normaliser` when none is given (``features.norm_clip``'s default)."""

STALE_SUFFIX = "_stale"
EXO_PREFIX = "exo_"


def normalised_columns(columns: Iterable[str]) -> list[str]:
    """The columns a normaliser transforms, in frame order (``timestamp`` excluded)."""
    return [
        c for c in columns if c != "timestamp" and c not in UNNORMALISED_COLUMNS and not _is_flag(c)
    ]


def _is_flag(column: str) -> bool:
    return column.startswith(EXO_PREFIX) and column.endswith(STALE_SUFFIX)


def _is_exo_value(column: str) -> bool:
    return column.startswith(EXO_PREFIX) and not column.endswith(STALE_SUFFIX)


def _zscore(x: pl.Expr, mean: pl.Expr, std: pl.Expr, clip: float | None) -> pl.Expr:
    z = pl.when(std > 0).then((x - mean) / std).otherwise(pl.lit(0.0, pl.Float64))
    if clip is not None:
        z = z.clip(-clip, clip)
    # A missing exogenous value (null) is represented by 0 after normalisation.
    return z.fill_null(0.0)


def causal_normalise(
    frame: pl.DataFrame, columns: Iterable[str], window: int | None, clip: float | None
) -> pl.DataFrame:
    """``frame`` with ``columns`` replaced by their causal z-scores (Float32).

    ``window`` rows back, the current row included (``"rolling"``; a full window of
    values is needed, else 0), or every row from the frame's first (``None``,
    ``"expanding"``; two values are needed). Exogenous value columns are scored over
    their non-missing values with two values enough; a missing value scores 0. One
    compiled pass per column (:func:`sentio.features.kernels.zscores`, which releases
    the GIL), the columns spread over polars' thread pool size.
    """
    names = list(columns)

    def score(c: str) -> pl.Series:
        need = 2 if window is None or _is_exo_value(c) else window
        values = column_values(frame[c])
        return pl.Series(c, zscores(values, window, clip, min_count=need))

    workers = max(1, min(len(names), pl.thread_pool_size()))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        scored = list(pool.map(score, names))
    return frame.with_columns(scored)


def fit_normaliser(
    frame: pl.DataFrame,
    train_end: dt.datetime | None = None,
    clip: float | None = DEFAULT_CLIP,
    *,
    rows: Any = None,
) -> dict[str, Any]:
    """Means and stds (ddof 1) of each normalised column over the training rows only.

    The training rows are those with ``timestamp < train_end``, or, with ``rows`` (a
    boolean mask or integer row indices of ``frame``, e.g. a purged fold's training
    samples), exactly those rows. Exogenous value columns use their non-missing rows only
    (``exo_<name>_stale == 0``). Returns a JSON-serialisable dict: ``{"train_end", "rows",
    "clip", "columns": {name: {"mean", "std"}}}`` (``train_end`` is ``None`` with
    ``rows``). Raises :class:`DataError` when fewer than two training rows are given.
    """
    if (train_end is None) == (rows is None):
        raise ValueError("fit_normaliser: give exactly one of train_end and rows")
    if rows is not None:
        idx = np.asarray(rows)
        train = frame.filter(pl.Series(idx)) if idx.dtype == bool else frame[idx]
        where = f"in the {train.height} given training rows"
    else:
        assert train_end is not None
        if train_end.tzinfo is None:
            raise DataError(f"fit_normaliser: train_end must be timezone-aware, got {train_end}")
        train = frame.filter(pl.col("timestamp") < train_end)
        where = f"before {train_end.isoformat()}"
    if train.height < 2:
        raise DataError(
            f"fit_normaliser: {train.height} feature rows {where}; "
            "need at least 2 to fit a normaliser"
        )
    columns = normalised_columns(frame.columns)
    exprs: list[pl.Expr] = []
    for c in columns:
        x = pl.col(c).cast(pl.Float64)
        flag = f"{c}{STALE_SUFFIX}"
        if _is_exo_value(c) and flag in frame.columns:
            x = x.filter(pl.col(flag) == 0)
        exprs += [x.mean().alias(f"{c}\x00mean"), x.std(ddof=1).alias(f"{c}\x00std")]
    stats = train.select(exprs).row(0, named=True) if exprs else {}
    params: dict[str, Any] = {
        "train_end": None if train_end is None else train_end.isoformat(),
        "rows": train.height,
        "clip": clip,
        "columns": {},
    }
    for c in columns:
        mean, std = stats[f"{c}\x00mean"], stats[f"{c}\x00std"]
        params["columns"][c] = {
            "mean": float(mean) if mean is not None else 0.0,
            "std": float(std) if std is not None else 0.0,
        }
    return params


def apply_normaliser(frame: pl.DataFrame, params: dict[str, Any]) -> pl.DataFrame:
    """Apply :func:`fit_normaliser`'s statistics; other columns pass through. Float32 out.

    Exogenous value columns stay 0 where their stale flag is 1.
    """
    clip = params.get("clip")
    fitted: dict[str, dict[str, float]] = params["columns"]
    missing = [c for c in fitted if c not in frame.columns]
    if missing:
        raise DataError(f"apply_normaliser: the frame lacks fitted columns {missing}")
    exprs = []
    for c, st in fitted.items():
        z = _zscore(pl.col(c).cast(pl.Float64), pl.lit(st["mean"]), pl.lit(st["std"]), clip)
        flag = f"{c}{STALE_SUFFIX}"
        if _is_exo_value(c) and flag in frame.columns:
            z = pl.when(pl.col(flag) == 0).then(z).otherwise(pl.lit(0.0))
        exprs.append(z.cast(pl.Float32).alias(c))
    return frame.with_columns(exprs)
