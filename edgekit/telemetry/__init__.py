"""Fleet telemetry kept by ``edgekit serve``: events, drift windows, heartbeats, summaries,
births and Wills, in SQLite (the workspace default) or PostgreSQL — one interface.

Kept apart from the workspace database (:mod:`edgekit.store`, runs and registry): telemetry
grows without bound and may live on another machine, in a database several collectors share.

Schema (version 3; :mod:`edgekit.telemetry.schema`; a version-1 store is migrated on open)::

    events         (device, boot_id, seq) PK, id, ts, received, kind, code, detail,
                   bundle_name, bundle_version, bundle_sha256, doc
    drift_windows  (device, boot_id, seq) PK, id, ts, received, bundle_name, bundle_version,
                   bundle_sha256, verdict, n, drifted (JSON list), doc
    heartbeats     (device, boot_id, ts) PK, received, bdseq, interval_s, phase, seq, served,
                   rejected, p50_us, p90_us, p99_us, outbox_queued, outbox_dropped, rss_bytes,
                   cpu_s, cpu_pct, disk_free_bytes, disk_total_bytes, doc
    reported       (device, boot_id, ts) PK, received, phase, active_name, active_version,
                   active_sha256, last_error_code, doc
    states         (device, boot_id, bdseq, online) PK, ts, received, agent, reason, doc
    latest         (device, leaf) PK, order_key, received, doc      newest state / hb / reported
    streams        (device, boot_id) PK, first_received, max_seq, announced_seq, contiguous
    lost           (device, boot_id, first_seq) PK, last_seq, at, command
    alerts         id PK, key, rule, state, severity, device, grp, feature, started, updated,
                   resolved, cleared, doc (edgekit.alert/1); one firing instance per key
    rollouts       id PK, grp, name, version, state, created, updated, requested,
                   requested_at, requested_by, doc (a rollout record); one open per group
    telemetry_meta key PK, value                                     schema_version
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .store import Gap, Received, Stored, StoreError, TelemetryStore, WriteResult

DEFAULT_FILE = "telemetry.db"  # in the workspace's .edgekit folder

__all__ = ["Gap", "Received", "StoreError", "Stored", "TelemetryStore", "WriteResult", "open_store", "store_url"]


def store_url(config: dict[str, Any] | None, state_dir: Path | None, override: str | None = None) -> str:
    """The store a workspace uses: ``override`` (``--store``), else ``[serve] store`` of its
    edgekit.toml, else SQLite in its ``.edgekit`` folder."""
    if override:
        return override
    section = (config or {}).get("serve") or {}
    if section.get("store"):
        return str(section["store"])
    return f"sqlite:///{(state_dir or Path('.')).resolve() / DEFAULT_FILE}"


def open_store(url: str) -> TelemetryStore:
    """``postgresql://…`` (or ``postgres://…``), ``sqlite:///ABS/PATH``, ``sqlite:REL/PATH`` or a
    plain file path. The schema is created or checked on open."""
    if url.startswith(("postgresql://", "postgres://")):
        from .postgres import PostgresStore

        return PostgresStore(url)
    from .sqlite import SqliteStore

    if url.startswith("sqlite:"):
        rest = url[len("sqlite:") :]
        path = rest[2:] if rest.startswith("//") else rest  # sqlite:///abs -> /abs
        if not path:
            raise StoreError(f"store URL {url!r} names no file", "use sqlite:///ABSOLUTE/PATH or a file path")
        return SqliteStore(url, Path(path))
    if "://" in url:
        scheme = url.split("://", 1)[0]
        raise StoreError(f"unsupported store URL scheme {scheme!r}", "use postgresql://… or sqlite:///PATH")
    return SqliteStore(f"sqlite:///{Path(url).resolve()}", Path(url))
