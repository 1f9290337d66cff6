"""The attacker catalogue for ``device_agent.bundle.verify`` (in the style of python-tuf's
tests): every way a bundle can be wrong, each with the exact error class and wire code.

Every bad bundle here is otherwise valid, so each test isolates one defence. Bundles whose
manifest must be *changed* but still pass the signature check are re-signed by the trusted
bundle key (``manifest_updates`` / ``manifest_text``), so the check under test is the one
that rejects them.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import io
import json
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from bundle_factory import (
    BUNDLE_KEY,
    DELETE,
    DEPLOY_KEY,
    HEALTH,
    MODEL,
    NOW,
    REFERENCE,
    STRANGER_KEY,
    Built,
    default_files,
    flip,
    make_bundle,
    make_trust,
    raw_zip,
    read_zip,
    trust_json,
    valid_bundle,
    verify_built,
)
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from device_agent import __version__
from device_agent.bundle import FloorEntry, Limits, VerifiedBundle, pack, read_unverified, sha256_hex, verify
from device_agent.errors import (
    AgentError,
    BadSignature,
    BundleMalformed,
    BundleTooLarge,
    Expired,
    HashMismatch,
    Incompatible,
    ManifestInvalid,
    MissingSignature,
    SizeMismatch,
    TrustError,
    UnknownKey,
    UnlistedMember,
    VersionConflict,
    VersionRollback,
)
from device_agent.trust import (
    DESIRED_DOMAIN,
    MANIFEST_DOMAIN,
    MAX_TRUST_BYTES,
    ROLE_BUNDLE,
    ROLE_DEPLOY,
    Trust,
    key_id,
    public_raw,
    sign,
)


def rejects(exc_type: type[AgentError], call: Callable[[], object]) -> AgentError:
    """``call`` raises exactly ``exc_type`` (not a parent, not a sibling) with its own code."""
    with pytest.raises(AgentError) as info:
        call()
    assert type(info.value) is exc_type, f"expected {exc_type.__name__}, got {type(info.value).__name__}: {info.value}"
    assert info.value.code == exc_type.code
    assert info.value.detail  # a human-readable reason travels with the code
    return info.value


def members_of(built: Built | bytes) -> list[tuple[str, bytes]]:
    members: list[tuple[str, bytes]] = read_zip(built.data if isinstance(built, Built) else built)
    return members


# ── the valid bundle ──────────────────────────────────────────────────────────────────


def test_valid_bundle_verifies_with_everything_the_device_needs() -> None:
    built = valid_bundle()
    vb = verify_built(built)
    assert isinstance(vb, VerifiedBundle)
    assert (vb.name, vb.version) == ("demo", 1)
    assert vb.sha256 == sha256_hex(built.data)
    assert vb.size == len(built.data)
    assert vb.keyid == key_id(public_raw(BUNDLE_KEY))
    assert vb.manifest_bytes == built.manifest_bytes
    assert vb.files == built.files
    assert set(vb.files) == {MODEL, REFERENCE, HEALTH}
    assert vb.ref.to_json() == {"name": "demo", "version": 1, "sha256": vb.sha256}
    spec = vb.spec
    assert spec.task == "classification"
    assert [f.name for f in spec.features] == ["f0", "f1", "f2"]
    assert {f.type for f in spec.features} == {"numeric"}
    assert (spec.input_name, spec.input_dtype) == ("input", "float32")
    assert (spec.label_output, spec.proba_output) == ("label", "probabilities")
    assert spec.classes == ("low", "mid", "high")
    assert vb.json_file(HEALTH)["labels"]  # members parse as strict JSON


def test_pack_is_deterministic_and_stores_members_uncompressed() -> None:
    a, b = make_bundle(), make_bundle()
    assert a.data == b.data  # fixed timestamps + deterministic Ed25519
    assert pack(a.manifest_bytes, a.signatures, a.files) == a.data
    with zipfile.ZipFile(io.BytesIO(a.data)) as zf:
        infos = zf.infolist()
    assert [i.filename for i in infos][:2] == ["manifest.json", "manifest.sig"]
    assert all(i.compress_type == zipfile.ZIP_STORED for i in infos)


def test_read_unverified_reads_the_manifest_without_trust() -> None:
    manifest, members = read_unverified(make_bundle(signer=STRANGER_KEY).data)
    assert manifest["name"] == "demo"
    assert set(members) == {"manifest.json", "manifest.sig", MODEL, REFERENCE, HEALTH}


def test_any_of_several_signatures_by_a_trusted_key_is_enough() -> None:
    built = valid_bundle()
    stranger = sign(STRANGER_KEY, MANIFEST_DOMAIN, built.manifest_bytes)
    good = sign(BUNDLE_KEY, MANIFEST_DOMAIN, built.manifest_bytes)
    vb = verify_built(make_bundle(signatures=[stranger, good]))
    assert vb.keyid == good["keyid"]


# ── signatures and keys ───────────────────────────────────────────────────────────────


def _flip_signature(sig: dict[str, str]) -> dict[str, str]:
    raw = bytearray(base64.b64decode(sig["sig"]))
    raw[10] ^= 0x01
    return {"keyid": sig["keyid"], "sig": base64.b64encode(bytes(raw)).decode("ascii")}


def test_flipped_byte_in_signature_is_bad_signature() -> None:
    good = valid_bundle().signatures[0]
    rejects(BadSignature, lambda: verify_built(make_bundle(signatures=[_flip_signature(good)])))


def test_flipped_byte_in_manifest_is_bad_signature() -> None:
    built = make_bundle(tamper_manifest=lambda b: flip(b, len(b) // 2))
    rejects(BadSignature, lambda: verify_built(built))


def test_manifest_edited_to_claim_another_version_is_bad_signature() -> None:
    built = make_bundle(tamper_manifest=lambda b: b.replace(b'"version": 1', b'"version": 9'))
    assert b'"version": 9' in built.manifest_bytes
    rejects(BadSignature, lambda: verify_built(built))


def test_signature_that_is_not_base64_is_bad_signature() -> None:
    sig = {"keyid": key_id(public_raw(BUNDLE_KEY)), "sig": "!!not base64!!"}
    rejects(BadSignature, lambda: verify_built(make_bundle(signatures=[sig])))


def test_signature_for_another_domain_is_bad_signature() -> None:
    """Domain separation: the bundle key's signature over the same bytes as a *desired*
    document must not pass as a manifest signature."""
    wrong = sign(BUNDLE_KEY, DESIRED_DOMAIN, valid_bundle().manifest_bytes)
    rejects(BadSignature, lambda: verify_built(make_bundle(signatures=[wrong])))


def test_signed_by_unknown_key() -> None:
    rejects(UnknownKey, lambda: verify_built(make_bundle(signer=STRANGER_KEY)))


def test_key_trusted_only_for_deploy_cannot_sign_bundles() -> None:
    trust = make_trust((BUNDLE_KEY, (ROLE_DEPLOY,)))
    rejects(UnknownKey, lambda: verify_built(valid_bundle(), trust))
    rejects(UnknownKey, lambda: verify_built(make_bundle(signer=DEPLOY_KEY)))


def test_missing_manifest_sig() -> None:
    built = make_bundle(sign_manifest=False)
    assert "manifest.sig" not in dict(members_of(built))
    rejects(MissingSignature, lambda: verify_built(built))


def test_empty_signature_list() -> None:
    rejects(MissingSignature, lambda: verify_built(make_bundle(signatures=[])))


@pytest.mark.parametrize(
    "sig_member",
    [b"not json", b'{"keyid": "x"}', b"[1, 2, 3]", b'[{"keyid": 1, "sig": 2}]', b"\xff\xfe"],
    ids=["garbage", "object", "numbers", "wrong-types", "not-utf8"],
)
def test_malformed_signature_list(sig_member: bytes) -> None:
    members = [(n, sig_member if n == "manifest.sig" else b) for n, b in members_of(valid_bundle())]
    rejects(MissingSignature, lambda: verify_built(raw_zip(members)))


def test_without_bundle_key_in_trust_nothing_verifies() -> None:
    trust = make_trust((DEPLOY_KEY, (ROLE_DEPLOY,)))
    rejects(UnknownKey, lambda: verify_built(valid_bundle(), trust))


# ── the trust file ────────────────────────────────────────────────────────────────────


def test_trust_file_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "trust.json"
    path.write_bytes(make_trust().to_json())
    trust = Trust.load(path)
    assert {k.keyid: set(k.roles) for k in trust.keys.values()} == {
        key_id(public_raw(BUNDLE_KEY)): {ROLE_BUNDLE},
        key_id(public_raw(DEPLOY_KEY)): {ROLE_DEPLOY},
    }
    assert verify_built(valid_bundle(), trust).name == "demo"


def test_missing_trust_file(tmp_path: Path) -> None:
    err = rejects(TrustError, lambda: Trust.load(tmp_path / "absent.json"))
    assert err.code == "trust.unavailable"


def test_unreadable_trust_file_is_a_directory(tmp_path: Path) -> None:
    rejects(TrustError, lambda: Trust.load(tmp_path))


def test_oversized_trust_file(tmp_path: Path) -> None:
    path = tmp_path / "trust.json"
    path.write_bytes(b" " * (MAX_TRUST_BYTES + 1) + make_trust().to_json())
    rejects(TrustError, lambda: Trust.load(path))


def _pub(key: Ed25519PrivateKey = BUNDLE_KEY) -> str:
    return base64.b64encode(public_raw(key)).decode("ascii")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff\xfe\x00",
        b"not json",
        b"[]",
        b'{"format": 1}',
        b'{"format": 2, "keys": [{"public": "' + _pub().encode() + b'", "roles": ["bundle"]}]}',
        b'{"format": 1, "keys": []}',
        b'{"format": 1, "keys": ["x"]}',
        b'{"format": 1, "keys": [{"public": "!!!", "roles": ["bundle"]}]}',
        b'{"format": 1, "keys": [{"public": "AAAA", "roles": ["bundle"]}]}',
        b'{"format": 1, "keys": [{"public": "' + _pub().encode() + b'", "roles": ["admin"]}]}',
        b'{"format": 1, "keys": [{"public": "' + _pub().encode() + b'", "roles": []}]}',
        b'{"format": 1, "keys": [{"public": "' + _pub().encode() + b'", "roles": ["bundle"], "keyid": "00"}]}',
        b'{"format": 1, "format": 1, "keys": [{"public": "' + _pub().encode() + b'", "roles": ["bundle"]}]}',
    ],
    ids=[
        "empty",
        "not-utf8",
        "garbage",
        "array",
        "no-keys",
        "format-2",
        "empty-keys",
        "key-not-object",
        "public-not-base64",
        "public-too-short",
        "unknown-role",
        "no-roles",
        "keyid-mismatch",
        "duplicate-json-key",
    ],
)
def test_invalid_trust_file(data: bytes) -> None:
    rejects(TrustError, lambda: Trust.from_bytes(data))


@given(st.binary(max_size=300))
@settings(max_examples=200, deadline=None, derandomize=True)
def test_trust_parser_raises_only_trust_error(data: bytes) -> None:
    with contextlib.suppress(TrustError):
        Trust.from_bytes(data)


def test_trust_json_helper_is_what_the_device_reads() -> None:
    trust = Trust.from_bytes(trust_json((STRANGER_KEY, (ROLE_BUNDLE, ROLE_DEPLOY))))
    assert [set(k.roles) for k in trust.keys.values()] == [{ROLE_BUNDLE, ROLE_DEPLOY}]


# ── strict manifest JSON (re-signed: these get past the signature) ────────────────────


def _dup_name(b: bytes) -> bytes:
    assert b.startswith(b"{\n")
    return b.replace(b"{\n", b'{\n "name": "evil",\n', 1)


def _nan(b: bytes) -> bytes:
    assert b'"low_confidence": 0.6' in b
    return b.replace(b'"low_confidence": 0.6', b'"low_confidence": NaN')


def _infinity(b: bytes) -> bytes:
    return b.replace(b'"low_confidence": 0.6', b'"low_confidence": -Infinity')


@pytest.mark.parametrize(
    "rewrite",
    [_dup_name, _nan, _infinity, lambda b: b"[" + b + b"]", lambda b: b[:-5], lambda b: b"\xff" + b],
    ids=["duplicate-key", "nan", "infinity", "array", "truncated", "not-utf8"],
)
def test_manifest_that_is_not_strict_json(rewrite: Callable[[bytes], bytes]) -> None:
    built = make_bundle(manifest_text=rewrite)
    rejects(ManifestInvalid, lambda: verify_built(built))


@pytest.mark.parametrize(
    ("updates", "exc_type"),
    [
        ({"name": "a/b"}, ManifestInvalid),
        ({"name": DELETE}, ManifestInvalid),
        ({"version": 0}, ManifestInvalid),
        ({"version": "1"}, ManifestInvalid),
        ({"version": True}, ManifestInvalid),
        ({"version": 1.0}, ManifestInvalid),
        ({"format": 2}, Incompatible),
        ({"format": DELETE}, Incompatible),
        ({"compat": "any"}, ManifestInvalid),
        ({"expires": "tomorrow"}, ManifestInvalid),
        ({"files": ["model.onnx"]}, ManifestInvalid),
        ({"files": {MODEL: "abc"}}, ManifestInvalid),
        ({"model": DELETE}, ManifestInvalid),
        ({"model": {"task": "ranking"}}, ManifestInvalid),
        ({"model": {"outputs": DELETE}}, ManifestInvalid),
        ({"model": {"classes": []}}, ManifestInvalid),
        ({"model": {"features": [{"name": "f0", "type": "categorical"}]}}, ManifestInvalid),
        ({"model": {"features": [{"name": "f0", "type": "image"}]}}, Incompatible),
        ({"model": {"input": {"dtype": "int8"}}}, Incompatible),
    ],
    ids=lambda v: json.dumps(v, default=lambda o: "DELETE") if isinstance(v, dict) else v.__name__,
)
def test_signed_manifest_with_bad_fields(updates: dict[str, object], exc_type: type[AgentError]) -> None:
    built = make_bundle(manifest_updates=updates)
    rejects(exc_type, lambda: verify_built(built))


def test_wrong_expect_name() -> None:
    rejects(ManifestInvalid, lambda: verify_built(valid_bundle(), expect_name="other"))
    assert verify_built(valid_bundle(), expect_name="demo").name == "demo"


# ── compatibility and expiry ─────────────────────────────────────────────────────────


def test_min_agent_newer_than_this_agent() -> None:
    built = make_bundle(manifest_updates={"compat": {"min_agent": "99.0.0"}})
    err = rejects(Incompatible, lambda: verify_built(built))
    assert "99.0.0" in err.detail and __version__ in err.detail


def test_min_agent_equal_to_this_agent_is_fine() -> None:
    built = make_bundle(manifest_updates={"compat": {"min_agent": __version__}})
    assert verify_built(built).version == 1


def test_expired_bundle() -> None:
    built = make_bundle(manifest_updates={"expires": "2020-01-01T00:00:00Z"})
    rejects(Expired, lambda: verify_built(built))


def test_expiry_is_exclusive_of_now_and_honours_time_zones() -> None:
    built = make_bundle(manifest_updates={"expires": "2025-06-15T17:06:40+02:00"})  # == NOW
    rejects(Expired, lambda: verify_built(built, now=NOW))
    assert verify_built(built, now=NOW - 1).version == 1


def test_bundle_not_yet_expired_verifies() -> None:
    built = make_bundle(manifest_updates={"expires": "2099-01-01T00:00:00Z"})
    assert verify_built(built).version == 1


# ── version floor ────────────────────────────────────────────────────────────────────


def test_lower_version_than_the_floor() -> None:
    floor = {"demo": FloorEntry(2, "0" * 64)}
    rejects(VersionRollback, lambda: verify_built(valid_bundle(), floor=floor))


def test_same_version_different_content() -> None:
    floor = {"demo": FloorEntry(1, "0" * 64)}
    rejects(VersionConflict, lambda: verify_built(valid_bundle(), floor=floor))


def test_same_version_same_content_is_harmless_redelivery() -> None:
    built = valid_bundle()
    vb = verify_built(built, floor={"demo": FloorEntry(1, built.sha256)})
    assert vb.sha256 == built.sha256


def test_higher_version_and_other_names_pass_the_floor() -> None:
    built = valid_bundle("demo", 3)
    floor = {"demo": FloorEntry(2, "0" * 64), "other": FloorEntry(9, "1" * 64)}
    assert verify_built(built, floor=floor).version == 3


# ── members: the allow-list, sizes and hashes ────────────────────────────────────────


def test_flipped_byte_in_model_is_hash_mismatch() -> None:
    model = default_files()[MODEL]
    built = make_bundle(replace_members={MODEL: flip(model, len(model) // 2)})
    rejects(HashMismatch, lambda: verify_built(built))


def test_bundle_other_than_the_desired_one_is_hash_mismatch_before_anything_else() -> None:
    built = make_bundle()
    assert verify_built(built, expect_sha256=sha256_hex(built.data)).sha256 == sha256_hex(built.data)
    other = sha256_hex(b"another bundle")
    rejects(HashMismatch, lambda: verify_built(built, expect_sha256=other))
    # Checked first: the same bytes from an unknown signer are still refused as the wrong bundle.
    rejects(
        HashMismatch, lambda: verify_built(built, trust=make_trust((DEPLOY_KEY, (ROLE_DEPLOY,))), expect_sha256=other)
    )


@pytest.mark.parametrize("kind", [bytearray, memoryview])
def test_a_bundle_in_any_buffer_verifies_the_same(kind: Callable[[bytes], object]) -> None:
    """The agent assembles into a bytearray: verified in place, with the same result as bytes."""
    built = make_bundle()
    expected = verify_built(built)
    got = verify(kind(built.data), make_trust(), now=NOW)  # type: ignore[arg-type]
    assert (got.sha256, got.manifest, got.files) == (expected.sha256, expected.manifest, expected.files)
    assert all(type(blob) is bytes for blob in got.files.values())
    damaged = bytearray(built.data)
    damaged[len(damaged) // 2] ^= 1
    with pytest.raises(AgentError):
        verify(damaged, make_trust(), now=NOW)


def test_model_left_out_is_still_checked_and_located() -> None:
    built = make_bundle()
    lean = verify_built(built, keep_model=False)
    assert set(lean.files) == {REFERENCE, HEALTH} and lean.model_span is not None
    assert built.data[lean.model_span[0] : lean.model_span[1]] == default_files()[MODEL]
    model = default_files()[MODEL]
    tampered = make_bundle(replace_members={MODEL: flip(model, len(model) // 2)})
    rejects(HashMismatch, lambda: verify_built(tampered, keep_model=False))


def test_flipped_byte_in_reference_is_hash_mismatch() -> None:
    ref = default_files()[REFERENCE]
    rejects(HashMismatch, lambda: verify_built(make_bundle(replace_members={REFERENCE: flip(ref, 3)})))


def test_size_mismatch() -> None:
    built = make_bundle(replace_members={MODEL: default_files()[MODEL] + b"\x00"})
    rejects(SizeMismatch, lambda: verify_built(built))


def test_unlisted_member() -> None:
    built = make_bundle(extra_members={"payload.sh": b"#!/bin/sh\nrm -rf /\n"})
    err = rejects(UnlistedMember, lambda: verify_built(built))
    assert "payload.sh" in err.detail


def test_listed_member_missing_from_the_archive() -> None:
    files = {**default_files(), "notes.txt": b"hello"}
    built = make_bundle(files=files)
    data = raw_zip([(n, b) for n, b in members_of(built) if n != "notes.txt"])
    rejects(BundleMalformed, lambda: verify_built(data))


def test_required_file_not_listed() -> None:
    files = {k: v for k, v in default_files().items() if k != HEALTH}
    rejects(ManifestInvalid, lambda: verify_built(make_bundle(files=files)))


def test_extra_listed_file_is_carried_along() -> None:
    files = {**default_files(), "notes.txt": b"hello"}
    assert verify_built(make_bundle(files=files)).files["notes.txt"] == b"hello"


# ── archive structure ────────────────────────────────────────────────────────────────


def test_duplicate_member_names() -> None:
    members = members_of(valid_bundle())
    evil = [*members, (MODEL, b"second model")]
    rejects(BundleMalformed, lambda: verify_built(raw_zip(evil)))


def test_duplicate_manifest_member() -> None:
    members = members_of(valid_bundle())
    evil = [*members, ("manifest.json", b"{}")]
    rejects(BundleMalformed, lambda: verify_built(raw_zip(evil)))


@pytest.mark.parametrize(
    "name",
    ["../model.onnx", "/etc/passwd", "sub/model.onnx", "..\\model.onnx", "C:\\model.onnx", ".hidden", "a..b", ""],
)
def test_member_names_that_are_not_plain_file_names(name: str) -> None:
    members = [*members_of(valid_bundle()), (name, b"x")]
    rejects(BundleMalformed, lambda: verify_built(raw_zip(members)))


@pytest.mark.parametrize("member", [MODEL, "manifest.json", REFERENCE])
def test_compressed_member(member: str) -> None:
    data = raw_zip(members_of(valid_bundle()), compressed={member})
    rejects(BundleMalformed, lambda: verify_built(data))


@pytest.mark.parametrize(
    "data",
    [b"", b"hello", b"PK\x03\x04" + b"\x00" * 100, bytes(range(256)) * 4],
    ids=["empty", "text", "zip-magic-only", "noise"],
)
def test_not_a_zip_at_all(data: bytes) -> None:
    rejects(BundleMalformed, lambda: verify_built(data))


def test_truncated_bundle() -> None:
    data = valid_bundle().data
    for cut in (len(data) - 1, len(data) - 22, len(data) // 2, 10):
        rejects(BundleMalformed, functools.partial(verify_built, data[:cut]))


def test_no_manifest_member() -> None:
    members = [(n, b) for n, b in members_of(valid_bundle()) if n != "manifest.json"]
    rejects(BundleMalformed, lambda: verify_built(raw_zip(members)))


def test_oversize_bundle() -> None:
    data = valid_bundle().data
    rejects(BundleTooLarge, lambda: verify_built(data, limits=Limits(max_bundle_bytes=len(data) - 1)))
    assert verify_built(data, limits=Limits(max_bundle_bytes=len(data))).name == "demo"


def test_oversize_manifest() -> None:
    limits = Limits(max_manifest_bytes=len(valid_bundle().manifest_bytes) - 1)
    rejects(BundleTooLarge, lambda: verify_built(valid_bundle(), limits=limits))


def test_too_many_members() -> None:
    rejects(BundleMalformed, lambda: verify_built(valid_bundle(), limits=Limits(max_members=4)))


def test_member_claiming_more_bytes_than_the_archive() -> None:
    """A central directory that claims a huge stored member must not be read past the end."""
    data = bytearray(valid_bundle().data)
    cd = data.find(b"PK\x01\x02")
    # central directory entry of manifest.json: compressed size at +20, uncompressed at +24
    data[cd + 20 : cd + 28] = (10**8).to_bytes(4, "little") * 2
    rejects(BundleMalformed, lambda: verify_built(bytes(data)))


# ── random corruption ────────────────────────────────────────────────────────────────

_VALID = valid_bundle()


def _central_directory_entries(data: bytes) -> list[int]:
    """Offsets of every central-directory file header."""
    out, at = [], data.find(b"PK\x01\x02")
    while at != -1:
        out.append(at)
        at = data.find(b"PK\x01\x02", at + 4)
    return out


def _structural_offsets(data: bytes) -> list[int]:
    """Every byte of the ZIP's own bookkeeping: local headers, central directory, end record."""
    offsets: set[int] = set()
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        for info in zf.infolist():
            start = info.header_offset
            offsets.update(range(start, start + 30 + len(info.filename)))
    offsets.update(range(data.find(b"PK\x01\x02"), len(data)))
    return sorted(offsets)


