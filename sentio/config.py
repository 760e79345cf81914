"""The one typed configuration of Sentio.

Every setting the pipeline needs lives here, grouped by stage. A configuration is
loaded from YAML (:func:`load_config`), every field has a default that runs, unknown
fields are rejected with a "did you mean" hint, and combinations of feature flags that
make no sense are rejected at load time by :meth:`SentioConfig._check_combinations`.
The configuration that produced an output is written next to it (:func:`write_config`).

Sections and the stage that reads them:

============  ===============================================================
``universe``  symbols, leverage and the costs of the derived leveraged series
``ingest``    vendor-file parsing, quarantine policy, session completeness
``synth``     the synthetic market generator (``sentio synth``)
``features``  causal indicator set and normalisation (features stage)
``regimes``   HMM regime model and its fallback (regimes stage)
``cv``        purged / embargoed folds (folds stage)
``env``       trading simulator: actions, costs, risk masks (train / backtest)
``agent``     PPO variant and its networks (train stage)
``train``     training budget, seeds, device, checkpoints (train stage)
``report``    bootstrap confidence intervals (report stage)
``registry``  champion / challenger promotion gate (registry stage)
``paths``     where outputs, caches and Prefect results are written
============  ===============================================================
"""

from __future__ import annotations

import datetime as dt
import difflib
import math
import urllib.parse
import urllib.request
import zoneinfo
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sentio.errors import ConfigError
from sentio.io import hash_json, write_text_atomic


def normalise_ticker(value: str) -> str:
    """Tickers are case-insensitive: one word, stripped and upper-cased."""
    ticker = value.strip().upper()
    if not ticker or any(c.isspace() for c in ticker):
        raise ValueError(f"a symbol must be one word without spaces, got {value!r}")
    return ticker


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class UniverseConfig(_Section):
    """The traded universe: one underlying and its +L / -L leveraged ETFs."""

    underlying: str = Field(
        "QQQ", min_length=1, description="ticker of the underlying fund the ETFs lever (symbol)"
    )
    long: str = Field(
        "TQQQ",
        min_length=1,
        description="ticker of the +L leveraged ETF, held for a positive exposure (symbol)",
    )
    short: str = Field(
        "SQQQ",
        min_length=1,
        description="ticker of the -L leveraged ETF, held for a negative exposure (symbol)",
    )
    leverage: float = Field(
        3.0,
        gt=1.0,
        le=5.0,
        description="daily leverage L of the ETFs, a multiple of the underlying's daily "
        "return (3: +3x and -3x)",
    )
    expense_ratio_annual: float = Field(
        0.0095,
        ge=0.0,
        le=0.05,
        description="expense ratio of each leveraged ETF, a fraction of its value per year "
        "(0.0095: 0.95 %), accrued daily in derived prices",
    )
    financing_rate_annual: float = Field(
        0.02,
        ge=0.0,
        le=0.25,
        description="cash rate r_f, a fraction per year; a fund with leverage L earns "
        "(1 - L) r_f per year (+3x pays 2 r_f, -3x earns 4 r_f), accrued daily in derived prices",
    )
    calendar: str = Field(
        "XNYS",
        description="exchange_calendars code of the exchange whose sessions, holidays and "
        "early closes apply (XNYS: New York Stock Exchange)",
    )
    derived_volume_ratio: float = Field(
        0.5,
        gt=0.0,
        description="volume of a derived leveraged series as a fraction of the underlying's "
        "volume in the same bar",
    )

    @field_validator("underlying", "long", "short")
    @classmethod
    def _ticker(cls, v: str) -> str:
        return normalise_ticker(v)

    @field_validator("calendar")
    @classmethod
    def _known_calendar(cls, v: str) -> str:
        import exchange_calendars as xcals

        names = xcals.get_calendar_names(include_aliases=True)
        if v not in names:
            raise ValueError(f"unknown exchange calendar {v!r} (for example 'XNYS', 'XNAS')")
        return v

    @model_validator(mode="after")
    def _distinct(self) -> UniverseConfig:
        names = [self.underlying, self.long, self.short]
        if len(set(names)) != 3:
            raise ValueError(
                f"underlying, long and short must be three different symbols, got {names}"
            )
        return self


