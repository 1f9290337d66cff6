"""A durable, bounded, ordered queue of what must reach the host (events, drift windows),
and a bounded history of what already reached the broker.

Offline for an hour? Every message waits here, in SQLite (stdlib), and is published in
order after reconnection; each carries an id so receivers drop the duplicates that
at-least-once delivery produces. Beyond ``max_rows`` the oldest waiting rows are dropped and
counted, so a device never fills its disk with telemetry.

A broker acknowledgement does not mean the host has the message: a broker drops messages
past a slow subscriber's queue limit even at QoS 1. So an acknowledged row is not deleted
but marked sent and kept, up to ``history_rows`` of them, under its boot and sequence
number; when the host finds a gap in a device's sequence it asks for exactly those numbers
(:meth:`requeue`), and they go back to the end of the queue.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable

from .protocol import to_ranges

Ranges = tuple[tuple[int, int], ...]


class Outbox:
    def __init__(self, path: str | os.PathLike[str], max_rows: int = 100_000, history_rows: int = 0) -> None:
        self.max_rows = max_rows
        self.history_rows = history_rows
        self.db = sqlite3.connect(os.fspath(path), isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL,"
            " payload BLOB NOT NULL)"
        )
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(outbox)")}
        # Outboxes written before the history existed gain its columns; their rows stay unsent.
        for name, decl in (("boot_id", "TEXT"), ("seq", "INTEGER"), ("sent", "INTEGER NOT NULL DEFAULT 0")):
            if name not in columns:
                self.db.execute(f"ALTER TABLE outbox ADD COLUMN {name} {decl}")
        self.db.execute("CREATE INDEX IF NOT EXISTS outbox_waiting ON outbox (id) WHERE sent = 0")
        self.db.execute("CREATE INDEX IF NOT EXISTS outbox_seq ON outbox (boot_id, seq)")
        self.db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
        self._count = int(self.db.execute("SELECT COUNT(*) FROM outbox WHERE sent = 0").fetchone()[0])
        self._history = int(self.db.execute("SELECT COUNT(*) FROM outbox WHERE sent = 1").fetchone()[0])
        self._trim_history()

    def put(self, topic: str, payload: bytes, boot_id: str | None = None, seq: int | None = None) -> None:
        with self.db:
            self.db.execute("BEGIN")
            self.db.execute(
                "INSERT INTO outbox (topic, payload, boot_id, seq) VALUES (?, ?, ?, ?)", (topic, payload, boot_id, seq)
            )
            self._count += 1
            self._drop_excess()

    def _drop_excess(self) -> None:
        excess = self._count - self.max_rows
        if excess > 0:
            self.db.execute(
                "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE sent = 0 ORDER BY id LIMIT ?)", (excess,)
            )
            self.db.execute(
                "INSERT INTO meta (key, value) VALUES ('dropped', ?) "
                "ON CONFLICT(key) DO UPDATE SET value = value + excluded.value",
                (excess,),
            )
            self._count -= excess

    def peek(self, limit: int, after: int = 0) -> list[tuple[int, str, bytes]]:
        rows = self.db.execute(
            "SELECT id, topic, payload FROM outbox WHERE sent = 0 AND id > ? ORDER BY id LIMIT ?", (after, limit)
        ).fetchall()
        return [(int(r[0]), str(r[1]), bytes(r[2])) for r in rows]

    def ack(self, row_id: int) -> None:
        """The broker has it: keep it in the history (when there is one), out of the queue."""
        if self.history_rows > 0:
            cur = self.db.execute("UPDATE outbox SET sent = 1 WHERE id = ? AND sent = 0", (row_id,))
            self._history += cur.rowcount
            if self._history > self.history_rows + self.history_rows // 8:  # amortised: one DELETE per many acks
                self._trim_history()
        else:
            cur = self.db.execute("DELETE FROM outbox WHERE id = ? AND sent = 0", (row_id,))
        self._count -= cur.rowcount

    def _trim_history(self) -> None:
        excess = self._history - self.history_rows
        if excess > 0:
            self.db.execute(
                "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE sent = 1 ORDER BY id LIMIT ?)", (excess,)
            )
            self._history -= excess

    def requeue(self, boot_id: str, ranges: Iterable[tuple[int, int]]) -> tuple[Ranges, Ranges, Ranges]:
        """Put the sent messages of ``boot_id`` with these sequence numbers back at the end of
        the queue. Returns (requeued, still queued, missing) as ranges of sequence numbers."""
        requeued: set[int] = set()
        queued: set[int] = set()
        asked: set[int] = set()
        with self.db:
            self.db.execute("BEGIN")
            for first, last in ranges:
                asked.update(range(first, last + 1))
                rows = self.db.execute(
                    "SELECT id, seq, sent, topic, payload FROM outbox"
                    " WHERE boot_id = ? AND seq BETWEEN ? AND ? ORDER BY id",
                    (boot_id, first, last),
                ).fetchall()
                waiting = {int(seq) for _, seq, sent, _, _ in rows if not sent}
                queued |= waiting
                for row_id, seq, sent, topic, payload in rows:
                    if not sent:
                        continue
                    self.db.execute("DELETE FROM outbox WHERE id = ?", (row_id,))
                    self._history -= 1
                    if int(seq) in waiting or int(seq) in requeued:  # on its way already: send it once
                        continue
                    requeued.add(int(seq))
                    self.db.execute(
                        "INSERT INTO outbox (topic, payload, boot_id, seq, sent) VALUES (?, ?, ?, ?, 0)",
                        (topic, payload, boot_id, seq),
                    )
                    self._count += 1
            self._drop_excess()
        return to_ranges(requeued), to_ranges(queued), to_ranges(asked - requeued - queued)

    def __len__(self) -> int:
        return self._count

    @property
    def history(self) -> int:
        """Delivered messages kept for resend requests."""
        return self._history

    @property
    def dropped(self) -> int:
        row = self.db.execute("SELECT value FROM meta WHERE key = 'dropped'").fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        self.db.close()
