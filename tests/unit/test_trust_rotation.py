"""Keys that can change: a root key signs the trust file; a device replaces its trust file only
with a newer one its current root signed (so the root itself rotates on the old root's
signature); keys are revoked by leaving them out; thresholds ask for several signatures."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from bundle_factory import BUNDLE_KEY, DEPLOY_KEY, NOW, make_bundle, private_key, valid_bundle, verify_built

from device_agent.actions import SaveTrust
from device_agent.errors import TrustError, TrustRejected, UnknownKey
from device_agent.events import Message
from device_agent.trust import ROLE_BUNDLE, ROLE_DEPLOY, ROLE_ROOT, Trust, key_id, public_raw, seal_trust
from tests.unit.test_core import T, codes, desire, of_type, on_v1

ROOT = private_key(101)
ROOT2 = private_key(102)
NEW_BUNDLE = private_key(103)


def entry(key: Any, *roles: str) -> dict[str, Any]:
    raw = public_raw(key)
    return {
        "keyid": key_id(raw),
        "name": f"k{key_id(raw)[:4]}",
        "public": base64.b64encode(raw).decode(),
        "roles": list(roles),
    }


BASE = [entry(ROOT, ROLE_ROOT), entry(BUNDLE_KEY, ROLE_BUNDLE), entry(DEPLOY_KEY, ROLE_DEPLOY)]


def signed(version: int, entries: list[dict[str, Any]], *roots: Any, thresholds: dict[str, int] | None = None) -> bytes:
    return seal_trust(list(roots), version, entries, thresholds)


def test_a_signed_trust_file_must_carry_its_own_root_signature() -> None:
    trust = Trust.from_bytes(signed(1, BASE, ROOT))
    assert trust.signed and trust.version == 1 and len(trust.keys) == 3
    with pytest.raises(TrustError, match="not signed by its own root"):
        Trust.from_bytes(signed(1, BASE, BUNDLE_KEY))


def test_a_newer_trust_file_signed_by_the_current_root_revokes_a_key() -> None:
    current = Trust.from_bytes(signed(1, BASE, ROOT))
    verify_built(valid_bundle(), current)
    revoked = current.accept_update(signed(2, [BASE[0], entry(NEW_BUNDLE, ROLE_BUNDLE), BASE[2]], ROOT))
    with pytest.raises(UnknownKey):
        verify_built(valid_bundle(), revoked)  # signed by the revoked key
    assert verify_built(make_bundle(signer=NEW_BUNDLE), revoked).version == 1


@pytest.mark.parametrize(
    ("update", "why"),
    [
        (lambda: signed(1, BASE, ROOT), "not newer"),
        (lambda: signed(2, [entry(ROOT2, ROLE_ROOT), *BASE[1:]], ROOT2), "not signed by the current root"),
        (lambda: Trust(Trust.from_bytes(signed(1, BASE, ROOT)).keys).to_json(), "must be signed"),
    ],
    ids=["same-version", "stranger-root", "unsigned"],
)
def test_a_trust_file_the_current_root_did_not_sign_is_refused(update: Any, why: str) -> None:
    current = Trust.from_bytes(signed(1, BASE, ROOT))
    with pytest.raises(TrustRejected, match=why):
        current.accept_update(update())


def test_the_root_rotates_on_the_old_roots_signature_and_then_alone_counts() -> None:
    current = Trust.from_bytes(signed(1, BASE, ROOT))
    rotated_entries = [entry(ROOT2, ROLE_ROOT), *BASE[1:]]
    rotated = current.accept_update(signed(2, rotated_entries, ROOT, ROOT2))  # old and new root sign
    assert ROLE_ROOT in rotated.keys[key_id(public_raw(ROOT2))].roles
    with pytest.raises(TrustRejected):
        rotated.accept_update(signed(3, [entry(ROOT, ROLE_ROOT), *BASE[1:]], ROOT))  # the old root is out


def test_a_threshold_asks_for_several_distinct_signatures() -> None:
    two_roots = [entry(ROOT, ROLE_ROOT), entry(ROOT2, ROLE_ROOT), *BASE[1:]]
    current = Trust.from_bytes(signed(1, two_roots, ROOT, ROOT2, thresholds={"root": 2}))
    with pytest.raises(TrustRejected, match="needs 2 signatures"):
        current.accept_update(signed(2, two_roots, ROOT, thresholds={"root": 2}))
    assert current.accept_update(signed(2, two_roots, ROOT, ROOT2, thresholds={"root": 2})).version == 2
    with pytest.raises(TrustError, match="needs 2"):
        Trust.from_bytes(signed(1, two_roots, ROOT, thresholds={"root": 2}))


def test_the_core_replaces_its_trust_file_and_refuses_the_revoked_key() -> None:
    core = on_v1(trust=Trust.from_bytes(signed(1, BASE, ROOT)))
    new_deploy = private_key(104)
    update = signed(2, [BASE[0], BASE[1], entry(new_deploy, ROLE_DEPLOY)], ROOT)
    out = core.handle(Message(T.trust(), update, True), NOW)
    assert of_type(out, SaveTrust) == [SaveTrust(update)] and codes(out) == ["lifecycle.trust_updated"]
    assert codes(core.handle(Message(T.trust(), update, True), NOW)) == []  # the retained copy again
    v2 = valid_bundle("demo", 2)
    assert codes(desire(core, v2, seq=2))[0] == "bundle.unknown_key"  # the old deploy key
    desire(core, v2, seq=2, key=new_deploy)
    assert core.goal is not None and core.goal.bundle.version == 2


def test_the_core_refuses_a_trust_file_its_root_did_not_sign() -> None:
    core = on_v1(trust=Trust.from_bytes(signed(1, BASE, ROOT)))
    out = core.handle(Message(T.trust(), signed(2, [entry(ROOT2, ROLE_ROOT), *BASE[1:]], ROOT2), True), NOW)
    assert codes(out) == ["trust.rejected"] and not of_type(out, SaveTrust)
    assert core.trust is not None and core.trust.version == 1
