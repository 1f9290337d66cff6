"""Telemetry the host can believe: each document a device publishes carries its signature.

A device enrolled with ``edgekit devices add`` holds an Ed25519 key of its own
(``telemetry_key`` in its config); the host's device registry holds the public half. Every
JSON document the device publishes on its own topics — birth and Will (``state``),
``reported``, ``events``, heartbeats, drift windows, resend replies — gains one field::

    "sig": {"keyid": "<16 hex>", "sig": "<base64 Ed25519>"}

signed over ``DOMAIN + topic + "\\n" + body``, where body is the document without ``sig`` in
the canonical form of :func:`device_agent.protocol.dumps` (sorted keys, compact), which is
how every document is written anyway. The topic is inside the signature, so a signed
document cannot be moved to another device's topic or to another leaf (a ``state`` replayed
as ``reported``). Readers that do not check signatures see one more field and ignore it.

Bytes in, a verdict out; no I/O (the agent's MQTT link signs, the host's readers verify).
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .errors import ProtocolError
from .protocol import dumps, loads_object
from .trust import key_id, public_raw

DOMAIN = b"edgekit-telemetry-v1\n"
FIELD = "sig"

VERIFIED = "verified"
UNSIGNED = "unsigned"
BAD_SIGNATURE = "bad signature"
WRONG_KEY = "signed by another key"
UNREADABLE = "unreadable"


def _message(topic: str, body: bytes) -> bytes:
    return DOMAIN + topic.encode("utf-8") + b"\n" + body


class Signer:
    """Signs a device's JSON documents with its telemetry key (anything else passes as it is)."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self.key = key
        self.keyid = key_id(public_raw(key))

    def __call__(self, topic: str, payload: bytes) -> bytes:
        if not payload.startswith(b"{"):
            return payload
        obj: dict[str, Any] = loads_object(payload, max_bytes=len(payload), what="telemetry")
        obj.pop(FIELD, None)
        body = dumps(obj)
        sig = base64.b64encode(self.key.sign(_message(topic, body))).decode("ascii")
        obj[FIELD] = {"keyid": self.keyid, "sig": sig}
        return dumps(obj)


def load_signer(path: str) -> Signer:
    """The telemetry key at ``path`` (PKCS#8 PEM, as ``edgekit devices add`` writes it)."""
    from cryptography.hazmat.primitives import serialization

    from .errors import ConfigError

    try:
        with open(path, "rb") as fh:
            key = serialization.load_pem_private_key(fh.read(), password=None)
    except OSError as exc:
        raise ConfigError(f"cannot read telemetry_key {path!r}: {exc.strerror}") from None
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"telemetry_key {path!r} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"telemetry_key {path!r} is not an Ed25519 key")
    return Signer(key)


def verify(public: Ed25519PublicKey, topic: str, payload: bytes, max_bytes: int = 1 << 20) -> str:
    """:data:`VERIFIED`, or why not (:data:`UNSIGNED`, :data:`BAD_SIGNATURE`, …)."""
    try:
        obj = loads_object(payload, max_bytes, "telemetry")
    except ProtocolError:
        return UNREADABLE
    sig = obj.pop(FIELD, None)
    if sig is None:
        return UNSIGNED
    if not isinstance(sig, dict) or not isinstance(sig.get("sig"), str):
        return BAD_SIGNATURE
    if sig.get("keyid") != key_id(public_raw(public)):
        return WRONG_KEY
    try:
        public.verify(base64.b64decode(sig["sig"], validate=True), _message(topic, dumps(obj)))
    except (InvalidSignature, binascii.Error, ValueError):
        return BAD_SIGNATURE
    return VERIFIED
