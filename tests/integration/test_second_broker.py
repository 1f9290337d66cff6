"""What changes on a broker that is not mosquitto: MQTT 3.1.1 only, no shared subscriptions,
a refusal of MQTT 5 by closing the connection. Each is detected and said, and the fleet works
on (the core cases themselves run on both brokers: ``@BOTH_BROKERS`` in their modules)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from device_agent.config import AgentConfig
from device_agent.errors import ConfigError
from device_agent.protocol import Topics
from edgekit import keys, workspace
from edgekit.fleet.capabilities import probe
from edgekit.fleet.client import connect, publish_all
from edgekit.fleet.collector import Collector, ServeSettings
from edgekit.fleet.deploy import Target, publish_bundle, publish_desired
from edgekit.fleet.status import fleet_status
from edgekit.telemetry import open_store
from tests.conftest import HostSetup
from tests.support import fleetdocs
from tests.support.agent import AgentProcess, wait_until
from tests.support.broker import AedesBroker, Broker
from tests.support.v311_gate import V311Gate

pytestmark = pytest.mark.broker
P = "edgekit/v1"
T = Topics(P)
FAST = ServeSettings(name="b2", prefix=P, scan_interval_s=0.3, refresh_s=0.3, batch_wait_s=0.02)


def test_an_unknown_mqtt_version_is_refused_before_the_agent_starts() -> None:
    base = {"device_id": "d", "state_dir": "/tmp/x", "trust": "/tmp/t.json"}
    assert AgentConfig.load(None, {**base, "mqtt.protocol": "3.1.1"}).check().mqtt_protocols == ("3.1.1",)
    assert AgentConfig.load(None, base).check().mqtt_protocols == ("5", "3.1.1")
    with pytest.raises(ConfigError, match="not an MQTT version"):
        AgentConfig.load(None, {**base, "mqtt.protocol": "4"}).check()


def test_a_broker_that_closes_mqtt5_connections_gets_mqtt311_from_host_and_agent(
    host: HostSetup, broker: Broker, tmp_path: Path
) -> None:
    """RabbitMQ 3.10 closes an MQTT 5 CONNECT without a word; the host and the agent must
    not take that for an unreachable broker."""
    gate = V311Gate(broker.port)
    agent = AgentProcess("g1", gate.url, tmp_path / "g1" / "state", host.trust, ("gate",))
    try:
        with connect(gate.url) as conn:
            assert conn.protocol == "3.1.1"
        key = keys.load_private(workspace.load(host.root), "release")
        with connect(gate.url) as conn:
            info, _ = publish_bundle(conn, T, host.bundles[1].read_bytes(), "wine", 1, key)
            publish_desired(conn, T, Target(group="gate"), info, key)
        wait_until(
            lambda: (
                [(d["device"], (d["active"] or {}).get("version")) for d in fleet_status(gate.url, P)] == [("g1", 1)]
            ),
            timeout=60,
            what="g1 active on v1 through the gate",
        )
        assert gate.refused >= 2  # the host's first try and the agent's were closed
        assert "refused MQTT 5; speaking MQTT 3.1.1" in agent.stderr()
    finally:
        agent.stop()
        gate.close()


def test_on_aedes_the_collector_subscribes_plainly_says_so_and_can_end_its_session(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    aedes = AedesBroker()
    aedes.start()
    url = f"sqlite:///{tmp_path / 't.db'}"
    try:
        report = probe(aedes.url)
        assert report.protocol == "3.1.1" and report.ok
        assert [f.name for f in report.missing()] == ["mqtt5", "shared_subscriptions"]
        assert report.feature("maximum_packet_size").supported is None

        with caplog.at_level(logging.WARNING, logger="edgekit.serve"):
            collector = Collector(lambda: open_store(url), aedes.url, FAST)
            collector.start()
        assert (collector.protocol, collector.shared) == ("3.1.1", False)
        assert "no shared subscriptions" in caplog.text
        with connect(aedes.url) as conn:
            publish_all(conn, [(T.events("e1"), fleetdocs.event("e1", "b", s).encode(), False) for s in (1, 2, 3)])
        store = open_store(url)
        wait_until(lambda: len(store.sequences()) == 3, what="three events stored through a plain subscription")

        # MQTT 3.1.1 sessions never expire: --end-session discards it with a clean connection,
        # so what is published afterwards is not queued for this collector.
        collector.stop(end_session=True)
        with connect(aedes.url) as conn:
            publish_all(conn, [(T.events("e1"), fleetdocs.event("e1", "b", s).encode(), False) for s in (4, 5)])
        collector = Collector(lambda: open_store(url), aedes.url, FAST)
        collector.start()
        time.sleep(1.5)
        collector.stop()
        assert len(store.sequences()) == 3
        store.close()
    finally:
        aedes.close()
