"""A telemetry store with a small fleet's last quarter of an hour, for the history commands
and the report: real drift windows (``DriftWindow`` fed rows of the bundle's own training
data; one device's alcohol shifted by 3σ half-way), heartbeats with latency and resources,
events, births and a Will, and the alerts the real rules raise over it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from device_agent.bundle import read_unverified
from device_agent.drift import DriftWindow
from device_agent.phases import Phase
from device_agent.protocol import (
    BundleRef,
    DeviceEvent,
    DeviceState,
    DriftMessage,
    Heartbeat,
    Latency,
    OutboxStats,
    Reported,
    Resources,
    Stats,
)
from edgekit.alerts.catalog import BundleCatalog, info_from_bundle
from edgekit.alerts.config import AlertConfig
from edgekit.alerts.service import AlertService
from edgekit.bundler import sha256_hex
from edgekit.telemetry import TelemetryStore
from edgekit.workspace import Workspace
from tests.support.fleetdocs import received

WINDOWS = 12
ROWS = 100
STEP_S = 60.0
SHIFT_FROM = 6


def disk(device: int, elapsed: float) -> int:
    """Free bytes: edge-1's state dir fills at 100 MiB a minute (full in about 3 h), the others hold."""
    free = 20 << 30
    return int(free - elapsed / 60.0 * (100 << 20)) if device == 0 else free


def bundle_ref(path: Path) -> BundleRef:
    data = path.read_bytes()
    manifest, _ = read_unverified(data)
    return BundleRef(str(manifest["name"]), int(manifest["version"]), sha256_hex(data))


def populate(store: TelemetryStore, ws: Workspace, bundle: Path, rows: list[list[float]], now: float) -> BundleRef:
    ref = bundle_ref(bundle)
    info = info_from_bundle(bundle.read_bytes())
    reference = info.reference
    names = list(reference.names)
    x_all = np.asarray(rows, dtype=np.float64)
    col = names.index("alcohol")
    rng = np.random.default_rng(5)
    t0 = now - WINDOWS * STEP_S
    docs = []
    for d, device in enumerate(("edge-1", "edge-2", "edge-3")):
        boot = f"boot-{device}"
        online = device != "edge-3"
        docs.append(received(device, DeviceState(True, 1, boot, ("plant",), "0.1.0", ref, t0 - 5), t0 - 5))
        docs.append(
            received(
                device,
                DeviceEvent(f"{boot}-1", boot, 1, t0 - 4, device, "lifecycle", "lifecycle.activated", "v1 active", ref),
                t0 - 4,
            )
        )
        window = DriftWindow(reference, window=ROWS, low_confidence=0.6)
        served = rejected = 0
        last = WINDOWS if online else 3
        for i in range(last):
            x = x_all[rng.integers(0, len(x_all), ROWS)].copy()
            if device == "edge-2" and i >= SHIFT_FROM:
                x[:, col] += 3.0 * reference.features[col].std  # type: ignore[union-attr]
            props = np.asarray(reference.prediction.proportions)
            labels = rng.choice(len(props), ROWS, p=props / props.sum())
            window.update(x, label_idx=labels, confidence=rng.uniform(0.75, 1.0, ROWS))
            ts = t0 + i * STEP_S
            msg = DriftMessage(f"{boot}-{i + 2}", boot, i + 2, ts, device, ref, window.report())
            window.reset()
            docs.append(received(device, msg, ts + 0.5))
            for half in (0.0, 0.5):
                served += ROWS // 2
                hb_ts = ts + half * STEP_S
                stats = Stats(
                    {"served": served, "rejected": rejected},
                    Latency(40.0 + d * 5, 70.0 + d * 5, 120.0 + 10 * d + 5 * np.sin(i)),
                    OutboxStats(0, 0, 0, 0),
                    Resources(70 * (1 << 20) + i * 4096, 1.0 + i, 3.0 + d, disk(d, hb_ts - t0), 40 << 30),
                )
                hb = Heartbeat(hb_ts, 30.0, boot, 1, Phase.ACTIVE, ref, stats, seq=i + 2)
                docs.append(received(device, hb, hb_ts))
            if device == "edge-2" and i == 8:
                rejected += 2
                ev = DeviceEvent(
                    f"{boot}-f{i}", boot, 100 + i, ts + 1, device, "failure", "row.not_finite", "NaN in magnesium", ref
                )
                docs.append(received(device, ev, ts + 1))
        rep_ts = t0 + (last - 1) * STEP_S
        docs.append(received(device, Reported(rep_ts, boot, "0.1.0", Phase.ACTIVE, active=ref), rep_ts))
        if not online:
            docs.append(received(device, DeviceState(False, 1, boot), rep_ts + 10))
    store.write(docs)
    AlertService(AlertConfig(), BundleCatalog(ws), "edgekit/v1").step(store, now=now)
    return ref
