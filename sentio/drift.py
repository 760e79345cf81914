"""Live drift: does the paper ledger still look like the champion's out-of-sample backtest?

After each paper-trading run, the ledger's last ``drift.window_sessions`` sessions (``N``
bars) are compared with what the version's own out-of-sample backtest makes plausible
over ``N`` bars: the stationary bootstrap of the backtest's per-bar ``(return, costs,
turnover)`` triplets, resampled jointly (one index law for the three, so their dependence
is kept) with the longest of the three series' Politis-White block lengths (costs and
turnover persist while positions are held), gives a two-sided band at ``drift.level`` for each statistic over ``N`` bars:

* ``return``: the compounded return ``prod(1 + r_t) - 1``;
* ``costs``: the sum of the per-bar costs (fractions of the equity before the bar);
* ``turnover``: the sum of ``|position_t - position_{t-1}|`` (the signed position held over
  each bar as a fraction of equity, starting flat: the report's ``turnover_per_bar`` times ``N``).

A statistic outside its band is drift. So is a **regime mix never seen in training**: the
share of the window's bars in each regime (the ledger's ``regime``, the most likely filtered
regime at each close) against every run of the same number of consecutive sessions of the
version's training range (per-session regime counts, :data:`TRAINING_REGIMES`); a share
above the largest or below the smallest the training windows had is flagged.

The reference files are stored with the version at registration (hash-verified by the
registry like every other file): :data:`REFERENCE_BACKTEST` is the fold's out-of-sample
backtest (per bar ``returns``, ``costs``, ``position``, ``block``), and
:data:`TRAINING_REGIMES` the per-session regime counts of the fold's training range.
A version registered before drift checks existed has neither: :func:`check_drift` is then
not possible and :func:`load_reference` says so (:class:`DriftUnavailable`).

The check is deterministic: the bootstrap's seed is derived from the version and the
window's last bar, so re-running it over the same ledger gives the same bands.
"""

from __future__ import annotations

import hashlib
import io
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import polars as pl

from sentio.config import DriftConfig
from sentio.errors import SentioError
from sentio.evaluation.bootstrap import optimal_block_length, stationary_bootstrap_indices
from sentio.registry import Registry
from sentio.times import iso_z

__all__ = [
    "EVENT",
    "REFERENCE_BACKTEST",
    "STATISTICS",
    "TRAINING_REGIMES",
    "DriftCheck",
    "DriftReference",
    "DriftUnavailable",
    "check_drift",
    "check_version",
    "load_reference",
    "session_regime_counts",
]

EVENT = "sentio.drift.detected"
"""The Prefect event emitted when a check finds drift (``tasks.paper``)."""
REFERENCE_BACKTEST = "backtest.feather"
"""The version's out-of-sample backtest (a registry file)."""
TRAINING_REGIMES = "training_regimes.feather"
"""Per-session regime counts of the version's training range (a registry file)."""
STATISTICS = ("return", "costs", "turnover")
"""The statistics compared over the window, in this order."""
SESSION_TZ = "America/New_York"
"""Bars are grouped into sessions by their New York calendar date."""
SLACK = 1e-12
"""Absolute slack at the band edges (a statistic equal to an edge is inside)."""


class DriftUnavailable(SentioError):
    """The version has no drift reference, or the ledger is too short to check."""

    exit_code = 2


def session_dates(timestamps: pl.Series) -> pl.Series:
    """The session (New York calendar date) of each UTC bar timestamp."""
    ts = timestamps
    if ts.dtype == pl.Datetime("us") or getattr(ts.dtype, "time_zone", None) is None:
        ts = ts.dt.replace_time_zone("UTC")
    return ts.dt.convert_time_zone(SESSION_TZ).dt.date().alias("session")


