"""``edgekit keys``: signing keys and trust files."""

from __future__ import annotations

import os
from pathlib import Path

import click

from device_agent.trust import DEFAULT_ROLES, ROLES

from .. import keys as keys_mod
from .. import workspace
from .connection import BrokerChoice, broker_options
from .output import emit, json_option, table


@click.group("keys")
def keys_group() -> None:
    """Ed25519 signing keys (private keys never leave this workspace)."""


@keys_group.command("generate")
@click.option("--name", required=True, help="Key name, e.g. release.")
@click.option(
    "--role",
    "roles",
    multiple=True,
    type=click.Choice(ROLES),
    help="Roles (default: bundle and deploy; root only when asked).",
)
@click.option(
    "--encrypt",
    is_flag=True,
    help="Encrypt the private key with a passphrase (EDGEKIT_KEY_PASSPHRASE, else asked for; never an argument).",
)
@json_option
def generate_cmd(name: str, roles: tuple[str, ...], encrypt: bool, as_json: bool) -> None:
    """Create a key pair and print its key id.

    Example: edgekit keys generate --name release --encrypt
    """
    info = keys_mod.generate(workspace.find(), name, roles or DEFAULT_ROLES, _passphrase(encrypt))
    emit(info.to_dict(), as_json, lambda d: f"{d['keyid']}  {d['name']}  roles: {', '.join(d['roles'])}", "key")


def _passphrase(encrypt: bool) -> bytes | None:
    """From the environment, or asked for on the terminal: a passphrase on the command line
    would sit in the shell's history and in every process listing."""
    if not encrypt:
        return None
    env = os.environb.get(b"EDGEKIT_KEY_PASSPHRASE")
    if env:
        return env
    return click.prompt("passphrase", hide_input=True, confirmation_prompt=True).encode()


@keys_group.command("revoke")
@click.argument("name")
@json_option
def revoke_cmd(name: str, as_json: bool) -> None:
    """Revoke a key: left out of trust files from now on and never used to sign; devices drop
    it when they get the next signed trust file (edgekit keys trust --root R --publish).

    Example: edgekit keys revoke release
    """
    info = keys_mod.revoke(workspace.find(), name)
    emit(info.to_dict(), as_json, lambda d: f"revoked {d['keyid']}  {d['name']}", "key")


@keys_group.command("rotate")
@click.argument("name")
@click.option("--new", "new_name", required=True, help="Name of the key that replaces it.")
@click.option("--encrypt", is_flag=True, help="Encrypt the new private key with a passphrase (as generate does).")
@json_option
def rotate_cmd(name: str, new_name: str, encrypt: bool, as_json: bool) -> None:
    """Replace a key: a new one with the same roles, the old one revoked.

    Example: edgekit keys rotate release --new release-2026
    """
    info = keys_mod.rotate(workspace.find(), name, new_name, _passphrase(encrypt))
    emit(
        info.to_dict(),
        as_json,
        lambda d: f"{d['keyid']}  {d['name']}  roles: {', '.join(d['roles'])} (replaces {name})",
        "key",
    )


@keys_group.command("list")
@json_option
def list_cmd(as_json: bool) -> None:
    """List the workspace's keys.

    Example: edgekit keys list --json
    """
    infos = [k.to_dict() for k in keys_mod.list_keys(workspace.find())]
    emit(
        infos,
        as_json,
        lambda d: table([[k["keyid"], k["name"], ",".join(k["roles"])] for k in d], ["KEYID", "NAME", "ROLES"]),
        "keys",
        "keys",
    )


@keys_group.command("trust")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Trust file to write (give it to devices).",
)
@click.option("--name", "names", multiple=True, help="Only these keys (default: all).")
@click.option(
    "--root",
    "roots",
    multiple=True,
    help="Sign the trust file with this root key (repeatable): devices can be sent newer ones.",
)
@click.option("--publish", is_flag=True, help="Also publish the signed trust file, retained, to the fleet's broker.")
@broker_options
def trust_cmd(
    output: Path, names: tuple[str, ...], roots: tuple[str, ...], publish: bool, broker: BrokerChoice
) -> None:
    """Write the public keys devices should trust (revoked keys are left out). With --root, the
    file is signed and versioned: a device replaces its own with a newer one its current root
    signed, so keys can be added, revoked and rotated over the air (--publish).

    Example: edgekit keys trust -o trust.json --root root --publish
    """
    ws = workspace.find()
    if not roots:
        if publish:
            raise click.UsageError("--publish needs --root: devices accept only trust files their root signed")
        trust = keys_mod.trust_file(ws, names)
        output.write_bytes(trust.to_json())
        click.echo(f"wrote {output} with {len(trust.keys)} key(s)")
        return
    from device_agent.protocol import Topics
    from device_agent.trust import Trust

    from ..fleet.client import connect, publish_all

    data = keys_mod.signed_trust(ws, roots)
    trust = Trust.from_bytes(data)
    output.write_bytes(data)
    click.echo(f"wrote {output}: version {trust.version}, {len(trust.keys)} key(s), signed by {', '.join(roots)}")
    if publish:
        with connect(broker.resolve(ws), purpose="trust") as conn:
            publish_all(conn, [(Topics(ws.prefix).trust(), data, True)])
        click.echo(f"published to {Topics(ws.prefix).trust()}")


COMMANDS = [keys_group]
