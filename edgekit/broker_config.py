"""``edgekit broker config``: a mosquitto configuration that lets only the fleet in, each
client only where its role needs it.

What it writes (one directory, for the broker's machine):

- ``mosquitto.conf``: one TLS listener, ``allow_anonymous false``; the client's identity is
  its certificate's common name (``require_certificate`` + ``use_identity_as_username``) or,
  with ``--auth password``, a username checked against ``passwd``;
  ``use_username_as_clientid`` makes that identity the client id too, so nobody can connect
  under a device's client id and take its session over (and fire its Will);
- ``acl``: each device may write only its own telemetry topics and read only its own
  desired state and commands, its groups' desired states and the bundle topics; the host
  roles — ``@deploy`` (deploy, forget, gc), ``@serve-NAME`` (a collector), ``@reader``
  (fleet status) — get theirs. Role names start with ``@``, which no device id can, so a
  device can never be enrolled under a role's name;
- ``ca.pem``, ``broker.pem``/``broker.key`` (the broker's certificate for ``--host``
  names), ``crl.pem`` (revoked device certificates), ``passwd``.

The host roles' own certificates (or passwords) go to ``.edgekit/pki/hosts/``.

Why a static ACL file and not mosquitto's dynamic-security plugin: with certificate
identities mosquitto skips the plugin's password step, which is where dynamic security binds
a client id to a client, while ``use_username_as_clientid`` binds them on every listener
and auth method; and a file is one reviewable artefact, regenerated from the registry,
that needs no admin client or running state (see docs/architecture.md, Security).
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from device_agent.protocol import check_id

from . import devices as devices_mod
from .errors import UsageError
from .fleet.capabilities import PROBE_PREFIX
from .pki import FleetCA
from .workspace import Workspace

DEVICE_WRITES = ("state", "hb", "reported", "events", "drift", "samples", "resent")
DEVICE_READS = ("desired", "cmd")
SYNC_TOPIC = "edgekit-sync/#"  # the CLI's end-of-retained marker (edgekit.fleet.client.collect)
PROBE_TOPIC = f"{PROBE_PREFIX}/#"  # edgekit broker check's throw-away topics
AUTH_MODES = (devices_mod.AUTH_CERT, devices_mod.AUTH_PASSWORD)
HOST_CA_NAME = "edgekit host CA"  # signs the host roles' certificates, and nothing a device holds


def role_name(role: str, name: str = "") -> str:
    return f"@{role}-{name}" if name else f"@{role}"


def role_rules(prefix: str, role: str) -> list[str]:
    """The ACL lines of a host role."""
    p = prefix
    read_telemetry = [f"topic read {p}/dev/+/{leaf}" for leaf in ("state", "hb", "reported")]
    if role == "deploy":
        return [
            f"topic readwrite {p}/bundle/#",
            f"topic readwrite {p}/dev/+/desired",
            f"topic readwrite {p}/group/+/desired",
            f"topic readwrite {p}/trust",  # the signed trust file (edgekit keys trust --publish)
            *read_telemetry,
            f"topic write {p}/dev/+/cmd",  # fleet samples pull: the signed request ...
            f"topic read {p}/dev/+/samples",  # ... and the device's answer
            # fleet forget clears a departed device's retained documents (empty payloads)
            *(f"topic write {p}/dev/+/{leaf}" for leaf in ("state", "hb", "reported")),
            f"topic readwrite {SYNC_TOPIC}",
            f"topic readwrite {PROBE_TOPIC}",
        ]
    if role == "serve":
        return [
            *(f"topic read {p}/dev/+/{leaf}" for leaf in DEVICE_WRITES),
            f"topic write {p}/dev/+/cmd",  # resend requests
            f"topic readwrite {p}/alerts/#",
            f"topic read {p}/bundle/+/+/manifest",
            # edgekit serve --resign-every re-signs the retained desired states before they expire
            f"topic readwrite {p}/dev/+/desired",
            f"topic readwrite {p}/group/+/desired",
            f"topic readwrite {SYNC_TOPIC}",
            f"topic readwrite {PROBE_TOPIC}",
            # the rollouts it runs (docs/rollouts.md): each phase's desired states, an abort's
            # re-signed bundle, and the rollout's record. Devices still take only what the deploy
            # and bundle keys signed.
            f"topic readwrite {p}/bundle/#",
            f"topic readwrite {p}/rollouts/#",
        ]
    if role == "reader":
        return [
            *read_telemetry,
            f"topic read {p}/alerts/#",
            f"topic readwrite {SYNC_TOPIC}",
            f"topic readwrite {PROBE_TOPIC}",
        ]
    raise UsageError(f"unknown host role {role!r}")


def acl_text(prefix: str, registry: devices_mod.Registry, roles: list[tuple[str, str]]) -> str:
    """The whole ACL file: device patterns by identity, each device's groups, the host roles."""
    p = prefix
    lines = [
        "# written by edgekit broker config: regenerate it, do not edit it",
        "# Every device (its identity is %u): its own telemetry, its own desired state and commands, bundles.",
        *(f"pattern write {p}/dev/%u/{leaf}" for leaf in DEVICE_WRITES),
        *(f"pattern read {p}/dev/%u/{leaf}" for leaf in DEVICE_READS),
        f"pattern read {p}/bundle/#",
        f"pattern read {p}/trust",
        "",
    ]
    for device in sorted(registry.active(), key=lambda d: d.device):
        lines.append(f"user {device.device}")
        lines += [f"topic read {p}/group/{g}/desired" for g in device.groups]
        lines.append("")
    for role, identity in roles:
        lines.append(f"user {identity}")
        lines += role_rules(prefix, role)
        lines.append("")
    return "\n".join(lines)