class IngestConfig(_Section):
    """How vendor files become canonical bars."""

    symbol: str | None = Field(
        None,
        description="ticker of the bars in files without a symbol column (unset: such a file "
        "is refused)",
    )
    tz: str | None = Field(
        None,
        description="IANA time zone of timestamps written without one, e.g. America/New_York "
        "(unset: such timestamps are refused; timestamps with a zone or offset are converted "
        "to UTC either way)",
    )
    bar_timestamp: Literal["start", "end"] = Field(
        "start",
        description="whether the source stamps an intraday bar at its start or its end; "
        "end stamps are moved back one bar length (a bar is identified by its start)",
    )
    columns: list[str] | None = Field(
        None,
        description="column names of a CSV without a header row, in file order, e.g. "
        "timestamp, open, high, low, close, volume (unset: the file has a header)",
    )
    on_bad_rows: Literal["quarantine", "error"] = Field(
        "quarantine",
        description="rows that break the data contract: set aside in a quarantine file "
        "with their reason, or fail the ingest at the first",
    )
    max_quarantine_fraction: float = Field(
        0.01,
        ge=0.0,
        le=1.0,
        description="the ingest fails when more than this fraction of the rows read is "
        "quarantined (0.01: 1 %)",
    )
    min_session_coverage: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="intraday sessions holding fewer than this fraction of their expected "
        "bars are rejected (quarantined as incomplete); a symbol's first session is expected "
        "from its first bar on (data may start inside a session), and for sentio signal its "
        "last session only up to its last bar (the session in progress)",
    )

    @field_validator("symbol")
    @classmethod
    def _ticker(cls, v: str | None) -> str | None:
        return None if v is None else normalise_ticker(v)

    @field_validator("tz")
    @classmethod
    def _valid_tz(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                zoneinfo.ZoneInfo(v)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
                raise ValueError(
                    f"unknown time zone {v!r}; use an IANA name such as 'America/New_York' or 'UTC'"
                ) from None
        return v


class RegimeSpec(_Section):
    """One regime of the synthetic market."""

    name: str = Field(description="name of the regime, unique among synth.regimes")
    drift_annual: float = Field(
        ge=-2.0, le=2.0, description="arithmetic drift of the underlying, a fraction per year"
    )
    vol_annual: float = Field(
        gt=0.0,
        le=3.0,
        description="volatility of the underlying's close-to-close daily returns, annualised "
        "(a fraction per square-root year)",
    )
    mean_sessions: float = Field(
        gt=0.0, le=2520.0, description="expected duration of a stay in the regime, in sessions"
    )


def _default_regimes() -> list[RegimeSpec]:
    return [
        RegimeSpec(name="calm_bull", drift_annual=0.25, vol_annual=0.14, mean_sessions=60),
        RegimeSpec(name="choppy", drift_annual=0.0, vol_annual=0.22, mean_sessions=25),
        RegimeSpec(name="bear_high_vol", drift_annual=-0.45, vol_annual=0.45, mean_sessions=15),
    ]


class SynthConfig(_Section):
    """The seeded synthetic market of ``sentio synth``."""

    start: dt.date = Field(
        dt.date(2021, 1, 4),
        ge=dt.date(1990, 1, 1),
        le=dt.date(2100, 1, 1),
        description="first day of the synthetic market (a date, YYYY-MM-DD; the first session "
        "on or after it)",
    )
    years: float = Field(
        2.0, gt=0.0, le=30.0, description="length of the synthetic market, in years of 365.25 days"
    )
    seed: int = Field(7, ge=0, description="seed of the generator's random numbers")
    random_walk: bool = Field(
        False,
        description="i.i.d. zero-drift returns, no edge exists (false: the regime-switching "
        "market of synth.regimes)",
    )
    edge_strength: float = Field(
        0.0,
        ge=0.0,
        le=0.5,
        description="planted lag-1 autocorrelation of the standardised one-minute returns "
        "(0: none)",
    )
    start_price: float = Field(
        300.0, gt=0.0, description="the underlying's price at the first open, in currency"
    )
    regimes: list[RegimeSpec] = Field(
        default_factory=_default_regimes,
        min_length=1,
        description="the market's regimes (each: name, drift_annual, vol_annual, "
        "mean_sessions); they switch at session boundaries",
    )
    tail_df: float = Field(
        4.0,
        gt=2.0,
        le=1000.0,
        description="Student-t degrees of freedom of the return shocks (smaller: fatter tails)",
    )
    vol_persistence: float = Field(
        0.995,
        ge=0.0,
        lt=1.0,
        description="AR(1) coefficient of the log-volatility, per one-minute bar",
    )
    vol_of_vol: float = Field(
        0.05,
        ge=0.0,
        le=1.0,
        description="standard deviation of the log-volatility shocks, per one-minute bar",
    )
    intraday_u_shape: float = Field(
        1.5,
        ge=0.0,
        le=10.0,
        description="extra volatility at the open and the close: the U-shape's amplitude "
        "(multiplier 1 + a (2x - 1)^2 over the session's fraction x; 0: flat)",
    )
    overnight_vol_ratio: float = Field(
        0.5,
        ge=0.0,
        le=5.0,
        description="standard deviation of the overnight gap as a fraction of a session's",
    )
    base_volume: float = Field(
        50_000.0, gt=0.0, description="mean volume of the underlying, in shares per minute bar"
    )

    @model_validator(mode="after")
    def _modes(self) -> SynthConfig:
        if self.random_walk and self.edge_strength > 0:
            raise ValueError(
                "random_walk=true means no edge exists; it cannot be combined with "
                f"edge_strength={self.edge_strength} (set one of them off)"
            )
        names = [r.name for r in self.regimes]
        if len(set(names)) != len(names):
            raise ValueError(f"regime names must be unique, got {names}")
        return self


IndicatorName = Literal[
    "returns",
    "realized_vol",
    "range_vol",
    "rsi",
    "macd",
    "bollinger",
    "atr",
    "volume_z",
    "gap",
    "vwap",
    "session_clock",
    "session_range",
    "coarse",
]
"""Indicator groups of the features stage; the last four are intraday only."""

FEATURE_INDICATORS: tuple[IndicatorName, ...] = get_args(IndicatorName)


def _all_indicators() -> list[IndicatorName]:
    return list(FEATURE_INDICATORS)


def _range_estimators() -> list[Literal["parkinson", "garman_klass"]]:
    return ["parkinson", "garman_klass"]


class FeaturesConfig(_Section):
    """Causal indicator set (features stage).

    Windows are counted in bars of the data (minutes for one-minute bars, sessions for
    daily bars); coarse-bar windows are counted in coarse bars. An indicator group is
    switched off by leaving it out of ``indicators``.
    """

    indicators: list[IndicatorName] = Field(
        default_factory=_all_indicators,
        min_length=1,
        description="indicator groups to compute; daily bars skip the intraday-only ones",
    )
    return_horizons: list[int] = Field(
        default_factory=lambda: [1, 5, 15, 60],
        min_length=1,
        description="horizons of the past log returns, in bars",
    )
    vol_windows: list[int] = Field(
        default_factory=lambda: [30, 120],
        min_length=1,
        description="windows of the realized volatility (and the range estimators), in bars",
    )
    range_vol: list[Literal["parkinson", "garman_klass"]] = Field(
        default_factory=_range_estimators,
        min_length=1,
        description="range-based volatility estimators (computed over vol_windows)",
    )
    rsi_window: int = Field(14, ge=2, description="window of the RSI, in bars")
    macd: tuple[int, int, int] = Field(
        (12, 26, 9),
        description="MACD spans (fast, slow, signal) of its exponential averages, in bars",
    )
    bollinger_window: int = Field(
        20, ge=2, description="window of the Bollinger bands' mean and sd, in bars"
    )
    bollinger_k: float = Field(
        2.0, gt=0.0, description="half-width of the Bollinger bands, in standard deviations"
    )
    atr_window: int = Field(14, ge=2, description="window of the average true range, in bars")
    volume_z_window: int | Literal["auto"] = Field(
        "auto",
        description="bars of the volume z-score; 'auto': one session of intraday bars (390 "
        "one-minute bars), 63 daily bars (a quarter)",
    )
    coarse_minutes: list[int] = Field(
        default_factory=lambda: [5, 15],
        description="lengths of the coarse bars built from intraday bars, in minutes (each "
        "divides an hour or is a multiple of one)",
    )
    coarse_vol_window: int = Field(
        12, ge=2, description="realized-vol window of the coarse bars, in coarse bars"
    )
    normalisation: Literal["rolling", "expanding", "train_fit"] = Field(
        "rolling",
        description="causal z-scoring of the features: rolling (mean and sd of the last "
        "norm_window bars), expanding (of all bars so far), train_fit (of each fold's "
        "training rows)",
    )
    norm_window: int | Literal["auto"] = Field(
        "auto",
        description="bars of the rolling normalisation; also the warm-up of 'expanding'; "
        "'auto': five sessions of intraday bars (1,950 one-minute bars), 126 daily bars "
        "(half a year)",
    )
    norm_clip: float | None = Field(
        10.0,
        gt=0.0,
        description="normalised values are clipped to +-norm_clip, in standard deviations "
        "(null: no clip)",
    )
    exogenous_path: Path | None = Field(
        None,
        description="file of exogenous columns with a timezone-aware timestamp column, each "
        "numeric column a feature exo_<name> (null: none)",
    )
    exogenous_max_staleness_minutes: int = Field(
        1440,
        ge=1,
        description="an exogenous value older than this at a bar's close counts as missing, "
        "in minutes",
    )

    @field_validator("return_horizons", "vol_windows")
    @classmethod
    def _positive_windows(cls, v: list[int]) -> list[int]:
        if any(w < 1 for w in v) or len(set(v)) != len(v):
            raise ValueError(f"must hold distinct positive bar counts, got {v}")
        return v

    @field_validator("vol_windows")
    @classmethod
    def _vol_windows(cls, v: list[int]) -> list[int]:
        if any(w < 2 for w in v):
            raise ValueError(f"volatility windows need at least 2 bars, got {v}")
        return v

    @field_validator("coarse_minutes")
    @classmethod
    def _coarse(cls, v: list[int]) -> list[int]:
        if any(m < 2 or m > 390 or 60 % m and m % 60 for m in v) or len(set(v)) != len(v):
            raise ValueError(
                "must hold distinct bar lengths in minutes between 2 and 390 that divide or "
                f"are multiples of an hour (e.g. [5, 15]), got {v}"
            )
        return v

    @field_validator("indicators", "range_vol")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"must not repeat a name, got {v}")
        return v

    @model_validator(mode="after")
    def _macd_order(self) -> FeaturesConfig:
        fast, slow, signal = self.macd
        if not 0 < fast < slow or signal <= 0:
            raise ValueError(
                f"macd must be (fast, slow, signal) with 0 < fast < slow, got {self.macd}"
            )
        return self


