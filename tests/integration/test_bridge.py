"""A site broker bridged to a central broker, as ``edgekit broker bridge-config`` writes it:
devices on the site get what the host publishes on the central broker, and the host's
collector and ``fleet status`` on the central broker see the devices."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from device_agent.protocol import Topics
from edgekit import keys, workspace
from edgekit.cli import main
from edgekit.fleet.client import collect, connect
from edgekit.fleet.collector import Collector, ServeSettings
from edgekit.fleet.deploy import Target, publish_bundle, publish_desired
from edgekit.fleet.status import fleet_status
from edgekit.telemetry import open_store
from tests.conftest import HostSetup
from tests.support.agent import AgentProcess, wait_until
from tests.support.broker import Broker

pytestmark = pytest.mark.broker
P = "edgekit/v1"
T = Topics(P)


@pytest.fixture
def central() -> Iterator[Broker]:
    b = Broker(persistence=True)
    b.start()
    try:
        yield b
    finally:
        b.close()


def _site(central: Broker, tmp_path: Path) -> Broker:
    """A site broker whose bridge section is exactly what the command writes."""
    conf = tmp_path / "bridge.conf"
    result = CliRunner().invoke(
        main, ["broker", "bridge-config", "--site", "plant-a", "--central", central.url, "-o", str(conf)]
    )
    assert result.exit_code == 0, result.output
    site = Broker(persistence=True, extra=conf.read_text())
    site.start()
    return site


def _deploy(host: HostSetup, broker: Broker, version: int) -> None:
    key = keys.load_private(workspace.load(host.root), "release")
    with connect(broker.url) as conn:
        info, _ = publish_bundle(conn, T, host.bundles[version].read_bytes(), "wine", version, key)
        publish_desired(conn, T, Target(group="plant"), info, key)


def _active(broker: Broker) -> dict[str, int | None]:
    return {d["device"]: (d.get("active") or {}).get("version") for d in fleet_status(broker.url, P)}


def _bridge_up(broker: Broker) -> bool:
    with connect(broker.url) as conn:
        return any(p == b"1" for _, p, _ in collect(conn, [f"{P}/site/plant-a/bridge"], settle=0.3))


def test_devices_on_a_bridged_site_broker_are_deployed_to_and_heard_from_the_central_one(
    host: HostSetup, central: Broker, tmp_path: Path
) -> None:
    store_url = f"sqlite:///{tmp_path / 'telemetry.db'}"
    settings = ServeSettings(name="central", prefix=P, scan_interval_s=0.3, refresh_s=0.3, batch_wait_s=0.02)
    collector = Collector(lambda: open_store(store_url), central.url, settings)
    collector.start()
    site = _site(central, tmp_path)
    agents: list[AgentProcess] = []
    try:
        wait_until(lambda: _bridge_up(central), timeout=30, what="the bridge's notification on the central broker")
        # v1 is published on the central broker before any device exists: it must reach the
        # site as retained messages, for devices that connect to the site afterwards.
        _deploy(host, central, 1)
        time.sleep(0.5)
        agents = [AgentProcess(d, site.url, tmp_path / d / "state", host.trust, ("plant",)) for d in ("s1", "s2")]
        wait_until(lambda: _active(central) == {"s1": 1, "s2": 1}, timeout=60, what="both site devices on v1")
        assert agents[0].ask(host.rows[0])["bundle"] == "wine@1"

        # v2 is published while the devices are connected: live retained messages cross too,
        # and stay retained on the site broker.
        _deploy(host, central, 2)
        wait_until(lambda: _active(central) == {"s1": 2, "s2": 2}, timeout=60, what="both site devices on v2")
        with connect(site.url) as conn:
            on_site = collect(conn, [T.bundle_manifest("wine", 2), T.desired_group("plant")], settle=0.3)
        assert {t for t, p, retained in on_site if retained and p} == {
            T.bundle_manifest("wine", 2),
            T.desired_group("plant"),
        }

        # The collector on the central broker stored the site devices' telemetry.
        store = open_store(store_url)

        def activations(device: str) -> list[int]:
            events = store.events(device=device, code="lifecycle.activated")
            return [e.doc.bundle.version for e in events if e.doc.bundle is not None]

        try:
            wait_until(
                lambda: activations("s1") == activations("s2") == [1, 2] and len(store.heartbeats(device="s2")) > 0,
                timeout=30,
                what="both activations and the heartbeats of the site devices in the central store",
            )
        finally:
            store.close()

        # A device that leaves the site without a goodbye: its Will crosses the bridge.
        agents[1].proc.kill()
        agents[1].proc.wait(10)
        wait_until(
            lambda: {d["device"]: d["status"] for d in fleet_status(central.url, P)}.get("s2") == "offline",
            timeout=60,
            what="s2's Will seen on the central broker",
        )
    finally:
        for a in agents:
            a.stop()
        collector.stop()
        site.close()


def test_the_bridge_config_names_every_topic_once_in_one_direction() -> None:
    result = CliRunner().invoke(
        main,
        ["broker", "bridge-config", "--site", "s9", "--central", "mqtt://10.1.2.3:1884", "--group", "g1"],
    )
    assert result.exit_code == 0, result.output
    topics = [line.split()[1:3] for line in result.output.splitlines() if line.startswith("topic ")]
    names = [t for t, _ in topics]
    assert len(names) == len(set(names))
    directions = dict(topics)
    assert directions[f"{P}/bundle/#"] == "in" and directions[f"{P}/dev/+/drift"] == "out"
    assert f"{P}/group/g1/desired" in directions and f"{P}/group/+/desired" not in directions
    assert "address 10.1.2.3:1884" in result.output and "try_private true" in result.output
    assert f"{P}/dev/+/samples" in directions  # every leaf a device may write (broker_config), out
    bad = CliRunner().invoke(main, ["broker", "bridge-config", "--site", "a b", "--central", "mqtt://x:1"])
    assert bad.exit_code == 2 and "site name" in bad.output


def test_the_bridge_config_for_a_secured_central_broker(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    args = ["broker", "bridge-config", "--site", "s9", "--central", "mqtts://central.example:8883"]
    tls = CliRunner().invoke(
        main, [*args, "--ca", "/etc/edgekit/ca.crt", "--cert", "/etc/edgekit/b.crt", "--key", "/etc/edgekit/b.key"]
    )
    assert tls.exit_code == 0, tls.output
    assert "address central.example:8883" in tls.output
    assert all(
        f in tls.output
        for f in (
            "bridge_cafile /etc/edgekit/ca.crt",
            "bridge_certfile /etc/edgekit/b.crt",
            "bridge_keyfile /etc/edgekit/b.key",
        )
    )
    out = tmp_path / "bridge.conf"
    pw = CliRunner().invoke(main, [*args, "--username", "s9-bridge", "--password-file", str(secret), "-o", str(out)])
    assert pw.exit_code == 0, pw.output
    assert "remote_username s9-bridge\nremote_password s3cret\n" in out.read_text()
    assert out.stat().st_mode & 0o077 == 0  # it holds a password
    half = CliRunner().invoke(main, [*args, "--cert", "/etc/edgekit/b.crt"])
    assert half.exit_code == 2 and "needs its key" in half.output
    plain = CliRunner().invoke(main, [*args[:-1], "mqtt://central.example:1883", "--ca", "/etc/edgekit/ca.crt"])
    assert plain.exit_code == 2 and "plain mqtt://" in plain.output
