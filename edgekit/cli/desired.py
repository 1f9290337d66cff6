"""``edgekit desired refresh``: re-sign the retained desired states before they expire."""

from __future__ import annotations

from typing import Any

import click

from device_agent.trust import ROLE_DEPLOY

from .. import keys, workspace
from ..fleet.freshness import DEFAULT_TTL_S, refresh
from .connection import BrokerChoice, broker_options
from .fleet import parse_duration
from .output import emit, json_option, table


@click.group("desired")
def desired_group() -> None:
    """The signed desired states on the broker: they expire unless the host re-signs them."""


@desired_group.command("refresh")
@broker_options
@click.option("--key", "key_name", default=None, help="Deploy key (default: the workspace's only 'deploy' key).")
@click.option("--ttl", default=f"{DEFAULT_TTL_S / 86400:.0f}d", show_default=True, help="New life of each document.")
@json_option
def refresh_cmd(broker: BrokerChoice, key_name: str | None, ttl: str, as_json: bool) -> None:
    """Re-sign every retained desired state with a new issue time and expiry (same sequence:
    devices install nothing again). Documents that do not verify with this workspace's keys
    are reported and left alone. `edgekit serve --resign-every` does this periodically.

    Example: edgekit desired refresh --ttl 30d
    """
    ws = workspace.find()
    done = refresh(
        broker.resolve(ws),
        ws.prefix,
        keys.pick_key(ws, ROLE_DEPLOY, key_name),
        keys.trust_file(ws),
        parse_duration(ttl),
    )

    def text(d: dict[str, Any]) -> str:
        if not d["refreshed"]:
            return "no retained desired state on this broker and prefix"
        rows = [[r["target"], str(r["seq"]), r["expires"] or "-", r["problem"] or "re-signed"] for r in d["refreshed"]]
        return table(rows, ["TARGET", "SEQ", "EXPIRES", "RESULT"])

    emit({"refreshed": [r.to_dict() for r in done]}, as_json, text, kind="refreshed")


@desired_group.command("recover")
@click.option("--device", default=None, help="The device whose sequence to reset.")
@click.option("--group", default=None, help="The group whose sequence to reset.")
@broker_options
@click.option("--key", "key_name", default=None, help="Root key (default: the workspace's only 'root' key).")
@json_option
def recover_cmd(
    device: str | None, group: str | None, broker: BrokerChoice, key_name: str | None, as_json: bool
) -> None:
    """Unfreeze a device or group that holds a sequence number far ahead: re-publish its desired
    state signed by a root key, which the device accepts as a new start (expires in an hour).

    Example: edgekit desired recover --device pump-7 --key root
    """
    from device_agent.protocol import Topics
    from device_agent.trust import ROLE_ROOT

    from ..errors import UsageError
    from ..fleet.deploy import Target
    from ..fleet.freshness import recover

    ws = workspace.find()
    target = Target(device, group)
    topic = target.topic(Topics(ws.prefix))
    try:
        done = recover(
            broker.resolve(ws),
            ws.prefix,
            topic,
            target.label,
            keys.pick_key(ws, ROLE_ROOT, key_name),
            keys.trust_file(ws),
        )
    except ValueError as exc:
        raise UsageError(str(exc), "edgekit deploy BUNDLE --device/--group first") from None
    emit(
        {"refreshed": [done.to_dict()]},
        as_json,
        lambda d: f"recovery for {done.target} published: seq {done.seq}, expires {d['refreshed'][0]['expires']}",
        kind="refreshed",
    )


COMMANDS = [desired_group]