class RegimesConfig(_Section):
    """HMM regime model (regimes stage)."""

    enabled: bool = Field(
        True,
        description="fit a regime model per fold and feed its filtered probabilities to the "
        "agent (false: no regimes stage)",
    )
    n_states: int = Field(3, ge=2, le=8, description="hidden states (regimes) of the HMM")
    n_init: int = Field(
        5, ge=1, le=100, description="initialisations tried; the best log-likelihood is kept"
    )
    n_iter: int = Field(200, ge=10, description="most EM iterations of one fit")
    tol: float = Field(
        1e-4,
        gt=0.0,
        description="EM convergence tolerance: log-likelihood improvement per training row",
    )
    covariance_type: Literal["diag", "full"] = Field(
        "diag", description="covariance of each state's inputs: diagonal or full"
    )
    min_occupancy: float = Field(
        0.02,
        ge=0.0,
        lt=0.5,
        description="least mean posterior share of the training rows per state; a fit with "
        "a smaller state falls back to volatility-quantile regimes",
    )
    aggregate_bars: int | Literal["auto"] = Field(
        "auto",
        description="bars summed into the return input; 'auto': 15 minutes of intraday bars "
        "(15 one-minute bars), 1 daily bar",
    )
    vol_window: int | Literal["auto"] = Field(
        "auto",
        description="bars of the realized-volatility input; 'auto': seven sessions of "
        "intraday bars (2,730 one-minute bars), 21 daily bars (a month)",
    )
    seed: int = Field(0, ge=0, description="seed of the HMM initialisations")


class CVConfig(_Section):
    """Purged, embargoed folds (folds stage)."""

    method: Literal["walk_forward", "kfold", "cpcv"] = Field(
        "walk_forward",
        description="walk_forward: test blocks in time order, training before each; kfold: "
        "every block tested once; cpcv: combinatorial purged CV over n_groups",
    )
    n_splits: int = Field(
        4,
        ge=1,
        le=100,
        description="walk_forward: test blocks (the data cut into n_splits + 1 blocks); "
        "kfold: folds (a count)",
    )
    anchored: bool = Field(
        True,
        description="walk_forward: training from the first block (false: the previous block only)",
    )
    n_groups: int = Field(
        6, ge=2, le=50, description="cpcv: contiguous groups N the data is cut into"
    )
    n_test_groups: int = Field(
        2, ge=1, le=49, description="cpcv: test groups k per split (C(N, k) splits)"
    )
    embargo_bars: int | Literal["auto"] = Field(
        "auto",
        description="training samples dropped after each test block, in bars; 'auto': one "
        "session of intraday bars (390 one-minute bars), 5 daily bars (a week)",
    )
    embargo_fraction: float | None = Field(
        None,
        ge=0.0,
        lt=1.0,
        description="embargo as a fraction of all samples (rounded up to bars); replaces "
        "embargo_bars when set (null: embargo_bars)",
    )
    label_bars: int = Field(
        1,
        ge=0,
        description="bars a sample's span reaches past its own bar (1: the order decided at "
        "the close of t fills at the open of t+1); purging uses it",
    )

    @model_validator(mode="after")
    def _groups(self) -> CVConfig:
        if self.method == "cpcv" and self.n_test_groups >= self.n_groups:
            raise ValueError(
                f"cpcv needs n_test_groups < n_groups, got {self.n_test_groups} >= {self.n_groups}"
            )
        if self.method == "kfold" and self.n_splits < 2:
            raise ValueError(f"kfold needs n_splits >= 2, got {self.n_splits}")
        return self


class CostsConfig(_Section):
    """Execution costs charged on traded notional at the fill."""

    commission_per_share: float = Field(
        0.005, ge=0.0, description="commission per share traded, in currency"
    )
    half_spread_bps: float = Field(
        1.0,
        ge=0.0,
        description="half the bid-ask spread, paid on the traded notional, in basis points",
    )
    slippage_vol_mult: float | Literal["auto"] = Field(
        "auto",
        description="slippage as a fraction of the traded notional per unit of the ETF's "
        "per-bar volatility (a multiplier); "
        "'auto': 0.1 x sqrt(one minute / bar length), i.e. 0.1 of the one-minute volatility "
        "at any bar length (0.1 on one-minute bars, 0.1 / sqrt(390) on daily bars)",
    )


class MasksConfig(_Section):
    """Risk action-mask layers; each can be switched off."""

    session: bool = Field(
        True,
        description="session layer: no new exposure near the close or just after the open "
        "(intraday bars)",
    )
    no_new_exposure_minutes: int = Field(
        15,
        ge=0,
        le=390,
        description="session layer: no new exposure when the fill bar opens within this "
        "many minutes of its session's close",
    )
    opening_minutes: int = Field(
        15,
        ge=0,
        le=390,
        description="session layer: no new exposure when the fill bar opens less than this "
        "many minutes after its session's first bar (features that look back across the "
        "overnight gap are outliers there; 0: off)",
    )
    risk_budget: bool = Field(
        True,
        description="risk-budget layer: exposure capped so that the position's volatility "
        "stays within target_vol_annual",
    )
    target_vol_annual: float = Field(
        0.6,
        gt=0.0,
        description="risk-budget layer: the position's volatility target, annualised (a "
        "fraction per square-root year; 0.6: 60 %)",
    )
    regime: bool = Field(
        True,
        description="regime layer: exposure capped while the highest-volatility regime is "
        "the most likely one (needs regimes.enabled)",
    )
    high_vol_regime_cap: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="regime layer: the largest exposure in that regime, a fraction of equity",
    )
    drawdown: bool = Field(
        True,
        description="drawdown layer: no new exposure from half the limit on, and the circuit "
        "breaker sells everything at the limit (flat for the rest of the session)",
    )
    drawdown_limit: float = Field(
        0.1,
        gt=0.0,
        lt=1.0,
        description="drawdown layer: the circuit breaker's session drawdown (1 - equity / "
        "the session's peak equity), a fraction of equity",
    )
    min_hold_bars: int = Field(
        5,
        ge=0,
        description="a position held fewer bars than this may only be kept or closed, not "
        "switched to another exposure, in bars (0: off)",
    )

    @property
    def any_enabled(self) -> bool:
        return (
            self.session
            or self.risk_budget
            or self.regime
            or self.drawdown
            or self.min_hold_bars > 0
        )


class EnvConfig(_Section):
    """Trading simulator (train and backtest stages)."""

    action_grid: list[float] = Field(
        default_factory=lambda: [-1.0, -0.5, 0.0, 0.5, 1.0],
        min_length=2,
        description="target exposures the agent chooses from, fractions of equity in [-1, 1] "
        "(+x: x in the long ETF, -x: x in the short ETF; must include 0, flat)",
    )
    window: int = Field(
        4,
        ge=1,
        le=4096,
        description="feature rows per observation (4: the MLP default; 32 rows of 30 features "
        "let it fit noise, see benchmarks/README.md)",
    )
    episode_sessions: int | Literal["auto"] = Field(
        "auto",
        description="sessions per training episode; 'auto': 1 on intraday bars, 21 on daily "
        "bars (a month: a one-session episode of daily bars is one bar)",
    )
    flat_at_close: bool | Literal["auto"] = Field(
        "auto",
        description="sell any position at the close of each session's last bar (costs "
        "charged); 'auto': on for intraday bars, off for daily bars (positions are held "
        "overnight and the move from close to next open is booked)",
    )
    initial_cash: float = Field(
        100_000.0, gt=0.0, description="equity at the start of an episode, in currency"
    )
    drawdown_penalty: float = Field(
        0.0,
        ge=0.0,
        description="reward minus this x the increase of the session drawdown (a fraction of "
        "equity) over the step; a multiplier (0: off)",
    )
    vol_halflife_bars: int = Field(
        60,
        ge=1,
        description="half-life of the EWMA volatility of the underlying (slippage, risk "
        "budget), in bars",
    )
    costs: CostsConfig = Field(
        default_factory=CostsConfig, description="execution costs (section env.costs)"
    )
    masks: MasksConfig = Field(
        default_factory=MasksConfig, description="risk action-mask layers (section env.masks)"
    )

    @field_validator("action_grid")
    @classmethod
    def _grid(cls, v: list[float]) -> list[float]:
        if 0.0 not in v:
            raise ValueError(f"action_grid must contain 0.0 (flat is always allowed), got {v}")
        if any(abs(a) > 1.0 for a in v) or len(set(v)) != len(v):
            raise ValueError(f"action_grid must hold distinct exposures in [-1, 1], got {v}")
        return sorted(v)


