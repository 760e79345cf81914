"""Seeded synthetic one-minute market: a QQQ-like underlying and its derived 3x ETFs.

The generator produces regular-hours one-minute bars on the real exchange calendar
(holidays skipped, 13:00 early closes give 210-minute sessions) and is fully vectorised:
no Python loop over bars or sessions.

Model of the underlying (log prices, bar ``t`` of session ``d``)::

    log C_t = log O_t + r_t,        O_t = C_{t-1} within a session
    log O_first(d) = log C_last(d-1) + g_d                       (overnight gap)
    r_t = mu_k - sigma_t^2 / 2 + sigma_t z_t
    sigma_t = s_k * u(minute) * exp(h_t - var_h)                 (regime k of session d)
    h_t = phi h_{t-1} + vol_of_vol * eta_t                       (AR(1) log-volatility)
    z_t = rho z_{t-1} + sqrt(1 - rho^2) eps_t                    (rho = edge_strength)
    g_d = -s_g^2 / 2 + s_g e_d,  s_g = overnight_vol_ratio * s_k * exp(h - var_h) * sqrt(390)

``eps``, ``e`` are standardised Student-t draws (``tail_df``), ``eta`` standard normal.
Parameters are annual and converted with the bar frequency actually simulated (252
sessions x 390 one-minute bars): ``mu_k = drift_annual / (252 * 390)`` and
``s_k = vol_annual / sqrt(252 * 390 * (1 + overnight_vol_ratio^2))``, so that
``vol_annual`` is the volatility of close-to-close daily returns (intraday plus gap) and
``drift_annual`` the arithmetic drift. ``u`` is a U-shape (``1 + a (2x - 1)^2`` over the
session's fraction ``x``, normalised to unit mean square per session), ``var_h`` the
stationary variance of ``h``, which makes ``E[exp(2 (h - var_h))] = 1``. High and low are
the extremes of a Brownian bridge between open and close with the bar's variance, drawn
exactly, so ``high >= max(open, close)`` and ``low <= min(open, close)``. Volume is
U-shaped too and grows with ``|r_t|``.

Regimes switch only at session boundaries: a Markov chain built from run lengths
(geometric with the configured mean duration in sessions; each run moves to a different
regime chosen uniformly, the first regime drawn from the chain's long-run occupancy).

Modes: ``random_walk`` replaces everything predictable by i.i.d. zero-mean returns with a
constant volatility (the occupancy-weighted RMS of the configured regimes' vols; one
regime, ``"random_walk"``; no drift, no clustering, no intraday
volatility profile, no autocorrelation; overnight gaps stay, zero-mean and independent,
and volume keeps its intraday profile); "zero-mean" is the simple return, so the price is
a martingale. ``edge_strength`` plants a lag-1 autocorrelation ``rho`` in the
standardised returns ``z``.

TQQQ / SQQQ are derived with :func:`sentio.data.leverage.derive_leveraged`.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from scipy.signal import lfilter

from sentio.calendar import sessions
from sentio.config import SentioConfig, SynthConfig, write_config
from sentio.data.leverage import derive_leveraged, derived_provenance
from sentio.data.provenance import write_provenance
from sentio.data.schema import to_canonical
from sentio.errors import DataError
from sentio.io import feather_output, sidecar, write_feather_atomic

__all__ = [
    "BARS_PER_SESSION",
    "SESSIONS_PER_YEAR",
    "RANDOM_WALK_REGIME",
    "SynthData",
    "generate",
    "regime_vols",
    "sample_regime_path",
    "synth_sessions",
    "truth_record",
    "write_synth",
]

SESSIONS_PER_YEAR = 252
BARS_PER_SESSION = 390  # one-minute bars of a regular NYSE session
RANDOM_WALK_REGIME = "random_walk"
_MINUTE_US = 60_000_000
_VOLUME_NOISE_SD = 0.3  # log-normal noise of volume
_VOLUME_ABS_R_WEIGHT = 0.7  # share of volume that scales with |r| / mean |r|


@dataclass(frozen=True)
class SynthData:
    """Output of :func:`generate`.

    Attributes:
        bars: canonical long frame of the underlying, long and short symbols.
        regimes: one row per underlying bar: ``timestamp``, ``regime`` (Int8, index into
            the configured regimes; 0 in random-walk mode) and ``regime_name``.
        truth: the generator's own parameters that a forecaster could not know
            (:func:`truth_record`), for the oracle reference of reports.
    """

    bars: pl.DataFrame
    regimes: pl.DataFrame
    truth: dict[str, Any]


def truth_record(
    synth: SynthConfig, table: pl.DataFrame, session_regime: np.ndarray
) -> dict[str, Any]:
    """What the generator knows and a trader does not, JSON-able.

    ``edge_strength`` (the lag-1 autocorrelation rho of the standardised returns),
    ``intraday_u_shape`` (0 in random-walk mode), per regime its name, log drift per bar
    ``mu_k`` and annual volatility, and the regime of every session (``"YYYY-MM-DD"``:
    index). With them the best forecast of the next bar's log return of the underlying
    at the close of bar t is ``mu_k + rho * (u_{t+1} / u_t) * (r_t - mu_k)`` (``r_t`` the
    bar's open-to-close log return, ``u`` the intraday volatility profile; the
    ``- sigma^2 / 2`` terms are second order and left out): see
    :func:`sentio.env.references.oracle_forecast`.
    """
    names, drift, vol, _ = regime_vols(synth)
    dates = [d.isoformat() for d in table["session"].to_list()]
    return {
        "source": "sentio synth",
        "edge_strength": float(synth.edge_strength),
        "intraday_u_shape": 0.0 if synth.random_walk else float(synth.intraday_u_shape),
        "bars_per_year": SESSIONS_PER_YEAR * BARS_PER_SESSION,
        "regimes": [
            {
                "name": n,
                "drift_per_bar": float(d) / (SESSIONS_PER_YEAR * BARS_PER_SESSION),
                "vol_annual": float(v),
            }
            for n, d, v in zip(names, drift, vol, strict=True)
        ],
        "session_regime": dict(zip(dates, (int(k) for k in session_regime), strict=True)),
    }


def synth_sessions(synth: SynthConfig, calendar: str = "XNYS") -> pl.DataFrame:
    """The sessions simulated: dates from ``start`` up to ``start + years * 365.25`` days."""
    end = synth.start + dt.timedelta(days=math.floor(synth.years * 365.25))
    table = sessions(synth.start, end, calendar)
    if table.height == 0:
        raise DataError(f"synth: no {calendar} sessions between {synth.start} and {end}")
    return table


def sample_regime_path(
    n_sessions: int, mean_sessions: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Regime index of each session from a run-length Markov chain.

    Runs have geometric lengths (support 1, 2, ...) with mean ``mean_sessions[k]`` (at
    least 1); consecutive runs are in different regimes, the next one uniform among the
    others. The first regime is drawn from the long-run time occupancy, which for this
    chain is proportional to the mean durations. Vectorised: at most ``n_sessions`` runs
    are drawn and expanded with ``np.repeat``.
    """
    means = np.maximum(np.asarray(mean_sessions, dtype=float), 1.0)
    k = len(means)
    if n_sessions <= 0:
        return np.zeros(0, dtype=np.int8)
    first = rng.choice(k, p=means / means.sum())
    if k == 1:
        return np.zeros(n_sessions, dtype=np.int8)
    steps = rng.integers(1, k, size=n_sessions)  # shift 1..k-1: never the same regime
    steps[0] = 0
    run_regime = (first + np.cumsum(steps)) % k
    run_length = rng.geometric(1.0 / means[run_regime])
    return np.repeat(run_regime, run_length)[:n_sessions].astype(np.int8)


