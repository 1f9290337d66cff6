"""What ``edgekit rollout start|pause|resume|abort`` do, as a library: checks and a record
written to the telemetry store, which the controller in ``edgekit serve`` picks up.

Commands reach ``serve`` through the store, not through a command topic on the broker. The
store is durable (a command given while ``serve`` is down waits for it), it is where the
rollout's record already lives (so a request and the state it changes are read together,
and two ``rollout start`` for one group are refused by a unique index, not by a race), and
reaching it already takes the database's credentials — where an MQTT command topic would
be one more thing every broker's ACLs must keep devices from writing to, and one more
document to sign. ``serve`` publishes each record retained on ``PREFIX/rollouts/{id}`` for
anyone who watches the broker instead.

``start`` does the work that needs the person's keys and the broker before anything is
recorded: the version must be in the registry (its reference is what the ML gates judge
against, and an abort re-signs the previous one), pass the same checks as ``deploy`` (the
registry's floor, no device running a higher version, verification as a device would), and
its chunks are published retained, so ``serve`` only ever signs small desired states — and,
on an abort, the previous version re-signed.
"""

from __future__ import annotations

import time

from device_agent.bundle import verify
from device_agent.errors import AgentError
from device_agent.protocol import BundleRef, Topics, check_id
from device_agent.trust import ROLE_BUNDLE, ROLE_DEPLOY

from .. import keys, registry
from ..errors import FleetError, UsageError, WorkspaceError
from ..fleet.client import Broker, connect
from ..fleet.deploy import DEFAULT_CHUNK, Target, publish_bundle
from ..fleet.release import check, fleet_floor, resolve
from ..fleet.verify import TelemetryCheck
from ..telemetry import TelemetryStore
from ..telemetry import rollouts as stored
from ..workspace import Workspace
from .config import RolloutConfig
from .controller import most_common
from .record import REQUESTS, Rollout, new_id


def key_name(ws: Workspace, role: str, name: str | None) -> str:
    """The named key (checked for ``role``), or the workspace's only key with ``role``."""
    if name:
        if role not in keys.key_roles(ws, name):
            raise WorkspaceError(f"key {name!r} lacks the '{role}' role", "see 'edgekit keys list'")
        return name
    found = [k.name for k in keys.list_keys(ws) if role in k.roles]
    if len(found) != 1:
        raise WorkspaceError(
            f"cannot choose a '{role}' key (found: {', '.join(found) or 'none'})", "name one with --key"
        )
    return found[0]


def start(
    ws: Workspace,
    store: TelemetryStore,
    spec: str,
    group: str,
    phases: tuple[float, ...],
    bake_s: float,
    *,
    broker: Broker,
    key: str | None = None,
    config: RolloutConfig | None = None,
    now: float | None = None,
) -> Rollout:
    check_id("group", group)
    config = config or RolloutConfig.from_toml(ws.config.get("rollout"))
    shipment = resolve(ws, spec)
    if shipment.registered is None:
        raise UsageError(
            f"{spec} is not a version of the registry",
            "a rollout ships a registered version (its reference drives the gates): edgekit rollout start NAME@VERSION",
        )
    target = Target(group=group)
    check(ws, shipment, broker, target)
    deploy_key, bundle_key = key_name(ws, ROLE_DEPLOY, key), key_name(ws, ROLE_BUNDLE, key)
    keys.pick_key(ws, ROLE_DEPLOY, deploy_key)  # opens now: a key serve cannot open fails here, not mid-rollout
    running = fleet_floor(broker, ws.prefix, target, shipment.name, TelemetryCheck.from_workspace(ws))
    before = most_common({d: v for d, v in running.items() if v < shipment.version})
    if before is None:
        raise FleetError(
            f"no device of group {group} reports running an older {shipment.name}: nothing to roll back to",
            f"a first version goes out with: edgekit deploy {shipment.name}@{shipment.version} --group {group}",
        )
    previous = registry.get(ws, shipment.name, before)
    data = shipment.path.read_bytes()
    try:
        verify(data, keys.trust_file(ws), now=time.time())
    except AgentError as exc:
        raise FleetError(f"{shipment.path} would be refused by devices: {exc.code}: {exc.detail}") from None
    now = time.time() if now is None else now
    r = Rollout(
        id=new_id(),
        bundle=BundleRef(shipment.name, shipment.version, shipment.sha256),
        size=len(data),
        group=group,
        phases=phases,
        bake_s=bake_s,
        gates=config.gates_json(),
        previous=BundleRef(previous.name, previous.version, previous.sha256),
        key=deploy_key,
        bundle_key=bundle_key,
        created=now,
        created_by=registry.actor(),
    )
    r = r.said(now, f"started by {r.created_by}: {r.label}, previous v{before} on {len(running)} device(s)")
    stored.insert(store, r)  # refused when the group has an open rollout: before anything is published
    try:
        with connect(broker, purpose="rollout-start") as conn:
            publish_bundle(
                conn,
                Topics(ws.prefix),
                data,
                shipment.name,
                shipment.version,
                keys.pick_key(ws, ROLE_BUNDLE, bundle_key),
                DEFAULT_CHUNK,
            )
    except Exception:
        stored.save(store, r.said(time.time(), "failed: the bundle could not be published", state="failed"))
        raise
    return r


def request(store: TelemetryStore, ref: str | None, action: str, now: float | None = None) -> Rollout:
    """Leave ``action`` for the controller in ``serve``; the rollout as it stands."""
    if action not in REQUESTS:
        raise UsageError(f"unknown request {action!r}", f"one of {', '.join(REQUESTS)}")
    r = stored.get(store, ref)
    if not r.open:
        done = {"pause": "paused", "resume": "resumed", "abort": "aborted"}[action]
        raise UsageError(f"rollout {r.id} is {r.state}; only a running or paused rollout can be {done}")
    if action == "pause" and r.state != "running":
        raise UsageError(f"rollout {r.id} is already paused", f"resume it: edgekit rollout resume {r.id}")
    if action == "resume" and r.state != "paused":
        raise UsageError(f"rollout {r.id} is not paused", None)
    stored.request(store, r.id, action, registry.actor(), time.time() if now is None else now)
    return r
