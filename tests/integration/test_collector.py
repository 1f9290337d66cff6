"""``edgekit serve`` against a real mosquitto, real agents and a real PostgreSQL: nothing lost
when the broker drops, nothing doubled when two collectors share the load."""

from __future__ import annotations

import contextlib
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from device_agent.protocol import Topics
from edgekit import keys, workspace
from edgekit.fleet.client import connect, publish_all
from edgekit.fleet.collector import Collector, ServeSettings
from edgekit.fleet.deploy import Target, publish_bundle, publish_desired
from edgekit.fleet.status import fleet_status
from edgekit.telemetry import open_store
from tests.conftest import HostSetup
from tests.support import fleetdocs
from tests.support.agent import AgentProcess, wait_until
from tests.support.broker import BOTH_BROKERS, Broker, free_port
from tests.support.postgres import PostgresServer

pytestmark = pytest.mark.broker
P = "edgekit/v1"
T = Topics(P)
QUEUE = 30  # the test broker's max_queued_messages: small, so the overflow is certain and fast
FAST = ServeSettings(
    name="t1",
    prefix=P,
    scan_interval_s=0.3,
    refresh_s=0.3,
    gap_grace_s=0.5,
    resend_backoff_max_s=2.0,
    batch_wait_s=0.02,
)


@pytest.fixture
def small_broker() -> Iterator[Broker]:
    b = Broker(persistence=True, max_queued_messages=QUEUE)
    b.start()
    try:
        yield b
    finally:
        b.close()


def _deploy(host: HostSetup, broker: Broker, group: str) -> None:
    ws = workspace.load(host.root)
    key = keys.load_private(ws, "release")
    with connect(broker.url) as conn:
        info, _ = publish_bundle(conn, T, host.bundles[1].read_bytes(), "wine", 1, key)
        publish_desired(conn, T, Target(group=group), info, key)


def _published(state_dir: Path) -> dict[tuple[str, int], str]:
    """What the agent handed to the broker, from its own outbox history: (boot, seq) -> payload."""
    db = sqlite3.connect(f"file:{state_dir / 'outbox.sqlite'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT boot_id, seq, payload, sent FROM outbox").fetchall()
    finally:
        db.close()
    assert all(sent for *_, sent in rows), "the agent still has messages to send"
    return {(str(b), int(s)): bytes(p).decode() for b, s, p, _ in rows}


