"""The model registry: versions and manifests, the promotion gate, the champion pointer
under concurrent promotions, hash verification before unpickling, and ``sentio models``."""

from __future__ import annotations

import json
import multiprocessing
import re
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from sentio.cli import app
from sentio.config import RegistryConfig
from sentio.errors import SentioError
from sentio.io import sha256_file
from sentio.registry import IntegrityError, Registry, RegistryError, gate

WINDOW = {"window_start": "2024-01-02", "window_end": "2024-03-28"}
GOOD = {"sharpe": 1.5, "dsr": 0.97, "max_drawdown": 0.12, **WINDOW}
CFG = RegistryConfig(min_dsr=0.95, max_drawdown=0.25, must_beat_champion=True)


def _files(tmp_path: Path, tag: str = "a") -> tuple[Path, Path]:
    model = tmp_path / f"model-{tag}.zip"
    model.write_bytes(b"not really a model " + tag.encode())
    config = tmp_path / f"config-{tag}.yaml"
    config.write_text(f"agent:\n  algo: maskable_ppo  # {tag}\n")
    return model, config


def _register(reg: Registry, tmp_path: Path, tag: str, **metrics: Any) -> str:
    model, config = _files(tmp_path, tag)
    v = reg.register(
        model,
        config,
        {**GOOD, **metrics},
        data_hashes={"bars": "b" * 64, "features": "f" * 64},
        code_version="0123456789abcdef",
        algo="maskable_ppo",
        extra={"tag": tag},
    )
    return v.version


# -- versions -----------------------------------------------------------------------------


