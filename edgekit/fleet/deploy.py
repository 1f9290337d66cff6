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
from typing import Any, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device_agent.bundle import read_unverified, verify
from device_agent.errors import AgentError, ProtocolError
from device_agent.protocol import DesiredBundle, DesiredState, DeviceState, Reported, Topics, TransferInfo, check_id
from device_agent.transfer import split
from device_agent.trust import DESIRED_DOMAIN, TRANSFER_DOMAIN, Trust, seal

from ..errors import FleetError, UsageError
from .client import Broker, Connection, collect, connect, publish_all
from .verify import UNVERIFIED, TelemetryCheck

DEFAULT_CHUNK = 256 * 1024  # bytes
PACKET_OVERHEAD = 1024  # bytes kept free for topic and properties under the broker's packet limit


@dataclass(frozen=True)
class Target:
    device: str | None = None
    group: str | None = None

    def __post_init__(self) -> None:
        if (self.device is None) == (self.group is None):
            raise UsageError("deploy to exactly one of --device or --group", "e.g. --group plant-a")
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
    waited: float = 0.0  # seconds the deploy was allowed to wait for the devices

    @property
    def succeeded(self) -> bool | None:
        """None when the deploy did not wait; else whether every targeted device is active."""
        return None if self.outcome is None else succeeded(self.outcome)

    @property
    def note(self) -> str | None:
        """Why a deploy that waited did not succeed, in words a person can act on."""
        if self.outcome is None or self.succeeded:
            return None
        if not self.outcome:
            return (
                f"no device of {self.target} reported within {self.waited:.0f} s: check the device id or group, "
                "and that its agents are running and connected to this broker"
            )
        failed = sorted(d for d, s in self.outcome.items() if s.startswith("failed"))
        pending = sorted(d for d, s in self.outcome.items() if s.startswith("pending"))
        unverified = sorted(d for d, s in self.outcome.items() if s.startswith("unverified"))
        parts = []
        if unverified:
            parts.append(
                f"{len(unverified)} device(s) answered with reports their telemetry key did not sign "
                f"({', '.join(unverified[:5])}): not counted; see edgekit fleet status"
            )
        if failed:
            parts.append(f"{len(failed)} device(s) refused or failed the bundle ({', '.join(failed[:5])})")
        if pending:
            parts.append(f"{len(pending)} device(s) not done within {self.waited:.0f} s ({', '.join(pending[:5])})")
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "succeeded": self.succeeded, "note": self.note}


def chunk_size_for(max_packet: int | None, wanted: int = DEFAULT_CHUNK) -> int:
    """paho does not enforce the broker's Maximum Packet Size; an oversized QoS 1 publish
    makes it reconnect in a loop, so we size chunks below the limit ourselves."""
    if max_packet:
        return max(1024, min(wanted, max_packet - PACKET_OVERHEAD))
    return wanted


def retained(conn: Connection, topic_filter: str) -> dict[str, bytes]:
    """Every retained message under a topic filter, by topic (empty payloads are deletions)."""
    return {t: p for t, p, r in collect(conn, [topic_filter], settle=0.3) if r and p}


Item = tuple[str, bytes, bool]  # topic, payload, retain


def bundle_messages(
    topics: Topics,
    data: bytes,
    name: str,
    version: int,
    bundle_key: Ed25519PrivateKey,
    chunk_size: int,
    have: dict[str, bytes],
) -> tuple[TransferInfo, list[Item]]:
    """The retained messages that make the broker hold this bundle, given what it holds
    (``have``, by topic): only chunks missing or different, old chunks of another chunking
    cleared, and the signed transfer document last, once the chunks are in place."""
    parts = split(data, chunk_size)
    sha = hashlib.sha256(data).hexdigest()
    info = TransferInfo(name, version, len(data), sha, chunk_size, tuple(hashlib.sha256(p).hexdigest() for p in parts))
    doc = seal(bundle_key, TRANSFER_DOMAIN, info.to_json())  # Ed25519 is deterministic: same bytes each time
    items: list[Item] = [
        (topics.bundle_chunk(name, version, i), p, True)
        for i, p in enumerate(parts)
        if have.get(topics.bundle_chunk(name, version, i)) != p
    ]
    wanted = {topics.bundle_chunk(name, version, i) for i in range(len(parts))}
    wanted.add(topics.bundle_manifest(name, version))
    items += [(t, b"", True) for t in have if t not in wanted]  # chunks of an older chunking
    if have.get(topics.bundle_manifest(name, version)) != doc:
        items.append((topics.bundle_manifest(name, version), doc, True))
    return info, items


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
    have = retained(conn, f"{topics.prefix}/bundle/{name}/{version}/#") if repair else {}
    size = chunk_size_for(conn.max_packet_size, chunk_size)
    info, items = bundle_messages(topics, data, name, version, bundle_key, size, have)
    publish_all(conn, items)
    return info, len(items)


def desired_message(
    topics: Topics,
    target: Target,
    info: TransferInfo,
    deploy_key: Ed25519PrivateKey,
    now_ns: int | None = None,
    ttl_s: float | None = None,
) -> tuple[Item, DesiredState]:
    """A signed desired state pointing ``target`` at a published bundle. Its sequence number
    is the time in microseconds: it increases across hosts without shared state. It expires
    ``ttl_s`` after it is issued (default: ``freshness.DEFAULT_TTL_S``; the host re-signs it
    before then, see :mod:`edgekit.fleet.freshness`)."""
    from .freshness import DEFAULT_TTL_S

    now_ns = time.time_ns() if now_ns is None else now_ns
    doc = DesiredState(
        seq=now_ns // 1000,
        target=target.label,
        bundle=DesiredBundle(info.name, info.version, info.sha256, info.size),
        issued=now_ns / 1e9,
        expires=now_ns / 1e9 + (DEFAULT_TTL_S if ttl_s is None else ttl_s),
    )
    return (target.topic(topics), seal(deploy_key, DESIRED_DOMAIN, doc.to_json()), True), doc