class AgentConfig(_Section):
    """PPO variant and its networks (train stage)."""

    algo: Literal["ppo", "maskable_ppo", "sentio_ppo"] = Field(
        "maskable_ppo",
        description="ppo: SB3's PPO, no action masks; maskable_ppo: sb3-contrib's "
        "MaskablePPO; sentio_ppo: MaskablePPO with the quantile critic, CVaR and regime "
        "gating available",
    )
    extractor: Literal["mlp", "transformer"] = Field(
        "mlp",
        description="feature extractor of the observation window: mlp (the rows flattened) "
        "or transformer (one token per bar)",
    )
    d_model: int = Field(
        32,
        ge=4,
        le=1024,
        description="transformer: width of a token embedding (features per token)",
    )
    n_heads: int = Field(
        4, ge=1, le=32, description="transformer: attention heads (must divide d_model)"
    )
    n_layers: int = Field(2, ge=1, le=12, description="transformer: encoder layers")
    dropout: float = Field(
        0.0, ge=0.0, lt=1.0, description="transformer: dropout probability while training"
    )
    quantile_critic: bool = Field(
        False,
        description="sentio_ppo: the critic predicts n_quantiles quantiles of the return "
        "instead of its mean",
    )
    n_quantiles: int = Field(
        32, ge=2, le=256, description="quantile critic: quantiles N, at (i + 0.5) / N"
    )
    huber_kappa: float = Field(
        1.0,
        gt=0.0,
        description="quantile Huber threshold, in units of the scaled reward (agent.reward_scale)",
    )
    reward_scale: float | Literal["auto"] = Field(
        "auto",
        description="rewards (per-bar log returns) are multiplied by this for the optimiser "
        "only; 'auto': 1 / sd of the long ETF's one-bar log returns over the fold's training "
        "rows (about 400 for TQQQ minutes), so rewards and value targets are of order one. "
        "Saved with the model; reports always speak in raw returns",
    )
    value_clip: float | None = Field(
        None,
        gt=0.0,
        description="value predictions (each quantile) are kept within +-value_clip of the "
        "rollout's, in units of the scaled reward (null: no clipping)",
    )
    cvar_alpha: float = Field(
        0.1,
        gt=0.0,
        le=1.0,
        description="quantile critic: CVaR level, the fraction of the return distribution's "
        "lower tail averaged",
    )
    cvar_beta: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="risk aversion: the advantages use (1 - beta) mean + beta CVaR_alpha of "
        "the quantiles (0: risk-neutral; needs quantile_critic)",
    )
    regime_gating: bool = Field(
        False,
        description="sentio_ppo: the actor is a mixture of one expert per regime weighted by "
        "the filtered regime probabilities (needs regimes.enabled)",
    )
    flat_prior: float = Field(
        2.0,
        ge=0.0,
        le=10.0,
        description="initial logit advantage of the flat action over every other (0: a "
        "uniform initial policy); an agent then has to earn its way into positions",
    )
    learning_rate: float = Field(3e-4, gt=0.0, lt=1.0, description="Adam step size")
    n_steps: int | Literal["auto"] = Field(
        "auto",
        description="steps per environment in one rollout; 'auto': 2,048 env steps per "
        "update spread over train.n_envs on the CPU (32 at 64 environments), 16 on a GPU "
        "(sentio.agents.training.rollout_shape)",
    )
    batch_size: int | Literal["auto"] = Field(
        "auto",
        description="minibatch size of the update, in transitions (environment steps); "
        "'auto': 256 on the CPU, a quarter of the rollout on a GPU (4 minibatches per epoch)",
    )
    n_epochs: int = Field(4, ge=1, description="passes over each rollout per update")
    gamma: float = Field(0.5, gt=0.0, le=1.0, description="discount factor per step (one bar)")
    gae_lambda: float = Field(0.95, ge=0.0, le=1.0, description="GAE lambda, per step (one bar)")
    clip_range: float = Field(
        0.2,
        gt=0.0,
        lt=1.0,
        description="PPO clip range eps: the probability ratio is clipped to [1 - eps, 1 + eps]",
    )
    ent_coef: float = Field(0.0, ge=0.0, description="weight of the entropy bonus in the loss")
    vf_coef: float = Field(0.5, ge=0.0, description="weight of the value loss in the loss")
    max_grad_norm: float = Field(
        0.5, gt=0.0, description="gradients are clipped to this global L2 norm"
    )

    @field_validator("reward_scale")
    @classmethod
    def _positive_scale(cls, v: float | str) -> float | str:
        if v != "auto" and not (isinstance(v, float | int) and 0 < v < 1e9):
            raise ValueError(f"must be 'auto' or a number > 0, got {v!r}")
        return v