@dataclass(frozen=True)
class BrokerFiles:
    directory: Path
    config: Path
    acl: Path
    auth: str
    port: int
    host_port: int
    hosts: tuple[str, ...]
    roles: dict[str, dict[str, str]]  # identity -> files on the host
    devices: int
    revoked: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "directory": str(self.directory),
            "config": str(self.config),
            "acl": str(self.acl),
            "auth": self.auth,
            "port": self.port,
            "host_port": self.host_port,
            "hosts": list(self.hosts),
            "roles": self.roles,
            "devices": self.devices,
            "revoked": self.revoked,
        }


def _crl(ca: FleetCA, serials: list[int]) -> bytes:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(now - dt.timedelta(minutes=5))
        .next_update(now + dt.timedelta(days=30))
    )
    for serial in serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build()
        )
    return builder.sign(ca.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def _role_credentials(ws: Workspace, host_ca: FleetCA, identity: str) -> dict[str, str]:
    """The host's certificate for a role, from the host CA, made once and kept in .edgekit/pki/hosts/."""
    folder = devices_mod.pki_dir(ws) / "hosts"
    folder.mkdir(parents=True, exist_ok=True)
    stem = identity.lstrip("@")
    cert, key = folder / f"{stem}.pem", folder / f"{stem}.key"
    if not cert.exists() or x509.load_pem_x509_certificate(cert.read_bytes()).issuer != host_ca.cert.subject:
        host_ca.issue(identity).write(cert, key)
    return {"cert": str(cert), "key": str(key)}


def _hand_to_broker(path: Path) -> None:
    """mosquitto reads its key after dropping to its own user: give the file to that user."""
    if os.geteuid() != 0:
        return
    try:
        import pwd

        entry = pwd.getpwnam("mosquitto")
    except KeyError:
        return
    os.chown(path, entry.pw_uid, entry.pw_gid)


def write(
    ws: Workspace,
    out_dir: Path,
    *,
    hosts: tuple[str, ...] = ("localhost", "127.0.0.1"),
    port: int = 8883,
    host_port: int | None = None,
    bind: str = "",
    auth: str = devices_mod.AUTH_CERT,
    collectors: tuple[str, ...] = ("main",),
    persistence_dir: str = "/var/lib/mosquitto/",
    max_queued_messages: int = 100_000,  # per client: a collector that was down catches up (FIELD-NOTES)
) -> BrokerFiles:
    """Write the broker's directory from the workspace's CA and device registry."""
    if auth not in AUTH_MODES:
        raise UsageError(f"unknown --auth {auth!r}", f"use {' or '.join(AUTH_MODES)}")
    for name in collectors:
        check_id("collector name", name)
    registry = devices_mod.load(ws)
    wrong = [d.device for d in registry.active() if d.auth != auth]
    if wrong:
        raise UsageError(
            f"device {wrong[0]!r} was enrolled with a {'password' if auth == 'certificate' else 'certificate'}, "
            f"and this broker takes {auth}s only",
            "re-enrol it: edgekit devices add --force" + (" --password" if auth == "password" else ""),
        )
    host_port = host_port or port + 1
    if host_port == port:
        raise UsageError(f"the host roles' port {host_port} is the devices' port", "give --host-port another port")
    ca = FleetCA.ensure(devices_mod.pki_dir(ws))
    host_ca = FleetCA.ensure(devices_mod.pki_dir(ws) / "host-ca", HOST_CA_NAME)
    out_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(out_dir, 0o755)  # mosquitto reads it as its own user
    (out_dir / "ca.pem").write_bytes(ca.cert_pem)
    (out_dir / "host-ca.pem").write_bytes(host_ca.cert_pem)
    server = ca.issue("broker", server=True, hosts=hosts)
    server.write(out_dir / "broker.pem", out_dir / "broker.key")
    _hand_to_broker(out_dir / "broker.key")

    roles = [("deploy", role_name("deploy")), ("reader", role_name("reader"))]
    roles += [("serve", role_name("serve", name)) for name in collectors]
    role_files = {identity: _role_credentials(ws, host_ca, identity) for _, identity in roles}
    acl = out_dir / "acl"
    acl.write_text(acl_text(ws.prefix, registry, roles))
    os.chmod(acl, 0o644)

    tls = [
        f"certfile {out_dir / 'broker.pem'}",
        f"keyfile {out_dir / 'broker.key'}",
        "tls_version tlsv1.2",
    ]
    lines = [
        "# written by edgekit broker config (docs: README, 'A secured fleet')",
        "per_listener_settings false",
        "allow_anonymous false",
        f"acl_file {acl}",
    ]
    if auth == devices_mod.AUTH_PASSWORD:
        passwords = {d.device: d.password_hash for d in registry.active() if d.password_hash}
        passwd = out_dir / "passwd"
        passwd.write_text("".join(f"{user}:{digest}\n" for user, digest in sorted(passwords.items())))
        os.chmod(passwd, 0o644)
        lines.append(f"password_file {passwd}")
    lines += [
        "",
        "# Devices: the client id is replaced by the identity, so no one can take a device's session over.",
        f"listener {port}{' ' + bind if bind else ''}",
        f"cafile {out_dir / 'ca.pem'}",
        *tls,
        "use_username_as_clientid true",
    ]
    serials = registry.revoked_serials()
    if auth == devices_mod.AUTH_CERT:
        lines += ["require_certificate true", "use_identity_as_username true"]
        if serials:
            (out_dir / "crl.pem").write_bytes(_crl(ca, serials))
            lines.append(f"crlfile {out_dir / 'crl.pem'}")
    lines += [
        "",
        "# Host roles (@deploy, @reader, @serve-NAME): certificates from the host CA only, client ids",
        "# free, so several host commands may run at once under one role.",
        f"listener {host_port}{' ' + bind if bind else ''}",
        f"cafile {out_dir / 'host-ca.pem'}",
        *tls,
        "require_certificate true",
        "use_identity_as_username true",
        "",
    ]
    lines += [
        "persistence true",
        f"persistence_location {persistence_dir}",
        "autosave_interval 60",
        f"max_queued_messages {max_queued_messages}",
    ]
    config = out_dir / "mosquitto.conf"
    config.write_text("\n".join(lines) + "\n")
    return BrokerFiles(
        out_dir,
        config,
        acl,
        auth,
        port,
        host_port,
        hosts,
        role_files,
        len(registry.active()),
        len([d for d in registry.devices.values() if d.revoked]),
    )
