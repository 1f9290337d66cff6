"""Public keys a device trusts, by role, and Ed25519 signatures over exact bytes.

Signatures are always over ``domain + bytes`` where the bytes are exactly what was
received (never a re-serialisation), and the domain string separates the purposes, so a
signature over a desired-state document can never pass as one over a bundle manifest.
A device without a readable trust file trusts nothing: :class:`TrustError`, fail closed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .errors import BadSignature, MissingSignature, ProtocolError, TrustError, UnknownKey
from .protocol import dumps, loads_object, loads_strict

MANIFEST_DOMAIN = b"edgekit-manifest-v1\n"
TRANSFER_DOMAIN = b"edgekit-transfer-v1\n"
DESIRED_DOMAIN = b"edgekit-desired-v1\n"
SAMPLES_DOMAIN = b"edgekit-samples-v1\n"  # a request for a device's captured rows

ROLE_BUNDLE = "bundle"  # may sign bundles and their transfer documents
ROLE_DEPLOY = "deploy"  # may sign desired-state documents and samples requests
ROLES = (ROLE_BUNDLE, ROLE_DEPLOY)

MAX_TRUST_BYTES = 64 * 1024
MAX_SIGNATURES = 8


def key_id(public_raw: bytes) -> str:
    """A short, stable name for a public key: the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(public_raw).hexdigest()[:16]


def public_raw(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def sign(private: Ed25519PrivateKey, domain: bytes, message: bytes) -> dict[str, str]:
    sig = private.sign(domain + message)
    return {"keyid": key_id(public_raw(private)), "sig": base64.b64encode(sig).decode("ascii")}


@dataclass(frozen=True)
class TrustedKey:
    keyid: str
    public: Ed25519PublicKey
    roles: frozenset[str]
    name: str = ""


@dataclass(frozen=True)
class Trust:
    keys: dict[str, TrustedKey] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Trust:
        try:
            with open(path, "rb") as fh:
                data = fh.read(MAX_TRUST_BYTES + 1)
        except OSError as exc:
            raise TrustError(f"cannot read trust file {os.fspath(path)!r}: {exc.strerror}") from None
        return cls.from_bytes(data)

    @classmethod
    def from_bytes(cls, data: bytes) -> Trust:
        try:
            doc = loads_object(data, MAX_TRUST_BYTES, "trust file")
            entries = doc.get("keys")
            fmt = doc.get("format")
            if type(fmt) is not int or fmt != 1 or not isinstance(entries, list) or not entries:
                raise ProtocolError("trust file needs format 1 and a non-empty 'keys' list")
            keys: dict[str, TrustedKey] = {}
            for entry in entries:
                if not isinstance(entry, dict):
                    raise ProtocolError("trust file: each key must be an object")
                raw = base64.b64decode(str(entry.get("public", "")), validate=True)
                if len(raw) != 32:
                    raise ProtocolError("trust file: public keys are 32 raw Ed25519 bytes, base64")
                roles = entry.get("roles")
                if not isinstance(roles, list) or not roles or any(r not in ROLES for r in roles):
                    raise ProtocolError(f"trust file: roles must be a non-empty subset of {list(ROLES)}")
                kid = key_id(raw)
                if entry.get("keyid", kid) != kid:
                    raise ProtocolError(f"trust file: keyid {entry.get('keyid')!r} does not match its key")
                keys[kid] = TrustedKey(
                    kid, Ed25519PublicKey.from_public_bytes(raw), frozenset(roles), str(entry.get("name", ""))
                )
        except (ProtocolError, binascii.Error, ValueError) as exc:
            raise TrustError(f"trust file is invalid: {exc}") from None
        return cls(keys)

    def to_json(self) -> bytes:
        return dumps(
            {
                "format": 1,
                "keys": [
                    {
                        "keyid": k.keyid,
                        "name": k.name,
                        "public": base64.b64encode(public_raw(k.public)).decode("ascii"),
                        "roles": sorted(k.roles),
                    }
                    for k in self.keys.values()
                ],
            }
        )

    def verify(self, role: str, domain: bytes, message: bytes, signatures: Any) -> str:
        """Return the id of a trusted key with ``role`` whose signature over the bytes is valid."""
        if isinstance(signatures, (bytes, str)):
            try:
                signatures = loads_strict(signatures, 16 * 1024, "signature list")
            except ProtocolError as exc:
                raise MissingSignature(str(exc)) from None
        if not isinstance(signatures, list) or not signatures:
            raise MissingSignature("no signature present")
        seen_unknown: list[str] = []
        for entry in signatures[:MAX_SIGNATURES]:
            if not isinstance(entry, dict):
                continue
            kid, sig_b64 = entry.get("keyid"), entry.get("sig")
            if not isinstance(kid, str) or not isinstance(sig_b64, str):
                continue
            key = self.keys.get(kid)
            if key is None or role not in key.roles:
                seen_unknown.append(kid)
                continue
            try:
                key.public.verify(base64.b64decode(sig_b64, validate=True), domain + message)
            except (InvalidSignature, binascii.Error, ValueError):
                raise BadSignature(f"signature by key {kid} does not match the signed bytes") from None
            return kid
        if seen_unknown:
            raise UnknownKey(f"signed only by keys not trusted for '{role}': {', '.join(seen_unknown[:3])}")
        raise MissingSignature("no well-formed signature present")


def seal(private: Ed25519PrivateKey, domain: bytes, body: dict[str, Any]) -> bytes:
    """A signed envelope: the body as an exact JSON string plus signatures over those bytes."""
    body_bytes = dumps(body)
    return dumps({"body": body_bytes.decode("utf-8"), "sigs": [sign(private, domain, body_bytes)]})


def _envelope(payload: bytes, what: str, max_bytes: int) -> tuple[bytes, Any]:
    outer = loads_object(payload, max_bytes, what)
    body_text = outer.get("body")
    if not isinstance(body_text, str):
        raise ProtocolError(f"{what}: missing 'body'")
    return body_text.encode("utf-8"), outer.get("sigs")


def open_envelope(
    trust: Trust, role: str, domain: bytes, payload: bytes, what: str, max_bytes: int = 256 * 1024
) -> tuple[dict[str, Any], str]:
    """Verify a signed envelope and return (body, signing key id)."""
    body_bytes, sigs = _envelope(payload, what, max_bytes)
    kid = trust.verify(role, domain, body_bytes, sigs)
    return loads_object(body_bytes, max_bytes, what), kid


def read_envelope_unverified(payload: bytes, what: str, max_bytes: int = 256 * 1024) -> dict[str, Any]:
    """A signed envelope's body WITHOUT checking its signature: for tools that only decide
    what to tidy on their own broker (``edgekit bundles gc``), never for acting on it."""
    body_bytes, _ = _envelope(payload, what, max_bytes)
    return loads_object(body_bytes, max_bytes, what)
