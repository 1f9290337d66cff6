"""The paho adapter: paho callbacks become events, the worker's requests become paho calls.

It makes no deployment decision. paho's network thread only posts events to the worker's
queue (never blocks in a callback). What it does know is paho's own quirks, measured here
(see FIELD-NOTES): Nagle's algorithm delays every subscribe round trip by ~40 ms (so
TCP_NODELAY is set), paho ignores the broker's Maximum Packet Size and loops reconnecting on
an oversized QoS 1 publish (so such a message is dropped and counted here), and the Will
must carry each connection's birth/death sequence, set before paho reconnects on its own.

Brokers without MQTT 5 answer an MQTT 5 CONNECT with "unsupported protocol version" (aedes)
or close the connection before any CONNACK (RabbitMQ before 3.13, measured); with
``mqtt.protocol = auto`` either makes the link build a paho
client for MQTT 3.1.1 and connects again, and says so once in the log. What 3.1.1 cannot
carry is done without: the agent cannot announce its Maximum Packet Size (the core still
refuses oversized messages on receipt) nor learn the broker's (nothing is dropped here
then: the broker's own limit decides).
"""

from __future__ import annotations

import contextlib
import logging
import random
import socket
import threading
from collections.abc import Callable, Sequence
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from .config import AgentConfig
from .events import Connected, Disconnected, Event, Message
from .mqtt_versions import PROTOCOLS, refuses_protocol
from .worker import Acked

log = logging.getLogger("edgekit.agent")

PACKET_MARGIN = 64  # bytes of fixed header and properties kept free under the packet limit
ANNOUNCE_MARGIN = 64 * 1024  # bytes above our largest accepted message, for topic and properties


