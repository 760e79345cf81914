"""Live use: bundles loaded from the registry rebuild the training pipeline's market exactly,
backtest like the train stage, and give causal signals (library and ``sentio signal``).

One tiny model per variant is trained through the real stages (ingest -> features ->
folds -> regimes -> train) on three sessions of hand-made QQQ minute bars and registered
with the registry contract of the nightly flow; :func:`trained` caches them for the test
session, so ``tests/test_paper.py`` reuses the same versions.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path
from typing import Any, cast

import numpy as np
import polars as pl
import pytest
import yaml
from typer.testing import CliRunner

from sentio import stages
from sentio.cli import app
from sentio.config import SentioConfig, config_from_dict, resolve_for_bars, with_overrides
from sentio.env import EnvParams
from sentio.env.backtest import backtest
from sentio.errors import DataError
from sentio.live import ModelBundle, load_bundle, replay, signal
from sentio.registry import Registry, RegistryError
from tests.conftest import SHORT_WINDOWS, minute_bars

SESSIONS = ("2024-01-08", "2024-01-10")  # Mon-Wed: warm-up, fold 1's training, its test
SW = cast(dict[str, dict[str, Any]], SHORT_WINDOWS)
FOLD = 1  # k-fold over two sessions: fold 1 trains on 2024-01-09 and tests on 2024-01-10

VARIANTS: dict[str, dict[str, Any]] = {
    # Sentio PPO (transformer, regime gating), train-fit normaliser, regimes, flat at close
    "train_fit": {
        "features": {**SW["features"], "normalisation": "train_fit"},
        "agent": {
            **SW["agent"],
            "algo": "sentio_ppo",
            "extractor": "transformer",
            "quantile_critic": True,
            "regime_gating": True,
        },
    },
    # MaskablePPO MLP without regimes, rolling normalisation, positions held overnight
    "plain": {
        "regimes": {**SW["regimes"], "enabled": False},
        "agent": {
            **SW["agent"],
            "algo": "maskable_ppo",
            "extractor": "mlp",
            "quantile_critic": False,
            "regime_gating": False,
        },
        "env": {**SW["env"], "flat_at_close": False, "masks": {"regime": False}},
    },
}


@dataclasses.dataclass(frozen=True)
class Trained:
    """One trained and registered model and the pipeline outputs it came from."""

    workdir: Path
    raw: Path  # the input file the pipeline ingested (QQQ only)
    bars: Path  # the ingested, universe-complete bars
    features: Path
    folds: Path
    regimes: Path | None
    train_dir: Path
    cfg: SentioConfig
    registry: Registry
    version: str
    test_block: dict[str, str]
    train_end: str

    def frame(self) -> pl.DataFrame:
        """The canonical bars the pipeline read."""
        return pl.read_ipc(self.bars)

    def fold_market(self) -> tuple[Any, list[tuple[int, int]], list[tuple[int, int]]]:
        """The training pipeline's market of the fold."""
        return stages.fold_market(
            self.bars, self.features, self.folds, self.regimes, self.cfg, FOLD
        )

    def train_model(self) -> Any:
        """The model as the train stage wrote it (not through the registry)."""
        from sentio.agents.training import algorithm_class

        return algorithm_class(self.cfg).load(self.train_dir / "model.zip", device="cpu")


_TRAINED: dict[str, Trained] = {}


def register_fold(
    registry: Registry,
    cfg: SentioConfig,
    summaries: dict[str, Any],
    *,
    fold: int,
    seed: int = 0,
    extra_override: dict[str, Any] | None = None,
    skip_files: tuple[str, ...] = (),
) -> str:
    """Register the (fold, seed) training with the registry contract of the nightly flow."""
    folds = stages.load_folds(summaries["folds"]["output"])
    entry = next(f for f in folds["folds"] if int(f["fold"]) == fold)
    train = summaries["train"]
    extra_files: dict[str, str] = {}
    if entry.get("normaliser"):
        extra_files["normaliser.json"] = str(
            stages.index_file(summaries["folds"]["output"], entry["normaliser"])
        )
    if summaries.get("regimes"):
        model = next(e for e in summaries["regimes"]["folds"] if int(e["fold"]) == fold)
        extra_files["regime_model.json"] = model["model"]
    for name in skip_files:
        extra_files.pop(name, None)
    block = entry["test_blocks"][0]
    metrics = {
        **train["metrics"],
        "window_start": block["start"],
        "window_end": block["end"],
    }
    extra = {
        "fold": fold,
        "seed": seed,
        "train_key": train["key"],
        "run": "test-run",
        "train_start": entry["train_ranges"][0]["start"],
        "train_end": entry["train_ranges"][-1]["end"],
        "window_start": block["start"],
        "window_end": block["end"],
        "feature_columns": summaries["features"]["columns"],
        **(extra_override or {}),
    }
    version = registry.register(
        train["model"],
        Path(train["model"]).parent / "config.yaml",
        metrics,
        data_hashes={"bars": summaries["ingest"]["output_sha256"]},
        code_version="test",
        algo=cfg.agent.algo,
        extra=extra,
        extra_files=extra_files,
    )
    return version.version


