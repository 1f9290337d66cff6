"""The MQTT versions edgekit speaks, and how a broker refuses one: shared by the agent's paho
adapter and the host's clients (a light module: the host imports it without the agent's worker)."""

from __future__ import annotations

from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

PROTOCOLS = {"5": MQTTProtocolVersion.MQTTv5, "3.1.1": MQTTProtocolVersion.MQTTv311}
UNSUPPORTED_PROTOCOL = (1, 132)  # CONNACK: 3.1.1's return code and MQTT 5's reason code


def refuses_protocol(reason: ReasonCode | int) -> bool:
    """Whether a CONNACK refused the connection for its MQTT version."""
    return getattr(reason, "value", reason) in UNSUPPORTED_PROTOCOL
