"""Live use of registered models: hash-verified bundles, causal replays and signals.

A *bundle* is everything one registered version needs to act on new bars, read from the
registry's verified bytes only (:meth:`~sentio.registry.Registry.verify`; the model is
unpickled by :meth:`~sentio.registry.Registry.load_model`, which checks every hash first):

* ``model.zip`` -- the SB3 model (class from the manifest's ``algo``), loaded on the CPU;
* ``config.yaml`` -- the full configuration of the training run (features, regimes,
  trading model);
* ``normaliser.json`` -- the fold's normaliser, required when
  ``features.normalisation = "train_fit"``;
* ``regime_model.json`` -- the fold's regime model, required when ``regimes.enabled``;
* the manifest's ``extra``: ``fold``, ``seed``, ``train_start`` / ``train_end``,
  ``window_start`` / ``window_end`` and ``feature_columns``.

:meth:`ModelBundle.market` builds exactly the arrays the training pipeline builds for the
same canonical bars (:func:`sentio.stages.fold_market`): :func:`~sentio.features.build_features`
with the version's configuration, the stored normaliser, the stored regime model's
causally *filtered* probabilities (from the first bar given), then
:func:`~sentio.env.build_market`. Everything is causal, so the values at a bar do not
change when later bars are appended. (Rolling indicators and the regime filter do depend on
where the bar history starts: feed the same history the model was trained and evaluated on,
extended by newer bars. The dependence dies out with distance: paper trading and the
CLI's signal build the market of a run from a tail of the history that starts far enough
back, on the features' exact-recomputation period, and check it against the previous
run's rows, :mod:`sentio.live_state`.) :meth:`ModelBundle.ingest` also says which series
were derived from the underlying of the bars given (:class:`CanonicalBars`).

**The start rule.** A replay of the policy (:func:`replay`; what :func:`signal` and paper
trading run) starts flat, with ``env.initial_cash``, at the first bar after the version's
``train_end`` (so it never runs in-sample), or at the first bar with a full observation
window (``env.window`` feature rows) if that is later; an explicit ``start`` replaces the
rule (resolved to the first bar at or after it). An explicit start at or before
``train_end`` replays bars the model was trained on: the signal and the paper summary say
so (``in_sample``: true when the replay's first bar is at or before ``extra.train_end``),
and the CLI warns on stderr. From there the policy acts deterministically at the close of
every bar with the training simulator (fills at the next bar's open, costs, masks, forced
exits at the close); the account is path dependent, which is why the replay starts at a
fixed bar. A replay can also resume from the simulator's account state that an earlier
replay captured at a bar's close (``resume`` / ``capture_row`` of :func:`replay`; the same
loop, the same steps): what lets paper trading and the CLI's signal continue a path
instead of replaying it from its start (:mod:`sentio.paper`).

**Replay rows.** One row per bar ``t`` from the start to the last bar: the position held
over bar ``t`` (filled at its open), the equity at its close, the costs paid in it, and the
decision taken at its close (action, target exposure, regime probabilities, mask). The
first row is the start bar itself: flat, initial equity, its decision. Unlike
:func:`sentio.env.backtest.backtest` there is no liquidation after the last bar: a
position stays open until the next bar arrives.

**The last bar is provisional.** What the simulator needs to know about the bar after the
last one (does it open a new session? how far is it from the close?) comes from the
exchange calendar (:func:`with_next_bar`): the next minute of the same session, or the
next session's open. When that bar does arrive, the last bar's row is the one a replay
over more bars makes. If the data then lacks that bar (a bar that never arrives, e.g. a
session's 15:59 bar), a replay over the later bars takes the facts from the bar that
does follow, and re-decides that one bar: its forced exit (``flat_at_close`` when it
turns out to be the session's last), ``exposure`` / ``equity`` / ``position`` / costs
after it, and the decision and masks at its close may change. Every earlier bar is final
(its next bar is in the data). Paper trading therefore treats the ledger's last row as
provisional (:mod:`sentio.paper`).

:func:`signal` here is stateless (it replays from the start on every call);
``sentio signal`` runs :func:`sentio.paper.signal`, which keeps the replay as a ledger with
a state and gives the same JSON (:func:`signal_of_row` builds it from the last row).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import yaml

from sentio.config import SentioConfig, config_from_dict
from sentio.env.backtest import BacktestResult, backtest
from sentio.env.decisions import (
    STAND_ASIDE,
    Decision,
    action_picker,
    decide_and_step,
    one_torch_thread,
)
from sentio.env.market import LONG, SHORT, UNDERLYING, MarketData
from sentio.env.simulator import FLAT, MASK_LAYERS, BatchSimulator, EnvParams, layer_names
from sentio.env.simulator import FORCED_EXITS as STEP_FORCED_EXITS
from sentio.errors import DataError
from sentio.regimes import RegimeModel
from sentio.registry import Registry, RegistryError
from sentio.times import Timestamp, as_utc, from_datetime64, iso_z, to_datetime64

__all__ = [
    "NORMALISER_FILE",
    "CanonicalBars",
    "REGIME_MODEL_FILE",
    "ModelBundle",
    "Replay",
    "Timestamp",
    "as_utc",
    "load_bundle",
    "replay",
    "signal",
    "last_bar_given",
    "signal_of_row",
]

NORMALISER_FILE = "normaliser.json"
"""Version file holding the fold's normaliser (``features.normalisation = "train_fit"``)."""
REGIME_MODEL_FILE = "regime_model.json"
"""Version file holding the fold's regime model (``regimes.enabled``)."""


