"""The alert document: one definition for the store, the alerts topic, ``edgekit fleet alerts
--json`` and the ``--on-alert`` command's stdin.

Alerts are host to host (the collector tells people and their tools), so the document lives
here rather than in :mod:`device_agent.protocol`, which is the devices' wire format. Its
shape is ``edgekit.alert/1`` in docs/json.md; what each rule puts in ``evidence`` is in
docs/alerts.md.

An alert is one *instance* of a condition: ``key`` names the condition (rule and subject,
e.g. ``drift:pump-7:temperature``), ``id`` this instance. At most one instance of a key is
firing at a time; when it resolves it keeps its ``started`` and gains ``resolved``, and a
later recurrence is a new instance with a new id.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from device_agent.errors import ProtocolError
from device_agent.protocol import BundleRef

SCHEMA = "edgekit.alert/1"
FIRING, RESOLVED = "firing", "resolved"
STATES = (FIRING, RESOLVED)
SEVERITIES = ("info", "warning", "critical")  # lowest first
RULES = (
    "drift",
    "prediction_drift",
    "skew",
    "fleet_drift",
    "error_rate",
    "offline",
    "latency",
    "low_confidence",
    "disk",
    "memory",
    "cpu",
)


class AlertFormatError(ValueError):
    """A stored or received alert document this edgekit cannot read."""


def severity_rank(severity: str) -> int:
    return SEVERITIES.index(severity) if severity in SEVERITIES else -1


def iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


def from_iso(text: Any, what: str) -> float:
    if not isinstance(text, str):
        raise AlertFormatError(f"alert: {what} must be an ISO 8601 time")
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise AlertFormatError(f"alert: {what} {text!r} is not an ISO 8601 time") from None


def topic_key(key: str) -> str:
    """A topic level for ``key`` (feature names may hold '/', '+' or '#'): a short hash."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Alert:
    id: str
    key: str
    rule: str
    state: str
    severity: str
    summary: str
    started: float
    updated: float
    resolved: float | None = None
    device: str | None = None
    group: str | None = None
    feature: str | None = None
    bundle: BundleRef | None = None
    weight: float = 0.0  # for ordering: severity first, then this (importance x strength)
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def firing(self) -> bool:
        return self.state == FIRING

    def resolve(self, now: float, why: str, evidence: dict[str, Any] | None = None) -> Alert:
        ev = dict(evidence if evidence is not None else self.evidence)
        ev["resolution"] = why
        return replace(self, state=RESOLVED, resolved=now, updated=now, evidence=ev)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "id": self.id,
            "key": self.key,
            "rule": self.rule,
            "state": self.state,
            "severity": self.severity,
            "summary": self.summary,
            "started": iso(self.started),
            "updated": iso(self.updated),
            "resolved": iso(self.resolved),
            "device": self.device,
            "group": self.group,
            "feature": self.feature,
            "bundle": None if self.bundle is None else self.bundle.to_json(),
            "weight": round(self.weight, 6),
            "evidence": self.evidence,
        }

    def encode(self) -> bytes:
        return json.dumps(self.to_json(), sort_keys=True, allow_nan=False).encode()

    @classmethod
    def from_json(cls, obj: Any) -> Alert:
        if not isinstance(obj, dict):
            raise AlertFormatError("alert: not a JSON object")
        if obj.get("schema") != SCHEMA:
            raise AlertFormatError(f"alert: schema {obj.get('schema')!r} is not {SCHEMA!r} (upgrade edgekit)")
        try:
            state, severity = str(obj["state"]), str(obj["severity"])
            if state not in STATES or severity not in SEVERITIES:
                raise AlertFormatError(f"alert: unknown state {state!r} or severity {severity!r}")
            bundle = obj.get("bundle")
            evidence = obj.get("evidence") or {}
            if not isinstance(evidence, dict):
                raise AlertFormatError("alert: evidence must be an object")
            return cls(
                id=str(obj["id"]),
                key=str(obj["key"]),
                rule=str(obj["rule"]),
                state=state,
                severity=severity,
                summary=str(obj["summary"]),
                started=from_iso(obj["started"], "started"),
                updated=from_iso(obj["updated"], "updated"),
                resolved=None if obj.get("resolved") is None else from_iso(obj["resolved"], "resolved"),
                device=obj.get("device"),
                group=obj.get("group"),
                feature=obj.get("feature"),
                bundle=None if bundle is None else BundleRef.from_json(bundle, "alert bundle"),
                weight=float(obj.get("weight") or 0.0),
                evidence=evidence,
            )
        except AlertFormatError:
            raise
        except KeyError as exc:
            raise AlertFormatError(f"alert: missing {exc.args[0]!r}") from None
        except ProtocolError as exc:
            raise AlertFormatError(exc.detail) from None
        except (TypeError, ValueError) as exc:
            raise AlertFormatError(f"alert: {exc}") from None

    @classmethod
    def decode(cls, text: str | bytes) -> Alert:
        try:
            return cls.from_json(json.loads(text))
        except json.JSONDecodeError as exc:
            raise AlertFormatError(f"alert: not JSON ({exc.msg})") from None


def ordering(alert: Alert) -> tuple[Any, ...]:
    """Firing first, then the most severe, then the heaviest, then the newest."""
    return (not alert.firing, -severity_rank(alert.severity), -alert.weight, -alert.started, alert.key)
