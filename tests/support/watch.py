"""A test-side MQTT subscriber that records everything on a set of topics."""

from __future__ import annotations

import json
import threading
import time
from typing import Any, TypeVar

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from device_agent.protocol import DeviceEvent, Document
from edgekit.fleet.client import parse_broker

D = TypeVar("D", bound=Document)


class Watcher:
    def __init__(self, broker_url: str, topics: list[str]) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        host, port = parse_broker(broker_url)
        for protocol in (MQTTProtocolVersion.MQTTv5, MQTTProtocolVersion.MQTTv311):  # 3.1.1: aedes
            refused = threading.Event()
            self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=protocol)
            self.client.on_message = self._on_message
            self.client.on_connect = lambda c, _u, _f, r, _p, refused=refused: (
                refused.set() if r.is_failure else c.subscribe([(t, 1) for t in topics])
            )
            self.client.on_subscribe = lambda *_: self._subscribed.set()
            self.client.reconnect_delay_set(0.2, 1)
            self.client.connect(host, port)
            self.client.loop_start()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not (self._subscribed.is_set() or refused.is_set()):
                time.sleep(0.02)
            if self._subscribed.is_set():
                return
            self.client.disconnect()
            self.client.loop_stop()
        raise RuntimeError("watcher could not subscribe")

    def _on_message(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def json(self, suffix: str) -> list[dict[str, Any]]:
        """Plain JSON of every message whose topic ends with ``suffix`` (what any subscriber sees)."""
        with self._lock:
            items = [p for t, p, _ in self.messages if t.endswith(suffix) and p]
        return [json.loads(p) for p in items]

    def docs(self, suffix: str, cls: type[D]) -> list[D]:
        """Payloads of every message whose topic ends with ``suffix``, read as ``cls``."""
        with self._lock:
            items = [p for t, p, _ in self.messages if t.endswith(suffix) and p]
        return [cls.decode(p) for p in items]

    def codes(self, device: str) -> list[str]:
        return [e.code for e in self.docs(f"/dev/{device}/events", DeviceEvent)]

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
