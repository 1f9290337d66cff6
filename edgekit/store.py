"""The workspace database: one SQLite file, ``.edgekit/edgekit.db``, for runs and the registry.

Every connection is opened here (:func:`connect`), so every caller gets the same settings:
WAL journal (readers never block the writer, several CLI processes can share the file),
foreign keys on, a busy timeout instead of "database is locked", and explicit transactions
(:func:`transaction` takes the write lock up front with ``BEGIN IMMEDIATE``).

The schema has a version (``PRAGMA user_version``) and a list of migrations, applied in
order, each in its own transaction, and recorded in ``schema_migrations``. A migration is
SQL plus an optional Python step; the Python steps adopt what older edgekit versions left
on disk (``runs/<id>/run.json`` folders, ``bundles/NAME/vN.ekb`` files), so upgrading a
workspace loses nothing. A database written by a newer edgekit is refused, not guessed at.

Artifacts stay files: ONNX models, reference statistics and holdout rows in
``.edgekit/runs/<id>/``, bundles in ``.edgekit/bundles/NAME/vN.ekb``. The database holds
records, metrics and the registry, and the paths and hashes that tie them to those files.

Schema (version 3)::

    runs             id PK, created, task, family, data_sha256, data_path, seed,
                     parity_ok, quantized, duration_s, git_commit, git_dirty,
                     record (the full run record as JSON: the source of truth)
    run_metrics      (run_id, name) PK → value           e.g. "holdout.accuracy"
    models           name PK, created
    model_versions   (name, version) PK, stage ∈ staging|production|archived (at most one
                     production per name), source ∈ run|user-model|rollback, run_id, model_sha256,
                     path (relative to .edgekit), sha256, size, keyid, created, created_by,
                     rollback_of (the version a rollback restores)
    deployments      id PK, name, version, target ("group:G" | "device:D"), actor, at
                     (append-only: what devices were told to run, so the registry knows the
                     lowest version they still accept)
    stage_history    id PK, name, version, from_stage, to_stage, reason, actor, at
                     (append-only: triggers refuse UPDATE and DELETE)
    schema_migrations version PK, description, applied
"""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .errors import WorkspaceError

DB_FILE = "edgekit.db"
BUSY_TIMEOUT_MS = 10_000  # milliseconds a writer waits for another process's write lock


class StoreError(WorkspaceError):
    """The workspace database cannot be opened, is newer than this edgekit, or is corrupt."""

    kind = "store"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]
    adopt: Callable[[sqlite3.Connection, Path], None] | None = None


# ---------------------------------------------------------------------------------------------
# Run rows: one function turns a run record into the row, used by saves and by the migration.


def _flatten_numbers(prefix: str, obj: Any, out: dict[str, float]) -> None:
    if isinstance(obj, bool):
        return
    if isinstance(obj, int | float):
        out[prefix] = float(obj)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _flatten_numbers(f"{prefix}.{k}" if prefix else str(k), v, out)


def metric_values(record: dict[str, Any]) -> dict[str, float]:
    """Every number under ``metrics``, flattened to dotted names (``holdout.accuracy``)."""
    out: dict[str, float] = {}
    _flatten_numbers("", record.get("metrics") or {}, out)
    return out


def put_run(conn: sqlite3.Connection, record: dict[str, Any]) -> None:
    """Insert or replace one run record (inside the caller's transaction)."""
    data = record.get("data") or {}
    code = record.get("code_version") or {}
    model = record.get("model") or {}
    params = record.get("params") or {}
    quant = record.get("quantization") or {}
    parity = record.get("parity") or {}
    seed = record.get("seed", params.get("seed"))
    conn.execute(
        """INSERT INTO runs (id, created, task, family, data_sha256, data_path, seed, parity_ok, quantized,
                             duration_s, git_commit, git_dirty, record)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
           ON CONFLICT(id) DO UPDATE SET
             created=excluded.created, task=excluded.task, family=excluded.family,
             data_sha256=excluded.data_sha256, data_path=excluded.data_path, seed=excluded.seed,
             parity_ok=excluded.parity_ok, quantized=excluded.quantized, duration_s=excluded.duration_s,
             git_commit=excluded.git_commit, git_dirty=excluded.git_dirty, record=excluded.record""",
        (
            str(record["id"]),
            str(record.get("created") or now_iso()),
            record.get("task"),
            model.get("family") or params.get("model"),
            data.get("sha256"),
            data.get("path"),
            seed if isinstance(seed, int) else None,
            None if "ok" not in parity else int(bool(parity["ok"])),
            int(bool(quant.get("applied"))),
            record.get("duration_s"),
            code.get("git_commit"),
            None if "dirty" not in code else int(bool(code["dirty"])),
            json.dumps(record, sort_keys=True, default=str),
        ),
    )
    conn.execute("DELETE FROM run_metrics WHERE run_id = ?", (str(record["id"]),))
    conn.executemany(
        "INSERT INTO run_metrics (run_id, name, value) VALUES (?, ?, ?)",
        [(str(record["id"]), k, v) for k, v in sorted(metric_values(record).items())],
    )


