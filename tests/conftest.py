"""Shared test fixtures: small, hand-checkable bar frames built on the real NYSE calendar."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from sentio.calendar import sessions
from sentio.data.schema import TIMESTAMP_DTYPE
from sentio.processes import environment
from sentio.storage import SharedStorage

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SPY_DIR = Path(os.environ.get("SENTIO_SPY_DIR", SHARED_DATA / "spy_minute_2011"))


# Windows short enough for the features and regime stages on three sessions of minute
# bars (the defaults need weeks of data to warm up).
SHORT_WINDOWS = {
    "features": {
        "return_horizons": [1, 5, 15],
        "vol_windows": [30],
        "volume_z_window": 60,
        "norm_window": 60,
    },
    "regimes": {"vol_window": 120},
    # three sessions, two after the feature warm-up: k-fold over two one-session blocks
    "cv": {"method": "kfold", "n_splits": 2, "embargo_bars": 30},
    # a few hundred training steps of small networks: the flow runs end to end in seconds
    "env": {"window": 4},
    "agent": {
        # a uniform initial policy: a few hundred steps must still hold positions, so that
        # the accounting and parity checks see trades (the default flat prior starts flat)
        "flat_prior": 0.0,
        "n_steps": 32,
        "batch_size": 32,
        "n_epochs": 1,
        "d_model": 8,
        "n_heads": 2,
        "n_layers": 1,
        "n_quantiles": 8,
    },
    "train": {"total_timesteps": 128, "n_envs": 2, "checkpoint_every": 64, "device": "cpu"},
}


def minute_bars(
    start: str, end: str, symbol: str = "QQQ", seed: int = 0, price: float = 100.0
) -> pl.DataFrame:
    """Canonical one-minute regular-hours bars of every NYSE session in [start, end]."""
    table = sessions(dt.date.fromisoformat(start), dt.date.fromisoformat(end))
    stamps = pl.concat(
        [
            pl.datetime_range(o, c, "1m", closed="left", eager=True, time_zone="UTC")
            for o, c in zip(table["open"], table["close"], strict=True)
        ]
    ).cast(TIMESTAMP_DTYPE)
    rng = np.random.default_rng(seed)
    n = stamps.len()
    close = price * np.exp(np.cumsum(rng.normal(0, 5e-4, n)))
    open_ = np.concatenate([[price], close[:-1]])
    spread = np.abs(rng.normal(0, 2e-4, n)) * close
    return pl.DataFrame(
        {
            "timestamp": stamps,
            "symbol": symbol,
            "open": open_,
            "high": np.maximum(open_, close) + spread,
            "low": np.minimum(open_, close) - spread,
            "close": close,
            "volume": rng.integers(100, 10_000, n).astype(float),
        }
    )


def data_stages(bars: Path, cfg: Any, workdir: Path) -> tuple[str, str, str, str]:
    """Ingest, features, folds and regimes of ``bars`` through the library stages (no
    Prefect): the outputs a training stage reads, in its argument order."""
    from sentio import stages

    ingest = stages.ingest_stage([bars], cfg, workdir)
    features = stages.features_stage(ingest["output"], cfg, workdir)
    folds = stages.folds_stage(features["output"], cfg, workdir)
    regimes = stages.regimes_stage(ingest["output"], folds["output"], cfg, workdir)
    return ingest["output"], features["output"], folds["output"], regimes["output"]


@pytest.fixture
def bars_factory():
    """The :func:`minute_bars` builder."""
    return minute_bars


@pytest.fixture
def spy_dir() -> Path:
    """The real SPY minute files, or a skip saying why they are absent."""
    if not (SPY_DIR / "spy-2011-01.csv").is_file():
        pytest.skip(f"real SPY sample data not found at {SPY_DIR} (../shared/data beside the repo)")
    return SPY_DIR


# Environment variables through which Sentio / Prefect pick a results folder; a test API
# removes them so that results land in the throw-away home.
STORAGE_ENV = (
    "PREFECT_RESULTS_LOCAL_STORAGE_PATH",
    "PREFECT_LOCAL_STORAGE_PATH",
    "PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK",
    "PREFECT_DEFAULT_RESULT_STORAGE_BLOCK",
    "SENTIO_DEFAULT_RESULTS_PATHS",
)


@contextlib.contextmanager
def temporary_prefect_api(home: Path) -> Iterator[Path]:
    """A throw-away Prefect API (``prefect_test_harness``) and home; restores ``os.environ``."""
    saved_env = dict(os.environ)
    os.environ.update(
        DO_NOT_TRACK="1",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_HOME=str(home),
    )
    for name in STORAGE_ENV:
        os.environ.pop(name, None)

    from prefect.settings import (
        PREFECT_HOME,
        PREFECT_RESULTS_LOCAL_STORAGE_PATH,
        PREFECT_SERVER_ANALYTICS_ENABLED,
        temporary_settings,
    )
    from prefect.testing.utilities import prefect_test_harness

    try:
        with (
            temporary_settings(
                updates={
                    PREFECT_HOME: home,
                    PREFECT_SERVER_ANALYTICS_ENABLED: False,
                    # where a failed flow run's exception is written (tasks: workdir)
                    PREFECT_RESULTS_LOCAL_STORAGE_PATH: home / "storage",
                },
            ),
            prefect_test_harness(server_startup_timeout=60),
        ):
            yield home
    finally:
        os.environ.clear()
        os.environ.update(saved_env)


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A throw-away Prefect API and home, one for the session (its server takes ~13 s to
    start); restores ``os.environ`` after. Tests tell their runs apart by flow run id and
    working directory, never by what else the database holds."""
    with temporary_prefect_api(tmp_path_factory.mktemp("prefect-home")) as home:
        _copy_database(home / MIGRATED_DATABASE)
        yield home


