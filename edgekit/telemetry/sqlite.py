"""The SQLite backend: one file, WAL (readers never block the writer), one transaction per
batch with ``BEGIN IMMEDIATE``, and ``synchronous=FULL`` so a batch the collector has
acknowledged to the broker survives a power cut, not just a crash."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .store import Row, StoreError, TelemetryStore

BUSY_TIMEOUT_S = 10.0  # a reader or second writer waits this long for the write lock


class SqliteStore(TelemetryStore):
    backend = "sqlite"

    def __init__(self, url: str, path: Path) -> None:
        super().__init__(url)
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(str(path), isolation_level=None, timeout=BUSY_TIMEOUT_S, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the telemetry store {path}: {exc}") from None
        self._depth = 0
        self.migrate()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        if self._depth:  # nested: part of the enclosing transaction
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self.db.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield
        except BaseException:
            self._depth = 0
            self.db.execute("ROLLBACK")
            raise
        self._depth = 0
        self.db.execute("COMMIT")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return int(self.db.execute(sql, tuple(params)).rowcount)

    def executemany(self, sql: str, rows: Sequence[Row]) -> int:
        return int(self.db.executemany(sql, rows).rowcount)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return [tuple(r) for r in self.db.execute(sql, tuple(params)).fetchall()]

    def close(self) -> None:
        self.db.close()