def _adopt_run_folders(conn: sqlite3.Connection, state: Path) -> None:
    """Runs recorded before the database existed: ``runs/<id>/run.json``."""
    for run_json in sorted((state / "runs").glob("*/run.json")):
        try:
            record = json.loads(run_json.read_text())
        except (OSError, ValueError):
            continue  # unreadable leftovers stay on disk, untouched
        if isinstance(record, dict) and record.get("id") == run_json.parent.name:
            put_run(conn, record)


_BUNDLE_FILE = re.compile(r"v(\d+)\.ekb")


def _adopt_bundle_files(conn: sqlite3.Connection, state: Path) -> None:
    """Bundles built before the registry existed: ``bundles/NAME/vN.ekb`` become ``staging``
    versions, with a history entry that says where they came from."""
    import hashlib

    from device_agent.bundle import MODEL, read_unverified
    from device_agent.errors import AgentError

    at = now_iso()
    for folder in sorted(p for p in (state / "bundles").glob("*") if p.is_dir()):
        found = sorted((int(m.group(1)), p) for p in folder.glob("v*.ekb") if (m := _BUNDLE_FILE.fullmatch(p.name)))
        for version, path in found:
            data = path.read_bytes()
            run_id = model_sha = keyid = None
            try:
                manifest, members = read_unverified(data)
                run_id = (manifest.get("lineage") or {}).get("run_id")
                model_sha = hashlib.sha256(members[MODEL]).hexdigest() if MODEL in members else None
                sigs = json.loads(members.get("manifest.sig", b"[]"))
                keyid = sigs[0].get("keyid") if sigs and isinstance(sigs[0], dict) else None
            except (AgentError, ValueError, KeyError, TypeError):
                pass
            conn.execute("INSERT OR IGNORE INTO models (name, created) VALUES (?, ?)", (folder.name, at))
            conn.execute(
                """INSERT INTO model_versions (name, version, stage, source, run_id, model_sha256, path, sha256,
                                               size, keyid, created, created_by)
                   VALUES (?, ?, 'staging', ?, ?, ?, ?, ?, ?, ?, ?, 'edgekit migration')""",
                (
                    folder.name,
                    version,
                    "run" if run_id else "user-model",
                    run_id,
                    model_sha,
                    str(path.relative_to(state)),
                    hashlib.sha256(data).hexdigest(),
                    len(data),
                    keyid,
                    at,
                ),
            )
            conn.execute(
                """INSERT INTO stage_history (name, version, from_stage, to_stage, reason, actor, at)
                   VALUES (?, ?, NULL, 'staging', ?, 'edgekit migration', ?)""",
                (folder.name, version, "adopted: built before the registry existed", at),
            )