def trained(base: Path, variant: str) -> Trained:
    """Train (once per test session) and register the variant's model under ``base``."""
    if variant in _TRAINED:
        return _TRAINED[variant]
    workdir = base / variant / "wd"
    raw = base / variant / "in" / "bars.feather"
    raw.parent.mkdir(parents=True, exist_ok=True)
    minute_bars(SESSIONS[0], SESSIONS[1], seed=3, price=400.0).write_ipc(raw)
    data = {**SHORT_WINDOWS, "paths": {"workdir": str(workdir)}, **VARIANTS[variant]}
    cfg = config_from_dict(data)
    s: dict[str, Any] = {}
    s["ingest"] = stages.ingest_stage([raw], cfg, workdir)
    bars = s["ingest"]["output"]
    s["features"] = stages.features_stage(bars, cfg, workdir)
    s["folds"] = stages.folds_stage(s["features"]["output"], cfg, workdir)
    regimes = None
    if cfg.regimes.enabled:
        s["regimes"] = stages.regimes_stage(bars, s["folds"]["output"], cfg, workdir)
        regimes = s["regimes"]["output"]
    s["train"] = stages.train_stage(
        bars,
        s["features"]["output"],
        s["folds"]["output"],
        regimes,
        cfg,
        workdir,
        fold=FOLD,
        seed=0,
    )
    registry = Registry(workdir / "registry")
    version = register_fold(registry, cfg, s, fold=FOLD)
    folds = stages.load_folds(s["folds"]["output"])
    entry = next(f for f in folds["folds"] if int(f["fold"]) == FOLD)
    out = Trained(
        workdir=workdir,
        raw=raw,
        bars=Path(bars),
        features=Path(s["features"]["output"]),
        folds=Path(s["folds"]["output"]),
        regimes=Path(regimes) if regimes else None,
        train_dir=Path(s["train"]["model"]).parent,
        cfg=cfg,
        registry=registry,
        version=version,
        test_block=entry["test_blocks"][0],
        train_end=entry["train_ranges"][-1]["end"],
    )
    _TRAINED[variant] = out
    return out


