"""The rollout controller: runs inside the leading ``edgekit serve`` and moves every open
rollout on, a step every ``[rollout] interval_s``.

A step of one rollout:

1. apply a request the CLI left in the store (pause, resume, abort);
2. a phase not yet deployed: choose its cohort (:func:`~edgekit.rollout.plan.next_cohort`:
   online devices in the rollout's order, offline ones skipped and named) and point each
   device at the new version with its own signed desired state (``dev/{d}/desired``,
   signed with the deploy key, as ``deploy`` does);
3. read where each device told is (its retained summary, as the store holds it), and once
   every one is done (active, failed or offline) start the bake;
4. judge the gates (:mod:`~edgekit.rollout.gates`) on what the store holds for the period,
   the new version's devices against the group's devices still on the previous version;
5. ``abort``: the previous version re-signed as the next version (as ``edgekit rollback``
   does: devices refuse versions below one they accepted), published, and the group's
   desired state pointed at it; the per-device documents of the devices told are cleared,
   so every device of the group follows the group again. ``widen``: the next phase; after
   the last, the group's desired state points at the new version (devices skipped or
   joined later get it too) and the per-device documents are cleared.

Every change of the record is written to the store before anything is published that
depends on it, and published retained on ``PREFIX/rollouts/{id}``. A step that fails
half-way is repeated from the stored record at the next one: telling a device twice is
harmless (the same bundle; a newer sequence number), so a crash between publishing and
saving costs a message, never a device.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device_agent.protocol import BundleRef, DesiredBundle, DesiredState, Topics
from device_agent.trust import DESIRED_DOMAIN, ROLE_BUNDLE, ROLE_DEPLOY, seal

from .. import keys, registry
from ..alerts.catalog import BundleCatalog
from ..alerts.gather import beat_of, window_of
from ..errors import EdgekitError, FleetError
from ..fleet.client import Broker, connect, publish_all
from ..fleet.deploy import device_outcome, publish_bundle
from ..fleet.status import DeviceStatus
from ..rollback import rollback
from ..telemetry import TelemetryStore
from ..telemetry import rollouts as stored
from ..workspace import Workspace
from .config import RolloutConfig
from .gates import ABORT, ACTIVE, FAILED, OFFLINE, PENDING, REVERT_CODES, WIDEN, GateFacts, Outcome, Side, decide
from .plan import next_cohort, ordered
from .record import ABORTED, COMPLETED, PAUSED, RUNNING, Rollout, rollout_topic
from .record import FAILED as ROLLOUT_FAILED

log = logging.getLogger("edgekit.rollout")
# Devices of each side whose heartbeats and drift windows are read for the comparison (the
# first in the rollout's order: a random sample): a step's cost stays bounded at any fleet
# size; deployment failures are counted over every device told.
SAMPLE = 100
Publish = Callable[[str, bytes, bool], None]
Item = tuple[str, bytes, bool]


class FleetActions:
    """What the controller does to the fleet, over its own short MQTT connections (a step
    publishes rarely: once per phase, once at the end)."""

    def __init__(self, ws: Workspace, broker: Broker, prefix: str) -> None:
        self.ws = ws
        self.broker = broker
        self.topics = Topics(prefix)

    def _desired(self, key: Ed25519PrivateKey, topic: str, target: str, b: BundleRef, size: int) -> Item:
        now_ns = time.time_ns()
        doc = DesiredState(
            seq=now_ns // 1000,
            target=target,
            bundle=DesiredBundle(b.name, b.version, b.sha256, size),
            issued=now_ns / 1e9,
        )
        return topic, seal(key, DESIRED_DOMAIN, doc.to_json()), True

    def tell(self, r: Rollout, devices: Iterable[str]) -> None:
        """Point each device at the rollout's version with its own signed desired state."""
        key = keys.pick_key(self.ws, ROLE_DEPLOY, r.key)
        items = [
            self._desired(key, self.topics.desired_device(d), f"device:{d}", r.bundle, r.size) for d in sorted(devices)
        ]
        with connect(self.broker, purpose="rollout") as conn:
            publish_all(conn, items)

    def settle(self, r: Rollout, bundle: BundleRef, size: int) -> None:
        """Point the whole group at ``bundle``, then clear the devices' own documents so they
        follow the group again (in this order: a device never falls back to an older goal)."""
        key = keys.pick_key(self.ws, ROLE_DEPLOY, r.key)
        items = [self._desired(key, self.topics.desired_group(r.group), f"group:{r.group}", bundle, size)]
        items += [(self.topics.desired_device(d), b"", True) for d in sorted(r.targeted)]
        with connect(self.broker, purpose="rollout") as conn:
            publish_all(conn, items)

    def build_rollback(self, r: Rollout) -> BundleRef:
        """The previous version re-signed as the next one, and registered."""
        assert r.previous is not None
        built = rollback(self.ws, r.bundle.name, r.previous.version, r.bundle_key)
        return BundleRef(built.name, built.version, built.sha256)

    def publish_version(self, r: Rollout, ref: BundleRef) -> int:
        """Publish a registry version's chunks (idempotent: only what the broker lacks); its size."""
        data = registry.get(self.ws, ref.name, ref.version).path.read_bytes()
        with connect(self.broker, purpose="rollout") as conn:
            signer = keys.pick_key(self.ws, ROLE_BUNDLE, r.bundle_key)
            publish_bundle(conn, self.topics, data, ref.name, ref.version, signer)
        return len(data)


