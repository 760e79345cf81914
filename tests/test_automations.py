"""Alerts end to end: a real local Prefect server, its automations, a webhook receiver.

The server is ``prefect server start`` (its triggers and actions services included); the
alerts go through a Custom Webhook notification block to an HTTP receiver this module runs
on 127.0.0.1. In order (one server for the module):

1. without automations, a failing nightly run's failure hook sends the alert itself;
2. ``sentio automations apply`` creates the three automations, and a second apply
   updates them (no duplicates);
3. a failing nightly run is then alerted once, by the server (the hook stands down);
4. a drift check on a made-up ledger outside its bands emits ``sentio.drift.detected``
   and the server alerts; one inside the bands emits nothing;
5. the proactive automation fires when no nightly run completes within its window.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from tests.test_drift import _backtest, _ledger
from tests.test_e2e_prefect import REPO, Server, _client_call, server  # noqa: F401

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent
ALERT_TIMEOUT = 90.0


@dataclass
class Receiver:
    """An HTTP server on 127.0.0.1 that keeps every JSON body POSTed to it."""

    url: str
    messages: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def matching(self, text: str) -> list[dict[str, Any]]:
        with self.lock:
            return [m for m in self.messages if text in str(m.get("subject", ""))]

    def wait_for(
        self, text: str, count: int = 1, timeout: float = ALERT_TIMEOUT
    ) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.matching(text)
            if len(found) >= count:
                return found
            time.sleep(0.25)
        with self.lock:
            pytest.fail(f"no alert with {text!r} after {timeout:.0f} s; received: {self.messages}")


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    box: list[Receiver] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the http.server name
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with box[0].lock:
                box[0].messages.append(json.loads(body or b"{}"))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    box.append(Receiver(url=f"http://127.0.0.1:{httpd.server_address[1]}/alerts"))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield box[0]
    finally:
        httpd.shutdown()


@pytest.fixture(scope="module")
def config(server: Server, receiver: Receiver) -> Path:  # noqa: F811 - the imported fixture
    path = server.root / "alerts.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "alerts": {"webhook_url": receiver.url},
                "paths": {"workdir": str(server.root / "work")},
            }
        )
    )
    return path


def _sentio(server: Server, *args: str) -> subprocess.CompletedProcess[str]:  # noqa: F811
    return subprocess.run(
        [str(BIN / "sentio"), *args],
        cwd=REPO,
        env=server.env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def _failing_nightly(server: Server, config: Path) -> None:  # noqa: F811
    """A nightly-retrain flow run on the server that fails (its data file does not exist)."""
    code = (
        "from flows.nightly import nightly_flow\n"
        f"nightly_flow(data_path={str(server.root / 'missing.feather')!r}, "
        f"config_path={str(config)!r})\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=server.env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode != 0, done.stdout + done.stderr
    assert "missing.feather" in done.stdout + done.stderr


def test_1_without_automations_the_failure_hook_sends_the_alert(
    server: Server,  # noqa: F811
    config: Path,
    receiver: Receiver,
) -> None:
    _failing_nightly(server, config)
    found = receiver.wait_for("Sentio alert: nightly-retrain run ", timeout=10)
    assert len(found) == 1 and found[0]["subject"].endswith(" Failed")
    assert "missing.feather" in found[0]["body"]
    assert found[0]["name"] == "sentio-alerts"


def _automations(server: Server) -> list[Any]:  # noqa: F811
    return [
        a
        for a in _client_call(server, lambda c: c.read_automations())
        if a.name.startswith("sentio:")
    ]


def test_2_apply_creates_the_automations_and_applying_again_duplicates_nothing(
    server: Server,  # noqa: F811
    config: Path,
) -> None:
    first = _sentio(server, "automations", "apply", "-c", str(config))
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("created ") == 3
    second = _sentio(server, "automations", "apply", "-c", str(config))
    assert second.returncode == 0, second.stderr
    assert second.stdout.count("updated ") == 3
    found = _automations(server)
    assert sorted(a.name for a in found) == [
        "sentio: nightly or paper run failed",
        "sentio: no completed nightly run",
        "sentio: paper-trading drift",
    ]
    assert all(a.enabled for a in found)
    blocks = _client_call(server, lambda c: c.read_block_documents())
    assert [b.name for b in blocks if b.name == "sentio-alerts"] == ["sentio-alerts"]


def test_3_a_failed_run_is_alerted_once_by_the_server(
    server: Server,  # noqa: F811
    config: Path,
    receiver: Receiver,
) -> None:
    before = len(receiver.matching("Sentio alert: nightly-retrain run "))
    _failing_nightly(server, config)
    found = receiver.wait_for("Sentio alert: nightly-retrain run ", count=before + 1)
    time.sleep(5.0)  # a second (direct) alert would have arrived by now
    found = receiver.matching("Sentio alert: nightly-retrain run ")
    assert len(found) == before + 1
    assert found[-1]["subject"].endswith(" Failed") and "missing.feather" in found[-1]["body"]
    # the same message as the hook's (test 1): one template, rendered by either side
    pattern = re.compile(
        r"The nightly-retrain flow run (\S+) \(([0-9a-f-]{36})\) is Failed: .*missing\.feather"
    )
    hook, server_sent = found[0], found[-1]
    for message in (hook, server_sent):
        m = pattern.match(message["body"])
        assert m is not None, message
        assert message["subject"] == f"Sentio alert: nightly-retrain run {m.group(1)} Failed"
    # it was the server's automation that sent it, not the hook
    failed = next(
        a for a in _automations(server) if a.name == "sentio: nightly or paper run failed"
    )
    executed = _events(server, "prefect.automation.action.executed")
    assert [e["resource"]["prefect.resource.id"] for e in executed] == [
        f"prefect.automation.{failed.id}"
    ]


def _events(server: Server, name: str) -> list[dict[str, Any]]:  # noqa: F811
    """The server's events called ``name`` (its events API)."""
    body = {"filter": {"event": {"name": [name]}}, "limit": 50}
    return list(
        _client_call(server, lambda c: c.request("POST", "/events/filter", json=body).json())[
            "events"
        ]
    )


