"""``edgekit keys``: signing keys and trust files."""

from __future__ import annotations

from pathlib import Path

import click

from device_agent.trust import DEFAULT_ROLES, ROLES

from .. import keys as keys_mod
from .. import workspace
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
@json_option
def generate_cmd(name: str, roles: tuple[str, ...], as_json: bool) -> None:
    """Create a key pair and print its key id.

    Example: edgekit keys generate --name release
    """
    info = keys_mod.generate(workspace.find(), name, roles or DEFAULT_ROLES)
    emit(info.to_dict(), as_json, lambda d: f"{d['keyid']}  {d['name']}  roles: {', '.join(d['roles'])}", "key")


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
def trust_cmd(output: Path, names: tuple[str, ...]) -> None:
    """Write the public keys devices should trust.

    Example: edgekit keys trust -o trust.json
    """
    trust = keys_mod.trust_file(workspace.find(), names)
    output.write_bytes(trust.to_json())
    click.echo(f"wrote {output} with {len(trust.keys)} key(s)")


COMMANDS = [keys_group]
