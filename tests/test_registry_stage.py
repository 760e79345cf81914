"""The registry stage of the nightly flow: registration with the version contract,
idempotence, the candidate choice, the leakage-free comparison window and the gate.

The world here is hand-made (five NYSE sessions of minute bars, two walk-forward-like
folds, two seeds, fake model files and a hand-written report ``metrics.json``), so that
every expected number can be worked out by hand; the champion's re-evaluation goes
through a recording fake :data:`sentio.stages.registry.Backtester` (the real one rebuilds markets
with :mod:`sentio.live`).
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from sentio import stages
from sentio.config import SentioConfig, config_from_dict, write_config
from sentio.errors import DataError
from sentio.evaluation import deflated_sharpe_ratio, probabilistic_sharpe_ratio, sharpe_moments
from sentio.io import sha256_file, write_json_atomic
from sentio.registry import Comparison, Registry, RegistryError, Version
from sentio.stages import registry as gate_stage
from tests.conftest import minute_bars

# Mon 8 .. Fri 12 January 2024: regular hours 14:30-21:00 UTC, last bar 20:59
S = ["2024-01-08", "2024-01-09", "2024-01-10", "2024-01-11", "2024-01-12"]


def utc(day: str, hhmm: str) -> str:
    return f"{day}T{hhmm}:00+00:00"


def _rng(day0: str, t0: str, day1: str, t1: str) -> dict[str, Any]:
    return {"start_row": 0, "stop_row": 0, "start": utc(day0, t0), "end": utc(day1, t1)}


# fold 0: train S1, test S2; fold 1: train S1..S3, test S4..S5 (its window ends last)
FOLDS = [
    {"train": [_rng(S[0], "14:30", S[0], "20:59")], "test": [_rng(S[1], "14:30", S[1], "20:59")]},
    {"train": [_rng(S[0], "14:30", S[2], "20:59")], "test": [_rng(S[3], "14:30", S[4], "20:59")]},
]
# per-bar Sharpe moments of each seed's stitched returns, as the report writes them
PER_BAR = {0: (0.02, 1170, 0.1, 3.5), 1: (0.03, 1170, -0.2, 4.0)}
STITCHED_SHARPE = {0: 0.8, 1: 1.3}  # annualised: seed 1 is the better one
STITCHED_MDD = {0: -0.05, 1: -0.07}
FEATURES = ["ret_1", "ret_5", "vol_30"]
EXTRA_KEYS = {
    "fold",
    "seed",
    "train_key",
    "run",
    "train_start",
    "train_end",
    "window_start",
    "window_end",
    "feature_columns",
}


@dataclass
class World:
    root: Path
    cfg: SentioConfig
    runs: list[dict[str, Any]]
    report: dict[str, Any]
    bars: Path
    folds: Path
    regimes: Path
    registry: Registry

    def stage(self, run_name: str = "run-1", **kwargs: Any) -> dict[str, Any]:
        kwargs.setdefault("backtester", FakeBacktester({}))
        return gate_stage.registry_stage(
            self.runs,
            self.report,
            kwargs.pop("cfg", self.cfg),
            self.root / run_name / "registry",
            bars_path=self.bars,
            folds_path=self.folds,
            regimes_path=self.regimes,
            feature_columns=FEATURES,
            data_hashes={"bars": "b" * 64, "features": "f" * 64},
            run_name=run_name,
            registry=self.registry,
            **kwargs,
        )


class FakeBacktester:
    """Records every call; returns the Sharpe given per version (per train key)."""

    def __init__(self, sharpe_by_key: dict[str, float]) -> None:
        self.sharpe_by_key = sharpe_by_key
        self.calls: list[tuple[str, str, str]] = []

    def __call__(self, registry: Any, version_id: str, start: str, end: str) -> dict[str, Any]:
        self.calls.append((version_id, start, end))
        key = registry.get(version_id).manifest["extra"]["train_key"]
        return {"sharpe": self.sharpe_by_key[key], "n_bars": 123, "total_return": 0.01}


def make_cfg(**registry: Any) -> SentioConfig:
    return config_from_dict(
        {
            "features": {"normalisation": "train_fit"},
            "cv": {"embargo_bars": 30},
            "registry": {"min_dsr": 0.5, "max_drawdown": 0.2, "min_compare_bars": 100, **registry},
        }
    )


def build_world(tmp_path: Path, cfg: SentioConfig | None = None) -> World:
    cfg = cfg or make_cfg()
    tmp_path.mkdir(parents=True, exist_ok=True)
    bars = tmp_path / "bars.feather"
    minute_bars(S[0], S[-1], price=400.0).write_ipc(bars)
    entries, regime_entries = [], []
    for j, f in enumerate(FOLDS):
        norm = write_json_atomic(tmp_path / "folds" / f"fold_{j}" / "normaliser.json", {"j": j})
        model = write_json_atomic(tmp_path / "regimes" / f"fold_{j}" / "model.json", {"m": j})
        entries.append(
            {
                "fold": j,
                "train_ranges": f["train"],
                "test_blocks": f["test"],
                "normaliser": str(norm),
            }
        )
        probs = tmp_path / "regimes" / f"fold_{j}" / "regimes.feather"
        stamps = pl.read_ipc(bars).filter(pl.col("symbol") == "QQQ")["timestamp"].unique().sort()
        label = (pl.int_range(pl.len(), dtype=pl.Int64) + j) % 3
        pl.DataFrame({"timestamp": stamps}).with_columns(
            *[(label == k).cast(pl.Float32).alias(f"p_regime_{k}") for k in range(3)],
            regime=label.cast(pl.Int8),
        ).write_ipc(probs)
        regime_entries.append({"fold": j, "model": str(model), "output": str(probs)})
    folds = write_json_atomic(
        tmp_path / "folds" / "folds.json", {"samples": 1950, "folds": entries}
    )
    regimes = write_json_atomic(tmp_path / "regimes" / "regimes.json", {"folds": regime_entries})
    runs = []
    for j in range(len(FOLDS)):
        for seed in (0, 1):
            folder = tmp_path / "train" / f"f{j}s{seed}"
            folder.mkdir(parents=True)
            (folder / "model.zip").write_bytes(f"model fold {j} seed {seed}".encode())
            (folder / "backtest.feather").write_bytes(f"backtest {j} {seed}".encode())
            write_config(folder / "config.yaml", cfg)
            runs.append(
                {
                    "key": f"trainkey-f{j}-s{seed}",
                    "fold": j,
                    "seed": seed,
                    "model": str(folder / "model.zip"),
                    "output": str(folder / "backtest.feather"),
                    "files": {str(folder / "model.zip"): sha256_file(folder / "model.zip")},
                    "metrics": {  # the fold's own Sharpe prefers seed 0, the stitched seed 1
                        "sharpe": 1.0 - seed + 0.1 * j,
                        "max_drawdown": -0.01,
                        "n_bars": 390,
                    },
                    "test_bars": 390,
                }
            )
    sharpes = [PER_BAR[s][0] for s in (0, 1)]
    doc = {
        "headline": {"n_trials": 2, "sharpe_variance": float(np.var(sharpes, ddof=1))},
        "seeds": {
            str(s): {
                "metrics": {
                    "sharpe": STITCHED_SHARPE[s],
                    "max_drawdown": STITCHED_MDD[s],
                    "n_bars": 1170,
                },
                "per_bar": dict(
                    zip(("sharpe", "n_obs", "skew", "kurtosis"), PER_BAR[s], strict=True)
                ),
                # the seed's PSR and DSR, computed once by the report (the gate reads them)
                "psr": expected_psr(s),
                "dsr": expected_dsr(s),
            }
            for s in (0, 1)
        },
    }
    metrics = write_json_atomic(tmp_path / "report" / "metrics.json", doc)
    return World(
        root=tmp_path,
        cfg=cfg,
        runs=runs,
        report={"paths": {"metrics": str(metrics)}},
        bars=bars,
        folds=folds,
        regimes=regimes,
        registry=Registry(tmp_path / "registry"),
    )


def expected_dsr(seed: int) -> float:
    sharpe, n, skew, kurt = PER_BAR[seed]
    variance = float(np.var([PER_BAR[0][0], PER_BAR[1][0]], ddof=1))
    return deflated_sharpe_ratio(
        sharpe, n, n_trials=2, sharpe_variance=variance, skew=skew, kurtosis=kurt
    )


def expected_psr(seed: int) -> float:
    sharpe, n, skew, kurt = PER_BAR[seed]
    return probabilistic_sharpe_ratio(sharpe, n, skew=skew, kurtosis=kurt)


def champion_with_train_end(world: World, train_end: str, tag: str = "champ") -> Version:
    """An earlier night's champion: a registered version trained up to ``train_end``."""
    model = world.root / f"{tag}.zip"
    model.write_bytes(tag.encode())
    v = world.registry.register(
        model,
        None,
        {"sharpe": 9.0, "dsr": 0.99, "max_drawdown": 0.01},
        data_hashes={},
        code_version="old",
        algo="sentio_ppo",
        extra={"train_key": f"trainkey-{tag}", "train_end": train_end},
    )
    world.registry.promote(v.version, "an earlier night")
    return v


