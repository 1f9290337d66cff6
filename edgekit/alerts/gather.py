"""Fill :class:`~edgekit.alerts.facts.FleetFacts` from a telemetry store, reading only what
arrived since the last run.

The first run reads each device's newest windows and the last hour or so of heartbeats;
later runs read the windows and heartbeats stored since (by the collector's arrival time,
looking back :data:`LOOKBACK_S` more, because another collector sharing a PostgreSQL may
commit a batch a little after its messages arrived; what is read twice is recognised). A
device's first windows of a bundle (for the skew rule) and the latency of the bundle it ran
before are asked of the store once, when they are needed.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from device_agent.protocol import BundleRef, DriftMessage, Heartbeat

from ..fleet.status import DeviceStatus
from ..telemetry import Stored, TelemetryStore
from .catalog import BundleCatalog
from .config import AlertConfig
from .facts import Beat, DeviceFacts, FleetFacts, Window

LOOKBACK_S = 30.0
P99_REFRESH_S = 300.0  # how often the previous bundle's latency is asked for again while unknown


def window_of(stored: Stored[DriftMessage]) -> Window:
    m = stored.doc
    return Window(stored.device, m.boot_id, m.seq, m.ts, m.bundle, m.window)


def beat_of(stored: Stored[Heartbeat]) -> Beat:
    h = stored.doc
    c, lat, res = h.stats.counters, h.stats.latency, h.stats.resources
    return Beat(
        ts=stored.received,  # host time: the rules' periods are measured on the collector's clock
        boot_id=h.boot_id,
        active=h.active.sha256 if h.active else None,
        served=c.get("served"),
        rejected=c.get("rejected"),
        p99_us=lat.p99_us if lat else None,
        rss_bytes=res.rss_bytes if res else None,
        cpu_pct=res.cpu_pct if res else None,
        disk_free=res.disk_free_bytes if res else None,
        disk_total=res.disk_total_bytes if res else None,
    )


@dataclass
class _Device:
    windows: list[Window] = field(default_factory=list)  # newest kept, sorted by (ts, seq)
    keys: set[tuple[str, int]] = field(default_factory=set)
    beats: list[Beat] = field(default_factory=list)
    beat_keys: set[tuple[str, float]] = field(default_factory=set)


class FactsReader:
    def __init__(self, config: AlertConfig, catalog: BundleCatalog) -> None:
        c = config
        self.keep = max(
            c.drift.m, c.drift.resolve_after, c.prediction_drift.m, c.prediction_drift.resolve_after,
            c.skew.windows, c.fleet_drift.windows, c.low_confidence.windows,
        ) + 2  # fmt: skip
        self.beats_s = max(c.error_rate.window_s, c.latency.window_s, c.disk.trend_window_s, c.memory.window_s,
                           c.cpu.window_s) + 60.0  # fmt: skip
        self.first_n = c.skew.windows
        self.catalog = catalog
        self.reset()

    def reset(self) -> None:
        """Forget everything read (after a store error): the next run reads afresh."""
        self._devices: dict[str, _Device] = {}
        self._first: dict[tuple[str, str], list[Window]] = {}
        self._p99: dict[tuple[str, str], tuple[float, tuple[BundleRef | str, list[float]] | None]] = {}
        self._bundles: dict[str, BundleRef] = {}  # sha256 -> reference, from the windows seen
        self._w_mark: float | None = None
        self._b_mark: float | None = None

    # ── reading ──────────────────────────────────────────────────────────────────────

    def _take_windows(self, stored: list[Stored[DriftMessage]]) -> set[str]:
        touched = set()
        for s in stored:
            w = window_of(s)
            d = self._devices.setdefault(w.device, _Device())
            key = (w.boot_id, w.seq)
            if key in d.keys:
                continue
            d.keys.add(key)
            d.windows.append(w)
            touched.add(w.device)
            self._bundles[w.bundle.sha256] = w.bundle
            if self._w_mark is None or s.received > self._w_mark:
                self._w_mark = s.received
        for name in touched:
            d = self._devices[name]
            d.windows.sort(key=lambda w: (w.ts, w.seq))
            if len(d.windows) > self.keep * 2:
                d.windows = d.windows[-self.keep :]
                d.keys = {(w.boot_id, w.seq) for w in d.windows}
        return touched

    def _take_beats(self, stored: list[Stored[Heartbeat]], now: float) -> None:
        for s in stored:
            b = beat_of(s)
            d = self._devices.setdefault(s.device, _Device())
            key = (b.boot_id, s.doc.ts)
            if key in d.beat_keys:
                continue
            d.beat_keys.add(key)
            d.beats.append(b)
            if s.doc.active is not None:
                self._bundles[s.doc.active.sha256] = s.doc.active
            if self._b_mark is None or s.received > self._b_mark:
                self._b_mark = s.received
        horizon = now - self.beats_s
        for d in self._devices.values():
            if d.beats and d.beats[0].ts < horizon:
                d.beats = [b for b in d.beats if b.ts >= horizon]
                d.beat_keys = {k for k in d.beat_keys if k[1] >= horizon - 3600.0}

    def read(self, store: TelemetryStore, statuses: Mapping[str, DeviceStatus], now: float | None = None) -> FleetFacts:
        now = time.time() if now is None else now
        if self._w_mark is None:
            touched = self._take_windows(store.recent_drift(self.keep))
            self._w_mark = self._w_mark or 0.0
        else:
            touched = self._take_windows(store.drift_arrived(self._w_mark - LOOKBACK_S))
        if self._b_mark is None:
            self._take_beats(store.heartbeats_arrived(now - self.beats_s), now)
            self._b_mark = self._b_mark or 0.0
        else:
            self._take_beats(store.heartbeats_arrived(self._b_mark - LOOKBACK_S), now)

        facts = FleetFacts(now)
        for name in sorted(set(statuses) | set(self._devices)):
            status = statuses.get(name)
            d = self._devices.get(name, _Device())
            dev = _facts_of(name, status, now)
            if d.windows:
                sha = d.windows[-1].bundle.sha256
                dev.recent = [w for w in d.windows if w.bundle.sha256 == sha][-self.keep :]
                dev.first = self._first_windows(store, name, sha, name in touched)
            dev.beats = list(d.beats)
            if d.beats and d.beats[-1].active is not None:
                dev.previous_p99 = self._previous(store, name, d.beats[-1].active, now)
            facts.devices[name] = dev
            bundle = dev.bundle
            if bundle is not None and bundle.sha256 not in facts.bundles:
                info = self.catalog.lookup(bundle)
                if info is not None:
                    facts.bundles[bundle.sha256] = info
        return facts

    def _first_windows(self, store: TelemetryStore, device: str, sha: str, touched: bool) -> list[Window]:
        key = (device, sha)
        have = self._first.get(key)
        if have is not None and (len(have) >= self.first_n or not touched):
            return have
        found = [window_of(s) for s in store.first_drift(device, sha, self.first_n)]
        self._first[key] = found
        return found

    def _previous(
        self, store: TelemetryStore, device: str, sha: str, now: float
    ) -> tuple[BundleRef | str, list[float]] | None:
        key = (device, sha)
        cached = self._p99.get(key)
        if cached is not None and (cached[1] is not None or now < cached[0]):
            return cached[1]
        found = store.p99_before(device, sha)
        value: tuple[BundleRef | str, list[float]] | None = None
        if found is not None:
            other, values = found
            value = (self._bundles.get(other, other), values)
        self._p99[key] = (now + P99_REFRESH_S, value)
        return value


def _facts_of(name: str, status: DeviceStatus | None, now: float) -> DeviceFacts:
    if status is None:
        return DeviceFacts(name, "unknown")
    state, rep, hb = status.state, status.reported, status.hb
    active = rep.active if rep is not None else hb.active if hb is not None else None
    return DeviceFacts(
        name,
        status.connectivity(now),
        last_seen=status.last_seen(),
        said_goodbye=state is not None and not state.online and state.reason is not None,
        groups=tuple(state.groups) if state is not None else (),
        active=active,
    )
