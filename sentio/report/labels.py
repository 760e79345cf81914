"""Names for people: the reference policies, the regimes and the bar frequency in words.

:data:`REFERENCES` in the report's order and :data:`CAUSAL_REFERENCES` (those a trader
could have run); their labels (:func:`reference_labels`, :data:`REFERENCE_LABELS`) and
descriptions worded from the configuration; :func:`regime_name` by volatility rank.

Library code only: no orchestration imports.
"""

from __future__ import annotations

from typing import Any

from sentio.config import SentioConfig

REFERENCES: tuple[str, ...] = (
    "oracle",
    "regime_rule",
    "trend",
    "fast_trend",
    "long_etf",
    "underlying",
    "flat",
)
"""Reference policies of the train stage, in the report's order."""
CAUSAL_REFERENCES: tuple[str, ...] = (
    "regime_rule",
    "trend",
    "fast_trend",
    "long_etf",
    "underlying",
)
"""References a trader could have run at the time (the oracle reads the generator's truth)."""


_REGIME_NAMES: dict[int, tuple[str, ...]] = {
    2: ("calm", "volatile"),
    3: ("calm", "choppy", "volatile"),
}


_REF_DESCRIPTIONS: dict[str, str] = {
    "oracle": "trades on the generator's true regime (synthetic data only) under the same "
    "costs and masks: what was attainable, not a strategy anyone could run",
    "regime_rule": "long in the calm regime, short in the volatile one, flat between, from "
    "the causally filtered regime probabilities",
    "trend": "60-bar momentum with hysteresis (enter when its z score passes 2, leave when "
    "its sign turns), sized by the risk budget",
    "fast_trend": "the sign of the move over the observation window (up to 15 bars), "
    "re-decided every bar",
    "underlying": "the underlying bought at the first bar and held, overnight included, no "
    "costs (a benchmark series; the agent trades only the ETFs)",
    "flat": "no position, no costs",
}


# --------------------------------------------------------------------------------------
# names for people


def reference_labels(
    cfg: SentioConfig | None = None, *, daily: bool | None = None
) -> dict[str, str]:
    """Plain names of the references, worded from the configuration.

    The +L ETF reference follows the agent's session rule: ``env.flat_at_close`` True
    (intraday data) sells at each close, False (daily data) holds overnight; an
    unresolved ``"auto"`` is resolved from ``daily`` (the data's frequency) when given,
    else named as the agent's session rule.
    """
    if cfg is None:
        cfg = SentioConfig()
    uni = cfg.universe
    rule = _session_rule(cfg, daily)
    hold = (
        "flat at each close"
        if rule is True
        else "held overnight"
        if rule is False
        else "the agent's session rule"
    )
    return {
        "oracle": "Oracle (knows the true regime; not tradeable)",
        "regime_rule": "Regime rule",
        "trend": "Trend rule",
        "fast_trend": "Fast trend rule",
        "long_etf": f"Buy +{uni.leverage:g}x ETF ({uni.long}), {hold} (agent's rules)",
        "underlying": f"Underlying buy-and-hold ({uni.underlying})",
        "flat": "Flat (no position)",
    }


def _session_rule(cfg: SentioConfig, daily: bool | None) -> Any:
    """``env.flat_at_close``; ``"auto"`` resolved as the pipeline does (off for daily bars)."""
    rule = getattr(cfg.env, "flat_at_close", True)
    if not isinstance(rule, bool) and daily is not None:
        return not daily
    return rule


def _reference_descriptions(cfg: SentioConfig, daily: bool | None = None) -> dict[str, str]:
    rule = _session_rule(cfg, daily)
    hold = (
        "sold at each session's close"
        if rule is True
        else "held overnight"
        if rule is False
        else "under the agent's session rule"
    )
    return {
        **_REF_DESCRIPTIONS,
        "long_etf": f"the +{cfg.universe.leverage:g}x ETF {cfg.universe.long} bought whenever "
        f"the agent's masks allow, {hold}, with the agent's costs",
    }


REFERENCE_LABELS: dict[str, str] = reference_labels(daily=False)
"""Plain names of the references under the default configuration on intraday bars."""


def regime_name(k: int, n_regimes: int) -> str:
    """The name of regime ``k`` of ``n_regimes`` (0 = lowest volatility; -1 = no regime)."""
    if k < 0:
        return "no regime"
    names = _REGIME_NAMES.get(n_regimes)
    if names is not None and k < len(names):
        return names[k]
    return f"regime {k} (vol rank {k})"


def _frequency_text(bar_seconds: Any, ppy: float) -> str:
    """'1-minute', '5-minute', '1-hour', 'daily' from the bar length (or bars per year)."""
    if isinstance(bar_seconds, int | float) and bar_seconds > 0:
        s = int(bar_seconds)
        if s >= 86_400:
            return "daily"
        if s % 3600 == 0:
            return f"{s // 3600}-hour"
        if s % 60 == 0:
            return f"{s // 60}-minute"
        return f"{s}-second"
    if ppy <= 252:
        return {252: "daily", 52: "weekly", 12: "monthly"}.get(round(ppy), "daily")
    minutes = 390.0 / (ppy / 252.0)
    return f"{minutes:g}-minute" if minutes >= 1 else f"{60 * minutes:.0f}-second"