def session_regime_counts(
    timestamps: pl.Series, regimes: pl.Series, n_regimes: int
) -> pl.DataFrame:
    """Bars per regime in each session: ``session``, ``bars``, ``regime_<k>`` (counts)."""
    frame = pl.DataFrame({"session": session_dates(timestamps), "regime": regimes.cast(pl.Int64)})
    return (
        frame.group_by("session", maintain_order=True)
        .agg(
            pl.len().alias("bars"),
            *[
                (pl.col("regime") == k).sum().cast(pl.Int64).alias(f"regime_{k}")
                for k in range(n_regimes)
            ],
        )
        .sort("session")
    )


def _turnover(position: np.ndarray, blocks: np.ndarray | None = None) -> np.ndarray:
    """Per bar ``|position_t - position_{t-1}|``; flat before the first bar (and before the
    first bar of each backtest block)."""
    prev = np.concatenate([[0.0], position[:-1]])
    if blocks is not None and blocks.size:
        first = np.concatenate([[True], blocks[1:] != blocks[:-1]])
        prev = np.where(first, 0.0, prev)
    return np.abs(position - prev)


@dataclass(frozen=True)
class DriftReference:
    """What the version's out-of-sample backtest and training range say is plausible."""

    version: str
    returns: np.ndarray
    costs: np.ndarray
    turnover: np.ndarray
    regime_counts: np.ndarray | None = None
    """``(sessions, K)`` bars per regime in each training session (None: no regimes)."""

    @classmethod
    def from_frames(
        cls, version: str, backtest: pl.DataFrame, training_regimes: pl.DataFrame | None
    ) -> DriftReference:
        """From the two reference files' frames (:data:`REFERENCE_BACKTEST`,
        :data:`TRAINING_REGIMES`)."""
        blocks = backtest["block"].to_numpy() if "block" in backtest.columns else None
        position = backtest["position"].to_numpy().astype(np.float64)
        counts = None
        if training_regimes is not None and training_regimes.height:
            cols = sorted(
                (c for c in training_regimes.columns if c.startswith("regime_")),
                key=lambda c: int(c.split("_")[1]),
            )
            counts = training_regimes.select(cols).to_numpy().astype(np.int64)
        return cls(
            version=version,
            returns=backtest["returns"].to_numpy().astype(np.float64),
            costs=backtest["costs"].to_numpy().astype(np.float64),
            turnover=_turnover(position, blocks),
            regime_counts=counts,
        )


def load_reference(version: str, files: dict[str, bytes]) -> DriftReference:
    """The drift reference of a version from its verified files (``Registry.verify``).

    Raises:
        DriftUnavailable: the version holds no :data:`REFERENCE_BACKTEST` (registered
            before drift checks existed).
    """
    if REFERENCE_BACKTEST not in files:
        raise DriftUnavailable(
            f"version {version}: no {REFERENCE_BACKTEST} in the registry (registered before "
            "drift checks existed); drift is not checked for it"
        )
    backtest = pl.read_ipc(io.BytesIO(files[REFERENCE_BACKTEST]))
    regimes = (
        pl.read_ipc(io.BytesIO(files[TRAINING_REGIMES])) if TRAINING_REGIMES in files else None
    )
    return DriftReference.from_frames(version, backtest, regimes)


