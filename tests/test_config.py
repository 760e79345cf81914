"""Configuration: defaults that run, messages that name the field, nonsense flags rejected at load."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sentio.config import (
    SentioConfig,
    config_from_dict,
    dump_config,
    load_config,
    with_overrides,
    write_config,
)
from sentio.errors import ConfigError


def test_defaults_validate_and_round_trip(tmp_path: Path) -> None:
    cfg = SentioConfig()
    write_config(tmp_path / "c.yaml", cfg)
    again = load_config(tmp_path / "c.yaml")
    assert again == cfg
    assert again.hash() == cfg.hash()
    assert yaml.safe_load(dump_config(cfg))["universe"]["long"] == "TQQQ"


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: configuration file not found"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("agent:\n  algo: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML at line \d+"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(tmp_path / "list.yaml")


def test_empty_file_means_defaults(tmp_path: Path) -> None:
    (tmp_path / "e.yaml").write_text("")
    assert load_config(tmp_path / "e.yaml") == SentioConfig()


@pytest.mark.parametrize(
    ("data", "pattern"),
    [
        (
            {"agent": {"algo": "ppo2"}},
            r"agent\.algo: Input should be 'ppo', 'maskable_ppo' or 'sentio_ppo' \(got 'ppo2'\)",
        ),
        (
            {"agent": {"lerning_rate": 0.1}},
            r"agent\.lerning_rate: unknown setting \(allowed: .*\); did you mean 'learning_rate'\?",
        ),
        (
            {"ingest": {"max_quarantine_fraction": 1.5}},
            r"ingest\.max_quarantine_fraction: Input should be less than or equal to 1 \(got 1\.5\)",
        ),
        (
            {"ingest": {"bar_timestamp": "middle"}},
            r"ingest\.bar_timestamp: Input should be 'start' or 'end'",
        ),
        ({"ingest": {"tz": "Mars/Olympus"}}, r"ingest\.tz: unknown time zone 'Mars/Olympus'"),
        ({"train": {"device": "tpu"}}, r"train\.device: Input should be 'auto', 'cpu' or 'cuda'"),
        ({"env": {"action_grid": [-1, 1]}}, r"env\.action_grid: action_grid must contain 0\.0"),
        (
            {"universe": {"long": "QQQ"}},
            r"universe: underlying, long and short must be three different symbols",
        ),
        ({"foo": 1}, r"foo: unknown setting \(allowed: agent, alerts, cv, drift, env"),
    ],
)
def test_messages_name_the_field_and_allowed_values(data: dict, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern) as info:
        config_from_dict(data, "my.yaml")
    assert str(info.value).startswith("my.yaml: ")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("data", "pattern"),
    [
        (
            {"agent": {"algo": "maskable_ppo", "quantile_critic": True}},
            r"agent\.quantile_critic is a Sentio PPO feature",
        ),
        (
            {
                "agent": {
                    "algo": "maskable_ppo",
                    "quantile_critic": False,
                    "regime_gating": False,
                    "cvar_beta": 0.5,
                }
            },
            r"agent\.cvar_beta is a Sentio PPO feature",
        ),
        (
            {"agent": {"algo": "ppo", "quantile_critic": False, "regime_gating": False}},
            r"agent\.algo='ppo' cannot apply action masks",
        ),
        (
            {"agent": {"algo": "sentio_ppo", "quantile_critic": False, "cvar_beta": 0.3}},
            r"cvar_beta > 0 needs agent\.quantile_critic=true",
        ),
        (
            {"regimes": {"enabled": False}, "agent": {"algo": "sentio_ppo", "regime_gating": True}},
            r"agent\.regime_gating=true needs regimes\.enabled=true",
        ),
        (
            {"regimes": {"enabled": False}, "agent": {"regime_gating": False}},
            r"env\.masks\.regime=true needs regimes\.enabled=true",
        ),
        (
            {"env": {"window": 1}, "agent": {"extractor": "transformer"}},
            r"transformer' needs env\.window >= 2",
        ),
        (
            {"agent": {"extractor": "transformer", "d_model": 30, "n_heads": 4}},
            r"d_model \(30\) must be divisible by agent\.n_heads \(4\)",
        ),
        (
            {"agent": {"batch_size": 10_000, "n_steps": 32}, "train": {"n_envs": 8}},
            r"batch_size \(10000\) exceeds the rollout size",
        ),
        ({"train": {"n_envs": 0}}, r"train\.n_envs must be 'auto' or between 1 and 65536"),
        ({"agent": {"n_steps": 4}}, r"agent\.n_steps must be 'auto' or at least 8"),
        (
            {"synth": {"random_walk": True, "edge_strength": 0.1}},
            r"random_walk=true means no edge exists",
        ),
        (
            {"cv": {"method": "cpcv", "n_groups": 4, "n_test_groups": 4}},
            r"cpcv needs n_test_groups < n_groups",
        ),
    ],
)
def test_nonsense_flag_combinations_are_rejected_at_load(data: dict, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        config_from_dict(data)


def test_sensible_combinations_load() -> None:
    config_from_dict(
        {"agent": {"algo": "maskable_ppo", "quantile_critic": False, "regime_gating": False}}
    )
    off = {
        "session": False,
        "risk_budget": False,
        "regime": False,
        "drawdown": False,
        "min_hold_bars": 0,
    }
    config_from_dict(
        {
            "agent": {
                "algo": "ppo",
                "quantile_critic": False,
                "regime_gating": False,
                "extractor": "mlp",
            },
            "env": {"masks": off, "window": 1},
        }
    )
    config_from_dict({"agent": {"algo": "sentio_ppo", "quantile_critic": True, "cvar_beta": 0.5}})
    config_from_dict({})  # the defaults


def test_overrides_are_validated_and_none_leaves_values() -> None:
    cfg = with_overrides(SentioConfig(), {"ingest.tz": "UTC", "ingest.symbol": None})
    assert cfg.ingest.tz == "UTC" and cfg.ingest.symbol is None
    with pytest.raises(
        ConfigError, match=r"ingest\.on_bad_rows: Input should be 'quarantine' or 'error'"
    ):
        with_overrides(cfg, {"ingest.on_bad_rows": "ignore"})


def test_an_override_of_an_unknown_section_is_one_line_naming_it() -> None:
    """Not a KeyError: the same message as a configuration file's unknown key."""
    with pytest.raises(ConfigError, match=r"^options: costs: unknown setting \(allowed: agent,"):
        with_overrides(SentioConfig(), {"costs.half_spread_bps": 0})
    with pytest.raises(ConfigError, match=r"did you mean 'half_spread_bps'\?$"):
        with_overrides(SentioConfig(), {"env.costs.half_spred_bps": 0})
    with pytest.raises(ConfigError, match=r"^options: env\.window\.x: window is a setting"):
        with_overrides(SentioConfig(), {"env.window.x": 0})


