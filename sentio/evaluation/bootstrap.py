"""Stationary-bootstrap confidence intervals for return statistics, vectorised.

The resampling scheme is Politis and Romano's stationary bootstrap, with the same index
law as :class:`arch.bootstrap.StationaryBootstrap`: a resample is as long as the series;
its first index is uniform on ``[0, n)``; every later position starts a new block (a fresh
uniform index) with probability ``p = 1 / block_length`` and otherwise continues the
previous index by one, wrapping from ``n - 1`` to ``0``. Block lengths are therefore
geometric with mean ``block_length`` (truncated at the end of the resample). The default
block length is the Politis-White optimal length as corrected by Patton, Politis and
White (``arch.bootstrap.optimal_block_length``, its ``"stationary"`` column), computed on
the returns.

arch draws and evaluates one resample at a time through a Python call. Here the indices of
a chunk of resamples (about two million indices at a time) are generated at once: the
block starts of all resamples of the chunk are drawn as one Bernoulli(``p``) process over
the flattened chunk (uniform draws for short blocks, geometric gaps between starts for
long ones) with a start forced at the beginning of every resample, each block gets a
uniform start index, and the indices follow from one cumulative sum of unit steps with a
jump at every block start (with ``block_length = 1`` every position starts a block and the
indices are simply iid uniform). They are left unwrapped in ``[0, 2n)`` and read from the
series written twice end to end, which is the wrap-around. The statistics
(:mod:`sentio.evaluation.rowstats`) are then evaluated on the ``(chunk, n)`` matrix, all
of them on the same resamples; when every statistic asked for needs only sums, the
standard deviation, the downside deviation, the final equity and the drawdown
(:data:`FUSED_STATISTICS`, the report's), a numba kernel walks each resample's blocks
once instead and nothing is materialised (the same resamples; equal to the matrix path
up to summation order). Each chunk draws from its own random stream spawned from
the seed, and chunks run on a few threads (numpy releases the GIL in its loops); the
result does not depend on the number of threads.

Intervals are percentile intervals (``method="percentile"``, the default) or basic
(reverse-percentile) intervals (``method="basic"``) at ``level`` (default 0.95);
resamples whose statistic is not finite (e.g. the Sharpe ratio of a constant resample) are
left out and counted in :attr:`BootstrapResult.n_valid`. The same seed gives the same
interval; :func:`bootstrap_metrics` and :func:`bootstrap_ci` with the same seed use the
same resamples.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import numba
import numpy as np

from sentio.evaluation.errors import EvaluationError
from sentio.evaluation.metrics import as_returns
from sentio.evaluation.rowstats import STATISTICS, RowStats

__all__ = [
    "CHUNK_ELEMENTS",
    "DEFAULT_STATISTICS",
    "BootstrapResult",
    "Statistic",
    "bootstrap_ci",
    "bootstrap_distribution",
    "bootstrap_metrics",
    "optimal_block_length",
    "stationary_bootstrap_indices",
]

CHUNK_ELEMENTS = 2**21  # indices per chunk of resamples (rows x series length)
# block-start probability above which the starts are drawn as uniforms at every position;
# below it, as geometric gaps (fewer draws)
_UNIFORM_DRAW_MIN_P = 0.2
DEFAULT_STATISTICS: tuple[str, ...] = ("mean", "sharpe", "sortino", "max_drawdown")

# A statistic: a name in rowstats.STATISTICS or a function of a (resamples, n) matrix of
# returns giving one value per row.
Statistic = str | Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class BootstrapResult:
    """A bootstrap confidence interval of one statistic.

    Attributes:
        statistic: the statistic's name (a function's ``__name__`` for a callable).
        estimate: the statistic on the observed series.
        lower, upper: the interval's bounds (NaN when no resample gave a finite value).
        level: the confidence level, e.g. 0.95.
        block_length: the mean block length used.
        resamples: the number of resamples drawn.
        n_valid: the resamples whose statistic was finite (the interval's basis).
        method: ``"percentile"`` or ``"basic"``.
        seed: the seed given (None for fresh entropy or a Generator).
        n: the series length.
    """

    statistic: str
    estimate: float
    lower: float
    upper: float
    level: float
    block_length: float
    resamples: int
    n_valid: int
    method: str
    seed: int | None
    n: int

    def to_dict(self) -> dict[str, Any]:
        """Plain fields for a report or JSON (NaN and infinities as None)."""
        out = asdict(self)
        for key in ("estimate", "lower", "upper"):
            if not math.isfinite(out[key]):
                out[key] = None
        return out


# --------------------------------------------------------------------------------------
# block length and indices


def optimal_block_length(returns: Any) -> float:
    """Politis-White (Patton-Politis-White corrected) mean block length for the stationary bootstrap.

    ``arch.bootstrap.optimal_block_length(returns)["stationary"]``, clipped to ``[1, n]``;
    1 for a constant series or fewer than 4 observations (no dependence to preserve).
    """
    from arch.bootstrap import optimal_block_length as arch_block_length

    x = as_returns(returns)
    if x.size < 4 or float(np.ptp(x)) == 0.0:
        return 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        b = float(arch_block_length(x)["stationary"].iloc[0])
    if not math.isfinite(b):
        return 1.0
    return float(min(max(b, 1.0), x.size))


def _check_block_length(block_length: float, n: int) -> float:
    b = float(block_length)
    if not (b >= 1.0 and math.isfinite(b)):
        raise EvaluationError(f"block_length must be a finite number >= 1, got {block_length}")
    return min(b, float(n)) if n > 0 else b


def _chunk_blocks(
    n: int, rows: int, p: float, rng: np.random.Generator, length: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The blocks of ``rows`` resamples: ``(positions, starts)``, the flattened position in
    the chunk where each block begins (every resample begins one) and its first index in
    ``[0, n)``; position ``t`` of a block reads index ``start + (t - position)``, unwrapped.
    Each resample has ``length`` positions (default ``n``)."""
    step = n if length is None else length
    total = rows * step
    if p >= 1.0:  # every position starts a block: iid uniform indices
        return np.arange(total, dtype=np.int64), rng.integers(0, n, size=total, dtype=np.int64)
    if p >= _UNIFORM_DRAW_MIN_P:
        starts_flag = rng.random(total) < p
    else:
        # positions of a Bernoulli(p) process: cumulative geometric gaps, minus one
        starts_flag = np.zeros(total, dtype=bool)
        expected = total * p
        k = int(expected + 8.0 * math.sqrt(expected) + 16)
        pos = np.cumsum(rng.geometric(p, size=k)) - 1
        while pos[-1] < total - 1:  # rarely: not enough gaps drawn
            pos = np.concatenate([pos, pos[-1] + np.cumsum(rng.geometric(p, size=k))])
        starts_flag[pos[pos < total]] = True
    starts_flag[::step] = True  # every resample starts a block
    block_pos = np.flatnonzero(starts_flag)
    return block_pos, rng.integers(0, n, size=block_pos.size, dtype=np.int64)


def _unwrapped_chunk(n: int, rows: int, p: float, rng: np.random.Generator) -> np.ndarray:
    """Stationary-bootstrap indices of ``rows`` resamples, unwrapped: values in ``[0, 2n)``.

    ``index mod n`` has the stationary bootstrap's law (see the module docstring).
    """
    return _indices(n, rows, *_chunk_blocks(n, rows, p, rng))


def _indices(
    n: int, rows: int, block_pos: np.ndarray, starts: np.ndarray, length: int | None = None
) -> np.ndarray:
    """The ``(rows, length)`` unwrapped indices of a chunk's blocks (:func:`_chunk_blocks`;
    ``length`` defaults to ``n``); values below ``n + length``."""
    step = n if length is None else length
    dtype = np.int32 if n + step < 2**31 else np.int64
    if block_pos.size == rows * step:  # every position starts a block
        return starts.astype(dtype).reshape(rows, step)
    # block k covers flattened positions block_pos[k]... with indices start_k + (t - block_pos[k]);
    # its offset o_k = start_k - block_pos[k] is constant along the block, and the index is
    # t + o_k: a cumulative sum of unit steps plus the change of offset at each block start
    offset = starts - block_pos
    steps = np.ones(rows * step, dtype=dtype)
    steps[block_pos] = np.diff(offset, prepend=1) + 1  # first block: o_0 (block_pos[0] = 0)
    return np.cumsum(steps, dtype=dtype).reshape(rows, step)


FUSED_STATISTICS = frozenset(
    {
        "mean",
        "std",
        "volatility",
        "sharpe",
        "sortino",
        "total_return",
        "cagr",
        "max_drawdown",
        "calmar",
    }
)
"""The statistics computed in one pass over each resample (:func:`_resample_aggregates`):
the others (quantiles, hit rate) and functions need the ``(rows, n)`` matrix."""


@numba.njit(nogil=True, cache=True)
def _resample_aggregates(
    doubled: np.ndarray,
    n: int,
    rows: int,
    block_pos: np.ndarray,
    starts: np.ndarray,
    rf: float,
    target: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per resample of a chunk, walking its blocks over ``doubled`` (the series twice):
    the sum, the sample standard deviation (as :attr:`RowStats.std`: one pass, two where
    the variance is small beside the squared mean), the downside deviation below
    ``target``, the final equity, the maximum drawdown, and whether every return equals
    ``rf`` / ``target``."""
    sums = np.empty(rows)
    stds = np.empty(rows)
    downs = np.empty(rows)
    finals = np.empty(rows)
    drawdowns = np.empty(rows)
    flat_rf = np.empty(rows, dtype=np.bool_)
    flat_target = np.empty(rows, dtype=np.bool_)
    k = 0
    for row in range(rows):
        first_block = k
        total = 0.0
        squares = 0.0
        down = 0.0
        equity = 1.0
        peak = 1.0
        lowest = 1.0
        all_rf = True
        all_target = True
        idx = 0
        for t in range(n):
            if k < block_pos.size and block_pos[k] == row * n + t:
                idx = starts[k]
                k += 1
            else:
                idx += 1
            r = doubled[idx]
            total += r
            squares += r * r
            below = min(r - target, 0.0)
            down += below * below
            equity *= 1.0 + r
            peak = max(peak, equity)
            lowest = min(lowest, equity / peak)
            all_rf = all_rf and r == rf
            all_target = all_target and r == target
        sums[row] = total
        downs[row] = math.sqrt(down / n)
        finals[row] = equity
        drawdowns[row] = max(1.0 - lowest, 0.0)
        flat_rf[row] = all_rf
        flat_target[row] = all_target
        if n < 2:
            stds[row] = np.nan
            continue
        ss = squares - total * total / n
        if ss <= 1e-6 * squares:  # cancellation: the two-pass formula over the same resample
            mean = total / n
            ss = 0.0
            j = first_block
            # the same block walk as above, written out: a helper returning (index, block)
            # made the kernel twice as slow (measured)
            for t in range(n):
                if j < block_pos.size and block_pos[j] == row * n + t:
                    idx = starts[j]
                    j += 1
                else:
                    idx += 1
                dev = doubled[idx] - mean
                ss += dev * dev
        stds[row] = math.sqrt(max(ss, 0.0) / (n - 1))
    return sums, stds, downs, finals, drawdowns, flat_rf, flat_target


def _chunk_plan(n: int, resamples: int) -> list[tuple[int, int]]:
    """``(first resample, rows)`` of each chunk; depends on ``n`` and ``resamples`` only."""
    step = max(1, min(resamples, CHUNK_ELEMENTS // max(n, 1)))
    return [(first, min(step, resamples - first)) for first in range(0, resamples, step)]


def _chunk_generators(
    seed: int | np.random.Generator | None, count: int
) -> list[np.random.Generator]:
    """One independent generator per chunk, spawned from ``seed``.

    Each chunk draws from its own stream, so the resamples do not depend on the order in
    which chunks run or on the number of worker threads.
    """
    if isinstance(seed, np.random.Generator):
        return seed.spawn(count)
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(count)]


def _default_workers() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 8))


def _run_chunks(
    n: int,
    resamples: int,
    block_length: float,
    seed: int | np.random.Generator | None,
    work: Callable[[int, int, np.ndarray, np.ndarray], None],
    workers: int | None,
    length: int | None = None,
) -> None:
    """Draw every chunk's blocks and pass them to ``work(first, rows, positions, starts)``
    (:func:`_chunk_blocks`; :func:`_indices` makes them the indices); resamples of
    ``length`` positions (default ``n``).

    numpy releases the GIL in its array loops and its bulk random draws, and the fused
    kernel releases it too, so chunks run in parallel threads.
    """
    plan = _chunk_plan(n if length is None else length, resamples)
    gens = _chunk_generators(seed, len(plan))
    p = 1.0 / block_length

    def one(i: int) -> None:
        first, rows = plan[i]
        work(first, rows, *_chunk_blocks(n, rows, p, gens[i], length))

    threads = min(_default_workers() if workers is None else max(1, workers), len(plan))
    if threads == 1:
        for i in range(len(plan)):
            one(i)
        return
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for future in [pool.submit(one, i) for i in range(len(plan))]:
            future.result()


def stationary_bootstrap_indices(
    n: int,
    resamples: int,
    block_length: float,
    seed: int | np.random.Generator | None = 0,
    *,
    length: int | None = None,
) -> np.ndarray:
    """A ``(resamples, length)`` matrix of stationary-bootstrap indices into a series of
    length ``n`` (``length`` defaults to ``n``).

    The same law as ``arch.bootstrap.StationaryBootstrap(block_length, x).bootstrap(...)``'s
    indices (not the same stream of random numbers), and exactly the resamples that
    :func:`bootstrap_ci` draws for a series of length ``n`` with the same seed and block length.
    With another ``length``, each row has the law of a stationary-bootstrap resample's
    first ``length`` positions (resamples of another length than the series, e.g. a band
    for a statistic over ``length`` live bars from a longer reference series).
    """
    step = n if length is None else length
    if n < 1 or resamples < 1 or step < 1:
        raise EvaluationError(
            f"need n >= 1, length >= 1 and resamples >= 1, got n={n}, length={step}, "
            f"resamples={resamples}"
        )
    b = _check_block_length(block_length, n)
    out = np.empty((resamples, step), dtype=np.int64)

    def store(first: int, rows: int, block_pos: np.ndarray, starts: np.ndarray) -> None:
        out[first : first + rows] = _indices(n, rows, block_pos, starts, length)

    _run_chunks(n, resamples, b, seed, store, workers=1, length=length)
    return np.remainder(out, n, out=out)


# --------------------------------------------------------------------------------------
# statistics on resamples


def _resolve(statistics: Sequence[Statistic]) -> list[tuple[str, Callable[[RowStats], np.ndarray]]]:
    resolved: list[tuple[str, Callable[[RowStats], np.ndarray]]] = []
    for stat in statistics:
        if isinstance(stat, str):
            if stat not in STATISTICS:
                raise EvaluationError(
                    f"unknown statistic {stat!r}; known: {', '.join(sorted(STATISTICS))} "
                    "(or pass a function of a (resamples, n) matrix)"
                )
            resolved.append((stat, STATISTICS[stat]))
        elif callable(stat):
            fn = stat
            name = getattr(fn, "__name__", "statistic")

            def by_rows(s: RowStats, fn: Callable[[np.ndarray], np.ndarray] = fn) -> np.ndarray:
                values = np.asarray(fn(s.data), dtype=np.float64)
                if values.shape != (s.data.shape[0],):
                    raise EvaluationError(
                        f"statistic {getattr(fn, '__name__', fn)!r} must map a (rows, n) matrix "
                        f"to one value per row (shape ({s.data.shape[0]},)), got shape "
                        f"{values.shape}; reduce along axis=1"
                    )
                return values

            resolved.append((name, by_rows))
        else:
            raise EvaluationError(f"a statistic is a name or a function, got {stat!r}")
    names = [name for name, _ in resolved]
    if len(set(names)) != len(names):
        raise EvaluationError(f"statistics must have distinct names, got {names}")
    return resolved


def _setup(
    returns: Any,
    resamples: int,
    level: float,
    block_length: float | None,
    periods_per_year: float | None,
) -> tuple[np.ndarray, float, float]:
    x = as_returns(returns)
    if resamples < 1:
        raise EvaluationError(f"resamples must be >= 1, got {resamples}")
    if not 0.0 < level < 1.0:
        raise EvaluationError(f"level must be in (0, 1), got {level}")
    ppy = 1.0 if periods_per_year is None else float(periods_per_year)
    if not (ppy > 0 and math.isfinite(ppy)):
        raise EvaluationError(f"periods_per_year must be positive, got {periods_per_year}")
    b = (
        optimal_block_length(x)
        if block_length is None
        else _check_block_length(block_length, x.size)
    )
    return x, b, ppy


def bootstrap_distribution(
    returns: Any,
    statistics: Sequence[Statistic] = DEFAULT_STATISTICS,
    *,
    resamples: int = 2000,
    seed: int | np.random.Generator | None = 0,
    block_length: float | None = None,
    periods_per_year: float | None = None,
    rf: float = 0.0,
    target: float = 0.0,
    workers: int | None = None,
) -> tuple[dict[str, float], dict[str, np.ndarray], float]:
    """Point estimates and bootstrap distributions of several statistics on shared resamples.

    Returns ``(estimates, distributions, block_length)``: each distribution holds one value
    per resample (NaN where undefined). See :func:`bootstrap_ci` for the arguments.
    """
    x, b, ppy = _setup(returns, resamples, 0.5, block_length, periods_per_year)
    resolved = _resolve(statistics)
    kwargs = {"periods_per_year": ppy, "rf": rf, "target": target}
    point = RowStats(x[None, :], **kwargs)
    estimates = {name: float(fn(point)[0]) for name, fn in resolved}
    dists = {name: np.empty(resamples) for name, _ in resolved}
    doubled = np.concatenate([x, x])  # unwrapped indices in [0, 2n) read it: the wrap-around

    fused = all(isinstance(st, str) and st in FUSED_STATISTICS for st in statistics)

    def evaluate(first: int, rows: int, block_pos: np.ndarray, starts: np.ndarray) -> None:
        if fused:  # one pass over each resample, nothing materialised
            stats = RowStats.from_aggregates(
                x.size,
                *_resample_aggregates(doubled, x.size, rows, block_pos, starts, rf, target),
                periods_per_year=ppy,
                rf=rf,
                target=target,
            )
        else:
            stats = RowStats(doubled[_indices(x.size, rows, block_pos, starts)], **kwargs)
        with np.errstate(all="ignore"):
            for name, fn in resolved:
                dists[name][first : first + rows] = fn(stats)

    _run_chunks(x.size, resamples, b, seed, evaluate, workers)
    return estimates, dists, b


def _interval(
    estimate: float, values: np.ndarray, level: float, method: str
) -> tuple[float, float, int]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return math.nan, math.nan, 0
    alpha = 1.0 - level
    lo, hi = np.quantile(finite, [alpha / 2.0, 1.0 - alpha / 2.0])
    if method == "basic":
        lo, hi = 2.0 * estimate - hi, 2.0 * estimate - lo
    return float(lo), float(hi), int(finite.size)


def bootstrap_metrics(
    returns: Any,
    *,
    statistics: Sequence[Statistic] = DEFAULT_STATISTICS,
    resamples: int = 2000,
    level: float = 0.95,
    seed: int | np.random.Generator | None = 0,
    block_length: float | None = None,
    periods_per_year: float | None = None,
    method: str = "percentile",
    rf: float = 0.0,
    target: float = 0.0,
    workers: int | None = None,
) -> dict[str, BootstrapResult]:
    """Stationary-bootstrap intervals of several statistics, all on the same resamples.

    See :func:`bootstrap_ci`; returns one :class:`BootstrapResult` per statistic, keyed by
    name.
    """
    if method not in ("percentile", "basic"):
        raise EvaluationError(f"method must be 'percentile' or 'basic', got {method!r}")
    if not 0.0 < level < 1.0:
        raise EvaluationError(f"level must be in (0, 1), got {level}")
    estimates, dists, b = bootstrap_distribution(
        returns,
        statistics,
        resamples=resamples,
        seed=seed,
        block_length=block_length,
        periods_per_year=periods_per_year,
        rf=rf,
        target=target,
        workers=workers,
    )
    n = int(np.asarray(returns).shape[0])
    out: dict[str, BootstrapResult] = {}
    for name, values in dists.items():
        lo, hi, n_valid = _interval(estimates[name], values, level, method)
        out[name] = BootstrapResult(
            statistic=name,
            estimate=estimates[name],
            lower=lo,
            upper=hi,
            level=level,
            block_length=b,
            resamples=resamples,
            n_valid=n_valid,
            method=method,
            seed=seed if isinstance(seed, int) else None,
            n=n,
        )
    return out


def bootstrap_ci(
    returns: Any,
    statistic: Statistic,
    *,
    resamples: int = 2000,
    level: float = 0.95,
    seed: int | np.random.Generator | None = 0,
    block_length: float | None = None,
    periods_per_year: float | None = None,
    method: str = "percentile",
    rf: float = 0.0,
    target: float = 0.0,
    workers: int | None = None,
) -> BootstrapResult:
    """Stationary-bootstrap confidence interval of one statistic of per-bar returns.

    Args:
        returns: per-bar simple returns (1-D, finite).
        statistic: a name from :data:`sentio.evaluation.rowstats.STATISTICS` (``mean``,
            ``std``, ``volatility``, ``sharpe``, ``sortino``, ``total_return``, ``cagr``,
            ``max_drawdown``, ``calmar``, ``var_95``, ``cvar_95``, ``hit_rate``; the same
            conventions as :func:`sentio.evaluation.compute_metrics`), or a function mapping
            a ``(rows, n)`` matrix of returns to one value per row (vectorised: reduce
            along ``axis=1``).
        resamples: number of bootstrap resamples, each as long as the series.
        level: confidence level of the interval.
        seed: seed of numpy's default generator (same seed, same interval), or a Generator.
        block_length: mean block length; default :func:`optimal_block_length` of the returns.
        periods_per_year: annualisation of ``volatility``, ``sharpe``, ``sortino``,
            ``cagr`` and ``calmar``; None means 1 (per-bar values). Use
            :func:`sentio.evaluation.periods_per_year` on the bar timestamps.
        method: ``"percentile"`` or ``"basic"``.
        rf: per-bar risk-free rate (scalar) of the Sharpe ratio.
        target: per-bar target return of the Sortino ratio.
        workers: threads evaluating chunks of resamples (default: the usable cores, at
            most 8); the result does not depend on it.

    Raises:
        EvaluationError: empty or non-finite returns, an unknown statistic, or invalid
            parameters.
    """
    results = bootstrap_metrics(
        returns,
        statistics=(statistic,),
        resamples=resamples,
        level=level,
        seed=seed,
        block_length=block_length,
        periods_per_year=periods_per_year,
        method=method,
        rf=rf,
        target=target,
        workers=workers,
    )
    return next(iter(results.values()))