def _register_version(server: Server, rng: np.random.Generator) -> tuple[Any, str]:  # noqa: F811
    from sentio.config import SentioConfig, write_config
    from sentio.registry import Registry

    root = server.root / "work" / "registry"
    files = server.root / "version-files"
    files.mkdir(parents=True, exist_ok=True)
    (files / "model.zip").write_bytes(b"not a model: the drift check reads only the backtest")
    _backtest(rng, 60).write_ipc(files / "backtest.feather")
    reg = Registry(root)
    v = reg.register(
        files / "model.zip",
        write_config(files / "config.yaml", SentioConfig()),
        {"sharpe": 0.0},
        data_hashes={},
        code_version="test",
        algo="maskable_ppo",
        extra_files={"backtest.feather": str(files / "backtest.feather")},
    )
    return reg, v.version


def test_4_a_drift_event_fires_the_alert_and_a_ledger_inside_the_bands_does_not(
    server: Server,  # noqa: F811
    config: Path,
    receiver: Receiver,
) -> None:
    from prefect import flow
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from sentio.config import load_config
    from tasks.drift import drift_task

    rng = np.random.default_rng(12)
    _, version = _register_version(server, rng)
    cfg = load_config(config)

    @flow(name="drift-check")
    def check(summary: dict[str, Any]) -> dict[str, Any]:
        return drift_task(summary, cfg)

    results = {}
    for name, shift in (("inside", 0.0), ("outside", -2e-3)):
        path = server.root / f"{name}.feather"
        _ledger(rng, 6, shift=shift).write_ipc(path)
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            results[name] = check({"version": version, "ledger": str(path), "appended": 1950})
    assert results["inside"]["checked"] and not results["inside"]["drifted"]
    assert results["inside"]["alert"] == "none"
    assert results["outside"]["drifted"] and "return" in results["outside"]["outside"]
    assert results["outside"]["alert"] == "automation"
    found = receiver.wait_for("Sentio alert: paper-trading drift of version")
    # a rerun over the same bars (nothing appended) does not alert again
    with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
        again = check({"version": version, "ledger": str(path), "appended": 0})
    assert again["drifted"] and again["alert"] == "repeat"
    time.sleep(3.0)
    found = receiver.matching("Sentio alert: paper-trading drift of version")
    assert len(found) == 1
    assert found[0]["subject"].endswith(version)
    assert "return " in found[0]["body"] and "below the band" in found[0]["body"]
    assert "last 5 sessions (1950 bars" in found[0]["body"]
    events = _events(server, "sentio.drift.detected")
    assert len(events) == 1
    assert events[0]["payload"]["observed"]["return"] == pytest.approx(
        results["outside"]["observed"]["return"]
    )
    artifacts = _client_call(server, lambda c: c.read_artifacts())
    assert sum(1 for a in artifacts if a.key == f"drift-{version.lower()}") >= 2


def test_5_no_completed_nightly_run_in_the_window_fires_the_proactive_alert(
    server: Server,  # noqa: F811
    config: Path,
    receiver: Receiver,
) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.automations import apply_automations
    from sentio.config import load_config

    with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
        apply_automations(load_config(config).alerts, stale_within=dt.timedelta(seconds=10))
    found = receiver.wait_for("Sentio alert: no completed nightly-retrain run for")
    assert "No nightly-retrain flow run has completed" in found[0]["body"]