def test_hash_by_section_ignores_other_sections() -> None:
    a = SentioConfig()
    b = with_overrides(a, {"train.total_timesteps": 7})
    assert a.hash("ingest", "universe") == b.hash("ingest", "universe")
    assert a.hash() != b.hash()


# --------------------------------------------------------------------------- bar length


def test_auto_settings_are_lengths_of_time_sized_by_the_bar_length() -> None:
    from sentio.config import resolve_for_bars, unresolved_settings

    cfg = SentioConfig()
    assert "env.flat_at_close" in unresolved_settings(cfg)
    minute = resolve_for_bars(cfg, 60)
    assert unresolved_settings(minute) == []
    assert (minute.features.norm_window, minute.features.volume_z_window) == (1950, 390)
    assert (minute.regimes.aggregate_bars, minute.regimes.vol_window) == (15, 2730)
    assert (minute.cv.embargo_bars, minute.registry.min_compare_bars) == (390, 1950)
    assert minute.env.flat_at_close is True and minute.env.episode_sessions == 1
    assert minute.env.costs.slippage_vol_mult == pytest.approx(0.1)
    five = resolve_for_bars(cfg, 300)  # the same lengths of time in five-minute bars
    assert (five.features.norm_window, five.regimes.vol_window, five.cv.embargo_bars) == (
        390,
        546,
        78,
    )
    assert five.regimes.aggregate_bars == 3
    assert five.env.costs.slippage_vol_mult == pytest.approx(0.1 / 5**0.5)
    daily = resolve_for_bars(cfg, 86_400)
    assert daily.env.flat_at_close is False and daily.env.episode_sessions == 21
    assert (daily.features.norm_window, daily.cv.embargo_bars) == (126, 5)
    assert daily.registry.min_compare_bars == 63 and daily.regimes.vol_window == 21
    assert daily.env.costs.slippage_vol_mult == pytest.approx(0.1 / 390**0.5)
    assert resolve_for_bars(daily, 86_400) is daily  # nothing left to resolve


def test_explicit_values_are_kept_and_minute_counts_refused_on_daily_bars() -> None:
    from sentio.config import resolve_for_bars

    cfg = config_from_dict({"env": {"flat_at_close": True}, "cv": {"embargo_bars": 10}})
    daily = resolve_for_bars(cfg, 86_400)
    assert daily.env.flat_at_close is True and daily.cv.embargo_bars == 10
    minute_copy = config_from_dict({"cv": {"embargo_bars": 390}, "features": {"norm_window": 1950}})
    with pytest.raises(ConfigError) as err:
        resolve_for_bars(minute_copy, 86_400)
    message = str(err.value)
    assert "cv.embargo_bars = 390 daily bars" in message and "'auto' gives 5" in message
    assert "features.norm_window = 1950" in message
    assert resolve_for_bars(minute_copy, 60).cv.embargo_bars == 390  # fine on minutes
    with pytest.raises(ConfigError, match="cv.embargo_bars must be 'auto' or at least 0"):
        config_from_dict({"cv": {"embargo_bars": -1}})


def test_the_trading_model_needs_the_bar_length_for_auto_settings() -> None:
    from sentio.env import EnvParams

    with pytest.raises(ConfigError, match="env.flat_at_close"):
        EnvParams.from_config(SentioConfig())