@dataclass
class DriftCheck:
    """The outcome of one check (JSON-able through :meth:`to_dict`)."""

    version: str
    start: str
    end: str
    bars: int
    sessions: int
    level: float
    block_length: float
    resamples: int
    observed: dict[str, float]
    bands: dict[str, tuple[float, float]]
    outside: list[str]
    regime_shares: dict[str, float] | None = None
    regime_ranges: dict[str, tuple[float, float]] | None = None
    unseen_regimes: list[str] = field(default_factory=list)

    @property
    def drifted(self) -> bool:
        """Any statistic outside its band, or a regime mix never seen in training."""
        return bool(self.outside or self.unseen_regimes)

    def reasons(self) -> list[str]:
        """One line per finding, e.g. ``return -0.081 below the band [-0.042, 0.051]``."""
        out = []
        for name in self.outside:
            lo, hi = self.bands[name]
            where = "below" if self.observed[name] < lo else "above"
            out.append(f"{name} {self.observed[name]:+.4g} {where} the band [{lo:+.4g}, {hi:+.4g}]")
        for name in self.unseen_regimes:
            assert self.regime_shares is not None and self.regime_ranges is not None
            lo, hi = self.regime_ranges[name]
            out.append(
                f"{name} share {self.regime_shares[name]:.3f} outside what training saw over "
                f"{self.sessions} sessions [{lo:.3f}, {hi:.3f}]"
            )
        return out

    def to_dict(self) -> dict[str, Any]:
        """Every field, plus ``drifted`` and ``reasons``."""
        d = asdict(self)
        d["bands"] = {k: list(v) for k, v in self.bands.items()}
        if self.regime_ranges is not None:
            d["regime_ranges"] = {k: list(v) for k, v in self.regime_ranges.items()}
        return {**d, "drifted": self.drifted, "reasons": self.reasons()}

    def markdown(self) -> str:
        """A short table for the Prefect artifact."""
        verdict = "**drift**" if self.drifted else "inside the bands"
        lines = [
            f"### Drift check: version `{self.version}`: {verdict}",
            "",
            f"Last {self.sessions} sessions ({self.bars:,} bars, {self.start} .. {self.end}) "
            f"against the out-of-sample backtest's {self.level:.0%} stationary-bootstrap band "
            f"over the same number of bars ({self.resamples:,} resamples, mean block "
            f"{self.block_length:.1f} bars).",
            "",
            "| statistic | live | band low | band high | |",
            "| --- | ---: | ---: | ---: | --- |",
        ]
        for name in STATISTICS:
            lo, hi = self.bands[name]
            flag = "outside" if name in self.outside else "inside"
            lines.append(
                f"| {name} | {self.observed[name]:+.5f} | {lo:+.5f} | {hi:+.5f} | {flag} |"
            )
        if self.regime_shares is not None and self.regime_ranges is not None:
            lines += [
                "",
                "| regime | live share | training low | training high | |",
                "| --- | ---: | ---: | ---: | --- |",
            ]
            for name, share in self.regime_shares.items():
                lo, hi = self.regime_ranges[name]
                flag = "never seen" if name in self.unseen_regimes else "seen"
                lines.append(f"| {name} | {share:.3f} | {lo:.3f} | {hi:.3f} | {flag} |")
        return "\n".join(lines) + "\n"