MIGRATED_DATABASE = "migrated-prefect.db"


def _copy_database(dest: Path) -> None:
    """A consistent copy of the test server's SQLite database, as it is when the server
    has just started (its schema migrated, nothing run yet)."""
    import sqlite3

    from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL

    url = str(PREFECT_SERVER_DATABASE_CONNECTION_URL.value())
    assert url.startswith("sqlite"), url
    with (
        contextlib.closing(sqlite3.connect(url.split(":///", 1)[1])) as source,
        contextlib.closing(sqlite3.connect(dest)) as copy,
    ):
        source.backup(copy)


@pytest.fixture(scope="session")
def migrated_prefect_home(prefect_api: Path) -> Callable[[Path], Path]:
    """Make ``folder`` a Prefect home whose database is already created and migrated, as
    a returning user's is: a server started on it (``sentio run`` without an API,
    ``prefect server start``) is up in ~5 s instead of the ~14 s of a first start, most
    of which is the migrations. Returns ``folder``."""

    def make(folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(prefect_api / MIGRATED_DATABASE, folder / "prefect.db")
        return folder

    return make


@pytest.fixture
def restore_environ() -> Iterator[None]:
    """Flows apply environment defaults; keep them from leaking into the next test."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


S3_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL")


@contextlib.contextmanager
def s3_server(bucket: str) -> Iterator[str]:
    """A real S3 API on 127.0.0.1 (moto's server, in a thread) holding an empty
    ``bucket``; the environment points boto (and processes started meanwhile: Dask
    workers) at it. Yields ``s3://<bucket>``; the server and the environment are gone after."""
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        values = ("sentio-test", "sentio-test", "us-east-1", endpoint)
        with environment(dict(zip(S3_ENV, values, strict=True))):
            boto3.client("s3").create_bucket(Bucket=bucket)
            yield f"s3://{bucket}"
    finally:
        server.stop()


@pytest.fixture(scope="module")
def s3_bucket() -> Iterator[str]:
    """``s3://<bucket>`` on a local S3 server for the module (see :func:`s3_server`)."""
    with s3_server("sentio-test") as url:
        yield url


@pytest.fixture(params=["file", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SharedStorage]:
    """An empty shared storage root (``sentio.storage``): a ``file://`` URL, or a fresh
    prefix of the module's S3 bucket."""
    if request.param == "file":
        yield SharedStorage((tmp_path / "shared").as_uri())
    else:
        bucket = request.getfixturevalue("s3_bucket")
        yield SharedStorage(f"{bucket}/{uuid.uuid4().hex}")
