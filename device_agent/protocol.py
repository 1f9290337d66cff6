"""The MQTT topic tree and every document on it, shared by device and host.

One definition of each wire format: the host imports this module rather than repeating
topic strings or reading payloads by string keys. Each document is a frozen dataclass with
``to_json`` / ``from_json`` (and ``encode`` / ``decode`` for the bytes on the wire):

    DesiredState     →D  signed (deploy role): which bundle a device or group should run
    TransferInfo     →D  signed (bundle role): size, SHA-256 and chunk hashes of a bundle
    DeviceState      D→  birth and Will, retained: online, boot, birth/death sequence
    Heartbeat        D→  retained: counters, latency, outbox depth
    Reported         D→  retained: deployment phase, progress, active/previous, last errors
    DeviceEvent      D→  outbox: a failure or a lifecycle milestone, with an id
    DriftMessage     D→  outbox: one window of drift statistics
    Command          →D  a request to one device (``resend``: publish again what was sent)
    ResendReply      D→  what a device did with a resend request: requeued, still queued, gone
    SamplesRequest   →D  signed (deploy role): send the captured rows (``dev/{d}/cmd``)
    SamplesReply     D→  captured rows, in size-bounded parts (``dev/{d}/samples``)

Parsing is strict where it matters: every payload from outside goes through
:func:`loads_strict` (no duplicate keys, no NaN/Infinity, bounded size), every field the
reader uses is type-checked, and a top-level document carries ``format``: a reader refuses a
format it does not know with a clear message instead of misreading it. Fields a reader does
not know are ignored, so a newer agent can add fields without breaking an older host.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Self

from .errors import ProtocolError
from .phases import Phase

FORMAT = 1  # of every top-level document below

DEFAULT_PREFIX = "edgekit/v1"
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")


def check_id(kind: str, value: str) -> str:
    """Device ids, group ids and bundle names become topic levels: no wildcards, no slashes."""
    if not isinstance(value, str) or not _ID_RE.match(value):
        raise ProtocolError(
            f"invalid {kind} {value!r}: use 1-64 letters, digits, '_', '.', ':' or '-', starting alphanumeric"
        )
    return value


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)  # C speed; the collector reads thousands of documents a second
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"duplicate key {key!r}")
            seen.add(key)
    return out


_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)


def loads_strict(data: bytes | str, max_bytes: int = 1 << 20, what: str = "message") -> Any:
    """Parse JSON from outside: bounded size, UTF-8, no duplicate keys, no NaN or Infinity."""
    if len(data) > max_bytes:
        raise ProtocolError(f"{what} is {len(data)} bytes, above the {max_bytes}-byte limit")
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        return _DECODER.decode(text)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"{what} is not valid JSON: {exc}") from None


def loads_object(data: bytes | str, max_bytes: int = 1 << 20, what: str = "message") -> dict[str, Any]:
    obj = loads_strict(data, max_bytes, what)
    if not isinstance(obj, dict):
        raise ProtocolError(f"{what} must be a JSON object, got {type(obj).__name__}")
    return obj


def dumps(obj: Any) -> bytes:
    """Compact, sorted, ASCII-safe JSON; NaN refused so we never emit what we would reject."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("utf-8")


@dataclass(frozen=True)
class Topics:
    """Builds and parses topic names under one prefix (one fleet)."""

    prefix: str = DEFAULT_PREFIX

    def dev(self, device: str, leaf: str) -> str:
        return f"{self.prefix}/dev/{device}/{leaf}"

    def state(self, device: str) -> str:
        return self.dev(device, "state")

    def trust(self) -> str:
        """The fleet's signed trust file, retained (``edgekit keys trust publish``)."""
        return f"{self.prefix}/trust"

    def hb(self, device: str) -> str:
        return self.dev(device, "hb")

    def reported(self, device: str) -> str:
        return self.dev(device, "reported")

    def events(self, device: str) -> str:
        return self.dev(device, "events")

    def drift(self, device: str) -> str:
        return self.dev(device, "drift")

    def desired_device(self, device: str) -> str:
        return self.dev(device, "desired")

    def cmd(self, device: str) -> str:
        return self.dev(device, "cmd")

    def resent(self, device: str) -> str:
        return self.dev(device, "resent")

    def samples(self, device: str) -> str:
        return self.dev(device, "samples")

    def desired_group(self, group: str) -> str:
        return f"{self.prefix}/group/{group}/desired"

    def bundle_manifest(self, name: str, version: int) -> str:
        return f"{self.prefix}/bundle/{name}/{version}/manifest"

    def bundle_chunk(self, name: str, version: int, index: int) -> str:
        return f"{self.prefix}/bundle/{name}/{version}/chunk/{index}"

    def all_devices(self, leaf: str) -> str:
        return f"{self.prefix}/dev/+/{leaf}"

    def parse_device_topic(self, topic: str) -> tuple[str, str] | None:
        """``{p}/dev/{d}/{leaf}`` -> (device, leaf); None for anything else."""
        head = f"{self.prefix}/dev/"
        if not topic.startswith(head):
            return None
        rest = topic[len(head) :].split("/")
        if len(rest) != 2:
            return None
        return rest[0], rest[1]

    def parse_manifest_topic(self, topic: str) -> tuple[str, int] | None:
        """``{p}/bundle/{name}/{version}/manifest`` -> (name, version); None otherwise."""
        head = f"{self.prefix}/bundle/"
        if not topic.startswith(head):
            return None
        parts = topic[len(head) :].split("/")
        if len(parts) != 3 or parts[2] != "manifest" or not parts[1].isdigit():
            return None
        return parts[0], int(parts[1])

    def parse_chunk_topic(self, topic: str) -> tuple[str, int, int] | None:
        """``{p}/bundle/{name}/{version}/chunk/{i}`` -> (name, version, i); None otherwise."""
        head = f"{self.prefix}/bundle/"
        if not topic.startswith(head):
            return None
        parts = topic[len(head) :].split("/")
        if len(parts) != 4 or parts[2] != "chunk":
            return None
        try:
            return parts[0], int(parts[1]), int(parts[3])
        except ValueError:
            return None


