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

    underlying: str = Field("QQQ", min_length=1, description="underlying symbol")
    long: str = Field("TQQQ", min_length=1, description="+L leveraged ETF symbol")
    short: str = Field("SQQQ", min_length=1, description="-L leveraged ETF symbol")
    leverage: float = Field(3.0, gt=1.0, le=5.0, description="daily leverage L of the ETFs")
    expense_ratio_annual: float = Field(0.0095, ge=0.0, le=0.05)
    financing_rate_annual: float = Field(
        0.02,
        ge=0.0,
        le=0.25,
        description="cash rate r_f; a fund with leverage L earns (1 - L) r_f per year: "
        "+3x pays 2 r_f, -3x earns 4 r_f",
    )
    calendar: str = Field("XNYS", description="exchange_calendars code")
    derived_volume_ratio: float = Field(
        0.5, gt=0.0, description="volume of a derived leveraged series / underlying volume"
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

    symbol: str | None = Field(None, description="symbol for files without a symbol column")
    tz: str | None = Field(None, description="IANA time zone of naive timestamps")
    bar_timestamp: Literal["start", "end"] = "start"
    columns: list[str] | None = Field(
        None, description="column names for a CSV without header, e.g. [timestamp, open, ...]"
    )
    on_bad_rows: Literal["quarantine", "error"] = "quarantine"
    max_quarantine_fraction: float = Field(0.01, ge=0.0, le=1.0)
    min_session_coverage: float = Field(
        0.5, ge=0.0, le=1.0, description="intraday sessions with fewer bars are rejected"
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

    name: str
    drift_annual: float = Field(ge=-2.0, le=2.0)
    vol_annual: float = Field(gt=0.0, le=3.0)
    mean_sessions: float = Field(gt=0.0, le=2520.0, description="expected duration in sessions")


def _default_regimes() -> list[RegimeSpec]:
    return [
        RegimeSpec(name="calm_bull", drift_annual=0.25, vol_annual=0.14, mean_sessions=60),
        RegimeSpec(name="choppy", drift_annual=0.0, vol_annual=0.22, mean_sessions=25),
        RegimeSpec(name="bear_high_vol", drift_annual=-0.45, vol_annual=0.45, mean_sessions=15),
    ]


class SynthConfig(_Section):
    """The seeded synthetic market of ``sentio synth``."""

    start: dt.date = Field(
        dt.date(2021, 1, 4), ge=dt.date(1990, 1, 1), le=dt.date(2100, 1, 1), description="first day"
    )
    years: float = Field(2.0, gt=0.0, le=30.0)
    seed: int = Field(7, ge=0)
    random_walk: bool = Field(False, description="i.i.d. zero-drift returns: no edge exists")
    edge_strength: float = Field(
        0.0, ge=0.0, le=0.5, description="lag-1 autocorrelation of standardised returns"
    )
    start_price: float = Field(300.0, gt=0.0)
    regimes: list[RegimeSpec] = Field(default_factory=_default_regimes, min_length=1)
    tail_df: float = Field(4.0, gt=2.0, le=1000.0, description="Student-t degrees of freedom")
    vol_persistence: float = Field(
        0.995, ge=0.0, lt=1.0, description="AR(1) of log-volatility per bar"
    )
    vol_of_vol: float = Field(0.05, ge=0.0, le=1.0)
    intraday_u_shape: float = Field(1.5, ge=0.0, le=10.0, description="extra vol at open/close")
    overnight_vol_ratio: float = Field(
        0.5, ge=0.0, le=5.0, description="overnight gap sd as a fraction of a session's sd"
    )
    base_volume: float = Field(50_000.0, gt=0.0, description="mean shares per minute bar")

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
    return_horizons: list[int] = Field(default_factory=lambda: [1, 5, 15, 60], min_length=1)
    vol_windows: list[int] = Field(default_factory=lambda: [30, 120], min_length=1)
    range_vol: list[Literal["parkinson", "garman_klass"]] = Field(
        default_factory=_range_estimators,
        min_length=1,
        description="range-based volatility estimators (computed over vol_windows)",
    )
    rsi_window: int = Field(14, ge=2)
    macd: tuple[int, int, int] = (12, 26, 9)
    bollinger_window: int = Field(20, ge=2)
    bollinger_k: float = Field(2.0, gt=0.0)
    atr_window: int = Field(14, ge=2)
    volume_z_window: int | Literal["auto"] = Field(
        "auto",
        description="bars of the volume z-score; 'auto': one session of intraday bars (390 "
        "one-minute bars), 63 daily bars (a quarter)",
    )
    coarse_minutes: list[int] = Field(default_factory=lambda: [5, 15])
    coarse_vol_window: int = Field(
        12, ge=2, description="realized-vol window of the coarse bars, in coarse bars"
    )
    normalisation: Literal["rolling", "expanding", "train_fit"] = "rolling"
    norm_window: int | Literal["auto"] = Field(
        "auto",
        description="bars of the rolling normalisation; also the warm-up of 'expanding'; "
        "'auto': five sessions of intraday bars (1,950 one-minute bars), 126 daily bars "
        "(half a year)",
    )
    norm_clip: float | None = Field(
        10.0, gt=0.0, description="normalised values are clipped to +-norm_clip (None: no clip)"
    )
    exogenous_path: Path | None = None
    exogenous_max_staleness_minutes: int = Field(1440, ge=1)

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

    enabled: bool = True
    n_states: int = Field(3, ge=2, le=8)
    n_init: int = Field(5, ge=1, le=100)
    n_iter: int = Field(200, ge=10)
    tol: float = Field(1e-4, gt=0.0)
    covariance_type: Literal["diag", "full"] = "diag"
    min_occupancy: float = Field(0.02, ge=0.0, lt=0.5)
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
        description="walk_forward: test blocks (data cut into n_splits + 1); kfold: folds",
    )
    anchored: bool = Field(
        True,
        description="walk_forward: training from the first block (False: the previous block only)",
    )
    n_groups: int = Field(6, ge=2, le=50, description="cpcv: contiguous groups N")
    n_test_groups: int = Field(2, ge=1, le=49, description="cpcv: test groups k per split")
    embargo_bars: int | Literal["auto"] = Field(
        "auto",
        description="training samples dropped after each test block, in bars; 'auto': one "
        "session of intraday bars (390 one-minute bars), 5 daily bars (a week)",
    )
    embargo_fraction: float | None = Field(
        None,
        ge=0.0,
        lt=1.0,
        description="embargo as a share of all samples (ceil); replaces embargo_bars when set",
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

    commission_per_share: float = Field(0.005, ge=0.0)
    half_spread_bps: float = Field(1.0, ge=0.0)
    slippage_vol_mult: float | Literal["auto"] = Field(
        "auto",
        description="slippage per unit of traded notional / the ETF's per-bar volatility; "
        "'auto': 0.1 x sqrt(one minute / bar length), i.e. 0.1 of the one-minute volatility "
        "at any bar length (0.1 on one-minute bars, 0.1 / sqrt(390) on daily bars)",
    )


class MasksConfig(_Section):
    """Risk action-mask layers; each can be switched off."""

    session: bool = True
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
    risk_budget: bool = True
    target_vol_annual: float = Field(0.6, gt=0.0)
    regime: bool = True
    high_vol_regime_cap: float = Field(0.5, ge=0.0, le=1.0)
    drawdown: bool = True
    drawdown_limit: float = Field(0.1, gt=0.0, lt=1.0)
    min_hold_bars: int = Field(5, ge=0)

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
        default_factory=lambda: [-1.0, -0.5, 0.0, 0.5, 1.0], min_length=2
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
    initial_cash: float = Field(100_000.0, gt=0.0)
    drawdown_penalty: float = Field(
        0.0, ge=0.0, description="reward minus this x the increase of the session drawdown"
    )
    vol_halflife_bars: int = Field(
        60,
        ge=1,
        description="half-life of the EWMA volatility of the underlying (slippage, risk budget)",
    )
    costs: CostsConfig = Field(default_factory=CostsConfig)
    masks: MasksConfig = Field(default_factory=MasksConfig)

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

    algo: Literal["ppo", "maskable_ppo", "sentio_ppo"] = "maskable_ppo"
    extractor: Literal["mlp", "transformer"] = "mlp"
    d_model: int = Field(32, ge=4, le=1024)
    n_heads: int = Field(4, ge=1, le=32)
    n_layers: int = Field(2, ge=1, le=12)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    quantile_critic: bool = False
    n_quantiles: int = Field(32, ge=2, le=256)
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
    value_clip: float | None = Field(None, gt=0.0)
    cvar_alpha: float = Field(0.1, gt=0.0, le=1.0)
    cvar_beta: float = Field(0.0, ge=0.0, le=1.0)
    regime_gating: bool = False
    flat_prior: float = Field(
        2.0,
        ge=0.0,
        le=10.0,
        description="initial logit advantage of the flat action over every other (0: a "
        "uniform initial policy); an agent then has to earn its way into positions",
    )
    learning_rate: float = Field(3e-4, gt=0.0, lt=1.0)
    n_steps: int | Literal["auto"] = Field(
        "auto",
        description="steps per environment in one rollout; 'auto': 2,048 env steps per "
        "update spread over train.n_envs on the CPU (32 at 64 environments), 16 on a GPU "
        "(sentio.agents.training.rollout_shape)",
    )
    batch_size: int | Literal["auto"] = Field(
        "auto",
        description="minibatch size of the update; 'auto': 256 on the CPU, a quarter of "
        "the rollout on a GPU (4 minibatches per epoch)",
    )
    n_epochs: int = Field(4, ge=1)
    gamma: float = Field(0.5, gt=0.0, le=1.0)
    gae_lambda: float = Field(0.95, ge=0.0, le=1.0)
    clip_range: float = Field(0.2, gt=0.0, lt=1.0)
    ent_coef: float = Field(0.0, ge=0.0)
    vf_coef: float = Field(0.5, ge=0.0)
    max_grad_norm: float = Field(0.5, gt=0.0)

    @field_validator("reward_scale")
    @classmethod
    def _positive_scale(cls, v: float | str) -> float | str:
        if v != "auto" and not (isinstance(v, float | int) and 0 < v < 1e9):
            raise ValueError(f"must be 'auto' or a number > 0, got {v!r}")
        return v


class TrainConfig(_Section):
    """Training budget, seeds, device and checkpoints (train stage)."""

    total_timesteps: int = Field(200_000, ge=1)
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
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    checkpoint_every: int = Field(10_000, ge=1)
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
        description="the chosen checkpoint's t statistic of per-episode validation returns "
        "below this: the agent stands aside (stays flat)",
    )
    tensorboard: bool = False
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


class ReportConfig(_Section):
    """Bootstrap confidence intervals of the report stage."""

    bootstrap_resamples: int = Field(2000, ge=100)
    ci_level: float = Field(0.95, gt=0.5, lt=1.0)
    seed: int = Field(0, ge=0)


class RegistryConfig(_Section):
    """Champion / challenger promotion gate (registry stage; see :mod:`sentio.registry`)."""

    min_dsr: float = Field(
        0.95,
        ge=0.0,
        le=1.0,
        description="the candidate's deflated Sharpe ratio (stitched out of sample) must reach it",
    )
    max_drawdown: float = Field(
        0.25,
        gt=0.0,
        le=1.0,
        description="the candidate's stitched out-of-sample maximum drawdown must not exceed it",
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


class PathsConfig(_Section):
    """Where outputs go. Relative paths are relative to the working directory."""

    workdir: Path = Field(Path(".sentio"), description="stage outputs, caches, Prefect results")
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


class SentioConfig(_Section):
    """The whole configuration."""

    universe: UniverseConfig = Field(default_factory=UniverseConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    synth: SynthConfig = Field(default_factory=SynthConfig)
    features: FeaturesConfig = Field(default_factory=FeaturesConfig)
    regimes: RegimesConfig = Field(default_factory=RegimesConfig)
    cv: CVConfig = Field(default_factory=CVConfig)
    env: EnvConfig = Field(default_factory=EnvConfig)
    agent: AgentConfig = Field(default_factory=AgentConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    paths: PathsConfig = Field(default_factory=PathsConfig)

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
        for name, value, low, high in (
            ("agent.n_steps", a.n_steps, 8, None),
            ("agent.batch_size", a.batch_size, 2, None),
            ("train.n_envs", self.train.n_envs, 1, 65_536),
            *((name, _setting(self, name), low, None) for name, low in _AUTO_MINIMUM.items()),
        ):
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


def training_settings_hash(cfg: SentioConfig) -> str:
    """Hash of every setting that changes what one training computes.

    ``agent``, ``env``, ``universe`` and ``train`` less the seed list and
    ``train.max_parallel``: those decide which trainings run and how many at once, not
    what one of them computes.
    """
    dump = cfg.model_dump(mode="json")
    train = {k: v for k, v in dump["train"].items() if k not in ("seeds", "max_parallel")}
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
        for part in parents:
            node = node[part]
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