class TrainConfig(_Section):
    """Training budget, seeds, device and checkpoints (train stage)."""

    total_timesteps: int = Field(
        200_000,
        ge=1,
        description="training budget of one (fold, seed) training, in environment steps "
        "(bars) summed over all environments",
    )
    n_envs: int | Literal["auto"] = Field(
        "auto",
        description="training environments stepped at once; 'auto': 64 on the CPU, 4,096 on a GPU",
    )
    rollout: Literal["device", "sb3"] = Field(
        "device",
        description="'device': the accounts, rollouts and updates stay tensors on the "
        "training device (sentio.agents.device_rollout); 'sb3': SB3's own loop over the "
        "numpy environment (on the CPU 0-10 % faster, benchmarks/README.md)",
    )
    seeds: list[int] = Field(
        default_factory=lambda: [0],
        min_length=1,
        description="one training per fold and seed; the seeds of the trainings",
    )
    warm_start: Literal["none", "champion"] = Field(
        "champion",
        description="champion: a fold whose test blocks all begin after the champion's last "
        "bar (the end of its test window, or of its training if later: its weights and its "
        "selection saw nothing of them) starts from the champion's weights and feature "
        "normaliser, when its architecture and features match (else a cold start, saying "
        "why), and trains train.warm_start_fraction of the steps (the default: as good "
        "out of sample with a quarter of the steps, benchmarks/README.md); none: every "
        "training starts from scratch",
    )
    warm_start_fraction: float = Field(
        0.25,
        gt=0.0,
        le=1.0,
        description="share of train.total_timesteps a warm-started training runs",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto",
        description="where the networks train; 'auto': cuda when a CUDA GPU is available, else cpu",
    )
    checkpoint_every: int = Field(
        10_000,
        ge=1,
        description="environment steps between checkpoints (a retried training resumes from "
        "the last)",
    )
    validation_fraction: float = Field(
        0.2,
        ge=0.0,
        lt=1.0,
        description="share of a fold's training episodes, the latest, held out to choose the "
        "checkpoint and to decide whether the agent trades at all (0: off; "
        "sentio.agents.selection)",
    )
    validation_every: int = Field(
        20_000, ge=1, description="environment steps between validation runs of the policy"
    )
    validation_min_t: float = Field(
        2.0,
        description="least t statistic of the chosen checkpoint's per-episode validation "
        "returns for the agent to trade; below it the agent stands aside (stays flat)",
    )
    tensorboard: bool = Field(
        False, description="write TensorBoard logs beside each model (tensorboard/)"
    )
    max_parallel: int = Field(
        0,
        ge=0,
        le=256,
        description="trainings run at once, each in a process of its own; 0: one per "
        "train.torch_threads cores available (at least 1)",
    )
    torch_threads: int = Field(
        1,
        ge=1,
        le=256,
        description="torch intra-op threads of one training; part of what makes a training "
        "repeatable (a different count may round differently)",
    )
    executor: Literal["local", "dask", "deployment"] = Field(
        "local",
        description="where the (fold, seed) trainings run: 'local', worker processes on this "
        "machine (train.max_parallel at once); 'dask', Prefect's DaskTaskRunner on the Dask "
        "scheduler at train.dask_address, or on a LocalCluster of train.max_parallel worker "
        "processes started for the run when none is given; 'deployment', each training a "
        "flow run of the deployment train.deployment, picked up by the workers of its work "
        "pool. The models are the same either way, and a training done by one executor is a "
        "cache hit for another",
    )
    deployment: str = Field(
        "sentio-train-fold/train-fold",
        description="the deployment ('<flow name>/<deployment name>') each training runs as "
        "with executor 'deployment' (deployments/prefect.yaml defines 'train-fold' on the "
        "sentio-process pool)",
    )
    dask_address: str | None = Field(
        None,
        description="address of a running Dask scheduler for executor 'dask' (e.g. "
        "tcp://10.0.0.5:8786); its workers must reach the working directory at the same "
        "path and run with --nthreads 1 (or DASK_DISTRIBUTED__WORKER__DAEMON=False); null: "
        "a LocalCluster",
    )
    dask_resources: dict[str, float] = Field(
        default_factory=dict,
        description="Dask worker resources one training holds while it runs, e.g. {GPU: 1} "
        "for workers started with --resources GPU=1 (one training per GPU); empty: none",
    )


class ReportConfig(_Section):
    """Bootstrap confidence intervals of the report stage."""

    bootstrap_resamples: int = Field(
        2000, ge=100, description="stationary-bootstrap resamples per confidence interval"
    )
    ci_level: float = Field(
        0.95, gt=0.5, lt=1.0, description="confidence level of the intervals (0.95: 95 %)"
    )
    seed: int = Field(0, ge=0, description="seed of the bootstrap's random numbers")


class RegistryConfig(_Section):
    """Champion / challenger promotion gate (registry stage; see :mod:`sentio.registry`)."""

    min_dsr: float = Field(
        0.95,
        ge=0.0,
        le=1.0,
        description="the candidate's deflated Sharpe ratio (stitched out of sample, a "
        "probability) must reach it",
    )
    max_drawdown: float = Field(
        0.25,
        gt=0.0,
        le=1.0,
        description="the candidate's stitched out-of-sample maximum drawdown, a fraction of "
        "equity, must not exceed it",
    )
    must_beat_champion: bool = Field(
        True,
        description="the candidate's Sharpe must be strictly above the champion's, both "
        "re-evaluated on the same leakage-free window",
    )
    min_compare_bars: int | Literal["auto"] = Field(
        "auto",
        description="fewest bars of the leakage-free comparison window (candidate's test "
        "window after the champion's training end plus the embargo) for a Sharpe comparison; "
        "fewer: not promoted. 'auto': five sessions of intraday bars (1,950 one-minute "
        "bars), 63 daily bars (a quarter)",
    )


class AlertsConfig(_Section):
    """Where alerts go: failed or missing nightly runs, failed paper runs, drift
    (``sentio automations apply``; see the README's operations section)."""

    block: str | None = Field(
        None,
        description="a saved Prefect notification block, '<block type slug>/<block name>' "
        "(e.g. 'slack-webhook/sentio', 'email/ops'), that every alert is sent to; null: "
        "alerts.webhook_url",
    )
    webhook_url: str | None = Field(
        None,
        description="a URL that receives every alert as a JSON POST {subject, body, name}; "
        "sentio automations apply saves it as the Custom Webhook block 'sentio-alerts'; used "
        "when alerts.block is null (null too: no alerts are sent)",
    )
    stale_after_hours: float = Field(
        76.0,
        ge=1.0,
        description="alert when no nightly-retrain run has completed for this long (a "
        "proactive automation: it fires on the absence of runs, including a server or "
        "deployment that stopped); the default spans the weekend of the weekday schedule "
        "(Friday 02:00 to Monday 02:00 New York, plus the run), 26 suits a daily schedule; "
        "a scheduled run that does not start on time is alerted at once (failed alert, Late)",
    )

    @field_validator("block")
    @classmethod
    def _block_name(cls, value: str | None) -> str | None:
        if value is not None and (value.count("/") != 1 or not all(value.split("/"))):
            raise ValueError(
                f"alerts.block must be '<block type slug>/<block name>', got {value!r}"
            )
        return value


class DriftConfig(_Section):
    """Live drift checks after each paper-trading run (:mod:`sentio.drift`)."""

    window_sessions: int = Field(
        5,
        ge=1,
        description="the paper ledger's last sessions compared with the champion's "
        "out-of-sample backtest",
    )
    level: float = Field(
        0.99,
        gt=0.5,
        lt=1.0,
        description="two-sided level of the bootstrap bands of return, costs and turnover "
        "over the same number of bars; a ledger outside any band is drift",
    )
    resamples: int = Field(2000, ge=200, description="stationary-bootstrap resamples of the band")


class PathsConfig(_Section):
    """Where outputs go. Relative paths are relative to the working directory."""

    workdir: Path = Field(
        Path(".sentio"),
        description="working directory of stage outputs, caches, run folders, the model "
        "registry and Prefect results (a folder)",
    )
    storage: str | None = Field(
        None,
        description="URL of storage every training machine reaches (fsspec: "
        "s3://bucket/prefix with s3fs installed, gs://..., file:///mnt/shared/sentio), "
        "through which trainings on other machines (train.executor dask or deployment) get "
        "their inputs and return checkpoints, models and backtests, every file checked "
        "against its sha256 on both sides; it also holds their Prefect results, and any "
        "training published there is a cache hit for every run; null: paths.workdir itself "
        "must be on storage every machine sees at the same path",
    )
    storage_cache: Path = Field(
        Path("~/.cache/sentio"),
        description="with paths.storage: where a machine that trains keeps its copies of the "
        "inputs and its own outputs and checkpoints before they are published (a folder of "
        "Sentio's own; not paths.workdir or a folder above it, and apart from a file:// "
        "storage)",
    )
    storage_cache_days: float | None = Field(
        7.0,
        gt=0.0,
        description="with paths.storage: after each training, a machine removes from its "
        "paths.storage_cache the stage folders and checkpoints no training there has used "
        "for this many days, when no other training is using the cache (an input removed is "
        "copied from the storage again when needed); never in a folder that held anything "
        "else when a training first used it; null: never",
    )
    on_busy: Literal["wait", "refuse"] = Field(
        "wait",
        description="when another run holds the working directory: wait for it (saying so) "
        "or refuse at once",
    )
    busy_timeout: float = Field(
        21_600.0,
        gt=0.0,
        description="seconds to wait for a busy working directory before giving up",
    )

    @model_validator(mode="after")
    def _cache_apart(self) -> PathsConfig:
        """The storage cache is pruned by age (:mod:`sentio.storage_cache`): it must not
        hold the working directory, nor overlap a local storage."""
        if self.storage is None:
            return self
        try:
            cache = self.storage_cache.expanduser().resolve()
            workdir = self.workdir.expanduser().resolve()
        except (RuntimeError, OSError):  # ~user unknown here: the machine that uses it checks
            return self
        if workdir == cache or workdir.is_relative_to(cache):
            raise ValueError(
                f"paths.storage_cache ({self.storage_cache}) must be a folder of its own, "
                f"not paths.workdir ({self.workdir}) or a folder above it: its copies are "
                "removed after paths.storage_cache_days"
            )
        url = urllib.parse.urlparse(self.storage)
        if url.scheme == "file":
            root = Path(urllib.request.url2pathname(url.path)).resolve()
            if cache.is_relative_to(root) or root.is_relative_to(cache):
                raise ValueError(
                    f"paths.storage_cache ({self.storage_cache}) must be a folder apart from "
                    f"paths.storage ({self.storage}): the cache's copies are removed after "
                    "paths.storage_cache_days"
                )
        return self


