"""Clearing retained bundle topics that no device needs any more.

The broker is the bundle store, so old versions would stay on it forever. A version is
kept while any device reports it as active, previous (the rollback target) or desired, or
while any retained desired-state document (device or group) points at it; everything else
is deleted by publishing empty retained messages. Devices that are offline are counted
through their retained reports, so an unplugged device does not lose its rollback target.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from device_agent.errors import AgentError
from device_agent.protocol import Topics, loads_object

from .client import collect, connect, publish_all


@dataclass
class GcReport:
    kept: list[dict[str, Any]] = field(default_factory=list)
    removed: list[dict[str, Any]] = field(default_factory=list)
    messages_cleared: int = 0
    bytes_freed: int = 0
    dry_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _json(payload: bytes) -> dict[str, Any] | None:
    try:
        return loads_object(payload)
    except AgentError:
        return None


def _envelope_body(payload: bytes) -> dict[str, Any]:
    """The JSON body of a signed envelope (desired state, transfer document), read but not
    verified: gc only decides what to delete from our own broker."""
    outer = _json(payload)
    body = outer.get("body") if outer else None
    doc = _json(body.encode("utf-8")) if isinstance(body, str) else None
    return doc or {}


def needed_versions(messages: list[tuple[str, bytes, bool]], topics: Topics) -> dict[tuple[str, int], str]:
    """(name, version) -> why it is kept."""
    needed: dict[tuple[str, int], str] = {}

    def keep(ref: Any, why: str) -> None:
        if isinstance(ref, dict) and isinstance(ref.get("name"), str) and isinstance(ref.get("version"), int):
            needed.setdefault((ref["name"], ref["version"]), why)

    for topic, payload, _ in messages:
        parsed = topics.parse_device_topic(topic)
        if parsed is not None and parsed[1] == "reported":
            doc = _json(payload) or {}
            for role in ("active", "previous", "desired"):
                keep(doc.get(role), f"{role} on {parsed[0]}")
        elif topic.endswith("/desired"):
            keep(
                _envelope_body(payload).get("bundle"), f"desired by {topic[len(topics.prefix) + 1 : -len('/desired')]}"
            )
    return needed


def collect_garbage(broker: str, prefix: str, dry_run: bool = False) -> GcReport:
    topics = Topics(prefix)
    report = GcReport(dry_run=dry_run)
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
        needed = needed_versions(messages, topics)
        clear: list[tuple[str, bytes, bool]] = []
        for topic, payload, retained in messages:
            parts = topic[len(prefix) + 1 :].split("/")
            if not retained or not payload or len(parts) != 4 or parts[0] != "bundle" or parts[3] != "manifest":
                continue
            name, version = parts[1], int(parts[2]) if parts[2].isdigit() else -1
            body = _envelope_body(payload)
            chunks: list[Any] = body["chunks"] if isinstance(body.get("chunks"), list) else []
            entry = {"name": name, "version": version, "size": body.get("size"), "chunks": len(chunks)}
            why = needed.get((name, version))
            if why is not None:
                report.kept.append({**entry, "why": why})
                continue
            report.removed.append(entry)
            report.bytes_freed += int(body.get("size") or 0)
            clear += [(topics.bundle_chunk(name, version, i), b"", True) for i in range(len(chunks))]
            clear.append((topics.bundle_manifest(name, version), b"", True))
        report.messages_cleared = len(clear)
        if clear and not dry_run:
            publish_all(conn, clear)
    return report
