"""The local API over a broker on the device, for devices whose applications already talk MQTT.

Requests are published to ``api.mqtt_topic`` on the broker at ``api.mqtt_broker`` (a broker on
the device, not the fleet's); each is answered on the request's MQTT 5 *Response Topic*, with
its *Correlation Data* copied, the pattern MQTT 5 defines for request/response. The payload is
exactly a socket line's JSON (a row, a batch, a health request) and so is the answer.

A request without a response topic cannot be answered; it is counted and logged, not served.
This client is separate from the fleet link (:mod:`device_agent.mqtt`): a slow or absent
local broker never delays telemetry, and the fleet's broker never sees local traffic.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from .api_server import Handler
from .broker import endpoint

log = logging.getLogger("edgekit.agent.api")


class LocalMqttBridge:
    def __init__(self, handler: Handler, url: str, topic: str, client_id: str) -> None:
        self.handler = handler
        self.url = url
        self.topic = topic
        self.unanswerable = 0  # requests without a response topic
        self.connected = False
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_connect_fail = lambda *_: log.warning("cannot reach the local broker at %s; retrying", url)
        self.client = client

    def start(self) -> None:
        ep = endpoint(self.url, environ={})  # the device's own broker: credentials only from its URL
        ep.apply(self.client)
        self.client.connect_async(ep.host, ep.port, clean_start=True)
        self.client.loop_start()

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()
        with contextlib.suppress(Exception):  # paho 2.2 can raise AttributeError here
            self.client.loop_stop()

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Properties | None
    ) -> None:
        if reason.is_failure:
            log.warning("the local broker refused the connection: %s", reason)
            return
        self.connected = True
        client.subscribe(self.topic, qos=1)
        log.info("taking requests on %s at %s", self.topic, self.url)

    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Properties | None
    ) -> None:
        self.connected = False

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        props = getattr(msg, "properties", None)
        reply_to = getattr(props, "ResponseTopic", None)
        if not reply_to:
            self.unanswerable += 1
            if self.unanswerable == 1 or self.unanswerable % 1000 == 0:
                log.warning(
                    "%d request(s) on %s had no MQTT 5 response topic and were not served", self.unanswerable, msg.topic
                )
            return
        answer = self.handler.handle_message(bytes(msg.payload)).rstrip(b"\n")
        out = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        correlation = getattr(props, "CorrelationData", None)
        if correlation is not None:
            out.CorrelationData = correlation
        client.publish(reply_to, answer, qos=min(msg.qos, 1), properties=out)
