"""``edgekit sim``: many simulated devices in one process, on the agent's own core."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

import click

from .. import workspace
from ..errors import UsageError, WorkspaceError
from .output import emit, json_option

FRACTION = click.FloatRange(0.0, 1.0)


@click.command("sim")
@click.option("--devices", "-n", type=click.IntRange(1, 100_000), default=100, show_default=True)
@click.option("--broker", default=None, help="MQTT broker URL (default: edgekit.toml, else mqtt://127.0.0.1:1883).")
@click.option("--prefix", default=None, help="Topic prefix (default: edgekit.toml).")
@click.option(
    "--trust",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="The devices' trust file (default: the workspace's keys).",
)
@click.option("--id-prefix", default="sim-", show_default=True, help="Device ids are PREFIX0000, PREFIX0001, …")
@click.option("--group", "groups", multiple=True, help="Group every device joins (repeat; default: sim).")
@click.option(
    "--duration", type=click.FloatRange(min=0.1), default=None, help="Seconds to run (default: until Ctrl-C)."
)
@click.option(
    "--rows",
    "rows_csv",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="CSV of rows devices serve (columns named as the model's features; default: drawn from the "
    "bundle's reference histograms).",
)
@click.option(
    "--rate", type=click.FloatRange(min=0.0), default=10.0, show_default=True, help="Rows per second per device."
)
@click.option("--window", type=click.IntRange(min=10), default=100, show_default=True, help="Rows per drift window.")
@click.option(
    "--heartbeat", type=click.FloatRange(min=0.5), default=5.0, show_default=True, help="Heartbeat period, s."
)
@click.option("--trial-rows", type=click.IntRange(min=1), default=50, show_default=True)
@click.option(
    "--preinstalled",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="A bundle (.ekb) every device already runs at the start.",
)
@click.option("--fail-install", type=FRACTION, default=0.0, help="Share of devices whose install fails (health check).")
@click.option("--fail-trial", type=FRACTION, default=0.0, help="Share of devices whose new model fails its trial.")
@click.option("--errors", type=FRACTION, default=0.0, help="Share of devices that get bad rows (--error-rate of them).")
@click.option("--error-rate", type=FRACTION, default=0.2, show_default=True)
@click.option("--drift", type=FRACTION, default=0.0, help="Share of devices whose inputs are shifted (--drift-sigma).")
@click.option("--drift-sigma", type=click.FloatRange(min=0.0), default=2.0, show_default=True)
@click.option("--slow", type=FRACTION, default=0.0, help="Share of devices that handle messages late (--slow-s).")
@click.option("--slow-s", type=click.FloatRange(min=0.0), default=0.2, show_default=True)
@click.option(
    "--faults-for",
    "only",
    multiple=True,
    metavar="NAME[@V]",
    help="Faults apply only while a device installs or runs this bundle (repeat).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Which devices get which fault.")
@json_option
def sim_cmd(
    devices: int,
    broker: str | None,
    prefix: str | None,
    trust: Path | None,
    id_prefix: str,
    groups: tuple[str, ...],
    duration: float | None,
    rows_csv: Path | None,
    rate: float,
    window: int,
    heartbeat: float,
    trial_rows: int,
    preinstalled: Path | None,
    fail_install: float,
    fail_trial: float,
    errors: float,
    error_rate: float,
    drift: float,
    drift_sigma: float,
    slow: float,
    slow_s: float,
    only: tuple[str, ...],
    seed: int,
    as_json: bool,
) -> None:
    """Run many devices in this process on the agent's own core, each with its own MQTT
    connection: they pull and verify bundles, serve rows, and report heartbeats, drift
    windows and failures as agents do. Faults are injected into a share of them.

    More devices than one process carries (about one core each): run several with their
    own --id-prefix on one broker.

    Example: edgekit sim --devices 1000 --group plant-a --fail-trial 0.05 --faults-for pump@3
    """
    from ..sim import Faults, Fleet, SimConfig

    ws = None
    try:
        ws = workspace.find()
    except WorkspaceError:
        if trust is None:
            raise WorkspaceError(
                "no edgekit workspace here, and no --trust given", "run in a workspace or pass --trust trust.json"
            ) from None
    trust_path = trust
    if trust_path is None and ws is not None:
        from .. import keys

        trust_path = ws.state / "sim-trust.json"
        trust_path.write_bytes(keys.trust_file(ws).to_json())
    try:
        faults = Faults(
            install=fail_install,
            trial=fail_trial,
            errors=errors,
            drift=drift,
            slow=slow,
            error_rate=error_rate,
            drift_sigma=drift_sigma,
            slow_s=slow_s,
            only=only,
            seed=seed,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    config = SimConfig(
        broker=broker or (ws.broker if ws is not None else "mqtt://127.0.0.1:1883"),
        trust=trust_path,
        devices=devices,
        id_prefix=id_prefix,
        groups=groups or ("sim",),
        prefix=prefix or (ws.prefix if ws is not None else "edgekit/v1"),
        faults=faults,
        rows_csv=rows_csv,
        rows_per_s=rate,
        drift_window_rows=window,
        heartbeat_s=heartbeat,
        trial_rows=trial_rows,
        preinstalled=preinstalled,
    )
    fleet = Fleet(config)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: fleet.stop())
    show = not as_json

    def progress(summary: Any) -> None:
        if show:
            click.echo(f"… {summary.line()}", err=True)

    if show:
        click.echo(f"… {devices} devices connecting to {config.broker} (Ctrl-C stops them)", err=True)
    summary = fleet.run(duration, progress=progress)
    emit(summary.to_dict(), as_json, lambda s: f"sim: {summary.line()}", kind="sim")
    if summary.simulator_errors:
        sys.exit(1)


COMMANDS = [sim_cmd]
