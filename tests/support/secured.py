"""A secured fleet for tests: a workspace with enrolled devices, the broker configuration
``edgekit broker config`` writes, and a real mosquitto running exactly that configuration."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
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

    device_port: int = 0  # the devices' listener; self.broker.port is the host roles'

    @property
    def url(self) -> str:
        return self.broker.url  # what host commands connect to

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
            self.device_port,
            True,
            ca=str(folder / "ca.pem"),
            cert=str(folder / "device.pem"),
            key=str(folder / "device.key"),
        )

    def reconfigure(self) -> None:
        """Write the broker's configuration again (after enrolling or revoking) and restart it."""
        self.files = _write(self.root, self.folder, self.device_port, self.broker.port)
        self.broker.stop()
        self.broker.start()


def _write(root: Path, folder: Path, port: int, host_port: int) -> broker_config.BrokerFiles:
    data = folder / "data"
    data.mkdir(exist_ok=True)
    os.chmod(data, 0o777)
    return broker_config.write(
        workspace.load(root),
        folder / "conf",
        port=port,
        host_port=host_port,
        persistence_dir=f"{data}/",
        hosts=("127.0.0.1",),
    )


@contextlib.contextmanager
def secured_fleet(root: Path, enrol: dict[str, tuple[str, ...]]) -> Iterator[SecuredFleet]:
    """Enrol ``{device: groups}`` in the workspace at ``root``, write and start its broker."""
    folder = Path(tempfile.mkdtemp(prefix="ek-secure-"))
    os.chmod(folder, 0o755)
    port, host_port = free_port(), free_port()
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
    files = _write(root, folder, port, host_port)
    broker = Broker(port=host_port, config_file=files.config, scheme="mqtts")
    broker.start()
    try:
        yield SecuredFleet(root, broker, folder, files, provision, port)
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


# ── the TLS + ACL variant of the integration suite ──────────────────────────────────────
# EDGEKIT_TEST_SECURE=1 turns the `broker` fixture into a SecureTestBroker: the
# configuration `edgekit broker config` writes, on a real mosquitto. Host code in the test
# connects as the @deploy role (EDGEKIT_BROKER_CA/CERT/KEY); each agent a test starts is
# enrolled first (its own certificate, groups in the ACL, telemetry key) and the broker reloads.

SECURE_ENV = "EDGEKIT_TEST_SECURE"
ACTIVE: SecureTestBroker | None = None


def secure_variant() -> bool:
    return os.environ.get(SECURE_ENV, "") not in ("", "0")


class SecureTestBroker(Broker):
    def __init__(self) -> None:
        from edgekit import keys

        self.scratch = Path(tempfile.mkdtemp(prefix="ek-secure-ws-"))
        self.ws = workspace.init(self.scratch / "ws")
        keys.generate(self.ws, "scratch")  # enrolment writes a trust file; the tests' agents get theirs
        self.folder = Path(tempfile.mkdtemp(prefix="ek-secure-"))
        os.chmod(self.folder, 0o755)
        self.device_port, port = free_port(), free_port()
        self.files = self._write(port)
        super().__init__(port=port, config_file=self.files.config, scheme="mqtts")  # the host roles' port
        self.enrolled: dict[str, tuple[str, ...]] = {}

    @property
    def log(self) -> Path:
        return self.folder / "data" / "mosquitto.log"  # data/: the one directory mosquitto may write

    def _write(self, port: int) -> broker_config.BrokerFiles:
        files = _write(self.ws.root, self.folder, self.device_port, port)
        with open(files.config, "a") as fh:  # the test's own log, to see reloads
            fh.write(f"log_dest file {self.log}\nlog_type all\nautosave_interval 1\n")
        return files

    @property
    def device_url(self) -> str:
        return f"mqtts://127.0.0.1:{self.device_port}"

    def host_env(self) -> dict[str, str]:
        creds = self.files.roles["@deploy"]
        return {
            "EDGEKIT_BROKER_CA": str(self.files.directory / "ca.pem"),
            "EDGEKIT_BROKER_CERT": creds["cert"],
            "EDGEKIT_BROKER_KEY": creds["key"],
        }

    def agent_flags(self, device: str, groups: tuple[str, ...]) -> list[str]:
        """Enrol ``device`` (again, if its groups changed), reload the broker, and return the
        flags that give the agent its identity."""
        out = self.scratch / "provision"
        if self.enrolled.get(device) != groups:
            devices.enrol(
                self.ws, device, groups=groups, broker=self.device_url, out_dir=out, force=device in self.enrolled
            )
            self.enrolled[device] = groups
            self._write(self.port)
            self.reload()
        folder = out / device
        return [
            "--broker",  # the last --broker wins: the devices' listener
            self.device_url,
            "--broker-ca",
            str(folder / "ca.pem"),
            "--broker-cert",
            str(folder / "device.pem"),
            "--broker-key",
            str(folder / "device.key"),
            "--telemetry-key",
            str(folder / "telemetry.key"),
        ]

    def reload(self) -> None:
        """SIGHUP: mosquitto reads its ACL again (no restart, no session lost)."""
        log = self.log
        before = log.read_text(errors="replace").count("Reloading config") if log.exists() else 0
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if log.exists() and log.read_text(errors="replace").count("Reloading config") > before:
                time.sleep(0.1)
                return
            time.sleep(0.05)
        raise RuntimeError("mosquitto did not reload its configuration")

    def close(self) -> None:
        super().close()
        shutil.rmtree(self.folder, ignore_errors=True)
        shutil.rmtree(self.scratch, ignore_errors=True)