class SentioConfig(_Section):
    """The whole configuration."""

    universe: UniverseConfig = Field(
        default_factory=UniverseConfig,
        description="symbols, leverage and the costs of the derived leveraged series",
    )
    ingest: IngestConfig = Field(
        default_factory=IngestConfig,
        description="vendor-file parsing, quarantine policy, session completeness",
    )
    synth: SynthConfig = Field(
        default_factory=SynthConfig, description="the synthetic market generator (sentio synth)"
    )
    features: FeaturesConfig = Field(
        default_factory=FeaturesConfig,
        description="causal indicator set and normalisation (features stage)",
    )
    regimes: RegimesConfig = Field(
        default_factory=RegimesConfig,
        description="HMM regime model and its fallback (regimes stage)",
    )
    cv: CVConfig = Field(
        default_factory=CVConfig, description="purged, embargoed folds (folds stage)"
    )
    env: EnvConfig = Field(
        default_factory=EnvConfig,
        description="trading simulator: actions, costs, risk masks (train and backtest)",
    )
    agent: AgentConfig = Field(
        default_factory=AgentConfig, description="PPO variant and its networks (train stage)"
    )
    train: TrainConfig = Field(
        default_factory=TrainConfig,
        description="training budget, seeds, device, checkpoints (train stage)",
    )
    report: ReportConfig = Field(
        default_factory=ReportConfig,
        description="bootstrap confidence intervals (report stage)",
    )
    registry: RegistryConfig = Field(
        default_factory=RegistryConfig,
        description="champion / challenger promotion gate (registry stage)",
    )
    paths: PathsConfig = Field(
        default_factory=PathsConfig,
        description="where outputs, caches and Prefect results are written",
    )
    alerts: AlertsConfig = Field(
        default_factory=AlertsConfig,
        description="where alerts go (sentio automations apply, flow failure hooks)",
    )
    drift: DriftConfig = Field(
        default_factory=DriftConfig,
        description="live drift checks after each paper-trading run",
    )

    @model_validator(mode="after")
    def _check_combinations(self) -> SentioConfig:
        """Reject feature-flag combinations that make no sense."""
        a, env, reg = self.agent, self.env, self.regimes
        if a.algo != "sentio_ppo":
            for flag, on in (
                ("quantile_critic", a.quantile_critic),
                ("regime_gating", a.regime_gating),
                ("cvar_beta", a.cvar_beta > 0),
            ):
                if on:
                    raise ValueError(
                        f"agent.{flag} is a Sentio PPO feature; it needs agent.algo='sentio_ppo' "
                        f"(got algo={a.algo!r}) or switch it off"
                    )
        if a.algo == "ppo" and env.masks.any_enabled:
            raise ValueError(
                "agent.algo='ppo' cannot apply action masks; use 'maskable_ppo' or 'sentio_ppo', "
                "or switch off every env.masks layer (session, risk_budget, regime, drawdown, "
                "min_hold_bars=0)"
            )
        if a.cvar_beta > 0 and not a.quantile_critic:
            raise ValueError(
                "agent.cvar_beta > 0 needs agent.quantile_critic=true (CVaR comes from the quantiles)"
            )
        if a.regime_gating and not reg.enabled:
            raise ValueError("agent.regime_gating=true needs regimes.enabled=true")
        if env.masks.regime and not reg.enabled:
            raise ValueError("env.masks.regime=true needs regimes.enabled=true")
        if a.extractor == "transformer":
            if env.window < 2:
                raise ValueError(
                    f"agent.extractor='transformer' needs env.window >= 2, got {env.window}"
                )
            if a.d_model % a.n_heads:
                raise ValueError(
                    f"agent.d_model ({a.d_model}) must be divisible by agent.n_heads ({a.n_heads})"
                )
        for name, (low, high) in _AUTO_RANGE.items():
            value = _setting(self, name)
            if value != "auto" and not (low <= value and (high is None or value <= high)):
                bound = f"between {low} and {high}" if high else f"at least {low}"
                raise ValueError(f"{name} must be 'auto' or {bound}, got {value}")
        n_steps, batch, n_envs = a.n_steps, a.batch_size, self.train.n_envs
        if n_steps == "auto" or batch == "auto" or n_envs == "auto":
            return self  # checked when the device is known (training.rollout_shape)
        rollout = n_steps * n_envs
        if batch > rollout:
            raise ValueError(
                f"agent.batch_size ({a.batch_size}) exceeds the rollout size agent.n_steps x "
                f"train.n_envs = {rollout}"
            )
        return self

    def hash(self, *sections: str) -> str:
        """Content hash of the whole configuration or of the named sections."""
        data = self.model_dump(mode="json")
        if sections:
            data = {s: data[s] for s in sections}
        return hash_json(data)


# ----------------------------------------------------------------------------- bar length

SESSION_MINUTES = 390
"""Minutes of a regular NYSE session: the length of a daily bar in trading time."""

_AUTO_MINIMUM: dict[str, float] = {
    "features.volume_z_window": 2,
    "features.norm_window": 10,
    "regimes.aggregate_bars": 1,
    "regimes.vol_window": 2,
    "cv.embargo_bars": 0,
    "env.episode_sessions": 1,
    "env.costs.slippage_vol_mult": 0.0,
    "registry.min_compare_bars": 2,
}
"""Settings that may be ``'auto'`` (sized by the bar length of the data) and their
smallest allowed explicit value."""

_AUTO_RANGE: dict[str, tuple[float, float | None]] = {
    "agent.n_steps": (8, None),
    "agent.batch_size": (2, None),
    "train.n_envs": (1, 65_536),
    **{name: (low, None) for name, low in _AUTO_MINIMUM.items()},
}
"""Every setting that may be ``'auto'``: the smallest and largest (``None``: no limit)
explicit value allowed. The first three are sized by the device
(:func:`sentio.agents.training.rollout_shape`), the others by the bar length."""

_DAILY_LIMITS: dict[str, tuple[int, str]] = {
    "features.norm_window": (504, "two years of warm-up before the first feature"),
    "features.volume_z_window": (504, "two years in one volume z-score"),
    "regimes.vol_window": (252, "a year in one volatility estimate"),
    "regimes.aggregate_bars": (21, "a month summed into one HMM input"),
    "cv.embargo_bars": (63, "a quarter dropped after each test block"),
    "registry.min_compare_bars": (1260, "five years before any champion comparison"),
}
"""Explicit bar counts that make no sense on daily bars (the minute-bar defaults of the
past read as sessions): the limit and what it would mean."""


