"""``edgekit broker config``: the mosquitto configuration of a secured fleet."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .. import broker_config, workspace
from ..devices import AUTH_CERT, AUTH_PASSWORD
from .output import emit, json_option


@click.group("broker")
def broker_group() -> None:
    """The fleet's MQTT broker (mosquitto): TLS, identities, per-device ACLs."""


@broker_group.command("config")
@click.option(
    "-o",
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Directory for mosquitto.conf, acl, certificates (default: .edgekit/broker/).",
)
@click.option("--host", "hosts", multiple=True, help="Name or IP devices reach the broker by; repeatable.")
@click.option("--port", type=click.IntRange(1, 65535), default=8883, show_default=True, help="TLS listener port.")
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
        bind=bind,
        auth=auth,
        collectors=collectors or ("main",),
        persistence_dir=persistence_dir,
    )

    def text(d: dict[str, Any]) -> str:
        lines = [
            f"wrote {d['config']} ({d['auth']}s, port {d['port']}, {d['devices']} device(s), {d['revoked']} revoked)",
            f"  run: mosquitto -c {d['config']}   (reload after changes: kill -HUP $(pidof mosquitto))",
            "  host roles (put one in [fleet] of edgekit.toml, with ca = the fleet CA):",
        ]
        for identity, creds in sorted(d["roles"].items()):
            lines.append(f"    {identity}: " + ", ".join(f"{k} = {v}" for k, v in creds.items()))
        return "\n".join(lines)

    emit(files.to_dict(), as_json, text, kind="broker_config")


COMMANDS = [broker_group]
