"""``edgekit deploy`` and ``edgekit fleet status|forget``."""

from __future__ import annotations

import re
from typing import Any

import click

from device_agent.broker import BrokerEndpoint
from device_agent.trust import ROLE_BUNDLE, ROLE_DEPLOY

from .. import keys, workspace
from ..errors import UsageError, WorkspaceError
from ..fleet.deploy import Target
from ..fleet.release import release
from ..fleet.status import fleet_view, forget
from ..fleet.verify import TelemetryCheck
from ..progress import Progress, for_cli
from .connection import BrokerChoice, broker_options
from .output import ago, emit, json_option, table

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd]?)$")
_UNIT_S = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``10m``, ``2h``, ``7d`` → seconds."""
    m = _DURATION.match(text.strip())
    if m is None:
        raise UsageError(f"{text!r} is not a duration", "use a number with s, m, h or d, e.g. 10m or 7d")
    return float(m.group(1)) * _UNIT_S[m.group(2)]


class DeployWatch:
    """What `deploy --wait` shows: one line per device whenever its state changes (never the
    same line twice), and on a terminal a bar of devices done."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.seen: dict[str, str] = {}
        self.task: Any = None
        self._ctx: Any = None

    def __call__(self, outcome: dict[str, str]) -> None:
        if self.task is None and outcome and self.progress.mode == "bar":
            self._ctx = self.progress.task("devices done", total=len(outcome), unit="device")
            self.task = self._ctx.__enter__()
        for device, state in sorted(outcome.items()):
            if self.seen.get(device) != state:
                self.progress.line(f"{device}: {state}")
                was_done = self.seen.get(device, "").startswith(("active", "failed"))
                self.seen[device] = state
                if self.task is not None and not was_done and state.startswith(("active", "failed")):
                    self.task.advance(1)

    def close(self) -> None:
        if self._ctx is not None:
            self._ctx.__exit__(None, None, None)


@click.command("deploy")
@click.argument("bundle")
@click.option("--device", default=None, help="Target one device.")
@click.option("--group", default=None, help="Target a group of devices.")
@broker_options
@click.option("--key", "key_name", default=None, help="Deploy key (default: the workspace's only 'deploy' key).")
@click.option("--wait", type=float, default=0.0, help="Wait up to N seconds for the devices to report.")
@click.option(
    "--force", is_flag=True, help="Skip the host-side checks (verification, version floors); devices still verify."
)
@json_option
def deploy_cmd(
    bundle: str,
    device: str | None,
    group: str | None,
    broker: BrokerChoice,
    key_name: str | None,
    wait: float,
    force: bool,
    as_json: bool,
) -> None:
    """Publish a bundle to the broker and point a device or a group at it.

    BUNDLE is a .ekb file, NAME@VERSION from the registry, or NAME: its production version.
    A version lower than one the devices run (or the registry deployed) is refused up front,
    with the rollback that restores it; a deployed registry version becomes production.

    Example: edgekit deploy wine --group plant-a --wait 30
    """
    ws = workspace.find()
    target = Target(device, group)
    progress = for_cli(as_json)
    watch = DeployWatch(progress)
    try:
        result = release(
            ws,
            bundle,
            target,
            broker=broker.resolve(ws),
            bundle_key=keys.pick_key(ws, ROLE_BUNDLE, key_name),
            deploy_key=keys.pick_key(ws, ROLE_DEPLOY, key_name),
            force=force,
            wait=wait,
            progress=progress.line,
            on_outcome=watch,
        )
    finally:
        watch.close()

    def text(d: dict[str, Any]) -> str:
        lines = [
            f"deployed {d['name']} v{d['version']} to {d['target']} ({d['size']} bytes, {d['chunks']} chunks, "
            f"seq {d['seq']}) in {d['seconds']:.2f}s"
        ]
        for dev, state in sorted((d.get("outcome") or {}).items()):
            lines.append(f"  {dev}: {state}")
        if d.get("note"):
            lines.append(f"  {d['note']}")
        return "\n".join(lines)

    emit(result.to_dict(), as_json, text, kind="deployment")
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
    header = ["DEVICE", "STATUS", "ACTIVE", "DEPLOYMENT", "SERVED", "ERRORS", "DRIFT", "LAST FAILURE"]
    if any(d.get("trust", "open") != "open" for d in devices):  # a secured fleet: say what was believed
        header.append("TRUST")
        for row, d in zip(rows, devices, strict=True):
            bad = ", ".join(f"{k}: {v}" for k, v in sorted((d.get("unverified") or {}).items()))
            row.append(f"{d['trust'].upper()} ({bad})" if bad else d["trust"])
    text = table(rows, header)
    missing = [d["device"] for d in devices if d.get("desired_missing")]
    if missing:
        text += (
            f"\nno desired state is retained for {', '.join(missing)}: they keep what they run, "
            "but nothing tells them what to run (edgekit deploy … --device/--group)"
        )
    return text