FILL_NOTE = (
    "decided at the close of this bar; the order fills at the OPEN of the next bar "
    "(plus costs), as in training and backtests"
)


# --------------------------------------------------------------------------------------
# the bundle


@dataclasses.dataclass(frozen=True)
class CanonicalBars:
    """Canonical, universe-complete bars (:meth:`ModelBundle.ingest`).

    Attributes:
        frame: the bars.
        derived: the symbols whose prices are derived from the underlying (here, by
            ingest, or upstream per a provenance sidecar), not traded prices.
        derived_here: those of ``derived`` that were derived from the underlying of these
            bars (missing from the input; a daily-reset series depends on every session
            since the first one given).
    """

    frame: pl.DataFrame
    derived: list[str]
    derived_here: list[str]


Bars = pl.DataFrame | CanonicalBars | str | os.PathLike[str]
"""Canonical bars as a frame, or bar file(s) to ingest (a path, comma-separated paths), or
the :class:`CanonicalBars` of an earlier :meth:`ModelBundle.ingest`."""


@dataclasses.dataclass(frozen=True)
class ModelBundle:
    """One registered version, ready to act on bars (see the module docstring).

    Attributes:
        version: the version id.
        manifest: its manifest.
        cfg: the configuration it was trained with.
        model: the SB3 model (CPU).
        normaliser: the fold's normaliser parameters, or None.
        regime_model: the fold's regime model, or None.
        workdir: where bar files are ingested (``<workdir>/ingest/<key>/``, content
            cached); by default the registry's working directory.
    """

    version: str
    manifest: dict[str, Any]
    cfg: SentioConfig
    model: Any
    normaliser: dict[str, Any] | None
    regime_model: RegimeModel | None
    workdir: Path

    @property
    def extra(self) -> dict[str, Any]:
        """The manifest's ``extra`` (fold, seed, training range, window, feature columns)."""
        return dict(self.manifest.get("extra") or {})

    @property
    def feature_columns(self) -> list[str]:
        """The feature names the model was trained on, in order."""
        cols = self.extra.get("feature_columns")
        if not isinstance(cols, list) or not cols:
            raise RegistryError(
                f"version {self.version}: manifest extra lacks 'feature_columns' (the feature "
                "names the model was trained on)"
            )
        return [str(c) for c in cols]

    @property
    def train_end(self) -> dt.datetime | None:
        """The timestamp of the last bar of the version's training ranges, if recorded."""
        value = self.extra.get("train_end")
        return None if value is None else as_utc(value, f"version {self.version} train_end")

    def in_sample(self, first: Timestamp) -> bool:
        """Whether a replay whose first bar is ``first`` starts in the training range.

        True when ``first`` is at or before :attr:`train_end`; False when it is later or
        the manifest records no ``train_end``.
        """
        train_end = self.train_end
        return train_end is not None and as_utc(first, "first bar") <= train_end

    @property
    def instruments(self) -> tuple[str, str]:
        """The long and the short ETF's symbols."""
        return (self.cfg.universe.long, self.cfg.universe.short)

    @property
    def instruments_and_underlying(self) -> tuple[str, str, str]:
        """The underlying's, the long and the short ETF's symbols: the market's universe."""
        u = self.cfg.universe
        return (u.underlying, u.long, u.short)

    def params(self) -> EnvParams:
        """The trading model of the version's configuration."""
        return EnvParams.from_config(self.cfg)

    def bars_frame(self, bars: Bars) -> pl.DataFrame:
        """Canonical, universe-complete bars from a frame or from bar file(s).

        Files go through the pipeline's ingest stage (:func:`sentio.stages.ingest_stage`,
        with the version's ``ingest`` / ``universe`` settings, content cached under
        :attr:`workdir`): a bad file gets the same one-line contract errors as
        ``sentio run``. A frame is taken as canonical; missing leveraged ETFs are derived
        from the underlying as ingest does.
        """
        return self.canonical_bars(bars)[0]

    def canonical_bars(self, bars: Bars) -> tuple[pl.DataFrame, list[str]]:
        """:meth:`bars_frame` and the symbols whose prices are derived, not traded prices.

        Derived: completed here or by ingest from the underlying with a daily reset, or
        marked derived upstream (a provenance sidecar, e.g. ``sentio synth``). Signals and
        paper trading report them, as the report does. A frame that already holds both
        ETFs carries no provenance: its prices count as traded.
        """
        got = self.ingest(bars)
        return got.frame, got.derived

    def ingest(self, bars: Bars, *, ongoing: bool = False) -> CanonicalBars:
        """:meth:`canonical_bars`, also naming the symbols derived from these very bars.

        ``ongoing``: bar files of a live signal, whose last session may be in progress
        (expected only up to its last bar, :func:`sentio.data.ingest.ingest_files`)."""
        from sentio.data.leverage import ensure_universe
        from sentio.stages.common import resolve_inputs
        from sentio.stages.ingest import ingest_stage

        if isinstance(bars, CanonicalBars):
            return bars
        if isinstance(bars, pl.DataFrame):
            need = {"timestamp", "symbol", "open", "close"}
            missing = sorted(need - set(bars.columns))
            if missing:
                raise DataError(f"bars frame lacks columns {missing} (canonical bars expected)")
            complete, derived = ensure_universe(bars, self.cfg.universe)
            return CanonicalBars(complete, sorted(derived), sorted(derived))
        summary = ingest_stage(resolve_inputs(str(bars)), self.cfg, self.workdir, ongoing=ongoing)
        derived = sorted(summary.get("derived_symbols") or [])
        upstream: set[str] = set()
        report = summary.get("report")
        if report and Path(report).is_file():  # what ingest found marked derived upstream
            upstream = set(json.loads(Path(report).read_text()).get("derived_symbols") or [])
        here = sorted(set(derived) - upstream)
        return CanonicalBars(pl.read_ipc(summary["output"]), derived, here)

    def market(self, bars: Bars) -> MarketData:
        """The market arrays the training pipeline builds for these bars (module docstring).

        Raises:
            DataError: too few bars for the warm-ups, or the features built differ from
                the manifest's ``feature_columns``.
        """
        from sentio.env import build_market
        from sentio.features import apply_normaliser, build_features
        from sentio.regimes import filter_probs, regime_observations

        frame = self.bars_frame(bars)
        cfg = self.cfg
        features = build_features(frame, cfg)
        if features.height == 0:
            raise DataError(
                f"version {self.version}: too few bars for the feature warm-up (the longest "
                f"indicator window plus features.norm_window = {cfg.features.norm_window})"
            )
        columns = [c for c in features.columns if c != "timestamp"]
        expected = self.feature_columns
        if columns != expected:
            missing = [c for c in expected if c not in columns]
            extra = [c for c in columns if c not in expected]
            detail = (
                f"missing {missing}, unexpected {extra}"
                if missing or extra
                else "same names in another order"
            )
            raise DataError(
                f"version {self.version}: the features built from the bars differ from the "
                f"{len(expected)} feature_columns the model was trained on ({detail})"
            )
        if self.normaliser is not None:
            features = apply_normaliser(features, self.normaliser)
        regimes = None
        if self.regime_model is not None:
            obs = regime_observations(frame, cfg)
            if obs.X.shape[0] == 0:
                raise DataError(
                    f"version {self.version}: too few bars of {cfg.universe.underlying} for the "
                    f"regime inputs' warm-up of {obs.warmup} bars"
                )
            probs = filter_probs(self.regime_model, obs.X)
            regimes = pl.DataFrame(
                {
                    "timestamp": obs.timestamps,
                    **{
                        f"p_regime_{i}": probs[:, i].astype("float32")
                        for i in range(probs.shape[1])
                    },
                }
            )
        return build_market(frame, features, regimes, cfg)

    def rows(
        self, market: MarketData, start: Timestamp | None = None, end: Timestamp | None = None
    ) -> tuple[int, int]:
        """The half-open market rows ``[a, b)`` with timestamps in ``[start, end]``."""
        ts = market.timestamps
        a = 0 if start is None else int(np.searchsorted(ts, to_datetime64(as_utc(start)), "left"))
        b = (
            market.n_rows
            if end is None
            else int(np.searchsorted(ts, to_datetime64(as_utc(end)), "right"))
        )
        if b - a < 2:
            raise DataError(
                f"version {self.version}: {max(b - a, 0)} market rows in "
                f"[{start or 'first'}, {end or 'last'}] (the bars' market rows span "
                f"{iso_z(from_datetime64(ts[0]))} .. {iso_z(from_datetime64(ts[-1]))}); need at least 2"
            )
        return a, b

    def backtest(
        self, bars: Bars, start: Timestamp | None = None, end: Timestamp | None = None
    ) -> BacktestResult:
        """Backtest the deterministic policy over the bars with timestamps in ``[start, end]``.

        One block (:func:`sentio.env.backtest.backtest`, its conventions: first decision at
        the close of the first row with a full observation window, liquidation at the
        close of the last row), the version's trading model.
        """
        market = self.market(bars)
        a, b = self.rows(market, start, end)
        with one_torch_thread():
            return backtest(
                self.model, market, self.params(), [(a, b)], instruments=self.instruments
            )

    def start_row(self, market: MarketData, start: Timestamp | None = None) -> int:
        """The first row of a replay (the module docstring's start rule).

        Raises:
            DataError: no bar at or after the start, or (explicit start) the start lies
                before the first row with a full observation window.
        """
        ts = market.timestamps
        first_full = self.params().window - 1
        last = iso_z(from_datetime64(ts[-1]))
        if start is None:
            train_end = self.train_end
            if train_end is None:
                raise RegistryError(
                    f"version {self.version}: manifest extra lacks 'train_end'; give a start"
                )
            row = max(int(np.searchsorted(ts, to_datetime64(train_end), "right")), first_full)
            if row >= market.n_rows:
                raise DataError(
                    f"version {self.version}: no bar after its training end {iso_z(train_end)} "
                    f"(the bars end {last}); live use never runs in-sample: give newer bars "
                    "or an explicit start"
                )
            return row
        t = as_utc(start, "start")
        row = int(np.searchsorted(ts, to_datetime64(t), "left"))
        if row >= market.n_rows:
            raise DataError(f"start {iso_z(t)}: no bar at or after it (the bars end {last})")
        if row < first_full:
            raise DataError(
                f"start {iso_z(t)}: the first decision needs {first_full + 1} feature rows "
                f"(env.window); the first possible start is {iso_z(from_datetime64(ts[first_full]))}"
            )
        return row


