"""Ed25519 signing keys on the host, and the trust files devices receive.

Private keys stay in the workspace (``.edgekit/keys/NAME.key``, mode 0600, PKCS#8 PEM,
optionally passphrase-encrypted); a device only ever gets a trust file of public keys
with their roles (``bundle`` signs bundles, ``deploy`` signs desired-state documents).
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from device_agent.protocol import check_id
from device_agent.trust import DEFAULT_ROLES, ROLES, Trust, TrustedKey, key_id, public_raw

from .errors import WorkspaceError
from .workspace import Workspace


@dataclass(frozen=True)
class KeyInfo:
    name: str
    keyid: str
    roles: tuple[str, ...]
    public: str  # base64 raw
    revoked: bool = False  # left out of every trust file from now on; never picked to sign
    encrypted: bool = False  # the private key is encrypted with a passphrase

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "keyid": self.keyid,
            "roles": list(self.roles),
            "public": self.public,
            "revoked": self.revoked,
            "encrypted": self.encrypted,
        }


def _paths(ws: Workspace, name: str) -> tuple[Path, Path]:
    check_id("key name", name)
    return ws.keys_dir / f"{name}.key", ws.keys_dir / f"{name}.json"


def generate(
    ws: Workspace, name: str, roles: tuple[str, ...] = DEFAULT_ROLES, passphrase: bytes | None = None
) -> KeyInfo:
    bad = [r for r in roles if r not in ROLES]
    if bad or not roles:
        raise WorkspaceError(f"unknown role(s) {bad}", f"roles are {', '.join(ROLES)}")
    key_path, meta_path = _paths(ws, name)
    if key_path.exists():
        raise WorkspaceError(f"key {name!r} already exists", "pick another name or delete the old key deliberately")
    ws.keys_dir.mkdir(parents=True, exist_ok=True)
    private = Ed25519PrivateKey.generate()
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    )
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    raw = public_raw(private)
    info = KeyInfo(name, key_id(raw), tuple(roles), base64.b64encode(raw).decode("ascii"), encrypted=bool(passphrase))
    meta_path.write_text(json.dumps(info.to_dict(), indent=1))
    return info


def list_keys(ws: Workspace) -> list[KeyInfo]:
    out = []
    for meta in sorted(ws.keys_dir.glob("*.json")):
        doc = json.loads(meta.read_text())
        out.append(
            KeyInfo(
                doc["name"],
                doc["keyid"],
                tuple(doc["roles"]),
                doc["public"],
                bool(doc.get("revoked", False)),
                bool(doc.get("encrypted", False)),
            )
        )
    return out


def revoke(ws: Workspace, name: str) -> KeyInfo:
    """Mark a key revoked: no trust file lists it from now on, and nothing picks it to sign.
    Devices stop trusting it once they receive a newer signed trust file (``keys trust --publish``)."""
    _, meta_path = _paths(ws, name)
    if not meta_path.exists():
        raise WorkspaceError(f"no key named {name!r}", "see 'edgekit keys list'")
    doc = json.loads(meta_path.read_text())
    doc["revoked"] = True
    meta_path.write_text(json.dumps(doc, indent=1))
    return next(k for k in list_keys(ws) if k.name == name)


def rotate(ws: Workspace, name: str, new_name: str, passphrase: bytes | None = None) -> KeyInfo:
    """A new key with the old one's roles, and the old one revoked."""
    old = next((k for k in list_keys(ws) if k.name == name), None)
    if old is None:
        raise WorkspaceError(f"no key named {name!r}", "see 'edgekit keys list'")
    info = generate(ws, new_name, old.roles, passphrase)
    revoke(ws, name)
    return info


def signed_trust(ws: Workspace, roots: tuple[str, ...], thresholds: dict[str, int] | None = None) -> bytes:
    """A trust file of every key not revoked, signed by the root keys ``roots`` (format 2), one
    version above the last one this workspace signed. Devices replace theirs with it only if
    their current root signed it: to rotate the root, sign with the old root and the new one."""
    from device_agent.trust import ROLE_ROOT, seal_trust

    entries = [
        {"keyid": k.keyid, "name": k.name, "public": k.public, "roles": list(k.roles)}
        for k in list_keys(ws)
        if not k.revoked
    ]
    signers = []
    for name in roots:
        info = next((k for k in list_keys(ws) if k.name == name), None)
        if info is None or ROLE_ROOT not in info.roles:
            raise WorkspaceError(f"{name!r} is not a root key", "edgekit keys generate --name root --role root")
        signers.append(load_private(ws, name))
    counter = ws.keys_dir / "trust-version"
    version = (int(counter.read_text()) if counter.exists() else 0) + 1
    data = seal_trust(signers, version, entries, thresholds)
    counter.write_text(str(version))
    return data


def load_private(ws: Workspace, name: str, passphrase: bytes | None = None) -> Ed25519PrivateKey:
    key_path, _ = _paths(ws, name)
    try:
        pem = key_path.read_bytes()
    except FileNotFoundError:
        raise WorkspaceError(f"no key named {name!r}", "create it with 'edgekit keys generate --name NAME'") from None
    try:
        key = serialization.load_pem_private_key(pem, password=passphrase or os.environb.get(b"EDGEKIT_KEY_PASSPHRASE"))
    except (TypeError, ValueError) as exc:
        raise WorkspaceError(
            f"cannot open key {name!r}: {exc}", "set EDGEKIT_KEY_PASSPHRASE if it is encrypted"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise WorkspaceError(f"key {name!r} is not an Ed25519 key")
    return key


def key_roles(ws: Workspace, name: str) -> tuple[str, ...]:
    for info in list_keys(ws):
        if info.name == name:
            return info.roles
    raise WorkspaceError(f"no key named {name!r}", "see 'edgekit keys list'")


def trust_file(ws: Workspace, names: tuple[str, ...] = ()) -> Trust:
    infos = [k for k in list_keys(ws) if (not names or k.name in names) and not k.revoked]
    if not infos:
        raise WorkspaceError("no keys to trust", "create one with 'edgekit keys generate --name release'")
    keys = {
        k.keyid: TrustedKey(
            k.keyid, Ed25519PublicKey.from_public_bytes(base64.b64decode(k.public)), frozenset(k.roles), k.name
        )
        for k in infos
    }
    return Trust(keys)


def pick_key(ws: Workspace, role: str, name: str | None = None) -> Ed25519PrivateKey:
    """The named key, or the workspace's only key with ``role``."""
    if name:
        if any(k.name == name and k.revoked for k in list_keys(ws)):
            raise WorkspaceError(f"key {name!r} is revoked", "sign with its successor (edgekit keys list)")
        if role not in key_roles(ws, name):
            raise WorkspaceError(f"key {name!r} lacks the '{role}' role", "see 'edgekit keys list'")
        return load_private(ws, name)
    candidates = [k.name for k in list_keys(ws) if role in k.roles and not k.revoked]
    if len(candidates) != 1:
        found = ", ".join(candidates) or "none"
        raise WorkspaceError(f"cannot choose a '{role}' key (found: {found})", "name one with --key")
    return load_private(ws, candidates[0])
