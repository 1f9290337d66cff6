"""``edgekit deploy`` as one story the registry, the broker and the devices agree on.

Before anything is published: the bundle resolves through the registry (a file, NAME@V, or
NAME's production version); a version below one the registry deployed or calls production
is refused, naming the rollback that restores it; and the targeted devices' own reports are
read, so a version lower than one a device runs is refused too (a device would refuse it as
``bundle.version_rollback``). After publishing, the deployment is recorded: what is
production is what devices were last told to run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device_agent.bundle import read_unverified, sha256_hex
from device_agent.errors import AgentError
from device_agent.protocol import Topics

from .. import keys, registry
from ..registry import DeployRefused, RegistryError
from ..workspace import Workspace
from .client import Broker, collect, connect
from .deploy import DEFAULT_CHUNK, DeployResult, Target, deploy, target_members
from .status import read_devices
from .verify import TelemetryCheck


@dataclass(frozen=True)
class Shipment:
    """What is about to be deployed: the file, its name and version, and its registry entry."""

    path: Path
    name: str
    version: int
    sha256: str
    registered: registry.ModelVersion | None


def resolve(ws: Workspace, spec: str) -> Shipment:
    """The bundle ``spec`` names, and whether the registry knows exactly these bytes."""
    path = registry.resolve(ws, spec)
    data = path.read_bytes()
    try:
        manifest, _ = read_unverified(data)
        name, version = str(manifest["name"]), int(manifest["version"])
    except (AgentError, KeyError, TypeError, ValueError):
        name, version = "", 0  # a damaged file: the host-side verification says why
    sha = sha256_hex(data)
    try:
        found = registry.get(ws, name, version) if name else None
    except RegistryError:
        found = None
    return Shipment(path, name, version, sha, found if found is not None and found.sha256 == sha else None)


def fleet_floor(
    broker: Broker, prefix: str, target: Target, name: str, check: TelemetryCheck | None = None
) -> dict[str, int]:
    """Per targeted device that reports running ``name``: the version it runs (with ``check``,
    as its own signed reports say: a forged v99 must not block every deploy)."""
    topics = Topics(prefix)
    with connect(broker, purpose="deploy-check") as conn:
        messages = collect(conn, [topics.all_devices("state"), topics.all_devices("reported")], settle=0.3)
    devices = read_devices(messages, topics, check)
    members = target_members(target, {d: s.state for d, s in devices.items() if s.state is not None})
    running: dict[str, int] = {}
    for device in sorted(members):
        rep = devices[device].reported if device in devices else None
        if rep is not None and rep.active is not None and rep.active.name == name:
            running[device] = rep.active.version
    return running


def check(ws: Workspace, shipment: Shipment, broker: Broker, target: Target) -> None:
    """Refuse, before publishing, a version the registry or the devices would refuse."""
    if shipment.registered is not None:
        registry.check_deployable(ws, shipment.name, shipment.version)
    if not shipment.name:
        return
    running = fleet_floor(broker, ws.prefix, target, shipment.name, TelemetryCheck.from_workspace(ws))
    higher = {d: v for d, v in running.items() if v > shipment.version}
    if higher:
        device, v = max(higher.items(), key=lambda kv: kv[1])
        raise DeployRefused(
            f"{shipment.name} v{shipment.version} is older than v{v}, which {device} runs"
            + (f" (and {len(higher) - 1} more devices run a higher version)" if len(higher) > 1 else "")
            + "; devices refuse a version lower than one they accepted",
            f"roll back with a new, higher version: edgekit rollback {shipment.name} --to {shipment.version} --key KEY",
        )


def release(
    ws: Workspace,
    spec: str,
    target: Target,
    *,
    broker: Broker,
    bundle_key: Ed25519PrivateKey,
    deploy_key: Ed25519PrivateKey,
    force: bool = False,
    wait: float = 0.0,
    chunk_size: int = DEFAULT_CHUNK,
    progress: Callable[[str], None] = lambda _m: None,
    on_outcome: Callable[[dict[str, str]], None] | None = None,
) -> DeployResult:
    """Check, publish, point ``target`` at the bundle, record the deployment, and (with
    ``wait``) watch the devices. ``force`` skips the host-side checks (devices still verify)."""
    shipment = resolve(ws, spec)
    if not force:
        check(ws, shipment, broker, target)
    result = deploy(
        broker,
        ws.prefix,
        shipment.path,
        target,
        bundle_key,
        deploy_key,
        trust=None if force else keys.trust_file(ws),
        chunk_size=chunk_size,
        wait=wait,
        progress=progress,
        on_outcome=on_outcome,
        check=TelemetryCheck.from_workspace(ws),
    )
    if shipment.registered is not None:
        registry.record_deployment(ws, shipment.name, shipment.version, target.label)
    return result
