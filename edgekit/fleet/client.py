"""A short-lived MQTT connection for CLI commands: connect, do one job, disconnect.

paho's network loop runs in its own thread; commands wait on events with timeouts so a
missing broker is a clear error after a few seconds, never a hang.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from device_agent.mqtt_versions import PROTOCOLS, refuses_protocol

from ..errors import FleetError


def parse_broker(url: str) -> tuple[str, int]:
    parsed = urlparse(url if "://" in url else f"mqtt://{url}")
    if parsed.scheme not in ("mqtt", "tcp"):
        raise FleetError(f"unsupported broker URL {url!r}", "use mqtt://HOST:PORT")
    return parsed.hostname or "127.0.0.1", parsed.port or 1883


@dataclass
class Connection:
    client: paho.Client
    max_packet_size: int | None = None
    messages: list[tuple[str, bytes, bool]] = field(default_factory=list)
    last_message: float = 0.0
    on_message: Callable[[str, bytes, bool], None] | None = None
    protocol: str = "5"  # the MQTT version spoken: "5", or "3.1.1" where the broker refused 5
    connack: dict[str, int] = field(default_factory=dict)  # MQTT 5 CONNACK properties, by name

    @property
    def ordered(self) -> bool:
        """Whether retained messages are taken to arrive before later publishes (see collect)."""
        return self.protocol == "5"


# What a broker may say about itself in an MQTT 5 CONNACK (absent: the protocol's default).
CONNACK_PROPERTIES = (
    "MaximumPacketSize",
    "RetainAvailable",
    "SharedSubscriptionAvailable",
    "WildcardSubscriptionAvailable",
    "ReceiveMaximum",
    "MaximumQoS",
    "SessionExpiryInterval",
)


@contextlib.contextmanager
def connect(broker: str, timeout: float = 5.0, purpose: str = "cli") -> Iterator[Connection]:
    """A connection speaking MQTT 5, or MQTT 3.1.1 where the broker refuses 5."""
    for protocol in ("5", "3.1.1"):
        try:
            with _connect(broker, timeout, purpose, protocol) as conn:
                yield conn
                return
        except _RefusedVersion:
            continue
    raise FleetError(f"the broker at {broker} refused both MQTT 5 and MQTT 3.1.1")


CLOSED_BEFORE_CONNACK = "the connection was closed before the broker answered"


class _RefusedVersion(Exception):
    """The broker refused the connection for its MQTT version."""


@contextlib.contextmanager
def _connect(broker: str, timeout: float, purpose: str, protocol: str) -> Iterator[Connection]:
    host, port = parse_broker(broker)
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"edgekit-{purpose}-{uuid.uuid4().hex[:8]}",
        protocol=PROTOCOLS[protocol],
    )
    conn = Connection(client, protocol=protocol)
    ready = threading.Event()
    refused: list[Any] = []

    def on_connect(c: paho.Client, _u: Any, _f: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            refused.append(reason)
        else:
            with contextlib.suppress(OSError, AttributeError):
                sock = c.socket()
                if isinstance(sock, socket.socket):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if protocol == "5" and props is not None:
                conn.connack = {n: int(getattr(props, n)) for n in CONNACK_PROPERTIES if hasattr(props, n)}
            conn.max_packet_size = conn.connack.get("MaximumPacketSize")
        ready.set()

    def on_message(_c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        if msg.retain:  # live messages (heartbeats every few seconds) must not hold a collect open
            conn.last_message = time.monotonic()
        if conn.on_message is not None:
            conn.on_message(msg.topic, bytes(msg.payload), bool(msg.retain))
        else:
            conn.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def on_disconnect(_c: paho.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if not ready.is_set():  # closed before any CONNACK: RabbitMQ before 3.13 answers MQTT 5 so
            refused.append(CLOSED_BEFORE_CONNACK)
            ready.set()

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    client.on_message = on_message
    try:
        client.connect(host, port, keepalive=30)
    except OSError as exc:
        raise FleetError(
            f"cannot reach the MQTT broker at {host}:{port}: {exc.strerror or exc}", "start the broker or pass --broker"
        ) from None
    client.loop_start()
    try:
        if not ready.wait(timeout):
            raise FleetError(f"the broker at {host}:{port} did not answer within {timeout:.0f} s")
        if refused and protocol == "5" and (refused[0] is CLOSED_BEFORE_CONNACK or refuses_protocol(refused[0])):
            raise _RefusedVersion()
        if refused:
            raise FleetError(f"the broker at {host}:{port} refused the connection: {refused[0]}")
        yield conn
    finally:
        with contextlib.suppress(Exception):
            client.disconnect()
        with contextlib.suppress(Exception):
            client.loop_stop()


def publish_all(
    conn: Connection,
    items: list[tuple[str, bytes, bool]],
    timeout: float = 60.0,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Publish at QoS 1 and wait until the broker has acknowledged every message."""
    infos = []
    for topic, payload, retain in items:
        info = conn.client.publish(topic, payload, qos=1, retain=retain)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise FleetError(f"publish to {topic} failed: {paho.error_string(info.rc)}")
        infos.append(info)
    deadline = time.monotonic() + timeout
    for i, info in enumerate(infos):
        info.wait_for_publish(max(0.01, deadline - time.monotonic()))
        if not info.is_published():
            raise FleetError(f"the broker did not acknowledge {len(infos) - i} messages within {timeout:.0f} s")
        if progress is not None:
            progress(i + 1)


def collect(
    conn: Connection, topics: list[str], settle: float = 0.4, max_wait: float = 5.0
) -> list[tuple[str, bytes, bool]]:
    """Subscribe and gather the retained messages (and whatever else arrives meanwhile).

    mosquitto queues the retained messages of a subscription before anything published
    after it, so a marker message published once the subscription is acknowledged comes back
    after the last of them: that ends the wait with no guessing. MQTT does not promise that
    order, and aedes does not keep it (it streams retained messages from its store after the
    SUBACK: a marker ended a read of 50 documents after 1 to 13 of them, measured). So the
    marker is trusted over MQTT 5 only (``Connection.ordered``); otherwise, and on a broker
    that orders differently, the wait ends by silence: no retained message for ``settle`` s.
    """
    subscribed = threading.Event()
    marker_seen = threading.Event()
    marker = f"edgekit-sync/{uuid.uuid4().hex}"

    def on_subscribe(_c: paho.Client, _u: Any, _mid: int, _codes: Any, _p: Any) -> None:
        subscribed.set()

    def on_marker(_c: paho.Client, _u: Any, _msg: paho.MQTTMessage) -> None:
        marker_seen.set()

    conn.client.on_subscribe = on_subscribe
    conn.client.message_callback_add(marker, on_marker)
    conn.messages.clear()
    try:
        conn.client.subscribe([(t, 1) for t in [*topics, marker]])
        started = time.monotonic()
        subscribed.wait(max_wait)
        conn.client.publish(marker, b"", qos=1)
        conn.last_message = time.monotonic()
        while time.monotonic() - started < max_wait and not (marker_seen.is_set() and conn.ordered):
            if time.monotonic() - conn.last_message >= settle:
                break
            marker_seen.wait(0.01)
        conn.client.unsubscribe([*topics, marker])
    finally:
        conn.client.message_callback_remove(marker)
    return list(conn.messages)
