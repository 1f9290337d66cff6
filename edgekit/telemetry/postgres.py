"""The PostgreSQL backend (psycopg 3): the same SQL with ``%s`` placeholders, one transaction
per batch (``executemany`` is pipelined by psycopg), an advisory lock so that when several
collectors share one database exactly one scans for gaps, and another around schema creation
so collectors starting at once do not race."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from .store import Row, StoreError, TelemetryStore

LEADER_LOCK = 0x65646B01  # advisory lock ids: arbitrary, fixed, ours
SCHEMA_LOCK = 0x65646B02
CONNECT_TIMEOUT_S = 10


class PostgresStore(TelemetryStore):
    backend = "postgresql"
    INT = "BIGINT"
    REAL = "DOUBLE PRECISION"
    GREATEST = "GREATEST"

    def __init__(self, url: str) -> None:
        super().__init__(url)
        try:
            import psycopg
        except ImportError as exc:
            raise StoreError(
                "a PostgreSQL store needs psycopg", "install the serve extra: pip install 'edgekit[serve]'"
            ) from exc
        self._errors: tuple[type[BaseException], ...] = (psycopg.Error,)
        try:
            self.db = psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
        except psycopg.Error as exc:
            raise StoreError(f"cannot connect to the telemetry store {_safe(url)}: {str(exc).strip()}") from None
        self._depth = 0
        self._leader = False
        self.migrate()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self._depth = 1
        try:
            with self.db.transaction():
                yield
        finally:
            self._depth = 0

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        with self.db.cursor() as cur:
            cur.execute(self._sql(sql), tuple(params))
            return max(0, int(cur.rowcount))

    def executemany(self, sql: str, rows: Sequence[Row]) -> int:
        with self.db.cursor() as cur:
            cur.executemany(self._sql(sql), rows)
            return max(0, int(cur.rowcount))

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        with self.db.cursor() as cur:
            cur.execute(self._sql(sql), tuple(params))
            return [tuple(r) for r in cur.fetchall()]

    def _lock_schema(self) -> None:
        self.query("SELECT pg_advisory_xact_lock(?)", (SCHEMA_LOCK,))

    def try_lead(self) -> bool:
        """A session-level advisory lock: held while this connection lives, so when the
        leading collector stops or dies another one takes over at its next scan."""
        if not self._leader:
            self._leader = bool(self.query("SELECT pg_try_advisory_lock(?)", (LEADER_LOCK,))[0][0])
        return self._leader

    def close(self) -> None:
        with contextlib.suppress(*self._errors):
            self.db.close()


def _safe(url: str) -> str:
    """The URL without its password, for messages."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url