def _verified_json(files: dict[str, bytes], name: str, where: Path) -> Any:
    try:
        return json.loads(files[name].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise RegistryError(f"{where / name}: not valid JSON ({err})") from None


def load_bundle(
    registry: Registry, version: str | None = None, *, workdir: str | os.PathLike[str] | None = None
) -> ModelBundle:
    """Load ``version`` (None: the champion) from ``registry``, every file hash-verified.

    ``workdir`` is where bar files will be ingested (default: the registry root's parent,
    i.e. ``paths.workdir``).

    Raises:
        RegistryError: no champion, unknown version, a file whose sha256 differs from the
            manifest (nothing is unpickled then), or a version lacking a file its
            configuration needs.
    """
    if version is None:
        pointer = registry.champion()
        if pointer is None:
            raise RegistryError(
                f"no champion in {registry.root}: promote a version with "
                "`sentio models promote VERSION` (see `sentio models list`) or name one "
                "with --version"
            )
        version = str(pointer["version"])
    v = registry.get(version)
    files = registry.verify(version)  # every file's sha256, before anything is parsed
    config_name = v.manifest.get("config")
    if not config_name or str(config_name) not in files:
        raise RegistryError(f"version {version}: no configuration file in {v.path}")
    try:
        data = yaml.safe_load(files[str(config_name)].decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as err:
        raise RegistryError(f"{v.path / str(config_name)}: not a valid YAML file ({err})") from None
    cfg = config_from_dict(data, str(v.path / str(config_name)))
    if cfg.agent.algo != v.algo:
        raise RegistryError(
            f"version {version}: manifest algo {v.algo!r} differs from its configuration's "
            f"agent.algo {cfg.agent.algo!r}"
        )
    normaliser = None
    if cfg.features.normalisation == "train_fit":
        if NORMALISER_FILE not in files:
            raise RegistryError(
                f"version {version}: features.normalisation is train_fit but {v.path} holds "
                f"no {NORMALISER_FILE}"
            )
        normaliser = _verified_json(files, NORMALISER_FILE, v.path)
    regime_model = None
    if cfg.regimes.enabled:
        if REGIME_MODEL_FILE not in files:
            raise RegistryError(
                f"version {version}: regimes.enabled but {v.path} holds no {REGIME_MODEL_FILE}"
            )
        try:
            regime_model = RegimeModel.from_dict(_verified_json(files, REGIME_MODEL_FILE, v.path))
        except (KeyError, TypeError, ValueError, DataError) as err:
            raise RegistryError(f"{v.path / REGIME_MODEL_FILE}: bad regime model ({err})") from None
    # load_model re-reads and re-verifies the model's bytes and unpickles exactly those
    model = registry.load_model(version, device="cpu")
    return ModelBundle(
        version=version,
        manifest=v.manifest,
        cfg=cfg,
        model=model,
        normaliser=normaliser,
        regime_model=regime_model,
        workdir=Path(workdir) if workdir is not None else registry.root.parent,
    )


# --------------------------------------------------------------------------------------
# the causal replay


def with_next_bar(market: MarketData, calendar: str = "XNYS") -> MarketData:
    """``market`` with a placeholder row for the bar after its last one, from the calendar.

    The simulator reads two facts about bar ``t + 1`` when it decides at the close of
    ``t`` -- whether it opens a new session (the last-bar exit of ``flat_at_close``, the
    drawdown layer) and its minutes to the close (the session layer) -- and takes them from
    the next market row. At the end of the bars there is no next row yet; the exchange
    calendar knows both facts in advance, so the placeholder holds them: the next bar of
    the same session (bar length = the median spacing within sessions), or the next
    session's open. Its prices, features and regime probabilities repeat the last row's
    and are never used (a replay never steps into it). Without it, the last bar would
    count as its session's last (a forced exit) and the decision there would differ from
    the one made once the next bar is known.

    The placeholder is the calendar's expectation, not a bar: the decision at the last bar
    uses the calendar's facts about the next bar; if the data then lacks that bar (it never
    arrives), a replay over the later bars takes the facts from the bar that follows in
    the data and re-decides that one bar (its forced exit, exposure and equity after it,
    its decision and masks). The rows before the last bar never depend on the placeholder.
    """
    from sentio.calendar import sessions

    ts = market.timestamps
    last = from_datetime64(ts[-1])
    daily = not bool((market.minutes_to_close > 0).any())
    if daily:
        nxt, new_session, minutes = ts[-1] + np.timedelta64(1, "D"), True, 0.0
    else:
        same = market.session[1:] == market.session[:-1]
        gaps = np.diff(ts)[same]
        step = np.median(gaps) if gaps.size else np.timedelta64(60, "s")
        table = sessions(
            last.date() - dt.timedelta(days=1), last.date() + dt.timedelta(days=14), calendar
        )
        current = table.filter((pl.col("open") <= last) & (pl.col("close") > last))
        candidate = from_datetime64(ts[-1] + step)
        if current.height and candidate < current["close"][0]:
            start, close, new_session = candidate, current["close"][0], False
        else:
            later = table.filter(pl.col("open") > last)
            if later.height == 0:
                raise DataError(f"calendar {calendar}: no session after {iso_z(last)}")
            start, close, new_session = later["open"][0], later["close"][0], True
        nxt = to_datetime64(start)
        minutes = (close - start).total_seconds() / 60.0

    def grow(a: np.ndarray, value: Any = None) -> np.ndarray:
        extra = a[-1:] if value is None else np.asarray([value], dtype=a.dtype)
        return np.ascontiguousarray(np.concatenate([a, extra]))

    last_bar = grow(market.last_bar, True)
    last_bar[-2] = new_session
    return dataclasses.replace(
        market,
        timestamps=grow(ts, nxt),
        features=grow(market.features),
        regime_probs=grow(market.regime_probs),
        open=np.ascontiguousarray(np.concatenate([market.open, market.close[-1:]])),
        close=grow(market.close),
        session=grow(market.session, int(market.session[-1]) + int(new_session)),
        last_bar=last_bar,
        minutes_to_close=grow(market.minutes_to_close, minutes),
        vol=grow(market.vol),
    )


@dataclasses.dataclass(frozen=True)
class Replay:
    """The outcome of :func:`replay`: one row per bar, and whether equity was wiped out.

    ``captured``: the simulator's account state (:attr:`BatchSimulator.ACCOUNT_STATE
    <sentio.env.simulator.BatchSimulator.ACCOUNT_STATE>`, one account) at the close of the
    replay's ``capture_row``, before the decision there; None when not asked for or not
    reached (a ruin before it).
    """

    frame: pl.DataFrame
    ruined: bool
    captured: dict[str, np.ndarray] | None = None


FORCED_EXITS = (*STEP_FORCED_EXITS, "ruin")
"""Values of the replay's ``forced_exit`` column ("" when nothing was forced)."""


def replay_columns(n_actions: int, n_regimes: int) -> list[str]:
    """The replay's columns, in order (see :func:`replay`)."""
    return [
        "timestamp",
        "open_underlying",
        "close_underlying",
        "open_long",
        "close_long",
        "open_short",
        "close_short",
        "instrument_held",
        "shares_held",
        "position",
        "exposure",
        "equity",
        "returns",
        "costs",
        "costs_cash",
        "forced_exit",
        "action",
        "target_exposure",
        "target_instrument",
        *(f"p_regime_{k}" for k in range(n_regimes)),
        "regime",
        *(f"blocked_{i}" for i in range(n_actions)),
        "mask_reasons",
    ]


def _instrument(x: float, names: tuple[str, str]) -> str:
    return names[0] if x > 0 else names[1] if x < 0 else "flat"


def mask_reasons(bits: np.ndarray, grid: np.ndarray) -> str:
    """``"+1: risk_budget,session; +0.5: risk_budget"``: every blocked action and its layers."""
    return "; ".join(
        f"{grid[i]:+g}: {','.join(layer_names(int(b)))}" for i, b in enumerate(bits) if b
    )


def replay(
    bundle: ModelBundle,
    market: MarketData,
    start_row: int,
    end_row: int,
    *,
    resume: dict[str, np.ndarray] | None = None,
    capture_row: int | None = None,
) -> Replay:
    """Run the deterministic policy causally from ``start_row`` to ``end_row`` (inclusive).

    The account starts flat with ``env.initial_cash`` at ``start_row`` or, with ``resume``,
    in that simulator account state (:meth:`BatchSimulator.get_state
    <sentio.env.simulator.BatchSimulator.get_state>` of one account taken at the close of
    the bar now at ``start_row``, before its decision: what ``capture_row`` returns; its
    ``t`` / ``end`` row indices are replaced by this market's); each step is the
    training simulator's (:class:`~sentio.env.simulator.BatchSimulator` in backtest mode,
    the same as :func:`sentio.env.backtest.backtest`), and nothing at row ``t`` reads a
    later row. Columns (:func:`replay_columns`), per bar ``t``:

    * ``timestamp`` (bar start, UTC) and the ``open_*`` / ``close_*`` prices of the
      underlying, the long and the short ETF;
    * ``instrument_held``, ``shares_held``, ``position``: what was held over the bar (filled
      at its open; before any forced exit at its close), ``position`` as signed value /
      equity at the close (the backtest's ``position``);
    * ``exposure``: signed exposure at the close, after forced exits; ``equity`` at the
      close; ``returns`` the equity return over the bar; ``costs`` (fraction of the equity
      before the bar) and ``costs_cash``; ``forced_exit`` (:data:`FORCED_EXITS`);
    * the decision at the close: ``action`` (grid index), ``target_exposure``,
      ``target_instrument`` (long / short symbol or ``flat``), ``p_regime_<k>`` and
      ``regime`` (argmax; -1 without regimes) as the policy saw them, ``blocked_<i>`` (the
      :data:`~sentio.env.simulator.LAYER_BITS` blocking action ``i``; 0 = allowed) and
      ``mask_reasons`` (:func:`mask_reasons`).

    The first row (the start bar) holds nothing (flat, initial equity, no costs); with
    ``resume`` its held-over-the-bar columns (``instrument_held`` .. ``forced_exit``) are
    not known here (they belong to the step into it, which an earlier replay made) and
    the row is the caller's to drop. If equity is wiped out the replay stops at that bar
    (``forced_exit = "ruin"``, ``exposure`` 0 as in :func:`sentio.env.backtest.backtest`,
    action flat). When ``end_row`` is the market's last row, the last row is provisional
    (module docstring, :func:`with_next_bar`).

    ``capture_row`` (in ``[start_row, end_row]``): return the account state at the close
    of that row, before its decision, as :attr:`Replay.captured` (what a later replay
    resumes from). One loop either way: a resumed replay steps exactly as the replay from
    the start does from that row on.

    Raises:
        MaskedActionError: the policy chose a masked action (a bug in the policy).
    """
    with one_torch_thread():
        return _replay(bundle, market, start_row, end_row, resume, capture_row)


def _replay(
    bundle: ModelBundle,
    market: MarketData,
    start_row: int,
    end_row: int,
    resume: dict[str, np.ndarray] | None,
    capture_row: int | None,
) -> Replay:
    p = bundle.params()
    n = market.n_rows
    if not (p.window - 1 <= start_row <= end_row < n):
        raise DataError(
            f"replay rows must satisfy window-1 = {p.window - 1} <= start {start_row} <= "
            f"end {end_row} < {n}"
        )
    if capture_row is not None and not start_row <= capture_row <= end_row:
        raise DataError(f"capture row {capture_row} outside the replay's [{start_row}, {end_row}]")
    if end_row == n - 1:  # the calendar's facts about the bar after the last one
        market = with_next_bar(market, bundle.cfg.universe.calendar)
    sim = BatchSimulator(market, p, 1, backtest=True)
    # the episode may run to the row after end_row; the replay never steps past end_row
    sim.reset(np.zeros(1, dtype=np.int64), np.array([start_row]), np.array([end_row + 1]))
    if resume is not None:
        state = {k: np.asarray(v) for k, v in resume.items()}
        state["t"], state["end"] = sim.t.copy(), sim.end.copy()  # this market's rows
        sim.set_state(state)

    def masked(t: int, a: int, bits: np.ndarray) -> str:
        return (
            f"the policy of version {bundle.version} chose a masked action at "
            f"{iso_z(from_datetime64(market.timestamps[t]))}"
        )

    log = _ReplayLog(end_row - start_row + 1, p.n_actions, float(sim.equity[0]))
    pick = action_picker(bundle.model, sim)
    captured = sim.get_state() if capture_row == start_row else None
    for d in decide_and_step(sim, pick, masked=masked, stop_row=end_row):
        log.decided(d)
        if d.result is not None:
            log.stepped(d, p.flat_action)
            if capture_row is not None and int(sim.t[0]) == capture_row and not log.ruined:
                captured = sim.get_state()  # at the close of capture_row, before deciding
    return log.replay(bundle, market, start_row, captured)


class _ReplayLog:
    """The replay's per-bar columns: row ``i`` holds what was held over bar ``start + i``
    (from the step into it) and the decision at its close."""

    def __init__(self, m: int, n_actions: int, equity: float) -> None:
        self.i = 0
        self.ruined = False
        self.inst = np.zeros(m, dtype=np.int64)
        self.shares = np.zeros(m)
        self.position = np.zeros(m)
        self.exposure = np.zeros(m)
        self.equity = np.zeros(m)
        self.prev_equity = np.zeros(m)
        self.costs_cash = np.zeros(m)
        self.forced = np.zeros(m, dtype=np.int64)
        self.action = np.zeros(m, dtype=np.int64)
        self.blocked = np.zeros((m, n_actions), dtype=np.uint8)
        self.equity[0] = self.prev_equity[0] = equity

    def decided(self, d: Decision) -> None:
        """The decision at the close of the current row."""
        self.blocked[self.i] = d.blocked
        self.action[self.i] = d.action

    def stepped(self, d: Decision, flat_action: int) -> None:
        """The step into the next bar: a new row with what was held over it."""
        res = d.result
        assert res is not None
        self.i += 1
        i = self.i
        self.inst[i], self.shares[i] = int(res.inst[0]), float(res.shares[0])
        self.position[i] = float(res.position[0])
        self.forced[i] = int(res.forced_exit[0])
        self.exposure[i] = float(res.exposure[0])
        self.equity[i], self.prev_equity[i] = float(res.equity[0]), d.equity_before
        self.costs_cash[i] = float(res.costs[0])
        if bool(res.terminated[0]):  # ruin: nothing more to decide
            self.ruined = True
            # the account is closed out, as backtest() records it (the simulator's exposure
            # is scaled by a non-positive equity and means nothing)
            self.exposure[i] = 0.0
            self.forced[i] = FORCED_EXITS.index("ruin")
            self.action[i] = flat_action
            self.blocked[i] = 0

    def replay(
        self,
        bundle: ModelBundle,
        market: MarketData,
        start_row: int,
        captured: dict[str, np.ndarray] | None = None,
    ) -> Replay:
        """The :class:`Replay` of the rows logged (:func:`replay_columns`)."""
        m = self.i + 1
        rows = np.arange(start_row, start_row + m)
        prev = self.prev_equity[:m]
        with np.errstate(divide="ignore", invalid="ignore"):
            returns = np.where(prev > 0, self.equity[:m] / prev - 1.0, -1.0)
            cost_frac = np.where(prev > 0, self.costs_cash[:m] / prev, 0.0)
        grid, names = bundle.params().grid, bundle.instruments
        inst_names = {FLAT: "flat", LONG: names[0], SHORT: names[1]}
        actions, blocked = self.action[:m], self.blocked[:m]
        K = market.n_regimes
        probs = market.regime_probs[rows].astype(np.float64)
        opens, closes = market.open, market.close
        data: dict[str, Any] = {
            "timestamp": pl.Series(market.timestamps[rows]).cast(pl.Datetime("us", "UTC")),
            "open_underlying": opens[rows, UNDERLYING],
            "close_underlying": closes[rows, UNDERLYING],
            "open_long": opens[rows, LONG],
            "close_long": closes[rows, LONG],
            "open_short": opens[rows, SHORT],
            "close_short": closes[rows, SHORT],
            "instrument_held": [inst_names[int(k)] for k in self.inst[:m]],
            "shares_held": self.shares[:m],
            "position": self.position[:m],
            "exposure": self.exposure[:m],
            "equity": self.equity[:m],
            "returns": returns,
            "costs": cost_frac,
            "costs_cash": self.costs_cash[:m],
            "forced_exit": [FORCED_EXITS[int(k)] for k in self.forced[:m]],
            "action": actions,
            "target_exposure": grid[actions],
            "target_instrument": [_instrument(float(x), names) for x in grid[actions]],
            **{f"p_regime_{k}": probs[:, k] for k in range(K)},
            "regime": probs.argmax(axis=1).astype(np.int64) if K else np.full(m, -1, np.int64),
            **{f"blocked_{j}": pl.Series(blocked[:, j], dtype=pl.UInt8) for j in range(grid.size)},
            "mask_reasons": [mask_reasons(b, grid) for b in blocked],
        }
        frame = pl.DataFrame(data).select(replay_columns(grid.size, K))
        return Replay(frame=frame, ruined=self.ruined, captured=captured)


# --------------------------------------------------------------------------------------
# signals


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(float(x)) else None


def signal(
    bundle: ModelBundle,
    bars: Bars,
    *,
    start: Timestamp | None = None,
    end: Timestamp | None = None,
) -> dict[str, Any]:
    """The decision at the close of the last bar (or of the last bar at or before ``end``).

    The account is simulated causally from the start rule of the module docstring (or
    ``start``) to that bar (:func:`replay`); the decision uses bars up to it only, plus the
    calendar's facts about the next bar (:func:`with_next_bar`: does it open a new session,
    how far is it from the close). So appending later bars does not change it, with one
    exception: the decision at the last bar uses the calendar's facts about the next bar;
    if the data then lacks that bar, the replay re-decides that one bar (its forced exit,
    the account after it, the decision and mask at its close). Returns a JSON-able dict:

    * ``version``, ``timestamp`` (the bar's START, UTC ISO-8601), ``action`` (grid index),
      ``target_exposure``, ``instrument`` (long / short symbol or ``"flat"``);
    * ``bars_end``: the last bar of the universe's underlying, long or short ETF in the
      bars given (at or before ``end``).
      Later than ``timestamp`` when the later bars lack an instrument (a traded ETF's bar
      that has not arrived yet): the decision is at the last bar every instrument has;
    * ``regime_probabilities`` (``{"regime_0": p, ...}``, regime 0 the calmest) and
      ``regime`` (the most likely; null without regimes);
    * ``mask``: per action ``{"action", "target_exposure", "instrument", "allowed",
      "blocked_by"}`` (the layer names blocking it);
    * ``account``: ``equity`` and ``exposure`` at the close (after forced exits),
      ``instrument_held`` / ``shares_held`` / ``position`` over the bar,
      ``initial_equity``, ``since`` (the replay's first bar) and ``bars`` (bars replayed);
    * ``fills``: when the order fills (the open of the next bar) and ``note``;
    * ``derived_symbols``: the symbols whose prices are derived from the underlying (a
      daily-reset leveraged series), not traded prices: a signal on derived prices is
      only as good as that approximation;
    * ``in_sample``: true when the replay's first bar is at or before the version's
      ``train_end`` (an explicit ``start`` in the training range: the account replays bars
      the model was trained on); false otherwise, and when the manifest records no
      ``train_end``;
    * ``stands_aside``: true when the model's training found no edge on its held-out
      episodes (:mod:`sentio.agents.selection`): its every decision is flat.
    """
    got = bundle.ingest(bars, ongoing=True)
    frame, derived = got.frame, got.derived
    market = bundle.market(frame)
    first = bundle.start_row(market, start)
    last = market.n_rows - 1
    if end is not None:
        last = (
            int(np.searchsorted(market.timestamps, to_datetime64(as_utc(end, "end")), "right")) - 1
        )
        if last < first:
            raise DataError(
                f"end {end}: before the replay's start {iso_z(from_datetime64(market.timestamps[first]))}"
            )
    result = replay(bundle, market, first, last)
    return signal_of_row(
        bundle,
        result.frame.row(-1, named=True),
        since=result.frame["timestamp"][0],
        bars=result.frame.height,
        ruined=result.ruined,
        derived=derived,
        bars_end=last_bar_given(frame, bundle.instruments_and_underlying, end),
    )


def last_bar_given(
    frame: pl.DataFrame, symbols: tuple[str, ...], end: Timestamp | None = None
) -> dt.datetime:
    """The last bar of any of ``symbols`` (the universe's) in canonical bars (at or before
    ``end``); other symbols a vendor file holds do not count."""
    stamps = frame.filter(pl.col("symbol").is_in(list(symbols)))["timestamp"]
    if end is not None:
        stamps = stamps.filter(stamps <= as_utc(end, "end"))
    last = stamps.max()
    assert isinstance(last, dt.datetime)
    return last


def signal_of_row(
    bundle: ModelBundle,
    row: dict[str, Any],
    *,
    since: dt.datetime,
    bars: int,
    ruined: bool,
    derived: list[str],
    bars_end: dt.datetime,
) -> dict[str, Any]:
    """The JSON of :func:`signal` from the last row of a replay (or of a ledger, which has
    the replay's columns): ``since`` is the replay's first bar, ``bars`` its number of
    rows, ``ruined`` whether equity was wiped out, ``derived`` the derived symbols,
    ``bars_end`` the last bar given (:func:`last_bar_given`)."""
    K = sum(1 for c in row if c.startswith("p_regime_"))
    return {
        "version": bundle.version,
        "timestamp": iso_z(row["timestamp"]),
        "bars_end": iso_z(bars_end),
        "action": int(row["action"]),
        "target_exposure": float(row["target_exposure"]),
        "instrument": str(row["target_instrument"]),
        "regime_probabilities": {f"regime_{k}": float(row[f"p_regime_{k}"]) for k in range(K)},
        "regime": int(row["regime"]) if K else None,
        "mask_layers": list(MASK_LAYERS),
        "mask": _mask_entries(row, bundle.params().grid, bundle.instruments),
        "derived_symbols": list(derived),
        "account": _account(row, since, bars, ruined, float(bundle.cfg.env.initial_cash)),
        "fills": "open of the next bar",
        "note": FILL_NOTE,
        "in_sample": bundle.in_sample(since),
        "stands_aside": getattr(bundle.model, STAND_ASIDE, None) is not None,
    }


def _mask_entries(
    row: dict[str, Any], grid: np.ndarray, instruments: tuple[str, str]
) -> list[dict[str, Any]]:
    """Per action of a replay row: its exposure, instrument, and the layers blocking it."""
    out = []
    for i, x in enumerate(grid):
        bits = int(row[f"blocked_{i}"])
        out.append(
            {
                "action": i,
                "target_exposure": float(x),
                "instrument": _instrument(float(x), instruments),
                "allowed": bits == 0,
                "blocked_by": layer_names(bits),
            }
        )
    return out


def _account(
    row: dict[str, Any], since: dt.datetime, bars: int, ruined: bool, initial: float
) -> dict[str, Any]:
    """The account at the close of a replay row (the signal's ``account``)."""
    return {
        "equity": _finite(row["equity"]),
        "exposure": _finite(row["exposure"]),
        "instrument_held": str(row["instrument_held"]),
        "shares_held": _finite(row["shares_held"]),
        "position": _finite(row["position"]),
        "forced_exit": row["forced_exit"] or None,
        "initial_equity": initial,
        "since": iso_z(since),
        "bars": int(bars),
        "ruined": bool(ruined),
    }
