"""Shared fixtures: a real mosquitto per test, and a host workspace with signed bundles."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.broker import Broker, make_broker
from tests.support.postgres import PostgresServer


@pytest.fixture
def broker(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Broker]:
    """mosquitto with persistence; a test marked ``@BOTH_BROKERS`` (tests/support/broker.py)
    runs once more against aedes, an independent MQTT 3.1.1 broker with the same interface.
    With EDGEKIT_TEST_SECURE=1, mosquitto is the secured one `edgekit broker config` writes
    (TLS, identities, ACLs), the host connecting as @deploy and agents enrolled as they start."""
    from tests.support import secured

    kind = getattr(request, "param", "mosquitto")
    b: Broker
    if secured.secure_variant():
        if kind != "mosquitto":
            pytest.skip("the TLS + ACL variant runs on mosquitto")
        b = secured.ACTIVE = secured.SecureTestBroker()
        for name, value in secured.ACTIVE.host_env().items():
            monkeypatch.setenv(name, value)
        b.start()
    else:
        b = make_broker(kind)  # type: ignore[assignment]  # AedesBroker has Broker's interface
    try:
        yield b
    finally:
        secured.ACTIVE = None
        b.close()


@dataclass
class HostSetup:
    root: Path
    trust: Path
    csv: Path
    rows: list[list[float]]
    feature_names: list[str]
    bundles: dict[int, Path]
    run_id: str


@pytest.fixture(scope="session")
def host(tmp_path_factory: pytest.TempPathFactory) -> HostSetup:
    """A workspace with a key, a trained wine model and two signed bundle versions."""
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_wine

    from edgekit import bundler, keys, pipeline, workspace

    root = tmp_path_factory.mktemp("ws")
    ws = workspace.init(root)
    keys.generate(ws, "release")
    trust = root / "trust.json"
    trust.write_bytes(keys.trust_file(ws).to_json())
    data = load_wine()
    names = [n.replace("/", "_") for n in data.feature_names]
    path = root / "wine.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([*names, "label"])
        for x, y in zip(data.data, data.target, strict=True):
            w.writerow([*x.tolist(), int(y)])
    run = pipeline.train_run(ws, path, "label", "logreg")
    b1 = bundler.build(ws, run.id, "wine", "release", root)
    b2 = bundler.build(ws, run.id, "wine", "release", root)
    return HostSetup(root, trust, path, data.data.tolist(), names, {1: b1.path, 2: b2.path}, run.id)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL for the session (a few seconds to start); each test takes a fresh database."""
    server = PostgresServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The telemetry store's URL, once per backend: the same tests run on both."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'telemetry.db'}"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.create_database()