# Message field helpers: decode with types checked, so callers never KeyError on hostile input.


def req_str(obj: Mapping[str, Any], key: str, what: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise ProtocolError(f"{what}: field {key!r} must be a string")
    return value


def req_int(obj: Mapping[str, Any], key: str, what: str, minimum: int = 0) -> int:
    value = obj.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ProtocolError(f"{what}: field {key!r} must be an integer >= {minimum}")
    return value


def req_num(obj: Mapping[str, Any], key: str, what: str) -> float:
    value = obj.get(key)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ProtocolError(f"{what}: field {key!r} must be a number")
    return float(value)


def req_bool(obj: Mapping[str, Any], key: str, what: str) -> bool:
    value = obj.get(key)
    if not isinstance(value, bool):
        raise ProtocolError(f"{what}: field {key!r} must be true or false")
    return value


def req_obj(obj: Mapping[str, Any], key: str, what: str) -> dict[str, Any]:
    value = obj.get(key)
    if not isinstance(value, dict):
        raise ProtocolError(f"{what}: field {key!r} must be an object")
    return value


def req_list(obj: Mapping[str, Any], key: str, what: str) -> list[Any]:
    value = obj.get(key)
    if not isinstance(value, list):
        raise ProtocolError(f"{what}: field {key!r} must be a list")
    return value


def opt_str(obj: Mapping[str, Any], key: str, what: str) -> str | None:
    return None if obj.get(key) is None else req_str(obj, key, what)


def opt_int(obj: Mapping[str, Any], key: str, what: str, minimum: int = 0) -> int | None:
    return None if obj.get(key) is None else req_int(obj, key, what, minimum)


def opt_num(obj: Mapping[str, Any], key: str, what: str) -> float | None:
    return None if obj.get(key) is None else req_num(obj, key, what)


def str_list(obj: Mapping[str, Any], key: str, what: str) -> tuple[str, ...]:
    """An optional list of strings (absent = empty)."""
    value = obj.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ProtocolError(f"{what}: field {key!r} must be a list of strings")
    return tuple(value)


def int_map(obj: Mapping[str, Any], key: str, what: str) -> dict[str, int]:
    """An optional object of integer counts (absent = empty)."""
    value = obj.get(key, {})
    if not isinstance(value, dict) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value.values()):
        raise ProtocolError(f"{what}: field {key!r} must be an object of integers")
    return dict(value)


def check_format(obj: Mapping[str, Any], what: str) -> None:
    fmt = obj.get("format")
    if type(fmt) is not int:
        raise ProtocolError(f"{what}: field 'format' must be an integer")
    if fmt != FORMAT:
        raise ProtocolError(f"{what} has format {fmt}; this version reads format {FORMAT}: upgrade it")


# ── documents ─────────────────────────────────────────────────────────────────────────


class Document:
    """A top-level wire document: JSON with a ``format``, bytes via :func:`dumps`."""

    WHAT = "document"

    def to_json(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Self:
        raise NotImplementedError

    def encode(self) -> bytes:
        return dumps(self.to_json())

    @classmethod
    def decode(cls, payload: bytes | str, max_bytes: int = 1 << 20) -> Self:
        """Parse bytes from the wire; anything malformed is a :class:`ProtocolError`."""
        return cls.from_json(loads_object(payload, max_bytes, cls.WHAT))


@dataclass(frozen=True)
class BundleRef:
    """Names one bundle exactly: the version a person reads, the hash a device checks."""

    name: str
    version: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "sha256": self.sha256}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any], what: str = "bundle reference") -> BundleRef:
        return cls(
            check_id("bundle name", req_str(obj, "name", what)),
            req_int(obj, "version", what, 1),
            req_str(obj, "sha256", what),
        )

    @classmethod
    def optional(cls, obj: Mapping[str, Any], key: str, what: str) -> BundleRef | None:
        return None if obj.get(key) is None else cls.from_json(req_obj(obj, key, what), f"{what}: {key}")

    @property
    def label(self) -> str:
        return f"{self.name} v{self.version}"