# --------------------------------------------------------------------------- registration


def test_every_run_is_registered_with_the_version_contract(tmp_path: Path) -> None:
    w = build_world(tmp_path)
    out = w.stage("night-1")
    assert out["new_versions"] == 4 and len(out["registered"]) == 4
    assert [v.version for v in w.registry.list()] == sorted(out["registered"])
    by_run = {(v["fold"], v["seed"]): v["version"] for v in out["versions"]}
    assert set(by_run) == {(0, 0), (0, 1), (1, 0), (1, 1)}
    for run in w.runs:
        fold, seed = run["fold"], run["seed"]
        v = w.registry.get(by_run[(fold, seed)])
        m = v.manifest
        assert set(m["files"]) == {
            "model.zip",
            "config.yaml",
            "normaliser.json",
            "regime_model.json",
            "backtest.feather",
            "training_regimes.feather",
        }
        folder = Path(run["output"]).parent
        # the drift reference: the run's own backtest, and the regimes of its training range
        assert (v.path / "backtest.feather").read_bytes() == Path(run["output"]).read_bytes()
        counts = pl.read_ipc(v.path / "training_regimes.feather")
        train = FOLDS[fold]["train"][0]
        probs = pl.read_ipc(Path(w.root) / "regimes" / f"fold_{fold}" / "regimes.feather")
        lo, hi = (dt.datetime.fromisoformat(train[k]) for k in ("start", "end"))
        expected: dict[dt.date, list[int]] = {}
        for t, r in zip(probs["timestamp"], probs["regime"], strict=True):
            if lo <= t <= hi:
                expected.setdefault(t.date(), [0, 0, 0])[r] += 1
        assert counts["session"].to_list() == sorted(expected)
        assert counts.select("regime_0", "regime_1", "regime_2").rows() == [
            tuple(expected[d]) for d in sorted(expected)
        ]
        assert counts["bars"].to_list() == [sum(expected[d]) for d in sorted(expected)]
        assert (v.path / "model.zip").read_bytes() == Path(run["model"]).read_bytes()
        assert (v.path / "config.yaml").read_text() == (folder / "config.yaml").read_text()
        assert json.loads((v.path / "normaliser.json").read_text()) == {"j": fold}
        assert json.loads((v.path / "regime_model.json").read_text()) == {"m": fold}
        assert m["algo"] == w.cfg.agent.algo and m["data_hashes"]["bars"] == "b" * 64
        extra = m["extra"]
        assert set(extra) == EXTRA_KEYS
        assert (extra["fold"], extra["seed"], extra["run"]) == (fold, seed, "night-1")
        assert extra["train_key"] == run["key"]
        assert extra["feature_columns"] == FEATURES
        f = FOLDS[fold]
        assert extra["train_start"] == f["train"][0]["start"]
        assert extra["train_end"] == f["train"][-1]["end"]
        assert (extra["window_start"], extra["window_end"]) == (
            f["test"][0]["start"],
            f["test"][-1]["end"],
        )
        # metrics: the run's own out-of-sample metrics, its window and the seed's DSR
        assert m["metrics"] == {
            **run["metrics"],
            "window_start": extra["window_start"],
            "window_end": extra["window_end"],
            "dsr": pytest.approx(expected_dsr(seed)),
        }
        w.registry.verify(v.version)

    # a modified regime model (or normaliser) is detected before anything is loaded
    v = w.registry.get(by_run[(1, 1)])
    (v.path / "regime_model.json").write_text('{"m": 99}')
    with pytest.raises(RegistryError, match=r"regime_model\.json: sha256 mismatch"):
        w.registry.verify(v.version)


