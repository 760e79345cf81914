"""Purged and embargoed cross-validation: walk-forward, k-fold and combinatorial splitters.

Public API: :class:`PurgedWalkForward`, :class:`PurgedKFold`,
:class:`CombinatorialPurgedCV` (scikit-learn splitters with a richer :meth:`folds`),
:class:`Fold`, :func:`splitter_from_config`, the path helpers :func:`cpcv_paths`,
:func:`fold_paths`, :func:`path_sources`, :func:`assemble_paths`, and the building blocks
:func:`contiguous_blocks`, :func:`purge_embargo`, :func:`resolve_spans`,
:func:`unit_bounds`. See :mod:`sentio.cv.splitters` for the semantics.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sentio.cv.splitters import (
    CombinatorialPurgedCV,
    Fold,
    PurgedKFold,
    PurgedWalkForward,
    assemble_paths,
    contiguous_blocks,
    cpcv_paths,
    fold_paths,
    path_sources,
    purge_embargo,
    resolve_spans,
    unit_bounds,
)
from sentio.errors import ConfigError

if TYPE_CHECKING:
    from sentio.config import CVConfig

__all__ = [
    "CombinatorialPurgedCV",
    "Fold",
    "PurgedKFold",
    "PurgedWalkForward",
    "Splitter",
    "assemble_paths",
    "contiguous_blocks",
    "cpcv_paths",
    "fold_paths",
    "path_sources",
    "purge_embargo",
    "resolve_spans",
    "splitter_from_config",
    "unit_bounds",
]

Splitter = PurgedWalkForward | PurgedKFold | CombinatorialPurgedCV
"""Any of the three splitters."""


def splitter_from_config(cv: CVConfig) -> Splitter:
    """The splitter configured by the ``cv`` section.

    ``method`` picks the class: ``"walk_forward"`` -> :class:`PurgedWalkForward`
    (``n_splits``, ``anchored``), ``"kfold"`` -> :class:`PurgedKFold` (``n_splits``),
    ``"cpcv"`` -> :class:`CombinatorialPurgedCV` (``n_groups``, ``n_test_groups``). All
    take ``embargo_bars``, ``embargo_fraction`` (replaces the bars when set) and
    ``label_bars``.
    """
    embargo, fraction, label = cv.embargo_bars, cv.embargo_fraction, cv.label_bars
    if embargo == "auto":
        if fraction is None:
            raise ConfigError(
                "cv.embargo_bars = 'auto' depends on the bar length of the data: resolve the "
                "configuration for it first (sentio.config.resolve_for_bars)"
            )
        embargo = 0  # replaced by the fraction
    if cv.method == "walk_forward":
        return PurgedWalkForward(
            cv.n_splits,
            anchored=cv.anchored,
            embargo=embargo,
            embargo_fraction=fraction,
            label_bars=label,
        )
    if cv.method == "kfold":
        return PurgedKFold(
            cv.n_splits, embargo=embargo, embargo_fraction=fraction, label_bars=label
        )
    if cv.method == "cpcv":
        return CombinatorialPurgedCV(
            cv.n_groups,
            cv.n_test_groups,
            embargo=embargo,
            embargo_fraction=fraction,
            label_bars=label,
        )
    raise ConfigError(f"cv.method must be walk_forward, kfold or cpcv, got {cv.method!r}")
