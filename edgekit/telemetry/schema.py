"""The telemetry schema, written once for both backends.

Column types are the only difference between SQLite and PostgreSQL here (``{int}`` is
INTEGER or BIGINT, ``{real}`` REAL or DOUBLE PRECISION); every table, key and index is the
same on both, so the same queries and the same tests run on either.

Times are Unix seconds (float). ``ts`` is the device's clock, ``received`` the collector's.
``doc`` is the document exactly as it arrived (UTF-8 JSON text): the typed columns beside it
are for filtering, the document is the source of truth and is read back through
:mod:`device_agent.protocol`.
"""

from __future__ import annotations

VERSION = 3

TABLES = (
    # One row per event; (device, boot_id, seq) is the idempotency key of the outbox.
    """CREATE TABLE IF NOT EXISTS events (
         device TEXT NOT NULL, boot_id TEXT NOT NULL, seq {int} NOT NULL,
         id TEXT NOT NULL, ts {real} NOT NULL, received {real} NOT NULL,
         kind TEXT NOT NULL, code TEXT NOT NULL, detail TEXT NOT NULL,
         bundle_name TEXT, bundle_version {int}, bundle_sha256 TEXT,
         doc TEXT NOT NULL,
         PRIMARY KEY (device, boot_id, seq))""",
    "CREATE INDEX IF NOT EXISTS events_ts ON events (ts)",
    "CREATE INDEX IF NOT EXISTS events_device_ts ON events (device, ts)",
    "CREATE INDEX IF NOT EXISTS events_code_ts ON events (code, ts)",
    # One row per drift window; same key, same sequence as events (one counter per boot).
    """CREATE TABLE IF NOT EXISTS drift_windows (
         device TEXT NOT NULL, boot_id TEXT NOT NULL, seq {int} NOT NULL,
         id TEXT NOT NULL, ts {real} NOT NULL, received {real} NOT NULL,
         bundle_name TEXT NOT NULL, bundle_version {int} NOT NULL, bundle_sha256 TEXT NOT NULL,
         verdict TEXT, n {int}, drifted TEXT NOT NULL,
         doc TEXT NOT NULL,
         PRIMARY KEY (device, boot_id, seq))""",
    "CREATE INDEX IF NOT EXISTS drift_windows_ts ON drift_windows (ts)",
    "CREATE INDEX IF NOT EXISTS drift_windows_device_ts ON drift_windows (device, ts)",
    # Every heartbeat (a retained one delivered again is the same row).
    """CREATE TABLE IF NOT EXISTS heartbeats (
         device TEXT NOT NULL, boot_id TEXT NOT NULL, ts {real} NOT NULL, received {real} NOT NULL,
         bdseq {int} NOT NULL, interval_s {real} NOT NULL, phase TEXT NOT NULL, seq {int},
         served {int}, rejected {int}, p50_us {real}, p90_us {real}, p99_us {real},
         outbox_queued {int}, outbox_dropped {int},
         rss_bytes {int}, cpu_s {real}, cpu_pct {real}, disk_free_bytes {int}, disk_total_bytes {int},
         doc TEXT NOT NULL,
         PRIMARY KEY (device, boot_id, ts))""",
    "CREATE INDEX IF NOT EXISTS heartbeats_device_ts ON heartbeats (device, ts)",
    # Every 'reported' summary: the deployment phase over time.
    """CREATE TABLE IF NOT EXISTS reported (
         device TEXT NOT NULL, boot_id TEXT NOT NULL, ts {real} NOT NULL, received {real} NOT NULL,
         phase TEXT NOT NULL, active_name TEXT, active_version {int}, active_sha256 TEXT,
         last_error_code TEXT,
         doc TEXT NOT NULL,
         PRIMARY KEY (device, boot_id, ts))""",
    "CREATE INDEX IF NOT EXISTS reported_device_ts ON reported (device, ts)",
    # Every birth and Will (a Will carries no time of its own: ``received`` orders them).
    """CREATE TABLE IF NOT EXISTS states (
         device TEXT NOT NULL, boot_id TEXT NOT NULL, bdseq {int} NOT NULL, online {int} NOT NULL,
         ts {real}, received {real} NOT NULL, agent TEXT, reason TEXT,
         doc TEXT NOT NULL,
         PRIMARY KEY (device, boot_id, bdseq, online))""",
    "CREATE INDEX IF NOT EXISTS states_device_received ON states (device, received)",
    # The newest document of each retained kind per device: fleet status without a scan.
    # ``order_key`` says which is newer: ts for heartbeats and summaries, 2*bdseq(+1 offline) for states.
    """CREATE TABLE IF NOT EXISTS latest (
         device TEXT NOT NULL, leaf TEXT NOT NULL, order_key {real} NOT NULL, received {real} NOT NULL,
         doc TEXT NOT NULL,
         PRIMARY KEY (device, leaf))""",
    # Each boot's sequence: the highest number stored and announced (heartbeat), and
    # ``contiguous``: every number up to it is stored or known lost (gap scans start there).
    """CREATE TABLE IF NOT EXISTS streams (
         device TEXT NOT NULL, boot_id TEXT NOT NULL, first_received {real} NOT NULL,
         max_seq {int} NOT NULL, announced_seq {int} NOT NULL, contiguous {int} NOT NULL,
         PRIMARY KEY (device, boot_id))""",
    # Sequence ranges the device said it no longer has (its resend reply): lost for good.
    """CREATE TABLE IF NOT EXISTS lost (
         device TEXT NOT NULL, boot_id TEXT NOT NULL, first_seq {int} NOT NULL, last_seq {int} NOT NULL,
         at {real} NOT NULL, command TEXT NOT NULL,
         PRIMARY KEY (device, boot_id, first_seq))""",
    "CREATE TABLE IF NOT EXISTS telemetry_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
)


