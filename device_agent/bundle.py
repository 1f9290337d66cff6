"""The ``.ekb`` bundle format: bytes in, :class:`VerifiedBundle` out, or a named error.

A bundle is a ZIP of *stored* members read into memory one by one and never extracted by
name. ``manifest.json`` lists every other member with its size and SHA-256 (the allow-list)
and ``manifest.sig`` holds Ed25519 signatures over the exact manifest bytes. Nothing here
opens a file or a socket, so the same code verifies on the device, on the host
(``edgekit verify``) and in tests that play the attacker.

Verification order: size limits → member structure → signature with a trusted key →
strict JSON → name / compat / expiry → each file's size and hash → version floor. Integrity
comes before the version policy so that a modified file is reported as exactly that
(hash mismatch), not as a "different bundle with the same version".
"""

from __future__ import annotations

import hashlib
import io
import struct
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from . import __version__
from .config import Limits
from .errors import (
    BundleMalformed,
    BundleTooLarge,
    Expired,
    HashMismatch,
    Incompatible,
    ManifestInvalid,
    MissingSignature,
    ProtocolError,
    SizeMismatch,
    TrustError,
    UnlistedMember,
    VersionConflict,
    VersionRollback,
)
from .features import DATETIME, DATETIME_PARTS, FEATURE_TYPES, NUMERIC, Feature, model_inputs
from .protocol import BundleRef, check_id, dumps, loads_object, loads_strict
from .trust import MANIFEST_DOMAIN, ROLE_BUNDLE, Trust

FORMAT = 1
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
MODEL = "model.onnx"
REFERENCE = "reference.json"
HEALTH = "health.json"
REQUIRED_FILES = (MODEL, REFERENCE, HEALTH)
DEFAULT_LIMITS = Limits()
_FIXED_TIME = (2020, 1, 1, 0, 0, 0)  # deterministic archives: same inputs, same bytes