def test_nothing_is_lost_when_the_broker_drops_what_it_queued_for_a_stopped_collector(
    host: HostSetup, small_broker: Broker, tmp_path: Path, store_url: str
) -> None:
    config = tmp_path / "agent.toml"
    config.write_text("[core]\nevent_burst = 100000\n")  # every bad row is an event
    extra = ("--config", str(config), "--drift-window", "10")
    agents = [
        AgentProcess(f"n{i}", small_broker.url, tmp_path / f"n{i}" / "state", host.trust, ("plant",), extra=extra)
        for i in range(3)
    ]
    collector = Collector(lambda: open_store(store_url), small_broker.url, FAST)
    collector.start()
    try:
        _deploy(host, small_broker, "plant")
        wait_until(
            lambda: (
                all((d.get("active") or {}).get("version") == 1 for d in fleet_status(small_broker.url, P, settle=0.2))
                and len(fleet_status(small_broker.url, P, settle=0.2)) == 3
            ),
            timeout=40,
            what="three agents active on v1",
        )

        def settled() -> int | None:
            """Everything the agents sent so far (the deployment's lifecycle events) is stored."""
            try:
                sent = sum(len(_published(tmp_path / a.device / "state")) for a in agents)
            except AssertionError:
                return None  # an event still in flight
            check = open_store(store_url)
            try:
                held = len(check.sequences())
            finally:
                check.close()
            return held if held == sent and sent > 0 else None

        before = wait_until(settled, timeout=30, what="the deployment's events stored")
        collector.stop()  # the session stays: the broker queues for it, up to QUEUE messages

        rows, bad = 200, 30  # per agent: 20 drift windows and 30 failure events while nobody listens
        nan_row = [float("nan"), *host.rows[0][1:]]
        for a in agents:
            for i in range(rows):
                a.send(host.rows[i % len(host.rows)])
            for _ in range(bad):
                a.send(str(nan_row).replace("nan", "NaN"))
        for a in agents:
            for _ in range(rows + bad):
                a.lines.get(timeout=30)

        def all_sent() -> dict[str, dict[tuple[str, int], str]] | None:
            try:
                sent = {a.device: _published(tmp_path / a.device / "state") for a in agents}
            except AssertionError:
                return None
            windows = [sum('"window"' in p for p in s.values()) for s in sent.values()]
            return sent if all(w == rows // 10 for w in windows) else None

        published = wait_until(all_sent, timeout=30, what="every agent's windows and events handed to the broker")
        total = sum(len(p) for p in published.values())
        assert total - before == 3 * (rows // 10 + bad) > QUEUE  # far more than the broker keeps for the collector

        collector = Collector(lambda: open_store(store_url), small_broker.url, FAST)
        collector.start()
        store = open_store(store_url)
        try:

            def stored() -> bool:
                return len(store.sequences()) >= total

            wait_until(stored, timeout=45, what=f"all {total} windows and events stored")
            for a in agents:
                mine = store.sequences(a.device)
                assert len(mine) == len(set(mine)) == len(published[a.device])  # exactly once
                assert {(b, s) for _, b, s in mine} == set(published[a.device])
                docs = {(e.doc.boot_id, e.doc.seq): e.doc for e in store.events(a.device)}
                docs.update({(w.doc.boot_id, w.doc.seq): w.doc for w in store.drift_windows(a.device)})
                for key, payload in published[a.device].items():
                    assert docs[key].encode().decode() == payload  # the very document the agent sent
            assert store.gaps() == []
            requeued = collector.metrics.resend_messages.labels("requeued")._value.get()
            assert requeued >= total - before - QUEUE  # what the broker dropped came back through resends
        finally:
            store.close()
    finally:
        collector.stop()
        for a in agents:
            a.stop()


# ── two collectors, one PostgreSQL ──────────────────────────────────────────────────


def _serve(broker: Broker, url: str, name: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    exe = str(Path(sys.executable).parent / "edgekit")
    args = [exe, "serve", "--store", url, "--broker", broker.url, "--prefix", P, "--name", name]
    args += ["--metrics-port", str(port), "--json-log"]
    with open(log, "wb") as err:
        return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err, cwd=log.parent)


def _metric(port: int, name: str, labels: str = "") -> float:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:  # not listening yet
        return -1.0
    pattern = re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else "") + r" ([0-9.e+-]+)"
    match = re.search(pattern, text)
    return float(match.group(1)) if match else 0.0


def test_two_collectors_share_the_load_into_one_postgresql(
    broker: Broker, postgres_server: PostgresServer, tmp_path: Path
) -> None:
    url = postgres_server.create_database()
    ports = [free_port(), free_port()]
    procs = [_serve(broker, url, f"c{i}", ports[i], tmp_path / f"c{i}.log") for i in range(2)]
    try:
        for p in ports:
            wait_until(lambda p=p: _metric(p, "edgekit_broker_connected") == 1, timeout=60, what="collector up")
        devices, per_device = 10, 200
        now = time.time()
        items: list[tuple[str, bytes, bool]] = []
        for d in range(devices):
            dev = f"d{d}"
            items.append((T.state(dev), fleetdocs.birth("b", ts=now).encode(), True))
            items.append((T.hb(dev), fleetdocs.heartbeat("b", now, seq=per_device, served=5).encode(), True))
        for seq in range(1, per_device + 1):  # interleaved, as a fleet publishes
            for d in range(devices):
                dev = f"d{d}"
                if seq % 4:
                    items.append((T.events(dev), fleetdocs.event(dev, "b", seq, ts=now).encode(), False))
                else:
                    items.append((T.drift(dev), fleetdocs.window(dev, "b", seq, ts=now).encode(), False))
        with connect(broker.url) as conn:
            publish_all(conn, items)
        total = devices * per_device
        store = open_store(url)
        try:
            wait_until(lambda: len(store.sequences()) >= total, timeout=30, what=f"{total} stored")
            time.sleep(0.5)
            seqs = store.sequences()
            assert len(seqs) == len(set(seqs)) == total
            assert store.gaps() == []
        finally:
            store.close()
        shares = [
            _metric(p, "edgekit_ingested_messages_total", 'leaf="events"')
            + _metric(p, "edgekit_ingested_messages_total", 'leaf="drift"')
            for p in ports
        ]
        assert sum(shares) == total and min(shares) > total * 0.2  # the broker split the load
        for p in ports:  # each collector refreshes its fleet view from the store every few seconds
            wait_until(lambda p=p: _metric(p, "edgekit_devices", 'status="online"') == devices, what="fleet view")
        assert _metric(ports[1], "edgekit_device_served_total", 'device="d3"') == 5
        assert _metric(ports[1], "edgekit_device_disk_free_bytes", 'device="d3"') == 10**9
        assert _metric(ports[0], "edgekit_device_latency_seconds", 'device="d3",quantile="0.99"') == 30e-6
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        codes = [p.wait(20) for p in procs]
    assert codes == [0, 0], [(tmp_path / f"c{i}.log").read_text()[-2000:] for i in range(2)]


# ── what mosquitto does with persistent sessions and shared subscriptions ────────────


def _member(broker: Broker, cid: str, topic: str, got: list[bytes]) -> paho.Client:
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=cid, protocol=MQTTProtocolVersion.MQTTv5)
    ready = threading.Event()
    c.on_connect = lambda cl, *_: cl.subscribe(topic, qos=1)
    c.on_subscribe = lambda *_: ready.set()
    c.on_message = lambda _c, _u, m: got.append(bytes(m.payload))
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 600
    c.connect("127.0.0.1", broker.port, clean_start=False, properties=props)
    c.loop_start()
    assert ready.wait(5)
    return c


