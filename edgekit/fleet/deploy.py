"""Deploying a bundle: publish it once as retained chunks, then point devices at it.

The broker is the bundle store (retained messages), so no daemon is needed and a device
that is offline now pulls the bundle when it returns. The desired-state document is
signed with a ``deploy`` key and carries a sequence number that only goes up.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device_agent.bundle import read_unverified, verify
from device_agent.errors import AgentError
from device_agent.protocol import Topics, check_id, loads_object
from device_agent.transfer import TransferInfo, split
from device_agent.trust import DESIRED_DOMAIN, TRANSFER_DOMAIN, Trust, seal

from ..errors import FleetError
from .client import Connection, collect, connect, publish_all

DEFAULT_CHUNK = 256 * 1024  # bytes
PACKET_OVERHEAD = 1024  # bytes kept free for topic and properties under the broker's packet limit


@dataclass(frozen=True)
class Target:
    device: str | None = None
    group: str | None = None

    def __post_init__(self) -> None:
        if (self.device is None) == (self.group is None):
            raise FleetError("deploy to exactly one of --device or --group")
        check_id("device id" if self.device else "group", self.device or self.group or "")

    @property
    def label(self) -> str:
        return f"device:{self.device}" if self.device else f"group:{self.group}"

    def topic(self, topics: Topics) -> str:
        return topics.desired_device(self.device) if self.device else topics.desired_group(self.group or "")


@dataclass(frozen=True)
class DeployResult:
    name: str
    version: int
    sha256: str
    size: int
    chunks: int
    chunk_size: int
    target: str
    seq: int
    seconds: float
    published: int = 0  # messages published; fewer than chunks + 1 when the broker already had them
    outcome: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def chunk_size_for(max_packet: int | None, wanted: int = DEFAULT_CHUNK) -> int:
    """paho does not enforce the broker's Maximum Packet Size; an oversized QoS 1 publish
    makes it reconnect in a loop, so we size chunks below the limit ourselves."""
    if max_packet:
        return max(1024, min(wanted, max_packet - PACKET_OVERHEAD))
    return wanted


def retained(conn: Connection, topic_filter: str) -> dict[str, bytes]:
    """Every retained message under a topic filter, by topic (empty payloads are deletions)."""
    return {t: p for t, p, r in collect(conn, [topic_filter], settle=0.3) if r and p}


def publish_bundle(
    conn: Connection,
    topics: Topics,
    data: bytes,
    name: str,
    version: int,
    bundle_key: Ed25519PrivateKey,
    chunk_size: int = DEFAULT_CHUNK,
    repair: bool = True,
) -> tuple[TransferInfo, int]:
    """Retain the bundle's chunks and its signed transfer document on the broker.

    Idempotent: with ``repair`` the retained copy is read back first and only what is
    missing or different is published, so deploying again costs almost nothing and mends
    a broker that lost part of a bundle. Returns the transfer info and how many messages
    were published.
    """
    size = chunk_size_for(conn.max_packet_size, chunk_size)
    parts = split(data, size)
    sha = hashlib.sha256(data).hexdigest()
    info = TransferInfo(name, version, len(data), sha, size, tuple(hashlib.sha256(p).hexdigest() for p in parts))
    doc = seal(bundle_key, TRANSFER_DOMAIN, info.to_json())  # Ed25519 is deterministic: same bytes each time
    have = retained(conn, f"{topics.prefix}/bundle/{name}/{version}/#") if repair else {}
    items = [
        (topics.bundle_chunk(name, version, i), p, True)
        for i, p in enumerate(parts)
        if have.get(topics.bundle_chunk(name, version, i)) != p
    ]
    wanted = {topics.bundle_chunk(name, version, i) for i in range(len(parts))}
    wanted.add(topics.bundle_manifest(name, version))
    items += [(t, b"", True) for t in have if t not in wanted]  # chunks of an older chunking
    if have.get(topics.bundle_manifest(name, version)) != doc:
        items.append((topics.bundle_manifest(name, version), doc, True))  # last: chunks are in place first
    publish_all(conn, items)
    return info, len(items)


def publish_desired(
    conn: Connection, topics: Topics, target: Target, info: TransferInfo, deploy_key: Ed25519PrivateKey
) -> int:
    """Point the target at a published bundle with a signed, ever-increasing desired state."""
    seq = time.time_ns() // 1000  # microseconds: increases across hosts without shared state
    desired = {
        "seq": seq,
        "target": target.label,
        "bundle": {"name": info.name, "version": info.version, "sha256": info.sha256, "size": info.size},
        "issued": time.time(),
    }
    publish_all(conn, [(target.topic(topics), seal(deploy_key, DESIRED_DOMAIN, desired), True)])
    return seq


def deploy(
    broker: str,
    prefix: str,
    bundle_path: Path,
    target: Target,
    bundle_key: Ed25519PrivateKey,
    deploy_key: Ed25519PrivateKey,
    trust: Trust | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    wait: float = 0.0,
    progress: Callable[[str], None] = lambda _m: None,
) -> DeployResult:
    """Publish a bundle and point ``target`` at it; with ``trust``, first verify it as a device would."""
    started = time.monotonic()
    data = bundle_path.read_bytes()
    try:
        if trust is not None:
            vb = verify(data, trust, now=time.time())
            name, version = vb.name, vb.version
        else:
            manifest, _ = read_unverified(data)
            name, version = str(manifest.get("name")), int(manifest.get("version", 0))
    except AgentError as exc:
        raise FleetError(f"{bundle_path} would be refused by devices: {exc.code}: {exc.detail}") from None
    topics = Topics(prefix)
    with connect(broker, purpose="deploy") as conn:
        progress(f"publishing {name} v{version} ({len(data)} bytes)")
        info, published = publish_bundle(conn, topics, data, name, version, bundle_key, chunk_size)
        seq = publish_desired(conn, topics, target, info, deploy_key)
        progress(f"desired state seq {seq} -> {target.label}")
        outcome = wait_for(conn, topics, target, info.sha256, wait, progress) if wait > 0 else None
    return DeployResult(
        name,
        version,
        info.sha256,
        len(data),
        len(info.chunks),
        info.chunk_size,
        target.label,
        seq,
        round(time.monotonic() - started, 3),
        published,
        outcome,
    )


def wait_for(
    conn: Any, topics: Topics, target: Target, sha: str, timeout: float, progress: Callable[[str], None]
) -> dict[str, Any]:
    """Watch the retained 'reported' documents until the targeted devices are active or failed."""
    deadline = time.monotonic() + timeout
    outcome: dict[str, Any] = {}
    while time.monotonic() < deadline:
        members = _members(conn, topics, target)
        for topic, payload, _ in collect(conn, [topics.all_devices("reported")], settle=0.3, max_wait=2.0):
            parsed = topics.parse_device_topic(topic)
            if parsed is None or parsed[0] not in members:
                continue
            try:
                doc = loads_object(payload)
            except AgentError:
                continue
            active = doc.get("active") or {}
            err = doc.get("last_error") or {}
            if active.get("sha256") == sha:
                outcome[parsed[0]] = "active"
            elif doc.get("phase") == "failed" and err.get("sha256") == sha:
                outcome[parsed[0]] = f"failed: {err.get('code')}: {err.get('detail')}"
            else:  # still on its way (its phase may read "active": that is the old bundle)
                outcome[parsed[0]] = f"pending ({doc.get('phase')})"
        done = [d for d, s in outcome.items() if s == "active" or s.startswith("failed")]
        if members and len(done) == len(members):
            break
        progress(f"waiting: {len(done)}/{len(members) or '?'} devices done")
        time.sleep(0.5)
    return outcome


def _members(conn: Any, topics: Topics, target: Target) -> set[str]:
    if target.device:
        return {target.device}
    found = set()
    for topic, payload, _ in collect(conn, [topics.all_devices("state")], settle=0.2, max_wait=2.0):
        parsed = topics.parse_device_topic(topic)
        try:
            doc = loads_object(payload)
        except AgentError:
            continue
        if parsed and target.group in (doc.get("groups") or []):
            found.add(parsed[0])
    return found
