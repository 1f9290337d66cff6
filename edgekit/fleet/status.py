"""Fleet status from the retained topics alone: no daemon, one subscription, a second or so.

Staleness is reported honestly: a device whose last birth said "online" but whose last
heartbeat is older than three intervals is "stale", with its age — never a stale "healthy".
Every document is read through :mod:`device_agent.protocol`; one that does not parse is
reported as unreadable on its device, never allowed to hide the rest of the fleet.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from device_agent.errors import ProtocolError
from device_agent.protocol import DesiredState, DeviceState, Document, ErrorRecord, Heartbeat, Reported, Topics

from .client import Broker, collect, connect
from .verify import OPEN, UNENROLLED, UNVERIFIED, VERIFIED, TelemetryCheck

STALE_AFTER = 3.0  # heartbeat intervals
DEFAULT_INTERVAL = 5.0  # seconds, when no heartbeat says otherwise
LEAVES: dict[str, type[Document]] = {"state": DeviceState, "reported": Reported, "hb": Heartbeat}


@dataclass
class DeviceStatus:
    device: str
    state: DeviceState | None = None
    reported: Reported | None = None
    hb: Heartbeat | None = None
    unreadable: dict[str, str] = field(default_factory=dict)  # leaf -> why its document was refused
    desired: dict[str, Any] | None = None  # the retained desired state that applies (unverified: a view)
    desired_known: bool = False  # the desired topics were read (fleet_status reads them)
    verdicts: dict[str, str] = field(default_factory=dict)  # leaf -> open, verified, unenrolled, unverified: why

    def trust(self) -> str:
        """The device's documents as a whole: open, verified, unenrolled or unverified."""
        values = set(self.verdicts.values())
        if any(v.startswith(UNVERIFIED) for v in values):
            return UNVERIFIED
        for level in (UNENROLLED, VERIFIED):
            if level in values:
                return level
        return OPEN

    def last_seen(self) -> float | None:
        stamps = [d.ts for d in (self.hb, self.reported, self.state) if d is not None and d.ts is not None]
        return max(stamps) if stamps else None

    def connectivity(self, now: float) -> str:
        seen = self.last_seen()
        interval = self.hb.interval if self.hb is not None else DEFAULT_INTERVAL
        fresh = seen is not None and now - seen <= STALE_AFTER * interval
        if self.state is not None and not self.state.online and not (fresh and self._will_is_stale()):
            return "offline"
        if self.state is None:
            return "unknown"
        return "online" if fresh else "stale"

    def _will_is_stale(self) -> bool:
        """A Will from an older connection (lower birth/death sequence) than the device's
        latest heartbeat came late: the device is back, whatever the retained state says."""
        return self.hb is not None and self.state is not None and self.hb.bdseq > self.state.bdseq

    def last_failure(self) -> ErrorRecord | None:
        """The failure to show: the deployment's while it is failed, else the most recent of
        the deployment's and the latest bad row's or message's."""
        rep = self.reported
        if rep is None:
            return None
        if rep.phase == "failed" and rep.last_error is not None:
            return rep.last_error
        candidates = [e for e in (rep.last_error, rep.last_runtime_error) if e is not None]
        return max(candidates, key=lambda e: e.ts) if candidates else None

    def to_dict(self, now: float) -> dict[str, Any]:
        seen = self.last_seen()
        rep, hb, state = self.reported, self.hb, self.state
        counters = dict(hb.stats.counters if hb is not None else rep.counters if rep is not None else {})
        failures = dict(rep.failures) if rep is not None else {}
        active = rep.active if rep is not None else state.active if state is not None else None
        failure = self.last_failure()

        def jsn(obj: Any) -> Any:
            return None if obj is None else with_iso_times(obj.to_json())

        return {
            "device": self.device,
            "status": self.connectivity(now),
            "last_seen": iso(seen),
            "last_seen_s": None if seen is None else round(max(0.0, now - seen), 1),
            "groups": list(state.groups) if state is not None else [],
            "agent": state.agent if state is not None else None,
            "phase": str(rep.phase) if rep is not None else None,
            "active": jsn(active),
            "previous": jsn(rep.previous if rep is not None else None),
            "progress": jsn(rep.progress if rep is not None else None),
            "served": counters.get("served", 0),
            "rejected": counters.get("rejected", 0),
            "captured": counters.get("captured"),  # rows kept for labelling; None: capture is off
            "errors": int(sum(failures.values())),
            "failures": failures,
            "latency": jsn(hb.stats.latency if hb is not None else None),
            "drift": jsn(rep.last_drift if rep is not None else None),
            "last_error": jsn(rep.last_error if rep is not None else None),  # why the last deployment failed
            "last_runtime_error": jsn(rep.last_runtime_error if rep is not None else None),  # latest bad row/message
            "last_failure": jsn(failure),  # the one to show a person
            "outbox": jsn(hb.stats.outbox if hb is not None else None),
            "unreadable": dict(self.unreadable),
            "desired": self.desired,
            # Nothing retained tells this device what to run (cleared, or never deployed):
            # it keeps serving what it has, but no deploy reaches it until one is published.
            "desired_missing": self.desired_known and self.desired is None,
            "trust": self.trust(),
            "unverified": {leaf: v.split(": ", 1)[1] for leaf, v in self.verdicts.items() if v.startswith(UNVERIFIED)},
        }


