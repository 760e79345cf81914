"""Model selection on held-out training episodes: the split, the scores, the decision."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from sentio.agents.selection import (
    MIN_EPISODES,
    Holdout,
    Selection,
    split_validation,
    t_score,
    validation_returns,
)
from sentio.agents.training import algorithm_class, train_agent
from sentio.config import resolve_for_bars
from sentio.env import EnvParams
from sentio.env.backtest import STAND_ASIDE, backtest
from sentio.env.episodes import candidate_episodes
from tests.env_helpers import random_market
from tests.test_training import small_cfg


@pytest.fixture(scope="module")
def market() -> Any:
    return random_market(n_sessions=30, session_len=60, seed=2, bar_vol=5e-4)


def test_the_latest_episodes_are_held_out_and_never_trained_on(market: Any) -> None:
    ranges = [(0, 600), (900, market.n_rows)]  # a purged k-fold's training rows
    window = 4
    hold = split_validation(market, ranges, window=window, episode_sessions=1, fraction=0.2)
    assert isinstance(hold, Holdout)
    starts, ends = candidate_episodes(market, ranges, window=window)
    k = round(0.2 * starts.size)
    assert hold.n_episodes == k
    np.testing.assert_array_equal(hold.starts, starts[-k:])
    np.testing.assert_array_equal(hold.ends, ends[-k:])
    # the training episodes are exactly the others, all ending before the first held-out row
    ts, te = candidate_episodes(market, hold.train_ranges, window=window)
    np.testing.assert_array_equal(ts, starts[:-k])
    np.testing.assert_array_equal(te, ends[:-k])
    assert te.max() < hold.starts.min()
    assert hold.train_ranges[0] == (0, 600)


def test_no_holdout_gives_a_reason(market: Any) -> None:
    ranges = [(0, market.n_rows)]
    off = split_validation(market, ranges, window=4, episode_sessions=1, fraction=0.0)
    assert off == "train.validation_fraction is 0"
    few = split_validation(market, [(0, 240)], window=4, episode_sessions=1, fraction=0.2)
    assert isinstance(few, str) and f"at least {MIN_EPISODES}" in few
    everything = split_validation(market, ranges, window=4, episode_sessions=1, fraction=0.999)
    assert isinstance(everything, str) and "no training episode" in everything


class _SignModel:
    """A stand-in for an SB3 model: long the largest allowed size after an up bar, else flat."""

    def __init__(self, params: EnvParams) -> None:
        self.grid = params.grid
        self.flat = params.flat_action

    def predict(
        self, obs: dict[str, np.ndarray], action_masks: Any = None, deterministic: bool = True
    ) -> tuple[np.ndarray, None]:
        masks = np.asarray(action_masks, dtype=bool)
        up = obs["window"][:, -1, 0] > 0
        longs = np.where(masks & (self.grid > 0)[None, :], self.grid[None, :], -np.inf)
        best = np.argmax(longs, axis=1)
        ok = np.isfinite(longs[np.arange(len(best)), best])
        return np.where(up & ok, best, self.flat), None


def test_validation_returns_equal_one_backtest_per_episode(market: Any) -> None:
    """The batched evaluation against the sequential backtest, episode by episode."""
    params = EnvParams.from_config(resolve_for_bars(small_cfg(), 60))
    hold = split_validation(
        market, [(0, market.n_rows)], window=4, episode_sessions=1, fraction=0.3
    )
    assert isinstance(hold, Holdout)
    model = _SignModel(params)
    log_ret, exposure = validation_returns(model, market, params, hold.starts, hold.ends)
    traded = 0
    for i, (s, e) in enumerate(zip(hold.starts, hold.ends, strict=True)):
        bt = backtest(model, market, params, [(int(s), int(e) + 1)])
        assert log_ret[i] == pytest.approx(math.log(bt.equity[-1] / bt.initial_equity), abs=1e-12)
        assert exposure[i] == pytest.approx(np.abs(bt.exposure).mean(), abs=1e-12)
        traded += int(bt.trades.height > 0)
    assert traded >= 3  # the comparison is not between two flat accounts


def test_episodes_of_unequal_length_run_to_the_end_of_the_data() -> None:
    """Two-session episodes with a one-session episode last, ending at the last row: the
    short episode's account is parked, ends again while the others run, and never steps
    past the data (a review found it did, an IndexError)."""
    market = random_market(n_sessions=31, session_len=60, seed=2, bar_vol=5e-4)
    params = dataclasses.replace(
        EnvParams.from_config(resolve_for_bars(small_cfg(), 60)), episode_sessions=2
    )
    hold = split_validation(
        market, [(0, market.n_rows)], window=4, episode_sessions=2, fraction=0.4
    )
    assert isinstance(hold, Holdout)
    lengths = hold.ends - hold.starts
    assert hold.ends[-1] == market.n_rows - 1 and lengths[-1] < lengths[0] / 1.5
    model = _SignModel(params)
    log_ret, _ = validation_returns(model, market, params, hold.starts, hold.ends)
    for i, (s, e) in enumerate(zip(hold.starts, hold.ends, strict=True)):
        bt = backtest(model, market, params, [(int(s), int(e) + 1)])
        assert log_ret[i] == pytest.approx(math.log(bt.equity[-1] / bt.initial_equity), abs=1e-12)


def test_a_stand_aside_model_stays_flat(market: Any) -> None:
    params = EnvParams.from_config(resolve_for_bars(small_cfg(), 60))
    model = _SignModel(params)
    assert backtest(model, market, params, [(0, market.n_rows)]).trades.height > 0
    setattr(model, STAND_ASIDE, params.flat_action)
    bt = backtest(model, market, params, [(0, market.n_rows)])
    assert bt.trades.height == 0 and not np.any(bt.exposure)


@given(st.lists(st.floats(-0.05, 0.05, allow_nan=False), min_size=2, max_size=40))
@settings(max_examples=60, deadline=None)
def test_t_score_is_the_one_sample_t_statistic(values: list[float]) -> None:
    r = np.asarray(values)
    sd = r.std(ddof=1)
    if sd > 1e-9 * max(1.0, np.abs(r).max()):
        expected = float(stats.ttest_1samp(r, 0.0).statistic)
        assert t_score(r) == pytest.approx(expected, rel=1e-9, abs=1e-9)
    assert t_score(np.zeros(len(values))) == 0.0
    assert t_score(r[:1]) == 0.0


def test_selection_keeps_the_first_best_and_round_trips() -> None:
    sel = Selection(min_t=2.0, episodes=4, periods_per_year=252.0)
    zero = np.zeros(4)
    assert sel.record(100, zero, zero)  # t 0: the first is the best so far
    good = np.array([0.01, 0.02, 0.015, 0.012])
    assert sel.record(200, good, zero + 0.5)
    assert not sel.record(300, good, zero + 0.5)  # a tie keeps the earlier checkpoint
    assert sel.best_steps == 200 and sel.best_score == pytest.approx(t_score(good))
    assert not sel.stands_aside
    h = sel.history[1]
    assert h["sharpe"] == pytest.approx(good.mean() / good.std(ddof=1) * math.sqrt(252.0))
    back = Selection.from_dict(sel.to_dict())
    assert back == sel
    assert Selection(min_t=2.0, episodes=4).stands_aside  # nothing evaluated yet


def _train(market: Any, tmp_path: Path, min_t: float) -> tuple[Any, Any]:
    cfg = small_cfg(
        **{
            "train.total_timesteps": 1536,
            "train.validation_every": 512,
            "train.validation_min_t": min_t,
        }
    )
    result = train_agent(cfg, market, [(0, market.n_rows)], seed=1, out_dir=tmp_path)
    return cfg, result


def test_training_saves_the_best_checkpoint(market: Any, tmp_path: Path) -> None:
    cfg, result = _train(market, tmp_path, min_t=-1e9)
    val = result.validation
    assert val["skipped"] is None and val["episodes"] == 6
    steps = [h["steps"] for h in val["history"]]
    assert steps == [512, 1024, 1536]
    scores = [h["t"] for h in val["history"]]
    assert val["best_steps"] == steps[int(np.argmax(scores))]  # argmax: the first maximum
    assert not val["stands_aside"]
    model = algorithm_class(cfg).load(result.model_path, device="cpu")
    assert model.num_timesteps == val["best_steps"]
    assert getattr(model, STAND_ASIDE, None) is None
    assert model.validation == val
    # the saved model scores on the held-out episodes what the record says
    params = EnvParams.from_config(resolve_for_bars(cfg, 60))
    hold = split_validation(
        market, [(0, market.n_rows)], window=4, episode_sessions=1, fraction=0.2
    )
    assert isinstance(hold, Holdout)
    r, _ = validation_returns(model, market, params, hold.starts, hold.ends)
    assert t_score(r) == pytest.approx(val["best_score"], abs=1e-12)


def test_training_stands_aside_without_validation_evidence(market: Any, tmp_path: Path) -> None:
    cfg, result = _train(market, tmp_path, min_t=1e9)
    assert result.validation["stands_aside"]
    model = algorithm_class(cfg).load(result.model_path, device="cpu")
    params = EnvParams.from_config(resolve_for_bars(cfg, 60))
    assert getattr(model, STAND_ASIDE) == params.flat_action
    bt = backtest(model, market, params, [(0, market.n_rows)])
    assert bt.trades.height == 0 and not np.any(bt.exposure)


def test_too_few_sessions_skip_selection_and_say_why(tmp_path: Path) -> None:
    small = random_market(n_sessions=6, session_len=60, seed=1)
    cfg = small_cfg(**{"train.total_timesteps": 256})
    result = train_agent(cfg, small, [(0, small.n_rows)], seed=0, out_dir=tmp_path)
    assert "at least 5" in result.validation["skipped"]
    model = algorithm_class(cfg).load(result.model_path, device="cpu")
    assert model.num_timesteps == result.num_timesteps
