"""``edgekit-agent``: the device daemon's command line.

``edgekit-agent [flags]`` runs the agent; ``edgekit-agent health`` asks a running one how it
is (for a watchdog or a container runtime), and ``edgekit-agent service write-unit`` writes
its systemd unit.

Every default comes from :class:`~device_agent.config.AgentConfig`; a flag left out means
"the config file's value, else the default", so no default is written here. numpy and
onnxruntime are imported only after the arguments are parsed and checked, so ``--help``, a
mistyped flag and ``health`` answer at once.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import warnings
from typing import Any

import click

from . import __version__, logs
from .config import AgentConfig, default_of
from .errors import AgentError, ConfigError
from .local_api import staging_path
from .protocol import check_id

# flag (click parameter name) -> dotted setting in AgentConfig
FLAGS: dict[str, str] = {
    "device_id": "device_id",
    "broker": "mqtt.broker",
    "broker_ca": "mqtt.ca",
    "broker_cert": "mqtt.cert",
    "broker_key": "mqtt.key",
    "broker_username": "mqtt.username",
    "broker_password_file": "mqtt.password_file",
    "telemetry_key": "telemetry_key",
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
    "socket": "api.socket",
    "tcp_port": "api.tcp_port",
    "log_format": "log.format",
    "log_level": "log.level",
    "capture": "capture.mode",
}

# What `edgekit-agent health` exits with: a watchdog needs only the code.
HEALTHY, NOT_SERVING, UNREACHABLE = 0, 1, 3


def _help(text: str, key: str) -> str:
    default = default_of(key)
    if default in ("", (), None):
        return text
    return f"{text} [default: {default}]"


@click.group(
    invoke_without_command=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Run without a command to start the agent; the commands above ask or set up a running one.",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="TOML file with any of the settings (docs/settings.md); flags override it.",
)
@click.option("--device-id", help="This device's id (letters, digits, _ . : -).")
@click.option("--broker", help=_help("MQTT broker URL: mqtts://HOST:8883 (TLS) or mqtt://HOST:1883.", "mqtt.broker"))
@click.option("--broker-ca", type=click.Path(dir_okay=False), help="CA certificate of the broker (mqtts://).")
@click.option("--broker-cert", type=click.Path(dir_okay=False), help="This device's client certificate (mqtts://).")
@click.option("--broker-key", type=click.Path(dir_okay=False), help="The key of that certificate.")
@click.option("--broker-username", help="Username on the broker (password: --broker-password-file or env).")
@click.option(
    "--broker-password-file",
    type=click.Path(dir_okay=False),
    help="File holding the broker password (else the EDGEKIT_MQTT_PASSWORD environment variable).",
)
@click.option("--state-dir", type=click.Path(file_okay=False), help="Where bundles, state and the outbox live.")
@click.option(
    "--telemetry-key", type=click.Path(dir_okay=False), help="Ed25519 key this device signs its telemetry with."
)
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
@click.option(
    "--socket",
    help=_help("Unix socket of the local API (relative: in the state dir; '' for none).", "api.socket"),
)
@click.option("--tcp-port", type=click.IntRange(0, 65535), help="Also serve the local API on 127.0.0.1:PORT.")
@click.option("--log-format", type=click.Choice(logs.FORMATS), help=_help("Log lines on stderr.", "log.format"))
@click.option(
    "--log-level", type=click.Choice(list(logs.LEVELS)), help=_help("Least severe level logged.", "log.level")
)
@click.option(
    "--capture",
    type=click.Choice(["bundle", "on", "off"]),
    help=_help("Keep low-confidence rows for labelling: as the bundle says, on, or off.", "capture.mode"),
)
@click.option("-v", "--verbose", count=True, help="More logging on stderr (each -v lowers the level one step).")
@click.version_option(__version__, prog_name="edgekit-agent")
@click.pass_context
def main(ctx: click.Context, /, config_path: str | None, verbose: int, **flags: Any) -> None:
    """Pull signed bundles over MQTT, serve predictions locally, report health and drift.

    Example: edgekit-agent --device-id pump-7 --broker mqtt://10.0.0.2 --state-dir /var/lib/ek --trust trust.json
    """
    if ctx.invoked_subcommand is not None:
        given = [f"--{name.replace('_', '-')}" for name, value in flags.items() if value not in (None, ())]
        if given or verbose or config_path:
            raise click.UsageError(
                f"{', '.join(given or ['--config'])} belongs to the agent itself; "
                f"give {ctx.invoked_subcommand}'s own options after it"
            )
        return
    try:
        config = load_config(config_path, flags)
        logs.setup(config.log.format, config.log.level, verbose)
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
    config.broker_endpoint()  # raises ConfigError for a bad URL, a missing file, a password in the clear
    if config.telemetry_key:
        from .telemetry_sig import load_signer

        load_signer(config.telemetry_key)  # a key that cannot be read stops the agent before it starts
    source = config.input.source
    if source not in ("stdin", "none") and not source.startswith("csv:"):
        raise ConfigError(f"input {source!r}: use stdin, csv:PATH or none")
    if source.startswith("csv:") and not os.path.isfile(source[4:]):
        raise ConfigError(f"input: no CSV file at {source[4:]!r}")
    check_api(config)
    logs.check(config.log.format, config.log.level)
    return config


def check_api(config: AgentConfig) -> None:
    """The local API's settings, checked before anything starts."""
    config.socket_mode  # noqa: B018 - raises ConfigError for a mode that is not octal
    path = config.socket_path
    longest = max(len(os.fsencode(path)), len(os.fsencode(staging_path(path)))) if path else 0
    if longest > 107:
        raise ConfigError(
            f"api.socket {path!r} is {len(os.fsencode(path))} bytes long; a Unix socket path can have at most 107: "
            "set a shorter api.socket (an absolute path such as /run/edgekit-agent/agent.sock)"
        )
    api = config.api
    for name in ("max_clients", "max_line_bytes", "max_batch_rows"):
        if getattr(api, name) < 1:
            raise ConfigError(f"api.{name} must be at least 1")
    if not 0 <= api.tcp_port <= 65535:
        raise ConfigError(f"api.tcp_port {api.tcp_port} is not a port (1-65535, or 0 for none)")
    if api.io_timeout_s <= 0:
        raise ConfigError("api.io_timeout_s must be above 0")
    if api.mqtt_broker:
        from .config import parse_broker

        parse_broker(api.mqtt_broker)


