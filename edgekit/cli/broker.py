"""``edgekit broker …``: what edgekit needs from the brokers it runs on."""

from __future__ import annotations

from pathlib import Path

import click

from .. import workspace
from ..errors import ExitCode, WorkspaceError
from ..fleet.bridge import BridgeSpec, render
from ..fleet.capabilities import BrokerReport, probe
from .output import emit, json_option, table


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


@broker.command("check")
@click.argument("url", required=False)
@json_option
def check(url: str | None, as_json: bool) -> None:
    """What the broker supports of what edgekit uses: MQTT 5 or 3.1.1, retained messages (on
    exact and wildcard subscriptions), shared subscriptions, packet limit, session expiry.

    Exit 0 when everything edgekit needs is there, 6 when something is missing.

    Example: edgekit broker check mqtt://127.0.0.1:1883 --json
    """
    report = probe(url or workspace.find().broker)
    emit(report.to_json(), as_json, lambda _d: _text(report), kind="broker")
    if not report.ok:
        raise SystemExit(int(ExitCode.FLEET))


def _text(report: BrokerReport) -> str:
    mark = {True: "yes", False: "NO", None: "unknown"}
    rows = [[f.name, mark[f.supported], f.detail] for f in report.features]
    head = f"{report.broker}: MQTT {report.protocol}" + ("" if report.ok else " — edgekit cannot work fully here")
    return head + "\n" + table(rows, ["feature", "supported", "detail"])


COMMANDS = [broker]
