"""Wire documents as a device sends them, for store and collector tests that need many."""

from __future__ import annotations

import time

from device_agent.phases import Phase
from device_agent.protocol import (
    BundleRef,
    DeviceEvent,
    DeviceState,
    Document,
    DriftMessage,
    Heartbeat,
    Latency,
    OutboxStats,
    Reported,
    ResendReply,
    Resources,
    Stats,
    Topics,
)
from edgekit.telemetry import Received

REF = BundleRef("wine", 1, "ab" * 32)
TOPICS = Topics()


def event(device: str, boot: str, seq: int, ts: float | None = None, code: str = "row.not_finite") -> DeviceEvent:
    return DeviceEvent(
        f"{boot}-{seq}", boot, seq, ts if ts is not None else 1000.0 + seq, device, "failure", code, "bad row", REF
    )


def window(device: str, boot: str, seq: int, ts: float | None = None, verdict: str = "ok") -> DriftMessage:
    report = {"n": 200, "verdict": verdict, "drifted": ["alcohol"] if verdict == "drift" else [], "features": {}}
    return DriftMessage(f"{boot}-{seq}", boot, seq, ts if ts is not None else 1000.0 + seq, device, REF, report)


def heartbeat(boot: str, ts: float, seq: int | None = None, served: int = 5, disk_free: int = 10**9) -> Heartbeat:
    stats = Stats(
        {"served": served, "rejected": 1},
        Latency(10.0, 20.0, 30.0),
        OutboxStats(0, 0, 0, 0),
        Resources(50 << 20, 1.5, 12.5, disk_free, 4 * 10**9),
    )
    return Heartbeat(ts, 5.0, boot, 1, Phase.ACTIVE, REF, stats, seq)


def reported(boot: str, ts: float, phase: Phase = Phase.ACTIVE) -> Reported:
    return Reported(ts, boot, "0.1.0", phase, active=REF, failures={"row.not_finite": 3})


def birth(boot: str, bdseq: int = 1, online: bool = True, ts: float | None = 1000.0) -> DeviceState:
    return DeviceState(online, bdseq, boot, ("plant",), "0.1.0" if online else None, REF if online else None, ts)


LEAF_OF = {
    DeviceEvent: "events",
    DriftMessage: "drift",
    Heartbeat: "hb",
    Reported: "reported",
    DeviceState: "state",
    ResendReply: "resent",
}


def received(device: str, doc: Document, at: float | None = None) -> Received:
    return Received(LEAF_OF[type(doc)], device, doc, doc.encode().decode(), at if at is not None else time.time())