def run(config: AgentConfig) -> None:
    from .events import SourceFailed
    from .inputs import supervise
    from .service import Service
    from .sources import serve_csv, serve_stdin

    # A value beyond float32 (1e300) is answered as row.out_of_range; numpy's own overflow
    # warning (from whichever thread serves the row) would only add noise to the device's log.
    warnings.filterwarnings("ignore", message="overflow encountered", category=RuntimeWarning)

    try:
        service = Service(config)
        service.start()
    except AgentError as exc:
        raise click.ClickException(exc.detail) from None
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    engine = service.engine
    source = config.input.source
    try:
        if source != "none":

            def read() -> None:
                if source == "stdin":
                    serve_stdin(engine, config.input.max_line_bytes)
                else:
                    serve_csv(engine, source[4:], config.input.rate, sys.stdout)

            def report(name: str, why: str) -> None:
                service.agent.worker.queue.put(SourceFailed(name, why))

            def feed() -> None:
                supervise(source, read, report, stop, config.input.restart_s)
                if config.input.exit_on_eof:
                    stop.set()

            threading.Thread(target=feed, name="edgekit-agent-input", daemon=True).start()
        while not stop.wait(0.5):
            pass
    finally:
        service.stop()


# ── edgekit-agent health ─────────────────────────────────────────────────────────────


