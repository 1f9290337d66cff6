"""Deploy a signed bundle from the test workspace to a device or group, and read the fleet's view."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from device_agent.protocol import Topics
from edgekit import keys, workspace
from edgekit.fleet.client import connect
from edgekit.fleet.deploy import Target, publish_bundle, publish_desired
from edgekit.fleet.status import fleet_status

PREFIX = "edgekit/v1"


def deploy(root: Path, broker_url: str, bundle: Path, name: str, target: Target) -> None:
    """Publish ``bundle`` (``NAME-vN.ekb``) and a signed desired state naming it."""
    ws = workspace.load(root)
    key = keys.load_private(ws, "release")
    with connect(broker_url) as conn:
        info, _ = publish_bundle(
            conn, Topics(PREFIX), bundle.read_bytes(), name, int(bundle.stem.rsplit("-v", 1)[1]), key
        )
        publish_desired(conn, Topics(PREFIX), target, info, key)


def status(broker_url: str) -> dict[str, dict[str, Any]]:
    return {d["device"]: d for d in fleet_status(broker_url, PREFIX)}


def active_version(broker_url: str, device: str) -> int | None:
    active = (status(broker_url).get(device) or {}).get("active") or {}
    version = active.get("version")
    return int(version) if version is not None else None
