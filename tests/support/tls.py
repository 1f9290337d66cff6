"""A secured test broker: mosquitto with a TLS listener, certificates from a fleet CA made
here, and optionally a password file and an ACL file — all in one temporary directory."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from edgekit.pki import FleetCA

from .broker import Broker


@dataclass
class Identity:
    name: str
    cert: Path
    key: Path


@dataclass
class TlsKit:
    """A fleet CA in ``folder`` and the certificates issued from it."""

    folder: Path
    ca: FleetCA = field(default_factory=FleetCA.create)

    def __post_init__(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        os.chmod(self.folder, 0o755)  # mosquitto drops privileges when started as root
        self.ca_path = self.folder / "ca.pem"
        self.ca_path.write_bytes(self.ca.cert_pem)
        server = self.ca.issue("broker", server=True, hosts=("127.0.0.1", "localhost"))
        self.server = Identity("broker", self.folder / "broker.pem", self.folder / "broker.key")
        server.write(self.server.cert, self.server.key)
        readable_by_broker(self.server.key)

    def client(self, name: str, ca: FleetCA | None = None) -> Identity:
        """A client certificate for ``name`` (from another CA when ``ca`` is given)."""
        issued = (ca or self.ca).issue(name)
        ident = Identity(name, self.folder / f"{name}.pem", self.folder / f"{name}.key")
        issued.write(ident.cert, ident.key)
        return ident

    def password_file(self, users: dict[str, str]) -> Path:
        """A mosquitto password file made by mosquitto_passwd itself."""
        path = self.folder / "passwd"
        exe = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
        path.unlink(missing_ok=True)
        for i, (user, password) in enumerate(users.items()):
            args = [exe, *(["-c"] if i == 0 else []), "-b", str(path), user, password]
            subprocess.run(args, check=True, capture_output=True)
        os.chmod(path, 0o644)
        return path


def readable_by_broker(path: Path) -> None:
    """mosquitto started as root reads its files as the mosquitto user: hand it its key."""
    if os.geteuid() == 0:
        try:
            entry = pwd.getpwnam("mosquitto")
        except KeyError:
            os.chmod(path, 0o644)
        else:
            os.chown(path, entry.pw_uid, entry.pw_gid)


def make_kit() -> TlsKit:
    """A kit in its own world-traversable temporary directory (pytest's are 0700: mosquitto,
    running as its own user, could not read the CA there)."""
    return TlsKit(Path(tempfile.mkdtemp(prefix="ek-pki-")))


def tls_listener(kit: TlsKit, *, certificates: bool = True, password_file: Path | None = None) -> list[str]:
    """Listener lines: TLS, no anonymous access; identity from the client certificate, or a password."""
    lines = [
        "per_listener_settings false",
        "listener {port} 127.0.0.1",
        f"cafile {kit.ca_path}",
        f"certfile {kit.server.cert}",
        f"keyfile {kit.server.key}",
        "allow_anonymous false",
    ]
    if certificates:
        lines += ["require_certificate true", "use_identity_as_username true"]
    if password_file is not None:
        lines.append(f"password_file {password_file}")
    return lines


def tls_broker(kit: TlsKit, *, certificates: bool = True, password_file: Path | None = None) -> Broker:
    broker = Broker(
        persistence=True,
        listener=tls_listener(kit, certificates=certificates, password_file=password_file),
        scheme="mqtts",
    )
    broker.start()
    return broker