@click.group("fleet")
def fleet_group() -> None:
    """Ask the fleet how it is doing: status and forget over MQTT (no daemon needed); history,
    drift, events and alerts from the telemetry store that edgekit serve fills."""


def _where(broker: BrokerChoice, prefix: str | None) -> tuple[BrokerEndpoint, str, TelemetryCheck]:
    """Broker, prefix and the telemetry check of the workspace (an open fleet without one)."""
    try:
        ws: workspace.Workspace | None = workspace.find()
    except WorkspaceError:
        if not broker.given or prefix is None:
            raise
        ws = None
    return broker.resolve(ws), prefix or (ws.prefix if ws else ""), TelemetryCheck.from_workspace(ws)


@fleet_group.command("status")
@broker_options
@click.option("--prefix", default=None, help="Topic prefix (default: edgekit.toml).")
@click.option(
    "--stale-after",
    default=None,
    help="Leave out devices not seen for longer than this (10m, 2h, 7d); they are listed as hidden.",
)
@json_option
def status_cmd(broker: BrokerChoice, prefix: str | None, stale_after: str | None, as_json: bool) -> None:
    """Per device: online/offline/stale, active bundle, counters, drift verdict, last failure.

    Example: edgekit fleet status --stale-after 1d --json
    """
    endpoint, where_prefix, check = _where(broker, prefix)
    view = fleet_view(endpoint, where_prefix, parse_duration(stale_after) if stale_after else None, check)

    def text(d: dict[str, Any]) -> str:
        out = _status_text(d["devices"])
        if d["hidden"]:
            names = ", ".join(d["hidden"][:8]) + (" …" if len(d["hidden"]) > 8 else "")
            out += (
                f"\n{len(d['hidden'])} device(s) not seen for over {stale_after} hidden: {names} "
                f"(edgekit fleet forget --stale-after {stale_after} removes them)"
            )
        return out

    emit(view.to_dict(), as_json, text, kind="fleet")


@fleet_group.command("forget")
@click.argument("devices", nargs=-1)
@click.option("--stale-after", default=None, help="Forget every device not seen for longer than this (10m, 2h, 7d).")
@broker_options
@click.option("--prefix", default=None, help="Topic prefix (default: edgekit.toml).")
@click.option("--force", is_flag=True, help="Forget named devices even if they are online.")
@json_option
def forget_cmd(
    devices: tuple[str, ...],
    stale_after: str | None,
    broker: BrokerChoice,
    prefix: str | None,
    force: bool,
    as_json: bool,
) -> None:
    """Remove devices that left the fleet: their retained state, heartbeat, report and desired state.

    Example: edgekit fleet forget pump-7   |   edgekit fleet forget --stale-after 30d
    """
    if bool(devices) == bool(stale_after):
        raise UsageError("name the devices to forget, or give --stale-after (not both)", "e.g. --stale-after 30d")
    endpoint, where_prefix, check = _where(broker, prefix)
    where = (endpoint, where_prefix)
    view = fleet_view(*where, parse_duration(stale_after) if stale_after else None, check)
    known = {d["device"]: d for d in view.devices}
    chosen = list(view.hidden) if stale_after else list(devices)
    unknown = [d for d in chosen if d not in known and d not in view.hidden]
    if unknown:
        raise UsageError(f"no device {unknown[0]!r} on this broker and prefix", "see edgekit fleet status")
    online = [d for d in chosen if d in known and known[d]["status"] == "online"]
    if online and not force:
        raise UsageError(
            f"{online[0]} is online: it would come back with its next heartbeat", "stop its agent first, or --force"
        )
    cleared = forget(*where, chosen) if chosen else []
    emit(
        {"forgotten": chosen, "topics_cleared": len(cleared)},
        as_json,
        lambda d: (
            f"forgot {len(d['forgotten'])} device(s)" + (f": {', '.join(d['forgotten'])}" if d["forgotten"] else "")
        ),
        kind="forgotten",
    )


COMMANDS = [deploy_cmd, fleet_group]
