"""``edgekit serve``: the collector, running until SIGTERM or SIGINT."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from datetime import UTC, datetime
from typing import Any

import click

from .. import workspace
from ..errors import WorkspaceError
from .connection import BrokerChoice, broker_options


class JsonFormatter(logging.Formatter):
    """One JSON object per line: for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, sort_keys=True)


def _setup_logging(json_log: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_log else logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


@click.command("serve")
@click.option(
    "--store",
    "store_url",
    default=None,
    help="postgresql://… or sqlite:///PATH (default: edgekit.toml [serve] store, else .edgekit/telemetry.db).",
)
@broker_options
@click.option("--prefix", default=None, help="Topic prefix (default: edgekit.toml).")
@click.option(
    "--metrics-port", type=click.IntRange(0, 65535), default=None, help="Serve Prometheus /metrics on this port."
)
@click.option("--metrics-addr", default="127.0.0.1", show_default=True, help="Address of the metrics endpoint.")
@click.option("--name", default=None, help="This collector's MQTT session name (default: the host name); one each.")
@click.option(
    "--end-session",
    is_flag=True,
    help="On exit, end the MQTT session (leave the share group for good) instead of letting the broker queue.",
)
@click.option(
    "--on-alert",
    "on_alert",
    default=None,
    metavar="CMD",
    help="Run CMD (a shell command line) per alert fired or resolved, the alert as JSON on stdin "
    "(default: edgekit.toml [alerts] on_alert).",
)
@click.option("--no-alerts", is_flag=True, help="Store telemetry only; evaluate no alert rules.")
@click.option("--json-log", is_flag=True, help="Log JSON lines on stderr.")
@click.option(
    "--resign-every",
    default=None,
    metavar="DURATION",
    help="Also re-sign the retained desired states this often (e.g. 6h), so they never expire (needs a deploy key).",
)
@click.option("--key", "key_name", default=None, help="Deploy key for --resign-every (default: the only one).")
def serve_cmd(
    store_url: str | None,
    broker: BrokerChoice,
    prefix: str | None,
    metrics_port: int | None,
    metrics_addr: str,
    name: str | None,
    end_session: bool,
    on_alert: str | None,
    no_alerts: bool,
    json_log: bool,
    resign_every: str | None,
    key_name: str | None,
) -> None:
    """Collect the fleet's telemetry into a store, losing none of it, until stopped.

    Events, drift windows, heartbeats, summaries, births and Wills are stored as they come;
    gaps in a device's sequence are asked for again. Several collectors may share the load
    (each with its own --name) into one PostgreSQL. Alert rules (edgekit.toml [alerts],
    docs/alerts.md) run over what arrives; alerts are stored, published retained on
    PREFIX/alerts/…, and passed to --on-alert. Run in a workspace, it also runs the phased
    rollouts that 'edgekit rollout start' records (docs/rollouts.md).

    Example: edgekit serve --store postgresql://edgekit@db/telemetry --metrics-port 9310
    """
    from ..alerts.catalog import BundleCatalog
    from ..alerts.config import AlertConfig
    from ..alerts.notify import CommandRunner
    from ..alerts.service import AlertService
    from ..fleet.collector import Collector, ServeSettings
    from ..fleet.metrics import CollectorMetrics, serve_http
    from ..fleet.verify import TelemetryCheck
    from ..telemetry import open_store
    from ..telemetry import store_url as telemetry_url

    ws = None
    try:
        ws = workspace.find()
    except WorkspaceError:
        if store_url is None or not broker.given:
            raise WorkspaceError(
                "no edgekit workspace here, and no --store and --broker given",
                "run in a workspace (edgekit init) or pass --store and --broker",
            ) from None
    section: dict[str, Any] = ws.config.get("serve", {}) if ws is not None else {}
    for key in ("session_expiry_s", "metrics_port"):
        if key in section and (isinstance(section[key], bool) or not isinstance(section[key], int)):
            raise WorkspaceError(f"[serve] {key} in edgekit.toml must be an integer, got {section[key]!r}")
    url = telemetry_url(ws.config if ws else None, ws.state if ws else None, store_url)
    settings = ServeSettings(
        **{k: section[k] for k in ("session_expiry_s", "share_group") if k in section},
        name=name or section.get("name") or ServeSettings().name,
        prefix=prefix or (ws.prefix if ws is not None else ServeSettings().prefix),
    )
    port = metrics_port if metrics_port is not None else section.get("metrics_port")
    _setup_logging(json_log)
    log = logging.getLogger("edgekit.serve")

    alert_config = AlertConfig.from_toml(ws.config.get("alerts") if ws is not None else None)
    command = on_alert if on_alert is not None else alert_config.on_alert
    alerts = None
    if alert_config.enabled and not no_alerts:
        runner = CommandRunner(command, alert_config.command_timeout_s, alert_config.command_queue) if command else None
        alerts = AlertService(alert_config, BundleCatalog(ws), settings.prefix, runner=runner)
    metrics = CollectorMetrics()
    rollouts = None
    if ws is not None:  # rollouts sign with the workspace's keys and record in its registry
        from ..rollout.controller import RolloutController

        rollouts = RolloutController(ws, broker.resolve(ws), settings.prefix)
    collector = Collector(
        lambda: open_store(str(url)),
        broker.resolve(ws),
        settings,
        metrics,
        alerts=alerts,
        check=TelemetryCheck.from_workspace(ws),
        rollouts=rollouts,
    )
    server = None
    if port is not None:
        server, bound = serve_http(metrics, int(port), metrics_addr)
        log.info("metrics on http://%s:%d/metrics", metrics_addr, bound)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if resign_every is not None:
        _resign_periodically(ws, broker.resolve(ws), settings.prefix, resign_every, key_name, stop)
    collector.start()
    backend, who = collector.store.backend, collector.client_id
    log.info("collecting %s/… from %s into %s as %s", settings.prefix, collector.broker, backend, who)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        log.info("stopping: storing what was received")
        collector.stop(end_session=end_session)
        if server is not None:
            server.shutdown()
        log.info("stopped")


def _resign_periodically(
    ws: Any, broker: Any, prefix: str, every: str, key_name: str | None, stop: threading.Event
) -> None:
    """Re-sign the retained desired states now and then every ``every``, on a thread of its
    own: a broker that is away costs a log line, never the collector."""
    from device_agent.trust import ROLE_DEPLOY

    from .. import keys
    from ..fleet.freshness import refresh
    from .fleet import parse_duration

    if ws is None:
        raise WorkspaceError("--resign-every needs the workspace's deploy key", "run edgekit serve in a workspace")
    period = parse_duration(every)
    key, trust = keys.pick_key(ws, ROLE_DEPLOY, key_name), keys.trust_file(ws)
    log = logging.getLogger("edgekit.serve")

    def run() -> None:
        while not stop.is_set():
            try:
                done = refresh(broker, prefix, key, trust, ttl_s=max(4 * period, 86400.0))
                log.info("re-signed %d desired state(s)", sum(r.problem is None for r in done))
                for r in done:
                    if r.problem:
                        log.warning("not re-signed: %s (%s)", r.topic, r.problem)
            except Exception as exc:  # the next round tries again
                log.warning("re-signing desired states failed: %s", exc)
            stop.wait(period)

    threading.Thread(target=run, name="edgekit-resign", daemon=True).start()


COMMANDS = [serve_cmd]
