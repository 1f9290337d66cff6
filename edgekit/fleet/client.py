"""A short-lived MQTT connection for CLI commands: connect, do one job, disconnect.

paho's network loop runs in its own thread; commands wait on events with timeouts so a
missing broker is a clear error after a few seconds, never a hang.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from device_agent.broker import BrokerEndpoint, endpoint
from device_agent.errors import ConfigError
from device_agent.mqtt_versions import PROTOCOLS, refuses_protocol

from ..errors import FleetError, UsageError

Broker = str | BrokerEndpoint  # a URL (credentials from the URL or the environment), or a resolved endpoint


def resolve(broker: Broker) -> BrokerEndpoint:
    """The endpoint of a URL or an endpoint; a bad URL or file is a usage error, one line."""
    if isinstance(broker, BrokerEndpoint):
        return broker
    try:
        return endpoint(broker)
    except ConfigError as exc:
        raise UsageError(exc.detail, "see 'edgekit deploy --help' for the --broker options") from None


def parse_broker(url: Broker) -> tuple[str, int]:
    ep = resolve(url)
    return ep.host, ep.port


def new_client(broker: BrokerEndpoint, client_id: str, protocol: str = "5", clean_session: bool = True) -> paho.Client:
    """A paho client for MQTT ``protocol`` ("5" or "3.1.1") with the endpoint's TLS and
    credentials set; ``clean_session`` is 3.1.1's (MQTT 5 says it at connect)."""
    if protocol == "5":
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=PROTOCOLS["5"])
    else:
        client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=PROTOCOLS[protocol], clean_session=clean_session
        )
    try:
        broker.apply(client)
    except (OSError, ValueError) as exc:  # ssl.SSLError: a CA, cert or key file that is not one
        raise UsageError(
            f"cannot use the broker's TLS files: {exc}", "check --broker-ca/--broker-cert/--broker-key"
        ) from None
    return client


def tls_reason(exc: ssl.SSLError) -> str:
    detail = getattr(exc, "verify_message", None)
    return f"certificate verify failed: {detail}" if detail else str(exc.reason or exc)


def refusal_hint(reason: str) -> str:
    """What to do about a CONNACK refusal."""
    low = reason.lower()
    if "not authorized" in low or "bad user" in low or "password" in low or "closed before" in low:
        return "the broker wants credentials this host does not have: --broker-cert/--broker-key or --broker-username"
    return "check the broker's log"


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
def connect(broker: Broker, timeout: float = 5.0, purpose: str = "cli") -> Iterator[Connection]:
    """A connection speaking MQTT 5, or MQTT 3.1.1 where the broker refuses 5: with a CONNACK
    saying so (aedes), or by closing the connection before any CONNACK (RabbitMQ before 3.13;
    a refused TLS certificate does the same, and is then reported from the 3.1.1 attempt)."""
    for protocol in ("5", "3.1.1"):
        try:
            with _connect(broker, timeout, purpose, protocol) as conn:
                yield conn
                return
        except _RefusedVersion:
            continue


class _RefusedVersion(Exception):
    """The broker refused the connection for its MQTT version (or closed it unanswered)."""


@contextlib.contextmanager
def _connect(broker: Broker, timeout: float, purpose: str, protocol: str) -> Iterator[Connection]:
    ep = resolve(broker)
    host, port = ep.host, ep.port
    client = new_client(ep, f"edgekit-{purpose}-{uuid.uuid4().hex[:8]}", protocol)
    conn = Connection(client, protocol=protocol)
    ready = threading.Event()
    refused: list[str] = []
    version_refused: list[bool] = []  # a CONNACK refusing the version, or a close before any CONNACK

    def on_connect(c: paho.Client, _u: Any, _f: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            refused.append(str(reason))
            version_refused.append(refuses_protocol(reason))
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
        if not ready.is_set():  # closed before CONNACK: a TLS alert (certificate refused) or a reset
            refused.append(f"connection closed before the broker answered ({reason})")
            version_refused.append(True)
            ready.set()

    client.on_connect = on_connect
    client.on_message = on_message
    client.on_disconnect = on_disconnect
    try:
        client.connect(host, port, keepalive=30)
    except ssl.SSLError as exc:
        raise FleetError(
            f"TLS with the broker at {ep.url} failed: {tls_reason(exc)}",
            "check --broker-ca (the fleet's CA) and that the URL's host is in the broker's certificate",
        ) from None
    except OSError as exc:
        raise FleetError(
            f"cannot reach the MQTT broker at {host}:{port}: {exc.strerror or exc}", "start the broker or pass --broker"
        ) from None
    client.loop_start()
    try:
        if not ready.wait(timeout):
            raise FleetError(f"the broker at {ep.url} did not answer within {timeout:.0f} s")
        if refused and protocol == "5" and version_refused[0]:
            raise _RefusedVersion()
        if refused:
            raise FleetError(f"the broker at {ep.url} refused the connection: {refused[0]}", refusal_hint(refused[0]))
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

    mosquitto queues the retained messages of a subscription before anything published
    after it, so a marker message published once the subscription is acknowledged comes back
    after the last of them: that ends the wait with no guessing. MQTT does not promise that
    order, and aedes does not keep it (it streams retained messages from its store after the
    SUBACK: a marker ended a read of 50 documents after 1 to 13 of them, measured). So the
    marker is trusted over MQTT 5 only (``Connection.ordered``); otherwise, and on a broker
    that orders differently, the wait ends by silence: no retained message for ``settle`` s.
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
        while time.monotonic() - started < max_wait and not (marker_seen.is_set() and conn.ordered):
            if time.monotonic() - conn.last_message >= settle:
                break
            marker_seen.wait(0.01)
        conn.client.unsubscribe([*topics, marker])
    finally:
        conn.client.message_callback_remove(marker)
    return list(conn.messages)