def _setting(cfg: SentioConfig, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def auto_values(bar_seconds: int) -> dict[str, Any]:
    """What every ``'auto'`` setting means for bars of ``bar_seconds`` seconds.

    Intraday settings are lengths of time converted to bars (a session is 390 minutes);
    daily bars get their own, because a session-sized window of daily bars is one bar.
    """
    if bar_seconds <= 0:
        raise ValueError(f"bar_seconds must be positive, got {bar_seconds}")
    daily = bar_seconds >= 20 * 3600
    minutes = SESSION_MINUTES if daily else bar_seconds / 60.0
    slippage = 0.1 * math.sqrt(1.0 / minutes)
    if daily:
        return {
            "features.volume_z_window": 63,
            "features.norm_window": 126,
            "regimes.aggregate_bars": 1,
            "regimes.vol_window": 21,
            "cv.embargo_bars": 5,
            "env.episode_sessions": 21,
            "env.flat_at_close": False,
            "env.costs.slippage_vol_mult": slippage,
            "registry.min_compare_bars": 63,
        }

    def bars(n_minutes: float, least: int) -> int:
        return max(least, round(n_minutes / minutes))

    return {
        "features.volume_z_window": bars(SESSION_MINUTES, 2),
        "features.norm_window": bars(5 * SESSION_MINUTES, 10),
        "regimes.aggregate_bars": bars(15, 1),
        "regimes.vol_window": bars(7 * SESSION_MINUTES, 2),
        "cv.embargo_bars": bars(SESSION_MINUTES, 0),
        "env.episode_sessions": 1,
        "env.flat_at_close": True,
        "env.costs.slippage_vol_mult": slippage,
        "registry.min_compare_bars": bars(5 * SESSION_MINUTES, 2),
    }


def sized(value: int | float | str, name: str) -> int:
    """A bar-count setting known to be resolved (:func:`resolve_for_bars`), as an int.

    Raises:
        ConfigError: the setting is still ``'auto'``.
    """
    if isinstance(value, str):
        raise ConfigError(
            f"{name} = {value!r} depends on the bar length of the data: resolve the "
            "configuration for it first (sentio.config.resolve_for_bars)"
        )
    return int(value)


def unresolved_settings(cfg: SentioConfig) -> list[str]:
    """The settings of ``cfg`` still ``'auto'`` that :func:`resolve_for_bars` sizes."""
    return [name for name in auto_values(60) if _setting(cfg, name) == "auto"]


def resolve_for_bars(cfg: SentioConfig, bar_seconds: int) -> SentioConfig:
    """``cfg`` with every bar-length ``'auto'`` replaced by its value for these bars.

    Explicit values are kept; on daily bars an explicit count beyond the limits of
    :data:`_DAILY_LIMITS` is refused with a message that names the setting and what the
    count would mean (the usual cause: minute-bar values copied into a daily
    configuration). Resolving a resolved configuration changes nothing.

    Raises:
        ConfigError: an explicit value that makes no sense for this bar length.
    """
    values = auto_values(bar_seconds)
    daily = bar_seconds >= 20 * 3600
    overrides: dict[str, Any] = {}
    problems: list[str] = []
    for name, value in values.items():
        given = _setting(cfg, name)
        if given == "auto":
            overrides[name] = value
        elif daily and name in _DAILY_LIMITS and given > _DAILY_LIMITS[name][0]:
            limit, meaning = _DAILY_LIMITS[name]
            problems.append(
                f"{name} = {given} daily bars is more than {meaning} (at most {limit}; "
                f"'auto' gives {value}; minute-bar values do not carry over to daily bars)"
            )
    if problems:
        raise ConfigError("configuration for daily bars: " + "; ".join(problems))
    if not overrides:
        return cfg
    return with_overrides(cfg, overrides)


PLACEMENT_SETTINGS: tuple[str, ...] = (
    "seeds",
    "max_parallel",
    "executor",
    "dask_address",
    "dask_resources",
    "deployment",
)
"""``train`` settings that place trainings, not shape them (outside the training key)."""

WARM_START_SETTINGS: tuple[str, ...] = ("warm_start", "warm_start_fraction")
"""``train`` settings that shape only the trainings they warm-start: the training key
holds them for those (:func:`sentio.stages.train.train_key`), so a fold that starts cold
keeps its key whatever they are."""


def training_settings_hash(cfg: SentioConfig) -> str:
    """Hash of every setting that changes what one training computes.

    ``agent``, ``env``, ``universe`` and ``train`` less :data:`PLACEMENT_SETTINGS`: those
    decide which trainings run, how many at once and where, not what one of them computes
    (so a training done by one executor is a cache hit for another); and less
    :data:`WARM_START_SETTINGS`, which the key of a warm-started training adds itself.
    """
    dump = cfg.model_dump(mode="json")
    skip = (*PLACEMENT_SETTINGS, *WARM_START_SETTINGS)
    train = {k: v for k, v in dump["train"].items() if k not in skip}
    return hash_json([{k: dump[k] for k in ("agent", "env", "universe")}, train])


def _format_loc(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc if not (isinstance(p, str) and p.startswith("function-")))


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model that owns the field at ``loc`` (for unknown-field hints)."""
    model: Any = SentioConfig
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        ann = field.annotation
        args = getattr(ann, "__args__", None)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        elif args and isinstance(args[0], type) and issubclass(args[0], BaseModel):
            model = args[0]
        else:
            return None
    return model


def format_validation_error(err: ValidationError, source: str = "config") -> str:
    """One line naming each bad field, what was given and what is allowed."""
    msgs = []
    for e in err.errors():
        loc = tuple(e["loc"])
        where = _format_loc(loc) or "combination"
        if e["type"] == "extra_forbidden":
            model = _model_at(loc)
            allowed = sorted(model.model_fields) if model else []
            hint = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            extra = f"; did you mean {hint[0]!r}?" if hint else ""
            msgs.append(f"{where}: unknown setting (allowed: {', '.join(allowed)}){extra}")
            continue
        msg = e["msg"].removeprefix("Value error, ")
        given = e.get("input")
        if (
            e["type"] != "missing"
            and loc
            and not isinstance(given, dict | list)
            and repr(given) not in msg
        ):
            msg = f"{msg} (got {given!r})"
        msgs.append(f"{where}: {msg}")
    return f"{source}: " + "; ".join(msgs)


def config_from_dict(data: dict[str, Any] | None, source: str = "config") -> SentioConfig:
    """Validate a plain mapping into a :class:`SentioConfig` or raise :class:`ConfigError`."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: the top level must be a mapping of sections, got {type(data).__name__}"
        )
    try:
        return SentioConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from None


def load_config(path: str | Path | None = None) -> SentioConfig:
    """Load a YAML configuration; ``None`` gives the defaults."""
    if path is None:
        return SentioConfig()
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: configuration file not found")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(f"{p}: not a UTF-8 text file (byte {err.start})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{p}: not valid YAML{where}: {getattr(err, 'problem', err)}") from None
    return config_from_dict(data, str(p))


def with_overrides(cfg: SentioConfig, overrides: dict[str, Any]) -> SentioConfig:
    """Return ``cfg`` with dotted-path overrides applied and everything re-validated.

    ``with_overrides(cfg, {"ingest.tz": "UTC"})``; ``None`` values are ignored so CLI
    options that were not given leave the file's value alone.
    """
    data = cfg.model_dump(mode="json")
    for key, value in overrides.items():
        if value is None:
            continue
        node = data
        *parents, leaf = key.split(".")
        for part in parents:  # an unknown section is reported by the validation
            child = node.setdefault(part, {}) if isinstance(node, dict) else None
            if not isinstance(child, dict):
                raise ConfigError(f"options: {key}: {part} is a setting, not a section")
            node = child
        node[leaf] = value
    return config_from_dict(data, "options")