@dataclass(frozen=True)
class ModelSpec:
    """What the device needs to feed the model and read its answer (docs/contract-model-spec.md)."""

    task: str  # "classification" | "regression"
    features: tuple[Feature, ...]  # what a row carries, in order
    layout: str  # "tensor": one [None, F] input; "columns": one [None, 1] input per feature
    input_names: tuple[str, ...]  # one name for "tensor", one per feature for "columns"
    input_dtype: str  # of the tensor layout and of numeric columns
    label_output: str
    proba_output: str | None
    classes: tuple[Any, ...]

    @property
    def input_name(self) -> str:
        return self.input_names[0]

    @property
    def inputs(self) -> tuple[Feature, ...]:
        """What the model takes, in order: the features, date/time ones as their parts."""
        return model_inputs(self.features)

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> ModelSpec:
        model = manifest.get("model")
        if not isinstance(model, dict):
            raise ManifestInvalid("manifest has no 'model' object")
        try:
            feats = tuple(
                Feature(
                    str(f["name"]),
                    str(f["type"]),
                    bool(f.get("allow_missing", False)),
                    tuple(str(p) for p in f.get("parts") or ()),
                )
                for f in model["features"]
            )
            inp = model["input"]
            outs = model["outputs"]
            layout = str(inp.get("layout", "tensor"))
            names = tuple(str(n) for n in inp["names"]) if layout == "columns" else (str(inp["name"]),)
            spec = cls(
                task=str(model["task"]),
                features=feats,
                layout=layout,
                input_names=names,
                input_dtype=str(inp.get("dtype", "float32")),
                label_output=str(outs["label"]),
                proba_output=None if outs.get("probabilities") is None else str(outs["probabilities"]),
                classes=tuple(model.get("classes") or ()),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ManifestInvalid(f"manifest 'model' is incomplete: {exc}") from None
        if spec.task not in ("classification", "regression"):
            raise ManifestInvalid(f"unknown task {spec.task!r}")
        if not spec.features:
            raise ManifestInvalid("manifest 'model' lists no features")
        unknown = {f.type for f in spec.features} - set(FEATURE_TYPES)
        if unknown:
            raise Incompatible(f"unsupported feature type(s) {sorted(unknown)}")
        for f in spec.features:
            if f.type != DATETIME and f.parts:
                raise ManifestInvalid(f"feature {f.name!r} is {f.type}: only a datetime feature has parts")
            if f.type == DATETIME and (not f.parts or len(set(f.parts)) != len(f.parts)):
                raise ManifestInvalid(f"datetime feature {f.name!r} needs a list of distinct parts")
            if set(f.parts) - set(DATETIME_PARTS):
                raise Incompatible(f"unsupported date/time part(s) {sorted(set(f.parts) - set(DATETIME_PARTS))}")
        if spec.layout not in ("tensor", "columns"):
            raise Incompatible(f"unsupported input layout {spec.layout!r}")
        if spec.layout == "tensor" and any(f.type != NUMERIC for f in spec.inputs):
            raise ManifestInvalid("categorical features need the 'columns' input layout")
        if spec.layout == "columns" and len(spec.input_names) != len(spec.inputs):
            raise ManifestInvalid("'columns' layout needs one input name per model input")
        if spec.input_dtype not in ("float32", "float64"):
            raise Incompatible(f"unsupported input dtype {spec.input_dtype!r}")
        if spec.task == "classification" and (not spec.classes or spec.proba_output is None):
            raise ManifestInvalid("a classifier's manifest must list its classes and its probabilities output")
        return spec


@dataclass(frozen=True)
class DeviceProfile:
    """What a bundle's ``compat`` is checked against on a device: its class (a setting), the
    agent's version, the onnxruntime version and the highest ONNX opset it knows. The opset is
    asked for only when a bundle names one (reading onnxruntime's schemas takes ~70 ms)."""

    device_class: str = ""
    agent: str = __version__
    runtime: str = ""  # onnxruntime's version; empty: not checked
    max_opset: Callable[[], int | None] | None = None


def check_compat(compat: Mapping[str, Any], device: DeviceProfile) -> None:
    """Refuse a bundle this device cannot run (:class:`Incompatible`), before it is installed."""
    classes = compat.get("device_classes") or []
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise ManifestInvalid("manifest 'compat.device_classes' must be a list of strings")
    if classes and device.device_class not in classes:
        mine = repr(device.device_class) if device.device_class else "unset (device_class)"
        raise Incompatible(f"bundle is for device classes {', '.join(classes)}; this device's class is {mine}")
    min_runtime = compat.get("min_runtime")
    if min_runtime is not None and not isinstance(min_runtime, str):
        raise ManifestInvalid("manifest 'compat.min_runtime' must be a version string")
    if min_runtime and device.runtime and _version_tuple(min_runtime) > _version_tuple(device.runtime):
        raise Incompatible(f"bundle needs onnxruntime {min_runtime} or newer; this device has {device.runtime}")
    opset = compat.get("opset")
    if opset is not None and (not isinstance(opset, int) or isinstance(opset, bool)):
        raise ManifestInvalid("manifest 'compat.opset' must be an integer")
    if opset is not None and device.max_opset is not None:
        highest = device.max_opset()
        if highest is not None and opset > highest:
            raise Incompatible(f"bundle needs ONNX opset {opset}; this device's onnxruntime knows up to {highest}")


@dataclass(frozen=True)
class VerifiedBundle:
    name: str
    version: int
    sha256: str  # of the whole .ekb
    size: int
    keyid: str
    manifest: dict[str, Any]
    manifest_bytes: bytes
    files: dict[str, bytes] = field(repr=False)
    spec: ModelSpec
    # Where model.onnx lies in the archive (offset, size) when ``verify(..., keep_model=False)``
    # left it out of ``files``: the agent then loads it from the stored bundle file.
    model_span: tuple[int, int] | None = None

    def json_file(self, name: str) -> Any:
        return loads_strict(self.files[name], max_bytes=64 << 20, what=name)

    @property
    def ref(self) -> BundleRef:
        return BundleRef(self.name, self.version, self.sha256)


@dataclass(frozen=True)
class FloorEntry:
    """The highest version of a bundle name this device has accepted, and its hash."""

    version: int
    sha256: str


def sha256_hex(data: bytes | bytearray | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def parse_time(value: str) -> float:
    text = value[:-1] + "+00:00" if value.endswith("Z") else value
    stamp = datetime.fromisoformat(text)
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.timestamp()


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".") if p.isdigit())


