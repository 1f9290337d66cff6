"""A durable, bounded, ordered queue of what must reach the host (events, drift windows).

Offline for an hour? Every message waits here, in SQLite (stdlib), and is published in
order after reconnection; each carries an id so receivers drop the duplicates that
at-least-once delivery produces. Beyond ``max_rows`` the oldest rows are dropped and
counted, so a device never fills its disk with telemetry.
"""

from __future__ import annotations

import os
import sqlite3


class Outbox:
    def __init__(self, path: str | os.PathLike[str], max_rows: int = 100_000) -> None:
        self.max_rows = max_rows
        self.db = sqlite3.connect(os.fspath(path), isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL,"
            " payload BLOB NOT NULL)"
        )
        self.db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
        self._count = int(self.db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def put(self, topic: str, payload: bytes) -> None:
        with self.db:
            self.db.execute("BEGIN")
            self.db.execute("INSERT INTO outbox (topic, payload) VALUES (?, ?)", (topic, payload))
            self._count += 1
            excess = self._count - self.max_rows
            if excess > 0:
                self.db.execute("DELETE FROM outbox WHERE id IN (SELECT id FROM outbox ORDER BY id LIMIT ?)", (excess,))
                self.db.execute(
                    "INSERT INTO meta (key, value) VALUES ('dropped', ?) "
                    "ON CONFLICT(key) DO UPDATE SET value = value + excluded.value",
                    (excess,),
                )
                self._count -= excess

    def peek(self, limit: int, after: int = 0) -> list[tuple[int, str, bytes]]:
        rows = self.db.execute(
            "SELECT id, topic, payload FROM outbox WHERE id > ? ORDER BY id LIMIT ?", (after, limit)
        ).fetchall()
        return [(int(r[0]), str(r[1]), bytes(r[2])) for r in rows]

    def ack(self, row_id: int) -> None:
        cur = self.db.execute("DELETE FROM outbox WHERE id = ?", (row_id,))
        self._count -= cur.rowcount

    def __len__(self) -> int:
        return self._count

    @property
    def dropped(self) -> int:
        row = self.db.execute("SELECT value FROM meta WHERE key = 'dropped'").fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        self.db.close()
