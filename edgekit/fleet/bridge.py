"""The mosquitto bridge section a site broker needs to carry edgekit to a central broker.

The common plant topology: devices connect to a broker on the site; the host (``deploy``,
``serve``, ``fleet status``) talks to a central broker; the site broker bridges the two. What
has to cross, and which way, follows from the topic tree (docs/architecture.md):

* **in** (central → site): bundles (manifests and chunks), desired states, resend commands.
  Bundles and desired states are retained and devices read them by subscribing, possibly long
  after they were published, so they must arrive at the site *as retained messages*. Over a
  plain MQTT 3.1.1 connection a broker forwards a live message with the retain flag cleared
  (only messages sent because of a new subscription keep it), and the site broker would then
  not keep it. mosquitto's ``try_private`` marks the bridge as a bridge, and the central
  mosquitto then forwards retain flags as published (measured in
  ``tests/integration/test_bridge.py``: chunks published while the bridge was up are served,
  retained, to devices that connect to the site later).
* **out** (site → central): births, Wills, heartbeats, reported summaries (retained, so
  ``fleet status`` on the central broker works without a daemon), events, drift windows and
  resend replies (QoS 1, through the devices' outboxes).

The two directions share no topic, so nothing loops. Everything crosses at QoS 1: a QoS 0
heartbeat stays QoS 0 (a bridge never raises a message's QoS), but nothing is downgraded.
``cleansession false`` keeps the bridge's session on the central broker while the link is
down, so commands and new bundles wait for the site — up to the central broker's
``max_queued_messages``, which counts per client, the bridge included: size it for a whole
bundle's chunks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..broker_config import DEVICE_READS, DEVICE_WRITES
from ..errors import UsageError
from .client import resolve

# What devices read and write, as the broker's ACL grants it (one definition: broker_config).
IN_TOPICS = ("bundle/#", "group/+/desired", *(f"dev/+/{leaf}" for leaf in DEVICE_READS))
OUT_TOPICS = tuple(f"dev/+/{leaf}" for leaf in DEVICE_WRITES)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class BridgeSpec:
    """One site broker's bridge to the central broker."""

    site: str  # names the connection and the bridge's client ids; one per site
    central: str  # mqtt://HOST:PORT of the central broker
    prefix: str = "edgekit/v1"
    qos: int = 1
    groups: tuple[str, ...] = ()  # only these groups' desired states cross (default: every group)
    max_packet_size: int = 0  # bytes; 0: the central broker's own limit applies
    keepalive_s: int = 30
    restart_s: tuple[int, int] = (2, 30)  # reconnect backoff: base and cap, seconds
    ca: str = ""  # mqtts:// central broker: its CA certificate (bridge_cafile)
    cert: str = ""  # the bridge's client certificate and key on the central broker
    key: str = ""
    username: str = ""  # or a username and password there
    password: str = ""

    def __post_init__(self) -> None:
        if not _NAME.match(self.site):
            raise UsageError(f"site name {self.site!r} is not usable", "letters, digits, '-', '_' and '.', up to 64")
        if self.qos not in (0, 1):
            raise UsageError(f"QoS {self.qos} is not supported here", "use 1 (or 0 for telemetry you may lose)")
        if not self.prefix or "+" in self.prefix or "#" in self.prefix:
            raise UsageError(f"prefix {self.prefix!r} is not a topic prefix", "use the workspace's, e.g. edgekit/v1")
        resolve(self.central)
        if bool(self.cert) != bool(self.key):
            raise UsageError("a bridge certificate needs its key, and a key its certificate", "give --cert and --key")
        if (self.cert or self.ca) and not resolve(self.central).tls:
            raise UsageError("TLS files were given for a plain mqtt:// central broker", "use mqtts://HOST:8883")

    @property
    def connection(self) -> str:
        return f"edgekit-{self.site}"

    @property
    def notification_topic(self) -> str:
        """Retained on both brokers: ``1`` while the link is up, ``0`` (the bridge's Will) once it
        is lost — so the central side can tell a site that is down from devices that are."""
        return f"{self.prefix}/site/{self.site}/bridge"

    def in_topics(self) -> list[str]:
        topics = list(IN_TOPICS)
        if self.groups:
            topics.remove("group/+/desired")
            topics += [f"group/{g}/desired" for g in self.groups]
        return [f"{self.prefix}/{t}" for t in topics]

    def out_topics(self) -> list[str]:
        return [f"{self.prefix}/{t}" for t in OUT_TOPICS]


def render(spec: BridgeSpec) -> str:
    """The bridge section for the site broker's mosquitto.conf (or a file in its include_dir)."""
    central = resolve(spec.central)
    host, port = central.host, central.port
    lines = [
        f"# edgekit bridge: this site broker ({spec.site}) <-> the central broker {host}:{port}",
        "# Written by `edgekit broker bridge-config`; see docs/scaling.md. On the central broker set",
        "# max_queued_messages above the chunk count of the largest bundle: it queues for the bridge",
        "# as for any client while the link is down.",
        f"connection {spec.connection}",
        f"address {host}:{port}",
        f"remote_clientid {spec.connection}",
        f"local_clientid {spec.connection}.local",
        "bridge_protocol_version mqttv311",
        "# Mark the connection as a bridge: the central mosquitto then forwards retain flags as",
        "# published, so bundles and desired states stay retained on this broker for devices",
        "# that subscribe later. Set it to false only for a central broker that refuses it,",
        "# and then re-publish (edgekit deploy) after every link outage.",
        "try_private true",
        "# The central broker keeps this site's subscriptions and queue while the link is down.",
        "cleansession false",
        f"keepalive_interval {spec.keepalive_s}",
        f"restart_timeout {spec.restart_s[0]} {spec.restart_s[1]}",
        "notifications true",
        f"notification_topic {spec.notification_topic}",
    ]
    if spec.max_packet_size:
        lines.append(f"bridge_max_packet_size {spec.max_packet_size}")
    if central.tls:
        lines.append("# mqtts: the central broker's certificate is checked against this CA")
        lines.append(f"bridge_cafile {spec.ca}" if spec.ca else "bridge_capath /etc/ssl/certs")
        if spec.cert:
            lines += [f"bridge_certfile {spec.cert}", f"bridge_keyfile {spec.key}"]
    if spec.username:
        lines.append(f"remote_username {spec.username}")
        if spec.password:
            lines.append(f"remote_password {spec.password}")
    lines.append("# host -> devices: retained bundles and desired states, resend commands")
    lines += [f"topic {t} in {spec.qos}" for t in spec.in_topics()]
    lines.append("# devices -> host: births and Wills, heartbeats, summaries, events, drift windows, resend replies")
    lines += [f"topic {t} out {spec.qos}" for t in spec.out_topics()]
    return "\n".join(lines) + "\n"
