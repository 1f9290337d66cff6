"""The telemetry store: one interface, two backends (SQLite, PostgreSQL), the same SQL.

Writing is batched: :meth:`TelemetryStore.write` takes every message the collector received
in one go and stores it in one transaction, idempotently — an event or drift window is
keyed by (device, boot_id, seq), a heartbeat or summary by (device, boot_id, ts), a birth or
Will by (device, boot_id, bdseq, online) — so redelivery, a resend and two collectors
sharing the load never store anything twice. Rows of a batch are written in key order, so
two collectors writing into one PostgreSQL cannot deadlock each other.

Gaps: each boot's sequence has a row in ``streams`` with ``contiguous`` (every number up to
it is stored or known lost); :meth:`scan_gaps` looks only above it and moves it up, so a
scan costs what is new, not what is stored.

Reading goes through :mod:`device_agent.protocol` again: every reader returns the typed
documents (:class:`Stored` wraps one with its device and arrival time). A store object is
used by one thread; open another for another thread or process.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from device_agent.errors import ProtocolError
from device_agent.protocol import (
    DeviceEvent,
    DeviceState,
    Document,
    DriftMessage,
    Heartbeat,
    Reported,
    ResendReply,
    Topics,
)

from ..alerts.alert import Alert, AlertFormatError
from ..errors import WorkspaceError
from ..fleet.status import DeviceStatus, read_devices
from .schema import VERSION as SCHEMA_VERSION
from .schema import migration, statements

D = TypeVar("D", bound=Document)
Row = tuple[Any, ...]
LEAVES: dict[str, type[Document]] = {
    "events": DeviceEvent,
    "drift": DriftMessage,
    "hb": Heartbeat,
    "reported": Reported,
    "state": DeviceState,
    "resent": ResendReply,
}
RETAINED = ("state", "hb", "reported")  # kept in ``latest`` too


class StoreError(WorkspaceError):
    """The telemetry store cannot be opened, or was written by a newer edgekit."""


@dataclass(slots=True)
class Received:
    """One message as the collector decoded it: its leaf (``events``, ``drift``, ``hb``,
    ``reported``, ``state``, ``resent``), device, typed document, raw text and arrival time."""

    leaf: str
    device: str
    doc: Document
    text: str
    received: float


@dataclass(frozen=True)
class Stored(Generic[D]):
    device: str
    received: float
    doc: D


@dataclass(frozen=True)
class Gap:
    """Sequence numbers of one boot that are not stored: ``open`` (may still come, or be
    asked for) or ``lost`` (the device said it no longer has them)."""

    device: str
    boot_id: str
    first: int
    last: int
    state: str = "open"

    @property
    def count(self) -> int:
        return self.last - self.first + 1


@dataclass
class WriteResult:
    stored: dict[str, int] = field(default_factory=dict)  # leaf -> new rows
    duplicates: dict[str, int] = field(default_factory=dict)  # leaf -> already stored
    lost: int = 0  # sequence numbers newly recorded as lost


class TelemetryStore:
    """The shared SQL; a backend supplies the connection and its few dialect differences."""

    backend = "sql"
    INT = "INTEGER"
    REAL = "REAL"
    GREATEST = "MAX"  # the two-argument maximum

    def __init__(self, url: str) -> None:
        self.url = url

    # ── backend hooks ───────────────────────────────────────────────────────────────

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        raise NotImplementedError
        yield

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; the number of rows it changed."""
        raise NotImplementedError

    def executemany(self, sql: str, rows: Sequence[Row]) -> int:
        """Run one statement per row; the number of rows changed in total."""
        raise NotImplementedError

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        raise NotImplementedError

    def try_lead(self) -> bool:
        """Whether this process should scan for gaps and ask devices to resend (one does)."""
        return True

    def close(self) -> None:
        raise NotImplementedError

    def _lock_schema(self) -> None:
        """Serialise schema creation between processes starting at once (inside a transaction)."""

    # ── schema ──────────────────────────────────────────────────────────────────────

    def migrate(self) -> None:
        with self.transaction():
            self._lock_schema()
            for sql in statements(self.INT, self.REAL):
                self.execute(sql)
            rows = self.query("SELECT value FROM telemetry_meta WHERE key = 'schema_version'")
            found = int(rows[0][0]) if rows else 0
            if found > SCHEMA_VERSION:
                raise StoreError(
                    f"the telemetry store at {self.url} has schema version {found}, newer than this edgekit's "
                    f"{SCHEMA_VERSION}",
                    "upgrade edgekit",
                )
            for version in range(max(found, 1) + 1, SCHEMA_VERSION + 1):  # a new store gets every migration too
                for sql in migration(version, self.INT, self.REAL):
                    self.execute(sql)
            if not rows:
                self.execute(
                    "INSERT INTO telemetry_meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
                )
            elif found < SCHEMA_VERSION:
                self.execute("UPDATE telemetry_meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))

    def schema_version(self) -> int:
        rows = self.query("SELECT value FROM telemetry_meta WHERE key = 'schema_version'")
        return int(rows[0][0]) if rows else 0

    # ── writing ─────────────────────────────────────────────────────────────────────

    def write(self, batch: Sequence[Received]) -> WriteResult:
        """Store a batch in one transaction; idempotent, so a batch may be written again."""
        result = WriteResult()
        by_leaf: dict[str, list[Received]] = {}
        for item in batch:
            by_leaf.setdefault(item.leaf, []).append(item)
        with self.transaction():
            for leaf, table, key, rows in self._rows(by_leaf):
                if not rows:
                    continue
                rows.sort(key=key)
                new = self.executemany(_insert(table, len(rows[0])), rows)
                result.stored[leaf] = new
                result.duplicates[leaf] = len(rows) - new
            self._write_latest(by_leaf)
            self._write_streams(by_leaf)
            result.lost = self._write_lost(by_leaf.get("resent", []))
        return result

    def _rows(self, by_leaf: dict[str, list[Received]]) -> Iterator[tuple[str, str, Any, list[Row]]]:
        yield "events", "events", _key3, [_event_row(r) for r in by_leaf.get("events", [])]
        yield "drift", "drift_windows", _key3, [_drift_row(r) for r in by_leaf.get("drift", [])]
        yield "hb", "heartbeats", _key3, [_hb_row(r) for r in by_leaf.get("hb", [])]
        yield "reported", "reported", _key3, [_reported_row(r) for r in by_leaf.get("reported", [])]
        yield "state", "states", _key4, [_state_row(r) for r in by_leaf.get("state", [])]

    def _write_latest(self, by_leaf: dict[str, list[Received]]) -> None:
        newest: dict[tuple[str, str], Row] = {}
        for leaf in RETAINED:
            for r in by_leaf.get(leaf, []):
                row = (r.device, leaf, _order_key(r.doc), r.received, r.text)
                held = newest.get((r.device, leaf))
                if held is None or row[2] >= held[2]:
                    newest[(r.device, leaf)] = row
        if newest:
            self.executemany(
                "INSERT INTO latest (device, leaf, order_key, received, doc) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (device, leaf) DO UPDATE SET order_key = excluded.order_key, "
                "received = excluded.received, doc = excluded.doc WHERE latest.order_key <= excluded.order_key",
                [newest[k] for k in sorted(newest)],
            )

    def _write_streams(self, by_leaf: dict[str, list[Received]]) -> None:
        """Per boot: the highest sequence number stored, and the highest a heartbeat announced."""
        streams: dict[tuple[str, str], list[Any]] = {}  # -> [first_received, max_seq, announced]
        for leaf in ("events", "drift"):
            for r in by_leaf.get(leaf, []):
                doc = r.doc
                assert isinstance(doc, (DeviceEvent, DriftMessage))
                entry = streams.setdefault((r.device, doc.boot_id), [r.received, 0, 0])
                entry[1] = max(entry[1], doc.seq)
        for r in by_leaf.get("hb", []):
            hb = r.doc
            assert isinstance(hb, Heartbeat)
            if hb.seq is not None:
                entry = streams.setdefault((r.device, hb.boot_id), [r.received, 0, 0])
                entry[2] = max(entry[2], hb.seq)
        if streams:
            g = self.GREATEST
            self.executemany(
                "INSERT INTO streams (device, boot_id, first_received, max_seq, announced_seq, contiguous) "
                "VALUES (?, ?, ?, ?, ?, 0) ON CONFLICT (device, boot_id) DO UPDATE SET "
                f"max_seq = {g}(streams.max_seq, excluded.max_seq), "
                f"announced_seq = {g}(streams.announced_seq, excluded.announced_seq)",
                [(d, b, *streams[(d, b)]) for d, b in sorted(streams)],
            )

    def _write_lost(self, replies: list[Received]) -> int:
        rows = []
        for r in replies:
            reply = r.doc
            assert isinstance(reply, ResendReply)
            rows += [(r.device, reply.boot_id, a, b, r.received, reply.command) for a, b in reply.missing]
        if not rows:
            return 0
        new = 0
        for row in sorted(rows):
            new += row[3] - row[2] + 1 if self._insert_lost(row) else 0
        return new

    def _insert_lost(self, row: Row) -> bool:
        return (
            self.execute(
                "INSERT INTO lost (device, boot_id, first_seq, last_seq, at, command) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (device, boot_id, first_seq) DO NOTHING",
                row,
            )
            > 0
        )

    # ── gaps ────────────────────────────────────────────────────────────────────────

    def scan_gaps(self, window: int = 10_000) -> list[Gap]:
        """The open gaps of every boot whose sequence is not yet complete, looking at most
        ``window`` stored numbers above each boot's ``contiguous`` mark, which moves up."""
        g = self.GREATEST
        gaps: list[Gap] = []
        marks: list[Row] = []
        with self.transaction():  # one transaction (one commit) per scan, whatever the fleet's size
            streams = self.query(
                f"SELECT device, boot_id, contiguous, {g}(max_seq, announced_seq) FROM streams "
                f"WHERE contiguous < {g}(max_seq, announced_seq) ORDER BY device, boot_id"
            )
            for device, boot_id, contiguous, high in streams:
                missing, reach = self._missing(device, boot_id, int(contiguous), int(high), window)
                if reach > int(contiguous):
                    marks.append((reach, device, boot_id, reach))
                gaps += [Gap(device, boot_id, a, b) for a, b in missing]
            if marks:
                self.executemany(
                    "UPDATE streams SET contiguous = ? WHERE device = ? AND boot_id = ? AND contiguous < ?", marks
                )
        return gaps

    def _missing(
        self, device: str, boot_id: str, above: int, high: int, window: int
    ) -> tuple[list[tuple[int, int]], int]:
        """Ranges above ``above`` (up to ``high``) neither stored nor known lost, looking at
        most ``window`` stored numbers; and how far everything is complete."""
        with self.transaction():
            seqs = self.query(
                "SELECT seq FROM (SELECT seq FROM events WHERE device = ? AND boot_id = ? AND seq > ? "
                "UNION ALL SELECT seq FROM drift_windows WHERE device = ? AND boot_id = ? AND seq > ?) AS s "
                "ORDER BY seq LIMIT ?",
                (device, boot_id, above, device, boot_id, above, window + 1),
            )
            lost = self.query(
                "SELECT first_seq, last_seq FROM lost WHERE device = ? AND boot_id = ? AND last_seq > ?",
                (device, boot_id, above),
            )
        if len(seqs) > window:  # look no further than the last stored number read
            high = int(seqs[window - 1][0])
            seqs = seqs[:window]
        present = sorted([(int(s), int(s)) for (s,) in seqs] + [(int(a), int(b)) for a, b in lost])
        missing: list[tuple[int, int]] = []
        done = above  # every number up to here is present or already listed as missing
        for first, last in present:
            if first > high:
                break
            if first > done + 1:
                missing.append((done + 1, first - 1))
            done = max(done, last)
        if high > done:
            missing.append((done + 1, high))
        reach = missing[0][0] - 1 if missing else max(done, high)
        return missing, min(reach, max(done, high))

    def gaps(self, device: str | None = None) -> list[Gap]:
        """Open gaps above the last scan's marks (without moving them), then lost ranges."""
        out: list[Gap] = []
        where, params = ("WHERE device = ?", (device,)) if device else ("", ())
        g = self.GREATEST
        streams = self.query(
            f"SELECT device, boot_id, contiguous, {g}(max_seq, announced_seq) FROM streams {where} "
            "ORDER BY device, boot_id",
            params,
        )
        for dev, boot_id, contiguous, high in streams:
            if int(contiguous) < int(high):
                missing, _ = self._missing(dev, boot_id, int(contiguous), int(high), 1_000_000)
                out += [Gap(dev, boot_id, a, b) for a, b in missing]
        for dev, boot_id, first, last in self.query(
            f"SELECT device, boot_id, first_seq, last_seq FROM lost {where} ORDER BY device, boot_id, first_seq",
            params,
        ):
            out.append(Gap(dev, boot_id, int(first), int(last), "lost"))
        return out

    # ── reading ─────────────────────────────────────────────────────────────────────

    def events(
        self,
        device: str | None = None,
        since: float | None = None,
        until: float | None = None,
        kind: str | None = None,
        code: str | None = None,
        limit: int | None = None,
    ) -> list[Stored[DeviceEvent]]:
        """Events in device time order (``ts``), oldest first."""
        return self._read(
            "events", DeviceEvent, {"device": device, "kind": kind, "code": code}, since, until, limit, "ts, seq"
        )

    def drift_windows(
        self,
        device: str | None = None,
        since: float | None = None,
        until: float | None = None,
        bundle: str | None = None,
        limit: int | None = None,
    ) -> list[Stored[DriftMessage]]:
        return self._read(
            "drift_windows", DriftMessage, {"device": device, "bundle_name": bundle}, since, until, limit, "ts, seq"
        )

    def heartbeats(
        self,
        device: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int | None = None,
    ) -> list[Stored[Heartbeat]]:
        return self._read("heartbeats", Heartbeat, {"device": device}, since, until, limit, "ts")

    def reported(
        self,
        device: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int | None = None,
    ) -> list[Stored[Reported]]:
        return self._read("reported", Reported, {"device": device}, since, until, limit, "ts")

    def states(
        self,
        device: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int | None = None,
    ) -> list[Stored[DeviceState]]:
        """Births and Wills, in arrival order (a Will has no device time)."""
        return self._read("states", DeviceState, {"device": device}, since, until, limit, "received", clock="received")

    def latest(self) -> dict[str, DeviceStatus]:
        """Every device's newest state, heartbeat and summary, read as ``fleet status`` reads
        the retained topics (so status means the same thing everywhere)."""
        topics = Topics()
        rows = self.query("SELECT device, leaf, doc FROM latest ORDER BY device, leaf")
        return read_devices(((topics.dev(str(d), str(leaf)), str(doc).encode(), True) for d, leaf, doc in rows), topics)

    # ── what the alert rules read: arrivals since their last run, and a few look-backs ──

    def drift_arrived(self, after: float, limit: int | None = None) -> list[Stored[DriftMessage]]:
        """Drift windows stored after ``after`` (collector time), in arrival order."""
        return self._read(
            "drift_windows",
            DriftMessage,
            {},
            None,
            None,
            limit,
            "received, device, boot_id, seq",
            clock="received",
            after=after,
        )

    def heartbeats_arrived(self, after: float, limit: int | None = None) -> list[Stored[Heartbeat]]:
        return self._read(
            "heartbeats", Heartbeat, {}, None, None, limit, "received, device, ts", clock="received", after=after
        )

    def recent_drift(self, per_device: int) -> list[Stored[DriftMessage]]:
        """The newest ``per_device`` windows of every device, oldest first."""
        rows = self.query(
            "SELECT device, received, doc FROM (SELECT device, received, doc, ts, seq, ROW_NUMBER() OVER "
            "(PARTITION BY device ORDER BY ts DESC, seq DESC) AS r FROM drift_windows) AS w WHERE r <= ? "
            "ORDER BY device, ts, seq",
            (per_device,),
        )
        return self._typed(rows, DriftMessage)

    def first_drift(self, device: str, sha256: str, n: int) -> list[Stored[DriftMessage]]:
        """The first ``n`` windows a device reported of one bundle (training-serving skew)."""
        rows = self.query(
            "SELECT device, received, doc FROM drift_windows WHERE device = ? AND bundle_sha256 = ? "
            "ORDER BY ts, seq LIMIT ?",
            (device, sha256, n),
        )
        return self._typed(rows, DriftMessage)

    def p99_before(self, device: str, sha256: str, limit: int = 50) -> tuple[str, list[float]] | None:
        """The p99 latencies of the bundle active on ``device`` most recently before ``sha256``:
        (its SHA-256, up to ``limit`` of its newest p99 values)."""
        rows = self.query(
            "SELECT active_sha256 FROM heartbeats WHERE device = ? AND active_sha256 IS NOT NULL "
            "AND active_sha256 <> ? ORDER BY ts DESC LIMIT 1",
            (device, sha256),
        )
        if not rows:
            return None
        other = str(rows[0][0])
        values = self.query(
            "SELECT p99_us FROM heartbeats WHERE device = ? AND active_sha256 = ? AND p99_us IS NOT NULL "
            "ORDER BY ts DESC LIMIT ?",
            (device, other, limit),
        )
        return other, [float(v) for (v,) in values]

    # ── alerts ──────────────────────────────────────────────────────────────────────

    def save_alerts(self, alerts: Sequence[Alert]) -> None:
        """Insert or update alert instances by id, in one transaction."""
        if not alerts:
            return
        rows = [
            (a.id, a.key, a.rule, a.state, a.severity, a.device, a.group, a.feature, a.started, a.updated,
             a.resolved, json.dumps(a.to_json(), sort_keys=True, allow_nan=False))
            for a in sorted(alerts, key=lambda a: a.id)
        ]  # fmt: skip
        with self.transaction():
            # resolutions first: a key's old instance stops firing before a new one may start
            rows.sort(key=lambda r: (r[3] == "firing", r[0]))
            self.executemany(
                "INSERT INTO alerts (id, key, rule, state, severity, device, grp, feature, started, updated, "
                "resolved, doc) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
                "state = excluded.state, severity = excluded.severity, updated = excluded.updated, "
                "resolved = excluded.resolved, doc = excluded.doc",
                rows,
            )

    def alerts(
        self,
        state: str | None = None,
        devices: Sequence[str] | None = None,
        rule: str | None = None,
        feature: str | None = None,
        since: float | None = None,
        group: str | None = None,
        limit: int | None = None,
    ) -> list[Alert]:
        """Alert instances, newest first; ``since``: those active at any time after it (firing
        now, or resolved after it); ``devices`` and ``group``: about those devices or that group."""
        clauses: list[str] = []
        params: list[Any] = []
        for column, value in (("state", state), ("rule", rule), ("feature", feature)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if since is not None:
            clauses.append("(resolved IS NULL OR resolved >= ?)")
            params.append(since)
        who: list[str] = []
        if devices is not None and devices:
            who.append(f"device IN ({', '.join('?' * len(devices))})")
            params += list(devices)
        if group is not None:
            who.append("grp = ?")
            params.append(group)
        if devices is not None or group is not None:
            clauses.append(f"({' OR '.join(who)})" if who else "1 = 0")
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        tail = f" LIMIT {int(limit)}" if limit is not None else ""
        rows = self.query(f"SELECT doc FROM alerts {where} ORDER BY started DESC, id{tail}", params)
        out = []
        for (doc,) in rows:
            try:
                out.append(Alert.decode(str(doc)))
            except AlertFormatError:
                continue  # written by a newer edgekit
        return out

    def resolved_to_clear(self, before: float) -> list[Alert]:
        """Resolved alerts older than ``before`` still retained on the alerts topic."""
        rows = self.query(
            "SELECT doc FROM alerts WHERE state = 'resolved' AND cleared IS NULL AND resolved < ? ORDER BY id",
            (before,),
        )
        return [Alert.decode(str(d)) for (d,) in rows]

    def mark_cleared(self, ids: Sequence[str], at: float) -> None:
        if ids:
            with self.transaction():
                self.executemany("UPDATE alerts SET cleared = ? WHERE id = ?", [(at, i) for i in sorted(ids)])

    def devices(self) -> list[str]:
        return [str(d) for (d,) in self.query("SELECT DISTINCT device FROM latest ORDER BY device")]

    def counts(self) -> dict[str, int]:
        """Rows per table: for tests, benchmarks and a quick look."""
        tables = ("events", "drift_windows", "heartbeats", "reported", "states", "latest", "streams", "lost", "alerts")
        return {t: int(self.query(f"SELECT COUNT(*) FROM {t}")[0][0]) for t in tables}

    def sequences(self, device: str | None = None) -> list[tuple[str, str, int]]:
        """Every stored (device, boot_id, seq) of events and drift windows, sorted."""
        where, params = ("WHERE device = ?", (device, device)) if device else ("", ())
        rows = self.query(
            f"SELECT device, boot_id, seq FROM (SELECT device, boot_id, seq FROM events {where} UNION ALL "
            f"SELECT device, boot_id, seq FROM drift_windows {where}) AS s ORDER BY device, boot_id, seq",
            params,
        )
        return [(str(d), str(b), int(s)) for d, b, s in rows]

    def _read(
        self,
        table: str,
        cls: type[D],
        equal: dict[str, str | None],
        since: float | None,
        until: float | None,
        limit: int | None,
        order: str,
        clock: str = "ts",
        after: float | None = None,
    ) -> list[Stored[D]]:
        clauses: list[str] = []
        params: list[Any] = []
        if after is not None:
            clauses.append(f"{clock} > ?")
            params.append(after)
        for column, value in equal.items():
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if since is not None:
            clauses.append(f"{clock} >= ?")
            params.append(since)
        if until is not None:
            clauses.append(f"{clock} < ?")
            params.append(until)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        tail = f" LIMIT {int(limit)}" if limit is not None else ""
        rows = self.query(f"SELECT device, received, doc FROM {table} {where} ORDER BY {order}{tail}", params)
        return self._typed(rows, cls)

    @staticmethod
    def _typed(rows: list[Row], cls: type[D]) -> list[Stored[D]]:
        out: list[Stored[D]] = []
        for device, received, doc in rows:
            try:
                out.append(Stored(str(device), float(received), cls.decode(str(doc))))
            except ProtocolError:
                continue  # stored by an older or newer edgekit in a format this one cannot read
        return out


# ── rows ─────────────────────────────────────────────────────────────────────────────


def _insert(table: str, width: int) -> str:
    columns = _COLUMNS[table]
    assert len(columns) == width, table
    marks = ", ".join("?" * width)
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks}) ON CONFLICT DO NOTHING"


