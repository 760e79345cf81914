"""Causal normalisation of feature columns.

Three modes (``features.normalisation``):

* ``"rolling"``: ``z_t = (x_t - mean(x_{t-W+1..t})) / std(x_{t-W+1..t})`` over the last
  ``norm_window`` rows, the current row included (ddof 1). Rows before the window is full
  are dropped by :func:`sentio.features.build_features` (normalisation warm-up).
* ``"expanding"``: the same with the mean and std of every row so far (first row of the
  frame to t); the first ``norm_window`` rows are its warm-up.
* ``"train_fit"``: :func:`fit_normaliser` takes the mean and std of each column over the
  rows stamped before ``train_end`` only, :func:`apply_normaliser` applies them anywhere.

Never full-sample. A zero (or undefined) std gives 0. Normalised values are clipped to
``+-clip``.

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
from typing import Any

import numpy as np
import polars as pl

from sentio.errors import DataError

__all__ = [
    "DEFAULT_CLIP",
    "UNNORMALISED_COLUMNS",
    "apply_normaliser",
    "expanding_exprs",
    "fit_normaliser",
    "normalised_columns",
    "rolling_exprs",
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


def rolling_exprs(columns: Iterable[str], window: int, clip: float | None) -> list[list[pl.Expr]]:
    """Rolling z-scores over the last ``window`` rows (current row included), same names.

    Steps to apply with consecutive ``with_columns`` (each step reads the temporary
    columns of the one before; written out so that no rolling sum is computed twice):
    the window means of ``x`` and ``x^2`` (and, for exogenous columns that may be missing,
    the count of values), the std (ddof 1) from ``(mean(x^2) - mean(x)^2) n / (n - 1)``,
    and the z-scores. A variance below ``1e-12`` of ``mean(x^2)`` (a flat window, up to
    rounding) counts as zero. Drop the temporaries (``\x00`` in their names) afterwards.
    """
    sums: list[pl.Expr] = []
    stds: list[pl.Expr] = []
    zs: list[pl.Expr] = []
    for c in columns:
        x = pl.col(c).cast(pl.Float64)
        m1, m2, n, sd = (f"{c}\x00{s}" for s in ("m1", "m2", "n", "sd"))
        if _is_exo_value(c):
            sums += [
                x.rolling_mean(window, min_samples=2).alias(m1),
                (x * x).rolling_mean(window, min_samples=2).alias(m2),
                x.is_not_null().cast(pl.Float64).rolling_sum(window).alias(n),
            ]
            count = pl.col(n)
        else:
            sums += [
                x.rolling_mean(window, min_samples=window).alias(m1),
                (x * x).rolling_mean(window, min_samples=window).alias(m2),
            ]
            count = pl.lit(float(window))
        var = (pl.col(m2) - pl.col(m1).pow(2)) * (count / (count - 1.0))
        stds.append(pl.when(var > 1e-12 * pl.col(m2)).then(var.sqrt()).otherwise(0.0).alias(sd))
        zs.append(_zscore(x, pl.col(m1), pl.col(sd), clip).alias(c))
    return [sums, stds, zs]


def expanding_exprs(columns: Iterable[str], clip: float | None) -> list[pl.Expr]:
    """Expanding z-scores (every row from the frame's first to the current one), same names.

    Sums are taken of ``x - x_0`` (the first non-missing value) to limit cancellation in
    the one-pass variance.
    """
    out = []
    for c in columns:
        x = pl.col(c).cast(pl.Float64)
        d = x - x.drop_nulls().first()
        n = x.cum_count().cast(pl.Float64)
        s1 = d.cum_sum()
        s2 = (d * d).cum_sum()
        mean_d = s1 / n
        var = ((s2 - s1 * mean_d) / (n - 1.0)).clip(lower_bound=0.0)
        std = pl.when(n >= 2).then(var.sqrt()).otherwise(None)
        out.append(_zscore(d, mean_d, std, clip).alias(c))
    return out


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
