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
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

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


@contextlib.contextmanager
def connect(broker: str, timeout: float = 5.0, purpose: str = "cli") -> Iterator[Connection]:
    host, port = parse_broker(broker)
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"edgekit-{purpose}-{uuid.uuid4().hex[:8]}",
        protocol=MQTTProtocolVersion.MQTTv5,
    )
    conn = Connection(client)
    ready = threading.Event()
    refused: list[str] = []

    def on_connect(c: paho.Client, _u: Any, _f: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            refused.append(str(reason))
        else:
            with contextlib.suppress(OSError, AttributeError):
                sock = c.socket()
                if isinstance(sock, socket.socket):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.max_packet_size = getattr(props, "MaximumPacketSize", None) if props is not None else None
        ready.set()

    def on_message(_c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        if msg.retain:  # live messages (heartbeats every few seconds) must not hold a collect open
            conn.last_message = time.monotonic()
        if conn.on_message is not None:
            conn.on_message(msg.topic, bytes(msg.payload), bool(msg.retain))
        else:
            conn.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    client.on_connect = on_connect
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
    conn: Connection, topics: list[str], settle: float = 0.4, max_wait: float = 60.0
) -> list[tuple[str, bytes, bool]]:
    """Subscribe and gather the retained messages (and whatever else arrives meanwhile).

    The broker queues the retained messages of a subscription before anything published
    after it, so a marker message published once the subscription is acknowledged comes back
    after the last of them: that ends the wait with no guessing. A broker that orders
    differently still ends by silence: no retained message for ``settle`` seconds.
    ``max_wait`` only bounds a stream of retained messages that never ends: a fixed few seconds
    cut a thousand devices' documents short on a busy machine, and the fleet looked smaller.
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
        subscribed.wait(min(max_wait, 10.0))
        conn.client.publish(marker, b"", qos=1)
        conn.last_message = time.monotonic()
        while time.monotonic() - started < max_wait and not marker_seen.is_set():
            if time.monotonic() - conn.last_message >= settle:
                break
            marker_seen.wait(0.01)
        conn.client.unsubscribe([*topics, marker])
    finally:
        conn.client.message_callback_remove(marker)
    return list(conn.messages)
