"""``edgekit broker …``: what edgekit needs from the brokers it runs on."""

from __future__ import annotations

from pathlib import Path

import click

from .. import workspace
from ..errors import WorkspaceError
from ..fleet.bridge import BridgeSpec, render


@click.group("broker")
def broker() -> None:
    """The MQTT brokers edgekit runs on: bridges between them, and what each one supports.

    Example: edgekit broker bridge-config --site plant-a --central mqtt://central.example:1883
    """


@broker.command("bridge-config")
@click.option("--site", required=True, help="This site's name: names the bridge connection (one per site).")
@click.option("--central", required=True, help="The central broker the host uses, mqtt://HOST:PORT.")
@click.option("--prefix", default=None, help="Topic prefix (default: the workspace's, or edgekit/v1).")
@click.option("--group", "groups", multiple=True, help="Only these groups' desired states cross (repeatable).")
@click.option("--qos", type=click.IntRange(0, 1), default=1, show_default=True, help="QoS across the bridge.")
@click.option("--max-packet-size", type=click.IntRange(0), default=0, help="bridge_max_packet_size in bytes (0: none).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write here, not to stdout.")
def bridge_config(
    site: str,
    central: str,
    prefix: str | None,
    groups: tuple[str, ...],
    qos: int,
    max_packet_size: int,
    output: Path | None,
) -> None:
    """The mosquitto bridge section a site broker needs to carry edgekit to a central broker.

    Bundles, desired states and commands come in (retained ones stay retained on the site);
    births, Wills, heartbeats, summaries, events and drift windows go out. Put it at the end of
    the site broker's mosquitto.conf, or in a file of its include_dir.

    Example: edgekit broker bridge-config --site plant-a --central mqtt://10.0.0.2:1883 -o edgekit-bridge.conf
    """
    if prefix is None:
        try:
            prefix = workspace.find().prefix
        except WorkspaceError:  # run on the site broker's machine: no workspace there
            prefix = "edgekit/v1"
    spec = BridgeSpec(site, central, prefix, qos, groups, max_packet_size)
    text = render(spec)
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text)
        click.echo(f"wrote {output}: bridge {spec.connection} to {central}", err=True)


COMMANDS = [broker]
