"""What a broker supports of what edgekit uses, found by asking it and by trying.

An MQTT 5 broker states some limits in its CONNACK (Maximum Packet Size, whether retained
messages, wildcards and shared subscriptions are available); an MQTT 3.1.1 broker states
nothing, and some MQTT 5 brokers state less than they do. So the features whose absence
breaks edgekit silently are tried on throw-away topics under ``edgekit-probe/<random>/``:

* a **retained message on an exact topic** (devices read bundles and desired states so);
* a **retained message on a wildcard subscription** (``fleet status``, ``deploy --wait`` and
  ``bundles gc`` read every device's retained documents through ``dev/+/…``; RabbitMQ's MQTT
  plugin before 3.13 sends none);
* a **shared subscription** (``$share/…``: several ``edgekit serve`` splitting the load; a
  broker without it treats the filter as a plain topic and delivers nothing to it).

Nothing is left behind: the retained probe is cleared before returning.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import FleetError
from .client import Broker, Connection, connect, publish_all, resolve

PROBE_PREFIX = "edgekit-probe"


@dataclass(frozen=True)
class Feature:
    name: str
    supported: bool | None  # None: cannot be known over this protocol
    required: bool  # edgekit does not work without it (the others cost a function or a safeguard)
    detail: str
    needed_by: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class BrokerReport:
    broker: str
    protocol: str  # the MQTT version spoken: "5" or "3.1.1"
    max_packet_size: int | None
    features: list[Feature] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(f.supported is not False for f in self.features if f.required)

    def missing(self) -> list[Feature]:
        return [f for f in self.features if f.supported is False]

    def feature(self, name: str) -> Feature:
        return next(f for f in self.features if f.name == name)

    def to_json(self) -> dict[str, Any]:
        return {
            "broker": self.broker,
            "protocol": self.protocol,
            "max_packet_size": self.max_packet_size,
            "ok": self.ok,
            "features": [f.to_json() for f in self.features],
        }


def shared_subscriptions(conn: Connection, timeout: float = 2.0) -> bool:
    """Whether a message published to a topic reaches a ``$share`` subscription to it."""
    if conn.connack.get("SharedSubscriptionAvailable") == 0:
        return False
    base = f"{PROBE_PREFIX}/{uuid.uuid4().hex[:12]}"
    got = threading.Event()
    subscribed = threading.Event()
    conn.client.message_callback_add(f"$share/ek/{base}/s", lambda *_: got.set())
    conn.client.message_callback_add(f"{base}/s", lambda *_: got.set())
    conn.client.on_subscribe = lambda *_: subscribed.set()
    try:
        result, _mid = conn.client.subscribe(f"$share/ek/{base}/s", 1)
        if result != 0 or not subscribed.wait(timeout):
            return False
        publish_all(conn, [(f"{base}/s", b"probe", False)], timeout=timeout)
        return got.wait(timeout)
    finally:
        conn.client.unsubscribe(f"$share/ek/{base}/s")
        conn.client.message_callback_remove(f"$share/ek/{base}/s")
        conn.client.message_callback_remove(f"{base}/s")


def _retained(conn: Connection, timeout: float = 5.0) -> tuple[bool, bool]:
    """Whether a retained message comes back to an exact subscription, and to a wildcard one.
    The probe knows the message it waits for, so it waits for that one (up to ``timeout``),
    not for a silence: a broker may stream its retained messages slowly after the SUBACK."""
    topic = f"{PROBE_PREFIX}/{uuid.uuid4().hex[:12]}/r"
    publish_all(conn, [(topic, b"probe", True)], timeout=5.0)
    try:
        exact = _comes_back(conn, topic, topic, timeout)
        wildcard = _comes_back(conn, topic.rsplit("/", 1)[0] + "/+", topic, timeout)
    finally:
        publish_all(conn, [(topic, b"", True)], timeout=5.0)
    return exact, wildcard


def _comes_back(conn: Connection, subscription: str, topic: str, timeout: float) -> bool:
    got = threading.Event()

    def on_message(_c: Any, _u: Any, msg: Any) -> None:
        if msg.topic == topic and msg.retain and msg.payload:
            got.set()

    conn.client.message_callback_add(subscription, on_message)
    deadline = time.monotonic() + timeout
    try:
        # A broker may store a retained message after acknowledging it (aedes does): a
        # subscription made at once can miss it, so subscribe again until it comes or time is up.
        while True:
            conn.client.subscribe(subscription, 1)
            if got.wait(min(0.5, max(0.0, deadline - time.monotonic()))):
                return True
            if time.monotonic() >= deadline:
                return False
            conn.client.unsubscribe(subscription)
    finally:
        conn.client.unsubscribe(subscription)
        conn.client.message_callback_remove(subscription)


def probe(broker: Broker, timeout: float = 5.0) -> BrokerReport:
    """Connect (MQTT 5, or 3.1.1 where refused), read what the broker says, try the rest."""
    url = resolve(broker).url  # without a password
    started = time.monotonic()
    with connect(broker, timeout=timeout, purpose="check") as conn:
        v5 = conn.protocol == "5"
        says = conn.connack
        exact, wildcard = _retained(conn)
        shared = shared_subscriptions(conn)
    if time.monotonic() - started > 60:  # pragma: no cover - a broker this slow is reported as unreachable
        raise FleetError(f"the broker at {url} took over a minute to answer the checks")
    mps = conn.max_packet_size
    features = [
        Feature(
            "mqtt5",
            v5,
            False,
            "MQTT 5" if v5 else "the broker refused MQTT 5; edgekit speaks MQTT 3.1.1 with it",
            "Maximum Packet Size, session expiry, Receive Maximum (all fall back, see the other lines)",
        ),
        Feature(
            "retained",
            exact,
            True,
            "retained messages are kept" if exact else "a retained message did not come back to a new subscriber",
            "devices: bundles and desired states",
        ),
        Feature(
            "retained_wildcard",
            wildcard,
            True,
            "retained messages reach wildcard subscriptions"
            if wildcard
            else "retained messages do not reach wildcard subscriptions (dev/+/state reads nothing)",
            "fleet status, deploy --wait, bundles gc (use `edgekit serve` and its store for the fleet's view)",
        ),
        Feature(
            "shared_subscriptions",
            shared,
            False,
            "$share subscriptions split messages"
            if shared
            else "no shared subscriptions: one `edgekit serve` takes all the traffic (it subscribes plainly)",
            "several edgekit serve sharing the load",
        ),
        Feature(
            "maximum_packet_size",
            None if not v5 else True,
            False,
            (f"the broker accepts packets up to {mps} bytes" if mps else "the broker states no packet limit")
            if v5
            else "MQTT 3.1.1 cannot say: deploy uses its default chunk size, which the broker must accept",
            "deploy sizes chunks; the agent refuses oversized messages",
        ),
        Feature(
            "session_expiry",
            True if v5 else None,
            False,
            _expiry(says)
            if v5
            else "MQTT 3.1.1 sessions never expire: a collector retired for good must use serve --end-session",
            "edgekit serve's session while it is stopped",
        ),
    ]
    return BrokerReport(url, conn.protocol, mps, features)


def _expiry(says: dict[str, int]) -> str:
    capped = says.get("SessionExpiryInterval")
    text = "sessions expire after the interval the client asks"
    return text if capped is None else f"{text}, at most {capped} s (the broker's cap)"
