"""``edgekit broker …``: what edgekit needs from the brokers it runs on."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import click

from .. import broker_config, workspace
from ..devices import AUTH_CERT, AUTH_PASSWORD
from ..errors import ExitCode, WorkspaceError
from ..fleet.bridge import BridgeSpec, render
from ..fleet.capabilities import BrokerReport, probe
from .connection import BrokerChoice, broker_options
from .output import emit, json_option, table


@click.group("broker")
def broker() -> None:
    """The MQTT brokers edgekit runs on: a secured fleet's configuration (TLS, identities,
    per-device ACLs), bridges between brokers, and what each one supports.

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


@broker.command("config")
@click.option(
    "-o",
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Directory for mosquitto.conf, acl, certificates (default: .edgekit/broker/).",
)
@click.option("--host", "hosts", multiple=True, help="Name or IP devices reach the broker by; repeatable.")
@click.option("--port", type=click.IntRange(1, 65535), default=8883, show_default=True, help="The devices' TLS port.")
@click.option(
    "--host-port", type=click.IntRange(1, 65535), default=None, help="The host roles' TLS port (default: --port + 1)."
)
@click.option("--bind", default="", help="Address the listener binds to (default: all).")
@click.option(
    "--auth",
    type=click.Choice([AUTH_CERT, AUTH_PASSWORD]),
    default=AUTH_CERT,
    show_default=True,
    help="How clients prove who they are: a certificate from the fleet CA, or a password.",
)
@click.option("--collector", "collectors", multiple=True, help="Name of an edgekit serve collector (default: main).")
@click.option(
    "--persistence-dir",
    default="/var/lib/mosquitto/",
    show_default=True,
    help="Where mosquitto keeps retained messages (bundles live there).",
)
@json_option
def config_cmd(
    output: Path | None,
    hosts: tuple[str, ...],
    port: int,
    host_port: int | None,
    bind: str,
    auth: str,
    collectors: tuple[str, ...],
    persistence_dir: str,
    as_json: bool,
) -> None:
    """Write mosquitto.conf, its ACL, certificates and CRL (or password file) for this fleet.

    Devices may write only their own telemetry and read only their own desired state, their
    groups' and the bundles; host roles (@deploy, @serve-NAME, @reader) get credentials in
    .edgekit/pki/hosts/. Run it again after enrolling or revoking devices, then reload
    mosquitto (SIGHUP).

    Example: edgekit broker config --host broker.plant-a.example --host 10.0.0.2
    """
    ws = workspace.find()
    files = broker_config.write(
        ws,
        (output or ws.state / "broker").resolve(),
        hosts=hosts or ("localhost", "127.0.0.1"),
        port=port,
        host_port=host_port,
        bind=bind,
        auth=auth,
        collectors=collectors or ("main",),
        persistence_dir=persistence_dir,
    )

    def text(d: dict[str, Any]) -> str:
        lines = [
            f"wrote {d['config']} ({d['auth']}s, {d['devices']} device(s), {d['revoked']} revoked)",
            f'  devices connect to port {d["port"]} ([fleet] device_broker = "mqtts://HOST:{d["port"]}"), '
            f'host commands to port {d["host_port"]} ([fleet] broker = "mqtts://HOST:{d["host_port"]}")',
            f"  run: mosquitto -c {d['config']}   (reload after changes: kill -HUP $(pidof mosquitto))",
            "  host roles (put one in [fleet] of edgekit.toml, with ca = .edgekit/pki/ca.pem):",
        ]
        for identity, creds in sorted(d["roles"].items()):
            lines.append(f"    {identity}: " + ", ".join(f"{k} = {v}" for k, v in creds.items()))
        return "\n".join(lines)

    emit(files.to_dict(), as_json, text, kind="broker_config")


@broker.command("check")
@click.argument("url", required=False)
@broker_options
@json_option
def check(url: str | None, broker: BrokerChoice, as_json: bool) -> None:
    """What the broker supports of what edgekit uses: MQTT 5 or 3.1.1, retained messages (on
    exact and wildcard subscriptions), shared subscriptions, packet limit, session expiry.

    Exit 0 when everything edgekit needs is there, 6 when something is missing.

    Example: edgekit broker check mqtt://127.0.0.1:1883 --json
    """
    if url is not None:
        broker = dataclasses.replace(broker, url=url)
    try:
        ws: workspace.Workspace | None = workspace.find()
    except WorkspaceError:
        ws = None
    report = probe(broker.resolve(ws))
    emit(report.to_json(), as_json, lambda _d: _text(report), kind="broker")
    if not report.ok:
        raise SystemExit(int(ExitCode.FLEET))


def _text(report: BrokerReport) -> str:
    mark = {True: "yes", False: "NO", None: "unknown"}
    rows = [[f.name, mark[f.supported], f.detail] for f in report.features]
    head = f"{report.broker}: MQTT {report.protocol}" + ("" if report.ok else " — edgekit cannot work fully here")
    return head + "\n" + table(rows, ["feature", "supported", "detail"])


COMMANDS = [broker]