def test_versions_carry_no_normaliser_or_regime_model_when_not_used(tmp_path: Path) -> None:
    cfg = config_from_dict(
        {
            "features": {"normalisation": "rolling"},
            "regimes": {"enabled": False},
            "agent": {"regime_gating": False},
            "env": {"masks": {"regime": False}},
        }
    )
    w = build_world(tmp_path, cfg)
    out = gate_stage.registry_stage(
        w.runs,
        w.report,
        cfg,
        tmp_path / "out",
        bars_path=w.bars,
        folds_path=w.folds,
        regimes_path=None,
        feature_columns=FEATURES,
        data_hashes={},
        run_name="r",
        registry=w.registry,
        backtester=FakeBacktester({}),
    )
    for vid in out["registered"]:
        assert set(w.registry.get(vid).manifest["files"]) == {
            "model.zip",
            "config.yaml",
            "backtest.feather",
        }


def test_second_run_with_unchanged_inputs_creates_nothing_and_keeps_the_champion(
    tmp_path: Path,
) -> None:
    w = build_world(tmp_path)
    first = w.stage("night-1")
    assert first["promoted"] and first["champion_after"] == first["candidate"]
    pointer = w.registry.champion_path.read_bytes()
    history = w.registry.history()

    second = w.stage("night-2")
    assert second["new_versions"] == 0
    assert second["registered"] == first["registered"]
    assert len(w.registry.list()) == 4
    assert second["candidate"] == first["candidate"]
    assert second["champion_before"] == second["champion_after"] == first["champion_after"]
    assert not second["promoted"]
    (reason,) = second["reasons"]
    promoted_at = w.registry.champion()["promoted_at"]  # type: ignore[index]
    assert reason.startswith(f"{first['candidate']} is already the champion (since {promoted_at}: ")
    assert w.registry.champion_path.read_bytes() == pointer
    assert w.registry.history() == history
    # the versions keep the run that registered them
    assert {w.registry.get(v).manifest["extra"]["run"] for v in second["registered"]} == {"night-1"}

    # the same train key with a different model (a retraining that differs) is a new version
    model = Path(w.runs[0]["model"])
    model.write_bytes(b"retrained differently")
    w.runs[0]["files"] = {str(model): sha256_file(model)}
    third = w.stage("night-3")
    assert third["new_versions"] == 1
    assert third["registered"][1:] == first["registered"][1:]
    assert third["registered"][0] != first["registered"][0]


def test_a_model_file_that_is_not_the_one_backtested_is_not_registered(tmp_path: Path) -> None:
    """A summary pairs a model with its metrics by the model's sha256: another file (a
    concurrent writer, a damaged disk) registers nothing and leaves the registry alone."""
    w = build_world(tmp_path)
    Path(w.runs[1]["model"]).write_bytes(b"another run's model")
    with pytest.raises(DataError, match=r"model\.zip: the model file is not the one its training"):
        w.stage("night-1")
    assert w.registry.list() == [] and w.registry.champion() is None


