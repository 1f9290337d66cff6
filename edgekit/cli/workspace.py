"""``edgekit init``."""

from __future__ import annotations

from pathlib import Path

import click

from .. import workspace as ws_mod
from .output import emit, json_option


@click.command("init")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path), default=".")
@click.option("--broker", default="mqtt://127.0.0.1:1883", show_default=True, help="MQTT broker of the fleet.")
@json_option
def init_cmd(directory: Path, broker: str, as_json: bool) -> None:
    """Create a workspace: edgekit.toml and .edgekit/ (keys, runs, bundles).

    Example: edgekit init my-project --broker mqtt://10.0.0.2:1883
    """
    ws = ws_mod.init(directory, broker=broker)
    emit(
        {"root": str(ws.root), "broker": ws.broker, "prefix": ws.prefix},
        as_json,
        lambda d: f"workspace ready in {d['root']} (broker {d['broker']})",
        "workspace",
    )


COMMANDS = [init_cmd]