def regime_vols(synth: SynthConfig) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Names, annual drifts, annual vols and mean durations of the simulated regimes.

    In random-walk mode: one regime, zero drift, and the occupancy-weighted RMS of the
    configured vols (so the overall volatility level is comparable).
    """
    drift = np.array([r.drift_annual for r in synth.regimes], dtype=float)
    vol = np.array([r.vol_annual for r in synth.regimes], dtype=float)
    dur = np.array([r.mean_sessions for r in synth.regimes], dtype=float)
    if synth.random_walk:
        w = np.maximum(dur, 1.0) / np.maximum(dur, 1.0).sum()
        base = float(np.sqrt((w * vol**2).sum()))
        return [RANDOM_WALK_REGIME], np.zeros(1), np.array([base]), np.array([1.0])
    return [r.name for r in synth.regimes], drift, vol, dur


def _standard_t(rng: np.random.Generator, df: float, size: int) -> np.ndarray:
    """Student-t draws scaled to unit variance."""
    return rng.standard_t(df, size) * np.sqrt((df - 2.0) / df)


def _ar1(x: np.ndarray, phi: float, gain: float, y_prev: float) -> np.ndarray:
    """``y_t = phi y_{t-1} + gain x_t`` with ``y_{-1} = y_prev`` (scipy lfilter)."""
    y, _ = lfilter([gain], [1.0, -phi], x, zi=[phi * y_prev])
    return np.asarray(y)


def _simulate_underlying(
    cfg: SentioConfig, table: pl.DataFrame
) -> tuple[dict[str, np.ndarray], np.ndarray, list[str]]:
    """Arrays of the underlying's bars (timestamp in us, OHLCV) and the per-bar regime."""
    synth = cfg.synth
    ss = np.random.SeedSequence(synth.seed)
    rng_reg, rng_z, rng_h, rng_gap, rng_hl, rng_vol = (
        np.random.default_rng(s) for s in ss.spawn(6)
    )

    minutes = table["minutes"].to_numpy().astype(np.int64)
    open_us = table["open"].dt.epoch("us").to_numpy()
    n_sess = len(minutes)
    n = int(minutes.sum())
    starts = np.concatenate(([0], np.cumsum(minutes)[:-1]))
    sess = np.repeat(np.arange(n_sess), minutes)
    minute = np.arange(n) - starts[sess]

    names, drift, vol, dur = regime_vols(synth)
    reg_sess = sample_regime_path(n_sess, dur, rng_reg)
    reg = reg_sess[sess]

    bars_per_year = SESSIONS_PER_YEAR * BARS_PER_SESSION
    ratio = synth.overnight_vol_ratio
    s_k = (vol / np.sqrt(bars_per_year * (1.0 + ratio**2)))[reg]
    mu_k = (drift / bars_per_year)[reg]
    u, mult = _vol_shape(synth, minute, minutes, sess, rng_h)

    eps = _standard_t(rng_z, synth.tail_df, n + 1)
    rho = synth.edge_strength
    z = _ar1(eps[1:], rho, np.sqrt(1.0 - rho**2), eps[0]) if rho > 0 else eps[1:]

    sigma = s_k * u * mult
    r = mu_k - 0.5 * sigma**2 + sigma * z

    gap = np.zeros(n)
    gap_idx = starts[1:]
    s_g = ratio * s_k[gap_idx] * mult[gap_idx] * np.sqrt(BARS_PER_SESSION)
    gap[gap_idx] = -0.5 * s_g**2 + s_g * _standard_t(rng_gap, synth.tail_df, len(gap_idx))

    log_close = np.log(synth.start_price) + np.cumsum(gap + r)
    log_open = log_close - r
    log_high, log_low = _high_low(log_open, log_close, sigma, rng_hl)
    arrays = {
        "timestamp": open_us[sess] + minute * _MINUTE_US,
        "open": np.exp(log_open),
        "high": np.exp(log_high),
        "low": np.exp(log_low),
        "close": np.exp(log_close),
        "volume": _volume(synth, r, minute, minutes, sess, rng_vol),
    }
    return arrays, reg, names