# Each later version: what it adds, applied in order to a store at an older version (and,
# being idempotent, harmlessly to a new one). Version 2: alerts, the active bundle of each
# heartbeat (the latency rule compares bundles), and arrival-time indexes (the alert rules
# read what arrived since their last run).
MIGRATIONS: dict[int, tuple[str, ...]] = {
    2: (
        # One row per alert instance: firing until resolved; at most one firing per key.
        """CREATE TABLE IF NOT EXISTS alerts (
             id TEXT PRIMARY KEY, key TEXT NOT NULL, rule TEXT NOT NULL, state TEXT NOT NULL,
             severity TEXT NOT NULL, device TEXT, grp TEXT, feature TEXT,
             started {real} NOT NULL, updated {real} NOT NULL, resolved {real}, cleared {real},
             doc TEXT NOT NULL)""",
        "CREATE UNIQUE INDEX IF NOT EXISTS alerts_firing ON alerts (key) WHERE state = 'firing'",
        "CREATE INDEX IF NOT EXISTS alerts_started ON alerts (started)",
        "CREATE INDEX IF NOT EXISTS alerts_device ON alerts (device, started)",
        "ALTER TABLE heartbeats ADD COLUMN active_sha256 TEXT",
        "CREATE INDEX IF NOT EXISTS heartbeats_received ON heartbeats (received)",
        "CREATE INDEX IF NOT EXISTS heartbeats_device_sha ON heartbeats (device, active_sha256, ts)",
        "CREATE INDEX IF NOT EXISTS drift_windows_received ON drift_windows (received)",
        "CREATE INDEX IF NOT EXISTS drift_windows_device_bundle ON drift_windows (device, bundle_sha256, ts)",
    ),
    # Version 3: phased rollouts (edgekit/rollout/record.py), at most one open per group; a
    # command from the CLI (pause, resume, abort) waits in ``requested`` for serve to apply it.
    3: (
        """CREATE TABLE IF NOT EXISTS rollouts (
             id TEXT PRIMARY KEY, grp TEXT NOT NULL, name TEXT NOT NULL, version {int} NOT NULL,
             state TEXT NOT NULL, created {real} NOT NULL, updated {real} NOT NULL,
             requested TEXT, requested_at {real}, requested_by TEXT, doc TEXT NOT NULL)""",
        "CREATE UNIQUE INDEX IF NOT EXISTS rollouts_open ON rollouts (grp) WHERE state IN ('running', 'paused')",
        "CREATE INDEX IF NOT EXISTS rollouts_created ON rollouts (created)",
    ),
}


def statements(int_type: str, real_type: str) -> list[str]:
    """The version-1 tables (every store has them)."""
    return [sql.format(int=int_type, real=real_type) for sql in TABLES]


def migration(version: int, int_type: str, real_type: str) -> list[str]:
    return [sql.format(int=int_type, real=real_type) for sql in MIGRATIONS[version]]