def publish_desired(
    conn: Connection, topics: Topics, target: Target, info: TransferInfo, deploy_key: Ed25519PrivateKey
) -> int:
    """Point the target at a published bundle with a signed, ever-increasing desired state."""
    item, doc = desired_message(topics, target, info, deploy_key)
    publish_all(conn, [item])
    return doc.seq


def deploy(
    broker: Broker,
    prefix: str,
    bundle_path: Path,
    target: Target,
    bundle_key: Ed25519PrivateKey,
    deploy_key: Ed25519PrivateKey,
    trust: Trust | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    wait: float = 0.0,
    progress: Callable[[str], None] = lambda _m: None,
    on_outcome: Callable[[dict[str, str]], None] | None = None,
    check: TelemetryCheck | None = None,
) -> DeployResult:
    """Publish a bundle and point ``target`` at it; with ``trust``, first verify it as a device would;
    with ``check``, only reports the devices signed count towards success."""
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
        outcome = wait_for(conn, topics, target, info.sha256, wait, progress, on_outcome, check) if wait > 0 else None
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
        wait,
    )


def wait_for(
    conn: Connection,
    topics: Topics,
    target: Target,
    sha: str,
    timeout: float,
    progress: Callable[[str], None],
    on_outcome: Callable[[dict[str, str]], None] | None = None,
    check: TelemetryCheck | None = None,
) -> dict[str, Any]:
    """Watch the retained 'reported' documents until the targeted devices are active or failed;
    ``on_outcome`` sees every round's per-device states. A report that does not count (not
    signed by the enrolled device) makes its device ``unverified: why``, never ``active``."""
    deadline = time.monotonic() + timeout
    outcome: dict[str, str] = {}
    while time.monotonic() < deadline:
        state_msgs = collect(conn, [topics.all_devices("state")], settle=0.2)
        states, _ = _docs(state_msgs, topics, DeviceState, check)
        members = target_members(target, states)
        reported_msgs = collect(conn, [topics.all_devices("reported")], settle=0.3)
        reported, verdicts = _docs(reported_msgs, topics, Reported, check)
        outcome = deployment_outcome(members, reported, sha)
        for device in members:
            verdict = verdicts.get(device)
            if check is not None and verdict is not None and not check.counts(verdict):
                outcome[device] = verdict if verdict.startswith(UNVERIFIED) else f"{UNVERIFIED}: {verdict}"
        if on_outcome is not None:
            on_outcome(outcome)
        done = [d for d, s in outcome.items() if is_done(s)]
        if members and len(done) == len(members):
            break
        if on_outcome is None:
            progress(f"waiting: {len(done)}/{len(members) or '?'} devices done")
        time.sleep(0.5)
    return dict(outcome)


def is_done(state: str) -> bool:
    return state == "active" or state.startswith("failed")


def succeeded(outcome: dict[str, Any] | None) -> bool:
    """A deploy that waited succeeded when someone answered and every device is active."""
    return bool(outcome) and all(s == "active" for s in (outcome or {}).values())


def deployment_outcome(members: set[str], reported: dict[str, Reported], sha: str) -> dict[str, str]:
    """Per targeted device that has reported: ``active``, ``failed: CODE: detail``, or
    ``pending (…)`` with where it is (downloading n/N chunks, installing, trial n/N rows)."""
    return {d: device_outcome(reported[d], sha) for d in sorted(members) if d in reported}


def device_outcome(doc: Reported, sha: str) -> str:
    err = doc.last_error
    if doc.active is not None and doc.active.sha256 == sha:
        return "active"
    if doc.phase == "failed" and err is not None and err.sha256 == sha:
        return f"failed: {err.code}: {err.detail}"
    if doc.desired is None or doc.desired.sha256 != sha:
        return f"pending (has not taken the desired state; {doc.phase})"
    if doc.phase == "downloading" and doc.progress is not None:
        return f"pending (downloading {doc.progress.received}/{doc.progress.total} chunks)"
    if doc.phase == "trial" and doc.trial is not None:
        return f"pending (trial {doc.trial.received}/{doc.trial.total} rows)"
    return f"pending ({doc.phase})"


def target_members(target: Target, states: dict[str, DeviceState]) -> set[str]:
    """The devices a target names: one device, or every device whose birth lists the group."""
    if target.device:
        return {target.device}
    return {d for d, state in states.items() if target.group in state.groups}


_D = TypeVar("_D", DeviceState, Reported)


def _docs(
    messages: list[tuple[str, bytes, bool]], topics: Topics, cls: type[_D], check: TelemetryCheck | None = None
) -> tuple[dict[str, _D], dict[str, str]]:
    """Each device's document, and (with ``check``) each device's verdict on it; a document
    that is not believed is left out."""
    out: dict[str, _D] = {}
    verdicts: dict[str, str] = {}
    for topic, payload, _ in messages:
        parsed = topics.parse_device_topic(topic)
        if parsed is None or not payload:
            continue
        if check is not None:
            verdicts[parsed[0]] = verdict = check.verdict(parsed[0], topic, payload)
            if not check.believed(verdict):
                continue
        try:
            out[parsed[0]] = cls.decode(payload)
        except ProtocolError:
            continue  # a garbled document is no answer
    return out, verdicts
