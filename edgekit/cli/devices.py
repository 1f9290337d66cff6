"""``edgekit devices add|list|revoke``: enrol devices with the fleet's CA and signing keys."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .. import devices as devices_mod
from .. import workspace
from .output import emit, json_option, table


@click.group("devices")
def devices_group() -> None:
    """Enrolled devices: their broker identity (certificate or password) and telemetry key."""


@devices_group.command("add")
@click.argument("device_id")
@click.option("--group", "groups", multiple=True, help="Group(s) the device belongs to; repeatable.")
@click.option("--password", is_flag=True, help="A username and password on the broker instead of a certificate.")
@click.option("--broker", default=None, help="The device's broker URL (default: [fleet] device_broker, else broker).")
@click.option(
    "-o",
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the provisioning directory and tarball go (default: .edgekit/provision/).",
)
@click.option(
    "--install-dir",
    default=devices_mod.DEFAULT_INSTALL_DIR,
    show_default=True,
    help="Where the files will live on the device (the paths in its agent.toml).",
)
@click.option("--state-dir", default=devices_mod.DEFAULT_STATE_DIR, show_default=True, help="The agent's state dir.")
@click.option("--force", is_flag=True, help="Issue new credentials to a device already enrolled.")
@json_option
def add_cmd(
    device_id: str,
    groups: tuple[str, ...],
    password: bool,
    broker: str | None,
    output: Path | None,
    install_dir: str,
    state_dir: str,
    force: bool,
    as_json: bool,
) -> None:
    """Enrol a device: broker identity, telemetry signing key, and its files in one directory.

    The directory (and a .tar.gz of it) holds the fleet CA, the device's certificate and key
    (or password), its telemetry key, the trust file and agent.toml: copy it to --install-dir
    on the device and run edgekit-agent --config agent.toml.

    Example: edgekit devices add pump-7 --group plant-a
    """
    done = devices_mod.enrol(
        workspace.find(),
        device_id,
        groups=groups,
        password=password,
        broker=broker,
        out_dir=output,
        install_dir=install_dir,
        state_dir=state_dir,
        force=force,
    )

    def text(d: dict[str, Any]) -> str:
        how = f"certificate serial {d['serial']}" if d["auth"] == "certificate" else "username and password"
        return (
            f"enrolled {d['device']} ({how}; telemetry key {d['telemetry_keyid']})\n"
            f"  provisioning: {d['directory']}  ({d['archive']})\n"
            f"  on the device: copy it to {install_dir} and run edgekit-agent --config {install_dir}/agent.toml\n"
            "  then: edgekit broker config (the broker learns the device's groups"
            + (" and password" if d["auth"] == "password" else "")
            + ")"
        )

    emit(done.to_dict(), as_json, text, kind="device")


@devices_group.command("list")
@json_option
def list_cmd(as_json: bool) -> None:
    """The enrolled devices, revoked ones included.

    Example: edgekit devices list --json
    """
    registry = devices_mod.load(workspace.find())
    rows = [d.to_dict() for _, d in sorted(registry.devices.items())]
    emit(
        rows,
        as_json,
        lambda ds: table(
            [
                [
                    d["device"],
                    d["auth"],
                    ",".join(d["groups"]) or "-",
                    d["telemetry_keyid"],
                    (d["not_after"] or "-")[:10],
                    f"REVOKED {d['revoked'][:10]}" if d["revoked"] else "-",
                ]
                for d in ds
            ],
            ["DEVICE", "AUTH", "GROUPS", "TELEMETRY KEY", "EXPIRES", "REVOKED"],
        ),
        "devices",
        "devices",
    )


@devices_group.command("revoke")
@click.argument("device_id")
@json_option
def revoke_cmd(device_id: str, as_json: bool) -> None:
    """Revoke a device: its certificate goes to the CRL, its password and telemetry key are dropped.

    Run edgekit broker config afterwards (and reload the broker) to lock it out.

    Example: edgekit devices revoke pump-7
    """
    device = devices_mod.revoke(workspace.find(), device_id)
    emit(
        device.to_dict(),
        as_json,
        lambda d: f"revoked {d['device']}; now run edgekit broker config and reload the broker",
        kind="device",
    )


COMMANDS = [devices_group]
