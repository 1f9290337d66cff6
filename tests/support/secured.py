"""A secured fleet for tests: a workspace with enrolled devices, the broker configuration
``edgekit broker config`` writes, and a real mosquitto running exactly that configuration."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from device_agent.broker import BrokerEndpoint
from edgekit import broker_config, devices, workspace

from .broker import Broker, free_port


@dataclass
class SecuredFleet:
    root: Path
    broker: Broker
    folder: Path  # the broker's directory (world-readable: mosquitto runs as its own user)
    files: broker_config.BrokerFiles
    provision: dict[str, Path] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.broker.url

    @property
    def ca(self) -> Path:
        return self.files.directory / "ca.pem"

    def role(self, identity: str) -> BrokerEndpoint:
        creds = self.files.roles[identity]
        return BrokerEndpoint(
            "127.0.0.1", self.broker.port, True, ca=str(self.ca), cert=creds["cert"], key=creds["key"]
        )

    def role_flags(self, identity: str) -> list[str]:
        creds = self.files.roles[identity]
        return ["--broker-ca", str(self.ca), "--broker-cert", creds["cert"], "--broker-key", creds["key"]]

    def device(self, device: str) -> BrokerEndpoint:
        folder = self.provision[device]
        return BrokerEndpoint(
            "127.0.0.1",
            self.broker.port,
            True,
            ca=str(folder / "ca.pem"),
            cert=str(folder / "device.pem"),
            key=str(folder / "device.key"),
        )

    def reconfigure(self) -> None:
        """Write the broker's configuration again (after enrolling or revoking) and restart it."""
        self.files = _write(self.root, self.folder, self.broker.port)
        self.broker.stop()
        self.broker.start()


def _write(root: Path, folder: Path, port: int) -> broker_config.BrokerFiles:
    data = folder / "data"
    data.mkdir(exist_ok=True)
    os.chmod(data, 0o777)
    return broker_config.write(
        workspace.load(root), folder / "conf", port=port, persistence_dir=f"{data}/", hosts=("127.0.0.1",)
    )


@contextlib.contextmanager
def secured_fleet(root: Path, enrol: dict[str, tuple[str, ...]]) -> Iterator[SecuredFleet]:
    """Enrol ``{device: groups}`` in the workspace at ``root``, write and start its broker."""
    folder = Path(tempfile.mkdtemp(prefix="ek-secure-"))
    os.chmod(folder, 0o755)
    port = free_port()
    ws = workspace.load(root)
    provision = {}
    for device, groups in enrol.items():
        out = root / "provision"
        done = devices.enrol(
            ws,
            device,
            groups=groups,
            broker=f"mqtts://127.0.0.1:{port}",
            out_dir=out,
            install_dir=str(out / device),
            state_dir=str(root / "state" / device),
        )
        provision[device] = done.directory
    files = _write(root, folder, port)
    broker = Broker(port=port, config_file=files.config, scheme="mqtts")
    broker.start()
    try:
        yield SecuredFleet(root, broker, folder, files, provision)
    finally:
        broker.close()
        shutil.rmtree(folder, ignore_errors=True)


class Client:
    """A raw MQTT 5 client with an identity (or none): what an attacker on the network has."""

    def __init__(self, endpoint: BrokerEndpoint, client_id: str = "") -> None:
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5)
        endpoint.apply(self.client)
        self.endpoint = endpoint
        self.connected = threading.Event()
        self.closed = threading.Event()
        self.refused: str | None = None
        self.assigned_id: str | None = None
        self.messages: list[tuple[str, bytes]] = []
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *_a: self.closed.set()
        self.client.on_message = lambda _c, _u, m: self.messages.append((m.topic, bytes(m.payload)))

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            self.refused = str(reason)
        else:
            self.assigned_id = getattr(props, "AssignedClientIdentifier", None)
            self.connected.set()

    def connect(self, timeout: float = 5.0) -> bool:
        """True once the broker accepted us; False when it refused or closed the connection."""
        try:
            self.client.connect(self.endpoint.host, self.endpoint.port, keepalive=30)
        except OSError as exc:
            self.refused = str(exc)
            return False
        self.client.loop_start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.connected.is_set():
                return True
            if self.refused or self.closed.is_set():
                return False
            time.sleep(0.02)
        return False

    def publish(self, topic: str, payload: bytes, retain: bool = True) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        with contextlib.suppress(Exception):
            info.wait_for_publish(5)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()
        with contextlib.suppress(Exception):
            self.client.loop_stop()