def pack(manifest_bytes: bytes, signatures: list[dict[str, str]], files: Mapping[str, bytes]) -> bytes:
    """Write a bundle archive: stored members, fixed timestamps, manifest first."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        members = [(MANIFEST, manifest_bytes), (SIGNATURE, dumps(signatures))]
        members += sorted(files.items())
        for name, data in members:
            info = zipfile.ZipInfo(name, date_time=_FIXED_TIME)
            info.compress_type = zipfile.ZIP_STORED
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)
    return buf.getvalue()


_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")

Buffer = bytes | bytearray | memoryview  # a whole bundle in memory; read in place, never copied


class _BufferFile(io.RawIOBase):
    """A read-only, seekable file over a buffer, for :mod:`zipfile` to read the central
    directory from. ``io.BytesIO`` would copy any buffer but ``bytes`` (a whole bundle);
    this reads the few bytes asked for."""

    def __init__(self, data: Buffer) -> None:
        super().__init__()
        self._view = memoryview(data)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._view)}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer: Any) -> int:
        chunk = self._view[self._pos : self._pos + len(buffer)]
        size = len(chunk)
        buffer[:size] = chunk
        self._pos += size
        return size

    def close(self) -> None:
        self._view.release()
        super().close()


def _stored_span(data: Buffer, info: zipfile.ZipInfo) -> tuple[int, int]:
    """Where a stored member's bytes lie, straight from its local header, with no CRC check.

    The CRC-32 is not a security check (an attacker recomputes it); skipping it lets a
    changed byte surface as the precise error — bad signature, hash mismatch — instead of
    a generic "bad CRC".
    """
    start = info.header_offset
    head = data[start : start + _LOCAL_HEADER.size]
    if len(head) != _LOCAL_HEADER.size:
        raise BundleMalformed(f"member {info.filename!r} points outside the archive")
    sig, _, _, method, _, _, _, _, _, name_len, extra_len = _LOCAL_HEADER.unpack(head)
    if sig != b"PK\x03\x04" or method != zipfile.ZIP_STORED:
        raise BundleMalformed(f"member {info.filename!r} has a bad local header")
    name = data[start + _LOCAL_HEADER.size : start + _LOCAL_HEADER.size + name_len]
    if name != info.filename.encode("utf-8"):
        raise BundleMalformed(f"member {info.filename!r} is named differently in its local header")
    begin = start + _LOCAL_HEADER.size + name_len + extra_len
    end = begin + info.compress_size
    if end > len(data):
        raise BundleMalformed(f"member {info.filename!r} runs past the end of the archive")
    return begin, end


def read_members(data: Buffer, limits: Limits = DEFAULT_LIMITS) -> dict[str, bytes]:
    """Every member's bytes, after structural checks; nothing is trusted yet."""
    return {name: bytes(data[begin:end]) for name, (begin, end) in member_spans(data, limits).items()}


