"""``edgekit deploy`` and ``edgekit fleet status``."""

from __future__ import annotations

from typing import Any

import click

from device_agent.trust import ROLE_BUNDLE, ROLE_DEPLOY

from .. import keys, registry, workspace
from ..fleet.deploy import Target, deploy
from ..fleet.status import fleet_status
from .output import ago, emit, json_option, progress_printer, table


@click.command("deploy")
@click.argument("bundle")
@click.option("--device", default=None, help="Target one device.")
@click.option("--group", default=None, help="Target a group of devices.")
@click.option("--broker", default=None, help="MQTT broker URL (default: edgekit.toml).")
@click.option("--key", "key_name", default=None, help="Deploy key (default: the workspace's only 'deploy' key).")
@click.option("--wait", type=float, default=0.0, help="Wait up to N seconds for the devices to report.")
@click.option("--force", is_flag=True, help="Skip the host-side verification (devices still verify).")
@json_option
def deploy_cmd(
    bundle: str,
    device: str | None,
    group: str | None,
    broker: str | None,
    key_name: str | None,
    wait: float,
    force: bool,
    as_json: bool,
) -> None:
    """Publish a bundle to the broker and point a device or a group at it.

    BUNDLE is a .ekb file, NAME@VERSION from the registry, or NAME: its production version.

    Example: edgekit deploy wine --group plant-a --wait 30
    """
    ws = workspace.find()
    path = registry.resolve(ws, bundle)
    deploy_key = keys.pick_key(ws, ROLE_DEPLOY, key_name)
    bundle_key = keys.pick_key(ws, ROLE_BUNDLE, key_name)
    result = deploy(
        broker or ws.broker,
        ws.prefix,
        path,
        Target(device, group),
        bundle_key,
        deploy_key,
        trust=None if force else keys.trust_file(ws),
        wait=wait,
        progress=progress_printer(not as_json),
    )

    def text(d: dict[str, Any]) -> str:
        lines = [
            f"deployed {d['name']} v{d['version']} to {d['target']} ({d['size']} bytes, {d['chunks']} chunks, "
            f"seq {d['seq']}) in {d['seconds']:.2f}s"
        ]
        for dev, state in sorted((d.get("outcome") or {}).items()):
            lines.append(f"  {dev}: {state}")
        if wait > 0 and not d.get("outcome"):
            lines.append(
                f"  no device of {d['target']} reported within {wait:.0f}s "
                "(check the device id or group, and that its agents are running)"
            )
        return "\n".join(lines)

    emit(result.to_dict(), as_json, text)
    if wait > 0 and not result.succeeded:
        raise SystemExit(6)


def _status_text(devices: list[dict[str, Any]]) -> str:
    if not devices:
        return "no devices have reported on this broker and prefix"
    rows = []
    for d in devices:
        active = d.get("active") or {}
        drift = d.get("drift") or {}
        verdict = drift.get("verdict") or "-"
        if verdict == "drift":
            names = list(drift.get("drifted") or [])
            verdict = "DRIFT: " + ",".join(names[:3]) + (f" +{len(names) - 3}" if len(names) > 3 else "")
        err = d.get("last_failure") or {}
        status = d["status"] if d["status"] == "online" else f"{d['status']} ({ago(d['last_seen_s'])})"
        rows.append(
            [
                d["device"],
                status,
                f"{active.get('name')} v{active.get('version')}" if active else "-",
                str(d.get("phase") or "-"),
                str(d["served"]),
                str(d["errors"]),
                verdict,
                f"{err.get('code')}: {str(err.get('detail'))[:50]}" if err else "-",
            ]
        )
    return table(rows, ["DEVICE", "STATUS", "ACTIVE", "DEPLOYMENT", "SERVED", "ERRORS", "DRIFT", "LAST FAILURE"])


@click.group("fleet")
def fleet_group() -> None:
    """Ask the fleet how it is doing (over MQTT, no daemon needed)."""


@fleet_group.command("status")
@click.option("--broker", default=None, help="MQTT broker URL (default: edgekit.toml).")
@click.option("--prefix", default=None, help="Topic prefix (default: edgekit.toml).")
@json_option
def status_cmd(broker: str | None, prefix: str | None, as_json: bool) -> None:
    """Per device: online/offline/stale, active bundle, counters, drift verdict, last failure.

    Example: edgekit fleet status --json
    """
    ws = None
    if broker is None or prefix is None:
        ws = workspace.find()
    devices = fleet_status(broker or (ws.broker if ws else ""), prefix or (ws.prefix if ws else ""))
    emit(devices, as_json, _status_text)


COMMANDS = [deploy_cmd, fleet_group]