class MqttLink:
    def __init__(
        self,
        client_id: str,
        config: AgentConfig,
        *,
        post: Callable[[Event | Acked], None],
        will: Callable[[int], tuple[str, bytes]],
        bdseq: int,
        sign: Callable[[str, bytes], bytes] | None = None,
    ) -> None:
        """``sign`` adds the device's signature to each document (device_agent.telemetry_sig)."""
        self.config = config
        self.sign = sign or (lambda _topic, payload: payload)
        self.post = post
        self.will = will
        self.bdseq = bdseq
        self.oversized = 0
        self.max_packet: int | None = None
        self._recent: list[paho.MQTTMessageInfo] = []  # last publishes, awaited at shutdown
        self.client_id = client_id
        self.endpoint = config.broker_endpoint()
        self.protocols = list(config.mqtt_protocols)  # the first is the one in use; the rest are fallbacks
        self._spoke = False  # a connection was accepted once: the version is settled for good
        self.client = self._make_client()

    @property
    def protocol(self) -> str:
        """The MQTT version this link speaks: "5" or "3.1.1"."""
        return self.protocols[0]

    def _make_client(self) -> paho.Client:
        self._answered = False  # a CONNACK came on this client: a close is no longer a refusal of MQTT 5
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=PROTOCOLS[self.protocol])
        self.endpoint.apply(client)  # TLS and credentials: the device's identity on the broker
        client.will_set(*self._signed_will(self.bdseq), 1, True)
        # paho backs off exponentially but without jitter: a random first delay spreads a fleet
        # that lost its broker at the same moment over the reconnect window.
        mqtt = self.config.mqtt
        client.reconnect_delay_set(
            min_delay=int(mqtt.reconnect_min_s + random.random() * 3), max_delay=int(mqtt.reconnect_max_s)
        )
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_connect_fail = lambda *_: log.warning("cannot reach the broker at %s; retrying", self.endpoint)
        return client

    def connect(self) -> None:
        host, port = self.endpoint.host, self.endpoint.port
        if self.protocol == "5":
            # Announce our Maximum Packet Size: the broker then never sends us a message larger
            # than we accept, instead of our reading 100 MB only to refuse it.
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            core = self.config.core
            props.MaximumPacketSize = max(core.max_payload_bytes, core.max_chunk_bytes) + ANNOUNCE_MARGIN
            self.client.connect_async(
                host, port, keepalive=self.config.mqtt.keepalive_s, clean_start=True, properties=props
            )
        else:  # 3.1.1: a clean session (the constructor's default), no properties
            self.client.connect_async(host, port, keepalive=self.config.mqtt.keepalive_s)
        self.client.loop_start()

    def _fall_back(self, refused: paho.Client) -> None:
        """The broker refused our MQTT version: the next one, on a new paho client (its
        version is fixed at construction). Runs on its own thread: paho's loop cannot be
        stopped from inside its own callback."""
        with contextlib.suppress(Exception):
            refused.disconnect()
        with contextlib.suppress(Exception):  # paho 2.2 can raise AttributeError here
            refused.loop_stop()
        if refused is not self.client:
            return
        self.protocols.pop(0)
        log.warning(
            "the broker at %s refused MQTT 5; speaking MQTT %s: no Maximum Packet Size is exchanged",
            self.endpoint,
            self.protocol,
        )
        self.client = self._make_client()
        self.connect()

    def close(self, timeout: float) -> None:
        """Wait briefly for the last publishes (the goodbye), then disconnect."""
        for info in list(self._recent):
            with contextlib.suppress(Exception):
                info.wait_for_publish(max(0.05, timeout / max(1, len(self._recent))))
        with contextlib.suppress(Exception):
            self.client.disconnect()
        with contextlib.suppress(Exception):  # paho 2.2 can raise AttributeError here
            self.client.loop_stop()

    # ── requests from the worker ────────────────────────────────────────────────────

    def _signed_will(self, bdseq: int) -> tuple[str, bytes]:
        topic, payload = self.will(bdseq)
        return topic, self.sign(topic, payload)

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> int | None:
        payload = self.sign(topic, payload)
        if not self._fits(topic, payload):
            return None
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            return None
        self._recent.append(info)
        del self._recent[:-16]
        return info.mid

    def subscribe(self, topics: Sequence[str]) -> None:
        self.client.subscribe([(t, 1) for t in topics])

    def unsubscribe(self, topics: Sequence[str]) -> None:
        self.client.unsubscribe(list(topics))

    def _fits(self, topic: str, payload: bytes) -> bool:
        """paho ignores the broker's Maximum Packet Size, and an oversized QoS 1 publish makes
        it reconnect in a loop: such a message is dropped here and counted instead."""
        limit = self.max_packet
        if limit is None or len(payload) + len(topic) + PACKET_MARGIN <= limit:
            return True
        self.oversized += 1
        log.error(
            "dropped a %d-byte message on %s: above the broker's %d-byte packet limit", len(payload), topic, limit
        )
        return False

    # ── paho callbacks (network thread): translate and post only ───────────────────

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Properties | None
    ) -> None:
        self._answered = True
        self._spoke = self._spoke or not reason.is_failure
        if reason.is_failure:
            if refuses_protocol(reason) and len(self.protocols) > 1 and client is self.client:
                threading.Thread(
                    target=self._fall_back, args=(client,), name="edgekit-mqtt-fallback", daemon=True
                ).start()
                return
            log.warning("broker refused the connection: %s", reason)
            return
        with contextlib.suppress(OSError, AttributeError):
            sock = client.socket()
            if isinstance(sock, socket.socket):  # Nagle delays every subscribe round trip by ~40 ms
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.max_packet = getattr(props, "MaximumPacketSize", None) if props is not None else None
        self.post(Connected(max_packet_size=self.max_packet, bdseq=self.bdseq))

    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Properties | None
    ) -> None:
        if not self._answered and not self._spoke and len(self.protocols) > 1 and client is self.client:
            threading.Thread(target=self._fall_back, args=(client,), name="edgekit-mqtt-fallback", daemon=True).start()
            return
        # The next connection gets a higher birth/death sequence; its Will must carry it,
        # set here because paho reconnects on its own before the worker would see this.
        self.bdseq += 1
        with contextlib.suppress(Exception):
            client.will_set(*self._signed_will(self.bdseq), 1, True)
        self.post(Disconnected(str(reason)))

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        self.post(Message(msg.topic, bytes(msg.payload), bool(msg.retain)))

    def _on_publish(
        self, client: paho.Client, userdata: Any, mid: int, reason: ReasonCode, props: Properties | None
    ) -> None:
        self.post(Acked(mid))