_COLUMNS = {
    "events": (
        "device", "boot_id", "seq", "id", "ts", "received", "kind", "code", "detail",
        "bundle_name", "bundle_version", "bundle_sha256", "doc",
    ),
    "drift_windows": (
        "device", "boot_id", "seq", "id", "ts", "received", "bundle_name", "bundle_version", "bundle_sha256",
        "verdict", "n", "drifted", "doc",
    ),
    "heartbeats": (
        "device", "boot_id", "ts", "received", "bdseq", "interval_s", "phase", "seq", "served", "rejected",
        "p50_us", "p90_us", "p99_us", "outbox_queued", "outbox_dropped",
        "rss_bytes", "cpu_s", "cpu_pct", "disk_free_bytes", "disk_total_bytes", "active_sha256", "doc",
    ),
    "reported": (
        "device", "boot_id", "ts", "received", "phase", "active_name", "active_version", "active_sha256",
        "last_error_code", "doc",
    ),
    "states": ("device", "boot_id", "bdseq", "online", "ts", "received", "agent", "reason", "doc"),
}  # fmt: skip


def _key3(row: Row) -> tuple[Any, ...]:
    return (row[0], row[1], row[2])


def _key4(row: Row) -> tuple[Any, ...]:
    return (row[0], row[1], row[2], row[3])


