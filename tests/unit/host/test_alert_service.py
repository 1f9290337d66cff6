"""The alert service over a real store, on SQLite and on PostgreSQL: it reads what arrived
since its last run, keeps one firing instance per key across restarts, publishes changes
retained and clears resolved ones later; the ``--on-alert`` runner counts what fails."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from device_agent.drift import DriftWindow, Reference
from device_agent.protocol import BundleRef, DriftMessage
from edgekit.alerts.alert import Alert
from edgekit.alerts.catalog import BundleCatalog
from edgekit.alerts.config import AlertConfig
from edgekit.alerts.notify import CommandRunner
from edgekit.alerts.service import AlertService, alert_topic
from edgekit.reference import build_reference
from edgekit.telemetry import TelemetryStore, open_store
from tests.support.fleetdocs import birth, heartbeat, received

REF = BundleRef("wine", 1, "ab" * 32)  # unknown to any registry: the devices' own verdicts judge


@pytest.fixture
def store(store_url: str) -> Iterator[TelemetryStore]:
    s = open_store(store_url)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture(scope="module")
def reference() -> Reference:
    rng = np.random.default_rng(1)
    train = rng.standard_normal((1000, 3))
    return Reference.from_json(build_reference(train, ["a", "b", "c"], [0, 1], np.full((1000, 2), 0.5), window=100))


def windows(reference: Reference, device: str, first_seq: int, n: int, shift: float, t0: float) -> list[DriftMessage]:
    rng = np.random.default_rng([first_seq, int(shift * 10)])
    w = DriftWindow(reference, window=100, low_confidence=0.0)
    out = []
    for i in range(n):
        x = rng.standard_normal((100, 3))
        x[:, 0] += shift
        w.update(x, label_idx=np.zeros(100, dtype=np.int64), confidence=np.full(100, 0.9))
        seq = first_seq + i
        out.append(DriftMessage(f"b-{seq}", "b", seq, t0 + seq, device, REF, w.report()))
        w.reset()
    return out


class Published(list[tuple[str, bytes, bool]]):
    def __call__(self, topic: str, payload: bytes, retain: bool) -> None:
        self.append((topic, payload, retain))


def test_alerts_follow_what_arrives_and_survive_a_restart(store: TelemetryStore, reference: Reference) -> None:
    now = time.time()
    config = AlertConfig(retain_resolved_s=0.0)
    published = Published()
    service = AlertService(config, BundleCatalog(None), "edgekit/v1", publish=published)
    store.write([received("d1", birth("b", ts=now)), received("d1", heartbeat("b", now, seq=1))])
    store.write([received("d1", m, now) for m in windows(reference, "d1", 1, 2, 0.0, now - 100)])
    assert [c for c in service.step(store, now=now) if c.alert.rule == "drift"] == []
    store.write([received("d1", m, now + 1) for m in windows(reference, "d1", 3, 3, 2.0, now - 100)])
    fired = [c for c in service.step(store, now=now + 2) if c.alert.rule == "drift"]
    assert [(c.kind, c.alert.key) for c in fired] == [("fired", "drift:d1:a")]
    alert = fired[0].alert
    assert alert.evidence["judged_by"] == "device" and alert.evidence["hits"] == 3
    assert published[-1] == (alert_topic("edgekit/v1", "drift:d1:a"), alert.encode(), True)
    assert [a.to_json() for a in store.alerts(state="firing", rule="drift")] == [alert.to_json()]

    # A new collector (or this one restarted) reads the open alerts back: nothing fires twice.
    again = AlertService(config, BundleCatalog(None), "edgekit/v1", publish=published)
    assert [c for c in again.step(store, now=now + 3) if c.alert.rule == "drift"] == []

    # Clean windows: resolved after three, published, and its topic cleared once it is old enough.
    store.write([received("d1", m, now + 4) for m in windows(reference, "d1", 6, 3, 0.0, now - 100)])
    resolved = [c for c in again.step(store, now=now + 5) if c.alert.rule == "drift"]
    assert [(c.kind, c.alert.id) for c in resolved] == [("resolved", alert.id)]
    assert Alert.decode(published[-1][1]).state == "resolved"
    again.step(store, now=now + 6)
    assert (alert_topic("edgekit/v1", "drift:d1:a"), b"", True) in published
    assert store.resolved_to_clear(now + 100) == []


def test_the_command_runner_counts_failures_timeouts_and_drops(tmp_path: Path) -> None:
    alert = Alert("i", "disk:d1", "disk", "firing", "warning", "low disk", 1.0, 1.0, device="d1")
    out = tmp_path / "got.json"
    ok = CommandRunner(f"cat > {out}", timeout_s=5)
    ok.submit(alert)
    assert ok.wait_idle(10)
    ok.stop()
    assert Alert.decode(out.read_bytes()) == alert and ok.counts["ok"] == 1

    bad = CommandRunner("exit 3", timeout_s=5)
    slow = CommandRunner("sleep 5", timeout_s=0.2, queue=1)
    bad.submit(alert)
    started = time.monotonic()
    for _ in range(3):
        slow.submit(alert)  # one runs, one waits, the others push the oldest waiting out
    assert bad.wait_idle(10) and slow.wait_idle(10)
    assert time.monotonic() - started < 5  # the hanging command was cut off, not waited for
    bad.stop()
    slow.stop()
    assert bad.counts["failed"] == 1
    assert slow.counts["timeout"] >= 1 and slow.counts["dropped"] >= 1
    assert slow.counts["timeout"] + slow.counts["dropped"] == 3