def _ref_json(ref: BundleRef | None) -> dict[str, Any] | None:
    return None if ref is None else ref.to_json()


@dataclass(frozen=True)
class DesiredBundle:
    name: str
    version: int
    sha256: str
    size: int  # bytes

    @property
    def ref(self) -> BundleRef:
        return BundleRef(self.name, self.version, self.sha256)


def _opt_bool(obj: Mapping[str, Any], key: str, what: str) -> bool:
    value = obj.get(key, False)
    if not isinstance(value, bool):
        raise ProtocolError(f"{what}: '{key}' must be true or false")
    return value


@dataclass(frozen=True)
class DesiredState(Document):
    """Which bundle a device (``device:<id>``) or a group (``group:<g>``) should run.

    Signed with a deploy key (see :mod:`device_agent.trust`); ``seq`` only goes up per target,
    so a replayed older document is refused. ``expires`` (Unix seconds) bounds its life."""

    WHAT = "desired state"

    seq: int
    target: str
    bundle: DesiredBundle
    issued: float | None = None
    expires: float | None = None
    recover: bool = False  # signed by a root key: resets the device's sequence for this target

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "format": FORMAT,
            "seq": self.seq,
            "target": self.target,
            "bundle": {
                "name": self.bundle.name,
                "version": self.bundle.version,
                "sha256": self.bundle.sha256,
                "size": self.bundle.size,
            },
        }
        if self.issued is not None:
            doc["issued"] = self.issued
        if self.expires is not None:
            doc["expires"] = self.expires
        if self.recover:  # written only when set: a reader that does not know it never sees it
            doc["recover"] = True
        return doc

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Self:
        what = cls.WHAT
        check_format(obj, what)
        target = req_str(obj, "target", what)
        kind, _, ident = target.partition(":")
        if kind not in ("device", "group"):
            raise ProtocolError(f"{what}: target {target!r} must be 'device:<id>' or 'group:<id>'")
        check_id(kind, ident)
        b = req_obj(obj, "bundle", what)
        return cls(
            seq=req_int(obj, "seq", what, 1),
            target=target,
            bundle=DesiredBundle(
                check_id("bundle name", req_str(b, "name", what)),
                req_int(b, "version", what, 1),
                req_str(b, "sha256", what),
                req_int(b, "size", what, 1),
            ),
            issued=opt_num(obj, "issued", what),
            expires=opt_num(obj, "expires", what),
            recover=_opt_bool(obj, "recover", what),
        )


MAX_CHUNKS = 65_536


@dataclass(frozen=True)
class TransferInfo(Document):
    """The signed transfer document published next to a bundle's retained chunks."""

    WHAT = "transfer document"

    name: str
    version: int
    size: int  # bytes
    sha256: str
    chunk_size: int  # bytes
    chunks: tuple[str, ...]  # sha256 hex of each chunk, in order

    @classmethod
    def from_json(cls, obj: Mapping[str, Any], max_chunk_bytes: int = 1 << 62) -> Self:
        what = cls.WHAT
        check_format(obj, what)
        chunks = req_list(obj, "chunks", what)
        if not all(isinstance(c, str) for c in chunks):
            raise ProtocolError(f"{what}: chunk hashes must be strings")
        info = cls(
            name=check_id("bundle name", req_str(obj, "name", what)),
            version=req_int(obj, "version", what, 1),
            size=req_int(obj, "size", what, 1),
            sha256=req_str(obj, "sha256", what),
            chunk_size=req_int(obj, "chunk_size", what, 1),
            chunks=tuple(chunks),
        )
        expected = -(-info.size // info.chunk_size)
        if info.chunk_size > max_chunk_bytes:
            raise ProtocolError(f"{what}: chunk size {info.chunk_size} above this device's {max_chunk_bytes}")
        if len(info.chunks) != expected or expected > MAX_CHUNKS:
            raise ProtocolError(f"{what}: {len(info.chunks)} chunk hashes for {expected} chunks")
        return info

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "name": self.name,
            "version": self.version,
            "size": self.size,
            "sha256": self.sha256,
            "chunk_size": self.chunk_size,
            "chunks": list(self.chunks),
        }

    def chunk_length(self, index: int) -> int:
        if index == len(self.chunks) - 1:
            return self.size - self.chunk_size * index
        return self.chunk_size


