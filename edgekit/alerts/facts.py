"""What the alert rules see: plain values read from the store and the registry.

The rules (:mod:`edgekit.alerts.rules`) are pure functions of these, so they are tested on
windows a real :class:`device_agent.drift.DriftWindow` produced from generated data, with no
broker and no database; :mod:`edgekit.alerts.gather` fills them from a telemetry store.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from device_agent.drift import Reference
from device_agent.protocol import BundleRef


@dataclass(frozen=True)
class BundleInfo:
    """What the workspace registry knows of one bundle (by its SHA-256)."""

    reference: Reference
    importance: Mapping[str, float] = field(default_factory=dict)  # permutation importance (mean), by feature
    low_confidence: float | None = None  # the policy's threshold the device counts low-confidence rows with

    def shares(self) -> dict[str, float]:
        """Each feature's share of the positive importance (0 when the model ignores it)."""
        positive = {k: max(0.0, float(v)) for k, v in self.importance.items()}
        total = sum(positive.values())
        return {k: v / total for k, v in positive.items()} if total > 0 else {}

    def ranks(self) -> dict[str, int]:
        """1 for the most important feature."""
        order = sorted(self.importance, key=lambda k: (-float(self.importance[k]), k))
        return {name: i + 1 for i, name in enumerate(order)}


@dataclass(frozen=True)
class Window:
    """One stored drift window: the device's report (raw counts and its own verdicts)."""

    device: str
    boot_id: str
    seq: int
    ts: float
    bundle: BundleRef
    report: Mapping[str, Any]

    @property
    def judged(self) -> bool:
        return self.report.get("verdict") in ("ok", "drift")

    def flagged(self) -> set[str]:
        features = self.report.get("features") or {}
        return {name for name, entry in features.items() if isinstance(entry, Mapping) and entry.get("drifted")}

    def feature(self, name: str) -> Mapping[str, Any]:
        entry = (self.report.get("features") or {}).get(name)
        return entry if isinstance(entry, Mapping) else {}


@dataclass(frozen=True)
class Beat:
    """The numbers of one heartbeat the rules use."""

    ts: float
    boot_id: str
    active: str | None  # the active bundle's SHA-256
    served: int | None = None
    rejected: int | None = None
    p99_us: float | None = None
    rss_bytes: int | None = None
    cpu_pct: float | None = None
    disk_free: int | None = None
    disk_total: int | None = None


@dataclass
class DeviceFacts:
    device: str
    status: str  # online | stale | offline | unknown
    last_seen: float | None = None
    said_goodbye: bool = False  # offline by a clean shutdown, not a lost connection
    groups: tuple[str, ...] = ()
    recent: list[Window] = field(default_factory=list)  # newest last; windows of the newest bundle
    first: list[Window] = field(default_factory=list)  # the first windows of that bundle on this device
    beats: list[Beat] = field(default_factory=list)  # oldest first, the last hour or so
    previous_p99: tuple[BundleRef | str, list[float]] | None = None  # the bundle active before, its p99s
    active: BundleRef | None = None

    @property
    def bundle(self) -> BundleRef | None:
        return self.recent[-1].bundle if self.recent else self.active


@dataclass
class FleetFacts:
    now: float
    devices: dict[str, DeviceFacts] = field(default_factory=dict)
    bundles: dict[str, BundleInfo] = field(default_factory=dict)  # by SHA-256; absent = unknown to the registry

    def info(self, bundle: BundleRef | None) -> BundleInfo | None:
        return None if bundle is None else self.bundles.get(bundle.sha256)
