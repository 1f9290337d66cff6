"""``edgekit serve``: subscribe to the fleet's telemetry and store all of it, losing none.

How nothing is lost, end to end:

1. **While the collector is down**, its MQTT session persists (clean start off, a session
   expiry) and the broker queues what devices publish — up to the broker's own limit
   (mosquitto: ``max_queued_messages``, 1,000 by default, and it drops QoS 1 messages past it).
2. **While it is up**, a message is acknowledged to the broker only after the batch holding
   it is committed, so a crash between receipt and commit loses nothing either: the broker
   delivers it again. Storing is idempotent on (device, boot_id, seq), so that costs nothing.
3. **Whatever the broker dropped** shows up as a gap in a device's sequence (events and
   drift windows share one counter per boot; heartbeats announce its latest value, so a lost
   tail is seen too). The collector that holds the store's leader lock scans for gaps and
   asks the device, on ``dev/{d}/cmd``, to resend exactly those numbers from its outbox
   history; the device answers on ``dev/{d}/resent`` with what it requeued, what is still
   queued, and what is gone (recorded in ``lost``, never asked for again).

Scaling out happens on the broker: every collector subscribes through the shared
subscription group ``$share/<group>/…``, so the broker splits the messages between them;
they write into one PostgreSQL, where the idempotent keys make double delivery harmless.
What mosquitto 2.0.11 does (measured; ``tests/integration/test_collector.py``): a persistent
session's queue is kept and delivered for shared subscriptions exactly as for plain ones, and
a group member that is down keeps being assigned its share of new messages, which wait for it
(up to the queue limit). So a collector that leaves the group for good must end its session
(``stop(end_session=True)``, ``edgekit serve --end-session``), or half the traffic waits for it.
Retained documents are read on each connection through a plain subscription too, because
the MQTT 5 specification does not send retained messages to shared subscriptions (mosquitto
does, other brokers do not).

On a broker without shared subscriptions (``edgekit broker check`` says so; aedes, RabbitMQ
before 3.13) the collector subscribes plainly and says so in its log: one collector then takes
all the traffic, and a second would store everything again (harmlessly: storing is
idempotent) rather than share it. On a broker without MQTT 5 it speaks MQTT 3.1.1: a
persistent session (clean session off) that never expires, so ``--end-session`` ends it by
connecting once more with a clean session.

Threads: paho's network thread only puts messages on a queue (never blocks); one writer
thread takes them in batches, writes each batch in one transaction, acknowledges, updates
the metrics, and every few seconds scans for gaps and refreshes the fleet view.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from device_agent.errors import ProtocolError
from device_agent.mqtt_versions import refuses_protocol
from device_agent.protocol import (
    MAX_RANGES,
    Command,
    DeviceEvent,
    DriftMessage,
    ResendReply,
    ResendRequest,
    Topics,
    range_count,
)

from ..alerts.service import AlertService
from ..errors import FleetError
from ..telemetry import Gap, Received, TelemetryStore
from ..telemetry.store import LEAVES, StoreError
from .capabilities import shared_subscriptions
from .client import Broker, connect, new_client, resolve
from .metrics import CollectorMetrics
from .status import DeviceStatus
from .verify import UNENROLLED, TelemetryCheck

log = logging.getLogger("edgekit.serve")

LIVE = ("events", "drift", "hb", "reported", "state", "resent")  # subscribed through the share group
RETAINED = ("state", "hb", "reported")  # read once per connection through a plain subscription


@dataclass(frozen=True)
class ServeSettings:
    """Every knob of the collector, with the reason for its default."""

    name: str = field(default_factory=socket.gethostname)  # the MQTT session: one per collector
    prefix: str = "edgekit/v1"
    share_group: str = "edgekit"
    session_expiry_s: int = 86_400  # how long the broker keeps queueing while the collector is down
    receive_maximum: int = 2_000  # unacknowledged QoS 1 messages the broker may send us at once
    batch_max: int = 1_000  # messages per store transaction
    batch_wait_s: float = 0.05  # the longest a message waits for its batch to fill
    scan_interval_s: float = 2.0  # gap scans
    busy_scan_s: float = 30.0  # while a backlog drains, gap scans wait up to this much longer
    refresh_s: float = 5.0  # the fleet view (devices by status, per-device metrics) read from the store
    gap_grace_s: float = 3.0  # a gap must persist this long before a resend is asked for
    resend_backoff_max_s: float = 60.0  # asking again: doubling from gap_grace_s up to this
    resend_max_messages: int = 10_000  # per command; the agent's own limit (core.resend_max_messages)
    resend_per_scan: int = 100  # commands per scan, across the fleet
    scan_window: int = 10_000  # stored numbers read per boot per scan
    flush_timeout_s: float = 10.0  # on stop: the longest spent storing what was received


class Periodic(Protocol):
    """Work the leading collector runs every ``interval_s`` on its store (the rollout controller)."""

    interval_s: float
    publish: Callable[[str, bytes, bool], None] | None

    def step(self, store: TelemetryStore, now: float | None = None) -> Any: ...


@dataclass(slots=True)
class _Incoming:
    topic: str
    payload: bytes
    mid: int
    qos: int
    generation: int
    received: float


@dataclass
class _Asked:
    attempts: int
    due: float


class Collector:
    def __init__(
        self,
        store: TelemetryStore | Callable[[], TelemetryStore],
        broker: Broker,
        settings: ServeSettings | None = None,
        metrics: CollectorMetrics | None = None,
        alerts: AlertService | None = None,
        check: TelemetryCheck | None = None,
        rollouts: Periodic | None = None,
    ) -> None:
        self.settings = settings or ServeSettings()
        self.check = check or TelemetryCheck()  # open fleet unless a device registry says otherwise
        self._unverified_logged: dict[str, float] = {}
        self.broker = resolve(broker)
        self.topics = Topics(self.settings.prefix)
        self.metrics = metrics or CollectorMetrics()
        self._open = store if callable(store) else (lambda: store)
        self.store: TelemetryStore = self._open()
        # A deque, not a queue.Queue: append and popleft are atomic and cost no lock, which
        # matters at thousands of messages a second; ``_arrived`` wakes the writer.
        self._inbox: collections.deque[_Incoming] = collections.deque()
        self._arrived = threading.Event()
        self._generation = 0
        self._connected = threading.Event()
        self._stopping = threading.Event()
        self._asked: dict[tuple[str, str, int, int], _Asked] = {}
        self._devices: dict[str, DeviceStatus] = {}
        self._next_scan = 0.0
        self._next_refresh = 0.0
        self._writer = threading.Thread(target=self._run, name="edgekit-serve-writer", daemon=True)
        self.protocol = "5"  # or "3.1.1", once the broker refused MQTT 5
        self.shared = True  # subscribing through the share group; False where the broker has none
        self._refused_version = threading.Event()
        self._client = self._make_client()
        self._snapshot_mid: int | None = None
        self._live_mid: int | None = None  # start() returns once the broker acknowledged this subscription
        self.alerts = alerts
        self._next_alerts = 0.0
        if alerts is not None:
            alerts.publish = self._publish_retained
            self.metrics.register(alerts)
        self.rollouts = rollouts
        self._next_rollouts = 0.0
        if rollouts is not None:
            rollouts.publish = self._publish_retained

    # ── life ────────────────────────────────────────────────────────────────────────

    @property
    def client_id(self) -> str:
        return f"edgekit-serve-{self.settings.name}"

    def start(self, connect_timeout: float = 10.0) -> None:
        host, port = self.broker.host, self.broker.port
        try:
            self._learn_broker(connect_timeout)
            while True:
                self._client = self._make_client()
                self._open_session(host, port)
                self._client.loop_start()
                if self._connected.wait(connect_timeout):
                    break
                self._client.loop_stop()
                if not (self._refused_version.is_set() and self.protocol == "5"):
                    raise FleetError(
                        f"the broker at {self.broker.url} did not accept the connection in {connect_timeout:.0f} s",
                        "check its log: a collector needs the serve role's certificate or password",
                    )
                self.protocol = "3.1.1"  # the probe spoke 5 and the session was refused: unlikely, handled
        except FleetError:
            self.store.close()
            raise
        self._writer.start()

    def _learn_broker(self, timeout: float) -> None:
        """The MQTT version to speak and whether shared subscriptions work, from a short
        probe connection (the broker's word alone is not enough: see capabilities.py)."""
        with connect(self.broker, timeout=timeout, purpose="serve-probe") as conn:
            self.protocol = conn.protocol
            self.shared = shared_subscriptions(conn)
        if self.protocol != "5":
            log.warning("the broker at %s speaks MQTT 3.1.1 only: the session never expires", self.broker.url)
        if not self.shared:
            log.warning(
                "the broker at %s has no shared subscriptions: this collector subscribes plainly and "
                "takes all the traffic (a second one would store everything again, not share it)",
                self.broker.url,
            )

    def _open_session(self, host: str, port: int) -> None:
        try:
            if self.protocol == "5":
                props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
                props.SessionExpiryInterval = self.settings.session_expiry_s
                props.ReceiveMaximum = self.settings.receive_maximum
                self._client.connect(host, port, keepalive=30, clean_start=False, properties=props)
            else:
                self._client.connect(host, port, keepalive=30)
        except OSError as exc:
            raise FleetError(
                f"cannot reach the MQTT broker at {host}:{port}: {exc.strerror or exc}",
                "start the broker or pass --broker (and --broker-ca for mqtts://)",
            ) from None

    def stop(self, end_session: bool = False) -> None:
        """Store what was received (acknowledging it), then disconnect. The session stays on
        the broker unless ``end_session``: then it leaves the share group for good."""
        deadline = time.monotonic() + self.settings.flush_timeout_s
        while time.monotonic() < deadline and self._inbox:
            time.sleep(0.02)
        self._stopping.set()
        self._writer.join(max(0.1, deadline - time.monotonic()))
        props = None
        if end_session and self.protocol == "5":
            props = Properties(PacketTypes.DISCONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = 0
        with contextlib.suppress(Exception):
            self._client.disconnect(properties=props)
        with contextlib.suppress(Exception):  # paho 2.2 can raise AttributeError here
            self._client.loop_stop()
        if end_session and self.protocol != "5":
            self._end_v311_session()
        if self.alerts is not None and self.alerts.runner is not None:
            self.alerts.runner.stop()
        self.metrics.connected.set(0)
        with contextlib.suppress(Exception):
            self.store.close()

    def _end_v311_session(self) -> None:
        """MQTT 3.1.1 has no session expiry: a connection with a clean session discards it."""
        done = threading.Event()
        client = new_client(self.broker, self.client_id, "3.1.1", clean_session=True)
        client.on_connect = lambda *_: done.set()
        with contextlib.suppress(Exception):
            client.connect(self.broker.host, self.broker.port, keepalive=10)
            client.loop_start()
            done.wait(5.0)
            client.disconnect()
        with contextlib.suppress(Exception):
            client.loop_stop()

    # ── MQTT (paho's thread: translate and queue only) ─────────────────────────────

    def _make_client(self) -> paho.Client:
        # 3.1.1: a persistent session (clean session off), the broker queues while the collector is stopped
        client = new_client(self.broker, self.client_id, self.protocol, clean_session=False)
        client.manual_ack_set(True)  # acknowledged only once stored
        client.reconnect_delay_set(1, 30)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        return client

    def _on_connect(self, client: paho.Client, _u: Any, flags: Any, reason: ReasonCode, _p: Any) -> None:
        if reason.is_failure:
            if refuses_protocol(reason):
                self._refused_version.set()
            log.error("the broker refused the connection: %s", reason)
            return
        with contextlib.suppress(OSError, AttributeError):
            sock = client.socket()
            if isinstance(sock, socket.socket):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        group = f"$share/{self.settings.share_group}/" if self.shared else ""
        _, self._live_mid = client.subscribe([(f"{group}{self.topics.all_devices(leaf)}", 1) for leaf in LIVE])
        if self.shared:  # a plain subscription to the same filters already brings the retained documents
            _, self._snapshot_mid = client.subscribe([(self.topics.all_devices(leaf), 1) for leaf in RETAINED])
        self.metrics.connected.set(1)
        log.info("connected as %s (session %s)", self.client_id, "resumed" if flags.session_present else "new")

    def _on_subscribe(self, client: paho.Client, _u: Any, mid: int, _codes: Any, _p: Any) -> None:
        if mid == self._live_mid:  # receiving: on a first connection nothing published from now on is missed
            self._connected.set()
        if mid == self._snapshot_mid:  # the retained documents are queued: the plain subscription has done its job
            self._snapshot_mid = None
            client.unsubscribe([self.topics.all_devices(leaf) for leaf in RETAINED])

    def _on_disconnect(self, _c: paho.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
        self._generation += 1  # acknowledgements of the old connection's messages are void
        self.metrics.connected.set(0)
        if not self._stopping.is_set():
            log.warning("disconnected from the broker (%s); reconnecting", reason)

    def _on_message(self, _c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        self._inbox.append(_Incoming(msg.topic, bytes(msg.payload), msg.mid, msg.qos, self._generation, time.time()))
        if not self._arrived.is_set():
            self._arrived.set()

    # ── the writer thread ───────────────────────────────────────────────────────────

    def _run(self) -> None:
        while True:
            batch = self._take()
            if batch:
                self._ingest(batch)
            elif self._stopping.is_set():
                return
            # A gap seen while a backlog drains is mostly not a gap yet: scan when the queue
            # is drained, or at the latest every busy_scan_s.
            busy = len(batch) >= self.settings.batch_max or bool(self._inbox)
            due = self._next_scan + (self.settings.busy_scan_s if busy else 0.0)
            if time.monotonic() >= due:
                self._next_scan = time.monotonic() + self.settings.scan_interval_s
                try:
                    self._maintain()
                except Exception:  # a failed scan is retried at the next; ingestion goes on
                    log.exception("gap scan failed")
                    self._reopen()

    def _take(self) -> list[_Incoming]:
        """Up to batch_max messages: what is there, plus what arrives within batch_wait_s."""
        s, inbox = self.settings, self._inbox
        if not inbox:
            self._arrived.clear()
            if not inbox and not self._stopping.is_set():  # checked again: a message may have just come
                self._arrived.wait(0.1)
            if not inbox:
                return []
        batch: list[_Incoming] = []
        deadline = time.monotonic() + s.batch_wait_s
        while len(batch) < s.batch_max:
            if inbox:
                batch.append(inbox.popleft())
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._arrived.clear()
            if not inbox:
                self._arrived.wait(left)
        self.metrics.queue.set(len(inbox))
        return batch

    def _ingest(self, batch: list[_Incoming]) -> None:
        items: list[Received] = []
        for m in batch:
            item = self._decode(m)
            if item is not None:
                items.append(item)
        started = time.perf_counter()
        delay = 0.5
        while True:
            try:
                result = self.store.write(items)
                break
            except Exception as exc:  # the database is away: keep the batch, unacknowledged, and retry
                self.metrics.store_errors.inc()
                log.error("writing %d messages failed (%s); retrying in %.1f s", len(items), exc, delay)
                if self._stopping.is_set() and delay > 2:
                    return  # not acknowledged: the broker delivers them again next time
                time.sleep(delay)
                delay = min(delay * 2, 30.0)
                self._reopen()
        now = time.time()
        self.metrics.batch_seconds.observe(time.perf_counter() - started)
        self.metrics.batch_size.observe(len(batch))
        generation = self._generation
        for m in batch:
            if m.qos > 0 and m.generation == generation:
                self._client.ack(m.mid, m.qos)
        for leaf, n in result.stored.items():
            self.metrics.stored.labels(leaf).inc(n)
        for leaf, n in result.duplicates.items():
            if n:
                self.metrics.duplicates.labels(leaf).inc(n)
        lag = {leaf: self.metrics.lag.labels(leaf) for leaf in ("events", "drift")}
        for item in items:
            if isinstance(item.doc, (DeviceEvent, DriftMessage)):
                lag[item.leaf].observe(max(0.0, now - item.doc.ts))
            elif isinstance(item.doc, ResendReply):
                reply = item.doc
                for outcome, ranges in (("requeued", reply.requeued), ("queued", reply.queued)):
                    self.metrics.resend_messages.labels(outcome).inc(range_count(ranges))
                self.metrics.resend_messages.labels("missing").inc(range_count(reply.missing))

    def _decode(self, m: _Incoming) -> Received | None:
        parsed = self.topics.parse_device_topic(m.topic)
        if parsed is None or parsed[1] not in LEAVES or not m.payload:
            return None  # not ours, or a retained document cleared
        device, leaf = parsed
        verdict = self.check.verdict(device, m.topic, m.payload)
        if not self.check.counts(verdict) and verdict != UNENROLLED:
            self.metrics.unverified.labels(leaf).inc()
            now = time.monotonic()
            if now - self._unverified_logged.get(device, -1e9) > 60:  # one line a minute per device
                self._unverified_logged[device] = now
                log.warning("not storing %s from %s: %s", leaf, device, verdict)
            return None
        try:
            text = m.payload.decode("utf-8")
            doc = LEAVES[leaf].decode(text)
            named = getattr(doc, "device", device)
            if named != device:
                raise ProtocolError(f"document names device {named!r}")
        except (ProtocolError, UnicodeDecodeError) as exc:
            self.metrics.invalid.labels(leaf).inc()
            log.warning("refused a message on %s: %s", m.topic, getattr(exc, "detail", exc))
            return None
        return Received(leaf, device, doc, text, m.received)

    def _reopen(self) -> None:
        with contextlib.suppress(Exception):
            self.store.close()
        try:
            self.store = self._open()
        except (StoreError, Exception) as exc:
            log.error("cannot reopen the store: %s", exc)

    # ── gaps and the fleet view ─────────────────────────────────────────────────────

    def _maintain(self) -> None:
        now = time.time()
        if time.monotonic() >= self._next_refresh:
            self._next_refresh = time.monotonic() + self.settings.refresh_s
            self.check.refresh()  # devices enrolled (or revoked) since the collector started
            self._devices = self.store.latest()
            self.metrics.fleet.update(self._devices, now)
        if not self.store.try_lead():
            return
        gaps = self.store.scan_gaps(self.settings.scan_window)
        self.metrics.gap_messages.set(sum(g.count for g in gaps))
        self._ask(gaps, now)
        if self.alerts is not None and time.monotonic() >= self._next_alerts:
            self._next_alerts = time.monotonic() + self.alerts.config.interval_s
            try:
                self.alerts.step(self.store, None, now)
            except Exception:  # retried at the next run, from what the store holds; ingestion goes on
                log.exception("alert evaluation failed")
                self.alerts.reset()
        if self.rollouts is not None and time.monotonic() >= self._next_rollouts:
            self._next_rollouts = time.monotonic() + self.rollouts.interval_s
            try:
                self.rollouts.step(self.store, now)
            except Exception:  # the stored record is the truth: the next step starts from it again
                log.exception("rollout step failed")

    def _publish_retained(self, topic: str, payload: bytes, retain: bool) -> None:
        self._client.publish(topic, payload, qos=1, retain=retain)

    def _ask(self, gaps: list[Gap], now: float) -> None:
        """Ask each device not known to be offline for its gaps that persisted past the grace
        period, again with a doubling delay while they stay open (a command to an offline
        device is lost: it subscribes with a clean session)."""
        s = self.settings
        current = {(g.device, g.boot_id, g.first, g.last) for g in gaps}
        for key in list(self._asked):
            if key not in current:
                del self._asked[key]
        due: dict[tuple[str, str], list[tuple[int, int]]] = {}
        for g in gaps:
            key = (g.device, g.boot_id, g.first, g.last)
            asked = self._asked.setdefault(key, _Asked(0, now + s.gap_grace_s))
            status = self._devices.get(g.device)
            if now >= asked.due and status is not None and status.connectivity(now) != "offline":
                due.setdefault((g.device, g.boot_id), []).append((g.first, g.last))
        for (device, boot_id), ranges in sorted(due.items())[: s.resend_per_scan]:
            chosen = _bounded(ranges, s.resend_max_messages)
            cmd = Command(uuid.uuid4().hex[:16], now, device, ResendRequest(boot_id, chosen))
            self._client.publish(self.topics.cmd(device), cmd.encode(), qos=1)
            self.metrics.resend_requests.inc()
            log.info("asked %s to resend %d messages of boot %s", device, range_count(chosen), boot_id)
            for first, last in ranges:
                asked = self._asked[(device, boot_id, first, last)]
                asked.attempts += 1
                asked.due = now + min(s.resend_backoff_max_s, s.gap_grace_s * 2**asked.attempts)


def _bounded(ranges: list[tuple[int, int]], limit: int) -> tuple[tuple[int, int], ...]:
    """The first ranges, cut so that at most ``limit`` numbers and MAX_RANGES ranges are asked."""
    out: list[tuple[int, int]] = []
    left = limit
    for first, last in sorted(ranges):
        if left <= 0 or len(out) >= MAX_RANGES:
            break
        end = min(last, first + left - 1)
        out.append((first, end))
        left -= end - first + 1
    return tuple(out)