def _adopt_rollbacks(conn: sqlite3.Connection, state: Path) -> None:
    """Rollback versions built before their lineage had a column: read it from the manifest."""
    from device_agent.bundle import read_unverified
    from device_agent.errors import AgentError

    rows = conn.execute("SELECT name, version, path FROM model_versions WHERE source = 'rollback'").fetchall()
    for row in rows:
        try:
            manifest, _ = read_unverified((state / row["path"]).read_bytes())
        except (OSError, AgentError):
            continue  # a missing file stays as it is: registry checks report it when it matters
        restored = (manifest.get("rollback_of") or {}).get("version")
        if isinstance(restored, int):
            conn.execute(
                "UPDATE model_versions SET rollback_of = ? WHERE name = ? AND version = ?",
                (restored, row["name"], row["version"]),
            )


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "runs and their metrics",
        (
            """CREATE TABLE runs (
                 id TEXT PRIMARY KEY,
                 created TEXT NOT NULL,
                 task TEXT,
                 family TEXT,
                 data_sha256 TEXT,
                 data_path TEXT,
                 seed INTEGER,
                 parity_ok INTEGER,
                 quantized INTEGER NOT NULL DEFAULT 0,
                 duration_s REAL,
                 git_commit TEXT,
                 git_dirty INTEGER,
                 record TEXT NOT NULL
               )""",
            "CREATE INDEX runs_by_created ON runs (created, id)",
            "CREATE INDEX runs_by_data ON runs (data_sha256)",
            """CREATE TABLE run_metrics (
                 run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
                 name TEXT NOT NULL,
                 value REAL NOT NULL,
                 PRIMARY KEY (run_id, name)
               )""",
        ),
        _adopt_run_folders,
    ),
    Migration(
        2,
        "model registry: versions, stages, stage history",
        (
            "CREATE TABLE models (name TEXT PRIMARY KEY, created TEXT NOT NULL)",
            """CREATE TABLE model_versions (
                 name TEXT NOT NULL REFERENCES models (name),
                 version INTEGER NOT NULL CHECK (version >= 1),
                 stage TEXT NOT NULL CHECK (stage IN ('staging', 'production', 'archived')),
                 source TEXT NOT NULL CHECK (source IN ('run', 'user-model', 'rollback')),
                 run_id TEXT,
                 model_sha256 TEXT,
                 path TEXT NOT NULL,
                 sha256 TEXT NOT NULL,
                 size INTEGER NOT NULL,
                 keyid TEXT,
                 created TEXT NOT NULL,
                 created_by TEXT NOT NULL,
                 PRIMARY KEY (name, version)
               )""",
            "CREATE UNIQUE INDEX one_production_per_model ON model_versions (name) WHERE stage = 'production'",
            "CREATE INDEX model_versions_by_run ON model_versions (run_id)",
            """CREATE TABLE stage_history (
                 id INTEGER PRIMARY KEY AUTOINCREMENT,
                 name TEXT NOT NULL,
                 version INTEGER NOT NULL,
                 from_stage TEXT,
                 to_stage TEXT NOT NULL,
                 reason TEXT NOT NULL CHECK (length(trim(reason)) > 0),
                 actor TEXT NOT NULL,
                 at TEXT NOT NULL,
                 FOREIGN KEY (name, version) REFERENCES model_versions (name, version)
               )""",
            "CREATE INDEX stage_history_by_model ON stage_history (name, version, id)",
            """CREATE TRIGGER stage_history_append_only_update BEFORE UPDATE ON stage_history
               BEGIN SELECT RAISE(ABORT, 'stage history is append-only'); END""",
            """CREATE TRIGGER stage_history_append_only_delete BEFORE DELETE ON stage_history
               BEGIN SELECT RAISE(ABORT, 'stage history is append-only'); END""",
        ),
        _adopt_bundle_files,
    ),
    Migration(
        3,
        "registry: rollback lineage and deployments",
        (
            "ALTER TABLE model_versions ADD COLUMN rollback_of INTEGER",
            """CREATE TABLE deployments (
                 id INTEGER PRIMARY KEY AUTOINCREMENT,
                 name TEXT NOT NULL,
                 version INTEGER NOT NULL,
                 target TEXT NOT NULL,
                 actor TEXT NOT NULL,
                 at TEXT NOT NULL,
                 FOREIGN KEY (name, version) REFERENCES model_versions (name, version)
               )""",
            "CREATE INDEX deployments_by_model ON deployments (name, version)",
            """CREATE TRIGGER deployments_append_only_update BEFORE UPDATE ON deployments
               BEGIN SELECT RAISE(ABORT, 'deployments are append-only'); END""",
            """CREATE TRIGGER deployments_append_only_delete BEFORE DELETE ON deployments
               BEGIN SELECT RAISE(ABORT, 'deployments are append-only'); END""",
        ),
        _adopt_rollbacks,
    ),
)

SCHEMA_VERSION = MIGRATIONS[-1].version


def db_path(state: Path) -> Path:
    return state / DB_FILE


def connect(state: Path, migrate_to: int = SCHEMA_VERSION) -> sqlite3.Connection:
    """Open (creating if needed) the database of the workspace whose state folder is ``state``,
    and bring its schema up to ``migrate_to`` (tests pass a lower number to build old databases)."""
    state.mkdir(parents=True, exist_ok=True)
    path = db_path(state)
    try:
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open {path}: {exc}", "check the path and permissions") from None
    try:
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")  # durable at each checkpoint; safe with WAL
        conn.execute("PRAGMA foreign_keys = ON")
        migrate(conn, state, migrate_to)
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise StoreError(f"{path} is not a usable edgekit database: {exc}", "restore it from a backup") from None
    except BaseException:
        conn.close()
        raise
    return conn


@contextlib.contextmanager
def session(state: Path) -> Iterator[sqlite3.Connection]:
    """A connection for the length of a ``with`` block."""
    conn = connect(state)
    try:
        yield conn
    finally:
        conn.close()


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` … ``COMMIT``, or ``ROLLBACK`` on any exception."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def schema_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection, state: Path, target: int = SCHEMA_VERSION) -> int:
    """Apply the migrations above the database's version, up to ``target``; returns the version."""
    current = schema_version(conn)
    if current > SCHEMA_VERSION:
        raise StoreError(
            f"{db_path(state)} has schema version {current}; this edgekit knows up to {SCHEMA_VERSION}",
            "upgrade edgekit",
        )
    for migration in MIGRATIONS:
        if migration.version <= current or migration.version > target:
            continue
        with transaction(conn):
            if schema_version(conn) >= migration.version:  # another process got here first
                continue
            if migration.version == 1:
                conn.execute(
                    """CREATE TABLE IF NOT EXISTS schema_migrations (
                         version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied TEXT NOT NULL)"""
                )
            for statement in migration.statements:
                conn.execute(statement)
            if migration.adopt is not None:
                migration.adopt(conn, state)
            conn.execute(
                "INSERT INTO schema_migrations (version, description, applied) VALUES (?, ?, ?)",
                (migration.version, migration.description, now_iso()),
            )
            conn.execute(f"PRAGMA user_version = {int(migration.version)}")
        current = migration.version
    return current