def test_register_writes_a_complete_manifest(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg")
    model, config = _files(tmp_path)
    v = reg.register(
        model,
        config,
        GOOD,
        data_hashes={"bars": "b" * 64, "features": "f" * 64},
        code_version="0123456789abcdef",
        algo="maskable_ppo",
        extra={"seed": 7},
    )
    assert re.fullmatch(r"\d{8}T\d{12}Z-[0-9a-f]{8}", v.version)
    on_disk = json.loads((v.path / "manifest.json").read_text())
    assert on_disk == v.manifest
    assert on_disk["version"] == v.version
    assert on_disk["algo"] == "maskable_ppo"
    assert on_disk["code_version"] == "0123456789abcdef"
    assert on_disk["metrics"] == GOOD
    assert on_disk["data_hashes"] == {"bars": "b" * 64, "features": "f" * 64}
    assert on_disk["extra"] == {"seed": 7}
    assert on_disk["created_at"].endswith("Z")
    assert on_disk["model"] == "model.zip" and on_disk["config"] == "config.yaml"
    assert on_disk["files"] == {
        "model.zip": sha256_file(model),
        "config.yaml": sha256_file(config),
    }
    assert v.model_path.read_bytes() == model.read_bytes()
    assert v.config_path is not None and v.config_path.read_text() == config.read_text()
    assert not [p for p in reg.versions_dir.iterdir() if p.name.startswith(".")]  # no temp dirs


def test_list_is_oldest_first_and_get_finds_each(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg")
    assert reg.list() == [] and reg.champion() is None
    ids = [_register(reg, tmp_path, t) for t in "abc"]
    assert [v.version for v in reg.list()] == ids == sorted(ids)
    assert reg.get(ids[1]).manifest["extra"] == {"tag": "b"}
    with pytest.raises(RegistryError, match="unknown model version 'nope'"):
        reg.get("nope")
    with pytest.raises(RegistryError, match="unknown model version"):
        reg.get("../" + ids[0])


def test_register_rejects_unknown_algo_and_missing_files(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg")
    model, config = _files(tmp_path)
    kw: dict[str, Any] = {"data_hashes": {}, "code_version": "x"}
    with pytest.raises(RegistryError, match="unknown algo 'a2c'"):
        reg.register(model, config, GOOD, algo="a2c", **kw)
    with pytest.raises(RegistryError, match="missing.zip: model file not found"):
        reg.register(tmp_path / "missing.zip", config, GOOD, algo="ppo", **kw)
    assert reg.list() == []


# -- the gate ------------------------------------------------------------------------------


def test_gate_passes_without_champion() -> None:
    d = gate(GOOD, None, CFG)
    assert d.promote and d.reasons == []
    assert "no champion yet" in d.checks


def test_gate_low_dsr_names_the_numbers() -> None:
    d = gate({**GOOD, "dsr": 0.5}, None, CFG)
    assert not d.promote
    assert d.reasons == ["DSR 0.5 < min_dsr 0.95"]


def test_gate_drawdown_over_limit_names_the_numbers() -> None:
    d = gate({**GOOD, "max_drawdown": -0.4}, None, CFG)  # the sign is ignored
    assert not d.promote
    assert d.reasons == ["max drawdown 0.4 > limit 0.25"]


def test_gate_lists_every_failing_condition() -> None:
    d = gate({**GOOD, "dsr": 0.1, "max_drawdown": 0.3, "sharpe": 0.2}, {**GOOD, "sharpe": 1.0}, CFG)
    assert not d.promote
    assert len(d.reasons) == 3
    assert d.reasons[2] == "Sharpe 0.2 <= champion 1 on 2024-01-02..2024-03-28"


def test_gate_missing_or_nan_metric_fails() -> None:
    d = gate({"sharpe": 1.0, "dsr": float("nan")}, None, CFG)
    assert not d.promote
    assert any("DSR missing or not finite" in r for r in d.reasons)
    assert any("max drawdown missing" in r for r in d.reasons)


def test_gate_must_beat_champion_on_the_same_window() -> None:
    assert gate(GOOD, {**GOOD, "sharpe": 1.4}, CFG).promote
    d = gate(GOOD, {**GOOD, "sharpe": 1.5}, CFG)  # a tie does not replace the champion
    assert not d.promote and d.reasons == ["Sharpe 1.5 <= champion 1.5 on 2024-01-02..2024-03-28"]
    loose = RegistryConfig(min_dsr=0.95, max_drawdown=0.25, must_beat_champion=False)
    assert gate(GOOD, {**GOOD, "sharpe": 9.0}, loose).promote


def test_gate_different_windows_are_not_comparable() -> None:
    champ = {**GOOD, "sharpe": 0.1, "window_start": "2023-01-03"}
    d = gate(GOOD, champ, CFG)
    assert not d.promote
    assert "different out-of-sample windows" in d.reasons[0]
    assert "2023-01-03..2024-03-28" in d.reasons[0]
    no_window = {k: v for k, v in GOOD.items() if not k.startswith("window")}
    d = gate(no_window, champ, CFG)
    assert not d.promote and "window_start/window_end missing" in d.reasons[0]


# -- the champion pointer ------------------------------------------------------------------


def test_promote_rollback_and_history(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg")
    a, b, c = (_register(reg, tmp_path, t) for t in "abc")
    with pytest.raises(RegistryError, match="nothing to roll back"):
        reg.rollback()
    reg.promote(a, "first")
    with pytest.raises(RegistryError, match="no previous champion"):
        reg.rollback()
    reg.promote(b, "second")
    p = reg.promote(c, "third")
    assert p["version"] == c and p["previous"] == b and p["lineage"] == [a, b]
    assert reg.champion() == p
    assert reg.rollback("bad model")["version"] == b
    p = reg.rollback()
    assert p["version"] == a and p["previous"] == b and p["lineage"] == []
    actions = [(h["action"], h["version"]) for h in reg.history()]
    assert actions == [
        ("promote", a),
        ("promote", b),
        ("promote", c),
        ("rollback", b),
        ("rollback", a),
    ]
    assert reg.history()[3]["reason"] == "bad model"
    with pytest.raises(RegistryError, match="unknown model version"):
        reg.promote("20990101T000000000000Z-deadbeef", "x")


def test_promote_if_passes_gates_against_the_current_champion(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg")
    a = _register(reg, tmp_path, "a", sharpe=1.0)
    worse = _register(reg, tmp_path, "w", sharpe=0.5)
    better = _register(reg, tmp_path, "b", sharpe=2.0)
    assert reg.promote_if_passes(a, CFG).promote
    refused = reg.promote_if_passes(worse, CFG)
    assert not refused.promote and "Sharpe 0.5 <= champion 1" in refused.reasons[0]
    champion = reg.champion()
    assert champion is not None and champion["version"] == a
    d = reg.promote_if_passes(better, CFG, reason="nightly")
    assert d.promote
    champion = reg.champion()
    assert champion is not None and champion["version"] == better
    assert champion["reason"].startswith("nightly; gate passed") and not champion["manual"]
    history = reg.history()
    assert [h["action"] for h in history] == ["promote", "reject", "promote"]
    assert history[1]["version"] == worse and history[1]["champion"] == a
    assert history[1]["reasons"] == refused.reasons
    assert not reg.promote_if_passes(better, CFG).promote  # already the champion


def _race_worker(root: str, version: str, n: int, barrier: Any) -> None:
    reg = Registry(root)
    barrier.wait()
    for i in range(n):
        reg.promote(version, f"race {i}")
        pointer = reg.champion()  # readers never see a torn pointer
        assert pointer is not None


def test_concurrent_promotions_never_corrupt_the_pointer(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg")
    versions = [_register(reg, tmp_path, t) for t in "abcd"]
    n = 40
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(len(versions))
    procs = [
        ctx.Process(target=_race_worker, args=(str(reg.root), v, n, barrier)) for v in versions
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * len(versions)

    pointer = json.loads(reg.champion_path.read_text())
    assert pointer["version"] in versions
    lines = reg.history_path.read_text().splitlines()
    assert len(lines) == n * len(versions)
    history = [json.loads(line) for line in lines]
    assert all(h["action"] == "promote" for h in history)
    # every write saw the one before it: each record's 'previous' is the prior record's version
    assert history[0]["previous"] is None
    assert all(
        h["previous"] == prev["version"] for prev, h in zip(history[:-1], history[1:], strict=True)
    )
    assert history[-1]["version"] == pointer["version"]
    assert len(pointer["lineage"]) == n * len(versions) - 1
    assert not [p for p in reg.root.iterdir() if p.name.endswith(".tmp")]


# -- loading -------------------------------------------------------------------------------


def _tiny_model(tmp_path: Path) -> Path:
    from sb3_contrib import MaskablePPO

    from sentio.env import SentioVecEnv
    from tests.env_helpers import make_params, random_market

    market = random_market(n_sessions=2, session_len=20, seed=0)
    env = SentioVecEnv(market, make_params(window=2), [(0, market.n_rows)], 1, seed=0)
    model = MaskablePPO(
        "MultiInputPolicy",
        env,
        n_steps=8,
        batch_size=8,
        policy_kwargs={"net_arch": [8]},
        device="cpu",
    )
    path = tmp_path / "tiny.zip"
    model.save(path)
    return path


def test_load_model_verifies_hashes_before_unpickling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sb3_contrib import MaskablePPO

    reg = Registry(tmp_path / "reg")
    model_file = _tiny_model(tmp_path)
    v = reg.register(model_file, None, GOOD, data_hashes={}, code_version="x", algo="maskable_ppo")
    loaded = reg.load_model(v.version, device="cpu")
    assert isinstance(loaded, MaskablePPO)

    data = bytearray(v.model_path.read_bytes())
    data[len(data) // 2] ^= 0x01
    v.model_path.write_bytes(bytes(data))

    def _must_not_load(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("unpickled a tampered model")

    monkeypatch.setattr(MaskablePPO, "load", _must_not_load)
    with pytest.raises(RegistryError) as err:
        reg.load_model(v.version)
    msg = str(err.value)
    assert "model.zip: sha256 mismatch" in msg
    assert v.manifest["files"]["model.zip"] in msg
    assert sha256_file(v.model_path) in msg
    assert isinstance(err.value, SentioError)


def test_tampered_config_or_missing_file_also_refuses(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg")
    v = reg.get(_register(reg, tmp_path, "a"))
    assert v.config_path is not None
    v.config_path.write_text("agent: {algo: ppo}\n")
    with pytest.raises(RegistryError, match="config.yaml: sha256 mismatch"):
        reg.verify(v.version)
    v.config_path.unlink()
    with pytest.raises(RegistryError, match="config.yaml: file of version .* is missing"):
        reg.load_model(v.version)


# -- the CLI -------------------------------------------------------------------------------

runner = CliRunner()


def _one_line_error(result: Any, pattern: str) -> None:
    assert result.exit_code != 0, result.output
    err = result.stderr.strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert err.startswith("error: ") and re.search(pattern, err), err


def test_cli_models_list_show_promote_rollback(tmp_path: Path) -> None:
    wd = tmp_path / "wd"
    wd_opt = ["--workdir", str(wd)]
    _one_line_error(runner.invoke(app, ["models", "list", *wd_opt]), "no model versions")
    _one_line_error(runner.invoke(app, ["models", "rollback", *wd_opt]), "no champion")

    reg = Registry(wd / "registry")
    a = _register(reg, tmp_path, "a", sharpe=1.25)
    b = _register(reg, tmp_path, "b", sharpe=2.5)

    r = runner.invoke(app, ["models", "promote", a, "--reason", "first", *wd_opt])
    assert r.exit_code == 0, r.output
    assert f"champion: {a} (was none)" in r.stdout
    r = runner.invoke(app, ["models", "promote", b, *wd_opt])
    assert r.exit_code == 0 and f"champion: {b} (was {a})" in r.stdout

    r = runner.invoke(app, ["models", "list", *wd_opt])
    assert r.exit_code == 0, r.output
    rows = r.stdout.strip().splitlines()
    assert len(rows) == 3 and "version" in rows[0]
    assert rows[1].startswith(f"  {a}") and "1.250" in rows[1] and "maskable_ppo" in rows[1]
    assert rows[2].startswith(f"* {b}") and "2.500" in rows[2]

    r = runner.invoke(app, ["models", "show", a, *wd_opt])
    assert r.exit_code == 0 and json.loads(r.stdout) == {
        **reg.get(a).manifest,
        "integrity": {"status": "ok", "file": None, "detail": None},
    }
    r = runner.invoke(app, ["models", "show", "champion", *wd_opt])
    assert r.exit_code == 0 and json.loads(r.stdout)["version"] == b

    r = runner.invoke(app, ["models", "rollback", *wd_opt])
    assert r.exit_code == 0 and f"champion: {a} (was {b})" in r.stdout
    champion = reg.champion()
    assert champion is not None and champion["manual"] and champion["reason"] == "rollback"
    assert reg.history()[0]["reason"] == "manual: first"

    for args in (["show", "20240101T000000000000Z-00000000"], ["promote", "bogus"]):
        r = runner.invoke(app, ["models", *args, *wd_opt])
        _one_line_error(r, "unknown model version")
        assert r.exit_code == RegistryError.exit_code


def test_cli_models_help() -> None:
    for command in ("list", "show", "promote", "rollback"):
        r = runner.invoke(app, ["models", command, "--help"])
        assert r.exit_code == 0 and "Usage" in r.output


def test_extra_files_are_copied_hashed_and_verified(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg")
    model, config = _files(tmp_path)
    norm = tmp_path / "norm.json"
    norm.write_text('{"mean": [0.0]}')
    v = reg.register(
        model,
        config,
        GOOD,
        data_hashes={},
        code_version="0" * 16,
        algo="maskable_ppo",
        extra_files={"normaliser.json": norm},
    )
    assert v.manifest["files"]["normaliser.json"] == sha256_file(norm)
    assert reg.verify(v.version)["normaliser.json"] == norm.read_bytes()
    (v.path / "normaliser.json").write_text('{"mean": [1.0]}')
    with pytest.raises(RegistryError, match=r"normaliser\.json: sha256 mismatch"):
        reg.verify(v.version)

    def register_with(extra_files: dict[str, Path]) -> None:
        reg.register(
            model,
            config,
            GOOD,
            data_hashes={},
            code_version="0" * 16,
            algo="maskable_ppo",
            extra_files=extra_files,
        )

    for bad in ("../x.json", "manifest.json", "model.zip"):
        with pytest.raises(RegistryError, match="bad extra file name"):
            register_with({bad: norm})
    with pytest.raises(RegistryError, match="file not found"):
        register_with({"x.json": tmp_path / "missing.json"})


# -- integrity: a damaged version never becomes the champion ---------------------------------


def _damage(reg: Registry, version: str) -> Path:
    """Flip one byte of the version's model.zip; returns the file."""
    path = reg.get(version).model_path
    data = bytearray(path.read_bytes())
    data[0] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


def _pointer_and_history(reg: Registry) -> tuple[bytes, bytes]:
    return reg.champion_path.read_bytes(), reg.history_path.read_bytes()


def test_promote_and_rollback_refuse_a_damaged_version(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg")
    a, b, c = (_register(reg, tmp_path, t) for t in "abc")
    reg.promote(a, "first")
    model = _damage(reg, b)
    before = _pointer_and_history(reg)
    with pytest.raises(IntegrityError) as err:
        reg.promote(b, "by hand")
    msg = str(err.value)
    assert msg.startswith(
        f"{model}: sha256 mismatch, manifest {reg.get(b).manifest['files']['model.zip']}"
    )
    assert f"file {sha256_file(model)}" in msg and "refusing to promote it" in msg
    assert (err.value.file, err.value.problem, err.value.exit_code) == ("model.zip", "damaged", 6)
    assert _pointer_and_history(reg) == before

    # rolling back to a champion whose file went missing is refused too
    reg.promote(c, "second")
    config = reg.get(a).config_path
    assert config is not None
    config.unlink()
    before = _pointer_and_history(reg)
    with pytest.raises(
        IntegrityError,
        match=r"config\.yaml: file of version .* is missing; "
        r"refusing to roll back to it",
    ):
        reg.rollback("c is bad")
    assert _pointer_and_history(reg) == before
    champion = reg.champion()
    assert champion is not None and champion["version"] == c and champion["lineage"] == [a]


def test_integrity_reports_ok_damaged_and_missing(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg")
    a, b, c = (_register(reg, tmp_path, t) for t in "abc")
    model = _damage(reg, b)
    config = reg.get(c).config_path
    assert config is not None
    config.unlink()
    ok, damaged, missing = (reg.integrity(v) for v in (a, b, c))
    assert (
        ok.ok
        and ok.label() == "ok"
        and ok.to_json()
        == {
            "status": "ok",
            "file": None,
            "detail": None,
        }
    )
    assert not damaged.ok and damaged.label() == "damaged: model.zip"
    assert damaged.detail is not None and damaged.detail.startswith(f"{model}: sha256 mismatch")
    assert "refusing" not in damaged.detail
    assert missing.label() == "missing: config.yaml"
    with pytest.raises(RegistryError, match="unknown model version"):
        reg.integrity("nope")


def test_integrity_error_survives_pickling() -> None:
    import pickle

    err = IntegrityError("x.zip: gone", file="x.zip", problem="missing")
    back = pickle.loads(pickle.dumps(err))
    assert (str(back), back.file, back.problem) == ("x.zip: gone", "x.zip", "missing")


def test_promote_if_passes_never_promotes_a_damaged_candidate(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg")
    good = _register(reg, tmp_path, "good", sharpe=1.0)
    bad = _register(reg, tmp_path, "bad", sharpe=3.0)
    _damage(reg, bad)
    calls: list[Any] = []

    def evaluate(champ: Any) -> Any:
        calls.append(champ)
        raise AssertionError("evaluated a damaged candidate")

    decision = reg.promote_if_passes(bad, CFG, evaluate=evaluate)  # no champion: would pass
    assert not decision.promote and calls == [] and reg.champion() is None
    (reason,) = decision.reasons
    assert "model.zip: sha256 mismatch" in reason and reason.endswith("refusing to promote it")
    last = reg.history()[-1]
    assert (last["action"], last["version"], last["reasons"]) == ("reject", bad, [reason])

    assert reg.promote_if_passes(good, CFG).promote
    decision = reg.promote_if_passes(bad, CFG)  # a better Sharpe, but damaged
    assert not decision.promote and decision.champion == good
    champion = reg.champion()
    assert champion is not None and champion["version"] == good


def test_cli_refuses_damaged_versions_and_reports_integrity(tmp_path: Path) -> None:
    wd = tmp_path / "wd"
    wd_opt = ["--workdir", str(wd)]
    reg = Registry(wd / "registry")
    a, b, c, d = (_register(reg, tmp_path, t) for t in "abcd")
    assert runner.invoke(app, ["models", "promote", a, *wd_opt]).exit_code == 0
    _damage(reg, b)
    config = reg.get(c).config_path
    assert config is not None
    config.unlink()

    before = _pointer_and_history(reg)
    r = runner.invoke(app, ["models", "promote", b, *wd_opt])
    assert r.exit_code == 6
    _one_line_error(r, r"model\.zip: sha256 mismatch, manifest [0-9a-f]{64}, file [0-9a-f]{64}")
    r = runner.invoke(app, ["models", "promote", c, *wd_opt])
    assert r.exit_code == 6
    _one_line_error(r, r"config\.yaml: file of version .* is missing; refusing to promote it")
    assert _pointer_and_history(reg) == before

    r = runner.invoke(app, ["models", "list", *wd_opt])
    assert r.exit_code == 0, r.output
    header, *rows = r.stdout.strip().splitlines()
    assert header.rstrip().endswith("integrity")
    assert [row.split("  ")[-1].strip() for row in rows] == [
        "ok",
        "damaged: model.zip",
        "missing: config.yaml",
        "ok",
    ]
    assert rows[0].startswith(f"* {a}")

    for version, status, file in ((a, "ok", None), (b, "damaged", "model.zip")):
        r = runner.invoke(app, ["models", "show", version, *wd_opt])
        assert r.exit_code == 0, r.output
        shown = json.loads(r.stdout)
        integrity = shown["integrity"]
        assert (integrity["status"], integrity["file"]) == (status, file)
        assert shown == {**reg.get(version).manifest, "integrity": integrity}
    r = runner.invoke(app, ["models", "show", c, *wd_opt])
    assert json.loads(r.stdout)["integrity"]["status"] == "missing"

    # rollback to a damaged previous champion: refused, nothing changes
    assert runner.invoke(app, ["models", "promote", d, *wd_opt]).exit_code == 0
    _damage(reg, a)
    before = _pointer_and_history(reg)
    r = runner.invoke(app, ["models", "rollback", *wd_opt])
    assert r.exit_code == 6
    _one_line_error(r, r"model\.zip: sha256 mismatch.*refusing to roll back to it")
    assert _pointer_and_history(reg) == before


def test_one_number_formatter_for_the_report_the_registry_and_the_cli() -> None:
    """``sentio.text.format_number``: the report's cells, the decision table, ``models list``."""
    import numpy as np

    from sentio.cli import _fmt
    from sentio.registry import decision_markdown
    from sentio.text import format_number

    assert format_number(1.23456) == "1.235" and format_number(0.5, 1) == "0.5"
    assert format_number(np.float32(0.25)) == "0.250" and format_number(np.int64(7)) == "7"
    assert format_number(1170.0, 0) == "1170" and format_number(42) == "42"
    for missing in (None, float("nan"), float("inf"), "1.5"):
        assert format_number(missing) == "n/a" and format_number(missing, missing="-") == "-"
    # the CLI writes '-' where the report and the registry decision write 'n/a'
    assert (_fmt(2.5), _fmt(None), _fmt(float("nan"))) == ("2.500", "-", "-")
    md = decision_markdown(
        {
            "candidate": "v1",
            "candidate_metrics": {"sharpe": 1.5, "dsr": None, "n_bars": 120},
            "champion_metrics": {"sharpe": float("nan"), "n_bars": 120},
        }
    )
    assert "| sharpe | 1.500 | n/a |" in md and "| dsr | n/a | n/a |" in md
    assert "| n_bars | 120 | 120 |" in md