def _event_row(r: Received) -> Row:
    e = r.doc
    assert isinstance(e, DeviceEvent)
    b = e.bundle
    return (
        r.device, e.boot_id, e.seq, e.id, e.ts, r.received, e.kind, e.code, e.detail,
        b.name if b else None, b.version if b else None, b.sha256 if b else None, r.text,
    )  # fmt: skip


def _drift_row(r: Received) -> Row:
    m = r.doc
    assert isinstance(m, DriftMessage)
    b = m.bundle
    return (
        r.device, m.boot_id, m.seq, m.id, m.ts, r.received, b.name, b.version, b.sha256,
        m.verdict, m.n, json.dumps(list(m.drifted)), r.text,
    )  # fmt: skip


def _hb_row(r: Received) -> Row:
    h = r.doc
    assert isinstance(h, Heartbeat)
    c, lat, box, res = h.stats.counters, h.stats.latency, h.stats.outbox, h.stats.resources
    return (
        r.device, h.boot_id, h.ts, r.received, h.bdseq, h.interval, str(h.phase), h.seq,
        c.get("served"), c.get("rejected"),
        lat.p50_us if lat else None, lat.p90_us if lat else None, lat.p99_us if lat else None,
        box.queued if box else None, box.dropped if box else None,
        res.rss_bytes if res else None, res.cpu_s if res else None, res.cpu_pct if res else None,
        res.disk_free_bytes if res else None, res.disk_total_bytes if res else None,
        h.active.sha256 if h.active else None, r.text,
    )  # fmt: skip


def _reported_row(r: Received) -> Row:
    p = r.doc
    assert isinstance(p, Reported)
    a = p.active
    return (
        r.device, p.boot_id, p.ts, r.received, str(p.phase),
        a.name if a else None, a.version if a else None, a.sha256 if a else None,
        p.last_error.code if p.last_error else None, r.text,
    )  # fmt: skip


def _state_row(r: Received) -> Row:
    s = r.doc
    assert isinstance(s, DeviceState)
    return (r.device, s.boot_id, s.bdseq, int(s.online), s.ts, r.received, s.agent, s.reason, r.text)


def _order_key(doc: Document) -> float:
    if isinstance(doc, DeviceState):
        return 2.0 * doc.bdseq + (0.0 if doc.online else 1.0)
    if isinstance(doc, (Heartbeat, Reported)):
        return doc.ts
    return time.time()
