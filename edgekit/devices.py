"""Enrolment: the devices this fleet knows, and everything one device needs to join it.

``edgekit devices add pump-7`` gives a device two identities, both made on the host and
handed over once in a provisioning directory (and a tarball of it):

- on the broker: a client certificate from the fleet CA (:mod:`edgekit.pki`) whose common
  name is the device id — or, with ``--password``, a username and a random password whose
  hash goes into the broker's password file;
- in its telemetry: an Ed25519 key the device signs its state, reports and events with, so
  the host believes what it reads only when the enrolled device wrote it
  (:mod:`device_agent.telemetry_sig`).

The registry (``.edgekit/pki/devices.json``) keeps the public halves: groups, certificate
serial and expiry, telemetry key, revocation. ``edgekit broker config`` builds the broker's
ACL, password file and CRL from it; ``fleet status``, ``deploy --wait`` and ``edgekit serve``
look telemetry keys up in it.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import io
import json
import os
import secrets
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from device_agent.protocol import check_id
from device_agent.trust import key_id, public_raw

from . import keys
from .errors import UsageError
from .pki import FleetCA, write_secret
from .workspace import Workspace

REGISTRY_FORMAT = 1
AUTH_CERT, AUTH_PASSWORD = "certificate", "password"
DEFAULT_INSTALL_DIR = "/etc/edgekit"
DEFAULT_STATE_DIR = "/var/lib/edgekit"
PBKDF2_ITERATIONS = 101  # mosquitto 2's own default for its $7$ (PBKDF2-SHA512) password hashes


@dataclass
class Device:
    """One enrolled device, as the registry keeps it (public material only)."""

    device: str
    groups: list[str]
    auth: str
    telemetry_keyid: str
    telemetry_public: str  # base64 of the raw Ed25519 public key
    enrolled: str
    serial: str | None = None  # hex; certificate auth only
    not_after: str | None = None
    password_hash: str | None = None  # mosquitto $7$ hash; password auth only
    revoked: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "groups": list(self.groups),
            "auth": self.auth,
            "serial": self.serial,
            "not_after": self.not_after,
            "telemetry_keyid": self.telemetry_keyid,
            "telemetry_public": self.telemetry_public,
            "enrolled": self.enrolled,
            "revoked": self.revoked,
        }

    def telemetry_key(self) -> Ed25519PublicKey:
        return Ed25519PublicKey.from_public_bytes(base64.b64decode(self.telemetry_public))


@dataclass
class Registry:
    devices: dict[str, Device] = field(default_factory=dict)

    def active(self) -> list[Device]:
        return [d for d in self.devices.values() if d.revoked is None]

    def revoked_serials(self) -> list[int]:
        return [int(d.serial, 16) for d in self.devices.values() if d.revoked and d.serial]


def pki_dir(ws: Workspace) -> Path:
    return ws.state / "pki"


def _registry_path(ws: Workspace) -> Path:
    return pki_dir(ws) / "devices.json"


def load(ws: Workspace) -> Registry:
    """The workspace's enrolled devices (an empty registry when none were ever added)."""
    return read_registry(_registry_path(ws))


def read_registry(path: Path) -> Registry:
    if not path.exists():
        return Registry()
    try:
        doc = json.loads(path.read_text())
        if doc.get("format") != REGISTRY_FORMAT:
            raise ValueError(f"format {doc.get('format')!r}")
        devices = {name: Device(**entry) for name, entry in doc["devices"].items()}
    except (ValueError, KeyError, TypeError) as exc:
        hint = "restore it from a backup; it holds the fleet's identities"
        raise UsageError(f"{path} cannot be read: {exc}", hint) from None
    return Registry(devices)


def save(ws: Workspace, registry: Registry) -> None:
    path = _registry_path(ws)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "format": REGISTRY_FORMAT,
        "devices": {name: vars(d) for name, d in sorted(registry.devices.items())},
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=True))
    os.replace(tmp, path)


def mosquitto_hash(password: str, salt: bytes | None = None) -> str:
    """A mosquitto 2 password-file hash ($7$: PBKDF2-SHA512), as ``mosquitto_passwd`` writes it."""
    salt = salt if salt is not None else secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, PBKDF2_ITERATIONS)
    return f"$7${PBKDF2_ITERATIONS}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


@dataclass(frozen=True)
class Provisioned:
    device: Device
    directory: Path
    archive: Path
    broker: str

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.device.to_dict(),
            "directory": str(self.directory),
            "archive": str(self.archive),
            "broker": self.broker,
        }