def dump_config(cfg: SentioConfig) -> str:
    """The configuration as YAML, every field spelled out."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def write_config(path: str | Path, cfg: SentioConfig) -> Path:
    """Atomically write the configuration as YAML to ``path``."""
    return write_text_atomic(
        path, "# Sentio configuration that produced the outputs beside it\n" + dump_config(cfg)
    )


# ----------------------------------------------------------------------------- reference

REFERENCE_START = (
    "<!-- config-reference:start (generated by sentio.config.config_reference_markdown) -->"
)
REFERENCE_END = "<!-- config-reference:end -->"
"""The markers around the generated configuration reference in README.md."""


def _field(dotted: str) -> Any:
    """The pydantic field of the setting ``dotted`` (``"synth.years"``); ``KeyError`` if none."""
    model: Any = SentioConfig
    *parents, leaf = dotted.split(".")
    for part in parents:
        model = _nested_model(model.model_fields[part].annotation)
        if model is None:
            raise KeyError(dotted)
    return model.model_fields[leaf]


def describe(dotted: str) -> str:
    """The description of the setting ``dotted`` (``"synth.years"``), units included.

    Raises:
        KeyError: no such setting, or it has no description.
    """
    description = _field(dotted).description
    if not description:
        raise KeyError(dotted)
    return str(description)


def option_help(dotted: str) -> str:
    """Help text of a command-line option that sets ``dotted``: its description,
    capitalised, the setting's name and its choices or range, e.g. ``"Planted lag-1
    autocorrelation ... (synth.edge_strength: >= 0, <= 0.5)."``."""
    field = _field(dotted)
    text = describe(dotted)
    allowed = _bounds_text(field, dotted)
    if getattr(field.annotation, "__origin__", None) is Literal:
        allowed = ", ".join(str(a) for a in get_args(field.annotation))
    return f"{text[0].upper()}{text[1:]} ({dotted}{': ' + allowed if allowed else ''})."


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    """The model type of a section field or of the entries of a list of models."""
    for candidate in (annotation, *getattr(annotation, "__args__", ())):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _type_text(annotation: Any) -> str:
    """A reader's name for the values a field's annotation allows."""
    origin, args = getattr(annotation, "__origin__", None), get_args(annotation)
    if origin is Literal:
        return ", ".join(f"`{a}`" for a in args)
    if origin in (list, tuple):
        inner = _type_text(args[0])
        return f"{len(args)} x {inner}" if origin is tuple else f"list of {inner}"
    if origin is dict:
        return f"mapping of {_type_text(args[0])} to {_type_text(args[1])}"
    if args:  # a union: int | Literal["auto"], str | None ...
        return " or ".join("`null`" if a is type(None) else _type_text(a) for a in args)
    names = {bool: "true / false", int: "integer", float: "number", str: "text", Path: "path"}
    return names.get(annotation, "date" if annotation is dt.date else str(annotation))


def _bounds_text(field: Any, dotted: str) -> str:
    """The numeric range of a field (its constraints, or the range of an ``'auto'`` setting)."""
    low: tuple[str, Any] | None = None
    high: tuple[str, Any] | None = None
    for item in field.metadata:
        for attr, sign in (("ge", ">="), ("gt", ">")):
            if getattr(item, attr, None) is not None:
                low = (sign, getattr(item, attr))
        for attr, sign in (("le", "<="), ("lt", "<")):
            if getattr(item, attr, None) is not None:
                high = (sign, getattr(item, attr))
    if dotted in _AUTO_RANGE:
        least, most = _AUTO_RANGE[dotted]
        low, high = (">=", least), None if most is None else ("<=", most)
    return ", ".join(
        f"{sign} {value:g}" if isinstance(value, int | float) else f"{sign} {value}"
        for sign, value in filter(None, (low, high))
    )


def _value_text(value: Any) -> str:
    """A default value as YAML writes it (``null``, ``true``, ``[5, 15]``; text unquoted),
    as code."""
    if isinstance(value, str):
        return f"`{value}`"
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return f"`{text.removesuffix('...').strip()}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _docstring_text(model: type[BaseModel]) -> str:
    """A model's docstring as one markdown paragraph per paragraph (reST roles dropped)."""
    import inspect
    import re

    doc = inspect.cleandoc(model.__doc__ or "")
    text = "\n\n".join(" ".join(p.split()) for p in doc.split("\n\n"))
    return re.sub(r":\w+:`~?([^`]+)`", r"`\1`", text.replace("``", "`"))


def _section_markdown(model: type[BaseModel], prefix: str, defaults: Any) -> list[str]:
    """The reference of one section (and after it, its nested sections), as markdown lines.

    ``defaults`` is the section's default as JSON; for the entries of a list of models
    (``prefix`` ends in ``[]``) it is the default list, and the default column shows
    each entry's value.
    """
    lines = [f"#### `{prefix}`", "", _docstring_text(model), ""]
    lines += ["| setting | default | allowed | description |", "| --- | --- | --- | --- |"]
    nested: list[list[str]] = []
    for name, field in model.model_fields.items():
        dotted = f"{prefix}.{name}"
        if isinstance(defaults, list):
            default = ", ".join(_value_text(entry[name]) for entry in defaults)
        else:
            default = _value_text(defaults[name])
        allowed = _type_text(field.annotation)
        inner = _nested_model(field.annotation)
        if inner is not None and not isinstance(defaults[name], list):
            nested.append(_section_markdown(inner, dotted, defaults[name]))
            continue  # a nested section: a table of its own
        if inner is not None:  # a list of models: names here, the entries' fields below
            nested.append(_section_markdown(inner, f"{dotted}[]", defaults[name]))
            default = ", ".join(f"`{e.get('name', i)}`" for i, e in enumerate(defaults[name]))
            allowed = f"list of `{dotted}[]`"
        bounds = _bounds_text(field, dotted)
        row = [f"`{dotted}`", default, f"{allowed} ({bounds})" if bounds else allowed]
        lines.append("| " + " | ".join(_cell(c) for c in [*row, field.description or ""]) + " |")
    return [*lines, "", *(line for block in nested for line in block)]


def config_reference_markdown() -> str:
    """The configuration reference of README.md, generated from the settings' descriptions.

    One table per section (nested sections and list entries after their section): every
    setting with its default, the values it allows (type, range, choices) and its
    description with units and what ``'auto'`` gives. README.md holds this text between
    :data:`REFERENCE_START` and :data:`REFERENCE_END`; a test keeps the two in step
    (:func:`readme_with_config_reference` rewrites it).
    """
    defaults = SentioConfig().model_dump(mode="json")
    lines: list[str] = []
    for name, field in SentioConfig.model_fields.items():
        section = _nested_model(field.annotation)
        assert section is not None, name
        lines += _section_markdown(section, name, defaults[name])
    return "\n".join(lines).rstrip() + "\n"


def readme_with_config_reference(readme: str) -> str:
    """``readme`` with the text between the reference markers replaced by
    :func:`config_reference_markdown`.

    Raises:
        ValueError: the markers are missing.
    """
    head, start, rest = readme.partition(REFERENCE_START)
    _, end, tail = rest.partition(REFERENCE_END)
    if not start or not end:
        raise ValueError(f"README has no {REFERENCE_START!r} ... {REFERENCE_END!r} block")
    return f"{head}{start}\n\n{config_reference_markdown()}\n{end}{tail}"