_ANYWHERE = st.integers(0, len(_VALID.data) - 1)
_OFFSETS = st.one_of(_ANYWHERE, st.sampled_from(_structural_offsets(_VALID.data)))


@given(offset=_OFFSETS, mask=st.integers(1, 255))
@settings(max_examples=400, deadline=None, derandomize=True)
def test_random_byte_flip_is_rejected_or_changes_nothing_that_matters(offset: int, mask: int) -> None:
    """No silent acceptance of altered content, and no error outside the AgentError tree."""
    altered = flip(_VALID.data, offset, mask)
    try:
        vb = verify_built(altered)
    except AgentError:
        return
    assert vb.manifest_bytes == _VALID.manifest_bytes
    assert vb.files == _VALID.files
    assert vb.sha256 == sha256_hex(altered)


@given(cut=st.integers(0, len(_VALID.data) - 1))
@settings(max_examples=100, deadline=None, derandomize=True)
def test_any_truncation_is_rejected(cut: int) -> None:
    with pytest.raises(AgentError):
        verify_built(_VALID.data[:cut])


@given(st.binary(max_size=2000))
@settings(max_examples=200, deadline=None, derandomize=True)
def test_arbitrary_bytes_raise_only_agent_errors(data: bytes) -> None:
    with pytest.raises(AgentError):
        verify_built(data)


def test_unsupported_zip_version_is_bundle_malformed() -> None:
    cd = _central_directory_entries(_VALID.data)[0]
    altered = flip(_VALID.data, cd + 6, 0x40)  # version needed 20 -> 84 ("8.4")
    rejects(BundleMalformed, lambda: verify_built(altered))
