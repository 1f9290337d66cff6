"""Clearing retained bundle topics that no device needs any more.

The broker is the bundle store, so old versions would stay on it forever. A version is
kept while any device reports it as active, previous (the rollback target) or desired, or
while any retained desired-state document (device or group) points at it; everything else
is deleted by publishing empty retained messages. Devices that are offline are counted
through their retained reports, so an unplugged device does not lose its rollback target.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from device_agent.errors import ProtocolError
from device_agent.protocol import BundleRef, DesiredState, Reported, Topics, TransferInfo
from device_agent.trust import read_envelope_unverified

from .client import Broker, collect, connect, publish_all

Item = tuple[str, bytes, bool]


@dataclass
class GcReport:
    kept: list[dict[str, Any]] = field(default_factory=list)
    removed: list[dict[str, Any]] = field(default_factory=list)
    messages_cleared: int = 0
    bytes_freed: int = 0
    dry_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def needed_versions(messages: Iterable[Item], topics: Topics) -> dict[tuple[str, int], str]:
    """(name, version) -> why it is kept."""
    needed: dict[tuple[str, int], str] = {}

    def keep(ref: BundleRef | None, why: str) -> None:
        if ref is not None:
            needed.setdefault((ref.name, ref.version), why)

    for topic, payload, _ in messages:
        if not payload:
            continue
        parsed = topics.parse_device_topic(topic)
        try:
            if parsed is not None and parsed[1] == "reported":
                doc = Reported.decode(payload)
                for role, ref in (("active", doc.active), ("previous", doc.previous), ("desired", doc.desired)):
                    keep(ref, f"{role} on {parsed[0]}")
            elif topic.endswith("/desired"):
                desired = DesiredState.from_json(read_envelope_unverified(payload, "desired state"))
                keep(desired.bundle.ref, f"desired by {desired.target}")
        except ProtocolError:
            continue  # an unreadable document protects nothing, and is not ours to delete
    return needed


def plan_gc(
    messages: Iterable[Item],
    topics: Topics,
    dry_run: bool = False,
    protected: dict[tuple[str, int], str] | None = None,
) -> tuple[GcReport, list[Item]]:
    """What to delete, given every retained message under the fleet's prefix and the versions
    the registry protects (production, staging): the report and the empty retained messages
    that clear the versions no one needs."""
    messages = list(messages)
    report = GcReport(dry_run=dry_run)
    needed = {**(protected or {}), **needed_versions(messages, topics)}
    clear: list[Item] = []
    for topic, payload, retained in messages:
        where = topics.parse_manifest_topic(topic)
        if not retained or not payload or where is None:
            continue
        name, version = where
        try:
            info: TransferInfo | None = TransferInfo.from_json(read_envelope_unverified(payload, "transfer document"))
        except ProtocolError:
            info = None  # a damaged transfer document: its chunks are unknown, the document still goes
        entry = {
            "name": name,
            "version": version,
            "size": info.size if info else None,
            "chunks": len(info.chunks) if info else 0,
        }
        why = needed.get((name, version))
        if why is not None:
            report.kept.append({**entry, "why": why})
            continue
        report.removed.append(entry)
        report.bytes_freed += info.size if info else 0
        clear += [(topics.bundle_chunk(name, version, i), b"", True) for i in range(len(info.chunks) if info else 0)]
        clear.append((topics.bundle_manifest(name, version), b"", True))
    report.messages_cleared = len(clear)
    return report, clear


def collect_garbage(
    broker: Broker, prefix: str, dry_run: bool = False, protected: dict[tuple[str, int], str] | None = None
) -> GcReport:
    topics = Topics(prefix)
    with connect(broker, purpose="gc") as conn:
        messages = collect(
            conn,
            [
                topics.all_devices("reported"),
                topics.all_devices("desired"),
                f"{prefix}/group/+/desired",
                f"{prefix}/bundle/+/+/manifest",
            ],
            settle=0.4,
        )
        report, clear = plan_gc(messages, topics, dry_run, protected)
        if clear and not dry_run:
            publish_all(conn, clear)
    return report