@dataclass(frozen=True)
class DeviceState(Document):
    """Birth (online) and Will (offline), retained. ``bdseq`` rises per boot and connection,
    so a late Will from an older connection can be told apart from a fresh one."""

    WHAT = "device state"

    online: bool
    bdseq: int
    boot_id: str
    groups: tuple[str, ...] = ()
    agent: str | None = None
    active: BundleRef | None = None
    ts: float | None = None
    reason: str | None = None  # why it went offline, on a clean shutdown

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "format": FORMAT,
            "online": self.online,
            "bdseq": self.bdseq,
            "boot_id": self.boot_id,
            "groups": list(self.groups),
        }
        for key, value in (("agent", self.agent), ("ts", self.ts), ("reason", self.reason)):
            if value is not None:
                doc[key] = value
        if self.online:
            doc["active"] = _ref_json(self.active)
        return doc

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Self:
        what = cls.WHAT
        check_format(obj, what)
        return cls(
            online=req_bool(obj, "online", what),
            bdseq=req_int(obj, "bdseq", what),
            boot_id=req_str(obj, "boot_id", what),
            groups=str_list(obj, "groups", what),
            agent=opt_str(obj, "agent", what),
            active=BundleRef.optional(obj, "active", what),
            ts=opt_num(obj, "ts", what),
            reason=opt_str(obj, "reason", what),
        )


@dataclass(frozen=True)
class Latency:
    """Per-row serving latency over the most recent rows, microseconds."""

    p50_us: float
    p90_us: float
    p99_us: float

    def to_json(self) -> dict[str, Any]:
        return {"p50_us": self.p50_us, "p90_us": self.p90_us, "p99_us": self.p99_us}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any], what: str = "latency") -> Latency:
        return cls(req_num(obj, "p50_us", what), req_num(obj, "p90_us", what), req_num(obj, "p99_us", what))


@dataclass(frozen=True)
class OutboxStats:
    """The durable queue to the host: waiting, dropped beyond its bound, and write errors."""

    queued: int = 0
    dropped: int = 0
    errors: int = 0
    oversized: int = 0  # messages above the broker's packet limit, dropped and counted

    def to_json(self) -> dict[str, Any]:
        return {"queued": self.queued, "dropped": self.dropped, "errors": self.errors, "oversized": self.oversized}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any], what: str = "outbox") -> OutboxStats:
        return cls(**{k: req_int(obj, k, what) for k in ("queued", "dropped", "errors", "oversized")})


@dataclass(frozen=True)
class Progress:
    received: int  # chunks of a transfer, or good rows of a trial
    total: int

    def to_json(self) -> dict[str, Any]:
        return {"received": self.received, "total": self.total}

    @classmethod
    def optional(cls, obj: Mapping[str, Any], key: str, what: str) -> Progress | None:
        if obj.get(key) is None:
            return None
        p = req_obj(obj, key, what)
        return cls(req_int(p, "received", what), req_int(p, "total", what))


@dataclass(frozen=True)
class Resources:
    """What the agent process uses of its device, so the host can warn before the disk fills.

    ``cpu_s`` counts user + system seconds since the process started (rates come from two
    heartbeats); ``cpu_pct`` is the share of one core over about the last heartbeat interval."""

    rss_bytes: int
    cpu_s: float
    cpu_pct: float
    disk_free_bytes: int  # of the file system holding the state dir
    disk_total_bytes: int

    def to_json(self) -> dict[str, Any]:
        return {
            "rss_bytes": self.rss_bytes,
            "cpu_s": self.cpu_s,
            "cpu_pct": self.cpu_pct,
            "disk_free_bytes": self.disk_free_bytes,
            "disk_total_bytes": self.disk_total_bytes,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any], what: str = "resources") -> Resources:
        return cls(
            rss_bytes=req_int(obj, "rss_bytes", what),
            cpu_s=req_num(obj, "cpu_s", what),
            cpu_pct=req_num(obj, "cpu_pct", what),
            disk_free_bytes=req_int(obj, "disk_free_bytes", what),
            disk_total_bytes=req_int(obj, "disk_total_bytes", what),
        )


@dataclass(frozen=True)
class Stats:
    """What the serving side knows: counters (served, rejected, ...), latency, the outbox,
    what the process uses of the device, and how far a trial has got (good live rows of those
    it needs)."""

    counters: Mapping[str, int] = field(default_factory=dict)
    latency: Latency | None = None
    outbox: OutboxStats | None = None
    resources: Resources | None = None
    trial: Progress | None = None


