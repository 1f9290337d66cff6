"""Publishing is idempotent and mends what the broker lost; gc removes only what nobody needs."""

from __future__ import annotations

from pathlib import Path

import pytest

from device_agent.protocol import Topics
from edgekit import keys, workspace
from edgekit.fleet.client import connect, publish_all
from edgekit.fleet.deploy import Target, deploy, publish_bundle, retained
from edgekit.fleet.gc import collect_garbage
from edgekit.fleet.status import fleet_status
from tests.conftest import HostSetup
from tests.support.agent import AgentProcess, wait_until
from tests.support.broker import Broker

pytestmark = [pytest.mark.broker, pytest.mark.tls_variant]
T = Topics()


def test_publishing_twice_sends_nothing_new_and_repairs_a_lost_chunk(host: HostSetup, broker: Broker) -> None:
    key = keys.load_private(workspace.load(host.root), "release")
    data = host.bundles[1].read_bytes()
    with connect(broker.url) as conn:
        info, first = publish_bundle(conn, T, data, "wine", 1, key, chunk_size=4096)
        assert first == len(info.chunks) + 1
        _, again = publish_bundle(conn, T, data, "wine", 1, key, chunk_size=4096)
        assert again == 0, "an identical bundle is already on the broker"
        publish_all(conn, [(T.bundle_chunk("wine", 1, 2), b"", True)])  # the broker loses a chunk
        _, repaired = publish_bundle(conn, T, data, "wine", 1, key, chunk_size=4096)
        assert repaired == 1
        stored = retained(conn, f"{T.prefix}/bundle/wine/1/#")
        assert b"".join(stored[T.bundle_chunk("wine", 1, i)] for i in range(len(info.chunks))) == data


def test_gc_keeps_active_previous_and_desired_and_clears_the_rest(
    host: HostSetup, broker: Broker, tmp_path: Path
) -> None:
    ws = workspace.load(host.root)
    key = keys.load_private(ws, "release")
    agent = AgentProcess("g1", broker.url, tmp_path / "g1" / "state", host.trust)
    try:
        for version in (1, 2):
            deploy(broker.url, T.prefix, host.bundles[version], Target(device="g1"), key, key, wait=20)
        wait_until(
            lambda: any(d["active"] and d["active"]["version"] == 2 for d in fleet_status(broker.url, T.prefix)),
            what="v2 active",
        )
        # An old version nobody uses any more, still retained on the broker.
        with connect(broker.url) as conn:
            publish_bundle(conn, T, host.bundles[1].read_bytes(), "stale", 1, key)
        dry = collect_garbage(broker.url, T.prefix, dry_run=True)
        assert [(r["name"], r["version"]) for r in dry.removed] == [("stale", 1)]
        kept = {(k["name"], k["version"]) for k in dry.kept}
        assert kept == {("wine", 1), ("wine", 2)}  # previous (rollback target) and active/desired
        with connect(broker.url) as conn:
            assert retained(conn, f"{T.prefix}/bundle/stale/#"), "a dry run deletes nothing"
        done = collect_garbage(broker.url, T.prefix)
        assert done.messages_cleared == dry.messages_cleared > 1
        with connect(broker.url) as conn:
            assert retained(conn, f"{T.prefix}/bundle/stale/#") == {}
            assert retained(conn, f"{T.prefix}/bundle/wine/2/#")
        assert agent.ask(host.rows[0])["bundle"] == "wine@2"
    finally:
        agent.stop()


def test_rollback_ships_the_old_model_as_a_higher_version(host: HostSetup, broker: Broker, tmp_path: Path) -> None:
    from device_agent.bundle import MODEL, verify
    from edgekit.rollback import rollback

    ws = workspace.load(host.root)
    key = keys.load_private(ws, "release")
    agent = AgentProcess("rb1", broker.url, tmp_path / "rb1" / "state", host.trust)
    try:
        deploy(broker.url, T.prefix, host.bundles[2], Target(device="rb1"), key, key, wait=20)
        built = rollback(ws, "wine", 1, "release", tmp_path)
        assert built.version > 2
        restored = verify(built.path.read_bytes(), keys.trust_file(ws), now=0)
        original = verify(host.bundles[1].read_bytes(), keys.trust_file(ws), now=0)
        assert restored.files[MODEL] == original.files[MODEL]
        assert restored.manifest["rollback_of"]["version"] == 1
        result = deploy(broker.url, T.prefix, built.path, Target(device="rb1"), key, key, wait=20)
        assert result.outcome == {"rb1": "active"}, "a rollback is an ordinary upgrade for the device"
        assert agent.ask(host.rows[0])["bundle"] == f"wine@{built.version}"
    finally:
        agent.stop()


def test_chunks_fit_the_brokers_maximum_packet_size(host: HostSetup, tmp_path: Path) -> None:
    """paho does not enforce the broker's limit (an oversized QoS 1 publish makes it reconnect
    in a loop): deploy sizes chunks from the CONNACK's Maximum Packet Size itself."""
    small = Broker(persistence=False, extra="max_packet_size 8192")
    small.start()
    agent = None
    try:
        key = keys.load_private(workspace.load(host.root), "release")
        agent = AgentProcess("mp1", small.url, tmp_path / "mp1" / "state", host.trust)
        result = deploy(small.url, T.prefix, host.bundles[1], Target(device="mp1"), key, key, wait=30)
        assert result.chunk_size <= 8192 - 1024 and result.chunks > 1
        assert result.outcome == {"mp1": "active"}
        assert agent.ask(host.rows[0])["bundle"] == "wine@1"
    finally:
        if agent is not None:
            agent.stop()
        small.close()
