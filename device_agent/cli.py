"""``edgekit-agent``: the device daemon's command line."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from urllib.parse import urlparse

import click

from . import __version__
from .config import AgentConfig
from .errors import AgentError
from .mqtt import Agent
from .sources import serve_csv, serve_stdin


def parse_broker(url: str) -> tuple[str, int]:
    parsed = urlparse(url if "://" in url else f"mqtt://{url}")
    if parsed.scheme not in ("mqtt", "tcp"):
        raise click.BadParameter(f"unsupported scheme {parsed.scheme!r}; use mqtt://HOST:PORT", param_hint="--broker")
    return parsed.hostname or "127.0.0.1", parsed.port or 1883


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--device-id", required=True, help="This device's id (letters, digits, _ . : -).")
@click.option("--broker", default="mqtt://127.0.0.1:1883", show_default=True, help="MQTT broker URL.")
@click.option("--state-dir", required=True, type=click.Path(file_okay=False), help="Where slots and the outbox live.")
@click.option("--trust", "trust_path", required=True, type=click.Path(dir_okay=False), help="Trust file (public keys).")
@click.option("--group", "groups", multiple=True, help="Group(s) this device belongs to; repeatable.")
@click.option("--prefix", default="edgekit/v1", show_default=True, help="Topic prefix of the fleet.")
@click.option("--input", "source", default="stdin", show_default=True, help="stdin | csv:PATH | none")
@click.option("--rate", default=0.0, show_default=True, help="Rows per second when replaying a CSV (0 = max).")
@click.option("--heartbeat", default=5.0, show_default=True, help="Heartbeat interval, seconds.")
@click.option(
    "--drift-window",
    type=click.IntRange(min=10),
    default=None,
    help="Rows per drift window (default: the bundle's policy).",
)
@click.option(
    "--trial-rows",
    type=click.IntRange(min=1),
    default=50,
    show_default=True,
    help="Live rows a new model must serve before commit.",
)
@click.option(
    "--trial-seconds", default=10.0, show_default=True, help="A trial with no failure passes after this long."
)
@click.option("--exit-on-eof", is_flag=True, help="Exit when the input ends instead of serving on as a daemon.")
@click.option("-v", "--verbose", count=True, help="More logging on stderr.")
@click.version_option(__version__, prog_name="edgekit-agent")
def main(
    device_id: str,
    broker: str,
    state_dir: str,
    trust_path: str,
    groups: tuple[str, ...],
    prefix: str,
    source: str,
    rate: float,
    heartbeat: float,
    drift_window: int | None,
    trial_rows: int,
    trial_seconds: float,
    exit_on_eof: bool,
    verbose: int,
) -> None:
    """Pull signed bundles over MQTT, serve predictions locally, report health and drift.

    Example: edgekit-agent --device-id pump-7 --broker mqtt://10.0.0.2 --state-dir /var/lib/ek --trust trust.json
    """
    logging.basicConfig(
        level=logging.WARNING - 10 * verbose, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    host, port = parse_broker(broker)
    if source not in ("stdin", "none") and not source.startswith("csv:"):
        raise click.BadParameter("use stdin, csv:PATH or none", param_hint="--input")
    if source.startswith("csv:") and not os.path.isfile(source[4:]):
        raise click.BadParameter(f"no CSV file at {source[4:]!r}", param_hint="--input")
    config = AgentConfig(
        device_id=device_id,
        state_dir=state_dir,
        trust_path=trust_path,
        groups=groups,
        prefix=prefix,
        broker_host=host,
        broker_port=port,
        heartbeat_interval_s=heartbeat,
        drift_window_rows=drift_window,
        trial_rows=trial_rows,
        trial_max_s=trial_seconds,
    )
    try:
        agent = Agent(config)
    except AgentError as exc:
        raise click.ClickException(f"{exc.detail}") from None
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    agent.start()
    try:
        if source == "stdin" or source.startswith("csv:"):

            def feed() -> None:
                if source == "stdin":
                    serve_stdin(agent.engine)
                else:
                    serve_csv(agent.engine, source[4:], rate, sys.stdout)
                if exit_on_eof:
                    stop.set()

            threading.Thread(target=feed, name="edgekit-agent-input", daemon=True).start()
        while not stop.wait(0.5):
            pass
    finally:
        agent.stop()


if __name__ == "__main__":
    main()