@dataclass(frozen=True)
class Heartbeat(Document):
    """Retained, every ``interval`` seconds: the device is alive, and its counters."""

    WHAT = "heartbeat"

    ts: float
    interval: float  # seconds
    boot_id: str
    bdseq: int
    phase: Phase
    active: BundleRef | None
    stats: Stats = field(default_factory=Stats)
    seq: int | None = None  # the last sequence number given to an event or drift window this boot

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "format": FORMAT,
            "ts": self.ts,
            "interval": self.interval,
            "boot_id": self.boot_id,
            "bdseq": self.bdseq,
            "phase": str(self.phase),
            "active": _ref_json(self.active),
            "counters": dict(self.stats.counters),
            "latency": None if self.stats.latency is None else self.stats.latency.to_json(),
            "outbox": None if self.stats.outbox is None else self.stats.outbox.to_json(),
        }
        if self.stats.resources is not None:
            doc["resources"] = self.stats.resources.to_json()
        if self.seq is not None:
            doc["seq"] = self.seq
        return doc

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Self:
        what = cls.WHAT
        check_format(obj, what)
        latency = None if obj.get("latency") is None else Latency.from_json(req_obj(obj, "latency", what))
        outbox = None if obj.get("outbox") is None else OutboxStats.from_json(req_obj(obj, "outbox", what))
        resources = None
        if obj.get("resources") is not None:
            resources = Resources.from_json(req_obj(obj, "resources", what), f"{what}: resources")
        return cls(
            ts=req_num(obj, "ts", what),
            interval=req_num(obj, "interval", what),
            boot_id=req_str(obj, "boot_id", what),
            bdseq=req_int(obj, "bdseq", what),
            phase=_phase(obj, what),
            active=BundleRef.optional(obj, "active", what),
            stats=Stats(int_map(obj, "counters", what), latency, outbox, resources),
            seq=opt_int(obj, "seq", what),
        )


def _phase(obj: Mapping[str, Any], what: str) -> Phase:
    value = req_str(obj, "phase", what)
    try:
        return Phase(value)
    except ValueError:
        raise ProtocolError(f"{what}: unknown phase {value!r}") from None


@dataclass(frozen=True)
class ErrorRecord:
    """A failure kept in the ``reported`` summary: a deployment's, or the latest bad row's."""

    ts: float
    code: str
    detail: str
    sha256: str | None = None  # the bundle whose deployment failed, if it was one
    bundle: BundleRef | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "ts": self.ts,
            "code": self.code,
            "detail": self.detail,
            "sha256": self.sha256,
            "bundle": _ref_json(self.bundle),
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any], what: str = "error") -> ErrorRecord:
        return cls(
            ts=req_num(obj, "ts", what),
            code=req_str(obj, "code", what),
            detail=req_str(obj, "detail", what),
            sha256=opt_str(obj, "sha256", what),
            bundle=BundleRef.optional(obj, "bundle", what),
        )

    @classmethod
    def optional(cls, obj: Mapping[str, Any], key: str, what: str) -> ErrorRecord | None:
        return None if obj.get(key) is None else cls.from_json(req_obj(obj, key, what), f"{what}: {key}")


@dataclass(frozen=True)
class DriftSummary:
    """The latest drift window's verdict, kept in ``reported`` for status at a glance."""

    ts: float
    bundle: BundleRef
    verdict: str | None
    drifted: tuple[str, ...]
    n: int | None

    def to_json(self) -> dict[str, Any]:
        return {
            "ts": self.ts,
            "bundle": self.bundle.to_json(),
            "verdict": self.verdict,
            "drifted": list(self.drifted),
            "n": self.n,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any], what: str = "drift summary") -> DriftSummary:
        return cls(
            ts=req_num(obj, "ts", what),
            bundle=BundleRef.from_json(req_obj(obj, "bundle", what), what),
            verdict=opt_str(obj, "verdict", what),
            drifted=str_list(obj, "drifted", what),
            n=opt_int(obj, "n", what),
        )


