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

from .errors import AgentError, BadSignature, MissingSignature, ProtocolError, TrustError, TrustRejected, UnknownKey
from .protocol import dumps, loads_object, loads_strict

MANIFEST_DOMAIN = b"edgekit-manifest-v1\n"
TRANSFER_DOMAIN = b"edgekit-transfer-v1\n"
DESIRED_DOMAIN = b"edgekit-desired-v1\n"
TRUST_DOMAIN = b"edgekit-trust-v1\n"
SAMPLES_DOMAIN = b"edgekit-samples-v1\n"  # a request for a device's captured rows

ROLE_BUNDLE = "bundle"  # may sign bundles and their transfer documents
ROLE_DEPLOY = "deploy"  # may sign desired-state documents and samples requests
ROLE_ROOT = "root"  # may sign recovery desired states (they reset a device's sequence); kept offline
ROLES = (ROLE_BUNDLE, ROLE_DEPLOY, ROLE_ROOT)
DEFAULT_ROLES = (ROLE_BUNDLE, ROLE_DEPLOY)  # what a new key gets unless told: never root

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
    """The keys a device trusts, by role. Format 1 is a plain list (provisioned once, never
    changed over the air); format 2 is signed by the root keys it lists, has a ``version`` and
    per-role ``thresholds`` (distinct keys whose signatures a document needs), and can be
    replaced by a newer version that the *current* root signs (:meth:`accept_update`)."""

    keys: dict[str, TrustedKey] = field(default_factory=dict)
    version: int = 0
    thresholds: dict[str, int] = field(default_factory=dict)  # role -> signatures needed (default 1)
    signed: bool = False  # format 2: signed by its root keys

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
            if doc.get("format") == 2:
                return cls._signed(doc)
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

    @classmethod
    def _signed(cls, outer: dict[str, Any]) -> Trust:
        """Format 2: ``{"format": 2, "body": "<exact JSON>", "sigs": [...]}``, the body listing
        the keys, the version and the thresholds; it must carry enough signatures of the root
        keys it lists itself."""
        body_text = outer.get("body")
        if not isinstance(body_text, str):
            raise ProtocolError("signed trust file: missing 'body'")
        body_bytes = body_text.encode("utf-8")
        body = loads_object(body_bytes, MAX_TRUST_BYTES, "trust file body")
        version, thresholds = body.get("version"), body.get("thresholds", {})
        if type(version) is not int or version < 1:
            raise ProtocolError("signed trust file: 'version' must be a positive integer")
        if not isinstance(thresholds, dict) or any(
            r not in ROLES or type(n) is not int or n < 1 for r, n in thresholds.items()
        ):
            raise ProtocolError("signed trust file: 'thresholds' maps roles to positive integers")
        plain = cls.from_bytes(dumps({"format": 1, "keys": body.get("keys")}))
        trust = cls(plain.keys, version, dict(thresholds), True)
        if not any(ROLE_ROOT in k.roles for k in trust.keys.values()):
            raise ProtocolError("signed trust file lists no root key")
        try:
            trust.verify(ROLE_ROOT, TRUST_DOMAIN, body_bytes, outer.get("sigs"))
        except AgentError as exc:
            raise ProtocolError(f"signed trust file is not signed by its own root keys: {exc.detail}") from None
        return trust

    def accept_update(self, data: bytes) -> Trust:
        """A new trust file, accepted only when the current root keys sign it (enough of them)
        and its version is higher: how keys are added, revoked and rotated — the root too, since
        a new root is accepted on the old root's signature (and its own)."""
        if not self.signed:
            raise TrustRejected("this device's trust file is not signed by a root key: it cannot be replaced remotely")
        try:
            new = Trust.from_bytes(data)
        except TrustRejected:
            raise
        except TrustError as exc:
            raise TrustRejected(exc.detail) from None
        if not new.signed:
            raise TrustRejected("a replacement trust file must be signed (format 2)")
        if new.version <= self.version:
            raise TrustRejected(f"trust file version {new.version} is not newer than version {self.version}")
        outer = loads_object(data, MAX_TRUST_BYTES, "trust file")
        try:
            self.verify(ROLE_ROOT, TRUST_DOMAIN, str(outer["body"]).encode("utf-8"), outer.get("sigs"))
        except AgentError as exc:
            raise TrustRejected(
                f"trust file version {new.version} is not signed by the current root: {exc.detail}"
            ) from None
        return new

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
        """Return the id of a trusted key with ``role`` whose signature over the bytes is valid;
        with a threshold above one for the role, that many distinct keys must have signed."""
        if isinstance(signatures, (bytes, str)):
            try:
                signatures = loads_strict(signatures, 16 * 1024, "signature list")
            except ProtocolError as exc:
                raise MissingSignature(str(exc)) from None
        if not isinstance(signatures, list) or not signatures:
            raise MissingSignature("no signature present")
        seen_unknown: list[str] = []
        needed = self.thresholds.get(role, 1)
        valid: list[str] = []
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
            if kid not in valid:
                valid.append(kid)
            if len(valid) >= needed:
                return valid[0]
        if valid:
            raise MissingSignature(f"'{role}' needs {needed} signatures of distinct keys; {len(valid)} present")
        if seen_unknown:
            raise UnknownKey(f"signed only by keys not trusted for '{role}': {', '.join(seen_unknown[:3])}")
        raise MissingSignature("no well-formed signature present")


def seal_trust(
    roots: list[Ed25519PrivateKey], version: int, keys: list[dict[str, Any]], thresholds: dict[str, int] | None = None
) -> bytes:
    """A signed trust file (format 2): ``keys`` as in format 1, signed by every key in ``roots``."""
    body = dumps({"format": 2, "version": version, "keys": keys, "thresholds": thresholds or {}})
    return dumps({"format": 2, "body": body.decode("utf-8"), "sigs": [sign(k, TRUST_DOMAIN, body) for k in roots]})


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