def agent_toml(
    device: Device, broker: str, prefix: str, install_dir: str, state_dir: str, *, telemetry_key: bool
) -> str:
    """The agent's config file: every path where the provisioning directory will be installed."""

    def q(text: str) -> str:
        return json.dumps(text)  # a TOML basic string is a JSON string for these characters

    def inside(name: str) -> str:
        return q(f"{install_dir.rstrip('/')}/{name}")

    lines = [
        f"device_id = {q(device.device)}",
        f"state_dir = {q(state_dir)}",
        f"trust = {inside('trust.json')}",
        f"groups = [{', '.join(q(g) for g in device.groups)}]",
    ]
    if telemetry_key:
        lines.append(f"telemetry_key = {inside('telemetry.key')}")
    lines += ["", "[mqtt]", f"broker = {q(broker)}", f"prefix = {q(prefix)}"]
    if broker.startswith(("mqtts://", "ssl://", "tls://")):
        lines.append(f"ca = {inside('ca.pem')}")
    if device.auth == AUTH_CERT:
        lines += [f"cert = {inside('device.pem')}", f"key = {inside('device.key')}"]
    else:
        lines += [f"username = {q(device.device)}", f"password_file = {inside('password')}"]
    return "\n".join(lines) + "\n"


def enrol(
    ws: Workspace,
    device_id: str,
    *,
    groups: tuple[str, ...] = (),
    password: bool = False,
    broker: str | None = None,
    out_dir: Path | None = None,
    install_dir: str = DEFAULT_INSTALL_DIR,
    state_dir: str = DEFAULT_STATE_DIR,
    force: bool = False,
    telemetry_setting: bool = True,
) -> Provisioned:
    """Enrol a device and write its provisioning directory and tarball."""
    check_id("device id", device_id)
    for group in groups:
        check_id("group", group)
    registry = load(ws)
    old = registry.devices.get(device_id)
    if old is not None and old.revoked is None and not force:
        raise UsageError(
            f"device {device_id!r} is already enrolled",
            "--force issues it new credentials (the old ones stay valid until revoked)",
        )
    if old is not None and not groups:
        groups = tuple(old.groups)  # re-issued credentials keep the device's groups unless new ones are named
    url = broker or str(ws.setting("fleet", "device_broker", "") or ws.broker)  # devices may use another port
    if not password and not url.startswith(("mqtts://", "ssl://", "tls://")):
        raise UsageError(
            f"a device certificate needs a TLS broker, and {url!r} is not one",
            "pass --broker mqtts://HOST:8883 (or set [fleet] broker in edgekit.toml)",
        )
    ca = FleetCA.ensure(pki_dir(ws))
    target = (out_dir or ws.state / "provision") / device_id
    target.mkdir(parents=True, exist_ok=True)
    os.chmod(target, 0o700)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)

    telemetry = Ed25519PrivateKey.generate()
    raw = public_raw(telemetry)
    write_secret(
        target / "telemetry.key",
        telemetry.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )
    device = Device(
        device_id,
        list(groups),
        AUTH_PASSWORD if password else AUTH_CERT,
        key_id(raw),
        base64.b64encode(raw).decode("ascii"),
        now.isoformat(),
    )
    if password:
        secret = secrets.token_urlsafe(24)
        write_secret(target / "password", secret.encode() + b"\n")
        device.password_hash = mosquitto_hash(secret)
    else:
        issued = ca.issue(device_id)
        issued.write(target / "device.pem", target / "device.key")
        device.serial = f"{issued.serial:x}"
        device.not_after = issued.not_after.replace(microsecond=0).isoformat()
    (target / "ca.pem").write_bytes(ca.cert_pem)
    (target / "trust.json").write_bytes(keys.trust_file(ws).to_json())
    (target / "agent.toml").write_text(
        agent_toml(device, url, ws.prefix, install_dir, state_dir, telemetry_key=telemetry_setting)
    )
    if old is not None and old.serial and old.revoked is None:
        old.revoked = now.isoformat()  # re-enrolled with --force: the old certificate goes to the CRL
        registry.devices[f"{device_id}#{old.serial}"] = old
    registry.devices[device_id] = device
    save(ws, registry)
    archive = target.with_name(f"{device_id}.tar.gz")
    _tar(target, archive)
    return Provisioned(device, target, archive, url)


def _tar(folder: Path, archive: Path) -> None:
    """The directory as one tarball (secrets stay 0600 inside), written 0600 itself."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    write_secret(archive, buf.getvalue())


def revoke(ws: Workspace, device_id: str) -> Device:
    registry = load(ws)
    device = registry.devices.get(device_id)
    if device is None:
        raise UsageError(f"no enrolled device {device_id!r}", "see 'edgekit devices list'")
    if device.revoked is None:
        device.revoked = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
        save(ws, registry)
    return device


def telemetry_keys(ws: Workspace | None) -> dict[str, Ed25519PublicKey]:
    """Device id → telemetry public key of every enrolled, unrevoked device."""
    if ws is None:
        return {}
    return {d.device: d.telemetry_key() for d in load(ws).active()}