@dataclass(frozen=True)
class Reported(Document):
    """Retained: what a late subscriber needs to know about the device's deployments."""

    WHAT = "reported state"

    ts: float
    boot_id: str
    agent: str
    phase: Phase
    active: BundleRef | None = None
    previous: BundleRef | None = None
    desired: BundleRef | None = None
    progress: Progress | None = None  # chunks received of the bundle being downloaded
    trial: Progress | None = None  # good live rows of those the bundle on trial needs
    last_error: ErrorRecord | None = None  # why the last deployment failed
    last_runtime_error: ErrorRecord | None = None  # the latest bad row, message or trust problem
    last_drift: DriftSummary | None = None
    failures: Mapping[str, int] = field(default_factory=dict)  # code -> count since boot
    suppressed: Mapping[str, int] = field(default_factory=dict)  # code -> events not sent (rate limit)
    counters: Mapping[str, int] = field(default_factory=dict)
    clock_untrusted: bool = False  # the device's clock is behind the newest signed time it has seen

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "format": FORMAT,
            "ts": self.ts,
            "boot_id": self.boot_id,
            "agent": self.agent,
            "phase": str(self.phase),
            "active": _ref_json(self.active),
            "previous": _ref_json(self.previous),
            "desired": _ref_json(self.desired),
            "progress": None if self.progress is None else self.progress.to_json(),
            "trial": None if self.trial is None else self.trial.to_json(),
            "last_error": None if self.last_error is None else self.last_error.to_json(),
            "last_runtime_error": None if self.last_runtime_error is None else self.last_runtime_error.to_json(),
            "last_drift": None if self.last_drift is None else self.last_drift.to_json(),
            "failures": dict(self.failures),
            "suppressed": dict(self.suppressed),
            "counters": dict(self.counters),
        }
        if self.clock_untrusted:  # written only when true: older hosts never see it
            doc["clock_untrusted"] = True
        return doc

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Self:
        what = cls.WHAT
        check_format(obj, what)
        drift = None if obj.get("last_drift") is None else DriftSummary.from_json(req_obj(obj, "last_drift", what))
        return cls(
            ts=req_num(obj, "ts", what),
            boot_id=req_str(obj, "boot_id", what),
            agent=req_str(obj, "agent", what),
            phase=_phase(obj, what),
            active=BundleRef.optional(obj, "active", what),
            previous=BundleRef.optional(obj, "previous", what),
            desired=BundleRef.optional(obj, "desired", what),
            progress=Progress.optional(obj, "progress", what),
            trial=Progress.optional(obj, "trial", what),
            last_error=ErrorRecord.optional(obj, "last_error", what),
            last_runtime_error=ErrorRecord.optional(obj, "last_runtime_error", what),
            last_drift=drift,
            failures=int_map(obj, "failures", what),
            suppressed=int_map(obj, "suppressed", what),
            counters=int_map(obj, "counters", what),
            clock_untrusted=obj.get("clock_untrusted") is True,
        )


EVENT_KINDS = ("failure", "lifecycle")


@dataclass(frozen=True)
class DeviceEvent(Document):
    """A failure (code from :mod:`device_agent.errors`) or a lifecycle milestone, delivered
    at least once through the outbox; ``id`` (boot and sequence) makes it idempotent."""

    WHAT = "event"

    id: str
    boot_id: str
    seq: int
    ts: float
    device: str
    kind: str  # "failure" | "lifecycle"
    code: str
    detail: str
    bundle: BundleRef | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "id": self.id,
            "boot_id": self.boot_id,
            "seq": self.seq,
            "ts": self.ts,
            "device": self.device,
            "kind": self.kind,
            "code": self.code,
            "detail": self.detail,
            "bundle": _ref_json(self.bundle),
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Self:
        what = cls.WHAT
        check_format(obj, what)
        kind = req_str(obj, "kind", what)
        if kind not in EVENT_KINDS:
            raise ProtocolError(f"{what}: kind {kind!r} must be one of {list(EVENT_KINDS)}")
        return cls(
            id=req_str(obj, "id", what),
            boot_id=req_str(obj, "boot_id", what),
            seq=req_int(obj, "seq", what, 1),
            ts=req_num(obj, "ts", what),
            device=check_id("device id", req_str(obj, "device", what)),
            kind=kind,
            code=req_str(obj, "code", what),
            detail=req_str(obj, "detail", what),
            bundle=BundleRef.optional(obj, "bundle", what),
        )


@dataclass(frozen=True)
class DriftMessage(Document):
    """One window of drift statistics (the ``window`` object is :meth:`DriftWindow.report`'s
    output, defined in :mod:`device_agent.drift`), delivered through the outbox."""

    WHAT = "drift window"

    id: str
    boot_id: str
    seq: int
    ts: float
    device: str
    bundle: BundleRef
    window: Mapping[str, Any]

    @property
    def verdict(self) -> str | None:
        value = self.window.get("verdict")
        return value if isinstance(value, str) else None

    @property
    def drifted(self) -> tuple[str, ...]:
        return str_list(self.window, "drifted", self.WHAT)

    @property
    def n(self) -> int | None:
        return opt_int(self.window, "n", self.WHAT)

    def summary(self) -> DriftSummary:
        return DriftSummary(self.ts, self.bundle, self.verdict, self.drifted, self.n)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "id": self.id,
            "boot_id": self.boot_id,
            "seq": self.seq,
            "ts": self.ts,
            "device": self.device,
            "bundle": self.bundle.to_json(),
            "window": dict(self.window),
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Self:
        what = cls.WHAT
        check_format(obj, what)
        window = req_obj(obj, "window", what)
        str_list(window, "drifted", what)
        opt_int(window, "n", what)
        opt_str(window, "verdict", what)
        return cls(
            id=req_str(obj, "id", what),
            boot_id=req_str(obj, "boot_id", what),
            seq=req_int(obj, "seq", what, 1),
            ts=req_num(obj, "ts", what),
            device=check_id("device id", req_str(obj, "device", what)),
            bundle=BundleRef.from_json(req_obj(obj, "bundle", what), what),
            window=window,
        )


# ── commands to a device, and its answers ─────────────────────────────────────────────