def member_spans(data: Buffer, limits: Limits = DEFAULT_LIMITS) -> dict[str, tuple[int, int]]:
    """Where each member's bytes lie in the archive, after structural checks; nothing is
    trusted yet, nothing is copied."""
    if len(data) > limits.max_bundle_bytes:
        raise BundleTooLarge(f"bundle is {len(data)} bytes, above the limit of {limits.max_bundle_bytes}")
    try:
        with _BufferFile(data) as fp, zipfile.ZipFile(fp) as zf:
            infos = zf.infolist()
        if len(infos) > limits.max_members:
            raise BundleMalformed(f"bundle has {len(infos)} members, more than {limits.max_members}")
        members: dict[str, tuple[int, int]] = {}
        total = 0
        for info in infos:
            name = info.filename
            if name in members:
                raise BundleMalformed(f"duplicate member {name!r}")
            if not name or "/" in name or "\\" in name or name.startswith(".") or ".." in name:
                raise BundleMalformed(f"member name {name!r} is not a plain file name")
            if info.compress_type != zipfile.ZIP_STORED or info.file_size != info.compress_size:
                raise BundleMalformed(f"member {name!r} is compressed; bundles store members uncompressed")
            total += info.file_size
            if total > len(data):
                raise BundleMalformed("members claim more bytes than the archive holds")
            members[name] = _stored_span(data, info)
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        EOFError,
        OSError,
        ValueError,
        KeyError,
        NotImplementedError,  # e.g. an unknown "version needed to extract"
        struct.error,
    ) as exc:
        raise BundleMalformed(f"not a readable bundle archive: {exc}") from None
    return members