def _vol_shape(
    synth: SynthConfig,
    minute: np.ndarray,
    minutes: np.ndarray,
    sess: np.ndarray,
    rng_h: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-bar volatility multipliers: the intraday U-shape and the stochastic volatility."""
    n, n_sess = minute.size, minutes.size
    if synth.random_walk:
        return np.ones(n), np.ones(n)
    # U-shape over the session, unit mean square within each session
    x = (minute + 0.5) / minutes[sess]
    u = 1.0 + synth.intraday_u_shape * (2.0 * x - 1.0) ** 2
    ms = np.bincount(sess, weights=u**2, minlength=n_sess) / minutes
    u /= np.sqrt(ms)[sess]
    # AR(1) log-volatility, started from its stationary law
    phi, vov = synth.vol_persistence, synth.vol_of_vol
    var_h = vov**2 / (1.0 - phi**2)
    h0 = rng_h.standard_normal() * np.sqrt(var_h)
    h = _ar1(rng_h.standard_normal(n), phi, vov, h0)
    return u, np.exp(h - var_h)


def _high_low(
    log_open: np.ndarray, log_close: np.ndarray, sigma: np.ndarray, rng_hl: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Log high and low of each bar: extremes of a Brownian bridge from open to close."""
    n = log_open.size
    # extremes of a Brownian bridge from log_open to log_close with variance sigma^2
    span = (log_close - log_open) ** 2
    u_hi = 1.0 - rng_hl.random(n)
    u_lo = 1.0 - rng_hl.random(n)
    mid = log_open + log_close
    log_high = 0.5 * (mid + np.sqrt(span - 2.0 * sigma**2 * np.log(u_hi)))
    log_low = 0.5 * (mid - np.sqrt(span - 2.0 * sigma**2 * np.log(u_lo)))
    # exact in real arithmetic; guard the last ulp of floating point
    log_high = np.maximum(log_high, np.maximum(log_open, log_close))
    log_low = np.minimum(log_low, np.minimum(log_open, log_close))
    return log_high, log_low


def _volume(
    synth: SynthConfig,
    r: np.ndarray,
    minute: np.ndarray,
    minutes: np.ndarray,
    sess: np.ndarray,
    rng_vol: np.random.Generator,
) -> np.ndarray:
    """Volume: U-shaped, grows with ``|r|``, log-normal noise; mean ``base_volume``."""
    abs_r = np.abs(r)
    w = 1.0 + synth.intraday_u_shape * (2.0 * (minute + 0.5) / minutes[sess] - 1.0) ** 2
    activity = (1.0 - _VOLUME_ABS_R_WEIGHT) + _VOLUME_ABS_R_WEIGHT * abs_r / abs_r.mean()
    noise = np.exp(_VOLUME_NOISE_SD * rng_vol.standard_normal(r.size) - 0.5 * _VOLUME_NOISE_SD**2)
    raw = w * activity * noise
    return np.maximum(np.round(synth.base_volume * raw / raw.mean()), 1.0)


def generate(cfg: SentioConfig) -> SynthData:
    """Generate the synthetic market described by ``cfg.synth`` for ``cfg.universe``.

    The underlying is ``cfg.universe.underlying``; the long and short ETFs are derived
    from it with the universe's leverage, expense ratio and financing rate and volume
    ratio ``cfg.universe.derived_volume_ratio``. Same configuration, same frames.
    """
    uni, synth = cfg.universe, cfg.synth
    table = synth_sessions(synth, uni.calendar)
    arrays, reg, names = _simulate_underlying(cfg, table)

    ts = (
        pl.Series("timestamp", arrays.pop("timestamp"))
        .cast(pl.Datetime("us"))
        .dt.replace_time_zone("UTC")
    )
    under = pl.DataFrame(
        [ts, pl.Series("symbol", [uni.underlying], dtype=pl.String).new_from_index(0, len(ts))]
        + [pl.Series(k, v, dtype=pl.Float64) for k, v in arrays.items()]
    )
    legs = [
        derive_leveraged(
            under,
            lev,
            sym,
            uni.expense_ratio_annual,
            uni.financing_rate_annual,
            volume_ratio=uni.derived_volume_ratio,
        )
        for sym, lev in ((uni.long, uni.leverage), (uni.short, -uni.leverage))
    ]
    # each part is one symbol in time order: concatenated in symbol order, the frame is
    # already in canonical order (symbol, timestamp), so no 1.5M-row sort is needed
    parts = sorted([under, *legs], key=lambda f: str(f["symbol"][0]))
    bars = to_canonical(pl.concat(parts), sort=False)
    regimes = pl.DataFrame(
        [
            ts,
            pl.Series("regime", reg, dtype=pl.Int8),
            pl.Series("regime_name", names, dtype=pl.String).gather(reg.astype(np.int64)),
        ]
    )
    starts = np.concatenate(([0], np.cumsum(table["minutes"].to_numpy())[:-1])).astype(np.int64)
    truth = truth_record(synth, table, reg[starts])
    return SynthData(bars=bars, regimes=regimes, truth=truth)


def write_synth(out: str | Path, cfg: SentioConfig) -> dict[str, Path]:
    """Generate and atomically write bars, regimes, configuration and provenance.

    Files: ``out`` (canonical bars, Feather), ``sidecar(out, "regimes.feather")``,
    ``sidecar(out, "config.yaml")`` and ``sidecar(out, "provenance.json")`` (the data are
    synthetic; the long and short ETFs are derived from the underlying, with their
    leverage and costs). Returns them under the keys ``bars``, ``regimes``, ``config``,
    ``provenance``.
    """
    out = feather_output(out)
    data = generate(cfg)
    provenance = {
        "source": "sentio synth",
        "synthetic": True,
        "derived_symbols": derived_provenance(cfg.universe),
        "truth": data.truth,
    }
    paths = {
        "bars": write_feather_atomic(out, data.bars),
        "regimes": write_feather_atomic(sidecar(out, "regimes.feather"), data.regimes),
        "config": write_config(sidecar(out, "config.yaml"), cfg),
        "provenance": write_provenance(out, provenance),
    }
    return paths