def iso(ts: float | None) -> str | None:
    """A wire timestamp (Unix seconds) as ISO 8601 UTC, for people and scripts."""
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


def with_iso_times(doc: dict[str, Any]) -> dict[str, Any]:
    """A document's ``ts`` fields (at any depth) as ISO 8601 UTC."""
    out: dict[str, Any] = {}
    for key, value in doc.items():
        if key == "ts" and isinstance(value, (int, float)):
            out[key] = iso(float(value))
        elif isinstance(value, dict):
            out[key] = with_iso_times(value)
        else:
            out[key] = value
    return out


def read_devices(
    messages: Iterable[tuple[str, bytes, bool]], topics: Topics, check: TelemetryCheck | None = None
) -> dict[str, DeviceStatus]:
    """Each device's latest state, reported and heartbeat documents from retained messages;
    with ``check``, an enrolled device's document that its key did not sign is set aside."""
    devices: dict[str, DeviceStatus] = {}
    for topic, payload, _ in messages:
        parsed = topics.parse_device_topic(topic)
        if parsed is None or not payload or parsed[1] not in LEAVES:
            continue
        device, leaf = parsed
        entry = devices.setdefault(device, DeviceStatus(device))
        if check is not None:
            verdict = check.verdict(device, topic, payload)
            entry.verdicts[leaf] = verdict
            if not check.believed(verdict):
                setattr(entry, leaf, None)  # a forged document is not the device's word
                continue
        try:
            doc = LEAVES[leaf].decode(payload)
        except ProtocolError as exc:
            entry.unreadable[leaf] = exc.detail  # a garbled retained message must not hide the rest
            continue
        entry.unreadable.pop(leaf, None)
        setattr(entry, leaf, doc)
    return devices


def read_desired(messages: Iterable[tuple[str, bytes, bool]], topics: Topics) -> dict[str, dict[str, Any]]:
    """The retained desired states by target (``device:<id>``, ``group:<g>``), read without
    verifying their signatures: this is a view for people, devices verify for themselves."""
    from device_agent.trust import read_envelope_unverified

    out: dict[str, dict[str, Any]] = {}
    for topic, payload, _ in messages:
        if not payload or not topic.endswith("/desired"):
            continue
        try:
            doc = DesiredState.from_json(read_envelope_unverified(payload, "desired state"))
        except ProtocolError:
            continue
        out[doc.target] = {
            "target": doc.target,
            "seq": doc.seq,
            "bundle": f"{doc.bundle.name}@{doc.bundle.version}",
            "issued": iso(doc.issued),
            "expires": iso(doc.expires),
        }
    return out


def status_view(
    messages: Iterable[tuple[str, bytes, bool]],
    topics: Topics,
    now: float,
    check: TelemetryCheck | None = None,
    with_desired: bool = False,
) -> list[dict[str, Any]]:
    messages = list(messages)
    devices = read_devices(messages, topics, check)
    if with_desired:
        desired = read_desired(messages, topics)
        for name, entry in devices.items():
            groups = entry.state.groups if entry.state is not None else ()
            found = [desired.get(f"device:{name}")] + [desired.get(f"group:{g}") for g in groups]
            entry.desired = next((d for d in found if d is not None), None)
            entry.desired_known = True
    return [devices[d].to_dict(now) for d in sorted(devices)]


@dataclass(frozen=True)
class FleetView:
    devices: list[dict[str, Any]]  # what to show
    hidden: list[str]  # devices not seen for longer than ``stale_after``, left out of ``devices``
    stale_after_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"devices": self.devices, "hidden": self.hidden, "stale_after_s": self.stale_after_s}


def split_stale(devices: list[dict[str, Any]], stale_after: float | None) -> FleetView:
    """Devices not seen for longer than ``stale_after`` seconds (and not online) go to ``hidden``:
    fleets only grow otherwise, since a device that left keeps its retained 'offline'."""
    if stale_after is None:
        return FleetView(devices, [])
    gone = [
        d["device"]
        for d in devices
        if d["status"] != "online" and (d["last_seen_s"] is None or d["last_seen_s"] > stale_after)
    ]
    return FleetView([d for d in devices if d["device"] not in gone], gone, stale_after)


def fleet_status(
    broker: Broker, prefix: str, settle: float = 0.5, check: TelemetryCheck | None = None
) -> list[dict[str, Any]]:
    topics = Topics(prefix)
    with connect(broker, purpose="status") as conn:
        wanted = [topics.all_devices(leaf) for leaf in LEAVES] + [
            topics.all_devices("desired"),
            f"{topics.prefix}/group/+/desired",
        ]
        messages = collect(conn, wanted, settle=settle)
    return status_view(messages, topics, time.time(), check, with_desired=True)


def fleet_view(
    broker: Broker, prefix: str, stale_after: float | None = None, check: TelemetryCheck | None = None
) -> FleetView:
    return split_stale(fleet_status(broker, prefix, check=check), stale_after)


def forget(broker: Broker, prefix: str, devices: list[str]) -> list[str]:
    """Clear every retained topic of ``devices`` (state, heartbeat, reported, their device-level
    desired state): they leave ``fleet status``. Returns the topics cleared."""
    from .client import publish_all

    topics = Topics(prefix)
    cleared = [topics.dev(d, leaf) for d in devices for leaf in (*LEAVES, "desired")]
    with connect(broker, purpose="forget") as conn:
        publish_all(conn, [(t, b"", True) for t in cleared])
    return cleared
