"""``edgekit-agent``: the device daemon's command line.

Every default comes from :class:`~device_agent.config.AgentConfig`; a flag left out means
"the config file's value, else the default", so no default is written here. numpy and
onnxruntime are imported only after the arguments are parsed and checked, so ``--help`` and
a mistyped flag answer at once.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import warnings
from typing import Any

import click

from . import __version__
from .config import AgentConfig, default_of
from .errors import AgentError, ConfigError
from .protocol import check_id

# flag (click parameter name) -> dotted setting in AgentConfig
FLAGS: dict[str, str] = {
    "device_id": "device_id",
    "broker": "mqtt.broker",
    "state_dir": "state_dir",
    "trust": "trust",
    "groups": "groups",
    "prefix": "mqtt.prefix",
    "source": "input.source",
    "rate": "input.rate",
    "heartbeat": "core.heartbeat_interval_s",
    "drift_window": "engine.drift_window_rows",
    "trial_rows": "engine.trial_rows",
    "trial_seconds": "engine.trial_max_s",
    "exit_on_eof": "input.exit_on_eof",
}


def _help(text: str, key: str) -> str:
    default = default_of(key)
    if default in ("", (), None):
        return text
    return f"{text} [default: {default}]"


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="TOML file with any of the settings (docs/settings.md); flags override it.",
)
@click.option("--device-id", help="This device's id (letters, digits, _ . : -).")
@click.option("--broker", help=_help("MQTT broker URL.", "mqtt.broker"))
@click.option("--state-dir", type=click.Path(file_okay=False), help="Where bundles, state and the outbox live.")
@click.option("--trust", type=click.Path(dir_okay=False), help="Trust file (public keys by role).")
@click.option("--group", "groups", multiple=True, help="Group(s) this device belongs to; repeatable.")
@click.option("--prefix", help=_help("Topic prefix of the fleet.", "mqtt.prefix"))
@click.option("--input", "source", help=_help("stdin | csv:PATH | none", "input.source"))
@click.option("--rate", type=float, help=_help("Rows per second when replaying a CSV (0 = max).", "input.rate"))
@click.option("--heartbeat", type=float, help=_help("Heartbeat interval, seconds.", "core.heartbeat_interval_s"))
@click.option(
    "--drift-window",
    type=click.IntRange(min=10),
    help="Rows per drift window (default: the bundle's policy).",
)
@click.option(
    "--trial-rows",
    type=click.IntRange(min=1),
    help=_help("Live rows a new model must serve before commit.", "engine.trial_rows"),
)
@click.option(
    "--trial-seconds",
    type=float,
    help=_help("A trial with no failure passes after this long.", "engine.trial_max_s"),
)
@click.option(
    "--exit-on-eof/--no-exit-on-eof",
    default=None,
    help="Exit when the input ends instead of serving on as a daemon.",
)
@click.option("-v", "--verbose", count=True, help="More logging on stderr.")
@click.version_option(__version__, prog_name="edgekit-agent")
def main(config_path: str | None, verbose: int, **flags: Any) -> None:
    """Pull signed bundles over MQTT, serve predictions locally, report health and drift.

    Example: edgekit-agent --device-id pump-7 --broker mqtt://10.0.0.2 --state-dir /var/lib/ek --trust trust.json
    """
    logging.basicConfig(
        level=logging.WARNING - 10 * verbose, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    try:
        config = load_config(config_path, flags)
    except ConfigError as exc:
        raise click.UsageError(exc.detail) from None
    run(config)


def load_config(config_path: str | None, flags: dict[str, Any]) -> AgentConfig:
    """Defaults ← config file ← flags; then everything the agent needs is checked before it
    touches the disk (a mistyped device id leaves no state directory behind)."""
    overrides = {FLAGS[name]: value for name, value in flags.items() if value not in (None, ())}
    config = AgentConfig.load(config_path, overrides).check()
    try:
        check_id("device id", config.device_id)
        for group in config.groups:
            check_id("group", group)
    except AgentError as exc:
        raise ConfigError(exc.detail) from None
    config.broker_host_port  # noqa: B018 - raises ConfigError for a bad URL
    source = config.input.source
    if source not in ("stdin", "none") and not source.startswith("csv:"):
        raise ConfigError(f"input {source!r}: use stdin, csv:PATH or none")
    if source.startswith("csv:") and not os.path.isfile(source[4:]):
        raise ConfigError(f"input: no CSV file at {source[4:]!r}")
    return config


def run(config: AgentConfig) -> None:
    from .sources import serve_csv, serve_stdin
    from .worker import Agent

    # A value beyond float32 (1e300) is answered as row.out_of_range; numpy's own overflow
    # warning (from whichever thread serves the row) would only add noise to the device's log.
    warnings.filterwarnings("ignore", message="overflow encountered", category=RuntimeWarning)

    try:
        agent = Agent(config)
    except AgentError as exc:
        raise click.ClickException(exc.detail) from None
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    agent.start()
    source = config.input.source
    try:
        if source != "none":

            def feed() -> None:
                if source == "stdin":
                    serve_stdin(agent.engine)
                else:
                    serve_csv(agent.engine, source[4:], config.input.rate, sys.stdout)
                if config.input.exit_on_eof:
                    stop.set()

            threading.Thread(target=feed, name="edgekit-agent-input", daemon=True).start()
        while not stop.wait(0.5):
            pass
    finally:
        agent.stop()


if __name__ == "__main__":
    main()
