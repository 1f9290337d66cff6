"""A device's signature on its telemetry: bound to the key, the topic and every byte."""

from __future__ import annotations

import json

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device_agent import telemetry_sig as ts
from device_agent.protocol import Topics
from tests.support import fleetdocs

T = Topics()


def test_a_signed_document_verifies_and_still_reads_as_before() -> None:
    key = Ed25519PrivateKey.generate()
    doc = fleetdocs.event("d1", "b", 3, ts=1764672000.123456789)
    signed = ts.Signer(key)(T.events("d1"), doc.encode())
    assert ts.verify(key.public_key(), T.events("d1"), signed) == ts.VERIFIED
    assert type(doc).decode(signed) == doc  # readers that do not check see one more field


def test_forgeries_are_named() -> None:
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    payload = fleetdocs.event("d1", "b", 3).encode()
    signed = ts.Signer(key)(T.events("d1"), payload)
    pub = key.public_key()
    assert ts.verify(pub, T.events("d1"), payload) == ts.UNSIGNED
    assert ts.verify(pub, T.events("d1"), ts.Signer(other)(T.events("d1"), payload)) == ts.WRONG_KEY
    assert ts.verify(pub, T.events("d2"), signed) == ts.BAD_SIGNATURE  # moved to another device's topic
    assert ts.verify(pub, T.reported("d1"), signed) == ts.BAD_SIGNATURE  # or another leaf
    tampered = json.loads(signed)
    tampered["seq"] = 4
    assert ts.verify(pub, T.events("d1"), json.dumps(tampered).encode()) == ts.BAD_SIGNATURE
    assert ts.verify(pub, T.events("d1"), b"not json") == ts.UNREADABLE
    assert ts.Signer(key)(T.state("d1"), b"") == b""  # a cleared retained topic stays empty