def _seed(version: str, end: str) -> int:
    digest = hashlib.sha256(f"drift:{version}:{end}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def _window_stats(r: np.ndarray, c: np.ndarray, u: np.ndarray) -> dict[str, np.ndarray]:
    """The statistics over the last axis (one row per series)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        total = np.expm1(np.sum(np.log1p(np.maximum(r, -1.0)), axis=-1))
    return {"return": total, "costs": c.sum(axis=-1), "turnover": u.sum(axis=-1)}


def _regime_ranges(counts: np.ndarray, sessions: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Per regime, the smallest and largest share over every ``sessions`` consecutive
    training sessions (None when training had fewer sessions)."""
    if counts.shape[0] < sessions:
        return None
    cum = np.vstack([np.zeros((1, counts.shape[1]), dtype=np.int64), np.cumsum(counts, axis=0)])
    window = cum[sessions:] - cum[:-sessions]
    totals = window.sum(axis=1, keepdims=True)
    shares = window[totals[:, 0] > 0] / totals[totals[:, 0] > 0]
    if not shares.shape[0]:
        return None
    return shares.min(axis=0), shares.max(axis=0)


def check_drift(ledger: pl.DataFrame, reference: DriftReference, cfg: DriftConfig) -> DriftCheck:
    """Compare the ledger's last ``cfg.window_sessions`` sessions with the reference.

    The ledger needs ``timestamp``, ``returns``, ``costs`` and ``position`` (a paper
    ledger, :mod:`sentio.paper`), and ``regime`` for the regime-mix check. Its first row
    (the start bar: nothing held yet) counts like any other.

    A reference backtest shorter than the window caps the window at its length (the
    ledger's last bars; ``bars`` says how many were compared).

    Raises:
        DriftUnavailable: an empty ledger.
    """
    if ledger.height == 0:
        raise DriftUnavailable(f"version {reference.version}: the ledger is empty")
    sessions = session_dates(ledger["timestamp"])
    keep = sessions.unique(maintain_order=True).tail(cfg.window_sessions)
    in_window = sessions.is_in(keep.implode()).to_numpy()
    m = reference.returns.size
    # a reference shorter than the window caps it: its last m bars
    first = max(int(np.flatnonzero(in_window)[0]), ledger.height - m)
    window = ledger.slice(first)
    n = window.height
    turnover = _turnover(ledger["position"].to_numpy().astype(np.float64))[first:]
    observed = {
        k: float(v)
        for k, v in _window_stats(
            window["returns"].to_numpy().astype(np.float64),
            window["costs"].to_numpy().astype(np.float64),
            turnover,
        ).items()
    }
    end = iso_z(window["timestamp"][-1])
    # one index law for the three series: the longest of their block lengths, so the
    # persistent ones (costs and turnover follow positions held for a while) keep theirs
    block = max(
        optimal_block_length(series)
        for series in (reference.returns, reference.costs, reference.turnover)
    )
    idx = stationary_bootstrap_indices(
        m, cfg.resamples, block, _seed(reference.version, end), length=n
    )
    dist = _window_stats(reference.returns[idx], reference.costs[idx], reference.turnover[idx])
    alpha = 1.0 - cfg.level
    bands: dict[str, tuple[float, float]] = {}
    outside: list[str] = []
    for name in STATISTICS:
        values = dist[name][np.isfinite(dist[name])]
        lo, hi = (float(q) for q in np.quantile(values, [alpha / 2.0, 1.0 - alpha / 2.0]))
        bands[name] = (lo, hi)
        x = observed[name]
        if not math.isfinite(x) or x < lo - SLACK or x > hi + SLACK:
            outside.append(name)
    check = DriftCheck(
        version=reference.version,
        start=iso_z(window["timestamp"][0]),
        end=end,
        bars=n,
        sessions=int(session_dates(window["timestamp"]).n_unique()),
        level=cfg.level,
        block_length=block,
        resamples=cfg.resamples,
        observed=observed,
        bands=bands,
        outside=outside,
    )
    counts = reference.regime_counts
    if counts is not None and "regime" in window.columns:
        ranges = _regime_ranges(counts, check.sessions)
        regimes = window["regime"].to_numpy()
        if ranges is not None and (regimes >= 0).any():
            k = counts.shape[1]
            live = np.bincount(regimes[regimes >= 0], minlength=k)[:k] / max(
                int((regimes >= 0).sum()), 1
            )
            names = [f"regime_{i}" for i in range(k)]
            check.regime_shares = {names[i]: float(live[i]) for i in range(k)}
            check.regime_ranges = {
                names[i]: (float(ranges[0][i]), float(ranges[1][i])) for i in range(k)
            }
            check.unseen_regimes = [
                names[i]
                for i in range(k)
                if live[i] < ranges[0][i] - 1e-9 or live[i] > ranges[1][i] + 1e-9
            ]
    return check


def check_version(
    registry: Registry, version: str, ledger: pl.DataFrame, cfg: DriftConfig
) -> DriftCheck:
    """:func:`check_drift` of a registered version's ledger against its own reference
    (the version's files hash-verified first).

    Raises:
        DriftUnavailable: no reference in the version, or too short a reference.
        RegistryError: an unknown or tampered version.
    """
    files = registry.verify(version, purpose="check drift against")
    return check_drift(ledger, load_reference(version, files), cfg)
