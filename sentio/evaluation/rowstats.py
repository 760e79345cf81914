"""Return statistics computed row by row on a ``(rows, bars)`` matrix of per-bar simple returns.

One implementation serves both :func:`sentio.evaluation.compute_metrics` (one row: the
observed series) and the bootstrap (one row per resample), so a point estimate and its
resamples are always computed the same way. Intermediate results (sums, the equity curve)
are computed once per matrix and shared between statistics through :class:`RowStats`.

Conventions (the same as the metrics dictionary):

* ``mean``: arithmetic mean per bar.
* ``std``: sample standard deviation per bar (``ddof = 1``); NaN for fewer than 2 bars.
* ``volatility``: ``std * sqrt(periods_per_year)``.
* ``sharpe``: ``mean(r - rf) / std(r - rf) * sqrt(periods_per_year)``. A series without
  variation (``std <= 1e-10 |mean|``) has Sharpe 0 when it is identically equal to ``rf``
  (a strategy that never trades and earns nothing) and NaN otherwise (the ratio is infinite).
* ``sortino``: ``(mean(r) - target) / sqrt(mean(min(r - target, 0)^2)) * sqrt(periods_per_year)``,
  the downside deviation taken over ALL bars. No bar below the target: 0 when every bar
  equals the target, NaN otherwise.
* ``total_return``: ``prod(1 + r) - 1``; ``cagr``: ``(1 + total_return)^(1 / years) - 1``
  with ``years = bars / periods_per_year`` (-1 when the equity reaches zero or below).
* ``max_drawdown``: ``max_t (1 - E_t / max_{s <= t} E_s)`` on the compounded equity curve
  ``E_0 = 1, E_t = prod_{s <= t} (1 + r_s)``, a positive fraction (0 = never below a peak;
  the starting equity counts as a peak).
* ``calmar``: ``cagr / max_drawdown``; NaN when the maximum drawdown is 0.
* ``var_95`` / ``cvar_95``: historical value at risk and expected shortfall at 5%, as
  POSITIVE losses: ``var = -q`` with ``q`` the 5% quantile of the bar returns (numpy's
  default linear interpolation) and ``cvar = -mean(r[r <= q])``.
* ``hit_rate``: share of bars with ``r > 0`` among bars with ``r != 0`` (NaN when none);
  :func:`sentio.evaluation.compute_metrics` uses the bars with a nonzero position instead
  when positions are given.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["STATISTICS", "RowStats", "VAR_LEVEL"]

VAR_LEVEL = 0.05  # tail probability of var_95 / cvar_95
# a row whose standard deviation is at most this fraction of |mean| is treated as constant
# (the rounding noise of a constant series' mean would otherwise give a Sharpe of ~1e16)
_CONSTANT_REL_TOL = 1e-10


class RowStats:
    """Row-wise statistics of a ``(rows, bars)`` matrix of simple returns, sharing work.

    Args:
        data: per-bar simple returns, one series per row (float64, C-contiguous preferred).
        periods_per_year: bars per year, for the annualised statistics (1 gives per-bar
            values).
        rf: risk-free rate per bar (a scalar) subtracted in the Sharpe ratio.
        target: per-bar target return of the Sortino ratio.
    """

    def __init__(
        self,
        data: np.ndarray,
        *,
        periods_per_year: float = 1.0,
        rf: float = 0.0,
        target: float = 0.0,
    ) -> None:
        if data.ndim != 2:
            raise ValueError(f"RowStats needs a 2-D (rows, bars) matrix, got shape {data.shape}")
        self.data = data
        self.n = data.shape[1]
        self.periods_per_year = float(periods_per_year)
        self.rf = float(rf)
        self.target = float(target)
        self._cache: dict[str, np.ndarray] = {}
        self._flat: dict[float, np.ndarray] = {}

    @classmethod
    def from_aggregates(
        cls,
        n: int,
        sums: np.ndarray,
        stds: np.ndarray,
        downside: np.ndarray,
        final_equity: np.ndarray,
        max_drawdown: np.ndarray,
        flat_rf: np.ndarray,
        flat_target: np.ndarray,
        *,
        periods_per_year: float = 1.0,
        rf: float = 0.0,
        target: float = 0.0,
    ) -> RowStats:
        """Row statistics of series of ``n`` bars known only by their aggregates (the
        bootstrap's one-pass kernel): the sums, sample standard deviations, downside
        deviations, final equities, maximum drawdowns, and whether every return equals
        ``rf`` / ``target``. The statistics that need the returns themselves (quantiles,
        hit rate, the equity curve) raise ``ValueError``."""
        self = cls(
            np.empty((sums.shape[0], 0)), periods_per_year=periods_per_year, rf=rf, target=target
        )
        self.data = None  # type: ignore[assignment]
        self.n = int(n)
        self._cache.update(sum=sums, std=stds, dd=downside, final=final_equity, mdd=max_drawdown)
        self._flat = {float(target): flat_target, float(rf): flat_rf}
        return self

    def _returns(self) -> np.ndarray:
        if self.data is None:
            raise ValueError("this statistic needs the returns; RowStats has aggregates only")
        return self.data

    # --- shared intermediates -------------------------------------------------------
    @property
    def sum(self) -> np.ndarray:
        """Row sums."""
        if "sum" not in self._cache:
            self._cache["sum"] = self._returns().sum(axis=1)
        return self._cache["sum"]

    @property
    def mean(self) -> np.ndarray:
        """Arithmetic mean per bar."""
        return self.sum / self.n

    @property
    def std(self) -> np.ndarray:
        """Sample standard deviation (``ddof = 1``) per bar; NaN with fewer than 2 bars.

        One pass (sum of squares) where that is accurate; rows whose variance is small
        beside their squared mean are recomputed with the two-pass formula.
        """
        if "std" not in self._cache:
            n = self.n
            if n < 2:
                self._cache["std"] = np.full(self.data.shape[0], np.nan)
            else:
                sumsq = np.einsum("ij,ij->i", self.data, self.data)
                ss = sumsq - self.sum * self.sum / n
                # cancellation loses ~eps * sumsq: recompute rows where that matters
                bad = ss <= 1e-6 * sumsq
                if np.any(bad):
                    rows = self.data[bad]
                    dev = rows - rows.mean(axis=1, keepdims=True)
                    ss[bad] = np.einsum("ij,ij->i", dev, dev)
                self._cache["std"] = np.sqrt(np.maximum(ss, 0.0) / (n - 1))
        return self._cache["std"]

    @property
    def equity(self) -> np.ndarray:
        """Compounded equity after each bar, ``E_t = prod_{s <= t} (1 + r_s)`` (E_0 = 1 omitted)."""
        if "equity" not in self._cache:
            eq = np.add(self._returns(), 1.0)
            np.cumprod(eq, axis=1, out=eq)
            self._cache["equity"] = eq
        return self._cache["equity"]

    # --- statistics -----------------------------------------------------------------
    def total_return(self) -> np.ndarray:
        """``prod(1 + r) - 1``."""
        if "final" in self._cache:
            return self._cache["final"] - 1.0
        if "equity" in self._cache:
            return self._cache["equity"][:, -1] - 1.0
        return np.prod(np.add(self._returns(), 1.0), axis=1) - 1.0

    def cagr(self) -> np.ndarray:
        """Compound annual growth rate over ``years = bars / periods_per_year``."""
        growth = self.total_return() + 1.0
        years = self.n / self.periods_per_year
        out = np.full(growth.shape, -1.0)
        pos = growth > 0
        with np.errstate(over="ignore"):
            out[pos] = np.exp(np.log(growth[pos]) / years) - 1.0
        return out

    def volatility(self) -> np.ndarray:
        """Annualised standard deviation."""
        return self.std * np.sqrt(self.periods_per_year)

    def _constant_rows(self, value: float) -> np.ndarray:
        """Rows identically equal to ``value``."""
        if value in self._flat:
            return self._flat[value]
        return np.all(self._returns() == value, axis=1)

    def sharpe(self) -> np.ndarray:
        """Annualised Sharpe ratio of the excess return over ``rf`` (see module docstring)."""
        excess = self.mean - self.rf
        std = self.std
        degenerate = ~(std > _CONSTANT_REL_TOL * np.abs(excess))  # also catches NaN std
        with np.errstate(divide="ignore", invalid="ignore"):
            out = excess / std * np.sqrt(self.periods_per_year)
        if np.any(degenerate):
            out[degenerate] = np.nan
        if self.n >= 1:  # identically rf: no variation whatever rounding says (both paths)
            out[self._constant_rows(self.rf)] = 0.0
        return out

    def downside_deviation(self) -> np.ndarray:
        """``sqrt(mean(min(r - target, 0)^2))`` per bar, over all bars."""
        if "dd" not in self._cache:
            below = np.minimum(self._returns() - self.target, 0.0)
            self._cache["dd"] = np.sqrt(np.einsum("ij,ij->i", below, below) / self.n)
        return self._cache["dd"]

    def sortino(self) -> np.ndarray:
        """Annualised Sortino ratio against ``target`` (see module docstring)."""
        dd = self.downside_deviation()
        excess = self.mean - self.target
        with np.errstate(divide="ignore", invalid="ignore"):
            out = excess / dd * np.sqrt(self.periods_per_year)
        zero = dd == 0
        if np.any(zero):
            out[zero] = np.nan
            out[zero & self._constant_rows(self.target)] = 0.0
        return out

    def max_drawdown(self) -> np.ndarray:
        """Maximum drawdown of the compounded equity curve, a positive fraction."""
        if "mdd" in self._cache:
            return self._cache["mdd"]
        eq = self.equity
        peak = np.maximum.accumulate(eq, axis=1)
        np.maximum(peak, 1.0, out=peak)  # the starting equity E_0 = 1 is a peak
        np.divide(eq, peak, out=peak)
        return np.maximum(1.0 - peak.min(axis=1), 0.0)

    def calmar(self) -> np.ndarray:
        """``cagr / max_drawdown``; NaN when there is no drawdown."""
        mdd = self.max_drawdown()
        cagr = self.cagr()
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(mdd > 0, cagr / np.where(mdd > 0, mdd, 1.0), np.nan)

    def _quantile(self) -> np.ndarray:
        if "q" not in self._cache:
            self._cache["q"] = np.quantile(self._returns(), VAR_LEVEL, axis=1)
        return self._cache["q"]

    def var(self) -> np.ndarray:
        """Historical value at risk at 5%: minus the 5% quantile (a positive loss)."""
        return 0.0 - self._quantile()

    def cvar(self) -> np.ndarray:
        """Historical expected shortfall at 5%: minus the mean of returns at or below the 5% quantile."""
        q = self._quantile()[:, None]
        data = self._returns()
        tail = data <= q
        return 0.0 - np.where(tail, data, 0.0).sum(axis=1) / tail.sum(axis=1)

    def hit_rate(self) -> np.ndarray:
        """Share of positive bars among nonzero bars; NaN when every bar is zero."""
        data = self._returns()
        wins = (data > 0).sum(axis=1)
        active = (data != 0).sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(active > 0, wins / np.maximum(active, 1), np.nan)


# Statistics by name: each maps a RowStats to one value per row.
STATISTICS: dict[str, Callable[[RowStats], np.ndarray]] = {
    "mean": lambda s: s.mean,
    "std": lambda s: s.std,
    "volatility": RowStats.volatility,
    "sharpe": RowStats.sharpe,
    "sortino": RowStats.sortino,
    "total_return": RowStats.total_return,
    "cagr": RowStats.cagr,
    "max_drawdown": RowStats.max_drawdown,
    "calmar": RowStats.calmar,
    "var_95": RowStats.var,
    "cvar_95": RowStats.cvar,
    "hit_rate": RowStats.hit_rate,
}