class RolloutController:
    def __init__(
        self,
        ws: Workspace,
        broker: Broker,
        prefix: str,
        config: RolloutConfig | None = None,
        actions: FleetActions | None = None,
        catalog: BundleCatalog | None = None,
    ) -> None:
        self.ws = ws
        self.config = config or RolloutConfig.from_toml(ws.config.get("rollout"))
        self.interval_s = self.config.interval_s
        self.prefix = prefix
        self.actions = actions or FleetActions(ws, broker, prefix)
        self.catalog = catalog or BundleCatalog(ws)
        self.publish: Publish | None = None
        self.steps = 0

    # ── the step ────────────────────────────────────────────────────────────────────

    def step(self, store: TelemetryStore, now: float | None = None) -> list[Rollout]:
        """Move every open rollout on; the records as they are now."""
        open_ = stored.load(store, open_only=True)
        if not open_:
            return []
        statuses = store.latest()
        out = []
        for r in open_:
            now_ = time.time() if now is None else now
            try:
                after = self._advance(store, r, statuses, now_)
            except FleetError as exc:  # the broker is away: the next step tries again from the stored record
                log.warning("rollout %s: %s; trying again", r.id, exc)
                after = stored.get(store, r.id)
            except EdgekitError as exc:  # the controller cannot act: say so, stop, keep the devices as they are
                log.error("rollout %s failed: %s", r.id, exc)
                after = r.said(now_, f"failed: {exc}", state=ROLLOUT_FAILED, note=str(exc))
            if after != r:
                stored.save(store, after)
                if self.publish is not None:
                    self.publish(rollout_topic(self.prefix, after.id), after.encode(), True)
            out.append(after)
        self.steps += 1
        return out

    def _advance(self, store: TelemetryStore, r: Rollout, statuses: Mapping[str, DeviceStatus], now: float) -> Rollout:
        if r.rollback is not None:  # an abort under way when the last step failed: finish it
            done = self._abort(store, r, now, r.note or "aborted")
            req = stored.requested(store, r.id)
            if req is not None:
                stored.clear_request(store, r.id, req[0])
            return done
        r = self._apply_request(store, r, now)
        if r.state != RUNNING:
            return r
        config = RolloutConfig.from_gates_json(r.gates)
        members = {d for d, s in statuses.items() if s.state is not None and r.group in s.state.groups}
        members |= set(r.targeted)
        if r.phase_started is None:
            r = self._deploy_phase(r, members, statuses, now)
            if r.phase_started is None:
                return r
        outcomes = {d: _outcome(d, told, statuses.get(d), r.bundle.sha256, now) for d, (_, told) in r.targeted.items()}
        if r.baked_from is None and all(
            o.state != PENDING or now - o.told > config.failures.install_timeout_s for o in outcomes.values()
        ):
            r = r.said(now, f"phase {r.phase + 1}: every device done; baking {r.bake_s:.0f} s", baked_from=now)
        assert r.phase_started is not None
        facts = self._facts(store, r, members, statuses, outcomes, r.phase_started, now)
        baked = r.baked_from is not None and now - r.baked_from >= r.bake_s
        decision = decide(facts, config, r.phase, baked)
        previous = next((d for d in r.decisions if d.phase == r.phase), None)
        if previous is None or previous.verdict != decision.verdict or now - previous.at >= 30.0:
            r = r.decided(decision)
        if decision.verdict == ABORT:
            return self._abort(store, r, now, f"gate failed at phase {r.phase + 1}: {decision.reason}")
        if decision.verdict == WIDEN:
            if r.phase + 1 >= len(r.phases):
                return self._complete(r, now)
            return r.said(
                now,
                f"phase {r.phase + 1} passed: {decision.reason}",
                phase=r.phase + 1,
                phase_started=None,
                baked_from=None,
            )
        return replace(r, note=decision.reason) if r.note != decision.reason else r

    def _apply_request(self, store: TelemetryStore, r: Rollout, now: float) -> Rollout:
        req = stored.requested(store, r.id)
        if req is None:
            return r
        action, _at, who = req
        by = f" by {who}" if who else ""
        if action == "pause" and r.state == RUNNING:
            r = r.said(now, f"paused{by}", state=PAUSED, note=f"paused{by}")
        elif action == "resume" and r.state == PAUSED:
            # the bake starts again: what happened while paused was not watched
            started = None if r.phase_started is None else now
            r = r.said(now, f"resumed{by}", state=RUNNING, note="", phase_started=started, baked_from=None)
        elif action == "abort":
            r = self._abort(store, r, now, f"aborted{by}")
        stored.clear_request(store, r.id, action)
        return r

    def _deploy_phase(self, r: Rollout, members: set[str], statuses: Mapping[str, DeviceStatus], now: float) -> Rollout:
        def online(d: str) -> bool:
            s = statuses.get(d)
            return s is not None and s.connectivity(now) == "online"

        cohort = next_cohort(r.id, r.phase, r.phases, members, r.targeted, r.skipped, online)
        if not cohort.devices and not r.targeted:
            note = f"no device of group {r.group} is online" if members else f"group {r.group} has no devices"
            return replace(r, note=note) if r.note != note else r
        if cohort.devices:
            self.actions.tell(r, cohort.devices)
        targeted = {**r.targeted, **{d: (r.phase, now) for d in cohort.devices}}
        skipped = {**r.skipped, **dict.fromkeys(cohort.skipped, r.phase)}
        text = f"phase {r.phase + 1} ({r.phases[r.phase]:.0%}): told {len(cohort.devices)} device(s)"
        if cohort.skipped:
            text += f", skipped {len(cohort.skipped)} offline ({', '.join(cohort.skipped[:5])})"
        log.info("rollout %s: %s", r.id, text)
        return r.said(now, text, targeted=targeted, skipped=skipped, phase_started=now, baked_from=None, note="")

    def _abort(self, store: TelemetryStore, r: Rollout, now: float, why: str) -> Rollout:
        """Roll the group back. The rollback version is built once and stored with the record
        before anything is published, so a step that fails half-way finishes the same abort."""
        log.warning("rollout %s: aborting: %s", r.id, why)
        if r.previous is None:
            raise EdgekitError(f"{why}; and there is no previous version to go back to")
        if r.rollback is None:
            r = r.said(now, f"aborting: {why}", rollback=self.actions.build_rollback(r), note=why)
            stored.save(store, r)
        back = r.rollback
        assert back is not None
        size = self.actions.publish_version(r, back)
        self.actions.settle(r, back, size)
        try:
            registry.record_deployment(self.ws, back.name, back.version, f"group:{r.group}", f"rollout {r.id} aborted")
        except EdgekitError as exc:
            log.warning("rollout %s: the registry did not record the rollback: %s", r.id, exc)
        text = f"{why}; group {r.group} rolled back to v{r.previous.version if r.previous else '?'} as v{back.version}"
        return r.said(now, text, state=ABORTED, note=why)

    def _complete(self, r: Rollout, now: float) -> Rollout:
        self.actions.settle(r, r.bundle, r.size)
        try:
            registry.record_deployment(self.ws, r.bundle.name, r.bundle.version, f"group:{r.group}", f"rollout {r.id}")
        except EdgekitError as exc:
            log.warning("rollout %s: the registry did not record the deployment: %s", r.id, exc)
        return r.said(now, f"completed: group {r.group} runs {r.bundle.label}", state=COMPLETED, note="")

    # ── what the gates see ──────────────────────────────────────────────────────────

    def _facts(
        self,
        store: TelemetryStore,
        r: Rollout,
        members: set[str],
        statuses: Mapping[str, DeviceStatus],
        outcomes: Mapping[str, Outcome],
        since: float,
        now: float,
    ) -> GateFacts:
        new_devices = ordered(r.id, [d for d, o in outcomes.items() if o.state == ACTIVE])[:SAMPLE]
        old_devices: list[str] = []
        if r.previous is not None:
            for d in ordered(r.id, members - set(r.targeted)):
                rep = statuses[d].reported if d in statuses else None
                if rep is not None and rep.active is not None and rep.active.sha256 == r.previous.sha256:
                    old_devices.append(d)
                if len(old_devices) >= SAMPLE:
                    break
        reverts: dict[str, list[str]] = {}
        first_told = min((t for _, t in r.targeted.values()), default=now)
        for code in sorted(REVERT_CODES):  # two indexed queries, whatever the number of devices
            # device clocks may be off: an hour's slack on their time, the collector's decides
            for e in store.events(since=first_told - 3600.0, kind="failure", code=code):
                told = r.targeted.get(e.device)
                b = e.doc.bundle
                if told is not None and e.received >= told[1] and b is not None and b.sha256 == r.bundle.sha256:
                    reverts.setdefault(e.device, []).append(code)
        return GateFacts(
            now,
            since,
            outcomes,
            reverts,
            self._side(store, r.bundle, new_devices, since),
            self._side(store, r.previous, old_devices, since),
        )

    def _side(self, store: TelemetryStore, bundle: BundleRef | None, devices: list[str], since: float) -> Side:
        if bundle is None:
            return Side(None)
        beats = {}
        windows = []
        for d in devices:
            beats[d] = [
                beat_of(h)
                for h in store.heartbeats(device=d, since=since)
                if h.doc.active is not None and h.doc.active.sha256 == bundle.sha256
            ]
            windows += [
                window_of(w) for w in store.drift_windows(device=d, since=since) if w.doc.bundle.sha256 == bundle.sha256
            ]
        return Side(bundle, tuple(devices), beats, windows, self.catalog.lookup(bundle))


