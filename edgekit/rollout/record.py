"""One rollout as a record: what it ships, to whom, how far it got, and every decision.

The record is the whole truth of a rollout — stored in the telemetry store (table
``rollouts``) and published retained on ``PREFIX/rollouts/{id}`` — so a ``serve`` that
restarts, or another one that takes over the lead, continues exactly where it was: the
devices already told (and when), those skipped, the phase, when its bake began.

States::

    running ──► completed     the last phase baked and every gate passed
       │  ▲ ──► aborted       a gate failed, or `rollout abort`: the group rolled back
       ▼  │ ──► failed        the controller could not act (no previous version to go back to …)
    paused       (`rollout pause` / `resume`; a paused rollout deploys nothing and judges nothing)
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from device_agent.protocol import BundleRef

from ..alerts.alert import iso
from .gates import Decision
from .plan import format_phases

RUNNING, PAUSED, COMPLETED, ABORTED, FAILED = "running", "paused", "completed", "aborted", "failed"
STATES = (RUNNING, PAUSED, COMPLETED, ABORTED, FAILED)
OPEN = (RUNNING, PAUSED)
REQUESTS = ("pause", "resume", "abort")
FORMAT = 1


class RolloutFormatError(ValueError):
    """A stored or retained rollout document this edgekit cannot read."""


def new_id() -> str:
    return uuid.uuid4().hex[:12]


@dataclass(frozen=True)
class Rollout:
    id: str
    bundle: BundleRef
    size: int
    group: str
    phases: tuple[float, ...]
    bake_s: float
    gates: Mapping[str, Any]  # RolloutConfig.gates_json() at start
    previous: BundleRef | None  # what most of the group ran at start: where an abort goes back to
    key: str  # the workspace key serve signs desired states with (role deploy)
    bundle_key: str  # ... and an abort's rollback bundle (role bundle)
    created: float
    state: str = RUNNING
    phase: int = 0
    phase_started: float | None = None  # when the phase's devices were told; None: not yet deployed
    baked_from: float | None = None  # when every device told was done (active, failed or offline)
    targeted: Mapping[str, tuple[int, float]] = field(default_factory=dict)  # device -> (phase, told at)
    skipped: Mapping[str, int] = field(default_factory=dict)  # device -> phase it was offline at
    decisions: tuple[Decision, ...] = ()  # the latest per phase, and the final one
    rollback: BundleRef | None = None  # the version an abort shipped (the previous one, re-signed)
    log: tuple[tuple[float, str], ...] = ()  # what happened, oldest first
    note: str = ""  # why it is waiting, or why it ended
    updated: float = 0.0
    created_by: str = ""

    @property
    def open(self) -> bool:
        return self.state in OPEN

    @property
    def label(self) -> str:
        return f"{self.bundle.label} to group {self.group}"

    def said(self, now: float, text: str, **changes: Any) -> Rollout:
        return replace(self, log=(*self.log, (now, text))[-200:], updated=now, **changes)

    def decided(self, decision: Decision) -> Rollout:
        kept = tuple(d for d in self.decisions if d.phase != decision.phase)
        return replace(self, decisions=(*kept, decision))

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "id": self.id,
            "bundle": self.bundle.to_json(),
            "size": self.size,
            "group": self.group,
            "phases": list(self.phases),
            "phases_text": format_phases(self.phases),
            "bake_s": self.bake_s,
            "gates": dict(self.gates),
            "previous": None if self.previous is None else self.previous.to_json(),
            "key": self.key,
            "bundle_key": self.bundle_key,
            "created": self.created,
            "created_at": iso(self.created),
            "created_by": self.created_by,
            "state": self.state,
            "phase": self.phase,
            "phase_started": self.phase_started,
            "baked_from": self.baked_from,
            "targeted": {d: {"phase": p, "told": t} for d, (p, t) in sorted(self.targeted.items())},
            "skipped": dict(sorted(self.skipped.items())),
            "decisions": [d.to_json() for d in self.decisions],
            "rollback": None if self.rollback is None else self.rollback.to_json(),
            "log": [{"ts": t, "at": iso(t), "text": s} for t, s in self.log],
            "note": self.note,
            "updated": self.updated,
            "updated_at": iso(self.updated) if self.updated else None,
        }

    def encode(self) -> bytes:
        return json.dumps(self.to_json(), sort_keys=True, allow_nan=False).encode("utf-8")

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Rollout:
        if doc.get("format") != FORMAT:
            raise RolloutFormatError(f"rollout document format {doc.get('format')!r}; this edgekit reads {FORMAT}")
        try:
            prev, back = doc.get("previous"), doc.get("rollback")
            return cls(
                id=str(doc["id"]),
                bundle=BundleRef.from_json(doc["bundle"]),
                size=int(doc["size"]),
                group=str(doc["group"]),
                phases=tuple(float(p) for p in doc["phases"]),
                bake_s=float(doc["bake_s"]),
                gates=dict(doc.get("gates") or {}),
                previous=None if prev is None else BundleRef.from_json(prev),
                key=str(doc["key"]),
                bundle_key=str(doc["bundle_key"]),
                created=float(doc["created"]),
                created_by=str(doc.get("created_by") or ""),
                state=str(doc["state"]),
                phase=int(doc["phase"]),
                phase_started=_opt_float(doc.get("phase_started")),
                baked_from=_opt_float(doc.get("baked_from")),
                targeted={d: (int(v["phase"]), float(v["told"])) for d, v in (doc.get("targeted") or {}).items()},
                skipped={d: int(p) for d, p in (doc.get("skipped") or {}).items()},
                decisions=tuple(Decision.from_json(d) for d in doc.get("decisions") or []),
                rollback=None if back is None else BundleRef.from_json(back),
                log=tuple((float(e["ts"]), str(e["text"])) for e in doc.get("log") or []),
                note=str(doc.get("note") or ""),
                updated=float(doc.get("updated") or 0.0),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise RolloutFormatError(f"rollout document: {exc}") from None

    @classmethod
    def decode(cls, text: str | bytes) -> Rollout:
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise RolloutFormatError(f"rollout document is not JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise RolloutFormatError("rollout document is not an object")
        return cls.from_json(doc)


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def rollout_topic(prefix: str, rollout_id: str) -> str:
    return f"{prefix}/rollouts/{rollout_id}"