def _leave(c: paho.Client) -> None:
    c.disconnect()
    time.sleep(0.1)
    with contextlib.suppress(AttributeError):  # paho 2.2 after disconnect
        c.loop_stop()


def test_mosquitto_queues_for_a_stopped_share_group_member_and_keeps_assigning_it_messages(broker: Broker) -> None:
    """The facts the collector's design rests on (mosquitto 2.0.11): a persistent session's
    shared subscription queues while its client is away; with two members and one away, the
    away one keeps getting its share, which waits for it."""
    topic = "$share/g/t/x"
    alone: list[bytes] = []
    _leave(_member(broker, "solo", topic, alone))
    with connect(broker.url) as conn:
        publish_all(conn, [("t/x", b"%d" % i, False) for i in range(20)])
    solo = _member(broker, "solo", topic, alone)
    wait_until(lambda: len(alone) == 20, timeout=5, what="the queued messages")
    _leave(solo)

    got_a: list[bytes] = []
    got_b: list[bytes] = []
    a = _member(broker, "a", "$share/g2/t/y", got_a)
    _leave(_member(broker, "b", "$share/g2/t/y", got_b))
    with connect(broker.url) as conn:
        publish_all(conn, [("t/y", b"%d" % i, False) for i in range(40)])
    time.sleep(0.5)
    assert 10 <= len(got_a) < 40  # b's share was not given to a
    b = _member(broker, "b", "$share/g2/t/y", got_b)
    wait_until(lambda: len(got_a) + len(got_b) == 40, timeout=5, what="b's share on its return")
    _leave(a)
    _leave(b)


@BOTH_BROKERS
def test_a_message_is_acknowledged_only_once_stored(broker: Broker, tmp_path: Path) -> None:
    """The database goes away: the collector keeps what it received unacknowledged, and
    when it stops, the broker still holds it for the next start."""
    pg = PostgresServer()
    pg.start()
    try:
        url = pg.create_database()
        settings = replace(FAST, name="ack", flush_timeout_s=4.0)
        collector = Collector(lambda: open_store(url), broker.url, settings)
        collector.start()
        pg.pause()
        with connect(broker.url) as conn:
            publish_all(conn, [(T.events("a1"), fleetdocs.event("a1", "b", s).encode(), False) for s in range(1, 51)])
        wait_until(lambda: collector.metrics.store_errors._value.get() >= 1, what="a failed write")
        collector.stop()  # nothing could be stored, so nothing was acknowledged
        pg.resume()
        collector = Collector(lambda: open_store(url), broker.url, settings)
        collector.start()
        try:
            store = open_store(url)
            wait_until(lambda: len(store.sequences()) == 50, what="the 50 events, delivered again by the broker")
            assert store.sequences() == [("a1", "b", s) for s in range(1, 51)]
            assert collector.metrics.resend_requests._value.get() == 0  # the broker kept them: no resend needed
            store.close()
        finally:
            collector.stop()
    finally:
        pg.stop()