@pytest.fixture(scope="module")
def tf(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """The train_fit variant (normaliser, regimes, Sentio PPO)."""
    return trained(tmp_path_factory.getbasetemp() / "live-models", "train_fit")


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """The plain variant (no regimes, MaskablePPO MLP, overnight positions)."""
    return trained(tmp_path_factory.getbasetemp() / "live-models", "plain")


@pytest.fixture(scope="module")
def tf_bundle(tf: Trained) -> ModelBundle:
    return load_bundle(tf.registry, tf.version)


def fresh_registry(t: Trained, root: Path) -> Registry:
    """A copy of ``t``'s registry (its one version, no champion) that a test may change."""
    import shutil

    shutil.copytree(t.registry.root, root / "registry")
    (root / "registry" / "champion.json").unlink(missing_ok=True)
    return Registry(root / "registry")


# --------------------------------------------------------------------------- bundles


@pytest.mark.parametrize("variant", ["train_fit", "plain"])
def test_bundle_market_is_the_training_pipelines_market(
    variant: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    t = trained(tmp_path_factory.getbasetemp() / "live-models", variant)
    bundle = load_bundle(t.registry, t.version)
    assert (bundle.normaliser is not None) == (variant == "train_fit")
    assert (bundle.regime_model is not None) == (variant == "train_fit")
    expected, _, _ = t.fold_market()
    for bars in (t.raw, t.frame()):  # a file goes through ingest, a frame is canonical
        got = bundle.market(bars)
        assert got.feature_names == expected.feature_names
        for name in ("timestamps", "features", "regime_probs", "open", "close", "vol"):
            np.testing.assert_array_equal(getattr(got, name), getattr(expected, name), name)
        np.testing.assert_array_equal(got.session, expected.session)
        np.testing.assert_array_equal(got.minutes_to_close, expected.minutes_to_close)
    if variant == "train_fit":  # the stored normaliser is applied: values are z-scores
        assert got.regime_probs.shape[1] == t.cfg.regimes.n_states
        raw_features = pl.read_ipc(t.features)
        col = expected.feature_names[0]
        assert not np.allclose(got.features[:5, 0], raw_features[col].to_numpy()[:5], atol=1e-3), (
            "features were not normalised"
        )


@pytest.mark.parametrize("variant", ["train_fit", "plain"])
def test_bundle_backtest_equals_the_train_stage_backtest(
    variant: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    t = trained(tmp_path_factory.getbasetemp() / "live-models", variant)
    bundle = load_bundle(t.registry, t.version)
    got = bundle.backtest(t.raw, t.test_block["start"], t.test_block["end"])
    market, _, test_rows = t.fold_market()
    want = backtest(
        t.train_model(),
        market,
        EnvParams.from_config(resolve_for_bars(t.cfg, 60)),
        test_rows,
        instruments=(t.cfg.universe.long, t.cfg.universe.short),
    )
    assert got.n_bars == want.n_bars > 300
    for name in ("timestamps", "actions", "equity", "exposure", "position", "costs_cash"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), name)
    # and the train stage's own output file
    stage = pl.read_ipc(t.train_dir / "backtest.feather")
    np.testing.assert_array_equal(got.equity, stage["equity"].to_numpy())


def test_load_bundle_needs_a_champion_or_a_version(tf: Trained, tmp_path: Path) -> None:
    reg = fresh_registry(tf, tmp_path)
    with pytest.raises(RegistryError, match=r"no champion in .*sentio models promote"):
        load_bundle(reg)
    assert load_bundle(reg, tf.version).version == tf.version
    reg.promote(tf.version, "test")
    bundle = load_bundle(reg)
    assert bundle.version == tf.version
    assert bundle.workdir == reg.root.parent
    assert bundle.cfg.features.normalisation == "train_fit"
    with pytest.raises(RegistryError, match="unknown model version"):
        load_bundle(reg, "20240101T000000000000Z-deadbeef")


def test_load_bundle_refuses_tampered_sidecar_files(tf: Trained, tmp_path: Path) -> None:
    reg = fresh_registry(tf, tmp_path)
    path = reg.get(tf.version).path / "normaliser.json"
    params = json.loads(path.read_text())
    first = next(iter(params["columns"]))
    params["columns"][first]["mean"] += 1.0  # valid JSON, different numbers
    path.chmod(0o644)
    path.write_text(json.dumps(params))
    with pytest.raises(RegistryError, match=r"normaliser\.json: sha256 mismatch"):
        load_bundle(reg, tf.version)


def test_missing_version_files_and_feature_mismatch_are_clear_errors(
    tf: Trained, tmp_path: Path
) -> None:
    reg = Registry(tmp_path / "registry")
    s = _summaries(tf)
    no_norm = register_fold(reg, tf.cfg, s, fold=FOLD, skip_files=("normaliser.json",))
    with pytest.raises(RegistryError, match=r"train_fit but .* holds no normaliser\.json"):
        load_bundle(reg, no_norm)
    no_regimes = register_fold(reg, tf.cfg, s, fold=FOLD, skip_files=("regime_model.json",))
    with pytest.raises(RegistryError, match=r"regimes\.enabled but .* no regime_model\.json"):
        load_bundle(reg, no_regimes)
    cols = list(reversed(s["features"]["columns"]))
    swapped = register_fold(reg, tf.cfg, s, fold=FOLD, extra_override={"feature_columns": cols})
    with pytest.raises(DataError, match="same names in another order"):
        load_bundle(reg, swapped).market(tf.frame())
    fewer = register_fold(
        reg, tf.cfg, s, fold=FOLD, extra_override={"feature_columns": cols[1:] + ["vix"]}
    )
    with pytest.raises(DataError, match=r"missing \['vix'\], unexpected"):
        load_bundle(reg, fewer).market(tf.frame())


def _summaries(t: Trained) -> dict[str, Any]:
    """The stage summaries of ``t`` (all cached: nothing is recomputed)."""
    s: dict[str, Any] = {"ingest": stages.ingest_stage([t.raw], t.cfg, t.workdir)}
    s["features"] = stages.features_stage(t.bars, t.cfg, t.workdir)
    s["folds"] = stages.folds_stage(t.features, t.cfg, t.workdir)
    if t.regimes is not None:
        s["regimes"] = stages.regimes_stage(t.bars, t.folds, t.cfg, t.workdir)
    s["train"] = stages.train_stage(
        t.bars, t.features, t.folds, t.regimes, t.cfg, t.workdir, fold=FOLD, seed=0
    )
    return s


def test_bad_bar_file_gets_the_ingest_contract_error(
    tf_bundle: ModelBundle, tmp_path: Path
) -> None:
    frame = minute_bars(SESSIONS[0], SESSIONS[1], seed=3, price=400.0)
    bad = pl.int_range(pl.len()) % 10 == 0  # high below low in 10% of the rows
    frame = frame.with_columns(high=pl.when(bad).then(pl.col("low") * 0.99).otherwise("high"))
    path = tmp_path / "bad.feather"
    frame.write_ipc(path)
    bundle = dataclasses.replace(tf_bundle, workdir=tmp_path / "wd")
    with pytest.raises(
        DataError, match=r"bad\.feather: 117 of 1170 rows rejected .*high_below_low"
    ):
        bundle.market(path)


# --------------------------------------------------------------------------- signals


def test_signal_json_keys_types_and_start_rule(tf: Trained, tf_bundle: ModelBundle) -> None:
    sig = signal(tf_bundle, tf.frame())
    json.dumps(sig)  # JSON-able
    assert sig["version"] == tf.version
    # a canonical frame holding the ETFs is taken as traded prices (a file says more, below)
    assert sig["derived_symbols"] == []
    assert sig["timestamp"] == "2024-01-10T20:59:00Z"  # the last bar's start
    assert sig["bars_end"] == sig["timestamp"]  # every instrument has the last bar
    grid = list(EnvParams.from_config(resolve_for_bars(tf.cfg, 60)).grid)
    assert isinstance(sig["action"], int) and sig["target_exposure"] == grid[sig["action"]]
    u = tf.cfg.universe
    x = sig["target_exposure"]
    assert sig["instrument"] == (u.long if x > 0 else u.short if x < 0 else "flat")
    probs = sig["regime_probabilities"]
    assert list(probs) == [f"regime_{k}" for k in range(tf.cfg.regimes.n_states)]
    assert abs(sum(probs.values()) - 1.0) < 1e-5 and sig["regime"] in range(len(probs))
    assert [m["action"] for m in sig["mask"]] == list(range(len(grid)))
    for m in sig["mask"]:
        assert m["allowed"] == (not m["blocked_by"])
        assert set(m["blocked_by"]) <= set(sig["mask_layers"])
    flat = grid.index(0.0)
    assert sig["mask"][flat]["allowed"]
    # the session's last bar: its order fills at the next session's open, inside the
    # opening minutes (env.masks.opening_minutes): the session layer blocks new exposure
    # (at least one of the largest long and short exposures is new whatever is held)
    assert any("session" in sig["mask"][grid.index(x)]["blocked_by"] for x in (-1.0, 1.0))
    # 15:50 New York: the fill bar 15:51 opens 9 minutes before the close -- blocked,
    # although the bar after it is not in the bars yet (the calendar knows it)
    late = signal(
        tf_bundle,
        tf.frame().filter(pl.col("timestamp") <= dt.datetime(2024, 1, 10, 20, 50, tzinfo=dt.UTC)),
    )
    nonflat = [m for m in late["mask"] if m["target_exposure"] != 0]
    assert all("session" in m["blocked_by"] and not m["allowed"] for m in nonflat)
    acct = sig["account"]
    # the replay starts at the first bar after the training end (never in-sample)
    train_end = dt.datetime.fromisoformat(tf.train_end)
    assert acct["since"] == (train_end + dt.timedelta(minutes=1)).isoformat().replace("+00:00", "Z")
    assert acct["bars"] == 1 + 390  # 20:59 of 2024-01-09 and the whole next session
    assert isinstance(acct["equity"], float) and acct["equity"] > 0
    assert acct["exposure"] == 0.0  # flat at the close (env.flat_at_close)
    assert "open of the next bar" in sig["fills"] and "OPEN" in sig["note"]
    assert sig["in_sample"] is False
    assert sig["stands_aside"] is False


def test_a_model_that_stood_aside_signals_flat(
    tf: Trained, tf_bundle: ModelBundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model whose validation found no edge (sentio.agents.selection) is flat in the replay."""
    from sentio.env.backtest import STAND_ASIDE

    flat = EnvParams.from_config(resolve_for_bars(tf.cfg, 60)).flat_action
    market = tf_bundle.market(tf.frame())
    start = tf_bundle.start_row(market)
    acting = replay(tf_bundle, market, start, market.n_rows - 1).frame
    assert (acting["action"] != flat).any()  # the comparison is not between two flat agents
    monkeypatch.setattr(tf_bundle.model, STAND_ASIDE, flat, raising=False)
    sig = signal(tf_bundle, tf.frame())
    assert sig["stands_aside"] is True and sig["action"] == flat
    aside = replay(tf_bundle, market, start, market.n_rows - 1).frame
    assert (aside["action"] == flat).all() and (aside["exposure"] == 0).all()


def test_signal_of_a_prefix_ignores_later_bars(tf: Trained, tf_bundle: ModelBundle) -> None:
    full = tf.frame()
    cut = dt.datetime(2024, 1, 10, 17, 3, tzinfo=dt.UTC)  # mid-session
    prefix = full.filter(pl.col("timestamp") <= cut)
    a = signal(tf_bundle, prefix)
    b = signal(tf_bundle, full, end=cut)
    assert a == b
    assert a["timestamp"] == "2024-01-10T17:03:00Z"
    # the same bar inside the full replay
    market = tf_bundle.market(full)
    start = tf_bundle.start_row(market)
    frame = replay(tf_bundle, market, start, market.n_rows - 1).frame
    row = frame.filter(pl.col("timestamp") == cut).row(0, named=True)
    assert row["action"] == a["action"]
    assert row["equity"] == a["account"]["equity"]
    assert row["p_regime_0"] == a["regime_probabilities"]["regime_0"]
    # and a prefix whose last bar is the previous one gives that bar's decision
    earlier = signal(tf_bundle, full.filter(pl.col("timestamp") < cut))
    assert earlier["timestamp"] == "2024-01-10T17:02:00Z"


def test_signal_without_bars_after_training_is_refused(tf: Trained, tf_bundle: ModelBundle) -> None:
    end = dt.datetime.fromisoformat(tf.train_end)
    with pytest.raises(DataError, match="no bar after its training end .* never runs in-sample"):
        signal(tf_bundle, tf.frame().filter(pl.col("timestamp") <= end))
    # an explicit start is honoured (here inside the training range: the user's choice)
    sig = signal(tf_bundle, tf.frame(), start="2024-01-09T15:00:00Z")
    assert sig["account"]["since"] == "2024-01-09T15:00:00Z"


def test_an_in_sample_start_is_flagged(tf: Trained, tf_bundle: ModelBundle) -> None:
    train_end = dt.datetime.fromisoformat(tf.train_end)
    for start, in_sample in (
        (None, False),
        ("2024-01-09T15:00:00Z", True),
        (train_end, True),  # the last training bar itself
        (train_end + dt.timedelta(seconds=1), False),  # resolves to the next bar
    ):
        sig = signal(tf_bundle, tf.frame(), start=start)
        assert sig["in_sample"] is in_sample, start


def test_replay_ruin_row_is_flat_like_the_backtest(plain: Trained) -> None:
    """On the ruin bar the backtest stores exposure 0 (the account is closed out); the
    replay (and so the paper ledger) must store the same, not the simulator's exposure."""
    bundle = load_bundle(plain.registry, plain.version)
    off = {f"env.masks.{k}": False for k in ("risk_budget", "session", "drawdown", "regime")}
    cfg = with_overrides(bundle.cfg, {**off, "env.flat_at_close": False})
    market = bundle.market(plain.frame())
    s = bundle.start_row(market)
    k = s + 5
    close, open_ = market.close.copy(), market.open.copy()
    close[k, 1] = 1e-6  # the long ETF collapses during bar k
    open_[k + 1 :, 1] = close[k + 1 :, 1] = 1e-6
    crashed = dataclasses.replace(market, close=close, open=open_)
    long_ = int(np.flatnonzero(EnvParams.from_config(resolve_for_bars(cfg, 60)).grid == 1.0)[0])
    policy = lambda obs, mask: long_  # noqa: E731
    always_long = dataclasses.replace(bundle, cfg=cfg, model=policy)
    result = replay(always_long, crashed, s, s + 10)
    bt = backtest(policy, crashed, always_long.params(), [(s, s + 11)])
    last = result.frame.row(-1, named=True)
    assert result.ruined and bt.ruined and last["forced_exit"] == "ruin"
    assert last["equity"] <= 0 and last["equity"] == bt.equity[-1]
    assert last["exposure"] == bt.exposure[-1] == 0.0
    assert last["position"] == bt.position[-1]
    np.testing.assert_array_equal(result.frame["exposure"].to_numpy()[1:], bt.exposure)


# --------------------------------------------------------------------------- the CLI


def _cli_config(t: Trained, root: Path) -> Path:
    path = root / "cli.yaml"
    path.write_text(yaml.safe_dump({"paths": {"workdir": str(root)}}))
    return path


def test_cli_signal_prints_only_json_and_writes_out(tf: Trained, tmp_path: Path) -> None:
    reg = fresh_registry(tf, tmp_path)
    runner = CliRunner()
    args = ["signal", "--bars", str(tf.raw), "--workdir", str(tmp_path)]
    res = runner.invoke(app, args)
    assert res.exit_code == 6 and "sentio models promote" in res.stderr
    assert res.stdout == ""
    out = tmp_path / "sig.json"
    res = runner.invoke(app, [*args, "--version", tf.version, "--out", str(out)])
    assert res.exit_code == 0, res.stderr
    sig = json.loads(res.stdout)  # nothing but JSON on stdout
    assert sig["version"] == tf.version and json.loads(out.read_text()) == sig
    assert sig["derived_symbols"] == ["SQQQ", "TQQQ"]  # the file holds QQQ only: ingest derived
    reg.promote(tf.version, "test")
    cfg = _cli_config(tf, tmp_path)
    res = runner.invoke(app, ["signal", "--bars", str(tf.raw), "--config", str(cfg)])
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout) == sig


def test_cli_signal_warns_on_stderr_when_the_start_is_in_sample(
    tf: Trained, tmp_path: Path
) -> None:
    fresh_registry(tf, tmp_path)
    args = ["signal", "--bars", str(tf.raw), "--workdir", str(tmp_path), "--version", tf.version]
    res = CliRunner().invoke(app, [*args, "--start", "2024-01-09T15:00:00Z"])
    assert res.exit_code == 0, res.stderr
    sig = json.loads(res.stdout)  # stdout stays pure JSON
    assert sig["in_sample"] is True and sig["account"]["since"] == "2024-01-09T15:00:00Z"
    (warning,) = res.stderr.splitlines()
    assert warning.startswith("warning: ") and "in-sample" in warning
    assert tf.train_end.replace("+00:00", "Z") in warning
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0 and res.stderr == "" and json.loads(res.stdout)["in_sample"] is False


def test_cli_signal_in_the_ongoing_session_decides_at_its_last_bar(
    tf: Trained, tmp_path: Path
) -> None:
    """A bar file taken at 10:30 New York holds the first hour of the session: the signal
    decides at its last bar (ingest keeps the ongoing session, whose later bars have not
    happened yet), the same decision a frame of those bars gives."""
    fresh_registry(tf, tmp_path)
    cut = dt.datetime(2024, 1, 10, 15, 29, tzinfo=dt.UTC)  # 10:29 New York: 60 of 390 bars
    raw = tmp_path / "intraday.feather"
    bars = pl.read_ipc(tf.raw).filter(pl.col("timestamp") <= cut)
    # a vendor file with another ticker, a minute further: not the model's universe
    other = bars.tail(1).with_columns(
        symbol=pl.lit("IWM"), timestamp=pl.col("timestamp") + dt.timedelta(minutes=1)
    )
    pl.concat([bars, other]).write_ipc(raw)
    args = ["signal", "--bars", str(raw), "--workdir", str(tmp_path), "--version", tf.version]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.stderr
    assert res.stderr == ""
    sig = json.loads(res.stdout)
    assert sig["timestamp"] == sig["bars_end"] == "2024-01-10T15:29:00Z"
    lib = signal(load_bundle(tf.registry, tf.version), str(raw))  # the CLI rounds floats
    assert (sig["action"], sig["account"]["bars"]) == (lib["action"], lib["account"]["bars"])
    assert sig["account"]["equity"] == pytest.approx(lib["account"]["equity"], abs=1e-6)


def test_cli_signal_warns_when_an_etf_s_last_bars_have_not_arrived(
    tf: Trained, tmp_path: Path
) -> None:
    """The underlying's bars run to 15:02 but TQQQ's stop at 15:00: the decision is at the
    last bar every instrument has, and stderr says the bars given run further."""
    fresh_registry(tf, tmp_path)
    frame = tf.frame().filter(pl.col("timestamp") <= dt.datetime(2024, 1, 10, 15, 2, tzinfo=dt.UTC))
    lagging = (pl.col("symbol") == tf.cfg.universe.long) & (
        pl.col("timestamp") > dt.datetime(2024, 1, 10, 15, 0, tzinfo=dt.UTC)
    )
    raw = tmp_path / "lagging.feather"
    frame.filter(~lagging).write_ipc(raw)
    args = ["signal", "--bars", str(raw), "--workdir", str(tmp_path), "--version", tf.version]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.stderr
    sig = json.loads(res.stdout)
    assert sig["timestamp"] == "2024-01-10T15:00:00Z" and sig["bars_end"] == "2024-01-10T15:02:00Z"
    (warning,) = res.stderr.splitlines()
    assert warning.startswith("warning: the decision is at the close of 2024-01-10T15:00:00Z")
    assert "2024-01-10T15:02:00Z" in warning


def test_cli_signal_refuses_a_tampered_model_without_unpickling(
    tf: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sentio.agents.sentio_ppo import SentioPPO

    reg = fresh_registry(tf, tmp_path)
    reg.promote(tf.version, "test")
    loads: list[Any] = []
    monkeypatch.setattr(SentioPPO, "load", classmethod(lambda cls, *a, **k: loads.append(a)))
    zip_path = reg.get(tf.version).path / "model.zip"
    zip_path.chmod(0o644)
    with open(zip_path, "ab") as fh:
        fh.write(b"\0")
    res = CliRunner().invoke(app, ["signal", "--bars", str(tf.raw), "--workdir", str(tmp_path)])
    assert res.exit_code == 6
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "model.zip: sha256 mismatch" in lines[0]
    assert lines[0].startswith("error: ")
    assert res.stdout == "" and loads == []


def test_cli_signal_bad_bars_file_is_one_line(tf: Trained, tmp_path: Path) -> None:
    fresh_registry(tf, tmp_path)
    res = CliRunner().invoke(
        app,
        [
            "signal",
            "--bars",
            str(tmp_path / "missing.feather"),
            "--workdir",
            str(tmp_path),
            "--version",
            tf.version,
        ],
    )
    assert res.exit_code == 3
    assert res.stderr.strip() == f"error: {tmp_path / 'missing.feather'}: file not found"


def test_the_learners_scaling_travels_with_the_model(tf: Trained, tf_bundle: ModelBundle) -> None:
    """The reward scale the model learned with is in its zip, through the registry; the
    observations it acts on (session clock in 0..1) come from the same market builder."""
    trained_with = tf.train_model().reward_scale
    assert isinstance(trained_with, float) and trained_with > 0
    assert tf_bundle.model.reward_scale == trained_with
    market = tf_bundle.market(tf.frame())
    j = market.feature_names.index("minutes_to_close")
    assert market.features[:, j].min() >= 0.0 and market.features[:, j].max() <= 1.0