COMMAND_KINDS = ("resend",)
MAX_RANGES = 256  # ranges in one resend request or reply


def _ranges(obj: Mapping[str, Any], key: str, what: str) -> tuple[tuple[int, int], ...]:
    """Inclusive ``[[first, last], ...]`` ranges of sequence numbers (absent = none)."""
    value = obj.get(key, [])
    if not isinstance(value, list) or len(value) > MAX_RANGES:
        raise ProtocolError(f"{what}: field {key!r} must be a list of at most {MAX_RANGES} [first, last] ranges")
    out = []
    for item in value:
        if (
            not isinstance(item, list)
            or len(item) != 2
            or not all(type(v) is int for v in item)
            or not 1 <= item[0] <= item[1]
        ):
            raise ProtocolError(f"{what}: field {key!r}: {item!r} is not a [first, last] range with 1 <= first <= last")
        out.append((item[0], item[1]))
    return tuple(out)


def ranges_json(ranges: tuple[tuple[int, int], ...]) -> list[list[int]]:
    return [[first, last] for first, last in ranges]


def to_ranges(seqs: Iterable[int]) -> tuple[tuple[int, int], ...]:
    """Sorted, merged inclusive ranges of a set of sequence numbers."""
    out: list[tuple[int, int]] = []
    for seq in sorted(set(seqs)):
        if out and seq == out[-1][1] + 1:
            out[-1] = (out[-1][0], seq)
        else:
            out.append((seq, seq))
    return tuple(out)


def range_count(ranges: tuple[tuple[int, int], ...]) -> int:
    return sum(last - first + 1 for first, last in ranges)


@dataclass(frozen=True)
class ResendRequest:
    """Publish again the events and drift windows of boot ``boot_id`` with these sequence numbers."""

    boot_id: str
    ranges: tuple[tuple[int, int], ...]

    def to_json(self) -> dict[str, Any]:
        return {"boot_id": self.boot_id, "ranges": ranges_json(self.ranges)}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any], what: str = "resend request") -> ResendRequest:
        return cls(req_str(obj, "boot_id", what), _ranges(obj, "ranges", what))


@dataclass(frozen=True)
class Command(Document):
    """A request to one device on ``dev/{d}/cmd`` (QoS 1, never retained).

    ``kind`` names the request and its body; a kind this agent does not know is refused with
    a message saying to upgrade. Unsigned for now: the only command, ``resend``, makes a device
    publish again what it already published, so a forged one costs bandwidth, not safety
    (and the device rate-limits it)."""

    WHAT = "command"

    id: str
    ts: float
    device: str
    resend: ResendRequest

    @property
    def kind(self) -> str:
        return "resend"

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "id": self.id,
            "ts": self.ts,
            "device": self.device,
            "kind": self.kind,
            "resend": self.resend.to_json(),
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Self:
        what = cls.WHAT
        check_format(obj, what)
        kind = req_str(obj, "kind", what)
        if kind not in COMMAND_KINDS:
            known = list(COMMAND_KINDS)
            raise ProtocolError(f"{what}: kind {kind!r} is unknown to this agent (known: {known}): upgrade it")
        return cls(
            id=req_str(obj, "id", what),
            ts=req_num(obj, "ts", what),
            device=check_id("device id", req_str(obj, "device", what)),
            resend=ResendRequest.from_json(req_obj(obj, "resend", what), f"{what}: resend"),
        )