def read_unverified(data: bytes, limits: Limits = DEFAULT_LIMITS) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Manifest and members *without* any trust decision: for ``inspect`` and diagnostics."""
    members = read_members(data, limits)
    if MANIFEST not in members:
        raise BundleMalformed("bundle has no manifest.json")
    try:
        manifest = loads_object(members[MANIFEST], limits.max_manifest_bytes, "manifest.json")
    except ProtocolError as exc:
        raise ManifestInvalid(str(exc)) from None
    return manifest, members


def verify(
    data: Buffer,
    trust: Trust | None,
    *,
    now: float,
    floor: Mapping[str, FloorEntry] | None = None,
    expect_name: str | None = None,
    expect_sha256: str | None = None,
    limits: Limits = DEFAULT_LIMITS,
    agent_version: str = __version__,
    keep_model: bool = True,
    device: DeviceProfile | None = None,
    installed: bool = False,
) -> VerifiedBundle:
    """Check everything that can be checked without running the model.

    ``expect_sha256`` (the hash a signed desired state names) is checked first, so bytes that
    are not the bundle that was asked for are refused as exactly that; the bundle is hashed
    once either way (hashing is most of the cost of verifying a large bundle).

    With ``keep_model=False`` the model is checked like every member but not copied out:
    ``files`` leaves it out and ``model_span`` says where it lies, so a device that loads it
    from the stored bundle never holds a second copy of its largest member.

    ``device``: also check the bundle's ``compat`` against this device (the agent does).

    ``installed=True`` re-opens a bundle this device verified and committed before (the state
    file names it by ``expect_sha256``): expiry and the signature, which guard *installing*,
    are not checked again, so an expired bundle or a missing trust file never stops the
    installed model from serving after a restart (``trust`` may then be None); everything
    else, the whole bundle's SHA-256 first, is."""
    if installed and expect_sha256 is None:
        raise ValueError("an installed bundle is re-opened by its SHA-256")
    if trust is None and not installed:
        raise TrustError("no trust file: bundles cannot be verified")
    digest = sha256_hex(data)
    if expect_sha256 is not None and digest != expect_sha256:
        raise HashMismatch("bundle does not match the SHA-256 in the desired state")
    view = memoryview(data)  # members are hashed in place; only what is kept gets copied
    spans = member_spans(view, limits)
    members = {name: view[begin:end] for name, (begin, end) in spans.items()}
    if MANIFEST not in members:
        raise BundleMalformed("bundle has no manifest.json")
    if len(members[MANIFEST]) > limits.max_manifest_bytes:
        raise BundleTooLarge(f"manifest is {len(members[MANIFEST])} bytes, above {limits.max_manifest_bytes}")
    manifest_bytes = bytes(members[MANIFEST])
    if SIGNATURE not in members:
        raise MissingSignature("bundle has no manifest.sig")
    keyid = ""  # an installed bundle's signature was checked when it was installed
    if not installed:
        assert trust is not None
        keyid = trust.verify(ROLE_BUNDLE, MANIFEST_DOMAIN, manifest_bytes, bytes(members[SIGNATURE]))

    try:
        manifest = loads_object(manifest_bytes, limits.max_manifest_bytes, "manifest.json")
        name = check_id("bundle name", manifest.get("name", ""))
    except ProtocolError as exc:
        raise ManifestInvalid(str(exc)) from None
    if manifest.get("format") != FORMAT:
        raise Incompatible(f"bundle format {manifest.get('format')!r}; this agent reads format {FORMAT}")
    version = manifest.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ManifestInvalid("manifest 'version' must be a positive integer")
    if expect_name is not None and name != expect_name:
        raise ManifestInvalid(f"bundle is named {name!r}, expected {expect_name!r}")

    compat = manifest.get("compat") or {}
    if not isinstance(compat, dict):
        raise ManifestInvalid("manifest 'compat' must be an object")
    min_agent = compat.get("min_agent")
    if min_agent is not None and not isinstance(min_agent, str):
        raise ManifestInvalid("manifest 'compat.min_agent' must be a version string")
    if min_agent is not None and _version_tuple(min_agent) > _version_tuple(agent_version):
        raise Incompatible(f"bundle needs agent {min_agent} or newer; this is {agent_version}")
    if device is not None:
        check_compat(compat, device)
    expires = manifest.get("expires")
    if expires is not None and not installed:
        try:
            expired = parse_time(str(expires)) <= now
        except ValueError:
            raise ManifestInvalid(f"manifest 'expires' is not an ISO 8601 time: {expires!r}") from None
        if expired:
            raise Expired(f"bundle {name} v{version} expired at {expires}")

    listed = manifest.get("files")
    if not isinstance(listed, dict):
        raise ManifestInvalid("manifest 'files' must be an object")
    present = set(members) - {MANIFEST, SIGNATURE}
    unlisted = sorted(present - set(listed))
    if unlisted:
        raise UnlistedMember(f"bundle carries members not in the manifest: {', '.join(unlisted)}")
    files: dict[str, bytes] = {}
    for fname, entry in listed.items():
        if fname not in members:
            raise BundleMalformed(f"manifest lists {fname!r} but the bundle does not contain it")
        if not isinstance(entry, dict):
            raise ManifestInvalid(f"manifest entry for {fname!r} must be an object")
        blob = members[fname]
        if entry.get("size") != len(blob):
            raise SizeMismatch(f"{fname} is {len(blob)} bytes, manifest says {entry.get('size')}")
        if entry.get("sha256") != sha256_hex(blob):
            raise HashMismatch(f"{fname} does not match its SHA-256 in the manifest")
        if keep_model or fname != MODEL:
            files[fname] = bytes(blob)
    held = (floor or {}).get(name)
    if held is not None:
        if version < held.version:
            raise VersionRollback(f"bundle {name} v{version} is older than v{held.version}, already accepted")
        if version == held.version and digest != held.sha256:
            raise VersionConflict(f"bundle {name} v{version} differs from the v{version} already accepted")

    missing = [f for f in REQUIRED_FILES if f not in listed]
    if missing:
        raise ManifestInvalid(f"bundle lacks required files: {', '.join(missing)}")
    spec = ModelSpec.from_manifest(manifest)
    return VerifiedBundle(
        name=name,
        version=version,
        sha256=digest,
        size=len(data),
        keyid=keyid,
        manifest=manifest,
        manifest_bytes=manifest_bytes,
        files=files,
        spec=spec,
        model_span=None if keep_model else spans[MODEL],
    )