@main.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="The agent's config file.")
@click.option("--socket", "socket_path", help="The agent's Unix socket (instead of --config).")
@click.option("--tcp-port", type=click.IntRange(1, 65535), help="The agent's loopback TCP port (instead).")
@click.option("--timeout", type=float, default=5.0, show_default=True, help="Seconds to wait for the answer.")
@click.option("--json", "as_json", is_flag=True, help="Print the whole health document as JSON.")
def health(
    config_path: str | None, socket_path: str | None, tcp_port: int | None, timeout: float, as_json: bool
) -> None:
    """Ask a running agent how it is; the exit code is the verdict, for a watchdog.

    \b
    Exit codes: 0 serving a model, 1 answering but serving no model,
    3 no answer (not running, wrong socket, too slow), 2 usage.
    Being offline from the fleet's broker does not make the agent unhealthy: it serves locally.
    """
    from .client import AgentClient, AgentUnavailable, RequestRefused

    if sum(x is not None for x in (config_path, socket_path, tcp_port)) != 1:
        raise click.UsageError("give one of --config, --socket or --tcp-port")
    if config_path is not None:
        try:
            config = AgentConfig.load(config_path)
        except ConfigError as exc:
            raise click.UsageError(exc.detail) from None
        if config.api.socket and not os.path.isabs(config.api.socket) and not config.state_dir:
            raise click.UsageError(
                f"{config_path} sets no state_dir, so its api.socket {config.api.socket!r} is nowhere"
            )
        socket_path = config.socket_path or None
        if socket_path is None and config.api.tcp_port:
            tcp_port = config.api.tcp_port
        if socket_path is None and tcp_port is None:
            raise click.UsageError(f"{config_path} sets no api.socket and no api.tcp_port: the agent has no local API")
    client = AgentClient(socket_path, timeout=timeout) if socket_path else AgentClient(tcp=("127.0.0.1", tcp_port or 0))
    try:
        with client:
            doc = client.health()
    except (AgentUnavailable, RequestRefused) as exc:
        if as_json:
            click.echo(json.dumps({"serving": False, "reachable": False, "detail": str(exc)}))
        else:
            click.echo(f"unreachable: {exc}", err=True)
        sys.exit(UNREACHABLE)
    if as_json:
        click.echo(json.dumps({**doc, "reachable": True}, indent=2))
    else:
        serving = f"serving {doc.get('bundle')}" + (" (on trial)" if doc.get("on_trial") else "")
        state = serving if doc.get("serving") else "serving no model"
        link = "connected" if doc.get("connected") else "offline from the fleet broker"
        last = doc.get("last_error")
        error = f"; last error {last['code']}: {last['detail']}" if isinstance(last, dict) else ""
        click.echo(f"{doc.get('device')}: {state}, phase {doc.get('phase')}, {link}, outbox {doc.get('outbox')}{error}")
    sys.exit(HEALTHY if doc.get("serving") else NOT_SERVING)


# ── edgekit-agent service ────────────────────────────────────────────────────────────


@main.group()
def service() -> None:
    """Run the agent as a system service."""


@service.command("write-unit")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, exists=True),
    required=True,
    help="The config file the service runs with (its state_dir and api.socket shape the unit).",
)
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the unit here (default: print it).")
@click.option("--exec", "executable", help="Absolute path of edgekit-agent (default: the one on PATH).")
@click.option("--user", help=_help("User the agent runs as.", "service.user"))
@click.option("--group", "group_", help=_help("Its group; members may call the socket.", "service.group"))
@click.option("--memory-max", help=_help("systemd MemoryMax.", "service.memory_max"))
@click.option("--cpu-quota", help=_help("systemd CPUQuota.", "service.cpu_quota"))
@click.option(
    "--systemd-version",
    type=int,
    help="Write for this systemd version (default: the one installed here; 254+ gets restart back-off steps).",
)
def write_unit(
    config_path: str,
    output: str | None,
    executable: str | None,
    user: str | None,
    group_: str | None,
    memory_max: str | None,
    cpu_quota: str | None,
    systemd_version: int | None,
) -> None:
    """Write a hardened systemd unit that runs the agent with --config.

    \b
    Then: useradd --system --shell /usr/sbin/nologin edgekit
          edgekit-agent service write-unit --config /etc/edgekit/agent.toml -o /etc/systemd/system/edgekit-agent.service
          systemctl daemon-reload && systemctl enable --now edgekit-agent
    """
    from . import systemd

    given = {"service.user": user, "service.group": group_, "service.memory_max": memory_max}
    given["service.cpu_quota"] = cpu_quota
    try:
        config = AgentConfig.load(config_path, {k: v for k, v in given.items() if v is not None})
        if not config.state_dir:
            raise ConfigError(f"{config_path} sets no state_dir; the unit needs it (the one writable directory)")
        check_api(config)
        exe = executable or systemd.agent_executable()
        version = systemd_version if systemd_version is not None else systemd.systemd_version()
        text = systemd.unit_text(config, os.path.abspath(config_path), exe, version)
    except ConfigError as exc:
        raise click.UsageError(exc.detail) from None
    except (ValueError, FileNotFoundError) as exc:
        raise click.UsageError(str(exc)) from None
    if output is None:
        click.echo(text, nl=False)
        return
    with open(output, "w") as fh:
        fh.write(text)
    click.echo(f"wrote {output}; then: systemctl daemon-reload && systemctl enable --now {os.path.basename(output)}")


if __name__ == "__main__":
    main()