@dataclass(frozen=True)
class ResendReply(Document):
    """The device's answer to a resend command, on ``dev/{d}/resent`` (QoS 1, not retained).

    Of the sequence numbers asked for: ``requeued`` were found in the outbox history and are
    on their way again, ``queued`` have not been delivered yet and will come anyway, and
    ``missing`` are gone for good (past the history's bound, dropped from a full outbox, or
    never sent): the host can stop waiting for them."""

    WHAT = "resend reply"

    command: str  # the command's id
    ts: float
    device: str
    boot_id: str
    requeued: tuple[tuple[int, int], ...] = ()
    queued: tuple[tuple[int, int], ...] = ()
    missing: tuple[tuple[int, int], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "command": self.command,
            "ts": self.ts,
            "device": self.device,
            "boot_id": self.boot_id,
            "requeued": ranges_json(self.requeued),
            "queued": ranges_json(self.queued),
            "missing": ranges_json(self.missing),
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Self:
        what = cls.WHAT
        check_format(obj, what)
        return cls(
            command=req_str(obj, "command", what),
            ts=req_num(obj, "ts", what),
            device=check_id("device id", req_str(obj, "device", what)),
            boot_id=req_str(obj, "boot_id", what),
            requeued=_ranges(obj, "requeued", what),
            queued=_ranges(obj, "queued", what),
            missing=_ranges(obj, "missing", what),
        )


# ── captured rows: the signed request and the device's answer ──────────────────────────

SAMPLE_KINDS = ("low", "uniform")
MAX_SAMPLE_VALUES = 4096  # values in one captured row


@dataclass(frozen=True)
class SampleRow:
    """One captured row: when, which bundle (``name@version``) answered, why it was kept
    (``low`` confidence or the ``uniform`` sample), the answer, and the row as served."""

    ts: float
    bundle: str
    kind: str
    prediction: Any
    confidence: float | None
    row: tuple[Any, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "t": self.ts,
            "b": self.bundle,
            "k": self.kind,
            "p": self.prediction,
            "c": self.confidence,
            "x": list(self.row),
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any], what: str = "sample row") -> SampleRow:
        kind = req_str(obj, "k", what)
        if kind not in SAMPLE_KINDS:
            raise ProtocolError(f"{what}: kind {kind!r} must be one of {list(SAMPLE_KINDS)}")
        row = req_list(obj, "x", what)
        if len(row) > MAX_SAMPLE_VALUES or not all(v is None or isinstance(v, (str, int, float)) for v in row):
            raise ProtocolError(f"{what}: field 'x' must be a list of numbers, strings or nulls")
        prediction = obj.get("p")
        if not (prediction is None or isinstance(prediction, (str, int, float))):
            raise ProtocolError(f"{what}: field 'p' must be a number or a string")
        return cls(
            ts=req_num(obj, "t", what),
            bundle=req_str(obj, "b", what),
            kind=kind,
            prediction=prediction,
            confidence=opt_num(obj, "c", what),
            row=tuple(row),
        )


@dataclass(frozen=True)
class SamplesRequest(Document):
    """Ask one device for its captured rows (signed with a deploy key, domain
    ``edgekit-samples-v1``, on ``dev/{d}/cmd``). ``id`` makes it answered once; ``expires``
    (Unix seconds) bounds its life; ``since`` (Unix seconds) leaves older rows out;
    ``max_rows`` keeps the newest that many."""

    WHAT = "samples request"

    id: str
    device: str
    issued: float
    expires: float
    since: float | None = None
    max_rows: int | None = None

    @property
    def kind(self) -> str:
        return "samples"

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "format": FORMAT,
            "kind": self.kind,
            "id": self.id,
            "device": self.device,
            "issued": self.issued,
            "expires": self.expires,
        }
        if self.since is not None:
            doc["since"] = self.since
        if self.max_rows is not None:
            doc["max_rows"] = self.max_rows
        return doc

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Self:
        what = cls.WHAT
        check_format(obj, what)
        if obj.get("kind") != "samples":
            raise ProtocolError(f"{what}: kind must be 'samples'")
        return cls(
            id=check_id("request id", req_str(obj, "id", what)),
            device=check_id("device id", req_str(obj, "device", what)),
            issued=req_num(obj, "issued", what),
            expires=req_num(obj, "expires", what),
            since=opt_num(obj, "since", what),
            max_rows=opt_int(obj, "max_rows", what, 1),
        )


@dataclass(frozen=True)
class SamplesReply(Document):
    """One part of a device's answer to a samples request, on ``dev/{d}/samples`` (QoS 1,
    not retained). ``parts`` says how many to wait for; ``bundles`` names, per
    ``name@version`` the rows cite, the bundle's hash and feature names; ``capturing`` says
    whether the device captures at all (an empty answer from a device that does not is no
    evidence of confident predictions)."""

    WHAT = "samples reply"

    request: str
    ts: float
    device: str
    part: int
    parts: int
    total: int
    rows: tuple[SampleRow, ...] = ()
    bundles: Mapping[str, Any] = field(default_factory=dict)
    skipped: int = 0  # rows larger than a whole message, left out
    capturing: bool = True

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "request": self.request,
            "ts": self.ts,
            "device": self.device,
            "part": self.part,
            "parts": self.parts,
            "total": self.total,
            "skipped": self.skipped,
            "capturing": self.capturing,
            "bundles": dict(self.bundles),
            "rows": [r.to_json() for r in self.rows],
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Self:
        what = cls.WHAT
        check_format(obj, what)
        part, parts = req_int(obj, "part", what, 1), req_int(obj, "parts", what, 1)
        if part > parts:
            raise ProtocolError(f"{what}: part {part} of {parts}")
        rows = req_list(obj, "rows", what)
        if not all(isinstance(r, dict) for r in rows):
            raise ProtocolError(f"{what}: rows must be objects")
        return cls(
            request=req_str(obj, "request", what),
            ts=req_num(obj, "ts", what),
            device=check_id("device id", req_str(obj, "device", what)),
            part=part,
            parts=parts,
            total=req_int(obj, "total", what),
            rows=tuple(SampleRow.from_json(r, f"{what}: row") for r in rows),
            bundles=req_obj(obj, "bundles", what),
            skipped=req_int(obj, "skipped", what),
            capturing=req_bool(obj, "capturing", what),
        )
