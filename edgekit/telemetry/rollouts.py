"""Rollout records in the telemetry store (table ``rollouts``, schema 3).

The store is how the CLI and ``serve`` talk about rollouts. ``rollout start`` inserts the
record; ``pause``/``resume``/``abort`` write a request into its row; the controller in the
leading ``serve`` applies the request and clears it, and writes the record back as the
rollout moves. One writer of the record (the controller) and one column the CLI writes
(``requested``) need no locking; the unique index on open rollouts per group keeps two
``rollout start`` from racing each other into the same group.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..rollout.record import OPEN, Rollout, RolloutFormatError
from .store import StoreError, TelemetryStore


class RolloutNotFound(StoreError):
    """No rollout of that id (or id prefix) in the store."""


def insert(store: TelemetryStore, r: Rollout) -> None:
    with store.transaction():
        busy = store.query("SELECT id, name, version FROM rollouts WHERE grp = ? AND state IN (?, ?)", (r.group, *OPEN))
        if busy:
            rid, name, version = busy[0]
            raise StoreError(
                f"group {r.group} already has an open rollout, {rid} ({name} v{version})",
                f"wait for it, or end it: edgekit rollout abort {rid}",
            )
        store.execute(
            "INSERT INTO rollouts (id, grp, name, version, state, created, updated, doc) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (r.id, r.group, r.bundle.name, r.bundle.version, r.state, r.created, r.updated or r.created, _text(r)),
        )


def save(store: TelemetryStore, r: Rollout) -> None:
    """Write the record back (the controller's view; the request column is left alone)."""
    with store.transaction():
        store.execute(
            "UPDATE rollouts SET state = ?, updated = ?, doc = ? WHERE id = ?", (r.state, r.updated, _text(r), r.id)
        )


def load(store: TelemetryStore, open_only: bool = False, group: str | None = None) -> list[Rollout]:
    """Rollouts, newest first."""
    clauses, params = [], []
    if open_only:
        clauses.append("state IN (?, ?)")
        params += list(OPEN)
    if group is not None:
        clauses.append("grp = ?")
        params.append(group)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    rows = store.query(f"SELECT doc FROM rollouts {where} ORDER BY created DESC, id", params)
    return _decode(rows)


def get(store: TelemetryStore, ref: str | None) -> Rollout:
    """A rollout by id or a unique id prefix; ``None``: the newest (open ones first)."""
    if ref is None:
        found = load(store, open_only=True) or load(store)
        if not found:
            raise RolloutNotFound("no rollout in the store", "start one: edgekit rollout start NAME@VERSION --group G")
        return found[0]
    rows = store.query("SELECT doc FROM rollouts WHERE id LIKE ? ORDER BY created DESC", (f"{ref}%",))
    found = _decode(rows)
    if not found:
        raise RolloutNotFound(f"no rollout {ref!r} in the store", "see 'edgekit rollout status'")
    if len(found) > 1:
        raise RolloutNotFound(f"{ref!r} names {len(found)} rollouts", "give more of the id")
    return found[0]


def request(store: TelemetryStore, rollout_id: str, action: str, who: str, at: float) -> None:
    with store.transaction():
        store.execute(
            "UPDATE rollouts SET requested = ?, requested_at = ?, requested_by = ? WHERE id = ?",
            (action, at, who, rollout_id),
        )


def requested(store: TelemetryStore, rollout_id: str) -> tuple[str, float, str] | None:
    rows = store.query("SELECT requested, requested_at, requested_by FROM rollouts WHERE id = ?", (rollout_id,))
    if not rows or rows[0][0] is None:
        return None
    action, at, who = rows[0]
    return str(action), float(at or 0.0), str(who or "")


def clear_request(store: TelemetryStore, rollout_id: str, action: str) -> None:
    """Clear the request once applied (a newer request written meanwhile stays)."""
    with store.transaction():
        store.execute("UPDATE rollouts SET requested = NULL WHERE id = ? AND requested = ?", (rollout_id, action))


def _text(r: Rollout) -> str:
    return r.encode().decode("utf-8")


def _decode(rows: Sequence[tuple[object, ...]]) -> list[Rollout]:
    out = []
    for (doc,) in rows:
        try:
            out.append(Rollout.decode(str(doc)))
        except RolloutFormatError:
            continue  # written by a newer edgekit
    return out