def test_concurrent_register_once_creates_one_version(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg")
    model = tmp_path / "m.zip"
    model.write_bytes(b"model")
    results: list[tuple[str, bool]] = []
    barrier = threading.Barrier(4)

    def worker() -> None:
        barrier.wait()
        v, created = reg.register_once(
            model,
            None,
            {},
            data_hashes={},
            code_version="x",
            algo="ppo",
            extra={"train_key": "k"},
        )
        results.append((v.version, created))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(reg.list()) == 1
    assert sorted(c for _, c in results) == [False, False, False, True]
    assert {v for v, _ in results} == {reg.list()[0].version}
    with pytest.raises(RegistryError, match="train_key"):
        reg.register_once(model, None, {}, data_hashes={}, code_version="x", algo="ppo", extra={})


# --------------------------------------------------------------------------- candidate


def _windows(spec: dict[int, tuple[str, str | None]]) -> dict[int, dict[str, Any]]:
    """fold -> (window_end, train_end) as the minimum fold_windows() entry."""
    return {f: {"window_end": end, "train_end": te} for f, (end, te) in spec.items()}


def test_candidate_is_the_best_seed_of_the_fold_tested_last() -> None:
    runs = [{"fold": f, "seed": s} for f in (0, 1, 2) for s in (0, 1, 2)]
    windows = _windows(
        {
            0: (utc(S[1], "20:59"), utc(S[0], "20:59")),
            1: (utc(S[4], "20:59"), utc(S[3], "20:59")),  # ends last
            2: (utc(S[2], "20:59"), utc(S[1], "20:59")),
        }
    )
    # the best seed by the stitched Sharpe across all folds, not by fold 1's own Sharpe
    pick = gate_stage.choose_candidate(runs, {0: 0.4, 1: 1.1, 2: 0.9}, windows)
    assert pick is not None and (pick["fold"], pick["seed"]) == (1, 1)
    # a missing or NaN Sharpe ranks last; ties go to the lowest seed
    pick = gate_stage.choose_candidate(runs, {0: None, 1: float("nan"), 2: -3.0}, windows)
    assert pick is not None and (pick["fold"], pick["seed"]) == (1, 2)
    pick = gate_stage.choose_candidate(runs, {0: 0.5, 1: 0.5, 2: 0.5}, windows)
    assert pick is not None and (pick["fold"], pick["seed"]) == (1, 0)
    assert gate_stage.choose_candidate(runs, {}, windows)["seed"] == 0  # type: ignore[index]
    assert gate_stage.choose_candidate([], {}, windows) is None


def test_candidate_fold_ties_go_to_the_latest_training_end() -> None:
    # cpcv: several splits test the last group; the one trained on later data wins
    runs = [{"fold": f, "seed": 0} for f in (0, 1, 2)]
    end = utc(S[4], "20:59")
    windows = _windows({0: (end, utc(S[1], "20:59")), 1: (end, utc(S[2], "20:59")), 2: (end, None)})
    assert gate_stage.choose_candidate(runs, {0: 1.0}, windows)["fold"] == 1  # type: ignore[index]
    windows[0]["train_end"] = windows[1]["train_end"]
    assert gate_stage.choose_candidate(runs, {0: 1.0}, windows)["fold"] == 0  # type: ignore[index]


def test_fold_windows_of_a_folds_file(tmp_path: Path) -> None:
    w = build_world(tmp_path)
    windows = gate_stage.fold_windows(stages.load_folds(w.folds))
    assert windows[1] == {
        "train_start": utc(S[0], "14:30"),
        "train_end": utc(S[2], "20:59"),
        "window_start": utc(S[3], "14:30"),
        "window_end": utc(S[4], "20:59"),
        "last_block": (utc(S[3], "14:30"), utc(S[4], "20:59")),
    }


def test_seed_gate_metrics_use_the_reports_numbers_and_formula(tmp_path: Path) -> None:
    """The DSR of each seed's stitched series, as the report computes the headline's."""
    from sentio.report import build_report

    rng = np.random.default_rng(7)
    runs = []
    stitched: dict[int, list[np.ndarray]] = {0: [], 1: []}
    for fold, day in enumerate(S[1:3]):
        stamps = pl.datetime_range(
            pl.datetime(2024, 1, int(day[-2:]), 14, 30, time_zone="UTC"),
            pl.datetime(2024, 1, int(day[-2:]), 20, 59, time_zone="UTC"),
            "1m",
            eager=True,
        )
        for seed in (0, 1):
            r = rng.normal(2e-5 * (seed + 1), 1e-3, stamps.len()) * (
                1.0 + rng.standard_t(4, stamps.len()) / 10
            )
            stitched[seed].append(r)
            folder = tmp_path / f"f{fold}s{seed}"
            folder.mkdir()
            pl.DataFrame(
                {
                    "timestamp": stamps,
                    "returns": r,
                    "position": np.ones(r.size),
                    "costs": np.zeros(r.size),
                }
            ).write_ipc(folder / "backtest.feather")
            runs.append({"fold": fold, "seed": seed, "output": str(folder / "backtest.feather")})
    cfg = config_from_dict({"report": {"bootstrap_resamples": 100}})
    report = build_report(runs, tmp_path / "rep2", cfg=cfg)
    doc = json.loads(Path(report["paths"]["metrics"]).read_text())
    moments = {s: sharpe_moments(np.concatenate(stitched[s])) for s in (0, 1)}
    variance = float(np.var([moments[0].sharpe, moments[1].sharpe], ddof=1))
    for seed in (0, 1):
        got = gate_stage.seed_gate_metrics(doc, seed)
        m = moments[seed]
        want = deflated_sharpe_ratio(
            m.sharpe,
            m.n_obs,
            n_trials=2,
            sharpe_variance=variance,
            skew=m.skew,
            kurtosis=m.kurtosis,
        )
        assert got["dsr"] == pytest.approx(want, rel=1e-9)
        assert got["n_trials"] == 2
        entry = doc["seeds"][str(seed)]
        assert got["max_drawdown"] == entry["metrics"]["max_drawdown"]
        assert got["sharpe_stitched"] == entry["metrics"]["sharpe"]
        # the report stores the seed's PSR and DSR; the gate takes the stored DSR, which
        # is exactly what the formula gives on the stored per-bar figures
        pb, head = entry["per_bar"], doc["headline"]
        assert got["dsr"] == entry["dsr"]
        assert entry["dsr"] == deflated_sharpe_ratio(
            pb["sharpe"],
            int(pb["n_obs"]),
            n_trials=head["n_trials"],
            sharpe_variance=head["sharpe_variance"],
            skew=pb["skew"],
            kurtosis=pb["kurtosis"],
        )
        assert entry["psr"] == probabilistic_sharpe_ratio(
            pb["sharpe"], int(pb["n_obs"]), skew=pb["skew"], kurtosis=pb["kurtosis"]
        )

    # one seed: its stitched series is the headline, so its DSR is the report's DSR
    single = build_report([r for r in runs if r["seed"] == 1], tmp_path / "rep1", cfg=cfg)
    doc1 = json.loads(Path(single["paths"]["metrics"]).read_text())
    assert gate_stage.seed_gate_metrics(doc1, 1)["dsr"] == pytest.approx(single["dsr"], rel=1e-12)
    assert doc1["seeds"]["1"]["psr"] == doc1["headline"]["psr"]


def test_the_gate_uses_the_dsr_the_report_stored_not_a_recomputation(tmp_path: Path) -> None:
    """The report computes each seed's DSR once; the registry reads it from metrics.json.

    Here the stored DSR of the candidate's seed differs from what the formula gives on
    the stored per-bar figures: the versions, the gate and its reasons carry the stored
    one. A stored DSR that is missing fails the gate, per-bar figures or not.
    """
    w = build_world(tmp_path)
    path = Path(w.report["paths"]["metrics"])
    doc = json.loads(path.read_text())
    assert expected_dsr(1) > 0.5  # recomputed, seed 1 would pass min_dsr = 0.5
    doc["seeds"]["1"]["dsr"] = 0.42
    write_json_atomic(path, doc)
    out = w.stage("night-1")
    assert out["candidate_seed"] == 1 and not out["promoted"]
    assert out["reasons"] == ["DSR 0.42 < min_dsr 0.5"]
    assert out["candidate_metrics"]["dsr"] == 0.42
    for v in out["versions"]:
        dsr = w.registry.get(v["version"]).metrics["dsr"]
        assert dsr == (0.42 if v["seed"] == 1 else doc["seeds"]["0"]["dsr"])

    w2 = build_world(tmp_path / "missing")
    path = Path(w2.report["paths"]["metrics"])
    doc = json.loads(path.read_text())
    del doc["seeds"]["1"]["dsr"]
    write_json_atomic(path, doc)
    out = w2.stage("night-1")
    assert not out["promoted"] and out["candidate_metrics"]["dsr"] is None
    assert out["reasons"] == ["DSR missing or not finite (needs >= 0.5)"]
    assert "dsr" not in w2.registry.get(out["candidate"]).metrics


# --------------------------------------------------------------------------- the window


def _stamps(path: Path) -> np.ndarray:
    ts = pl.read_ipc(path)["timestamp"]
    return ts.dt.replace_time_zone(None).to_numpy().astype("datetime64[us]")


def test_comparison_window_arithmetic(tmp_path: Path) -> None:
    stamps = _stamps(build_world(tmp_path).bars)  # 5 x 390 minute bars
    window = (utc(S[3], "14:30"), utc(S[4], "20:59"))  # 780 bars

    # champion trained through the close of S3: 30 bars of embargo, counted in BARS across
    # the overnight gap: clean from 15:00 on S4 -> 360 + 390 bars
    cw = gate_stage.comparison_window(
        stamps, window, utc(S[2], "20:59"), embargo_bars=30, min_bars=750
    )
    assert (cw.start, cw.end, cw.n_bars, cw.reason) == (
        utc(S[3], "15:00"),
        utc(S[4], "20:59"),
        750,
        None,
    )
    assert cw.clean_from == utc(S[3], "15:00")
    # no embargo: every bar strictly after the training end; the training end itself is out
    cw = gate_stage.comparison_window(
        stamps, window, utc(S[2], "20:59"), embargo_bars=0, min_bars=1
    )
    assert (cw.start, cw.n_bars) == (utc(S[3], "14:30"), 780)
    cw = gate_stage.comparison_window(
        stamps, window, utc(S[3], "14:30"), embargo_bars=0, min_bars=1
    )
    assert (cw.start, cw.n_bars) == (utc(S[3], "14:31"), 779)
    # champion trained up to 20:00 on the last day: 59 bars after, 30 embargoed, 29 clean
    cw = gate_stage.comparison_window(
        stamps, window, utc(S[4], "20:00"), embargo_bars=30, min_bars=29
    )
    assert (cw.start, cw.end, cw.n_bars, cw.reason) == (
        utc(S[4], "20:31"),
        utc(S[4], "20:59"),
        29,
        None,
    )
    # one bar short: refused, with the numbers
    cw = gate_stage.comparison_window(
        stamps, window, utc(S[4], "20:00"), embargo_bars=30, min_bars=30
    )
    assert cw.reason == (
        f"only 29 leakage-free bars to compare on: the candidate's window {window[0]}..{window[1]} "
        f"after the champion's training end {utc(S[4], '20:00')} plus an embargo of 30 bars "
        f"(clean from {utc(S[4], '20:31')}); registry.min_compare_bars = 30"
    )
    # champion trained on everything (k-fold): nothing left; a window before the embargo ends
    cw = gate_stage.comparison_window(
        stamps, window, utc(S[4], "20:59"), embargo_bars=0, min_bars=2
    )
    assert (cw.n_bars, cw.start, cw.clean_from) == (0, None, None)
    assert "only 0 leakage-free bars" in str(cw.reason) and "beyond the data" in str(cw.reason)
    early = (utc(S[1], "14:30"), utc(S[1], "20:59"))
    cw = gate_stage.comparison_window(
        stamps, early, utc(S[0], "20:59"), embargo_bars=390, min_bars=1
    )
    assert cw.n_bars == 0 and cw.clean_from == utc(S[2], "14:30")
    # other ISO spellings of the same instants give the same window
    cw = gate_stage.comparison_window(
        stamps,
        ("2024-01-11T09:30:00-05:00", "2024-01-12T15:59:00-05:00"),
        "2024-01-10T15:59:00-05:00",
        embargo_bars=30,
        min_bars=750,
    )
    assert (cw.start, cw.n_bars) == (utc(S[3], "15:00"), 750)


# --------------------------------------------------------------------------- the gate


def test_champion_is_re_evaluated_on_the_candidates_window(tmp_path: Path) -> None:
    w = build_world(tmp_path)
    champ = champion_with_train_end(w, utc(S[3], "14:59"))  # 30 bars into the window
    fake = FakeBacktester({"trainkey-f1-s1": 2.0, "trainkey-champ": 1.5})
    out = w.stage("night-1", backtester=fake)

    cand = out["candidate"]
    assert w.registry.get(cand).manifest["extra"]["train_key"] == "trainkey-f1-s1"
    # clean from 15:00 + 30 bars of embargo = 15:30 on S4, to the window's end
    window = [utc(S[3], "15:30"), utc(S[4], "20:59")]
    assert out["compare_window"] == window and out["compare_bars"] == 330 + 390
    # the candidate AND the champion, on exactly that window, nothing else
    assert fake.calls == [(cand, *window), (champ.version, *window)]
    cm, hm = out["candidate_metrics"], out["champion_metrics"]
    assert (cm["window_start"], cm["window_end"]) == tuple(window)
    assert (hm["window_start"], hm["window_end"]) == tuple(window)
    assert (cm["sharpe"], hm["sharpe"]) == (2.0, 1.5)
    # the gate's other figures: the seed's stitched DSR and drawdown
    assert cm["dsr"] == pytest.approx(expected_dsr(1))
    assert cm["max_drawdown"] == STITCHED_MDD[1]
    assert out["promoted"] and out["reasons"] == []
    assert out["champion_before"] == champ.version and out["champion_after"] == cand
    assert f"Sharpe 2 > champion 1.5 on {window[0]}..{window[1]}" in out["checks"]

    pointer = w.registry.champion()
    assert pointer is not None and pointer["previous"] == champ.version
    last = w.registry.history()[-1]
    assert last["action"] == "promote" and last["version"] == cand
    assert last["window"] == window
    assert last["candidate_metrics"]["sharpe"] == 2.0 and last["champion_metrics"]["sharpe"] == 1.5
    assert last["reason"].startswith("nightly run night-1; gate passed")
    assert json.loads(Path(out["output"]).read_text()) == out
    assert Path(out["output"]) == tmp_path / "night-1" / "registry" / "decision.json"


def test_a_candidate_that_does_not_beat_the_champion_is_rejected_and_recorded(
    tmp_path: Path,
) -> None:
    w = build_world(tmp_path)
    champ = champion_with_train_end(w, utc(S[2], "20:59"))
    fake = FakeBacktester({"trainkey-f1-s1": 0.7, "trainkey-champ": 0.9})
    out = w.stage("night-1", backtester=fake)
    window = [utc(S[3], "15:00"), utc(S[4], "20:59")]
    assert not out["promoted"] and out["compare_window"] == window
    assert out["reasons"] == [f"Sharpe 0.7 <= champion 0.9 on {window[0]}..{window[1]}"]
    assert out["champion_before"] == out["champion_after"] == champ.version
    last = w.registry.history()[-1]
    assert (last["action"], last["version"], last["champion"]) == (
        "reject",
        out["candidate"],
        champ.version,
    )
    assert last["reasons"] == out["reasons"] and last["window"] == window
    assert json.loads(Path(out["output"]).read_text())["reasons"] == out["reasons"]


def test_too_few_clean_bars_cannot_compare_and_say_why(tmp_path: Path) -> None:
    w = build_world(tmp_path)
    champ = champion_with_train_end(w, utc(S[4], "20:00"))  # trained on most of the window
    fake = FakeBacktester({})
    out = w.stage("night-1", backtester=fake)
    assert fake.calls == []  # nothing backtested on a window that cannot decide
    assert not out["promoted"] and out["compare_window"] is None and out["compare_bars"] == 29
    (reason,) = out["reasons"]
    assert reason.startswith(f"cannot compare with champion {champ.version}: only 29 leakage-free")
    assert "registry.min_compare_bars = 100" in reason and utc(S[4], "20:31") in reason
    # the candidate's own conditions were still checked
    assert out["checks"] == [
        f"DSR {expected_dsr(1):.4g} >= min_dsr 0.5",
        "max drawdown 0.07 <= limit 0.2",
    ]
    assert w.registry.champion()["version"] == champ.version  # type: ignore[index]
    assert w.registry.history()[-1]["reasons"] == [reason]
    assert json.loads(Path(out["output"]).read_text())["reasons"] == [reason]


def test_champion_without_training_end_cannot_be_compared(tmp_path: Path) -> None:
    w = build_world(tmp_path)
    model = tmp_path / "manual.zip"
    model.write_bytes(b"manual")
    v = w.registry.register(model, None, {}, data_hashes={}, code_version="x", algo="ppo")
    w.registry.promote(v.version, "by hand")
    out = w.stage()
    assert not out["promoted"]
    assert out["reasons"][-1].startswith(f"cannot compare with champion {v.version}")
    assert "no extra.train_end" in out["reasons"][-1]


def test_without_a_champion_the_gate_checks_dsr_and_drawdown_only(tmp_path: Path) -> None:
    w = build_world(tmp_path, make_cfg(max_drawdown=0.06))  # seed 1's stitched MDD is 0.07
    fake = FakeBacktester({})
    out = w.stage(backtester=fake)
    assert fake.calls == [] and out["champion_before"] is None and out["champion_after"] is None
    assert out["reasons"] == ["max drawdown 0.07 > limit 0.06"]
    assert out["candidate_metrics"]["window_start"] == utc(S[3], "14:30")
    assert w.registry.history()[-1]["action"] == "reject"

    w2 = build_world(tmp_path / "b", make_cfg(min_dsr=0.999))
    out = w2.stage()
    assert out["reasons"] == [f"DSR {expected_dsr(1):.4g} < min_dsr 0.999"]


def test_must_beat_champion_off_skips_the_comparison(tmp_path: Path) -> None:
    w = build_world(tmp_path, make_cfg(must_beat_champion=False))
    champion_with_train_end(w, utc(S[4], "20:00"))
    fake = FakeBacktester({})
    out = w.stage(backtester=fake)
    assert fake.calls == [] and out["promoted"] and out["champion_metrics"] is None


def test_evaluate_runs_inside_the_registry_lock(tmp_path: Path) -> None:
    from filelock import FileLock, Timeout

    w = build_world(tmp_path)
    champ = champion_with_train_end(w, utc(S[2], "20:59"))
    model = tmp_path / "cand.zip"
    model.write_bytes(b"cand")
    cand = w.registry.register(model, None, {}, data_hashes={}, code_version="x", algo="ppo")
    seen: list[str | None] = []

    def evaluate(current: Version | None) -> Comparison:
        seen.append(current.version if current else None)
        with pytest.raises(Timeout):  # nobody can change the pointer meanwhile
            FileLock(str(w.registry.root / ".lock"), timeout=0).acquire()
        window = {"window_start": "a", "window_end": "b"}
        return Comparison(
            candidate={"dsr": 0.99, "max_drawdown": 0.1, "sharpe": 2.0, **window},
            champion={"sharpe": 1.0, **window},
            window=("a", "b"),
        )

    d = w.registry.promote_if_passes(cand.version, w.cfg.registry, evaluate=evaluate)
    assert d.promote and d.champion == champ.version and seen == [champ.version]
    assert d.comparison is not None and d.comparison.window == ("a", "b")
    pointer = w.registry.champion()
    assert pointer is not None and pointer["previous"] == champ.version  # the one it beat
    # already the champion: refused without calling evaluate or writing history
    n = len(w.registry.history())
    d = w.registry.promote_if_passes(cand.version, w.cfg.registry, evaluate=evaluate)
    assert not d.promote and seen == [champ.version] and len(w.registry.history()) == n


def test_decision_markdown_and_table(tmp_path: Path) -> None:
    from sentio.registry import decision_markdown, versions_table

    w = build_world(tmp_path)
    champ = champion_with_train_end(w, utc(S[2], "20:59"))
    out = w.stage(backtester=FakeBacktester({"trainkey-f1-s1": 0.7, "trainkey-champ": 0.9}))
    md = decision_markdown(out)
    assert f"**Not promoted**: `{out['candidate']}`; the champion stays `{champ.version}`" in md
    assert out["reasons"][0] in md and utc(S[3], "15:00") in md
    assert "| sharpe | 0.700 | 0.900 |" in md
    rows = versions_table(out)
    assert [(r["fold"], r["seed"]) for r in rows] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert [r["candidate"] for r in rows] == [False, False, False, True]
    assert all(r["new"] for r in rows) and not any(r["champion"] for r in rows)


def test_a_champion_changed_meanwhile_is_the_one_compared_and_replaced(tmp_path: Path) -> None:
    """Compare-and-swap: the comparison prepared outside the lock is thrown away when
    another process changed the champion before the lock was taken."""
    w = build_world(tmp_path)
    old = champion_with_train_end(w, utc(S[2], "20:59"), tag="old")
    model = tmp_path / "new.zip"
    model.write_bytes(b"new")
    new = w.registry.register(
        model,
        None,
        {},
        data_hashes={},
        code_version="x",
        algo="ppo",
        extra={"train_key": "trainkey-new", "train_end": utc(S[3], "14:59")},
    )
    sharpe = {"trainkey-f1-s1": 2.0, "trainkey-old": 1.0, "trainkey-new": 1.5}

    class Meanwhile(FakeBacktester):
        def __call__(self, registry: Any, version_id: str, start: str, end: str) -> dict[str, Any]:
            if not self.calls:  # another process promotes `new` during our first backtest
                registry.promote(new.version, "someone else")
            return super().__call__(registry, version_id, start, end)

    fake = Meanwhile(sharpe)
    out = w.stage(backtester=fake)
    cand = out["candidate"]
    first = [utc(S[3], "15:00"), utc(S[4], "20:59")]  # after the old champion's training
    second = [utc(S[3], "15:30"), utc(S[4], "20:59")]  # after the new one's
    assert fake.calls == [
        (cand, *first),
        (old.version, *first),
        (cand, *second),
        (new.version, *second),
    ]
    assert out["champion_before"] == new.version and out["compare_window"] == second
    assert out["compare_bars"] == 720 and out["champion_metrics"]["sharpe"] == 1.5
    assert out["promoted"] and w.registry.champion()["previous"] == new.version  # type: ignore[index]


def _damage(registry: Registry, version: str) -> None:
    path = registry.get(version).model_path
    path.write_bytes(path.read_bytes() + b"\0")


def test_a_damaged_candidate_is_never_promoted_by_the_gate(tmp_path: Path) -> None:
    """Without a champion nothing loads the candidate (no comparison to backtest), and the
    recording backtester never checks hashes: the gate's own verification refuses it."""
    w = build_world(tmp_path)
    first = w.stage("night-1", cfg=make_cfg(min_dsr=0.999))  # refused: DSR too low
    cand = first["candidate"]
    assert not first["promoted"] and w.registry.champion() is None
    _damage(w.registry, cand)

    fake = FakeBacktester({})
    out = w.stage("night-2", backtester=fake)  # would pass the gate: no champion yet
    assert out["candidate"] == cand and out["new_versions"] == 0
    assert not out["promoted"] and w.registry.champion() is None and fake.calls == []
    (reason,) = out["reasons"]
    assert "model.zip: sha256 mismatch" in reason and reason.endswith("refusing to promote it")
    last = w.registry.history()[-1]
    assert (last["action"], last["version"], last["reasons"]) == ("reject", cand, [reason])

    # with a champion, a candidate that beats it is still refused when damaged
    champ = champion_with_train_end(w, utc(S[2], "20:59"))
    out = w.stage(
        "night-3", backtester=FakeBacktester({"trainkey-f1-s1": 2.0, "trainkey-champ": 1.5})
    )
    assert out["candidate"] == cand and not out["promoted"]
    assert out["champion_after"] == champ.version
    assert any("model.zip: sha256 mismatch" in r for r in out["reasons"])


def test_training_regime_counts_leave_out_the_test_block_between_training_ranges(
    tmp_path: Path,
) -> None:
    """k-fold: the training ranges surround the test block; its bars are not training's."""
    stamps = pl.read_ipc(_bars_file(tmp_path))["timestamp"].unique().sort()
    probs = tmp_path / "regimes.feather"
    pl.DataFrame({"timestamp": stamps}).with_columns(
        *[pl.lit(1.0 / 3, dtype=pl.Float32).alias(f"p_regime_{k}") for k in range(3)],
        regime=(pl.int_range(pl.len()) % 3).cast(pl.Int8),
    ).write_ipc(probs)
    folds = {
        "folds": [
            {
                "fold": 0,
                "train_ranges": [
                    _rng(S[0], "14:30", S[0], "20:59"),
                    _rng(S[2], "14:30", S[2], "20:59"),
                ],
                "test_blocks": [_rng(S[1], "14:30", S[1], "20:59")],
            }
        ]
    }
    files = gate_stage.VersionFiles(
        make_cfg(), tmp_path, tmp_path / "folds.json", folds, {}, {0: str(probs)}
    )
    out = files.drift_reference({"fold": 0, "output": str(tmp_path / "backtest.feather")})
    counts = pl.read_ipc(out["training_regimes.feather"])
    assert [str(d) for d in counts["session"]] == [S[0], S[2]]
    assert counts["bars"].to_list() == [390, 390]


def _bars_file(tmp_path: Path) -> Path:
    path = tmp_path / "bars.feather"
    minute_bars(S[0], S[2], price=400.0).write_ipc(path)
    return path