def _outcome(device: str, told: float, status: DeviceStatus | None, sha: str, now: float) -> Outcome:
    rep = status.reported if status is not None else None
    if rep is not None:
        state = device_outcome(rep, sha)
        if state == "active":
            return Outcome(device, ACTIVE, told)
        if state.startswith("failed"):
            err = rep.last_error
            return Outcome(device, FAILED, told, err.code if err else None, err.detail if err else state)
    if status is None or status.connectivity(now) == "offline":
        return Outcome(device, OFFLINE, told, detail="offline")
    detail = device_outcome(rep, sha) if rep is not None else "pending (no summary yet)"
    return Outcome(device, PENDING, told, detail=detail)


def most_common(versions: Mapping[str, int]) -> int | None:
    """The version most devices run (the higher on a tie)."""
    if not versions:
        return None
    counts = Counter(versions.values())
    return max(counts, key=lambda v: (counts[v], v))


def summary(r: Rollout) -> dict[str, Any]:
    """Counts for a person: devices told per phase, skipped, the last decision."""
    per_phase = Counter(p for p, _ in r.targeted.values())
    last = r.decisions[-1] if r.decisions else None
    return {
        "told": len(r.targeted),
        "skipped": len(r.skipped),
        "per_phase": [per_phase.get(k, 0) for k in range(len(r.phases))],
        "decision": None if last is None else last.verdict,
    }
