"""Alert state: findings in, changes out (firing → resolved), with no I/O.

:class:`AlertBook` holds the open (firing) alerts by key. Given one evaluation's findings
and the rules that ran, it says what changed:

* ``fired``: a key that was not firing fires (a new instance, a new id, ``started`` = when
  the evidence says the condition began, else now);
* ``escalated``: a firing alert's severity rose (people are told again);
* ``updated``: a firing alert's evidence changed (stored; nobody is told);
* ``resolved``: a firing key of a rule that ran was not found firing or held (the rule
  reports nothing once a condition is over), or its rule was switched off.

A ``hold`` finding keeps a firing alert as it is and never starts one.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from .alert import FIRING, Alert, severity_rank
from .rules import FIRE, Finding

FIRED, ESCALATED, UPDATED, RESOLVED = "fired", "escalated", "updated", "resolved"
TOLD = (FIRED, ESCALATED, RESOLVED)  # the changes that are published and run the command


@dataclass(frozen=True)
class Change:
    kind: str  # fired | escalated | updated | resolved
    alert: Alert

    @property
    def told(self) -> bool:
        return self.kind in TOLD


def new_id() -> str:
    return uuid.uuid4().hex[:16]


class AlertBook:
    def __init__(self, open_alerts: Iterable[Alert] = (), make_id: Callable[[], str] = new_id) -> None:
        self.open: dict[str, Alert] = {a.key: a for a in open_alerts if a.firing}
        self._make_id = make_id

    def apply(self, findings: Iterable[Finding], ran: set[str], now: float) -> list[Change]:
        changes: list[Change] = []
        seen: set[str] = set()
        for f in findings:
            seen.add(f.key)
            held = self.open.get(f.key)
            if f.verdict != FIRE:  # HOLD: a firing alert stays as it is, none starts
                continue
            if held is None:
                since = f.since if f.since is not None and f.since <= now else now
                alert = Alert(
                    id=self._make_id(),
                    key=f.key,
                    rule=f.rule,
                    state=FIRING,
                    severity=f.severity,
                    summary=f.summary,
                    started=since,
                    updated=now,
                    device=f.device,
                    group=f.group,
                    feature=f.feature,
                    bundle=f.bundle,
                    weight=f.weight,
                    evidence=f.evidence,
                )
                self.open[f.key] = alert
                changes.append(Change(FIRED, alert))
                continue
            if (held.severity, held.evidence, held.summary) == (f.severity, f.evidence, f.summary):
                continue
            kind = ESCALATED if severity_rank(f.severity) > severity_rank(held.severity) else UPDATED
            alert = replace(
                held, severity=f.severity, summary=f.summary, evidence=f.evidence, weight=f.weight, updated=now
            )
            self.open[f.key] = alert
            changes.append(Change(kind, alert))
        for key, held in sorted(self.open.items()):
            if key in seen:
                continue
            if held.rule in ran:
                why = "the condition no longer holds"
            else:
                why = "the rule is switched off"
            changes.append(Change(RESOLVED, held.resolve(now, why)))
            del self.open[key]
        return changes
