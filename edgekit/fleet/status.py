"""Fleet status from the retained topics alone: no daemon, one subscription, a second or so.

Staleness is reported honestly: a device whose last birth said "online" but whose last
heartbeat is older than three intervals is "stale", with its age — never a stale "healthy".
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from device_agent.errors import AgentError
from device_agent.protocol import Topics, loads_object

from .client import collect, connect

STALE_AFTER = 3.0  # heartbeat intervals


@dataclass
class DeviceStatus:
    device: str
    state: dict[str, Any] = field(default_factory=dict)
    reported: dict[str, Any] = field(default_factory=dict)
    hb: dict[str, Any] = field(default_factory=dict)

    def last_seen(self) -> float | None:
        stamps = [d.get("ts") for d in (self.hb, self.reported, self.state)]
        nums = [float(s) for s in stamps if isinstance(s, (int, float))]
        return max(nums) if nums else None

    def connectivity(self, now: float) -> str:
        seen = self.last_seen()
        interval = float(self.hb.get("interval") or 5.0)
        fresh = seen is not None and now - seen <= STALE_AFTER * interval
        if self.state.get("online") is False and not (fresh and self._will_is_stale()):
            return "offline"
        if not self.state:
            return "unknown"
        return "online" if fresh else "stale"

    def _will_is_stale(self) -> bool:
        """A Will from an older connection (lower birth/death sequence) than the device's
        latest heartbeat came late: the device is back, whatever the retained state says."""
        hb_seq, state_seq = self.hb.get("bdseq"), self.state.get("bdseq")
        return isinstance(hb_seq, int) and isinstance(state_seq, int) and hb_seq > state_seq

    def to_dict(self, now: float) -> dict[str, Any]:
        seen = self.last_seen()
        counters = dict(self.hb.get("counters") or self.reported.get("counters") or {})
        failures = self.reported.get("failures") or {}
        drift = self.reported.get("last_drift")
        return {
            "device": self.device,
            "status": self.connectivity(now),
            "last_seen_s": None if seen is None else round(max(0.0, now - seen), 1),
            "groups": self.state.get("groups") or [],
            "agent": self.state.get("agent"),
            "phase": self.reported.get("phase"),
            "active": self.reported.get("active") or self.state.get("active"),
            "previous": self.reported.get("previous"),
            "progress": self.reported.get("progress"),
            "served": counters.get("served", 0),
            "rejected": counters.get("rejected", 0),
            "errors": int(sum(v for v in failures.values() if isinstance(v, int))),
            "failures": failures,
            "latency": self.hb.get("latency"),
            "drift": drift,
            "last_error": self.reported.get("last_error"),  # why the last deployment failed
            "last_runtime_error": self.reported.get("last_runtime_error"),  # latest bad row or message
            "outbox": self.hb.get("outbox"),
        }


def fleet_status(broker: str, prefix: str, settle: float = 0.5) -> list[dict[str, Any]]:
    topics = Topics(prefix)
    devices: dict[str, DeviceStatus] = {}
    with connect(broker, purpose="status") as conn:
        messages = collect(
            conn,
            [topics.all_devices("state"), topics.all_devices("reported"), topics.all_devices("hb")],
            settle=settle,
        )
    for topic, payload, _ in messages:
        parsed = topics.parse_device_topic(topic)
        if parsed is None or not payload:
            continue
        device, leaf = parsed
        if leaf not in ("state", "reported", "hb"):
            continue
        try:
            doc = loads_object(payload)
        except AgentError:
            continue  # a garbled retained message must not hide the rest of the fleet
        entry = devices.setdefault(device, DeviceStatus(device))
        setattr(entry, leaf, doc)
    now = time.time()
    return [devices[d].to_dict(now) for d in sorted(devices)]
