"""The telemetry store, run on SQLite and on a real PostgreSQL: one suite, both backends."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from device_agent.phases import Phase
from device_agent.protocol import DeviceEvent, DriftMessage, ResendReply
from edgekit.telemetry import Gap, StoreError, TelemetryStore, open_store
from tests.support.fleetdocs import birth, event, heartbeat, received, reported, window


@pytest.fixture
def store(store_url: str) -> Iterator[TelemetryStore]:
    s = open_store(store_url)
    try:
        yield s
    finally:
        s.close()


def test_everything_is_stored_once_and_read_back_as_typed_documents(store: TelemetryStore) -> None:
    docs = [
        received("d1", event("d1", "b1", 1)),
        received("d1", window("d1", "b1", 2, verdict="drift")),
        received("d1", heartbeat("b1", 1001.0, seq=2)),
        received("d1", reported("b1", 1001.5)),
        received("d1", birth("b1")),
        received("d2", event("d2", "c1", 1)),
    ]
    first = store.write(docs)
    assert first.stored == {"events": 2, "drift": 1, "hb": 1, "reported": 1, "state": 1}
    again = store.write(docs)  # redelivery, a resend, another collector: nothing twice
    assert sum(again.stored.values()) == 0
    assert again.duplicates == {"events": 2, "drift": 1, "hb": 1, "reported": 1, "state": 1}
    counts = store.counts()
    assert (counts["events"], counts["drift_windows"], counts["heartbeats"], counts["states"]) == (2, 1, 1, 1)

    events = store.events(device="d1")
    assert [e.doc for e in events] == [event("d1", "b1", 1)]
    assert isinstance(events[0].doc, DeviceEvent) and events[0].device == "d1"
    windows = store.drift_windows()
    assert isinstance(windows[0].doc, DriftMessage) and windows[0].doc.verdict == "drift"
    assert windows[0].doc.drifted == ("alcohol",)
    hb = store.heartbeats("d1")[0].doc
    assert hb.stats.resources is not None and hb.stats.resources.disk_free_bytes == 10**9 and hb.seq == 2
    assert store.reported("d1")[0].doc.phase == Phase.ACTIVE
    assert store.states("d1")[0].doc.online
    assert store.sequences() == [("d1", "b1", 1), ("d1", "b1", 2), ("d2", "c1", 1)]


def test_filters_by_time_kind_and_code(store: TelemetryStore) -> None:
    store.write([received("d1", event("d1", "b", i, ts=100.0 + i, code=f"c{i % 2}")) for i in range(1, 11)])
    assert [e.doc.seq for e in store.events(since=105, until=108)] == [5, 6, 7]
    assert {e.doc.code for e in store.events(code="c1")} == {"c1"}
    assert len(store.events(limit=3)) == 3
    assert store.events(device="nobody") == []


def test_latest_keeps_the_newest_whatever_the_arrival_order(store: TelemetryStore) -> None:
    store.write([received("d1", heartbeat("b1", 2000.0, served=9))])
    store.write([received("d1", heartbeat("b1", 1000.0, served=1))])  # older, arrives later
    store.write([received("d1", birth("b1", bdseq=3)), received("d1", birth("b1", bdseq=2, online=False, ts=None))])
    status = store.latest()["d1"]
    assert status.hb is not None and status.hb.stats.counters["served"] == 9
    assert status.state is not None and status.state.online and status.state.bdseq == 3
    store.write([received("d1", birth("b1", bdseq=3, online=False, ts=None))])  # the same connection's Will
    assert store.latest()["d1"].connectivity(2001.0) == "offline"


def test_gaps_are_found_above_the_mark_and_closed_by_arrivals_and_lost_reports(store: TelemetryStore) -> None:
    store.write([received("d1", event("d1", "b1", s)) for s in (1, 2, 5, 6)])
    store.write([received("d1", heartbeat("b1", 1000.0, seq=9))])  # the tail 7-9 never arrived
    gaps = store.scan_gaps()
    assert gaps == [Gap("d1", "b1", 3, 4), Gap("d1", "b1", 7, 9)]
    assert store.scan_gaps() == gaps  # a scan changes nothing it should not
    store.write([received("d1", window("d1", "b1", 3)), received("d1", event("d1", "b1", 4))])
    assert store.scan_gaps() == [Gap("d1", "b1", 7, 9)]
    reply = ResendReply("cmd1", 1001.0, "d1", "b1", requeued=((7, 7),), missing=((8, 9),))
    assert store.write([received("d1", reply)]).lost == 2
    assert store.scan_gaps() == [Gap("d1", "b1", 7, 7)]
    store.write([received("d1", event("d1", "b1", 7))])
    assert store.scan_gaps() == []
    assert store.gaps("d1") == [Gap("d1", "b1", 8, 9, "lost")]
    assert store.write([received("d1", reply)]).lost == 0  # the same reply twice counts once


def test_a_scan_reads_a_bounded_window_and_resumes_from_its_mark(store: TelemetryStore) -> None:
    seqs = [s for s in range(1, 31) if s not in (4, 25)]
    store.write([received("d1", event("d1", "b1", s)) for s in seqs])
    assert store.scan_gaps(window=10) == [Gap("d1", "b1", 4, 4)]  # 25 is beyond this scan's window
    store.write([received("d1", event("d1", "b1", 4))])
    assert store.scan_gaps(window=10) == []  # the mark moved past 4, up to the window's end (13)
    assert store.scan_gaps(window=10) == []  # 14-23
    assert store.scan_gaps(window=10) == [Gap("d1", "b1", 25, 25)]
    assert store.gaps() == [Gap("d1", "b1", 25, 25)]


def test_boots_are_separate_sequences(store: TelemetryStore) -> None:
    store.write([received("d1", event("d1", "old", 1)), received("d1", event("d1", "old", 3))])
    store.write([received("d1", event("d1", "new", 1))])
    assert store.scan_gaps() == [Gap("d1", "old", 2, 2)]


def test_reopening_keeps_everything_and_a_newer_schema_is_refused(store_url: str) -> None:
    s = open_store(store_url)
    s.write([received("d1", event("d1", "b1", 1))])
    s.execute("UPDATE telemetry_meta SET value = '99' WHERE key = 'schema_version'")
    s.close()
    with pytest.raises(StoreError, match="newer than this edgekit"):
        open_store(store_url)


def test_bad_store_urls_say_what_to_use(tmp_path: object) -> None:
    with pytest.raises(StoreError, match="unsupported store URL scheme 'mysql'"):
        open_store("mysql://x/y")
    with pytest.raises(StoreError, match="names no file"):
        open_store("sqlite:")


def test_a_version_1_store_is_migrated_in_place(store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgekit.telemetry import store as store_module

    with monkeypatch.context() as m:
        m.setattr(store_module, "SCHEMA_VERSION", 1)
        old = open_store(store_url)
        assert old.schema_version() == 1
        old.write([received("d1", event("d1", "b1", 1)), received("d1", window("d1", "b1", 2, verdict="drift"))])
        assert "alerts" not in {t for t in _tables(old)}
        old.close()
    s = open_store(store_url)  # this edgekit: version 3
    try:
        assert s.schema_version() == 3 and {"alerts", "rollouts"} <= set(_tables(s))
        assert [w.doc.seq for w in s.drift_windows("d1")] == [2] and len(s.events("d1")) == 1
        s.write([received("d1", heartbeat("b1", 1001.0, seq=2))])  # the new column of heartbeats
        assert s.p99_before("d1", "ff" * 32) == ("ab" * 32, [30.0])
    finally:
        s.close()
    again = open_store(store_url)  # opening again migrates nothing twice
    assert again.schema_version() == 3
    again.close()


def _tables(s: TelemetryStore) -> set[str]:
    if s.backend == "sqlite":
        return {str(r[0]) for r in s.query("SELECT name FROM sqlite_master WHERE type = 'table'")}
    return {str(r[0]) for r in s.query("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}


def test_alerts_are_stored_by_instance_with_one_firing_per_key(store: TelemetryStore) -> None:
    from edgekit.alerts.alert import Alert

    a = Alert("a1", "drift:d1:x", "drift", "firing", "critical", "x drifted", 100.0, 100.0, device="d1", feature="x")
    b = Alert("b1", "offline:d2", "offline", "firing", "warning", "d2 offline", 150.0, 150.0, device="d2")
    store.save_alerts([a, b])
    assert [x.id for x in store.alerts()] == ["b1", "a1"]  # newest first
    assert [x.id for x in store.alerts(state="firing", devices=["d1"])] == ["a1"]
    assert store.alerts(feature="x", rule="drift") == [a]
    ra = a.resolve(200.0, "clean again")
    a2 = Alert("a2", "drift:d1:x", "drift", "firing", "critical", "again", 300.0, 300.0, device="d1", feature="x")
    store.save_alerts([a2, ra])  # the old instance resolves before the new one fires, whatever the order given
    assert [(x.id, x.state) for x in store.alerts(devices=["d1"])] == [("a2", "firing"), ("a1", "resolved")]
    assert [x.id for x in store.alerts(since=250.0)] == ["a2", "b1"]  # a1 resolved before 250
    assert [x.id for x in store.resolved_to_clear(before=250.0)] == ["a1"]
    store.mark_cleared(["a1"], 260.0)
    assert store.resolved_to_clear(before=1e12) == []
    with pytest.raises(Exception):  # noqa: B017 - the backend's integrity error: two firing instances of one key
        store.save_alerts([Alert("a3", "drift:d1:x", "drift", "firing", "info", "dup", 400.0, 400.0)])
